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

use pyo3::prelude::*;
use rayon::prelude::*;
use ruff_source_file::LineIndex;

use crate::walk::{self, WalkOptions};

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

type PyFunction = (String, String, u32, u32, u32);
type PyHalstead = (u64, u64, u64, u64, u64, u64, f64, f64, f64, f64, f64, f64);
type PyRaw = (u64, u64, u64, u64, u64, u64, u64);
/// (path, error, skipped, mi, mi_rank, complexity, halstead, raw, functions, CPU seconds)
type PyFile = (
    String,
    Option<String>,
    bool,
    Option<f64>,
    Option<String>,
    Option<u64>,
    Option<PyHalstead>,
    Option<PyRaw>,
    Vec<PyFunction>,
    f64,
);

fn to_py(r: FileResult) -> PyFile {
    let secs = r.elapsed.as_secs_f64();
    match r.outcome {
        Outcome::Skipped(reason) => (r.path, Some(reason), true, None, None, None, None, None, vec![], secs),
        Outcome::SyntaxError(msg, line, col, raw) => (
            r.path,
            Some(format!("syntax error at line {line}, column {col}: {msg}")),
            false,
            None,
            None,
            None,
            None,
            raw.map(|w| (w.loc, w.lloc, w.sloc, w.comments, w.multi, w.blank, w.single_comments)),
            vec![],
            secs,
        ),
        Outcome::Metrics(m) => {
            let h = m.halstead;
            (
                r.path,
                None,
                false,
                m.mi,
                m.mi.map(|v| mi::mi_rank(v).to_string()),
                Some(m.complexity),
                Some((
                    h.h1,
                    h.h2,
                    h.n1,
                    h.n2,
                    h.vocabulary,
                    h.length,
                    h.calculated_length,
                    h.volume,
                    h.difficulty,
                    h.effort,
                    h.time,
                    h.bugs,
                )),
                m.raw.map(|w| (w.loc, w.lloc, w.sloc, w.comments, w.multi, w.blank, w.single_comments)),
                m.functions
                    .into_iter()
                    .map(|f| (f.name, f.qualname, f.lineno, f.endline, f.complexity))
                    .collect(),
                secs,
            )
        }
    }
}

/// audit_tree(root, *, excludes=[], multi_as_comments=True, progress=None) -> (files, walk_errors)
///
/// Walks `root` (`.gitignore`-aware, `*.py`), analyses every file in parallel and returns one
/// tuple per file. `progress(done, total)` is called from the calling thread about 10 times a second.
#[pyfunction]
#[pyo3(signature = (root, *, excludes=vec![], multi_as_comments=true, progress=None))]
fn audit_tree(
    py: Python<'_>,
    root: PathBuf,
    excludes: Vec<String>,
    multi_as_comments: bool,
    progress: Option<Py<PyAny>>,
) -> PyResult<(Vec<PyFile>, Vec<(String, String)>)> {
    let opts = WalkOptions { extensions: Some(vec!["py".to_string()]), excludes, ..Default::default() };
    let walked = py.detach(|| walk::collect(&root, &opts))?;
    let total = walked.files.len();
    let done = AtomicUsize::new(0);
    let finished = AtomicBool::new(false);
    let results = py.detach(|| {
        std::thread::scope(|s| {
            let worker = s.spawn(|| {
                let r = analyze_files(&root, &walked.files, multi_as_comments, &done);
                finished.store(true, Ordering::Release);
                r
            });
            if let Some(cb) = &progress {
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
    });
    Ok((results.into_iter().map(to_py).collect(), walked.errors))
}

/// audit_source(source, path="<string>", *, multi_as_comments=True) -> file tuple
#[pyfunction]
#[pyo3(signature = (source, path="<string>".to_string(), *, multi_as_comments=true))]
fn audit_source(py: Python<'_>, source: String, path: String, multi_as_comments: bool) -> PyFile {
    let (outcome, elapsed) = py.detach(|| {
        pool().install(|| {
            let start = thread_cpu_time();
            let outcome = analyze_source(&source, multi_as_comments);
            (outcome, thread_cpu_time().saturating_sub(start))
        })
    });
    to_py(FileResult { path, outcome, elapsed })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(audit_tree, m)?)?;
    m.add_function(wrap_pyfunction!(audit_source, m)?)?;
    Ok(())
}
