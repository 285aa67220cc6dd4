//! The seam between the runtime and a cluster of nodes.
//!
//! The runtime knows nothing of NATS: a cluster implementation (the
//! `dspex-cluster` crate) attaches itself with
//! [`Runtime::attach_cluster`](crate::Runtime::attach_cluster), and from
//! then on the dispatcher's one placement decision may send a pool call to
//! another node: when the request names a node or prefers a remote one, when
//! no local pool of that name exists (a client-only node), or when the local
//! pool is saturated (`spill_queue` requests waiting). Everything else —
//! plans, fallbacks, breakers, `Meta` — is the same for local and remote work.
//!
//! Sessions use the same seam: a session created in a cluster is stored
//! with its owner node and a revision ([`StoredSession`]); every change is
//! written back only if the revision is still the one this node last wrote
//! (compare-and-set), so a node that lost ownership — partitioned away,
//! then back — can never overwrite newer state. Requests for a session that
//! another live node owns are forwarded to it ([`SessionCall`]); a session
//! whose owner is gone is taken over by whichever node claims it first.
//!
//! [`SessionCall`]: crate::session::SessionCall

use std::sync::Arc;
use std::time::Duration;

use dspex_bridge::StreamItem;
use dspex_core::{NodeStatus, Result, Value};
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::pool::{PoolCallOptions, PoolReply};
use crate::session::{SessionAnswer, SessionCall, SessionState};

/// A session as the cluster stores it: who owns it, its state, and the
/// revision every write must name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredSession {
    /// The owner node (empty: nobody — handed over by a draining node).
    pub owner: String,
    /// The state as last written.
    pub state: SessionState,
    /// The store's revision of that write (not serialized: the store's own).
    #[serde(skip)]
    pub revision: u64,
}

/// A streamed pool call running on another node: where it runs, and its
/// chunks then its result. Dropping it cancels the call there.
pub struct RemoteStream {
    /// The node running it.
    pub node: String,
    /// The worker there.
    pub worker: String,
    /// Its process id (on that node).
    pub pid: u32,
    /// Time it waited for a worker there.
    pub queue: Duration,
    /// Chunks, then the result (`StreamItem::Done`), or an error.
    pub items: BoxStream<'static, Result<StreamItem>>,
}

impl std::fmt::Debug for RemoteStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteStream").field("node", &self.node).field("worker", &self.worker).finish()
    }
}

/// A cluster the runtime can send pool calls to.
pub trait Cluster: Send + Sync + 'static {
    /// This node's name.
    fn node(&self) -> &str;

    /// Whether a live node (`node`, or any other node) offers `pool`.
    fn serves(&self, pool: &str, node: Option<&str>) -> bool;

    /// Local requests waiting for a worker past which work goes elsewhere.
    fn spill_queue(&self) -> usize;

    /// Run command `op` on `pool` on another node (`node`, or whichever
    /// takes it). The reply names the node; errors carry it too.
    fn call<'a>(
        &'a self,
        pool: &'a str,
        op: &'a str,
        args: Value,
        opts: &'a PoolCallOptions,
    ) -> BoxFuture<'a, Result<PoolReply>>;

    /// Run streamed command `op` on `pool` on another node: ready once that
    /// node's worker has started it.
    fn stream(
        self: Arc<Self>,
        pool: String,
        op: String,
        args: Value,
        opts: PoolCallOptions,
    ) -> BoxFuture<'static, Result<RemoteStream>>;

    /// The live nodes (this one included, marked `local`).
    fn nodes(&self) -> Vec<NodeStatus>;

    /// Stop taking remote calls (they are refused, retryably, so callers go
    /// to other nodes) and wait up to `grace` for the running ones.
    fn drain(self: Arc<Self>, grace: Duration) -> BoxFuture<'static, ()>;

    /// Whether this node takes work (false once it drains: it then takes no
    /// session over either).
    fn accepting(&self) -> bool;

    /// Session `id` as stored, or `None` if the cluster holds no such session.
    fn session_load<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<StoredSession>>>;

    /// Write `state` as owned by `owner`, only if the stored revision is
    /// still `revision` (`None`: only if no such session exists). The new
    /// revision; `Conflict` when another write came first.
    fn session_store<'a>(
        &'a self,
        owner: &'a str,
        state: &'a SessionState,
        revision: Option<u64>,
    ) -> BoxFuture<'a, Result<u64>>;

    /// Remove session `id` if its stored revision is still `revision`.
    fn session_remove<'a>(&'a self, id: &'a str, revision: u64) -> BoxFuture<'a, Result<()>>;

    /// Apply `call` to session `id` on node `owner` before `deadline`. The
    /// outer error is about reaching the owner — `Transport` (retryable,
    /// naming the node) when it is unreachable, `Timeout` at the deadline —
    /// and the inner result is the owner's answer (its own errors
    /// included: `Conflict` when another node holds the session now).
    fn session_forward<'a>(
        &'a self,
        owner: &'a str,
        id: &'a str,
        call: &'a SessionCall,
        deadline: std::time::Instant,
        trace_id: &'a str,
    ) -> BoxFuture<'a, Result<Result<SessionAnswer>>>;
}
