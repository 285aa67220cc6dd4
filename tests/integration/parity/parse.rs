use dspex_core::{ErrorKind, FieldType};
use dspex_native::adapter;
use serde_json::Value;

use super::format::{adapter_kind, case_signature};
use crate::support::{fixture_cases, Mismatches};

/// DSPy hands back sets in Python's hash order (randomised for strings):
/// a set's order means nothing, so set-typed fields are compared sorted.
fn normalise(sig: &dspex_core::Signature, v: &Value) -> Value {
    let mut v = v.clone();
    if let Value::Object(fields) = &mut v {
        for f in sig.outputs() {
            if matches!(f.ty(), FieldType::Set(_) | FieldType::FrozenSet(_)) {
                if let Some(Value::Array(items)) = fields.get_mut(f.name()) {
                    items.sort_by_key(|i| i.to_string());
                }
            }
        }
    }
    v
}

#[test]
fn completions_parse_like_dspy() {
    let cases = fixture_cases("parse.json");
    assert!(cases.len() >= 40, "the corpus has at least 40 parse cases");
    let mut bad = Mismatches::default();
    for case in &cases {
        let id = case["id"].as_str().unwrap_or("?");
        let sig = case_signature(case).expect("signature parses");
        let completion = case["completion"].as_str().unwrap_or_default();
        let got = adapter::parse(adapter_kind(case), &sig, completion);
        match (&case["expect"]["fields"], &case["expect"]["error"], got) {
            (Value::Object(want), _, Ok(fields)) => {
                bad.check(
                    id,
                    "fields",
                    normalise(&sig, &Value::Object(fields)),
                    normalise(&sig, &Value::Object(want.clone())),
                );
            }
            (_, Value::Object(want), Err(e)) if e.kind() == ErrorKind::Parse => {
                bad.check(
                    id,
                    "category",
                    e.python_type().unwrap_or("-"),
                    want["category"].as_str().unwrap_or_default(),
                );
                bad.check(id, "message", e.message(), want["message"].as_str().unwrap_or_default());
            }
            (_, _, Ok(fields)) => bad.push(id, format!("parsed natively to {fields:?}, DSPy fails")),
            (_, _, Err(e)) => bad.push(id, format!("failed natively ({e}), DSPy parses it")),
        }
    }
    bad.assert_none(cases.len());
}
