//! Int8-activation products (see `int8`) for the K-quants (Q4_K, Q5_K, Q6_K) and the 5-bit 32-value
//! formats (Q5_0, Q5_1): the same 32-value int8 activation blocks (`QActs`), integer dot products, one
//! float multiply-add per 32 values. The files users download (Q4_K_M, Q5_K_M) are mostly these formats.
//!
//! Per 32-value activation block with scale `dx` and `sx = dx·Σq`:
//! - Q4_K, Q5_K: a 256-value super-block's 8 sub-blocks are 32 wide, each with a 6-bit scale `s` and
//!   min `m` (times the block's `d` and `dmin`): `d·s·dx·Σ(u·q) − dmin·m·sx`, `u` the unsigned 4/5-bit
//!   value; the min term needs only the activation block's sum.
//! - Q6_K: 16-value sub-blocks with int8 scales, so a 32-block's integer sum is two halves, each times
//!   its scale: `d·dx·(s0·Σ₀₋₁₅(w·q) + s1·Σ₁₆₋₃₁(w·q))`, `w` the signed 6-bit value (`u − 32`).
//! - Q5_1: `d·dx·Σ(u·q) + m·sx`; Q5_0 (values `u − 16`) the same with `m = −16·d`.
//!
//! Q6_K's signed weights meet the unsigned-by-signed byte products through `|w|` and `q` carrying `w`'s
//! sign (`q` is within ±127, so the sign flip never overflows).
use super::formats::{f16_to_f32, scale_min_k4, QType};
use super::int8::{Isa, QActs};

/// Whether `t` has an int8 kernel here.
pub fn supports(t: QType) -> bool {
    matches!(t, QType::Q4K | QType::Q5K | QType::Q6K | QType::Q5_0 | QType::Q5_1)
}

#[inline(always)]
fn half(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// 32-value piece `k` of weight block `b` as integers: the values (signed, or unsigned with a min),
/// the integer scales of its two 16-value halves, the float factor of its integer sum and of the
/// activation block's sum.
fn piece(t: QType, b: &[u8], k: usize) -> ([i32; 32], [i32; 2], f32, f32) {
    let mut w = [0i32; 32];
    match t {
        QType::Q4K | QType::Q5K => {
            let (sc, m) = scale_min_k4(k, &b[4..16]);
            let (g, shift) = (k / 2, 4 * (k % 2));
            let qs = if t == QType::Q4K { &b[16 + 32 * g..48 + 32 * g] } else { &b[48 + 32 * g..80 + 32 * g] };
            for (l, v) in w.iter_mut().enumerate() {
                let hi = if t == QType::Q5K { ((b[16 + l] >> k) & 1) << 4 } else { 0 };
                *v = (((qs[l] >> shift) & 15) | hi) as i32;
            }
            (w, [1, 1], half(b, 0) * sc, -half(b, 2) * m)
        }
        QType::Q6K => {
            let (n, part) = (k / 4, k % 4);
            let ql = &b[64 * n + 32 * (part % 2)..64 * n + 32 * (part % 2) + 32];
            for (l, v) in w.iter_mut().enumerate() {
                let low = if part >= 2 { ql[l] >> 4 } else { ql[l] & 15 };
                let high = (b[128 + 32 * n + l] >> (2 * part)) & 3;
                *v = (low | (high << 4)) as i32 - 32;
            }
            (w, [b[192 + 2 * k] as i8 as i32, b[193 + 2 * k] as i8 as i32], half(b, 208), 0.0)
        }
        _ => {
            // Q5_0 / Q5_1: element j's fifth bit is bit j of the 32-bit `qh`
            let at = if t == QType::Q5_1 { 4 } else { 2 };
            let qh = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
            for (j, v) in w.iter_mut().enumerate() {
                let nib = if j < 16 { b[at + 4 + j] & 15 } else { b[at + 4 + j - 16] >> 4 };
                let u = nib as i32 | (((qh >> j) & 1) << 4) as i32;
                *v = if t == QType::Q5_0 { u - 16 } else { u };
            }
            (w, [1, 1], half(b, 0), if t == QType::Q5_1 { half(b, 2) } else { 0.0 })
        }
    }
}

/// `out[i] = dot(row, x[i])` for the `n` quantized rows of `qa`, `row` one weight row of `t` (the
/// definition the SIMD kernels are tested against).
pub fn row_dots_portable(t: QType, row: &[u8], qa: &QActs, n: usize, out: &mut [f32]) {
    let blocks = qa.cols / 32;
    let (bb, per) = (t.block_bytes(), t.block_elems() / 32);
    for (i, o) in out.iter_mut().enumerate().take(n) {
        let (mut acc, mut corr) = (0f32, 0f32);
        for (wb, blk) in row.chunks_exact(bb).enumerate() {
            for k in 0..per {
                let at = i * blocks + wb * per + k;
                let xq = &qa.qs[at * 32..at * 32 + 32];
                let [dx, sx] = qa.ds[at];
                let (w, sc, fw, fm) = piece(t, blk, k);
                let half_sum = |h: usize| (16 * h..16 * h + 16).map(|l| w[l] * xq[l] as i32).sum::<i32>();
                let isum = sc[0] * half_sum(0) + sc[1] * half_sum(1);
                acc += isum as f32 * (fw * dx);
                corr += fm * sx;
            }
        }
        *o = acc + corr;
    }
}

/// Rows `first..last` of one matrix against every row of `qa` with the SIMD kernels of `isa`, for
/// `int8::span` (which also runs the portable ones).
///
/// # Safety
/// As `int8::span`, with `t` one of the formats `supports` names and `isa` not `Portable`.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn simd_span(isa: Isa, t: QType, data: &[u8], rb: usize, first: usize, last: usize, qa: &QActs,
                        n: usize, out: *mut f32, total: usize, out_col: usize) {
    simd::span(isa, t, data, rb, first, last, qa, n, out, total, out_col)
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    use super::{Isa, QActs};
    use crate::quant::formats::QType;
    use crate::quant::int8::simd::{dot_avx2, dot_avx512vnni, dot_avxvnni};

    /// The kernels, stamped out once per instruction set: `$dot(u, s)` is the 8 int32 sums of four
    /// unsigned-by-signed byte products; `$scales6(sc, k)` the Q6_K scales of 32-block `k` (from the 16
    /// int8 scales `sc`) in the form `$dot6(u, s, scales)` multiplies into the same 8 sums.
    macro_rules! kernels {
        ($modname:ident, $features:literal, $dot:ident, $scales6:ident, $dot6:ident) => {
            mod $modname {
                use std::arch::x86_64::*;

                use super::QActs;
                use crate::quant::formats::QType;

                #[inline]
                #[target_feature(enable = $features)]
                unsafe fn dot(u: __m256i, s: __m256i) -> __m256i {
                    super::$dot(u, s)
                }

                #[inline]
                #[target_feature(enable = $features)]
                unsafe fn hsum(v: __m256) -> f32 {
                    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
                    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
                }

                /// The f16 at `p` in lane 0 (the next f16 in lane 1).
                #[inline]
                #[target_feature(enable = $features)]
                unsafe fn halves(p: *const u8) -> __m128 {
                    _mm_cvtph_ps(_mm_cvtsi32_si128((p as *const i32).read_unaligned()))
                }

                /// `[fw·dx, fm·sx]` for the 8 32-blocks of a super-block: `f` holds `[fw, fm]` of each, and
                /// `ds` points at the first block's `[dx, sx]` (so lanes `2k`: block `k`'s integer-sum factor).
                #[inline]
                #[target_feature(enable = $features)]
                unsafe fn factors(f: [__m256; 2], ds: *const [f32; 2]) -> [__m256; 2] {
                    let ds = ds as *const f32;
                    [_mm256_mul_ps(f[0], _mm256_loadu_ps(ds)), _mm256_mul_ps(f[1], _mm256_loadu_ps(ds.add(8)))]
                }

                /// `acc += isum·p[2k]`: 32-block `k`'s integer sum times its lane of `factors`.
                #[inline]
                #[target_feature(enable = $features)]
                unsafe fn step_k(isum: __m256i, p: &[__m256; 2], k: usize, acc: &mut __m256) {
                    let f = _mm256_permutevar8x32_ps(p[k / 4], _mm256_set1_epi32(2 * (k % 4) as i32));
                    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), f, *acc);
                }

                /// `acc += isum·d·dx`, `corr += [·, m·sx]` for one 32-value block (`[d, m]` in `dm`'s lanes).
                #[inline]
                #[target_feature(enable = $features)]
                unsafe fn step(isum: __m256i, dm: __m128, ds: *const [f32; 2], acc: &mut __m256, corr: &mut __m256) {
                    let p = _mm_mul_ps(dm, _mm_castpd_ps(_mm_load_sd(ds as *const f64)));
                    *corr = _mm256_add_ps(*corr, _mm256_zextps128_ps256(p));
                    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_broadcastss_ps(p), *acc);
                }

                /// `[d·s_j, −dmin·m_j]` for the 8 sub-blocks of the Q4_K/Q5_K block at `b`, 4 in each vector.
                #[inline]
                #[target_feature(enable = $features)]
                unsafe fn k_factors(b: *const u8) -> [__m256; 2] {
                    let dm = halves(b);
                    let u = [(b.add(4) as *const u32).read_unaligned(), (b.add(8) as *const u32).read_unaligned(),
                             (b.add(12) as *const u32).read_unaligned()];
                    // 6-bit scales of sub-blocks 0..4 and 4..8, then the mins likewise, one per byte
                    let sc_lo = u[0] & 0x3f3f_3f3f;
                    let mn_lo = u[1] & 0x3f3f_3f3f;
                    let sc_hi = (u[2] & 0x0f0f_0f0f) | (((u[0] >> 6) & 0x0303_0303) << 4);
                    let mn_hi = ((u[2] >> 4) & 0x0f0f_0f0f) | (((u[1] >> 6) & 0x0303_0303) << 4);
                    let sc = _mm_set_epi32(0, 0, sc_hi as i32, sc_lo as i32);
                    let mn = _mm_set_epi32(0, 0, mn_hi as i32, mn_lo as i32);
                    let pairs = _mm_unpacklo_epi8(sc, mn); // s0 m0 s1 m1 ...
                    // [d, -dmin] in every pair of lanes
                    let pair = _mm_mul_ps(dm, _mm_setr_ps(1.0, -1.0, 0.0, 0.0));
                    let mul = _mm256_castpd_ps(_mm256_broadcastsd_pd(_mm_castps_pd(pair)));
                    let lo = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(pairs));
                    let hi = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_unpackhi_epi64(pairs, pairs)));
                    [_mm256_mul_ps(lo, mul), _mm256_mul_ps(hi, mul)]
                }

                /// One weight block at `b` against `G` rows of activations (`xq[i]`, `ds[i]`: row `i`'s
                /// first 32-block under this weight block). `acc[i][c]`: two chains per row (even and odd
                /// 32-blocks) whatever `G` is, so that a row's sums are added in the same order as alone.
                #[inline]
                #[target_feature(enable = $features)]
                unsafe fn block<const G: usize>(t: QType, b: *const u8, xq: [*const i8; G], ds: [*const [f32; 2]; G],
                                                acc: &mut [[__m256; 2]; G], corr: &mut [__m256; G]) {
                    let m4 = _mm256_set1_epi8(15);
                    // activations of row `i`, 32-block `k`; the accumulator chain of 32-block `k`
                    macro_rules! x {
                        ($i:expr, $k:expr) => { _mm256_loadu_si256(xq[$i].add(32 * $k) as *const __m256i) };
                    }
                    macro_rules! chain {
                        ($k:expr) => { $k & 1 };
                    }
                    match t {
                        QType::Q4K | QType::Q5K => {
                            let f = k_factors(b);
                            let mut p = [[_mm256_setzero_ps(); 2]; G];
                            for i in 0..G {
                                p[i] = factors(f, ds[i]);
                                corr[i] = _mm256_add_ps(corr[i], _mm256_add_ps(p[i][0], p[i][1]));
                            }
                            let qh = _mm256_loadu_si256(b.add(16) as *const __m256i);
                            let qs = b.add(if t == QType::Q4K { 16 } else { 48 });
                            for g in 0..4 {
                                let q = _mm256_loadu_si256(qs.add(32 * g) as *const __m256i);
                                let nibs = [_mm256_and_si256(q, m4), _mm256_and_si256(_mm256_srli_epi16(q, 4), m4)];
                                for (h, &nib) in nibs.iter().enumerate() {
                                    let k = 2 * g + h;
                                    let u = if t == QType::Q5K {
                                        let bit = _mm256_set1_epi8((1u8 << k) as i8);
                                        let set = _mm256_cmpeq_epi8(_mm256_and_si256(qh, bit), bit);
                                        _mm256_or_si256(nib, _mm256_and_si256(set, _mm256_set1_epi8(16)))
                                    } else {
                                        nib
                                    };
                                    for i in 0..G {
                                        step_k(dot(u, x!(i, k)), &p[i], k, &mut acc[i][chain!(k)]);
                                    }
                                }
                            }
                        }
                        QType::Q6K => {
                            // `[d, d]` pairs: the products' factors `d·dx` in the even lanes (odd ones unread)
                            let h = (b.add(208) as *const u16).read_unaligned(); // the block's last 2 bytes
                            let d = _mm256_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)));
                            let mut p = [[_mm256_setzero_ps(); 2]; G];
                            for i in 0..G {
                                p[i] = factors([d, d], ds[i]);
                            }
                            let sc = _mm_loadu_si128(b.add(192) as *const __m128i);
                            let (m30, off) = (_mm256_set1_epi8(0x30), _mm256_set1_epi8(32));
                            for n in 0..2 {
                                let ql0 = _mm256_loadu_si256(b.add(64 * n) as *const __m256i);
                                let ql1 = _mm256_loadu_si256(b.add(64 * n + 32) as *const __m256i);
                                let qh = _mm256_loadu_si256(b.add(128 + 32 * n) as *const __m256i);
                                let parts = [
                                    _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30)),
                                    _mm256_or_si256(_mm256_and_si256(ql1, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30)),
                                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), _mm256_and_si256(qh, m30)),
                                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                                                    _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30)),
                                ];
                                for (part, &q) in parts.iter().enumerate() {
                                    let k = 4 * n + part;
                                    let w = _mm256_sub_epi8(q, off);
                                    let (u, s6) = (_mm256_abs_epi8(w), super::$scales6(sc, k));
                                    for i in 0..G {
                                        let isum = super::$dot6(u, _mm256_sign_epi8(x!(i, k), w), s6);
                                        step_k(isum, &p[i], k, &mut acc[i][chain!(k)]);
                                    }
                                }
                            }
                        }
                        _ => {
                            // Q5_0 / Q5_1: byte j gets bit j of `qh` as 16
                            let five = t == QType::Q5_1;
                            let qh = (b.add(if five { 4 } else { 2 }) as *const i32).read_unaligned();
                            let spread = _mm256_shuffle_epi8(_mm256_set1_epi32(qh), _mm256_setr_epi64x(
                                0, 0x0101_0101_0101_0101, 0x0202_0202_0202_0202, 0x0303_0303_0303_0303));
                            let bits = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
                            let high = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, bits), bits),
                                                        _mm256_set1_epi8(16));
                            let q = _mm_loadu_si128(b.add(if five { 8 } else { 6 }) as *const __m128i);
                            let nib = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), m4);
                            let u = _mm256_or_si256(nib, high);
                            // Q5_0's values are `u − 16`: `[d, −16·d]` as Q5_1's `[d, m]` (its lane 1 from the
                            // block would be `qh` bytes)
                            let h = halves(b);
                            let dm = if five { h } else { _mm_mul_ps(_mm_shuffle_ps(h, h, 0), _mm_setr_ps(1.0, -16.0, 0.0, 0.0)) };
                            for i in 0..G {
                                step(dot(u, x!(i, 0)), dm, ds[i], &mut acc[i][0], &mut corr[i]);
                            }
                        }
                    }
                }

                /// One weight row (`wblocks` blocks of `t` at `rp`) against `G` rows of activations
                /// from 32-block `at` of `qa` on.
                #[inline]
                #[target_feature(enable = $features)]
                unsafe fn rows<const G: usize>(t: QType, rp: *const u8, qa: &QActs, at: usize, out: &mut [f32]) -> usize {
                    let blocks = qa.cols / 32;
                    let (bb, per) = (t.block_bytes(), t.block_elems() / 32);
                    let mut acc = [[_mm256_setzero_ps(); 2]; G];
                    let mut corr = [_mm256_setzero_ps(); G];
                    let (xq, ds) = (qa.qs.as_ptr(), qa.ds.as_ptr());
                    let (mut xs, mut dss) = ([xq; G], [ds; G]);
                    for wb in 0..blocks / per {
                        for i in 0..G {
                            let a = at + i * blocks + wb * per;
                            (xs[i], dss[i]) = (xq.add(a * 32), ds.add(a));
                        }
                        block::<G>(t, rp.add(wb * bb), xs, dss, &mut acc, &mut corr);
                    }
                    for i in 0..G {
                        // the min terms are corr's odd lanes
                        let mins = _mm256_blend_ps(_mm256_setzero_ps(), corr[i], 0b1010_1010);
                        out[i] = hsum(_mm256_add_ps(acc[i][0], acc[i][1])) + hsum(mins);
                    }
                    G
                }

                /// `out[i] = dot(row, x[i])` for rows `first..first + n` of `qa`.
                #[inline]
                #[target_feature(enable = $features)]
                unsafe fn row_dots(t: QType, row: &[u8], qa: &QActs, first: usize, n: usize, out: &mut [f32]) {
                    let blocks = qa.cols / 32;
                    // the format as a constant in each arm, so that its branches fold away
                    macro_rules! by_type {
                        ($g:literal, $at:expr, $o:expr) => {
                            match t {
                                QType::Q4K => rows::<$g>(QType::Q4K, row.as_ptr(), qa, $at, $o),
                                QType::Q5K => rows::<$g>(QType::Q5K, row.as_ptr(), qa, $at, $o),
                                QType::Q6K => rows::<$g>(QType::Q6K, row.as_ptr(), qa, $at, $o),
                                QType::Q5_0 => rows::<$g>(QType::Q5_0, row.as_ptr(), qa, $at, $o),
                                _ => rows::<$g>(QType::Q5_1, row.as_ptr(), qa, $at, $o),
                            }
                        };
                    }
                    let mut done = 0;
                    while done < n {
                        let (left, at, o) = (n - done, (first + done) * blocks, &mut out[done..]);
                        done += if left >= 4 {
                            by_type!(4, at, o)
                        } else if left >= 2 {
                            by_type!(2, at, o)
                        } else {
                            by_type!(1, at, o)
                        };
                    }
                }

                /// Rows `first..last` of one matrix (`rb` bytes each) against every row of `qa`; row `r`'s
                /// result for `x` row `i` goes to `out[i * total + out_col + r - first]`.
                #[target_feature(enable = $features)]
                #[allow(clippy::too_many_arguments)]
                pub unsafe fn span(t: QType, data: &[u8], rb: usize, first: usize, last: usize, qa: &QActs, n: usize,
                                   out: *mut f32, total: usize, out_col: usize) {
                    let mut vals = [0f32; 64];
                    for r in first..last {
                        let row = &data[r * rb..(r + 1) * rb];
                        crate::quant::matmul::prefetch_ahead(data, rb, r);
                        let col = out_col + r - first;
                        let mut done = 0;
                        while done < n {
                            let m = (n - done).min(64);
                            row_dots(t, row, qa, done, m, &mut vals);
                            for (i, v) in vals[..m].iter().enumerate() {
                                *out.add((done + i) * total + col) = *v;
                            }
                            done += m;
                        }
                    }
                }
            }
        };
    }

    /// The shuffle that repeats int8 scales `2k` and `2k + 1` of `sc`, `reps` times each.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn pick(sc: __m128i, k: usize, pattern: __m128i) -> __m128i {
        _mm_shuffle_epi8(sc, _mm_add_epi8(_mm_set1_epi8(2 * k as i8), pattern))
    }

    /// 16 int16: scale `2k` for the first 8 byte pairs, `2k + 1` for the rest (`vpmaddwd`'s operand).
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn scales6_i16(sc: __m128i, k: usize) -> __m256i {
        _mm256_cvtepi8_epi16(pick(sc, k, _mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1)))
    }

    /// 8 int32: scale `2k` for the first 4 sums, `2k + 1` for the rest.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn scales6_i32(sc: __m128i, k: usize) -> __m256i {
        _mm256_cvtepi8_epi32(pick(sc, k, _mm_setr_epi8(0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0)))
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn dot6_avx2(u: __m256i, s: __m256i, scales: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), scales)
    }

    #[inline]
    #[target_feature(enable = "avx2,avxvnni")]
    unsafe fn dot6_avxvnni(u: __m256i, s: __m256i, scales: __m256i) -> __m256i {
        _mm256_mullo_epi32(dot_avxvnni(u, s), scales)
    }

    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn dot6_avx512vnni(u: __m256i, s: __m256i, scales: __m256i) -> __m256i {
        _mm256_mullo_epi32(dot_avx512vnni(u, s), scales)
    }

    kernels!(k_avx2, "avx2,fma,f16c", dot_avx2, scales6_i16, dot6_avx2);
    kernels!(k_avxvnni, "avx2,fma,f16c,avxvnni", dot_avxvnni, scales6_i32, dot6_avxvnni);
    kernels!(k_avx512vnni, "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni", dot_avx512vnni, scales6_i32,
             dot6_avx512vnni);

    /// `k_*::span` with the kernels of `isa`.
    ///
    /// # Safety
    /// As `super::span`.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn span(isa: Isa, t: QType, data: &[u8], rb: usize, first: usize, last: usize, qa: &QActs, n: usize,
                       out: *mut f32, total: usize, out_col: usize) {
        match isa {
            Isa::Portable => unreachable!("the portable kernel is not in this module"),
            Isa::Avx2 => k_avx2::span(t, data, rb, first, last, qa, n, out, total, out_col),
            Isa::AvxVnni => k_avxvnni::span(t, data, rb, first, last, qa, n, out, total, out_col),
            Isa::Avx512Vnni => k_avx512vnni::span(t, data, rb, first, last, qa, n, out, total, out_col),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::formats::decode_block;

    const TYPES: [QType; 5] = [QType::Q4K, QType::Q5K, QType::Q6K, QType::Q5_0, QType::Q5_1];

    fn lcg(seed: &mut u64) -> u32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (*seed >> 33) as u32
    }

    /// Byte offsets of the f16 scales in one block of `t`.
    fn f16_at(t: QType) -> &'static [usize] {
        match t {
            QType::Q4K | QType::Q5K | QType::Q5_1 => &[0, 2],
            QType::Q6K => &[208],
            _ => &[0],
        }
    }

    /// Random blocks of `t` (every byte random but the f16 scales: small finite numbers of either sign).
    fn random_rows(t: QType, rows: usize, cols: usize, seed: &mut u64) -> Vec<u8> {
        let mut data: Vec<u8> = (0..rows * cols / t.block_elems() * t.block_bytes()).map(|_| lcg(seed) as u8).collect();
        for b in data.chunks_exact_mut(t.block_bytes()) {
            for &at in f16_at(t) {
                let h: u16 = 0x2000 | (lcg(seed) as u16 & 0x3ff) | ((lcg(seed) as u16 & 1) << 15);
                b[at..at + 2].copy_from_slice(&h.to_le_bytes());
            }
        }
        data
    }

    /// Every kernel of this CPU (and the portable one) on `w` ([rows, cols] of `t`) against x's rows,
    /// compared with float64 dot products of the decoded weights and the int8-rounded `x`.
    fn check(t: QType, w: &[u8], rows: usize, cols: usize, x: &[f32], n: usize, what: &str) {
        let mut qa = QActs::default();
        qa.quantize(x, cols, Isa::Portable);
        let xd: Vec<f64> = qa.qs.iter().enumerate().map(|(i, &q)| q as f64 * qa.ds[i / 32][0] as f64).collect();
        let mut dense = vec![0f32; rows * cols];
        for (blk, y) in w.chunks_exact(t.block_bytes()).zip(dense.chunks_exact_mut(t.block_elems())) {
            decode_block(t, blk, y);
        }
        let rb = cols / t.block_elems() * t.block_bytes();
        let mut portable = vec![0f32; n * (rows + 3)];
        for (name, isa) in Isa::all().into_iter().filter(|(_, i)| i.available()) {
            let mut out = vec![f32::NAN; n * (rows + 3)];
            // rows 1.. of the matrix into columns 3.. of a wider output, through int8's dispatch
            unsafe { crate::quant::int8::span(isa, t, w, rb, 1, rows, &qa, n, out.as_mut_ptr(), rows + 3, 3) };
            if isa == Isa::Portable {
                portable.clone_from(&out);
            }
            for i in 0..n {
                for r in 1..rows {
                    let terms = (0..cols).map(|c| dense[r * cols + c] as f64 * xd[i * cols + c]);
                    let want: f64 = terms.clone().sum();
                    let scale: f64 = terms.map(f64::abs).sum::<f64>().max(1e-9);
                    let at = i * (rows + 3) + 3 + r - 1;
                    let got = out[at] as f64;
                    assert!((got - want).abs() <= 1e-5 * scale, "{t:?} {what} {name} n {n} row {r}: {got} vs {want}");
                    // the SIMD kernels agree with the portable one up to the order of the float sums
                    let p = portable[at] as f64;
                    assert!((got - p).abs() <= 1e-5 * scale, "{t:?} {what} {name} n {n} row {r}: {got} vs portable {p}");
                }
                assert!(out[i * (rows + 3)..i * (rows + 3) + 3].iter().all(|v| v.is_nan()), "wrote outside");
                // a row's result is bit-identical to the one-row product (a step's tokens do not interact)
                let mut alone = QActs::default();
                alone.quantize(&x[i * cols..(i + 1) * cols], cols, Isa::Portable);
                let mut one = vec![0f32; rows - 1];
                unsafe { crate::quant::int8::span(isa, t, w, rb, 1, rows, &alone, 1, one.as_mut_ptr(), rows - 1, 0) };
                let row = &out[i * (rows + 3) + 3..(i + 1) * (rows + 3)];
                assert!(row.iter().zip(&one).all(|(a, b)| a.to_bits() == b.to_bits()), "{t:?} {what} {name} n {n} x row {i}");
            }
        }
    }

    #[test]
    fn every_kernel_equals_dequantize_then_dot_on_the_quantized_x() {
        let mut seed = 5u64;
        for t in TYPES {
            // three super-blocks for the K-quants, an odd number of 32-blocks for Q5_0/Q5_1
            let cols = if t.block_elems() == 256 { 768 } else { 32 * 19 };
            for n in [1usize, 2, 3, 5, 70] {
                let rows = 7;
                let w = random_rows(t, rows, cols, &mut seed);
                let x: Vec<f32> = (0..n * cols).map(|_| (lcg(&mut seed) as f32 / u32::MAX as f32 - 0.5) * 3.0).collect();
                check(t, &w, rows, cols, &x, n, "random");
            }
        }
    }

    #[test]
    fn extreme_weights_and_activations_do_not_saturate() {
        // every weight byte 0x00, 0xff or 0x80 (the largest values, the most negative Q6_K values and
        // int8 scales, 63 for every 6-bit scale and min) against x at ±127 after rounding
        for t in TYPES {
            let (rows, cols) = (3, 512);
            for fill in [0x00u8, 0xff, 0x80, 0x55] {
                let mut w = vec![fill; rows * cols / t.block_elems() * t.block_bytes()];
                for b in w.chunks_exact_mut(t.block_bytes()) {
                    for &at in f16_at(t) {
                        b[at..at + 2].copy_from_slice(&0x3c00u16.to_le_bytes()); // 1.0
                    }
                }
                for x in [vec![1.0f32; 2 * cols], (0..2 * cols).map(|c| if c % 3 == 0 { -1.0 } else { 1.0 }).collect()] {
                    check(t, &w, rows, cols, &x, 2, &format!("fill {fill:#x}"));
                }
            }
        }
    }

    #[test]
    fn the_format_list_is_the_dispatchers() {
        for t in TYPES {
            assert!(supports(t) && crate::quant::int8::supports(t), "{t:?}");
        }
        for t in [QType::Q4_0, QType::Q4_1, QType::Q8_0, QType::F16, QType::BF16, QType::F32] {
            assert!(!supports(t), "{t:?}");
        }
    }
}
