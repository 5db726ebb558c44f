// Shared helpers of every vla-rt kernel source; prepended to each .cu before NVRTC compiles it
// (NVRTC has no file system include path here, and no CUDA headers: FP16 is handled as raw
// 16-bit values converted with PTX `cvt`, so no <cuda_fp16.h> is needed). Kernels take raw
// device pointers and plain
// ints so that a CUDA graph can capture them; values that change between graph replays
// (positions, token ids) are read from device memory, never from kernel parameters.
#define VLA_WARP 32
#define VLA_INF __int_as_float(0x7f800000)

// IEEE binary16 as stored by the host (`half::f16`).
typedef unsigned short half_t;

__device__ __forceinline__ float h2f(half_t h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ half_t f2h(float f) {
    half_t h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = VLA_WARP / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = VLA_WARP / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block; every thread gets the result. `scratch` holds one float per warp.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x % VLA_WARP;
    const int warp = threadIdx.x / VLA_WARP;
    const int warps = (blockDim.x + VLA_WARP - 1) / VLA_WARP;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float total = 0.f;
    for (int w = 0; w < warps; ++w) total += scratch[w];
    return total;
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x % VLA_WARP;
    const int warp = threadIdx.x / VLA_WARP;
    const int warps = (blockDim.x + VLA_WARP - 1) / VLA_WARP;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float m = -VLA_INF;
    for (int w = 0; w < warps; ++w) m = fmaxf(m, scratch[w]);
    return m;
}

// Exact (erf) GELU, as torch.nn.GELU() and timm use.
__device__ __forceinline__ float gelu_erf(float x) {
    return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
}

// RMSNorm's 1 / sqrt(mean(x²) + eps) of one row of H floats, H = 4·k up to
// 4 · RMS_VEC_PER_THREAD · blockDim (16-byte loads, quad q in thread q % blockDim); the row's
// quads stay in v. Every thread of the block gets the result, summed in one fixed order, so
// kernels that normalise the same row agree to the bit.
#define RMS_VEC_PER_THREAD 4
__device__ __forceinline__ float rms_inverse_vec(const float* __restrict__ row, int H, float eps, float* scratch,
                                                 float4 (&v)[RMS_VEC_PER_THREAD]) {
    const int quads = H / 4;
    float q = 0.f;
#pragma unroll
    for (int i = 0; i < RMS_VEC_PER_THREAD; ++i) {
        const int qd = threadIdx.x + i * blockDim.x;
        v[i] = qd < quads ? reinterpret_cast<const float4*>(row)[qd] : make_float4(0.f, 0.f, 0.f, 0.f);
        q += v[i].x * v[i].x + v[i].y * v[i].y + v[i].z * v[i].z + v[i].w * v[i].w;
    }
    return rsqrtf(block_sum(q, scratch) / H + eps);
}

// Whether rms_inverse_vec takes rows of H values with this block size.
__device__ __forceinline__ bool rms_vec_fits(int H) {
    return (H & 3) == 0 && H / 4 <= RMS_VEC_PER_THREAD * (int)blockDim.x;
}
