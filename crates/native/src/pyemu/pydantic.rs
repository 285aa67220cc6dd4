//! pydantic's lax validation (`TypeAdapter(t).validate_python(v)`), with its
//! error text.

use std::fmt;

use dspex_core::{Constraint, FieldType, LiteralValue};

use super::PyObj;

/// One failed check inside a value.
#[derive(Debug, Clone, PartialEq)]
struct LineError {
    loc: Vec<String>,
    kind: &'static str,
    msg: String,
    input: PyObj,
}

/// A pydantic `ValidationError`; `Display` renders `str(error)` exactly.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ValidationError {
    title: String,
    errors: Vec<LineError>,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        write!(f, "{n} validation error{} for {}", if n == 1 { "" } else { "s" }, self.title)?;
        for e in &self.errors {
            f.write_str("\n")?;
            if !e.loc.is_empty() {
                writeln!(f, "{}", e.loc.join("."))?;
            }
            write!(
                f,
                "  {} [type={}, input_value={}, input_type={}]\n    For further information visit https://errors.pydantic.dev/{}/v/{}",
                e.msg,
                e.kind,
                truncate_repr(&e.input.repr()),
                e.input.type_name(),
                crate::PYDANTIC_DOCS_VERSION,
                e.kind
            )?;
        }
        Ok(())
    }
}

/// pydantic shortens long `input_value`s to their first 25 and last 24 bytes.
fn truncate_repr(repr: &str) -> String {
    if repr.len() <= 50 {
        return repr.to_string();
    }
    let mut head = 25;
    while !repr.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = repr.len() - 24;
    while !repr.is_char_boundary(tail) {
        tail += 1;
    }
    format!("{}...{}", &repr[..head], &repr[tail..])
}

/// pydantic's title for a type, used in error headers and union locations.
fn title(t: &FieldType) -> String {
    let opt = |t: &Option<Box<FieldType>>| t.as_deref().map_or_else(|| "any".to_string(), title);
    match t {
        FieldType::Str => "str".into(),
        FieldType::Int => "int".into(),
        FieldType::Float => "float".into(),
        FieldType::Bool => "bool".into(),
        FieldType::Bytes => "bytes".into(),
        FieldType::None => "none".into(),
        FieldType::Any => "any".into(),
        FieldType::List(i) => format!("list[{}]", opt(i)),
        FieldType::Set(i) => format!("set[{}]", opt(i)),
        FieldType::FrozenSet(i) => format!("frozenset[{}]", opt(i)),
        FieldType::Dict(None) => "dict[any,any]".into(),
        FieldType::Dict(Some((k, v))) => format!("dict[{},{}]", title(k), title(v)),
        FieldType::Tuple(None) => "tuple[any, ...]".into(),
        FieldType::Tuple(Some(items)) => format!("tuple[{}]", items.iter().map(title).collect::<Vec<_>>().join(", ")),
        FieldType::VarTuple(i) => format!("tuple[{}, ...]", title(i)),
        FieldType::Literal(values) => {
            format!("literal[{}]", values.iter().map(literal_repr).collect::<Vec<_>>().join(","))
        }
        FieldType::Union(members) => {
            let others: Vec<&FieldType> = members.iter().filter(|m| **m != FieldType::None).collect();
            let inner = if others.len() == 1 {
                title(others[0])
            } else {
                format!("union[{}]", others.iter().map(|t| title(t)).collect::<Vec<_>>().join(","))
            };
            if others.len() < members.len() {
                format!("nullable[{inner}]")
            } else {
                inner
            }
        }
        // Bounds on numbers and lengths on strings make pydantic build a
        // "constrained" scalar; lengths on containers keep their title.
        FieldType::Annotated { inner, constraints, .. } => {
            let constrained = match inner.as_ref() {
                FieldType::Int | FieldType::Float => {
                    constraints.iter().any(|c| !matches!(c, Constraint::AllowInfNan(_)))
                }
                FieldType::Str => !constraints.is_empty(),
                _ => false,
            };
            if constrained {
                format!("constrained-{}", title(inner))
            } else {
                title(inner)
            }
        }
        other => other.annotation_name(),
    }
}

fn literal_repr(v: &LiteralValue) -> String {
    match v {
        LiteralValue::Str(s) => crate::py::str_repr(s),
        other => other.py_str(),
    }
}

fn literal_obj(v: &LiteralValue) -> PyObj {
    match v {
        LiteralValue::Str(s) => PyObj::Str(s.clone()),
        LiteralValue::Int(i) => PyObj::Int(*i as i128),
        LiteralValue::Bool(b) => PyObj::Bool(*b),
        LiteralValue::None => PyObj::None,
    }
}

fn err(kind: &'static str, msg: impl Into<String>, input: &PyObj) -> Vec<LineError> {
    vec![LineError { loc: Vec::new(), kind, msg: msg.into(), input: input.clone() }]
}

fn prefixed(mut errors: Vec<LineError>, loc: String) -> Vec<LineError> {
    for e in &mut errors {
        e.loc.insert(0, loc.clone());
    }
    errors
}

/// `TypeAdapter(t).validate_python(v)` in lax mode.
pub(crate) fn validate_python(t: &FieldType, v: &PyObj) -> Result<PyObj, ValidationError> {
    validate(t, v, false).map_err(|errors| ValidationError { title: title(t), errors })
}

/// Python's `int(text)` rules as pydantic applies them to strings.
fn parse_int_str(s: &str) -> Option<i128> {
    let t = crate::py::strip(s);
    let (neg, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    // "7.0" and "7.00" count as integers; "7." does not.
    let digits = match digits.split_once('.') {
        Some((int_part, frac)) if !frac.is_empty() && frac.bytes().all(|b| b == b'0') => int_part,
        Some(_) => return None,
        None => digits,
    };
    if digits.is_empty() || digits.starts_with('_') || digits.ends_with('_') || digits.contains("__") {
        return None;
    }
    if !digits.bytes().all(|b| b.is_ascii_digit() || b == b'_') {
        return None;
    }
    let clean: String = digits.chars().filter(|c| *c != '_').collect();
    clean.parse::<i128>().ok().map(|v| if neg { -v } else { v })
}

/// Python's `float(text)`.
fn parse_float_str(s: &str) -> Option<f64> {
    let t = crate::py::strip(s);
    if t.is_empty() {
        return None;
    }
    let lower = t.to_ascii_lowercase();
    let unsigned = lower.trim_start_matches(['+', '-']);
    if matches!(unsigned, "inf" | "infinity" | "nan") {
        return lower.parse::<f64>().ok();
    }
    // Underscores only between digits.
    let b = t.as_bytes();
    for (k, &c) in b.iter().enumerate() {
        if c == b'_' {
            let ok = k > 0 && k + 1 < b.len() && b[k - 1].is_ascii_digit() && b[k + 1].is_ascii_digit();
            if !ok {
                return None;
            }
        } else if !(c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E' | b'+' | b'-')) {
            return None;
        }
    }
    t.replace('_', "").parse::<f64>().ok()
}

fn sequence_items(v: &PyObj) -> Option<&[PyObj]> {
    match v {
        PyObj::List(items) | PyObj::Tuple(items) | PyObj::Set(items) => Some(items),
        _ => None,
    }
}

fn validate_items(item: Option<&FieldType>, items: &[PyObj], strict: bool) -> Result<Vec<PyObj>, Vec<LineError>> {
    let mut out = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    for (i, x) in items.iter().enumerate() {
        match item {
            None => out.push(x.clone()),
            Some(t) => match validate(t, x, strict) {
                Ok(v) => out.push(v),
                Err(e) => errors.extend(prefixed(e, i.to_string())),
            },
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn validate(t: &FieldType, v: &PyObj, strict: bool) -> Result<PyObj, Vec<LineError>> {
    match t {
        FieldType::Any => Ok(v.clone()),
        FieldType::Str => match v {
            PyObj::Str(_) => Ok(v.clone()),
            PyObj::Bytes(b) if !strict => match String::from_utf8(b.clone()) {
                Ok(s) => Ok(PyObj::Str(s)),
                Err(_) => Err(err(
                    "string_unicode",
                    "Input should be a valid string, unable to parse raw data as a unicode string",
                    v,
                )),
            },
            _ => Err(err("string_type", "Input should be a valid string", v)),
        },
        FieldType::None => match v {
            PyObj::None => Ok(PyObj::None),
            _ => Err(err("none_required", "Input should be None", v)),
        },
        FieldType::Int => match v {
            PyObj::Int(_) => Ok(v.clone()),
            PyObj::Bool(b) if !strict => Ok(PyObj::Int(*b as i128)),
            PyObj::Float(f) if !strict => {
                if !f.is_finite() {
                    Err(err("finite_number", "Input should be a finite number", v))
                } else if f.fract() != 0.0 {
                    Err(err(
                        "int_from_float",
                        "Input should be a valid integer, got a number with a fractional part",
                        v,
                    ))
                } else if f.abs() >= 9.223_372_036_854_776e18 {
                    Err(err("int_parsing_size", "Unable to parse input string as an integer, exceeded maximum size", v))
                } else {
                    Ok(PyObj::Int(*f as i128))
                }
            }
            PyObj::Str(s) if !strict => match parse_int_str(s) {
                Some(i) => Ok(PyObj::Int(i)),
                None => {
                    Err(err("int_parsing", "Input should be a valid integer, unable to parse string as an integer", v))
                }
            },
            _ => Err(err("int_type", "Input should be a valid integer", v)),
        },
        FieldType::Float => match v {
            PyObj::Float(_) => Ok(v.clone()),
            PyObj::Int(i) => Ok(PyObj::Float(*i as f64)),
            PyObj::Bool(b) if !strict => Ok(PyObj::Float(if *b { 1.0 } else { 0.0 })),
            PyObj::Str(s) if !strict => match parse_float_str(s) {
                Some(f) => Ok(PyObj::Float(f)),
                None => {
                    Err(err("float_parsing", "Input should be a valid number, unable to parse string as a number", v))
                }
            },
            _ => Err(err("float_type", "Input should be a valid number", v)),
        },
        FieldType::Bool => match v {
            PyObj::Bool(_) => Ok(v.clone()),
            PyObj::Int(0) if !strict => Ok(PyObj::Bool(false)),
            PyObj::Int(1) if !strict => Ok(PyObj::Bool(true)),
            PyObj::Int(_) if !strict => {
                Err(err("bool_parsing", "Input should be a valid boolean, unable to interpret input", v))
            }
            PyObj::Float(f) if !strict && (*f == 0.0 || *f == 1.0) => Ok(PyObj::Bool(*f == 1.0)),
            PyObj::Str(s) if !strict => match s.to_ascii_lowercase().as_str() {
                "0" | "off" | "f" | "false" | "n" | "no" => Ok(PyObj::Bool(false)),
                "1" | "on" | "t" | "true" | "y" | "yes" => Ok(PyObj::Bool(true)),
                _ => Err(err("bool_parsing", "Input should be a valid boolean, unable to interpret input", v)),
            },
            _ => Err(err("bool_type", "Input should be a valid boolean", v)),
        },
        FieldType::Bytes => match v {
            PyObj::Bytes(_) => Ok(v.clone()),
            PyObj::Str(s) if !strict => Ok(PyObj::Bytes(s.as_bytes().to_vec())),
            _ => Err(err("bytes_type", "Input should be a valid bytes", v)),
        },
        FieldType::List(item) => {
            let ok_input = if strict { matches!(v, PyObj::List(_)) } else { sequence_items(v).is_some() };
            match (ok_input, sequence_items(v)) {
                (true, Some(items)) => validate_items(item.as_deref(), items, strict).map(PyObj::List),
                _ => Err(err("list_type", "Input should be a valid list", v)),
            }
        }
        FieldType::VarTuple(item) => match sequence_items(v) {
            Some(items) if !strict || matches!(v, PyObj::Tuple(_)) => {
                validate_items(Some(item), items, strict).map(PyObj::Tuple)
            }
            _ => Err(err("tuple_type", "Input should be a valid tuple", v)),
        },
        FieldType::Tuple(None) => match sequence_items(v) {
            Some(items) if !strict || matches!(v, PyObj::Tuple(_)) => Ok(PyObj::Tuple(items.to_vec())),
            _ => Err(err("tuple_type", "Input should be a valid tuple", v)),
        },
        FieldType::Tuple(Some(members)) => {
            let Some(items) = sequence_items(v).filter(|_| !strict || matches!(v, PyObj::Tuple(_))) else {
                return Err(err("tuple_type", "Input should be a valid tuple", v));
            };
            if items.len() > members.len() {
                return Err(err(
                    "too_long",
                    format!(
                        "Tuple should have at most {} item{} after validation, not {}",
                        members.len(),
                        if members.len() == 1 { "" } else { "s" },
                        items.len()
                    ),
                    v,
                ));
            }
            let mut out = Vec::new();
            let mut errors = Vec::new();
            for (i, member) in members.iter().enumerate() {
                match items.get(i) {
                    Some(x) => match validate(member, x, strict) {
                        Ok(ok) => out.push(ok),
                        Err(e) => errors.extend(prefixed(e, i.to_string())),
                    },
                    None => errors.push(LineError {
                        loc: vec![i.to_string()],
                        kind: "missing",
                        msg: "Field required".into(),
                        input: v.clone(),
                    }),
                }
            }
            if errors.is_empty() {
                Ok(PyObj::Tuple(out))
            } else {
                Err(errors)
            }
        }
        FieldType::Set(item) | FieldType::FrozenSet(item) => {
            validate_set(item.as_deref(), matches!(t, FieldType::FrozenSet(_)), v, strict, None)
        }
        FieldType::Dict(kv) => validate_dict(kv.as_ref(), v, strict, None),
        FieldType::Annotated { inner, constraints, .. } => validate_constrained(inner, constraints, v, strict),
        FieldType::Literal(values) => {
            for lit in values {
                let expected = literal_obj(lit);
                let matched = match (&expected, v) {
                    (PyObj::Str(a), PyObj::Str(b)) => a == b,
                    (PyObj::None, PyObj::None) => true,
                    (PyObj::Int(_) | PyObj::Bool(_), PyObj::Int(_) | PyObj::Bool(_) | PyObj::Float(_)) => {
                        !strict && expected.py_eq(v) || expected == *v
                    }
                    _ => false,
                };
                if matched {
                    return Ok(expected);
                }
            }
            let reprs: Vec<String> = values.iter().map(literal_repr).collect();
            let expected = match reprs.len() {
                1 => reprs[0].clone(),
                n => format!("{} or {}", reprs[..n - 1].join(", "), reprs[n - 1]),
            };
            Err(err("literal_error", format!("Input should be {expected}"), v))
        }
        FieldType::Union(members) => {
            if members.contains(&FieldType::None) && *v == PyObj::None {
                return Ok(PyObj::None);
            }
            let others: Vec<&FieldType> = members.iter().filter(|m| **m != FieldType::None).collect();
            if others.len() == 1 {
                return validate(others[0], v, strict);
            }
            // pydantic's smart mode: an exact (strict) match first, then lax in order.
            for m in &others {
                if let Ok(ok) = validate(m, v, true) {
                    return Ok(ok);
                }
            }
            let mut errors = Vec::new();
            if !strict {
                for m in &others {
                    match validate(m, v, false) {
                        Ok(ok) => return Ok(ok),
                        Err(e) => errors.extend(prefixed(e, title(m))),
                    }
                }
            } else {
                for m in &others {
                    if let Err(e) = validate(m, v, true) {
                        errors.extend(prefixed(e, title(m)));
                    }
                }
            }
            Err(errors)
        }
        other => {
            Err(err("unsupported", format!("validation of `{}` is not modelled natively", other.annotation_name()), v))
        }
    }
}

/// A set or frozenset; past `max` distinct valid items pydantic stops with
/// `too_long` alone ("not more": it never counts the rest).
fn validate_set(
    item: Option<&FieldType>,
    frozen: bool,
    v: &PyObj,
    strict: bool,
    max: Option<u64>,
) -> Result<PyObj, Vec<LineError>> {
    let ok_input = if strict { matches!(v, PyObj::Set(_)) } else { sequence_items(v).is_some() };
    let Some(items) = sequence_items(v).filter(|_| ok_input) else {
        return Err(if frozen {
            err("frozen_set_type", "Input should be a valid frozenset", v)
        } else {
            err("set_type", "Input should be a valid set", v)
        });
    };
    let mut out: Vec<PyObj> = Vec::new();
    let mut errors = Vec::new();
    for (i, x) in items.iter().enumerate() {
        let x = match item {
            None => x.clone(),
            Some(t) => match validate(t, x, strict) {
                Ok(x) => x,
                Err(e) => {
                    errors.extend(prefixed(e, i.to_string()));
                    continue;
                }
            },
        };
        if !out.iter().any(|o| o.py_eq(&x)) {
            out.push(x);
            if let Some(max) = max.filter(|m| out.len() as u64 > *m) {
                let kind = if frozen { "Frozenset" } else { "Set" };
                return Err(err("too_long", too_long(kind, max, "more"), v));
            }
        }
    }
    if errors.is_empty() {
        Ok(PyObj::Set(out))
    } else {
        Err(errors)
    }
}

/// A dict; past `max` valid entries pydantic stops with `too_long` alone.
fn validate_dict(
    kv: Option<&(Box<FieldType>, Box<FieldType>)>,
    v: &PyObj,
    strict: bool,
    max: Option<u64>,
) -> Result<PyObj, Vec<LineError>> {
    let PyObj::Dict(pairs) = v else {
        return Err(err("dict_type", "Input should be a valid dictionary", v));
    };
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (k, x) in pairs {
        let (key, val) = match kv {
            None => (Some(k.clone()), Some(x.clone())),
            Some((kt, vt)) => {
                let key_loc = k.py_str();
                let key = match validate(kt, k, strict) {
                    Ok(key) => Some(key),
                    Err(e) => {
                        errors.extend(prefixed(prefixed_key(e), key_loc.clone()));
                        None
                    }
                };
                let val = match validate(vt, x, strict) {
                    Ok(val) => Some(val),
                    Err(e) => {
                        errors.extend(prefixed(e, key_loc));
                        None
                    }
                };
                (key, val)
            }
        };
        if let (Some(key), Some(val)) = (key, val) {
            out.push((key, val));
            if let Some(max) = max.filter(|m| out.len() as u64 > *m) {
                return Err(err("too_long", too_long("Dictionary", max, "more"), v));
            }
        }
    }
    if errors.is_empty() {
        Ok(PyObj::Dict(out))
    } else {
        Err(errors)
    }
}

fn plural(n: u64, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

fn too_long(kind: &str, max: u64, actual: &str) -> String {
    format!("{kind} should have at most {} after validation, not {actual}", plural(max, "item"))
}

fn max_length(constraints: &[Constraint]) -> Option<u64> {
    constraints.iter().find_map(|c| match c {
        Constraint::MaxLength(n) => Some(*n),
        _ => None,
    })
}

/// `Annotated[inner, Field(...)]`: `inner`'s validation, then its constraints
/// in pydantic's order. Containers check `max_length` as pydantic does, while
/// reading: a list or tuple on the input's length before its items, a set or
/// dict as it grows.
fn validate_constrained(
    inner: &FieldType,
    constraints: &[Constraint],
    v: &PyObj,
    strict: bool,
) -> Result<PyObj, Vec<LineError>> {
    let max = max_length(constraints);
    let out = match inner {
        FieldType::Set(item) | FieldType::FrozenSet(item) => {
            validate_set(item.as_deref(), matches!(inner, FieldType::FrozenSet(_)), v, strict, max)?
        }
        FieldType::Dict(kv) => validate_dict(kv.as_ref(), v, strict, max)?,
        FieldType::List(_) | FieldType::VarTuple(_) | FieldType::Tuple(_) => {
            let accepted = match inner {
                FieldType::List(_) => !strict || matches!(v, PyObj::List(_)),
                _ => !strict || matches!(v, PyObj::Tuple(_)),
            };
            if let (Some(max), Some(items), true) = (max, sequence_items(v), accepted) {
                if items.len() as u64 > max {
                    let kind = if matches!(inner, FieldType::List(_)) { "List" } else { "Tuple" };
                    return Err(err("too_long", too_long(kind, max, &items.len().to_string()), v));
                }
            }
            validate(inner, v, strict)?
        }
        _ => validate(inner, v, strict)?,
    };
    match constraint_error(inner, constraints, &out) {
        Some((kind, msg)) => Err(err(kind, msg, v)),
        None => Ok(out),
    }
}

/// A number as pydantic prints a bound in its messages (Rust's formatting:
/// `1` for `1.0`, `250000000000000000000` for `2.5e20`).
fn bound_text(n: &serde_json::Number, float_field: bool) -> String {
    match (n.as_i64(), n.as_u64(), n.as_f64()) {
        (Some(i), _, _) => i.to_string(),
        (_, Some(u), _) => u.to_string(),
        (_, _, Some(f)) if float_field => f.to_string(),
        (_, _, f) => f.unwrap_or_default().to_string(),
    }
}

/// The first constraint a value (already valid for `inner`) breaks, in the
/// order pydantic checks them: the error type and message.
pub(crate) fn constraint_error(
    inner: &FieldType,
    constraints: &[Constraint],
    value: &PyObj,
) -> Option<(&'static str, String)> {
    let find = |pick: fn(&Constraint) -> Option<&serde_json::Number>| constraints.iter().find_map(pick);
    match (inner, value) {
        (FieldType::Int, PyObj::Int(i)) => {
            let as_int = |n: &serde_json::Number| n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from));
            if let Some(n) = find(|c| if let Constraint::MultipleOf(n) = c { Some(n) } else { None }) {
                if as_int(n).is_some_and(|m| m != 0 && i % m != 0) {
                    return Some(("multiple_of", format!("Input should be a multiple of {}", bound_text(n, false))));
                }
            }
            bounds(constraints, |n, op| as_int(n).is_some_and(|b| op.holds_int(*i, b)), false)
        }
        (FieldType::Float, PyObj::Float(f)) => {
            if constraints.contains(&Constraint::AllowInfNan(false)) && !f.is_finite() {
                return Some(("finite_number", "Input should be a finite number".into()));
            }
            if let Some(n) = find(|c| if let Constraint::MultipleOf(n) = c { Some(n) } else { None }) {
                let m = n.as_f64().unwrap_or(1.0);
                let rem = f % m;
                let threshold = f.abs() / 1e9;
                if rem.abs() > threshold && (rem - m).abs() > threshold {
                    return Some(("multiple_of", format!("Input should be a multiple of {}", bound_text(n, true))));
                }
            }
            bounds(constraints, |n, op| n.as_f64().is_some_and(|b| op.holds_float(*f, b)), true)
        }
        (FieldType::Str, PyObj::Str(s)) => {
            let len = s.chars().count() as u64;
            constraints.iter().find_map(|c| match c {
                Constraint::MinLength(n) if len < *n => {
                    Some(("string_too_short", format!("String should have at least {}", plural(*n, "character"))))
                }
                Constraint::MaxLength(n) if len > *n => {
                    Some(("string_too_long", format!("String should have at most {}", plural(*n, "character"))))
                }
                _ => None,
            })
        }
        _ => {
            let (kind, len) = match value {
                PyObj::List(items) => ("List", items.len()),
                PyObj::Tuple(items) => ("Tuple", items.len()),
                PyObj::Set(items) if matches!(inner, FieldType::FrozenSet(_)) => ("Frozenset", items.len()),
                PyObj::Set(items) => ("Set", items.len()),
                PyObj::Dict(pairs) => ("Dictionary", pairs.len()),
                _ => return None,
            };
            let len = len as u64;
            if let Some(max) = max_length(constraints).filter(|m| len > *m) {
                let actual = if matches!(kind, "Set" | "Frozenset" | "Dictionary") {
                    "more".to_string()
                } else {
                    len.to_string()
                };
                return Some(("too_long", too_long(kind, max, &actual)));
            }
            constraints.iter().find_map(|c| match c {
                Constraint::MinLength(n) if len < *n => Some((
                    "too_short",
                    format!("{kind} should have at least {} after validation, not {len}", plural(*n, "item")),
                )),
                _ => None,
            })
        }
    }
}

/// A numeric bound, by its comparison.
#[derive(Clone, Copy)]
enum Bound {
    Le,
    Lt,
    Ge,
    Gt,
}

impl Bound {
    fn holds_int(self, v: i128, b: i128) -> bool {
        match self {
            Bound::Le => v <= b,
            Bound::Lt => v < b,
            Bound::Ge => v >= b,
            Bound::Gt => v > b,
        }
    }

    /// NaN meets no bound.
    fn holds_float(self, v: f64, b: f64) -> bool {
        match self {
            Bound::Le => v <= b,
            Bound::Lt => v < b,
            Bound::Ge => v >= b,
            Bound::Gt => v > b,
        }
    }
}

/// The first bound broken, checked as pydantic does: `le`, `lt`, `ge`, `gt`.
fn bounds(
    constraints: &[Constraint],
    holds: impl Fn(&serde_json::Number, Bound) -> bool,
    float_field: bool,
) -> Option<(&'static str, String)> {
    for op in [Bound::Le, Bound::Lt, Bound::Ge, Bound::Gt] {
        let found = constraints.iter().find_map(|c| match (op, c) {
            (Bound::Le, Constraint::Le(n)) | (Bound::Lt, Constraint::Lt(n)) => Some(n),
            (Bound::Ge, Constraint::Ge(n)) | (Bound::Gt, Constraint::Gt(n)) => Some(n),
            _ => None,
        });
        let Some(n) = found else { continue };
        if !holds(n, op) {
            let (kind, words) = match op {
                Bound::Le => ("less_than_equal", "less than or equal to"),
                Bound::Lt => ("less_than", "less than"),
                Bound::Ge => ("greater_than_equal", "greater than or equal to"),
                Bound::Gt => ("greater_than", "greater than"),
            };
            return Some((kind, format!("Input should be {words} {}", bound_text(n, float_field))));
        }
    }
    None
}

/// A JSON value checked against constraints on its type as pydantic would
/// check the object it stands for: the message of the first one broken.
pub(crate) fn constraint_violation(
    inner: &FieldType,
    constraints: &[Constraint],
    value: &serde_json::Value,
) -> Option<String> {
    let obj = PyObj::from_json(value);
    let out = validate(inner, &obj, false).ok()?;
    constraint_error(inner, constraints, &out).map(|(_, msg)| msg)
}

fn prefixed_key(mut errors: Vec<LineError>) -> Vec<LineError> {
    for e in &mut errors {
        e.loc.insert(0, "[key]".into());
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_type;

    fn check(t: &str, v: PyObj) -> Result<PyObj, String> {
        validate_python(&parse_type(t).unwrap(), &v).map_err(|e| {
            e.to_string().replace("For further information visit https://errors.pydantic.dev/2.14/v/", "URL:")
        })
    }

    fn s(x: &str) -> PyObj {
        PyObj::Str(x.into())
    }

    #[test]
    fn scalars_like_pydantic() {
        assert_eq!(check("int", s(" 7 ")), Ok(PyObj::Int(7)));
        assert_eq!(check("int", s("7.0")), Ok(PyObj::Int(7)));
        assert_eq!(check("int", s("1_000")), Ok(PyObj::Int(1000)));
        assert_eq!(check("int", PyObj::Bool(true)), Ok(PyObj::Int(1)));
        assert!(check("int", s("7.5")).unwrap_err().contains("int_parsing"));
        assert!(check("int", PyObj::Float(7.5)).unwrap_err().contains("int_from_float"));
        assert_eq!(check("float", s("1_000.5")), Ok(PyObj::Float(1000.5)));
        assert_eq!(check("bool", s("YES")), Ok(PyObj::Bool(true)));
        assert!(check("bool", s(" yes ")).unwrap_err().contains("bool_parsing"));
        assert!(check("bool", PyObj::Float(0.5)).unwrap_err().contains("bool_type"));
        assert_eq!(
            check("int", s(&"a".repeat(80))).unwrap_err(),
            "1 validation error for int\n  Input should be a valid integer, unable to parse string as an integer [type=int_parsing, input_value='aaaaaaaaaaaaaaaaaaaaaaaa...aaaaaaaaaaaaaaaaaaaaaaa', input_type=str]\n    URL:int_parsing"
        );
    }

    #[test]
    fn containers_like_pydantic() {
        assert_eq!(
            check("dict[int, int]", PyObj::Dict(vec![(s("a"), PyObj::Int(1))])).unwrap_err(),
            "1 validation error for dict[int,int]\na.[key]\n  Input should be a valid integer, unable to parse string as an integer [type=int_parsing, input_value='a', input_type=str]\n    URL:int_parsing"
        );
        assert_eq!(
            check("tuple[int, str]", PyObj::List(vec![PyObj::Int(1)])).unwrap_err(),
            "1 validation error for tuple[int, str]\n1\n  Field required [type=missing, input_value=[1], input_type=list]\n    URL:missing"
        );
        assert_eq!(
            check("Union[int, str, None]", PyObj::List(vec![PyObj::Int(1)])).unwrap_err(),
            "2 validation errors for nullable[union[int,str]]\nint\n  Input should be a valid integer [type=int_type, input_value=[1], input_type=list]\n    URL:int_type\nstr\n  Input should be a valid string [type=string_type, input_value=[1], input_type=list]\n    URL:string_type"
        );
        assert_eq!(check("Union[int, str]", s("12")), Ok(s("12")));
        assert_eq!(check("Union[int, float]", s("1.5")), Ok(PyObj::Float(1.5)));
        assert_eq!(check("Literal[1, 2]", PyObj::Float(1.0)), Ok(PyObj::Int(1)));
        assert_eq!(check("Literal[True]", PyObj::Int(1)), Ok(PyObj::Bool(true)));
        assert!(check("Literal['a', 'b', 'c']", s("x")).unwrap_err().contains("Input should be 'a', 'b' or 'c'"));
        assert_eq!(
            check("set[int]", PyObj::List(vec![PyObj::Int(1), PyObj::Int(1)])),
            Ok(PyObj::Set(vec![PyObj::Int(1)]))
        );
    }
}
