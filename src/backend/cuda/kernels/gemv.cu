// Decode GEMVs y[N] (+)= W[N, K] · x[K], one warp per output row, 16-byte weight loads
// coalesced across the warp, f32 accumulation. Weight formats: f16, and the CPU backend's
// INT8 (one f32 scale per row) and asymmetric group-wise INT4 (f32 scale and min per group).
// The vector paths need K (and G) to be multiples of the elements of one 16-byte load per
// lane; other widths take the scalar path.

#define GEMV_ROWS_PER_BLOCK 8

__device__ __forceinline__ void store_row(float* y, int row, float acc, int accumulate) {
    if (accumulate) y[row] += acc; else y[row] = acc;
}

// Eight f16 of x starting at k, as floats.
__device__ __forceinline__ void load_x8(const half_t* __restrict__ x, int k, float* v) {
    const uint4 raw = *reinterpret_cast<const uint4*>(x + k);
    const half_t* h = reinterpret_cast<const half_t*>(&raw);
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = h2f(h[i]);
}

extern "C" __global__ void gemv_f16(const half_t* __restrict__ W, const half_t* __restrict__ x,
                                    float* __restrict__ y, int N, int K, int accumulate) {
    const int row = blockIdx.x * GEMV_ROWS_PER_BLOCK + threadIdx.x / VLA_WARP;
    const int lane = threadIdx.x % VLA_WARP;
    if (row >= N) return;
    const half_t* w = W + (long)row * K;
    float acc = 0.f;
    if ((K & 7) == 0) {
#pragma unroll 4
        for (int k = lane * 8; k < K; k += VLA_WARP * 8) {
            const uint4 raw = __ldg(reinterpret_cast<const uint4*>(w + k));
            const half_t* wh = reinterpret_cast<const half_t*>(&raw);
            float xv[8];
            load_x8(x, k, xv);
#pragma unroll
            for (int i = 0; i < 8; ++i) acc += h2f(wh[i]) * xv[i];
        }
    } else {
        for (int k = lane; k < K; k += VLA_WARP) acc += h2f(w[k]) * h2f(x[k]);
    }
    acc = warp_sum(acc);
    if (lane == 0) store_row(y, row, acc, accumulate);
}

extern "C" __global__ void gemv_i8(const signed char* __restrict__ W, const float* __restrict__ scale,
                                   const half_t* __restrict__ x, float* __restrict__ y, int N, int K,
                                   int accumulate) {
    const int row = blockIdx.x * GEMV_ROWS_PER_BLOCK + threadIdx.x / VLA_WARP;
    const int lane = threadIdx.x % VLA_WARP;
    if (row >= N) return;
    const signed char* w = W + (long)row * K;
    float acc = 0.f;
    if ((K & 15) == 0) {
#pragma unroll 2
        for (int k = lane * 16; k < K; k += VLA_WARP * 16) {
            const int4 raw = __ldg(reinterpret_cast<const int4*>(w + k));
            const signed char* q = reinterpret_cast<const signed char*>(&raw);
            float xv[16];
            load_x8(x, k, xv);
            load_x8(x, k + 8, xv + 8);
#pragma unroll
            for (int i = 0; i < 16; ++i) acc += (float)q[i] * xv[i];
        }
    } else {
        for (int k = lane; k < K; k += VLA_WARP) acc += (float)w[k] * h2f(x[k]);
    }
    acc = warp_sum(acc);
    if (lane == 0) store_row(y, row, acc * scale[row], accumulate);
}

// INT4 of the CPU backend: W [N, ceil(K/2)] bytes (element k in the low nibble of byte k / 2
// when k is even), scales and mins [N, ceil(K/G)] f32, w = code · scale + min. Per group,
// Σ w·x = scale · Σ code·x + min · Σ x.
extern "C" __global__ void gemv_i4(const unsigned char* __restrict__ W, const float* __restrict__ scales,
                                   const float* __restrict__ mins, const half_t* __restrict__ x,
                                   float* __restrict__ y, int N, int K, int G, int accumulate) {
    const int row = blockIdx.x * GEMV_ROWS_PER_BLOCK + threadIdx.x / VLA_WARP;
    const int lane = threadIdx.x % VLA_WARP;
    if (row >= N) return;
    const int groups = (K + G - 1) / G;
    const unsigned char* w = W + (long)row * ((K + 1) / 2);
    const float* sc = scales + (long)row * groups;
    const float* mn = mins + (long)row * groups;
    float acc = 0.f;
    if ((K & 31) == 0 && (G & 31) == 0) {
        // 16 bytes = 32 inputs per lane, all inside one group (G is a multiple of 32).
#pragma unroll 2
        for (int k = lane * 32; k < K; k += VLA_WARP * 32) {
            const uint4 raw = __ldg(reinterpret_cast<const uint4*>(w + k / 2));
            const unsigned char* b = reinterpret_cast<const unsigned char*>(&raw);
            float dot = 0.f, xsum = 0.f;
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                float xv[8];
                load_x8(x, k + 8 * c, xv);
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const unsigned char byte = b[4 * c + i];
                    dot += (float)(byte & 15) * xv[2 * i] + (float)(byte >> 4) * xv[2 * i + 1];
                    xsum += xv[2 * i] + xv[2 * i + 1];
                }
            }
            const int g = k / G;
            acc += dot * sc[g] + xsum * mn[g];
        }
    } else {
        for (int k = lane; k < K; k += VLA_WARP) {
            const unsigned char byte = w[k / 2];
            const int code = (k & 1) ? (byte >> 4) : (byte & 15);
            const int g = k / G;
            acc += ((float)code * sc[g] + mn[g]) * h2f(x[k]);
        }
    }
    acc = warp_sum(acc);
    if (lane == 0) store_row(y, row, acc, accumulate);
}
