//! Unified diffs (the `similar` crate): the preview `replace` returns with each change.
use std::time::Duration;

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
