//! A session's requests: its history fed in and appended, its Python work
//! pinned to one worker — and rebuilt on another when that one is gone.
//!
//! A session request is an ordinary request to the dispatcher (routed,
//! with fallback, recorded like any other); the session only brings its
//! own target for the plan's Python routes, [`PinnedWorker`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use dspex_bridge::commands::{self, DefineArgs, SessionRunArgs};
use dspex_core::{DspyType, Error, ErrorKind, EventKind, FieldType, Map, Result, Route};
use futures_util::future::BoxFuture;
use serde_json::json;
use tracing::info;

use super::{SessionShared, Shared};
use crate::dispatch::{python_output, Target};
use crate::pipeline::SessionSteps;
use crate::pool::PoolCallOptions;
use crate::program::Program;
use crate::request::{Output, Request, RequestOptions};

/// What requests work on, under the session's FIFO lock.
pub(crate) struct WorkState {
    programs: HashMap<String, Program>,
    /// Programs defined on the pinned worker.
    defined_on: HashSet<String>,
}

impl WorkState {
    pub(crate) fn new(programs: HashMap<String, Program>) -> WorkState {
        WorkState { programs, defined_on: HashSet::new() }
    }

    /// (Re)define a program; the pinned worker learns it at its next use.
    pub(crate) fn define(&mut self, name: &str, program: Program) {
        self.programs.insert(name.to_string(), program);
        self.defined_on.remove(name);
    }
}

/// The `dspy.History` input of a program, if it has one.
fn history_field(program: &Program) -> Option<String> {
    let sig = match program.native() {
        Some(n) => n.predictor().signature().clone(),
        None => dspex_native::signature_from_spec(&program.spec().signature).ok()?,
    };
    sig.inputs().iter().find(|f| *f.ty() == FieldType::Dspy(DspyType::History)).map(|f| f.name().to_string())
}

/// Run session program `name`: history in, the request through the
/// dispatcher with the session's worker as its Python target, the turn
/// appended to the history.
pub(crate) async fn run_program(
    sessions: &Shared,
    session: &SessionShared,
    st: &mut WorkState,
    name: &str,
    mut inputs: Map,
    opts: RequestOptions,
) -> Result<Output> {
    let program = st
        .programs
        .get(name)
        .cloned()
        .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("the session defines no program {name}")))?;
    let history_key = history_field(&program);
    if let Some(h) = &history_key {
        if !inputs.contains_key(h) {
            let turns = session.state.lock().history.get(name).cloned().unwrap_or_default();
            inputs.insert(h.clone(), json!({"messages": turns}));
        }
    }
    let (id, pool, tenant) = {
        let s = session.state.lock();
        (s.id.clone(), s.pool.clone(), s.tenant.clone())
    };
    let opts = RequestOptions {
        session: Some(id),
        cache: false,
        pool: Some(opts.pool.clone().unwrap_or(pool)),
        tenant: opts.tenant.clone().or(tenant),
        ..opts
    };
    let req = sessions.dispatcher.request(&program, inputs, opts);
    let pinned = PinnedWorker { sessions, session, name, st: tokio::sync::Mutex::new(st) };
    let out = sessions.dispatcher.run(&req, Some(&pinned)).await?;
    // Append this turn: the inputs (without the history itself) and the outputs.
    if let Some(h) = &history_key {
        let mut turn = req.inputs;
        turn.remove(h);
        for (k, v) in &out.prediction.fields {
            turn.insert(k.clone(), v.clone());
        }
        let mut state = session.state.lock();
        // The session's own window, else the runtime's.
        let limit = state.history_turns.or(sessions.config.history_turns);
        let turns = state.history.entry(name.to_string()).or_default();
        turns.push(turn);
        if let Some(keep) = limit {
            let excess = turns.len().saturating_sub(keep);
            turns.drain(..excess);
        }
    }
    Ok(out)
}

/// The session's Python target: its programs defined on one worker of its
/// pool, and run there.
struct PinnedWorker<'a> {
    sessions: &'a Shared,
    session: &'a SessionShared,
    name: &'a str,
    st: tokio::sync::Mutex<&'a mut WorkState>,
}

impl Target for PinnedWorker<'_> {
    fn run<'a>(&'a self, req: &'a Request) -> BoxFuture<'a, Result<Output>> {
        Box::pin(self.run_pinned(req))
    }
}

impl PinnedWorker<'_> {
    /// Run on the pinned worker, pinning (again) when there is none, its
    /// process changed, or it just failed us — then defining the session's
    /// programs there before the run.
    async fn run_pinned(&self, req: &Request) -> Result<Output> {
        let ctx = &req.ctx;
        let pool_name = ctx.options.pool.clone().unwrap_or_else(|| self.session.state.lock().pool.clone());
        let pool = self.sessions.dispatcher.pool(&pool_name)?;
        let specs = self.session.state.lock().programs.clone();
        let id = self.session.id();
        let mut st = self.st.lock().await;
        let mut attempt = 0;
        let mut lost = false;
        loop {
            attempt += 1;
            let pinned = self.session.pinned.lock().clone();
            let index = match pinned {
                Some((i, p, _)) if !lost && pool.pid_of(i) == Some(p) => i,
                previous => {
                    // After a crash the pool may have no ready worker for a
                    // moment (a replacement is starting): wait for one.
                    let mut picked = pool.pick();
                    while picked.is_none() && ctx.has_time() {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        picked = pool.pick();
                    }
                    let (i, p) = picked.ok_or_else(|| {
                        Error::new(ErrorKind::WorkerCrashed, format!("no worker of pool {pool_name} is ready"))
                            .with_pool(&pool_name)
                            .with_retryable(true)
                    })?;
                    st.defined_on.clear();
                    let worker = format!("worker:{pool_name}:{i}");
                    if previous.is_some() {
                        self.session.rebuilds.fetch_add(1, Ordering::Relaxed);
                        info!(session = %id, worker = %worker, "session pinned worker is gone; rebuilding its state");
                        self.sessions.dispatcher.telemetry().emit(
                            Some(&ctx.trace_id),
                            EventKind::Lifecycle {
                                actor: format!("session:{id}"),
                                what: "rebuilt".into(),
                                detail: format!("programs defined again on {worker}"),
                            },
                        );
                    }
                    *self.session.pinned.lock() = Some((i, p, worker));
                    lost = false;
                    i
                }
            };
            // Definitions and the run go to this worker only, and are never
            // retried behind the session's back: the loop below decides.
            let popts = PoolCallOptions { idempotent: false, pin: Some(index), ..PoolCallOptions::for_request(ctx) };
            let mut failure = None;
            for (pname, spec) in &specs {
                if st.defined_on.contains(pname) {
                    continue;
                }
                let program = st.programs.get(pname).map(|p| p.wire().clone()).unwrap_or_else(|| json!(spec));
                let args = commands::to_args(&DefineArgs { name: pname.clone(), program });
                match pool.call(commands::SESSION_DEFINE, args, &popts).await {
                    Ok(_) => {
                        st.defined_on.insert(pname.clone());
                    }
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            let result = match failure {
                Some(e) => Err(e),
                None => match self.sessions.dispatcher.lms().python_for(&req.program) {
                    Ok(lm) => {
                        let args = commands::to_args(&SessionRunArgs {
                            name: self.name.to_string(),
                            inputs: req.inputs.clone(),
                            lm,
                        });
                        pool.call(commands::SESSION_RUN, args, &popts).await
                    }
                    Err(e) => Err(e),
                },
            };
            match result {
                Ok(reply) => {
                    let (value, mut ran) = reply.into_parts();
                    ran.retried = attempt > 1;
                    return python_output(ctx, Route::Python(pool_name.clone()), value, ran);
                }
                Err(e) => {
                    let gone = matches!(e.kind(), ErrorKind::WorkerCrashed | ErrorKind::NotFound);
                    if gone {
                        lost = true;
                        st.defined_on.clear();
                    }
                    // Retry on another worker: always when the worker lost our
                    // state before running anything, else only if idempotent.
                    let safe = e.kind() == ErrorKind::NotFound || ctx.idempotent;
                    if gone && safe && attempt < 3 && ctx.has_time() {
                        continue;
                    }
                    return Err(e);
                }
            }
        }
    }
}

/// Runs the `session` steps of a pipeline with a session's programs, one
/// at a time, in order with the session's other requests.
pub(crate) struct SessionStepRunner<'a> {
    sessions: &'a Shared,
    session: &'a SessionShared,
    st: tokio::sync::Mutex<&'a mut WorkState>,
}

impl<'a> SessionStepRunner<'a> {
    pub(crate) fn new(sessions: &'a Shared, session: &'a SessionShared, st: &'a mut WorkState) -> Self {
        SessionStepRunner { sessions, session, st: tokio::sync::Mutex::new(st) }
    }
}

impl SessionSteps for SessionStepRunner<'_> {
    fn program<'s>(&'s self, name: &'s str) -> BoxFuture<'s, Option<Program>> {
        Box::pin(async move { self.st.lock().await.programs.get(name).cloned() })
    }

    fn run<'s>(&'s self, name: &'s str, inputs: Map, opts: RequestOptions) -> BoxFuture<'s, Result<Output>> {
        Box::pin(async move {
            let mut st = self.st.lock().await;
            run_program(self.sessions, self.session, &mut st, name, inputs, opts).await
        })
    }
}
