//! AVX-512 float kernels for one row of `x` (decode): a 32-value block is two 16-wide vectors, so it costs
//! two int-to-float conversions and three FMAs where the AVX2 kernels (`avx2::single`) need four and
//! five, and a fifth bit (Q5_0, Q5_1, Q5_K) is one masked OR per 16 values, the mask being the format's
//! `qh` bits themselves. The arithmetic is the AVX2 kernels' (each scale applied once to its values'
//! partial dot product, the offsets times the block sums of `x`); only the order of the float additions
//! differs, so results agree to float rounding.
#![cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::avx2::{half, halves, hsum, k4_scales, q6k_pieces};
use super::formats::QType;

/// Whether this CPU runs these kernels (AVX-512 F, BW and VL, besides the AVX2 set).
pub fn available() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        super::matmul::has_avx2() && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw") && std::is_x86_feature_detected!("avx512vl")
    })
}

/// Whether `single` takes rows of `t`.
pub fn handles(t: QType) -> bool {
    matches!(t, QType::Q4_0 | QType::Q4_1 | QType::Q5_0 | QType::Q5_1 | QType::Q8_0 | QType::Q4K | QType::Q5K
                | QType::Q6K)
}

/// Rows `first..last` of a matrix of `t` (one of `handles`; rows of `rb` bytes, `blocks` blocks each)
/// against one row of `x`, into `out[0..last - first]`.
///
/// One dispatch per span, not per row: a decode step's rows are short (a few hundred bytes), and a call,
/// format dispatch and strided store per row cost a fifth of the step. Rows go one at a time, in order:
/// interleaving four rows (to share the `x` loads and one reduction) was measured slower, the four
/// concurrent streams defeating the hardware prefetcher (Q8_0 at half the bandwidth).
///
/// # Safety
/// `available()` must hold; `data` holds at least `last` rows; `xp` points at `blocks * block_elems`
/// floats and, where `avx2::needs_xsum(t)`, `xs` at the 32-value sums of those floats; `out` has room for
/// `last - first` floats.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn span(t: QType, data: &[u8], rb: usize, first: usize, last: usize, xp: *const f32, xs: *const f32,
                   blocks: usize, out: *mut f32) {
    use super::matmul::each_row;
    // the format is a constant in each loop (see `avx2::per_format` for why)
    // SAFETY (each call): the CPU has the features; `rp` is a row of `blocks` blocks of `t`.
    match t {
        QType::Q4_0 => each_row(data, rb, first, last, out,
                                |rp| unsafe { row::<{ QType::Q4_0 as u32 }>(rp, xp, xs, blocks) }),
        QType::Q4_1 => each_row(data, rb, first, last, out,
                                |rp| unsafe { row::<{ QType::Q4_1 as u32 }>(rp, xp, xs, blocks) }),
        QType::Q5_0 => each_row(data, rb, first, last, out,
                                |rp| unsafe { row::<{ QType::Q5_0 as u32 }>(rp, xp, xs, blocks) }),
        QType::Q5_1 => each_row(data, rb, first, last, out,
                                |rp| unsafe { row::<{ QType::Q5_1 as u32 }>(rp, xp, xs, blocks) }),
        QType::Q4K => each_row(data, rb, first, last, out, |rp| unsafe { k4::<false>(rp, xp, xs, blocks) }),
        QType::Q5K => each_row(data, rb, first, last, out, |rp| unsafe { k4::<true>(rp, xp, xs, blocks) }),
        QType::Q6K => each_row(data, rb, first, last, out, |rp| unsafe { q6k(rp, xp, blocks) }),
        _ => each_row(data, rb, first, last, out,
                      |rp| unsafe { row::<{ QType::Q8_0 as u32 }>(rp, xp, xs, blocks) }),
    }
}

/// 16 bytes zero-extended into 16 dwords.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn bytes16(p: *const u8) -> __m512i {
    _mm512_cvtepu8_epi32(_mm_loadu_si128(p as *const __m128i))
}

/// The dot product of 16 dwords (as floats) with the 16 floats at `x`, added to `acc`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn fma16(q: __m512i, x: *const f32, acc: __m512) -> __m512 {
    _mm512_fmadd_ps(_mm512_cvtepi32_ps(q), _mm512_loadu_ps(x), acc)
}

/// One 32-value block's scale (broadcast) and unscaled partial dot product with `xb`; adds its offset
/// term (`m·sum(x)` for Q4_1/Q5_1, `-8d·sum(x)` for Q4_0, `-16d·sum(x)` for Q5_0) to `off`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn block<const ID: u32>(b: *const u8, xb: *const f32, xsum: *const f32, off: &mut f32) -> (__m512, __m512) {
    let t = QType::from_id(ID).unwrap_or(QType::Q8_0);
    let dm = halves(b);
    let d = _mm_cvtss_f32(dm);
    let (lo, hi) = if t == QType::Q8_0 {
        let q = b.add(2);
        (_mm512_cvtepi8_epi32(_mm_loadu_si128(q as *const __m128i)),
         _mm512_cvtepi8_epi32(_mm_loadu_si128(q.add(16) as *const __m128i)))
    } else {
        // byte j holds element j (low nibble) and element j + 16 (high nibble); Q5's `qh` bit e is
        // element e's fifth bit
        let with_m = matches!(t, QType::Q4_1 | QType::Q5_1);
        let five = matches!(t, QType::Q5_0 | QType::Q5_1);
        let m = if with_m { _mm_cvtss_f32(_mm_movehdup_ps(dm)) } else if five { -16.0 * d } else { -8.0 * d };
        *off = m.mul_add(*xsum, *off);
        let qs = b.add(2 + 2 * with_m as usize + 4 * five as usize);
        let z = bytes16(qs);
        let (mut lo, mut hi) = (_mm512_and_si512(z, _mm512_set1_epi32(15)), _mm512_srli_epi32(z, 4));
        if five {
            let qh = (b.add(2 + 2 * with_m as usize) as *const u32).read_unaligned();
            let sixteen = _mm512_set1_epi32(16);
            lo = _mm512_mask_or_epi32(lo, qh as __mmask16, lo, sixteen);
            hi = _mm512_mask_or_epi32(hi, (qh >> 16) as __mmask16, hi, sixteen);
        }
        (lo, hi)
    };
    let s = fma16(hi, xb.add(16), _mm512_mul_ps(_mm512_cvtepi32_ps(lo), _mm512_loadu_ps(xb)));
    (_mm512_set1_ps(d), s)
}

/// `Σ_b d_b·(q_b·x_b) + Σ_b off_b·sum(x_b)` over a row of 32-value blocks; two accumulators (even and odd
/// blocks) keep two scale FMAs in flight.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn row<const ID: u32>(rp: *const u8, xp: *const f32, xs: *const f32, blocks: usize) -> f32 {
    let bb = QType::from_id(ID).unwrap_or(QType::Q8_0).block_bytes();
    let (mut off0, mut off1) = (0f32, 0f32);
    let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let mut bi = 0;
    while bi + 1 < blocks {
        let (d0, p0) = block::<ID>(rp.add(bi * bb), xp.add(bi * 32), xs.wrapping_add(bi), &mut off0);
        let (d1, p1) = block::<ID>(rp.add((bi + 1) * bb), xp.add((bi + 1) * 32), xs.wrapping_add(bi + 1), &mut off1);
        a0 = _mm512_fmadd_ps(d0, p0, a0);
        a1 = _mm512_fmadd_ps(d1, p1, a1);
        bi += 2;
    }
    if bi < blocks {
        let (d0, p0) = block::<ID>(rp.add(bi * bb), xp.add(bi * 32), xs.wrapping_add(bi), &mut off0);
        a0 = _mm512_fmadd_ps(d0, p0, a0);
    }
    _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) + (off0 + off1)
}

/// One Q4_K or Q5_K row (`blocks` super-blocks): per super-block the 8 scales and mins are unpacked
/// once and the min term is one FMA with the 8 sums of `x`; each 16-byte load serves 16 values of two
/// sub-blocks (low and high nibbles), and Q5_K's fifth bits are 8 byte-test masks of its 32 `qh` bytes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn k4<const FIVE: bool>(rp: *const u8, xp: *const f32, xs: *const f32, blocks: usize) -> f32 {
    let (bb, qs_at) = if FIVE { (176, 48) } else { (144, 16) };
    let (mut a0, mut a1, mut offs) = (_mm512_setzero_ps(), _mm512_setzero_ps(), _mm256_setzero_ps());
    let (mask, sixteen) = (_mm512_set1_epi32(15), _mm512_set1_epi32(16));
    for bi in 0..blocks {
        let b = rp.add(bi * bb);
        let (sc, mn, dmin) = k4_scales(b);
        offs = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(-dmin), _mm256_loadu_ps(mn.as_ptr())),
                               _mm256_loadu_ps(xs.add(8 * bi)), offs);
        let qh = if FIVE { _mm256_loadu_si256(b.add(16) as *const __m256i) } else { _mm256_setzero_si256() };
        let x = xp.add(256 * bi);
        for g in 0..4 {
            let (qs, xg) = (b.add(qs_at + 32 * g), x.add(64 * g));
            let (z0, z1) = (bytes16(qs), bytes16(qs.add(16)));
            let (mut l0, mut l1) = (_mm512_and_si512(z0, mask), _mm512_and_si512(z1, mask));
            let (mut h0, mut h1) = (_mm512_srli_epi32(z0, 4), _mm512_srli_epi32(z1, 4));
            if FIVE {
                // bit k of byte l is the fifth bit of value l of sub-block k
                let kl = _mm256_test_epi8_mask(qh, _mm256_set1_epi8(1 << (2 * g)));
                let kh = _mm256_test_epi8_mask(qh, _mm256_set1_epi8((2u8 << (2 * g)) as i8));
                l0 = _mm512_mask_or_epi32(l0, kl as __mmask16, l0, sixteen);
                l1 = _mm512_mask_or_epi32(l1, (kl >> 16) as __mmask16, l1, sixteen);
                h0 = _mm512_mask_or_epi32(h0, kh as __mmask16, h0, sixteen);
                h1 = _mm512_mask_or_epi32(h1, (kh >> 16) as __mmask16, h1, sixteen);
            }
            let lo = fma16(l1, xg.add(16), _mm512_mul_ps(_mm512_cvtepi32_ps(l0), _mm512_loadu_ps(xg)));
            let hi = fma16(h1, xg.add(48), _mm512_mul_ps(_mm512_cvtepi32_ps(h0), _mm512_loadu_ps(xg.add(32))));
            a0 = _mm512_fmadd_ps(_mm512_set1_ps(sc[2 * g]), lo, a0);
            a1 = _mm512_fmadd_ps(_mm512_set1_ps(sc[2 * g + 1]), hi, a1);
        }
    }
    _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) + hsum(offs)
}

/// One Q6_K row: per 128-value half, each 16-byte load of ql, ql+32 and qh gives 16 values of all four
/// 32-value pieces, and every 16 values have their own int8 scale, applied once to their partial sum.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn q6k(rp: *const u8, xp: *const f32, blocks: usize) -> f32 {
    let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let bias = _mm512_set1_epi32(32);
    for bi in 0..blocks {
        let b = rp.add(bi * 210);
        let d = half(b.add(208));
        for n in 0..2 {
            let (ql, qh, sc) = (b.add(64 * n), b.add(128 + 32 * n), b.add(192 + 8 * n) as *const i8);
            let x = xp.add(256 * bi + 128 * n);
            for v in 0..2 {
                let (a, c, h) = (bytes16(ql.add(16 * v)), bytes16(ql.add(32 + 16 * v)), bytes16(qh.add(16 * v)));
                let q = q6k_pieces!(a, c, h, _mm512_and_si512, _mm512_or_si512, _mm512_srli_epi32,
                                    _mm512_slli_epi32, _mm512_set1_epi32);
                for (j, qj) in q.iter().enumerate() {
                    // values 32j + 16v .. +16 of this half: scale 2j + v
                    let p = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(*qj, bias)),
                                          _mm512_loadu_ps(x.add(32 * j + 16 * v)));
                    let s = _mm512_set1_ps(d * *sc.add(2 * j + v) as f32);
                    if j % 2 == 0 {
                        a0 = _mm512_fmadd_ps(s, p, a0);
                    } else {
                        a1 = _mm512_fmadd_ps(s, p, a1);
                    }
                }
            }
        }
    }
    _mm512_reduce_add_ps(_mm512_add_ps(a0, a1))
}
