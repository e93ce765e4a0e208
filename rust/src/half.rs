//! IEEE half precision as a KV cache element: half the memory of f32 per cached K/V value, so twice the
//! tokens in the same cache budget, at f16 rounding of what is stored.
//!
//! Conversions use F16C (8 values per instruction) where the CPU has it, detected at run time, and the
//! portable bit-level conversions of `quant::formats` elsewhere. Both round to nearest even, as NumPy's
//! `astype(np.float16)` does, so a K/V row written by the Python prefill path and one written by the Rust
//! decode step hold the same bits.
use std::ffi::CStr;

use pyo3::buffer::{Element, ElementType};

use crate::quant::formats::{f16_to_f32, f32_to_f16};

/// The bits of one IEEE binary16 value (NumPy's `float16`, buffer format `e`).
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct F16(pub u16);

impl F16 {
    #[inline(always)]
    pub fn to_f32(self) -> f32 {
        f16_to_f32(self.0)
    }

    #[inline(always)]
    pub fn from_f32(x: f32) -> F16 {
        F16(f32_to_f16(x))
    }
}

// SAFETY: `F16` is a plain 2-byte value with no invalid bit patterns, and only 2-byte float formats in
// native byte order are accepted.
unsafe impl Element for F16 {
    fn is_compatible_format(format: &CStr) -> bool {
        let b = format.to_bytes();
        let native = !matches!(b.first(), Some(b'>' | b'!')) || cfg!(target_endian = "big");
        native && ElementType::from_format(format) == ElementType::Float { bytes: 2 }
    }
}

/// Whether this CPU converts with F16C (with AVX2 and FMA: the set the SIMD kernels are built for).
pub fn has_f16c() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `dst[i] = src[i]` as f32, portable.
#[inline(always)]
pub fn widen_portable(src: &[F16], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = s.to_f32();
    }
}

/// `dst[i] = src[i]` as f32 with F16C, 8 at a time (exact, like the portable conversion).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (`has_f16c`).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn widen_f16c(src: &[F16], dst: &mut [f32]) {
    use std::arch::x86_64::{__m128i, _mm256_cvtph_ps, _mm256_storeu_ps, _mm_loadu_si128};
    let n = src.len().min(dst.len());
    let whole = n - n % 8;
    for i in (0..whole).step_by(8) {
        // SAFETY: i + 8 <= n, within both slices; unaligned loads and stores.
        let v = _mm256_cvtph_ps(_mm_loadu_si128(src.as_ptr().add(i) as *const __m128i));
        _mm256_storeu_ps(dst.as_mut_ptr().add(i), v);
    }
    widen_portable(&src[whole..n], &mut dst[whole..n]);
}

/// `dst[i] = src[i]` rounded to f16 (nearest even), with F16C where the CPU has it.
pub fn narrow(src: &[f32], dst: &mut [F16]) {
    #[cfg(target_arch = "x86_64")]
    if has_f16c() {
        // SAFETY: the CPU reports the features `narrow_f16c` is compiled for.
        unsafe { narrow_f16c(src, dst) };
        return;
    }
    narrow_portable(src, dst);
}

fn narrow_portable(src: &[f32], dst: &mut [F16]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = F16::from_f32(s);
    }
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C (`has_f16c`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn narrow_f16c(src: &[f32], dst: &mut [F16]) {
    use std::arch::x86_64::{__m128i, _mm256_cvtps_ph, _mm256_loadu_ps, _mm_storeu_si128, _MM_FROUND_TO_NEAREST_INT};
    let n = src.len().min(dst.len());
    let whole = n - n % 8;
    for i in (0..whole).step_by(8) {
        // SAFETY: i + 8 <= n, within both slices; unaligned loads and stores.
        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(src.as_ptr().add(i)));
        _mm_storeu_si128(dst.as_mut_ptr().add(i) as *mut __m128i, h);
    }
    narrow_portable(&src[whole..n], &mut dst[whole..n]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every finite half, infinities, NaN, subnormals and values that round across a power of two.
    fn probes() -> Vec<f32> {
        let mut xs: Vec<f32> = (0..=u16::MAX).map(|h| F16(h).to_f32()).filter(|x| !x.is_nan()).collect();
        xs.extend([1.0 + 1.0 / 2048.0, 1.0 + 3.0 / 2048.0, 65_519.0, 65_520.0, 1e6, -1e6, 3e-8, 2.9e-8,
                   1.0e-5, -0.333_333, 0.1, f32::INFINITY, f32::NEG_INFINITY]);
        xs.extend((0..1000).map(|i| ((i as f32) * 0.618_034).sin() * 10f32.powi(i % 9 - 4)));
        xs
    }

    #[test]
    fn portable_narrowing_round_trips_every_half_and_rounds_to_nearest_even() {
        for h in 0..=u16::MAX {
            let x = F16(h).to_f32();
            if !x.is_nan() {
                assert_eq!(F16::from_f32(x), F16(h), "{h:#06x}");
            }
        }
        assert_eq!(F16::from_f32(1.0 + 1.0 / 2048.0), F16(0x3c00));
        assert_eq!(F16::from_f32(1.0 + 3.0 / 2048.0), F16(0x3c02));
        assert_eq!(F16::from_f32(65_520.0), F16(0x7c00)); // rounds up to infinity
        assert!(F16::from_f32(f32::NAN).to_f32().is_nan());
    }

    #[test]
    fn f16c_conversions_give_the_portable_bits() {
        if !has_f16c() {
            eprintln!("no F16C on this CPU: only the portable conversions are in use");
            return;
        }
        let xs = probes();
        let mut fast = vec![F16(0); xs.len()];
        let mut slow = vec![F16(0); xs.len()];
        narrow(&xs, &mut fast);
        narrow_portable(&xs, &mut slow);
        assert_eq!(fast, slow);
        let mut wide_fast = vec![0f32; xs.len()];
        let mut wide_slow = vec![0f32; xs.len()];
        #[cfg(target_arch = "x86_64")]
        // SAFETY: checked above.
        unsafe {
            widen_f16c(&fast, &mut wide_fast)
        };
        widen_portable(&fast, &mut wide_slow);
        assert!(wide_fast.iter().zip(&wide_slow).all(|(a, b)| a.to_bits() == b.to_bits()));
        // the odd tail (not a multiple of 8) goes through the same rounding
        narrow(&xs[..13], &mut fast[..13]);
        assert_eq!(fast[..13], slow[..13]);
    }

    #[test]
    fn relative_error_stays_within_half_an_f16_ulp() {
        let xs: Vec<f32> = (1..5000).map(|i| (i as f32 * 0.377).cos() * (1.0 + i as f32 * 0.01)).collect();
        let mut h = vec![F16(0); xs.len()];
        narrow(&xs, &mut h);
        for (&x, &q) in xs.iter().zip(&h) {
            if x.abs() > 6.2e-5 {
                // normal range: |error| <= 2^-11 relative
                assert!((q.to_f32() - x).abs() <= x.abs() * (1.0 / 2048.0), "{x} -> {}", q.to_f32());
            }
        }
    }
}
