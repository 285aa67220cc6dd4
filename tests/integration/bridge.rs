//! The Python bridge with real Python and real DSPy: DSPy commands, streams,
//! user commands, and every fault the bridge must survive.

use std::io::BufRead;
use std::time::{Duration, Instant};

use dspex_bridge::{
    process_alive, process_start_time, worker_sources, CallOptions, Codec, RunRegistry, StreamItem, Worker,
    WorkerConfig,
};
use dspex_core::ErrorKind;
use dspex_native::lm::offline::OfflineResponder;
use dspex_native::lm::server::{LmServer, Reply, Scripted};
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::support::{python, repo_root, runtime};

pub fn cache_dir() -> std::path::PathBuf {
    repo_root().join("target/test-cache")
}

/// A worker config for tests: the embedded worker sources, test helpers, DSPy preloaded or not.
pub fn config(name: &str, preload_dspy: bool) -> WorkerConfig {
    let mut c = WorkerConfig::new(name, python());
    c.python_path = vec![worker_sources(&cache_dir()).expect("worker sources"), repo_root().join("tests/python")];
    c.preload_dspy = preload_dspy;
    c.user_modules = vec!["dspex_test_helpers".into()];
    c.start_timeout = Duration::from_secs(60);
    c
}

fn obj(v: Value) -> Value {
    v
}

fn deadline(ms: u64) -> CallOptions {
    CallOptions { deadline: Some(Instant::now() + Duration::from_millis(ms)), ..Default::default() }
}

#[test]
fn dspy_programs_run_in_a_worker() {
    runtime().block_on(async {
        let w = Worker::spawn(config("worker:test:dspy", true)).await.unwrap();
        assert_eq!(w.hello().dspy.as_deref(), Some("3.4.1"));
        assert!(w.hello().commands.contains(&"test.shout".to_string()));
        // Predict and ChainOfThought with DummyLM.
        let predict = json!({"program": {"module": "predict", "signature": "question -> answer"},
            "inputs": {"question": "2+2?"}, "lm": {"dummy": [{"answer": "4"}]}});
        let out = w.call("dspy.run", predict, &CallOptions::default()).await.unwrap();
        assert_eq!(out["fields"], json!({"answer": "4"}));
        let cot = json!({"program": {"module": "chain_of_thought", "signature": "question -> answer: int"},
            "inputs": {"question": "2+2?"}, "lm": {"dummy": [{"reasoning": "add", "answer": "4"}]}});
        let out = w
            .call("dspy.run", cot, &CallOptions { codec: Some(Codec::Json.into()), ..Default::default() })
            .await
            .unwrap();
        assert_eq!(out["fields"], json!({"reasoning": "add", "answer": 4}));

        // ReAct with a tool given by import path.
        let react = json!({"program": {"module": "react", "signature": "question -> answer",
                "params": {"tools": ["dspex_test_helpers:add"], "max_iters": 3}},
            "inputs": {"question": "What is 2 + 3?"},
            "lm": {"dummy": [
                {"next_thought": "Use add.", "next_tool_name": "add", "next_tool_args": {"a": 2, "b": 3}},
                {"next_thought": "Done.", "next_tool_name": "finish", "next_tool_args": {}},
                {"reasoning": "2 + 3 = 5", "answer": "5"}]}});
        let out = w.call("dspy.run", react, &CallOptions::default()).await.unwrap();
        assert_eq!(out["fields"]["answer"], "5");
        assert!(out["fields"]["trajectory"].to_string().contains("observation_0"));

        // A user-registered command, with session and trace ids carried through.
        let opts = CallOptions { session: Some("s-7".into()), trace_id: Some("t-9".into()), ..Default::default() };
        let out = w.call("test.shout", json!({"text": "hi"}), &opts).await.unwrap();
        assert_eq!(out, json!({"text": "HI", "session": "s-7", "trace": "t-9"}));
        let exit = w.stop(Duration::from_secs(2)).await;
        assert_eq!(exit.code, Some(0));
        assert!(!process_alive(w.pid()));
    });
}

#[test]
fn dspy_lm_against_a_local_server_and_streaming() {
    runtime().block_on(async {
        let text = "[[ ## reasoning ## ]]\nParis is the capital of France, as everyone knows.\n\n[[ ## answer ## ]]\nParis\n\n[[ ## completed ## ]]";
        let server = LmServer::start(Scripted::new(vec![Reply::text(text)])).await.unwrap();
        let w = Worker::spawn(config("worker:test:stream", true)).await.unwrap();
        let lm = json!({"model": "test-model", "base_url": server.base_url(), "api_key": "sk-test"});
        let args = json!({"program": {"module": "chain_of_thought", "signature": "question -> answer"},
            "inputs": {"question": "Capital of France?"}, "lm": lm});
        let out = w.call("dspy.run", args.clone(), &CallOptions::default()).await.unwrap();
        assert_eq!(out["fields"]["answer"], "Paris");
        let sent = server.requests();
        assert_eq!(sent.len(), 1);
        assert!(sent[0]["messages"][1]["content"].as_str().unwrap().contains("Capital of France?"));

        let mut stream = w.stream("dspy.stream", args, &CallOptions::default()).await.unwrap();
        let mut chunks = Vec::new();
        let mut done = None;
        while let Some(item) = stream.next().await {
            match item.unwrap() {
                StreamItem::Chunk(c) => {
                    assert!(done.is_none(), "chunks come before the result");
                    chunks.push(c);
                }
                StreamItem::Done(v) => done = Some(v),
            }
        }
        assert!(chunks.len() >= 2, "{chunks:?}");
        let answer: String =
            chunks.iter().filter(|c| c["field"] == "answer").map(|c| c["text"].as_str().unwrap_or_default()).collect();
        assert_eq!(answer.trim(), "Paris");
        let reasoning_first = chunks.iter().position(|c| c["field"] == "reasoning");
        let answer_first = chunks.iter().position(|c| c["field"] == "answer");
        assert!(reasoning_first < answer_first, "fields stream in order");
        assert_eq!(done.unwrap()["fields"]["answer"], "Paris");
    });
}

#[test]
fn bootstrap_compile_then_run_the_saved_state() {
    runtime().block_on(async {
        let server = LmServer::start(OfflineResponder::new()).await.unwrap();
        let w = Worker::spawn(config("worker:test:optimize", true)).await.unwrap();
        let lm = json!({"model": "offline", "base_url": server.base_url()});
        let program = json!({"module": "chain_of_thought", "signature": "question -> answer"});
        let trainset: Vec<Value> = [(2, 3), (10, 7), (21, 21)]
            .iter()
            .map(|(a, b)| json!({"question": format!("What is {a} + {b}?"), "answer": (a + b).to_string()}))
            .collect();
        let args = json!({"optimizer": "BootstrapFewShot", "program": program, "trainset": trainset,
            "input_keys": ["question"], "metric": "dspex_test_helpers:exact_answer", "lm": lm,
            "params": {"max_bootstrapped_demos": 2, "max_labeled_demos": 0}});
        let mut stream = w.stream("dspy.optimize", args, &CallOptions::default()).await.unwrap();
        let mut events = Vec::new();
        let mut result = None;
        while let Some(item) = stream.next().await {
            match item.unwrap() {
                StreamItem::Chunk(c) => events.push(c["event"].as_str().unwrap_or_default().to_string()),
                StreamItem::Done(v) => result = Some(v),
            }
        }
        assert_eq!(events.first().map(String::as_str), Some("started"));
        assert!(events.iter().any(|e| e == "progress"));
        let result = result.unwrap();
        assert_eq!(result["demos"], 2);
        let state = result["state"].clone();
        // Load the saved state into a fresh program and run it.
        let run = json!({"program": {"module": "chain_of_thought", "signature": "question -> answer", "state": state},
            "inputs": {"question": "What is 17 + 25?"}, "lm": lm});
        server.clear_requests();
        let out = w.call("dspy.run", run, &CallOptions::default()).await.unwrap();
        assert_eq!(out["fields"]["answer"], "42");
        let prompt = server.requests()[0]["messages"].as_array().unwrap().len();
        assert_eq!(prompt, 1 + 2 * 2 + 1, "system, two demos (user+assistant), the question");
    });
}

#[test]
fn codecs_concurrency_and_environment() {
    runtime().block_on(async {
        let mut c = config("worker:test:env", false);
        c.env = vec![("DSPEX_POOL_VAR".into(), "pool".into())];
        c.cuda_visible_devices = Some("1".into());
        std::env::set_var("DSPEX_NOT_ALLOWED", "secret");
        let w = Worker::spawn(c).await.unwrap();
        for codec in [Codec::Json, Codec::MsgPack] {
            let payload = json!({"text": "héllo «x» 🚀", "n": 1, "f": 2.5, "deep": {"list": [1, null, true]}});
            let out = w.call("echo", payload.clone(), &CallOptions { codec: Some(codec.into()), ..Default::default() }).await.unwrap();
            assert_eq!(out, payload);
        }
        let env = w
            .call("test.env", json!({"names": ["DSPEX_POOL_VAR", "DSPEX_NOT_ALLOWED", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "PATH"]}), &CallOptions::default())
            .await
            .unwrap();
        assert_eq!(env["DSPEX_POOL_VAR"], "pool");
        assert_eq!(env["DSPEX_NOT_ALLOWED"], Value::Null, "only allow-listed variables pass");
        assert_eq!(env["OMP_NUM_THREADS"], "1");
        assert_eq!(env["CUDA_VISIBLE_DEVICES"], "1");
        assert!(env["PATH"].is_string());
        let info = w.call("info", json!({}), &CallOptions::default()).await.unwrap();
        assert_eq!(info["pgid"], info["pid"], "own process group");
        // Many requests in flight on one worker, answered out of order.
        let no_opts = CallOptions::default();
        let slow = w.call("sleep", json!({"seconds": 0.3}), &no_opts);
        let fast = async {
            let t = Instant::now();
            w.call("sleep", json!({"seconds": 0.01}), &CallOptions::default()).await.unwrap();
            t.elapsed()
        };
        let (s, f) = tokio::join!(slow, fast);
        s.unwrap();
        assert!(f < Duration::from_millis(250), "the fast request did not wait for the slow one: {f:?}");
        let many = futures_util::future::join_all((0..200).map(|i| w.call("echo", json!({"i": i}), &no_opts))).await;
        assert!(many.iter().enumerate().all(|(i, r)| r.as_ref().map(|v| v["i"] == i).unwrap_or(false)));
        assert_eq!(w.in_flight(), 0);
        assert!(w.ping(Duration::from_secs(1)).await.unwrap() < Duration::from_millis(500));
    });
}

/// A dataset of records and a float matrix, large enough for `auto` to
/// send as Arrow (for the matrix: records with text are as fast as
/// MessagePack, which `auto` keeps for them).
#[cfg(feature = "arrow")]
fn columnar_payload(rows: usize) -> Value {
    json!({
        "devset": (0..rows).map(|i| json!({"question": format!("What is {i} + {i}?"), "answer": (2 * i).to_string(),
            "n": i, "score": i as f64 / 7.0, "ok": i % 2 == 0, "embedding": [i as f64 / 2.0, 0.25]})).collect::<Vec<_>>(),
        "matrix": (0..rows).map(|i| vec![i as f64 + 0.5; 12]).collect::<Vec<_>>(),
        "note": "not columnar",
    })
}

#[cfg(feature = "arrow")]
#[test]
fn arrow_frames_carry_large_columnar_payloads_both_ways() {
    use dspex_bridge::CodecChoice;
    runtime().block_on(async {
        let w = Worker::spawn(config("worker:test:arrow", false)).await.unwrap();
        assert!(w.hello().codecs.iter().any(|c| c == "arrow"), "pyarrow is in the pinned environment");
        let arrow = |w: &Worker| w.codec_counts().of(Codec::Arrow);
        // Auto: a large columnar payload goes as Arrow, and comes back as Arrow.
        let big = columnar_payload(3000);
        let out = w.call("echo", big.clone(), &CallOptions::default()).await.unwrap();
        assert_eq!(out, big, "exactly what was sent");
        assert_eq!(arrow(&w), (1, 1));
        // Auto: a small one stays MessagePack.
        let small = columnar_payload(3);
        assert_eq!(w.call("echo", small.clone(), &CallOptions::default()).await.unwrap(), small);
        assert_eq!(arrow(&w), (1, 1));
        // Forced either way, per request.
        let msgpack = CallOptions { codec: Some(CodecChoice::MsgPack), ..Default::default() };
        assert_eq!(w.call("echo", big.clone(), &msgpack).await.unwrap(), big);
        assert_eq!(arrow(&w), (1, 1));
        let forced = CallOptions { codec: Some(CodecChoice::Arrow), ..Default::default() };
        assert_eq!(w.call("echo", small.clone(), &forced).await.unwrap(), small);
        assert_eq!(arrow(&w), (2, 2));
        // A reply that is large and columnar comes back as Arrow to a small request.
        let made = w.call("test.floats", json!({"n": 50_000}), &CallOptions::default()).await.unwrap();
        assert_eq!(made.as_array().map(Vec::len), Some(50_000));
        assert_eq!(made[3], json!(1.5));
        assert_eq!(arrow(&w), (2, 3));
    });
}

#[cfg(not(feature = "arrow"))]
#[test]
fn without_the_arrow_feature_auto_stays_messagepack_and_arrow_is_refused() {
    use dspex_bridge::CodecChoice;
    runtime().block_on(async {
        let w = Worker::spawn(config("worker:test:no-arrow", false)).await.unwrap();
        let big = json!({"x": (0..100_000).map(|i| i as f64 + 0.5).collect::<Vec<_>>()});
        assert_eq!(w.call("echo", big.clone(), &CallOptions::default()).await.unwrap(), big);
        assert_eq!(w.codec_counts().of(Codec::Arrow), (0, 0));
        let forced = CallOptions { codec: Some(CodecChoice::Arrow), ..Default::default() };
        let err = w.call("echo", big, &forced).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        assert!(err.message().contains("arrow"), "{err}");
    });
}

#[test]
fn errors_are_classified() {
    runtime().block_on(async {
        let mut c = config("worker:test:errors", false);
        c.limits.address_space = Some(1 << 30);
        let w = Worker::spawn(c).await.unwrap();
        let e = w.call("nope", json!({}), &CallOptions::default()).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        let e = w.call("fail", json!({"message": "kaput"}), &CallOptions::default()).await.unwrap_err();
        assert_eq!((e.kind(), e.python_type(), e.message()), (ErrorKind::Python, Some("ValueError"), "kaput"));
        assert!(e.traceback().unwrap_or_default().contains("Traceback"));
        assert_eq!(e.context().worker.as_deref(), Some("worker:test:errors"));
        let e = w.call("alloc", json!({"megabytes": 2048}), &CallOptions::default()).await.unwrap_err();
        assert_eq!(e.python_type(), Some("MemoryError"), "the address-space limit holds");
        // The worker tells the deadline to the command: sleep stops itself.
        let e = w.call("sleep", json!({"seconds": 5}), &deadline(150)).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout);
        assert!(w.is_ready(), "a cooperative timeout leaves the worker healthy");
        // Printing to stdout and stderr does not disturb frames.
        let out = w
            .call("print", json!({"lines": 200, "text": "\u{0}\u{0}\u{0}\u{5}noise"}), &CallOptions::default())
            .await
            .unwrap();
        assert_eq!(out["printed"], 200);
        let out = w.call("print", json!({"lines": 20, "stream": "stderr"}), &CallOptions::default()).await.unwrap();
        assert_eq!(out["printed"], 20);
        assert_eq!(w.call("echo", json!({"ok": 1}), &CallOptions::default()).await.unwrap(), json!({"ok": 1}));
        // A stream dropped early is cancelled; the worker carries on.
        let mut s = w.stream("count", json!({"n": 1000, "delay": 0.01}), &CallOptions::default()).await.unwrap();
        assert!(matches!(s.next().await, Some(Ok(StreamItem::Chunk(_)))));
        drop(s);
        assert_eq!(
            w.call("echo", json!({"after": "drop"}), &CallOptions::default()).await.unwrap(),
            json!({"after": "drop"})
        );
    });
}

#[test]
fn killed_worker_fails_in_flight_requests_at_once() {
    runtime().block_on(async {
        let w = Worker::spawn(config("worker:test:kill", false)).await.unwrap();
        let pending = {
            let w = w.clone();
            tokio::spawn(async move {
                w.call("sleep", json!({"seconds": 30, "check": false}), &CallOptions::default()).await
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let killed_at = Instant::now();
        // SAFETY: kill -9 of the worker we started.
        unsafe { libc::kill(w.pid() as i32, libc::SIGKILL) };
        let err = pending.await.unwrap().unwrap_err();
        let took = killed_at.elapsed();
        assert_eq!(err.kind(), ErrorKind::WorkerCrashed);
        assert!(err.is_retryable());
        assert!(took < Duration::from_millis(100), "classified error after {took:?}");
        // Asked after the process may already be reaped: the answer must still come.
        let exit = tokio::time::timeout(Duration::from_secs(10), w.exited()).await.expect("exited() answers");
        assert_eq!(exit.signal, Some(libc::SIGKILL));
        // New requests fail fast too.
        let err = w.call("echo", json!({}), &CallOptions::default()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WorkerCrashed);
        // No zombie: the process is gone from /proc.
        assert!(!process_alive(w.pid()));
    });
}

#[test]
fn hung_command_times_out_and_the_worker_is_replaced() {
    runtime().block_on(async {
        let mut c = config("worker:test:hung", false);
        c.hung_grace = Duration::from_millis(300);
        let w = Worker::spawn(c.clone()).await.unwrap();
        let started = Instant::now();
        let err = w.call("sleep", json!({"seconds": 60, "check": false}), &deadline(200)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout);
        assert!(started.elapsed() < Duration::from_millis(400));
        // The command ignores cancel: after the grace the worker is killed...
        let exit = tokio::time::timeout(Duration::from_secs(3), w.exited()).await.expect("worker ended");
        assert!(exit.reason.contains("hung"), "{exit:?}");
        // ...and a replacement takes over.
        let replacement = Worker::spawn(c).await.unwrap();
        assert_ne!(replacement.pid(), w.pid());
        assert_eq!(replacement.call("echo", json!({"x": 1}), &CallOptions::default()).await.unwrap(), json!({"x": 1}));
    });
}

const FAKE_WORKER: &str = r#"
import json, os, struct, sys, time
fd = int(os.environ["DSPEX_RESP_FD"])
def frame(tag, payload):
    os.write(fd, struct.pack(">IB", len(payload) + 1, tag) + payload)
hello = {"type": "hello", "protocol": 1, "pid": os.getpid(), "python": "3", "codecs": ["json"], "commands": [], "max_concurrency": 1}
frame(0, json.dumps(hello).encode())
time.sleep(0.2)
mode = sys.argv[1]
if mode == "oversize":
    os.write(fd, struct.pack(">IB", 2**31, 0))
elif mode == "tag":
    frame(7, b"{}")
elif mode == "garbage":
    frame(1, b"\xc1\xc1")
elif mode == "unexpected":
    frame(0, json.dumps({"type": "response", "id": 999, "ok": 1}).encode())
time.sleep(60)
"#;

#[test]
fn protocol_violations_break_the_worker_without_panics() {
    runtime().block_on(async {
        for mode in ["oversize", "tag", "garbage", "unexpected"] {
            let mut c = config(&format!("worker:test:{mode}"), false);
            c.args = vec!["-c".into(), FAKE_WORKER.into(), mode.into()];
            let w = Worker::spawn(c).await.unwrap();
            let pending = w.call("anything", json!({}), &CallOptions::default()).await.unwrap_err();
            assert_eq!(pending.kind(), ErrorKind::Protocol, "{mode}: {pending}");
            let exit = tokio::time::timeout(Duration::from_secs(3), w.exited()).await.expect("worker killed");
            assert!(exit.reason.contains("broke the protocol"), "{mode}: {exit:?}");
            assert!(!process_alive(w.pid()), "{mode}");
        }
        // A worker that dies before hello: the error shows its output.
        let mut c = config("worker:test:nohello", false);
        c.args = vec!["-c".into(), "import sys; print('missing something', file=sys.stderr); sys.exit(5)".into()];
        let err = Worker::spawn(c).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.message().contains("missing something"), "{err}");
        // One that never says hello.
        let mut c = config("worker:test:silent", false);
        c.args = vec!["-c".into(), "import time; time.sleep(30)".into()];
        c.start_timeout = Duration::from_millis(300);
        let err = Worker::spawn(c).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout);
    });
}

/// Helper process for `parent_killed_leaves_no_worker`: starts a cold
/// worker, a zygote and a worker forked from it, prints their pids, and
/// waits to be killed.
#[test]
#[ignore = "helper process, started by parent_killed_leaves_no_worker"]
fn orphan_helper() {
    if std::env::var_os("DSPEX_ORPHAN_HELPER").is_none() {
        return;
    }
    runtime().block_on(async {
        let a = Worker::spawn(config("worker:orphan:0", false)).await.unwrap();
        let z = dspex_bridge::Zygote::start("zygote:orphan", &config("zygote:orphan", false)).await.unwrap();
        let mut c = config("worker:orphan:1", false);
        c.zygote = Some(z.clone());
        let b = Worker::spawn(c).await.unwrap();
        assert!(b.forked());
        println!("PIDS {} {} {}", a.pid(), b.pid(), z.pid());
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
}

#[test]
fn parent_killed_leaves_no_worker() {
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "bridge::orphan_helper", "--nocapture", "--test-threads=1"])
        .env("DSPEX_ORPHAN_HELPER", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut pids = Vec::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        // libtest may print "test name ... " on the same line first.
        if let Some(rest) = line.find("PIDS ").map(|i| &line[i + 5..]) {
            pids = rest.split_whitespace().map(|p| p.parse::<u32>().unwrap()).collect();
            break;
        }
    }
    assert_eq!(pids.len(), 3, "a cold worker, a forked one, their zygote");
    assert!(pids.iter().all(|&p| process_alive(p)));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let until = Instant::now() + Duration::from_secs(2);
    while pids.iter().any(|&p| process_alive(p)) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in pids {
        assert!(!process_alive(p), "process {p} (worker or zygote) outlived its runtime");
    }
}

fn sleeper(own_group: bool) -> std::process::Child {
    let code =
        if own_group { "import os, time; os.setpgid(0, 0); time.sleep(30)" } else { "import time; time.sleep(30)" };
    std::process::Command::new(python()).args(["-c", code]).spawn().unwrap()
}

#[test]
fn startup_sweep_kills_only_leftovers_of_dead_runs() {
    let dir = std::env::temp_dir().join(format!("dspex-sweep-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut leftover = sleeper(true);
    let mut live_runtime = sleeper(false);
    let mut live_worker = sleeper(true);
    let mut reused = sleeper(true);
    std::thread::sleep(Duration::from_millis(200));
    let dead_pid = {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        pid
    };
    let rec = |pid: u32, start: u64| json!({"pid": pid, "pgid": pid, "start_time": start});
    let st = |c: &std::process::Child| process_start_time(c.id()).unwrap();
    let write = |name: &str, v: Value| std::fs::write(dir.join(format!("{name}.json")), v.to_string()).unwrap();
    write(
        "dead",
        json!({"run_id": "dead", "pid": dead_pid, "start_time": 1,
        "workers": {leftover.id().to_string(): rec(leftover.id(), st(&leftover)),
                    reused.id().to_string(): rec(reused.id(), st(&reused) + 12345)}}),
    );
    write(
        "live",
        json!({"run_id": "live", "pid": live_runtime.id(), "start_time": st(&live_runtime),
        "workers": {live_worker.id().to_string(): rec(live_worker.id(), st(&live_worker))}}),
    );
    let report = RunRegistry::sweep(&dir).unwrap();
    assert_eq!(report.killed, vec![leftover.id()]);
    assert_eq!((report.dead_runs, report.live_runs), (1, 1));
    assert!(leftover.wait().unwrap().code().is_none(), "killed by a signal");
    assert!(process_alive(live_worker.id()), "a live runtime's worker is never touched");
    assert!(process_alive(reused.id()), "a reused pid (different start time) is never touched");
    assert!(!dir.join("dead.json").exists() && dir.join("live.json").exists());
    for c in [&mut live_runtime, &mut live_worker, &mut reused] {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = obj(json!(null));
}

#[test]
fn workers_are_recorded_in_the_run_registry() {
    runtime().block_on(async {
        let dir = std::env::temp_dir().join(format!("dspex-reg-test-{}", std::process::id()));
        let reg = std::sync::Arc::new(RunRegistry::open(&dir).unwrap());
        let mut c = config("worker:test:registry", false);
        c.registry = Some(reg.clone());
        let w = Worker::spawn(c).await.unwrap();
        let text = std::fs::read_to_string(reg.path()).unwrap();
        assert!(text.contains(&w.pid().to_string()));
        w.stop(Duration::from_secs(1)).await;
        let text = std::fs::read_to_string(reg.path()).unwrap();
        assert!(!text.contains(&format!("\"{}\"", w.pid())));
        drop(reg);
        let _ = std::fs::remove_dir_all(&dir);
    });
}

#[test]
fn python_environments_are_built_cached_and_reported() {
    use dspex_bridge::{EnvSpec, PythonEnv};
    runtime().block_on(async {
        let cache = cache_dir().join("envs-test");
        let messages = std::sync::Mutex::new(Vec::<String>::new());
        let progress = |m: &str| messages.lock().unwrap().push(m.to_string());
        // A small profile: just the worker's codec. Built once, then reused.
        let mut spec = EnvSpec::new("tiny", vec!["msgpack==1.2.4".into()]);
        spec.base_python = Some(python());
        let env = PythonEnv::ensure(&spec, &cache, &progress).await.unwrap();
        assert!(env.python().starts_with(&cache));
        let built = messages.lock().unwrap().len();
        let again = PythonEnv::ensure(&spec, &cache, &progress).await.unwrap();
        assert_eq!(env, again);
        assert_eq!(messages.lock().unwrap().len(), built, "the second call reuses the environment");
        let (py, dspy) = env.versions().await.unwrap();
        assert!(py.starts_with("3."));
        assert_eq!(dspy, None);
        // A worker runs in it (without DSPy).
        let mut c = config("worker:test:tiny-env", false);
        c.python = env.python().to_path_buf();
        c.user_modules.clear();
        let w = Worker::spawn(c).await.unwrap();
        assert_eq!(
            w.call("echo", json!({"from": "tiny"}), &CallOptions::default()).await.unwrap(),
            json!({"from": "tiny"})
        );
        assert_eq!(w.hello().dspy, None);

        // Clear errors: no such interpreter; an install that fails.
        let mut missing = EnvSpec::new("missing", vec!["msgpack".into()]);
        missing.base_python = Some("/nonexistent/python3".into());
        let err = PythonEnv::ensure(&missing, &cache, &progress).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.message().contains("/nonexistent/python3"), "{err}");
        let mut broken = EnvSpec::new("broken", vec!["dspex-no-such-package-anywhere==0.0.1".into()]);
        broken.base_python = Some(python());
        let err = PythonEnv::ensure(&broken, &cache, &progress).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.message().contains("install failed"), "{err}");
        assert!(err.message().contains("dspex-no-such-package-anywhere"), "{err}");
    });
}

/// A "worker" that is a shell script: start-up failures as a user meets them.
fn shell_worker(name: &str, script: &str) -> WorkerConfig {
    let mut c = WorkerConfig::new(name, "/bin/sh");
    c.args = vec!["-c".into(), script.into()];
    c.start_timeout = Duration::from_millis(800);
    c
}

#[test]
fn start_up_failures_are_classified_with_the_reason() {
    runtime().block_on(async {
        // No such interpreter.
        let err = Worker::spawn(WorkerConfig::new("worker:test:missing", "/nonexistent/python3")).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        assert!(err.message().contains("/nonexistent/python3"), "{}", err.message());
        // It dies at once: its last output is in the error.
        let err = Worker::spawn(shell_worker("worker:test:dies", "echo 'ModuleNotFoundError: dspy' >&2; exit 3"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        assert!(err.message().contains("ModuleNotFoundError: dspy"), "{}", err.message());
        assert!(err.message().contains("during start-up"), "{}", err.message());
        // It never says hello.
        let t = Instant::now();
        let err = Worker::spawn(shell_worker("worker:test:silent", "sleep 30")).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        assert!(t.elapsed() < Duration::from_secs(5));
        // Its first frame is not a hello, or not a message at all.
        let frame = |payload: &str| {
            let mut bytes = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
            bytes.push(0); // JSON
            bytes.extend_from_slice(payload.as_bytes());
            let escaped: String = bytes.iter().map(|b| format!("\\{b:03o}")).collect();
            format!("printf '{escaped}' > /proc/self/fd/$DSPEX_RESP_FD; sleep 5")
        };
        let not_hello = frame(r#"{"type":"pong","seq":1,"in_flight":0}"#);
        let err = Worker::spawn(shell_worker("worker:test:nothello", &not_hello)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
        assert!(err.message().contains("not hello"), "{}", err.message());
        let garbage = frame("{}");
        let err = Worker::spawn(shell_worker("worker:test:garbage", &garbage)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    });
}

/// A caller that gives up while its (large) request is still being written
/// must not leave half a frame in the pipe: the worker would read the next
/// request as garbage and be killed for it.
#[test]
fn a_call_dropped_mid_write_leaves_the_worker_intact() {
    runtime().block_on(async {
        let w = Worker::spawn(config("worker:test:dropped-write", false)).await.unwrap();
        let pid = w.pid();
        // 8 MiB: far more than a pipe holds, so the write cannot finish in one go.
        let big = json!({"blob": "x".repeat(8 << 20)});
        let opts = CallOptions::default();
        for _ in 0..3 {
            let call = w.call("echo", big.clone(), &opts);
            // Poll it once or twice, then drop it mid-frame.
            let _ = tokio::time::timeout(Duration::from_micros(200), call).await;
            let out = w.call("echo", json!({"after": true}), &CallOptions::default()).await.unwrap();
            assert_eq!(out, json!({"after": true}));
        }
        assert_eq!(w.pid(), pid, "the same process served every request");
        assert!(w.ping(Duration::from_secs(2)).await.is_ok(), "the worker is still healthy");
    });
}

#[test]
fn late_requests_stderr_and_exit_codes_are_reported() {
    runtime().block_on(async {
        let w = Worker::spawn(config("worker:test:small", false)).await.unwrap();
        let shown = format!("{w:?}");
        assert!(shown.contains("worker:test:small") && shown.contains(&w.pid().to_string()), "{shown}");
        // A deadline that passed before the request left is a timeout, sent nowhere.
        let late = CallOptions { deadline: Some(Instant::now() - Duration::from_millis(1)), ..Default::default() };
        let e = w.call("echo", json!({}), &late).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout);
        assert!(e.message().contains("before the request was sent"), "{}", e.message());
        let e = w.stream("count", json!({"n": 3}), &late).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout);
        assert_eq!(w.in_flight(), 0, "nothing left registered");
        let mut s = w.stream("count", json!({"n": 1}), &CallOptions::default()).await.unwrap();
        let shown = format!("{s:?}");
        assert!(shown.contains("worker:test:small") && shown.contains("\"count\""), "{shown}");
        while s.next().await.is_some() {}
        // What the worker writes to stderr is kept for error reports.
        w.call("print", json!({"lines": 3, "text": "to-stderr", "stream": "stderr"}), &CallOptions::default())
            .await
            .unwrap();
        let end = Instant::now() + Duration::from_secs(5);
        while !w.stderr_tail().contains("to-stderr 2") {
            assert!(Instant::now() < end, "stderr tail: {:?}", w.stderr_tail());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // A worker that exits on its own reports its code.
        let e = w.call("crash", json!({"code": 7}), &CallOptions::default()).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::WorkerCrashed);
        let exit = tokio::time::timeout(Duration::from_secs(10), w.exited()).await.expect("exited() answers");
        assert_eq!((exit.code, exit.signal), (Some(7), None));
    });
}

/// A gateway for the tests: answers with a canned completion, or holds the
/// call until it is dropped (and says so).
#[derive(Clone)]
struct TestGateway(std::sync::Arc<GatewayState>);

struct GatewayState {
    calls: std::sync::Mutex<Vec<dspex_bridge::LmCall>>,
    hold: std::sync::atomic::AtomicBool,
    held: tokio::sync::Notify,
    dropped: std::sync::Arc<tokio::sync::Notify>,
}

/// Tells `dropped` when the call's future is dropped (the call was cancelled).
struct DropSignal(std::sync::Arc<tokio::sync::Notify>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

impl dspex_bridge::LmGateway for TestGateway {
    fn call(
        &self,
        call: dspex_bridge::LmCall,
    ) -> futures_util::future::BoxFuture<'static, dspex_core::Result<dspex_bridge::LmAnswer>> {
        let me = self.0.clone();
        Box::pin(async move {
            me.calls.lock().unwrap().push(call);
            if me.hold.load(std::sync::atomic::Ordering::SeqCst) {
                let _signal = DropSignal(me.dropped.clone());
                me.held.notify_one();
                futures_util::future::pending::<()>().await;
            }
            let body = json!({
                "id": "c", "object": "chat.completion", "created": 1, "model": "m",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "[[ ## answer ## ]]\n42\n\n[[ ## completed ## ]]"}}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
            });
            Ok(dspex_bridge::LmAnswer {
                status: 200,
                headers: vec![("content-type".into(), "application/json".into())],
                body: dspex_bridge::LmBody::Whole(body.to_string().into()),
            })
        })
    }
}

#[test]
fn lm_calls_reach_the_gateway_on_connections_and_end_with_the_worker() {
    runtime().block_on(async {
        let state = std::sync::Arc::new(GatewayState {
            calls: Default::default(),
            hold: false.into(),
            held: tokio::sync::Notify::new(),
            dropped: Default::default(),
        });
        let gateway = &state;
        let mut cfg = config("worker:test:lmconn", true);
        cfg.lm_gateway = Some(std::sync::Arc::new(TestGateway(state.clone())));
        let w = Worker::spawn(cfg).await.unwrap();
        // Port 9 (discard) answers nothing: only the gateway can.
        let lm = json!({"model": "openai/m", "base_url": "http://127.0.0.1:9/v1", "api_key": "sk-conn"});
        let args = json!({"program": {"module": "predict", "signature": "question -> answer"},
            "inputs": {"question": "6 * 7?"}, "lm": lm});
        for i in 0..3 {
            let out = w.call("dspy.run", args.clone(), &deadline(30_000)).await.unwrap();
            assert_eq!(out["fields"]["answer"], "42");
            assert_eq!(gateway.calls.lock().unwrap().len(), i + 1);
        }
        {
            let calls = gateway.calls.lock().unwrap();
            let call = &calls[0];
            assert_eq!(call.url, "http://127.0.0.1:9/v1/chat/completions");
            assert!(call.headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("authorization") && v == "Bearer sk-conn"));
            assert!(call.body.contains("6 * 7?"));
            assert!(call.deadline.is_some(), "the request's deadline goes with the call");
            assert_eq!(call.worker, "worker:test:lmconn");
        }
        // One connection served the three calls one after another: the
        // worker holds the connector and one connection, no more.
        let sockets = std::fs::read_dir(format!("/proc/{}/fd", w.pid()))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|target| target.to_string_lossy().starts_with("socket:"))
            .count();
        assert_eq!(sockets, 2, "the LM connector and one LM connection");

        // A worker that keeps opening connections is refused past 512 (each
        // holds a descriptor of the runtime's); then it can still call.
        let flood = w.call("test.lm_connections", json!({"n": 600}), &deadline(30_000)).await.unwrap();
        assert_eq!(flood["refused"], 600 - 512 + 1, "the connection already open counts: {flood}");
        let out = w.call("dspy.run", args.clone(), &deadline(30_000)).await.unwrap();
        assert_eq!(out["fields"]["answer"], "42");

        // A call in flight when the worker dies is dropped with it.
        gateway.hold.store(true, std::sync::atomic::Ordering::SeqCst);
        let pending = {
            let (w, args) = (w.clone(), args.clone());
            tokio::spawn(async move { w.call("dspy.run", args, &deadline(30_000)).await })
        };
        tokio::time::timeout(Duration::from_secs(20), gateway.held.notified()).await.expect("the call arrives");
        let dropped = gateway.dropped.notified();
        // SAFETY: kill -9 of the worker we started.
        unsafe { libc::kill(w.pid() as i32, libc::SIGKILL) };
        tokio::time::timeout(Duration::from_secs(2), dropped).await.expect("the gateway call is dropped");
        assert_eq!(pending.await.unwrap().unwrap_err().kind(), ErrorKind::WorkerCrashed);
    });
}
