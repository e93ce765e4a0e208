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
use crate::errors::guarded;
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
    pub errors: walk::PathErrors,
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

/// One file the replacement changes: the bytes it was computed from, the new bytes, the number of
/// replacements and, when asked for, the unified diff.
/// The path travels as an `OsString` (a Python str decoded like `os.fsdecode`), so a file name that
/// is not UTF-8 round-trips byte for byte instead of turning into a lossy name that matches no file.
#[pyclass(frozen, get_all, module = "pyagent._rust")]
pub struct ReplaceChange {
    path: std::ffi::OsString,
    original: Py<PyBytes>,
    new: Py<PyBytes>,
    matches: usize,
    diff: Option<String>,
}

/// What `replace` found: the changes (nothing is written), how many files were scanned, the files
/// skipped as binary or non-UTF-8, and the entries that could not be read.
#[pyclass(frozen, get_all, module = "pyagent._rust")]
pub struct ReplaceResult {
    changes: Vec<Py<ReplaceChange>>,
    scanned: usize,
    binary: Vec<String>,
    non_utf8: Vec<String>,
    errors: Vec<Py<walk::Unreadable>>,
}

/// replace(root, pattern, replacement, *, literal=False, multiline=False, globs=[], excludes=[],
///         hidden=False, no_ignore=False, diff=False) -> ReplaceResult. Writes nothing.
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
) -> PyResult<ReplaceResult> {
    guarded(|| {
        let opts = ReplaceOptions { literal, multiline };
        let re = compile(pattern, &opts).map_err(PyValueError::new_err)?;
        let walk_opts = WalkOptions { extensions: None, globs, excludes, hidden, no_ignore };
        let summary = py.detach(|| replace_tree(&root, &re, replacement, &opts, &walk_opts, diff))?;
        let changes = summary
            .changes
            .into_iter()
            .map(|c| {
                let change = ReplaceChange {
                    path: c.path.into_os_string(),
                    original: PyBytes::new(py, &c.original).unbind(),
                    new: PyBytes::new(py, c.replaced.as_bytes()).unbind(),
                    matches: c.matches,
                    diff: c.diff,
                };
                Py::new(py, change)
            })
            .collect::<PyResult<Vec<_>>>()?;
        Ok(ReplaceResult {
            changes,
            scanned: summary.scanned,
            binary: summary.binary,
            non_utf8: summary.non_utf8,
            errors: walk::unreadable(py, summary.errors)?,
        })
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ReplaceChange>()?;
    m.add_class::<ReplaceResult>()?;
    m.add_function(wrap_pyfunction!(replace, m)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdir::TempTree;

    fn run(text: &str, pattern: &str, replacement: &str, opts: &ReplaceOptions) -> (String, usize) {
        replace_text(&compile(pattern, opts).unwrap(), text, replacement, opts)
    }

    #[test]
    fn regex_groups_literal_text_and_line_mode() {
        let regex = ReplaceOptions::default();
        let literal = ReplaceOptions { literal: true, ..Default::default() };
        let multiline = ReplaceOptions { multiline: true, ..Default::default() };
        assert_eq!(run("f(a, b)", r"f\((\w+), (\w+)\)", "f($2, $1)", &regex), ("f(b, a)".into(), 1));
        assert_eq!(run("k=v k2=v2", r"(?P<k>\w+)=(?P<v>\w+)", "${v}=${k}", &regex), ("v=k v2=k2".into(), 2));
        assert_eq!(run("a.b $1", "a.b $1", "${x}", &literal), ("${x}".into(), 1));
        assert_eq!(run("axb", "a.b", "z", &literal), ("axb".into(), 0));
        // Line mode: `^`/`$` per line (CRLF too), and a match never crosses a line end.
        assert_eq!(run("a = 1\r\nb = 2\r\n", r"^(\w) = (\d)$", "$1: $2", &regex), ("a: 1\r\nb: 2\r\n".into(), 2));
        assert_eq!(run("start\nend\n", r"start\s+end", "X", &regex), ("start\nend\n".into(), 0));
        assert_eq!(run("start\nend\n", r"start.*end", "X", &multiline), ("X\n".into(), 1));
    }

    #[test]
    fn bad_patterns_are_clear_errors() {
        let opts = ReplaceOptions::default();
        assert!(compile("", &opts).unwrap_err().contains("empty"));
        let err = compile("(unclosed", &opts).unwrap_err();
        assert!(err.starts_with("invalid regex \"(unclosed\"") && err.contains("unclosed group"), "{err}");
        assert!(compile("(unclosed", &ReplaceOptions { literal: true, ..Default::default() }).is_ok());
    }

    #[test]
    fn tree_replace_skips_binary_and_non_utf8_and_writes_nothing() {
        let t = TempTree::new();
        t.write("a.py", "old = 1\nkeep = old\n");
        t.write("b.txt", "nothing here\n");
        t.write_bytes("bin.dat", b"old\0old");
        t.write_bytes("latin.txt", b"old caf\xe9\n");
        let opts = ReplaceOptions::default();
        let re = compile(r"\bold\b", &opts).unwrap();
        let summary = replace_tree(t.path(), &re, "new", &opts, &WalkOptions::default(), true).unwrap();
        assert_eq!(summary.scanned, 4);
        assert_eq!(summary.changes.len(), 1);
        let change = &summary.changes[0];
        assert_eq!(change.path, t.path().join("a.py"));
        assert_eq!((change.replaced.as_str(), change.matches), ("new = 1\nkeep = new\n", 2));
        assert_eq!(change.original, b"old = 1\nkeep = old\n");
        let diff = change.diff.as_deref().unwrap();
        assert!(diff.starts_with("--- a/a.py\n+++ b/a.py\n") && diff.contains("-old = 1\n-keep = old\n+new = 1\n+keep = new\n"), "{diff}");
        assert_eq!(summary.binary, [t.path().join("bin.dat").display().to_string()]);
        assert_eq!(summary.non_utf8, [t.path().join("latin.txt").display().to_string()]);
        assert!(summary.errors.is_empty());
        assert_eq!(std::fs::read_to_string(t.path().join("a.py")).unwrap(), "old = 1\nkeep = old\n");
        // A missing root is the walk's error, with its kind.
        let missing = replace_tree(&t.path().join("nope"), &re, "new", &opts, &WalkOptions::default(), false);
        assert!(matches!(missing, Err(walk::WalkError::Root(_, e)) if e.kind() == std::io::ErrorKind::NotFound));
    }
}
