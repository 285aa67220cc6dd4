//! The pipeline file model: what a TOML or JSON pipeline file says, and
//! what the builder produces. Plain data; [`check`](super::check) turns it
//! into something that runs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use dspex_core::{Map, ModuleKind, ProgramSpec, SignatureSpec, Value};
use serde::{Deserialize, Serialize};

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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
    pub(super) fn keys(self) -> &'static [&'static str] {
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

    pub(super) fn tests(&self) -> usize {
        [self.equals.is_some(), self.not_equals.is_some(), self.contains.is_some(), self.truthy.is_some()]
            .iter()
            .filter(|b| **b)
            .count()
    }

    pub(super) fn eval(&self, ctx: &Map) -> bool {
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
    pub(super) fn new(name: &str, kind: StepKind) -> StepSpec {
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

    pub(super) fn set_keys(&self) -> Vec<&'static str> {
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
