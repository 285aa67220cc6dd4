//! Python's expression tree, as `ast.parse` builds it for the subset this
//! engine reads, and `ast.dump`'s rendering of it (DSPy puts that dump in its
//! "unhandled AST node" error, so it must match Python 3.11 byte for byte).

use crate::py;

/// A Python constant.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Const {
    Int(i128),
    BigInt(String),
    Float(f64),
    Complex(f64),
    Str { value: String, u_prefix: bool },
    Bytes(Vec<u8>),
    Bool(bool),
    None,
    Ellipsis,
}

impl Const {
    /// Python's `repr()` of the constant.
    pub(crate) fn repr(&self) -> String {
        match self {
            Const::Int(i) => i.to_string(),
            Const::BigInt(s) => s.clone(),
            Const::Float(f) => py::float_repr(*f),
            Const::Complex(f) => format!("{}j", py::float_repr(*f).trim_end_matches(".0")),
            Const::Str { value, .. } => py::str_repr(value),
            Const::Bytes(b) => {
                let s: String = b.iter().map(|&c| c as char).collect();
                let r = py::str_repr(&s);
                format!("b{r}")
            }
            Const::Bool(true) => "True".into(),
            Const::Bool(false) => "False".into(),
            Const::None => "None".into(),
            Const::Ellipsis => "Ellipsis".into(),
        }
    }

    /// Python's `str()` of the constant.
    pub(crate) fn str(&self) -> String {
        match self {
            Const::Str { value, .. } => value.clone(),
            other => other.repr(),
        }
    }

    /// The name of the constant's class, as `type(x)` prints it.
    pub(crate) fn class_name(&self) -> &'static str {
        match self {
            Const::Int(_) | Const::BigInt(_) => "int",
            Const::Float(_) => "float",
            Const::Complex(_) => "complex",
            Const::Str { .. } => "str",
            Const::Bytes(_) => "bytes",
            Const::Bool(_) => "bool",
            Const::None => "NoneType",
            Const::Ellipsis => "ellipsis",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum BinOp {
    Add,
    Sub,
    Mult,
    MatMult,
    Div,
    Mod,
    Pow,
    LShift,
    RShift,
    BitOr,
    BitXor,
    BitAnd,
    FloorDiv,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum UnaryOp {
    Invert,
    Not,
    UAdd,
    USub,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum CmpOp {
    Eq,
    NotEq,
    Lt,
    LtE,
    Gt,
    GtE,
    Is,
    IsNot,
    In,
    NotIn,
}

/// A Python expression (the subset signature annotations can contain).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    Name(String),
    Constant(Const),
    JoinedStr,
    Attribute(Box<Expr>, String),
    Subscript(Box<Expr>, Box<Expr>),
    Call { func: Box<Expr>, args: Vec<Expr>, keywords: Vec<(Option<String>, Expr)> },
    BinOp(Box<Expr>, BinOp, Box<Expr>),
    UnaryOp(UnaryOp, Box<Expr>),
    BoolOp(bool, Vec<Expr>),
    Compare(Box<Expr>, Vec<(CmpOp, Expr)>),
    IfExp(Box<Expr>, Box<Expr>, Box<Expr>),
    Tuple(Vec<Expr>),
    List(Vec<Expr>),
    Set(Vec<Expr>),
    Dict(Vec<(Option<Expr>, Expr)>),
    Slice(Option<Box<Expr>>, Option<Box<Expr>>, Option<Box<Expr>>),
    Starred(Box<Expr>),
}

impl Expr {
    /// `ast.dump(node)` as Python 3.11 prints it.
    pub(crate) fn dump(&self) -> String {
        let list = |items: &[Expr]| items.iter().map(Expr::dump).collect::<Vec<_>>().join(", ");
        match self {
            Expr::Name(id) => format!("Name(id={}, ctx=Load())", py::str_repr(id)),
            Expr::Constant(Const::Str { value, u_prefix: true }) => {
                format!("Constant(value={}, kind='u')", py::str_repr(value))
            }
            Expr::Constant(c) => format!("Constant(value={})", c.repr()),
            Expr::JoinedStr => "JoinedStr(values=[])".into(),
            Expr::Attribute(v, attr) => {
                format!("Attribute(value={}, attr={}, ctx=Load())", v.dump(), py::str_repr(attr))
            }
            Expr::Subscript(v, s) => format!("Subscript(value={}, slice={}, ctx=Load())", v.dump(), s.dump()),
            Expr::Call { func, args, keywords } => {
                let kws = keywords
                    .iter()
                    .map(|(k, v)| match k {
                        Some(k) => format!("keyword(arg={}, value={})", py::str_repr(k), v.dump()),
                        None => format!("keyword(value={})", v.dump()),
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                format!("Call(func={}, args=[{}], keywords=[{}])", func.dump(), list(args), kws)
            }
            Expr::BinOp(l, op, r) => format!("BinOp(left={}, op={:?}(), right={})", l.dump(), op, r.dump()),
            Expr::UnaryOp(op, v) => format!("UnaryOp(op={:?}(), operand={})", op, v.dump()),
            Expr::BoolOp(and, values) => {
                format!("BoolOp(op={}(), values=[{}])", if *and { "And" } else { "Or" }, list(values))
            }
            Expr::Compare(l, rest) => {
                let ops = rest.iter().map(|(op, _)| format!("{op:?}()")).collect::<Vec<_>>().join(", ");
                let cmps = rest.iter().map(|(_, e)| e.dump()).collect::<Vec<_>>().join(", ");
                format!("Compare(left={}, ops=[{}], comparators=[{}])", l.dump(), ops, cmps)
            }
            Expr::IfExp(t, b, o) => format!("IfExp(test={}, body={}, orelse={})", t.dump(), b.dump(), o.dump()),
            Expr::Tuple(items) => format!("Tuple(elts=[{}], ctx=Load())", list(items)),
            Expr::List(items) => format!("List(elts=[{}], ctx=Load())", list(items)),
            Expr::Set(items) => format!("Set(elts=[{}])", list(items)),
            Expr::Dict(items) => {
                let keys = items
                    .iter()
                    .map(|(k, _)| k.as_ref().map_or_else(|| "None".to_string(), Expr::dump))
                    .collect::<Vec<_>>()
                    .join(", ");
                let values = items.iter().map(|(_, v)| v.dump()).collect::<Vec<_>>().join(", ");
                format!("Dict(keys=[{keys}], values=[{values}])")
            }
            Expr::Slice(lo, hi, step) => {
                let mut parts = Vec::new();
                for (name, part) in [("lower", lo), ("upper", hi), ("step", step)] {
                    if let Some(p) = part {
                        parts.push(format!("{name}={}", p.dump()));
                    }
                }
                format!("Slice({})", parts.join(", "))
            }
            Expr::Starred(v) => format!("Starred(value={}, ctx=Load())", v.dump()),
        }
    }
}
