//! Pipelines: multi-step workflows that mix native and Python steps.
//!
//! A pipeline is a list of steps over a *context*, a map of fields that
//! starts as the pipeline's inputs. Each step reads the fields it needs by
//! name (or through an `inputs` mapping), and its outputs are merged back
//! into the context by name (or through an `outputs` mapping), so the output
//! of a step feeds the next.
//!
//! | kind          | what it runs                                                  |
//! |---------------|---------------------------------------------------------------|
//! | `program`     | a DSPy program, routed by the router (native or Python)        |
//! | `native`      | a program forced onto the native engine                        |
//! | `python`      | a program forced onto a Python pool                            |
//! | `command`     | a worker command (`pool`, `command`, `args`)                   |
//! | `session`     | a program defined in the session the pipeline runs in          |
//! | `parallel`    | its `steps` at once, each over the same context                |
//! | `conditional` | `then` or `else`, by a test on one field (`when`)              |
//! | `map`         | its `steps` once per item of a list field, `concurrency` at once |
//! | `pipeline`    | another pipeline (inline `pipeline`, or `file`)                |
//!
//! Every step may have a `timeout_ms`, a `retry` (`max_attempts`,
//! `backoff_ms`, doubling) and `continue_on_error`. A pipeline is checked
//! when it is built: unknown keys, keys that do not apply to a step's kind,
//! duplicate step names, signatures DSPy would reject, and inputs that no
//! earlier step produces are all rejected, with the file's line when the
//! pipeline came from a file.
//!
//! The same model is written with [`Pipeline::builder`] or in TOML / JSON:
//!
//! ```toml
//! name = "answer"
//! inputs = ["question"]
//!
//! [[steps]]
//! name = "gather"
//! kind = "parallel"
//! steps = [
//!   { name = "keywords", kind = "native", signature = "question -> keywords: list[str]" },
//!   { name = "context", kind = "python", signature = "question -> context" },
//! ]
//!
//! [[steps]]
//! name = "generate"
//! kind = "program"
//! module = "chain_of_thought"
//! signature = "question, context -> answer"
//! ```
//!
//! Each run started with [`Runtime::start_pipeline`] is a temporary actor
//! `pipeline:<run-id>` under the `pipelines` supervisor; stopping it (or
//! [`PipelineRun::cancel`]) cancels every step still running, Python ones
//! included. Every step that ends emits a `pipeline.step` telemetry event.

mod builder;
mod check;
mod exec;
mod load;
mod runs;
mod spec;

use dspex_core::{Error, Map, Route, Value};
use serde::Serialize;

pub use builder::{PipelineBuilder, Step};
pub use check::Pipeline;
pub(crate) use exec::SessionSteps;
pub use load::IntoPipeline;
pub(crate) use runs::PipelineRuns;
pub use runs::{PipelineRun, PipelineRunInfo};
pub use spec::{Condition, PipelineSpec, RetrySpec, StepKind, StepSpec};

/// How one step went.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRecord {
    /// Path of the step (`map_step[2]/inner`).
    pub step: String,
    /// Kind.
    pub kind: StepKind,
    /// Route taken, for program steps.
    pub route: Option<Route>,
    /// Worker, for Python work.
    pub worker: Option<String>,
    /// Cluster node that ran it, for Python work on another node.
    pub node: Option<String>,
    /// Attempts made.
    pub attempts: u32,
    /// Time taken, retries included.
    pub elapsed_us: u64,
    /// Succeeded.
    pub ok: bool,
    /// Which branch, how many items.
    pub detail: Option<String>,
    /// Why it failed.
    pub error: Option<Error>,
}

/// The result of a pipeline run.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PipelineResult {
    /// Run id.
    pub run_id: String,
    /// Pipeline name.
    pub pipeline: String,
    /// The declared outputs (or the whole final context).
    pub outputs: Map,
    /// Every step that ended, in the order they ended.
    pub steps: Vec<StepRecord>,
    /// Steps that failed and were passed over (`continue_on_error`).
    pub failed: Vec<String>,
    /// Time taken.
    pub elapsed_us: u64,
}

impl PipelineResult {
    /// An output field.
    pub fn get(&self, field: &str) -> Option<&Value> {
        self.outputs.get(field)
    }

    /// The record of a step by path.
    pub fn step(&self, path: &str) -> Option<&StepRecord> {
        self.steps.iter().find(|s| s.step == path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dspex_core::ErrorKind;

    const FILE: &str = r#"
name = "p"
inputs = ["question"]

[[steps]]
name = "a"
kind = "native"
signature = "question -> answer"

[[steps]]
name = "b"
kind = "map"
over = "items"
steps = [{ name = "c", kind = "native", signature = "item -> score: float" }]
"#;

    #[test]
    fn bad_references_are_rejected_with_the_line() {
        let e = Pipeline::from_toml(FILE).unwrap_err();
        assert!(e.message().contains("line 11"), "{}", e.message());
        assert!(e.message().contains("`items`"), "{}", e.message());
        assert_eq!(e.context().step.as_deref(), Some("b"));
    }

    #[test]
    fn unknown_keys_are_rejected_with_the_line() {
        let text = FILE.replace(
            "kind = \"native\"\nsignature = \"question -> answer\"",
            "kind = \"native\"\nsignatur = \"x -> y\"",
        );
        let e = Pipeline::from_toml(&text).unwrap_err();
        assert!(e.message().contains("line 8") && e.message().contains("signatur"), "{}", e.message());
    }

    #[test]
    fn keys_must_fit_the_kind_and_names_must_be_unique() {
        let e = Pipeline::builder("p")
            .step(Step(StepSpec { over: Some("x".into()), ..Step::signature("a", StepKind::Native, "q -> a").0 }))
            .build()
            .unwrap_err();
        assert!(e.message().contains("`over` does not apply to a native step"), "{}", e.message());
        let e = Pipeline::builder("p")
            .step(Step::signature("a", StepKind::Native, "q -> a"))
            .step(Step::signature("a", StepKind::Native, "a -> b"))
            .build()
            .unwrap_err();
        assert!(e.message().contains("two steps"), "{}", e.message());
        let e = Pipeline::builder("p")
            .input("q")
            .step(Step::signature("a", StepKind::Native, "q -> -> a"))
            .build()
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidSignature);
    }

    #[test]
    fn every_build_check_says_what_is_wrong() {
        let cases: &[(&str, &str)] = &[
            (r#"{"name": "", "steps": []}"#, "needs a `name`"),
            (r#"{"name": "p", "steps": []}"#, "has no steps"),
            (r#"{"name": "p", "steps": [{"name": "a b", "kind": "native", "signature": "q -> a"}]}"#, "step name"),
            (
                r#"{"name": "p", "steps": [{"name": "a", "kind": "native", "signature": "q -> a", "retry": {"max_attempts": 0}}]}"#,
                "max_attempts",
            ),
            (
                r#"{"name": "p", "steps": [{"name": "a", "kind": "native", "signature": "q -> a", "timeout_ms": 0}]}"#,
                "timeout_ms",
            ),
            (r#"{"name": "p", "steps": [{"name": "a", "kind": "native"}]}"#, "needs `signature` or `program`"),
            (
                r#"{"name": "p", "steps": [{"name": "a", "kind": "native", "signature": "q -> a", "program": {"signature": "q -> a"}}]}"#,
                "not both",
            ),
            (
                r#"{"name": "p", "steps": [{"name": "a", "kind": "python", "module": "predict", "program": {"signature": "q -> a"}}]}"#,
                "goes inside `program`",
            ),
            (
                r#"{"name": "p", "steps": [{"name": "a", "kind": "native", "program": {"module": "react", "signature": "q -> a"}}]}"#,
                "cannot run natively",
            ),
            (
                r#"{"name": "p", "steps": [{"name": "a", "kind": "native", "signature": "q -> a", "inputs": {"x": "q"}}]}"#,
                "`inputs` maps `x`",
            ),
            (
                r#"{"name": "p", "steps": [{"name": "a", "kind": "native", "signature": "q -> a", "outputs": {"x": "y"}}]}"#,
                "`outputs` maps `x`",
            ),
            (
                r#"{"name": "p", "inputs": ["q"], "steps": [{"name": "a", "kind": "native", "signature": "z -> a", "inputs": {"z": "w"}}]}"#,
                "reads `w`",
            ),
            (r#"{"name": "p", "steps": [{"name": "a", "kind": "command", "command": "echo"}]}"#, "needs `pool`"),
            (r#"{"name": "p", "steps": [{"name": "a", "kind": "command", "pool": "general"}]}"#, "needs `command`"),
            (r#"{"name": "p", "steps": [{"name": "a", "kind": "session"}]}"#, "needs `session_program`"),
            (r#"{"name": "p", "steps": [{"name": "a", "kind": "parallel"}]}"#, "needs `steps`"),
            (
                r#"{"name": "p", "steps": [{"name": "a", "kind": "conditional", "then": [{"name": "b", "kind": "native", "signature": "q -> a"}]}]}"#,
                "needs `when`",
            ),
            (
                r#"{"name": "p", "steps": [{"name": "a", "kind": "conditional", "when": {"field": "q", "truthy": true, "equals": 1}}]}"#,
                "one of",
            ),
            (
                r#"{"name": "p", "steps": [{"name": "a", "kind": "conditional", "when": {"field": "q"}}]}"#,
                "`then` or `else`",
            ),
            (
                r#"{"name": "p", "steps": [{"name": "a", "kind": "map", "steps": [{"name": "b", "kind": "native", "signature": "item -> s"}]}]}"#,
                "needs `over`",
            ),
            (r#"{"name": "p", "steps": [{"name": "a", "kind": "map", "over": "xs"}]}"#, "needs `steps`"),
            (
                r#"{"name": "p", "steps": [{"name": "a", "kind": "map", "over": "xs", "concurrency": 0, "steps": [{"name": "b", "kind": "native", "signature": "item -> s"}]}]}"#,
                "concurrency",
            ),
            (
                r#"{"name": "p", "inputs": ["xs"], "steps": [{"name": "a", "kind": "map", "over": "xs", "pluck": "zz", "steps": [{"name": "b", "kind": "native", "signature": "item -> s"}]}]}"#,
                "`pluck` names `zz`",
            ),
            (r#"{"name": "p", "steps": [{"name": "a", "kind": "pipeline"}]}"#, "`pipeline` or `file`"),
            (
                r#"{"name": "p", "steps": [{"name": "a", "kind": "pipeline", "pipeline": {"name": "", "steps": []}}]}"#,
                "in nested pipeline of step a",
            ),
            (
                r#"{"name": "p", "inputs": ["q"], "outputs": ["nope"], "steps": [{"name": "a", "kind": "native", "signature": "q -> a"}]}"#,
                "pipeline output `nope`",
            ),
        ];
        for (json, want) in cases {
            let e = Pipeline::from_json(json).unwrap_err();
            assert!(e.message().contains(want), "{json}\n→ {}", e.message());
            assert_eq!(e.kind(), ErrorKind::InvalidRequest, "{json}");
        }
        // A file that includes itself is stopped.
        let dir = std::env::temp_dir().join(format!("dspex-self-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("loop.toml");
        std::fs::write(
            &path,
            "name = \"loop\"\n[[steps]]\nname = \"again\"\nkind = \"pipeline\"\nfile = \"loop.toml\"\n",
        )
        .unwrap();
        let e = Pipeline::from_file(&path).unwrap_err();
        assert!(e.message().contains("nest more than 16"), "{}", e.message());
        assert!(e.message().contains("loop.toml"), "{}", e.message());
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(Pipeline::from_file(dir.join("missing.toml")).unwrap_err().kind(), ErrorKind::Io);
        assert!(Pipeline::from_json("{").unwrap_err().message().contains("EOF"));
    }

    #[test]
    fn conditions_follow_python_truthiness() {
        let ctx: Map =
            serde_json::from_value(serde_json::json!({"a": "", "b": [1, 2], "c": "yes sir", "d": 0})).unwrap();
        assert!(!Condition::truthy("a").eval(&ctx));
        assert!(Condition::truthy("b").eval(&ctx));
        assert!(!Condition::truthy("d").eval(&ctx));
        assert!(!Condition::truthy("missing").eval(&ctx));
        assert!(Condition::contains("c", "yes".into()).eval(&ctx));
        assert!(Condition::contains("b", 2.into()).eval(&ctx));
        assert!(Condition::equals("d", 0.into()).eval(&ctx));
    }

    #[test]
    fn builder_and_file_give_the_same_model() {
        let text = r#"
name = "p"
inputs = ["question"]
[[steps]]
name = "a"
kind = "native"
signature = "question -> answer"
"#;
        let from_file = Pipeline::from_toml(text).unwrap();
        let built = Pipeline::builder("p")
            .input("question")
            .step(Step::signature("a", StepKind::Native, "question -> answer"))
            .build()
            .unwrap();
        assert_eq!(from_file.spec(), built.spec());
        let json = serde_json::to_string(built.spec()).unwrap();
        assert_eq!(Pipeline::from_json(&json).unwrap().spec(), built.spec());
    }
}
