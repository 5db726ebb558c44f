// OpenVLA-OFT's chunk path (ARCHITECTURE.md §17): the final RMSNorm of the rows the action
// head reads (kept in f32, the head's LayerNorm input), and the head's ReLU epilogues on its
// f32 residual stream. The language model's input is llama.cu's assemble_prefill, which
// zeroes the placeholder rows.
// Element-wise kernels index with 32-bit ints (the host checks every size fits).

// One block per row: out = x · rsqrt(mean(x²) + eps) · w in f32 (rms_norm_f16's sums, so the
// two agree on the scale of a row).
extern "C" __global__ void rms_norm_f32(const float* __restrict__ x, const float* __restrict__ w,
                                        float* __restrict__ out, int H, float eps) {
    __shared__ float scratch[32];
    const float* row = x + (long)blockIdx.x * H;
    float* orow = out + (long)blockIdx.x * H;
    const int quads = H / 4;
    if (rms_vec_fits(H)) {
        float4 v[RMS_VEC_PER_THREAD];
        const float r = rms_inverse_vec(row, H, eps, scratch, v);
#pragma unroll
        for (int i = 0; i < RMS_VEC_PER_THREAD; ++i) {
            const int qd = threadIdx.x + i * blockDim.x;
            if (qd < quads) {
                const float4 wv = reinterpret_cast<const float4*>(w)[qd];
                reinterpret_cast<float4*>(orow)[qd] =
                    make_float4(v[i].x * r * wv.x, v[i].y * r * wv.y, v[i].z * r * wv.z, v[i].w * r * wv.w);
            }
        }
        return;
    }
    float q = 0.f;
    for (int i = threadIdx.x; i < H; i += blockDim.x) q += row[i] * row[i];
    const float r = rsqrtf(block_sum(q, scratch) / H + eps);
    for (int i = threadIdx.x; i < H; i += blockDim.x) orow[i] = row[i] * r * w[i];
}

// x[r, c] = max(x[r, c] + bias[c], 0): the head's fc1 epilogue, in place on its f32 output.
extern "C" __global__ void bias_relu_f32(float* __restrict__ x, const float* __restrict__ bias, int total,
                                         int N) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x)
        x[i] = fmaxf(x[i] + bias[i % N], 0.f);
}

// h[r, c] += max(branch[r, c] + bias[c], 0): a residual block `x + ReLU(Linear(LN(x)))` of the
// head, adding the block's f32 GEMM output into the residual stream.
extern "C" __global__ void bias_relu_add_f32(const float* __restrict__ branch, const float* __restrict__ bias,
                                             float* __restrict__ h, int total, int N) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x)
        h[i] += fmaxf(branch[i] + bias[i % N], 0.f);
}
