//! One Python worker process and the requests in flight on it.
//!
//! [`Worker::spawn`] starts `python -m dspex_worker` with two dedicated pipes
//! (requests in, responses out), waits for its `hello`, and returns a handle
//! that is *ready*. Requests are correlated by id; many may be in flight at
//! once. A reader task owns the response pipe: it never waits on anything but
//! the pipe (streams apply backpressure through bounded channels), so a slow
//! caller cannot stall the dispatcher.
//!
//! Failures are always classified, never hangs:
//! - the process dies → every in-flight request fails with `WorkerCrashed`
//!   (retryable) at once;
//! - the worker breaks the protocol (oversize frame, unknown codec tag,
//!   undecodable payload, unexpected id) → the worker is killed and its
//!   requests fail with `Protocol`;
//! - a request's deadline passes → the caller gets `Timeout`, the worker is
//!   told to cancel, and if the request is still running after the hung-grace
//!   period the worker is killed (a pool then replaces it).

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use dspex_core::{Error, ErrorKind, Result, Value};
use futures_util::Stream;
use parking_lot::{Mutex, RwLock};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn, Instrument};

use crate::process::{self, SpawnSpec};
use crate::protocol::{
    decode_frame, decode_reply, encode_chosen, encode_frame, Codec, CodecChoice, Hello, Message, PROTOCOL_VERSION,
};
use crate::runs::RunRegistry;
use crate::zygote::RawExit;

mod config;
mod lm;

pub use config::{CallOptions, ExitInfo, StreamItem, WorkerConfig, DEFAULT_ENV_ALLOWLIST};
pub use lm::{LmAnswer, LmBody, LmCall, LmGateway, LmScopeToken};

enum Slot {
    Call(oneshot::Sender<Result<Value>>),
    Stream(mpsc::Sender<Result<StreamItem>>),
}

const READY: u8 = 0;
const STOPPING: u8 = 1;
const BROKEN: u8 = 2;
const EXITED: u8 = 3;

struct Shared {
    name: ProcessName,
    pid: u32,
    pgid: i32,
    hello: Hello,
    /// How requests are encoded unless a call says otherwise.
    codec: CodecChoice,
    /// Both ends read Arrow: the worker said so in its hello, and this
    /// build has the `arrow` feature.
    arrow_ok: bool,
    max_frame: usize,
    hung_grace: Duration,
    writer: Arc<tokio::sync::Mutex<pipe::Sender>>,
    pending: Mutex<HashMap<u64, Slot>>,
    /// Requests the caller gave up on: their late answers are dropped, not protocol errors.
    abandoned: Mutex<(HashSet<u64>, VecDeque<u64>)>,
    pings: Mutex<HashMap<u64, oneshot::Sender<u64>>>,
    next_id: AtomicU64,
    next_ping: AtomicU64,
    state: AtomicU8,
    /// Why the worker stopped being ready (set once).
    failure: Mutex<Option<Error>>,
    exit: watch::Sender<Option<ExitInfo>>,
    /// Set (to why) when the worker stops taking requests: its output
    /// closed, the protocol broke, it was killed — before the exit is reaped.
    closed: watch::Sender<Option<String>>,
    stderr_tail: OutputTail,
    completed: AtomicU64,
    /// Frames written and read, by codec tag.
    frames: FrameCounts,
    /// The LM scope of each request that has one, by request id.
    lm_scopes: Mutex<HashMap<u64, LmScopeToken>>,
    /// The task serving the worker's LM connections (see `lm`).
    lm_connections: Mutex<Option<tokio::task::AbortHandle>>,
    registry: Option<Arc<RunRegistry>>,
    /// Forked from a zygote (not started cold).
    forked: bool,
}

/// Frames a worker's pipes carried, by codec: what the codec choice did.
#[derive(Debug, Default)]
struct FrameCounts {
    sent: [AtomicU64; 3],
    received: [AtomicU64; 3],
}

/// How many frames went to and came from a worker in each codec
/// (indexed by tag: JSON, MessagePack, Arrow).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CodecCounts {
    /// Frames written to the worker.
    pub sent: [u64; 3],
    /// Frames read from the worker.
    pub received: [u64; 3],
}

impl CodecCounts {
    /// Frames in `codec` either way.
    pub fn of(&self, codec: Codec) -> (u64, u64) {
        let i = codec.tag() as usize;
        (self.sent[i], self.received[i])
    }
}

const ABANDONED_MAX: usize = 4096;
const STDERR_TAIL: usize = 40;

impl Shared {
    /// Write one encoded frame. A frame is never left half-written: what
    /// the pipe takes at once is written here, and a remainder (a large
    /// frame, or a worker that is behind on reading) is written by a task
    /// of its own, which finishes the frame even if this caller gives up
    /// meanwhile — otherwise the worker would read the next frame as the
    /// rest of this one.
    async fn write_frame(&self, codec: Codec, frame: Vec<u8>) -> Result<()> {
        // The worker would refuse it and the whole process with it: a
        // request over the limit is the caller's error, found here.
        let body = frame.len().saturating_sub(4);
        if body > self.max_frame {
            return Err(self.worker_error(
                ErrorKind::InvalidRequest,
                format!(
                    "a request of {body} bytes is over the worker's frame limit of {} bytes (the pool's `max_frame_mb`)",
                    self.max_frame
                ),
            ));
        }
        self.frames.sent[codec.tag() as usize].fetch_add(1, Ordering::Relaxed);
        let broken = |e: std::io::Error| {
            self.worker_error(ErrorKind::WorkerCrashed, format!("cannot write to worker {}: {e}", self.name))
                .with_retryable(true)
        };
        let mut w = self.writer.clone().lock_owned().await;
        let mut written = 0;
        while written < frame.len() {
            match w.try_write(&frame[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(broken(e)),
            }
        }
        if written == frame.len() {
            return Ok(());
        }
        let rest = tokio::spawn(async move { w.write_all(&frame[written..]).await });
        match rest.await {
            Ok(result) => result.map_err(broken),
            Err(e) => Err(broken(std::io::Error::other(e.to_string()))),
        }
    }

    fn tail(&self) -> String {
        let t = self.stderr_tail.lock();
        t.iter().rev().take(8).rev().cloned().collect::<Vec<_>>().join("\n")
    }

    fn worker_error(&self, kind: ErrorKind, msg: impl Into<String>) -> Error {
        Error::new(kind, msg).with_worker(self.name.to_string())
    }

    /// Stop accepting requests and fail every pending one with `err`.
    fn fail_all(&self, state: u8, err: Error) {
        {
            let mut failure = self.failure.lock();
            if failure.is_none() {
                *failure = Some(err.clone());
            }
        }
        self.state.store(state, Ordering::SeqCst);
        if self.closed.borrow().is_none() {
            self.closed.send_replace(Some(err.message().to_string()));
        }
        self.lm_scopes.lock().clear();
        if let Some(task) = self.lm_connections.lock().take() {
            task.abort();
        }
        let drained: Vec<Slot> = self.pending.lock().drain().map(|(_, s)| s).collect();
        for slot in drained {
            match slot {
                Slot::Call(tx) => {
                    let _ = tx.send(Err(err.clone()));
                }
                Slot::Stream(tx) => {
                    let _ = tx.try_send(Err(err.clone()));
                }
            }
        }
        self.pings.lock().clear();
    }

    fn abandon(&self, id: u64) {
        let mut a = self.abandoned.lock();
        if a.0.insert(id) {
            a.1.push_back(id);
            if a.1.len() > ABANDONED_MAX {
                if let Some(old) = a.1.pop_front() {
                    a.0.remove(&old);
                }
            }
        }
    }

    fn settle_abandoned(&self, id: u64) -> bool {
        self.abandoned.lock().0.remove(&id)
    }

    fn not_ready_error(&self) -> Error {
        match self.failure.lock().clone() {
            Some(e) => e,
            None => self
                .worker_error(ErrorKind::WorkerCrashed, format!("worker {} is stopping", self.name))
                .with_retryable(true),
        }
    }

    fn kill(&self) {
        process::signal_group(self.pgid, libc::SIGKILL);
    }
}

/// A running worker. Cheap to clone; the process is killed when the last
/// handle is dropped (call [`Worker::stop`] for a graceful end).
#[derive(Clone)]
pub struct Worker {
    inner: Arc<Handle>,
}

struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        if self.shared.state.load(Ordering::SeqCst) != EXITED {
            self.shared.kill();
        }
    }
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("name", &self.inner.shared.name.get())
            .field("pid", &self.inner.shared.pid)
            .finish()
    }
}

fn into_sender(fd: OwnedFd) -> Result<pipe::Sender> {
    process::set_nonblocking(&fd)?;
    pipe::Sender::from_owned_fd(fd).map_err(Error::from)
}

pub(crate) fn into_receiver(fd: OwnedFd) -> Result<pipe::Receiver> {
    process::set_nonblocking(&fd)?;
    pipe::Receiver::from_owned_fd(fd).map_err(Error::from)
}

/// Read one frame body (tag + payload); `Ok(None)` at a clean end of input.
async fn read_frame<R: tokio::io::AsyncRead + Unpin>(r: &mut R, max_frame: usize) -> Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let n = u32::from_be_bytes(len) as usize;
    if n == 0 || n > max_frame {
        return Err(Error::new(ErrorKind::Protocol, format!("frame of {n} bytes is outside 1..={max_frame}")));
    }
    let mut body = vec![0u8; n];
    r.read_exact(&mut body)
        .await
        .map_err(|e| Error::new(ErrorKind::Protocol, format!("output ended inside a frame of {n} bytes: {e}")))?;
    Ok(Some(body))
}

/// A process's name as its log lines and errors show it; shared with the
/// output pumps, so a renamed worker's later lines carry the new name.
#[derive(Clone)]
pub(crate) struct ProcessName(Arc<RwLock<Arc<str>>>);

impl ProcessName {
    pub(crate) fn new(name: &str) -> ProcessName {
        ProcessName(Arc::new(RwLock::new(Arc::from(name))))
    }

    pub(crate) fn get(&self) -> Arc<str> {
        self.0.read().clone()
    }

    fn set(&self, name: &str) {
        *self.0.write() = Arc::from(name);
    }
}

impl std::fmt::Display for ProcessName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.get())
    }
}

/// The last lines a process wrote to stderr, for error messages.
pub(crate) type OutputTail = Arc<Mutex<VecDeque<String>>>;

/// A Python process's stdout or stderr, line by line, into `tracing`
/// (target `dspex::python`, the process named `worker`, log levels taken
/// from the worker's log-line prefix); stderr's last lines kept in `tail`.
/// Workers and zygotes both.
pub(crate) fn pump_lines<R: tokio::io::AsyncRead + Unpin + Send + 'static>(
    reader: R,
    name: ProcessName,
    tail: OutputTail,
    is_stderr: bool,
) {
    tokio::spawn(async move {
        let mut reader = BufReader::new(reader);
        let mut buf = Vec::new();
        while let Ok(Some(line)) = next_output_line(&mut reader, &mut buf).await {
            let name = name.get();
            let worker = &*name;
            if is_stderr {
                {
                    let mut t = tail.lock();
                    t.push_back(line.clone());
                    if t.len() > STDERR_TAIL {
                        t.pop_front();
                    }
                }
                if line.starts_with("ERROR ") || line.starts_with("CRITICAL ") {
                    error!(target: "dspex::python", worker, "{line}");
                } else if line.starts_with("WARNING ") {
                    warn!(target: "dspex::python", worker, "{line}");
                } else if line.starts_with("INFO ") {
                    info!(target: "dspex::python", worker, "{line}");
                } else if line.starts_with("DEBUG ") {
                    debug!(target: "dspex::python", worker, "{line}");
                } else {
                    warn!(target: "dspex::python", worker, stream = "stderr", "{line}");
                }
            } else {
                info!(target: "dspex::python", worker, stream = "stdout", "{line}");
            }
        }
    });
}

/// The longest output line kept; the rest of a longer one is dropped (and
/// counted), so a process that writes without newlines costs bounded memory.
const MAX_OUTPUT_LINE: usize = 16 * 1024;

/// The next line of a process's output, at most [`MAX_OUTPUT_LINE`] bytes
/// of it, decoded lossily (bytes that are not UTF-8 must not stop the pump:
/// the process would block on a full pipe). `None` at the end of output.
async fn next_output_line<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<String>> {
    buf.clear();
    let mut dropped = 0usize;
    let mut ended = false;
    loop {
        let chunk = reader.fill_buf().await?;
        if chunk.is_empty() {
            ended = true;
            break;
        }
        let (part, done) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (&chunk[..i], i + 1),
            None => (chunk, chunk.len()),
        };
        let room = MAX_OUTPUT_LINE.saturating_sub(buf.len());
        buf.extend_from_slice(&part[..part.len().min(room)]);
        dropped += part.len().saturating_sub(room);
        let newline = done > part.len();
        reader.consume(done);
        if newline {
            break;
        }
    }
    if ended && buf.is_empty() && dropped == 0 {
        return Ok(None);
    }
    let mut line = String::from_utf8_lossy(buf).into_owned();
    if dropped > 0 {
        line.push_str(&format!(" … ({dropped} more bytes dropped)"));
    }
    Ok(Some(line))
}

/// How the runtime learns that a worker process ended: its own child's
/// `wait`, or the zygote's report for a forked one.
enum Process {
    Child(std::process::Child),
    Forked(oneshot::Receiver<RawExit>),
}

impl Process {
    /// Wait up to `grace` for the process to end by itself, then kill its
    /// group and wait for that; how it ended, when known.
    async fn reap(self, pgid: i32, grace: Duration) -> Option<RawExit> {
        use std::os::unix::process::ExitStatusExt;
        match self {
            Process::Child(mut child) => tokio::task::spawn_blocking(move || {
                let until = Instant::now() + grace;
                let status = loop {
                    match child.try_wait() {
                        Ok(Some(s)) => break Some(s),
                        Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(5)),
                        Ok(None) => {
                            process::signal_group(pgid, libc::SIGKILL);
                            break child.wait().ok();
                        }
                        Err(_) => break None,
                    }
                };
                status.map(|s| (s.code(), s.signal()))
            })
            .await
            .ok()
            .flatten(),
            Process::Forked(mut exit) => {
                if let Ok(status) = tokio::time::timeout(grace, &mut exit).await {
                    return status.ok();
                }
                process::signal_group(pgid, libc::SIGKILL);
                // The zygote reaps it and reports; if the zygote is gone
                // too, nobody will.
                tokio::time::timeout(Duration::from_secs(2), exit).await.ok().and_then(|r| r.ok())
            }
        }
    }
}

fn describe_raw((code, signal): RawExit) -> String {
    ExitInfo { code, signal, reason: String::new() }.describe()
}

/// A started worker process and the runtime's ends of its pipes.
struct Launched {
    pid: u32,
    pgid: i32,
    requests: OwnedFd,
    responses: OwnedFd,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    process: Process,
    forked: bool,
}

/// `python -m dspex_worker` from scratch; `lm_connector` is the worker's
/// end of its LM connector, when its LM calls go through the runtime.
async fn launch_cold(config: &WorkerConfig, lm_connector: Option<&OwnedFd>) -> Result<Launched> {
    let (req_r, req_w) = process::pipe()?;
    let (resp_r, resp_w) = process::pipe()?;
    process::set_pipe_size(&req_w, config.pipe_size);
    process::set_pipe_size(&resp_w, config.pipe_size);
    use std::os::fd::AsRawFd;
    let (child_req, child_resp) = (req_r.as_raw_fd(), resp_w.as_raw_fd());
    let child_lm = lm_connector.map(|fd| fd.as_raw_fd());
    let mut env = config.environment(child_req, child_resp);
    if let Some(fd) = child_lm {
        env.push((lm::CONNECTOR_ENV.into(), fd.to_string().into()));
    }
    let spec = SpawnSpec {
        program: config.python.clone(),
        args: config.args.clone(),
        env,
        inherit: [child_req, child_resp].into_iter().chain(child_lm).collect(),
        limits: config.limits.clone(),
    };
    let spawned = tokio::task::spawn_blocking(move || process::spawn(spec))
        .await
        .map_err(|e| Error::internal(format!("spawn task failed: {e}")))??;
    // The child has its ends now.
    drop(req_r);
    drop(resp_w);
    let mut child = spawned.child;
    Ok(Launched {
        pid: spawned.pid,
        pgid: spawned.pgid,
        requests: req_w,
        responses: resp_r,
        stdout: child.stdout.take().map(OwnedFd::from),
        stderr: child.stderr.take().map(OwnedFd::from),
        process: Process::Child(child),
        forked: false,
    })
}

impl Worker {
    /// Start a worker and wait until it is ready (its `hello` arrived):
    /// forked from the config's zygote when it has one, else (or when the
    /// zygote refuses or fails) a cold start.
    pub async fn spawn(config: WorkerConfig) -> Result<Worker> {
        Worker::start(config, true).await
    }

    /// Fork a worker from the config's zygote, never cold: for standby
    /// workers, which are only worth keeping if they cost a fork. Fails with
    /// `WorkerCrashed` without a zygote or when it refuses or fails.
    pub async fn fork(config: WorkerConfig) -> Result<Worker> {
        if config.zygote.is_none() {
            return Err(Error::new(ErrorKind::Config, format!("worker {} has no zygote to fork from", config.name))
                .with_worker(config.name.clone()));
        }
        Worker::start(config, false).await
    }

    async fn start(config: WorkerConfig, cold_fallback: bool) -> Result<Worker> {
        let started = Instant::now();
        // The LM connector: (the runtime's end, the worker's).
        let lm_connector = match config.lm_gateway {
            Some(_) => {
                let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
                Some((OwnedFd::from(ours), OwnedFd::from(theirs)))
            }
            None => None,
        };
        let child_lm = lm_connector.as_ref().map(|(_, theirs)| theirs);
        let launched = match &config.zygote {
            Some(z) => match z.fork(&config, child_lm).await {
                Ok(f) => Launched {
                    pid: f.pid,
                    pgid: f.pid as i32,
                    requests: f.requests,
                    responses: f.responses,
                    stdout: Some(f.stdout),
                    stderr: Some(f.stderr),
                    process: Process::Forked(f.exit),
                    forked: true,
                },
                Err(e) if !cold_fallback => return Err(e),
                Err(e) => {
                    warn!(worker = %config.name, zygote = %z.name(), error = %e, "fork failed; starting the worker cold");
                    launch_cold(&config, child_lm).await?
                }
            },
            None => launch_cold(&config, child_lm).await?,
        };
        // The worker has its end now.
        let lm_connector = lm_connector.map(|(ours, _)| ours);
        let Launched { pid, pgid, requests, responses, stdout, stderr, process: proc_handle, forked } = launched;
        if let Some(reg) = &config.registry {
            if let Err(e) = reg.add_worker(pid, pgid) {
                warn!(worker = %config.name, error = %e, "cannot record the worker in the run registry");
            }
        }
        let stdout = stdout.map(into_receiver);
        let stderr = stderr.map(into_receiver);
        let writer = into_sender(requests)?;
        let mut reader = BufReader::with_capacity(256 * 1024, into_receiver(responses)?);

        let hello_frame = tokio::time::timeout(config.start_timeout, read_frame(&mut reader, config.max_frame)).await;
        let tail_from = |stderr: Option<Result<pipe::Receiver>>| async move {
            let mut text = String::new();
            if let Some(Ok(mut r)) = stderr {
                let _ = tokio::time::timeout(Duration::from_secs(2), r.read_to_string(&mut text)).await;
            }
            text.lines().rev().take(12).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
        };
        let fail = |kind: ErrorKind, msg: String| Error::new(kind, msg).with_worker(config.name.clone());
        let hello = match hello_frame {
            Err(_) => {
                proc_handle.reap(pgid, Duration::ZERO).await;
                return Err(fail(
                    ErrorKind::Timeout,
                    format!("worker {} did not say hello within {:?}", config.name, config.start_timeout),
                ));
            }
            Ok(Ok(Some(body))) => match decode_frame(&body) {
                Ok((_, Message::Hello(h))) => h,
                Ok((_, other)) => {
                    proc_handle.reap(pgid, Duration::ZERO).await;
                    return Err(fail(ErrorKind::Protocol, format!("worker's first message was not hello: {other:?}")));
                }
                Err(e) => {
                    proc_handle.reap(pgid, Duration::ZERO).await;
                    return Err(fail(ErrorKind::Protocol, format!("worker's hello is broken: {}", e.message())));
                }
            },
            Ok(Ok(None)) | Ok(Err(_)) => {
                let tail = tail_from(stderr).await;
                let status = proc_handle.reap(pgid, Duration::from_secs(2)).await;
                let how = status.map(describe_raw).unwrap_or_else(|| "ended".into());
                return Err(fail(
                    ErrorKind::Config,
                    format!("worker {} {how} during start-up; its last output:\n{tail}", config.name),
                ));
            }
        };
        let arrow_ok = Codec::Arrow.is_available() && hello.codecs.iter().any(|c| c == "arrow");
        if hello.protocol != PROTOCOL_VERSION {
            proc_handle.reap(pgid, Duration::ZERO).await;
            return Err(fail(
                ErrorKind::Protocol,
                format!("worker speaks protocol {}, this runtime {}", hello.protocol, PROTOCOL_VERSION),
            ));
        }
        info!(worker = %config.name, pid, forked, ready_ms = started.elapsed().as_millis() as u64, dspy = ?hello.dspy, "worker ready");
        let (exit_tx, _) = watch::channel(None);
        let (closed_tx, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            name: ProcessName::new(&config.name),
            pid,
            pgid,
            hello,
            codec: config.codec,
            arrow_ok,
            max_frame: config.max_frame,
            hung_grace: config.hung_grace,
            writer: Arc::new(tokio::sync::Mutex::new(writer)),
            pending: Mutex::new(HashMap::new()),
            abandoned: Mutex::new((HashSet::new(), VecDeque::new())),
            pings: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            next_ping: AtomicU64::new(1),
            state: AtomicU8::new(READY),
            failure: Mutex::new(None),
            exit: exit_tx,
            closed: closed_tx,
            stderr_tail: OutputTail::default(),
            completed: AtomicU64::new(0),
            frames: FrameCounts::default(),
            lm_scopes: Mutex::new(HashMap::new()),
            lm_connections: Mutex::new(None),
            registry: config.registry.clone(),
            forked,
        });
        if let Some(Ok(r)) = stdout {
            pump_lines(r, shared.name.clone(), shared.stderr_tail.clone(), false);
        }
        if let Some(Ok(r)) = stderr {
            pump_lines(r, shared.name.clone(), shared.stderr_tail.clone(), true);
        }
        if let (Some(gateway), Some(connector)) = (config.lm_gateway.clone(), lm_connector) {
            match lm::serve_connector(shared.clone(), gateway, connector) {
                Ok(task) => *shared.lm_connections.lock() = Some(task),
                Err(e) => {
                    proc_handle.reap(pgid, Duration::ZERO).await;
                    return Err(e.with_worker(config.name.clone()));
                }
            }
        }
        tokio::spawn(read_loop(shared.clone(), reader, proc_handle));
        let worker = Worker { inner: Arc::new(Handle { shared }) };
        if let Some(every) = config.heartbeat {
            tokio::spawn(heartbeat(Arc::downgrade(&worker.inner), every));
        }
        Ok(worker)
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// The worker's name (what logs and errors call it).
    pub fn name(&self) -> String {
        self.shared().name.get().to_string()
    }

    /// Give the worker a new name — a standby worker taking a pool slot's
    /// place. Errors and the runtime's logs use it at once; the returned
    /// future tells Python (whose own log lines take it from then on) and
    /// fails if the worker does not answer within `timeout`.
    pub fn rename(&self, name: &str, timeout: Duration) -> impl Future<Output = Result<()>> + Send + 'static {
        self.shared().name.set(name);
        let (worker, name) = (self.clone(), name.to_string());
        async move {
            let opts = CallOptions { deadline: Some(Instant::now() + timeout), ..CallOptions::default() };
            worker.call("identify", serde_json::json!({ "name": name }), &opts).await.map(drop)
        }
    }

    /// The worker's process id.
    pub fn pid(&self) -> u32 {
        self.shared().pid
    }

    /// What the worker announced.
    pub fn hello(&self) -> &Hello {
        &self.shared().hello
    }

    /// Whether the worker accepts requests.
    pub fn is_ready(&self) -> bool {
        self.shared().state.load(Ordering::SeqCst) == READY
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.shared().pending.lock().len()
    }

    /// Requests answered so far.
    pub fn completed(&self) -> u64 {
        self.shared().completed.load(Ordering::Relaxed)
    }

    /// Frames sent and received so far, by codec.
    pub fn codec_counts(&self) -> CodecCounts {
        let f = &self.shared().frames;
        let load = |a: &[AtomicU64; 3]| [0, 1, 2].map(|i| a[i].load(Ordering::Relaxed));
        CodecCounts { sent: load(&f.sent), received: load(&f.received) }
    }

    /// The last lines the worker wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        self.shared().tail()
    }

    /// Write one frame. A frame is never left half-written: what the pipe
    /// takes at once is written here, and a remainder (a large frame, or a
    /// worker that is behind on reading) is written by a task of its own,
    /// which finishes the frame even if this caller gives up meanwhile —
    /// otherwise the worker would read the next frame as the rest of this one.
    async fn send(&self, codec: Codec, msg: &Message) -> Result<()> {
        self.write_frame(codec, encode_frame(codec, msg)?).await
    }

    /// Write one encoded frame (see [`Worker::send`]).
    async fn write_frame(&self, codec: Codec, frame: Vec<u8>) -> Result<()> {
        self.shared().write_frame(codec, frame).await
    }

    fn register(&self, slot: Slot) -> Result<u64> {
        let s = self.shared();
        let mut pending = s.pending.lock();
        // Checked under the lock `fail_all` drains: no request can slip in after it.
        if s.state.load(Ordering::SeqCst) != READY {
            return Err(s.not_ready_error());
        }
        let id = s.next_id.fetch_add(1, Ordering::Relaxed);
        pending.insert(id, slot);
        Ok(id)
    }

    /// The codec of control messages (pings, cancels, shutdown).
    fn control_codec(&self) -> Codec {
        match self.shared().codec {
            CodecChoice::Json => Codec::Json,
            _ => Codec::MsgPack,
        }
    }

    /// A request's frame for a call, and the codec it is in: under `auto`
    /// the worker is told to pick its replies' codec the same way.
    fn request_frame(
        &self,
        id: u64,
        op: &str,
        args: Value,
        opts: &CallOptions,
        stream: bool,
    ) -> Result<(Codec, Vec<u8>)> {
        let s = self.shared();
        let choice = opts.codec.unwrap_or(s.codec);
        if choice == CodecChoice::Arrow && !s.arrow_ok {
            let why = if Codec::Arrow.is_available() {
                "its Python has no pyarrow"
            } else {
                "this build has no `arrow` feature"
            };
            return Err(s.worker_error(ErrorKind::Config, format!("worker {} cannot take Arrow frames: {why}", s.name)));
        }
        let mut msg = Self::request_message(id, op, args, opts, stream)?;
        if let Some(scope) = &opts.lm_scope {
            s.lm_scopes.lock().insert(id, scope.clone());
        }
        if let Message::Request { reply_codec, .. } = &mut msg {
            *reply_codec = (choice == CodecChoice::Auto && s.arrow_ok).then(|| "auto".to_string());
        }
        encode_chosen(choice, &msg, s.arrow_ok)
    }

    fn request_message(id: u64, op: &str, args: Value, opts: &CallOptions, stream: bool) -> Result<Message> {
        let deadline_ms = match opts.deadline {
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Some(left.as_millis().max(1) as u64),
                _ => return Err(Error::new(ErrorKind::Timeout, "deadline passed before the request was sent")),
            },
            None => None,
        };
        Ok(Message::Request {
            id,
            op: op.to_string(),
            session: opts.session.clone(),
            args,
            deadline_ms,
            trace_id: opts.trace_id.clone(),
            traceparent: dspex_core::trace::current().filter(|cx| cx.sampled).map(|cx| cx.to_traceparent()),
            stream,
            reply_codec: None,
        })
    }

    /// Give up on a request: drop its late answer, tell the worker to cancel,
    /// and kill the worker if the request is still running after the hung grace.
    fn give_up(&self, id: u64, codec: Codec, op: &str) {
        let s = self.shared().clone();
        if s.pending.lock().remove(&id).is_none() {
            return;
        }
        s.abandon(id);
        let worker = self.clone_weak();
        let op = op.to_string();
        tokio::spawn(async move {
            let started = Instant::now();
            if let Some(w) = worker.upgrade().map(|inner| Worker { inner }) {
                // Bounded: a worker that stopped reading its pipe is hung too.
                let codec = if codec == Codec::Arrow { Codec::MsgPack } else { codec };
                let _ = tokio::time::timeout(s.hung_grace, w.send(codec, &Message::Cancel { id })).await;
            }
            tokio::time::sleep(s.hung_grace.saturating_sub(started.elapsed())).await;
            let still_running = s.abandoned.lock().0.contains(&id);
            if still_running && s.state.load(Ordering::SeqCst) == READY {
                let msg = format!(
                    "request {id} ({op}) was still running {:?} after its deadline and a cancel; worker {} is hung",
                    s.hung_grace, s.name
                );
                warn!(worker = %s.name, request = id, "{msg}");
                s.fail_all(BROKEN, s.worker_error(ErrorKind::WorkerCrashed, msg).with_retryable(true));
                s.kill();
            }
        });
    }

    fn clone_weak(&self) -> std::sync::Weak<Handle> {
        Arc::downgrade(&self.inner)
    }

    /// Run command `op` with `args` (a map) and wait for its result.
    pub async fn call(&self, op: &str, args: Value, opts: &CallOptions) -> Result<Value> {
        // The transport phase: the worker's own spans (its command, DSPy's
        // modules and LM calls) are recorded as this span's children.
        let span = tracing::debug_span!("dspex.worker.call", op, worker = %self.name(), "otel.kind" = "client");
        self.call_in_span(op, args, opts).instrument(span).await
    }

    async fn call_in_span(&self, op: &str, args: Value, opts: &CallOptions) -> Result<Value> {
        let (tx, rx) = oneshot::channel();
        let id = self.register(Slot::Call(tx))?;
        let (codec, frame) = match self.request_frame(id, op, args, opts, false) {
            Ok(m) => m,
            Err(e) => {
                self.shared().pending.lock().remove(&id);
                return Err(e.with_worker(self.name()));
            }
        };
        // A caller that stops waiting (its future dropped: a cancelled
        // pipeline, a timeout above us) cancels the request in Python too.
        struct CancelOnDrop<'a> {
            worker: &'a Worker,
            id: u64,
            codec: Codec,
            op: &'a str,
            armed: bool,
        }
        impl Drop for CancelOnDrop<'_> {
            fn drop(&mut self) {
                if self.armed && tokio::runtime::Handle::try_current().is_ok() {
                    self.worker.give_up(self.id, self.codec, self.op);
                }
            }
        }
        let mut guard = CancelOnDrop { worker: self, id, codec, op, armed: true };
        if let Err(e) = self.write_frame(codec, frame).await {
            guard.armed = false;
            self.shared().pending.lock().remove(&id);
            return Err(e);
        }
        let outcome = match opts.deadline {
            Some(d) => match tokio::time::timeout_at(d.into(), rx).await {
                Ok(r) => r,
                Err(_) => {
                    guard.armed = false;
                    self.give_up(id, codec, op);
                    return Err(self
                        .shared()
                        .worker_error(ErrorKind::Timeout, format!("{op} did not finish before its deadline"))
                        .with_retryable(true));
                }
            },
            None => rx.await,
        };
        guard.armed = false;
        match outcome {
            Ok(r) => r,
            Err(_) => Err(self.shared().not_ready_error()),
        }
    }

    /// Run command `op` as a stream: its chunks, then its result.
    pub async fn stream(&self, op: &str, args: Value, opts: &CallOptions) -> Result<WorkerStream> {
        let span = tracing::debug_span!("dspex.worker.stream", op, worker = %self.name(), "otel.kind" = "client");
        self.stream_in_span(op, args, opts).instrument(span).await
    }

    async fn stream_in_span(&self, op: &str, args: Value, opts: &CallOptions) -> Result<WorkerStream> {
        let (tx, rx) = mpsc::channel(32);
        let id = self.register(Slot::Stream(tx))?;
        let (codec, frame) = match self.request_frame(id, op, args, opts, true) {
            Ok(m) => m,
            Err(e) => {
                self.shared().pending.lock().remove(&id);
                return Err(e.with_worker(self.name()));
            }
        };
        if let Err(e) = self.write_frame(codec, frame).await {
            self.shared().pending.lock().remove(&id);
            return Err(e);
        }
        Ok(WorkerStream {
            rx,
            id,
            op: op.to_string(),
            codec,
            worker: self.clone(),
            deadline: opts.deadline.map(|d| Box::pin(tokio::time::sleep_until(d.into()))),
            finished: false,
        })
    }

    /// Send a ping and wait for the pong (at most `timeout`); the round-trip time.
    pub async fn ping(&self, timeout: Duration) -> Result<Duration> {
        let s = self.shared();
        if s.state.load(Ordering::SeqCst) != READY {
            return Err(s.not_ready_error());
        }
        let seq = s.next_ping.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        s.pings.lock().insert(seq, tx);
        let started = Instant::now();
        // The write counts against the timeout: a worker that stopped reading
        // its pipe must not stall its own heartbeat.
        let answered = tokio::time::timeout(timeout, async {
            self.send(self.control_codec(), &Message::Ping { seq }).await?;
            Ok::<_, Error>(rx.await)
        })
        .await;
        match answered {
            Ok(Err(e)) => {
                s.pings.lock().remove(&seq);
                Err(e)
            }
            Ok(Ok(Ok(_))) => Ok(started.elapsed()),
            Ok(Ok(Err(_))) => Err(s.not_ready_error()),
            Err(_) => {
                s.pings.lock().remove(&seq);
                Err(s.worker_error(ErrorKind::Timeout, format!("no pong from {} within {timeout:?}", s.name)))
            }
        }
    }

    /// Wait until the worker stops taking requests (its output closed, the
    /// protocol broke, it was stopped or killed) and say why. This comes
    /// before [`Worker::exited`] — a killed process closes its pipes before
    /// the kernel has torn it down and it can be reaped — so a supervisor
    /// replaces it sooner.
    pub async fn closed(&self) -> String {
        let mut rx = self.shared().closed.subscribe();
        loop {
            if let Some(why) = rx.borrow_and_update().clone() {
                return why;
            }
            if rx.changed().await.is_err() {
                return "the worker's monitor ended".into();
            }
        }
    }

    /// Wait until the process has exited and been reaped.
    pub async fn exited(&self) -> ExitInfo {
        let mut rx = self.shared().exit.subscribe();
        loop {
            if let Some(info) = rx.borrow_and_update().clone() {
                return info;
            }
            if rx.changed().await.is_err() {
                return ExitInfo { code: None, signal: None, reason: "the worker's monitor ended".into() };
            }
        }
    }

    /// `SIGKILL` to the worker's process group, as a crash would: the
    /// runtime learns of it the way it learns of any crash (requests in
    /// flight fail with `worker_crashed`). For tests and the console.
    pub fn crash(&self) {
        self.shared().kill();
    }

    /// Whether the worker was forked from a zygote (not started cold).
    pub fn forked(&self) -> bool {
        self.shared().forked
    }

    /// The worker's resident memory in bytes, while its process exists.
    pub fn resident_bytes(&self) -> Option<u64> {
        process::resident_bytes(self.pid())
    }

    /// Kill the worker's whole process group now.
    pub fn kill(&self) {
        let s = self.shared();
        s.fail_all(
            BROKEN,
            s.worker_error(ErrorKind::WorkerCrashed, format!("worker {} was killed by the runtime", s.name))
                .with_retryable(true),
        );
        s.kill();
    }

    /// End the worker: `shutdown` (in-flight requests get `grace`), then
    /// `SIGTERM`, then `SIGKILL` to its process group; always reaped.
    pub async fn stop(&self, grace: Duration) -> ExitInfo {
        let s = self.shared().clone();
        if s.state.compare_exchange(READY, STOPPING, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
            let shutdown = Message::Shutdown { grace_ms: grace.as_millis() as u64 };
            let _ = tokio::time::timeout(grace, self.send(self.control_codec(), &shutdown)).await;
        }
        let waited = tokio::time::timeout(grace + Duration::from_millis(500), self.exited()).await;
        if let Ok(info) = waited {
            return info;
        }
        process::signal_group(s.pgid, libc::SIGTERM);
        if let Ok(info) = tokio::time::timeout(Duration::from_secs(1), self.exited()).await {
            return info;
        }
        s.kill();
        self.exited().await
    }
}

async fn heartbeat(worker: std::sync::Weak<Handle>, every: Duration) {
    let mut misses = 0u32;
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = worker.upgrade() else { return };
        let w = Worker { inner };
        if !w.is_ready() {
            return;
        }
        match w.ping(every * 5).await {
            Ok(_) => misses = 0,
            Err(_) => {
                misses += 1;
                if misses >= 1 && w.is_ready() {
                    let s = w.shared();
                    warn!(worker = %s.name, "no heartbeat; killing the worker");
                    s.fail_all(
                        BROKEN,
                        s.worker_error(ErrorKind::WorkerCrashed, format!("worker {} missed its heartbeat", s.name))
                            .with_retryable(true),
                    );
                    s.kill();
                    return;
                }
            }
        }
    }
}

async fn read_loop(shared: Arc<Shared>, mut reader: BufReader<pipe::Receiver>, process: Process) {
    let end: Result<()> = async {
        loop {
            let Some(body) = read_frame(&mut reader, shared.max_frame).await? else { return Ok(()) };
            let (codec, msg) = decode_reply(&body)?;
            shared.frames.received[codec.tag() as usize].fetch_add(1, Ordering::Relaxed);
            match msg {
                Message::Response { id, ok, error, spans } => {
                    spans.into_iter().for_each(dspex_core::trace::record);
                    shared.lm_scopes.lock().remove(&id);
                    let slot = shared.pending.lock().remove(&id);
                    shared.completed.fetch_add(1, Ordering::Relaxed);
                    let result = match error {
                        Some(e) => Err(e.into_error().with_worker(shared.name.to_string())),
                        None => Ok(ok.unwrap_or(Value::Null)),
                    };
                    match slot {
                        Some(Slot::Call(tx)) => {
                            let _ = tx.send(result);
                        }
                        Some(Slot::Stream(tx)) => {
                            let _ = tx.send(result.map(StreamItem::Done)).await;
                        }
                        None if shared.settle_abandoned(id) => {}
                        None => {
                            return Err(Error::new(ErrorKind::Protocol, format!("response for unknown request {id}")))
                        }
                    }
                }
                Message::Chunk { id, data, .. } => {
                    let tx = match shared.pending.lock().get(&id) {
                        Some(Slot::Stream(tx)) => Some(tx.clone()),
                        Some(Slot::Call(_)) => None,
                        None => None,
                    };
                    match tx {
                        // Backpressure: a slow consumer slows this worker's output.
                        Some(tx) => {
                            let _ = tx.send(Ok(StreamItem::Chunk(data))).await;
                        }
                        None if shared.abandoned.lock().0.contains(&id) => {}
                        None if shared.pending.lock().contains_key(&id) => {}
                        None => return Err(Error::new(ErrorKind::Protocol, format!("chunk for unknown request {id}"))),
                    }
                }
                Message::End { .. } => {}
                Message::Pong { seq, in_flight } => {
                    if let Some(tx) = shared.pings.lock().remove(&seq) {
                        let _ = tx.send(in_flight);
                    }
                }
                other => {
                    return Err(Error::new(
                        ErrorKind::Protocol,
                        format!("unexpected message from the worker: {other:?}"),
                    ))
                }
            }
        }
    }
    .await;
    match end {
        Ok(()) => {
            let err = shared
                .worker_error(
                    ErrorKind::WorkerCrashed,
                    format!("worker {} (pid {}) closed its output", shared.name, shared.pid),
                )
                .with_retryable(true);
            shared.fail_all(EXITED, err);
        }
        Err(e) => {
            let err = if e.kind() == ErrorKind::Protocol {
                error!(worker = %shared.name, error = %e, "protocol violation; killing the worker");
                shared.worker_error(
                    ErrorKind::Protocol,
                    format!("worker {} broke the protocol: {}", shared.name, e.message()),
                )
            } else {
                shared.worker_error(
                    ErrorKind::WorkerCrashed,
                    format!("reading from worker {} failed: {}", shared.name, e.message()),
                )
            }
            .with_retryable(true);
            shared.fail_all(BROKEN, err);
            shared.kill();
        }
    }
    // Reap: give a closing process a moment, then make sure it is gone.
    let pgid = shared.pgid;
    let status = process.reap(pgid, Duration::from_millis(500)).await;
    // Members of the group the worker started must not outlive it.
    process::signal_group(pgid, libc::SIGKILL);
    let reason = shared.failure.lock().as_ref().map(|e| e.message().to_string()).unwrap_or_default();
    let info = ExitInfo { code: status.and_then(|s| s.0), signal: status.and_then(|s| s.1), reason };
    info!(worker = %shared.name, pid = shared.pid, how = %info.describe(), "worker exited");
    if let Some(reg) = &shared.registry {
        let _ = reg.remove_worker(shared.pid);
    }
    // Improve the crash message now that the exit status is known.
    shared.state.store(EXITED, Ordering::SeqCst);
    // `send` drops the value when nobody is subscribed yet; whoever calls
    // `exited()` later must still see it.
    shared.exit.send_replace(Some(info));
}

/// The stream of a streamed request. Dropping it before the end cancels the request.
pub struct WorkerStream {
    rx: mpsc::Receiver<Result<StreamItem>>,
    id: u64,
    op: String,
    codec: Codec,
    worker: Worker,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    finished: bool,
}

impl std::fmt::Debug for WorkerStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerStream")
            .field("worker", &self.worker.name())
            .field("id", &self.id)
            .field("op", &self.op)
            .field("finished", &self.finished)
            .finish()
    }
}

impl Stream for WorkerStream {
    type Item = Result<StreamItem>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        if self.finished {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(item)) => {
                if matches!(item, Ok(StreamItem::Done(_)) | Err(_)) {
                    self.finished = true;
                }
                Poll::Ready(Some(item))
            }
            Poll::Ready(None) => {
                self.finished = true;
                Poll::Ready(Some(Err(self.worker.shared().not_ready_error())))
            }
            Poll::Pending => {
                if let Some(d) = self.deadline.as_mut() {
                    if d.as_mut().poll(cx).is_ready() {
                        self.finished = true;
                        let (id, codec, op) = (self.id, self.codec, self.op.clone());
                        self.worker.give_up(id, codec, &op);
                        let err = self
                            .worker
                            .shared()
                            .worker_error(ErrorKind::Timeout, format!("{op} stream did not finish before its deadline"))
                            .with_retryable(true);
                        return Poll::Ready(Some(Err(err)));
                    }
                }
                Poll::Pending
            }
        }
    }
}

impl Drop for WorkerStream {
    fn drop(&mut self) {
        if !self.finished && tokio::runtime::Handle::try_current().is_ok() {
            let (id, codec, op) = (self.id, self.codec, self.op.clone());
            self.worker.give_up(id, codec, &op);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_lines_are_bounded_and_never_stop_on_bad_bytes() {
        let mut input = b"caf\xff\xfe\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 3 * MAX_OUTPUT_LINE));
        input.extend_from_slice(b"\nok\nlast without newline");
        let mut reader = BufReader::with_capacity(4096, &input[..]);
        let mut buf = Vec::new();
        let mut lines = Vec::new();
        while let Some(line) = next_output_line(&mut reader, &mut buf).await.unwrap() {
            lines.push(line);
        }
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert_eq!(lines[0], "caf\u{fffd}\u{fffd}");
        assert!(lines[1].starts_with(&"x".repeat(MAX_OUTPUT_LINE)), "kept the first part");
        assert!(
            lines[1].ends_with(&format!(" … ({} more bytes dropped)", 2 * MAX_OUTPUT_LINE)),
            "{}",
            &lines[1][MAX_OUTPUT_LINE..]
        );
        assert_eq!(lines[2..], ["ok", "last without newline"]);
        assert!(buf.capacity() <= 2 * MAX_OUTPUT_LINE, "memory stays bounded");
    }
}
