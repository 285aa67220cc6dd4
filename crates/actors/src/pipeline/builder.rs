//! Building a pipeline in Rust: the same model a file gives.

use std::time::Duration;

use dspex_core::{ModuleKind, ProgramSpec, Result, Value};

use super::spec::{Condition, PipelineSpec, RetrySpec, StepKind, StepSpec};
use super::Pipeline;

/// A step under construction, for [`PipelineBuilder::step`].
#[derive(Debug, Clone)]
pub struct Step(pub(super) StepSpec);

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
    pub(super) spec: PipelineSpec,
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
