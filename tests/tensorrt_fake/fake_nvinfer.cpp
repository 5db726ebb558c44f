// A fake libnvinfer.so.10 for the tests of the TensorRT shim (tests/tensorrt_shim.rs builds
// it with the system's C++ compiler against the same runtime headers as the shim). It runs on
// the CPU and has no GPU code: an "engine" is a text plan naming its I/O tensors, and
// enqueueV3 computes `out[i] = in[i % in_len] * 2 + 1` on host memory, so the tests can see
// that the addresses, the stream and the calls arrived as the shim sent them.
//
// Plan format (text):  FAKEPLAN
//                      in  NAME DIM...
//                      out NAME DIM...
//
// Build-time switches: -DFAKE_VERSION=N (getInferLibVersion, default 100300) and
// -DFAKE_RUNTIME_ERROR (runtime creation logs an error and returns an invalid pointer, as
// TensorRT does when CUDA cannot start).
//
// The stub overrides (std::abort / value-initialised returns) are every pure virtual of
// VRuntime, VCudaEngine and VExecutionContext in NvInferImpl.h that the shim never calls.

#include <NvInferRuntime.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#ifndef FAKE_VERSION
#define FAKE_VERSION 100300
#endif

namespace fake {

using namespace nvinfer1;
using namespace nvinfer1::apiv;

struct Tensor
{
    std::string name;
    bool input;
    Dims dims;
    int64_t count() const
    {
        int64_t n = 1;
        for (int32_t i = 0; i < dims.nbDims; ++i)
        {
            n *= dims.d[i];
        }
        return n;
    }
};

// Observable state for the tests (read through the exported fake_trt_* functions).
int gLive = 0;
void* gLastStream = nullptr;
int gEnqueues = 0;

class Context;
class Engine;

class VContextImpl final : public VExecutionContext
{
public:
    explicit VContextImpl(Context* owner) : mOwner(owner) {}
    IExecutionContext* getPImpl() noexcept override;
    bool setTensorAddress(char const* tensorName, void* data) noexcept override;
    bool enqueueV3(cudaStream_t stream) noexcept override;
    void setDebugSync(bool sync) noexcept override {}
    bool getDebugSync() const noexcept override { return {}; }
    void setProfiler(IProfiler*) noexcept override {}
    IProfiler* getProfiler() const noexcept override { return {}; }
    ICudaEngine const& getEngine() const noexcept override { std::abort(); }
    void setName(char const* name) noexcept override {}
    char const* getName() const noexcept override { return {}; }
    void setDeviceMemory(void* memory) noexcept override {}
    int32_t getOptimizationProfile() const noexcept override { return {}; }
    bool allInputDimensionsSpecified() const noexcept override { return {}; }
    bool allInputShapesSpecified() const noexcept override { return {}; }
    void setErrorRecorder(IErrorRecorder* recorder) noexcept override {}
    IErrorRecorder* getErrorRecorder() const noexcept override { return {}; }
    bool executeV2(void* const* bindings) noexcept override { return {}; }
    bool setOptimizationProfileAsync(int32_t profileIndex, cudaStream_t stream) noexcept override { return {}; }
    void setEnqueueEmitsProfile(bool enqueueEmitsProfile) noexcept override {}
    bool getEnqueueEmitsProfile() const noexcept override { return {}; }
    bool reportToProfiler() const noexcept override { return {}; }
    bool setInputShape(char const* tensorName, Dims const& dims) noexcept override { return {}; }
    Dims getTensorShape(char const* tensorName) const noexcept override { return {}; }
    Dims getTensorStrides(char const* tensorName) const noexcept override { return {}; }
    void const* getTensorAddress(char const* tensorName) const noexcept override { return {}; }
    bool setInputTensorAddress(char const* tensorName, void const* data) noexcept override { return {}; }
    bool setOutputTensorAddress(char const* tensorName, void* data) noexcept override { return {}; }
    int32_t inferShapes(int32_t nbMaxNames, char const** tensorNames) noexcept override { return {}; }
    bool setInputConsumedEvent(cudaEvent_t event) noexcept override { return {}; }
    cudaEvent_t getInputConsumedEvent() const noexcept override { return {}; }
    void* getOutputTensorAddress(char const* tensorName) const noexcept override { return {}; }
    bool setOutputAllocator(char const* tensorName, IOutputAllocator* outputAllocator) noexcept override { return {}; }
    IOutputAllocator* getOutputAllocator(char const* name) noexcept override { return {}; }
    int64_t getMaxOutputSize(char const* tensorName) const noexcept override { return {}; }
    bool setTemporaryStorageAllocator(IGpuAllocator* allocator) noexcept override { return {}; }
    IGpuAllocator* getTemporaryStorageAllocator() const noexcept override { return {}; }
    void setPersistentCacheLimit(size_t size) noexcept override {}
    size_t getPersistentCacheLimit() const noexcept override { return {}; }
    bool setNvtxVerbosity(ProfilingVerbosity verbosity) noexcept override { return {}; }
    ProfilingVerbosity getNvtxVerbosity() const noexcept override { return {}; }
    void setAuxStreams(cudaStream_t* auxStreams, int32_t nbStreams) noexcept override {}
    bool setDebugListener(IDebugListener* listener) noexcept override { return {}; }
    IDebugListener* getDebugListener() noexcept override { return {}; }
    bool setTensorDebugState(char const* name, bool flag) noexcept override { return {}; }
    bool getDebugState(char const* name) const noexcept override { return {}; }
    bool setAllTensorsDebugState(bool flag) noexcept override { return {}; }
    size_t updateDeviceMemorySizeForShapes() noexcept override { return {}; }
    void setDeviceMemoryV2(void* memory, int64_t size) noexcept override {}
private:
    Context* mOwner;
};

class Context final : public IExecutionContext
{
public:
    Context(Engine const* engine, ILogger* logger) : mImplObject(this), mEngine(engine), mLogger(logger)
    {
        mImpl = &mImplObject;
        ++gLive;
    }
    ~Context() noexcept override
    {
        --gLive;
    }
    VContextImpl mImplObject;
    Engine const* mEngine;
    ILogger* mLogger;
    std::vector<void*> mAddresses;
};

class VEngineImpl final : public VCudaEngine
{
public:
    explicit VEngineImpl(Engine* owner) : mOwner(owner) {}
    ICudaEngine* getPImpl() noexcept override;
    int32_t getNbIOTensors() const noexcept override;
    char const* getIOTensorName(int32_t index) const noexcept override;
    Dims getTensorShape(char const* tensorName) const noexcept override;
    TensorIOMode getTensorIOMode(char const* tensorName) const noexcept override;
    DataType getTensorDataType(char const* tensorName) const noexcept override;
    IExecutionContext* createExecutionContext(ExecutionContextAllocationStrategy strategy) noexcept override;
    int32_t getNbLayers() const noexcept override { return {}; }
    IHostMemory* serialize() const noexcept override { return {}; }
    IExecutionContext* createExecutionContextWithoutDeviceMemory() noexcept override { return {}; }
    size_t getDeviceMemorySize() const noexcept override { return {}; }
    bool isRefittable() const noexcept override { return {}; }
    char const* getName() const noexcept override { return {}; }
    int32_t getNbOptimizationProfiles() const noexcept override { return {}; }
    int32_t const* getProfileTensorValues(char const* tensorName, int32_t profileIndex, OptProfileSelector select) const noexcept override { return {}; }
    EngineCapability getEngineCapability() const noexcept override { return {}; }
    void setErrorRecorder(IErrorRecorder* recorder) noexcept override {}
    IErrorRecorder* getErrorRecorder() const noexcept override { return {}; }
    bool hasImplicitBatchDimension() const noexcept override { return {}; }
    TacticSources getTacticSources() const noexcept override { return {}; }
    ProfilingVerbosity getProfilingVerbosity() const noexcept override { return {}; }
    IEngineInspector* createEngineInspector() const noexcept override { return {}; }
    TensorLocation getTensorLocation(char const* tensorName) const noexcept override { return {}; }
    bool isShapeInferenceIO(char const* tensorName) const noexcept override { return {}; }
    int32_t getTensorBytesPerComponent(char const* tensorName) const noexcept override { return {}; }
    int32_t getTensorComponentsPerElement(char const* tensorName) const noexcept override { return {}; }
    TensorFormat getTensorFormat(char const* tensorName) const noexcept override { return {}; }
    char const* getTensorFormatDesc(char const* tensorName) const noexcept override { return {}; }
    int32_t getTensorVectorizedDim(char const* tensorName) const noexcept override { return {}; }
    Dims getProfileShape(char const* tensorName, int32_t profileIndex, OptProfileSelector select) const noexcept override { return {}; }
    HardwareCompatibilityLevel getHardwareCompatibilityLevel() const noexcept override { return {}; }
    int32_t getNbAuxStreams() const noexcept override { return {}; }
    int32_t getTensorBytesPerComponentV2(char const* tensorName, int32_t profileIndex) const noexcept override { return {}; }
    int32_t getTensorComponentsPerElementV2(char const* tensorName, int32_t profileIndex) const noexcept override { return {}; }
    TensorFormat getTensorFormatV2(char const* tensorName, int32_t profileIndex) const noexcept override { return {}; }
    char const* getTensorFormatDescV2(char const* tensorName, int32_t profileIndex) const noexcept override { return {}; }
    int32_t getTensorVectorizedDimV2(char const* tensorName, int32_t profileIndex) const noexcept override { return {}; }
    ISerializationConfig* createSerializationConfig() noexcept override { return {}; }
    IHostMemory* serializeWithConfig(ISerializationConfig& config) const noexcept override { return {}; }
    size_t getDeviceMemorySizeForProfile(int32_t profileIndex) const noexcept override { return {}; }
    IRefitter* createRefitter(ILogger& logger) noexcept override { return {}; }
    bool setWeightStreamingBudget(int64_t gpuMemoryBudget) noexcept override { return {}; }
    int64_t getWeightStreamingBudget() const noexcept override { return {}; }
    int64_t getMinimumWeightStreamingBudget() const noexcept override { return {}; }
    int64_t getStreamableWeightsSize() const noexcept override { return {}; }
    bool isDebugTensor(char const* name) const noexcept override { return {}; }
    bool setWeightStreamingBudgetV2(int64_t gpuMemoryBudget) noexcept override { return {}; }
    int64_t getWeightStreamingBudgetV2() const noexcept override { return {}; }
    int64_t getWeightStreamingAutomaticBudget() const noexcept override { return {}; }
    int64_t getWeightStreamingScratchMemorySize() const noexcept override { return {}; }
    int64_t getDeviceMemorySizeV2() const noexcept override { return {}; }
    int64_t getDeviceMemorySizeForProfileV2(int32_t profileIndex) const noexcept override { return {}; }
private:
    Engine* mOwner;
};

class Engine final : public ICudaEngine
{
public:
    Engine(std::vector<Tensor> tensors, ILogger* logger) : mImplObject(this), mTensors(std::move(tensors)), mLogger(logger)
    {
        mImpl = &mImplObject;
        ++gLive;
    }
    ~Engine() noexcept override
    {
        --gLive;
    }
    int find(char const* name) const
    {
        for (size_t i = 0; i < mTensors.size(); ++i)
        {
            if (name != nullptr && mTensors[i].name == name)
            {
                return static_cast<int>(i);
            }
        }
        return -1;
    }
    VEngineImpl mImplObject;
    std::vector<Tensor> mTensors;
    ILogger* mLogger;
};

class VRuntimeImpl final : public VRuntime
{
public:
    explicit VRuntimeImpl(IRuntime* owner, ILogger* logger) : mOwner(owner), mLogger(logger) {}
    IRuntime* getPImpl() noexcept override
    {
        return mOwner;
    }
    ICudaEngine* deserializeCudaEngine(void const* blob, std::size_t size) noexcept override;
    nvinfer1::ICudaEngine* deserializeCudaEngine(IStreamReader& streamReader) noexcept override { return {}; }
    void setDLACore(int32_t dlaCore) noexcept override {}
    int32_t getDLACore() const noexcept override { return {}; }
    int32_t getNbDLACores() const noexcept override { return {}; }
    void setGpuAllocator(IGpuAllocator* allocator) noexcept override {}
    void setErrorRecorder(IErrorRecorder* recorder) noexcept override {}
    IErrorRecorder* getErrorRecorder() const noexcept override { return {}; }
    ILogger* getLogger() const noexcept override { return {}; }
    bool setMaxThreads(int32_t maxThreads) noexcept override { return {}; }
    int32_t getMaxThreads() const noexcept override { return {}; }
    void setTemporaryDirectory(char const*) noexcept override {}
    char const* getTemporaryDirectory() const noexcept override { return {}; }
    void setTempfileControlFlags(TempfileControlFlags) noexcept override {}
    TempfileControlFlags getTempfileControlFlags() const noexcept override { return {}; }
    IPluginRegistry& getPluginRegistry() noexcept override { std::abort(); }
    void setPluginRegistryParent(IPluginRegistry* parent) noexcept override {}
    IRuntime* loadRuntime(char const* path) noexcept override { return {}; }
    void setEngineHostCodeAllowed(bool allowed) noexcept override {}
    bool getEngineHostCodeAllowed() const noexcept override { return {}; }
private:
    IRuntime* mOwner;
    ILogger* mLogger;
};

class Runtime final : public IRuntime
{
public:
    explicit Runtime(ILogger* logger) : mImplObject(this, logger)
    {
        mImpl = &mImplObject;
        ++gLive;
    }
    ~Runtime() noexcept override
    {
        --gLive;
    }
    VRuntimeImpl mImplObject;
};

ICudaEngine* VRuntimeImpl::deserializeCudaEngine(void const* blob, std::size_t size) noexcept
{
    std::string text(static_cast<char const*>(blob), size);
    std::istringstream lines(text);
    std::string magic;
    std::getline(lines, magic);
    if (magic != "FAKEPLAN")
    {
        mLogger->log(ILogger::Severity::kERROR,
            "1: [runtime.cpp::parsePlan::314] Error Code 1: Serialization (Serialization assertion "
            "plan->header.magicTag == rt::kPLAN_MAGIC_TAG failed.)");
        return nullptr;
    }
    std::vector<Tensor> tensors;
    std::string line;
    while (std::getline(lines, line))
    {
        std::istringstream fields(line);
        std::string kind;
        Tensor t{};
        if (!(fields >> kind >> t.name))
        {
            continue;
        }
        t.input = kind == "in";
        int64_t d = 0;
        while (fields >> d && t.dims.nbDims < Dims::MAX_DIMS)
        {
            t.dims.d[t.dims.nbDims++] = d;
        }
        tensors.push_back(t);
    }
    return new Engine(std::move(tensors), mLogger);
}

ICudaEngine* VEngineImpl::getPImpl() noexcept
{
    return mOwner;
}

int32_t VEngineImpl::getNbIOTensors() const noexcept
{
    return static_cast<int32_t>(mOwner->mTensors.size());
}

char const* VEngineImpl::getIOTensorName(int32_t index) const noexcept
{
    if (index < 0 || static_cast<size_t>(index) >= mOwner->mTensors.size())
    {
        return nullptr;
    }
    return mOwner->mTensors[index].name.c_str();
}

Dims VEngineImpl::getTensorShape(char const* tensorName) const noexcept
{
    int const i = mOwner->find(tensorName);
    Dims invalid{};
    invalid.nbDims = -1;
    return i < 0 ? invalid : mOwner->mTensors[i].dims;
}

TensorIOMode VEngineImpl::getTensorIOMode(char const* tensorName) const noexcept
{
    int const i = mOwner->find(tensorName);
    if (i < 0)
    {
        return TensorIOMode::kNONE;
    }
    return mOwner->mTensors[i].input ? TensorIOMode::kINPUT : TensorIOMode::kOUTPUT;
}

DataType VEngineImpl::getTensorDataType(char const*) const noexcept
{
    return DataType::kFLOAT;
}

IExecutionContext* VEngineImpl::createExecutionContext(ExecutionContextAllocationStrategy) noexcept
{
    auto* context = new Context(mOwner, mOwner->mLogger);
    context->mAddresses.assign(mOwner->mTensors.size(), nullptr);
    return context;
}

IExecutionContext* VContextImpl::getPImpl() noexcept
{
    return mOwner;
}

bool VContextImpl::setTensorAddress(char const* tensorName, void* data) noexcept
{
    int const i = mOwner->mEngine->find(tensorName);
    if (i < 0)
    {
        std::string msg = std::string("3: Cannot find binding of given name: ") + (tensorName ? tensorName : "");
        mOwner->mLogger->log(ILogger::Severity::kERROR, msg.c_str());
        return false;
    }
    mOwner->mAddresses[i] = data;
    return true;
}

bool VContextImpl::enqueueV3(cudaStream_t stream) noexcept
{
    Engine const* e = mOwner->mEngine;
    float const* in = nullptr;
    int64_t inCount = 0;
    for (size_t i = 0; i < e->mTensors.size(); ++i)
    {
        if (mOwner->mAddresses[i] == nullptr)
        {
            std::string msg = "3: [executionContext.cpp::enqueueV3] Error Code 3: API Usage Error "
                              "(Parameter check failed, condition: mContext.profileObliviousBindings.at(profileObliviousIndex) "
                              "|| getPtrOrNull(mOutputAllocators, profileObliviousIndex). Neither address or allocator is set "
                              "for output tensor "
                + e->mTensors[i].name + ")";
            mOwner->mLogger->log(ILogger::Severity::kERROR, msg.c_str());
            return false;
        }
        if (e->mTensors[i].input)
        {
            in = static_cast<float const*>(mOwner->mAddresses[i]);
            inCount = e->mTensors[i].count();
        }
    }
    for (size_t i = 0; i < e->mTensors.size(); ++i)
    {
        if (!e->mTensors[i].input && in != nullptr && inCount > 0)
        {
            auto* out = static_cast<float*>(mOwner->mAddresses[i]);
            for (int64_t j = 0; j < e->mTensors[i].count(); ++j)
            {
                out[j] = in[j % inCount] * 2.0f + 1.0f;
            }
        }
    }
    gLastStream = stream;
    ++gEnqueues;
    return true;
}

} // namespace fake

extern "C" {

int32_t getInferLibVersion() noexcept
{
    return FAKE_VERSION;
}

int32_t getInferLibMajorVersion() noexcept
{
    return FAKE_VERSION / 10000;
}

void* createInferRuntime_INTERNAL(void* logger, int32_t) noexcept
{
    auto* log = static_cast<nvinfer1::ILogger*>(logger);
#ifdef FAKE_RUNTIME_ERROR
    log->log(nvinfer1::ILogger::Severity::kERROR,
        "6: CUDA initialization failure with error: 35. Please check your CUDA installation: "
        "http://docs.nvidia.com/cuda/cuda-installation-guide-linux/index.html");
    // What TensorRT does without a usable GPU: a pointer that must not be used.
    return reinterpret_cast<void*>(static_cast<uintptr_t>(0xdead0000));
#else
    log->log(nvinfer1::ILogger::Severity::kINFO, "fake runtime created");
    return new fake::Runtime(log);
#endif
}

// Test hooks.
int fake_trt_live_objects()
{
    return fake::gLive;
}

void* fake_trt_last_stream()
{
    return fake::gLastStream;
}

int fake_trt_enqueues()
{
    return fake::gEnqueues;
}

} // extern "C"
