//! Sessions and pipelines: what they add over plain calls, side by side in
//! one run.
//!
//! 1. Session call overhead: `Session::run` vs. `Runtime::run` of the same
//!    program — natively over an in-process stub LM (where any overhead
//!    shows) and over a local HTTP LM, and in Python (DSPy `Predict`,
//!    pinned worker) over the same HTTP LM.
//! 2. Pipeline step overhead: a pipeline of 10 native steps vs. the same 10
//!    programs run one after another with `Runtime::run`; the difference per
//!    step, and the fixed cost of starting a run (its supervised actor).
//!
//! Run: `cargo bench --bench sessions_pipelines`.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use common::{fmt_ns, machine, python, write_results};
use dspex::native::lm::offline::OfflineResponder;
use dspex::native::lm::server::LmServer;
use dspex::native::lm::{LanguageModel, LmRequest, LmResponse};
use dspex::{CacheConfig, LmConfig, Map, Pipeline, Program, ProgramSpec, RequestOptions, Runtime, Step, StepKind};
use futures_util::future::BoxFuture;
use serde_json::json;

/// An LM that answers at once, in process: only the runtime's costs remain.
struct StubLm;

impl LanguageModel for StubLm {
    fn complete(&self, _request: LmRequest) -> BoxFuture<'_, dspex::Result<LmResponse>> {
        Box::pin(async {
            Ok(LmResponse {
                outputs: vec![Some("[[ ## answer ## ]]\nok\n\n[[ ## completed ## ]]".into())],
                usage: None,
                model: Some("stub".into()),
                ..Default::default()
            })
        })
    }

    fn describe(&self) -> String {
        "stub".into()
    }
}

fn py() -> PathBuf {
    python().expect("benchmarks need the project's .venv (scripts/setup-python)")
}

fn question() -> Map {
    json!({"question": "What is 17 + 25?"}).as_object().cloned().unwrap_or_default()
}

/// Median time per call of `f`, best of `rounds` rounds of `n` calls.
async fn per_call<F, Fut>(rounds: usize, n: usize, mut f: F) -> f64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut best = f64::MAX;
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..n {
            f().await;
        }
        best = best.min(t.elapsed().as_nanos() as f64 / n as f64);
    }
    best
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(run());
}

async fn run() {
    println!("dspex sessions and pipelines — {}", machine());
    let mut results = serde_json::Map::new();
    let no_cache = CacheConfig { enabled: false, ..CacheConfig::default() };

    // 1a. Session call overhead, native route, in-process stub LM.
    let runtime = Runtime::builder()
        .python(py())
        .pool(common::pool("general").size(1))
        .native_lm(Arc::new(StubLm))
        .cache(no_cache.clone())
        .start()
        .await
        .expect("runtime");
    let spec = ProgramSpec::predict("question -> answer");
    let program = Program::new(spec.clone());
    let session = runtime.session().await.expect("session");
    session.define("qa", spec.clone()).await.expect("define");
    let (mut plain, mut in_session) = (f64::MAX, f64::MAX);
    for _ in 0..5 {
        plain = plain.min(
            per_call(3, 2000, || async {
                runtime.run(&program, question(), RequestOptions::native()).await.expect("run");
            })
            .await,
        );
        in_session = in_session.min(
            per_call(3, 2000, || async {
                session.run_with("qa", question(), RequestOptions::native()).await.expect("session run");
            })
            .await,
        );
    }
    println!(
        "session call, native (stub LM): Runtime::run {}, Session::run {} — overhead {} ({:+.1}%)",
        fmt_ns(plain),
        fmt_ns(in_session),
        fmt_ns(in_session - plain),
        100.0 * (in_session - plain) / plain
    );
    results.insert("session_native".into(), json!({"plain_ns": plain, "session_ns": in_session}));

    // 2. Pipeline step overhead: 10 native steps vs. 10 runs in a row.
    const STEPS: usize = 10;
    let programs: Vec<Program> = (0..STEPS).map(|_| Program::new(spec.clone())).collect();
    let mut builder = Pipeline::builder("bench").input("question");
    for i in 0..STEPS {
        builder = builder.step(
            Step::signature(&format!("s{i}"), StepKind::Native, "question -> answer")
                .output("answer", &format!("a{i}")),
        );
    }
    let pipeline = builder.build().expect("pipeline");
    let (mut direct, mut piped, mut in_actor) = (f64::MAX, f64::MAX, f64::MAX);
    for _ in 0..5 {
        direct = direct.min(
            per_call(3, 200, || async {
                for p in &programs {
                    runtime.run(p, question(), RequestOptions::native()).await.expect("run");
                }
            })
            .await,
        );
        // In a session the run happens in the session's actor: no run actor
        // is started, so this is the per-step cost alone.
        piped = piped.min(
            per_call(3, 200, || async {
                session.run_pipeline(&pipeline, question()).await.expect("pipeline");
            })
            .await,
        );
        in_actor = in_actor.min(
            per_call(3, 200, || async {
                runtime.run_pipeline(&pipeline, question()).await.expect("pipeline");
            })
            .await,
        );
    }
    let per_step = (piped - direct) / STEPS as f64;
    println!(
        "pipeline of {STEPS} native steps: runs in a row {}, pipeline {} — {} per step; \
         a supervised run (its own actor) {} — {} more per run",
        fmt_ns(direct),
        fmt_ns(piped),
        fmt_ns(per_step),
        fmt_ns(in_actor),
        fmt_ns(in_actor - piped)
    );
    results.insert(
        "pipeline".into(),
        json!({"steps": STEPS, "direct_ns": direct, "pipeline_ns": piped, "per_step_ns": per_step,
               "supervised_run_ns": in_actor}),
    );
    runtime.shutdown().await.expect("shutdown");

    // 1b. Session call overhead, Python route (DSPy Predict), local HTTP LM.
    let server = LmServer::start(OfflineResponder::new()).await.expect("LM server");
    let lm = LmConfig::new("offline").with_base_url(server.base_url()).with_api_key("bench");
    let runtime = Runtime::builder()
        .python(py())
        .pool(common::pool("general").size(1))
        .lm(lm)
        .cache(no_cache)
        .start()
        .await
        .expect("runtime");
    let session = runtime.session().await.expect("session");
    session.define("qa", spec.clone()).await.expect("define");
    let (mut plain, mut in_session) = (f64::MAX, f64::MAX);
    for _ in 0..3 {
        plain = plain.min(
            per_call(1, 1000, || async {
                runtime.run(&program, question(), RequestOptions::native()).await.expect("run");
            })
            .await,
        );
        in_session = in_session.min(
            per_call(1, 1000, || async {
                session.run_with("qa", question(), RequestOptions::native()).await.expect("session run");
            })
            .await,
        );
    }
    println!(
        "session call, native (local HTTP LM): Runtime::run {}, Session::run {} — overhead {} ({:+.1}%)",
        fmt_ns(plain),
        fmt_ns(in_session),
        fmt_ns(in_session - plain),
        100.0 * (in_session - plain) / plain
    );
    results.insert("session_native_http".into(), json!({"plain_ns": plain, "session_ns": in_session}));
    let (mut plain, mut in_session) = (f64::MAX, f64::MAX);
    for _ in 0..3 {
        plain = plain.min(
            per_call(1, 200, || async {
                runtime.run(&program, question(), RequestOptions::python()).await.expect("run");
            })
            .await,
        );
        in_session = in_session.min(
            per_call(1, 200, || async {
                session.run_with("qa", question(), RequestOptions::python()).await.expect("session run");
            })
            .await,
        );
    }
    println!(
        "session call, Python (DSPy Predict, HTTP LM): Runtime::run {}, Session::run {} — overhead {} ({:+.1}%)",
        fmt_ns(plain),
        fmt_ns(in_session),
        fmt_ns(in_session - plain),
        100.0 * (in_session - plain) / plain
    );
    results.insert("session_python".into(), json!({"plain_ns": plain, "session_ns": in_session}));
    runtime.shutdown().await.expect("shutdown");
    write_results("sessions_pipelines", &serde_json::Value::Object(results));
}
