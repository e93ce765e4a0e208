//! Products with 8-bit activations: `x` is quantized once per call to Q8 blocks (32 int8 values, a float
//! scale `d` and `d·Σq` per block, as GGML's Q8_1), and each Q4_0, Q4_1 or Q8_0 weight block meets it in
//! integer dot products (VNNI `vpdpbusd`, or AVX2 `vpmaddubsw` + `vpmaddwd`), one float multiply-add per
//! block. That is what llama.cpp does on these formats, and it takes a fraction of the instructions of
//! decoding the weights to float: at one token per step the fp32 path is bound by arithmetic, not memory.
//!
//! The result differs from the exact float product by the rounding of `x` to 8 bits (relative error about
//! 1/254 of each block's largest element), which is why the float kernels stay (`Mode::F32`).
//!
//! Per 32-element block with weight scale `dw` (and Q4_1 offset `m`) and activation scale `dx`:
//! - Q4_1: `dw·dx·Σ(nib·q) + m·(dx·Σq)`
//! - Q4_0, Q8_0: `dw·dx·Σ(w·q)` with signed `w` (nibble − 8 for Q4_0).
//!
//! The K-quants and Q5_0/Q5_1 have their kernels in `int8_kquants`, on the same activation blocks.
use super::formats::{f16_to_f32, QType};

/// The instruction set of the int8 kernels (`Portable` runs anywhere).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    AvxVnni,
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
}

impl Isa {
    /// Every int8 kernel this build has, by name (the names `quant_matmul` accepts).
    pub fn all() -> Vec<(&'static str, Isa)> {
        #[allow(unused_mut)]
        let mut v = vec![("portable", Isa::Portable)];
        #[cfg(target_arch = "x86_64")]
        v.extend([("avx2", Isa::Avx2), ("avxvnni", Isa::AvxVnni), ("avx512vnni", Isa::Avx512Vnni)]);
        v
    }

    /// Whether this CPU can run the kernel.
    pub fn available(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => super::matmul::has_avx2(),
            #[cfg(target_arch = "x86_64")]
            Isa::AvxVnni => super::matmul::has_avx2() && std::is_x86_feature_detected!("avxvnni"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => super::matmul::has_avx2() && std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw") && std::is_x86_feature_detected!("avx512vl")
                && std::is_x86_feature_detected!("avx512vnni"),
        }
    }

    /// The fastest kernel this CPU runs (the AVX512 set where its one-token block-pair kernel runs too).
    pub fn best() -> Isa {
        #[cfg(target_arch = "x86_64")]
        if super::int8_avx512::available() {
            return Isa::Avx512Vnni;
        }
        #[cfg(target_arch = "x86_64")]
        for isa in [Isa::AvxVnni, Isa::Avx512Vnni, Isa::Avx2] {
            if isa.available() {
                return isa;
            }
        }
        Isa::Portable
    }
}

/// Whether `t` has an int8 kernel (other formats keep the float path).
pub fn supports(t: QType) -> bool {
    matches!(t, QType::Q4_0 | QType::Q4_1 | QType::Q8_0) || super::int8_kquants::supports(t)
}

/// `x` ([n, cols]) quantized: `qs` the int8 values in element order, `ds` per block `[d, d·Σq]`.
#[derive(Default)]
pub struct QActs {
    pub qs: Vec<i8>,
    pub ds: Vec<[f32; 2]>,
    pub cols: usize,
}

impl QActs {
    /// Quantize `x` ([n, cols], cols a multiple of 32), reusing this buffer's memory.
    pub fn quantize(&mut self, x: &[f32], cols: usize, isa: Isa) {
        let blocks = x.len() / 32;
        self.cols = cols;
        self.qs.resize(x.len(), 0);
        self.ds.resize(blocks, [0.0; 2]);
        #[cfg(target_arch = "x86_64")]
        if isa != Isa::Portable {
            // SAFETY: a SIMD `isa` is only chosen when AVX2 was detected (`Isa::available`).
            unsafe { quantize_avx2(x, &mut self.qs, &mut self.ds) };
            return;
        }
        let _ = isa;
        for ((xb, qb), ds) in x.chunks_exact(32).zip(self.qs.chunks_exact_mut(32)).zip(self.ds.iter_mut()) {
            let amax = xb.iter().fold(0f32, |a, &v| a.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let mut sum = 0i32;
            for (q, &v) in qb.iter_mut().zip(xb) {
                let r = (v * id).round_ties_even() as i32;
                *q = r as i8;
                sum += r;
            }
            *ds = [d, d * sum as f32];
        }
    }
}

/// `out[i] = dot(row, x[i])` for the `n` quantized rows of `qa`, `row` one weight row of `t`.
pub fn row_dots_portable(t: QType, row: &[u8], qa: &QActs, n: usize, out: &mut [f32]) {
    let blocks = qa.cols / 32;
    let bb = t.block_bytes();
    for (i, o) in out.iter_mut().enumerate().take(n) {
        let (mut acc, mut corr) = (0f32, 0f32);
        for b in 0..blocks {
            let blk = &row[b * bb..(b + 1) * bb];
            let xq = &qa.qs[(i * blocks + b) * 32..(i * blocks + b + 1) * 32];
            let [dx, sx] = qa.ds[i * blocks + b];
            let dw = f16_to_f32(u16::from_le_bytes([blk[0], blk[1]]));
            let isum: i32 = match t {
                QType::Q4_1 => {
                    corr += f16_to_f32(u16::from_le_bytes([blk[2], blk[3]])) * sx;
                    (0..16).map(|j| (blk[4 + j] & 15) as i32 * xq[j] as i32
                                    + (blk[4 + j] >> 4) as i32 * xq[j + 16] as i32).sum()
                }
                QType::Q4_0 => (0..16).map(|j| ((blk[2 + j] & 15) as i32 - 8) * xq[j] as i32
                                               + ((blk[2 + j] >> 4) as i32 - 8) * xq[j + 16] as i32).sum(),
                _ => (0..32).map(|j| blk[2 + j] as i8 as i32 * xq[j] as i32).sum(),
            };
            acc += isum as f32 * (dw * dx);
        }
        *o = acc + corr;
    }
}

/// Rows `first..last` of one matrix (`rb` bytes a row) against every row of `qa`, with the kernels of
/// `isa`: row `r`'s result for `x` row `i` goes to `out[i * total + out_col + r - first]`.
///
/// # Safety
/// `isa.available()` must hold; `data` holds rows of `qa.cols` elements of `t` (a format `supports` names),
/// `qa` has `n` rows, `out` is `[n, total]` and no other thread writes its columns
/// `out_col..out_col + last - first`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn span(isa: Isa, t: QType, data: &[u8], rb: usize, first: usize, last: usize, qa: &QActs, n: usize,
                   out: *mut f32, total: usize, out_col: usize) {
    let kquant = super::int8_kquants::supports(t);
    #[cfg(target_arch = "x86_64")]
    if kquant && isa != Isa::Portable {
        return super::int8_kquants::simd_span(isa, t, data, rb, first, last, qa, n, out, total, out_col);
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni && super::int8_avx512::available() {
        return super::int8_avx512::span(t, data, rb, first, last, qa, n, out, total, out_col);
    }
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Portable {
        return simd::span(isa, t, data, rb, first, last, qa, n, out, total, out_col);
    }
    let _ = isa;
    let row_dots = if kquant { super::int8_kquants::row_dots_portable } else { row_dots_portable };
    let mut vals = vec![0f32; n];
    for r in first..last {
        row_dots(t, &data[r * rb..(r + 1) * rb], qa, n, &mut vals);
        for (i, v) in vals.iter().enumerate() {
            *out.add(i * total + out_col + r - first) = *v;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_avx2(x: &[f32], qs: &mut [i8], ds: &mut [[f32; 2]]) {
    use std::arch::x86_64::*;
    let sign = _mm256_set1_ps(-0.0);
    let perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for ((xb, qb), d_out) in x.chunks_exact(32).zip(qs.chunks_exact_mut(32)).zip(ds.iter_mut()) {
        let p = xb.as_ptr();
        let v = [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)), _mm256_loadu_ps(p.add(16)),
                 _mm256_loadu_ps(p.add(24))];
        let m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
                              _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])));
        let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
        let d = amax / 127.0;
        let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
        // cvtps rounds to nearest even (the default MXCSR mode), as `round_ties_even` in the portable path
        let i = [_mm256_cvtps_epi32(_mm256_mul_ps(v[0], id)), _mm256_cvtps_epi32(_mm256_mul_ps(v[1], id)),
                 _mm256_cvtps_epi32(_mm256_mul_ps(v[2], id)), _mm256_cvtps_epi32(_mm256_mul_ps(v[3], id))];
        let s = _mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3]));
        let s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        let s4 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
        let sum = _mm_cvtsi128_si32(_mm_add_epi32(s4, _mm_shuffle_epi32(s4, 1)));
        let packed = _mm256_packs_epi16(_mm256_packs_epi32(i[0], i[1]), _mm256_packs_epi32(i[2], i[3]));
        _mm256_storeu_si256(qb.as_mut_ptr() as *mut __m256i, _mm256_permutevar8x32_epi32(packed, perm));
        *d_out = [d, d * sum as f32];
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod simd {
    use std::arch::x86_64::*;

    use super::{Isa, QActs};
    use crate::quant::formats::QType;

    /// The kernels, stamped out once per instruction set: `$dot(u, s)` is the 8 int32 sums of four
    /// unsigned-by-signed byte products.
    macro_rules! kernels {
        ($modname:ident, $features:literal, $dot:ident) => {
            mod $modname {
                use std::arch::x86_64::*;

                use super::QActs;
                use crate::quant::formats::QType;

                #[inline]
                #[target_feature(enable = $features)]
                unsafe fn dot(u: __m256i, s: __m256i) -> __m256i {
                    super::$dot(u, s)
                }

                /// Block `b`'s weights as bytes in element order (unsigned nibbles for Q4_1, signed else)
                /// and its `[dw, m]` (lane 1 is meaningless except for Q4_1).
                #[inline]
                #[target_feature(enable = $features)]
                unsafe fn weights(t: QType, b: *const u8) -> (__m256i, __m128) {
                    let dm = _mm_cvtph_ps(_mm_cvtsi32_si128((b as *const i32).read_unaligned()));
                    let w = match t {
                        QType::Q4_1 | QType::Q4_0 => {
                            let q = _mm_loadu_si128(b.add(if t == QType::Q4_1 { 4 } else { 2 }) as *const __m128i);
                            let nib = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q),
                                                       _mm256_set1_epi8(15));
                            if t == QType::Q4_0 { _mm256_sub_epi8(nib, _mm256_set1_epi8(8)) } else { nib }
                        }
                        _ => _mm256_loadu_si256(b.add(2) as *const __m256i),
                    };
                    (w, dm)
                }

                /// The 8 int32 partial sums of one block: weights `w` against activations at `xq`.
                #[inline]
                #[target_feature(enable = $features)]
                unsafe fn block(t: QType, w: __m256i, xq: *const i8) -> __m256i {
                    let x = _mm256_loadu_si256(xq as *const __m256i);
                    if t == QType::Q4_1 {
                        dot(w, x)
                    } else {
                        dot(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w))
                    }
                }

                #[inline]
                #[target_feature(enable = $features)]
                unsafe fn hsum(v: __m256) -> f32 {
                    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
                    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
                }

                /// One block of one row: `acc += isum·dw·dx`; returns `[·, m·dx·Σq]` (only read for Q4_1).
                #[inline]
                #[target_feature(enable = $features)]
                unsafe fn step(isum: __m256i, dm: __m128, ds: *const [f32; 2], acc: &mut __m256) -> __m128 {
                    let p = _mm_mul_ps(dm, _mm_castpd_ps(_mm_load_sd(ds as *const f64)));
                    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_broadcastss_ps(p), *acc);
                    p
                }

                /// One weight row against `G` quantized rows of `x`, each block decoded once for all of them.
                ///
                /// Every row goes through the same operations in the same order whatever `G` is (two chains,
                /// even and odd blocks, and one correction chain fed a pair at a time), so a token's result
                /// does not depend on how many others share its step: with 8-bit activations a last-bit
                /// difference could move a later rounding by a whole step.
                #[inline]
                #[target_feature(enable = $features)]
                unsafe fn multi<const G: usize>(t: QType, rp: *const u8, xq: *const i8, ds: *const [f32; 2],
                                                blocks: usize, out: &mut [f32]) -> usize {
                    let bb = t.block_bytes();
                    let mut acc = [[_mm256_setzero_ps(); 2]; G];
                    let mut corr = [_mm_setzero_ps(); G];
                    let mut b = 0;
                    while b + 1 < blocks {
                        let (w0, dm0) = weights(t, rp.add(b * bb));
                        let (w1, dm1) = weights(t, rp.add((b + 1) * bb));
                        for i in 0..G {
                            let at = i * blocks + b;
                            let i0 = block(t, w0, xq.add(at * 32));
                            let i1 = block(t, w1, xq.add((at + 1) * 32));
                            let p0 = step(i0, dm0, ds.add(at), &mut acc[i][0]);
                            let p1 = step(i1, dm1, ds.add(at + 1), &mut acc[i][1]);
                            corr[i] = _mm_add_ps(corr[i], _mm_add_ps(p0, p1));
                        }
                        b += 2;
                    }
                    if b < blocks {
                        let (w0, dm0) = weights(t, rp.add(b * bb));
                        for i in 0..G {
                            let at = i * blocks + b;
                            corr[i] = _mm_add_ps(corr[i], step(block(t, w0, xq.add(at * 32)), dm0, ds.add(at),
                                                               &mut acc[i][0]));
                        }
                    }
                    for i in 0..G {
                        let off = if t == QType::Q4_1 { _mm_cvtss_f32(_mm_movehdup_ps(corr[i])) } else { 0.0 };
                        out[i] = hsum(_mm256_add_ps(acc[i][0], acc[i][1])) + off;
                    }
                    G
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
                            let sub = QActsView { qa, first: done };
                            sub.dots(t, row, m, &mut vals);
                            for (i, v) in vals[..m].iter().enumerate() {
                                *out.add((done + i) * total + col) = *v;
                            }
                            done += m;
                        }
                    }
                }

                /// Rows `first..` of a `QActs`.
                struct QActsView<'a> {
                    qa: &'a QActs,
                    first: usize,
                }

                impl QActsView<'_> {
                    #[inline]
                    #[target_feature(enable = $features)]
                    unsafe fn dots(&self, t: QType, row: &[u8], m: usize, out: &mut [f32]) {
                        let blocks = self.qa.cols / 32;
                        row_dots_at(t, row, self.qa, self.first * blocks, m, out)
                    }
                }

                /// `out[i] = dot(row, x[i])` for `n` rows of `qa` from its block `at` on.
                #[inline]
                #[target_feature(enable = $features)]
                unsafe fn row_dots_at(t: QType, row: &[u8], qa: &QActs, at: usize, n: usize, out: &mut [f32]) {
                    let blocks = qa.cols / 32;
                    let (rp, xq, ds) = (row.as_ptr(), qa.qs.as_ptr().add(at * 32), qa.ds.as_ptr().add(at));
                    // the format as a constant in each arm, so that its branches fold away
                    macro_rules! by_type {
                        ($tt:ident => $e:expr) => {
                            match t {
                                QType::Q4_1 => { let $tt = QType::Q4_1; $e }
                                QType::Q4_0 => { let $tt = QType::Q4_0; $e }
                                _ => { let $tt = QType::Q8_0; $e }
                            }
                        };
                    }
                    let mut start = 0;
                    while start < n {
                        let left = n - start;
                        let (o, x, d) = (&mut out[start..], xq.add(start * blocks * 32), ds.add(start * blocks));
                        start += if left >= 4 {
                            by_type!(tt => multi::<4>(tt, rp, x, d, blocks, o))
                        } else if left >= 2 {
                            by_type!(tt => multi::<2>(tt, rp, x, d, blocks, o))
                        } else {
                            by_type!(tt => multi::<1>(tt, rp, x, d, blocks, o))
                        };
                    }
                }
            }
        };
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    pub(in crate::quant) unsafe fn dot_avx2(u: __m256i, s: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
    }

    #[inline]
    #[target_feature(enable = "avx2,avxvnni")]
    pub(in crate::quant) unsafe fn dot_avxvnni(u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s)
    }

    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(in crate::quant) unsafe fn dot_avx512vnni(u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
    }

    kernels!(k_avx2, "avx2,fma,f16c", dot_avx2);
    kernels!(k_avxvnni, "avx2,fma,f16c,avxvnni", dot_avxvnni);
    // 256-bit EVEX `vpdpbusd`: for CPUs with AVX512-VNNI but not VBMI (Cascade Lake); with VBMI the
    // products take `int8_avx512` (block pairs).
    kernels!(k_avx512vnni, "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni", dot_avx512vnni);


    /// `k_*::span` with the kernels of `isa`.
    ///
    /// # Safety
    /// `isa` is available and not `Portable`; `data` holds rows of `qa.cols` elements of `t` (Q4_0, Q4_1 or
    /// Q8_0), rows `first..last` of `rb` bytes each; `out` is `[n, total]` and no other thread writes its
    /// columns `out_col..out_col + last - first`.
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

    fn lcg(seed: &mut u64) -> u32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (*seed >> 33) as u32
    }

    /// Random blocks of `t` with small finite f16 scales (and Q4_1 offsets).
    fn blocks(t: QType, rows: usize, cols: usize, seed: &mut u64) -> Vec<u8> {
        let mut data: Vec<u8> = (0..rows * cols / 32 * t.block_bytes()).map(|_| lcg(seed) as u8).collect();
        for b in data.chunks_exact_mut(t.block_bytes()) {
            let scales = if t == QType::Q4_1 { 2 } else { 1 };
            for k in 0..scales {
                let h: u16 = 0x2000 | (lcg(seed) as u16 & 0x3ff) | ((lcg(seed) as u16 & 1) << 15);
                b[2 * k..2 * k + 2].copy_from_slice(&h.to_le_bytes());
            }
        }
        data
    }

    #[test]
    fn simd_quantization_equals_the_portable_one() {
        let mut seed = 3u64;
        let mut x: Vec<f32> = (0..32 * 40).map(|_| (lcg(&mut seed) as f32 / u32::MAX as f32 - 0.5) * 7.0).collect();
        x[..32].iter_mut().for_each(|v| *v = 0.0); // an all-zero block: scale 0, values 0
        x[40] = 1e-30; // a tiny block maximum
        let mut want = QActs::default();
        want.quantize(&x, 32 * 8, Isa::Portable);
        assert!(want.qs[..32].iter().all(|&q| q == 0) && want.ds[0] == [0.0, 0.0]);
        for (_, isa) in Isa::all().into_iter().filter(|(_, i)| i.available()) {
            let mut got = QActs::default();
            got.quantize(&x, 32 * 8, isa);
            assert_eq!(got.qs, want.qs, "{isa:?}");
            assert_eq!(got.ds, want.ds, "{isa:?}");
        }
        // every block's largest element maps to ±127 and the rounding error is at most half a step
        for ((xb, qb), ds) in x.chunks_exact(32).zip(want.qs.chunks_exact(32)).zip(&want.ds).skip(1) {
            for (&v, &q) in xb.iter().zip(qb) {
                assert!((v - q as f32 * ds[0]).abs() <= 0.5001 * ds[0], "{v} {q} {}", ds[0]);
            }
            assert_eq!(qb.iter().map(|&q| q as i32).sum::<i32>() as f32 * ds[0], ds[1]);
            assert!(qb.iter().any(|&q| q.abs() == 127));
        }
    }

    #[test]
    fn every_kernel_equals_dequantize_then_dot_on_the_quantized_x() {
        let mut seed = 11u64;
        // an odd block count (the two-chain and the block-pair loops have a tail) and an even one
        for (t, cols) in [QType::Q4_0, QType::Q4_1, QType::Q8_0].into_iter().flat_map(|t| [(t, 32 * 19), (t, 32 * 18)]) {
            for n in [1usize, 2, 3, 6, 70] {
                let rows = 9;
                let w = blocks(t, rows, cols, &mut seed);
                let x: Vec<f32> = (0..n * cols).map(|_| lcg(&mut seed) as f32 / u32::MAX as f32 - 0.5).collect();
                let mut qa = QActs::default();
                qa.quantize(&x, cols, Isa::Portable);
                let xd: Vec<f64> = qa.qs.iter().enumerate().map(|(i, &q)| q as f64 * qa.ds[i / 32][0] as f64).collect();
                let mut dense = vec![0f32; rows * cols];
                for (blk, y) in w.chunks_exact(t.block_bytes()).zip(dense.chunks_exact_mut(32)) {
                    decode_block(t, blk, y);
                }
                for (name, isa) in Isa::all().into_iter().filter(|(_, i)| i.available()) {
                    let mut out = vec![f32::NAN; n * (rows + 3)];
                    let rb = cols / 32 * t.block_bytes();
                    // rows 2..9 of the matrix into columns 3.. of a wider output
                    unsafe { span(isa, t, &w, rb, 2, rows, &qa, n, out.as_mut_ptr(), rows + 3, 3) };
                    for i in 0..n {
                        for r in 2..rows {
                            let terms = (0..cols).map(|c| dense[r * cols + c] as f64 * xd[i * cols + c]);
                            let want: f64 = terms.clone().sum();
                            let scale: f64 = terms.map(f64::abs).sum::<f64>().max(1e-9);
                            let got = out[i * (rows + 3) + 3 + r - 2] as f64;
                            assert!((got - want).abs() <= 1e-5 * scale, "{t:?} {name} n {n} row {r}: {got} vs {want}");
                        }
                        assert!(out[i * (rows + 3)..i * (rows + 3) + 3].iter().all(|v| v.is_nan()), "wrote outside");
                        // a row's result is bit-identical to the one-row product (a step's tokens do not interact)
                        let mut alone = QActs::default();
                        alone.quantize(&x[i * cols..(i + 1) * cols], cols, Isa::Portable);
                        let mut one = vec![0f32; rows - 2];
                        unsafe { span(isa, t, &w, rb, 2, rows, &alone, 1, one.as_mut_ptr(), rows - 2, 0) };
                        let got = &out[i * (rows + 3) + 3..(i + 1) * (rows + 3)];
                        assert!(got.iter().zip(&one).all(|(a, b)| a.to_bits() == b.to_bits()), "{t:?} {name} n {n} x row {i}");
                    }
                }
            }
        }
    }
}
