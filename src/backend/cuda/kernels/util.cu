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

// One block per row: q = rint(w / s), s = max|w| / 127 (1 for an all-zero row); w ← q · s.
extern "C" __global__ void quantize_rows_i8(half_t* __restrict__ w, signed char* __restrict__ q,
                                            float* __restrict__ scale, int K) {
    __shared__ float scratch[32];
    half_t* row = w + (long)blockIdx.x * K;
    signed char* qrow = q + (long)blockIdx.x * K;
    float m = 0.f;
    for (int k = threadIdx.x; k < K; k += blockDim.x) m = fmaxf(m, fabsf(h2f(row[k])));
    m = block_max(m, scratch);
    const float s = m > 0.f ? m / 127.f : 1.f;
    for (int k = threadIdx.x; k < K; k += blockDim.x) {
        const float v = fminf(fmaxf(rintf(h2f(row[k]) / s), -127.f), 127.f);
        qrow[k] = (signed char)v;
        row[k] = f2h(v * s);
    }
    if (threadIdx.x == 0) scale[blockIdx.x] = s;
}

// One thread per (row, group): s = max|w| / 7, q = clamp(rint(w / s), -8, 7) + 8 in nibbles;
// w ← (q - 8) · s. K and G even, G divides K.
extern "C" __global__ void quantize_groups_i4(half_t* __restrict__ w, unsigned char* __restrict__ q,
                                              half_t* __restrict__ scales, int N, int K, int G) {
    const long groups = (long)N * (K / G);
    for (long t = blockIdx.x * (long)blockDim.x + threadIdx.x; t < groups; t += (long)gridDim.x * blockDim.x) {
        const long row = t / (K / G);
        const int g = (int)(t % (K / G));
        half_t* src = w + row * K + (long)g * G;
        float m = 0.f;
        for (int i = 0; i < G; ++i) m = fmaxf(m, fabsf(h2f(src[i])));
        const half_t s_h = f2h(m > 0.f ? m / 7.f : 1.f);
        const float s = h2f(s_h);
        scales[t] = s_h;
        unsigned char* dst = q + row * (K / 2) + (long)g * G / 2;
        for (int i = 0; i < G; i += 2) {
            const float a = fminf(fmaxf(rintf(h2f(src[i]) / s), -8.f), 7.f);
            const float b = fminf(fmaxf(rintf(h2f(src[i + 1]) / s), -8.f), 7.f);
            dst[i / 2] = (unsigned char)((int)(a + 8.f) | ((int)(b + 8.f) << 4));
            src[i] = f2h(a * s);
            src[i + 1] = f2h(b * s);
        }
    }
}
