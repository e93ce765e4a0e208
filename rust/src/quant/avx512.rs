//! AVX-512 float kernel for one row of `x` (decode) against Q4_0, Q4_1 or Q8_0 weights: a block's 32
//! weights are two 16-wide vectors, so a block costs two int-to-float conversions and three FMAs where
//! the AVX2 kernel (`avx2::single`) needs four and five. The arithmetic is the same (scale applied once
//! to the block's partial dot product, the Q4 offsets times the block sums of `x`); only the order of
//! the float additions differs, so results agree to float rounding.
#![cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::formats::QType;

/// Whether this CPU runs these kernels (AVX-512 F and BW, besides the AVX2 set).
pub fn available() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        super::matmul::has_avx2() && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
    })
}

/// `Σ_b d_b·(q_b·x_b) + Σ_b off_b·sum(x_b)` for one weight row of `blocks` blocks; two accumulators (even
/// and odd blocks) keep two scale FMAs in flight.
///
/// # Safety
/// `available()` must hold; `t` is Q4_0, Q4_1 or Q8_0, `rp` points at `blocks` blocks of it, `xp` at
/// `blocks * 32` floats and, for the Q4 formats, `xs` at their `blocks` block sums.
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
pub unsafe fn single(t: QType, rp: *const u8, xp: *const f32, xs: *const f32, blocks: usize) -> f32 {
    match t {
        QType::Q4_0 => row(QType::Q4_0, rp, xp, xs, blocks),
        QType::Q4_1 => row(QType::Q4_1, rp, xp, xs, blocks),
        _ => row(QType::Q8_0, rp, xp, xs, blocks),
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
unsafe fn block(t: QType, b: *const u8, xb: *const f32, xsum: *const f32, off: &mut f32) -> (__m512, __m512) {
    let dm = _mm_cvtph_ps(_mm_cvtsi32_si128((b as *const i32).read_unaligned()));
    let d = _mm_cvtss_f32(dm);
    let (lo, hi) = match t {
        QType::Q8_0 => {
            let q = b.add(2);
            (_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(q as *const __m128i))),
             _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(q.add(16) as *const __m128i))))
        }
        _ => {
            // byte j holds element j (low nibble) and element j + 16 (high nibble)
            let (m, qs) = if t == QType::Q4_1 { (_mm_cvtss_f32(_mm_movehdup_ps(dm)), b.add(4)) } else { (-8.0 * d, b.add(2)) };
            *off = m.mul_add(*xsum, *off);
            let z = _mm512_cvtepu8_epi32(_mm_loadu_si128(qs as *const __m128i));
            (_mm512_cvtepi32_ps(_mm512_and_si512(z, _mm512_set1_epi32(15))),
             _mm512_cvtepi32_ps(_mm512_srli_epi32(z, 4)))
        }
    };
    let s = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xb.add(16)), _mm512_mul_ps(lo, _mm512_loadu_ps(xb)));
    (_mm512_set1_ps(d), s)
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
unsafe fn row(t: QType, rp: *const u8, xp: *const f32, xs: *const f32, blocks: usize) -> f32 {
    let bb = t.block_bytes();
    let (mut off0, mut off1) = (0f32, 0f32);
    let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let mut bi = 0;
    while bi + 1 < blocks {
        let (d0, p0) = block(t, rp.add(bi * bb), xp.add(bi * 32), xs.wrapping_add(bi), &mut off0);
        let (d1, p1) = block(t, rp.add((bi + 1) * bb), xp.add((bi + 1) * 32), xs.wrapping_add(bi + 1), &mut off1);
        a0 = _mm512_fmadd_ps(d0, p0, a0);
        a1 = _mm512_fmadd_ps(d1, p1, a1);
        bi += 2;
    }
    if bi < blocks {
        let (d0, p0) = block(t, rp.add(bi * bb), xp.add(bi * 32), xs.wrapping_add(bi), &mut off0);
        a0 = _mm512_fmadd_ps(d0, p0, a0);
    }
    _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) + (off0 + off1)
}
