// ViT kernels: patch im2col, token assembly, LayerNorm, bias/GELU epilogues, LayerScale
// residuals, attention softmax and the patch-wise concat of the two featurizers.

// pixels [3, S, S] f32 → cols [grid², 3·p·p] f16 in the conv weight's (c, ky, kx) order.
extern "C" __global__ void im2col_f16(const float* __restrict__ pixels, half_t* __restrict__ cols,
                                      int S, int p, int grid) {
    const int patch_len = 3 * p * p;
    const long total = (long)grid * grid * patch_len;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total;
         i += (long)gridDim.x * blockDim.x) {
        const int idx = (int)(i / patch_len);
        const int r = (int)(i % patch_len);
        const int c = r / (p * p);
        const int ky = (r / p) % p;
        const int kx = r % p;
        const int py = idx / grid, px = idx % grid;
        cols[i] = f2h(pixels[(long)c * S * S + (long)(py * p + ky) * S + px * p + kx]);
    }
}

// x [prefix + patches, D] f32: prefix tokens, then patch_out + bias, plus the position
// embedding (over all tokens when pos_covers_prefix, else over the patches only).
extern "C" __global__ void vit_assemble_tokens(const float* __restrict__ patch_out,
                                               const float* __restrict__ patch_bias,
                                               const float* __restrict__ prefix_tokens,
                                               const float* __restrict__ pos_embed,
                                               float* __restrict__ x, int prefix, int patches,
                                               int D, int pos_covers_prefix) {
    const long total = (long)(prefix + patches) * D;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total;
         i += (long)gridDim.x * blockDim.x) {
        const int row = (int)(i / D);
        const int col = (int)(i % D);
        float v;
        if (row < prefix) {
            v = prefix_tokens[i];
            if (pos_covers_prefix) v += pos_embed[i];
        } else {
            v = patch_out[(long)(row - prefix) * D + col] + patch_bias[col];
            v += pos_covers_prefix ? pos_embed[i] : pos_embed[(long)(row - prefix) * D + col];
        }
        x[i] = v;
    }
}

// One block per row: out = LayerNorm(x) · w + b, f32 statistics, f16 output for the GEMM.
extern "C" __global__ void layer_norm_f16(const float* __restrict__ x, const float* __restrict__ w,
                                          const float* __restrict__ b, half_t* __restrict__ out,
                                          int D, float eps) {
    __shared__ float scratch[32];
    const float* row = x + (long)blockIdx.x * D;
    half_t* orow = out + (long)blockIdx.x * D;
    float s = 0.f;
    for (int i = threadIdx.x; i < D; i += blockDim.x) s += row[i];
    const float mean = block_sum(s, scratch) / D;
    float q = 0.f;
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        const float d = row[i] - mean;
        q += d * d;
    }
    const float rstd = rsqrtf(block_sum(q, scratch) / D + eps);
    for (int i = threadIdx.x; i < D; i += blockDim.x)
        orow[i] = f2h((row[i] - mean) * rstd * w[i] + b[i]);
}

// out[r, c] = f16(in[r, c] + bias[c]), optionally through GELU (the MLP's fc1, the projector).
extern "C" __global__ void bias_act_f16(const float* __restrict__ in, const float* __restrict__ bias,
                                        half_t* __restrict__ out, long total, int N, int gelu) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total;
         i += (long)gridDim.x * blockDim.x) {
        float v = in[i] + bias[i % N];
        if (gelu) v = gelu_erf(v);
        out[i] = f2h(v);
    }
}

// out[r, c] = in[r, c] + bias[c] in f32 (the projector's last layer, the image tokens).
extern "C" __global__ void bias_f32(const float* __restrict__ in, const float* __restrict__ bias,
                                    float* __restrict__ out, long total, int N) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total;
         i += (long)gridDim.x * blockDim.x)
        out[i] = in[i] + bias[i % N];
}

// x += (branch + bias) · gamma (LayerScale; gamma may be null for SigLIP).
extern "C" __global__ void residual_bias_scale(float* __restrict__ x, const float* __restrict__ branch,
                                               const float* __restrict__ bias,
                                               const float* __restrict__ gamma, long total, int N) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total;
         i += (long)gridDim.x * blockDim.x) {
        const int c = (int)(i % N);
        float v = branch[i] + bias[c];
        if (gamma) v *= gamma[c];
        x[i] += v;
    }
}

// One warp per score row: probs = softmax(scale · scores) in f16. Rows are (head, query);
// with causal_past >= 0, query q sees keys 0..causal_past + q only (the rest get 0).
extern "C" __global__ void softmax_rows_f16(const float* __restrict__ scores, half_t* __restrict__ probs,
                                            int rows, int queries, int keys, float scale,
                                            int causal_past) {
    const int warps = blockDim.x / VLA_WARP;
    const int row = blockIdx.x * warps + threadIdx.x / VLA_WARP;
    const int lane = threadIdx.x % VLA_WARP;
    if (row >= rows) return;
    const float* s = scores + (long)row * keys;
    half_t* p = probs + (long)row * keys;
    const int q = row % queries;
    const int visible = causal_past >= 0 ? min(keys, causal_past + q + 1) : keys;
    float m = -VLA_INF;
    for (int k = lane; k < visible; k += VLA_WARP) m = fmaxf(m, s[k] * scale);
    m = warp_max(m);
    float sum = 0.f;
    for (int k = lane; k < visible; k += VLA_WARP) sum += expf(s[k] * scale - m);
    sum = warp_sum(sum);
    const float inv = 1.f / sum;
    for (int k = lane; k < keys; k += VLA_WARP)
        p[k] = f2h(k < visible ? expf(s[k] * scale - m) * inv : 0.f);
}

// fused [P, Da + Db] f16 = [a rows from a_first, b rows from b_first] (prefix tokens skipped).
extern "C" __global__ void concat_features_f16(const float* __restrict__ a, int a_first, int Da,
                                               const float* __restrict__ b, int b_first, int Db,
                                               half_t* __restrict__ fused, int patches) {
    const int W = Da + Db;
    const long total = (long)patches * W;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total;
         i += (long)gridDim.x * blockDim.x) {
        const int p = (int)(i / W);
        const int c = (int)(i % W);
        const float v = c < Da ? a[(long)(a_first + p) * Da + c] : b[(long)(b_first + p) * Db + (c - Da)];
        fused[i] = f2h(v);
    }
}
