//! The debug console endpoint: the live actor tree and its controls over a
//! local socket.
//!
//! A runtime serves the console on a unix socket (mode 0600, in a directory
//! of mode 0700) or on TCP bound to a loopback address. The protocol is one
//! JSON object per line each way:
//!
//! ```text
//! → {"id": 1, "cmd": "tree", "args": [], "token": "…"}
//! ← {"id": 1, "ok": true, "result": {…}}
//! ← {"id": 2, "ok": false, "error": {"kind": "invalid_request", "message": "…"}}
//! ```
//!
//! `events [FILTER]` answers once, then streams `{"event": {…}}` lines until
//! the client closes the connection. Reading commands (`tree`, `pools`,
//! `workers`, `sessions`, `session`, `pipelines`, `routes`, `stats`,
//! `events`, `help`) need no token on the unix socket, whose mode already
//! limits it to its owner; commands that change something (`kill`,
//! `restart`, `scale`) always need the token. On a unix socket the token is
//! in `<socket>.token` (mode 0600), which `dspex console` reads; on TCP it
//! must be given, and every command needs it. Wrong tokens are throttled
//! (per peer address on TCP, per connection on the socket): after five, each
//! further attempt waits, from 250 ms doubling to a minute, and one sent
//! sooner is refused with `rate_limited` unchecked
//! ([`AuthThrottle`](crate::token::AuthThrottle)). A malformed request gets
//! an error reply and the connection stays open.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dspex_core::{Error, ErrorKind, Result, Value};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tracing::{debug, info, warn};

use std::sync::Arc;

use parking_lot::Mutex;
use ractor::ActorProcessingErr;

use crate::runtime::{Runtime, WeakRuntime};
use crate::supervisor::{ChildSpec, Holder, NodeInfo, Restart, Started};

/// Where a console listens.
#[derive(Debug, Clone)]
pub enum ConsoleEndpoint {
    /// A unix socket (mode 0600); the token is written beside it.
    Unix(PathBuf),
    /// TCP on a loopback address, with a token every command must carry.
    Tcp {
        /// Address (must be loopback).
        addr: SocketAddr,
        /// The token.
        token: String,
    },
}

/// Commands and what they do, as `help` prints them.
pub const COMMANDS: &[(&str, &str)] = &[
    ("tree", "the live supervision tree: names, status, restarts, uptime, pids, in-flight, queue depth"),
    ("pools", "every pool: size, ready, in flight, queued, requests, failures"),
    ("workers POOL", "the workers of a pool"),
    ("nodes", "the cluster's live nodes: pools, remote load, whether they take work (empty outside a cluster)"),
    ("sessions", "every session"),
    ("session ID", "one session's state: programs, history, variables"),
    ("pipelines", "pipeline runs in progress"),
    ("routes", "the router's counters, breakers and recent decisions"),
    ("gateway", "the LM gateway, per LM and per tenant: calls, cache hits, retries, limits, refusals, tokens, cost"),
    ("stats", "uptime, pools, router counters, sessions, pipelines"),
    ("events [FILTER]", "a live tail of telemetry events (those whose text contains FILTER)"),
    ("kill ACTOR", "kill a worker (kill -9), close a session or cancel a pipeline run (needs the token)"),
    ("restart POOL", "restart a pool's workers one at a time (needs the token)"),
    ("scale POOL N", "resize a pool (needs the token)"),
    ("drain", "stop taking work from other cluster nodes, finish what runs for them (needs the token)"),
    ("help", "this list"),
];

/// The commands that change something: they need the token, and a client
/// must not send one again on its own after a lost connection (it may have
/// run).
pub const MUTATING: &[&str] = &["kill", "restart", "scale", "drain"];
/// The longest request line the console reads (64 KiB, the newline aside).
pub const MAX_LINE: usize = 64 * 1024;

/// One console request line: the one definition both the endpoint and the
/// `dspex console` client use.
///
/// ```
/// use dspex_actors::console::ConsoleRequest;
///
/// let req = ConsoleRequest::new(7, "session", &["s1".to_string()]);
/// let line = req.to_line();
/// assert_eq!(ConsoleRequest::parse(line.as_bytes()).unwrap().unwrap().cmd, "session");
/// assert!(ConsoleRequest::parse(b"{\"cmd\": 1}").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleRequest {
    /// Echoed in the reply; any JSON value.
    #[serde(default)]
    pub id: Value,
    /// The command (`tree`, `session`, `kill`, …).
    pub cmd: String,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// The console token, for the commands that need it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl ConsoleRequest {
    /// A request for `cmd` with `args` and no token.
    pub fn new(id: u64, cmd: &str, args: &[String]) -> ConsoleRequest {
        ConsoleRequest { id: Value::from(id), cmd: cmd.to_string(), args: args.to_vec(), token: None }
    }

    /// The request as one line, newline included.
    pub fn to_line(&self) -> String {
        // A struct of strings and a JSON value always serializes.
        let mut line = serde_json::to_string(self).unwrap_or_default();
        line.push('\n');
        line
    }

    /// Read one request line (trailing newline optional). Invalid UTF-8 is
    /// replaced, not refused, so the error can still name what was wrong.
    /// `Ok(None)`: a blank line, which the console ignores.
    pub fn parse(line: &[u8]) -> Result<Option<ConsoleRequest>> {
        if line.len() > MAX_LINE + 1 {
            return Err(Error::invalid_request("request line too long"));
        }
        let text = String::from_utf8_lossy(line);
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        serde_json::from_str(text).map(Some).map_err(|e| {
            Error::invalid_request(format!(
                "malformed console request ({e}); send {{\"cmd\": \"help\"}} for the commands"
            ))
        })
    }
}

/// A running console endpoint. Dropping it stops it and removes the socket.
#[derive(Debug)]
pub struct ConsoleServer {
    endpoint: ConsoleEndpoint,
    token: String,
    task: tokio::task::JoinHandle<()>,
}

fn io_err(what: String, e: std::io::Error) -> Error {
    Error::new(ErrorKind::Io, format!("{what}: {e}"))
}

impl ConsoleServer {
    /// Start serving `rt`'s console on `endpoint` (outside the tree; see
    /// [`Runtime::serve_console`] for the supervised form).
    pub async fn start(rt: &Runtime, endpoint: ConsoleEndpoint) -> Result<ConsoleServer> {
        let rt = rt.downgrade();
        match &endpoint {
            ConsoleEndpoint::Unix(path) => {
                use std::os::unix::fs::PermissionsExt;
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    if !dir.exists() {
                        std::fs::create_dir_all(dir)
                            .map_err(|e| io_err(format!("cannot create {}", dir.display()), e))?;
                        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
                    }
                }
                if path.exists() {
                    // A live console answers; a stale socket file is replaced.
                    if tokio::net::UnixStream::connect(path).await.is_ok() {
                        return Err(Error::new(
                            ErrorKind::Config,
                            format!("a console is already listening on {}", path.display()),
                        ));
                    }
                    std::fs::remove_file(path)
                        .map_err(|e| io_err(format!("cannot remove the stale socket {}", path.display()), e))?;
                }
                let listener = tokio::net::UnixListener::bind(path)
                    .map_err(|e| io_err(format!("cannot listen on {}", path.display()), e))?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| io_err(format!("cannot set the mode of {}", path.display()), e))?;
                let token = crate::token::generate();
                let token_path = token_file(path);
                crate::token::write_private(&token_path, &token)?;
                info!(socket = %path.display(), "console listening");
                let task = Listener::Unix(listener).serve(rt, token.clone());
                Ok(ConsoleServer { endpoint, token, task })
            }
            ConsoleEndpoint::Tcp { addr, token } => {
                if !addr.ip().is_loopback() {
                    return Err(Error::new(
                        ErrorKind::Config,
                        format!("the console listens on loopback addresses only, not {addr}"),
                    ));
                }
                if token.len() < crate::token::MIN_LEN {
                    return Err(Error::new(ErrorKind::Config, "the console token must have at least 8 characters"));
                }
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| io_err(format!("cannot listen on {addr}"), e))?;
                let local = listener.local_addr().map_err(|e| io_err("no local address".into(), e))?;
                info!(addr = %local, "console listening");
                let task = Listener::Tcp(listener).serve(rt, token.clone());
                Ok(ConsoleServer {
                    endpoint: ConsoleEndpoint::Tcp { addr: local, token: token.clone() },
                    token: token.clone(),
                    task,
                })
            }
        }
    }

    /// Where it listens (for TCP, the bound address).
    pub fn endpoint(&self) -> &ConsoleEndpoint {
        &self.endpoint
    }

    /// The token mutating commands need.
    pub fn token(&self) -> &str {
        &self.token
    }
}

/// A bound console listener.
enum Listener {
    Unix(tokio::net::UnixListener),
    Tcp(tokio::net::TcpListener),
}

impl Listener {
    /// Serve every connection on its own task until the returned task is
    /// aborted. A failed accept (out of file descriptors, say) is logged and
    /// retried shortly rather than ending the console.
    fn serve(self, rt: WeakRuntime, token: String) -> tokio::task::JoinHandle<()> {
        // Wrong tokens are throttled per TCP peer address, and per
        // connection on the unix socket (whose peers are this machine's
        // users with access to the socket file).
        let throttle = Arc::new(crate::token::AuthThrottle::new());
        tokio::spawn(async move {
            let mut connections = 0u64;
            loop {
                connections += 1;
                let accepted = match &self {
                    Listener::Unix(l) => l.accept().await.map(|(stream, _)| {
                        let (r, w) = stream.into_split();
                        let auth = Auth {
                            token: token.clone(),
                            tcp: false,
                            throttle: throttle.clone(),
                            peer: format!("unix:{connections}"),
                        };
                        tokio::spawn(serve(rt.clone(), r, w, auth));
                    }),
                    Listener::Tcp(l) => l.accept().await.map(|(stream, peer)| {
                        let _ = stream.set_nodelay(true);
                        let (r, w) = stream.into_split();
                        let auth = Auth {
                            token: token.clone(),
                            tcp: true,
                            throttle: throttle.clone(),
                            peer: format!("tcp:{}", peer.ip()),
                        };
                        tokio::spawn(serve(rt.clone(), r, w, auth));
                    }),
                };
                if let Err(e) = accepted {
                    warn!(error = %e, "console accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        })
    }
}

impl Drop for ConsoleServer {
    fn drop(&mut self) {
        self.task.abort();
        if let ConsoleEndpoint::Unix(path) = &self.endpoint {
            let _ = std::fs::remove_file(path);
            let _ = std::fs::remove_file(token_file(path));
        }
    }
}

/// Where the token of a unix-socket console is kept.
pub fn token_file(socket: &Path) -> PathBuf {
    let mut name = socket.as_os_str().to_owned();
    name.push(".token");
    PathBuf::from(name)
}

/// The default socket path: `$XDG_RUNTIME_DIR/dspex/console.sock`, else
/// `/tmp/dspex-<uid>/console.sock`.
pub fn default_socket() -> PathBuf {
    dspex_bridge::runtime_dir().join("console.sock")
}

/// What a connection needs to check tokens.
struct Auth {
    token: String,
    /// Every command needs the token (TCP), not only the mutating ones.
    tcp: bool,
    throttle: Arc<crate::token::AuthThrottle>,
    /// The key failures are counted under.
    peer: String,
}

impl Auth {
    /// Whether `given` is the token; a wrong one counts against the peer,
    /// which is refused unchecked while it must wait.
    fn check(&self, given: Option<&str>) -> std::result::Result<bool, Error> {
        let Some(given) = given else { return Ok(false) };
        if let Err(wait) = self.throttle.check(&self.peer) {
            return Err(Error::new(
                ErrorKind::RateLimited,
                format!("too many wrong console tokens from here: try again in {} ms", wait.as_millis().max(1)),
            )
            .with_retryable(true));
        }
        if crate::token::matches(given, &self.token) {
            self.throttle.succeeded(&self.peer);
            Ok(true)
        } else {
            warn!(peer = %self.peer, "wrong console token");
            self.throttle.failed(&self.peer);
            Ok(false)
        }
    }
}

async fn serve<R, W>(rt: WeakRuntime, read: R, mut write: W, auth: Auth)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut lines = BufReader::new(read);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = match (&mut lines).take(MAX_LINE as u64 + 1).read_until(b'\n', &mut buf).await {
            Ok(n) => n,
            Err(_) => return,
        };
        if n == 0 {
            return;
        }
        if buf.len() > MAX_LINE && !buf.ends_with(b"\n") {
            let _ = reply(&mut write, &Value::Null, Err(Error::invalid_request("request line too long"))).await;
            // Skip the rest of the line.
            let mut rest = Vec::new();
            if lines.read_until(b'\n', &mut rest).await.is_err() {
                return;
            }
            continue;
        }
        let req = match ConsoleRequest::parse(&buf) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(err) => {
                if reply(&mut write, &Value::Null, Err(err)).await.is_err() {
                    return;
                }
                continue;
            }
        };
        let needs_token = auth.tcp || MUTATING.contains(&req.cmd.as_str());
        let authorized = if needs_token { auth.check(req.token.as_deref()) } else { Ok(true) };
        let refusal = match authorized {
            Ok(true) => None,
            Ok(false) => Some(Error::new(
                ErrorKind::InvalidRequest,
                format!("`{}` needs the console token (see the console docs)", req.cmd),
            )),
            Err(throttled) => Some(throttled),
        };
        if let Some(err) = refusal {
            if reply(&mut write, &req.id, Err(err)).await.is_err() {
                return;
            }
            continue;
        }
        debug!(cmd = %req.cmd, args = ?req.args, "console command");
        let Some(rt) = rt.upgrade() else {
            let _ = reply(&mut write, &req.id, Err(Error::new(ErrorKind::Cancelled, "the runtime has stopped"))).await;
            return;
        };
        if req.cmd == "events" {
            let filter = req.args.join(" ");
            let mut events = rt.subscribe();
            if reply(&mut write, &req.id, Ok(json!("streaming"))).await.is_err() {
                return;
            }
            loop {
                match events.recv().await {
                    Ok(e) => {
                        let v = serde_json::to_value(&*e).unwrap_or(Value::Null);
                        if !filter.is_empty() && !v.to_string().contains(&filter) {
                            continue;
                        }
                        let mut line = json!({ "event": v }).to_string();
                        line.push('\n');
                        if write.write_all(line.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        let line = format!("{}\n", json!({"event": {"lagged": n}}));
                        if write.write_all(line.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        }
        let result = command(&rt, &req.cmd, &req.args).await;
        if reply(&mut write, &req.id, result).await.is_err() {
            return;
        }
    }
}

async fn reply<W: AsyncWrite + Unpin>(write: &mut W, id: &Value, result: Result<Value>) -> std::io::Result<()> {
    let v = match result {
        Ok(r) => json!({"id": id, "ok": true, "result": r}),
        Err(e) => json!({"id": id, "ok": false, "error": e.body()}),
    };
    let mut line = v.to_string();
    line.push('\n');
    write.write_all(line.as_bytes()).await?;
    write.flush().await
}

fn arg<'a>(args: &'a [String], i: usize, what: &str, cmd: &str) -> Result<&'a str> {
    args.get(i).map(String::as_str).ok_or_else(|| Error::invalid_request(format!("usage: {cmd} {what}")))
}

fn to_value<T: serde::Serialize>(v: &T) -> Result<Value> {
    serde_json::to_value(v).map_err(|e| Error::internal(format!("cannot encode the answer: {e}")))
}

/// Run one console command against `rt` (what the endpoint does for each request).
pub async fn command(rt: &Runtime, cmd: &str, args: &[String]) -> Result<Value> {
    match cmd {
        "help" => Ok(json!(COMMANDS.iter().map(|(c, d)| json!({"command": c, "about": d})).collect::<Vec<_>>())),
        "tree" => {
            let mut tree = to_value(&rt.tree().await?)?;
            // Other cluster nodes, read-only, beside the local tree.
            let remote: Vec<_> = rt.nodes().into_iter().filter(|n| !n.local).collect();
            if let (false, Some(t)) = (remote.is_empty(), tree.as_object_mut()) {
                t.insert("cluster".into(), to_value(&remote)?);
            }
            Ok(tree)
        }
        "pools" => to_value(&rt.pool_stats()),
        "workers" => {
            let pool = arg(args, 0, "POOL", cmd)?;
            to_value(&rt.pool(pool)?.stats().workers)
        }
        "nodes" => to_value(&rt.nodes()),
        "sessions" => to_value(&rt.sessions().list()),
        "session" => {
            let id = arg(args, 0, "ID", cmd)?;
            let session = rt.sessions().get(id)?;
            let info = rt.sessions().list().into_iter().find(|i| i.id == id);
            Ok(json!({"info": to_value(&info)?, "state": to_value(&session.state().await?)?}))
        }
        "pipelines" => to_value(&rt.pipeline_runs()),
        "routes" => to_value(&rt.router().stats()),
        "gateway" => to_value(&rt.gateway_stats()),
        "stats" => {
            let pools = rt.pool_stats();
            Ok(json!({
                "uptime_ms": rt.uptime().as_millis() as u64,
                "pools": to_value(&pools)?,
                "router": to_value(&rt.router().stats())?,
                "gateway": to_value(&rt.gateway_stats())?,
                "sessions": rt.sessions().list().len(),
                "pipelines_running": rt.pipeline_runs().len(),
                "telemetry_subscribers": rt.telemetry().subscriber_count(),
            }))
        }
        "kill" => {
            let actor = arg(args, 0, "ACTOR", cmd)?;
            if let Some(rest) = actor.strip_prefix("worker:") {
                let (pool, index) = rest
                    .rsplit_once(':')
                    .and_then(|(p, i)| i.parse::<usize>().ok().map(|i| (p, i)))
                    .ok_or_else(|| Error::invalid_request(format!("{actor} is not worker:POOL:INDEX")))?;
                let pid = rt.kill_worker(pool, index)?;
                Ok(json!({"killed": actor, "pid": pid}))
            } else if let Some(id) = actor.strip_prefix("session:") {
                rt.sessions().get(id)?.close().await?;
                Ok(json!({"closed": actor}))
            } else if let Some(run) = actor.strip_prefix("pipeline:") {
                rt.cancel_pipeline(run)?;
                Ok(json!({"cancelled": actor}))
            } else {
                Err(Error::new(
                    ErrorKind::NotFound,
                    format!("cannot kill {actor}: give a worker:POOL:INDEX, session:ID or pipeline:RUN"),
                ))
            }
        }
        "restart" => {
            let pool = arg(args, 0, "POOL", cmd)?;
            rt.restart_pool(pool).await?;
            Ok(json!({"restarted": pool}))
        }
        "scale" => {
            let pool = arg(args, 0, "POOL N", cmd)?;
            let n: usize = arg(args, 1, "POOL N", cmd)?
                .parse()
                .map_err(|_| Error::invalid_request("usage: scale POOL N (N a number of workers)"))?;
            if n == 0 || n > 256 {
                return Err(Error::invalid_request("a pool has 1 to 256 workers"));
            }
            rt.scale(pool, n).await?;
            Ok(json!({"pool": pool, "size": n}))
        }
        "drain" => {
            rt.drain_cluster(std::time::Duration::from_secs(30)).await?;
            Ok(json!({"drained": rt.node_name()}))
        }
        other => Err(Error::invalid_request(format!("unknown command `{other}`; `help` lists the commands"))),
    }
}

impl Runtime {
    /// Serve the debug console on `endpoint` as the `console` actor of the
    /// tree. Returns the endpoint as bound (the TCP port chosen for port 0)
    /// and the token mutating commands need.
    pub async fn serve_console(&self, endpoint: ConsoleEndpoint) -> Result<(ConsoleEndpoint, String)> {
        let bound: Arc<Mutex<Option<(ConsoleEndpoint, String)>>> = Arc::default();
        let (weak, slot) = (self.downgrade(), bound.clone());
        let start: crate::supervisor::StartFn = Arc::new(move |parent, _| {
            let (weak, slot, endpoint) = (weak.clone(), slot.clone(), endpoint.clone());
            Box::pin(async move {
                let rt = weak.upgrade().ok_or_else(|| ActorProcessingErr::from("the runtime has stopped"))?;
                let server =
                    ConsoleServer::start(&rt, endpoint).await.map_err(|e| ActorProcessingErr::from(e.to_string()))?;
                *slot.lock() = Some((server.endpoint().clone(), server.token().to_string()));
                // The `console` actor owns the endpoint: stopping it closes the socket.
                let r = Holder::spawn(parent, server).await?;
                Ok(Started { cell: r.get_cell(), supervisor: None })
            })
        });
        let info_slot = bound.clone();
        let child = ChildSpec::new("console", Restart::Transient, start).kind("console").info(Arc::new(move || {
            let mut extra = dspex_core::Map::new();
            match info_slot.lock().as_ref().map(|b| b.0.clone()) {
                Some(ConsoleEndpoint::Unix(p)) => extra.insert("socket".into(), p.display().to_string().into()),
                Some(ConsoleEndpoint::Tcp { addr, .. }) => extra.insert("tcp".into(), addr.to_string().into()),
                None => None,
            };
            NodeInfo { extra, ..Default::default() }
        }));
        self.add_child(child)
            .await
            .map_err(|e| Error::new(ErrorKind::Config, format!("cannot start the console: {e}")))?;
        let out = bound.lock().clone();
        out.ok_or_else(|| Error::internal("the console did not start"))
    }
}
