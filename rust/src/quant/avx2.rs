//! AVX2+FMA row kernels: each weight block is decoded in registers and multiplied with the rows of `x`
//! while it is there, never written out.
//!
//! - 32-element formats (Q4_0, Q4_1, Q8_0) and 16/32-bit rows (F16, BF16, F32) have hand-written
//!   decoders. With one row of `x` (decode), the block's scale is applied once to the block's partial
//!   dot product, and the Q4 offsets (`m`, or `-8d`) multiply the precomputed block sum of `x`, so a
//!   32-element block costs four int-to-float conversions and five FMAs.
//! - Other formats (the K-quants, Q5_0/Q5_1) decode one block into an L1-resident buffer with the
//!   reference decoder compiled for AVX2 here, then take the dot products with 8-wide FMAs.
#![cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::formats::{decode_block, QType};

/// One f16 scale to f32 with F16C (present on every AVX2 CPU we dispatch to; checked at run time).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn half(p: *const u8) -> f32 {
    _mm_cvtss_f32(halves(p))
}

/// The two f16 values at `p` and `p + 2` in lanes 0 and 1. A 4-byte `movd` load, not a 16-bit insert: an
/// insert would merge into (and so wait for) whatever register the compiler picked.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn halves(p: *const u8) -> __m128 {
    _mm_cvtph_ps(_mm_cvtsi32_si128((p as *const i32).read_unaligned()))
}

/// 8 bytes zero-extended into 8 dwords.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bytes8(p: *const u8) -> __m256i {
    _mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i))
}

/// The 32 nibbles of a Q4 block as floats in element order (byte j: element j low, j+16 high).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles(qs: *const u8) -> [__m256; 4] {
    let mask = _mm256_set1_epi32(0x0f);
    let z0 = bytes8(qs); // bytes 0..8: elements 0..8 (low) and 16..24 (high)
    let z1 = bytes8(qs.add(8)); // bytes 8..16: elements 8..16 and 24..32
    [
        _mm256_cvtepi32_ps(_mm256_and_si256(z0, mask)),
        _mm256_cvtepi32_ps(_mm256_and_si256(z1, mask)),
        _mm256_cvtepi32_ps(_mm256_srli_epi32(z0, 4)),
        _mm256_cvtepi32_ps(_mm256_srli_epi32(z1, 4)),
    ]
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn int8s(q: *const u8) -> [__m256; 4] {
    let mut out = [_mm256_setzero_ps(); 4];
    for (k, o) in out.iter_mut().enumerate() {
        *o = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(q.add(8 * k) as *const __m128i)));
    }
    out
}

/// 32 consecutive elements of a 16/32-bit row as floats.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn wide(t: QType, b: *const u8) -> [__m256; 4] {
    let mut out = [_mm256_setzero_ps(); 4];
    for (k, o) in out.iter_mut().enumerate() {
        *o = match t {
            QType::F16 => _mm256_cvtph_ps(_mm_loadu_si128(b.add(16 * k) as *const __m128i)),
            QType::BF16 => _mm256_castsi256_ps(_mm256_slli_epi32(
                _mm256_cvtepu16_epi32(_mm_loadu_si128(b.add(16 * k) as *const __m128i)), 16)),
            _ => _mm256_loadu_ps(b.add(32 * k) as *const f32),
        };
    }
    out
}

/// The 32 weights of block `b` as floats (the same values as `formats::decode_block`, up to FMA rounding).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn decode(t: QType, b: *const u8) -> [__m256; 4] {
    match t {
        QType::Q4_0 => {
            let d = half(b);
            let (dv, off) = (_mm256_set1_ps(d), _mm256_set1_ps(-8.0 * d));
            let q = nibbles(b.add(2));
            [_mm256_fmadd_ps(dv, q[0], off), _mm256_fmadd_ps(dv, q[1], off), _mm256_fmadd_ps(dv, q[2], off),
             _mm256_fmadd_ps(dv, q[3], off)]
        }
        QType::Q4_1 => {
            let dm = halves(b);
            let (dv, m) = (_mm256_broadcastss_ps(dm), _mm256_broadcastss_ps(_mm_movehdup_ps(dm)));
            let q = nibbles(b.add(4));
            [_mm256_fmadd_ps(dv, q[0], m), _mm256_fmadd_ps(dv, q[1], m), _mm256_fmadd_ps(dv, q[2], m),
             _mm256_fmadd_ps(dv, q[3], m)]
        }
        QType::Q8_0 => {
            let d = _mm256_set1_ps(half(b));
            let q = int8s(b.add(2));
            [_mm256_mul_ps(d, q[0]), _mm256_mul_ps(d, q[1]), _mm256_mul_ps(d, q[2]), _mm256_mul_ps(d, q[3])]
        }
        _ => wide(t, b),
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// Whether `t` has a register decoder here (otherwise `row_dots` takes the buffered path).
#[inline(always)]
fn in_registers(t: QType) -> bool {
    matches!(t, QType::Q4_0 | QType::Q4_1 | QType::Q8_0 | QType::F16 | QType::BF16 | QType::F32)
}

/// Whether the single-row kernel needs the per-block sums of `x` (`xsum`).
pub fn needs_xsum(t: QType) -> bool {
    matches!(t, QType::Q4_0 | QType::Q4_1)
}

/// `sum(x[b*32..(b+1)*32])` for every 32-element block of every row of `x`, in the kernel's lane order.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn block_sums(x: &[f32], out: &mut [f32]) {
    for (o, xb) in out.iter_mut().zip(x.chunks_exact(32)) {
        let p = xb.as_ptr();
        let s = _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))),
                              _mm256_add_ps(_mm256_loadu_ps(p.add(16)), _mm256_loadu_ps(p.add(24))));
        *o = hsum(s);
    }
}

/// One block's scale (broadcast) and its unscaled partial dot product with `xb`; adds the block's offset
/// term (`m·sum(x)` for Q4_1, `-8d·sum(x)` for Q4_0) to `off`. `xsum` (the block's sum of `x`) is only
/// read for those two formats.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scaled_block(t: QType, b: *const u8, xb: *const f32, xsum: *const f32, off: &mut f32)
                       -> (__m256, __m256) {
    let dm = halves(b); // d, and m for Q4_1 (for Q4_0 and Q8_0 lane 1 holds quant bytes, unused)
    let d = _mm_cvtss_f32(dm);
    let q = match t {
        QType::Q4_0 => {
            *off = (-8.0 * d).mul_add(*xsum, *off);
            nibbles(b.add(2))
        }
        QType::Q4_1 => {
            *off = _mm_cvtss_f32(_mm_movehdup_ps(dm)).mul_add(*xsum, *off);
            nibbles(b.add(4))
        }
        _ => int8s(b.add(2)),
    };
    let s0 = _mm256_fmadd_ps(q[1], _mm256_loadu_ps(xb.add(8)), _mm256_mul_ps(q[0], _mm256_loadu_ps(xb)));
    let s1 = _mm256_fmadd_ps(q[3], _mm256_loadu_ps(xb.add(24)), _mm256_mul_ps(q[2], _mm256_loadu_ps(xb.add(16))));
    (_mm256_set1_ps(d), _mm256_add_ps(s0, s1))
}

/// One row of `x` against one weight row in a register format.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn single(t: QType, rp: *const u8, xp: *const f32, xs: *const f32, blocks: usize) -> f32 {
    let bb = t.block_bytes();
    match t {
        QType::Q4_0 | QType::Q4_1 | QType::Q8_0 => {
            // Σ_b d_b·(q_b·x_b) + Σ_b off_b·sum(x_b); two accumulators (even and odd blocks) keep two
            // scale FMAs in flight.
            let (mut off0, mut off1) = (0f32, 0f32);
            let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut bi = 0;
            while bi + 1 < blocks {
                let (d0, p0) = scaled_block(t, rp.add(bi * bb), xp.add(bi * 32), xs.wrapping_add(bi), &mut off0);
                let (d1, p1) = scaled_block(t, rp.add((bi + 1) * bb), xp.add((bi + 1) * 32), xs.wrapping_add(bi + 1),
                                            &mut off1);
                a0 = _mm256_fmadd_ps(d0, p0, a0);
                a1 = _mm256_fmadd_ps(d1, p1, a1);
                bi += 2;
            }
            if bi < blocks {
                let (d0, p0) = scaled_block(t, rp.add(bi * bb), xp.add(bi * 32), xs.wrapping_add(bi), &mut off0);
                a0 = _mm256_fmadd_ps(d0, p0, a0);
            }
            hsum(_mm256_add_ps(a0, a1)) + (off0 + off1)
        }
        _ => {
            let (mut a0, mut a1, mut a2, mut a3) =
                (_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps());
            for bi in 0..blocks {
                let w = wide(t, rp.add(bi * bb));
                let xb = xp.add(bi * 32);
                a0 = _mm256_fmadd_ps(w[0], _mm256_loadu_ps(xb), a0);
                a1 = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(xb.add(8)), a1);
                a2 = _mm256_fmadd_ps(w[2], _mm256_loadu_ps(xb.add(16)), a2);
                a3 = _mm256_fmadd_ps(w[3], _mm256_loadu_ps(xb.add(24)), a3);
            }
            hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)))
        }
    }
}

/// Rows of `x` per pass over a weight row: 8 accumulators plus the decoded block fit the 16 registers.
const GROUP: usize = 8;

/// `out[i] = dot(row, x[i])` for the `n` rows of `x` (`cols` each), `row` being one quantized weight row.
/// `xsum` holds the per-32-block sums of `x` when `needs_xsum(t)` (only read when `n == 1`).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `row` holds `cols / block_elems` blocks of `t`, `x` has
/// `n * cols` floats, `out` at least `n`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn row_dots(t: QType, row: &[u8], x: &[f32], xsum: &[f32], n: usize, cols: usize, out: &mut [f32]) {
    let xp = x.as_ptr();
    let rp = row.as_ptr();
    if !in_registers(t) {
        return buffered(t, row, x, n, cols, out);
    }
    let blocks = cols / 32;
    let bb = t.block_bytes();
    if n == 1 {
        out[0] = if matches!(t, QType::Q4_0 | QType::Q4_1 | QType::Q8_0) && super::avx512::available() {
            super::avx512::single(t, rp, xp, xsum.as_ptr(), blocks)
        } else {
            single(t, rp, xp, xsum.as_ptr(), blocks)
        };
        return;
    }
    let mut start = 0;
    while start < n {
        let left = n - start;
        let o = &mut out[start..];
        let xs = xp.add(start * cols);
        start += if left >= GROUP {
            multi::<GROUP>(t, rp, bb, blocks, xs, cols, o)
        } else if left >= 4 {
            multi::<4>(t, rp, bb, blocks, xs, cols, o)
        } else if left >= 2 {
            multi::<2>(t, rp, bb, blocks, xs, cols, o)
        } else {
            multi::<1>(t, rp, bb, blocks, xs, cols, o)
        };
    }
}

/// `G` rows of `x` against one weight row (a constant `G`, so the accumulators live in registers).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn multi<const G: usize>(t: QType, rp: *const u8, bb: usize, blocks: usize, xp: *const f32, cols: usize,
                                out: &mut [f32]) -> usize {
    let mut acc = [_mm256_setzero_ps(); G];
    for bi in 0..blocks {
        let w = decode(t, rp.add(bi * bb));
        for (i, a) in acc.iter_mut().enumerate() {
            let xb = xp.add(i * cols + bi * 32);
            let mut s = _mm256_fmadd_ps(w[0], _mm256_loadu_ps(xb), *a);
            s = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(xb.add(8)), s);
            s = _mm256_fmadd_ps(w[2], _mm256_loadu_ps(xb.add(16)), s);
            *a = _mm256_fmadd_ps(w[3], _mm256_loadu_ps(xb.add(24)), s);
        }
    }
    for (o, a) in out.iter_mut().zip(acc.iter()) {
        *o = hsum(*a);
    }
    G
}

/// Formats without a register decoder: one block at a time into an L1 buffer, then 8-wide FMAs.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn buffered(t: QType, row: &[u8], x: &[f32], n: usize, cols: usize, out: &mut [f32]) {
    let mut buf = [0f32; 256];
    let xp = x.as_ptr();
    let mut start = 0;
    while start < n {
        let left = n - start;
        let (o, x) = (&mut out[start..], xp.add(start * cols));
        start += if left >= 4 {
            buffered_rows::<4>(t, row, x, cols, o, &mut buf)
        } else {
            buffered_rows::<1>(t, row, x, cols, o, &mut buf)
        };
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn buffered_rows<const G: usize>(t: QType, row: &[u8], xp: *const f32, cols: usize, out: &mut [f32],
                                        buf: &mut [f32; 256]) -> usize {
    let (be, bb) = (t.block_elems(), t.block_bytes());
    let mut acc = [[_mm256_setzero_ps(); 2]; G];
    for (bi, block) in row.chunks_exact(bb).enumerate() {
        decode_block(t, block, &mut buf[..be]);
        let bp = buf.as_ptr();
        for (i, a) in acc.iter_mut().enumerate() {
            let xb = xp.add(i * cols + bi * be);
            for k in (0..be).step_by(16) {
                a[0] = _mm256_fmadd_ps(_mm256_loadu_ps(bp.add(k)), _mm256_loadu_ps(xb.add(k)), a[0]);
                a[1] = _mm256_fmadd_ps(_mm256_loadu_ps(bp.add(k + 8)), _mm256_loadu_ps(xb.add(k + 8)), a[1]);
            }
        }
    }
    for (o, a) in out.iter_mut().zip(acc.iter()) {
        *o = hsum(_mm256_add_ps(a[0], a[1]));
    }
    G
}
