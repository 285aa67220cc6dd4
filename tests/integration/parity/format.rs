use dspex_core::{AdapterKind, ErrorKind, Map, SignatureSpec};
use dspex_native::{adapter, chain_of_thought_signature, signature_from_spec};
use serde_json::Value;

use crate::support::{fixture_cases, Mismatches};

pub fn adapter_kind(case: &Value) -> AdapterKind {
    match case["adapter"].as_str() {
        Some("json") => AdapterKind::Json,
        _ => AdapterKind::Chat,
    }
}

pub fn case_signature(case: &Value) -> dspex_core::Result<std::sync::Arc<dspex_core::Signature>> {
    let spec: SignatureSpec = serde_json::from_value(case["signature"].clone()).expect("signature spec");
    let sig = signature_from_spec(&spec)?;
    if case["module"] == "chain_of_thought" {
        return chain_of_thought_signature(&sig).map(std::sync::Arc::new);
    }
    Ok(sig)
}

#[test]
fn prompts_format_like_dspy() {
    let cases = fixture_cases("format.json");
    assert!(cases.len() >= 40, "the corpus has at least 40 format cases");
    let mut bad = Mismatches::default();
    for case in &cases {
        let id = case["id"].as_str().unwrap_or("?");
        let sig = case_signature(case).expect("signature parses");
        let demos: Vec<Map> = case["demos"]
            .as_array()
            .map(|d| d.iter().filter_map(|x| x.as_object().cloned()).collect())
            .unwrap_or_default();
        let inputs = case["inputs"].as_object().cloned().unwrap_or_default();
        match adapter::format(adapter_kind(case), &sig, &demos, &inputs) {
            Ok(messages) => {
                let got = serde_json::to_value(&messages).expect("serialize");
                let want = &case["expect"]["messages"];
                if &got != want {
                    let got_list = got.as_array().cloned().unwrap_or_default();
                    let want_list = want.as_array().cloned().unwrap_or_default();
                    bad.check(id, "message count", got_list.len(), want_list.len());
                    for (i, (g, w)) in got_list.iter().zip(&want_list).enumerate() {
                        if g != w {
                            bad.push(
                                id,
                                format!("message {i}:\n   got: {:?}\n  want: {:?}", g["content"], w["content"]),
                            );
                        }
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::Unsupported => bad.push(id, format!("unsupported natively: {e}")),
            Err(e) => bad.push(id, format!("failed: {e}")),
        }
    }
    bad.assert_none(cases.len());
}
