//! Code-health metrics of Python files: C901 per function (ruff's semantics) and, per module,
//! radon's total complexity, Halstead, raw line counts and Maintainability Index.
//!
//! Files come from `walk::collect` and are analysed in parallel with rayon; every file yields a
//! result (metrics, a parse error with its position, or the reason it was skipped) so one bad
//! file never stops an audit.
pub mod c901;
pub mod halstead;
pub mod mi;
pub mod radon_cc;
pub mod raw;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use rayon::prelude::*;
use ruff_source_file::LineIndex;

use crate::errors::guarded;
use crate::walk::{self, WalkOptions};
use c901::FunctionInfo;
use halstead::Halstead;
use raw::RawMetrics;

/// Metrics of one parsed module.
#[derive(Clone, Debug)]
pub struct ModuleMetrics {
    pub functions: Vec<c901::FunctionInfo>,
    pub complexity: u64,
    pub halstead: halstead::Halstead,
    /// `None` where radon's own tokenizer loop gives up on the file (it raises `SyntaxError`).
    pub raw: Option<raw::RawMetrics>,
    pub mi: Option<f64>,
}

/// What became of one file.
#[derive(Clone, Debug)]
pub enum Outcome {
    Metrics(ModuleMetrics),
    /// Not analysed, with the reason (binary, not UTF-8, unreadable).
    Skipped(String),
    /// Could not be parsed: message, line, column (1-based), and the raw line counts, which need
    /// only radon's tokenizer (radon reports them for such files too).
    SyntaxError(String, u32, u32, Option<raw::RawMetrics>),
}

#[derive(Clone, Debug)]
pub struct FileResult {
    pub path: String,
    pub outcome: Outcome,
    pub elapsed: Duration,
}

/// Analyses Python source text (any line endings, optional BOM).
pub fn analyze_source(source: &str, multi_as_comments: bool) -> Outcome {
    let source = source.strip_prefix('\u{feff}').unwrap_or(source);
    // radon reads files with universal newlines; normalising once keeps line numbers unchanged.
    let normalized;
    let text: &str = if source.contains('\r') {
        normalized = source.replace("\r\n", "\n").replace('\r', "\n");
        &normalized
    } else {
        source
    };
    let parsed = match ruff_python_parser::parse_module(text) {
        Ok(p) => p,
        Err(e) => {
            let index = LineIndex::from_source_text(text);
            let lc = index.line_column(e.location.start(), text);
            let line = lc.line.get() as u32;
            return Outcome::SyntaxError(e.error.to_string(), line, lc.column.get() as u32, raw::analyze(text).ok());
        }
    };
    let body = &parsed.syntax().body;
    let index = LineIndex::from_source_text(text);
    let functions = c901::functions(body, text, &index);
    let complexity = radon_cc::total_complexity(body);
    let halstead = halstead::module_halstead(body);
    let raw = raw::analyze(text).ok();
    let mi = raw.map(|r| {
        let c = mi::comments_percent(r.comments, r.multi, r.sloc, multi_as_comments);
        mi::mi_compute(halstead.volume, complexity, r.lloc, c)
    });
    Outcome::Metrics(ModuleMetrics { functions, complexity, halstead, raw, mi })
}

/// Reads and analyses one file; never panics on bad content.
pub fn analyze_file(path: &Path, multi_as_comments: bool) -> Outcome {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => return Outcome::Skipped(format!("cannot read: {e}")),
    };
    if bytes.contains(&0) {
        return Outcome::Skipped("binary file (contains NUL bytes)".to_string());
    }
    match std::str::from_utf8(&bytes) {
        Ok(text) => analyze_source(text, multi_as_comments),
        Err(e) => {
            let upto = e.valid_up_to();
            let line = bytes[..upto].iter().filter(|&&b| b == b'\n').count() + 1;
            Outcome::Skipped(format!("not UTF-8 (invalid byte at offset {upto}, line {line})"))
        }
    }
}

/// POSIX path of `file` relative to `root` (the file name when `root` is the file itself).
fn relative(root: &Path, file: &Path) -> String {
    let rel = match file.strip_prefix(root) {
        Ok(r) if !r.as_os_str().is_empty() => r.to_path_buf(),
        _ => PathBuf::from(file.file_name().unwrap_or(file.as_os_str())),
    };
    rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect::<Vec<_>>().join("/")
}

/// A pool with large stacks: deeply nested generated code must not overflow a worker's stack.
fn pool() -> &'static rayon::ThreadPool {
    static POOL: OnceLock<rayon::ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .stack_size(256 << 20)
            .thread_name(|i| format!("pyagent-metrics-{i}"))
            .build()
            .expect("metrics thread pool")
    })
}

/// CPU time of the calling thread: per-file cost that does not grow when the machine is busy.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID is always supported on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Analyses every file in parallel, largest first so one big file does not finish last alone;
/// results come back in the order of `files`. `done` counts finished files for progress reports.
pub fn analyze_files(root: &Path, files: &[PathBuf], multi_as_comments: bool, done: &AtomicUsize) -> Vec<FileResult> {
    let mut order: Vec<(u64, usize)> =
        files.iter().enumerate().map(|(i, f)| (std::fs::metadata(f).map_or(0, |m| m.len()), i)).collect();
    order.sort_unstable_by(|a, b| b.cmp(a));
    let mut results: Vec<(usize, FileResult)> = pool().install(|| {
        order
            .par_iter()
            .with_max_len(1)
            .map(|&(_, i)| {
                let f = &files[i];
                let start = thread_cpu_time();
                let outcome = analyze_file(f, multi_as_comments);
                done.fetch_add(1, Ordering::Relaxed);
                let elapsed = thread_cpu_time().saturating_sub(start);
                (i, FileResult { path: relative(root, f), outcome, elapsed })
            })
            .collect()
    });
    results.sort_unstable_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

/// Health of one file, as `audit_tree` and `audit_source` return it. `error` says why metrics are
/// missing (a syntax error, or the reason the file was skipped).
#[pyclass(frozen, module = "pyagent._rust")]
pub struct FileHealth {
    #[pyo3(get)]
    path: String,
    #[pyo3(get)]
    error: Option<String>,
    #[pyo3(get)]
    skipped: bool,
    #[pyo3(get)]
    mi: Option<f64>,
    #[pyo3(get)]
    mi_rank: Option<String>,
    /// radon's total complexity of the module.
    #[pyo3(get)]
    complexity: Option<u64>,
    #[pyo3(get)]
    halstead: Option<Py<Halstead>>,
    #[pyo3(get)]
    raw: Option<Py<RawMetrics>>,
    /// Tuple of `FunctionHealth`, in source order.
    #[pyo3(get)]
    functions: Py<PyTuple>,
    /// The largest C901 complexity of its functions (0 without functions).
    #[pyo3(get)]
    max_complexity: u32,
    /// CPU seconds of the analysing thread (read, parse, all metrics); not part of equality.
    #[pyo3(get)]
    seconds: f64,
}

#[pymethods]
impl FileHealth {
    /// The file as the JSON report writes it (everything but `seconds` and `max_complexity`).
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item(intern!(py, "path"), &self.path)?;
        d.set_item(intern!(py, "mi"), self.mi)?;
        d.set_item(intern!(py, "mi_rank"), &self.mi_rank)?;
        d.set_item(intern!(py, "complexity"), self.complexity)?;
        d.set_item(intern!(py, "halstead"), self.halstead.as_ref().map(|h| h.get().to_dict(py)).transpose()?)?;
        d.set_item(intern!(py, "raw"), self.raw.as_ref().map(|r| r.get().to_dict(py)).transpose()?)?;
        let functions = PyList::empty(py);
        for f in self.functions.bind(py).iter() {
            functions.append(f.cast::<FunctionInfo>()?.get().to_dict(py)?)?;
        }
        d.set_item(intern!(py, "functions"), functions)?;
        d.set_item(intern!(py, "error"), &self.error)?;
        d.set_item(intern!(py, "skipped"), self.skipped)?;
        Ok(d)
    }

    fn __eq__(&self, py: Python<'_>, other: &Self) -> PyResult<bool> {
        let same = |a: &Option<Py<Halstead>>, b: &Option<Py<Halstead>>| match (a, b) {
            (Some(x), Some(y)) => x.get() == y.get(),
            (x, y) => x.is_none() && y.is_none(),
        };
        let same_raw = match (&self.raw, &other.raw) {
            (Some(x), Some(y)) => x.get() == y.get(),
            (x, y) => x.is_none() && y.is_none(),
        };
        Ok(self.path == other.path
            && self.error == other.error
            && self.skipped == other.skipped
            && self.mi == other.mi
            && self.mi_rank == other.mi_rank
            && self.complexity == other.complexity
            && same(&self.halstead, &other.halstead)
            && same_raw
            && self.functions.bind(py).eq(other.functions.bind(py))?)
    }

    fn __repr__(&self) -> String {
        format!(
            "FileHealth(path={:?}, mi={:?}, max_complexity={}, error={:?})",
            self.path, self.mi, self.max_complexity, self.error
        )
    }
}

impl FunctionInfo {
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item(intern!(py, "name"), &self.name)?;
        d.set_item(intern!(py, "qualname"), &self.qualname)?;
        d.set_item(intern!(py, "lineno"), self.lineno)?;
        d.set_item(intern!(py, "endline"), self.endline)?;
        d.set_item(intern!(py, "complexity"), self.complexity)?;
        Ok(d)
    }
}

impl Halstead {
    fn to_dict<'py>(self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (k, v) in [
            (intern!(py, "h1"), self.h1),
            (intern!(py, "h2"), self.h2),
            (intern!(py, "N1"), self.n1),
            (intern!(py, "N2"), self.n2),
        ] {
            d.set_item(k, v)?;
        }
        d.set_item(intern!(py, "vocabulary"), self.vocabulary)?;
        d.set_item(intern!(py, "length"), self.length)?;
        for (k, v) in [
            (intern!(py, "calculated_length"), self.calculated_length),
            (intern!(py, "volume"), self.volume),
            (intern!(py, "difficulty"), self.difficulty),
            (intern!(py, "effort"), self.effort),
            (intern!(py, "time"), self.time),
            (intern!(py, "bugs"), self.bugs),
        ] {
            d.set_item(k, v)?;
        }
        Ok(d)
    }
}

impl RawMetrics {
    fn to_dict<'py>(self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (k, v) in [
            (intern!(py, "loc"), self.loc),
            (intern!(py, "lloc"), self.lloc),
            (intern!(py, "sloc"), self.sloc),
            (intern!(py, "comments"), self.comments),
            (intern!(py, "multi"), self.multi),
            (intern!(py, "blank"), self.blank),
            (intern!(py, "single_comments"), self.single_comments),
        ] {
            d.set_item(k, v)?;
        }
        Ok(d)
    }
}

fn to_py(py: Python<'_>, r: FileResult) -> PyResult<FileHealth> {
    let seconds = r.elapsed.as_secs_f64();
    let none = |path, error, skipped, raw: Option<raw::RawMetrics>| -> PyResult<FileHealth> {
        Ok(FileHealth {
            path,
            error: Some(error),
            skipped,
            mi: None,
            mi_rank: None,
            complexity: None,
            halstead: None,
            raw: raw.map(|w| Py::new(py, w)).transpose()?,
            functions: PyTuple::empty(py).unbind(),
            max_complexity: 0,
            seconds,
        })
    };
    match r.outcome {
        Outcome::Skipped(reason) => none(r.path, reason, true, None),
        Outcome::SyntaxError(msg, line, col, raw) => {
            none(r.path, format!("syntax error at line {line}, column {col}: {msg}"), false, raw)
        }
        Outcome::Metrics(m) => {
            let max_complexity = m.functions.iter().map(|f| f.complexity).max().unwrap_or(0);
            let functions = m.functions.into_iter().map(|f| Py::new(py, f)).collect::<PyResult<Vec<_>>>()?;
            Ok(FileHealth {
                path: r.path,
                error: None,
                skipped: false,
                mi: m.mi,
                mi_rank: m.mi.map(|v| mi::mi_rank(v).to_string()),
                complexity: Some(m.complexity),
                halstead: Some(Py::new(py, m.halstead)?),
                raw: m.raw.map(|w| Py::new(py, w)).transpose()?,
                functions: PyTuple::new(py, functions)?.unbind(),
                max_complexity,
                seconds,
            })
        }
    }
}

/// What `audit_tree` returns: one `FileHealth` per file (walk order) and the entries the walk could not read.
#[pyclass(frozen, get_all, module = "pyagent._rust")]
pub struct TreeAudit {
    files: Vec<Py<FileHealth>>,
    errors: Vec<Py<walk::Unreadable>>,
}

#[pymethods]
impl TreeAudit {
    fn __repr__(&self) -> String {
        format!("TreeAudit(files=<{}>, errors=<{}>)", self.files.len(), self.errors.len())
    }
}

/// audit_tree(root, *, excludes=[], multi_as_comments=True, progress=None) -> TreeAudit
///
/// Walks `root` (`.gitignore`-aware, `*.py`), analyses every file in parallel and returns one
/// `FileHealth` per file. `progress(done, total)` is called from the calling thread about 10 times a second.
#[pyfunction]
#[pyo3(signature = (root, *, excludes=vec![], multi_as_comments=true, progress=None))]
fn audit_tree(
    py: Python<'_>,
    root: PathBuf,
    excludes: Vec<String>,
    multi_as_comments: bool,
    progress: Option<Py<PyAny>>,
) -> PyResult<TreeAudit> {
    guarded(|| {
        let opts = WalkOptions { extensions: Some(vec!["py".to_string()]), excludes, ..Default::default() };
        let walked = py.detach(|| walk::collect(&root, &opts))?;
        let results = py.detach(|| analyze_reporting(&root, &walked.files, multi_as_comments, progress.as_ref()));
        let files = results.into_iter().map(|r| Py::new(py, to_py(py, r)?)).collect::<PyResult<Vec<_>>>()?;
        Ok(TreeAudit { files, errors: walk::unreadable(py, walked.errors)? })
    })
}

/// `analyze_files` on a worker thread while the calling thread reports progress (without the GIL
/// except while it calls `progress`).
fn analyze_reporting(
    root: &Path,
    files: &[PathBuf],
    multi_as_comments: bool,
    progress: Option<&Py<PyAny>>,
) -> Vec<FileResult> {
    let total = files.len();
    let done = AtomicUsize::new(0);
    let finished = AtomicBool::new(false);
    std::thread::scope(|s| {
        let worker = s.spawn(|| {
            let r = analyze_files(root, files, multi_as_comments, &done);
            finished.store(true, Ordering::Release);
            r
        });
        if let Some(cb) = progress {
            let mut last = usize::MAX;
            while !finished.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(100));
                let n = done.load(Ordering::Relaxed);
                if n != last {
                    last = n;
                    // A failing callback must not abort the audit; its error is dropped.
                    Python::attach(|py| {
                        let _ = cb.call1(py, (n, total));
                    });
                }
            }
            Python::attach(|py| {
                let _ = cb.call1(py, (total, total));
            });
        }
        worker.join().expect("metrics worker panicked")
    })
}

/// audit_source(source, path="<string>", *, multi_as_comments=True) -> FileHealth
#[pyfunction]
#[pyo3(signature = (source, path="<string>", *, multi_as_comments=true))]
fn audit_source(py: Python<'_>, source: &str, path: &str, multi_as_comments: bool) -> PyResult<FileHealth> {
    guarded(|| {
        let (outcome, elapsed) = py.detach(|| {
            pool().install(|| {
                let start = thread_cpu_time();
                let outcome = analyze_source(source, multi_as_comments);
                (outcome, thread_cpu_time().saturating_sub(start))
            })
        });
        to_py(py, FileResult { path: path.to_string(), outcome, elapsed })
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<FileHealth>()?;
    m.add_class::<FunctionInfo>()?;
    m.add_class::<Halstead>()?;
    m.add_class::<RawMetrics>()?;
    m.add_class::<TreeAudit>()?;
    m.add_function(wrap_pyfunction!(audit_tree, m)?)?;
    m.add_function(wrap_pyfunction!(audit_source, m)?)?;
    Ok(())
}
