//! `dspex demo`: the runtime end to end, offline, in about half a minute.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dspex::{
    Error, ErrorKind, Map, OptimizeRequest, Pipeline, PoolConfig, Program, ProgramSpec, RequestOptions, Result,
    Runtime, Value,
};
use serde_json::json;

use super::common::{lm_setup, render_tree};

/// The pipeline the demo runs (the same file as `examples/pipelines/answer.toml`).
const ANSWER_PIPELINE: &str = include_str!("../../examples/pipelines/answer.toml");

struct Stages {
    started: Instant,
    timings: Vec<(String, Duration)>,
    n: usize,
}

impl Stages {
    fn begin(&mut self, title: &str) -> Instant {
        self.n += 1;
        println!("\n── {}. {title} {}", self.n, "─".repeat(60usize.saturating_sub(title.chars().count())));
        let _ = std::io::stdout().flush();
        Instant::now()
    }

    fn end(&mut self, title: &str, t: Instant) {
        self.timings.push((title.to_string(), t.elapsed()));
    }
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

fn progress_bar(done: u64, total: u64) -> String {
    let width = 30;
    let filled = (done.min(total) * width).checked_div(total).unwrap_or(0) as usize;
    format!("[{}{}] {done}/{total}", "#".repeat(filled), "-".repeat(width as usize - filled))
}

/// Run the demo; the summary as JSON.
pub async fn demo() -> Result<Value> {
    let mut s = Stages { started: Instant::now(), timings: Vec::new(), n: 0 };
    println!("dspex demo — DSPy programs run natively in Rust and in supervised Python workers");

    // 1. The LM and the Python environment.
    let t = s.begin("Language model and Python environment");
    let lm = lm_setup().await?;
    println!("LM: {}", lm.label);
    let rt = Runtime::builder()
        .lm(lm.config.clone())
        .pool(PoolConfig::new("general").size(2))
        .on_progress(|m| {
            println!("  … {m}");
            let _ = std::io::stdout().flush();
        })
        .start()
        .await?;
    let python = rt.python().map(|(p, _)| p.display().to_string()).unwrap_or_default();
    println!("runtime started: 2 Python workers running DSPy ({python})");
    s.end("start (environment + 2 workers)", t);

    // 2. The tree.
    let t = s.begin("The supervision tree");
    let tree = serde_json::to_value(rt.tree().await?).map_err(|e| Error::internal(e.to_string()))?;
    print!("{}", render_tree(&tree));
    s.end("tree", t);

    // 3. Native vs Python.
    let t = s.begin("One signature, two routes");
    let program = Program::new(ProgramSpec::predict("question -> answer"));
    let question = q("What is 17 + 25?");
    // Warm both routes once (first calls load DSPy's adapters and open connections).
    rt.run(&program, question.clone(), RequestOptions::native().no_cache()).await?;
    rt.run(&program, question.clone(), RequestOptions::python().no_cache()).await?;
    let native = rt.run(&program, question.clone(), RequestOptions::default().no_cache()).await?;
    let python_out = rt.run(&program, question.clone(), RequestOptions::python().no_cache()).await?;
    println!("signature: question -> answer     question: \"What is 17 + 25?\"");
    println!(
        "router chose {} ({}) → answer {:?} in {} (engine {})",
        native.meta.route.label(),
        native.meta.reason,
        native.get_str("answer").unwrap_or(""),
        us(native.meta.timings.total_us),
        us(native.meta.timings.execution_us)
    );
    println!(
        "forced {} on {} → answer {:?} in {} (queue {}, transport {}, DSPy {})",
        python_out.meta.route.label(),
        python_out.meta.worker.as_deref().unwrap_or("?"),
        python_out.get_str("answer").unwrap_or(""),
        us(python_out.meta.timings.total_us),
        us(python_out.meta.timings.queue_us),
        us(python_out.meta.timings.transport_us),
        us(python_out.meta.timings.execution_us)
    );
    let ratio = python_out.meta.timings.total_us as f64 / native.meta.timings.total_us.max(1) as f64;
    println!("same prompt, same answer; native was {ratio:.1}× faster end to end (LM time included)");
    s.end("native vs Python", t);

    // 4. A multi-turn session.
    let t = s.begin("A multi-turn session");
    let session = rt.session().await?;
    session.define("chat", ProgramSpec::predict("history: dspy.History, question -> answer")).await?;
    for (i, turn) in
        ["What is the capital of France?", "And the capital of Japan?", "What is 2 + 3?"].iter().enumerate()
    {
        let opts = if i == 1 { RequestOptions::python() } else { RequestOptions::default() };
        let out = session.run_with("chat", q(turn), opts.no_cache()).await?;
        println!(
            "turn {}: {turn:<34} → {:<8} via {:<15} {}",
            i + 1,
            out.get_str("answer").unwrap_or(""),
            out.meta.route.label(),
            us(out.meta.timings.total_us)
        );
    }
    let info = rt.sessions().list().into_iter().find(|i| i.id == session.id());
    if let Some(info) = info {
        println!(
            "session {}: {} turns of dspy.History kept in Rust; Python work pinned to {}",
            info.id,
            info.turns,
            info.worker.as_deref().unwrap_or("(none)")
        );
    }
    s.end("session (3 turns)", t);

    // 5. A pipeline with parallel steps.
    let t = s.begin("A pipeline: parallel → generate → check → map");
    let pipeline = Pipeline::from_toml(ANSWER_PIPELINE)?;
    let inputs = json!({"question": "What is the capital of Italy?", "topics": ["geography", "history"]});
    let result = rt.run_pipeline(&pipeline, inputs.as_object().cloned().unwrap_or_default()).await?;
    for step in &result.steps {
        println!(
            "  {:<24} {:<15} {:>9}  {}",
            step.step,
            step.route.as_ref().map(|r| r.label()).unwrap_or_else(|| step.kind.as_str().to_string()),
            us(step.elapsed_us),
            step.detail.clone().unwrap_or_default()
        );
    }
    println!(
        "answer {} · verdict {} · scores {} — in {}",
        result.get("answer").cloned().unwrap_or_default(),
        result.get("verdict").cloned().unwrap_or_default(),
        result.get("scores").cloned().unwrap_or_default(),
        us(result.elapsed_us)
    );
    s.end("pipeline", t);

    // 6. Compile with BootstrapFewShot, then serve natively.
    let t = s.begin("Compile with BootstrapFewShot, serve natively");
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
    let total = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let bar_total = total.clone();
    let bar = Arc::new(move |p: &Value| {
        use std::sync::atomic::Ordering;
        let event = p.get("event").and_then(Value::as_str).unwrap_or("");
        if let Some(n) = p.get("trainset").and_then(Value::as_u64) {
            bar_total.store(n, Ordering::Relaxed);
        }
        let all = p.get("total").and_then(Value::as_u64).unwrap_or(bar_total.load(Ordering::Relaxed));
        let done = match event {
            "progress" => p.get("done").and_then(Value::as_u64).unwrap_or(0),
            "finished" => all,
            _ => 0,
        };
        print!("\r  bootstrapping demos {}", progress_bar(done, all));
        let _ = std::io::stdout().flush();
    });
    let optimized = rt.optimize(req, Some(bar)).await?;
    println!();
    println!("compiled in Python: {} demos bootstrapped ({})", optimized.demos, us(optimized.meta.timings.total_us));
    let served = rt.run(&optimized.program, q("What is 40 + 2?"), RequestOptions::default().no_cache()).await?;
    println!(
        "served the compiled program via {} → {:?} in {} (prompt carries the {} demos)",
        served.meta.route.label(),
        served.get_str("answer").unwrap_or(""),
        us(served.meta.timings.total_us),
        optimized.demos
    );
    s.end("BootstrapFewShot + native serve", t);

    // 7. Kill a worker; watch it come back.
    let t = s.begin("Kill a worker, watch the supervisor restart it");
    let pool = rt.pool("general")?;
    let pid = rt.kill_worker("general", 0)?;
    println!("kill -9 {pid} (worker:general:0)");
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
    let (new_pid, restarts) = back.ok_or_else(|| Error::new(ErrorKind::Timeout, "the worker did not come back"))?;
    println!(
        "worker:general:0 is back as pid {new_pid} after {} (restarts: {restarts}); pool ready {}/{}",
        fmt(killed_at.elapsed()),
        pool.stats().ready,
        pool.stats().size
    );
    let after = session.run("chat", q("What is 9 + 9?")).await?;
    println!(
        "the session still answers: {:?} (history intact: {} turns)",
        after.get_str("answer").unwrap_or(""),
        session.history("chat").await?.len()
    );
    s.end("worker restart", t);

    // Summary.
    let t = s.begin("Summary");
    for (name, d) in &s.timings {
        println!("  {name:<36} {:>10}", fmt(*d));
    }
    println!("  {:<36} {:>10}", "total", fmt(s.started.elapsed()));
    if lm.offline {
        println!("(answers came from the built-in offline LM; set DSPEX_LM_BASE_URL to use a real one)");
    }
    s.end("summary", t);
    let summary = json!({
        "stages": s.timings.iter().map(|(n, d)| json!({"stage": n, "ms": d.as_secs_f64() * 1000.0})).collect::<Vec<_>>(),
        "native_vs_python": ratio,
    });
    rt.shutdown().await?;
    Ok(summary)
}
