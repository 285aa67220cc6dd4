//! `dspex demo`: the runtime end to end — offline in about half a minute,
//! or against a real LM (`DSPEX_LM_BASE_URL`), where every stage reports
//! success or a classified failure and the demo goes on.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dspex::{
    Error, ErrorKind, LmSettings, Map, Meta, OptimizeRequest, Pipeline, PoolConfig, Program, ProgramSpec,
    RequestOptions, Result, Runtime, Value,
};
use serde_json::json;

use super::common::{lm_setup, render_tree, LmFlags, LmSetup};

/// The pipeline the demo runs (the same file as `examples/pipelines/answer.toml`).
const ANSWER_PIPELINE: &str = include_str!("../../examples/pipelines/answer.toml");

/// The demo's stages: their titles, outcomes and times, and a watch that
/// says how long a stage has been waiting when it goes quiet (a real LM can
/// take many seconds per call).
struct Stages {
    started: Instant,
    results: Vec<StageResult>,
    n: usize,
    /// When the demo last printed, in ms since `started`.
    last_output: Arc<AtomicU64>,
}

struct StageResult {
    title: String,
    elapsed: Duration,
    outcome: std::result::Result<(), String>,
}

/// Print a line and note when (for the quiet-stage watch).
macro_rules! say {
    ($stages:expr, $($arg:tt)*) => {{
        println!($($arg)*);
        $stages.touch();
    }};
}

#[derive(Clone)]
struct Touch {
    started: Instant,
    last_output: Arc<AtomicU64>,
}

impl Touch {
    fn touch(&self) {
        let _ = std::io::stdout().flush();
        self.last_output.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl Stages {
    fn new() -> Stages {
        Stages { started: Instant::now(), results: Vec::new(), n: 0, last_output: Arc::new(AtomicU64::new(0)) }
    }

    fn out(&self) -> Touch {
        Touch { started: self.started, last_output: self.last_output.clone() }
    }

    /// Run one stage: its title, then `body`; a failure is printed with its
    /// kind and the demo goes on.
    async fn run<F>(&mut self, title: &str, body: F) -> bool
    where
        F: std::future::Future<Output = Result<()>>,
    {
        self.n += 1;
        println!("\n── {}. {title} {}", self.n, "─".repeat(60usize.saturating_sub(title.chars().count())));
        let out = self.out();
        out.touch();
        let t = Instant::now();
        // The first stage waits on the Python environment and the workers;
        // the others, mostly on the LM.
        let waiting = if self.n == 1 { "preparing Python" } else { "waiting on the LM" };
        let watch = tokio::spawn(quiet_watch(out.clone(), t, waiting));
        let outcome = body.await;
        watch.abort();
        let elapsed = t.elapsed();
        let outcome = outcome.map_err(|e| {
            let first = e.message().lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
            let short: String = first.chars().take(240).collect();
            let retry = if e.is_retryable() { "; a retry may help" } else { "" };
            let text = format!("{}: {short}{retry}", e.kind());
            println!("✗ stage failed after {} — {text}", fmt(elapsed));
            text
        });
        if outcome.is_ok() {
            println!("✓ {} ({})", title, fmt(elapsed));
        }
        out.touch();
        self.results.push(StageResult { title: title.to_string(), elapsed, outcome });
        self.results.last().is_some_and(|r| r.outcome.is_ok())
    }

    /// A stage that cannot run because an earlier one failed.
    fn skip(&mut self, title: &str, why: &str) {
        self.n += 1;
        println!("\n── {}. {title} — skipped: {why}", self.n);
        self.results.push(StageResult {
            title: title.to_string(),
            elapsed: Duration::ZERO,
            outcome: Err(format!("skipped: {why}")),
        });
    }

    fn touch(&self) {
        self.out().touch();
    }
}

/// While a stage prints nothing for 5 s, say every 5 s how long it has run.
async fn quiet_watch(out: Touch, stage_started: Instant, waiting: &'static str) {
    let quiet = Duration::from_secs(5);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let last = Duration::from_millis(out.last_output.load(Ordering::Relaxed));
        if out.started.elapsed().saturating_sub(last) >= quiet {
            println!("  … {} into this stage, {waiting}", fmt_secs(stage_started.elapsed()));
            out.touch();
        }
    }
}

fn fmt_secs(d: Duration) -> String {
    format!("{} s", d.as_secs())
}

fn q(question: &str) -> Map {
    json!({ "question": question }).as_object().cloned().unwrap_or_default()
}

fn fmt(d: Duration) -> String {
    let us = d.as_micros();
    if us < 1000 {
        format!("{us} µs")
    } else if us < 1_000_000 {
        format!("{:.1} ms", us as f64 / 1000.0)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

fn us(v: u64) -> String {
    fmt(Duration::from_micros(v))
}

/// The demo's LM settings where neither flags nor the environment set them:
/// short replies, deterministic sampling, so a run with a slow real model
/// takes minutes, not hours.
const DEMO_LM: LmSettings = LmSettings { max_tokens: Some(256), temperature: Some(0.0) };

/// Two worked examples for the demo's programs when the LM is real.
fn few_shot_demos() -> Vec<Map> {
    [("What is 2 + 2?", "4"), ("What is the capital of Spain?", "Madrid")]
        .iter()
        .filter_map(|(question, answer)| json!({"question": question, "answer": answer}).as_object().cloned())
        .collect()
}

/// `" — cut at the length limit"` for a truncated result (counted in `cuts`).
fn cut(meta: &Meta, cuts: &AtomicU64) -> &'static str {
    if meta.truncated {
        cuts.fetch_add(1, Ordering::Relaxed);
        " — cut at the length limit"
    } else {
        ""
    }
}

/// An error on one line: kind and the first line of its message.
fn short(e: &Error) -> String {
    let first = e.message().lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
    format!("{}: {}", e.kind(), first.chars().take(200).collect::<String>())
}

/// Run the demo; the summary as JSON (`failed` counts the stages that did
/// not pass). Every stage reports success or a classified failure, and the
/// demo goes on to the next unless it needs what failed.
pub async fn demo(flags: LmFlags) -> Result<Value> {
    let mut s = Stages::new();
    let out = s.out();
    let cuts = AtomicU64::new(0);
    println!("dspex demo — DSPy programs run natively in Rust and in supervised Python workers");
    let settings = flags.settings()?;

    // 1. The LM and the Python environment.
    let mut started: Option<(Runtime, LmSetup)> = None;
    s.run("Language model and Python environment", async {
        let lm = lm_setup(settings, DEMO_LM).await?;
        say!(out, "LM: {}", lm.label);
        let progress = out.clone();
        let rt = Runtime::builder()
            .lm(lm.config.clone())
            .pool(PoolConfig::new("general").size(2))
            .on_progress(move |m| {
                println!("  … {m}");
                progress.touch();
            })
            .start()
            .await?;
        let python = rt.python().map(|(p, _)| p.display().to_string()).unwrap_or_default();
        say!(out, "runtime started: 2 Python workers running DSPy ({python})");
        started = Some((rt, lm));
        Ok(())
    })
    .await;
    let Some((rt, lm)) = started else {
        for title in [
            "The supervision tree",
            "One signature, two routes",
            "A multi-turn session",
            "A pipeline",
            "Compile with BootstrapFewShot",
            "Kill a worker",
        ] {
            s.skip(title, "the runtime did not start");
        }
        return summary(&mut s, None, &cuts, false);
    };

    // 2. The tree.
    s.run("The supervision tree", async {
        let tree = serde_json::to_value(rt.tree().await?).map_err(|e| Error::internal(e.to_string()))?;
        print!("{}", render_tree(&tree));
        out.touch();
        Ok(())
    })
    .await;

    // 3. Native vs Python.
    // A small real model strays from DSPy's field format without examples;
    // two worked examples (few-shot demos) keep most replies parseable.
    let shots = |spec: ProgramSpec| if lm.offline { spec } else { spec.with_demos(few_shot_demos()) };
    let program = Program::new(shots(ProgramSpec::predict("question -> answer")));
    let mut ratio = None;
    s.run("One signature, two routes", async {
        let question = q("What is 17 + 25?");
        if lm.offline {
            // Warm both routes once (first calls load DSPy's adapters and open
            // connections); with a real LM each call costs seconds, so not there.
            rt.run(&program, question.clone(), RequestOptions::native().no_cache()).await?;
            rt.run(&program, question.clone(), RequestOptions::python().no_cache()).await?;
        }
        say!(out, "signature: question -> answer     question: \"What is 17 + 25?\"");
        if !lm.offline {
            say!(out, "(a real LM: the programs carry two worked examples as few-shot demos)");
        }
        let native = rt.run(&program, question.clone(), RequestOptions::default().no_cache()).await;
        match &native {
            Ok(o) => say!(
                out,
                "router chose {} ({}) → answer {:?} in {} (engine {}){}",
                o.meta.route.label(),
                o.meta.reason,
                o.get_str("answer").unwrap_or(""),
                us(o.meta.timings.total_us),
                us(o.meta.timings.execution_us),
                cut(&o.meta, &cuts)
            ),
            Err(e) => say!(out, "native route → ✗ {}", short(e)),
        }
        let python = rt.run(&program, question.clone(), RequestOptions::python().no_cache()).await;
        match &python {
            Ok(o) => say!(
                out,
                "forced {} on {} → answer {:?} in {} (queue {}, transport {}, DSPy {}){}",
                o.meta.route.label(),
                o.meta.worker.as_deref().unwrap_or("?"),
                o.get_str("answer").unwrap_or(""),
                us(o.meta.timings.total_us),
                us(o.meta.timings.queue_us),
                us(o.meta.timings.transport_us),
                us(o.meta.timings.execution_us),
                cut(&o.meta, &cuts)
            ),
            Err(e) => say!(out, "python route → ✗ {}", short(e)),
        }
        let (native, python) = (native?, python?);
        let r = python.meta.timings.total_us as f64 / native.meta.timings.total_us.max(1) as f64;
        say!(out, "same prompt on both routes; native was {r:.1}× faster end to end (LM time included)");
        ratio = Some(r);
        Ok(())
    })
    .await;

    // 4. A multi-turn session.
    let mut chat = None;
    s.run("A multi-turn session", async {
        let session = rt.session().await?;
        session.define("chat", shots(ProgramSpec::predict("history: dspy.History, question -> answer"))).await?;
        let mut first_error = None;
        for (i, turn) in
            ["What is the capital of France?", "And the capital of Japan?", "What is 2 + 3?"].iter().enumerate()
        {
            let opts = if i == 1 { RequestOptions::python() } else { RequestOptions::default() };
            match session.run_with("chat", q(turn), opts.no_cache()).await {
                Ok(o) => say!(
                    out,
                    "turn {}: {turn:<34} → {:<8} via {:<15} {}{}",
                    i + 1,
                    o.get_str("answer").unwrap_or(""),
                    o.meta.route.label(),
                    us(o.meta.timings.total_us),
                    cut(&o.meta, &cuts)
                ),
                Err(e) => {
                    say!(out, "turn {}: {turn:<34} → ✗ {}", i + 1, short(&e));
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(info) = rt.sessions().list().into_iter().find(|i| i.id == session.id()) {
            say!(
                out,
                "session {}: {} turns of dspy.History kept in Rust; Python work pinned to {}",
                info.id,
                info.turns,
                info.worker.as_deref().unwrap_or("(none)")
            );
        }
        chat = Some(session);
        first_error.map_or(Ok(()), Err)
    })
    .await;

    // 5. A pipeline with parallel steps.
    s.run("A pipeline: parallel → generate → check → map", async {
        let pipeline = Pipeline::from_toml(ANSWER_PIPELINE)?;
        let inputs = json!({"question": "What is the capital of Italy?", "topics": ["geography", "history"]});
        let result = rt.run_pipeline(&pipeline, inputs.as_object().cloned().unwrap_or_default()).await?;
        for step in &result.steps {
            say!(
                out,
                "  {:<24} {:<15} {:>9}  {}",
                step.step,
                step.route.as_ref().map(|r| r.label()).unwrap_or_else(|| step.kind.as_str().to_string()),
                us(step.elapsed_us),
                step.detail.clone().unwrap_or_default()
            );
        }
        say!(
            out,
            "answer {} · verdict {} · scores {} — in {}",
            result.get("answer").cloned().unwrap_or_default(),
            result.get("verdict").cloned().unwrap_or_default(),
            result.get("scores").cloned().unwrap_or_default(),
            us(result.elapsed_us)
        );
        Ok(())
    })
    .await;

    // 6. Compile with BootstrapFewShot, then serve natively.
    s.run("Compile with BootstrapFewShot, serve natively", async {
        let train: Vec<Map> = [(2, 3), (10, 4), (7, 8), (20, 22), (6, 9)]
            .iter()
            .filter_map(|(a, b)| {
                json!({"question": format!("What is {a} + {b}?"), "answer": (a + b).to_string()}).as_object().cloned()
            })
            .collect();
        let req = OptimizeRequest::new("BootstrapFewShot", program.clone(), train, "exact_match")
            .param("max_bootstrapped_demos", json!(3))
            .param("max_labeled_demos", json!(0))
            .input_keys(["question"]);
        // indicatif's bar on a terminal; in a log, the lines below say it all.
        let bar = super::progress::Progress::stdout_bar("  bootstrapping demos");
        let (shown, bar_out) = (bar.clone(), out.clone());
        let progress = Arc::new(move |p: &Value| {
            if let Some(bar) = &shown {
                super::progress::show(bar, p);
            }
            bar_out.touch();
        });
        let optimized = rt.optimize(req, Some(progress)).await;
        if let Some(bar) = bar {
            bar.finish();
        }
        let optimized = optimized?;
        say!(
            out,
            "compiled in Python: {} demos bootstrapped ({})",
            optimized.demos,
            us(optimized.meta.timings.total_us)
        );
        let served = rt.run(&optimized.program, q("What is 40 + 2?"), RequestOptions::default().no_cache()).await?;
        say!(
            out,
            "served the compiled program via {} → {:?} in {} (prompt carries the {} demos){}",
            served.meta.route.label(),
            served.get_str("answer").unwrap_or(""),
            us(served.meta.timings.total_us),
            optimized.demos,
            cut(&served.meta, &cuts)
        );
        Ok(())
    })
    .await;

    // 7. Kill a worker; watch it come back.
    s.run("Kill a worker, watch the supervisor restart it", async {
        let pool = rt.pool("general")?;
        let pid = rt.kill_worker("general", 0)?;
        say!(out, "kill -9 {pid} (worker:general:0)");
        let killed_at = Instant::now();
        let mut back = None;
        while killed_at.elapsed() < Duration::from_secs(60) {
            let tree = rt.tree().await?;
            if let Some(w) = tree.find("worker:general:0") {
                if w.status == "ready" && w.info.pid.is_some_and(|p| p != pid) {
                    back = Some((w.info.pid.unwrap_or(0), w.restarts));
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (new_pid, restarts) =
            back.ok_or_else(|| Error::new(ErrorKind::Timeout, "the worker did not come back within 60 s"))?;
        say!(
            out,
            "worker:general:0 is back as pid {new_pid} after {} (restarts: {restarts}); pool ready {}/{}",
            fmt(killed_at.elapsed()),
            pool.stats().ready,
            pool.stats().size
        );
        if let Some(session) = &chat {
            match session.run("chat", q("What is 9 + 9?")).await {
                Ok(after) => say!(
                    out,
                    "the session still answers: {:?} (history intact: {} turns){}",
                    after.get_str("answer").unwrap_or(""),
                    session.history("chat").await?.len(),
                    cut(&after.meta, &cuts)
                ),
                // The session served the call; the model's reply did not
                // parse, which says nothing about the restart.
                Err(e) if e.kind() == ErrorKind::Parse => say!(
                    out,
                    "the session still serves calls (history intact: {} turns); the LM's reply did not parse: {}",
                    session.history("chat").await?.len(),
                    short(&e)
                ),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })
    .await;

    let result = summary(&mut s, ratio, &cuts, lm.offline);
    if let Err(e) = rt.shutdown().await {
        println!("shutdown: ✗ {}", short(&e));
    }
    result
}

/// Print the summary; the same as JSON.
fn summary(s: &mut Stages, ratio: Option<f64>, cuts: &AtomicU64, offline: bool) -> Result<Value> {
    s.n += 1;
    println!("\n── {}. Summary {}", s.n, "─".repeat(53));
    for r in &s.results {
        match &r.outcome {
            Ok(()) => println!("  ✓ {:<50} {:>10}", r.title, fmt(r.elapsed)),
            Err(e) => println!("  ✗ {:<50} {:>10}  {e}", r.title, fmt(r.elapsed)),
        }
    }
    println!("  {:<52} {:>10}", "total", fmt(s.started.elapsed()));
    let passed = s.results.iter().filter(|r| r.outcome.is_ok()).count();
    let failed = s.results.len() - passed;
    println!("{passed} of {} stages passed", s.results.len());
    let cut = cuts.load(Ordering::Relaxed);
    if cut > 0 {
        println!(
            "{cut} result(s) came from LM replies cut at the length limit: raise --lm-max-tokens (or DSPEX_LM_MAX_TOKENS)"
        );
    }
    if offline {
        println!("(answers came from the built-in offline LM; set DSPEX_LM_BASE_URL to use a real one)");
    }
    s.touch();
    Ok(json!({
        "stages": s.results.iter().map(|r| json!({
            "stage": r.title,
            "ms": r.elapsed.as_secs_f64() * 1000.0,
            "ok": r.outcome.is_ok(),
            "error": r.outcome.as_ref().err(),
        })).collect::<Vec<_>>(),
        "passed": passed,
        "failed": failed,
        "truncated_results": cut,
        "native_vs_python": ratio,
    }))
}
