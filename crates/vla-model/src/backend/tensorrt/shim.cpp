// Plain C functions over TensorRT's C++ runtime API, for the Rust side
// (src/backend/tensorrt/ffi.rs declares them).
//
// Nothing of TensorRT is linked: libnvinfer is opened with dlopen, and the only symbols
// looked up are the exported C entry points (getInferLib*Version, createInferRuntime_INTERNAL).
// Everything else is a virtual call through the objects TensorRT returns, compiled against
// the TensorRT 10 runtime headers (third_party/tensorrt/include).
//
// Errors: TensorRT reports them through the logger, not always through return values (runtime
// creation without a usable GPU logs an error and may still return a non-null, invalid
// pointer). So every call clears the logger first and fails when an error was logged, and a
// pointer returned alongside a logged error is never used. Messages go to a caller-provided
// buffer: the enqueue path allocates nothing.

#include <NvInferRuntime.h>

#include <dlfcn.h>

#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <mutex>

namespace {

// Writes a printf-style message into `error` (truncated, always terminated).
void set_error(char* error, size_t error_len, char const* format, ...)
{
    if (error == nullptr || error_len == 0)
    {
        return;
    }
    va_list args;
    va_start(args, format);
    std::vsnprintf(error, error_len, format, args);
    va_end(args);
}

// Keeps the first error logged since the last clear(); warnings and below are dropped.
class Logger final : public nvinfer1::ILogger
{
public:
    void log(Severity severity, nvinfer1::AsciiChar const* msg) noexcept override
    {
        if (severity > Severity::kERROR)
        {
            return;
        }
        std::lock_guard<std::mutex> lock(mMutex);
        if (mErrors.load(std::memory_order_relaxed) == 0)
        {
            std::snprintf(mFirst, sizeof(mFirst), "%s", msg != nullptr ? msg : "(no message)");
        }
        mErrors.fetch_add(1, std::memory_order_release);
    }

    void clear() noexcept
    {
        if (mErrors.load(std::memory_order_acquire) == 0)
        {
            return;
        }
        std::lock_guard<std::mutex> lock(mMutex);
        mErrors.store(0, std::memory_order_relaxed);
        mFirst[0] = '\0';
    }

    // Copies the first logged error into `error` and returns true when there was one.
    bool take(char* error, size_t error_len, char const* what) noexcept
    {
        if (mErrors.load(std::memory_order_acquire) == 0)
        {
            return false;
        }
        std::lock_guard<std::mutex> lock(mMutex);
        set_error(error, error_len, "%s: TensorRT logged an error: %s", what, mFirst);
        mErrors.store(0, std::memory_order_relaxed);
        mFirst[0] = '\0';
        return true;
    }

private:
    std::mutex mMutex;
    std::atomic<int> mErrors{0};
    char mFirst[1024] = {0};
};

using VersionFn = int32_t (*)();
using CreateRuntimeFn = void* (*) (void*, int32_t);

} // namespace

struct VlaTrtRuntime
{
    void* library = nullptr;
    Logger logger;
    nvinfer1::IRuntime* runtime = nullptr;
    int32_t version = 0;
};

struct VlaTrtEngine
{
    VlaTrtRuntime* owner = nullptr;
    nvinfer1::ICudaEngine* engine = nullptr;
};

struct VlaTrtContext
{
    VlaTrtRuntime* owner = nullptr;
    nvinfer1::IExecutionContext* context = nullptr;
};

extern "C" {

// Status codes of vla_trt_open.
enum
{
    VLA_TRT_OK = 0,
    VLA_TRT_NO_LIBRARY = 1,
    VLA_TRT_NO_SYMBOL = 2,
    VLA_TRT_WRONG_VERSION = 3,
    VLA_TRT_RUNTIME_FAILED = 4,
    VLA_TRT_FAILED = 5,
};

// TensorRT version of the headers this shim was built with (major * 10000 + minor * 100 + patch).
int32_t vla_trt_header_version()
{
    return NV_TENSORRT_VERSION;
}

// Opens `library_path` (dlopen), checks its major version against the headers' and creates a
// runtime. On success `*out` owns the library handle and the runtime.
int vla_trt_open(char const* library_path, VlaTrtRuntime** out, char* error, size_t error_len)
{
    *out = nullptr;
    dlerror();
    void* library = dlopen(library_path, RTLD_NOW | RTLD_LOCAL);
    if (library == nullptr)
    {
        char const* why = dlerror();
        set_error(error, error_len, "cannot open %s: %s", library_path, why != nullptr ? why : "unknown reason");
        return VLA_TRT_NO_LIBRARY;
    }
    auto version = reinterpret_cast<VersionFn>(dlsym(library, "getInferLibVersion"));
    auto major_fn = reinterpret_cast<VersionFn>(dlsym(library, "getInferLibMajorVersion"));
    auto create = reinterpret_cast<CreateRuntimeFn>(dlsym(library, "createInferRuntime_INTERNAL"));
    if (version == nullptr || create == nullptr)
    {
        set_error(error, error_len, "%s is not a TensorRT runtime library: no %s", library_path,
            version == nullptr ? "getInferLibVersion" : "createInferRuntime_INTERNAL");
        dlclose(library);
        return VLA_TRT_NO_SYMBOL;
    }
    int32_t const full = version();
    // TensorRT 8 encoded its version as major * 1000 + minor * 100 + patch, 10 as major * 10000 + ...
    int32_t const major = major_fn != nullptr ? major_fn() : (full >= 10000 ? full / 10000 : full / 1000);
    if (major != NV_TENSORRT_MAJOR)
    {
        set_error(error, error_len, "%s is TensorRT %d (version number %d); this build needs TensorRT %d",
            library_path, major, full, NV_TENSORRT_MAJOR);
        dlclose(library);
        return VLA_TRT_WRONG_VERSION;
    }
    auto* rt = new VlaTrtRuntime;
    rt->library = library;
    rt->version = full;
    void* created = create(&rt->logger, NV_TENSORRT_VERSION);
    if (rt->logger.take(error, error_len, "createInferRuntime"))
    {
        // `created` may be non-null and still invalid: it is neither used nor freed. Whatever
        // TensorRT started may still hold the logger, so `rt` (and the library) stay alive.
        return VLA_TRT_RUNTIME_FAILED;
    }
    if (created == nullptr)
    {
        set_error(error, error_len, "createInferRuntime returned no runtime (no error logged)");
        delete rt;
        return VLA_TRT_RUNTIME_FAILED;
    }
    rt->runtime = static_cast<nvinfer1::IRuntime*>(created);
    *out = rt;
    return VLA_TRT_OK;
}

// getInferLibVersion() of the opened library.
int32_t vla_trt_library_version(VlaTrtRuntime const* rt)
{
    return rt->version;
}

// Destroys the runtime. The library stays loaded for the life of the process: TensorRT may
// keep threads or callbacks that point into it.
void vla_trt_close(VlaTrtRuntime* rt)
{
    if (rt == nullptr)
    {
        return;
    }
    delete rt->runtime;
    delete rt;
}

int vla_trt_deserialize(
    VlaTrtRuntime* rt, void const* blob, size_t size, VlaTrtEngine** out, char* error, size_t error_len)
{
    *out = nullptr;
    rt->logger.clear();
    nvinfer1::ICudaEngine* engine = rt->runtime->deserializeCudaEngine(blob, size);
    if (rt->logger.take(error, error_len, "deserializeCudaEngine"))
    {
        // Like the runtime above, an engine returned alongside an error is not trusted.
        return VLA_TRT_FAILED;
    }
    if (engine == nullptr)
    {
        set_error(error, error_len, "deserializeCudaEngine returned no engine");
        return VLA_TRT_FAILED;
    }
    *out = new VlaTrtEngine{rt, engine};
    return VLA_TRT_OK;
}

void vla_trt_engine_destroy(VlaTrtEngine* engine)
{
    if (engine == nullptr)
    {
        return;
    }
    delete engine->engine;
    delete engine;
}

int32_t vla_trt_engine_io_count(VlaTrtEngine const* engine)
{
    return engine->engine->getNbIOTensors();
}

// I/O tensor `index`: its name (owned by the engine), whether it is an input, its
// nvinfer1::DataType and its shape (`dims` holds up to 8 values). Returns 0, or 5 for an index
// out of range or an invalid shape.
int vla_trt_engine_io(VlaTrtEngine const* engine, int32_t index, char const** name, int32_t* is_input,
    int32_t* data_type, int32_t* nb_dims, int64_t* dims)
{
    nvinfer1::ICudaEngine const* e = engine->engine;
    char const* tensor = e->getIOTensorName(index);
    if (tensor == nullptr)
    {
        return VLA_TRT_FAILED;
    }
    nvinfer1::Dims const shape = e->getTensorShape(tensor);
    if (shape.nbDims < 0 || shape.nbDims > nvinfer1::Dims::MAX_DIMS)
    {
        return VLA_TRT_FAILED;
    }
    *name = tensor;
    *is_input = e->getTensorIOMode(tensor) == nvinfer1::TensorIOMode::kINPUT ? 1 : 0;
    *data_type = static_cast<int32_t>(e->getTensorDataType(tensor));
    *nb_dims = shape.nbDims;
    for (int32_t i = 0; i < shape.nbDims; ++i)
    {
        dims[i] = shape.d[i];
    }
    return VLA_TRT_OK;
}

int vla_trt_context_create(VlaTrtEngine* engine, VlaTrtContext** out, char* error, size_t error_len)
{
    *out = nullptr;
    VlaTrtRuntime* rt = engine->owner;
    rt->logger.clear();
    nvinfer1::IExecutionContext* context = engine->engine->createExecutionContext();
    if (rt->logger.take(error, error_len, "createExecutionContext"))
    {
        return VLA_TRT_FAILED;
    }
    if (context == nullptr)
    {
        set_error(error, error_len, "createExecutionContext returned no context");
        return VLA_TRT_FAILED;
    }
    *out = new VlaTrtContext{rt, context};
    return VLA_TRT_OK;
}

void vla_trt_context_destroy(VlaTrtContext* context)
{
    if (context == nullptr)
    {
        return;
    }
    delete context->context;
    delete context;
}

int vla_trt_set_address(VlaTrtContext* context, char const* name, void* address, char* error, size_t error_len)
{
    VlaTrtRuntime* rt = context->owner;
    rt->logger.clear();
    bool const ok = context->context->setTensorAddress(name, address);
    if (rt->logger.take(error, error_len, "setTensorAddress"))
    {
        return VLA_TRT_FAILED;
    }
    if (!ok)
    {
        set_error(error, error_len, "setTensorAddress(%s) refused the address", name);
        return VLA_TRT_FAILED;
    }
    return VLA_TRT_OK;
}

// Queues the engine on `stream` (a CUstream; the runtime API's cudaStream_t is the same handle).
int vla_trt_enqueue(VlaTrtContext* context, void* stream, char* error, size_t error_len)
{
    VlaTrtRuntime* rt = context->owner;
    rt->logger.clear();
    bool const ok = context->context->enqueueV3(static_cast<cudaStream_t>(stream));
    if (rt->logger.take(error, error_len, "enqueueV3"))
    {
        return VLA_TRT_FAILED;
    }
    if (!ok)
    {
        set_error(error, error_len, "enqueueV3 failed");
        return VLA_TRT_FAILED;
    }
    return VLA_TRT_OK;
}

} // extern "C"
