// Decode GEMVs y[N] (+)= W[N, K] · x[K], one warp per output row, 16-byte weight loads
// coalesced across the warp, f32 accumulation. Weight formats: f16; INT8 with one f32 scale
// per row; INT4 in nibble pairs (element 2j in the low nibble of byte j, stored q + 8) with an
// f16 scale per group of G inputs. The vector paths need K (and G) to be multiples of the
// elements of one 16-byte load per lane group; other widths take the scalar path.

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

// W [N, K/2] bytes, scales [N, K/G] f16; K even.
extern "C" __global__ void gemv_i4(const unsigned char* __restrict__ W, const half_t* __restrict__ scales,
                                   const half_t* __restrict__ x, float* __restrict__ y, int N, int K,
                                   int G, int accumulate) {
    const int row = blockIdx.x * GEMV_ROWS_PER_BLOCK + threadIdx.x / VLA_WARP;
    const int lane = threadIdx.x % VLA_WARP;
    if (row >= N) return;
    const unsigned char* w = W + (long)row * (K / 2);
    const half_t* sc = scales + (long)row * (K / G);
    float acc = 0.f;
    if ((K & 31) == 0 && (G & 31) == 0) {
        // 16 bytes = 32 inputs per lane, all inside one group (G is a multiple of 32).
#pragma unroll 2
        for (int k = lane * 32; k < K; k += VLA_WARP * 32) {
            const uint4 raw = __ldg(reinterpret_cast<const uint4*>(w + k / 2));
            const unsigned char* b = reinterpret_cast<const unsigned char*>(&raw);
            float part = 0.f;
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                float xv[8];
                load_x8(x, k + 8 * c, xv);
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const unsigned char byte = b[4 * c + i];
                    part += (float)((int)(byte & 15) - 8) * xv[2 * i];
                    part += (float)((int)(byte >> 4) - 8) * xv[2 * i + 1];
                }
            }
            acc += part * h2f(sc[k / G]);
        }
    } else {
        for (int k = lane; k < K; k += VLA_WARP) {
            const unsigned char byte = w[k / 2];
            const int q = (k & 1) ? (byte >> 4) : (byte & 15);
            acc += (float)(q - 8) * h2f(sc[k / G]) * h2f(x[k]);
        }
    }
    acc = warp_sum(acc);
    if (lane == 0) store_row(y, row, acc, accumulate);
}
