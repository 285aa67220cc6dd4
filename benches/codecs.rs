//! JSON vs MessagePack vs Arrow vs the automatic choice: one round trip of a
//! payload through a Python worker (`echo`: the runtime encodes, the worker
//! decodes into Python objects, encodes them back, the runtime decodes), for
//! datasets of records (text, as evaluation sets are; and numeric, as
//! feature tables and embeddings are) and for float arrays of 64 KiB, 1 MiB and 16 MiB
//! (their size as JSON), in one run, the codecs interleaved call by call.
//!
//! Reports the median round trip per codec, which codec `auto` chose each
//! way, and `auto` against the best fixed codec of the row (the target:
//! never more than 10 % slower).
//!
//! Run: `cargo bench --bench codecs --features arrow`.

mod common;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{fmt_ns, machine, percentile, python, sorted};
use dspex_bridge::{worker_sources, CallOptions, Codec, CodecChoice, Worker, WorkerConfig};
use serde_json::{json, Value};

/// A payload of about that many bytes (as JSON).
type MakePayload = fn(usize) -> Value;

const CHOICES: [CodecChoice; 4] = [CodecChoice::Json, CodecChoice::MsgPack, CodecChoice::Arrow, CodecChoice::Auto];

fn config() -> WorkerConfig {
    let py = python().expect("benchmarks need the project's .venv (scripts/setup-python)");
    let mut c = WorkerConfig::new("worker:bench:codecs", py);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    c.python_path = vec![worker_sources(&root.join("target/bench-cache")).expect("worker sources")];
    c.preload_dspy = false;
    c.concurrency = 1;
    c.max_frame = 256 * 1024 * 1024;
    c
}

/// Records as an evaluation set has them: text, a label, a number, a score.
fn records(bytes: usize) -> Value {
    let row = |i: usize| {
        json!({"question": format!("What is the capital of country number {i}?"), "answer": format!("City {i}"),
               "id": i, "score": (i % 100) as f64 / 100.0 + 0.005})
    };
    let per_row = serde_json::to_vec(&row(100_000)).map(|v| v.len()).unwrap_or(110);
    json!({"devset": (0..bytes / per_row).map(row).collect::<Vec<_>>()})
}

/// Numeric records, as a feature table or embeddings keyed by id have them.
fn numeric_records(bytes: usize) -> Value {
    let row = |i: usize| {
        let f = i as f64;
        json!({"id": i, "x": f.sin(), "y": f.cos(), "label": i % 2 == 0, "embedding": [f.sin(), f.cos(), f.tan(), 0.5]})
    };
    let per_row = serde_json::to_vec(&row(100_000)).map(|v| v.len()).unwrap_or(110);
    json!({"table": (0..bytes / per_row).map(row).collect::<Vec<_>>()})
}

/// Float vectors (embeddings of 64 dimensions).
fn vectors(bytes: usize) -> Value {
    json!({"embeddings": (0..bytes / (64 * 20)).map(|i| (0..64).map(|j| ((i * 64 + j) as f64).sin()).collect::<Vec<_>>()).collect::<Vec<_>>()})
}

/// A float array (an embedding matrix flattened, a score vector).
fn floats(bytes: usize) -> Value {
    json!({"values": (0..bytes / 20).map(|i| (i as f64).sin()).collect::<Vec<_>>()})
}

fn label(bytes: usize) -> &'static str {
    match bytes {
        b if b < 1 << 20 => "64 KiB",
        b if b < 16 << 20 => "1 MiB",
        _ => "16 MiB",
    }
}

fn codec_name(c: Codec) -> &'static str {
    c.as_str()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async {
        println!("Payload round trips through a Python worker (echo) — {}", machine());
        println!(
            "{:<16} {:>7} | {:>10} {:>10} {:>10} {:>10} | {:<15} | {:>9}",
            "payload", "size", "json", "msgpack", "arrow", "auto", "auto sent/got", "auto/best"
        );
        let worker = Worker::spawn(config()).await.expect("worker");
        let mut rows = Vec::new();
        let shapes: [(&str, MakePayload); 4] = [
            ("records", records),
            ("numeric records", numeric_records),
            ("float vectors", vectors),
            ("floats", floats),
        ];
        for (shape, make) in shapes {
            for bytes in [64 << 10, 1 << 20, 16 << 20] {
                let payload = make(bytes);
                let reps = match bytes {
                    b if b <= 64 << 10 => 400,
                    b if b <= 1 << 20 => 30,
                    _ => 7,
                };
                let mut times: Vec<Vec<f64>> = vec![Vec::new(); CHOICES.len()];
                let mut auto_codecs = (None, None);
                // Two warm-up rounds (pyarrow is imported on the first Arrow frame).
                for round in 0..reps + 2 {
                    for (k, choice) in CHOICES.iter().enumerate() {
                        let opts = CallOptions {
                            codec: Some(*choice),
                            deadline: Some(Instant::now() + Duration::from_secs(120)),
                            ..Default::default()
                        };
                        let args = payload.clone();
                        let before = worker.codec_counts();
                        let t = Instant::now();
                        let out = worker.call("echo", args, &opts).await.expect("echo");
                        let took = t.elapsed().as_nanos() as f64;
                        if round == 0 && out != payload {
                            panic!("{shape} {bytes}: {choice} changed the payload");
                        }
                        if round >= 2 {
                            times[k].push(took);
                        }
                        if *choice == CodecChoice::Auto {
                            let after = worker.codec_counts();
                            let pick = |f: fn(&dspex_bridge::CodecCounts) -> [u64; 3]| {
                                (0..3).find(|&i| f(&after)[i] > f(&before)[i]).and_then(|i| Codec::from_tag(i as u8))
                            };
                            auto_codecs = (pick(|c| c.sent), pick(|c| c.received));
                        }
                        drop(out);
                    }
                }
                let medians: Vec<f64> = times.into_iter().map(|t| percentile(&sorted(t), 0.5)).collect();
                let best = medians[..3].iter().copied().fold(f64::INFINITY, f64::min);
                let ratio = medians[3] / best;
                let picked =
                    format!("{}/{}", auto_codecs.0.map_or("?", codec_name), auto_codecs.1.map_or("?", codec_name));
                println!(
                    "{:<16} {:>7} | {:>10} {:>10} {:>10} {:>10} | {:<15} | {:>8.2}×",
                    shape,
                    label(bytes),
                    fmt_ns(medians[0]),
                    fmt_ns(medians[1]),
                    fmt_ns(medians[2]),
                    fmt_ns(medians[3]),
                    picked,
                    ratio
                );
                rows.push(json!({
                    "payload": shape, "size": label(bytes), "reps": reps,
                    "median_ns": {"json": medians[0], "msgpack": medians[1], "arrow": medians[2], "auto": medians[3]},
                    "auto_sent": auto_codecs.0.map(codec_name), "auto_received": auto_codecs.1.map(codec_name),
                    "auto_over_best": ratio,
                }));
            }
        }
        worker.stop(Duration::from_secs(2)).await;
        common::write_results("codecs", &json!({"machine": machine(), "rows": rows}));
    });
}
