//! Workspace-wide search and replace: one regex over every file of `walk::collect`, in parallel (rayon).
//!
//! Nothing is written here: the changed contents go back to Python, which applies them as one
//! `StateTransaction`. Binary files (a NUL byte in the first 8 KiB) and non-UTF-8 files are skipped and
//! reported, so a replace never mangles an encoding it does not understand.
use std::borrow::Cow;
use std::path::{Path, PathBuf};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use rayon::prelude::*;
use regex::{Captures, Regex, RegexBuilder};

use crate::diff;
use crate::walk::{self, WalkOptions};

const BINARY_SNIFF: usize = 8 * 1024;

/// How to interpret the pattern and the replacement.
#[derive(Clone, Debug, Default)]
pub struct ReplaceOptions {
    /// Pattern and replacement are plain text (no regex syntax, no `$1` expansion).
    pub literal: bool,
    /// Matches may span lines and `.` matches a newline; otherwise a match never crosses a line end.
    pub multiline: bool,
}

/// One file the replacement changes.
pub struct FileChange {
    pub path: PathBuf,
    pub original: Vec<u8>,
    pub replaced: String,
    pub matches: usize,
    pub diff: Option<String>,
}

enum Outcome {
    Unchanged,
    Changed(FileChange),
    Binary(PathBuf),
    NonUtf8(PathBuf),
    Error(PathBuf, String),
}

#[derive(Default)]
pub struct ReplaceSummary {
    pub changes: Vec<FileChange>,
    pub scanned: usize,
    pub binary: Vec<String>,
    pub non_utf8: Vec<String>,
    pub errors: Vec<(String, String)>,
}

/// Compiles the pattern; an invalid regex is a clear `ValueError` naming the problem.
pub fn compile(pattern: &str, opts: &ReplaceOptions) -> Result<Regex, String> {
    if pattern.is_empty() {
        return Err("the pattern is empty; give the text or regex to search for".to_string());
    }
    let source: Cow<'_, str> = if opts.literal { Cow::Owned(regex::escape(pattern)) } else { Cow::Borrowed(pattern) };
    RegexBuilder::new(&source)
        .multi_line(true)
        .crlf(true)
        .dot_matches_new_line(opts.multiline)
        .size_limit(64 << 20)
        .build()
        .map_err(|e| format!("invalid regex {pattern:?}: {e}"))
}

/// Replaces every match in `text`; returns the new text and the number of replacements.
pub fn replace_text(re: &Regex, text: &str, replacement: &str, opts: &ReplaceOptions) -> (String, usize) {
    let mut count = 0usize;
    let out = re.replace_all(text, |caps: &Captures<'_>| {
        let whole = caps.get(0).map(|m| m.as_str()).unwrap_or("");
        if !opts.multiline && whole.contains('\n') {
            return whole.to_string(); // line mode: a match that would cross a line end is left alone
        }
        count += 1;
        if opts.literal {
            replacement.to_string()
        } else {
            let mut dst = String::new();
            caps.expand(replacement, &mut dst);
            dst
        }
    });
    (out.into_owned(), count)
}

fn process(path: &Path, re: &Regex, replacement: &str, opts: &ReplaceOptions, root: &Path, with_diff: bool) -> Outcome {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => return Outcome::Error(path.to_path_buf(), e.to_string()),
    };
    if bytes[..bytes.len().min(BINARY_SNIFF)].contains(&0) {
        return Outcome::Binary(path.to_path_buf());
    }
    let text = match std::str::from_utf8(&bytes) {
        Ok(t) => t,
        Err(_) => return Outcome::NonUtf8(path.to_path_buf()),
    };
    if !re.is_match(text) {
        return Outcome::Unchanged;
    }
    let (replaced, matches) = replace_text(re, text, replacement, opts);
    if matches == 0 || replaced == text {
        return Outcome::Unchanged;
    }
    let diff = if with_diff {
        let rel = path.strip_prefix(root).unwrap_or(path).display().to_string();
        let rel = if rel.is_empty() { path.display().to_string() } else { rel };
        Some(diff::unified(text, &replaced, &format!("a/{rel}"), &format!("b/{rel}"), 3))
    } else {
        None
    };
    Outcome::Changed(FileChange { path: path.to_path_buf(), original: bytes, replaced, matches, diff })
}

/// Runs the replacement over every file `walk::collect` yields under `root`.
pub fn replace_tree(
    root: &Path,
    re: &Regex,
    replacement: &str,
    opts: &ReplaceOptions,
    walk_opts: &WalkOptions,
    with_diff: bool,
) -> Result<ReplaceSummary, walk::WalkError> {
    let walked = walk::collect(root, walk_opts)?;
    let diff_root = if root.is_file() { root.parent().unwrap_or(root) } else { root };
    let outcomes: Vec<Outcome> = walked
        .files
        .par_iter()
        .map(|p| process(p, re, replacement, opts, diff_root, with_diff))
        .collect();
    let mut summary = ReplaceSummary { scanned: walked.files.len(), errors: walked.errors, ..Default::default() };
    for o in outcomes {
        match o {
            Outcome::Unchanged => {}
            Outcome::Changed(c) => summary.changes.push(c),
            Outcome::Binary(p) => summary.binary.push(p.display().to_string()),
            Outcome::NonUtf8(p) => summary.non_utf8.push(p.display().to_string()),
            Outcome::Error(p, e) => summary.errors.push((p.display().to_string(), e)),
        }
    }
    Ok(summary)
}

/// The path travels as an `OsString` (a Python str decoded like `os.fsdecode`), so a file name that
/// is not UTF-8 round-trips byte for byte instead of turning into a lossy name that matches no file.
type PyChange = (std::ffi::OsString, Py<PyBytes>, Py<PyBytes>, usize, Option<String>);
type PyReplaceResult =
    (Vec<PyChange>, usize, Vec<String>, Vec<String>, Vec<(String, String)>);

/// replace(root, pattern, replacement, *, literal=False, multiline=False, globs=[], excludes=[],
///         hidden=False, no_ignore=False, diff=False)
/// -> (changes, scanned, binary, non_utf8, errors); each change is
///    (path, original bytes, new bytes, matches, unified diff or None). Writes nothing.
#[pyfunction]
#[pyo3(signature = (root, pattern, replacement, *, literal=false, multiline=false, globs=vec![],
                    excludes=vec![], hidden=false, no_ignore=false, diff=false))]
#[allow(clippy::too_many_arguments)]
fn replace(
    py: Python<'_>,
    root: PathBuf,
    pattern: &str,
    replacement: &str,
    literal: bool,
    multiline: bool,
    globs: Vec<String>,
    excludes: Vec<String>,
    hidden: bool,
    no_ignore: bool,
    diff: bool,
) -> PyResult<PyReplaceResult> {
    let opts = ReplaceOptions { literal, multiline };
    let re = compile(pattern, &opts).map_err(PyValueError::new_err)?;
    let walk_opts = WalkOptions { extensions: None, globs, excludes, hidden, no_ignore };
    let summary = py.detach(|| replace_tree(&root, &re, replacement, &opts, &walk_opts, diff))?;
    let changes = summary
        .changes
        .into_iter()
        .map(|c| {
            (
                c.path.into_os_string(),
                PyBytes::new(py, &c.original).unbind(),
                PyBytes::new(py, c.replaced.as_bytes()).unbind(),
                c.matches,
                c.diff,
            )
        })
        .collect();
    Ok((changes, summary.scanned, summary.binary, summary.non_utf8, summary.errors))
}

/// replace_in_text(text, pattern, replacement, *, literal=False, multiline=False) -> (new text, matches)
#[pyfunction]
#[pyo3(signature = (text, pattern, replacement, *, literal=false, multiline=false))]
fn replace_in_text(
    py: Python<'_>,
    text: &str,
    pattern: &str,
    replacement: &str,
    literal: bool,
    multiline: bool,
) -> PyResult<(String, usize)> {
    let opts = ReplaceOptions { literal, multiline };
    let re = compile(pattern, &opts).map_err(PyValueError::new_err)?;
    Ok(py.detach(|| replace_text(&re, text, replacement, &opts)))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(replace, m)?)?;
    m.add_function(wrap_pyfunction!(replace_in_text, m)?)?;
    Ok(())
}
