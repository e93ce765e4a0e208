//! `pyagent._rust`: the CPU-bound core of PyAgent.
//!
//! Each feature lives in its own module and registers its Python functions through `register`,
//! so features can grow without touching each other.
use pyo3::prelude::*;

mod walk;
// -- metrics
pub mod metrics;

// -- replace and diff
mod diff;
mod replace;

// -- attention kernels
mod attention;

// -- quantized weight kernels
mod quant;


#[pymodule]
fn _rust(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    walk::register(m)?;
    // -- metrics
    metrics::register(m)?;

    // -- replace and diff
    diff::register(m)?;
    replace::register(m)?;

    // -- attention kernels
    attention::register(m)?;

    // -- quantized weight kernels
    quant::register(m)?;

    Ok(())
}
