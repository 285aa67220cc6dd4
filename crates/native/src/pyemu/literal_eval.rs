//! Python's `ast.literal_eval`.
//!
//! DSPy falls back to `ast.literal_eval` when `json_repair` finds no value in
//! a field's text. It parses the text as one expression (with the same
//! parser signatures use) and accepts only literal displays: constants,
//! tuples, lists, sets, dicts, `set()`, and unary `+`/`-` on numbers.
//! What this engine cannot represent (integers beyond 128 bits, complex
//! numbers, `Ellipsis`, unhashable set members or dict keys) is reported as
//! unsupported rather than guessed, so the caller can leave it to Python.

use super::object::PyObj;
use super::syntax::ast::{BinOp, Const, Expr, UnaryOp};
use super::syntax::parser;

/// Why `ast.literal_eval` failed.
enum LiteralEvalError {
    /// `ValueError` or `SyntaxError` (DSPy falls back to the raw text).
    Malformed,
    /// A literal the engine does not model (bytes, complex, Ellipsis).
    Unsupported(&'static str),
}

/// Python's `ast.literal_eval` over `text`.
fn literal_eval_expr(text: &str) -> std::result::Result<PyObj, LiteralEvalError> {
    fn convert(e: &Expr) -> std::result::Result<PyObj, LiteralEvalError> {
        crate::pyemu::with_stack(|| convert_here(e))
    }
    fn convert_here(e: &Expr) -> std::result::Result<PyObj, LiteralEvalError> {
        Ok(match e {
            Expr::Constant(c) => match c {
                Const::Int(i) => PyObj::Int(*i),
                Const::BigInt(_) => return Err(LiteralEvalError::Unsupported("an integer beyond 128 bits")),
                Const::Float(f) => PyObj::Float(*f),
                Const::Str { value, .. } => PyObj::Str(value.clone()),
                Const::Bytes(b) => PyObj::Bytes(b.clone()),
                Const::Bool(b) => PyObj::Bool(*b),
                Const::None => PyObj::None,
                Const::Complex(_) => return Err(LiteralEvalError::Unsupported("a complex number")),
                Const::Ellipsis => return Err(LiteralEvalError::Unsupported("Ellipsis")),
            },
            Expr::Tuple(items) => PyObj::Tuple(items.iter().map(convert).collect::<std::result::Result<_, _>>()?),
            Expr::List(items) => PyObj::List(items.iter().map(convert).collect::<std::result::Result<_, _>>()?),
            Expr::Set(items) => {
                let mut out: Vec<PyObj> = Vec::new();
                for item in items {
                    let v = convert(item)?;
                    if matches!(v, PyObj::List(_) | PyObj::Dict(_) | PyObj::Set(_)) {
                        return Err(LiteralEvalError::Unsupported("an unhashable set member"));
                    }
                    if !out.iter().any(|o| o.py_eq(&v)) {
                        out.push(v);
                    }
                }
                PyObj::Set(out)
            }
            Expr::Dict(pairs) => {
                let mut out: Vec<(PyObj, PyObj)> = Vec::new();
                for (k, v) in pairs {
                    let Some(k) = k else {
                        return Err(LiteralEvalError::Malformed);
                    };
                    let k = convert(k)?;
                    if matches!(k, PyObj::List(_) | PyObj::Dict(_) | PyObj::Set(_)) {
                        return Err(LiteralEvalError::Unsupported("an unhashable dict key"));
                    }
                    let v = convert(v)?;
                    match out.iter_mut().find(|(ok, _)| ok.py_eq(&k)) {
                        Some(slot) => slot.1 = v,
                        None => out.push((k, v)),
                    }
                }
                PyObj::Dict(out)
            }
            Expr::UnaryOp(op @ (UnaryOp::USub | UnaryOp::UAdd), inner) => match (op, convert(inner)?) {
                (UnaryOp::USub, PyObj::Int(i)) => PyObj::Int(-i),
                (UnaryOp::USub, PyObj::Float(f)) => PyObj::Float(-f),
                (UnaryOp::UAdd, v @ (PyObj::Int(_) | PyObj::Float(_))) => v,
                _ => return Err(LiteralEvalError::Malformed),
            },
            Expr::BinOp(_, BinOp::Add | BinOp::Sub, right)
                if matches!(right.as_ref(), Expr::Constant(Const::Complex(_))) =>
            {
                return Err(LiteralEvalError::Unsupported("complex arithmetic"))
            }
            Expr::Call { func, args, keywords }
                if args.is_empty() && keywords.is_empty() && matches!(func.as_ref(), Expr::Name(n) if n == "set") =>
            {
                PyObj::Set(Vec::new())
            }
            _ => return Err(LiteralEvalError::Malformed),
        })
    }
    match parser::parse_expression(text) {
        Ok(expr) => convert(&expr),
        Err(e) if e.unsupported => Err(LiteralEvalError::Unsupported("syntax the native parser does not model")),
        Err(_) => Err(LiteralEvalError::Malformed),
    }
}

/// `ast.literal_eval(text)`: `Ok(None)` stands for the `ValueError` /
/// `SyntaxError` DSPy catches; other failures are `Unsupported`.
pub(crate) fn literal_eval(text: &str) -> Result<Option<PyObj>, dspex_core::Error> {
    match literal_eval_expr(text.trim_start_matches([' ', '\t'])) {
        Ok(obj) => Ok(Some(obj)),
        Err(LiteralEvalError::Malformed) => Ok(None),
        Err(LiteralEvalError::Unsupported(what)) => {
            Err(dspex_core::Error::unsupported(format!("ast.literal_eval of {what} is not modelled natively")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_eval_like_python() {
        let ok = |s: &str| literal_eval(s).unwrap().unwrap();
        assert_eq!(ok("'pos'"), PyObj::Str("pos".into()));
        assert_eq!(ok("None"), PyObj::None);
        assert_eq!(ok(" (1, -2.5)"), PyObj::Tuple(vec![PyObj::Int(1), PyObj::Float(-2.5)]));
        assert_eq!(
            ok("{'a': [True]}"),
            PyObj::Dict(vec![(PyObj::Str("a".into()), PyObj::List(vec![PyObj::Bool(true)]))])
        );
        assert_eq!(ok("set()"), PyObj::Set(vec![]));
        assert_eq!(literal_eval("abc").unwrap(), None);
        assert_eq!(literal_eval("a b").unwrap(), None);
        assert_eq!(literal_eval("1 +").unwrap(), None);
    }
}
