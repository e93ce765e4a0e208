//! Maintainability Index and its rank, radon 6.0.1's formula (`mi_compute`, `mi_rank`).
//!
//! `MI = min(100, max(0, (171 − 5.2·ln V − 0.23·G − 16.2·ln L + 50·sin(√(2.46·radians(C)))) · 100/171))`
//! with V the module Halstead volume, G radon's total complexity, L the logical lines and C the
//! percentage of comment lines (plus multi-line string lines by default) over source lines. The
//! operations run in Python's order so the float result is the one `radon mi` prints.

/// `mi_compute(volume, complexity, lloc, comments_percent)`.
// Not `clamp`: radon's `min(max(0., mi), 100.)` turns NaN into 0, and so does `max(0).min(100)`.
#[allow(clippy::manual_clamp)]
pub fn mi_compute(volume: f64, complexity: u64, lloc: u64, comments_percent: f64) -> f64 {
    if volume <= 0.0 || lloc == 0 {
        return 100.0;
    }
    let sloc_scale = (lloc as f64).ln();
    let volume_scale = volume.ln();
    let comments_scale = (2.46 * comments_percent.to_radians()).sqrt();
    let nn_mi = 171.0 - 5.2 * volume_scale - 0.23 * complexity as f64 - 16.2 * sloc_scale
        + 50.0 * comments_scale.sin();
    (nn_mi * 100.0 / 171.0).max(0.0).min(100.0)
}

/// radon's `mi_parameters` comment percentage.
pub fn comments_percent(comments: u64, multi: u64, sloc: u64, multi_as_comments: bool) -> f64 {
    let lines = comments + if multi_as_comments { multi } else { 0 };
    if sloc == 0 {
        0.0
    } else {
        lines as f64 / sloc as f64 * 100.0
    }
}

/// `mi_rank`: A above 19, B above 9, C otherwise.
pub fn mi_rank(score: f64) -> char {
    if score <= 9.0 {
        'C'
    } else if score <= 19.0 {
        'B'
    } else {
        'A'
    }
}
