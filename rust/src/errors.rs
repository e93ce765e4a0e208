//! How failures of the Rust core reach Python.
//!
//! An OS error keeps its kind: the Python class follows `io::ErrorKind` (PermissionError,
//! IsADirectoryError, NotADirectoryError, FileNotFoundError …) and carries errno and the path, as
//! Python's own `open` would raise it. A panic (a bug here) becomes `RustPanicError`, an ordinary
//! `Exception`: pyo3's own `PanicException` derives from `BaseException` and would pass the
//! `except Exception` handlers that keep one failing task from stopping a run.
use std::any::Any;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use pyo3::create_exception;
use pyo3::exceptions::{
    PyException, PyFileExistsError, PyFileNotFoundError, PyInterruptedError, PyIsADirectoryError,
    PyNotADirectoryError, PyOSError, PyPermissionError, PyTimeoutError,
};
use pyo3::PyErrArguments;
use pyo3::prelude::*;

create_exception!(
    pyagent._rust,
    RustPanicError,
    PyException,
    "A bug in PyAgent's Rust core (a Rust panic), raised as an Exception with the panic's message."
);

/// The Python exception for `err` on `path`: class by error kind, args `(errno, strerror, path)`.
pub fn os_error(path: &Path, err: &io::Error) -> PyErr {
    let text = err.to_string();
    // Rust appends " (os error N)"; Python shows errno on its own.
    let strerror = text.rfind(" (os error ").map_or(text.as_str(), |i| &text[..i]).to_string();
    let filename = path.display().to_string();
    match err.raw_os_error() {
        Some(errno) => by_kind(err.kind(), (errno, strerror, filename)),
        None => by_kind(err.kind(), format!("{strerror}: {filename}")),
    }
}

fn by_kind<A: PyErrArguments + Send + Sync + 'static>(kind: io::ErrorKind, args: A) -> PyErr {
    match kind {
        io::ErrorKind::NotFound => PyFileNotFoundError::new_err(args),
        io::ErrorKind::PermissionDenied => PyPermissionError::new_err(args),
        io::ErrorKind::IsADirectory => PyIsADirectoryError::new_err(args),
        io::ErrorKind::NotADirectory => PyNotADirectoryError::new_err(args),
        io::ErrorKind::AlreadyExists => PyFileExistsError::new_err(args),
        io::ErrorKind::Interrupted => PyInterruptedError::new_err(args),
        io::ErrorKind::TimedOut => PyTimeoutError::new_err(args),
        _ => PyOSError::new_err(args),
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "a panic without a message"
    }
}

/// Runs the body of a Python entry point; a panic in it (or in a worker thread it joined) becomes
/// `RustPanicError` instead of unwinding into pyo3.
pub fn guarded<T>(f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        Err(RustPanicError::new_err(format!(
            "internal error in pyagent._rust (please report it): {}",
            panic_message(payload.as_ref())
        )))
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("RustPanicError", m.py().get_type::<RustPanicError>())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_keep_their_python_class() {
        Python::attach(|py| {
            let p = Path::new("/some/where");
            let cases: [(i32, &str); 4] = [
                (libc::ENOENT, "FileNotFoundError"),
                (libc::EACCES, "PermissionError"),
                (libc::EISDIR, "IsADirectoryError"),
                (libc::ENOTDIR, "NotADirectoryError"),
            ];
            for (errno, class) in cases {
                let err = os_error(p, &io::Error::from_raw_os_error(errno));
                let value = err.value(py);
                assert_eq!(value.get_type().name().unwrap().to_string(), class);
                let attr = |name: &str| value.getattr(name).unwrap();
                assert_eq!(attr("errno").extract::<i32>().unwrap(), errno);
                assert_eq!(attr("filename").extract::<String>().unwrap(), "/some/where");
                let strerror = attr("strerror").extract::<String>().unwrap();
                assert!(!strerror.is_empty() && !strerror.contains("os error"), "{strerror}");
            }
            // A kind without an errno still picks its class.
            let err = os_error(p, &io::Error::from(io::ErrorKind::PermissionDenied));
            assert!(err.is_instance_of::<PyPermissionError>(py));
        });
    }

    #[test]
    fn a_panic_becomes_an_exception_not_a_base_exception() {
        let err = guarded(|| -> PyResult<()> { panic!("index {} out of range", 7) }).unwrap_err();
        Python::attach(|py| {
            assert!(err.is_instance_of::<RustPanicError>(py));
            assert!(err.is_instance_of::<PyException>(py));
            assert!(err.value(py).to_string().contains("index 7 out of range"));
        });
        // A panic in a joined worker thread is caught the same way.
        let err = guarded(|| -> PyResult<()> {
            std::thread::scope(|s| s.spawn(|| panic!("worker")).join().expect("worker thread"));
            Ok(())
        })
        .unwrap_err();
        Python::attach(|py| assert!(err.is_instance_of::<RustPanicError>(py)));
        assert_eq!(guarded(|| Ok(3)).unwrap(), 3);
    }
}
