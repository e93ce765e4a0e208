//! The int8 product with 512-bit registers: two weight blocks per `vpdpbusd`, for one token or several.
//!
//! At one token per step each weight byte is used once, so the row loop is bound by instructions per
//! block: the 256-bit kernels spend about 16 per block (unpacking, scale products, the multiply-add),
//! these about 10, because a pair of blocks is unpacked by one byte permutation (`vpermb`, AVX512-VBMI)
//! and scaled by one vector of per-block factors. Q4_0 becomes Q4_1's form (`nib − 8` is the unsigned
//! nibble with the offset `−8·dw`), so all three formats share the loop.
#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::formats::QType;
use super::int8::QActs;

/// Whether this CPU has what these kernels use beyond the `avx512vnni` set (VBMI's byte permutation).
pub fn available() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        super::int8::Isa::Avx512Vnni.available() && std::is_x86_feature_detected!("avx512vbmi")
    })
}

/// Byte indices that turn one block pair (loaded from the first block's start) into
/// `[nibbles 0 | nibbles 0 | nibbles 1 | nibbles 1]` (16 bytes each), for nibbles at `off` in blocks of
/// `bb` bytes; the variable shift then takes the low nibbles from the first copy, the high ones from the second.
fn nibble_index(off: usize, bb: usize) -> [u8; 64] {
    let mut idx = [0u8; 64];
    for (i, v) in idx.iter_mut().enumerate() {
        let block = i / 32;
        *v = (block * bb + off + i % 16) as u8;
    }
    idx
}

/// Byte indices that gather the two blocks' f16 scale fields (`[d, m]` for Q4_1, `[d, d]` for Q4_0) into
/// the low 8 bytes.
fn scale_index(t: QType, bb: usize) -> [u8; 64] {
    let mut idx = [0u8; 64];
    let second: [usize; 4] = if t == QType::Q4_1 { [0, 1, 2, 3] } else { [0, 1, 0, 1] };
    for block in 0..2 {
        for (j, &s) in second.iter().enumerate() {
            idx[block * 4 + j] = (block * bb + s) as u8;
        }
    }
    idx
}

/// One weight row (`blocks` blocks of `t`) against `G` rows of quantized activations (`xq` and `ds` at the
/// first; row `i` starts `i * blocks` blocks later), each block pair unpacked once for all of them. Every
/// row goes through the same operations whatever `G` is, so a token's result does not depend on how many
/// others share its step (with 8-bit activations a last-bit difference can move a later rounding by a
/// whole step).
///
/// # Safety
/// `available()` must hold; `rp` points at `blocks` blocks of `t`, `xq` at `G * blocks * 32` int8 values
/// and `ds` at `G * blocks` scale pairs.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn rows<const G: usize>(t: QType, rp: *const u8, xq: *const i8, ds: *const [f32; 2], blocks: usize,
                               k: &Consts, out: &mut [f32]) -> usize {
    let bb = t.block_bytes();
    let mut acc = [_mm512_setzero_ps(); G];
    let mut corr = [_mm_setzero_ps(); G];
    let mut b = 0;
    while b < blocks {
        let two = b + 1 < blocks;
        let (wmask, xmask, dmask): (u64, u64, u8) =
            if two { (k.pair_bytes, u64::MAX, 0xF) } else { (k.one_bytes, u32::MAX as u64, 0x3) };
        let bp = rp.add(b * bb);
        let (w, dm, neg) = if t == QType::Q8_0 {
            let lo = _mm512_zextsi256_si512(_mm256_loadu_si256(bp.add(2) as *const __m256i));
            let w = if two { _mm512_inserti64x4(lo, _mm256_loadu_si256(bp.add(bb + 2) as *const __m256i), 1) } else { lo };
            let d1 = if two { (bp.add(bb) as *const u16).read_unaligned() } else { 0 };
            let dm = _mm_cvtph_ps(_mm_setr_epi16((bp as *const u16).read_unaligned() as i16, 0, d1 as i16, 0, 0, 0, 0, 0));
            // signed weights: |w| against x with w's sign
            (_mm512_abs_epi8(w), dm, _mm512_movepi8_mask(w))
        } else {
            let raw = _mm512_maskz_loadu_epi8(wmask, bp as *const i8);
            let nib = _mm512_and_si512(_mm512_srlv_epi16(_mm512_permutexvar_epi8(k.nibbles, raw), k.shifts),
                                       _mm512_set1_epi8(15));
            let dm = _mm_cvtph_ps(_mm512_castsi512_si128(_mm512_permutexvar_epi8(k.scales, raw)));
            (nib, _mm_mul_ps(dm, k.offset), 0)
        };
        for i in 0..G {
            let at = i * blocks + b;
            let x = _mm512_maskz_loadu_epi8(xmask, xq.add(at * 32));
            let x = if t == QType::Q8_0 { _mm512_mask_sub_epi8(x, neg, _mm512_setzero_si512(), x) } else { x };
            let isum = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, x);
            // [dw0·dx0, m0·(dx0·Σq0), dw1·dx1, m1·(dx1·Σq1)]
            let p = _mm_mul_ps(dm, _mm_castsi128_ps(_mm_maskz_loadu_epi32(dmask, ds.add(at) as *const i32)));
            corr[i] = _mm_add_ps(corr[i], p);
            let scale = _mm512_permutexvar_ps(k.spread, _mm512_castps128_ps512(p));
            acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), scale, acc[i]);
        }
        b += 2;
    }
    for i in 0..G {
        let off = if t == QType::Q8_0 { 0.0 } else {
            let c = _mm_add_ps(corr[i], _mm_movehl_ps(corr[i], corr[i]));
            _mm_cvtss_f32(_mm_movehdup_ps(c))
        };
        out[i] = _mm512_reduce_add_ps(acc[i]) + off;
    }
    G
}

/// The constant vectors of one format.
struct Consts {
    nibbles: __m512i,
    scales: __m512i,
    shifts: __m512i,
    spread: __m512i,
    offset: __m128,
    pair_bytes: u64,
    one_bytes: u64,
}

#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn consts(t: QType) -> Consts {
    let bb = t.block_bytes();
    let off = if t == QType::Q4_1 { 4 } else { 2 };
    let load = |a: [u8; 64]| _mm512_loadu_si512(a.as_ptr() as *const __m512i);
    let shifts: [u16; 32] = std::array::from_fn(|i| if (i / 8) % 2 == 1 { 4 } else { 0 });
    let spread: [u32; 16] = std::array::from_fn(|i| if i < 8 { 0 } else { 2 });
    Consts {
        nibbles: load(nibble_index(off, bb)),
        scales: load(scale_index(t, bb)),
        shifts: _mm512_loadu_si512(shifts.as_ptr() as *const __m512i),
        spread: _mm512_loadu_si512(spread.as_ptr() as *const __m512i),
        // Q4_0's nibbles are offset by 8: its "m" is −8·dw
        offset: if t == QType::Q4_0 { _mm_setr_ps(1.0, -8.0, 1.0, -8.0) } else { _mm_set1_ps(1.0) },
        // byte masks of one and two blocks (Q8_0's 34-byte blocks are loaded whole, not masked)
        pair_bytes: u64::MAX.checked_shr(64 - (2 * bb).min(64) as u32).unwrap_or(0),
        one_bytes: u64::MAX.checked_shr(64 - bb.min(64) as u32).unwrap_or(0),
    }
}

/// Rows `first..last` of one matrix (`rb` bytes each) against the `n` rows of `qa`; row `r`'s result for
/// `x` row `i` goes to `out[i * total + out_col + r - first]`.
///
/// # Safety
/// `available()` must hold; `data` holds rows of `qa.cols / 32` blocks of `t` (Q4_0, Q4_1 or Q8_0), `qa`
/// has `n` rows, `out` is `[n, total]` and no other thread writes its columns `out_col..out_col + last - first`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn span(t: QType, data: &[u8], rb: usize, first: usize, last: usize, qa: &QActs, n: usize, out: *mut f32,
                   total: usize, out_col: usize) {
    let k = consts(t);
    let blocks = qa.cols / 32;
    let mut vals = [0f32; 4];
    for r in first..last {
        crate::quant::matmul::prefetch_ahead(data, rb, r);
        let rp = data.as_ptr().add(r * rb);
        let mut done = 0;
        while done < n {
            let (xq, ds) = (qa.qs.as_ptr().add(done * blocks * 32), qa.ds.as_ptr().add(done * blocks));
            // the format as a constant in each arm, so that its branches fold away
            macro_rules! by_type {
                ($g:literal) => {
                    match t {
                        QType::Q4_1 => rows::<$g>(QType::Q4_1, rp, xq, ds, blocks, &k, &mut vals),
                        QType::Q4_0 => rows::<$g>(QType::Q4_0, rp, xq, ds, blocks, &k, &mut vals),
                        _ => rows::<$g>(QType::Q8_0, rp, xq, ds, blocks, &k, &mut vals),
                    }
                };
            }
            let m = match n - done {
                1 => by_type!(1),
                2 | 3 => by_type!(2),
                _ => by_type!(4),
            };
            for (i, v) in vals[..m].iter().enumerate() {
                *out.add((done + i) * total + out_col + r - first) = *v;
            }
            done += m;
        }
    }
}
