// Decode GEMVs y[N] (+)= W[N, K] · x[K], f32 accumulation. Weight formats: f16 (optionally an
// f32 weight split into hi + lo f16 halves), and the CPU backend's INT8 (one f32 scale per
// row) and asymmetric group-wise INT4 (f32 scale and min per group).
//
// These kernels must stream weights at memory bandwidth, so the work per weight element is
// kept to about three instructions:
// - each block converts x to f32 once into shared memory (dynamic, sized by the launch) and
//   every warp reads it from there, instead of every warp converting x again for its rows;
// - each warp computes GEMV_ROWS_PER_WARP rows at once, so each x value read from shared
//   memory serves that many rows;
// - integer codes become floats with the exponent trick (code bits OR'ed into the mantissa of
//   a power of two, which is then subtracted: exact, and on the full-rate pipes) rather than
//   I2F, which on Hopper runs at 16 results per clock and SM against 128 FMAs;
// - each lane keeps several independent 16-byte weight loads in flight per iteration, and
//   issues its first ones before the block stages x, so both latencies overlap.
// Lane l of a warp reads the 16-byte weight chunks l, l + 32, ... of each row (coalesced). In
// shared memory, x is stored transposed by 16-byte units: unit q of every chunk in one run
// (stage_x), so that the lanes of a warp read consecutive units (no bank conflicts) at
// addresses that differ from one chunk to the next by a constant (no address arithmetic).
//
// The vector paths need K (and G) to be multiples of the elements of one 16-byte load; other
// widths, or a launch without shared memory, take the scalar path (a warp's rows one after the
// other, x read from global memory). When x does not fit in the shared memory given, it is staged in tiles.

// Rows computed by one warp. The launch covers N with blocks of (blockDim.x / 32) warps ×
// GEMV_ROWS_PER_WARP rows (`DeviceLinear::gemv`).
#define GEMV_ROWS_PER_WARP 2

// Float bit patterns 2^23, 2^19, 2^15, 2^11, 2^7: a 4-bit code OR'ed into the mantissa at bit
// 0, 4, 8, 12 or 16 has the value of the code once the power of two is subtracted.
#define GEMV_P23 0x4B000000u
#define GEMV_P19 0x49000000u
#define GEMV_P15 0x47000000u
#define GEMV_P11 0x45000000u
#define GEMV_P7 0x43000000u

__device__ __forceinline__ void store_row(float* y, int row, float acc, int accumulate) {
    if (accumulate) y[row] += acc; else y[row] = acc;
}

// Bytes of dynamic shared memory this launch was given.
__device__ __forceinline__ int gemv_dynamic_smem_bytes() {
    unsigned int bytes;
    asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(bytes));
    return (int)bytes;
}

// The two f16 packed in a 32-bit word (low half first), as floats.
__device__ __forceinline__ void halves_to_floats(unsigned int v, float& lo, float& hi) {
    asm("{\n\t.reg .f16 l, h;\n\tmov.b32 {l, h}, %2;\n\tcvt.f32.f16 %0, l;\n\tcvt.f32.f16 %1, h;\n\t}"
        : "=f"(lo), "=f"(hi)
        : "r"(v));
}

// The 4-bit code under `mask` (at bit 0, 4, 8, 12 or 16, with `magic` the matching power of two
// from the GEMV_P* list) as a float.
__device__ __forceinline__ float nibble_code(unsigned int v, unsigned int mask, unsigned int magic) {
    // (v & mask) | magic as one LOP3: written in C, the two immediates make it two.
    unsigned int bits;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(bits) : "r"(v), "r"(mask), "r"(magic));
    return __int_as_float((int)bits) - __int_as_float((int)magic);
}

// Signed byte `sel` (0..3) of `v_flipped` = codes ^ 0x80808080, as a float: the byte, now
// code + 128, goes under the mantissa of 2^23, and 2^23 + 128 is subtracted.
__device__ __forceinline__ float int8_code(unsigned int v_flipped, unsigned int sel) {
    return __int_as_float((int)__byte_perm(v_flipped, GEMV_P23, 0x7440u | sel)) - 8388736.f;
}

// Dynamic shared memory the launch adds to that of x (and sums) for the padding of x_stride.
#define GEMV_SMEM_SLACK 1024

// Elements of x staged per pass, given `bytes` of dynamic shared memory and `per32` bytes per
// 32 staged elements: all of K when it fits, else a multiple of 32 (a whole number of 16-byte
// weight chunks in every format). 0: no shared memory, scalar path.
__device__ __forceinline__ int gemv_x_tile(int K, int bytes, int per32) {
    const int capacity = bytes > GEMV_SMEM_SLACK ? (bytes - GEMV_SMEM_SLACK) / per32 * 32 : 0;
    return capacity >= K ? K : capacity;
}

// x of one tile in shared memory, for weight chunks of P 16-byte x units (4 values each): unit
// q of chunk c at slot q · stride + c. The stride (chunks per tile, rounded up to 1 mod 8) makes
// the P units of one chunk, written by neighbouring threads, fall in distinct bank groups.
template <int P>
__device__ __forceinline__ int x_stride(int tile) {
    const int chunks = tile / (4 * P);
    return chunks + ((1 - chunks) & 7);
}

// Stages x[k0, k0 + kt) as f32 (kt a multiple of 4; of 32 with SUMS) into `xs` (slot of unit u:
// (u % P) · stride + u / P) and, with SUMS, the sum of each 32-value chunk into `xsums`. Called
// by every thread of the block (the shuffles need whole warps; blockDim.x is a multiple of 32).
template <int P, bool SUMS>
__device__ __forceinline__ void stage_x(const half_t* __restrict__ x, int k0, int kt, int stride, float4* xs,
                                        float* xsums) {
    const int units = kt / 4;
#pragma unroll 4
    for (int u0 = 0; u0 < units; u0 += blockDim.x) {
        const int u = u0 + threadIdx.x;
        float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
        if (u < units) {
            const uint2 raw = *reinterpret_cast<const uint2*>(x + k0 + 4 * u);
            halves_to_floats(raw.x, v.x, v.y);
            halves_to_floats(raw.y, v.z, v.w);
            xs[(u % P) * stride + u / P] = v;
        }
        if (SUMS) {
            // Eight consecutive lanes hold the eight units of one 32-value chunk.
            float s = (v.x + v.y) + (v.z + v.w);
            s += __shfl_xor_sync(0xffffffffu, s, 1);
            s += __shfl_xor_sync(0xffffffffu, s, 2);
            s += __shfl_xor_sync(0xffffffffu, s, 4);
            if ((threadIdx.x & 7) == 0 && u < units) xsums[u >> 3] = s;
        }
    }
}

__device__ __forceinline__ unsigned int word_of(const uint4& v, int i) {
    return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

extern __shared__ float4 gemv_x[];

// The CUDA-core GEMVs share one walk; what a weight format changes is in a `Rows` type
// (F16Rows, I8Rows, I4Rows below): ELEMS weights per 16-byte chunk, P x units per chunk,
// SUMS (x staged with its 32-value chunk sums), the offsets of a warp's rows (enter), the U
// chunk loads of each row a lane keeps in flight (Loads, filled by load), the inner step over
// one chunk (accumulate) and the row's output from its sum (result).

// y (+)= W · x for the R rows of each warp of row group `group`, x staged into shared memory
// tile by tile (`tile` values, all of K when it fits).
template <int R, int U, class Rows>
__device__ __forceinline__ void gemv_tiled(Rows& rows, const half_t* __restrict__ x, float* __restrict__ y, int N,
                                           int K, int accumulate, int tile, unsigned int group) {
    const int lane = threadIdx.x % VLA_WARP;
    const int row0 = (group * (blockDim.x / VLA_WARP) + threadIdx.x / VLA_WARP) * R;
    const bool active = row0 < N;
    rows.enter(row0, N);
    const int stride = x_stride<Rows::P>(tile);
    float* xsums = reinterpret_cast<float*>(gemv_x + Rows::P * stride);
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = 0.f;

    for (int k0 = 0; k0 < K; k0 += tile) {
        const int kt = min(tile, K - k0);
        const int chunks = kt / Rows::ELEMS;
        typename Rows::Loads loads;
        int c0 = lane;
        rows.load(loads, c0, active, chunks, k0);
        if (k0 > 0) __syncthreads();  // every warp is done with the previous tile
        stage_x<Rows::P, Rows::SUMS>(x, k0, kt, stride, gemv_x, xsums);
        __syncthreads();
        if (active) {
            for (;;) {
#pragma unroll
                for (int u = 0; u < U; ++u) {
                    const int c = c0 + u * VLA_WARP;
                    if (c < chunks) rows.accumulate(loads, u, c, stride, xsums, acc);
                }
                c0 += U * VLA_WARP;
                if (c0 >= chunks) break;
                rows.load(loads, c0, active, chunks, k0);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const float sum = warp_sum(acc[r]);
        if (lane == 0 && row0 + r < N) store_row(y, row0 + r, rows.result(row0 + r, sum), accumulate);
    }
}

// ---------------------------------------------------------------------------------------------
// FP16: chunk = 8 weights = 2 x units. With W_lo, w = hi + lo (an f32 weight in two halves).

template <int R, int U, bool LO>
struct F16Rows {
    static constexpr int ELEMS = 8;
    static constexpr int P = 2;
    static constexpr bool SUMS = false;
    const half_t* __restrict__ W;
    const half_t* __restrict__ W_lo;
    int K;
    long offset[R];
    struct Loads {
        uint4 hi[U][R], lo[U][R];
    };
    __device__ __forceinline__ void enter(int row0, int N) {
#pragma unroll
        for (int r = 0; r < R; ++r) offset[r] = (long)min(row0 + r, N - 1) * K;
    }
    __device__ __forceinline__ void load(Loads& l, int c0, bool active, int chunks, int k0) const {
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int c = c0 + u * VLA_WARP;
#pragma unroll
            for (int r = 0; r < R; ++r) {
                if (active && c < chunks) {
                    l.hi[u][r] = __ldg(reinterpret_cast<const uint4*>(W + offset[r] + k0 + 8 * c));
                    if (LO) l.lo[u][r] = __ldg(reinterpret_cast<const uint4*>(W_lo + offset[r] + k0 + 8 * c));
                }
            }
        }
    }
    __device__ __forceinline__ void accumulate(const Loads& l, int u, int c, int stride, const float*,
                                               float (&acc)[R]) const {
        const uint4(&hi)[U][R] = l.hi;
        const uint4(&lo)[U][R] = l.lo;
        const float4 xa = gemv_x[c];
        const float4 xb = gemv_x[stride + c];
#pragma unroll
        for (int r = 0; r < R; ++r) {
            float w[8];
            halves_to_floats(hi[u][r].x, w[0], w[1]);
            halves_to_floats(hi[u][r].y, w[2], w[3]);
            halves_to_floats(hi[u][r].z, w[4], w[5]);
            halves_to_floats(hi[u][r].w, w[6], w[7]);
            if (LO) {
                float l[8];
                halves_to_floats(lo[u][r].x, l[0], l[1]);
                halves_to_floats(lo[u][r].y, l[2], l[3]);
                halves_to_floats(lo[u][r].z, l[4], l[5]);
                halves_to_floats(lo[u][r].w, l[6], l[7]);
#pragma unroll
                for (int i = 0; i < 8; ++i) w[i] += l[i];
            }
            float dot = w[0] * xa.x;
            dot = fmaf(w[1], xa.y, dot);
            dot = fmaf(w[2], xa.z, dot);
            dot = fmaf(w[3], xa.w, dot);
            dot = fmaf(w[4], xb.x, dot);
            dot = fmaf(w[5], xb.y, dot);
            dot = fmaf(w[6], xb.z, dot);
            dot = fmaf(w[7], xb.w, dot);
            acc[r] += dot;
        }
    }
    __device__ __forceinline__ float result(int, float sum) const { return sum; }
};

template <int R>
__device__ __forceinline__ void gemv_f16_scalar(const half_t* __restrict__ W, const half_t* __restrict__ W_lo,
                                                const half_t* __restrict__ x, float* __restrict__ y, int N,
                                                int K, int accumulate) {
    const int lane = threadIdx.x % VLA_WARP;
    const int row0 = (blockIdx.x * (blockDim.x / VLA_WARP) + threadIdx.x / VLA_WARP) * R;
    for (int row = row0; row < row0 + R && row < N; ++row) {
        const long base = (long)row * K;
        float acc = 0.f;
        for (int k = lane; k < K; k += VLA_WARP) {
            float w = h2f(W[base + k]);
            if (W_lo != nullptr) w += h2f(W_lo[base + k]);
            acc += w * h2f(x[k]);
        }
        acc = warp_sum(acc);
        if (lane == 0) store_row(y, row, acc, accumulate);
    }
}

// W_lo: nullptr, or the low halves of f32 weights whose high halves are W (same shape).
// Block size 256 (the launch's); at most 64 registers, so that four blocks fit on an SM.
extern "C" __global__ void __launch_bounds__(256, 4) gemv_f16(const half_t* __restrict__ W, const half_t* __restrict__ W_lo,
                                    const half_t* __restrict__ x, float* __restrict__ y, int N, int K,
                                    int accumulate) {
    const int tile = gemv_x_tile(K, gemv_dynamic_smem_bytes(), 32 * 4);
    if ((K & 7) == 0 && tile > 0) {
        if (W_lo != nullptr) {
            F16Rows<GEMV_ROWS_PER_WARP, 2, true> rows{W, W_lo, K};
            gemv_tiled<GEMV_ROWS_PER_WARP, 2>(rows, x, y, N, K, accumulate, tile, blockIdx.x);
        } else {
            F16Rows<GEMV_ROWS_PER_WARP, 4, false> rows{W, W_lo, K};
            gemv_tiled<GEMV_ROWS_PER_WARP, 4>(rows, x, y, N, K, accumulate, tile, blockIdx.x);
        }
    } else {
        gemv_f16_scalar<GEMV_ROWS_PER_WARP>(W, W_lo, x, y, N, K, accumulate);
    }
}

// ---------------------------------------------------------------------------------------------
// INT8: chunk = 16 codes = 4 x units; y = scale[row] · Σ code·x.

// acc[r] += Σ code·x over weight chunk c of row r (codes q[r]), x staged with `stride`: the
// inner step of every INT8 variant, so that they all round alike.
template <int R>
__device__ __forceinline__ void i8_accumulate_chunk(const uint4 (&q)[R], int c, int stride, float (&acc)[R]) {
    float dot[R];
#pragma unroll
    for (int r = 0; r < R; ++r) dot[r] = 0.f;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const float4 xv = gemv_x[j * stride + c];
#pragma unroll
        for (int r = 0; r < R; ++r) {
            const unsigned int v = word_of(q[r], j) ^ 0x80808080u;
            dot[r] = fmaf(int8_code(v, 0), xv.x, dot[r]);
            dot[r] = fmaf(int8_code(v, 1), xv.y, dot[r]);
            dot[r] = fmaf(int8_code(v, 2), xv.z, dot[r]);
            dot[r] = fmaf(int8_code(v, 3), xv.w, dot[r]);
        }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] += dot[r];
}

template <int R, int U>
struct I8Rows {
    static constexpr int ELEMS = 16;
    static constexpr int P = 4;
    static constexpr bool SUMS = false;
    const signed char* __restrict__ W;
    const float* __restrict__ scale;
    int K;
    long offset[R];
    struct Loads {
        uint4 q[U][R];
    };
    __device__ __forceinline__ void enter(int row0, int N) {
#pragma unroll
        for (int r = 0; r < R; ++r) offset[r] = (long)min(row0 + r, N - 1) * K;
    }
    __device__ __forceinline__ void load(Loads& l, int c0, bool active, int chunks, int k0) const {
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int c = c0 + u * VLA_WARP;
#pragma unroll
            for (int r = 0; r < R; ++r) {
                if (active && c < chunks) l.q[u][r] = __ldg(reinterpret_cast<const uint4*>(W + offset[r] + k0 + 16 * c));
            }
        }
    }
    __device__ __forceinline__ void accumulate(const Loads& l, int u, int c, int stride, const float*,
                                               float (&acc)[R]) const {
        i8_accumulate_chunk<R>(l.q[u], c, stride, acc);
    }
    __device__ __forceinline__ float result(int row, float sum) const { return sum * scale[row]; }
};

template <int R>
__device__ __forceinline__ void gemv_i8_scalar(const signed char* __restrict__ W, const float* __restrict__ scale,
                                               const half_t* __restrict__ x, float* __restrict__ y, int N, int K,
                                               int accumulate, unsigned int group) {
    const int lane = threadIdx.x % VLA_WARP;
    const int row0 = (group * (blockDim.x / VLA_WARP) + threadIdx.x / VLA_WARP) * R;
    for (int row = row0; row < row0 + R && row < N; ++row) {
        const signed char* w = W + (long)row * K;
        float acc = 0.f;
        for (int k = lane; k < K; k += VLA_WARP) acc += (float)w[k] * h2f(x[k]);
        acc = warp_sum(acc);
        if (lane == 0) store_row(y, row, acc * scale[row], accumulate);
    }
}

extern "C" __global__ void __launch_bounds__(256, 4) gemv_i8(const signed char* __restrict__ W, const float* __restrict__ scale,
                                   const half_t* __restrict__ x, float* __restrict__ y, int N, int K,
                                   int accumulate) {
    const int tile = gemv_x_tile(K, gemv_dynamic_smem_bytes(), 32 * 4);
    if ((K & 15) == 0 && tile > 0) {
        I8Rows<GEMV_ROWS_PER_WARP, 4> rows{W, scale, K};
        gemv_tiled<GEMV_ROWS_PER_WARP, 4>(rows, x, y, N, K, accumulate, tile, blockIdx.x);
    } else {
        gemv_i8_scalar<GEMV_ROWS_PER_WARP>(W, scale, x, y, N, K, accumulate, blockIdx.x);
    }
}

// ---------------------------------------------------------------------------------------------
// INT4 of the CPU backend: W [N, ceil(K/2)] bytes (element k in the low nibble of byte k / 2
// when k is even), scales and mins [N, ceil(K/G)] f32, w = code · scale + min. Chunk = 32
// codes = 16 bytes = 8 x units, inside one group (G is a multiple of 32), so per chunk
// Σ w·x = scale · Σ code·x + min · Σ x, with Σ x staged once per block.
// Shared memory: x of one tile, then its chunk sums (132 bytes per 32 values).

// acc[r] += Σ w·x over weight chunk c of row r (codes q[r], group scale sc[r] and min mn[r]),
// x and its chunk sums staged with `stride`: the inner step of every INT4 variant.
template <int R>
__device__ __forceinline__ void i4_accumulate_chunk(const uint4 (&q)[R], const float (&sc)[R], const float (&mn)[R],
                                                    int c, int stride, const float* xsums, float (&acc)[R]) {
    float dot[R];
#pragma unroll
    for (int r = 0; r < R; ++r) dot[r] = 0.f;
    // Word j holds codes 8j .. 8j + 7 in nibbles 0 .. 7: x units 2j, 2j + 1.
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const float4 xa = gemv_x[2 * j * stride + c];
        const float4 xb = gemv_x[(2 * j + 1) * stride + c];
#pragma unroll
        for (int r = 0; r < R; ++r) {
            const unsigned int v = word_of(q[r], j);
            const unsigned int h = v >> 12;  // nibbles 5, 6, 7 to bits 8, 12, 16
            dot[r] = fmaf(nibble_code(v, 0x0000000Fu, GEMV_P23), xa.x, dot[r]);
            dot[r] = fmaf(nibble_code(v, 0x000000F0u, GEMV_P19), xa.y, dot[r]);
            dot[r] = fmaf(nibble_code(v, 0x00000F00u, GEMV_P15), xa.z, dot[r]);
            dot[r] = fmaf(nibble_code(v, 0x0000F000u, GEMV_P11), xa.w, dot[r]);
            dot[r] = fmaf(nibble_code(v, 0x000F0000u, GEMV_P7), xb.x, dot[r]);
            dot[r] = fmaf(nibble_code(h, 0x00000F00u, GEMV_P15), xb.y, dot[r]);
            dot[r] = fmaf(nibble_code(h, 0x0000F000u, GEMV_P11), xb.z, dot[r]);
            dot[r] = fmaf(nibble_code(h, 0x000F0000u, GEMV_P7), xb.w, dot[r]);
        }
    }
    const float xsum = xsums[c];
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] += dot[r] * sc[r] + xsum * mn[r];
}

template <int R, int U>
struct I4Rows {
    static constexpr int ELEMS = 32;
    static constexpr int P = 8;
    static constexpr bool SUMS = true;
    const unsigned char* __restrict__ W;
    const float* __restrict__ scales;
    const float* __restrict__ mins;
    int K, G;
    long offset[R], group_offset[R];
    struct Loads {
        uint4 q[U][R];
        float sc[U][R], mn[U][R];
    };
    __device__ __forceinline__ void enter(int row0, int N) {
        const int groups = (K + G - 1) / G;
#pragma unroll
        for (int r = 0; r < R; ++r) {
            const long row = min(row0 + r, N - 1);
            offset[r] = row * (K / 2);
            group_offset[r] = row * groups;
        }
    }
    __device__ __forceinline__ void load(Loads& l, int c0, bool active, int chunks, int k0) const {
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int c = c0 + u * VLA_WARP;
            const int k = k0 + 32 * c;
#pragma unroll
            for (int r = 0; r < R; ++r) {
                if (active && c < chunks) {
                    l.q[u][r] = __ldg(reinterpret_cast<const uint4*>(W + offset[r] + k / 2));
                    l.sc[u][r] = __ldg(scales + group_offset[r] + k / G);
                    l.mn[u][r] = __ldg(mins + group_offset[r] + k / G);
                }
            }
        }
    }
    __device__ __forceinline__ void accumulate(const Loads& l, int u, int c, int stride, const float* xsums,
                                               float (&acc)[R]) const {
        i4_accumulate_chunk<R>(l.q[u], l.sc[u], l.mn[u], c, stride, xsums, acc);
    }
    __device__ __forceinline__ float result(int, float sum) const { return sum; }
};

template <int R>
__device__ __forceinline__ void gemv_i4_scalar(const unsigned char* __restrict__ W, const float* __restrict__ scales,
                                               const float* __restrict__ mins, const half_t* __restrict__ x,
                                               float* __restrict__ y, int N, int K, int G, int accumulate,
                                               unsigned int group) {
    const int lane = threadIdx.x % VLA_WARP;
    const int row0 = (group * (blockDim.x / VLA_WARP) + threadIdx.x / VLA_WARP) * R;
    const int groups = (K + G - 1) / G;
    for (int row = row0; row < row0 + R && row < N; ++row) {
        const unsigned char* w = W + (long)row * ((K + 1) / 2);
        const float* sc = scales + (long)row * groups;
        const float* mn = mins + (long)row * groups;
        float acc = 0.f;
        for (int k = lane; k < K; k += VLA_WARP) {
            const unsigned char byte = w[k / 2];
            const int code = (k & 1) ? (byte >> 4) : (byte & 15);
            const int g = k / G;
            acc += ((float)code * sc[g] + mn[g]) * h2f(x[k]);
        }
        acc = warp_sum(acc);
        if (lane == 0) store_row(y, row, acc, accumulate);
    }
}

// At most 80 registers (three blocks per SM): at 64 it spills.
extern "C" __global__ void __launch_bounds__(256, 3) gemv_i4(const unsigned char* __restrict__ W, const float* __restrict__ scales,
                                   const float* __restrict__ mins, const half_t* __restrict__ x,
                                   float* __restrict__ y, int N, int K, int G, int accumulate) {
    const int tile = gemv_x_tile(K, gemv_dynamic_smem_bytes(), 32 * 4 + 4);
    if ((K & 31) == 0 && (G & 31) == 0 && tile > 0) {
        I4Rows<GEMV_ROWS_PER_WARP, 4> rows{W, scales, mins, K, G};
        gemv_tiled<GEMV_ROWS_PER_WARP, 4>(rows, x, y, N, K, accumulate, tile, blockIdx.x);
    } else {
        gemv_i4_scalar<GEMV_ROWS_PER_WARP>(W, scales, mins, x, y, N, K, G, accumulate, blockIdx.x);
    }
}

// ---------------------------------------------------------------------------------------------
// Benchmark variants of the quantized GEMVs with 4 rows per warp (32 rows per 256-thread
// block) and 2 loads in flight per row: the staged x serves twice the weight bytes. Timed and
// checked against the kernels above by `vla-rt bench --backend cuda`; not used by the policy.
#define GEMV_WIDE_ROWS_PER_WARP 4

extern "C" __global__ void __launch_bounds__(256, 3) gemv_i8_wide(const signed char* __restrict__ W,
                                   const float* __restrict__ scale, const half_t* __restrict__ x,
                                   float* __restrict__ y, int N, int K, int accumulate) {
    const int tile = gemv_x_tile(K, gemv_dynamic_smem_bytes(), 32 * 4);
    if ((K & 15) == 0 && tile > 0) {
        I8Rows<GEMV_WIDE_ROWS_PER_WARP, 2> rows{W, scale, K};
        gemv_tiled<GEMV_WIDE_ROWS_PER_WARP, 2>(rows, x, y, N, K, accumulate, tile, blockIdx.x);
    } else {
        gemv_i8_scalar<GEMV_WIDE_ROWS_PER_WARP>(W, scale, x, y, N, K, accumulate, blockIdx.x);
    }
}

extern "C" __global__ void __launch_bounds__(256, 3) gemv_i4_wide(const unsigned char* __restrict__ W,
                                   const float* __restrict__ scales, const float* __restrict__ mins,
                                   const half_t* __restrict__ x, float* __restrict__ y, int N, int K, int G,
                                   int accumulate) {
    const int tile = gemv_x_tile(K, gemv_dynamic_smem_bytes(), 32 * 4 + 4);
    if ((K & 31) == 0 && (G & 31) == 0 && tile > 0) {
        I4Rows<GEMV_WIDE_ROWS_PER_WARP, 2> rows{W, scales, mins, K, G};
        gemv_tiled<GEMV_WIDE_ROWS_PER_WARP, 2>(rows, x, y, N, K, accumulate, tile, blockIdx.x);
    } else {
        gemv_i4_scalar<GEMV_WIDE_ROWS_PER_WARP>(W, scales, mins, x, y, N, K, G, accumulate, blockIdx.x);
    }
}

// ---------------------------------------------------------------------------------------------
// Persistent benchmark variants of the quantized GEMVs. In the kernels above every block
// stages x (and the INT4 chunk sums) and waits at a barrier for just 16 rows (32 KB of INT4
// weights at K = 4096), so staging and ramp-up weigh as much as the stream itself. Here the
// launch gives about three blocks per SM (`GemvVariant::Persistent`); each stages x once and
// then walks the row groups blockIdx.x, blockIdx.x + gridDim.x, ... with the same inner step,
// issuing a group's first weight loads before the previous group's reduction so that the
// stream does not stop between groups. Timed and checked against the kernels above by
// `vla-rt bench --backend cuda`; not used by the policy.
//
// The fast path needs all of x in one tile (every Llama-2-7B width with the launch's shared
// memory). Otherwise each block computes its groups one after the other exactly as the
// kernels above compute the group of a block.

// Every row group blockIdx.x, blockIdx.x + gridDim.x, ... of y (+)= W · x with x (all of K)
// staged once; `rows` as for gemv_tiled.
template <int R, int U, class Rows>
__device__ __forceinline__ void gemv_persistent_groups(Rows& rows, const half_t* __restrict__ x,
                                                       float* __restrict__ y, int N, int K, int accumulate) {
    const int lane = threadIdx.x % VLA_WARP;
    const int warp_row = (threadIdx.x / VLA_WARP) * R;
    const int rows_per_block = (blockDim.x / VLA_WARP) * R;
    const int chunks = K / Rows::ELEMS;
    const int stride = x_stride<Rows::P>(K);
    float* xsums = reinterpret_cast<float*>(gemv_x + Rows::P * stride);
    int row0 = 0;
    bool active = false;
    // The warp's rows become those of row group `group`.
    auto enter = [&](int group) {
        row0 = group * rows_per_block + warp_row;
        active = row0 < N;
        rows.enter(row0, N);
    };
    typename Rows::Loads loads;
    int c0 = lane;
    int group = blockIdx.x;
    enter(group);
    rows.load(loads, c0, active, chunks, 0);  // in flight while x is staged
    stage_x<Rows::P, Rows::SUMS>(x, 0, K, stride, gemv_x, xsums);
    __syncthreads();
    // The loop condition is the same for the whole block and nothing inside synchronises the
    // block, so warps run ahead of one another freely.
    for (; group * rows_per_block < N; group += gridDim.x) {
        float acc[R];
#pragma unroll
        for (int r = 0; r < R; ++r) acc[r] = 0.f;
        if (active) {
            for (;;) {
#pragma unroll
                for (int u = 0; u < U; ++u) {
                    const int c = c0 + u * VLA_WARP;
                    if (c < chunks) rows.accumulate(loads, u, c, stride, xsums, acc);
                }
                c0 += U * VLA_WARP;
                if (c0 >= chunks) break;
                rows.load(loads, c0, active, chunks, 0);
            }
        }
        const int done_row0 = row0;
        enter(group + gridDim.x);
        c0 = lane;
        rows.load(loads, c0, active, chunks, 0);
#pragma unroll
        for (int r = 0; r < R; ++r) {
            const float sum = warp_sum(acc[r]);
            if (lane == 0 && done_row0 + r < N) store_row(y, done_row0 + r, rows.result(done_row0 + r, sum), accumulate);
        }
    }
}

// Three blocks per SM is what the launch asks for, so up to 80 registers cost no occupancy.
extern "C" __global__ void __launch_bounds__(256, 3) gemv_i8_persistent(const signed char* __restrict__ W,
                                   const float* __restrict__ scale, const half_t* __restrict__ x,
                                   float* __restrict__ y, int N, int K, int accumulate) {
    const int tile = gemv_x_tile(K, gemv_dynamic_smem_bytes(), 32 * 4);
    const bool vector = (K & 15) == 0 && tile > 0;
    if (vector && tile == K) {
        I8Rows<GEMV_ROWS_PER_WARP, 4> rows{W, scale, K};
        gemv_persistent_groups<GEMV_ROWS_PER_WARP, 4>(rows, x, y, N, K, accumulate);
        return;
    }
    const int rows_per_block = (blockDim.x / VLA_WARP) * GEMV_ROWS_PER_WARP;
    for (unsigned int group = blockIdx.x; (int)group * rows_per_block < N; group += gridDim.x) {
        if (vector) {
            I8Rows<GEMV_ROWS_PER_WARP, 4> rows{W, scale, K};
            gemv_tiled<GEMV_ROWS_PER_WARP, 4>(rows, x, y, N, K, accumulate, tile, group);
            __syncthreads();  // every warp is done with the staged x before the next group restages it
        } else {
            gemv_i8_scalar<GEMV_ROWS_PER_WARP>(W, scale, x, y, N, K, accumulate, group);
        }
    }
}

// 80 registers at most, as gemv_i4 (which spills at 64).
extern "C" __global__ void __launch_bounds__(256, 3) gemv_i4_persistent(const unsigned char* __restrict__ W,
                                   const float* __restrict__ scales, const float* __restrict__ mins,
                                   const half_t* __restrict__ x, float* __restrict__ y, int N, int K, int G,
                                   int accumulate) {
    const int tile = gemv_x_tile(K, gemv_dynamic_smem_bytes(), 32 * 4 + 4);
    const bool vector = (K & 31) == 0 && (G & 31) == 0 && tile > 0;
    if (vector && tile == K) {
        I4Rows<GEMV_ROWS_PER_WARP, 4> rows{W, scales, mins, K, G};
        gemv_persistent_groups<GEMV_ROWS_PER_WARP, 4>(rows, x, y, N, K, accumulate);
        return;
    }
    const int rows_per_block = (blockDim.x / VLA_WARP) * GEMV_ROWS_PER_WARP;
    for (unsigned int group = blockIdx.x; (int)group * rows_per_block < N; group += gridDim.x) {
        if (vector) {
            // Two loads in flight per row rather than gemv_i4's four: with four, ptxas spills in
            // this kernel. Each lane still adds its chunks in the same order, so the sums are
            // gemv_i4's to the bit.
            I4Rows<GEMV_ROWS_PER_WARP, 2> rows{W, scales, mins, K, G};
            gemv_tiled<GEMV_ROWS_PER_WARP, 2>(rows, x, y, N, K, accumulate, tile, group);
            __syncthreads();  // every warp is done with the staged x before the next group restages it
        } else {
            gemv_i4_scalar<GEMV_ROWS_PER_WARP>(W, scales, mins, x, y, N, K, G, accumulate, group);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tensor-core benchmark variants (mma.sync m16n8k16, f16 × f16 → f32; compute capability 8.0
// and up). The CUDA-core kernels above spend about three instructions per weight (convert,
// shared-memory x, FMA), which at INT4 density is most of what an SM can issue. Here the
// weights are the A operand (16 rows × 16 k per mma) and x is every column of B, so the eight
// output columns hold the same dot products and column 0 is read. A dot product does not
// depend on the order of k as long as both operands follow it, so each lane hands the mma the
// weights it loaded in the order its conversion to f16 produces them, and x is staged in shared
// memory in that same order. Integer codes become f16 exactly (the code under the exponent of
// 1024, then one f16x2 FMA); the tensor cores multiply f16 exactly and add in f32, so these
// kernels round like the CUDA-core ones up to the order of the sums.
//
// Lane l = 4g + t of a warp loads, in iteration i, the 16-byte chunk 4i + t of rows g and g + 8
// of each 16-row tile. A block holds TC_TILES tiles; its warps take the iterations w, w + 8, ...
// and their partial sums meet in shared memory. Needs K a multiple of the elements of a chunk
// and, for INT4, groups of a multiple of 128 or one group per row (an iteration then lies in
// one group); the launch (`DeviceLinear::gemv_variant`) falls back to the kernels above
// otherwise.

#define TC_TILES 2
#define TC_WARPS 8
#define TC_F16 0
#define TC_I8 1
#define TC_I4 2

// f16x2 constants (low and high half alike).
#define TC_H2_ONE 0x3C003C00u
#define TC_H2_NEG1024 0xE400E400u
#define TC_H2_SIXTEENTH 0x2C002C00u
#define TC_H2_NEG64 0xD400D400u
#define TC_H2_NEG1152 0xE480E480u

// c += A · B for one m16n8k16 tile (A: 4 f16x2 registers, B: 2, C: 4 f32), as PTX lays the
// fragments out: a0/a2 row g, a1/a3 row g + 8, k pairs 2t and 2t + 8; b0/b1 k pairs 2t and
// 2t + 8 of column g; c0, c1 row g and c2, c3 row g + 8, columns 2t and 2t + 1.
__device__ __forceinline__ void mma_f16_16816(float (&c)[4], unsigned int a0, unsigned int a1, unsigned int a2,
                                              unsigned int a3, unsigned int b0, unsigned int b1) {
#if __CUDA_ARCH__ >= 800
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#else
    __trap();  // the launch never selects these kernels below compute capability 8.0
#endif
}

// a · b + c on both f16 halves, rounded once.
__device__ __forceinline__ unsigned int h2_fma(unsigned int a, unsigned int b, unsigned int c) {
    unsigned int d;
    asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

// (v & mask) | magic as one LOP3.
__device__ __forceinline__ unsigned int tc_lop3(unsigned int v, unsigned int mask, unsigned int magic) {
    unsigned int bits;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(bits) : "r"(v), "r"(mask), "r"(magic));
    return bits;
}

template <int FMT> struct TcFormat;
// Elements per 16-byte chunk.
template <> struct TcFormat<TC_F16> { static constexpr int E = 8; };
template <> struct TcFormat<TC_I8> { static constexpr int E = 16; };
template <> struct TcFormat<TC_I4> { static constexpr int E = 32; };

// Where element i of a run of x lands in shared memory, so that the staged f16x2 words pair
// x values as the format's conversion pairs the weights: INT8 words give codes (0, 2), (1, 3)
// of each 4; INT4 words give (0, 4), (1, 5), (2, 6), (3, 7) of each 8; f16 keeps its order.
template <int FMT>
__device__ __forceinline__ int tc_slot(int k) {
    if (FMT == TC_I4) return (k & ~7) + (k & 3) * 2 + ((k >> 2) & 1);
    if (FMT == TC_I8) return (k & ~3) + (k & 1) * 2 + ((k >> 1) & 1);
    return k;
}

// The four f16x2 (codes (0, 4), (1, 5), (2, 6), (3, 7)) of the INT4 word v (code i in nibble i).
__device__ __forceinline__ void tc_i4_pairs(unsigned int v, unsigned int (&p)[4]) {
    const unsigned int v2 = v >> 8;
    p[0] = h2_fma(tc_lop3(v, 0x000F000Fu, 0x64006400u), TC_H2_ONE, TC_H2_NEG1024);
    p[1] = h2_fma(tc_lop3(v, 0x00F000F0u, 0x64006400u), TC_H2_SIXTEENTH, TC_H2_NEG64);
    p[2] = h2_fma(tc_lop3(v2, 0x000F000Fu, 0x64006400u), TC_H2_ONE, TC_H2_NEG1024);
    p[3] = h2_fma(tc_lop3(v2, 0x00F000F0u, 0x64006400u), TC_H2_SIXTEENTH, TC_H2_NEG64);
}

// The two f16x2 (codes (0, 2), (1, 3)) of the INT8 word v (signed code i in byte i): each byte
// plus 128 under the exponent of 1024, less 1152.
__device__ __forceinline__ void tc_i8_pairs(unsigned int v, unsigned int (&p)[2]) {
    const unsigned int flipped = v ^ 0x80808080u;
    p[0] = h2_fma(__byte_perm(flipped, 0x64646464u, 0x4240u), TC_H2_ONE, TC_H2_NEG1152);
    p[1] = h2_fma(__byte_perm(flipped, 0x64646464u, 0x4341u), TC_H2_ONE, TC_H2_NEG1152);
}

// FMT: TC_F16 (W f16, W_lo its residual or nullptr), TC_I8 (scales: one per row) or TC_I4
// (scales and mins per row and group of G). x: f16, or with NORM the f32 residual stream xf,
// staged as f16(xf · rsqrt(mean(xf²) + eps) · norm_w) exactly as rms_norm_f16 (llama.cu)
// writes it (K ≤ 4 · RMS_VEC_PER_THREAD · 256, checked by the launch). Shared memory: x staged
// (zero-padded to whole iterations), for INT4 Σx per iteration, then the warps' partial sums.
template <int FMT, int UNROLL, bool NORM>
__device__ __forceinline__ void gemv_tc(const unsigned char* __restrict__ W, const half_t* __restrict__ W_lo,
                                        const float* __restrict__ scales, const float* __restrict__ mins,
                                        const half_t* __restrict__ x, const float* __restrict__ xf,
                                        const float* __restrict__ norm_w, float eps, float* __restrict__ y, int N,
                                        int K, int G, int accumulate) {
    constexpr int E = TcFormat<FMT>::E;
    constexpr int ITER_K = 4 * E;
    constexpr int ROWS = 16 * TC_TILES;
    const int iters = (K + ITER_K - 1) / ITER_K;
    const int k_pad = iters * ITER_K;
    const int chunks = K / E;
    half_t* xs = reinterpret_cast<half_t*>(gemv_x);
    float* sums = reinterpret_cast<float*>(xs + k_pad);
    float* partial = sums + (FMT == TC_I4 ? iters : 0);
    const int lane = threadIdx.x % VLA_WARP;
    const int warp = threadIdx.x / VLA_WARP;
    const int g = lane >> 2;
    const int t = lane & 3;
    const int row_base = blockIdx.x * ROWS;
    // Bytes per weight row, and the offsets of rows g and g + 8 of each tile (rows past N read
    // row N - 1 and are not stored).
    const long row_bytes = FMT == TC_F16 ? 2L * K : FMT == TC_I8 ? (long)K : (long)K / 2;
    const int groups = FMT == TC_I4 ? (K + G - 1) / G : 1;
    int rows[TC_TILES][2];
#pragma unroll
    for (int tile = 0; tile < TC_TILES; ++tile) {
        rows[tile][0] = min(row_base + 16 * tile + g, N - 1);
        rows[tile][1] = min(row_base + 16 * tile + g + 8, N - 1);
    }

    if (NORM) {
        __shared__ float norm_scratch[32];
        float4 v[RMS_VEC_PER_THREAD];
        const float r = rms_inverse_vec(xf, K, eps, norm_scratch, v);
        for (int k = threadIdx.x; k < k_pad; k += blockDim.x)
            xs[tc_slot<FMT>(k)] = k < K ? f2h(xf[k] * r * norm_w[k]) : (half_t)0;
    } else {
        for (int k = threadIdx.x; k < k_pad; k += blockDim.x) xs[tc_slot<FMT>(k)] = k < K ? x[k] : (half_t)0;
    }
    __syncthreads();
    if (FMT == TC_I4) {
        // The slots of an iteration are its own values (the order changes only within runs of
        // 8, and K is a whole number of chunks).
        for (int i = warp; i < iters; i += TC_WARPS) {
            float s = 0.f;
            for (int k = i * ITER_K + lane; k < min(K, (i + 1) * ITER_K); k += VLA_WARP) s += h2f(xs[k]);
            s = warp_sum(s);
            if (lane == 0) sums[i] = s;
        }
        __syncthreads();
    }

    // F16/INT8: the mma accumulators run over all of K. INT4: one iteration's Σ code·x per
    // row, folded into acc with the group's scale and min.
    float c[TC_TILES][4];
    float acc[TC_TILES][2];
#pragma unroll
    for (int tile = 0; tile < TC_TILES; ++tile) {
        acc[tile][0] = acc[tile][1] = 0.f;
#pragma unroll
        for (int j = 0; j < 4; ++j) c[tile][j] = 0.f;
    }
    for (int i0 = warp; i0 < iters; i0 += TC_WARPS * UNROLL) {
        uint4 w[UNROLL][TC_TILES][2];
        uint4 lo[UNROLL][TC_TILES][2];
        float sc[UNROLL][TC_TILES][2], mn[UNROLL][TC_TILES][2];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int i = i0 + u * TC_WARPS;
            const int chunk = 4 * i + t;
            const bool valid = i < iters && chunk < chunks;
#pragma unroll
            for (int tile = 0; tile < TC_TILES; ++tile) {
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const long at = rows[tile][h] * row_bytes + 16L * chunk;
                    w[u][tile][h] = valid ? __ldg(reinterpret_cast<const uint4*>(W + at)) : make_uint4(0u, 0u, 0u, 0u);
                    if (FMT == TC_F16 && W_lo != nullptr) {
                        lo[u][tile][h] = valid ? __ldg(reinterpret_cast<const uint4*>(
                                                     reinterpret_cast<const unsigned char*>(W_lo) + at))
                                               : make_uint4(0u, 0u, 0u, 0u);
                    }
                    if (FMT == TC_I4) {
                        const long gi = (long)rows[tile][h] * groups + (i < iters ? i * ITER_K / G : 0);
                        sc[u][tile][h] = __ldg(scales + gi);
                        mn[u][tile][h] = __ldg(mins + gi);
                    }
                }
            }
        }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int i = i0 + u * TC_WARPS;
            if (i >= iters) break;
            const uint4* xq = reinterpret_cast<const uint4*>(xs + (4 * i + t) * E);
            if (FMT == TC_F16) {
                const uint4 xv = xq[0];
#pragma unroll
                for (int tile = 0; tile < TC_TILES; ++tile) {
                    const uint4 a = w[u][tile][0], b = w[u][tile][1];
                    mma_f16_16816(c[tile], a.x, b.x, a.y, b.y, xv.x, xv.y);
                    mma_f16_16816(c[tile], a.z, b.z, a.w, b.w, xv.z, xv.w);
                    if (W_lo != nullptr) {
                        const uint4 al = lo[u][tile][0], bl = lo[u][tile][1];
                        mma_f16_16816(c[tile], al.x, bl.x, al.y, bl.y, xv.x, xv.y);
                        mma_f16_16816(c[tile], al.z, bl.z, al.w, bl.w, xv.z, xv.w);
                    }
                }
            } else if (FMT == TC_I8) {
                const uint4 xv[2] = {xq[0], xq[1]};
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const unsigned int b0 = word_of(xv[j / 2], 2 * (j % 2));
                    const unsigned int b1 = word_of(xv[j / 2], 2 * (j % 2) + 1);
#pragma unroll
                    for (int tile = 0; tile < TC_TILES; ++tile) {
                        unsigned int p[2], q[2];
                        tc_i8_pairs(word_of(w[u][tile][0], j), p);
                        tc_i8_pairs(word_of(w[u][tile][1], j), q);
                        mma_f16_16816(c[tile], p[0], q[0], p[1], q[1], b0, b1);
                    }
                }
            } else {
                float ci[TC_TILES][4];
#pragma unroll
                for (int tile = 0; tile < TC_TILES; ++tile)
#pragma unroll
                    for (int j = 0; j < 4; ++j) ci[tile][j] = 0.f;
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const uint4 xv = xq[j];
#pragma unroll
                    for (int tile = 0; tile < TC_TILES; ++tile) {
                        unsigned int p[4], q[4];
                        tc_i4_pairs(word_of(w[u][tile][0], j), p);
                        tc_i4_pairs(word_of(w[u][tile][1], j), q);
                        mma_f16_16816(ci[tile], p[0], q[0], p[1], q[1], xv.x, xv.y);
                        mma_f16_16816(ci[tile], p[2], q[2], p[3], q[3], xv.z, xv.w);
                    }
                }
                const float xsum = sums[i];
#pragma unroll
                for (int tile = 0; tile < TC_TILES; ++tile) {
                    acc[tile][0] += ci[tile][0] * sc[u][tile][0] + xsum * mn[u][tile][0];
                    acc[tile][1] += ci[tile][2] * sc[u][tile][1] + xsum * mn[u][tile][1];
                }
            }
        }
    }
    if (FMT != TC_I4) {
#pragma unroll
        for (int tile = 0; tile < TC_TILES; ++tile) {
            acc[tile][0] = c[tile][0];
            acc[tile][1] = c[tile][2];
        }
    }
    // Column 0 of the result: lanes with t = 0.
    if (t == 0) {
#pragma unroll
        for (int tile = 0; tile < TC_TILES; ++tile) {
            partial[warp * ROWS + 16 * tile + g] = acc[tile][0];
            partial[warp * ROWS + 16 * tile + g + 8] = acc[tile][1];
        }
    }
    __syncthreads();
    if ((int)threadIdx.x < ROWS) {
        const int row = row_base + threadIdx.x;
        float s = 0.f;
        for (int w2 = 0; w2 < TC_WARPS; ++w2) s += partial[w2 * ROWS + threadIdx.x];
        if (row < N) {
            if (FMT == TC_I8) s *= scales[row];
            store_row(y, row, s, accumulate);
        }
    }
}

// 256 threads (TC_WARPS warps) per block of 16 · TC_TILES rows. The `_norm` kernels take the
// f32 residual stream and the RMSNorm weight instead of a normalised x (the decode step then
// skips its rms_norm_f16 launches).
extern "C" __global__ void __launch_bounds__(256, 3) gemv_f16_tc(const half_t* __restrict__ W,
                                                                 const half_t* __restrict__ W_lo,
                                                                 const half_t* __restrict__ x, float* __restrict__ y,
                                                                 int N, int K, int accumulate) {
    const unsigned char* Wb = reinterpret_cast<const unsigned char*>(W);
    // The residual's loads double the registers of a step: one iteration in flight per warp then.
    if (W_lo != nullptr) {
        gemv_tc<TC_F16, 1, false>(Wb, W_lo, nullptr, nullptr, x, nullptr, nullptr, 0.f, y, N, K, 0, accumulate);
    } else {
        gemv_tc<TC_F16, 2, false>(Wb, nullptr, nullptr, nullptr, x, nullptr, nullptr, 0.f, y, N, K, 0, accumulate);
    }
}

extern "C" __global__ void __launch_bounds__(256, 3) gemv_i8_tc(const signed char* __restrict__ W,
                                                                const float* __restrict__ scale,
                                                                const half_t* __restrict__ x, float* __restrict__ y,
                                                                int N, int K, int accumulate) {
    gemv_tc<TC_I8, 2, false>(reinterpret_cast<const unsigned char*>(W), nullptr, scale, nullptr, x, nullptr, nullptr,
                             0.f, y, N, K, 0, accumulate);
}

extern "C" __global__ void __launch_bounds__(256, 3) gemv_i4_tc(const unsigned char* __restrict__ W,
                                                                const float* __restrict__ scales,
                                                                const float* __restrict__ mins,
                                                                const half_t* __restrict__ x, float* __restrict__ y,
                                                                int N, int K, int G, int accumulate) {
    gemv_tc<TC_I4, 1, false>(W, nullptr, scales, mins, x, nullptr, nullptr, 0.f, y, N, K, G, accumulate);
}

extern "C" __global__ void __launch_bounds__(256, 3) gemv_f16_tc_norm(const half_t* __restrict__ W,
                                                                      const half_t* __restrict__ W_lo,
                                                                      const float* __restrict__ xf,
                                                                      const float* __restrict__ norm_w, float eps,
                                                                      float* __restrict__ y, int N, int K,
                                                                      int accumulate) {
    const unsigned char* Wb = reinterpret_cast<const unsigned char*>(W);
    if (W_lo != nullptr) {
        gemv_tc<TC_F16, 1, true>(Wb, W_lo, nullptr, nullptr, nullptr, xf, norm_w, eps, y, N, K, 0, accumulate);
    } else {
        gemv_tc<TC_F16, 2, true>(Wb, nullptr, nullptr, nullptr, nullptr, xf, norm_w, eps, y, N, K, 0, accumulate);
    }
}

extern "C" __global__ void __launch_bounds__(256, 3) gemv_i8_tc_norm(const signed char* __restrict__ W,
                                                                     const float* __restrict__ scale,
                                                                     const float* __restrict__ xf,
                                                                     const float* __restrict__ norm_w, float eps,
                                                                     float* __restrict__ y, int N, int K,
                                                                     int accumulate) {
    gemv_tc<TC_I8, 2, true>(reinterpret_cast<const unsigned char*>(W), nullptr, scale, nullptr, nullptr, xf, norm_w,
                            eps, y, N, K, 0, accumulate);
}

extern "C" __global__ void __launch_bounds__(256, 3) gemv_i4_tc_norm(const unsigned char* __restrict__ W,
                                                                     const float* __restrict__ scales,
                                                                     const float* __restrict__ mins,
                                                                     const float* __restrict__ xf,
                                                                     const float* __restrict__ norm_w, float eps,
                                                                     float* __restrict__ y, int N, int K, int G,
                                                                     int accumulate) {
    gemv_tc<TC_I4, 1, true>(W, nullptr, scales, mins, nullptr, xf, norm_w, eps, y, N, K, G, accumulate);
}
