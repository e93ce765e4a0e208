//! Paged decode attention: one new query token per sequence against a KV cache stored in fixed-size
//! blocks and reached through a per-sequence block table.
//!
//! The context of each sequence is split into partitions; each (sequence, KV head, partition) computes a
//! local max, sum of exponentials and weighted value sum (an online softmax), and a reduce step merges
//! the partitions. Partitions make a single long sequence parallel, and all query heads that share a KV
//! head (GQA) are served by one pass over that head's keys and values, so K/V are read from memory once.
//!
//! Layouts (C-contiguous, float32 unless noted):
//! - `q`, `out`: [num_seqs, num_heads, head_dim]
//! - `k_cache`, `v_cache`: [num_blocks, num_kv_heads, block_size, head_dim], float32 or float16 (`KvElem`:
//!   one kernel for both, f16 rows widened to f32 in L1 just before use, so the arithmetic is f32)
//! - `block_tables`: int32 [num_seqs, max_blocks_per_seq]; `context_lens`: int32 [num_seqs]
use pyo3::buffer::{Element, PyBuffer, PyUntypedBuffer};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use std::sync::OnceLock;

use crate::errors::guarded;
use crate::half::{widen_portable, F16};
use crate::team::Par;

/// Dimensions of one decode call, validated against every buffer before any read.
#[derive(Clone, Copy, Debug)]
pub struct DecodeShape {
    pub num_seqs: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub num_blocks: usize,
    pub block_size: usize,
    pub max_blocks_per_seq: usize,
}

/// The inputs of one decode call, as plain slices.
pub struct DecodeInputs<'a, E: KvElem> {
    pub q: &'a [f32],
    pub k_cache: &'a [E],
    pub v_cache: &'a [E],
    pub block_tables: &'a [i32],
    pub context_lens: &'a [i32],
}

/// One partition's contribution for the `group` query heads of one KV head.
struct Partial {
    max: Vec<f32>,
    sum: Vec<f32>,
    acc: Vec<f32>,
}

/// Multiply-add (fused where the CPU has FMA) and f16 widening (F16C where it has it), selected once per
/// call at run time.
pub trait Arith {
    fn madd(a: f32, b: f32, c: f32) -> f32;
    fn widen(src: &[F16], dst: &mut [f32]);
    /// `Σ a[i]·b[i]` (one query head against one key row).
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        dot_lanes::<Self>(a, b)
    }
}

pub struct Plain;
impl Arith for Plain {
    #[inline(always)]
    fn madd(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }

    #[inline(always)]
    fn widen(src: &[F16], dst: &mut [f32]) {
        widen_portable(src, dst);
    }
}

/// Only instantiated inside `partition_avx2`, which runs only where AVX2, FMA and F16C were detected.
pub struct Fused;
impl Arith for Fused {
    #[inline(always)]
    fn madd(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }

    #[inline(always)]
    fn widen(src: &[F16], dst: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Fused` code runs only on CPUs with F16C (see above).
        unsafe {
            crate::half::widen_f16c(src, dst)
        }
        #[cfg(not(target_arch = "x86_64"))]
        widen_portable(src, dst);
    }

    #[inline(always)]
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Fused` code runs only on CPUs with AVX2 and FMA (see above).
        unsafe {
            dot_fma(a, b)
        }
        #[cfg(not(target_arch = "x86_64"))]
        dot_lanes::<Self>(a, b)
    }
}

/// An element of the KV cache: f32, or f16 at half the memory. The kernel reads rows through these two
/// methods, so f32 rows are used in place and f16 rows are widened into a small L1-resident buffer.
pub trait KvElem: Copy + Send + Sync + Element + 'static {
    /// The `hd`-long row at `at` as f32.
    fn row<'s, A: Arith>(cache: &'s [Self], at: usize, hd: usize, scratch: &'s mut [f32]) -> &'s [f32];
    /// Several rows (offsets `rows`) as f32: the data and the rows' offsets in it (for f16, the rows packed
    /// into `scratch` at `packed`, which holds `0, hd, 2*hd, ...`).
    fn rows<'s, A: Arith>(cache: &'s [Self], rows: &'s [usize], hd: usize, scratch: &'s mut [f32],
                          packed: &'s [usize]) -> (&'s [f32], &'s [usize]);
    /// Store f32 values (the decode step's K/V write), rounding to nearest even for f16.
    fn store(dst: &mut [Self], src: &[f32]);
}

impl KvElem for f32 {
    #[inline(always)]
    fn row<'s, A: Arith>(cache: &'s [f32], at: usize, hd: usize, _: &'s mut [f32]) -> &'s [f32] {
        &cache[at..at + hd]
    }

    #[inline(always)]
    fn rows<'s, A: Arith>(cache: &'s [f32], rows: &'s [usize], _: usize, _: &'s mut [f32], _: &'s [usize]
                          ) -> (&'s [f32], &'s [usize]) {
        (cache, rows)
    }

    fn store(dst: &mut [f32], src: &[f32]) {
        dst.copy_from_slice(src);
    }
}

impl KvElem for F16 {
    #[inline(always)]
    fn row<'s, A: Arith>(cache: &'s [F16], at: usize, hd: usize, scratch: &'s mut [f32]) -> &'s [f32] {
        A::widen(&cache[at..at + hd], &mut scratch[..hd]);
        &scratch[..hd]
    }

    #[inline(always)]
    fn rows<'s, A: Arith>(cache: &'s [F16], rows: &'s [usize], hd: usize, scratch: &'s mut [f32],
                          packed: &'s [usize]) -> (&'s [f32], &'s [usize]) {
        for (i, &at) in rows.iter().enumerate() {
            A::widen(&cache[at..at + hd], &mut scratch[i * hd..(i + 1) * hd]);
        }
        (&scratch[..rows.len() * hd], &packed[..rows.len()])
    }

    fn store(dst: &mut [F16], src: &[f32]) {
        crate::half::narrow(src, dst);
    }
}

#[inline(always)]
fn dot_lanes<A: Arith + ?Sized>(a: &[f32], b: &[f32]) -> f32 {
    // Independent lanes so the compiler can vectorize without reassociating one running sum.
    let mut lanes = [0f32; 16];
    let ca = a.chunks_exact(16);
    let cb = b.chunks_exact(16);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            lanes[i] = A::madd(x[i], y[i], lanes[i]);
        }
    }
    let mut s: f32 = lanes.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s = A::madd(*x, *y, s);
    }
    s
}

/// `dot_lanes` with two 8-wide accumulators and a shuffle-tree reduction: the key pass runs one of these
/// per query head and key row, and the compiler's reduction of 16 lanes (15 dependent scalar adds and
/// their shuffles) took longer than the multiply-adds.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_fma(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut i = 0;
    while i + 16 <= n {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + 8)), _mm256_loadu_ps(pb.add(i + 8)), s1);
        i += 16;
    }
    let s = _mm256_add_ps(s0, s1);
    let h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    let mut r = _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
    while i < n {
        r = a[i].mul_add(b[i], r);
        i += 1;
    }
    r
}

#[inline(always)]
fn axpy<A: Arith>(acc: &mut [f32], w: f32, x: &[f32]) {
    for (a, b) in acc.iter_mut().zip(x) {
        *a = A::madd(w, *b, *a);
    }
}

/// `exp(x)` for x <= 0 (Cephes-style: 2^n * polynomial), written with plain arithmetic so it vectorizes.
#[inline(always)]
pub(crate) fn exp_nonpositive<A: Arith>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer in the low mantissa bits
    let x = x.max(-87.0);
    let t = A::madd(x, LOG2E, ROUND);
    let n = t - ROUND;
    let r = A::madd(n, -0.693_359_4, x);
    let r = A::madd(n, 2.121_944_4e-4, r);
    let mut p = 1.987_569_1e-4f32;
    p = A::madd(p, r, 1.398_199_9e-3);
    p = A::madd(p, r, 8.333_452e-3);
    p = A::madd(p, r, 4.166_579_6e-2);
    p = A::madd(p, r, 1.666_666_5e-1);
    p = A::madd(p, r, 0.5); // Cephes writes 5.0000001e-1, which is 0.5 in f32
    let y = A::madd(p, r * r, r) + 1.0;
    let bits = ((t.to_bits() as i32 - 0x4B40_0000 + 127) << 23) as u32;
    y * f32::from_bits(bits)
}

/// Check the shape and table contents so that the kernel cannot read out of bounds.
pub fn validate<E: KvElem>(shape: &DecodeShape, inputs: &DecodeInputs<'_, E>, out_len: usize) -> Result<(), String> {
    let s = shape;
    if s.num_kv_heads == 0 || !s.num_heads.is_multiple_of(s.num_kv_heads) {
        return Err(format!(
            "num_heads ({}) must be a positive multiple of num_kv_heads ({})",
            s.num_heads, s.num_kv_heads
        ));
    }
    if s.head_dim == 0 || s.block_size == 0 {
        return Err("head_dim and block_size must be positive".into());
    }
    let q_len = s.num_seqs * s.num_heads * s.head_dim;
    if inputs.q.len() != q_len || out_len != q_len {
        return Err(format!("q and out must hold num_seqs*num_heads*head_dim = {q_len} floats"));
    }
    let cache_len = s.num_blocks * s.num_kv_heads * s.block_size * s.head_dim;
    if inputs.k_cache.len() != cache_len || inputs.v_cache.len() != cache_len {
        return Err("k_cache and v_cache must have the same shape".into());
    }
    if inputs.block_tables.len() != s.num_seqs * s.max_blocks_per_seq || inputs.context_lens.len() != s.num_seqs {
        return Err("block_tables must be [num_seqs, max_blocks] and context_lens [num_seqs]".into());
    }
    for seq in 0..s.num_seqs {
        let ctx = inputs.context_lens[seq];
        if ctx < 0 || ctx as usize > s.max_blocks_per_seq * s.block_size {
            return Err(format!("context_lens[{seq}] = {ctx} does not fit its block table"));
        }
        let used = (ctx as usize).div_ceil(s.block_size);
        let row = &inputs.block_tables[seq * s.max_blocks_per_seq..seq * s.max_blocks_per_seq + used];
        if let Some(bad) = row.iter().find(|&&b| b < 0 || b as usize >= s.num_blocks) {
            return Err(format!("block_tables[{seq}] holds block {bad}, outside 0..{}", s.num_blocks));
        }
    }
    Ok(())
}

/// Lane-wise max and sum: independent lanes vectorize, one running value would not.
#[inline(always)]
fn lanes_max(xs: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = xs.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            lanes[i] = if c[i] > lanes[i] { c[i] } else { lanes[i] };
        }
    }
    rest.iter().chain(lanes.iter()).fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m })
}

#[inline(always)]
fn lanes_sum(xs: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks = xs.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            lanes[i] += c[i];
        }
    }
    lanes.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

/// Ask the CPU to start loading `len` elements at `data[at..]` into cache (a hint; no effect elsewhere).
#[inline(always)]
fn prefetch<T>(data: &[T], at: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    if at + len <= data.len() {
        for off in (0..len * std::mem::size_of::<T>()).step_by(64) {
            // SAFETY: prefetch never faults, and the address lies inside `data`.
            unsafe {
                use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                _mm_prefetch::<_MM_HINT_T0>((data.as_ptr().add(at) as *const i8).add(off));
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (data, at, len);
}

/// How many rows ahead the key pass prefetches (blocks are scattered, so the hardware cannot guess).
const PREFETCH_ROWS: usize = 8;

/// Tokens per sub-chunk: their V rows (64 x head_dim floats) stay in L1 while every head reads them.
const SUB: usize = 64;
/// Output columns accumulated in registers at a time.
const TILE: usize = 32;

#[inline(always)]
fn partition_impl<A: Arith, E: KvElem>(
    shape: &DecodeShape,
    inputs: &DecodeInputs<'_, E>,
    seq: usize,
    kv_head: usize,
    start: usize,
    end: usize,
    scale: f32,
) -> Partial {
    let s = shape;
    let hd = s.head_dim;
    let group = s.num_heads / s.num_kv_heads;
    let n = end - start;
    let q_base = (seq * s.num_heads + kv_head * group) * hd;
    let q = &inputs.q[q_base..q_base + group * hd];
    let table = &inputs.block_tables[seq * s.max_blocks_per_seq..(seq + 1) * s.max_blocks_per_seq];
    // Offset of token t's row (this KV head) in either cache, resolved through the block table once.
    let rows: Vec<usize> = (start..end)
        .map(|t| {
            let block = table[t / s.block_size] as usize;
            ((block * s.num_kv_heads + kv_head) * s.block_size + t % s.block_size) * hd
        })
        .collect();
    let mut scores = vec![0f32; group * n];
    let mut scratch = vec![0f32; SUB.min(n) * hd]; // f16 rows widened (unused for f32)
    for (i, &base) in rows.iter().enumerate() {
        if let Some(&ahead) = rows.get(i + PREFETCH_ROWS) {
            prefetch(inputs.k_cache, ahead, hd);
        }
        let k = E::row::<A>(inputs.k_cache, base, hd, &mut scratch);
        for j in 0..group {
            scores[j * n + i] = A::dot(&q[j * hd..(j + 1) * hd], k) * scale;
        }
    }
    let mut max = vec![f32::NEG_INFINITY; group];
    let mut sum = vec![0f32; group];
    for j in 0..group {
        let row = &mut scores[j * n..(j + 1) * n];
        let m = lanes_max(row);
        for x in row.iter_mut() {
            *x = exp_nonpositive::<A>(*x - m);
        }
        max[j] = m;
        sum[j] = lanes_sum(row);
    }
    let mut acc = vec![0f32; group * hd];
    if hd.is_multiple_of(TILE) {
        for &base in &rows[..SUB.min(n)] {
            prefetch(inputs.v_cache, base, hd);
        }
        let packed: Vec<usize> = (0..SUB.min(n)).map(|i| i * hd).collect();
        for s0 in (0..n).step_by(SUB) {
            let (vdata, sub) = E::rows::<A>(inputs.v_cache, &rows[s0..(s0 + SUB).min(n)], hd, &mut scratch, &packed);
            for &base in rows.get(s0 + SUB..(s0 + 2 * SUB).min(n)).unwrap_or(&[]) {
                prefetch(inputs.v_cache, base, hd);
            }
            for j in 0..group {
                let p = &scores[j * n + s0..j * n + s0 + sub.len()];
                for d0 in (0..hd).step_by(TILE) {
                    let out = &mut acc[j * hd + d0..j * hd + d0 + TILE];
                    let mut a = [0f32; TILE];
                    a.copy_from_slice(out);
                    for (&base, &w) in sub.iter().zip(p) {
                        let v = &vdata[base + d0..base + d0 + TILE];
                        for i in 0..TILE {
                            a[i] = A::madd(w, v[i], a[i]);
                        }
                    }
                    out.copy_from_slice(&a);
                }
            }
        }
    } else {
        for (i, &base) in rows.iter().enumerate() {
            let v = E::row::<A>(inputs.v_cache, base, hd, &mut scratch);
            for j in 0..group {
                axpy::<A>(&mut acc[j * hd..(j + 1) * hd], scores[j * n + i], v);
            }
        }
    }
    Partial { max, sum, acc }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn partition_avx2<E: KvElem>(
    shape: &DecodeShape,
    inputs: &DecodeInputs<'_, E>,
    seq: usize,
    kv_head: usize,
    start: usize,
    end: usize,
    scale: f32,
) -> Partial {
    partition_impl::<Fused, E>(shape, inputs, seq, kv_head, start, end, scale)
}

#[allow(clippy::too_many_arguments)]
fn partition<E: KvElem>(
    shape: &DecodeShape,
    inputs: &DecodeInputs<'_, E>,
    seq: usize,
    kv_head: usize,
    start: usize,
    end: usize,
    scale: f32,
    simd: bool,
) -> Partial {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is true only when the CPU reports AVX2, FMA and F16C.
        return unsafe { partition_avx2(shape, inputs, seq, kv_head, start, end, scale) };
    }
    let _ = simd;
    partition_impl::<Plain, E>(shape, inputs, seq, kv_head, start, end, scale)
}

/// Decode attention for every sequence; `out` receives softmax(q·Kᵀ·scale)·V per query head.
///
/// The (sequence, KV head, partition) units run through `par`; their partials are then merged per
/// (sequence, KV head) on this thread (a few vectors each).
pub fn paged_decode<E: KvElem>(
    shape: &DecodeShape,
    inputs: &DecodeInputs<'_, E>,
    out: &mut [f32],
    scale: f32,
    partition_size: usize,
    par: Par<'_>,
) -> Result<(), String> {
    decode_on(shape, inputs, out, scale, partition_size, par, crate::half::has_f16c())
}

/// `paged_decode` with the SIMD build (`simd`: the caller checked the CPU) or the portable one.
fn decode_on<E: KvElem>(
    shape: &DecodeShape,
    inputs: &DecodeInputs<'_, E>,
    out: &mut [f32],
    scale: f32,
    partition_size: usize,
    par: Par<'_>,
    simd: bool,
) -> Result<(), String> {
    validate(shape, inputs, out.len())?;
    if partition_size == 0 {
        return Err("partition_size must be positive".into());
    }
    let s = *shape;
    let hd = s.head_dim;
    let group = s.num_heads / s.num_kv_heads;
    // Below this many K/V values to read, waking rayon's pool costs more than it saves (and on a busy
    // machine a sleeping worker can take milliseconds to be scheduled); a team's threads are awake.
    const PARALLEL_MIN_FLOATS: usize = 1 << 20;
    let work: usize = inputs.context_lens.iter().map(|&c| c as usize).sum::<usize>() * s.num_kv_heads * hd * 2;
    let par = match par {
        Par::Rayon if work < PARALLEL_MIN_FLOATS => Par::Serial,
        p => p,
    };
    // units of (sequence, KV head, first position); `first[i]..first[i + 1]` are those of output chunk i
    let mut units = Vec::new();
    let mut first = Vec::with_capacity(s.num_seqs * s.num_kv_heads + 1);
    for seq in 0..s.num_seqs {
        let ctx = inputs.context_lens[seq] as usize;
        for kv_head in 0..s.num_kv_heads {
            first.push(units.len());
            units.extend((0..ctx).step_by(partition_size).map(|start| (seq, kv_head, start)));
        }
    }
    first.push(units.len());
    let parts: Vec<OnceLock<Partial>> = (0..units.len()).map(|_| OnceLock::new()).collect();
    par.for_each(units.len(), &|i| {
        let (seq, kv_head, start) = units[i];
        let end = (start + partition_size).min(inputs.context_lens[seq] as usize);
        let _ = parts[i].set(partition(&s, inputs, seq, kv_head, start, end, scale, simd));
    });
    // One output chunk per (sequence, KV head): the `group` query heads that share it are adjacent.
    for (idx, chunk) in out.chunks_mut(group * hd).enumerate() {
        let mine = &parts[first[idx]..first[idx + 1]];
        if mine.is_empty() {
            chunk.fill(0.0);
            continue;
        }
        let mine: Vec<&Partial> = mine.iter().map(|p| p.get().expect("every unit ran")).collect();
        for j in 0..group {
            let m = mine.iter().map(|p| p.max[j]).fold(f32::NEG_INFINITY, f32::max);
            let o = &mut chunk[j * hd..(j + 1) * hd];
            o.fill(0.0);
            let mut total = 0f32;
            for p in &mine {
                let w = (p.max[j] - m).exp();
                total += w * p.sum[j];
                axpy::<Plain>(o, w, &p.acc[j * hd..(j + 1) * hd]);
            }
            let inv = 1.0 / total;
            o.iter_mut().for_each(|x| *x *= inv);
        }
    }
    Ok(())
}

fn contiguous<T: Element>(buf: &PyBuffer<T>, name: &str, dims: usize) -> PyResult<()> {
    if !buf.is_c_contiguous() {
        return Err(PyValueError::new_err(format!("{name} must be C-contiguous")));
    }
    if buf.dimensions() != dims {
        return Err(PyValueError::new_err(format!("{name} must have {dims} dimensions, got {}", buf.dimensions())));
    }
    Ok(())
}

/// # Safety
/// The buffer must stay alive (and unmodified by others) while the slice is used.
unsafe fn slice_of<T: Element>(buf: &PyBuffer<T>) -> &[T] {
    std::slice::from_raw_parts(buf.buf_ptr() as *const T, buf.item_count())
}

fn overlaps<A: Element, B: Element>(a: &PyBuffer<A>, b: &PyBuffer<B>) -> bool {
    let (a0, b0) = (a.buf_ptr() as usize, b.buf_ptr() as usize);
    a0 < b0 + b.len_bytes() && b0 < a0 + a.len_bytes()
}

/// A K and a V cache of one element type, taken from Python objects (float32 or float16 arrays).
pub enum KvBuffers {
    F32(PyBuffer<f32>, PyBuffer<f32>),
    F16(PyBuffer<F16>, PyBuffer<F16>),
}

/// Slices of both caches, for use without the GIL.
pub enum KvSlices<'a> {
    F32(&'a mut [f32], &'a mut [f32]),
    F16(&'a mut [F16], &'a mut [F16]),
}

impl KvBuffers {
    pub fn get(k: &Bound<'_, PyAny>, v: &Bound<'_, PyAny>) -> PyResult<KvBuffers> {
        let (kb, vb) = (PyUntypedBuffer::get(k)?, PyUntypedBuffer::get(v)?);
        let kind = |b: &PyUntypedBuffer| (b.format().to_bytes().last().copied(), b.item_size());
        match (kind(&kb), kind(&vb)) {
            ((Some(b'f'), 4), (Some(b'f'), 4)) => Ok(KvBuffers::F32(kb.into_typed()?, vb.into_typed()?)),
            ((Some(b'e'), 2), (Some(b'e'), 2)) => Ok(KvBuffers::F16(kb.into_typed()?, vb.into_typed()?)),
            _ => Err(PyValueError::new_err(format!(
                "k_cache and v_cache must both be float32 or both float16 (buffer formats {:?} and {:?})",
                kb.format(), vb.format()))),
        }
    }

    fn untyped(&self) -> (&PyUntypedBuffer, &PyUntypedBuffer) {
        match self {
            KvBuffers::F32(k, v) => (k, v),
            KvBuffers::F16(k, v) => (k, v),
        }
    }

    pub fn k_shape(&self) -> &[usize] {
        self.untyped().0.shape()
    }

    pub fn v_shape(&self) -> &[usize] {
        self.untyped().1.shape()
    }

    /// Both C-contiguous (and writable, when asked).
    pub fn contiguous(&self, writable: bool) -> bool {
        let (k, v) = self.untyped();
        k.is_c_contiguous() && v.is_c_contiguous() && (!writable || (!k.readonly() && !v.readonly()))
    }

    fn overlaps_with<T: Element>(&self, other: &PyBuffer<T>) -> bool {
        match self {
            KvBuffers::F32(k, v) => overlaps(other, k) || overlaps(other, v),
            KvBuffers::F16(k, v) => overlaps(other, k) || overlaps(other, v),
        }
    }

    /// # Safety
    /// The buffers must stay alive while the slices are used, and nothing else may read or write the
    /// memory meanwhile (the slices are mutable: the caller checked `contiguous(true)`).
    pub unsafe fn slices_mut(&self) -> KvSlices<'_> {
        use std::slice::from_raw_parts_mut as mutable;
        match self {
            KvBuffers::F32(k, v) => KvSlices::F32(mutable(k.buf_ptr() as *mut f32, k.item_count()),
                                                  mutable(v.buf_ptr() as *mut f32, v.item_count())),
            KvBuffers::F16(k, v) => KvSlices::F16(mutable(k.buf_ptr() as *mut F16, k.item_count()),
                                                  mutable(v.buf_ptr() as *mut F16, v.item_count())),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn decode_with<E: KvElem>(py: Python<'_>, shape: &DecodeShape, q: &[f32], k: &[E], v: &[E], tables: &[i32],
                          lens: &[i32], out: &mut [f32], scale: f32, partition_size: usize) -> PyResult<()> {
    let inputs = DecodeInputs { q, k_cache: k, v_cache: v, block_tables: tables, context_lens: lens };
    py.detach(|| paged_decode(shape, &inputs, out, scale, partition_size, Par::Rayon))
        .map_err(PyValueError::new_err)
}

/// Python entry point: validates the buffers, then runs the kernel without the GIL, zero-copy.
/// The caches may be float32 or float16 (both the same).
#[pyfunction]
#[pyo3(signature = (out, q, k_cache, v_cache, block_tables, context_lens, scale, partition_size = 512))]
#[allow(clippy::too_many_arguments)]
fn paged_attention_decode(
    py: Python<'_>,
    out: PyBuffer<f32>,
    q: PyBuffer<f32>,
    k_cache: &Bound<'_, PyAny>,
    v_cache: &Bound<'_, PyAny>,
    block_tables: PyBuffer<i32>,
    context_lens: PyBuffer<i32>,
    scale: f32,
    partition_size: usize,
) -> PyResult<()> {
    guarded(|| {
        let caches = KvBuffers::get(k_cache, v_cache)?;
        contiguous(&out, "out", 3)?;
        contiguous(&q, "q", 3)?;
        if !caches.contiguous(false) {
            return Err(PyValueError::new_err("k_cache and v_cache must be C-contiguous"));
        }
        if caches.k_shape().len() != 4 {
            return Err(PyValueError::new_err(format!("k_cache must have 4 dimensions, got {}",
                                                     caches.k_shape().len())));
        }
        contiguous(&block_tables, "block_tables", 2)?;
        contiguous(&context_lens, "context_lens", 1)?;
        if out.readonly() {
            return Err(PyValueError::new_err("out must be writable"));
        }
        if overlaps(&out, &q) || caches.overlaps_with(&out) {
            return Err(PyValueError::new_err("out must not share memory with q, k_cache or v_cache"));
        }
        let (qs, ks, ts) = (q.shape(), caches.k_shape(), block_tables.shape());
        if out.shape() != qs {
            return Err(PyValueError::new_err(format!("out shape {:?} differs from q shape {qs:?}", out.shape())));
        }
        if caches.v_shape() != ks {
            return Err(PyValueError::new_err("k_cache and v_cache must have the same shape"));
        }
        if ks[3] != qs[2] {
            return Err(PyValueError::new_err(format!("head_dim of q ({}) and cache ({}) differ", qs[2], ks[3])));
        }
        if ts[0] != qs[0] || context_lens.shape()[0] != qs[0] {
            return Err(PyValueError::new_err("block_tables and context_lens need one row per sequence of q"));
        }
        let shape = DecodeShape {
            num_seqs: qs[0],
            num_heads: qs[1],
            num_kv_heads: ks[1],
            head_dim: qs[2],
            num_blocks: ks[0],
            block_size: ks[2],
            max_blocks_per_seq: ts[1],
        };
        // SAFETY: the PyBuffers pin their exporters until they are dropped at the end of this function,
        // `out` does not overlap the inputs (checked above), lengths come from the exporters, and the
        // cache slices are only read.
        unsafe {
            let out_slice = std::slice::from_raw_parts_mut(out.buf_ptr() as *mut f32, out.item_count());
            let (q, tables, lens) = (slice_of(&q), slice_of(&block_tables), slice_of(&context_lens));
            match &caches {
                KvBuffers::F32(k, v) => decode_with(py, &shape, q, slice_of(k), slice_of(v), tables, lens, out_slice,
                                                    scale, partition_size),
                KvBuffers::F16(k, v) => decode_with(py, &shape, q, slice_of(k), slice_of(v), tables, lens, out_slice,
                                                    scale, partition_size),
            }
        }
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(paged_attention_decode, m)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two sequences, 4 query heads over 2 KV heads, head_dim 4, blocks of 2 tokens.
    fn shape() -> DecodeShape {
        DecodeShape { num_seqs: 2, num_heads: 4, num_kv_heads: 2, head_dim: 4, num_blocks: 3, block_size: 2, max_blocks_per_seq: 2 }
    }

    struct Buffers {
        q: Vec<f32>,
        k: Vec<f32>,
        v: Vec<f32>,
        tables: Vec<i32>,
        lens: Vec<i32>,
    }

    impl Buffers {
        fn new(s: &DecodeShape) -> Buffers {
            let cache = s.num_blocks * s.num_kv_heads * s.block_size * s.head_dim;
            Buffers {
                q: (0..s.num_seqs * s.num_heads * s.head_dim).map(|i| (i % 7) as f32 * 0.25 - 0.5).collect(),
                k: (0..cache).map(|i| (i % 5) as f32 * 0.3 - 0.6).collect(),
                v: (0..cache).map(|i| (i % 11) as f32 * 0.1).collect(),
                // seq 0 uses blocks [2, 0] (3 tokens); seq 1 uses block [1] (1 token), its 2nd entry unused.
                tables: vec![2, 0, 1, -99],
                lens: vec![3, 1],
            }
        }

        fn inputs(&self) -> DecodeInputs<'_, f32> {
            DecodeInputs { q: &self.q, k_cache: &self.k, v_cache: &self.v, block_tables: &self.tables, context_lens: &self.lens }
        }
    }

    fn check(s: &DecodeShape, b: &Buffers) -> Result<(), String> {
        validate(s, &b.inputs(), s.num_seqs * s.num_heads * s.head_dim)
    }

    #[test]
    fn a_consistent_call_passes_and_unused_table_entries_are_not_read() {
        let (s, b) = (shape(), Buffers::new(&shape()));
        assert_eq!(check(&s, &b), Ok(()));
    }

    #[test]
    fn bad_shapes_are_refused() {
        let b = Buffers::new(&shape());
        let err = |s: DecodeShape| check(&s, &b).unwrap_err();
        assert!(err(DecodeShape { num_kv_heads: 3, ..shape() }).contains("multiple of num_kv_heads"));
        assert!(err(DecodeShape { num_kv_heads: 0, ..shape() }).contains("multiple of num_kv_heads"));
        assert!(err(DecodeShape { block_size: 0, ..shape() }).contains("must be positive"));
        assert!(err(DecodeShape { num_seqs: 3, ..shape() }).contains("q and out"));
        assert!(err(DecodeShape { num_blocks: 4, ..shape() }).contains("same shape"));
        let s = shape();
        assert!(validate(&s, &b.inputs(), 5).unwrap_err().contains("q and out"));
        let short = Buffers { tables: vec![2, 0, 1], ..Buffers::new(&s) };
        assert!(check(&s, &short).unwrap_err().contains("block_tables must be"));
    }

    #[test]
    fn table_contents_are_checked_before_any_read() {
        let s = shape();
        let too_long = Buffers { lens: vec![5, 1], ..Buffers::new(&s) };
        assert_eq!(check(&s, &too_long).unwrap_err(), "context_lens[0] = 5 does not fit its block table");
        let negative = Buffers { lens: vec![3, -1], ..Buffers::new(&s) };
        assert!(check(&s, &negative).unwrap_err().contains("context_lens[1] = -1"));
        let outside = Buffers { tables: vec![2, 3, 1, 0], ..Buffers::new(&s) };
        assert_eq!(check(&s, &outside).unwrap_err(), "block_tables[0] holds block 3, outside 0..3");
        let below = Buffers { tables: vec![2, 0, -1, 0], ..Buffers::new(&s) };
        assert!(check(&s, &below).unwrap_err().contains("block_tables[1] holds block -1"));
        let mut out = vec![0f32; 2 * 4 * 4];
        assert!(paged_decode(&s, &outside.inputs(), &mut out, 1.0, 2, Par::Serial).is_err());
        assert!(out.iter().all(|&x| x == 0.0), "nothing written on a refused call");
        let ok = Buffers::new(&s);
        assert_eq!(paged_decode(&s, &ok.inputs(), &mut out, 1.0, 0, Par::Serial).unwrap_err(), "partition_size must be positive");
    }

    #[test]
    fn decode_matches_a_direct_softmax_for_every_partition_size() {
        // head_dim 4 is all remainder for the SIMD key dot, 64 all 16-wide steps, 40 both
        for hd in [4, 40, 64] {
            decode_matches_a_direct_softmax(DecodeShape { head_dim: hd, ..shape() });
        }
    }

    fn decode_matches_a_direct_softmax(s: DecodeShape) {
        let b = Buffers::new(&s);
        let hd = s.head_dim;
        let group = s.num_heads / s.num_kv_heads;
        let mut expected = vec![0f32; s.num_seqs * s.num_heads * hd];
        for seq in 0..s.num_seqs {
            for h in 0..s.num_heads {
                let kvh = h / group;
                let q = &b.q[(seq * s.num_heads + h) * hd..][..hd];
                let rows: Vec<usize> = (0..b.lens[seq] as usize)
                    .map(|t| {
                        let block = b.tables[seq * s.max_blocks_per_seq + t / s.block_size] as usize;
                        ((block * s.num_kv_heads + kvh) * s.block_size + t % s.block_size) * hd
                    })
                    .collect();
                let scores: Vec<f64> = rows
                    .iter()
                    .map(|&r| q.iter().zip(&b.k[r..r + hd]).map(|(x, y)| f64::from(x * y)).sum::<f64>() * 0.5)
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let w: Vec<f64> = scores.iter().map(|x| (x - m).exp()).collect();
                let total: f64 = w.iter().sum();
                for d in 0..hd {
                    let o: f64 = rows.iter().zip(&w).map(|(&r, wi)| wi * f64::from(b.v[r + d])).sum();
                    expected[(seq * s.num_heads + h) * hd + d] = (o / total) as f32;
                }
            }
        }
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        for partition_size in [1, 2, 512] {
            let mut out = vec![f32::NAN; expected.len()];
            paged_decode(&s, &b.inputs(), &mut out, 0.5, partition_size, Par::Serial).unwrap();
            for (got, want) in out.iter().zip(&expected) {
                assert!((got - want).abs() < 1e-5, "head_dim {hd}, partition {partition_size}: {got} vs {want}");
            }
            // a team splits the units over threads; the merge order is fixed, so the bits are the same
            let mut teamed = vec![f32::NAN; expected.len()];
            pool.install(|| crate::team::Team::run(2, |team| {
                paged_decode(&s, &b.inputs(), &mut teamed, 0.5, partition_size, Par::Team(team)).unwrap()
            }));
            assert_eq!(out, teamed, "partition {partition_size}");
        }
    }

    /// A deterministic pseudo-random stream in [-1, 1) (no extra crate for tests).
    fn noise(seed: u64, n: usize) -> Vec<f32> {
        let mut x = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// Direct softmax attention in f64 over whatever the cache rows hold (read as f32).
    fn direct(s: &DecodeShape, q: &[f32], k: &[f32], v: &[f32], tables: &[i32], lens: &[i32], scale: f64) -> Vec<f32> {
        let (hd, group) = (s.head_dim, s.num_heads / s.num_kv_heads);
        let mut out = vec![0f32; q.len()];
        for seq in 0..s.num_seqs {
            for h in 0..s.num_heads {
                let qh = &q[(seq * s.num_heads + h) * hd..][..hd];
                let rows: Vec<usize> = (0..lens[seq] as usize)
                    .map(|t| {
                        let block = tables[seq * s.max_blocks_per_seq + t / s.block_size] as usize;
                        ((block * s.num_kv_heads + h / group) * s.block_size + t % s.block_size) * hd
                    })
                    .collect();
                let sc: Vec<f64> = rows.iter()
                    .map(|&r| qh.iter().zip(&k[r..r + hd]).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum::<f64>() * scale)
                    .collect();
                let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let w: Vec<f64> = sc.iter().map(|x| (x - m).exp()).collect();
                let total: f64 = w.iter().sum();
                for d in 0..hd {
                    let o: f64 = rows.iter().zip(&w).map(|(&r, wi)| wi * f64::from(v[r + d])).sum();
                    out[(seq * s.num_heads + h) * hd + d] = (o / total) as f32;
                }
            }
        }
        out
    }

    #[test]
    fn an_f16_cache_gives_the_f32_kernel_on_its_values_and_stays_within_f16_rounding_of_f32() {
        // SmolLM2's geometry (9 query heads over 3 KV heads, head_dim 64) and one not a multiple of the
        // 32-wide tile (head_dim 40: the row-at-a-time path), over several partitions and blocks.
        for (heads, kv_heads, hd) in [(9, 3, 64), (4, 2, 40)] {
            let s = DecodeShape { num_seqs: 3, num_heads: heads, num_kv_heads: kv_heads, head_dim: hd,
                                  num_blocks: 40, block_size: 16, max_blocks_per_seq: 12 };
            let cache = s.num_blocks * kv_heads * s.block_size * hd;
            let q = noise(1, s.num_seqs * heads * hd);
            let k32: Vec<f32> = noise(2, cache).iter().map(|x| x * 2.0).collect();
            let v32 = noise(3, cache);
            let k16: Vec<F16> = k32.iter().map(|&x| F16::from_f32(x)).collect();
            let v16: Vec<F16> = v32.iter().map(|&x| F16::from_f32(x)).collect();
            let tables: Vec<i32> = (0..s.num_seqs * s.max_blocks_per_seq).map(|i| ((i * 7 + 3) % 40) as i32).collect();
            let lens = vec![190, 1, 77];
            let scale = 1.0 / (hd as f32).sqrt();
            let widened = |h: &[F16]| h.iter().map(|x| x.to_f32()).collect::<Vec<f32>>();
            let on_f16_values = direct(&s, &q, &widened(&k16), &widened(&v16), &tables, &lens, f64::from(scale));
            let on_f32 = direct(&s, &q, &k32, &v32, &tables, &lens, f64::from(scale));
            let inputs = DecodeInputs { q: &q, k_cache: &k16[..], v_cache: &v16[..], block_tables: &tables,
                                        context_lens: &lens };
            let simd = [false, crate::half::has_f16c()];
            for (simd, partition_size) in simd.iter().flat_map(|&m| [(m, 32), (m, 512)]) {
                let mut out = vec![f32::NAN; q.len()];
                decode_on(&s, &inputs, &mut out, scale, partition_size, Par::Serial, simd).unwrap();
                for ((got, want), exact) in out.iter().zip(&on_f16_values).zip(&on_f32) {
                    assert!((got - want).abs() < 1e-5, "simd {simd}, partition {partition_size}: {got} vs {want}");
                    // K and V each carry a relative error of at most 2^-11; outputs are weighted means of V
                    assert!((got - exact).abs() < 4e-3, "f16 {got} vs f32 {exact}");
                }
            }
            let max_diff = on_f16_values.iter().zip(&on_f32).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(max_diff > 0.0, "f16 rounding really happened");
        }
    }

    #[test]
    fn storing_into_an_f16_cache_rounds_to_nearest_even() {
        let src = [1.0 + 1.0 / 2048.0, 1.0 + 3.0 / 2048.0, -2.5, 70_000.0, 0.1, 1.0, 2.0, 3.0, 4.0];
        let mut dst = [F16(0); 9];
        F16::store(&mut dst, &src);
        assert_eq!(&dst[..4], &[F16(0x3c00), F16(0x3c02), F16(0xc100), F16(0x7c00)]);
        assert_eq!(dst[4].to_f32(), 0.099_975_586);
        let mut same = [0f32; 9];
        f32::store(&mut same, &src);
        assert_eq!(same, src);
    }
}
