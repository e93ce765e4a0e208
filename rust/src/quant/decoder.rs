//! A whole decode step (one new token for each of `n` sequences) through every decoder layer, in Rust.
//!
//! Decoding a small model is a few hundred tiny operations per token (norms, rotary embedding, the K/V
//! write, attention, residuals); done from Python, their call overhead costs more than the matrix
//! products. `DecoderStack` holds the layers' weights (views of the memory-mapped file, pinned through
//! the buffer protocol, never copied) and runs the step with the GIL released. The arithmetic is the
//! Python forward pass's (`pyagent.inference.model`), with the same kernels for the products.
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use super::formats::QType;
use super::int8::QActs;
use super::matmul::{checked, has_avx2, matmul_checked, matmul_then, Epilogue, Mode, OutPtr, QWeight};
use super::qtype;
use crate::attention::{paged_decode, DecodeInputs, DecodeShape, KvBuffers, KvElem, KvSlices};
use crate::team::{Par, Team};

/// One stacked projection: its matrices' buffers, types and row counts, and an optional bias.
struct Proj {
    data: Vec<PyBuffer<u8>>,
    types: Vec<QType>,
    rows: Vec<usize>,
    cols: usize,
    bias: Option<PyBuffer<f32>>,
}

struct Layer {
    input_norm: PyBuffer<f32>,
    post_norm: PyBuffer<f32>,
    qkv: Proj,
    o: Proj,
    gate_up: Proj,
    down: Proj,
}

/// The decoder layers of one model, ready for `forward`.
#[pyclass(module = "pyagent._rust")]
pub struct DecoderStack {
    layers: Vec<Layer>,
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    inter: usize,
    eps: f32,
    mode: Mode,
    /// The final norm and the output projection, when the step also computes logits.
    head: Option<(PyBuffer<f32>, Proj)>,
}

/// A projection as slices, for use without the GIL.
struct ProjView<'a> {
    ws: Vec<(QWeight<'a>, usize)>,
    cols: usize,
    bias: Option<&'a [f32]>,
}

/// # Safety
/// The buffer must stay alive (and unmodified by others) while the slice is used.
unsafe fn view<T: pyo3::buffer::Element>(b: &PyBuffer<T>) -> &[T] {
    std::slice::from_raw_parts(b.buf_ptr() as *const T, b.item_count())
}

fn vector(b: &PyBuffer<f32>, len: usize, what: &str) -> PyResult<()> {
    if !b.is_c_contiguous() || b.item_count() != len {
        return Err(PyValueError::new_err(format!("{what} must be a contiguous float32 vector of {len}")));
    }
    Ok(())
}

impl Proj {
    fn new(spec: ProjSpec, cols: usize, rows: usize, what: &str) -> PyResult<Proj> {
        let (data, ids, row_counts, bias) = spec;
        if data.is_empty() || data.len() != ids.len() || data.len() != row_counts.len() {
            return Err(PyValueError::new_err(format!("{what}: one type and row count per matrix")));
        }
        if row_counts.iter().sum::<usize>() != rows {
            return Err(PyValueError::new_err(format!("{what}: {} rows in all, expected {rows}",
                                                     row_counts.iter().sum::<usize>())));
        }
        if data.iter().any(|d| !d.is_c_contiguous()) {
            return Err(PyValueError::new_err(format!("{what}: weights must be C-contiguous")));
        }
        if let Some(b) = &bias {
            vector(b, rows, &format!("{what} bias"))?;
        }
        let types = ids.iter().map(|&t| qtype(t)).collect::<PyResult<Vec<_>>>()?;
        let p = Proj { data, types, rows: row_counts, cols, bias };
        p.view().map_err(|e| PyValueError::new_err(format!("{what}: {e}")))?;
        Ok(p)
    }

    fn view(&self) -> Result<ProjView<'_>, String> {
        // SAFETY: the buffers are owned by `self` and pin their exporters for as long as it lives.
        let ws: Vec<QWeight<'_>> = self.data.iter().zip(&self.types).zip(&self.rows)
            .map(|((d, &t), &r)| QWeight { data: unsafe { view(d) }, qtype: t, rows: r }).collect();
        Ok(ProjView { ws: checked(&ws, self.cols)?, cols: self.cols,
                      bias: self.bias.as_ref().map(|b| unsafe { view(b) }) })
    }
}

type ProjSpec = (Vec<PyBuffer<u8>>, Vec<u32>, Vec<usize>, Option<PyBuffer<f32>>);

#[pymethods]
impl DecoderStack {
    /// `int8` names the int8-activation kernels to use ("auto" for the fastest; see `quant_matmul`), or
    /// None for the float kernels (exact up to float rounding).
    #[new]
    #[pyo3(signature = (hidden, heads, kv_heads, head_dim, intermediate, eps, int8 = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(hidden: usize, heads: usize, kv_heads: usize, head_dim: usize, intermediate: usize, eps: f32,
           int8: Option<&str>) -> PyResult<DecoderStack> {
        if kv_heads == 0 || !heads.is_multiple_of(kv_heads) || !head_dim.is_multiple_of(2) || hidden == 0 {
            return Err(PyValueError::new_err("heads must be a multiple of kv_heads, head_dim even"));
        }
        let mode = match int8 {
            Some(name) => Mode::Int8(super::int8_isa(name)?),
            None => Mode::F32 { simd: has_avx2() },
        };
        Ok(DecoderStack { layers: Vec::new(), hidden, heads, kv_heads, head_dim, inter: intermediate, eps, mode,
                          head: None })
    }

    /// Append a layer: norms and the four projections as `(weights, ggml types, rows, bias or None)`.
    fn add_layer(&mut self, input_norm: PyBuffer<f32>, post_norm: PyBuffer<f32>, qkv: ProjSpec, o: ProjSpec,
                 gate_up: ProjSpec, down: ProjSpec) -> PyResult<()> {
        let (h, hd) = (self.hidden, self.head_dim);
        vector(&input_norm, h, "input norm")?;
        vector(&post_norm, h, "post-attention norm")?;
        let layer = Layer {
            input_norm,
            post_norm,
            qkv: Proj::new(qkv, h, (self.heads + 2 * self.kv_heads) * hd, "qkv")?,
            o: Proj::new(o, self.heads * hd, h, "o")?,
            gate_up: Proj::new(gate_up, h, 2 * self.inter, "gate_up")?,
            down: Proj::new(down, self.inter, h, "down")?,
        };
        self.layers.push(layer);
        Ok(())
    }

    /// Set the final norm and the output projection (`vocab` rows), so that `forward` can return logits in
    /// the same call (one thread team for the whole step, instead of waking the pool once more).
    fn set_head(&mut self, norm: PyBuffer<f32>, head: ProjSpec, vocab: usize) -> PyResult<()> {
        vector(&norm, self.hidden, "final norm")?;
        self.head = Some((norm, Proj::new(head, self.hidden, vocab, "output head")?));
        Ok(())
    }

    /// Run every layer on `x` ([n, hidden], updated in place): token `i` sits at `positions[i]`, its K/V
    /// go to flat slot `slots[i]` of each layer's cache ([layers, blocks, kv_heads, block_size, head_dim]),
    /// and it attends to the first `context_lens[i]` positions through `block_tables[i]`. The caches are
    /// float32 or float16 (both the same).
    ///
    /// With `logits` ([len(logit_rows), vocab]) and `logit_rows` (indices into the tokens), the final norm
    /// and the head (see `set_head`) run on those tokens' hidden states into `logits`.
    #[pyo3(signature = (x, positions, slots, block_tables, context_lens, k_cache, v_cache, cos, sin, scale,
                        partition_size = 512, logits = None, logit_rows = None))]
    #[allow(clippy::too_many_arguments)]
    fn forward(&self, py: Python<'_>, x: PyBuffer<f32>, positions: PyBuffer<i64>, slots: PyBuffer<i64>,
               block_tables: PyBuffer<i32>, context_lens: PyBuffer<i32>, k_cache: &Bound<'_, PyAny>,
               v_cache: &Bound<'_, PyAny>, cos: PyBuffer<f32>, sin: PyBuffer<f32>, scale: f32,
               partition_size: usize, logits: Option<PyBuffer<f32>>, logit_rows: Option<PyBuffer<i64>>)
               -> PyResult<()> {
        crate::errors::guarded(|| {
            let caches = KvBuffers::get(k_cache, v_cache)?;
            for (ok, what) in [(x.is_c_contiguous() && !x.readonly(), "x"),
                               (caches.contiguous(true), "k_cache and v_cache"),
                               (positions.is_c_contiguous() && slots.is_c_contiguous(), "positions and slots"),
                               (block_tables.is_c_contiguous() && context_lens.is_c_contiguous(), "tables"),
                               (cos.is_c_contiguous() && sin.is_c_contiguous(), "cos and sin")] {
                if !ok {
                    return Err(PyValueError::new_err(format!("{what} must be C-contiguous (and writable)")));
                }
            }
            let n = positions.item_count();
            let ks = caches.k_shape().to_vec();
            let (hd, nkv) = (self.head_dim, self.kv_heads);
            if x.item_count() != n * self.hidden || slots.item_count() != n || context_lens.item_count() != n {
                return Err(PyValueError::new_err("x, positions, slots and context_lens need one row per token"));
            }
            if ks.len() != 5 || ks[0] != self.layers.len() || ks[2] != nkv || ks[4] != hd
                || caches.v_shape() != &ks[..] {
                return Err(PyValueError::new_err(format!(
                    "k_cache and v_cache must be [{}, blocks, {nkv}, block_size, {hd}]", self.layers.len())));
            }
            if block_tables.dimensions() != 2 || block_tables.shape()[0] != n {
                return Err(PyValueError::new_err("block_tables must be [tokens, max_blocks]"));
            }
            if cos.dimensions() != 2 || cos.shape()[1] != hd || sin.shape() != cos.shape() {
                return Err(PyValueError::new_err(format!("cos and sin must be [positions, {hd}]")));
            }
            let (num_blocks, block_size, max_pos) = (ks[1], ks[3], cos.shape()[0]);
            // SAFETY: the PyBuffers pin their exporters until this function returns; the writable ones
            // (x and the caches) are distinct arrays from every input read here.
            let (pos, slot) = unsafe { (view(&positions), view(&slots)) };
            if let Some(p) = pos.iter().find(|&&p| p < 0 || p as usize >= max_pos) {
                return Err(PyValueError::new_err(format!("position {p} is outside the rotary table (0..{max_pos})")));
            }
            if let Some(s) = slot.iter().find(|&&s| s < 0 || s as usize >= num_blocks * block_size) {
                return Err(PyValueError::new_err(format!("slot {s} is outside the cache")));
            }
            let shape = DecodeShape { num_seqs: n, num_heads: self.heads, num_kv_heads: nkv, head_dim: hd,
                                      num_blocks, block_size, max_blocks_per_seq: block_tables.shape()[1] };
            let layers = self.layers.iter().map(|l| {
                Ok((unsafe { view(&l.input_norm) }, unsafe { view(&l.post_norm) }, l.qkv.view()?, l.o.view()?,
                    l.gate_up.view()?, l.down.view()?))
            }).collect::<Result<Vec<_>, String>>().map_err(PyValueError::new_err)?;
            let step = Step {
                hidden: self.hidden, heads: self.heads, kv_heads: nkv, head_dim: hd, inter: self.inter,
                eps: self.eps, n, pos, slot,
                tables: unsafe { view(&block_tables) }, ctx: unsafe { view(&context_lens) },
                cos: unsafe { view(&cos) }, sin: unsafe { view(&sin) }, scale, partition_size, shape,
                mode: self.mode,
            };
            let head = match (&logits, &logit_rows) {
                (None, None) => None,
                (Some(out), Some(rows)) => {
                    let Some((norm, proj)) = &self.head else {
                        return Err(PyValueError::new_err("logits asked for, but no head was set (set_head)"));
                    };
                    let vocab = proj.rows.iter().sum::<usize>();
                    if !out.is_c_contiguous() || out.readonly() || !rows.is_c_contiguous()
                        || out.item_count() != rows.item_count() * vocab {
                        return Err(PyValueError::new_err(format!(
                            "logits must be a writable contiguous [len(logit_rows), {vocab}] float32 array")));
                    }
                    let rows = unsafe { view(rows) };
                    if let Some(r) = rows.iter().find(|&&r| r < 0 || r as usize >= n) {
                        return Err(PyValueError::new_err(format!("logit row {r} is not a token of this step (0..{n})")));
                    }
                    // SAFETY: `out` is a writable buffer distinct from every input (a fresh array from the caller).
                    let out = unsafe { std::slice::from_raw_parts_mut(out.buf_ptr() as *mut f32, out.item_count()) };
                    Some((unsafe { view(norm) }, proj.view().map_err(PyValueError::new_err)?, rows, out))
                }
                _ => return Err(PyValueError::new_err("logits and logit_rows go together")),
            };
            let layer_floats = num_blocks * nkv * block_size * hd;
            let (xs, kv) = unsafe {
                (std::slice::from_raw_parts_mut(x.buf_ptr() as *mut f32, x.item_count()), caches.slices_mut())
            };
            // The whole step runs on one thread team (see `team`): its helpers stay awake between products.
            py.detach(|| Team::run(rayon::current_num_threads(), |team| {
                match kv {
                    KvSlices::F32(kc, vc) => step.run(&layers, xs, kc, vc, layer_floats, Par::Team(team))?,
                    KvSlices::F16(kc, vc) => step.run(&layers, xs, kc, vc, layer_floats, Par::Team(team))?,
                }
                if let Some((norm, proj, rows, out)) = head {
                    step.head(xs, norm, &proj, rows, out, Par::Team(team));
                }
                Ok::<(), String>(())
            })).map_err(PyValueError::new_err)
        })
    }

    /// Whether every layer's products take int8 activations (an int8 mode, and weight types with int8
    /// kernels; 16-bit and float rows keep float ones).
    #[getter]
    fn int8_products(&self) -> bool {
        matches!(self.mode, Mode::Int8(_))
            && self.layers.iter().all(|l| [&l.qkv, &l.o, &l.gate_up, &l.down].iter()
                .all(|p| p.types.iter().all(|&t| super::int8::supports(t))))
    }

    fn __len__(&self) -> usize {
        self.layers.len()
    }
}

type LayerView<'a> = (&'a [f32], &'a [f32], ProjView<'a>, ProjView<'a>, ProjView<'a>, ProjView<'a>);

/// The per-call inputs of one step.
struct Step<'a> {
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    inter: usize,
    eps: f32,
    n: usize,
    pos: &'a [i64],
    slot: &'a [i64],
    tables: &'a [i32],
    ctx: &'a [i32],
    cos: &'a [f32],
    sin: &'a [f32],
    scale: f32,
    partition_size: usize,
    shape: DecodeShape,
    mode: Mode,
}

/// `out = weight * (x / sqrt(mean(x^2) + eps))` per row, as `model.rms_norm` computes it.
fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let h = weight.len();
    for (xr, orow) in x.chunks_exact(h).zip(out.chunks_exact_mut(h)) {
        let ss: f64 = xr.iter().map(|&v| (v * v) as f64).sum();
        let denom = ((ss / h as f64) as f32 + eps).sqrt();
        for ((o, &v), &w) in orow.iter_mut().zip(xr).zip(weight) {
            *o = w * (v / denom);
        }
    }
}

/// `act = silu(gate + b) * (up + b)` per token, each task's columns as soon as they are computed (the
/// products' own tasks; see `matmul_then`): `gu` receives each token's gate then up halves (`inter` each).
#[allow(clippy::too_many_arguments)]
fn gated(p: &ProjView<'_>, x: &[f32], n: usize, gu: &mut [f32], act: &mut [f32], inter: usize, mode: Mode,
         qa: &mut QActs, par: Par<'_>) {
    let (act_len, out) = (act.len(), OutPtr(act.as_mut_ptr()));
    assert_eq!(act_len, n * inter);
    let bias = p.bias;
    let f = |gu: *const f32, first: usize, last: usize| {
        let len = last - first;
        for t in 0..n {
            // SAFETY: `gu` is [n, 2 * inter] and `act` [n, inter]; this task's columns `first..last` and
            // `inter + first..inter + last` are written, and no other task reads or writes them.
            let (g, u, o) = unsafe {
                (std::slice::from_raw_parts(gu.add(2 * t * inter + first), len),
                 std::slice::from_raw_parts(gu.add((2 * t + 1) * inter + first), len),
                 std::slice::from_raw_parts_mut(out.get().add(t * inter + first), len))
            };
            match bias {
                Some(b) => silu_mul(g, u, Some((&b[first..last], &b[inter + first..inter + last])), o),
                None => silu_mul(g, u, None, o),
            }
        }
    };
    matmul_then(&p.ws, x, n, p.cols, gu, mode, par, qa, Some(Epilogue { half: inter, f: &f }));
}

/// `o = silu(g + bg) * (u + bu)`, with `exp` of a non-positive argument only (`exp(-|g|)`), written
/// with plain arithmetic so that the loop vectorizes.
#[inline(always)]
fn silu_mul(g: &[f32], u: &[f32], bias: Option<(&[f32], &[f32])>, o: &mut [f32]) {
    use crate::attention::{exp_nonpositive, Plain};
    let one = |g: f32, u: f32| {
        let e = exp_nonpositive::<Plain>(-g.abs());
        let sig = if g >= 0.0 { 1.0 / (1.0 + e) } else { e / (1.0 + e) };
        g * sig * u
    };
    match bias {
        Some((bg, bu)) => {
            for k in 0..o.len() {
                o[k] = one(g[k] + bg[k], u[k] + bu[k]);
            }
        }
        None => {
            for k in 0..o.len() {
                o[k] = one(g[k], u[k]);
            }
        }
    }
}

fn project(p: &ProjView<'_>, x: &[f32], n: usize, out: &mut [f32], mode: Mode, qa: &mut QActs, par: Par<'_>) {
    matmul_checked(&p.ws, x, n, p.cols, out, mode, par, qa);
    if let Some(b) = p.bias {
        for row in out.chunks_exact_mut(b.len()) {
            row.iter_mut().zip(b).for_each(|(o, &v)| *o += v);
        }
    }
}

impl Step<'_> {
    /// Logits of the tokens `rows`: the final norm, then the head.
    fn head(&self, x: &[f32], norm: &[f32], head: &ProjView<'_>, rows: &[i64], out: &mut [f32], par: Par<'_>) {
        let h = self.hidden;
        let picked: Vec<f32> = rows.iter().flat_map(|&r| &x[r as usize * h..(r as usize + 1) * h]).copied().collect();
        let mut normed = vec![0f32; picked.len()];
        rms_norm(&picked, norm, self.eps, &mut normed);
        project(head, &normed, rows.len(), out, self.mode, &mut QActs::default(), par);
    }

    /// Rotate-half rotary embedding of one head in place (`x*cos + rotate_half(x)*sin`).
    fn rope(&self, v: &mut [f32], pos: usize) {
        let hd = self.head_dim;
        let half = hd / 2;
        let (c, s) = (&self.cos[pos * hd..(pos + 1) * hd], &self.sin[pos * hd..(pos + 1) * hd]);
        for i in 0..half {
            let (a, b) = (v[i], v[i + half]);
            v[i] = a * c[i] + (-b) * s[i];
            v[i + half] = b * c[i + half] + a * s[i + half];
        }
    }

    fn run<E: KvElem>(&self, layers: &[LayerView<'_>], x: &mut [f32], k_cache: &mut [E], v_cache: &mut [E],
                      layer_floats: usize, par: Par<'_>) -> Result<(), String> {
        let (n, h, hd, nh, nkv) = (self.n, self.hidden, self.head_dim, self.heads, self.kv_heads);
        let qkv_dim = (nh + 2 * nkv) * hd;
        let mode = self.mode;
        let mut qa = QActs::default();
        let mut hbuf = vec![0f32; n * h];
        let mut qkv = vec![0f32; n * qkv_dim];
        let mut q = vec![0f32; n * nh * hd];
        let mut attn = vec![0f32; n * nh * hd];
        let mut o = vec![0f32; n * h];
        let mut gu = vec![0f32; n * 2 * self.inter];
        let mut act = vec![0f32; n * self.inter];
        let bs = self.shape.block_size;
        for (li, (input_norm, post_norm, p_qkv, p_o, p_gu, p_down)) in layers.iter().enumerate() {
            rms_norm(x, input_norm, self.eps, &mut hbuf);
            project(p_qkv, &hbuf, n, &mut qkv, mode, &mut qa, par);
            let (kl, vl) = (&mut k_cache[li * layer_floats..(li + 1) * layer_floats],
                            &mut v_cache[li * layer_floats..(li + 1) * layer_floats]);
            for t in 0..n {
                let row = &mut qkv[t * qkv_dim..(t + 1) * qkv_dim];
                let pos = self.pos[t] as usize;
                for head in row[..(nh + nkv) * hd].chunks_exact_mut(hd) {
                    self.rope(head, pos);
                }
                q[t * nh * hd..(t + 1) * nh * hd].copy_from_slice(&row[..nh * hd]);
                let (block, off) = (self.slot[t] as usize / bs, self.slot[t] as usize % bs);
                for kh in 0..nkv {
                    let at = ((block * nkv + kh) * bs + off) * hd;
                    E::store(&mut kl[at..at + hd], &row[(nh + kh) * hd..(nh + kh + 1) * hd]);
                    E::store(&mut vl[at..at + hd], &row[(nh + nkv + kh) * hd..(nh + nkv + kh + 1) * hd]);
                }
            }
            let inputs = DecodeInputs { q: &q, k_cache: kl, v_cache: vl, block_tables: self.tables,
                                        context_lens: self.ctx };
            paged_decode(&self.shape, &inputs, &mut attn, self.scale, self.partition_size, par)?;
            project(p_o, &attn, n, &mut o, mode, &mut qa, par);
            x.iter_mut().zip(&o).for_each(|(a, &b)| *a += b);
            rms_norm(x, post_norm, self.eps, &mut hbuf);
            gated(p_gu, &hbuf, n, &mut gu, &mut act, self.inter, mode, &mut qa, par);
            project(p_down, &act, n, &mut o, mode, &mut qa, par);
            x.iter_mut().zip(&o).for_each(|(a, &b)| *a += b);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::silu_mul;

    #[test]
    fn silu_mul_matches_the_direct_formula_across_the_range_with_and_without_bias() {
        let g: Vec<f32> = (-400..=400).map(|i| i as f32 * 0.25).chain([1e-30, -1e-30, 0.0, -0.0, 87.0, -87.0, 150.0, -150.0])
            .collect();
        let u: Vec<f32> = (0..g.len()).map(|i| 1.5 - (i % 7) as f32 * 0.5).collect();
        let (bg, bu): (Vec<f32>, Vec<f32>) = (0..g.len()).map(|i| ((i % 5) as f32 * 0.1 - 0.2, (i % 3) as f32 * 0.3)).unzip();
        let direct = |g: f32, u: f32| (f64::from(g) / (1.0 + (-f64::from(g)).exp()) * f64::from(u)) as f32;
        // relative error of a few float roundings; below g = -87 the exponential is clamped (its value is
        // under 1e-37 there), so tiny results are compared absolutely
        let close = |got: f32, want: f32| (got - want).abs() <= 4e-7 * want.abs() + 1e-30;
        let mut o = vec![f32::NAN; g.len()];
        silu_mul(&g, &u, None, &mut o);
        for k in 0..g.len() {
            let want = direct(g[k], u[k]);
            assert!(close(o[k], want), "g {} u {}: {} vs {want}", g[k], u[k], o[k]);
        }
        silu_mul(&g, &u, Some((&bg, &bu)), &mut o);
        for k in 0..g.len() {
            let want = direct(g[k] + bg[k], u[k] + bu[k]);
            assert!(close(o[k], want), "biased g {}: {} vs {want}", g[k], o[k]);
        }
    }
}
