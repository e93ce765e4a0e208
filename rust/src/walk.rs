//! The one tree walk of PyAgent: parallel, `.gitignore`-aware (ripgrep's `ignore` crate).
//!
//! The audit, bulk replace and every other whole-tree operation go through `collect`, so
//! they all agree on which files belong to a workspace.
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ignore::overrides::OverrideBuilder;
use ignore::{WalkBuilder, WalkState};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::errors::{guarded, os_error};

/// Directories that are never part of a workspace's content.
const ALWAYS_SKIPPED: [&str; 2] = [".git", ".pyagent"];

/// What to walk and how.
#[derive(Clone, Debug, Default)]
pub struct WalkOptions {
    /// Keep only files whose extension is in this list (no dot); `None` keeps every file.
    pub extensions: Option<Vec<String>>,
    /// Whitelist globs (gitignore syntax, relative to the root); empty means everything.
    pub globs: Vec<String>,
    /// Globs to leave out (gitignore syntax, relative to the root).
    pub excludes: Vec<String>,
    /// Walk hidden files and directories too.
    pub hidden: bool,
    /// Ignore `.gitignore`, `.ignore` and git's exclude files.
    pub no_ignore: bool,
}

/// (path, reason) for each entry that could not be read.
pub type PathErrors = Vec<(String, String)>;

/// The files found, sorted, and the entries that could not be read (path, reason).
#[derive(Debug, Default)]
pub struct Walked {
    pub files: Vec<PathBuf>,
    pub errors: PathErrors,
}

/// An entry a walk could not read: its path (empty when the error names none) and why.
#[pyclass(frozen, eq, get_all, module = "pyagent._rust")]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unreadable {
    pub path: String,
    pub reason: String,
}

#[pymethods]
impl Unreadable {
    fn __repr__(&self) -> String {
        format!("Unreadable(path={:?}, reason={:?})", self.path, self.reason)
    }
}

/// The entries a walk could not read, as the Python objects every result class holds.
pub fn unreadable(py: Python<'_>, errors: PathErrors) -> PyResult<Vec<Py<Unreadable>>> {
    errors.into_iter().map(|(path, reason)| Py::new(py, Unreadable { path, reason })).collect()
}

/// What `walk` returns: the files (sorted) and the entries that could not be read.
/// Paths travel as `OsString` (a Python str decoded like `os.fsdecode`), so a name that is not UTF-8
/// round-trips byte for byte instead of becoming a lossy name that matches no file.
#[pyclass(frozen, get_all, module = "pyagent._rust")]
pub struct WalkResult {
    files: Vec<std::ffi::OsString>,
    errors: Vec<Py<Unreadable>>,
}

#[pymethods]
impl WalkResult {
    fn __repr__(&self) -> String {
        format!("WalkResult(files=<{}>, errors=<{}>)", self.files.len(), self.errors.len())
    }
}

/// Why a walk could not start: the root itself is missing or unreadable, or a glob is invalid.
#[derive(Debug)]
pub enum WalkError {
    Root(PathBuf, std::io::Error),
    BadGlob(String),
}

impl From<WalkError> for PyErr {
    fn from(e: WalkError) -> PyErr {
        match e {
            WalkError::Root(path, err) => os_error(&path, &err),
            WalkError::BadGlob(msg) => PyValueError::new_err(msg),
        }
    }
}

/// Opens the root the way the walk will (listing a directory, reading a file), so that a root that
/// cannot be read fails with its own error kind instead of an empty result.
fn check_root(root: &Path) -> Result<bool, WalkError> {
    let fail = |e| WalkError::Root(root.to_path_buf(), e);
    let meta = std::fs::metadata(root).map_err(fail)?;
    if meta.is_dir() {
        std::fs::read_dir(root).map_err(fail)?;
    } else {
        std::fs::File::open(root).map_err(fail)?;
    }
    Ok(meta.is_file())
}

/// The path an `ignore` error is about, looked up through the depth and line wrappers it comes in
/// (an unreadable directory arrives as `WithDepth { WithPath { .. } }`); empty when it names none.
fn error_path(err: &ignore::Error) -> String {
    match err {
        ignore::Error::WithPath { path, .. } => path.display().to_string(),
        ignore::Error::WithDepth { err, .. } | ignore::Error::WithLineNumber { err, .. } => error_path(err),
        ignore::Error::Partial(errs) => errs.first().map(error_path).unwrap_or_default(),
        _ => String::new(),
    }
}

fn wanted(path: &Path, extensions: &Option<Vec<String>>) -> bool {
    match extensions {
        None => true,
        Some(exts) => path
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| exts.iter().any(|x| x == e))
            .unwrap_or(false),
    }
}

/// Walks `root` in parallel. A root that is a file is returned as the only file, whatever its extension.
pub fn collect(root: &Path, opts: &WalkOptions) -> Result<Walked, WalkError> {
    if check_root(root)? {
        return Ok(Walked { files: vec![root.to_path_buf()], errors: vec![] });
    }
    let mut overrides = OverrideBuilder::new(root);
    for g in &opts.globs {
        overrides.add(g).map_err(|e| WalkError::BadGlob(format!("invalid --glob {g:?}: {e}")))?;
    }
    for g in &opts.excludes {
        let neg = format!("!{g}");
        overrides.add(&neg).map_err(|e| WalkError::BadGlob(format!("invalid --exclude {g:?}: {e}")))?;
    }
    let overrides = overrides.build().map_err(|e| WalkError::BadGlob(e.to_string()))?;

    let include_hidden = opts.hidden;
    let mut builder = WalkBuilder::new(root);
    builder
        .hidden(!opts.hidden)
        .git_ignore(!opts.no_ignore)
        .git_exclude(!opts.no_ignore)
        .git_global(false)
        .ignore(!opts.no_ignore)
        .parents(!opts.no_ignore)
        .require_git(false)
        .follow_links(false)
        .overrides(overrides)
        .filter_entry(move |e| {
            let name = e.file_name().to_str().unwrap_or("");
            let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
            // A whitelist glob (`--glob '*.py'`) overrides the `ignore` crate's hidden-file filter,
            // so hidden entries are also dropped here: `--hidden` alone lets them in.
            let hidden = !include_hidden && e.depth() > 0 && name.starts_with('.');
            !(hidden || (is_dir && ALWAYS_SKIPPED.contains(&name)))
        });

    let found: Mutex<Walked> = Mutex::new(Walked::default());
    builder.build_parallel().run(|| {
        let found = &found;
        let extensions = &opts.extensions;
        Box::new(move |entry| {
            match entry {
                Ok(e) => {
                    if e.file_type().map(|t| t.is_file()).unwrap_or(false) && wanted(e.path(), extensions) {
                        found.lock().unwrap().files.push(e.into_path());
                    }
                }
                Err(err) => {
                    found.lock().unwrap().errors.push((error_path(&err), err.to_string()));
                }
            }
            WalkState::Continue
        })
    });
    let mut result = found.into_inner().unwrap();
    result.files.sort();
    result.errors.sort();
    Ok(result)
}

/// walk(root, *, extensions=None, globs=[], excludes=[], hidden=False, no_ignore=False)
/// -> WalkResult: the files under `root` as the audit and replace see them.
#[pyfunction]
#[pyo3(signature = (root, *, extensions=None, globs=vec![], excludes=vec![], hidden=false, no_ignore=false))]
fn walk(
    py: Python<'_>,
    root: PathBuf,
    extensions: Option<Vec<String>>,
    globs: Vec<String>,
    excludes: Vec<String>,
    hidden: bool,
    no_ignore: bool,
) -> PyResult<WalkResult> {
    guarded(|| {
        let opts = WalkOptions { extensions, globs, excludes, hidden, no_ignore };
        let result = py.detach(|| collect(&root, &opts))?;
        let files = result.files.into_iter().map(PathBuf::into_os_string).collect();
        Ok(WalkResult { files, errors: unreadable(py, result.errors)? })
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Unreadable>()?;
    m.add_class::<WalkResult>()?;
    m.add_function(wrap_pyfunction!(walk, m)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdir::TempTree;

    fn names(root: &Path, opts: &WalkOptions) -> Vec<String> {
        let found = collect(root, opts).unwrap();
        assert!(found.errors.is_empty(), "{:?}", found.errors);
        found.files.iter().map(|p| p.strip_prefix(root).unwrap().display().to_string()).collect()
    }

    fn sample() -> TempTree {
        let t = TempTree::new();
        t.write(".gitignore", "build/\n*.log\n");
        for rel in ["a.py", "b.txt", "pkg/c.py", "build/gen.py", "x.log", ".hidden/h.py", ".dot.py", ".git/hooks.py", ".pyagent/j.py"] {
            t.write(rel, "x = 1\n");
        }
        t
    }

    #[test]
    fn honours_gitignore_hidden_and_always_skipped_dirs() {
        let t = sample();
        let py = WalkOptions { extensions: Some(vec!["py".into()]), ..Default::default() };
        assert_eq!(names(t.path(), &py), ["a.py", "pkg/c.py"]);
        let all = WalkOptions::default();
        assert_eq!(names(t.path(), &all), ["a.py", "b.txt", "pkg/c.py"]);
        let hidden = WalkOptions { hidden: true, ..py.clone() };
        assert_eq!(names(t.path(), &hidden), [".dot.py", ".hidden/h.py", "a.py", "pkg/c.py"]);
        let no_ignore = WalkOptions { no_ignore: true, ..py.clone() };
        assert_eq!(names(t.path(), &no_ignore), ["a.py", "build/gen.py", "pkg/c.py"]);
    }

    #[test]
    fn globs_and_excludes() {
        let t = sample();
        let only = WalkOptions { globs: vec!["pkg/**".into()], ..Default::default() };
        assert_eq!(names(t.path(), &only), ["pkg/c.py"]);
        // A whitelist glob does not let hidden entries in; `.git` stays out even with --hidden.
        let glob = WalkOptions { globs: vec!["*.py".into()], ..Default::default() };
        assert_eq!(names(t.path(), &glob), ["a.py", "pkg/c.py"]);
        let glob_hidden = WalkOptions { globs: vec!["*.py".into()], hidden: true, ..Default::default() };
        assert_eq!(names(t.path(), &glob_hidden), [".dot.py", ".hidden/h.py", "a.py", "pkg/c.py"]);
        let ex = WalkOptions { excludes: vec!["pkg/".into()], ..Default::default() };
        assert_eq!(names(t.path(), &ex), ["a.py", "b.txt"]);
        let bad = WalkOptions { excludes: vec!["a[b".into()], ..Default::default() };
        assert!(matches!(collect(t.path(), &bad), Err(WalkError::BadGlob(m)) if m.contains("--exclude")));
    }

    #[test]
    fn a_file_root_is_the_only_file_whatever_its_extension() {
        let t = sample();
        let py = WalkOptions { extensions: Some(vec!["py".into()]), ..Default::default() };
        let found = collect(&t.path().join("b.txt"), &py).unwrap();
        assert_eq!(found.files, [t.path().join("b.txt")]);
    }

    #[test]
    fn a_bad_root_keeps_its_error_kind() {
        let t = sample();
        let kind = |p: PathBuf| match collect(&p, &WalkOptions::default()) {
            Err(WalkError::Root(path, e)) => {
                assert_eq!(path, p);
                e.kind()
            }
            other => panic!("expected a root error, got {other:?}"),
        };
        assert_eq!(kind(t.path().join("missing")), std::io::ErrorKind::NotFound);
        assert_eq!(kind(t.path().join("a.py/inside")), std::io::ErrorKind::NotADirectory);
    }

    #[test]
    fn an_error_keeps_its_path_through_the_wrappers() {
        let io = || ignore::Error::Io(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        let inner = ignore::Error::WithPath { path: PathBuf::from("x/locked"), err: Box::new(io()) };
        let wrapped = ignore::Error::WithDepth { depth: 2, err: Box::new(inner) };
        assert_eq!(error_path(&wrapped), "x/locked");
        assert_eq!(error_path(&ignore::Error::Partial(vec![wrapped])), "x/locked");
        assert_eq!(error_path(&io()), "");
    }

    #[test]
    fn the_python_result_is_named_fields_not_a_tuple() {
        let t = sample();
        Python::attach(|py| {
            let root = t.path().to_path_buf();
            let r = walk(py, root.clone(), Some(vec!["py".into()]), vec![], vec![], false, false).unwrap();
            let rel: Vec<String> =
                r.files.iter().map(|f| Path::new(f).strip_prefix(&root).unwrap().display().to_string()).collect();
            assert_eq!(rel, ["a.py", "pkg/c.py"]);
            assert!(r.errors.is_empty());
            let errs = unreadable(py, vec![("x/y".into(), "permission denied".into())]).unwrap();
            let e = errs[0].bind(py);
            assert_eq!(e.getattr("path").unwrap().extract::<String>().unwrap(), "x/y");
            assert_eq!(e.getattr("reason").unwrap().extract::<String>().unwrap(), "permission denied");
            let same = Py::new(py, Unreadable { path: "x/y".into(), reason: "permission denied".into() }).unwrap();
            assert!(e.eq(same.bind(py)).unwrap());
            assert!(e.setattr("path", "z").is_err(), "frozen: fields cannot be reassigned");
        });
    }
}
