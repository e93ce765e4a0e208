//! Where an audit spends its time: single-threaded CPU seconds per metric phase over a tree.
//!
//!     cargo run --release --example phases -- /path/to/tree
use std::time::Instant;

fn main() {
    let root = std::env::args().nth(1).unwrap();
    let files: Vec<std::path::PathBuf> = ignore::Walk::new(&root).filter_map(|e| e.ok()).map(|e| e.into_path()).filter(|p| p.extension().is_some_and(|x| x == "py")).collect();
    let (mut tread, mut tparse, mut tc901, mut tcc, mut thal, mut traw) = (0f64,0f64,0f64,0f64,0f64,0f64);
    for f in &files {
        let t = Instant::now();
        let bytes = std::fs::read(f).unwrap();
        let Ok(text) = std::str::from_utf8(&bytes) else { continue };
        tread += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let Ok(parsed) = ruff_python_parser::parse_module(text) else { continue };
        tparse += t.elapsed().as_secs_f64();
        let body = &parsed.syntax().body;
        let t = Instant::now();
        let index = ruff_source_file::LineIndex::from_source_text(text);
        let _ = _rust::metrics::c901::functions(body, text, &index);
        tc901 += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let _ = _rust::metrics::radon_cc::total_complexity(body);
        tcc += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let _ = _rust::metrics::halstead::module_halstead(body);
        thal += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let _ = _rust::metrics::raw::analyze(text);
        traw += t.elapsed().as_secs_f64();
    }
    println!("read {tread:.3} parse {tparse:.3} c901 {tc901:.3} cc {tcc:.3} hal {thal:.3} raw {traw:.3}");
}
