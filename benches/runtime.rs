//! The actor runtime's costs, each beside its baseline in the same run.
//!
//! 1. Routing decision: `Router::plan` called directly (what requests do)
//!    vs. the same decision through the `router` actor's mailbox.
//! 2. No-op Python call: `Runtime::call("noop")` vs. `Worker::call` on a
//!    bare bridge worker, 1 worker, 64 in flight (and 1 in flight).
//! 3. 1000 concurrent calls to a stub LM with 100 ms latency through 2
//!    workers (50 at a time each): achieved vs. ideal throughput — a worker
//!    command that waits 100 ms, and DSPy `Predict` over an HTTP LM that
//!    answers after 100 ms.
//! 4. Result-cache hits through `Runtime::run`.
//! 5. Streaming: time to the first chunk through the runtime (native and
//!    Python routes) vs. the LM's first byte seen by a bare HTTP client.
//!
//! Run: `cargo bench --bench runtime`.

mod common;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{fmt_ns, machine, measure, percentile, python, sorted};
use dspex::actors::router::{RouteRequest, Router, RouterActor, RouterMsg};
use dspex::actors::Telemetry;
use dspex::bridge::{worker_sources, CallOptions, Worker, WorkerConfig};
use dspex::native::lm::offline::OfflineResponder;
use dspex::native::lm::server::LmServer;
use dspex::native::lm::{LanguageModel, LmEvent, LmRequest, OpenAiClient};
use dspex::{LmConfig, Program, ProgramSpec, RequestOptions, RouterConfig, Runtime, StreamEvent};
use futures_util::StreamExt;
use serde_json::json;

const RUN: Duration = Duration::from_millis(1500);

fn py() -> PathBuf {
    python().expect("benchmarks need the project's .venv (scripts/setup-python)")
}

async fn drive<F, Fut>(depth: usize, f: F) -> (f64, f64)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    for _ in 0..200 {
        f().await;
    }
    let started = Instant::now();
    let tasks: Vec<_> = (0..depth)
        .map(|_| {
            let f = f.clone();
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(100_000);
                while started.elapsed() < RUN {
                    let t = Instant::now();
                    f().await;
                    lat.push(t.elapsed().as_nanos() as f64);
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    let secs = started.elapsed().as_secs_f64();
    let ops = all.len() as f64 / secs;
    (percentile(&sorted(all), 0.5), ops)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(run());
}

async fn run() {
    println!("dspex runtime — {}", machine());
    let mut results = serde_json::Map::new();

    // 1. Routing decision.
    let router = Arc::new(Router::new(RouterConfig::default(), Telemetry::new().with_metrics(false)));
    let req = RouteRequest {
        op: "predict",
        native: Ok(()),
        prefer: None,
        pool: None,
        shadow: None,
        python: true,
        python_unsupported: None,
    };
    let direct = measure(101, 1000, || {
        std::hint::black_box(router.plan(&req).expect("plan"));
    });
    let (actor, _h) = ractor::Actor::spawn(None, RouterActor::new(router.clone()), ()).await.expect("router actor");
    let mut lat = Vec::new();
    for i in 0..20_000 {
        let t = Instant::now();
        let d = ractor::call!(actor, |reply| RouterMsg::Plan {
            op: "predict".into(),
            native_unsupported: None,
            prefer: None,
            reply
        })
        .expect("call");
        if i >= 1000 {
            lat.push(t.elapsed().as_nanos() as f64);
        }
        std::hint::black_box(d.ok());
    }
    let mailbox = percentile(&sorted(lat), 0.5);
    actor.stop(None);
    println!(
        "routing decision p50: direct {} (p99 {}), through the router actor's mailbox {} ({:.0}× the direct call)",
        fmt_ns(direct.median_ns),
        fmt_ns(direct.p99_ns),
        fmt_ns(mailbox),
        mailbox / direct.median_ns
    );
    results.insert(
        "routing".into(),
        json!({"direct_p50_ns": direct.median_ns, "direct_p99_ns": direct.p99_ns, "mailbox_p50_ns": mailbox}),
    );

    // 2. No-op Python call: runtime vs bare bridge worker.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut wc = WorkerConfig::new("worker:bare:0", py());
    wc.python_path = vec![worker_sources(&root.join("target/bench-cache")).expect("worker sources")];
    wc.preload_dspy = true;
    wc.concurrency = 64;
    let bare = Worker::spawn(wc).await.expect("bare worker");
    let mut pool = common::pool("general").size(1).concurrency(64);
    pool.max_queue = 100_000;
    let runtime = Runtime::builder().python(py()).pool(pool).start().await.expect("runtime");
    println!("no-op Python call, 1 worker:");
    let mut noop_rows = Vec::new();
    for depth in [1usize, 64] {
        let (mut best_b, mut best_r) = ((0.0, 0.0), (0.0, 0.0));
        for _ in 0..3 {
            let w = bare.clone();
            let b = drive(depth, move || {
                let w = w.clone();
                async move {
                    w.call("noop", json!({}), &CallOptions::default()).await.expect("noop");
                }
            })
            .await;
            let r2 = runtime.clone();
            let r = drive(depth, move || {
                let r2 = r2.clone();
                async move {
                    r2.call("general", "noop", json!({}), RequestOptions::default()).await.expect("noop");
                }
            })
            .await;
            if b.1 > best_b.1 {
                best_b = b;
            }
            if r.1 > best_r.1 {
                best_r = r;
            }
        }
        println!(
            "  depth {depth:>2}: bridge {:>9.0}/s (p50 {}), Runtime::call {:>9.0}/s (p50 {}): {:.0}% of the bridge",
            best_b.1,
            fmt_ns(best_b.0),
            best_r.1,
            fmt_ns(best_r.0),
            100.0 * best_r.1 / best_b.1
        );
        noop_rows.push(json!({"depth": depth, "bridge_ops": best_b.1, "bridge_p50_ns": best_b.0,
            "runtime_ops": best_r.1, "runtime_p50_ns": best_r.0, "share": best_r.1 / best_b.1}));
    }
    results.insert("noop".into(), json!(noop_rows));
    bare.stop(Duration::from_secs(1)).await;
    runtime.clone().shutdown().await.expect("shutdown");

    // 3. 1000 concurrent calls, stub LM with 100 ms latency, 2 workers × 50.
    let lm_server = LmServer::start(OfflineResponder::with_latency(Duration::from_millis(100))).await.expect("LM");
    let lm = LmConfig::new("offline").with_base_url(lm_server.base_url()).with_api_key("bench");
    let mut pool = common::pool("general").size(2).concurrency(50);
    pool.max_queue = 10_000;
    let runtime = Runtime::builder().python(py()).lm(lm).pool(pool).start().await.expect("runtime");
    let ideal = 2.0 * 50.0 / 0.1;
    let burst = |what: &'static str| {
        let runtime = runtime.clone();
        async move {
            let program = Program::new(ProgramSpec::predict("question -> answer"));
            let t = Instant::now();
            let tasks: Vec<_> = (0..1000)
                .map(|i| {
                    let (rt, program) = (runtime.clone(), program.clone());
                    tokio::spawn(async move {
                        if what == "command" {
                            rt.call(
                                "general",
                                "sleep",
                                json!({"seconds": 0.1, "check": false}),
                                RequestOptions::default(),
                            )
                            .await
                            .map(|_| ())
                        } else {
                            let q = json!({"question": format!("What is {i} + 1?")});
                            rt.run(
                                &program,
                                q.as_object().cloned().unwrap_or_default(),
                                RequestOptions::python().no_cache(),
                            )
                            .await
                            .map(|_| ())
                        }
                    })
                })
                .collect();
            let mut failed = 0;
            for t in tasks {
                if t.await.map(|r| r.is_err()).unwrap_or(true) {
                    failed += 1;
                }
            }
            (1000.0 / t.elapsed().as_secs_f64(), failed)
        }
    };
    // Warm up both paths (DSPy's first LM call builds its client).
    let _ = burst("dspy").await;
    let (stub_rate, stub_failed) = burst("command").await;
    let (dspy_rate, dspy_failed) = burst("dspy").await;
    println!(
        "1000 concurrent calls, 100 ms stub LM, 2 workers × 50: ideal {ideal:.0}/s; worker command {stub_rate:.0}/s ({:.0}% of ideal, {stub_failed} failed); DSPy Predict over HTTP {dspy_rate:.0}/s ({:.0}% of ideal, {dspy_failed} failed)",
        100.0 * stub_rate / ideal,
        100.0 * dspy_rate / ideal
    );
    results.insert(
        "concurrent_stub_lm".into(),
        json!({"ideal_ops": ideal, "command_ops": stub_rate, "command_share": stub_rate / ideal,
               "dspy_ops": dspy_rate, "dspy_share": dspy_rate / ideal}),
    );
    runtime.clone().shutdown().await.expect("shutdown");

    // 4. Cache hits, and 5. streaming first chunk: a fresh runtime on a fast LM.
    let lm_server = LmServer::start(OfflineResponder::new()).await.expect("LM");
    let lm = LmConfig::new("offline").with_base_url(lm_server.base_url()).with_api_key("bench").with_temperature(0.0);
    // A second pool whose DSPy calls the LM itself, for the streaming rows.
    let mut direct = common::pool("direct").size(1).standby(0);
    direct.lm_calls = dspex::LmCalls::Direct;
    let runtime = Runtime::builder()
        .python(py())
        .lm(lm.clone())
        .pool(common::pool("general").size(1))
        .pool(direct)
        .start()
        .await
        .expect("runtime");
    let program = Program::new(ProgramSpec::predict("question -> answer"));
    let q = json!({"question": "What is 2 + 2?"}).as_object().cloned().unwrap_or_default();
    runtime.run(&program, q.clone(), RequestOptions::default()).await.expect("first run");
    let n = 200_000;
    let t = Instant::now();
    for _ in 0..n {
        let out = runtime.run(&program, q.clone(), RequestOptions::default()).await.expect("hit");
        debug_assert!(out.meta.cached);
    }
    let hits = n as f64 / t.elapsed().as_secs_f64();
    println!("cache hits through Runtime::run (one task): {hits:.0}/s");
    results.insert("cache_hits_per_s".into(), json!(hits));

    // 5. Streaming: the time to the first chunk, and how long after the LM
    // server wrote its first byte of content the chunk reached the caller.
    let client = OpenAiClient::new(&lm).expect("client");
    let native = Program::new(ProgramSpec::predict("question -> answer"));
    let question = |i: usize| json!({"question": format!("What is {i} + 2?")}).as_object().cloned().unwrap_or_default();
    let predict = dspex::native::Predict::new(dspex::native::parse_signature("question -> answer", None).expect("sig"));
    let lm_first_byte = || lm_server.timings().first().and_then(|t| t.first_byte);
    let mut bare = FirstChunks::default();
    // Each path in its own loop, so none runs right after another's work.
    for i in 0..80 {
        let messages = predict.messages(&question(i)).expect("messages");
        lm_server.clear_requests();
        let t = Instant::now();
        let mut s = client.stream(LmRequest::new(messages)).await.expect("stream");
        let mut first = None;
        // Read to the end, as the runtime does, so the connection is reused alike.
        while let Some(e) = s.next().await {
            if first.is_none() && matches!(e, Ok(LmEvent::Delta { ref text, .. }) if !text.is_empty()) {
                first = Some(Instant::now());
            }
        }
        if i >= 20 {
            bare.push(t, first, lm_first_byte());
        }
    }
    let mut routes = [FirstChunks::default(), FirstChunks::default(), FirstChunks::default()];
    let route_opts = [RequestOptions::native(), RequestOptions::python(), RequestOptions::python().pool("direct")];
    for (route, out) in route_opts.into_iter().zip(routes.iter_mut()) {
        for i in 0..80 {
            lm_server.clear_requests();
            let t = Instant::now();
            let mut s = runtime.stream(&native, question(i), route.clone().no_cache()).await.expect("stream");
            let mut first = None;
            while let Some(e) = s.next().await {
                if first.is_none() && matches!(e, Ok(StreamEvent::Chunk { ref text, .. }) if !text.is_empty()) {
                    first = Some(Instant::now());
                }
            }
            if i >= 20 {
                out.push(t, first, lm_first_byte());
            }
        }
    }
    // DSPy alone: the same program streamed in-process by a Python child,
    // DSPy's default way (the program in a thread) and as an async program.
    let mut in_process = [FirstChunks::default(), FirstChunks::default()];
    for (mode, out) in ["sync", "async"].into_iter().zip(in_process.iter_mut()) {
        lm_server.clear_requests();
        let dspy_alone = dspy_streamify_alone(&lm_server.base_url(), 80, mode).await;
        let timings = lm_server.timings();
        for (k, (start, first)) in dspy_alone.iter().enumerate().skip(20) {
            out.push(*start, *first, timings.get(k).and_then(|t| t.first_byte));
        }
    }
    let [in_process, in_process_async] = in_process;
    let [native_route, python_route, python_direct] = routes;
    let lm = bare.ttfc();
    let row = |name: &str, c: &FirstChunks| {
        let ttfc = c.ttfc();
        format!("{name} {} (+{}; {} after the LM's first byte)", fmt_ns(ttfc), fmt_ns(ttfc - lm), fmt_ns(c.after_lm()))
    };
    println!(
        "streaming, time to first chunk (p50): LM first byte through the bare client {} ({} after the server wrote it); {}; {}; {}; {}; {}",
        fmt_ns(lm),
        fmt_ns(bare.after_lm()),
        row("through Runtime native", &native_route),
        row("Python (LM calls through the gateway)", &python_route),
        row("Python, lm_calls = direct", &python_direct),
        row("DSPy streamify in-process, no dspex", &in_process),
        row("same, async program", &in_process_async),
    );
    results.insert(
        "streaming_first_chunk".into(),
        json!({"lm_first_byte_ns": lm, "native_ns": native_route.ttfc(), "python_ns": python_route.ttfc(), "python_direct_ns": python_direct.ttfc(),
               "dspy_in_process_ns": in_process.ttfc(),
               "native_overhead_ns": native_route.ttfc() - lm, "python_overhead_ns": python_route.ttfc() - lm,
               "dspy_in_process_overhead_ns": in_process.ttfc() - lm,
               "bare_after_lm_first_byte_ns": bare.after_lm(), "native_after_lm_first_byte_ns": native_route.after_lm(),
               "python_after_lm_first_byte_ns": python_route.after_lm(),
               "dspy_in_process_after_lm_first_byte_ns": in_process.after_lm(),
               "dspy_async_in_process_ns": in_process_async.ttfc(),
               "dspy_async_in_process_after_lm_first_byte_ns": in_process_async.after_lm()}),
    );
    runtime.shutdown().await.expect("shutdown");
    results.insert("machine".into(), json!(machine()));
    common::write_results("runtime", &serde_json::Value::Object(results));
}

/// First-chunk samples of one path: from the call to the first chunk, and
/// from the LM server's first byte of content to the first chunk.
#[derive(Default)]
struct FirstChunks {
    ttfc: Vec<f64>,
    after_lm: Vec<f64>,
}

impl FirstChunks {
    fn push(&mut self, start: Instant, first: Option<Instant>, lm_first_byte: Option<Instant>) {
        let since = |a: Instant, b: Instant| b.saturating_duration_since(a).as_nanos() as f64;
        self.ttfc.push(first.map_or(f64::NAN, |f| since(start, f)));
        self.after_lm.push(match (lm_first_byte, first) {
            (Some(l), Some(f)) => since(l, f),
            _ => f64::NAN,
        });
    }

    fn ttfc(&self) -> f64 {
        percentile(&sorted(self.ttfc.clone()), 0.5)
    }

    fn after_lm(&self) -> f64 {
        percentile(&sorted(self.after_lm.clone()), 0.5)
    }
}

/// `benches/python/dspy_stream_bench.py` against `base_url` in `mode` (`sync` or `async`): each request's
/// start and first chunk, as `Instant`s of this process (both sides read
/// CLOCK_MONOTONIC, which is what `Instant` is on Linux).
async fn dspy_streamify_alone(base_url: &str, n: usize, mode: &str) -> Vec<(Instant, Option<Instant>)> {
    let monotonic_ns = || {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `ts` is a valid timespec for the call to fill.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
    };
    let (base, base_ns) = (Instant::now(), monotonic_ns());
    let at = |ns: i128| {
        let delta = ns - base_ns;
        if delta >= 0 {
            base + Duration::from_nanos(delta as u64)
        } else {
            base - Duration::from_nanos((-delta) as u64)
        }
    };
    let output = tokio::process::Command::new(py())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/benches/python/dspy_stream_bench.py"))
        .arg(base_url)
        .arg(n.to_string())
        .arg(mode)
        .output()
        .await
        .expect("python");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .map(|v| (at(v["start_ns"].as_i64().unwrap_or(0) as i128), v["first_ns"].as_i64().map(|f| at(f as i128))))
        .collect()
}
