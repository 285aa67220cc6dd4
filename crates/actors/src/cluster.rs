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

use std::sync::Arc;
use std::time::Duration;

use dspex_bridge::StreamItem;
use dspex_core::{NodeStatus, Result, Value};
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

use crate::pool::{PoolCallOptions, PoolReply};

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
}
