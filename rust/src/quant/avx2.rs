//! AVX2+FMA dot products for the 32-element formats (Q4_0, Q4_1, Q8_0): each block is decoded into
//! four 8-float registers and multiplied with every row of `x` while it is in registers.
#![cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::formats::QType;

/// One f16 scale to f32 with F16C (present on every AVX2 CPU we dispatch to; checked at run time).
#[inline(always)]
unsafe fn half(p: *const u8) -> f32 {
    let h = u16::from_le_bytes([*p, *p.add(1)]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
}

#[inline(always)]
unsafe fn nibbles(qs: *const u8) -> [__m256; 4] {
    let raw = _mm_loadu_si128(qs as *const __m128i);
    let mask = _mm_set1_epi8(0x0f);
    let lo = _mm_and_si128(raw, mask); // elements 0..16
    let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask); // elements 16..32
    [
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)),
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))),
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)),
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))),
    ]
}

#[inline(always)]
unsafe fn decode(t: QType, b: *const u8) -> [__m256; 4] {
    match t {
        QType::Q4_0 => {
            let d = _mm256_set1_ps(half(b));
            let off = _mm256_set1_ps(-8.0 * half(b));
            let q = nibbles(b.add(2));
            [_mm256_fmadd_ps(d, q[0], off), _mm256_fmadd_ps(d, q[1], off), _mm256_fmadd_ps(d, q[2], off),
             _mm256_fmadd_ps(d, q[3], off)]
        }
        QType::Q4_1 => {
            let d = _mm256_set1_ps(half(b));
            let m = _mm256_set1_ps(half(b.add(2)));
            let q = nibbles(b.add(4));
            [_mm256_fmadd_ps(d, q[0], m), _mm256_fmadd_ps(d, q[1], m), _mm256_fmadd_ps(d, q[2], m),
             _mm256_fmadd_ps(d, q[3], m)]
        }
        _ => {
            // Q8_0
            let d = _mm256_set1_ps(half(b));
            let q = b.add(2);
            let mut out = [_mm256_setzero_ps(); 4];
            for (k, o) in out.iter_mut().enumerate() {
                let bytes = _mm_loadl_epi64(q.add(8 * k) as *const __m128i);
                *o = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes)));
            }
            out
        }
    }
}

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// Whether `t` has a hand-written kernel here.
pub fn supports(t: QType) -> bool {
    matches!(t, QType::Q4_0 | QType::Q4_1 | QType::Q8_0)
}

/// `out[i] = dot(row, x[i])` for the `n` rows of `x` (`cols` each), `row` being one quantized weight row.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `row` holds `cols / 32` blocks of `t`, `x` has `n * cols` floats.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn row_dots(t: QType, row: &[u8], x: &[f32], n: usize, cols: usize, out: &mut [f32]) {
    let bb = t.block_bytes();
    let blocks = cols / 32;
    let xp = x.as_ptr();
    let rp = row.as_ptr();
    if n == 1 {
        // two accumulators hide the FMA latency
        let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for bi in 0..blocks {
            let w = decode(t, rp.add(bi * bb));
            let xb = xp.add(bi * 32);
            a0 = _mm256_fmadd_ps(w[0], _mm256_loadu_ps(xb), a0);
            a1 = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(xb.add(8)), a1);
            a0 = _mm256_fmadd_ps(w[2], _mm256_loadu_ps(xb.add(16)), a0);
            a1 = _mm256_fmadd_ps(w[3], _mm256_loadu_ps(xb.add(24)), a1);
        }
        out[0] = hsum(_mm256_add_ps(a0, a1));
        return;
    }
    let mut acc = [_mm256_setzero_ps(); 16];
    let mut start = 0;
    while start < n {
        let count = (n - start).min(16);
        acc[..count].iter_mut().for_each(|a| *a = _mm256_setzero_ps());
        for bi in 0..blocks {
            let w = decode(t, rp.add(bi * bb));
            for (i, a) in acc[..count].iter_mut().enumerate() {
                let xb = xp.add((start + i) * cols + bi * 32);
                let mut s = _mm256_fmadd_ps(w[0], _mm256_loadu_ps(xb), *a);
                s = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(xb.add(8)), s);
                s = _mm256_fmadd_ps(w[2], _mm256_loadu_ps(xb.add(16)), s);
                *a = _mm256_fmadd_ps(w[3], _mm256_loadu_ps(xb.add(24)), s);
            }
        }
        for (i, a) in acc[..count].iter().enumerate() {
            out[start + i] = hsum(*a);
        }
        start += count;
    }
}
