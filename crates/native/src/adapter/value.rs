//! DSPy's `parse_value`: one field's raw value (section text, or a member of
//! a JSON reply) converted to the field's type.
//!
//! The general path is DSPy's: `json_repair.loads`, then `ast.literal_eval`,
//! then pydantic's lax validation (see `crate::pyemu`). Most replies are a
//! plain string, number or boolean, for which [`parse_text_fast`] gives the
//! same result without that pipeline.

use dspex_core::{Error, FieldType, Value};

use crate::py;
use crate::pyemu::{literal_eval, repair_loads, validate_python, PyObj};

/// DSPy's `parse_value`: a field's raw value (text, or a JSON value) into its type.
pub(super) fn parse_value(value: PyObj, ty: &FieldType) -> std::result::Result<PyObj, ParseValueError> {
    if *ty == FieldType::Str {
        return Ok(PyObj::Str(value.py_str()));
    }
    let mut value = value;
    if let FieldType::Literal(allowed) = ty {
        let allowed: Vec<PyObj> = allowed.iter().map(|l| PyObj::from_json(&l.to_json())).collect();
        if let Some(found) = allowed.iter().find(|a| a.py_eq(&value)) {
            let _ = found;
            return Ok(value);
        }
        if let PyObj::Str(s) = &value {
            let mut v = py::strip(s).to_string();
            if (v.starts_with("Literal[") || v.starts_with("str[")) && v.ends_with(']') {
                let open = v.find('[').unwrap_or(0);
                v = v[open + 1..v.len() - 1].to_string();
            }
            let chars: Vec<char> = v.chars().collect();
            if chars.len() > 1 && chars[0] == chars[chars.len() - 1] && (chars[0] == '"' || chars[0] == '\'') {
                v = chars[1..chars.len() - 1].iter().collect();
            }
            let candidate = PyObj::Str(v);
            if allowed.iter().any(|a| a.py_eq(&candidate)) {
                return Ok(candidate);
            }
            value = candidate;
        }
    }
    let PyObj::Str(text) = &value else {
        return validate_python(ty, &value).map_err(|e| ParseValueError::Invalid(e.to_string()));
    };
    if let FieldType::Union(members) = ty {
        if members.contains(&FieldType::None) && members.contains(&FieldType::Str) {
            return validate_python(ty, &value).map_err(|e| ParseValueError::Invalid(e.to_string()));
        }
    }
    let mut candidate = repair_loads(text);
    if candidate == PyObj::Str(String::new()) && !text.is_empty() {
        candidate = match literal_eval(text).map_err(ParseValueError::Unsupported)? {
            Some(obj) => obj,
            None => value.clone(),
        };
    }
    validate_python(ty, &candidate).map_err(|e| ParseValueError::Invalid(e.to_string()))
}

/// Why [`parse_value`] gave up.
pub(super) enum ParseValueError {
    /// pydantic rejected the value: the message DSPy puts in its parse error.
    Invalid(String),
    /// The value needs Python behaviour not modelled natively.
    Unsupported(Error),
}

/// A value parsed without the general lax pipeline, where the result is
/// certain to be the same: plain strings, JSON numbers and booleans.
pub(super) fn parse_text_fast(text: &str, ty: &FieldType) -> Option<Value> {
    match ty {
        FieldType::Str => Some(Value::String(text.to_string())),
        FieldType::Int | FieldType::Float => {
            if let (FieldType::Float, Some(f)) = (ty, short_decimal(text)) {
                return Some(Value::from(f));
            }
            let is_int = json_number_is_int(text)?;
            match ty {
                FieldType::Int if is_int => text.parse::<i64>().ok().map(Value::from),
                FieldType::Float => {
                    let f: f64 = text.parse().ok()?;
                    // Leave huge or non-finite values to the general path.
                    (f.is_finite() && f.abs() < 9.0e15).then(|| Value::from(f))
                }
                _ => None,
            }
        }
        FieldType::Bool => match text {
            "True" | "true" => Some(Value::Bool(true)),
            "False" | "false" => Some(Value::Bool(false)),
            _ => None,
        },
        _ => None,
    }
}

/// A JSON number without exponent and with at most 15 significant digits
/// (`-12.5`, `0.93`), read exactly as a float field gets it in DSPy: its
/// digits as an integer are below 2^53 and the power of ten is exact, so one
/// division rounds correctly.
pub(super) fn short_decimal(text: &str) -> Option<f64> {
    const POW10: [f64; 16] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15];
    let b = text.as_bytes();
    let negative = b.first() == Some(&b'-');
    let mut i = usize::from(negative);
    let mut digits: u64 = 0;
    let mut count = 0usize;
    // JSON forbids leading zeros: "0" alone or a non-zero first digit.
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            while let Some(d @ b'0'..=b'9') = b.get(i) {
                digits = digits * 10 + u64::from(d - b'0');
                count += 1;
                i += 1;
                if count > 15 {
                    return None;
                }
            }
        }
        _ => return None,
    }
    let mut scale = 0usize;
    if b.get(i) == Some(&b'.') {
        i += 1;
        while let Some(d @ b'0'..=b'9') = b.get(i) {
            digits = digits * 10 + u64::from(d - b'0');
            scale += 1;
            i += 1;
            if count + scale > 15 {
                return None;
            }
        }
        if scale == 0 {
            return None;
        }
    }
    if i != b.len() {
        return None;
    }
    let value = digits as f64 / POW10[scale];
    // An integer converts as Python's int does: `-0` is the integer 0, so 0.0.
    Some(if negative && (scale > 0 || digits > 0) { -value } else { value })
}

/// Whether `text` is exactly one JSON number; `Some(true)` for integers.
pub(super) fn json_number_is_int(text: &str) -> Option<bool> {
    let b = text.as_bytes();
    let mut i = usize::from(b.first() == Some(&b'-'));
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
        }
        _ => return None,
    }
    let mut int = true;
    if b.get(i) == Some(&b'.') {
        int = false;
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        int = false;
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    (i == b.len()).then_some(int)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Short decimals read by hand equal Rust's (correctly rounded) parser,
    /// and anything else is left to it.
    #[test]
    fn short_decimals_exact() {
        for t in ["0", "0.5", "-0.0", "0.93", "12.25", "999999999999999", "0.000000000000001", "123456.789012345"] {
            let expect: f64 = t.parse().unwrap_or(f64::NAN);
            assert_eq!(short_decimal(t).map(f64::to_bits), Some(expect.to_bits()), "{t}");
        }
        // DSPy reads `-0` as the integer 0 (then 0.0), `-0.0` as the float -0.0.
        assert_eq!(short_decimal("-0").map(f64::to_bits), Some(0.0f64.to_bits()));
        // Malformed JSON numbers, exponents and more than 15 significant digits.
        for t in [
            "",
            "-",
            "01",
            "1.",
            ".5",
            "1e5",
            "1.5e2",
            "+1",
            "1.2.3",
            " 1",
            "1 ",
            "0x1",
            "1234567890123456",
            "1.7976931348623157",
        ] {
            assert_eq!(short_decimal(t), None, "{t}");
        }
    }

    proptest::proptest! {
        #[test]
        fn short_decimals_match_std(int in 0u64..10_000_000, frac in 0u64..100_000_000, zeros in 0usize..6, neg: bool) {
            let t = format!("{}{int}.{}{frac}", if neg { "-" } else { "" }, "0".repeat(zeros));
            if let Some(f) = short_decimal(&t) {
                proptest::prop_assert_eq!(f.to_bits(), t.parse::<f64>().map(f64::to_bits).unwrap_or(0), "{}", t);
            }
        }
    }
}
