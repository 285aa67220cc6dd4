//! Build checks: a pipeline model becomes a [`Pipeline`] only when every
//! step's kind, keys, programs and field references make sense, so a run
//! never fails on something visible before it starts.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use dspex_core::{DspyType, Error, FieldType, ModuleKind, ProgramSpec, Result, RoutePreference};

use super::load::parse_text;

use super::spec::{Condition, PipelineSpec, StepKind, StepSpec};
use crate::program::Program;

/// A checked, ready-to-run pipeline. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub(super) inner: Arc<Compiled>,
}

#[derive(Debug)]
pub(super) struct Compiled {
    pub(super) spec: PipelineSpec,
    pub(super) nodes: Vec<Node>,
}

#[derive(Debug)]
pub(super) struct Node {
    pub(super) spec: StepSpec,
    pub(super) exec: Exec,
}

#[derive(Debug)]
pub(super) enum Exec {
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
pub(super) fn signature_inputs(program: &Program) -> Result<SignatureFields> {
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

pub(super) fn compile(spec: PipelineSpec, base: Option<&Path>, depth: usize) -> Result<Pipeline> {
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
