//! Pipeline runs in progress: each a temporary actor `pipeline:<run-id>`
//! under the `pipelines` supervisor (or a request of the session it runs
//! in), listed and cancellable by id.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Instant;

use dspex_core::{Error, ErrorKind, Map, Result};
use parking_lot::Mutex;
use ractor::ActorRef;
use serde::Serialize;

use super::exec::{execute, SessionSteps};
use super::{IntoPipeline, Pipeline, PipelineResult};
use crate::dispatch::Dispatcher;
use crate::request::new_trace_id;
use crate::supervisor::{ChildSpec, DynamicSupervisor, Holder, NodeInfo, Restart, Started};

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
    runs: Weak<PipelineRuns>,
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        self.abort.abort();
        if let Some(runs) = self.runs.upgrade() {
            runs.runs.lock().remove(&self.run);
        }
    }
}

/// The error of a cancelled run.
fn run_cancelled(run: &str) -> Error {
    Error::new(ErrorKind::Cancelled, format!("pipeline run {run} was cancelled")).with_request_id(run)
}

/// Removes a run from the registry when dropped.
struct Unlist<'a> {
    runs: &'a PipelineRuns,
    run: &'a str,
}

impl Drop for Unlist<'_> {
    fn drop(&mut self) {
        self.runs.runs.lock().remove(self.run);
    }
}

/// The pipeline runs of a runtime: started, listed, cancelled.
pub(crate) struct PipelineRuns {
    dispatcher: Dispatcher,
    supervisor: DynamicSupervisor,
    runs: Mutex<HashMap<String, RunEntry>>,
}

impl std::fmt::Debug for PipelineRuns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineRuns").field("running", &self.runs.lock().len()).finish()
    }
}

impl PipelineRuns {
    pub(crate) fn new(dispatcher: Dispatcher, supervisor: DynamicSupervisor) -> PipelineRuns {
        PipelineRuns { dispatcher, supervisor, runs: Mutex::default() }
    }

    /// Runs in progress.
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

    /// Start a run as a supervised actor; cancel it or wait for it.
    pub(crate) async fn start(self: &Arc<Self>, pipeline: impl IntoPipeline, inputs: Map) -> Result<PipelineRun> {
        let pipeline = pipeline.into_pipeline()?;
        let run = format!("p-{}", new_trace_id());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<ActorRef<()>>();
        let dispatcher = self.dispatcher.clone();
        let (task_run, task_pipeline) = (run.clone(), pipeline.clone());
        let task = tokio::spawn(async move {
            // Wait until the run's actor exists, so that it can be stopped.
            let Ok(actor) = go_rx.await else { return };
            let r = execute(&dispatcher, &task_pipeline, inputs, None, &task_run).await;
            let _ = tx.send(r);
            actor.stop(None);
        });
        self.runs.lock().insert(
            run.clone(),
            RunEntry { pipeline: pipeline.name().to_string(), session: None, started: Instant::now(), stop: None },
        );
        let slot: Arc<Mutex<Option<ActorRef<()>>>> = Arc::default();
        let (abort, weak, start_run, start_slot) =
            (task.abort_handle(), Arc::downgrade(self), run.clone(), slot.clone());
        let start: crate::supervisor::StartFn = Arc::new(move |parent, _| {
            let guard = RunGuard { abort: abort.clone(), run: start_run.clone(), runs: weak.clone() };
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
        if let Err(e) = self.supervisor.add(child).await {
            task.abort();
            self.runs.lock().remove(&run);
            return Err(Error::internal(format!("cannot start pipeline run {run}: {}", e.message())));
        }
        let actor = slot.lock().clone().ok_or_else(|| Error::internal("the pipeline run's actor did not start"))?;
        if let Some(e) = self.runs.lock().get_mut(&run) {
            e.stop = Some(RunStop::Actor(actor.clone()));
        }
        let _ = go_tx.send(actor.clone());
        Ok(PipelineRun { id: run, actor, result: rx })
    }

    /// Cancel a run by id; a run inside a session ends its session request
    /// with `Cancelled`.
    pub(crate) fn cancel(&self, run_id: &str) -> Result<()> {
        match self.runs.lock().get(run_id).and_then(|e| e.stop.as_ref()) {
            Some(RunStop::Actor(a)) => a.stop(Some("cancelled".into())),
            // A stored permit: a run not yet waiting still sees it.
            Some(RunStop::Notify(n)) => n.notify_one(),
            None => return Err(Error::new(ErrorKind::NotFound, format!("no pipeline run {run_id} is in progress"))),
        }
        Ok(())
    }

    /// Run a pipeline within a request of `session` (its `session` steps use
    /// `steps`). The run is listed with the others and can be cancelled by
    /// id like them: cancelling drops it inside the session's request.
    pub(crate) async fn execute_in_session(
        &self,
        pipeline: &Pipeline,
        inputs: Map,
        session: &str,
        steps: &dyn SessionSteps,
    ) -> Result<PipelineResult> {
        let run = format!("p-{}", new_trace_id());
        let cancel = Arc::new(tokio::sync::Notify::new());
        self.runs.lock().insert(
            run.clone(),
            RunEntry {
                pipeline: pipeline.name().to_string(),
                session: Some(session.to_string()),
                started: Instant::now(),
                stop: Some(RunStop::Notify(cancel.clone())),
            },
        );
        // Unlisted however the run ends, the session's request dropped included.
        let _listed = Unlist { runs: self, run: &run };
        let out = tokio::select! {
            out = execute(&self.dispatcher, pipeline, inputs, Some(steps), &run) => out,
            _ = cancel.notified() => Err(run_cancelled(&run)),
        };
        out.map_err(|e| e.with_session(session))
    }
}
