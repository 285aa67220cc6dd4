//! Every optimizer the runtime names, really run offline through
//! `Runtime::optimize` against an LM with something to learn
//! ([`support::Learner`]: wrong zero-shot under DSPy's default instruction,
//! right with demos or a better instruction). For each: the compiled program
//! changed the way that optimizer changes programs, it scores better than
//! the student, progress events came with sensible totals, the result is
//! DSPy program JSON that `program.load` reads back, and (Predict) it runs
//! natively with the prompt DSPy sends for the same program. Then
//! `Runtime::evaluate` with threads and its own timeout, and a runtime with
//! two pools, where `optimize` picks the optimizer pool.

use std::sync::Arc;
use std::time::Duration;

use dspex::native::lm::server::LmServer;
use dspex::{
    ErrorKind, EvaluateRequest, LmConfig, Map, OptimizeRequest, Optimized, PoolConfig, Program, ProgramSpec,
    RequestOptions, Route, Runtime,
};
use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::support::{self, Learner, LEARNED_INSTRUCTION};

const DEFAULT_INSTRUCTION: &str = "Given the fields `question`, produce the fields `answer`.";

/// Sums whose first numbers are half even (SIMBA's lucky samples), half odd.
fn sums(pairs: &[(u32, u32)]) -> Vec<Map> {
    pairs
        .iter()
        .map(|(a, b)| {
            json!({"question": format!("What is {a} + {b}?"), "answer": (a + b).to_string()})
                .as_object()
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}

fn trainset() -> Vec<Map> {
    sums(&[(2, 3), (10, 4), (7, 8), (12, 30), (5, 9), (20, 22), (3, 3), (8, 1)])
}

fn devset() -> Vec<Map> {
    sums(&[(40, 2), (11, 6), (6, 7), (9, 90)])
}

async fn learner_runtime(pools: Vec<PoolConfig>) -> (LmServer, Runtime) {
    let server = LmServer::start(Learner).await.expect("LM server");
    let lm = LmConfig::new("learner").with_base_url(server.base_url()).with_api_key("test").with_temperature(0.0);
    let mut b = Runtime::builder().python(support::python()).lm(lm);
    for p in pools {
        b = b.pool(p);
    }
    (server, b.start().await.expect("runtime"))
}

fn general() -> PoolConfig {
    PoolConfig::new("general").size(1).concurrency(4)
}

/// What an optimize run produced, and every event it reported.
struct Compiled {
    optimized: Optimized,
    events: Vec<Value>,
}

async fn compile(rt: &Runtime, req: OptimizeRequest) -> Compiled {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let name = req.optimizer.clone();
    let optimized = rt
        .optimize(req, Some(Arc::new(move |e: &Value| sink.lock().push(e.clone()))))
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let events = events.lock().clone();
    Compiled { optimized, events }
}

impl Compiled {
    /// The (only) predictor's saved state.
    fn predictor(&self) -> &Value {
        let s = &self.optimized.state;
        if s.get("signature").is_some() {
            s
        } else {
            &s["predict"]
        }
    }

    fn instructions(&self) -> &str {
        self.predictor()["signature"]["instructions"].as_str().unwrap_or_default()
    }

    fn demos(&self) -> &[Value] {
        self.predictor()["demos"].as_array().map_or(&[], Vec::as_slice)
    }

    /// Progress: `started` first, `finished` last, one `progress` event per
    /// metric call, each with a known total at least its count, and the
    /// final total an honest bound: no more than twice the calls made
    /// (unless the optimizer may stop early).
    fn check_progress(&self, name: &str) -> (u64, u64) {
        let kinds: Vec<&str> = self.events.iter().filter_map(|e| e["event"].as_str()).collect();
        assert_eq!(kinds.first(), Some(&"started"), "{name}: {kinds:?}");
        assert_eq!(kinds.last(), Some(&"finished"), "{name}: {kinds:?}");
        let progress: Vec<&Value> = self.events.iter().filter(|e| e["event"] == "progress").collect();
        assert!(!progress.is_empty(), "{name}: no progress events");
        for e in &progress {
            let (done, total) = (e["done"].as_u64(), e["total"].as_u64());
            assert!(total.is_some() && done <= total, "{name}: a progress event without a sensible total: {e}");
        }
        let done = progress.iter().filter_map(|e| e["done"].as_u64()).max().unwrap_or(0);
        let total = progress.iter().filter_map(|e| e["total"].as_u64()).max().unwrap_or(0);
        let finished = self.events.last().and_then(|e| e["evaluations"].as_u64()).unwrap_or(0);
        if name != "LabeledFewShot" {
            assert_eq!(done, finished, "{name}: one progress event per metric call");
            assert_eq!(progress.len() as u64, finished, "{name}: one progress event per metric call");
        }
        // BootstrapFewShot stops as soon as it has its demos: its total is
        // the trainset, a bound it often does not reach.
        if name != "BootstrapFewShot" {
            assert!(total <= 2 * done.max(1), "{name}: a total of {total} for {done} metric calls is no estimate");
        }
        (done, total)
    }

    /// `saved` is what DSPy's `program.save` writes: DSPy loads it and sees
    /// the same instructions and demos.
    fn check_saved(&self, name: &str, module: &str) {
        let dir = support::scratch("optimizers");
        let path = dir.join(format!("{name}.json"));
        std::fs::write(&path, self.optimized.saved.to_string()).expect("write the saved program");
        let loaded = support::run_python(
            "import json, sys, dspy\nargs = json.loads(sys.stdin.read())\n\
             p = getattr(dspy, args['module'])('question -> answer')\np.load(args['path'])\n\
             (pred,) = p.predictors()\n\
             print(json.dumps({'instructions': pred.signature.instructions, 'demos': len(pred.demos)}))",
            &json!({"path": path.display().to_string(), "module": module}),
        );
        assert_eq!(loaded["instructions"], self.instructions(), "{name}: {loaded}");
        assert_eq!(loaded["demos"], self.demos().len(), "{name}: {loaded}");
        assert!(self.optimized.saved["metadata"]["dependency_versions"]["dspy"] == "3.4.1", "{name}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

async fn score(rt: &Runtime, program: &Program) -> f64 {
    let eval = rt.evaluate(EvaluateRequest::new(program.clone(), devset(), "exact_match").num_threads(2), None);
    eval.await.expect("evaluate").score
}

/// The compiled program beats the student, and (Predict) runs natively with
/// the messages DSPy's Python route sends for the same program.
async fn check_runs(rt: &Runtime, server: &LmServer, name: &str, student: &Program, compiled: &Compiled) {
    let (before, after) = (score(rt, student).await, score(rt, &compiled.optimized.program).await);
    assert!(after > before, "{name}: {before} % before, {after} % after");
    if compiled.optimized.program.native_support().is_err() {
        return;
    }
    let q = json!({"question": "What is 14 + 28?"}).as_object().cloned().unwrap_or_default();
    server.clear_requests();
    let native = rt.run(&compiled.optimized.program, q.clone(), RequestOptions::default().no_cache()).await.unwrap();
    assert_eq!(native.meta.route, Route::Native, "{name}");
    let python = rt.run(&compiled.optimized.program, q, RequestOptions::python().no_cache()).await.unwrap();
    assert!(matches!(python.meta.route, Route::Python(_)), "{name}");
    let sent = server.requests();
    assert_eq!(sent.len(), 2, "{name}");
    assert_eq!(sent[0]["messages"], sent[1]["messages"], "{name}: native and DSPy prompts differ");
    assert_eq!(native.get_str("answer"), Some("42"), "{name}: the compiled program answers");
}

fn predict() -> Program {
    Program::new(ProgramSpec::predict("question -> answer"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labeled_few_shot_adds_training_examples_as_demos() {
    let (server, rt) = learner_runtime(vec![general()]).await;
    let req = OptimizeRequest::new("LabeledFewShot", predict(), trainset(), "exact_match").param("k", json!(3));
    let c = compile(&rt, req).await;
    assert_eq!(c.demos().len(), 3, "{}", c.optimized.state);
    let train: Vec<Value> = trainset().into_iter().map(Value::Object).collect();
    for d in c.demos() {
        let plain = json!({"question": d["question"], "answer": d["answer"]});
        assert!(train.contains(&plain), "demos are training examples: {d}");
    }
    assert_eq!(c.instructions(), DEFAULT_INSTRUCTION);
    assert_eq!(c.check_progress("LabeledFewShot"), (1, 1));
    c.check_saved("LabeledFewShot", "Predict");
    check_runs(&rt, &server, "LabeledFewShot", &predict(), &c).await;
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_few_shot_keeps_the_traces_that_passed_the_metric() {
    let (server, rt) = learner_runtime(vec![general()]).await;
    let student = Program::new(ProgramSpec::chain_of_thought("question -> answer"));
    let req = OptimizeRequest::new("BootstrapFewShot", student.clone(), trainset(), "exact_match")
        .param("max_bootstrapped_demos", json!(2))
        .param("max_labeled_demos", json!(3));
    let c = compile(&rt, req).await;
    let augmented = c.demos().iter().filter(|d| d["augmented"] == true).count();
    assert_eq!((augmented, c.demos().len()), (2, 3), "two bootstrapped, one labelled: {}", c.optimized.state);
    assert!(c.demos().iter().filter(|d| d["augmented"] == true).all(|d| d["reasoning"].is_string()));
    let (done, total) = c.check_progress("BootstrapFewShot");
    assert_eq!((done, total), (2, 8), "it stops once it has its demos; the trainset bounds it");
    c.check_saved("BootstrapFewShot", "ChainOfThought");
    check_runs(&rt, &server, "BootstrapFewShot", &student, &c).await;
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_search_picks_the_best_of_its_candidate_demo_sets() {
    let (server, rt) = learner_runtime(vec![general()]).await;
    let mut req = OptimizeRequest::new("BootstrapFewShotWithRandomSearch", predict(), trainset(), "exact_match")
        .param("num_candidate_programs", json!(2))
        .param("max_bootstrapped_demos", json!(2))
        .param("max_labeled_demos", json!(1));
    req.valset = Some(devset());
    let c = compile(&rt, req).await;
    assert!(!c.demos().is_empty(), "zero-shot scores 0: a candidate with demos wins: {}", c.optimized.state);
    let (done, total) = c.check_progress("BootstrapFewShotWithRandomSearch");
    assert!(done >= 5 * 4, "five candidates scored on the valset: {done}");
    assert_eq!(total, (2 + 3) * 4 + 3 * 8, "(n + 3) valset scorings, n + 1 bootstraps");
    c.check_saved("BootstrapFewShotWithRandomSearch", "Predict");
    check_runs(&rt, &server, "BootstrapFewShotWithRandomSearch", &predict(), &c).await;
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mipro_v2_light_proposes_instructions_and_picks_demos() {
    let (server, rt) = learner_runtime(vec![general()]).await;
    let mut req = OptimizeRequest::new("MIPROv2", predict(), trainset(), "exact_match")
        .param("auto", json!("light"))
        .param("num_threads", json!(2));
    req.valset = Some(devset());
    req.compile_params.insert("max_bootstrapped_demos".into(), json!(2));
    req.compile_params.insert("max_labeled_demos".into(), json!(2));
    let c = compile(&rt, req).await;
    assert!(
        c.instructions() != DEFAULT_INSTRUCTION || !c.demos().is_empty(),
        "MIPROv2 changes instructions or demos: {}",
        c.optimized.state
    );
    c.check_progress("MIPROv2");
    c.check_saved("MIPROv2", "Predict");
    check_runs(&rt, &server, "MIPROv2", &predict(), &c).await;
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copro_rewrites_the_instruction() {
    let (server, rt) = learner_runtime(vec![general()]).await;
    let req = OptimizeRequest::new("COPRO", predict(), trainset(), "exact_match")
        .param("breadth", json!(2))
        .param("depth", json!(1));
    let c = compile(&rt, req).await;
    assert_ne!(c.instructions(), DEFAULT_INSTRUCTION, "{}", c.optimized.state);
    assert!(c.demos().is_empty(), "COPRO adds no demos");
    assert_eq!(c.check_progress("COPRO"), (16, 16), "breadth × depth × trainset");
    c.check_saved("COPRO", "Predict");
    check_runs(&rt, &server, "COPRO", &predict(), &c).await;
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simba_appends_demos_or_rules_from_its_sampled_trajectories() {
    let (server, rt) = learner_runtime(vec![general()]).await;
    let req = OptimizeRequest::new("SIMBA", predict(), trainset(), "exact_match")
        .param("bsize", json!(4))
        .param("num_candidates", json!(2))
        .param("max_steps", json!(2))
        .param("max_demos", json!(2))
        .param("num_threads", json!(2));
    let c = compile(&rt, req).await;
    assert!(
        !c.demos().is_empty() || c.instructions() != DEFAULT_INSTRUCTION,
        "SIMBA appends a demo or a rule: {}",
        c.optimized.state
    );
    let (_, total) = c.check_progress("SIMBA");
    assert_eq!(total, 2 * 4 * (2 * 2 + 1) + 3 * 8);
    c.check_saved("SIMBA", "Predict");
    check_runs(&rt, &server, "SIMBA", &predict(), &c).await;
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gepa_reflects_and_adopts_a_better_instruction() {
    let (server, rt) = learner_runtime(vec![general()]).await;
    let mut req = OptimizeRequest::new("GEPA", predict(), trainset(), "exact_match")
        .param("max_metric_calls", json!(40))
        .param("reflection_minibatch_size", json!(3));
    req.valset = Some(devset());
    let c = compile(&rt, req).await;
    assert_eq!(c.instructions(), LEARNED_INSTRUCTION, "{}", c.optimized.state);
    let (done, total) = c.check_progress("GEPA");
    assert!(done >= 40 && total >= 40, "GEPA spends its budget: {done} of {total}");
    c.check_saved("GEPA", "Predict");
    check_runs(&rt, &server, "GEPA", &predict(), &c).await;
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evaluate_scores_with_threads_a_python_metric_and_its_own_timeout() {
    let (_server, rt) = learner_runtime(vec![{
        let mut p = general();
        p.python_path = vec![support::repo_root().join("tests/python")];
        p
    }])
    .await;
    let mut demo = ProgramSpec::predict("question -> answer");
    demo.demos = vec![trainset()[0].clone()];
    let program = Program::new(demo);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let req = EvaluateRequest::new(program.clone(), devset(), "dspex_test_helpers:exact_answer").num_threads(4);
    let eval = rt.evaluate(req, Some(Arc::new(move |e: &Value| sink.lock().push(e.clone())))).await.unwrap();
    assert_eq!((eval.score, eval.results.len()), (100.0, 4), "{:?}", eval.results);
    let events = seen.lock().clone();
    assert_eq!(events.len(), 4);
    assert!(events.iter().all(|e| e["total"] == 4 && e["phase"] == "evaluate"), "{events:?}");
    // A zero-shot student under the default instruction: all wrong.
    let zero = EvaluateRequest::new(predict(), devset(), "exact_match");
    assert_eq!(rt.evaluate(zero, None).await.unwrap().score, 0.0);
    // Its own deadline: a slow dev set times out as a classified error.
    let many: Vec<Map> = std::iter::repeat_n(devset(), 200).flatten().collect();
    let slow = EvaluateRequest::new(program, many, "exact_match").timeout(Duration::from_millis(300));
    let err = rt.evaluate(slow, None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    // The worker is still serving afterwards.
    assert_eq!(score(&rt, &predict()).await, 0.0);
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pools_split_python_work_and_optimize_picks_the_optimizer_pool() {
    let optimizer = PoolConfig::preset("optimizer").expect("the optimizer preset");
    let (_server, rt) = learner_runtime(vec![general(), optimizer]).await;
    // The tree shows each pool with its environment and limits.
    let tree = rt.tree().await.unwrap();
    let pool = |name: &str| tree.find(&format!("pool:{name}")).unwrap_or_else(|| panic!("pool:{name} in the tree"));
    let (g, o) = (&pool("general").info.extra, &pool("optimizer").info.extra);
    assert_eq!((g["concurrency"].clone(), o["concurrency"].clone()), (json!(4), json!(1)));
    assert_eq!(o["queue_timeout_ms"], json!(3_600_000));
    assert_eq!(g["python"], json!(support::python().display().to_string()));
    assert_eq!(o["python"], g["python"]);
    // Plain Python work goes to the default pool, or to the one asked for.
    let q = json!({"question": "What is 1 + 2?"}).as_object().cloned().unwrap_or_default();
    let out = rt.run(&predict(), q.clone(), RequestOptions::python().no_cache()).await.unwrap();
    assert_eq!(out.meta.route, Route::Python("general".into()));
    let out = rt.run(&predict(), q, RequestOptions::python().no_cache().pool("optimizer")).await.unwrap();
    assert_eq!(out.meta.route, Route::Python("optimizer".into()));
    // `optimize` picks the optimizer pool without being told.
    let req = OptimizeRequest::new("LabeledFewShot", predict(), trainset(), "exact_match").param("k", json!(2));
    let c = compile(&rt, req).await;
    assert_eq!(c.optimized.meta.route, Route::Python("optimizer".into()));
    assert!(c.optimized.meta.worker.as_deref().is_some_and(|w| w.starts_with("worker:optimizer:")));
    // And the pool it is told.
    let mut req = OptimizeRequest::new("LabeledFewShot", predict(), trainset(), "exact_match");
    req.pool = Some("general".into());
    assert_eq!(compile(&rt, req).await.optimized.meta.route, Route::Python("general".into()));
    rt.shutdown().await.unwrap();
}
