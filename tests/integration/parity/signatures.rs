use dspex_core::ErrorKind;
use dspex_native::{parse_signature, schema::field_structure};
use serde_json::Value;

use crate::support::{fixture_cases, Mismatches};

#[test]
fn signatures_parse_like_dspy() {
    let cases = fixture_cases("signatures.json");
    assert!(cases.len() >= 80, "the corpus has at least 80 signatures");
    let rejected = cases.iter().filter(|c| c["expect"].get("error").is_some()).count();
    assert!(rejected >= 20, "the corpus has at least 20 rejected signatures");
    let mut bad = Mismatches::default();
    for case in &cases {
        let id = case["id"].as_str().unwrap_or("?");
        let text = case["signature"].as_str().unwrap_or_default();
        let instructions = case["instructions"].as_str();
        let native_unsupported = case["native"] == "unsupported";
        let got = parse_signature(text, instructions);
        if native_unsupported && got.as_ref().is_err_and(|e| e.kind() == ErrorKind::Unsupported) {
            continue;
        }
        match (&case["expect"]["ok"], &case["expect"]["error"], got) {
            (Value::Object(want), _, Ok(sig)) => {
                bad.check(id, "instructions", sig.instructions(), want["instructions"].as_str().unwrap_or_default());
                let want_fields = want["fields"].as_array().cloned().unwrap_or_default();
                bad.check(id, "field count", sig.fields().len(), want_fields.len());
                for (f, w) in sig.fields().iter().zip(&want_fields) {
                    bad.check(id, "name", f.name(), w["name"].as_str().unwrap_or_default());
                    bad.check(id, "role", f.role().as_str(), w["role"].as_str().unwrap_or_default());
                    bad.check(id, "type", f.ty().annotation_name().as_str(), w["type"].as_str().unwrap_or_default());
                    bad.check(id, "prefix", f.prefix(), w["prefix"].as_str().unwrap_or_default());
                    bad.check(id, "desc", f.desc(), w["desc"].as_str().unwrap_or_default());
                    match field_structure(f) {
                        Ok(s) => bad.check(id, "structure", s.as_str(), w["structure"].as_str().unwrap_or_default()),
                        Err(e) if native_unsupported && e.kind() == ErrorKind::Unsupported => {}
                        Err(e) => bad.push(id, format!("structure of `{}` failed: {e}", f.name())),
                    }
                }
                if native_unsupported && sig.is_native() {
                    bad.push(id, "expected a type the native engine routes to Python");
                }
            }
            (_, Value::Object(want), Err(e)) => {
                bad.check(
                    id,
                    "category",
                    e.python_type().unwrap_or("-"),
                    want["category"].as_str().unwrap_or_default(),
                );
                bad.check(id, "message", e.message(), want["message"].as_str().unwrap_or_default());
            }
            (_, _, Ok(_)) => bad.push(id, format!("{text:?}: accepted natively, DSPy rejects it")),
            (_, _, Err(e)) => bad.push(id, format!("{text:?}: rejected natively ({e}), DSPy accepts it")),
        }
    }
    bad.assert_none(cases.len());
}
