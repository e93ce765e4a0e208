//! Matrix products with weights that stay quantized in memory.
//!
//! `out[n, R] = x[n, cols] @ W^T`, where W is one or more quantized matrices stacked along their rows
//! (q/k/v or gate/up are one call, so one parallel region and one pass over `x`). Each weight row is
//! decoded a piece at a time (in registers on AVX2, see `avx2`; into a small L1 buffer in the portable
//! build) and multiplied with every row of `x` while it is hot, so the weight bytes are read from memory
//! once per call whatever `n` is. Rows are spread over rayon's threads in tiles; the inner loops are
//! compiled twice, for AVX2+FMA (chosen at run time) and for any CPU.
use rayon::prelude::*;

use crate::team::Par;

use super::formats::{decode_block, QType};
use super::int8::{self, Isa, QActs};

/// Which kernels a product uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Float activations: exact up to float rounding. `simd` picks the AVX2 build (it must be present).
    F32 { simd: bool },
    /// 8-bit activations for the formats `int8::supports` (see `int8` and `int8_kquants`); the others
    /// (16/32-bit rows) take the float path, the SIMD one unless the int8 kernels are the portable ones.
    Int8(Isa),
}

impl Mode {
    /// The float kernels' SIMD choice within this mode.
    fn simd(self) -> bool {
        match self {
            Mode::F32 { simd } => simd,
            Mode::Int8(isa) => isa != Isa::Portable,
        }
    }
}

/// One quantized matrix: `rows` rows of `cols / block_elems` blocks each, row-major.
pub struct QWeight<'a> {
    pub data: &'a [u8],
    pub qtype: QType,
    pub rows: usize,
}

const MAX_BLOCK: usize = 256;

/// Bytes in one row of `cols` elements, or an error naming what does not fit.
pub fn row_bytes(qtype: QType, cols: usize) -> Result<usize, String> {
    if cols == 0 || !cols.is_multiple_of(qtype.block_elems()) {
        return Err(format!("row length {cols} is not a positive multiple of the {qtype:?} block size {}",
                           qtype.block_elems()));
    }
    Ok(cols / qtype.block_elems() * qtype.block_bytes())
}

trait Madd {
    fn madd(a: f32, b: f32, c: f32) -> f32;
}
struct Plain;
impl Madd for Plain {
    #[inline(always)]
    fn madd(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}
struct Fused;
impl Madd for Fused {
    #[inline(always)]
    fn madd(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

/// `lanes += w * x` elementwise in 8 independent lanes (vectorizes without reassociating one sum).
#[inline(always)]
fn dot_acc<M: Madd>(w: &[f32], x: &[f32], lanes: &mut [f32; 8]) {
    for (wc, xc) in w.chunks_exact(8).zip(x.chunks_exact(8)) {
        for i in 0..8 {
            lanes[i] = M::madd(wc[i], xc[i], lanes[i]);
        }
    }
}

/// `out[i] = dot(row, x[i])` by decoding one block at a time into `buf` (any format).
#[inline(always)]
fn generic_row<M: Madd>(t: QType, row: &[u8], x: &[f32], cols: usize, out: &mut [f32],
                        lanes: &mut [[f32; 8]]) {
    let mut buf = [0f32; MAX_BLOCK];
    let (be, bb) = (t.block_elems(), t.block_bytes());
    lanes.iter_mut().for_each(|l| *l = [0f32; 8]);
    for (bi, block) in row.chunks_exact(bb).enumerate() {
        let y = &mut buf[..be];
        decode_block(t, block, y);
        let off = bi * be;
        for (i, l) in lanes.iter_mut().enumerate() {
            dot_acc::<M>(y, &x[i * cols + off..i * cols + off + be], l);
        }
    }
    for (o, l) in out.iter_mut().zip(lanes.iter()) {
        *o = ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]));
    }
}

/// `generic_row` with the format as a constant in each arm, so the decoder is specialised and inlined.
#[inline(always)]
fn dispatch_row<M: Madd>(t: QType, row: &[u8], x: &[f32], cols: usize, out: &mut [f32],
                         lanes: &mut [[f32; 8]]) {
    match t {
        QType::Q4_0 => generic_row::<M>(QType::Q4_0, row, x, cols, out, lanes),
        QType::Q4_1 => generic_row::<M>(QType::Q4_1, row, x, cols, out, lanes),
        QType::Q5_0 => generic_row::<M>(QType::Q5_0, row, x, cols, out, lanes),
        QType::Q5_1 => generic_row::<M>(QType::Q5_1, row, x, cols, out, lanes),
        QType::Q8_0 => generic_row::<M>(QType::Q8_0, row, x, cols, out, lanes),
        QType::Q4K => generic_row::<M>(QType::Q4K, row, x, cols, out, lanes),
        QType::Q5K => generic_row::<M>(QType::Q5K, row, x, cols, out, lanes),
        QType::Q6K => generic_row::<M>(QType::Q6K, row, x, cols, out, lanes),
        QType::F32 => generic_row::<M>(QType::F32, row, x, cols, out, lanes),
        QType::F16 => generic_row::<M>(QType::F16, row, x, cols, out, lanes),
        QType::BF16 => generic_row::<M>(QType::BF16, row, x, cols, out, lanes),
    }
}

/// A run of consecutive rows of one matrix: the unit of parallel work.
struct Span {
    which: usize,
    first: usize,
    last: usize,
    out_col: usize,
}

/// Rows per parallel task: big enough that a task outlasts waking a thread, small enough to balance.
const SPAN_ROWS: usize = 32;

/// Output pointer shared by the tasks; each writes a disjoint set of elements.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);
// SAFETY: tasks write disjoint elements (distinct output columns) and the caller waits for them all.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer (a method, so that closures capture the whole `Sync` wrapper, not the raw field).
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// The rows of one span, every row of `x` at once (several rows of `x`, or no AVX2).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn span_rows<M: Madd>(ws: &[(QWeight<'_>, usize)], span: &Span, x: &[f32], n: usize, cols: usize, total: usize,
                      out: OutPtr, simd: bool) {
    let (w, rb) = (&ws[span.which].0, ws[span.which].1);
    // a decode step makes thousands of spans: no heap for the usual few rows
    let (mut small, mut heap) = ([0f32; 16], Vec::new());
    let vals: &mut [f32] = if n <= small.len() { &mut small[..n] } else { heap.resize(n, 0f32); &mut heap };
    let mut lanes = if simd { Vec::new() } else { vec![[0f32; 8]; n] };
    for r in span.first..span.last {
        let row = &w.data[r * rb..(r + 1) * rb];
        #[cfg(target_arch = "x86_64")]
        prefetch_ahead(w.data, rb, r);
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: `simd` is only set when AVX2, FMA and F16C were detected; shapes were checked by `matmul`.
            unsafe { super::avx2::row_dots(w.qtype, row, x, n, cols, vals) };
        }
        if !simd {
            dispatch_row::<M>(w.qtype, row, x, cols, vals, &mut lanes);
        }
        let col = span.out_col + r - span.first;
        for (i, v) in vals.iter().enumerate() {
            // SAFETY: `col < total` and `i < n`, so the index is inside `out` ([n, total]); no other task
            // writes column `col`.
            unsafe { *out.0.add(i * total + col) = *v };
        }
    }
}

/// Bytes of weights requested ahead of the row being multiplied: the hardware prefetcher alone keeps too
/// few lines in flight for one core to stream at the memory's rate.
const PREFETCH_BYTES: usize = 2048;

/// Prefetch the row `PREFETCH_BYTES` after row `r` of `data` (rows of `rb` bytes), if there is one.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn prefetch_ahead(data: &[u8], rb: usize, r: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    let at = (r + PREFETCH_BYTES.div_ceil(rb)) * rb;
    if at + rb <= data.len() {
        for off in (0..rb).step_by(64) {
            // SAFETY: `at + off` is inside `data`; a prefetch never faults and changes no memory.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(data.as_ptr().add(at + off) as *const i8) };
        }
    }
}

/// Rows `first..last` of `data` (rows of `rb` bytes, each prefetched ahead) through `dot`, into
/// `out[0..last - first]`: the one-row span loop of both SIMD widths (`avx2::span`, `avx512::span`).
///
/// # Safety
/// `data` holds at least `last` rows and `out` has room for `last - first` floats; `dot` must be safe to
/// call on a pointer to one row.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn each_row(data: &[u8], rb: usize, first: usize, last: usize, out: *mut f32,
                              dot: impl Fn(*const u8) -> f32) {
    for r in first..last {
        prefetch_ahead(data, rb, r);
        *out.add(r - first) = dot(data.as_ptr().add(r * rb));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn span_rows_avx2(ws: &[(QWeight<'_>, usize)], span: &Span, x: &[f32], n: usize, cols: usize,
                         total: usize, out: OutPtr) {
    span_rows::<Fused>(ws, span, x, n, cols, total, out, true)
}

pub(crate) fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Check that every weight holds `rows` rows of `cols` elements; the weights with their row sizes.
pub fn checked<'a>(weights: &[QWeight<'a>], cols: usize) -> Result<Vec<(QWeight<'a>, usize)>, String> {
    let mut ws = Vec::with_capacity(weights.len());
    for (i, w) in weights.iter().enumerate() {
        let rb = row_bytes(w.qtype, cols)?;
        if w.data.len() != rb * w.rows {
            return Err(format!("weight {i}: {} bytes, expected {} for {} rows of {cols} {:?} elements",
                               w.data.len(), rb * w.rows, w.rows, w.qtype));
        }
        ws.push((QWeight { data: w.data, qtype: w.qtype, rows: w.rows }, rb));
    }
    Ok(ws)
}

/// `out[n, sum(rows)] = x[n, cols] @ [W_0; W_1; ...]^T` with the kernels of `mode`.
pub fn matmul(weights: &[QWeight<'_>], x: &[f32], n: usize, cols: usize, out: &mut [f32], mode: Mode)
              -> Result<(), String> {
    let total: usize = weights.iter().map(|w| w.rows).sum();
    if x.len() != n * cols || out.len() != n * total {
        return Err(format!("x must be [{n}, {cols}] and out [{n}, {total}]"));
    }
    let ws = checked(weights, cols)?;
    if n == 0 || total == 0 {
        return Ok(());
    }
    matmul_checked(&ws, x, n, cols, out, mode, Par::Rayon, &mut QActs::default());
    Ok(())
}

/// `matmul` after `checked`; `par` says where big products spread their rows; `qa` is scratch memory
/// for the quantized activations (kept by callers that make many products).
#[allow(clippy::too_many_arguments)]
pub fn matmul_checked(ws: &[(QWeight<'_>, usize)], x: &[f32], n: usize, cols: usize, out: &mut [f32], mode: Mode,
                      par: Par<'_>, qa: &mut QActs) {
    matmul_then(ws, x, n, cols, out, mode, par, qa, None)
}

/// What a gated product does with its output columns once they are computed (see `matmul_then`).
pub struct Epilogue<'a> {
    /// Output columns `half..2 * half` pair with columns `0..half`.
    pub half: usize,
    /// Called with `out`'s pointer and `first..last` (below `half`) once columns `first..last` and
    /// `half + first..half + last` of every row of `out` are written; no other task touches them.
    pub f: &'a (dyn Fn(*const f32, usize, usize) + Sync),
}

/// `matmul_checked`, and with `then` a gated product: one parallel task computes the output columns
/// `c..c + SPAN_ROWS` and their partners `half + c..`, then runs `then.f` on them. A gated MLP's
/// activation (SwiGLU) so needs no phase of its own: a decode step of a small model is a few hundred
/// phases, each ending with every thread waiting for the slowest.
#[allow(clippy::too_many_arguments)]
pub fn matmul_then(ws: &[(QWeight<'_>, usize)], x: &[f32], n: usize, cols: usize, out: &mut [f32], mode: Mode,
                   par: Par<'_>, qa: &mut QActs, then: Option<Epilogue<'_>>) {
    let total: usize = ws.iter().map(|w| w.0.rows).sum();
    let simd = mode.simd();
    let int8 = match mode {
        Mode::Int8(isa) if ws.iter().any(|w| int8::supports(w.0.qtype)) => {
            qa.quantize(x, cols, isa);
            Some(isa)
        }
        _ => None,
    };
    let mut xsum = Vec::new();
    #[cfg(target_arch = "x86_64")]
    if simd && n == 1 && ws.iter().any(|w| super::avx2::needs_xsum(w.0.qtype)) {
        xsum = vec![0f32; cols / 32];
        // SAFETY: `simd` means AVX2, FMA and F16C were detected.
        unsafe { super::avx2::block_sums(x, &mut xsum) };
    }
    let ptr = OutPtr(out.as_mut_ptr());
    let xs = &xsum[..];
    let qa = &*qa;
    let run = move |span: &Span| {
        let (w, rb) = (&ws[span.which].0, ws[span.which].1);
        if let Some(isa) = int8.filter(|_| int8::supports(w.qtype)) {
            // SAFETY: `isa` is available (callers pick it with `Isa::available`), the shapes were checked,
            // `qa` holds `x` quantized, and this span's output columns are its own.
            unsafe { int8::span(isa, w.qtype, w.data, rb, span.first, span.last, qa, n, ptr.get(), total, span.out_col) };
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if simd && n == 1 {
            let (blocks, out) = (cols / w.qtype.block_elems(), ptr.get().wrapping_add(span.out_col));
            // SAFETY: AVX2, FMA and F16C (and for `avx512::span`, AVX-512) were detected; the shapes were
            // checked (`xs` holds x's block sums wherever the format needs them), and this span's output
            // columns (contiguous, one row of x) are its own.
            unsafe {
                if super::avx512::available() && super::avx512::handles(w.qtype) {
                    super::avx512::span(w.qtype, w.data, rb, span.first, span.last, x.as_ptr(), xs.as_ptr(),
                                        blocks, out);
                } else {
                    super::avx2::span(w.qtype, w.data, rb, span.first, span.last, x.as_ptr(), xs.as_ptr(),
                                      blocks, out);
                }
            }
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: AVX2, FMA and F16C were detected on this CPU.
            unsafe { span_rows_avx2(ws, span, x, n, cols, total, ptr) };
            return;
        }
        span_rows::<Plain>(ws, span, x, n, cols, total, ptr, false);
    };
    let par = if total * cols >= 1 << 16 { par } else { Par::Serial };
    let Some(then) = then else {
        let mut spans = Vec::new();
        let mut out_col = 0;
        for (which, (w, _)) in ws.iter().enumerate() {
            for first in (0..w.rows).step_by(SPAN_ROWS) {
                let last = (first + SPAN_ROWS).min(w.rows);
                spans.push(Span { which, first, last, out_col: out_col + first });
            }
            out_col += w.rows;
        }
        par.for_each(spans.len(), &|i| run(&spans[i]));
        return;
    };
    assert_eq!(2 * then.half, total, "a gated product's output pairs its two halves");
    // the spans covering output columns `first..last` (they may cross from one matrix to the next)
    let starts: Vec<usize> = ws.iter().scan(0, |at, w| { let s = *at; *at += w.0.rows; Some(s) }).collect();
    let cover = |first: usize, last: usize| {
        for (which, (w, _)) in ws.iter().enumerate() {
            let (lo, hi) = (first.max(starts[which]), last.min(starts[which] + w.rows));
            if lo < hi {
                run(&Span { which, first: lo - starts[which], last: hi - starts[which], out_col: lo });
            }
        }
    };
    par.for_each(then.half.div_ceil(SPAN_ROWS), &|i| {
        let (first, last) = (i * SPAN_ROWS, ((i + 1) * SPAN_ROWS).min(then.half));
        cover(first, last);
        cover(then.half + first, then.half + last);
        (then.f)(ptr.get(), first, last);
    });
}

/// Decode rows `ids` (all rows when `None`) of one matrix into `out` (`[len, cols]`), in parallel.
pub fn dequantize(w: &QWeight<'_>, cols: usize, ids: Option<&[i64]>, out: &mut [f32]) -> Result<(), String> {
    let rb = row_bytes(w.qtype, cols)?;
    if w.data.len() != rb * w.rows {
        return Err(format!("{} bytes, expected {} for {} rows of {cols} {:?} elements", w.data.len(),
                           rb * w.rows, w.rows, w.qtype));
    }
    let count = ids.map_or(w.rows, |v| v.len());
    if out.len() != count * cols {
        return Err(format!("out must hold [{count}, {cols}] floats"));
    }
    if let Some(bad) = ids.and_then(|v| v.iter().find(|&&r| r < 0 || r as usize >= w.rows)) {
        return Err(format!("row {bad} is outside 0..{}", w.rows));
    }
    let (be, bb) = (w.qtype.block_elems(), w.qtype.block_bytes());
    let simd = has_avx2();
    let decode = |(i, dst): (usize, &mut [f32])| {
        let r = ids.map_or(i, |v| v[i] as usize);
        let row = &w.data[r * rb..(r + 1) * rb];
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: AVX2, FMA and F16C were detected; `dst` holds the row's `cols` floats.
            unsafe { super::avx2::decode_row(w.qtype, row, dst) };
            return;
        }
        let _ = simd;
        for (block, y) in row.chunks_exact(bb).zip(dst.chunks_exact_mut(be)) {
            decode_block(w.qtype, block, y);
        }
    };
    if count * cols >= 1 << 16 {
        out.par_chunks_mut(cols).enumerate().for_each(decode);
    } else {
        out.chunks_mut(cols).enumerate().for_each(decode);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> u8 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (*seed >> 33) as u8
    }

    /// Random blocks whose f16 scales are small finite numbers.
    fn random_weight(qtype: QType, rows: usize, cols: usize, seed: &mut u64) -> Vec<u8> {
        let rb = row_bytes(qtype, cols).unwrap();
        let mut data: Vec<u8> = (0..rows * rb).map(|_| lcg(seed)).collect();
        let scale_offsets: &[usize] = match qtype {
            QType::Q4_0 | QType::Q5_0 | QType::Q8_0 => &[0],
            QType::Q4_1 | QType::Q5_1 | QType::Q4K | QType::Q5K => &[0, 2],
            QType::Q6K => &[208],
            QType::F32 | QType::F16 | QType::BF16 => &[],
        };
        if matches!(qtype, QType::F16 | QType::BF16) {
            // finite values of either sign, about 0.5 .. 2 in magnitude
            let high = if qtype == QType::F16 { 0x38 } else { 0x3f };
            for pair in data.chunks_exact_mut(2) {
                pair[1] = (pair[1] & 0x80) | high | (lcg(seed) & 3 & if qtype == QType::F16 { 3 } else { 0 });
            }
        }
        for block in data.chunks_exact_mut(qtype.block_bytes()) {
            for &o in scale_offsets {
                let h: u16 = 0x2000 | (lcg(seed) as u16); // about 0.008 .. 0.016
                block[o..o + 2].copy_from_slice(&h.to_le_bytes());
            }
        }
        data
    }

    #[test]
    fn matmul_equals_dequantize_then_dot_for_every_type() {
        let mut seed = 7u64;
        for qtype in [QType::Q4_0, QType::Q4_1, QType::Q5_0, QType::Q5_1, QType::Q8_0, QType::Q4K, QType::Q5K,
                      QType::Q6K, QType::F16, QType::BF16] {
            // an odd block count too: the single-row kernels pair blocks and have a tail
            let widths: &[usize] = if qtype.block_elems() == 32 { &[512, 544] } else { &[512] };
            for (n, &cols) in [1, 3, 11].into_iter().flat_map(|n| widths.iter().map(move |c| (n, c))) {
            let rows = 37;
            let a = random_weight(qtype, rows, cols, &mut seed);
            let b = random_weight(qtype, 5, cols, &mut seed);
            let x: Vec<f32> = (0..n * cols).map(|_| lcg(&mut seed) as f32 / 128.0 - 1.0).collect();
            // the reference decoder, block by block (`dequantize` takes the SIMD one where there is one)
            let mut dense = vec![0f32; (rows + 5) * cols];
            let (be, bb) = (qtype.block_elems(), qtype.block_bytes());
            for (block, y) in a.chunks_exact(bb).chain(b.chunks_exact(bb)).zip(dense.chunks_exact_mut(be)) {
                decode_block(qtype, block, y);
            }
            for mode in [Mode::F32 { simd: false }, Mode::F32 { simd: has_avx2() }] {
                let mut out = vec![0f32; n * (rows + 5)];
                let ws = [QWeight { data: &a, qtype, rows }, QWeight { data: &b, qtype, rows: 5 }];
                matmul(&ws, &x, n, cols, &mut out, mode).unwrap();
                for i in 0..n {
                    for r in 0..rows + 5 {
                        let want: f64 = (0..cols).map(|c| dense[r * cols + c] as f64 * x[i * cols + c] as f64).sum();
                        let scale: f64 = (0..cols).map(|c| (dense[r * cols + c] as f64 * x[i * cols + c] as f64).abs())
                            .sum::<f64>().max(1e-6);
                        let got = out[i * (rows + 5) + r] as f64;
                        assert!((got - want).abs() <= 1e-5 * scale, "{qtype:?} n {n} row {r}: {got} vs {want}");
                    }
                }
            }
            }
        }
    }

    /// A gated product's epilogue sees each pair of column ranges fully written, exactly once, whatever
    /// the matrices' boundaries (one stacked matrix, or several that do not split at the middle), and
    /// the product equals the plain one bit for bit.
    #[test]
    fn gated_products_hand_every_column_pair_to_its_epilogue_once() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let mut seed = 11u64;
        // 70: the last task's columns are a partial span; 140 rows x 512 columns: spread over the team
        let (cols, half) = (512, 70);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        for split in [vec![2 * half], vec![half, half], vec![33, 60, 47]] {
            let mats: Vec<Vec<u8>> = split.iter().map(|&r| random_weight(QType::Q4_1, r, cols, &mut seed)).collect();
            let ws: Vec<QWeight<'_>> = mats.iter().zip(&split)
                .map(|(d, &rows)| QWeight { data: d, qtype: QType::Q4_1, rows }).collect();
            let ws = checked(&ws, cols).unwrap();
            for n in [1, 3] {
                let x: Vec<f32> = (0..n * cols).map(|_| lcg(&mut seed) as f32 / 128.0 - 1.0).collect();
                for mode in [Mode::F32 { simd: false }, Mode::F32 { simd: has_avx2() }] {
                    let mut plain = vec![0f32; n * 2 * half];
                    matmul_checked(&ws, &x, n, cols, &mut plain, mode, Par::Serial, &mut QActs::default());
                    let seen: Vec<AtomicU32> = (0..half).map(|_| AtomicU32::new(0)).collect();
                    let pairs: Vec<std::sync::Mutex<Vec<(f32, f32)>>> =
                        (0..n * half).map(|_| std::sync::Mutex::new(Vec::new())).collect();
                    let f = |out: *const f32, first: usize, last: usize| {
                        for j in first..last {
                            seen[j].fetch_add(1, Ordering::Relaxed);
                            for t in 0..n {
                                // SAFETY: `out` is [n, 2 * half] and these columns are this task's.
                                let (g, u) = unsafe { (*out.add(t * 2 * half + j), *out.add(t * 2 * half + half + j)) };
                                pairs[t * half + j].lock().unwrap().push((g, u));
                            }
                        }
                    };
                    let mut gated = vec![0f32; n * 2 * half];
                    pool.install(|| crate::team::Team::run(3, |team| {
                        matmul_then(&ws, &x, n, cols, &mut gated, mode, Par::Team(team), &mut QActs::default(),
                                    Some(Epilogue { half, f: &f }));
                    }));
                    assert_eq!(gated, plain, "{split:?} n {n}");
                    assert!(seen.iter().all(|c| c.load(Ordering::Relaxed) == 1), "{split:?}: a column pair twice or never");
                    for t in 0..n {
                        for j in 0..half {
                            let want = (plain[t * 2 * half + j], plain[t * 2 * half + half + j]);
                            assert_eq!(*pairs[t * half + j].lock().unwrap(), vec![want], "{split:?} token {t} column {j}");
                        }
                    }
                }
            }
        }
    }

    /// The one-row kernels of both widths (a CPU with AVX-512 would otherwise never run the AVX2 ones).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_and_avx512_one_row_kernels_equal_the_reference() {
        if !has_avx2() {
            return;
        }
        let mut seed = 5u64;
        // several rows, so the AVX-512 span runs its row loop
        let rows = 7;
        for qtype in [QType::Q4_0, QType::Q4_1, QType::Q5_0, QType::Q5_1, QType::Q8_0, QType::Q4K, QType::Q5K,
                      QType::Q6K, QType::F16, QType::BF16] {
            // an odd number of 32-value blocks, so the two-accumulator loops run their tail too
            let cols = if qtype.block_elems() == 256 { 768 } else { 800 };
            let data = random_weight(qtype, rows, cols, &mut seed);
            let x: Vec<f32> = (0..cols).map(|_| lcg(&mut seed) as f32 / 128.0 - 1.0).collect();
            let mut xsum = vec![0f32; cols / 32];
            // SAFETY: AVX2, FMA and F16C were detected.
            unsafe { super::super::avx2::block_sums(&x, &mut xsum) };
            let (be, bb) = (qtype.block_elems(), qtype.block_bytes());
            let mut dense = vec![0f32; rows * cols];
            for (block, y) in data.chunks_exact(bb).zip(dense.chunks_exact_mut(be)) {
                decode_block(qtype, block, y);
            }
            let rb = row_bytes(qtype, cols).unwrap();
            let (mut narrow, mut wide) = (vec![f32::NAN; rows], vec![f32::NAN; rows]);
            // SAFETY: AVX2 was detected; `data` holds `rows` rows of `cols` values, `narrow` `rows` floats.
            unsafe {
                super::super::avx2::span(qtype, &data, rb, 0, rows, x.as_ptr(), xsum.as_ptr(), cols / be,
                                         narrow.as_mut_ptr())
            };
            let avx512 = super::super::avx512::available() && super::super::avx512::handles(qtype);
            if avx512 {
                // SAFETY: AVX-512 was detected; `data` holds `rows` rows of `cols` values, `wide` `rows` floats.
                unsafe {
                    super::super::avx512::span(qtype, &data, rb, 0, rows, x.as_ptr(), xsum.as_ptr(), cols / be,
                                               wide.as_mut_ptr())
                };
            }
            for r in 0..rows {
                let want: f64 = (0..cols).map(|c| dense[r * cols + c] as f64 * x[c] as f64).sum();
                let scale: f64 = (0..cols).map(|c| (dense[r * cols + c] as f64 * x[c] as f64).abs()).sum();
                for (got, what) in [(Some(narrow[r]), "avx2"), (avx512.then_some(wide[r]), "avx512")] {
                    if let Some(got) = got {
                        let got = got as f64;
                        assert!((got - want).abs() <= 1e-5 * scale, "{qtype:?} row {r} {what}: {got} vs {want}");
                    }
                }
            }
        }
    }

    #[test]
    fn dequantize_equals_the_reference_decoder_for_every_type() {
        let mut seed = 11u64;
        for qtype in [QType::Q4_0, QType::Q4_1, QType::Q5_0, QType::Q5_1, QType::Q8_0, QType::Q4K, QType::Q5K,
                      QType::Q6K, QType::F32, QType::F16, QType::BF16] {
            let (rows, cols) = (9, 768);
            let data = random_weight(qtype, rows, cols, &mut seed);
            let mut want = vec![0f32; rows * cols];
            let (be, bb) = (qtype.block_elems(), qtype.block_bytes());
            for (block, y) in data.chunks_exact(bb).zip(want.chunks_exact_mut(be)) {
                decode_block(qtype, block, y);
            }
            let mut got = vec![0f32; rows * cols];
            dequantize(&QWeight { data: &data, qtype, rows }, cols, None, &mut got).unwrap();
            let ids = [8i64, 0, 3];
            let mut picked = vec![0f32; 3 * cols];
            dequantize(&QWeight { data: &data, qtype, rows }, cols, Some(&ids), &mut picked).unwrap();
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                if qtype == QType::F32 {
                    // random bytes: NaNs too, which must pass through bit for bit
                    assert_eq!(g.to_bits(), w.to_bits(), "F32 element {i}");
                    continue;
                }
                // a fused multiply-add rounds once where the reference rounds twice: one ulp of the terms
                let tol = 2.0 * f32::EPSILON * w.abs().max(1e-3);
                assert!((g - w).abs() <= tol, "{qtype:?} element {i}: {g} vs {w}");
            }
            for (k, &r) in ids.iter().enumerate() {
                let r = r as usize;
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&picked[k * cols..(k + 1) * cols]), bits(&got[r * cols..(r + 1) * cols]),
                           "{qtype:?} row {r}");
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let data = vec![0u8; 20];
        let w = QWeight { data: &data, qtype: QType::Q4_1, rows: 1 };
        let mut out = vec![0f32; 1];
        assert!(matmul(&[w], &[0f32; 33], 1, 33, &mut out, Mode::F32 { simd: false }).unwrap_err().contains("block size"));
        let w = QWeight { data: &data, qtype: QType::Q4_1, rows: 2 };
        assert!(dequantize(&w, 32, None, &mut [0f32; 64]).unwrap_err().contains("bytes"));
    }
}
