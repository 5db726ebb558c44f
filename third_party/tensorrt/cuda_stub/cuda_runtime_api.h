// The two CUDA runtime types that the TensorRT runtime headers name, declared exactly as the
// CUDA runtime declares them, so that code using those headers compiles without CUDA
// installed (the shim passes the streams and events it is given through, untouched).
#pragma once
typedef struct CUstream_st* cudaStream_t;
typedef struct CUevent_st* cudaEvent_t;
