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

use dspex_core::{NodeStatus, Result, Value};
use futures_util::future::BoxFuture;

use crate::pool::{PoolCallOptions, PoolReply};

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

    /// The live nodes (this one included, marked `local`).
    fn nodes(&self) -> Vec<NodeStatus>;
}
