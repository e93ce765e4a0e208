//! Per-function cyclomatic complexity with the semantics of ruff's C901 (`complex-structure`).
//!
//! Decision points are counted on statements only: `if`/`elif`, loops, `except` handlers, a
//! `try`'s `else`, `match` cases (the last one not counted when it is an unguarded catch-all),
//! and every nested `def` (1 plus its own decisions; it is also reported on its own). Boolean
//! operators, comprehensions and conditional expressions add nothing, as in ruff.
use pyo3::prelude::*;
use ruff_python_ast::{self as ast, ExceptHandler, Stmt};
use ruff_source_file::LineIndex;
use ruff_text_size::{Ranged, TextSize};

/// One function or method as the audit reports it (Python: `pyagent._rust.FunctionHealth`).
#[pyclass(name = "FunctionHealth", frozen, eq, get_all, module = "pyagent._rust")]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionInfo {
    pub name: String,
    pub qualname: String,
    /// Line of the `def` (or `async`) keyword, decorators excluded.
    pub lineno: u32,
    pub endline: u32,
    pub complexity: u32,
}

/// ruff's count of decision points in a block.
pub fn complexity_of(stmts: &[Stmt]) -> u32 {
    let mut c = 0u32;
    for stmt in stmts {
        match stmt {
            Stmt::If(ast::StmtIf { body, elif_else_clauses, .. }) => {
                c += 1 + complexity_of(body);
                for clause in elif_else_clauses {
                    c += u32::from(clause.test.is_some()) + complexity_of(&clause.body);
                }
            }
            Stmt::For(ast::StmtFor { body, orelse, .. }) | Stmt::While(ast::StmtWhile { body, orelse, .. }) => {
                c += 1 + complexity_of(body) + complexity_of(orelse);
            }
            Stmt::With(ast::StmtWith { body, .. }) => c += complexity_of(body),
            Stmt::Match(ast::StmtMatch { cases, .. }) => {
                for case in cases {
                    c += 1 + complexity_of(&case.body);
                }
                if let Some(last) = cases.last() {
                    if last.guard.is_none() && last.pattern.is_irrefutable() {
                        c -= 1;
                    }
                }
            }
            Stmt::Try(ast::StmtTry { body, handlers, orelse, finalbody, .. }) => {
                c += complexity_of(body) + u32::from(!orelse.is_empty()) + complexity_of(orelse);
                c += complexity_of(finalbody);
                for handler in handlers {
                    let ExceptHandler::ExceptHandler(h) = handler;
                    c += 1 + complexity_of(&h.body);
                }
            }
            Stmt::FunctionDef(ast::StmtFunctionDef { body, .. }) => c += 1 + complexity_of(body),
            Stmt::ClassDef(ast::StmtClassDef { body, .. }) => c += complexity_of(body),
            _ => {}
        }
    }
    c
}

/// Offset of the `def`/`async` keyword: after the last decorator, past blanks and comments.
fn def_keyword_offset(def: &ast::StmtFunctionDef, source: &str) -> TextSize {
    let Some(last) = def.decorator_list.last() else {
        return def.start();
    };
    let bytes = source.as_bytes();
    let mut i = usize::from(last.end());
    while i < bytes.len() {
        match bytes[i] {
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' | b'\\' => i += 1,
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            _ => break,
        }
    }
    TextSize::try_from(i).unwrap_or(def.start())
}

struct Collector<'a> {
    source: &'a str,
    index: &'a LineIndex,
    prefix: Vec<String>,
    out: Vec<FunctionInfo>,
}

impl Collector<'_> {
    fn line(&self, offset: TextSize) -> u32 {
        self.index.line_index(offset).get() as u32
    }

    fn qualified(&self, name: &str) -> String {
        let mut q = self.prefix.concat();
        q.push_str(name);
        q
    }

    fn body(&mut self, stmts: &[Stmt]) {
        for stmt in stmts {
            self.stmt(stmt);
        }
    }

    fn stmt(&mut self, stmt: &Stmt) {
        match stmt {
            Stmt::FunctionDef(def) => {
                let name = def.name.id.as_str();
                self.out.push(FunctionInfo {
                    name: name.to_string(),
                    qualname: self.qualified(name),
                    lineno: self.line(def_keyword_offset(def, self.source)),
                    endline: self.line(def.end()),
                    complexity: 1 + complexity_of(&def.body),
                });
                self.prefix.push(format!("{name}.<locals>."));
                self.body(&def.body);
                self.prefix.pop();
            }
            Stmt::ClassDef(class) => {
                let name = class.name.id.as_str();
                self.prefix.push(format!("{name}."));
                self.body(&class.body);
                self.prefix.pop();
            }
            Stmt::If(s) => {
                self.body(&s.body);
                for clause in &s.elif_else_clauses {
                    self.body(&clause.body);
                }
            }
            Stmt::For(s) => {
                self.body(&s.body);
                self.body(&s.orelse);
            }
            Stmt::While(s) => {
                self.body(&s.body);
                self.body(&s.orelse);
            }
            Stmt::With(s) => self.body(&s.body),
            Stmt::Match(s) => {
                for case in &s.cases {
                    self.body(&case.body);
                }
            }
            Stmt::Try(s) => {
                self.body(&s.body);
                for handler in &s.handlers {
                    let ExceptHandler::ExceptHandler(h) = handler;
                    self.body(&h.body);
                }
                self.body(&s.orelse);
                self.body(&s.finalbody);
            }
            _ => {}
        }
    }
}

/// Every function and method of a module, in source order, with its C901 complexity.
pub fn functions(module: &[Stmt], source: &str, index: &LineIndex) -> Vec<FunctionInfo> {
    let mut c = Collector { source, index, prefix: Vec::new(), out: Vec::new() };
    c.body(module);
    c.out
}
