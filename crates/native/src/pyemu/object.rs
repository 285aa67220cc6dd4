//! Lax reading of LM output, as DSPy does it.
//!
//! DSPy reads a typed field's text with `json_repair.loads`, falls back to
//! `ast.literal_eval`, and hands the result to pydantic in lax mode. This
//! module reproduces that pipeline: [`repair`] is a lenient JSON reader
//! following `json_repair`'s rules for the shapes LMs actually produce
//! (fenced blocks, single quotes, Python literals, trailing commas, missing
//! closers, comments, prose around the value), [`literal_eval`] is Python's,
//! and [`validate`] is pydantic's lax validation with pydantic's error text.

mod repair;
mod validate;

pub(crate) use repair::loads as repair_loads;
pub(crate) use validate::validate_python;

use dspex_core::Value;

use crate::py;
use crate::signature::{literal_eval_expr, LiteralEvalError};

/// A Python object produced by reading LM text.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PyObj {
    None,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<PyObj>),
    Tuple(Vec<PyObj>),
    Set(Vec<PyObj>),
    Dict(Vec<(PyObj, PyObj)>),
}

impl PyObj {
    /// The object a JSON value stands for.
    pub(crate) fn from_json(v: &Value) -> PyObj {
        match v {
            Value::Null => PyObj::None,
            Value::Bool(b) => PyObj::Bool(*b),
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    PyObj::Int(i as i128)
                } else if let Some(u) = n.as_u64() {
                    PyObj::Int(u as i128)
                } else {
                    PyObj::Float(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            Value::String(s) => PyObj::Str(s.clone()),
            Value::Array(items) => PyObj::List(items.iter().map(PyObj::from_json).collect()),
            Value::Object(map) => {
                PyObj::Dict(map.iter().map(|(k, v)| (PyObj::Str(k.clone()), PyObj::from_json(v))).collect())
            }
        }
    }

    /// The JSON value for this object: tuples and sets become arrays, dict keys strings.
    pub(crate) fn to_json(&self) -> Value {
        match self {
            PyObj::None => Value::Null,
            PyObj::Bool(b) => Value::Bool(*b),
            PyObj::Int(i) => {
                if let Ok(v) = i64::try_from(*i) {
                    Value::from(v)
                } else if let Ok(v) = u64::try_from(*i) {
                    Value::from(v)
                } else {
                    Value::from(*i as f64)
                }
            }
            PyObj::Float(f) => {
                serde_json::Number::from_f64(*f).map(Value::Number).unwrap_or_else(|| Value::String(py::float_repr(*f)))
            }
            PyObj::Str(s) => Value::String(s.clone()),
            PyObj::Bytes(b) => Value::String(String::from_utf8_lossy(b).into_owned()),
            PyObj::List(items) | PyObj::Tuple(items) | PyObj::Set(items) => {
                Value::Array(items.iter().map(PyObj::to_json).collect())
            }
            PyObj::Dict(pairs) => Value::Object(
                pairs
                    .iter()
                    .map(|(k, v)| {
                        let key = match k {
                            PyObj::Str(s) => s.clone(),
                            other => other.py_str(),
                        };
                        (key, v.to_json())
                    })
                    .collect(),
            ),
        }
    }

    /// Python's `repr()`.
    pub(crate) fn repr(&self) -> String {
        let mut out = String::new();
        self.write_repr(&mut out);
        out
    }

    fn write_repr(&self, out: &mut String) {
        let seq = |out: &mut String, items: &[PyObj], open: &str, close: &str| {
            out.push_str(open);
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                item.write_repr(out);
            }
            out.push_str(close);
        };
        match self {
            PyObj::None => out.push_str("None"),
            PyObj::Bool(true) => out.push_str("True"),
            PyObj::Bool(false) => out.push_str("False"),
            PyObj::Int(i) => out.push_str(&i.to_string()),
            PyObj::Float(f) => py::write_float_repr(out, *f),
            PyObj::Str(s) => py::write_str_repr(out, s),
            PyObj::Bytes(b) => {
                let s: String = b.iter().map(|&c| c as char).collect();
                out.push('b');
                py::write_str_repr(out, &s);
            }
            PyObj::List(items) => seq(out, items, "[", "]"),
            PyObj::Tuple(items) if items.len() == 1 => {
                out.push('(');
                items[0].write_repr(out);
                out.push_str(",)");
            }
            PyObj::Tuple(items) => seq(out, items, "(", ")"),
            PyObj::Set(items) if items.is_empty() => out.push_str("set()"),
            PyObj::Set(items) => seq(out, items, "{", "}"),
            PyObj::Dict(pairs) => {
                out.push('{');
                for (i, (k, v)) in pairs.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    k.write_repr(out);
                    out.push_str(": ");
                    v.write_repr(out);
                }
                out.push('}');
            }
        }
    }

    /// Python's `str()`.
    pub(crate) fn py_str(&self) -> String {
        match self {
            PyObj::Str(s) => s.clone(),
            other => other.repr(),
        }
    }

    /// The name of the object's class.
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            PyObj::None => "NoneType",
            PyObj::Bool(_) => "bool",
            PyObj::Int(_) => "int",
            PyObj::Float(_) => "float",
            PyObj::Str(_) => "str",
            PyObj::Bytes(_) => "bytes",
            PyObj::List(_) => "list",
            PyObj::Tuple(_) => "tuple",
            PyObj::Set(_) => "set",
            PyObj::Dict(_) => "dict",
        }
    }

    /// Python's `==` between objects (numbers compare across int, float and bool).
    pub(crate) fn py_eq(&self, other: &PyObj) -> bool {
        fn num(o: &PyObj) -> Option<f64> {
            match o {
                PyObj::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
                PyObj::Int(i) => Some(*i as f64),
                PyObj::Float(f) => Some(*f),
                _ => None,
            }
        }
        match (self, other) {
            (PyObj::Int(a), PyObj::Int(b)) => a == b,
            (a, b) if num(a).is_some() && num(b).is_some() => num(a) == num(b),
            (PyObj::List(a), PyObj::List(b)) | (PyObj::Tuple(a), PyObj::Tuple(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.py_eq(y))
            }
            (a, b) => a == b,
        }
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

    #[test]
    fn reprs() {
        let v = PyObj::Dict(vec![(PyObj::Str("k".into()), PyObj::Tuple(vec![PyObj::Int(1)]))]);
        assert_eq!(v.repr(), "{'k': (1,)}");
        assert!(PyObj::Int(1).py_eq(&PyObj::Float(1.0)));
        assert!(PyObj::Bool(true).py_eq(&PyObj::Int(1)));
        assert!(!PyObj::Str("1".into()).py_eq(&PyObj::Int(1)));
    }
}

#[cfg(test)]
mod parity {
    use super::*;

    /// `tests/fixtures/parity/lax.json`: json_repair and literal_eval results from real Python.
    #[test]
    fn lax_reading_matches_python() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/parity/lax.json");
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json");
        let cases = doc["cases"].as_array().cloned().unwrap_or_default();
        let mut bad = Vec::new();
        for case in &cases {
            let text = case["text"].as_str().unwrap_or_default();
            let got = repair_loads(text).to_json();
            if got != case["json_repair"] {
                bad.push(format!("json_repair {text:?}: got {got}, want {}", case["json_repair"]));
            }
            let want = &case["literal_eval"];
            match (literal_eval(text), want) {
                (Ok(None), Value::String(s)) if s == "fails" => {}
                (Err(_), Value::String(s)) if s == "unsupported" => {}
                (Ok(Some(v)), Value::Object(o)) if Some(&v.to_json()) == o.get("value") => {}
                (got, want) => bad.push(format!("literal_eval {text:?}: got {got:?}, want {want}")),
            }
        }
        assert!(bad.is_empty(), "{} of {} lax cases differ:\n{}", bad.len(), cases.len(), bad.join("\n"));
    }
}
