//! Quantized weights (GGML block formats) kept quantized: decoders, mat-mul kernels, Python bindings.
use pyo3::buffer::{Element, PyBuffer};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod decoder;
pub mod formats;
pub mod int8;
#[cfg(target_arch = "x86_64")]
mod int8_avx512;
pub mod matmul;

use formats::QType;
use int8::Isa;
use matmul::{Mode, QWeight};

fn qtype(id: u32) -> PyResult<QType> {
    QType::from_id(id).ok_or_else(|| PyValueError::new_err(format!("ggml type {id} has no quantized kernel")))
}

fn contiguous<T: Element>(buf: &PyBuffer<T>, name: &str) -> PyResult<()> {
    if !buf.is_c_contiguous() {
        return Err(PyValueError::new_err(format!("{name} must be C-contiguous")));
    }
    Ok(())
}

/// # Safety
/// The buffer must stay alive (and unmodified by others) while the slice is used.
unsafe fn slice_of<T: Element>(buf: &PyBuffer<T>) -> &[T] {
    std::slice::from_raw_parts(buf.buf_ptr() as *const T, buf.item_count())
}

/// The writable memory of `out` as pointer and length (the caller builds the slice under its own SAFETY).
fn writable<T: Element>(buf: &PyBuffer<T>) -> PyResult<(*mut T, usize)> {
    if buf.readonly() {
        return Err(PyValueError::new_err("out must be writable"));
    }
    Ok((buf.buf_ptr() as *mut T, buf.item_count()))
}

/// The int8 kernels named `name` ("auto": the fastest this CPU runs), or an error saying what is missing.
pub(crate) fn int8_isa(name: &str) -> PyResult<Isa> {
    if name == "auto" {
        return Ok(Isa::best());
    }
    let all = Isa::all();
    let Some(&(_, isa)) = all.iter().find(|(n, _)| *n == name) else {
        let names: Vec<&str> = all.iter().map(|(n, _)| *n).collect();
        return Err(PyValueError::new_err(format!("unknown int8 kernels {name:?} (auto, {})", names.join(", "))));
    };
    if !isa.available() {
        return Err(PyValueError::new_err(format!("the {name} int8 kernels need a CPU with {name}; this one lacks it")));
    }
    Ok(isa)
}

/// `out[n, sum(rows)] = x[n, cols] @ concat(weights)^T`, weights as raw GGML blocks (uint8 buffers).
/// `portable` forces the float kernels' non-SIMD build; `int8` names int8-activation kernels (see
/// `int8_isa`) for the formats that have them.
#[pyfunction]
#[pyo3(signature = (out, x, weights, qtypes, rows, portable = false, int8 = None))]
#[allow(clippy::too_many_arguments)]
fn quant_matmul(py: Python<'_>, out: PyBuffer<f32>, x: PyBuffer<f32>, weights: Vec<PyBuffer<u8>>,
                qtypes: Vec<u32>, rows: Vec<usize>, portable: bool, int8: Option<&str>) -> PyResult<()> {
    crate::errors::guarded(|| {
        let mode = match int8 {
            Some(name) => Mode::Int8(int8_isa(name)?),
            None => Mode::F32 { simd: !portable && matmul::has_avx2() },
        };
        matmul_entry(py, out, x, weights, qtypes, rows, mode)
    })
}

fn matmul_entry(py: Python<'_>, out: PyBuffer<f32>, x: PyBuffer<f32>, weights: Vec<PyBuffer<u8>>,
                qtypes: Vec<u32>, rows: Vec<usize>, mode: Mode) -> PyResult<()> {
    contiguous(&out, "out")?;
    contiguous(&x, "x")?;
    if weights.len() != qtypes.len() || weights.len() != rows.len() || weights.is_empty() {
        return Err(PyValueError::new_err("weights, qtypes and rows need one entry each per matrix"));
    }
    if x.dimensions() != 2 {
        return Err(PyValueError::new_err("x must be 2-dimensional [n, cols]"));
    }
    let (n, cols) = (x.shape()[0], x.shape()[1]);
    for w in &weights {
        contiguous(w, "weights")?;
    }
    let types = qtypes.iter().map(|&t| qtype(t)).collect::<PyResult<Vec<_>>>()?;
    let out_start = out.buf_ptr() as usize;
    let out_end = out_start + out.len_bytes();
    let inputs = weights.iter().map(|w| (w.buf_ptr() as usize, w.len_bytes()))
        .chain(std::iter::once((x.buf_ptr() as usize, x.len_bytes())));
    for (s, len) in inputs {
        if s < out_end && out_start < s + len {
            return Err(PyValueError::new_err("out must not share memory with x or the weights"));
        }
    }
    // SAFETY: the PyBuffers pin their exporters until this function returns; `out` is writable and
    // does not overlap x or a weight.
    let (out_ptr, out_len) = writable(&out)?;
    let (xs, os, ws) = unsafe {
        let ws: Vec<QWeight<'_>> = weights.iter().zip(&types).zip(&rows)
            .map(|((w, &t), &r)| QWeight { data: slice_of(w), qtype: t, rows: r }).collect();
        (slice_of(&x), std::slice::from_raw_parts_mut(out_ptr, out_len), ws)
    };
    py.detach(|| matmul::matmul(&ws, xs, n, cols, os, mode)).map_err(PyValueError::new_err)
}

/// Decode a quantized matrix (or only rows `ids`) into float32 `out`.
#[pyfunction]
#[pyo3(signature = (out, weight, qtype_id, rows, ids = None))]
fn quant_dequantize(py: Python<'_>, out: PyBuffer<f32>, weight: PyBuffer<u8>, qtype_id: u32, rows: usize,
                    ids: Option<PyBuffer<i64>>) -> PyResult<()> {
    crate::errors::guarded(|| dequantize_entry(py, out, weight, qtype_id, rows, ids))
}

fn dequantize_entry(py: Python<'_>, out: PyBuffer<f32>, weight: PyBuffer<u8>, qtype_id: u32, rows: usize,
                    ids: Option<PyBuffer<i64>>) -> PyResult<()> {
    contiguous(&out, "out")?;
    contiguous(&weight, "weight")?;
    if let Some(i) = &ids {
        contiguous(i, "ids")?;
    }
    let t = qtype(qtype_id)?;
    let cols = *out.shape().last().unwrap_or(&0);
    let (out_ptr, out_len) = writable(&out)?;
    // SAFETY: as in quant_matmul.
    let (w, o, i) = unsafe {
        (QWeight { data: slice_of(&weight), qtype: t, rows }, std::slice::from_raw_parts_mut(out_ptr, out_len),
         ids.as_ref().map(|b| slice_of(b)))
    };
    py.detach(|| matmul::dequantize(&w, cols, i, o)).map_err(PyValueError::new_err)
}

/// Quantize float32 rows `x` ([rows, cols], cols a multiple of 32) into Q8_0 blocks in `out` (uint8).
#[pyfunction]
fn quant_quantize_q8_0(py: Python<'_>, out: PyBuffer<u8>, x: PyBuffer<f32>) -> PyResult<()> {
    crate::errors::guarded(|| {
        contiguous(&out, "out")?;
        contiguous(&x, "x")?;
        let cols = *x.shape().last().unwrap_or(&0);
        let rows = x.item_count().checked_div(cols).unwrap_or(0);
        let rb = matmul::row_bytes(QType::Q8_0, cols).map_err(PyValueError::new_err)?;
        if out.item_count() != rows * rb {
            return Err(PyValueError::new_err(format!("out must hold {} bytes ({rows} rows of {rb})", rows * rb)));
        }
        let (out_ptr, out_len) = writable(&out)?;
        // SAFETY: as in quant_matmul; `out` (uint8) and `x` (float32) are distinct exporters' buffers.
        let (xs, os) = unsafe { (slice_of(&x), std::slice::from_raw_parts_mut(out_ptr, out_len)) };
        py.detach(|| {
            use rayon::prelude::*;
            os.par_chunks_mut(34).zip(xs.par_chunks(32)).for_each(|(b, v)| formats::quantize_q8_0(v, b));
        });
        Ok(())
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(quant_quantize_q8_0, m)?)?;
    m.add_class::<decoder::DecoderStack>()?;
    m.add_function(wrap_pyfunction!(quant_matmul, m)?)?;
    m.add_function(wrap_pyfunction!(quant_dequantize, m)?)?;
    Ok(())
}
