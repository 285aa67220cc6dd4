//! The `dspex` binary's engine commands.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::support::fixture_cases;

fn dspex(args: &[&str], stdin: Option<&str>) -> (i32, Value) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dspex"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run dspex");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).expect("write stdin");
    }
    drop(input);
    let out = child.wait_with_output().expect("dspex ran");
    let text = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (out.status.code().unwrap_or(-1), v)
}

#[test]
fn signature_command_prints_dspy_fields() {
    let case = fixture_cases("signatures.json").into_iter().find(|c| c["id"] == "accept-03").expect("case");
    let (code, out) = dspex(&["signature", case["signature"].as_str().unwrap()], None);
    assert_eq!(code, 0);
    let want = &case["expect"]["ok"];
    assert_eq!(out["instructions"], want["instructions"]);
    for (g, w) in out["fields"].as_array().unwrap().iter().zip(want["fields"].as_array().unwrap()) {
        for k in ["name", "role", "type", "prefix", "desc"] {
            assert_eq!(g[k], w[k], "{k}");
        }
    }
    let (code, out) = dspex(&["signature", "a -> b", "--instructions", "Do it."], None);
    assert_eq!((code, out["instructions"].clone()), (0, json!("Do it.")));
}

#[test]
fn format_and_parse_commands_match_fixtures() {
    let case = fixture_cases("format.json").into_iter().find(|c| c["id"] == "class-style-json").expect("case");
    let req = json!({"signature": case["signature"], "inputs": case["inputs"]});
    let (code, out) = dspex(&["format", "--adapter", "json"], Some(&req.to_string()));
    assert_eq!(code, 0);
    assert_eq!(out["messages"], case["expect"]["messages"]);

    let case = fixture_cases("parse.json").into_iter().find(|c| c["id"] == "cot-chat").expect("case");
    let req = json!({"signature": case["signature"], "completion": case["completion"], "module": "chain_of_thought"});
    let (code, out) = dspex(&["parse", "--adapter", "chat"], Some(&req.to_string()));
    assert_eq!(code, 0);
    assert_eq!(out["fields"], case["expect"]["fields"]);
}

#[test]
fn errors_are_json_with_exit_code_2() {
    let (code, out) = dspex(&["signature", "a, b -> a"], None);
    assert_eq!(code, 2);
    assert_eq!(out["error"]["kind"], "invalid_signature");
    assert_eq!(out["error"]["python_type"], "ValueError");
    let (code, out) = dspex(&["parse"], Some("{\"signature\": \"q -> a\"}"));
    assert_eq!(code, 2);
    assert_eq!(out["error"]["kind"], "invalid_request");
    let (code, out) = dspex(&["parse"], Some("{\"signature\": \"q -> n: int\", \"completion\": \"nothing\"}"));
    assert_eq!(code, 2);
    assert_eq!(out["error"]["kind"], "parse");
    assert!(out["error"]["message"].as_str().unwrap().contains("Adapter ChatAdapter failed"));
    let (code, out) = dspex(&["format"], Some("{\"signature\": \"q: dspy.Image -> a\", \"inputs\": {}}"));
    assert_eq!(code, 2);
    assert_eq!(out["error"]["kind"], "unsupported");
}
