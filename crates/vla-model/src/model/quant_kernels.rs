//! Inner loops of the quantized matrix products: dot products between one quantized weight
//! row (or group) and f32 or int8 activations.
//!
//! Each kernel has a portable version written so that the compiler autovectorises it, an
//! AVX2/FMA version chosen at run time with `is_x86_feature_detected!`, and a NEON version on
//! aarch64 (where NEON is part of the base architecture). The dispatching functions
//! ([`dot_i8_f32`], [`dot_u4_f32`], [`dot_i8_i8`]) take any length; the SIMD bodies handle the
//! ragged tail with the scalar loop, so every length gives the same result as the portable
//! kernel up to the order of float additions.
//!
//! INT4 decode runs [`dot_u4_f32_grouped_planes`], which reads the packed weights as 32-bit
//! words and needs the activations rearranged once per row ([`u4_planes`]); it needs one mask
//! per 8 weights where [`dot_u4_f32`] unpacks nibbles with shuffles.
//!
//! INT4 packing (shared with [`super::quant`]): element `k` of a row lives in byte `k / 2`,
//! in the low nibble when `k` is even and the high nibble when odd.

/// True when the AVX2 + FMA kernels may run on this CPU (cached by `std`).
#[cfg(target_arch = "x86_64")]
#[inline]
pub fn has_avx2_fma() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// `Σ q[i] · x[i]` for int8 weights and f32 activations of the same length.
#[inline]
pub fn dot_i8_f32(q: &[i8], x: &[f32]) -> f32 {
    let len = q.len().min(x.len());
    let (q, x) = (&q[..len], &x[..len]);
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: AVX2 and FMA were detected on this CPU just above, and the slices have the
        // same length, which is all the kernel reads.
        return unsafe { x86::dot_i8_f32(q, x) };
    }
    #[cfg(target_arch = "aarch64")]
    {
        // SAFETY: NEON is mandatory on aarch64; the slices have the same length.
        return unsafe { neon::dot_i8_f32(q, x) };
    }
    #[allow(unreachable_code)]
    dot_i8_f32_portable(q, x)
}

/// `Σ q[k] · x[k]` for unsigned 4-bit codes packed two per byte (`packed.len() ≥ ⌈len/2⌉`)
/// and f32 activations; `len = x.len()`.
#[inline]
pub fn dot_u4_f32(packed: &[u8], x: &[f32]) -> f32 {
    let len = x.len().min(packed.len() * 2);
    let x = &x[..len];
    let packed = &packed[..len.div_ceil(2)];
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: AVX2 and FMA were detected just above; `packed` holds ⌈len/2⌉ bytes for the
        // `len` values of `x`, which is all the kernel reads.
        return unsafe { x86::dot_u4_f32(packed, x) };
    }
    #[cfg(target_arch = "aarch64")]
    {
        // SAFETY: NEON is mandatory on aarch64; `packed` holds ⌈len/2⌉ bytes.
        return unsafe { neon::dot_u4_f32(packed, x) };
    }
    #[allow(unreachable_code)]
    dot_u4_f32_portable(packed, x)
}

/// `Σ_g scales[g] · Σ_{k ∈ g} q[k] · x[k]` over the groups of `group_size` values of one
/// packed INT4 row (`len = x.len()`, the last group may be shorter), one [`dot_u4_f32`] per
/// group. The decode path takes [`dot_u4_f32_grouped_planes`], which falls back to this for
/// group sizes it does not take.
pub fn dot_u4_f32_grouped(packed: &[u8], x: &[f32], scales: &[f32], group_size: usize) -> f32 {
    let group_size = group_size.max(1);
    let len = x.len().min(packed.len() * 2).min(scales.len() * group_size);
    let mut sum = 0.0;
    for (g, xg) in x[..len].chunks(group_size).enumerate() {
        let start = g * group_size;
        let dot = if start.is_multiple_of(2) {
            dot_u4_f32(&packed[start / 2..], xg)
        } else {
            u4_tail(packed, x, start, start + xg.len())
        };
        sum += scales[g] * dot;
    }
    sum
}

/// Values of one block of the nibble-plane layout: 32 packed bytes, read as eight 32-bit words.
pub const U4_BLOCK: usize = 64;

/// Values of `x` that [`u4_planes`] rearranges: its whole blocks of [`U4_BLOCK`].
pub fn u4_planes_len(len: usize) -> usize {
    len / U4_BLOCK * U4_BLOCK
}

/// Rearranges the activations of one row for [`dot_u4_f32_grouped_planes`]. In the packed
/// weights, the 32-bit word `d` of a block holds elements `8d .. 8d + 8`, nibble `n` being
/// element `8d + n`; so `planes[64b + 8n + d] = x[64b + 8d + n] · 16⁻ⁿ` (nibble 7 unscaled),
/// and the kernel masks nibble `n` in place (`c · 16ⁿ`, exact in f32) with no shuffle. Both
/// scalings are powers of two, so each product equals `c · x` as before (unless |x| < 2⁻¹⁰²,
/// where x · 16⁻⁶ loses bits to underflow: far below any activation).
/// `planes.len()` must be [`u4_planes_len`]`(x.len())`.
pub fn u4_planes(x: &[f32], planes: &mut [f32]) {
    for (block, out) in x
        .chunks_exact(U4_BLOCK)
        .zip(planes.chunks_exact_mut(U4_BLOCK))
    {
        for (n, plane) in out.chunks_exact_mut(8).enumerate() {
            let scale = if n == 7 {
                1.0
            } else {
                (-4.0 * n as f32).exp2()
            };
            for (d, value) in plane.iter_mut().enumerate() {
                *value = block[8 * d + n] * scale;
            }
        }
    }
}

/// [`dot_u4_f32_grouped`] with the activations also given as [`u4_planes`], for rows whose
/// groups are whole blocks of [`U4_BLOCK`] values (or one group per row): the same products,
/// summed in another order, at about half the instructions per weight on AVX2. Other group
/// sizes and CPUs take [`dot_u4_f32_grouped`].
#[inline]
pub fn dot_u4_f32_grouped_planes(
    packed: &[u8],
    x: &[f32],
    planes: &[f32],
    scales: &[f32],
    group_size: usize,
) -> f32 {
    let group_size = group_size.max(1);
    let len = x.len().min(packed.len() * 2).min(scales.len() * group_size);
    let blocks_len = u4_planes_len(len);
    if (group_size.is_multiple_of(U4_BLOCK) || group_size >= len) && planes.len() >= blocks_len {
        let (packed, x, planes) = (&packed[..len.div_ceil(2)], &x[..len], &planes[..blocks_len]);
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            // SAFETY: AVX2 and FMA were detected just above; `packed` holds ⌈len/2⌉ bytes,
            // `x` `len` values, `planes` the values of `x`'s whole blocks, `scales`
            // ⌈len/group_size⌉ values, and every group starts on a block boundary.
            return unsafe {
                x86::dot_u4_f32_grouped_planes(packed, x, planes, scales, group_size)
            };
        }
        #[cfg(target_arch = "aarch64")]
        {
            // SAFETY: NEON is mandatory on aarch64; the slices are as for AVX2 above.
            return unsafe {
                neon::dot_u4_f32_grouped_planes(packed, x, planes, scales, group_size)
            };
        }
    }
    dot_u4_f32_grouped(packed, x, scales, group_size)
}

/// `Σ a[i] · b[i]` for two int8 vectors, accumulated exactly in i32, for `b` in [-127, 127]
/// (what [`super::quant::quantize_activations`] writes; `a` may take any value). Exact for
/// any length below 2³¹ / 128² ≈ 131 000, far above any layer width.
#[inline]
pub fn dot_i8_i8(a: &[i8], b: &[i8]) -> i32 {
    let len = a.len().min(b.len());
    let (a, b) = (&a[..len], &b[..len]);
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: AVX2 was detected just above; the slices have the same length.
        return unsafe { x86::dot_i8_i8(a, b) };
    }
    #[cfg(target_arch = "aarch64")]
    {
        // SAFETY: NEON is mandatory on aarch64; the slices have the same length.
        return unsafe { neon::dot_i8_i8(a, b) };
    }
    #[allow(unreachable_code)]
    dot_i8_i8_portable(a, b)
}

/// Portable [`dot_i8_f32`]: eight independent accumulators so the loop vectorises.
pub fn dot_i8_f32_portable(q: &[i8], x: &[f32]) -> f32 {
    let len = q.len().min(x.len());
    let (q, x) = (&q[..len], &x[..len]);
    let mut acc = [0.0f32; 8];
    let q_chunks = q.chunks_exact(8);
    let x_chunks = x.chunks_exact(8);
    let (q_tail, x_tail) = (q_chunks.remainder(), x_chunks.remainder());
    for (qc, xc) in q_chunks.zip(x_chunks) {
        for lane in 0..8 {
            acc[lane] += f32::from(qc[lane]) * xc[lane];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (&qv, &xv) in q_tail.iter().zip(x_tail) {
        sum += f32::from(qv) * xv;
    }
    sum
}

/// Portable [`dot_u4_f32`].
pub fn dot_u4_f32_portable(packed: &[u8], x: &[f32]) -> f32 {
    let len = x.len().min(packed.len() * 2);
    let x = &x[..len];
    let mut acc = [0.0f32; 8];
    let x_chunks = x.chunks_exact(8);
    let x_tail = x_chunks.remainder();
    for (bytes, xc) in packed.chunks_exact(4).zip(x_chunks) {
        for pair in 0..4 {
            acc[2 * pair] += f32::from(bytes[pair] & 0x0F) * xc[2 * pair];
            acc[2 * pair + 1] += f32::from(bytes[pair] >> 4) * xc[2 * pair + 1];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    let done = len - x_tail.len();
    for (offset, &xv) in x_tail.iter().enumerate() {
        let k = done + offset;
        sum += f32::from(nibble(packed, k)) * xv;
    }
    sum
}

/// Portable [`dot_i8_i8`].
pub fn dot_i8_i8_portable(a: &[i8], b: &[i8]) -> i32 {
    let mut acc = [0i32; 16];
    let a_chunks = a.chunks_exact(16);
    let b_chunks = b.chunks_exact(16);
    let (a_tail, b_tail) = (a_chunks.remainder(), b_chunks.remainder());
    for (ac, bc) in a_chunks.zip(b_chunks) {
        for lane in 0..16 {
            acc[lane] += i32::from(ac[lane]) * i32::from(bc[lane]);
        }
    }
    let mut sum: i32 = acc.iter().sum();
    for (&av, &bv) in a_tail.iter().zip(b_tail) {
        sum += i32::from(av) * i32::from(bv);
    }
    sum
}

/// The 4-bit code of element `k` in a packed row.
#[inline]
pub fn nibble(packed: &[u8], k: usize) -> u8 {
    let byte = packed[k / 2];
    if k.is_multiple_of(2) {
        byte & 0x0F
    } else {
        byte >> 4
    }
}

/// `Σ q[k] · x[k]` over `k ∈ from..to` of a packed INT4 row: the SIMD kernels' ragged tails.
#[inline]
fn u4_tail(packed: &[u8], x: &[f32], from: usize, to: usize) -> f32 {
    (from..to)
        .map(|k| f32::from(nibble(packed, k)) * x[k])
        .sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum_ps(v: __m256) -> f32 {
        let pair = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let quad = _mm_add_ps(pair, _mm_movehl_ps(pair, pair));
        let single = _mm_add_ss(quad, _mm_shuffle_ps(quad, quad, 0x55));
        _mm_cvtss_f32(single)
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum_epi32(v: __m256i) -> i32 {
        let pair = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        let quad = _mm_add_epi32(pair, _mm_shuffle_epi32(pair, 0b01_00_11_10));
        let single = _mm_add_epi32(quad, _mm_shuffle_epi32(quad, 0b10_11_00_01));
        _mm_cvtsi128_si32(single)
    }

    /// Caller guarantees AVX2 + FMA and `q.len() == x.len()`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_i8_f32(q: &[i8], x: &[f32]) -> f32 {
        let len = q.len();
        let (qp, xp) = (q.as_ptr(), x.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= len {
            for (lane, slot) in acc.iter_mut().enumerate() {
                let offset = i + 8 * lane;
                // SAFETY: offset + 8 ≤ len, so 8 bytes of `q` and 8 floats of `x` are in bounds.
                let codes = unsafe { _mm_loadl_epi64(qp.add(offset).cast()) };
                let weights = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(codes));
                // SAFETY: as above.
                let acts = unsafe { _mm256_loadu_ps(xp.add(offset)) };
                *slot = _mm256_fmadd_ps(weights, acts, *slot);
            }
            i += 32;
        }
        while i + 8 <= len {
            // SAFETY: i + 8 ≤ len.
            let codes = unsafe { _mm_loadl_epi64(qp.add(i).cast()) };
            let weights = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(codes));
            // SAFETY: i + 8 ≤ len.
            let acts = unsafe { _mm256_loadu_ps(xp.add(i)) };
            acc[0] = _mm256_fmadd_ps(weights, acts, acc[0]);
            i += 8;
        }
        let total = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut sum = hsum_ps(total);
        for k in i..len {
            sum += f32::from(q[k]) * x[k];
        }
        sum
    }

    /// Caller guarantees AVX2 + FMA and `packed.len() == x.len().div_ceil(2)`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_u4_f32(packed: &[u8], x: &[f32]) -> f32 {
        let len = x.len();
        let (bp, xp) = (packed.as_ptr(), x.as_ptr());
        let low_mask = _mm_set1_epi8(0x0F);
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= len {
            // SAFETY: i + 32 ≤ len, so bytes i/2 .. i/2 + 16 lie inside `packed`
            // (⌈len/2⌉ bytes) and floats i .. i + 32 inside `x`.
            let bytes = unsafe { _mm_loadu_si128(bp.add(i / 2).cast()) };
            let low = _mm_and_si128(bytes, low_mask);
            let high = _mm_and_si128(_mm_srli_epi16(bytes, 4), low_mask);
            // Interleaving low and high nibbles restores element order.
            let first = _mm_unpacklo_epi8(low, high); // elements i .. i + 16
            let second = _mm_unpackhi_epi8(low, high); // elements i + 16 .. i + 32
            let codes = [
                first,
                _mm_srli_si128(first, 8),
                second,
                _mm_srli_si128(second, 8),
            ];
            for (lane, (slot, code)) in acc.iter_mut().zip(codes).enumerate() {
                let weights = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(code));
                // SAFETY: i + 8·lane + 8 ≤ i + 32 ≤ len.
                let acts = unsafe { _mm256_loadu_ps(xp.add(i + 8 * lane)) };
                *slot = _mm256_fmadd_ps(weights, acts, *slot);
            }
            i += 32;
        }
        let total = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut sum = hsum_ps(total);
        for (k, &xv) in x.iter().enumerate().skip(i) {
            sum += f32::from(super::nibble(packed, k)) * xv;
        }
        sum
    }

    /// Caller guarantees AVX2 + FMA, `packed.len() == x.len().div_ceil(2)`, `planes` =
    /// [`super::u4_planes`] of `x`'s whole blocks, `scales.len() ≥ ⌈x.len() / group_size⌉` and
    /// a `group_size` that is a multiple of [`super::U4_BLOCK`] unless it covers the row.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_u4_f32_grouped_planes(
        packed: &[u8],
        x: &[f32],
        planes: &[f32],
        scales: &[f32],
        group_size: usize,
    ) -> f32 {
        let len = x.len();
        let (bp, pp) = (packed.as_ptr(), planes.as_ptr());
        let masks = [0, 1, 2, 3, 4, 5, 6].map(|n| _mm256_set1_epi32(0xF << (4 * n)));
        let mut row = _mm256_setzero_ps();
        let mut row_tail = 0.0f32;
        let mut start = 0;
        let mut g = 0;
        while start < len {
            let end = (start + group_size).min(len);
            // One accumulator per nibble: eight independent FMA chains.
            let mut acc = [_mm256_setzero_ps(); 8];
            let mut i = start;
            while i + super::U4_BLOCK <= end {
                // SAFETY: i + 64 ≤ end ≤ len and i is a multiple of 64 (groups start on
                // block boundaries), so bytes i/2 .. i/2 + 32 lie inside `packed` and
                // values i .. i + 64 inside `planes`, which covers every whole block.
                let (words, p) = unsafe { (_mm256_loadu_si256(bp.add(i / 2).cast()), pp.add(i)) };
                for (n, mask) in masks.iter().enumerate() {
                    let codes = _mm256_cvtepi32_ps(_mm256_and_si256(words, *mask));
                    // SAFETY: 8n + 8 ≤ 56 < 64 values from `p`.
                    let acts = unsafe { _mm256_loadu_ps(p.add(8 * n)) };
                    acc[n] = _mm256_fmadd_ps(codes, acts, acc[n]);
                }
                // The top nibble is shifted down: masked in place it would be the sign bit.
                let codes = _mm256_cvtepi32_ps(_mm256_srli_epi32(words, 28));
                // SAFETY: values 56 .. 64 of the block.
                let acts = unsafe { _mm256_loadu_ps(p.add(56)) };
                acc[7] = _mm256_fmadd_ps(codes, acts, acc[7]);
                i += super::U4_BLOCK;
            }
            let quads = [0, 1, 2, 3].map(|j| _mm256_add_ps(acc[j], acc[j + 4]));
            let group_acc = _mm256_add_ps(
                _mm256_add_ps(quads[0], quads[1]),
                _mm256_add_ps(quads[2], quads[3]),
            );
            let scale = scales[g];
            row = _mm256_fmadd_ps(_mm256_set1_ps(scale), group_acc, row);
            // Only the row's last group can have a tail; the test keeps the common empty case
            // from calling out of the SIMD code.
            if i < end {
                row_tail += scale * super::u4_tail(packed, x, i, end);
            }
            start = end;
            g += 1;
        }
        hsum_ps(row) + row_tail
    }

    /// Caller guarantees AVX2, `a.len() == b.len()` and no -128 in `b`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_i8_i8(a: &[i8], b: &[i8]) -> i32 {
        let len = a.len();
        let (ap, bp) = (a.as_ptr(), b.as_ptr());
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_si256(); 2];
        let mut i = 0;
        while i + 64 <= len {
            for (half, slot) in acc.iter_mut().enumerate() {
                let offset = i + 32 * half;
                // SAFETY: offset + 32 ≤ len for both slices.
                let (va, vb) = unsafe {
                    (
                        _mm256_loadu_si256(ap.add(offset).cast()),
                        _mm256_loadu_si256(bp.add(offset).cast()),
                    )
                };
                // |a| (unsigned) times b with a's sign: a·b in i16 pairs. b never is -128, so
                // negating it cannot wrap, and a pair sums to at most 2·128·127 < 2¹⁵, so
                // maddubs never saturates.
                let pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(va), _mm256_sign_epi8(vb, va));
                *slot = _mm256_add_epi32(*slot, _mm256_madd_epi16(pairs, ones));
            }
            i += 64;
        }
        let mut sum = hsum_epi32(_mm256_add_epi32(acc[0], acc[1]));
        for k in i..len {
            sum += i32::from(a[k]) * i32::from(b[k]);
        }
        sum
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use std::arch::aarch64::*;

    /// Caller guarantees `q.len() == x.len()`.
    #[target_feature(enable = "neon")]
    pub unsafe fn dot_i8_f32(q: &[i8], x: &[f32]) -> f32 {
        let len = q.len();
        let (qp, xp) = (q.as_ptr(), x.as_ptr());
        let mut acc0 = vdupq_n_f32(0.0);
        let mut acc1 = vdupq_n_f32(0.0);
        let mut i = 0;
        while i + 8 <= len {
            // SAFETY: i + 8 ≤ len for both slices.
            let (codes, lo, hi) = unsafe {
                (
                    vld1_s8(qp.add(i)),
                    vld1q_f32(xp.add(i)),
                    vld1q_f32(xp.add(i + 4)),
                )
            };
            let wide = vmovl_s8(codes);
            let w_lo = vcvtq_f32_s32(vmovl_s16(vget_low_s16(wide)));
            let w_hi = vcvtq_f32_s32(vmovl_s16(vget_high_s16(wide)));
            acc0 = vfmaq_f32(acc0, w_lo, lo);
            acc1 = vfmaq_f32(acc1, w_hi, hi);
            i += 8;
        }
        let mut sum = vaddvq_f32(vaddq_f32(acc0, acc1));
        for k in i..len {
            sum += f32::from(q[k]) * x[k];
        }
        sum
    }

    /// Caller guarantees `packed.len() == x.len().div_ceil(2)`.
    #[target_feature(enable = "neon")]
    pub unsafe fn dot_u4_f32(packed: &[u8], x: &[f32]) -> f32 {
        let len = x.len();
        let (bp, xp) = (packed.as_ptr(), x.as_ptr());
        let mut acc = [vdupq_n_f32(0.0); 4];
        let mut i = 0;
        while i + 16 <= len {
            // SAFETY: i + 16 ≤ len, so bytes i/2 .. i/2 + 8 lie inside `packed`.
            let bytes = unsafe { vld1_u8(bp.add(i / 2)) };
            let low = vand_u8(bytes, vdup_n_u8(0x0F));
            let high = vshr_n_u8(bytes, 4);
            // Interleaving low and high nibbles restores element order.
            let codes = vcombine_u8(vzip1_u8(low, high), vzip2_u8(low, high));
            let lo16 = vmovl_u8(vget_low_u8(codes));
            let hi16 = vmovl_u8(vget_high_u8(codes));
            let weights = [
                vcvtq_f32_u32(vmovl_u16(vget_low_u16(lo16))),
                vcvtq_f32_u32(vmovl_u16(vget_high_u16(lo16))),
                vcvtq_f32_u32(vmovl_u16(vget_low_u16(hi16))),
                vcvtq_f32_u32(vmovl_u16(vget_high_u16(hi16))),
            ];
            for (lane, (slot, w)) in acc.iter_mut().zip(weights).enumerate() {
                // SAFETY: i + 4·lane + 4 ≤ i + 16 ≤ len.
                let acts = unsafe { vld1q_f32(xp.add(i + 4 * lane)) };
                *slot = vfmaq_f32(*slot, w, acts);
            }
            i += 16;
        }
        let mut sum = vaddvq_f32(vaddq_f32(
            vaddq_f32(acc[0], acc[1]),
            vaddq_f32(acc[2], acc[3]),
        ));
        for (k, &xv) in x.iter().enumerate().skip(i) {
            sum += f32::from(super::nibble(packed, k)) * xv;
        }
        sum
    }

    /// Caller guarantees what [`super::x86`]'s `dot_u4_f32_grouped_planes` does (less AVX2).
    #[target_feature(enable = "neon")]
    pub unsafe fn dot_u4_f32_grouped_planes(
        packed: &[u8],
        x: &[f32],
        planes: &[f32],
        scales: &[f32],
        group_size: usize,
    ) -> f32 {
        let len = x.len();
        let (bp, pp) = (packed.as_ptr(), planes.as_ptr());
        let masks = [0, 1, 2, 3, 4, 5, 6].map(|n| vdupq_n_u32(0xF << (4 * n)));
        let mut row = vdupq_n_f32(0.0);
        let mut row_tail = 0.0f32;
        let mut start = 0;
        let mut g = 0;
        while start < len {
            let end = (start + group_size).min(len);
            let mut acc = [vdupq_n_f32(0.0); 8];
            let mut i = start;
            while i + super::U4_BLOCK <= end {
                // SAFETY: i + 64 ≤ end ≤ len and i is a multiple of 64, so bytes i/2 ..
                // i/2 + 32 lie inside `packed` and values i .. i + 64 inside `planes`.
                // Words 0-3 and 4-7 of the block (little-endian, as the packing assumes).
                let (words, p) = unsafe {
                    let w = bp.add(i / 2).cast::<u32>();
                    ([vld1q_u32(w), vld1q_u32(w.add(4))], pp.add(i))
                };
                for (half, words) in words.into_iter().enumerate() {
                    for (n, mask) in masks.iter().enumerate() {
                        let codes = vcvtq_f32_u32(vandq_u32(words, *mask));
                        // SAFETY: 8n + 4·half + 4 ≤ 56 values from `p`.
                        let acts = unsafe { vld1q_f32(p.add(8 * n + 4 * half)) };
                        acc[n] = vfmaq_f32(acc[n], codes, acts);
                    }
                    let codes = vcvtq_f32_u32(vshrq_n_u32::<28>(words));
                    // SAFETY: values 56 + 4·half .. 60 + 4·half of the block.
                    let acts = unsafe { vld1q_f32(p.add(56 + 4 * half)) };
                    acc[7] = vfmaq_f32(acc[7], codes, acts);
                }
                i += super::U4_BLOCK;
            }
            let quads = [0, 1, 2, 3].map(|j| vaddq_f32(acc[j], acc[j + 4]));
            let group_acc = vaddq_f32(vaddq_f32(quads[0], quads[1]), vaddq_f32(quads[2], quads[3]));
            let scale = scales[g];
            row = vfmaq_n_f32(row, group_acc, scale);
            if i < end {
                row_tail += scale * super::u4_tail(packed, x, i, end);
            }
            start = end;
            g += 1;
        }
        vaddvq_f32(row) + row_tail
    }

    /// Caller guarantees `a.len() == b.len()`.
    #[target_feature(enable = "neon")]
    pub unsafe fn dot_i8_i8(a: &[i8], b: &[i8]) -> i32 {
        let len = a.len();
        let (ap, bp) = (a.as_ptr(), b.as_ptr());
        let mut acc = vdupq_n_s32(0);
        let mut i = 0;
        while i + 16 <= len {
            // SAFETY: i + 16 ≤ len for both slices.
            let (va, vb) = unsafe { (vld1q_s8(ap.add(i)), vld1q_s8(bp.add(i))) };
            let lo = vmull_s8(vget_low_s8(va), vget_low_s8(vb));
            let hi = vmull_s8(vget_high_s8(va), vget_high_s8(vb));
            acc = vpadalq_s16(acc, lo);
            acc = vpadalq_s16(acc, hi);
            i += 16;
        }
        let mut sum = vaddvq_s32(acc);
        for k in i..len {
            sum += i32::from(a[k]) * i32::from(b[k]);
        }
        sum
    }
}
