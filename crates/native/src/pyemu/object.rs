//! Python objects, as reading LM output produces them.
//!
//! `json_repair.loads` and `ast.literal_eval` return Python values (`None`,
//! ints, tuples, sets, dicts with non-string keys) that pydantic then
//! validates; JSON has no room for most of these distinctions, and pydantic's
//! messages print the objects with `repr()`. [`PyObj`] keeps them apart and
//! reproduces `repr()`, `str()` and `==` across numeric types.

use dspex_core::Value;

use crate::py;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reprs() {
        let v = PyObj::Dict(vec![(PyObj::Str("k".into()), PyObj::Tuple(vec![PyObj::Int(1)]))]);
        assert_eq!(v.repr(), "{'k': (1,)}");
        assert!(PyObj::Int(1).py_eq(&PyObj::Float(1.0)));
        assert!(PyObj::Bool(true).py_eq(&PyObj::Int(1)));
        assert!(!PyObj::Str("1".into()).py_eq(&PyObj::Int(1)));
    }
}
