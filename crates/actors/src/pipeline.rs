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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dspex_core::{
    DspyType, Error, ErrorKind, EventKind, FieldType, Map, ModuleKind, ProgramSpec, Result, Route, RoutePreference,
    SignatureSpec, Value,
};
use futures_util::{StreamExt, TryStreamExt};
use parking_lot::Mutex;
use ractor::ActorRef;
use serde::{Deserialize, Serialize};

use crate::program::Program;
use crate::runtime::{new_trace_id, Output, RequestOptions, Runtime};
use crate::session::SessionStepRunner;
use crate::supervisor::{ChildSpec, Holder, NodeInfo, Restart, Started, Supervisor};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

// ------------------------------------------------------------------ model

/// A pipeline as written in a file (and as the builder produces it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    /// Name (shown in results, events and the console).
    pub name: String,
    /// What it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Fields the caller must give. With none declared, inputs are not checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<String>,
    /// Fields returned; the whole context when none are declared.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<String>,
    /// A limit on the whole run, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The steps, in order.
    #[serde(default)]
    pub steps: Vec<StepSpec>,
}

/// What a step runs. See the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// A program, routed.
    Program,
    /// A program on the native engine.
    Native,
    /// A program on a Python pool.
    Python,
    /// A worker command.
    Command,
    /// A program of the session the pipeline runs in.
    Session,
    /// Sub-steps at once.
    Parallel,
    /// One branch or the other.
    Conditional,
    /// Sub-steps per item of a list.
    Map,
    /// A nested pipeline.
    Pipeline,
}

impl StepKind {
    /// The name used in files.
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Program => "program",
            StepKind::Native => "native",
            StepKind::Python => "python",
            StepKind::Command => "command",
            StepKind::Session => "session",
            StepKind::Parallel => "parallel",
            StepKind::Conditional => "conditional",
            StepKind::Map => "map",
            StepKind::Pipeline => "pipeline",
        }
    }

    /// The optional keys that apply to this kind.
    fn keys(self) -> &'static [&'static str] {
        match self {
            StepKind::Program | StepKind::Python => &["signature", "module", "program", "pool"],
            StepKind::Native => &["signature", "module", "program"],
            StepKind::Command => &["pool", "command", "args"],
            StepKind::Session => &["session_program"],
            StepKind::Parallel => &["steps"],
            StepKind::Conditional => &["when", "then", "else"],
            StepKind::Map => &["steps", "over", "as", "collect", "pluck", "concurrency"],
            StepKind::Pipeline => &["pipeline", "file"],
        }
    }
}

/// Retry policy of a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Attempts in all (1: no retry).
    pub max_attempts: u32,
    /// Wait before the second attempt; doubled for each further one.
    #[serde(default = "default_backoff")]
    pub backoff_ms: u64,
}

fn default_backoff() -> u64 {
    100
}

/// The test of a `conditional` step: one field and at most one of
/// `equals`, `not_equals`, `contains`, `truthy` (the default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// The field tested.
    pub field: String,
    /// True when the field equals this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<Value>,
    /// True when the field differs from this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_equals: Option<Value>,
    /// True when the field (text or list) contains this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains: Option<Value>,
    /// True when the field's truthiness (as Python sees it) is this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truthy: Option<bool>,
}

impl Condition {
    /// True when `field` is truthy (as Python sees it).
    pub fn truthy(field: &str) -> Condition {
        Condition { field: field.into(), equals: None, not_equals: None, contains: None, truthy: Some(true) }
    }

    /// True when `field` equals `value`.
    pub fn equals(field: &str, value: Value) -> Condition {
        Condition { equals: Some(value), truthy: None, ..Condition::truthy(field) }
    }

    /// True when `field` (text or list) contains `value`.
    pub fn contains(field: &str, value: Value) -> Condition {
        Condition { contains: Some(value), truthy: None, ..Condition::truthy(field) }
    }

    fn tests(&self) -> usize {
        [self.equals.is_some(), self.not_equals.is_some(), self.contains.is_some(), self.truthy.is_some()]
            .iter()
            .filter(|b| **b)
            .count()
    }

    fn eval(&self, ctx: &Map) -> bool {
        let v = ctx.get(&self.field).unwrap_or(&Value::Null);
        if let Some(e) = &self.equals {
            return v == e;
        }
        if let Some(e) = &self.not_equals {
            return v != e;
        }
        if let Some(e) = &self.contains {
            return match (v, e) {
                (Value::String(s), Value::String(sub)) => s.contains(sub.as_str()),
                (Value::Array(items), _) => items.contains(e),
                (Value::Object(m), Value::String(k)) => m.contains_key(k),
                _ => false,
            };
        }
        truthy(v) == self.truthy.unwrap_or(true)
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(m) => !m.is_empty(),
    }
}

/// One step as written in a file. Which keys apply depends on `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// Name, unique in the pipeline.
    pub name: String,
    /// What it runs.
    pub kind: StepKind,
    /// Program steps: the signature (with `module`, default `predict`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<SignatureSpec>,
    /// Program steps: the module for `signature`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<ModuleKind>,
    /// Program steps: a whole program (instead of `signature`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<ProgramSpec>,
    /// Command and Python steps: the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Command steps: the command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Command steps: fixed arguments (mapped `inputs` are added).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub args: Map,
    /// Session steps: the session's program to run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_program: Option<String>,
    /// Parallel and map steps: the sub-steps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepSpec>,
    /// Conditional steps: the test.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<Condition>,
    /// Conditional steps: the steps when the test holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub then: Vec<StepSpec>,
    /// Conditional steps: the steps otherwise.
    #[serde(default, rename = "else", skip_serializing_if = "Vec::is_empty")]
    pub otherwise: Vec<StepSpec>,
    /// Map steps: the list field to go over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub over: Option<String>,
    /// Map steps: the field each item is bound to (default `item`).
    #[serde(default, rename = "as", skip_serializing_if = "Option::is_none")]
    pub item: Option<String>,
    /// Map steps: the field receiving the list of results (default: the step's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collect: Option<String>,
    /// Map steps: keep only this field of each item's results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pluck: Option<String>,
    /// Map steps: items in flight at once (default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
    /// Pipeline steps: an inline pipeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<Box<PipelineSpec>>,
    /// Pipeline steps: a pipeline file (relative to this file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// Step input ← context field, where the names differ.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, String>,
    /// Step output → context field, where the names differ.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, String>,
    /// A limit on each attempt, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Retry policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    /// Record a failure and go on instead of failing the pipeline.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub continue_on_error: bool,
}

impl StepSpec {
    fn new(name: &str, kind: StepKind) -> StepSpec {
        StepSpec {
            name: name.into(),
            kind,
            signature: None,
            module: None,
            program: None,
            pool: None,
            command: None,
            args: Map::new(),
            session_program: None,
            steps: Vec::new(),
            when: None,
            then: Vec::new(),
            otherwise: Vec::new(),
            over: None,
            item: None,
            collect: None,
            pluck: None,
            concurrency: None,
            pipeline: None,
            file: None,
            inputs: BTreeMap::new(),
            outputs: BTreeMap::new(),
            timeout_ms: None,
            retry: None,
            continue_on_error: false,
        }
    }

    fn set_keys(&self) -> Vec<&'static str> {
        let keys = [
            ("signature", self.signature.is_some()),
            ("module", self.module.is_some()),
            ("program", self.program.is_some()),
            ("pool", self.pool.is_some()),
            ("command", self.command.is_some()),
            ("args", !self.args.is_empty()),
            ("session_program", self.session_program.is_some()),
            ("steps", !self.steps.is_empty()),
            ("when", self.when.is_some()),
            ("then", !self.then.is_empty()),
            ("else", !self.otherwise.is_empty()),
            ("over", self.over.is_some()),
            ("as", self.item.is_some()),
            ("collect", self.collect.is_some()),
            ("pluck", self.pluck.is_some()),
            ("concurrency", self.concurrency.is_some()),
            ("pipeline", self.pipeline.is_some()),
            ("file", self.file.is_some()),
        ];
        keys.iter().filter(|(_, set)| *set).map(|(k, _)| *k).collect()
    }
}

// ------------------------------------------------------------------ builder

/// A step under construction, for [`PipelineBuilder::step`].
#[derive(Debug, Clone)]
pub struct Step(StepSpec);

impl Step {
    fn program_step(name: &str, kind: StepKind, program: ProgramSpec) -> Step {
        Step(StepSpec { program: Some(program), ..StepSpec::new(name, kind) })
    }

    /// A program, routed by the router.
    pub fn program(name: &str, program: impl Into<ProgramSpec>) -> Step {
        Step::program_step(name, StepKind::Program, program.into())
    }

    /// A program forced onto the native engine.
    pub fn native(name: &str, program: impl Into<ProgramSpec>) -> Step {
        Step::program_step(name, StepKind::Native, program.into())
    }

    /// A program forced onto a Python pool.
    pub fn python(name: &str, program: impl Into<ProgramSpec>) -> Step {
        Step::program_step(name, StepKind::Python, program.into())
    }

    /// A program step of `kind` (`program`, `native` or `python`) for a
    /// signature, as files write it (`Predict` unless [`Step::module`] says
    /// otherwise).
    pub fn signature(name: &str, kind: StepKind, signature: &str) -> Step {
        Step(StepSpec { signature: Some(signature.into()), ..StepSpec::new(name, kind) })
    }

    /// The module for a step made with [`Step::signature`].
    pub fn module(mut self, module: ModuleKind) -> Step {
        self.0.module = Some(module);
        self
    }

    /// A worker command.
    pub fn command(name: &str, pool: &str, command: &str) -> Step {
        Step(StepSpec {
            pool: Some(pool.into()),
            command: Some(command.into()),
            ..StepSpec::new(name, StepKind::Command)
        })
    }

    /// A program of the session the pipeline runs in.
    pub fn session(name: &str, program: &str) -> Step {
        Step(StepSpec { session_program: Some(program.into()), ..StepSpec::new(name, StepKind::Session) })
    }

    /// Steps at once over the same context.
    pub fn parallel(name: &str, steps: impl IntoIterator<Item = Step>) -> Step {
        Step(StepSpec { steps: steps.into_iter().map(|s| s.0).collect(), ..StepSpec::new(name, StepKind::Parallel) })
    }

    /// `then` when `when` holds, `otherwise` else.
    pub fn conditional(
        name: &str,
        when: Condition,
        then: impl IntoIterator<Item = Step>,
        otherwise: impl IntoIterator<Item = Step>,
    ) -> Step {
        Step(StepSpec {
            when: Some(when),
            then: then.into_iter().map(|s| s.0).collect(),
            otherwise: otherwise.into_iter().map(|s| s.0).collect(),
            ..StepSpec::new(name, StepKind::Conditional)
        })
    }

    /// `steps` once per item of the list field `over`, the item bound to `item`.
    pub fn map(name: &str, over: &str, item: &str, steps: impl IntoIterator<Item = Step>) -> Step {
        Step(StepSpec {
            over: Some(over.into()),
            item: Some(item.into()),
            steps: steps.into_iter().map(|s| s.0).collect(),
            ..StepSpec::new(name, StepKind::Map)
        })
    }

    /// A nested pipeline.
    pub fn pipeline(name: &str, pipeline: &Pipeline) -> Step {
        Step(StepSpec { pipeline: Some(Box::new(pipeline.spec().clone())), ..StepSpec::new(name, StepKind::Pipeline) })
    }

    /// Map steps: the field receiving the results.
    pub fn collect(mut self, field: &str) -> Step {
        self.0.collect = Some(field.into());
        self
    }

    /// Map steps: keep only this field of each item's results.
    pub fn pluck(mut self, field: &str) -> Step {
        self.0.pluck = Some(field.into());
        self
    }

    /// Map steps: items in flight at once.
    pub fn concurrency(mut self, n: usize) -> Step {
        self.0.concurrency = Some(n);
        self
    }

    /// Command steps: a fixed argument.
    pub fn arg(mut self, key: &str, value: Value) -> Step {
        self.0.args.insert(key.into(), value);
        self
    }

    /// Program and command steps: the pool.
    pub fn pool(mut self, pool: &str) -> Step {
        self.0.pool = Some(pool.into());
        self
    }

    /// Read step input `field` from context field `from`.
    pub fn input(mut self, field: &str, from: &str) -> Step {
        self.0.inputs.insert(field.into(), from.into());
        self
    }

    /// Write step output `field` to context field `to`.
    pub fn output(mut self, field: &str, to: &str) -> Step {
        self.0.outputs.insert(field.into(), to.into());
        self
    }

    /// A limit on each attempt.
    pub fn timeout(mut self, t: Duration) -> Step {
        self.0.timeout_ms = Some(t.as_millis() as u64);
        self
    }

    /// Up to `max_attempts` attempts, waiting `backoff` (doubling) between them.
    pub fn retry(mut self, max_attempts: u32, backoff: Duration) -> Step {
        self.0.retry = Some(RetrySpec { max_attempts, backoff_ms: backoff.as_millis() as u64 });
        self
    }

    /// Record a failure and go on.
    pub fn continue_on_error(mut self) -> Step {
        self.0.continue_on_error = true;
        self
    }

    /// The file form of this step.
    pub fn spec(&self) -> &StepSpec {
        &self.0
    }
}

/// Builds a [`Pipeline`]; from [`Pipeline::builder`] or [`Runtime::pipeline`].
#[derive(Debug, Clone)]
pub struct PipelineBuilder {
    spec: PipelineSpec,
}

impl PipelineBuilder {
    /// A required input field.
    pub fn input(mut self, field: &str) -> PipelineBuilder {
        self.spec.inputs.push(field.into());
        self
    }

    /// A field to return (the whole context when none is named).
    pub fn output(mut self, field: &str) -> PipelineBuilder {
        self.spec.outputs.push(field.into());
        self
    }

    /// Describe the pipeline.
    pub fn description(mut self, text: &str) -> PipelineBuilder {
        self.spec.description = Some(text.into());
        self
    }

    /// A limit on the whole run.
    pub fn timeout(mut self, t: Duration) -> PipelineBuilder {
        self.spec.timeout_ms = Some(t.as_millis() as u64);
        self
    }

    /// Add a step.
    pub fn step(mut self, step: Step) -> PipelineBuilder {
        self.spec.steps.push(step.0);
        self
    }

    /// Check and build.
    pub fn build(self) -> Result<Pipeline> {
        Pipeline::from_spec(self.spec)
    }
}

// ------------------------------------------------------------------ compiled

/// A checked, ready-to-run pipeline. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Pipeline {
    inner: Arc<Compiled>,
}

#[derive(Debug)]
struct Compiled {
    spec: PipelineSpec,
    nodes: Vec<Node>,
}

#[derive(Debug)]
struct Node {
    spec: StepSpec,
    exec: Exec,
}

#[derive(Debug)]
enum Exec {
    Program { program: Program, route: RoutePreference, inputs: Vec<(String, bool)> },
    Command { pool: String, command: String },
    Session { program: String },
    Parallel(Vec<Node>),
    Conditional { when: Condition, then: Vec<Node>, otherwise: Vec<Node> },
    Map { over: String, item: String, collect: String, concurrency: usize, steps: Vec<Node> },
    Pipeline(Pipeline),
}

/// What is known, at build time, to be in the context.
#[derive(Clone)]
struct Known {
    fields: HashSet<String>,
    /// Some step produces fields nobody can name in advance: stop checking.
    open: bool,
}

impl Known {
    fn has(&self, f: &str) -> bool {
        self.open || self.fields.contains(f)
    }
}

fn bad(step: &str, msg: impl Into<String>) -> Error {
    Error::invalid_request(msg.into()).with_step(step)
}

/// A signature's inputs (name, required) and outputs.
type SignatureFields = (Vec<(String, bool)>, Vec<String>);

/// The inputs of a signature: (name, required).
fn signature_inputs(program: &Program) -> Result<SignatureFields> {
    let sig = dspex_native::signature_from_spec(&program.spec().signature)?;
    let inputs = sig
        .inputs()
        .iter()
        .map(|f| {
            let optional = match f.ty() {
                FieldType::Dspy(DspyType::History) => true,
                FieldType::Union(parts) => parts.contains(&FieldType::None),
                _ => false,
            };
            (f.name().to_string(), !optional)
        })
        .collect();
    let mut outputs: Vec<String> = sig.outputs().iter().map(|f| f.name().to_string()).collect();
    if program.spec().module == ModuleKind::ChainOfThought {
        outputs.insert(0, "reasoning".into());
    }
    Ok((inputs, outputs))
}

struct Checker<'a> {
    names: HashSet<String>,
    base: Option<&'a Path>,
    depth: usize,
}

impl Checker<'_> {
    fn steps(&mut self, steps: &[StepSpec], known: &mut Known) -> Result<Vec<Node>> {
        let mut nodes = Vec::with_capacity(steps.len());
        for s in steps {
            let (node, produced, open) = self.step(s, known)?;
            known.fields.extend(produced);
            known.open |= open;
            nodes.push(node);
        }
        Ok(nodes)
    }

    /// Check one step against what is known; the node, the fields it adds
    /// and whether it adds fields nobody can name.
    fn step(&mut self, s: &StepSpec, known: &Known) -> Result<(Node, Vec<String>, bool)> {
        let name = s.name.as_str();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(bad(name, format!("step name {name:?} must be letters, digits, `-`, `_` or `.`")));
        }
        if !self.names.insert(name.to_string()) {
            return Err(bad(name, format!("two steps are named {name:?}")));
        }
        let allowed = s.kind.keys();
        if let Some(k) = s.set_keys().into_iter().find(|k| !allowed.contains(k)) {
            return Err(bad(
                name,
                format!("key `{k}` does not apply to a {} step (its keys: {})", s.kind.as_str(), allowed.join(", ")),
            ));
        }
        if let Some(r) = &s.retry {
            if r.max_attempts == 0 {
                return Err(bad(name, "retry.max_attempts must be at least 1"));
            }
        }
        if s.timeout_ms == Some(0) {
            return Err(bad(name, "timeout_ms must be above 0"));
        }
        let rename = |fields: Vec<String>| -> Vec<String> {
            fields.into_iter().map(|f| s.outputs.get(&f).cloned().unwrap_or(f)).collect()
        };
        let need = |field: &str, from: &str| -> Result<()> {
            if known.has(from) {
                Ok(())
            } else if field == from {
                Err(bad(name, format!("input `{field}` is not a pipeline input nor produced by an earlier step")))
            } else {
                Err(bad(
                    name,
                    format!(
                        "input `{field}` reads `{from}`, which is not a pipeline input nor produced by an earlier step"
                    ),
                ))
            }
        };
        let (exec, produced, open) = match s.kind {
            StepKind::Program | StepKind::Native | StepKind::Python => {
                let spec = match (&s.program, &s.signature) {
                    (Some(_), Some(_)) => return Err(bad(name, "give `program` or `signature`, not both")),
                    (None, None) => {
                        return Err(bad(name, format!("a {} step needs `signature` or `program`", s.kind.as_str())))
                    }
                    (Some(p), None) => {
                        if s.module.is_some() {
                            return Err(bad(name, "`module` goes inside `program` when `program` is given"));
                        }
                        p.clone()
                    }
                    (None, Some(sig)) => {
                        ProgramSpec { module: s.module.unwrap_or_default(), ..ProgramSpec::predict(sig.clone()) }
                    }
                };
                let program = Program::new(spec);
                let (inputs, outputs) = signature_inputs(&program).map_err(|e| e.with_step(name))?;
                if s.kind == StepKind::Native {
                    if let Err(why) = program.native_support() {
                        return Err(bad(name, format!("this program cannot run natively: {why}")));
                    }
                }
                for k in s.inputs.keys() {
                    if !inputs.iter().any(|(n, _)| n == k) {
                        return Err(bad(
                            name,
                            format!("`inputs` maps `{k}`, which is not an input of the step's signature"),
                        ));
                    }
                }
                for k in s.outputs.keys() {
                    if !outputs.contains(k) {
                        return Err(bad(
                            name,
                            format!("`outputs` maps `{k}`, which is not an output of the step's signature"),
                        ));
                    }
                }
                for (field, required) in &inputs {
                    if *required {
                        need(field, s.inputs.get(field).unwrap_or(field))?;
                    }
                }
                let route = match s.kind {
                    StepKind::Native => RoutePreference::Native,
                    StepKind::Python => RoutePreference::Python,
                    _ => RoutePreference::Auto,
                };
                (Exec::Program { program, route, inputs }, rename(outputs), false)
            }
            StepKind::Command => {
                let pool = s.pool.clone().ok_or_else(|| bad(name, "a command step needs `pool`"))?;
                let command = s.command.clone().ok_or_else(|| bad(name, "a command step needs `command`"))?;
                for from in s.inputs.values() {
                    need(from, from)?;
                }
                // Only the fields named in `outputs` are known; others may come.
                (Exec::Command { pool, command }, s.outputs.values().cloned().collect(), s.outputs.is_empty())
            }
            StepKind::Session => {
                let program =
                    s.session_program.clone().ok_or_else(|| bad(name, "a session step needs `session_program`"))?;
                for from in s.inputs.values() {
                    need(from, from)?;
                }
                (Exec::Session { program }, s.outputs.values().cloned().collect(), true)
            }
            StepKind::Parallel => {
                if s.steps.is_empty() {
                    return Err(bad(name, "a parallel step needs `steps`"));
                }
                let mut produced = Vec::new();
                let mut open = false;
                let mut nodes = Vec::new();
                for c in &s.steps {
                    // Siblings see the context as it was before the parallel step.
                    let (node, p, o) = self.step(c, known)?;
                    produced.extend(p);
                    open |= o;
                    nodes.push(node);
                }
                (Exec::Parallel(nodes), rename(produced), open)
            }
            StepKind::Conditional => {
                let when = s.when.clone().ok_or_else(|| bad(name, "a conditional step needs `when`"))?;
                if when.tests() > 1 {
                    return Err(bad(name, "`when` takes one of equals, not_equals, contains, truthy"));
                }
                need(&when.field, &when.field)?;
                if s.then.is_empty() && s.otherwise.is_empty() {
                    return Err(bad(name, "a conditional step needs `then` or `else` steps"));
                }
                let (mut k1, mut k2) = (known.clone(), known.clone());
                let then = self.steps(&s.then, &mut k1)?;
                let otherwise = self.steps(&s.otherwise, &mut k2)?;
                // A field only one branch makes may be missing: later steps
                // that need it are checked when they run.
                let produced: Vec<String> =
                    k1.fields.union(&k2.fields).filter(|f| !known.fields.contains(*f)).cloned().collect();
                (Exec::Conditional { when, then, otherwise }, rename(produced), k1.open || k2.open)
            }
            StepKind::Map => {
                let over = s.over.clone().ok_or_else(|| bad(name, "a map step needs `over`"))?;
                need(&over, &over)?;
                if s.steps.is_empty() {
                    return Err(bad(name, "a map step needs `steps`"));
                }
                let item = s.item.clone().unwrap_or_else(|| "item".into());
                let concurrency = s.concurrency.unwrap_or(4);
                if concurrency == 0 {
                    return Err(bad(name, "concurrency must be at least 1"));
                }
                let mut inner = known.clone();
                inner.fields.insert(item.clone());
                let steps = self.steps(&s.steps, &mut inner)?;
                if let Some(p) = &s.pluck {
                    if !inner.has(p) {
                        return Err(bad(name, format!("`pluck` names `{p}`, which no sub-step produces")));
                    }
                }
                let collect = s.collect.clone().unwrap_or_else(|| name.to_string());
                (Exec::Map { over, item, collect: collect.clone(), concurrency, steps }, rename(vec![collect]), false)
            }
            StepKind::Pipeline => {
                if self.depth >= 16 {
                    return Err(bad(name, "pipelines nest more than 16 deep (a file including itself?)"));
                }
                let (spec, base) = match (&s.pipeline, &s.file) {
                    (Some(p), None) => ((**p).clone(), self.base.map(Path::to_path_buf)),
                    (None, Some(f)) => {
                        let path = match self.base {
                            Some(b) if f.is_relative() => b.join(f),
                            _ => f.clone(),
                        };
                        let text = std::fs::read_to_string(&path)
                            .map_err(|e| bad(name, format!("cannot read pipeline file {}: {e}", path.display())))?;
                        let spec = parse_text(&text, &path).map_err(|e| e.with_step(name))?;
                        (spec, path.parent().map(Path::to_path_buf))
                    }
                    _ => return Err(bad(name, "a pipeline step needs `pipeline` or `file`, one of them")),
                };
                let nested = compile(spec, base.as_deref(), self.depth + 1).map_err(|e| {
                    Error::invalid_request(format!("in nested pipeline of step {name}: {}", e.message()))
                        .with_step(e.context().step.clone().unwrap_or_else(|| name.to_string()))
                })?;
                for f in &nested.inner.spec.inputs {
                    need(f, s.inputs.get(f).unwrap_or(f))?;
                }
                let outs = nested.inner.spec.outputs.clone();
                let open = outs.is_empty();
                (Exec::Pipeline(nested), rename(outs), open)
            }
        };
        Ok((Node { spec: s.clone(), exec }, produced, open))
    }
}

fn compile(spec: PipelineSpec, base: Option<&Path>, depth: usize) -> Result<Pipeline> {
    if spec.name.trim().is_empty() {
        return Err(Error::invalid_request("a pipeline needs a `name`"));
    }
    if spec.steps.is_empty() {
        return Err(Error::invalid_request(format!("pipeline {} has no steps", spec.name)));
    }
    let mut known = Known { fields: spec.inputs.iter().cloned().collect(), open: spec.inputs.is_empty() };
    let mut checker = Checker { names: HashSet::new(), base, depth };
    let nodes = checker.steps(&spec.steps, &mut known)?;
    for out in &spec.outputs {
        if !known.has(out) {
            return Err(Error::invalid_request(format!(
                "pipeline output `{out}` is not an input nor produced by any step"
            )));
        }
    }
    Ok(Pipeline { inner: Arc::new(Compiled { spec, nodes }) })
}

fn parse_text(text: &str, path: &Path) -> Result<PipelineSpec> {
    let json = path.extension().is_some_and(|e| e == "json");
    let parsed = if json {
        serde_json::from_str(text).map_err(|e| format!("{}: {e}", path.display()))
    } else {
        toml::from_str(text).map_err(|e| format!("{}: {e}", path.display()))
    };
    parsed.map_err(|msg| Error::invalid_request(msg.trim_end().to_string()))
}

/// Add the line of the offending step to a semantic error from a file.
fn locate(e: Error, text: &str, origin: &str) -> Error {
    let Some(step) = e.context().step.clone() else {
        return Error::invalid_request(format!("{origin}: {}", e.message())).with_context(e.context().clone());
    };
    let line = text.lines().position(|l| {
        let l = l.replace(' ', "");
        l.contains(&format!("name=\"{step}\""))
            || l.contains(&format!("name='{step}'"))
            || l.contains(&format!("\"name\":\"{step}\""))
    });
    let at = match line {
        Some(n) => format!("{origin}, line {}", n + 1),
        None => origin.to_string(),
    };
    Error::new(e.kind(), format!("{at}: step {step}: {}", e.message())).with_context(e.context().clone())
}

impl Pipeline {
    /// Start a pipeline.
    pub fn builder(name: &str) -> PipelineBuilder {
        PipelineBuilder {
            spec: PipelineSpec {
                name: name.into(),
                description: None,
                inputs: Vec::new(),
                outputs: Vec::new(),
                timeout_ms: None,
                steps: Vec::new(),
            },
        }
    }

    /// Check and build from the file model.
    pub fn from_spec(spec: PipelineSpec) -> Result<Pipeline> {
        compile(spec, None, 0)
    }

    /// Parse TOML. Errors carry the line.
    pub fn from_toml(text: &str) -> Result<Pipeline> {
        let spec: PipelineSpec =
            toml::from_str(text).map_err(|e| Error::invalid_request(e.to_string().trim_end().to_string()))?;
        compile(spec, None, 0).map_err(|e| locate(e, text, "pipeline"))
    }

    /// Parse JSON. Errors carry the line.
    pub fn from_json(text: &str) -> Result<Pipeline> {
        let spec: PipelineSpec = serde_json::from_str(text).map_err(|e| Error::invalid_request(e.to_string()))?;
        compile(spec, None, 0).map_err(|e| locate(e, text, "pipeline"))
    }

    /// Load a `.toml` or `.json` file; nested `file` steps are relative to it.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Pipeline> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::new(ErrorKind::Io, format!("cannot read pipeline file {}: {e}", path.display())))?;
        let spec = parse_text(&text, path)?;
        compile(spec, path.parent(), 0).map_err(|e| locate(e, &text, &path.display().to_string()))
    }

    /// The file model (what `toml::to_string` or `serde_json` would write).
    pub fn spec(&self) -> &PipelineSpec {
        &self.inner.spec
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.inner.spec.name
    }
}

/// Anything [`Runtime::run_pipeline`] accepts: a pipeline, a builder, or a file path.
pub trait IntoPipeline {
    /// Build it.
    fn into_pipeline(self) -> Result<Pipeline>;
}

impl IntoPipeline for Pipeline {
    fn into_pipeline(self) -> Result<Pipeline> {
        Ok(self)
    }
}

impl IntoPipeline for &Pipeline {
    fn into_pipeline(self) -> Result<Pipeline> {
        Ok(self.clone())
    }
}

impl IntoPipeline for PipelineBuilder {
    fn into_pipeline(self) -> Result<Pipeline> {
        self.build()
    }
}

impl IntoPipeline for &Path {
    fn into_pipeline(self) -> Result<Pipeline> {
        Pipeline::from_file(self)
    }
}

impl IntoPipeline for PathBuf {
    fn into_pipeline(self) -> Result<Pipeline> {
        Pipeline::from_file(self)
    }
}

impl IntoPipeline for &PathBuf {
    fn into_pipeline(self) -> Result<Pipeline> {
        Pipeline::from_file(self)
    }
}

// ------------------------------------------------------------------ results

/// How one step went.
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

// ------------------------------------------------------------------ execution

/// Runs `session` steps; implemented by the session actor's runner.
pub(crate) trait SessionSteps: Send + Sync {
    fn run_step<'s>(
        &'s self,
        program: &'s str,
        ctx: &'s Map,
        mapping: &'s BTreeMap<String, String>,
        opts: RequestOptions,
    ) -> BoxFuture<'s, Result<Output>>;
}

impl SessionSteps for tokio::sync::Mutex<SessionStepRunner<'_>> {
    fn run_step<'s>(
        &'s self,
        program: &'s str,
        ctx: &'s Map,
        mapping: &'s BTreeMap<String, String>,
        opts: RequestOptions,
    ) -> BoxFuture<'s, Result<Output>> {
        Box::pin(async move {
            let mut runner = self.lock().await;
            let inputs = match runner.program(program) {
                Some(p) => gather(&signature_inputs(p)?.0, ctx, mapping)?,
                None => {
                    return Err(Error::new(ErrorKind::NotFound, format!("the session defines no program {program}"))
                        .with_session(runner.session_id()))
                }
            };
            runner.run(program, inputs, opts).await
        })
    }
}

/// The inputs of a program from the context.
fn gather(inputs: &[(String, bool)], ctx: &Map, mapping: &BTreeMap<String, String>) -> Result<Map> {
    let mut out = Map::new();
    for (field, required) in inputs {
        let from = mapping.get(field).unwrap_or(field);
        match ctx.get(from) {
            Some(v) => {
                out.insert(field.clone(), v.clone());
            }
            None if *required => {
                return Err(Error::new(
                    ErrorKind::Validation,
                    format!("input `{field}` (context field `{from}`) was not produced by any earlier step"),
                )
                .with_field(field))
            }
            None => {}
        }
    }
    Ok(out)
}

fn rename(fields: Map, mapping: &BTreeMap<String, String>) -> Map {
    if mapping.is_empty() {
        return fields;
    }
    fields.into_iter().map(|(k, v)| (mapping.get(&k).cloned().unwrap_or(k), v)).collect()
}

/// Fields of `after` that are new or changed since `before`.
fn produced(before: &Map, after: Map) -> Map {
    after.into_iter().filter(|(k, v)| before.get(k) != Some(v)).collect()
}

struct StepOut {
    fields: Map,
    route: Option<Route>,
    worker: Option<String>,
    detail: Option<String>,
}

impl StepOut {
    fn fields(fields: Map) -> StepOut {
        StepOut { fields, route: None, worker: None, detail: None }
    }
}

struct Executor<'a> {
    rt: &'a Runtime,
    run: &'a str,
    session: Option<&'a (dyn SessionSteps + 'a)>,
    records: Mutex<Vec<StepRecord>>,
    failed: Mutex<Vec<String>>,
}

fn path_of(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

fn may_retry(e: &Error) -> bool {
    !matches!(
        e.kind(),
        ErrorKind::InvalidRequest
            | ErrorKind::InvalidSignature
            | ErrorKind::Validation
            | ErrorKind::Config
            | ErrorKind::Cancelled
            | ErrorKind::Unsupported
            | ErrorKind::NotFound
    )
}

impl<'a> Executor<'a> {
    fn steps<'s>(&'s self, nodes: &'s [Node], ctx: &'s mut Map, parent: &'s str) -> BoxFuture<'s, Result<()>> {
        Box::pin(async move {
            for node in nodes {
                let path = path_of(parent, &node.spec.name);
                let fields = self.guarded(node, ctx, &path).await?;
                ctx.extend(fields);
            }
            Ok(())
        })
    }

    /// A step with its timeout, retries and `continue_on_error`.
    fn guarded<'s>(&'s self, node: &'s Node, ctx: &'s Map, path: &'s str) -> BoxFuture<'s, Result<Map>> {
        Box::pin(async move {
            let started = Instant::now();
            let (max, backoff) =
                node.spec.retry.as_ref().map(|r| (r.max_attempts.max(1), r.backoff_ms)).unwrap_or((1, 0));
            let timeout = node.spec.timeout_ms.map(Duration::from_millis);
            let mut attempts = 0;
            let result = loop {
                attempts += 1;
                let fut = self.exec(node, ctx, path, timeout);
                let r = match timeout {
                    Some(t) => tokio::time::timeout(t, fut).await.unwrap_or_else(|_| {
                        Err(Error::new(ErrorKind::Timeout, format!("step {path} took longer than {t:?}"))
                            .with_retryable(true))
                    }),
                    None => fut.await,
                };
                match r {
                    Err(e) if attempts < max && may_retry(&e) => {
                        let wait = backoff.saturating_mul(1 << (attempts - 1).min(16)).min(30_000);
                        tracing::debug!(run = %self.run, step = %path, attempt = attempts, error = %e, "step failed; retrying");
                        tokio::time::sleep(Duration::from_millis(wait)).await;
                    }
                    other => break other,
                }
            };
            let elapsed_us = started.elapsed().as_micros() as u64;
            let (record, out) = match result {
                Ok(o) => (
                    StepRecord {
                        step: path.to_string(),
                        kind: node.spec.kind,
                        route: o.route.clone(),
                        worker: o.worker.clone(),
                        attempts,
                        elapsed_us,
                        ok: true,
                        detail: o.detail.clone(),
                        error: None,
                    },
                    Ok(rename(o.fields, &node.spec.outputs)),
                ),
                Err(e) => {
                    let e = if e.context().step.is_none() { e.with_step(path) } else { e };
                    let record = StepRecord {
                        step: path.to_string(),
                        kind: node.spec.kind,
                        route: None,
                        worker: e.context().worker.clone(),
                        attempts,
                        elapsed_us,
                        ok: false,
                        detail: None,
                        error: Some(e.clone()),
                    };
                    if node.spec.continue_on_error {
                        tracing::warn!(run = %self.run, step = %path, error = %e, "step failed; continuing (continue_on_error)");
                        self.failed.lock().push(path.to_string());
                        (record, Ok(Map::new()))
                    } else {
                        (record, Err(e))
                    }
                }
            };
            self.rt.inner.telemetry.emit_lazy(Some(self.run), || EventKind::PipelineStep {
                run: self.run.to_string(),
                step: record.step.clone(),
                route: record.route.clone(),
                elapsed_us,
                ok: record.ok,
            });
            self.records.lock().push(record);
            out
        })
    }

    fn exec<'s>(
        &'s self,
        node: &'s Node,
        ctx: &'s Map,
        path: &'s str,
        timeout: Option<Duration>,
    ) -> BoxFuture<'s, Result<StepOut>> {
        Box::pin(async move {
            let opts = RequestOptions { trace_id: Some(self.run.to_string()), timeout, ..RequestOptions::default() };
            match &node.exec {
                Exec::Program { program, route, inputs } => {
                    let inputs = gather(inputs, ctx, &node.spec.inputs)?;
                    let mut opts = opts.route(*route);
                    opts.pool = node.spec.pool.clone();
                    let out = self.rt.run(program, inputs, opts).await?;
                    Ok(output_fields(out))
                }
                Exec::Session { program } => {
                    let runner = self.session.ok_or_else(|| {
                        Error::invalid_request(format!(
                            "step {path} runs a session program; run the pipeline with Session::run_pipeline"
                        ))
                    })?;
                    let out = runner.run_step(program, ctx, &node.spec.inputs, opts).await?;
                    Ok(output_fields(out))
                }
                Exec::Command { pool, command } => {
                    let mut args = node.spec.args.clone();
                    for (arg, from) in &node.spec.inputs {
                        let v = ctx.get(from).ok_or_else(|| {
                            Error::new(
                                ErrorKind::Validation,
                                format!("argument `{arg}` reads `{from}`, which is not in the context"),
                            )
                            .with_field(from)
                        })?;
                        args.insert(arg.clone(), v.clone());
                    }
                    let out = self.rt.call(pool, command, Value::Object(args), opts.idempotent(false)).await?;
                    let fields = match out.value {
                        Value::Object(m) if !node.spec.outputs.is_empty() => {
                            let mut picked = Map::new();
                            for k in node.spec.outputs.keys() {
                                let v = m.get(k).ok_or_else(|| {
                                    Error::new(
                                        ErrorKind::Validation,
                                        format!("command {command} returned no field `{k}`"),
                                    )
                                    .with_field(k)
                                })?;
                                picked.insert(k.clone(), v.clone());
                            }
                            picked
                        }
                        Value::Object(m) => m,
                        other => Map::from_iter([(node.spec.name.clone(), other)]),
                    };
                    Ok(StepOut { fields, route: Some(out.meta.route), worker: out.meta.worker, detail: None })
                }
                Exec::Parallel(children) => {
                    let paths: Vec<String> = children.iter().map(|c| path_of(path, &c.spec.name)).collect();
                    let results = futures_util::future::try_join_all(
                        children.iter().zip(&paths).map(|(c, p)| self.guarded(c, ctx, p)),
                    )
                    .await?;
                    let mut fields = Map::new();
                    for r in results {
                        fields.extend(r);
                    }
                    Ok(StepOut::fields(fields))
                }
                Exec::Conditional { when, then, otherwise } => {
                    let holds = when.eval(ctx);
                    let mut local = ctx.clone();
                    self.steps(if holds { then } else { otherwise }, &mut local, path).await?;
                    let mut out = StepOut::fields(produced(ctx, local));
                    out.detail = Some(if holds { "then" } else { "else" }.into());
                    Ok(out)
                }
                Exec::Map { over, item, collect, concurrency, steps } => {
                    let items = match ctx.get(over) {
                        Some(Value::Array(items)) => items.clone(),
                        Some(other) => {
                            return Err(Error::new(
                                ErrorKind::Validation,
                                format!("map over `{over}` needs a list, got {}", kind_of(other)),
                            )
                            .with_field(over))
                        }
                        None => {
                            return Err(Error::new(ErrorKind::Validation, format!("map over `{over}`: no such field"))
                                .with_field(over))
                        }
                    };
                    let count = items.len();
                    let results: Vec<Value> = futures_util::stream::iter(items.into_iter().enumerate())
                        .map(|(i, value)| async move {
                            let mut local = ctx.clone();
                            local.insert(item.clone(), value);
                            let before = local.clone();
                            let item_path = format!("{path}[{i}]");
                            self.steps(steps, &mut local, &item_path).await?;
                            let fields = produced(&before, local);
                            Ok::<Value, Error>(match &node.spec.pluck {
                                Some(p) => fields.get(p).cloned().unwrap_or(Value::Null),
                                None => Value::Object(fields),
                            })
                        })
                        .buffered(*concurrency)
                        .try_collect()
                        .await?;
                    let mut out = StepOut::fields(Map::from_iter([(collect.clone(), Value::Array(results))]));
                    out.detail = Some(format!("{count} items"));
                    Ok(out)
                }
                Exec::Pipeline(nested) => {
                    let spec = &nested.inner.spec;
                    let mut local = if spec.inputs.is_empty() {
                        ctx.clone()
                    } else {
                        let wanted: Vec<(String, bool)> = spec.inputs.iter().map(|f| (f.clone(), true)).collect();
                        gather(&wanted, ctx, &node.spec.inputs)?
                    };
                    let before = local.clone();
                    self.steps(&nested.inner.nodes, &mut local, path).await?;
                    let fields = if spec.outputs.is_empty() {
                        produced(&before, local)
                    } else {
                        spec.outputs.iter().filter_map(|f| local.get(f).map(|v| (f.clone(), v.clone()))).collect()
                    };
                    Ok(StepOut::fields(fields))
                }
            }
        })
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn output_fields(out: Output) -> StepOut {
    StepOut {
        fields: out.prediction.fields,
        route: Some(out.meta.route),
        worker: out.meta.worker,
        detail: out.meta.fallback.map(|f| format!("fallback: {f}")),
    }
}

async fn execute(
    rt: &Runtime,
    pipeline: &Pipeline,
    inputs: Map,
    session: Option<&(dyn SessionSteps + '_)>,
    run: &str,
) -> Result<PipelineResult> {
    let started = Instant::now();
    let spec = &pipeline.inner.spec;
    for f in &spec.inputs {
        if !inputs.contains_key(f) {
            return Err(
                Error::new(ErrorKind::Validation, format!("pipeline {} needs input `{f}`", spec.name)).with_field(f)
            );
        }
    }
    let exec = Executor { rt, run, session, records: Mutex::default(), failed: Mutex::default() };
    let mut ctx = inputs;
    let body = exec.steps(&pipeline.inner.nodes, &mut ctx, "");
    let ran = match spec.timeout_ms {
        Some(ms) => tokio::time::timeout(Duration::from_millis(ms), body).await.unwrap_or_else(|_| {
            Err(Error::new(ErrorKind::Timeout, format!("pipeline {} took longer than {ms} ms", spec.name)))
        }),
        None => body.await,
    };
    if let Err(e) = ran {
        let step = e.context().step.clone().unwrap_or_default();
        return Err(Error::new(e.kind(), format!("pipeline {} failed at step {step}: {}", spec.name, e.message()))
            .with_context(e.context().clone())
            .with_retryable(e.is_retryable())
            .with_request_id(run));
    }
    let outputs = if spec.outputs.is_empty() {
        ctx
    } else {
        let mut out = Map::new();
        for f in &spec.outputs {
            let v = ctx.remove(f).ok_or_else(|| {
                Error::new(
                    ErrorKind::Validation,
                    format!("pipeline {} produced no `{f}` (did a step fail?)", spec.name),
                )
                .with_field(f)
            })?;
            out.insert(f.clone(), v);
        }
        out
    };
    Ok(PipelineResult {
        run_id: run.to_string(),
        pipeline: spec.name.clone(),
        outputs,
        steps: exec.records.into_inner(),
        failed: exec.failed.into_inner(),
        elapsed_us: started.elapsed().as_micros() as u64,
    })
}

/// Run a pipeline inside a session actor (its `session` steps use the runner).
/// The run is listed with the others and can be cancelled by id like them:
/// it runs within the session's request, so cancelling drops it there.
pub(crate) async fn execute_in_session(
    rt: &Runtime,
    pipeline: &Pipeline,
    inputs: Map,
    runner: SessionStepRunner<'_>,
) -> Result<PipelineResult> {
    let run = format!("p-{}", new_trace_id());
    let session = runner.session_id();
    let cancel = Arc::new(tokio::sync::Notify::new());
    let registry = &rt.inner.pipeline_runs;
    registry.runs.lock().insert(
        run.clone(),
        RunEntry {
            pipeline: pipeline.name().to_string(),
            session: Some(session.clone()),
            started: Instant::now(),
            stop: Some(RunStop::Notify(cancel.clone())),
        },
    );
    // Unlisted however the run ends, the session's request dropped included.
    let _listed = Unlist { registry, run: &run };
    let lock = tokio::sync::Mutex::new(runner);
    let out = tokio::select! {
        out = execute(rt, pipeline, inputs, Some(&lock), &run) => out,
        _ = cancel.notified() => Err(run_cancelled(&run)),
    };
    out.map_err(|e| e.with_session(&session))
}

/// The error of a cancelled run.
fn run_cancelled(run: &str) -> Error {
    Error::new(ErrorKind::Cancelled, format!("pipeline run {run} was cancelled")).with_request_id(run)
}

/// Removes a run from the registry when dropped.
struct Unlist<'a> {
    registry: &'a RunRegistry,
    run: &'a str,
}

impl Drop for Unlist<'_> {
    fn drop(&mut self) {
        self.registry.runs.lock().remove(self.run);
    }
}

// ------------------------------------------------------------------ run actors

/// A pipeline run in progress, as the console lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PipelineRunInfo {
    /// Run id.
    pub run_id: String,
    /// Pipeline name.
    pub pipeline: String,
    /// The session it runs in ([`crate::Session::run_pipeline`]), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Time running, in milliseconds.
    pub running_ms: u64,
}

struct RunEntry {
    pipeline: String,
    session: Option<String>,
    started: Instant,
    /// How to cancel it (None while its actor is starting).
    stop: Option<RunStop>,
}

/// How a run in progress is cancelled.
enum RunStop {
    /// A run of its own: stop its actor.
    Actor(ActorRef<()>),
    /// A run inside a session's request: wake its cancel branch.
    Notify(Arc<tokio::sync::Notify>),
}

/// Pipeline runs in progress.
#[derive(Default)]
pub(crate) struct RunRegistry {
    runs: Mutex<HashMap<String, RunEntry>>,
}

impl RunRegistry {
    pub(crate) fn list(&self) -> Vec<PipelineRunInfo> {
        let mut out: Vec<PipelineRunInfo> = self
            .runs
            .lock()
            .iter()
            .map(|(id, e)| PipelineRunInfo {
                run_id: id.clone(),
                pipeline: e.pipeline.clone(),
                session: e.session.clone(),
                running_ms: e.started.elapsed().as_millis() as u64,
            })
            .collect();
        out.sort_by(|a, b| a.run_id.cmp(&b.run_id));
        out
    }
}

/// A started pipeline run: wait for it or cancel it.
#[derive(Debug)]
pub struct PipelineRun {
    id: String,
    actor: ActorRef<()>,
    result: tokio::sync::oneshot::Receiver<Result<PipelineResult>>,
}

impl PipelineRun {
    /// The run id (the actor is `pipeline:<id>`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Cancel the run: every step still running is dropped, Python work
    /// included (its workers are told to cancel).
    pub fn cancel(&self) {
        self.actor.stop(Some("cancelled".into()));
    }

    /// Wait for the result.
    pub async fn wait(self) -> Result<PipelineResult> {
        match self.result.await {
            Ok(r) => r,
            Err(_) => Err(run_cancelled(&self.id)),
        }
    }
}

/// What a run's actor holds: dropping it (the actor stopped) aborts the run.
struct RunGuard {
    abort: tokio::task::AbortHandle,
    run: String,
    registry: std::sync::Weak<crate::runtime::Inner>,
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        self.abort.abort();
        if let Some(inner) = self.registry.upgrade() {
            inner.pipeline_runs.runs.lock().remove(&self.run);
        }
    }
}

impl Runtime {
    /// Start building a pipeline (the same as [`Pipeline::builder`]).
    pub fn pipeline(&self, name: &str) -> PipelineBuilder {
        Pipeline::builder(name)
    }

    /// Run a pipeline (a [`Pipeline`], a builder or a file path) to its end.
    pub async fn run_pipeline(&self, pipeline: impl IntoPipeline, inputs: Map) -> Result<PipelineResult> {
        self.start_pipeline(pipeline, inputs).await?.wait().await
    }

    /// Start a pipeline run as a supervised actor; cancel it or wait for it.
    pub async fn start_pipeline(&self, pipeline: impl IntoPipeline, inputs: Map) -> Result<PipelineRun> {
        let pipeline = pipeline.into_pipeline()?;
        let sup = self.dynamic_supervisor("pipelines").await?;
        let run = format!("p-{}", new_trace_id());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<ActorRef<()>>();
        let rt = self.clone();
        let (task_run, task_pipeline) = (run.clone(), pipeline.clone());
        let task = tokio::spawn(async move {
            // Wait until the run's actor exists, so that it can be stopped.
            let Ok(actor) = go_rx.await else { return };
            let r = execute(&rt, &task_pipeline, inputs, None, &task_run).await;
            let _ = tx.send(r);
            actor.stop(None);
        });
        self.inner.pipeline_runs.runs.lock().insert(
            run.clone(),
            RunEntry { pipeline: pipeline.name().to_string(), session: None, started: Instant::now(), stop: None },
        );
        let slot: Arc<Mutex<Option<ActorRef<()>>>> = Arc::default();
        let (abort, weak, start_run, start_slot) =
            (task.abort_handle(), Arc::downgrade(&self.inner), run.clone(), slot.clone());
        let start: crate::supervisor::StartFn = Arc::new(move |parent, _| {
            let guard = RunGuard { abort: abort.clone(), run: start_run.clone(), registry: weak.clone() };
            let slot = start_slot.clone();
            Box::pin(async move {
                let r = Holder::spawn(parent, guard).await?;
                *slot.lock() = Some(r.clone());
                Ok(Started { cell: r.get_cell(), supervisor: None })
            })
        });
        let name = pipeline.name().to_string();
        let child = ChildSpec::new(format!("pipeline:{run}"), Restart::Temporary, start).kind("pipeline").info(
            Arc::new(move || {
                let mut extra = Map::new();
                extra.insert("pipeline".into(), name.clone().into());
                NodeInfo { extra, ..Default::default() }
            }),
        );
        if let Err(e) = Supervisor::add_child(&sup, child).await {
            task.abort();
            self.inner.pipeline_runs.runs.lock().remove(&run);
            return Err(Error::internal(format!("cannot start pipeline run {run}: {e}")));
        }
        let actor = slot.lock().clone().ok_or_else(|| Error::internal("the pipeline run's actor did not start"))?;
        if let Some(e) = self.inner.pipeline_runs.runs.lock().get_mut(&run) {
            e.stop = Some(RunStop::Actor(actor.clone()));
        }
        let _ = go_tx.send(actor.clone());
        Ok(PipelineRun { id: run, actor, result: rx })
    }

    /// Pipeline runs in progress.
    pub fn pipeline_runs(&self) -> Vec<PipelineRunInfo> {
        self.inner.pipeline_runs.list()
    }

    /// Cancel a pipeline run by id (what [`PipelineRun::cancel`] does); a
    /// run inside a session ends its session request with `Cancelled`.
    pub fn cancel_pipeline(&self, run_id: &str) -> Result<()> {
        match self.inner.pipeline_runs.runs.lock().get(run_id).and_then(|e| e.stop.as_ref()) {
            Some(RunStop::Actor(a)) => a.stop(Some("cancelled".into())),
            // A stored permit: a run not yet waiting still sees it.
            Some(RunStop::Notify(n)) => n.notify_one(),
            None => return Err(Error::new(ErrorKind::NotFound, format!("no pipeline run {run_id} is in progress"))),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
