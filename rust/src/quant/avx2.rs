//! AVX2+FMA row kernels: each weight block is decoded in registers and multiplied with the rows of `x`
//! while it is there, never written out.
//!
//! - One row of `x` (decode): each scale is applied once to its values' partial dot product, and the
//!   offsets (`m`, `-8d`, `-16d`, a K-quant's `-dmin·min`) multiply the precomputed 32-value sums of `x`.
//!   The 32-value formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) share one block loop, so a Q4 block costs four
//!   int-to-float conversions and five FMAs; Q4_K/Q5_K and Q6_K have their own super-block loops, which
//!   unpack the scales once per super-block and serve several sub-blocks from each byte load. 16/32-bit
//!   rows (F16, BF16, F32) are converted as they are loaded.
//! - Several rows: each 32 values of a weight row are decoded to floats once (`weights32`; for Q5_0, Q5_1
//!   and the K-quants through `piece`: the unscaled integers, the scales of the two 16-value halves and
//!   the offset) and reused for every row of `x`.
#![cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::formats::{scale_min_k4, QType};

/// `$body` with `$id` a constant holding `$t`'s ggml id (`QType as u32`), one match arm per format: the
/// block loops take their format as a const generic parameter, because with the format passed as a
/// value LLVM merged their instances back into one loop with a format branch per block.
macro_rules! per_format {
    ($t:expr, $id:ident => $body:expr) => {
        match $t {
            QType::Q4_0 => { const $id: u32 = QType::Q4_0 as u32; $body }
            QType::Q4_1 => { const $id: u32 = QType::Q4_1 as u32; $body }
            QType::Q5_0 => { const $id: u32 = QType::Q5_0 as u32; $body }
            QType::Q5_1 => { const $id: u32 = QType::Q5_1 as u32; $body }
            QType::Q8_0 => { const $id: u32 = QType::Q8_0 as u32; $body }
            QType::Q4K => { const $id: u32 = QType::Q4K as u32; $body }
            QType::Q5K => { const $id: u32 = QType::Q5K as u32; $body }
            QType::Q6K => { const $id: u32 = QType::Q6K as u32; $body }
            QType::F32 => { const $id: u32 = QType::F32 as u32; $body }
            QType::F16 => { const $id: u32 = QType::F16 as u32; $body }
            QType::BF16 => { const $id: u32 = QType::BF16 as u32; $body }
        }
    };
}

/// The format a `per_format` id names.
#[inline(always)]
fn format_of(id: u32) -> QType {
    QType::from_id(id).unwrap_or(QType::F32)
}

/// The four 6-bit Q6_K pieces (unsigned, before the -32) of one run of values, from the same run of
/// ql bytes (`$a`), ql+32 bytes (`$c`) and qh bytes (`$h`) widened to dwords: piece j takes the low (j
/// even) or high nibbles of `$a` (j < 2) or `$c`, and bits 2j, 2j+1 of `$h`. Written once over the
/// vector width's intrinsics, for the 256- and 512-bit kernels.
macro_rules! q6k_pieces {
    ($a:expr, $c:expr, $h:expr, $and:ident, $or:ident, $srli:ident, $slli:ident, $set1:ident) => {{
        let (a, c, h, mask, three) = ($a, $c, $h, $set1(15), $set1(3));
        [
            $or($and(a, mask), $slli::<4>($and(h, three))),
            $or($and(c, mask), $slli::<4>($and($srli::<2>(h), three))),
            $or($srli::<4>(a), $slli::<4>($and($srli::<4>(h), three))),
            $or($srli::<4>(c), $slli::<4>($srli::<6>(h))),
        ]
    }};
}
pub(super) use q6k_pieces;

/// One f16 scale to f32 with F16C (present on every AVX2 CPU we dispatch to; checked at run time).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn half(p: *const u8) -> f32 {
    _mm_cvtss_f32(halves(p))
}

/// The two f16 values at `p` and `p + 2` in lanes 0 and 1. A 4-byte `movd` load, not a 16-bit insert: an
/// insert would merge into (and so wait for) whatever register the compiler picked.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn halves(p: *const u8) -> __m128 {
    _mm_cvtph_ps(_mm_cvtsi32_si128((p as *const i32).read_unaligned()))
}

/// 8 bytes zero-extended into 8 dwords.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bytes8(p: *const u8) -> __m256i {
    _mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i))
}

/// The 32 nibbles of a Q4/Q5 block as dwords in element order (byte j: element j low, j+16 high).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibble_ints(qs: *const u8) -> [__m256i; 4] {
    let mask = _mm256_set1_epi32(0x0f);
    let z0 = bytes8(qs); // bytes 0..8: elements 0..8 (low) and 16..24 (high)
    let z1 = bytes8(qs.add(8)); // bytes 8..16: elements 8..16 and 24..32
    [_mm256_and_si256(z0, mask), _mm256_and_si256(z1, mask), _mm256_srli_epi32(z0, 4), _mm256_srli_epi32(z1, 4)]
}

/// Four vectors of dwords as floats.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn ints_to_floats(q: [__m256i; 4]) -> [__m256; 4] {
    [_mm256_cvtepi32_ps(q[0]), _mm256_cvtepi32_ps(q[1]), _mm256_cvtepi32_ps(q[2]), _mm256_cvtepi32_ps(q[3])]
}

/// `nibble_ints` as floats.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles(qs: *const u8) -> [__m256; 4] {
    ints_to_floats(nibble_ints(qs))
}

/// Bits `shift..shift + width` of 32 consecutive bytes at `p`, as dwords in byte order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bit_fields(p: *const u8, shift: i32, mask: i32) -> [__m256i; 4] {
    let (count, m) = (_mm_cvtsi32_si128(shift), _mm256_set1_epi32(mask));
    let mut out = [_mm256_setzero_si256(); 4];
    for (v, o) in out.iter_mut().enumerate() {
        *o = _mm256_and_si256(_mm256_srl_epi32(bytes8(p.add(8 * v)), count), m);
    }
    out
}

/// Each byte value's 8 bits as 8 dwords of 0 or 16 (a fifth bit's weight), 32-byte aligned rows.
#[repr(C, align(32))]
struct FifthBits([[u32; 8]; 256]);

static FIFTH_BITS: FifthBits = {
    let mut t = [[0u32; 8]; 256];
    let mut byte = 0;
    while byte < 256 {
        let mut j = 0;
        while j < 8 {
            t[byte][j] = ((byte as u32 >> j) & 1) << 4;
            j += 1;
        }
        byte += 1;
    }
    FifthBits(t)
};

/// The 32 unsigned 5-bit values of a Q5_0/Q5_1 block from its 32-bit `qh` at `p` (element e's fifth bit
/// is bit e) and the 16 nibble bytes after it, as dwords in element order.
///
/// Each `qh` byte (8 elements' fifth bits) picks its 8 dwords from an 8 KB table (in L1): one OR with
/// a load per 8 values, where shifting each lane's bit into place took four vector operations (AVX2 has
/// no mask registers), which made Q5_0 half again as slow as Q4_0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn five_bit_ints(p: *const u8) -> [__m256i; 4] {
    let mut q = nibble_ints(p.add(4));
    for (v, o) in q.iter_mut().enumerate() {
        let row = FIFTH_BITS.0[*p.add(v) as usize].as_ptr() as *const __m256i;
        // SAFETY: `row` is one 32-byte-aligned row of the static table.
        *o = _mm256_or_si256(*o, _mm256_load_si256(row));
    }
    q
}

/// Piece `k` (values `32k..32k + 32`) of block `b` of Q5_0, Q5_1, Q4_K, Q5_K or Q6_K: the unscaled
/// values as floats, the scales of the piece's two 16-value halves, and the offset (value = scale·u +
/// offset; the same numbers `formats::decode_block` writes, up to FMA rounding).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn piece(t: QType, b: *const u8, k: usize) -> ([__m256; 4], f32, f32, f32) {
    let mut u = [_mm256_setzero_si256(); 4];
    let (s0, s1, off);
    match t {
        QType::Q5_0 | QType::Q5_1 => {
            let dm = halves(b);
            let d = _mm_cvtss_f32(dm);
            (s0, s1) = (d, d);
            off = if t == QType::Q5_1 { _mm_cvtss_f32(_mm_movehdup_ps(dm)) } else { -16.0 * d };
            u = five_bit_ints(b.add(if t == QType::Q5_1 { 4 } else { 2 }));
        }
        QType::Q4K | QType::Q5K => {
            // 8 sub-blocks of 32 values, 6-bit scales and mins; piece k is sub-block k: the low (k even)
            // or high nibbles of 32 bytes, and for Q5_K bit k of the 32 qh bytes
            let dm = halves(b);
            let (sc, m) = scale_min_k4(k, std::slice::from_raw_parts(b.add(4), 12));
            s0 = _mm_cvtss_f32(dm) * sc;
            s1 = s0;
            off = -(_mm_cvtss_f32(_mm_movehdup_ps(dm)) * m);
            let qs = b.add(if t == QType::Q4K { 16 } else { 48 } + 32 * (k / 2));
            u = bit_fields(qs, 4 * (k % 2) as i32, 15);
            if t == QType::Q5K {
                let hi = bit_fields(b.add(16), k as i32, 1);
                for (o, h) in u.iter_mut().zip(hi) {
                    *o = _mm256_or_si256(*o, _mm256_slli_epi32(h, 4));
                }
            }
        }
        _ => {
            // Q6_K: two halves of 128 values; in half n, piece j takes the low (j < 2) or high nibbles of
            // 32 ql bytes (from byte 32·(j & 1)), two bits 2j.. of the 32 qh bytes, int8 scales 2j and 2j+1
            let (n, j) = (k / 4, k % 4);
            let d = half(b.add(208));
            let sc = b.add(192 + 8 * n + 2 * j) as *const i8;
            (s0, s1, off) = (d * *sc as f32, d * *sc.add(1) as f32, 0.0);
            let low = bit_fields(b.add(64 * n + 32 * (j & 1)), 4 * (j >> 1) as i32, 15);
            let high = bit_fields(b.add(128 + 32 * n), 2 * j as i32, 3);
            for ((o, l), h) in u.iter_mut().zip(low).zip(high) {
                *o = _mm256_sub_epi32(_mm256_or_si256(l, _mm256_slli_epi32(h, 4)), _mm256_set1_epi32(32));
            }
        }
    }
    (ints_to_floats(u), s0, s1, off)
}

/// Values `32k..32k + 32` of block `b` as floats, for every format.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn weights32(t: QType, b: *const u8, k: usize) -> [__m256; 4] {
    if one_scale(t) {
        return decode(t, b);
    }
    let (u, s0, s1, off) = piece(t, b, k);
    let (lo, hi, o) = (_mm256_set1_ps(s0), _mm256_set1_ps(s1), _mm256_set1_ps(off));
    [_mm256_fmadd_ps(u[0], lo, o), _mm256_fmadd_ps(u[1], lo, o), _mm256_fmadd_ps(u[2], hi, o),
     _mm256_fmadd_ps(u[3], hi, o)]
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
pub(super) unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// Whether `t` has one scale per 32 values (or none) and so a `decode` of its own; the others go by `piece`.
#[inline(always)]
fn one_scale(t: QType) -> bool {
    matches!(t, QType::Q4_0 | QType::Q4_1 | QType::Q8_0 | QType::F16 | QType::BF16 | QType::F32)
}

/// Whether the single-row kernel needs the per-32-value sums of `x` (`xsum`): the formats with offsets.
pub fn needs_xsum(t: QType) -> bool {
    matches!(t, QType::Q4_0 | QType::Q4_1 | QType::Q5_0 | QType::Q5_1 | QType::Q4K | QType::Q5K)
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
/// term (`m·sum(x)` for Q4_1 and Q5_1, `-8d·sum(x)` for Q4_0, `-16d·sum(x)` for Q5_0) to `off`. `xsum`
/// (the block's sum of `x`) is only read for those formats.
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
        QType::Q5_0 => {
            *off = (-16.0 * d).mul_add(*xsum, *off);
            ints_to_floats(five_bit_ints(b.add(2)))
        }
        QType::Q5_1 => {
            *off = _mm_cvtss_f32(_mm_movehdup_ps(dm)).mul_add(*xsum, *off);
            ints_to_floats(five_bit_ints(b.add(4)))
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
unsafe fn single<const ID: u32>(rp: *const u8, xp: *const f32, xs: *const f32, blocks: usize) -> f32 {
    let t = format_of(ID); // a type parameter: see `per_format`
    let bb = t.block_bytes();
    match t {
        QType::Q4_0 | QType::Q4_1 | QType::Q5_0 | QType::Q5_1 | QType::Q8_0 => {
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

/// A Q4_K/Q5_K super-block's 8 sub-block scales (`d·scale`), 8 unscaled mins and `dmin`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn k4_scales(b: *const u8) -> ([f32; 8], [f32; 8], f32) {
    let dm = halves(b);
    let d = _mm_cvtss_f32(dm);
    let packed = std::slice::from_raw_parts(b.add(4), 12);
    let (mut sc, mut mn) = ([0f32; 8], [0f32; 8]);
    for j in 0..8 {
        let (s, m) = scale_min_k4(j, packed);
        (sc[j], mn[j]) = (d * s, m);
    }
    (sc, mn, _mm_cvtss_f32(_mm_movehdup_ps(dm)))
}

/// One row of `x` against one Q4_K or Q5_K weight row (`blocks` super-blocks): per super-block the 8
/// scales and mins are unpacked once, the min term is one 8-lane FMA with the 8 sums of `x`, and each
/// byte load serves two sub-blocks (low and high nibbles).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn single_k4<const FIVE: bool>(rp: *const u8, xp: *const f32, xs: *const f32, blocks: usize) -> f32 {
    let (bb, qs_at) = if FIVE { (176, 48) } else { (144, 16) };
    let (mut a0, mut a1, mut offs) = (_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps());
    let (mask, sixteen) = (_mm256_set1_epi32(15), _mm256_set1_epi32(16));
    for bi in 0..blocks {
        let b = rp.add(bi * bb);
        let (sc, mn, dmin) = k4_scales(b);
        let x = xp.add(256 * bi);
        offs = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(-dmin), _mm256_loadu_ps(mn.as_ptr())),
                               _mm256_loadu_ps(xs.add(8 * bi)), offs);
        // Q5_K: the 32 qh bytes, shifted down two bits per pair of sub-blocks: bits 0 and 1 are then the
        // fifth bits of sub-blocks 2g and 2g + 1
        let mut h = [_mm256_setzero_si256(); 4];
        if FIVE {
            for (v, hv) in h.iter_mut().enumerate() {
                *hv = bytes8(b.add(16 + 8 * v));
            }
        }
        for g in 0..4 {
            let (qs, xg) = (b.add(qs_at + 32 * g), x.add(64 * g));
            let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            for (v, hv) in h.iter_mut().enumerate() {
                let z = bytes8(qs.add(8 * v));
                let (mut ql, mut qh) = (_mm256_and_si256(z, mask), _mm256_srli_epi32(z, 4));
                if FIVE {
                    ql = _mm256_or_si256(ql, _mm256_and_si256(_mm256_slli_epi32(*hv, 4), sixteen));
                    qh = _mm256_or_si256(qh, _mm256_and_si256(_mm256_slli_epi32(*hv, 3), sixteen));
                    *hv = _mm256_srli_epi32(*hv, 2);
                }
                lo = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ql), _mm256_loadu_ps(xg.add(8 * v)), lo);
                hi = _mm256_fmadd_ps(_mm256_cvtepi32_ps(qh), _mm256_loadu_ps(xg.add(32 + 8 * v)), hi);
            }
            a0 = _mm256_fmadd_ps(_mm256_set1_ps(sc[2 * g]), lo, a0);
            a1 = _mm256_fmadd_ps(_mm256_set1_ps(sc[2 * g + 1]), hi, a1);
        }
    }
    hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), offs))
}

/// One row of `x` against one Q6_K weight row: per 128-value half, each load of 8 ql, ql+32 and qh bytes
/// gives 8 values of all four 32-value pieces; each 16-value run's partial sum is scaled once.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn single_q6k(rp: *const u8, xp: *const f32, blocks: usize) -> f32 {
    let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let bias = _mm256_set1_epi32(32);
    for bi in 0..blocks {
        let b = rp.add(bi * 210);
        let d = half(b.add(208));
        for n in 0..2 {
            let (ql, qh, sc) = (b.add(64 * n), b.add(128 + 32 * n), b.add(192 + 8 * n) as *const i8);
            let x = xp.add(256 * bi + 128 * n);
            // p[j][half]: piece j's partial sums over its 16-value halves
            let mut p = [[_mm256_setzero_ps(); 2]; 4];
            for v in 0..4 {
                let (a, c, h) = (bytes8(ql.add(8 * v)), bytes8(ql.add(32 + 8 * v)), bytes8(qh.add(8 * v)));
                let q = q6k_pieces!(a, c, h, _mm256_and_si256, _mm256_or_si256, _mm256_srli_epi32,
                                    _mm256_slli_epi32, _mm256_set1_epi32);
                for (j, qj) in q.iter().enumerate() {
                    let w = _mm256_cvtepi32_ps(_mm256_sub_epi32(*qj, bias));
                    p[j][v / 2] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x.add(32 * j + 8 * v)), p[j][v / 2]);
                }
            }
            for (j, pj) in p.iter().enumerate() {
                a0 = _mm256_fmadd_ps(_mm256_set1_ps(d * *sc.add(2 * j) as f32), pj[0], a0);
                a1 = _mm256_fmadd_ps(_mm256_set1_ps(d * *sc.add(2 * j + 1) as f32), pj[1], a1);
            }
        }
    }
    hsum(_mm256_add_ps(a0, a1))
}

/// Rows `first..last` of a matrix of `t` (rows of `rb` bytes, `blocks` blocks each) against one row of
/// `x`, into `out[0..last - first]`: one format dispatch per span, as `avx512::span` (which an AVX-512
/// CPU takes instead for the quantized formats; the 16/32-bit ones have these kernels only).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `data` holds at least `last` rows; `xp` points at
/// `blocks * block_elems` floats and, where `needs_xsum(t)`, `xs` at their 32-value sums; `out` has room
/// for `last - first` floats.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn span(t: QType, data: &[u8], rb: usize, first: usize, last: usize, xp: *const f32,
                          xs: *const f32, blocks: usize, out: *mut f32) {
    // SAFETY (each call): the CPU has the features; `rp` is a row of `blocks` blocks of `t`.
    per_format!(t, ID => super::matmul::each_row(data, rb, first, last, out, |rp| unsafe {
        match format_of(ID) {
            QType::Q4K => single_k4::<false>(rp, xp, xs, blocks),
            QType::Q5K => single_k4::<true>(rp, xp, xs, blocks),
            QType::Q6K => single_q6k(rp, xp, blocks),
            _ => single::<ID>(rp, xp, xs, blocks),
        }
    }))
}

/// Rows of `x` per pass over a weight row: 8 accumulators plus the decoded piece fit the 16 registers.
const GROUP: usize = 8;

/// `out[i] = dot(row, x[i])` for the `n` rows of `x` (`cols` each), `row` being one quantized weight row
/// (one row of `x` goes by `span` instead).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `row` holds `cols / block_elems` blocks of `t`, `x` has
/// `n * cols` floats, `out` at least `n`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn row_dots(t: QType, row: &[u8], x: &[f32], n: usize, cols: usize, out: &mut [f32]) {
    let xp = x.as_ptr();
    let rp = row.as_ptr();
    let mut start = 0;
    while start < n {
        let left = n - start;
        let o = &mut out[start..];
        let xs = xp.add(start * cols);
        start += if left >= GROUP {
            multi_format::<GROUP>(t, rp, cols, xs, o)
        } else if left >= 4 {
            multi_format::<4>(t, rp, cols, xs, o)
        } else if left >= 2 {
            multi_format::<2>(t, rp, cols, xs, o)
        } else {
            multi_format::<1>(t, rp, cols, xs, o)
        };
    }
}

/// `multi` for the format `t` (see `per_format`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn multi_format<const G: usize>(t: QType, rp: *const u8, cols: usize, xp: *const f32, out: &mut [f32]) -> usize {
    per_format!(t, ID => multi::<G, ID>(rp, cols, xp, out))
}

/// `G` rows of `x` against one weight row (a constant `G`, so the accumulators live in registers).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn multi<const G: usize, const ID: u32>(rp: *const u8, cols: usize, xp: *const f32, out: &mut [f32]) -> usize {
    let t = format_of(ID); // a type parameter: see `per_format`
    let (bb, per) = (t.block_bytes(), t.block_elems() / 32);
    let mut acc = [_mm256_setzero_ps(); G];
    for p in 0..cols / 32 {
        let w = weights32(t, rp.add(p / per * bb), p % per);
        for (i, a) in acc.iter_mut().enumerate() {
            let xb = xp.add(i * cols + p * 32);
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

/// Decode one weight row of `t` into `out` (`cols` floats), 32 values at a time.
///
/// # Safety
/// As `row_dots`; `out` holds `row.len() / block_bytes * block_elems` floats.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn decode_row(t: QType, row: &[u8], out: &mut [f32]) {
    per_format!(t, ID => decode_row_of::<ID>(row, out))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn decode_row_of<const ID: u32>(row: &[u8], out: &mut [f32]) {
    let t = format_of(ID);
    let (bb, per) = (t.block_bytes(), t.block_elems() / 32);
    let blocks = row.len() / bb;
    assert!(out.len() >= blocks * per * 32, "decode_row: out too short");
    for p in 0..blocks * per {
        let w = weights32(t, row.as_ptr().add(p / per * bb), p % per);
        let o = out.as_mut_ptr().add(32 * p);
        for (v, wv) in w.iter().enumerate() {
            _mm256_storeu_ps(o.add(8 * v), *wv);
        }
    }
}
