// Device-side set-up: random weights for benchmarks, f32 → f16 conversion, and the
// weight-only quantizers (with the dequantized f16 copy the prefill GEMMs use, so that
// prefill and decode see the same effective weights).

__device__ __forceinline__ unsigned long long splitmix64(unsigned long long z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

__device__ __forceinline__ float uniform_at(unsigned long long seed, long i, float center, float scale) {
    const unsigned long long z = splitmix64(seed ^ ((unsigned long long)i * 0xA24BAED4963EE407ull));
    const float unit = (float)(z >> 40) / (float)(1ull << 24);
    return center + scale * (2.f * unit - 1.f);
}

extern "C" __global__ void fill_uniform_f16(half_t* __restrict__ out, long n, unsigned long long seed,
                                            float center, float scale) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        out[i] = f2h(uniform_at(seed, i, center, scale));
}

extern "C" __global__ void fill_uniform_f32(float* __restrict__ out, long n, unsigned long long seed,
                                            float center, float scale) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        out[i] = uniform_at(seed, i, center, scale);
}

// The weight-only formats of the CPU backend (src/model/quant.rs), computed the same way, for
// weights that exist only on the device (random benchmark weights); a checkpoint's layers are
// quantized on the host by that code itself. Each kernel also writes the dequantized values
// back into `w`, the FP16 matrix the prefill GEMMs read.

// INT8, one block per row: s = max|w| / 127, q = clamp(round(w · (1 / s)), ±127); an all-zero
// row gets s = 0 and codes 0.
extern "C" __global__ void quantize_rows_i8(half_t* __restrict__ w, signed char* __restrict__ q,
                                            float* __restrict__ scale, int K) {
    __shared__ float scratch[32];
    half_t* row = w + (long)blockIdx.x * K;
    signed char* qrow = q + (long)blockIdx.x * K;
    float m = 0.f;
    for (int k = threadIdx.x; k < K; k += blockDim.x) m = fmaxf(m, fabsf(h2f(row[k])));
    m = block_max(m, scratch);
    const float s = m > 0.f ? m / 127.f : 0.f;
    const float inv = m > 0.f ? 1.f / s : 0.f;
    for (int k = threadIdx.x; k < K; k += blockDim.x) {
        const float v = fminf(fmaxf(roundf(h2f(row[k]) * inv), -127.f), 127.f);
        qrow[k] = (signed char)v;
        row[k] = f2h(v * s);
    }
    if (threadIdx.x == 0) scale[blockIdx.x] = s;
}

// INT4, asymmetric, one thread per (row, group of G inputs; the last group of a row may be
// shorter): scale = (max - min) / 15, code = clamp(round((w - min) · (1 / scale)), 0, 15),
// w = code · scale + min. Codes packed two per byte, element k in the low nibble of byte k / 2
// when k is even; rows start on a byte boundary. `q` must be zeroed; G is even or equals K,
// so no byte is shared by two groups.
extern "C" __global__ void quantize_groups_i4(half_t* __restrict__ w, unsigned char* __restrict__ q,
                                              float* __restrict__ scales, float* __restrict__ mins,
                                              int N, int K, int G) {
    const int groups = (K + G - 1) / G;
    const int row_bytes = (K + 1) / 2;
    const long total = (long)N * groups;
    for (long t = blockIdx.x * (long)blockDim.x + threadIdx.x; t < total; t += (long)gridDim.x * blockDim.x) {
        const long row = t / groups;
        const int first = (int)(t % groups) * G;
        const int len = min(G, K - first);
        half_t* src = w + row * K;
        float lo = VLA_INF, hi = -VLA_INF;
        for (int i = 0; i < len; ++i) {
            const float v = h2f(src[first + i]);
            lo = fminf(lo, v);
            hi = fmaxf(hi, v);
        }
        const float s = (hi - lo) / 15.f;
        const float inv = s > 0.f ? 1.f / s : 0.f;
        scales[t] = s;
        mins[t] = lo;
        unsigned char* dst = q + row * row_bytes;
        for (int i = 0; i < len; ++i) {
            const int k = first + i;
            const float code = fminf(fmaxf(roundf((h2f(src[k]) - lo) * inv), 0.f), 15.f);
            const unsigned char c = (unsigned char)code;
            dst[k / 2] |= (k & 1) ? (unsigned char)(c << 4) : c;
            src[k] = f2h(code * s + lo);
        }
    }
}
