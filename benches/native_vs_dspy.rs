//! Native engine against DSPy, side by side in one run.
//!
//! For the same signatures, demos, inputs and completions, times parsing a
//! signature string, formatting a prompt, and parsing completions — natively,
//! and in DSPy in-process (a Python child runs `benches/python/dspy_bench.py`
//! and reports its own timings). The *typical* workload is a ChainOfThought
//! program (a reasoning paragraph, an answer, a typed confidence) with two
//! demos; the *minimal* rows parse a two-field completion with no reasoning,
//! the native engine's worst case relative to DSPy. Prints a table of medians
//! and speed-ups and writes `target/bench-results/native_vs_dspy.json`.
//!
//! Run: `cargo bench --bench native_vs_dspy`.

mod common;

// The `dspex` binary's allocator (see the `mimalloc` feature).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;

use common::{fmt_ns, machine, measure, python, Stats};
use dspex_core::{AdapterKind, Map, Signature};
use dspex_native::{adapter, chain_of_thought_signature, parse_signature, parse_signature_uncached};
use serde_json::{json, Value};

const SAMPLES: usize = 2000;
const ROUNDS: usize = 9;

struct Op {
    name: &'static str,
    spec: Value,
    run: Box<dyn FnMut()>,
}

fn main() {
    let signature = "question, context: list[str] -> answer, confidence: float";
    let demos = json!([
        {"question": "What is the capital of Italy?", "context": ["Rome is the capital of Italy."], "reasoning": "The context says Rome is the capital.", "answer": "Rome", "confidence": 0.95},
        {"question": "Who wrote Hamlet?", "context": ["Hamlet is a tragedy by William Shakespeare."], "reasoning": "The context names Shakespeare as the author.", "answer": "William Shakespeare", "confidence": 0.9},
    ]);
    let inputs = json!({"question": "What is the capital of France?", "context": ["Paris is the capital and largest city of France.", "France is in Europe."]});
    let cot_chat = "[[ ## reasoning ## ]]\nThe first passage states that Paris is the capital and largest city of France.\nThe second passage only says where France is, so it does not change the answer.\nBoth passages agree, so I am confident.\n\n[[ ## answer ## ]]\nParis\n\n[[ ## confidence ## ]]\n0.93\n\n[[ ## completed ## ]]";
    let cot_json = "{\"reasoning\": \"The first passage states that Paris is the capital and largest city of France. The second passage only says where France is, so it does not change the answer. Both passages agree, so I am confident.\", \"answer\": \"Paris\", \"confidence\": 0.93}";
    let min_chat = "[[ ## answer ## ]]\nParis\n\n[[ ## confidence ## ]]\n0.93\n\n[[ ## completed ## ]]";
    let min_json = "{\"answer\": \"Paris\", \"confidence\": 0.93}";

    let base: Arc<Signature> = parse_signature(signature, None).expect("signature");
    let cot = Arc::new(chain_of_thought_signature(&base).expect("cot"));
    let demo_maps: Vec<Map> = demos.as_array().unwrap().iter().map(|d| d.as_object().cloned().unwrap()).collect();
    let input_map = inputs.as_object().cloned().unwrap();

    let parse_op =
        |name: &'static str, sig: &Arc<Signature>, kind: AdapterKind, completion: &'static str, cot_flag: bool| {
            let sig = sig.clone();
            Op {
                name,
                spec: json!({"name": name, "kind": "parse", "signature": signature, "chain_of_thought": cot_flag,
                "adapter": kind.as_str(), "completion": completion}),
                run: Box::new(move || {
                    std::hint::black_box(adapter::parse(kind, &sig, std::hint::black_box(completion)).ok());
                }),
            }
        };
    let (cs, dm, im) = (cot.clone(), demo_maps.clone(), input_map.clone());
    let mut ops: Vec<(Op, usize)> = vec![
        (
            Op {
                name: "parse_signature",
                spec: json!({"name": "parse_signature", "kind": "parse_signature", "signature": signature}),
                run: Box::new(move || {
                    std::hint::black_box(parse_signature_uncached(std::hint::black_box(signature), None).ok());
                }),
            },
            20,
        ),
        (
            Op {
                name: "format_chat",
                spec: json!({"name": "format_chat", "kind": "format", "signature": signature, "chain_of_thought": true,
                    "adapter": "chat", "demos": demos, "inputs": inputs}),
                run: Box::new(move || {
                    std::hint::black_box(adapter::format(AdapterKind::Chat, &cs, &dm, &im).ok());
                }),
            },
            20,
        ),
        (parse_op("parse_chat", &cot, AdapterKind::Chat, cot_chat, true), 100),
        (parse_op("parse_json", &cot, AdapterKind::Json, cot_json, true), 100),
        (parse_op("parse_chat_minimal", &base, AdapterKind::Chat, min_chat, false), 100),
        (parse_op("parse_json_minimal", &base, AdapterKind::Json, min_json, false), 100),
    ];

    // Rounds alternate native and DSPy measurements of each op, so both see
    // the same machine conditions. Each round's figure is a median over its
    // samples; the reported figure is the best round on each side (a shared
    // 2-vCPU VM has bursts of steal time that would otherwise decide the result).
    let mut python_child = python().and_then(|py| {
        let mut child = Command::new(py)
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/benches/python/dspy_bench.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .ok()?;
        let workload = json!({"ops": ops.iter().map(|(op, _)| op.spec.clone()).collect::<Vec<_>>()});
        let stdin = child.stdin.as_mut()?;
        writeln!(stdin, "{workload}").ok()?;
        Some(child)
    });
    let mut reader = python_child.as_mut().and_then(|c| c.stdout.take()).map(std::io::BufReader::new);
    let mut ask_python = |name: &str, samples: usize| -> Option<f64> {
        use std::io::BufRead;
        let child = python_child.as_mut()?;
        writeln!(child.stdin.as_mut()?, "{}", json!({"op": name, "samples": samples})).ok()?;
        let mut line = String::new();
        reader.as_mut()?.read_line(&mut line).ok()?;
        serde_json::from_str::<Value>(&line).ok()?["median_ns"].as_f64()
    };
    let mut native_rounds: Vec<Vec<Stats>> = vec![Vec::new(); ops.len()];
    let mut python_rounds: Vec<Vec<f64>> = vec![Vec::new(); ops.len()];
    for _round in 0..ROUNDS {
        for (i, (op, batch)) in ops.iter_mut().enumerate() {
            native_rounds[i].push(measure(SAMPLES / ROUNDS, *batch, &mut op.run));
            if let Some(p) = ask_python(op.name, SAMPLES / ROUNDS) {
                python_rounds[i].push(p);
            }
        }
    }
    let best = |mut v: Vec<f64>| -> Option<f64> {
        v.sort_by(|a, b| a.total_cmp(b));
        v.first().copied()
    };
    let native: Vec<(&str, Stats)> = ops
        .iter()
        .zip(&native_rounds)
        .map(|((op, _), rounds)| {
            let m = best(rounds.iter().map(|s| s.median_ns).collect()).unwrap_or(f64::NAN);
            let p = best(rounds.iter().map(|s| s.p99_ns).collect()).unwrap_or(f64::NAN);
            (op.name, Stats { median_ns: m, p99_ns: p })
        })
        .collect();
    let dspy: Option<Value> = python_child.as_ref().map(|_| {
        let mut obj = serde_json::Map::new();
        for ((op, _), rounds) in ops.iter().zip(&python_rounds) {
            if let Some(m) = best(rounds.clone()) {
                obj.insert(op.name.to_string(), json!({"median_ns": m}));
            }
        }
        Value::Object(obj)
    });
    if let Some(mut c) = python_child {
        drop(c.stdin.take());
        let _ = c.wait();
    }

    println!("native engine vs DSPy 3.4.1 in-process — {}", machine());
    println!("{:<20} {:>12} {:>12} {:>12} {:>10}", "operation", "native p50", "native p99", "DSPy p50", "speed-up");
    let mut rows = Vec::new();
    for (op, s) in &native {
        let py = dspy.as_ref().and_then(|d| d.get(*op)).and_then(|o| o["median_ns"].as_f64());
        let ratio = py.map(|p| p / s.median_ns);
        println!(
            "{:<20} {:>12} {:>12} {:>12} {:>10}",
            op,
            fmt_ns(s.median_ns),
            fmt_ns(s.p99_ns),
            py.map(fmt_ns).unwrap_or_else(|| "n/a".into()),
            ratio.map(|r| format!("{r:.0}×")).unwrap_or_else(|| "n/a".into())
        );
        rows.push(json!({"op": op, "native_median_ns": s.median_ns, "native_p99_ns": s.p99_ns, "dspy_median_ns": py, "speedup": ratio}));
    }
    if dspy.is_none() {
        println!("(DSPy side skipped: no Python venv found; run scripts/setup-python)");
    }
    common::write_results("native_vs_dspy", &json!({"machine": machine(), "rows": rows}));
}
