// Llama kernels: prompt/image embedding rows, RMSNorm, rotate-half RoPE with the KV cache
// write, SiLU-mul, decode attention with GQA, and greedy argmax on the device.
//
// `state` is a small device array shared by the decode graph: state[0] = position of the next
// row to write, state[1] = the latest token id, state[2] = tokens generated so far.

// x [1 + P + L - 1, H] f32 = [embed(ids[0]), image tokens, embed(ids[1..L])], where a
// negative id gives a zero row (OpenVLA-OFT zeroes its action placeholders' embeddings; the
// token path's ids are never negative). OFT's prefix is every camera's image tokens and the
// proprio token.
extern "C" __global__ void assemble_prefill(const half_t* __restrict__ table, const int* __restrict__ ids,
                                            const float* __restrict__ image_tokens,
                                            float* __restrict__ x, int P, int L, int H) {
    const int rows = P + L;
    const long total = (long)rows * H;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total;
         i += (long)gridDim.x * blockDim.x) {
        const int r = (int)(i / H);
        const int c = (int)(i % H);
        float v;
        if (r == 0) v = h2f(table[(long)ids[0] * H + c]);
        else if (r <= P) v = image_tokens[(long)(r - 1) * H + c];
        else {
            const int id = ids[r - P];
            v = id < 0 ? 0.f : h2f(table[(long)id * H + c]);
        }
        x[i] = v;
    }
}

// x [H] f32 = embed(state[1]).
extern "C" __global__ void embed_decode(const half_t* __restrict__ table, const int* __restrict__ state,
                                        float* __restrict__ x, int H) {
    const long t = state[1];
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < H; c += gridDim.x * blockDim.x)
        x[c] = h2f(table[t * H + c]);
}

// One block per row: out = f16(x · rsqrt(mean(x²) + eps) · w), as transformers' LlamaRMSNorm.
// Rows of H = 4·k values up to 4·RMS_VEC_PER_THREAD·blockDim are read once, with 16-byte
// loads, and kept in registers (rms_inverse_vec, common.cuh); other widths take a plain
// two-pass loop.
extern "C" __global__ void rms_norm_f16(const float* __restrict__ x, const float* __restrict__ w,
                                        half_t* __restrict__ out, int H, float eps) {
    __shared__ float scratch[32];
    const float* row = x + (long)blockIdx.x * H;
    half_t* orow = out + (long)blockIdx.x * H;
    const int quads = H / 4;
    if (rms_vec_fits(H)) {
        float4 v[RMS_VEC_PER_THREAD];
        const float r = rms_inverse_vec(row, H, eps, scratch, v);
#pragma unroll
        for (int i = 0; i < RMS_VEC_PER_THREAD; ++i) {
            const int qd = threadIdx.x + i * blockDim.x;
            if (qd < quads) {
                const float4 wv = reinterpret_cast<const float4*>(w)[qd];
                uint2 packed;
                packed.x = (unsigned)f2h(v[i].x * r * wv.x) | ((unsigned)f2h(v[i].y * r * wv.y) << 16);
                packed.y = (unsigned)f2h(v[i].z * r * wv.z) | ((unsigned)f2h(v[i].w * r * wv.w) << 16);
                reinterpret_cast<uint2*>(orow)[qd] = packed;
            }
        }
        return;
    }
    float q = 0.f;
    for (int i = threadIdx.x; i < H; i += blockDim.x) q += row[i] * row[i];
    const float r = rsqrtf(block_sum(q, scratch) / H + eps);
    for (int i = threadIdx.x; i < H; i += blockDim.x) orow[i] = f2h(row[i] * r * w[i]);
}

// qkv [n, (heads + 2·kv_heads)·hd] f32 (fused q/k/v projection) → q [n, heads·hd] f16 rotated;
// k rotated and v written to the cache [kv_heads, capacity, hd] f16 at positions state[0] + r.
// cos/sin tables [capacity, hd/2] are the CPU backend's (f32 inv_freq, f32 angle).
extern "C" __global__ void rope_cache_write(const float* __restrict__ qkv, half_t* __restrict__ q,
                                            half_t* __restrict__ k_cache, half_t* __restrict__ v_cache,
                                            const float* __restrict__ cos_t, const float* __restrict__ sin_t,
                                            const int* __restrict__ state, int n, int heads, int kv_heads,
                                            int hd, int capacity) {
    const int half_d = hd / 2;
    const int width = (heads + 2 * kv_heads) * hd;
    const int pairs_per_row = (heads + kv_heads) * half_d + kv_heads * hd;
    const int total = n * pairs_per_row;
    const int first = state[0];
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        const int r = i / pairs_per_row;
        int j = i - r * pairs_per_row;
        const int pos = first + r;
        const float* row = qkv + (long)r * width;
        if (j < (heads + kv_heads) * half_d) {
            const int head = j / half_d;          // q heads, then k heads
            const int d = j % half_d;
            const float x1 = row[head * hd + d];
            const float x2 = row[head * hd + d + half_d];
            const float c = cos_t[(long)pos * half_d + d];
            const float s = sin_t[(long)pos * half_d + d];
            const float lo = x1 * c - x2 * s;
            const float hi = x2 * c + x1 * s;
            if (head < heads) {
                q[(long)r * heads * hd + head * hd + d] = f2h(lo);
                q[(long)r * heads * hd + head * hd + d + half_d] = f2h(hi);
            } else {
                const int g = head - heads;
                half_t* dst = k_cache + ((long)g * capacity + pos) * hd;
                dst[d] = f2h(lo);
                dst[d + half_d] = f2h(hi);
            }
        } else {
            j -= (heads + kv_heads) * half_d;
            const int g = j / hd;
            const int d = j % hd;
            v_cache[((long)g * capacity + pos) * hd + d] =
                f2h(row[(heads + kv_heads) * hd + g * hd + d]);
        }
    }
}

// gate_up [n, 2·I] f32 → out [n, I] f16 = silu(gate) · up (four values per thread when I
// is a multiple of 4).
extern "C" __global__ void silu_mul_f16(const float* __restrict__ gate_up, half_t* __restrict__ out,
                                        int n, int I) {
    if ((I & 3) == 0) {
        const int iq = I / 4;
        const int total = n * iq;
        for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
            const int r = i / iq;
            const int c = (i - r * iq) * 4;
            const float4 g = *reinterpret_cast<const float4*>(gate_up + (long)r * 2 * I + c);
            const float4 u = *reinterpret_cast<const float4*>(gate_up + (long)r * 2 * I + I + c);
            uint2 packed;
            packed.x = (unsigned)f2h(g.x / (1.f + expf(-g.x)) * u.x) |
                       ((unsigned)f2h(g.y / (1.f + expf(-g.y)) * u.y) << 16);
            packed.y = (unsigned)f2h(g.z / (1.f + expf(-g.z)) * u.z) |
                       ((unsigned)f2h(g.w / (1.f + expf(-g.w)) * u.w) << 16);
            *reinterpret_cast<uint2*>(out + (long)r * I + c) = packed;
        }
        return;
    }
    const int total = n * I;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        const int r = i / I;
        const int c = i - r * I;
        const float g = gate_up[(long)r * 2 * I + c];
        const float u = gate_up[(long)r * 2 * I + I + c];
        out[i] = f2h(g / (1.f + expf(-g)) * u);
    }
}

// Decode attention kernels. Scores: groups of 8 lanes take one key each (16-byte loads, a
// 3-step shuffle sum), so a warp scores 4 keys at once. Weighted sum: the warps split the keys
// and the lanes the head dimensions (hd <= 32 * DECODE_DIMS_PER_LANE); the warps' partial sums
// meet in shared memory.
#define DECODE_DIMS_PER_LANE 8
#define DECODE_LANES_PER_KEY 8
#define DECODE_PASSES_IN_FLIGHT 4

// scores[j] = scale · q·k(first + j) for j < count, q staged as f32 in qs, kh the keys of one
// KV head. Called by every thread of the block.
__device__ __forceinline__ void decode_scores(const float* qs, const half_t* __restrict__ kh, int hd, int first,
                                              int count, float scale, float* scores) {
    const int lane = threadIdx.x % VLA_WARP;
    const int sub = lane % DECODE_LANES_PER_KEY;
    const int keys_per_pass = (int)blockDim.x / DECODE_LANES_PER_KEY;
    // Every lane runs the same number of passes so that the shuffles below see full warps.
    const int passes = (count + keys_per_pass - 1) / keys_per_pass;
    for (int pass0 = 0; pass0 < passes; pass0 += DECODE_PASSES_IN_FLIGHT) {
        // The dot products of several passes first (their loads overlap), then the sums.
        float dots[DECODE_PASSES_IN_FLIGHT];
#pragma unroll
        for (int u = 0; u < DECODE_PASSES_IN_FLIGHT; ++u) {
            const int j = (pass0 + u) * keys_per_pass + (int)threadIdx.x / DECODE_LANES_PER_KEY;
            float dot = 0.f;
            if (pass0 + u < passes && j < count) {
                const half_t* kr = kh + (long)(first + j) * hd;
                if ((hd & 7) == 0) {
                    for (int c = sub; c < hd / 8; c += DECODE_LANES_PER_KEY) {
                        const uint4 raw = *reinterpret_cast<const uint4*>(kr + 8 * c);
                        const half_t* k8 = reinterpret_cast<const half_t*>(&raw);
#pragma unroll
                        for (int i = 0; i < 8; ++i) dot += qs[8 * c + i] * h2f(k8[i]);
                    }
                } else {
                    for (int d = sub; d < hd; d += DECODE_LANES_PER_KEY) dot += qs[d] * h2f(kr[d]);
                }
            }
            dots[u] = dot;
        }
#pragma unroll
        for (int u = 0; u < DECODE_PASSES_IN_FLIGHT; ++u) {
            float dot = dots[u];
#pragma unroll
            for (int o = DECODE_LANES_PER_KEY / 2; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
            const int j = (pass0 + u) * keys_per_pass + (int)threadIdx.x / DECODE_LANES_PER_KEY;
            if (sub == 0 && pass0 + u < passes && j < count) scores[j] = dot * scale;
        }
    }
}

// partial[warp · hd + d] = Σ p[j] · v(first + j)[d] over the warp's keys j < count (j = warp,
// warp + warps, ...), vh the values of one KV head. Called by every thread of the block.
__device__ __forceinline__ void decode_value_sums(const float* p, const half_t* __restrict__ vh, int hd, int first,
                                                  int count, float* partial) {
    const int warps = blockDim.x / VLA_WARP;
    const int lane = threadIdx.x % VLA_WARP;
    const int warp = threadIdx.x / VLA_WARP;
    float acc[DECODE_DIMS_PER_LANE];
#pragma unroll
    for (int i = 0; i < DECODE_DIMS_PER_LANE; ++i) acc[i] = 0.f;
#pragma unroll 4
    for (int j = warp; j < count; j += warps) {
        const float pj = p[j];
        const half_t* vr = vh + (long)(first + j) * hd;
#pragma unroll
        for (int i = 0; i < DECODE_DIMS_PER_LANE; ++i) {
            const int d = lane + VLA_WARP * i;
            if (d < hd) acc[i] += pj * h2f(vr[d]);
        }
    }
#pragma unroll
    for (int i = 0; i < DECODE_DIMS_PER_LANE; ++i) {
        const int d = lane + VLA_WARP * i;
        if (d < hd) partial[warp * hd + d] = acc[i];
    }
}

// scores[j] = exp(scores[j] − m) for j < count, with m the largest score (−inf when count is
// 0); returns Σ scores[j] to every thread. Called by every thread of the block.
__device__ __forceinline__ float decode_exp_scores(float* scores, int count, float* scratch, float& m) {
    m = -VLA_INF;
    for (int j = threadIdx.x; j < count; j += blockDim.x) m = fmaxf(m, scores[j]);
    m = block_max(m, scratch);
    float sum = 0.f;
    for (int j = threadIdx.x; j < count; j += blockDim.x) {
        const float e = expf(scores[j] - m);
        scores[j] = e;
        sum += e;
    }
    return block_sum(sum, scratch);
}

// Decode attention, one block per query head: the query at position state[0] against cached
// keys 0..state[0] of its KV head (GQA: head / (heads / kv_heads)).
// Dynamic shared memory: q [hd], scores [capacity], partial sums [warps, hd], all f32.
extern "C" __global__ void decode_attention(const half_t* __restrict__ q, const half_t* __restrict__ k_cache,
                                            const half_t* __restrict__ v_cache, half_t* __restrict__ out,
                                            const int* __restrict__ state, int heads, int kv_heads,
                                            int hd, int capacity, float scale) {
    extern __shared__ float smem[];
    __shared__ float scratch[32];
    const int warps = blockDim.x / VLA_WARP;
    float* qs = smem;
    float* scores = smem + hd;
    float* partial = scores + capacity;
    const int h = blockIdx.x;
    const int g = h / (heads / kv_heads);
    const int keys = state[0] + 1;
    const half_t* qh = q + (long)h * hd;
    const half_t* kh = k_cache + (long)g * capacity * hd;
    const half_t* vh = v_cache + (long)g * capacity * hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) qs[d] = h2f(qh[d]);
    __syncthreads();
    decode_scores(qs, kh, hd, 0, keys, scale, scores);
    __syncthreads();
    float m;
    const float sum = decode_exp_scores(scores, keys, scratch, m);
    const float inv = 1.f / sum;
    decode_value_sums(scores, vh, hd, 0, keys, partial);
    __syncthreads();
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float total = 0.f;
        for (int w = 0; w < warps; ++w) total += partial[w * hd + d];
        out[(long)h * hd + d] = f2h(total * inv);
    }
}

// Decode attention split over the keys (a benchmark variant; flash-decoding; the arguments of
// decode_attention, then the shares, the counters and the split count): with 32 heads
// the kernel above keeps only 32 multiprocessors reading the cache. Block b takes head
// b / splits and the (b % splits)-th share of keys 0..state[0]; it writes its share's score
// maximum m, Σ exp(s − m) and Σ exp(s − m) · v to partials [heads, splits, hd + 2], and the
// last block of the head to finish (counters[head], which it resets for the next launch)
// merges the shares. Dynamic shared memory: q [hd], scores [ceil(capacity / splits)], partial
// sums [warps, hd], all f32.
extern "C" __global__ void decode_attention_split(const half_t* __restrict__ q, const half_t* __restrict__ k_cache,
                                                  const half_t* __restrict__ v_cache, half_t* __restrict__ out,
                                                  const int* __restrict__ state, int heads, int kv_heads, int hd,
                                                  int capacity, float scale, float* __restrict__ partials,
                                                  unsigned int* __restrict__ counters, int splits) {
    extern __shared__ float smem[];
    __shared__ float scratch[32];
    __shared__ unsigned int arrived;
    const int warps = blockDim.x / VLA_WARP;
    const int h = blockIdx.x / splits;
    const int split = blockIdx.x % splits;
    const int g = h / (heads / kv_heads);
    const int keys = state[0] + 1;
    const int share = (keys + splits - 1) / splits;
    const int first = min(keys, split * share);
    const int count = min(keys, first + share) - first;
    float* qs = smem;
    float* scores = smem + hd;
    float* partial = scores + (capacity + splits - 1) / splits;
    const half_t* qh = q + (long)h * hd;
    const half_t* kh = k_cache + (long)g * capacity * hd;
    const half_t* vh = v_cache + (long)g * capacity * hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) qs[d] = h2f(qh[d]);
    __syncthreads();
    decode_scores(qs, kh, hd, first, count, scale, scores);
    __syncthreads();
    float m;
    const float sum = decode_exp_scores(scores, count, scratch, m);
    decode_value_sums(scores, vh, hd, first, count, partial);
    __syncthreads();
    float* mine = partials + ((long)h * splits + split) * (hd + 2);
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float total = 0.f;
        for (int w = 0; w < warps; ++w) total += partial[w * hd + d];
        mine[d] = total;
    }
    if (threadIdx.x == 0) {
        mine[hd] = m;
        mine[hd + 1] = sum;
    }
    // This block's share is visible device-wide before it counts itself in.
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) arrived = atomicAdd(counters + h, 1u);
    __syncthreads();
    if (arrived != (unsigned int)splits - 1) return;
    __threadfence();
    // The other blocks' shares were written after this block started: read them past L1.
    const volatile float* all = partials + (long)h * splits * (hd + 2);
    float top = -VLA_INF;
    for (int s = 0; s < splits; ++s)
        if (all[s * (hd + 2) + hd + 1] > 0.f) top = fmaxf(top, all[s * (hd + 2) + hd]);
    float total_weight = 0.f;
    for (int s = 0; s < splits; ++s) {
        const float l = all[s * (hd + 2) + hd + 1];
        if (l > 0.f) total_weight += expf(all[s * (hd + 2) + hd] - top) * l;
    }
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float total = 0.f;
        for (int s = 0; s < splits; ++s) {
            const float l = all[s * (hd + 2) + hd + 1];
            if (l > 0.f) total += expf(all[s * (hd + 2) + hd] - top) * all[s * (hd + 2) + d];
        }
        out[(long)h * hd + d] = f2h(total / total_weight);
    }
    if (threadIdx.x == 0) counters[h] = 0u;
}

// One block: the first index of the largest finite-or-inf logit (NaN skipped), as torch.argmax
// on the reference's logits. Writes tokens[state[2]] and state[1], then advances state[0]
// by `advance` positions and state[2] by one.
extern "C" __global__ void argmax_advance(const float* __restrict__ logits, int vocab, int* __restrict__ state,
                                          int* __restrict__ tokens, int advance) {
    __shared__ float best_v[1024];
    __shared__ int best_i[1024];
    float bv = -VLA_INF;
    int bi = -1;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        const float v = logits[i];
        if (!(v != v) && (bi < 0 || v > bv)) { bv = v; bi = i; }
    }
    best_v[threadIdx.x] = bv;
    best_i[threadIdx.x] = bi;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            const float ov = best_v[threadIdx.x + s];
            const int oi = best_i[threadIdx.x + s];
            const float mv = best_v[threadIdx.x];
            const int mi = best_i[threadIdx.x];
            if (oi >= 0 && (mi < 0 || ov > mv || (ov == mv && oi < mi))) {
                best_v[threadIdx.x] = ov;
                best_i[threadIdx.x] = oi;
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        const int token = best_i[0];
        tokens[state[2]] = token;
        state[1] = token < 0 ? 0 : token;
        state[0] += advance;
        state[2] += 1;
    }
}
