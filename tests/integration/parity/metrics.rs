use dspex_native::metrics;
use serde_json::Value;

use crate::support::{fixture_cases, Mismatches};

fn strs(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items.iter().filter_map(|x| x.as_str().map(String::from)).collect(),
        _ => Vec::new(),
    }
}

#[test]
fn metrics_score_like_dspy() {
    let cases = fixture_cases("metrics.json");
    let mut bad = Mismatches::default();
    for case in &cases {
        let id = case["id"].as_str().unwrap_or("?");
        let s = |k: &str| case[k].as_str().unwrap_or_default().to_string();
        let got: Value = match case["fn"].as_str().unwrap_or_default() {
            "normalize_text" => Value::from(metrics::normalize_text(&s("text"))),
            "f1_score" => Value::from(metrics::f1_score(&s("prediction"), &s("ground_truth"))),
            "hotpot_f1_score" => Value::from(metrics::hotpot_f1_score(&s("prediction"), &s("ground_truth"))),
            "answer_exact_match" => {
                let answers = strs(&case["answer"]);
                let refs: Vec<&str> = answers.iter().map(String::as_str).collect();
                Value::from(metrics::answer_exact_match(&refs, &s("prediction"), case["frac"].as_f64().unwrap_or(1.0)))
            }
            "answer_passage_match" => {
                let answers = strs(&case["answer"]);
                let passages = strs(&case["passages"]);
                let a: Vec<&str> = answers.iter().map(String::as_str).collect();
                let p: Vec<&str> = passages.iter().map(String::as_str).collect();
                Value::from(metrics::answer_passage_match(&a, &p))
            }
            other => panic!("unknown metric {other}"),
        };
        match (&got, &case["expect"]) {
            (Value::Number(g), Value::Number(w)) => {
                let (g, w) = (g.as_f64().unwrap_or(f64::NAN), w.as_f64().unwrap_or(f64::NAN));
                if (g - w).abs() > 1e-12 {
                    bad.push(id, format!("got {g}, want {w}"));
                }
            }
            (g, w) => bad.check(id, "value", g, w),
        }
    }
    bad.assert_none(cases.len());
}
