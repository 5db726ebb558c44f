// ViT kernels: patch im2col, token assembly, LayerNorm (with the pending residual bias),
// bias/GELU epilogues, attention softmax and the patch-wise concat of the two featurizers.
// Element-wise kernels index with 32-bit ints (the host checks every size fits) and take
// four consecutive values per thread when the row width allows.

// pixels [3, S, S] f32 → cols [grid², 3·p·p] f32 in the conv weight's (c, ky, kx) order. The
// patch embedding runs in f32: its inputs are the exact preprocessed pixels.
extern "C" __global__ void im2col_f32(const float* __restrict__ pixels, float* __restrict__ cols,
                                      int S, int p, int grid) {
    const int patch_len = 3 * p * p;
    const int total = grid * grid * patch_len;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        const int idx = i / patch_len;
        const int r = i - idx * patch_len;
        const int c = r / (p * p);
        const int ky = (r / p) % p;
        const int kx = r % p;
        const int py = idx / grid, px = idx % grid;
        cols[i] = pixels[c * S * S + (py * p + ky) * S + px * p + kx];
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
    const int total = (prefix + patches) * D;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        const int row = i / D;
        const int col = i - row * D;
        float v;
        if (row < prefix) {
            v = prefix_tokens[i];
            if (pos_covers_prefix) v += pos_embed[i];
        } else {
            v = patch_out[(row - prefix) * D + col] + patch_bias[col];
            v += pos_covers_prefix ? pos_embed[i] : pos_embed[(row - prefix) * D + col];
        }
        x[i] = v;
    }
}

// Largest row (in float4) one thread keeps in registers in the normalisation kernels.
#define NORM_VEC_PER_THREAD 4

__device__ __forceinline__ void store_half4(half_t* out, float a, float b, float c, float d) {
    uint2 packed;
    packed.x = (unsigned)f2h(a) | ((unsigned)f2h(b) << 16);
    packed.y = (unsigned)f2h(c) | ((unsigned)f2h(d) << 16);
    *reinterpret_cast<uint2*>(out) = packed;
}

// One block per row: out = LayerNorm(x) · w + b, f32 statistics (two-pass, from registers),
// f16 output for the GEMM. With `add_bias` (may be null) the row first gets that bias added
// and written back: the pending bias of the residual branch before it, whose GEMM added its
// product straight into x. Rows of D = 4·k values up to 4·NORM_VEC_PER_THREAD·blockDim are
// read once with 16-byte loads; other widths take a plain three-pass loop.
extern "C" __global__ void layer_norm_f16(float* __restrict__ x, const float* __restrict__ add_bias,
                                          const float* __restrict__ w, const float* __restrict__ b,
                                          half_t* __restrict__ out, int D, float eps) {
    __shared__ float scratch[32];
    float* row = x + (long)blockIdx.x * D;
    half_t* orow = out + (long)blockIdx.x * D;
    const int quads = D / 4;
    if ((D & 3) == 0 && quads <= NORM_VEC_PER_THREAD * (int)blockDim.x) {
        float4 v[NORM_VEC_PER_THREAD];
        float s = 0.f;
#pragma unroll
        for (int i = 0; i < NORM_VEC_PER_THREAD; ++i) {
            const int qd = threadIdx.x + i * blockDim.x;
            v[i] = qd < quads ? reinterpret_cast<const float4*>(row)[qd] : make_float4(0.f, 0.f, 0.f, 0.f);
            if (add_bias && qd < quads) {
                const float4 ab = reinterpret_cast<const float4*>(add_bias)[qd];
                v[i].x += ab.x; v[i].y += ab.y; v[i].z += ab.z; v[i].w += ab.w;
                reinterpret_cast<float4*>(row)[qd] = v[i];
            }
            s += v[i].x + v[i].y + v[i].z + v[i].w;
        }
        const float mean = block_sum(s, scratch) / D;
        float q = 0.f;
#pragma unroll
        for (int i = 0; i < NORM_VEC_PER_THREAD; ++i) {
            const int qd = threadIdx.x + i * blockDim.x;
            if (qd < quads) {
                const float a = v[i].x - mean, bb = v[i].y - mean, c = v[i].z - mean, d = v[i].w - mean;
                q += a * a + bb * bb + c * c + d * d;
            }
        }
        const float rstd = rsqrtf(block_sum(q, scratch) / D + eps);
#pragma unroll
        for (int i = 0; i < NORM_VEC_PER_THREAD; ++i) {
            const int qd = threadIdx.x + i * blockDim.x;
            if (qd < quads) {
                const float4 wv = reinterpret_cast<const float4*>(w)[qd];
                const float4 bv = reinterpret_cast<const float4*>(b)[qd];
                store_half4(orow + 4 * qd, (v[i].x - mean) * rstd * wv.x + bv.x,
                            (v[i].y - mean) * rstd * wv.y + bv.y, (v[i].z - mean) * rstd * wv.z + bv.z,
                            (v[i].w - mean) * rstd * wv.w + bv.w);
            }
        }
        return;
    }
    float s = 0.f;
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        if (add_bias) row[i] += add_bias[i];
        s += row[i];
    }
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

// out[r, c] = f16(in[r, c] + bias[c]), optionally through GELU (the MLP's fc1, the projector);
// with write_back the f32 sum is also stored back into `in` (q and k of the attention, whose
// scores are computed in f32).
extern "C" __global__ void bias_act_f16(float* in, const float* __restrict__ bias,
                                        half_t* __restrict__ out, int total, int N, int gelu,
                                        int write_back) {
    if ((N & 3) == 0) {
        const int quads = total / 4, nq = N / 4;
        for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < quads; i += gridDim.x * blockDim.x) {
            float4 v = reinterpret_cast<const float4*>(in)[i];
            const float4 bv = reinterpret_cast<const float4*>(bias)[i % nq];
            v.x += bv.x; v.y += bv.y; v.z += bv.z; v.w += bv.w;
            if (write_back) reinterpret_cast<float4*>(in)[i] = v;
            if (gelu) { v.x = gelu_erf(v.x); v.y = gelu_erf(v.y); v.z = gelu_erf(v.z); v.w = gelu_erf(v.w); }
            store_half4(out + 4 * i, v.x, v.y, v.z, v.w);
        }
        return;
    }
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        float v = in[i] + bias[i % N];
        if (write_back) in[i] = v;
        if (gelu) v = gelu_erf(v);
        out[i] = f2h(v);
    }
}

// The attention input with the scores on tensor cores (a benchmark variant of bias_act_f16
// with write_back): out[r, c] = f16(in[r, c] + bias[c]) over [rows, 3D] (q | k | v), and q
// and k split into f16 halves hi = f16(v), lo = f16(v − hi) per head h, laid out
// q_ext[r, h] = [q_hi | q_hi | q_lo] and k_ext[r, h] = [k_hi | k_lo | k_hi] (3·hd each), so
// that one FP16 GEMM over 3·hd gives q_hi·k_hi + q_hi·k_lo + q_lo·k_hi: the f32 score up to
// q_lo·k_lo, about 2⁻²² of |q|·|k|.
extern "C" __global__ void qkv_bias_split_f16(const float* __restrict__ in, const float* __restrict__ bias,
                                              half_t* __restrict__ out, half_t* __restrict__ q_ext,
                                              half_t* __restrict__ k_ext, int rows, int D, int hd) {
    const int width = 3 * D;
    const int heads = D / hd;
    const int total = rows * width;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        const int r = i / width;
        const int c = i - r * width;
        const float v = in[i] + bias[c];
        const half_t hi = f2h(v);
        out[i] = hi;
        if (c < 2 * D) {
            const int cc = c < D ? c : c - D;
            const int h = cc / hd;
            const int d = cc - h * hd;
            const half_t lo = f2h(v - h2f(hi));
            half_t* ext = (c < D ? q_ext : k_ext) + ((long)r * heads + h) * 3 * hd;
            ext[d] = hi;
            ext[hd + d] = c < D ? hi : lo;
            ext[2 * hd + d] = c < D ? lo : hi;
        }
    }
}

// x[r, c] += bias[c]: the last block's pending residual bias (see layer_norm_f16), and the
// projector's last bias (the image tokens).
extern "C" __global__ void add_bias_f32(float* __restrict__ x, const float* __restrict__ bias, int total,
                                        int N) {
    if ((N & 3) == 0) {
        const int quads = total / 4, nq = N / 4;
        for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < quads; i += gridDim.x * blockDim.x) {
            const float4 bv = reinterpret_cast<const float4*>(bias)[i % nq];
            float4 xv = reinterpret_cast<float4*>(x)[i];
            xv.x += bv.x; xv.y += bv.y; xv.z += bv.z; xv.w += bv.w;
            reinterpret_cast<float4*>(x)[i] = xv;
        }
        return;
    }
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x)
        x[i] += bias[i % N];
}

// One warp per score row: probs = softmax(scale · scores) in f16. Rows are (head, query), each
// `stride` values apart (keys padded for aligned GEMM operands; the padding gets 0); with
// causal_past >= 0, query q sees keys 0..causal_past + q only (the rest get 0). Rows up to
// 32 · SOFTMAX_REGS values are read once into registers.
#define SOFTMAX_REGS 16
extern "C" __global__ void softmax_rows_f16(const float* __restrict__ scores, half_t* __restrict__ probs,
                                            int rows, int queries, int keys, int stride, float scale,
                                            int causal_past) {
    const int warps = blockDim.x / VLA_WARP;
    const int row = blockIdx.x * warps + threadIdx.x / VLA_WARP;
    const int lane = threadIdx.x % VLA_WARP;
    if (row >= rows) return;
    const float* s = scores + (long)row * stride;
    half_t* p = probs + (long)row * stride;
    const int q = row % queries;
    const int visible = causal_past >= 0 ? min(keys, causal_past + q + 1) : keys;
    if (stride <= VLA_WARP * SOFTMAX_REGS) {
        float v[SOFTMAX_REGS];
        float m = -VLA_INF;
#pragma unroll
        for (int i = 0; i < SOFTMAX_REGS; ++i) {
            const int k = lane + VLA_WARP * i;
            v[i] = k < visible ? s[k] * scale : -VLA_INF;
            m = fmaxf(m, v[i]);
        }
        m = warp_max(m);
        float sum = 0.f;
#pragma unroll
        for (int i = 0; i < SOFTMAX_REGS; ++i) {
            const int k = lane + VLA_WARP * i;
            v[i] = k < visible ? expf(v[i] - m) : 0.f;
            sum += v[i];
        }
        const float inv = 1.f / warp_sum(sum);
#pragma unroll
        for (int i = 0; i < SOFTMAX_REGS; ++i) {
            const int k = lane + VLA_WARP * i;
            if (k < stride) p[k] = f2h(v[i] * inv);
        }
        return;
    }
    float m = -VLA_INF;
    for (int k = lane; k < visible; k += VLA_WARP) m = fmaxf(m, s[k] * scale);
    m = warp_max(m);
    float sum = 0.f;
    for (int k = lane; k < visible; k += VLA_WARP) sum += expf(s[k] * scale - m);
    sum = warp_sum(sum);
    const float inv = 1.f / sum;
    for (int k = lane; k < stride; k += VLA_WARP)
        p[k] = f2h(k < visible ? expf(s[k] * scale - m) * inv : 0.f);
}

// fused [P, Da + Db] f16 = [a rows from a_first, b rows from b_first] (prefix tokens skipped).
extern "C" __global__ void concat_features_f16(const float* __restrict__ a, int a_first, int Da,
                                               const float* __restrict__ b, int b_first, int Db,
                                               half_t* __restrict__ fused, int patches) {
    const int W = Da + Db;
    const int total = patches * W;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        const int p = i / W;
        const int c = i - p * W;
        const float v = c < Da ? a[(a_first + p) * Da + c] : b[(b_first + p) * Db + (c - Da)];
        fused[i] = f2h(v);
    }
}

// In place on the FP16 input of a W8A8 projector layer: x = clamp(round(x / scale), ±127) ·
// scale, the CPU backend's activation quantization (src/model/quant.rs), so the FP16 GEMM over
// the dequantized INT8 weights computes the same products.
extern "C" __global__ void fake_quant_f16(half_t* __restrict__ x, int total, float scale) {
    const float inv = scale > 0.f ? 1.f / scale : 0.f;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        const float q = fminf(fmaxf(roundf(h2f(x[i]) * inv), -127.f), 127.f);
        x[i] = f2h(q * scale);
    }
}
