//! Module total cyclomatic complexity as radon 6.0.1 computes it (`ComplexityVisitor.total_complexity`),
//! the `G` of the Maintainability Index.
//!
//! radon's rules differ from ruff's C901 on purpose and we keep them so MI matches `radon mi`:
//! `and`/`or` add operands − 1, comprehensions 1 + their `if`s, conditional expressions and `assert`
//! 1, loops 1 + a non-empty `else`, `try` its handlers + a non-empty `else` (`try … except*` adds
//! nothing), `match` its cases minus one when any case is a bare capture or `_`. Functions count
//! their decisions; methods count 1 + their decisions; functions nested in functions, classes
//! nested in functions or classes, decorators, defaults and class bases are not visited at all.
use ruff_python_ast::visitor::{walk_comprehension, walk_expr, walk_stmt, Visitor};
use ruff_python_ast::{self as ast, Comprehension, Expr, Pattern, Stmt};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Module,
    Class,
    Function,
}

struct Radon {
    mode: Mode,
    total: u64,
}

impl Radon {
    fn body_in(&mut self, body: &[Stmt], mode: Mode) {
        let saved = self.mode;
        self.mode = mode;
        for stmt in body {
            self.visit_stmt(stmt);
        }
        self.mode = saved;
    }
}

impl<'a> Visitor<'a> for Radon {
    fn visit_stmt(&mut self, stmt: &'a Stmt) {
        match stmt {
            Stmt::FunctionDef(def) => match self.mode {
                Mode::Module => self.body_in(&def.body, Mode::Function),
                Mode::Class => {
                    self.total += 1;
                    self.body_in(&def.body, Mode::Function);
                }
                Mode::Function => {}
            },
            Stmt::ClassDef(class) => {
                if self.mode == Mode::Module {
                    self.body_in(&class.body, Mode::Class);
                }
            }
            Stmt::Assert(_) => self.total += 1,
            _ => {
                self.total += match stmt {
                    Stmt::If(s) => 1 + s.elif_else_clauses.iter().filter(|c| c.test.is_some()).count() as u64,
                    Stmt::For(ast::StmtFor { orelse, .. }) | Stmt::While(ast::StmtWhile { orelse, .. }) => {
                        1 + u64::from(!orelse.is_empty())
                    }
                    Stmt::Try(s) if !s.is_star => s.handlers.len() as u64 + u64::from(!s.orelse.is_empty()),
                    Stmt::Match(s) => {
                        let catch_all = s
                            .cases
                            .iter()
                            .any(|c| matches!(&c.pattern, Pattern::MatchAs(p) if p.pattern.is_none()));
                        (s.cases.len() as u64).saturating_sub(u64::from(catch_all))
                    }
                    _ => 0,
                };
                walk_stmt(self, stmt);
            }
        }
    }

    fn visit_expr(&mut self, expr: &'a Expr) {
        match expr {
            Expr::BoolOp(b) => self.total += b.values.len().saturating_sub(1) as u64,
            Expr::If(_) => self.total += 1,
            _ => {}
        }
        walk_expr(self, expr);
    }

    fn visit_comprehension(&mut self, comprehension: &'a Comprehension) {
        self.total += 1 + comprehension.ifs.len() as u64;
        walk_comprehension(self, comprehension);
    }
}

/// radon's `total_complexity` of a module.
pub fn total_complexity(module: &[Stmt]) -> u64 {
    let mut v = Radon { mode: Mode::Module, total: 1 };
    for stmt in module {
        v.visit_stmt(stmt);
    }
    v.total
}
