//! A zygote: one Python process per pool that has imported DSPy and the
//! pool's modules once, and forks ready workers on request.
//!
//! A cold worker start costs `import dspy` (most of a second of CPU and
//! ~50 MB of private memory); a fork of a process that has already imported
//! it costs milliseconds and shares those pages copy-on-write. The zygote
//! (`python -m dspex_worker.zygote`) is started like a worker — same
//! interpreter, environment, limits — with a `SOCK_SEQPACKET` control
//! socket instead of protocol pipes. For each [`Zygote::fork`] the runtime
//! creates the worker's four pipes (requests, responses, stdout, stderr),
//! sends the child's ends over the socket (`SCM_RIGHTS`; a fifth descriptor
//! when the worker's LM calls go through the runtime: its LM connector,
//! see `worker::lm`) and gets the new
//! pid back; the child is then an ordinary worker on those pipes, in its own
//! process group, with its own limits and heartbeats.
//!
//! The zygote is the forked workers' parent, so it reaps them and reports
//! each exit over the socket; [`Zygote::fork`] hands the report to the
//! worker's monitor as a cold child's `wait` would. Forked workers die with
//! the zygote (their parent-death signal) and the zygote with the runtime
//! (its parent-death signal, tied to the spawner thread, and EOF on the
//! control socket).
//!
//! A zygote that is not single-threaded once its imports are done (a module
//! started a thread, a C extension started OS threads, a loop is running)
//! refuses to fork and says why ([`Zygote::refusal`]); callers start workers
//! cold instead.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dspex_core::{Error, ErrorKind, Result, Value};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use crate::process::{self, SpawnSpec};
use crate::worker::{into_receiver, pump_lines, ExitInfo, OutputTail, ProcessName, WorkerConfig};

/// How a forked worker ended, as its zygote reported it: exit code or signal.
pub(crate) type RawExit = (Option<i32>, Option<i32>);

enum ForkReply {
    Forked(u32),
    Refused(String),
    Failed(String),
}

#[derive(Default)]
struct Exits {
    waiting: HashMap<u32, oneshot::Sender<RawExit>>,
    /// Exits reported before anyone waited for them.
    early: HashMap<u32, RawExit>,
}

struct Inner {
    name: String,
    pid: u32,
    pgid: i32,
    control: OwnedFd,
    refusal: Option<String>,
    fork_lock: tokio::sync::Mutex<()>,
    pending: Arc<Mutex<Option<oneshot::Sender<ForkReply>>>>,
    exits: Arc<Mutex<Exits>>,
    exit: watch::Receiver<Option<ExitInfo>>,
    forks: std::sync::atomic::AtomicU64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        process::signal_group(self.pgid, libc::SIGKILL);
    }
}

/// A running zygote. Cheap to clone; killed (with its workers) when the
/// last handle is dropped.
#[derive(Clone)]
pub struct Zygote {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Zygote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Zygote").field("name", &self.inner.name).field("pid", &self.inner.pid).finish()
    }
}

/// The runtime's ends of a forked worker.
pub(crate) struct Forked {
    pub pid: u32,
    pub requests: OwnedFd,
    pub responses: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    pub exit: oneshot::Receiver<RawExit>,
}

fn zygote_error(name: &str, kind: ErrorKind, msg: impl Into<String>) -> Error {
    Error::new(kind, msg).with_worker(name.to_string())
}

impl Zygote {
    /// Start the zygote for workers like `template` (its interpreter,
    /// environment, modules and limits) and wait until it has imported
    /// everything. `name` is the zygote's node name (`zygote:POOL`).
    pub async fn start(name: impl Into<String>, template: &WorkerConfig) -> Result<Zygote> {
        let name = name.into();
        let (ours, theirs) = process::seqpacket_pair()?;
        let mut env = template.environment(-1, -1);
        env.retain(|(k, _)| !matches!(k.to_str(), Some("DSPEX_REQ_FD" | "DSPEX_RESP_FD" | "DSPEX_WORKER_ID")));
        env.push(("DSPEX_WORKER_ID".into(), name.clone().into()));
        env.push(("DSPEX_ZYGOTE_FD".into(), theirs.as_raw_fd().to_string().into()));
        let spec = SpawnSpec {
            program: template.python.clone(),
            args: vec!["-m".into(), "dspex_worker.zygote".into()],
            env,
            inherit: vec![theirs.as_raw_fd()],
            limits: template.limits.clone(),
        };
        let started = Instant::now();
        let spawned = tokio::task::spawn_blocking(move || process::spawn(spec))
            .await
            .map_err(|e| Error::internal(format!("spawn task failed: {e}")))??;
        drop(theirs);
        let (pid, pgid) = (spawned.pid, spawned.pgid);
        let mut child = spawned.child;
        if let Some(reg) = &template.registry {
            if let Err(e) = reg.add_worker(pid, pgid) {
                warn!(zygote = %name, error = %e, "cannot record the zygote in the run registry");
            }
        }
        let tail = OutputTail::default();
        for (out, is_stderr) in
            [(child.stdout.take().map(OwnedFd::from), false), (child.stderr.take().map(OwnedFd::from), true)]
        {
            if let Some(Ok(r)) = out.map(into_receiver) {
                pump_lines(r, ProcessName::new(&name), tail.clone(), is_stderr);
            }
        }

        // The control socket: one reader thread, for the life of the zygote.
        let (ready_tx, mut ready_rx) = mpsc::channel::<Value>(1);
        let pending: Arc<Mutex<Option<oneshot::Sender<ForkReply>>>> = Arc::default();
        let exits: Arc<Mutex<Exits>> = Arc::default();
        let control = ours.try_clone().map_err(|e| Error::new(ErrorKind::Io, format!("control socket: {e}")))?;
        {
            let (pending, exits, name) = (pending.clone(), exits.clone(), name.clone());
            std::thread::Builder::new()
                .name(format!("dspex-{name}"))
                .spawn(move || read_control(control, ready_tx, pending, exits, name))
                .map_err(|e| Error::new(ErrorKind::Io, format!("cannot start the zygote's reader thread: {e}")))?;
        }
        let (exit_tx, exit_rx) = watch::channel(None);
        {
            let (name, registry) = (name.clone(), template.registry.clone());
            tokio::spawn(async move {
                let status = tokio::task::spawn_blocking(move || child.wait()).await.ok().and_then(|r| r.ok());
                use std::os::unix::process::ExitStatusExt;
                let info = ExitInfo {
                    code: status.and_then(|s| s.code()),
                    signal: status.and_then(|s| s.signal()),
                    reason: "the zygote exited".into(),
                };
                info!(zygote = %name, pid, how = %info.describe(), "zygote exited");
                // Its workers die with it (their parent-death signal).
                process::signal_group(pgid, libc::SIGKILL);
                if let Some(reg) = &registry {
                    let _ = reg.remove_worker(pid);
                }
                exit_tx.send_replace(Some(info));
            });
        }
        let ready = match tokio::time::timeout(template.start_timeout, ready_rx.recv()).await {
            Ok(Some(v)) => v,
            Ok(None) => {
                process::signal_group(pgid, libc::SIGKILL);
                tokio::time::sleep(Duration::from_millis(100)).await;
                let tail = tail.lock().iter().cloned().collect::<Vec<_>>().join("\n");
                return Err(zygote_error(
                    &name,
                    ErrorKind::Config,
                    format!("zygote {name} ended during start-up; its last output:\n{tail}"),
                ));
            }
            Err(_) => {
                process::signal_group(pgid, libc::SIGKILL);
                return Err(zygote_error(
                    &name,
                    ErrorKind::Timeout,
                    format!("zygote {name} was not ready within {:?}", template.start_timeout),
                ));
            }
        };
        let refusal = match ready.get("forkable").and_then(Value::as_bool) {
            Some(true) => None,
            _ => Some(ready.get("reason").and_then(Value::as_str).unwrap_or("it did not say why").to_string()),
        };
        match &refusal {
            None => info!(zygote = %name, pid, ready_ms = started.elapsed().as_millis() as u64, "zygote ready"),
            Some(why) => warn!(zygote = %name, pid, reason = %why, "the zygote cannot fork safely; workers start cold"),
        }
        Ok(Zygote {
            inner: Arc::new(Inner {
                name,
                pid,
                pgid,
                control: ours,
                refusal,
                fork_lock: tokio::sync::Mutex::new(()),
                pending,
                exits,
                exit: exit_rx,
                forks: std::sync::atomic::AtomicU64::new(0),
            }),
        })
    }

    /// The zygote's node name (`zygote:POOL`).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The zygote's process id.
    pub fn pid(&self) -> u32 {
        self.inner.pid
    }

    /// Why the zygote will not fork (it was not single-threaded after its
    /// imports), or `None` when it forks.
    pub fn refusal(&self) -> Option<&str> {
        self.inner.refusal.as_deref()
    }

    /// Workers forked so far.
    pub fn forks(&self) -> u64 {
        self.inner.forks.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the zygote process is still running.
    pub fn is_alive(&self) -> bool {
        self.inner.exit.borrow().is_none()
    }

    /// Wait until the zygote has exited.
    pub async fn exited(&self) -> ExitInfo {
        let mut rx = self.inner.exit.clone();
        loop {
            if let Some(info) = rx.borrow_and_update().clone() {
                return info;
            }
            if rx.changed().await.is_err() {
                return ExitInfo { code: None, signal: None, reason: "the zygote's monitor ended".into() };
            }
        }
    }

    /// `SIGKILL` the zygote (its forked workers die with it). For tests and
    /// the console.
    pub fn crash(&self) {
        process::signal_group(self.inner.pgid, libc::SIGKILL);
    }

    /// Fork a worker configured like `config` (its name, concurrency, frame
    /// size and limits; the environment and modules are the zygote's), with
    /// `lm_connector` as its LM connector when it has one.
    pub(crate) async fn fork(&self, config: &WorkerConfig, lm_connector: Option<&OwnedFd>) -> Result<Forked> {
        let name = &config.name;
        if let Some(why) = &self.inner.refusal {
            return Err(zygote_error(name, ErrorKind::Unsupported, format!("zygote refuses to fork: {why}")));
        }
        if !self.is_alive() {
            return Err(zygote_error(name, ErrorKind::WorkerCrashed, format!("zygote {} is gone", self.inner.name)));
        }
        let _one_at_a_time = self.inner.fork_lock.lock().await;
        let (req_r, req_w) = process::pipe()?;
        let (resp_r, resp_w) = process::pipe()?;
        let (out_r, out_w) = process::pipe()?;
        let (err_r, err_w) = process::pipe()?;
        process::set_pipe_size(&req_w, config.pipe_size);
        process::set_pipe_size(&resp_w, config.pipe_size);
        let limits = &config.limits;
        let mut env = serde_json::json!({
            "DSPEX_WORKER_ID": config.name,
            "DSPEX_WORKER_CONCURRENCY": config.concurrency.to_string(),
            "DSPEX_MAX_FRAME": config.max_frame.to_string(),
            "DSPEX_WORKER_SPIN_US": config.spin.as_micros().to_string(),
        });
        // Per-worker GPU placement (the zygote's own environment is shared).
        if let (Some(d), Some(e)) = (&config.cuda_visible_devices, env.as_object_mut()) {
            e.insert("CUDA_VISIBLE_DEVICES".into(), Value::String(d.clone()));
        }
        let msg = serde_json::json!({
            "op": "fork",
            "env": env,
            "limits": {
                "address_space": limits.address_space,
                "nice": limits.nice,
                "cpu_affinity": limits.cpu_affinity,
            },
        });
        let (tx, rx) = oneshot::channel();
        *self.inner.pending.lock() = Some(tx);
        let mut fds: Vec<RawFd> = vec![req_r.as_raw_fd(), resp_w.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()];
        fds.extend(lm_connector.map(|fd| fd.as_raw_fd()));
        process::send_with_fds(&self.inner.control, msg.to_string().as_bytes(), &fds).map_err(|e| {
            zygote_error(name, ErrorKind::WorkerCrashed, format!("cannot ask zygote {} to fork: {e}", self.inner.name))
        })?;
        // The child has its copies now.
        drop((req_r, resp_w, out_w, err_w));
        let reply = tokio::time::timeout(Duration::from_secs(10), rx).await;
        let pid = match reply {
            Ok(Ok(ForkReply::Forked(pid))) => pid,
            Ok(Ok(ForkReply::Refused(why))) => {
                return Err(zygote_error(name, ErrorKind::Unsupported, format!("zygote refused to fork: {why}")))
            }
            Ok(Ok(ForkReply::Failed(why))) => {
                return Err(zygote_error(name, ErrorKind::Protocol, format!("zygote could not fork: {why}")))
            }
            Ok(Err(_)) => {
                return Err(zygote_error(
                    name,
                    ErrorKind::WorkerCrashed,
                    format!("zygote {} died during a fork", self.inner.name),
                ))
            }
            Err(_) => {
                self.inner.pending.lock().take();
                return Err(zygote_error(
                    name,
                    ErrorKind::Timeout,
                    format!("zygote {} did not fork within 10 s", self.inner.name),
                ));
            }
        };
        self.inner.forks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (exit_tx, exit_rx) = oneshot::channel();
        {
            let mut exits = self.inner.exits.lock();
            match exits.early.remove(&pid) {
                Some(status) => {
                    let _ = exit_tx.send(status);
                }
                None => {
                    exits.waiting.insert(pid, exit_tx);
                }
            }
        }
        Ok(Forked { pid, requests: req_w, responses: resp_r, stdout: out_r, stderr: err_r, exit: exit_rx })
    }
}

/// The zygote's control messages: fork replies to the waiting fork, exit
/// reports to the workers' monitors, the first `ready` to `start`.
fn read_control(
    control: OwnedFd,
    ready: mpsc::Sender<Value>,
    pending: Arc<Mutex<Option<oneshot::Sender<ForkReply>>>>,
    exits: Arc<Mutex<Exits>>,
    name: String,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match process::recv_message(&control, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let msg: Value = match serde_json::from_slice(&buf[..n]) {
            Ok(v) => v,
            Err(e) => {
                warn!(zygote = %name, error = %e, "undecodable control message from the zygote");
                continue;
            }
        };
        let reply = |r: ForkReply| {
            if let Some(tx) = pending.lock().take() {
                let _ = tx.send(r);
            }
        };
        let text = |k: &str| msg.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        match msg.get("op").and_then(Value::as_str) {
            Some("ready") => {
                let _ = ready.blocking_send(msg.clone());
            }
            Some("forked") => match msg.get("pid").and_then(Value::as_u64) {
                Some(pid) => reply(ForkReply::Forked(pid as u32)),
                None => reply(ForkReply::Failed("a fork reply without a pid".into())),
            },
            Some("refused") => reply(ForkReply::Refused(text("reason"))),
            Some("error") => reply(ForkReply::Failed(text("message"))),
            Some("exit") => {
                let Some(pid) = msg.get("pid").and_then(Value::as_u64).map(|p| p as u32) else { continue };
                let as_i32 = |k: &str| msg.get(k).and_then(Value::as_i64).map(|v| v as i32);
                let status = (as_i32("code"), as_i32("signal"));
                let mut exits = exits.lock();
                match exits.waiting.remove(&pid) {
                    Some(tx) => {
                        let _ = tx.send(status);
                    }
                    None => {
                        exits.early.insert(pid, status);
                    }
                }
            }
            other => warn!(zygote = %name, op = ?other, "unexpected control message from the zygote"),
        }
    }
    // The zygote is gone: nobody will report the remaining exits.
    pending.lock().take();
    exits.lock().waiting.clear();
}
