//! Running a pipeline: steps in order, parallel branches, conditions and
//! maps, each step with its timeout, retries and `continue_on_error`; every
//! program and command step goes through the dispatcher like any request.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use dspex_core::{Error, ErrorKind, EventKind, Map, Result, Route, Value};
use futures_util::future::BoxFuture;
use futures_util::{StreamExt, TryStreamExt};
use parking_lot::Mutex;

use super::check::{signature_inputs, Exec, Node};
use super::{Pipeline, PipelineResult, StepRecord};
use crate::dispatch::Dispatcher;
use crate::program::Program;
use crate::request::{Output, RequestOptions};

/// What a pipeline needs of the session it runs in: its programs, and a
/// way to run them with the session's history. Sessions implement it.
pub(crate) trait SessionSteps: Send + Sync {
    /// A program the session defines.
    fn program<'s>(&'s self, name: &'s str) -> BoxFuture<'s, Option<Program>>;
    /// Run session program `name` on `inputs`.
    fn run<'s>(&'s self, name: &'s str, inputs: Map, opts: RequestOptions) -> BoxFuture<'s, Result<Output>>;
}

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
    node: Option<String>,
    detail: Option<String>,
}

impl StepOut {
    fn fields(fields: Map) -> StepOut {
        StepOut { fields, route: None, worker: None, node: None, detail: None }
    }
}

struct Executor<'a> {
    dispatcher: &'a Dispatcher,
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
        let span = tracing::debug_span!("dspex.pipeline.step", run = %self.run, step = path);
        Box::pin(tracing::Instrument::instrument(
            async move {
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
                            node: o.node.clone(),
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
                            node: e.context().node.clone(),
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
                self.dispatcher.telemetry().emit_lazy(Some(self.run), || EventKind::PipelineStep {
                    run: self.run.to_string(),
                    step: record.step.clone(),
                    route: record.route.clone(),
                    elapsed_us,
                    ok: record.ok,
                });
                self.records.lock().push(record);
                out
            },
            span,
        ))
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
                    let out = self.dispatcher.run(&self.dispatcher.request(program, inputs, opts), None).await?;
                    Ok(output_fields(out))
                }
                Exec::Session { program } => {
                    let runner = self.session.ok_or_else(|| {
                        Error::invalid_request(format!(
                            "step {path} runs a session program; run the pipeline with Session::run_pipeline"
                        ))
                    })?;
                    let defined = runner.program(program).await.ok_or_else(|| {
                        Error::new(ErrorKind::NotFound, format!("the session defines no program {program}"))
                    })?;
                    let inputs = gather(&signature_inputs(&defined)?.0, ctx, &node.spec.inputs)?;
                    let out = runner.run(program, inputs, opts).await?;
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
                    let ctx = self.dispatcher.context(opts, false);
                    let out = self.dispatcher.call(pool, command, Value::Object(args), &ctx).await?;
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
                    Ok(StepOut {
                        fields,
                        route: Some(out.meta.route),
                        worker: out.meta.worker,
                        node: out.meta.node,
                        detail: None,
                    })
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
        node: out.meta.node,
        detail: out.meta.fallback.map(|f| format!("fallback: {f}")),
    }
}

pub(super) async fn execute(
    dispatcher: &Dispatcher,
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
    let exec = Executor { dispatcher, run, session, records: Mutex::default(), failed: Mutex::default() };
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
