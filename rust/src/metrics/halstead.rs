//! Module Halstead metrics as radon 6.0.1 defines them (`radon.visitors.HalsteadVisitor`, `h_visit`).
//!
//! Operators are the binary, unary, boolean, augmented-assignment and comparison operators, told
//! apart by their AST class (so `+=` and `+` are the same operator, unary `+` another). Operands
//! are the operator's direct children, keyed the way radon keys them: a name by its identifier, an
//! attribute by its attribute name, a literal by its value with Python's equality (`1 == 1.0 ==
//! True`, and a name `x` equals the string `'x'`), anything else by identity (always distinct);
//! each key is qualified by the innermost enclosing function name. Only function bodies are
//! visited (not decorators, defaults or annotations of a `def`), as in radon.
use std::collections::{HashMap, HashSet};

use pyo3::prelude::*;
use ruff_python_ast::visitor::{walk_expr, walk_stmt, Visitor};
use ruff_python_ast::{self as ast, BoolOp, CmpOp, Expr, Number, Operator, Stmt, UnaryOp};

/// radon's `HalsteadReport` (Python: `pyagent._rust.Halstead`, with radon's field names).
#[pyclass(frozen, eq, get_all, module = "pyagent._rust")]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Halstead {
    pub h1: u64,
    pub h2: u64,
    #[pyo3(name = "N1")]
    pub n1: u64,
    #[pyo3(name = "N2")]
    pub n2: u64,
    pub vocabulary: u64,
    pub length: u64,
    pub calculated_length: f64,
    pub volume: f64,
    pub difficulty: f64,
    pub effort: f64,
    pub time: f64,
    pub bugs: f64,
}

/// An operand's identity under Python `==`/`hash` of radon's key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key<'a> {
    Str(&'a str),
    Bytes(Vec<u8>),
    Int(i128),
    Float(u64),
    Complex(u64, u64),
    BigInt(String),
    None,
    Ellipsis,
    Unique(u64),
}

fn float_key(f: f64) -> Key<'static> {
    if f.is_finite() && f.fract() == 0.0 && f.abs() < 1.0e38 {
        Key::Int(f as i128)
    } else {
        Key::Float(f.to_bits())
    }
}

fn op_id(op: Operator) -> u32 {
    op as u32
}

fn unary_id(op: UnaryOp) -> u32 {
    16 + op as u32
}

fn bool_id(op: BoolOp) -> u32 {
    20 + op as u32
}

fn cmp_id(op: CmpOp) -> u32 {
    22 + op as u32
}

struct Hal<'a> {
    context: u32,
    contexts: HashMap<&'a str, u32>,
    operators_seen: u64,
    operators: u64,
    operands: u64,
    operands_seen: HashSet<(u32, Key<'a>)>,
    next_unique: u64,
}

impl<'a> Hal<'a> {
    fn key(&mut self, e: &'a Expr) -> Key<'a> {
        match e {
            Expr::Name(n) => Key::Str(n.id.as_str()),
            Expr::Attribute(a) => Key::Str(a.attr.id.as_str()),
            Expr::StringLiteral(s) => Key::Str(s.value.to_str()),
            Expr::BytesLiteral(b) => Key::Bytes(b.value.bytes().collect()),
            Expr::NumberLiteral(n) => match &n.value {
                Number::Int(i) => match i.as_i64() {
                    Some(v) => Key::Int(i128::from(v)),
                    None => {
                        let text = i.to_string();
                        text.parse::<i128>().map_or(Key::BigInt(text), Key::Int)
                    }
                },
                Number::Float(f) => float_key(*f),
                Number::Complex { real, imag } => {
                    if *imag == 0.0 {
                        float_key(*real)
                    } else {
                        Key::Complex(real.to_bits(), imag.to_bits())
                    }
                }
            },
            Expr::BooleanLiteral(b) => Key::Int(i128::from(b.value)),
            Expr::NoneLiteral(_) => Key::None,
            Expr::EllipsisLiteral(_) => Key::Ellipsis,
            _ => {
                self.next_unique += 1;
                Key::Unique(self.next_unique)
            }
        }
    }

    fn record(&mut self, operators: u64, op_ids: &[u32], operands: &[&'a Expr]) {
        self.operators += operators;
        self.operands += operands.len() as u64;
        for id in op_ids {
            self.operators_seen |= 1u64 << id;
        }
        for e in operands {
            let k = self.key(e);
            self.operands_seen.insert((self.context, k));
        }
    }

    /// A small id per distinct function name (0 is module level), as radon keys operands by name.
    fn context_id(&mut self, name: &'a str) -> u32 {
        let next = self.contexts.len() as u32 + 1;
        *self.contexts.entry(name).or_insert(next)
    }
}

impl<'a> Visitor<'a> for Hal<'a> {
    fn visit_stmt(&mut self, stmt: &'a Stmt) {
        match stmt {
            Stmt::FunctionDef(def) => {
                let saved = self.context;
                self.context = self.context_id(def.name.id.as_str());
                for s in &def.body {
                    self.visit_stmt(s);
                }
                self.context = saved;
            }
            Stmt::AugAssign(ast::StmtAugAssign { target, op, value, .. }) => {
                self.record(1, &[op_id(*op)], &[target, value]);
                walk_stmt(self, stmt);
            }
            _ => walk_stmt(self, stmt),
        }
    }

    fn visit_expr(&mut self, expr: &'a Expr) {
        match expr {
            Expr::BinOp(b) => self.record(1, &[op_id(b.op)], &[&b.left, &b.right]),
            Expr::UnaryOp(u) => self.record(1, &[unary_id(u.op)], &[&u.operand]),
            Expr::BoolOp(b) => {
                let values: Vec<&'a Expr> = b.values.iter().collect();
                self.record(1, &[bool_id(b.op)], &values);
            }
            Expr::Compare(c) => {
                let ids: Vec<u32> = c.ops.iter().map(|o| cmp_id(*o)).collect();
                let mut operands: Vec<&'a Expr> = c.comparators.iter().collect();
                operands.push(&c.left);
                self.record(c.ops.len() as u64, &ids, &operands);
            }
            _ => {}
        }
        walk_expr(self, expr);
    }
}

/// radon's `halstead_visitor_report`, with Python's float arithmetic (`math.log(x, 2)` is
/// `ln x / ln 2`), so results are bit-identical.
pub fn report(h1: u64, h2: u64, n1: u64, n2: u64) -> Halstead {
    let log2 = |x: u64| (x as f64).ln() / 2f64.ln();
    let h = h1 + h2;
    let n = n1 + n2;
    let calculated_length = if h1 != 0 && h2 != 0 { h1 as f64 * log2(h1) + h2 as f64 * log2(h2) } else { 0.0 };
    let volume = if h != 0 { n as f64 * log2(h) } else { 0.0 };
    let difficulty = if h2 != 0 { (h1 * n2) as f64 / (2 * h2) as f64 } else { 0.0 };
    let effort = difficulty * volume;
    Halstead {
        h1,
        h2,
        n1,
        n2,
        vocabulary: h,
        length: n,
        calculated_length,
        volume,
        difficulty,
        effort,
        time: effort / 18.0,
        bugs: volume / 3000.0,
    }
}

/// Module totals (radon's `h_visit(code).total`).
pub fn module_halstead(module: &[Stmt]) -> Halstead {
    let mut v = Hal {
        context: 0,
        contexts: HashMap::new(),
        operators_seen: 0,
        operators: 0,
        operands: 0,
        operands_seen: HashSet::new(),
        next_unique: 0,
    };
    for stmt in module {
        v.visit_stmt(stmt);
    }
    report(u64::from(v.operators_seen.count_ones()), v.operands_seen.len() as u64, v.operators, v.operands)
}
