//! `pyagent._rust`: the CPU-bound core of PyAgent.
//!
//! Each feature lives in its own module and registers its Python functions and result classes
//! through `register`, so features can grow without touching each other. Every entry point runs
//! inside `errors::guarded`, so a panic reaches Python as `RustPanicError` (an `Exception`).
use pyo3::prelude::*;

mod errors;
mod team;
#[cfg(test)]
mod testdir;
mod walk;
// -- metrics
pub mod metrics;

// -- replace and diff
mod diff;
mod replace;

// -- attention kernels
mod attention;
mod half;

// -- quantized weight kernels
mod quant;

#[pymodule]
fn _rust(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(m)?;
    walk::register(m)?;
    // -- metrics
    metrics::register(m)?;

    // -- replace and diff
    replace::register(m)?;

    // -- attention kernels
    attention::register(m)?;

    // -- quantized weight kernels
    quant::register(m)?;

    Ok(())
}
