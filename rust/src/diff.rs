//! Unified diffs (the `similar` crate): what `pyagent replace` previews and what agents show for a change.
use std::time::Duration;

use pyo3::prelude::*;
use similar::TextDiff;

/// A unified diff of two texts, empty when they are equal. A deadline keeps pathological inputs bounded
/// (the diff then gets coarser, never wrong).
pub fn unified(old: &str, new: &str, old_path: &str, new_path: &str, context: usize) -> String {
    if old == new {
        return String::new();
    }
    let diff = TextDiff::configure().timeout(Duration::from_secs(2)).diff_lines(old, new);
    diff.unified_diff().context_radius(context).header(old_path, new_path).to_string()
}

/// unified_diff(old, new, *, old_path="a", new_path="b", context=3) -> str
#[pyfunction]
#[pyo3(signature = (old, new, *, old_path="a", new_path="b", context=3))]
fn unified_diff(py: Python<'_>, old: &str, new: &str, old_path: &str, new_path: &str, context: usize) -> String {
    py.detach(|| unified(old, new, old_path, new_path, context))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(unified_diff, m)?)?;
    Ok(())
}
