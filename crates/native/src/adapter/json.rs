//! Reading a `JSONAdapter` completion: one JSON object whose members are the
//! output fields.
//!
//! DSPy reads the reply with `json_repair.loads` (falling back to the first
//! balanced `{...}` in the text) and converts each member with
//! `parse_value`. Most replies are valid, flat JSON, so two faster readers
//! come first, each declining where it could differ from DSPy: a byte-level
//! reader for flat objects of plain scalars ([`flat_object`]), then serde
//! decoding only the members the signature asks for ([`FastObject`]).
//! Property tests check both against the general path.

use dspex_core::{AdapterKind, Field, FieldType, Map, Result, Signature, Value};

use super::outputs::{finish, parse_error, Outputs};
use super::value::{json_number_is_int, parse_value, short_decimal, ParseValueError};
use crate::py;
use crate::pyemu::{repair_loads, PyObj};

/// Reads a JSON object in one pass, decoding the signature's outputs where
/// the result is certain (strings into `str`, numbers into `int`/`float`,
/// booleans into `bool`, scalars into `str` as Python prints them) and
/// skipping everything else. `fast` turns false where the general path must
/// decide.
struct FastObject<'s> {
    sig: &'s Signature,
    found: &'s mut Outputs,
    fast: bool,
}

impl<'de> serde::de::DeserializeSeed<'de> for &mut FastObject<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for &mut FastObject<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        let outputs = self.sig.outputs();
        while let Some(key) = map.next_key_seed(OutputIndex(outputs))? {
            match key {
                // Python dicts keep the last duplicate: later members overwrite.
                Some(idx) => match map.next_value_seed(FieldValue(outputs[idx].ty()))? {
                    Some(v) => self.found.set(idx, v),
                    None => self.fast = false,
                },
                None => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// The commonest JSON reply, read with byte searches instead of a general
/// deserializer: one flat object whose members are strings without escapes,
/// numbers, booleans or nulls. Returns `None` at the first thing outside
/// that shape (or that needs more than a direct conversion to the field's
/// type); `FastObject` then reads the text and decides.
fn flat_object(sig: &Signature, text: &str) -> Option<Outputs> {
    let b = text.as_bytes();
    let outputs = sig.outputs();
    let skip_ws = |i: &mut usize| {
        while matches!(b.get(*i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            *i += 1;
        }
    };
    let mut found = Outputs::new(sig);
    let mut i = 0;
    skip_ws(&mut i);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    skip_ws(&mut i);
    if b.get(i) == Some(&b'}') {
        i += 1;
    } else {
        loop {
            let key = plain_string(text, &mut i)?;
            skip_ws(&mut i);
            if b.get(i) != Some(&b':') {
                return None;
            }
            i += 1;
            skip_ws(&mut i);
            let idx = outputs.iter().position(|f| f.name() == key);
            // Python dicts keep the last duplicate: later members overwrite.
            if let (Some(k), Some(v)) = (idx, flat_value(text, &mut i, idx.map(|k| outputs[k].ty()))?) {
                found.set(k, v);
            }
            skip_ws(&mut i);
            match b.get(i) {
                Some(b',') => {
                    i += 1;
                    skip_ws(&mut i);
                }
                Some(b'}') => {
                    i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    skip_ws(&mut i);
    (i == b.len()).then_some(found)
}

/// A JSON string at `*i` with no escapes and no control characters; moves past it.
fn plain_string<'t>(text: &'t str, i: &mut usize) -> Option<&'t str> {
    let b = text.as_bytes();
    if b.get(*i) != Some(&b'"') {
        return None;
    }
    let start = *i + 1;
    let end = start + crate::scan::json_string_stop(&b[start..])?;
    if b[end] != b'"' {
        return None;
    }
    *i = end + 1;
    Some(&text[start..end])
}

/// A scalar JSON value at `*i` converted for a field of type `ty` (`None`:
/// a member the signature does not ask for, only checked and skipped).
/// The outer `None` declines; the conversions are those `FieldValue` makes.
fn flat_value(text: &str, i: &mut usize, ty: Option<&FieldType>) -> Option<Option<Value>> {
    let b = text.as_bytes();
    match *b.get(*i)? {
        b'"' => {
            let s = plain_string(text, i)?;
            match ty {
                None => Some(None),
                Some(FieldType::Str) => Some(Some(Value::String(s.to_string()))),
                Some(_) => None,
            }
        }
        c @ (b't' | b'f' | b'n') => {
            let word: &[u8] = match c {
                b't' => b"true",
                b'f' => b"false",
                _ => b"null",
            };
            if !b[*i..].starts_with(word) {
                return None;
            }
            *i += word.len();
            match (ty, c) {
                (None, _) => Some(None),
                (Some(FieldType::Bool), b't' | b'f') => Some(Some(Value::Bool(c == b't'))),
                _ => None,
            }
        }
        _ => {
            let start = *i;
            while matches!(b.get(*i), Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')) {
                *i += 1;
            }
            let number = &text[start..*i];
            let is_int = json_number_is_int(number)?;
            match ty {
                None => Some(None),
                // As serde_json hands them over: integers as i64, the rest as f64.
                Some(FieldType::Int) if is_int => number.parse::<i64>().ok().map(|n| Some(Value::from(n))),
                Some(FieldType::Float) if is_int => number
                    .parse::<i64>()
                    .ok()
                    .filter(|n| n.unsigned_abs() < (1 << 53))
                    .map(|n| Some(Value::from(n as f64))),
                Some(FieldType::Float) => short_decimal(number).map(|f| Some(Value::from(f))),
                _ => None,
            }
        }
    }
}

/// A member's key as the position of the output it names, if any: read
/// without copying the key.
struct OutputIndex<'f>(&'f [Field]);

impl<'de> serde::de::DeserializeSeed<'de> for OutputIndex<'_> {
    type Value = Option<usize>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for OutputIndex<'_> {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a member name")
    }
    fn visit_str<E>(self, key: &str) -> std::result::Result<Option<usize>, E> {
        Ok(self.0.iter().position(|f| f.name() == key))
    }
}

/// One member's value for a field type; `None` where the general path must decide.
struct FieldValue<'t>(&'t FieldType);

impl<'de> serde::de::DeserializeSeed<'de> for FieldValue<'_> {
    type Value = Option<Value>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<Option<Value>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for FieldValue<'_> {
    type Value = Option<Value>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_str<E>(self, v: &str) -> std::result::Result<Option<Value>, E> {
        Ok(matches!(self.0, FieldType::Str).then(|| Value::String(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> std::result::Result<Option<Value>, E> {
        Ok(matches!(self.0, FieldType::Str).then_some(Value::String(v)))
    }
    fn visit_i64<E>(self, v: i64) -> std::result::Result<Option<Value>, E> {
        Ok(match self.0 {
            FieldType::Int => Some(Value::from(v)),
            FieldType::Float if v.unsigned_abs() < (1 << 53) => Some(Value::from(v as f64)),
            FieldType::Str => Some(Value::String(v.to_string())),
            _ => None,
        })
    }
    fn visit_u64<E>(self, v: u64) -> std::result::Result<Option<Value>, E> {
        Ok(match self.0 {
            FieldType::Int => Some(Value::from(v)),
            FieldType::Float if v < (1 << 53) => Some(Value::from(v as f64)),
            FieldType::Str => Some(Value::String(v.to_string())),
            _ => None,
        })
    }
    fn visit_f64<E>(self, v: f64) -> std::result::Result<Option<Value>, E> {
        Ok(match self.0 {
            FieldType::Float if v.is_finite() => Some(Value::from(v)),
            // Integers past 2^64 arrive as floats here; Python would print them as integers.
            FieldType::Str if v.is_finite() && !(v.fract() == 0.0 && v.abs() >= 1.8e19) => {
                Some(Value::String(py::float_repr(v)))
            }
            _ => None,
        })
    }
    fn visit_bool<E>(self, v: bool) -> std::result::Result<Option<Value>, E> {
        Ok(match self.0 {
            FieldType::Bool => Some(Value::Bool(v)),
            FieldType::Str => Some(Value::String(if v { "True" } else { "False" }.to_string())),
            _ => None,
        })
    }
    fn visit_unit<E>(self) -> std::result::Result<Option<Value>, E> {
        Ok(matches!(self.0, FieldType::Str).then(|| Value::String("None".to_string())))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Option<Value>, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<Option<Value>, A::Error> {
        while map.next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

/// The first balanced `{...}` in `text` (the recursive regex DSPy uses).
fn first_balanced_object(text: &str) -> Option<&str> {
    let bytes = text.as_bytes();
    for (start, _) in text.match_indices('{') {
        let mut depth = 0usize;
        for (k, &b) in bytes[start..].iter().enumerate() {
            match b {
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(&text[start..start + k + 1]);
                    }
                }
                _ => {}
            }
        }
    }
    None
}

pub(super) fn parse_json(sig: &Signature, completion: &str) -> Result<Map> {
    // Valid JSON objects (the common case) skip the repair reader, and only
    // the members the signature asks for are decoded.
    if let Some(found) = flat_object(sig, completion) {
        return finish(AdapterKind::Json, sig, completion, found);
    }
    {
        use serde::de::DeserializeSeed;
        let mut found = Outputs::new(sig);
        let mut reader = FastObject { sig, found: &mut found, fast: true };
        let mut de = serde_json::Deserializer::from_str(completion);
        if (&mut reader).deserialize(&mut de).is_ok() && de.end().is_ok() && reader.fast {
            return finish(AdapterKind::Json, sig, completion, found);
        }
    }
    parse_json_repaired(sig, completion)
}

/// `parse_json` the way DSPy does it for any text: json_repair's reading,
/// then each value converted for its field.
fn parse_json_repaired(sig: &Signature, completion: &str) -> Result<Map> {
    let mut response = completion;
    let mut parsed = repair_loads(completion);
    if !matches!(parsed, PyObj::Dict(_)) {
        if let Some(m) = first_balanced_object(completion) {
            response = m;
            parsed = repair_loads(m);
        }
    }
    let PyObj::Dict(pairs) = parsed else {
        return Err(parse_error(
            AdapterKind::Json,
            sig,
            response,
            Some("LM response cannot be serialized to a JSON object.".into()),
            None,
        ));
    };
    let kept: Vec<(String, PyObj)> = pairs
        .into_iter()
        .filter_map(|(k, v)| match k {
            PyObj::Str(k) if sig.output(&k).is_some() => Some((k, v)),
            _ => None,
        })
        .fold(Vec::new(), |mut acc, (k, v)| {
            match acc.iter_mut().find(|(ek, _)| *ek == k) {
                Some(slot) => slot.1 = v,
                None => acc.push((k, v)),
            }
            acc
        });
    let keys: Vec<String> = kept.iter().map(|(k, _)| k.clone()).collect();
    let outputs = sig.outputs();
    let mut found = Outputs::new(sig);
    for (k, v) in kept {
        let Some(idx) = outputs.iter().position(|f| f.name() == k) else {
            continue;
        };
        match parse_value(v, outputs[idx].ty()) {
            Ok(v) => found.set(idx, v.to_json()),
            Err(ParseValueError::Unsupported(e)) => return Err(e.with_field(k)),
            Err(ParseValueError::Invalid(msg)) => {
                return Err(parse_error(
                    AdapterKind::Json,
                    sig,
                    response,
                    Some(format!("Failed to parse field {k}: {msg}")),
                    Some(keys),
                )
                .with_field(k))
            }
        }
    }
    finish(AdapterKind::Json, sig, response, found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_signature;

    proptest::proptest! {
        #[test]
        fn json_flat_reader_agrees_with_serde(parts in proptest::collection::vec(proptest::sample::select(vec![
            "{", "}", ",", ":", " ", "\n", "\"answer\"", "\"n\"", "\"f\"", "\"ok\"", "\"other\"", "\"a\\\"b\"",
            "\"x\ty\"", "\"Paris is long enough to fill a block\"", "\"é\"", "42", "-0", "-7", "0.93", "1e3", "01",
            "12345678901234567890", "3.14159265358979312", "true", "false", "null", "[1]", "{}"]), 0..24)) {
            json_readers_agree(&parts.concat())?;
        }

        #[test]
        fn json_flat_reader_agrees_on_objects(members in proptest::collection::vec((
            proptest::sample::select(vec!["\"answer\"", "\"n\"", "\"f\"", "\"ok\"", "\"other\"", "\"a\\\"b\""]),
            proptest::sample::select(vec!["\"text\"", "\"x\ty\"", "\"Paris is long enough to fill a block\"", "\"é\"",
                "42", "-0", "-7", "0.93", "-0.0", "1e3", "9007199254740993", "12345678901234567890",
                "3.14159265358979312", "true", "false", "null", "[1]", "{}", "\"a\\nb\""]),
            proptest::sample::select(vec!["", " ", "\n", "\t\r\n"])), 0..6)) {
            let body: Vec<String> = members.iter().map(|(k, v, ws)| format!("{ws}{k}{ws}:{ws}{v}{ws}")).collect();
            json_readers_agree(&format!("{{{}}}", body.join(",")))?;
        }
    }

    /// Where the flat JSON reader or serde's reader takes a text, it finds
    /// what the general path (json_repair's reading, DSPy's conversions) finds.
    fn json_readers_agree(t: &str) -> std::result::Result<(), proptest::test_runner::TestCaseError> {
        use serde::de::DeserializeSeed;
        let sig = parse_signature("q -> answer, n: int, f: float, ok: bool", None).unwrap();
        let general =
            || parse_json_repaired(&sig, t).map(|m| serde_json::to_string(&m).unwrap()).map_err(|e| e.to_string());
        if let Some(flat) = flat_object(&sig, t) {
            let flat = finish(AdapterKind::Json, &sig, t, flat).map(|m| serde_json::to_string(&m).unwrap());
            proptest::prop_assert_eq!(flat.map_err(|e| e.to_string()), general(), "flat reader on {}", t);
            // Production never reaches serde's reader for these texts.
            return Ok(());
        }
        let mut found = Outputs::new(&sig);
        let mut reader = FastObject { sig: &sig, found: &mut found, fast: true };
        let mut de = serde_json::Deserializer::from_str(t);
        if (&mut reader).deserialize(&mut de).is_ok() && de.end().is_ok() && reader.fast {
            let serde = finish(AdapterKind::Json, &sig, t, found).map(|m| serde_json::to_string(&m).unwrap());
            proptest::prop_assert_eq!(serde.map_err(|e| e.to_string()), general(), "serde reader on {}", t);
        }
        Ok(())
    }
}
