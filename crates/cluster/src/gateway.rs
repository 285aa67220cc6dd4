//! The LM gateway across nodes: tenant budgets and LM rate limits hold for
//! the whole cluster, approximately.
//!
//! Each node puts its [`GatewayShare`] — each budgeted tenant's spend in
//! its current period, and the rate-limited LMs it called within the last
//! [`ACTIVE`] (or lease, if longer) — into the bucket `dspex-CLUSTER-gateway` under its name, every
//! third of the lease, and follows the other nodes' entries:
//!
//! - a tenant's **budget** counts this node's spend exactly and the others'
//!   as of their last entries, so the cluster can overrun it by at most
//!   what the other nodes admit in one refresh (a third of the lease plus
//!   the bucket's delivery), besides the calls in flight that any single
//!   node may also finish past a limit. A node that is gone still counts
//!   until its period ends (its entry stays for 35 days), and a node that
//!   restarts under the same name takes its spend back when it joins;
//! - an LM's **rate limits** (requests per second, tokens per minute) are
//!   split evenly among the live nodes calling it, each running its token
//!   buckets at `1/n` of the rate and burst. Idle nodes take no part, so
//!   one busy node gets the whole rate (a node that stops calling keeps its
//!   part for [`ACTIVE`]: the others run below the rate meanwhile). When a node starts calling an LM,
//!   the others learn of it within one refresh: until then the cluster can
//!   exceed the rate by that node's part, for at most a third of the lease
//!   (plus delivery); the total burst is one configured burst, or one call
//!   per node when the burst is smaller than the nodes.
//!
//! Concurrency caps stay per node (they guard this node's connections).

use std::sync::Arc;
use std::time::Duration;

use dspex_core::{Error, ErrorKind, GatewayShare, Result};
use tracing::warn;

use crate::Inner;

/// A node that called a rate-limited LM this recently takes part in its
/// limits (a node that stopped keeps its part this long: the others run
/// below the rate meanwhile, never above).
pub(crate) const ACTIVE: Duration = Duration::from_secs(10);

/// How long an entry stays after its node's last refresh: a budget period
/// of a node that is gone counts up to this long.
pub(crate) const KEEP: Duration = Duration::from_secs(35 * 86_400);

impl Inner {
    /// Put this node's share into the bucket.
    pub(crate) async fn publish_share(&self) -> Result<()> {
        let share = self.gateway.share(self.lease().max(ACTIVE));
        let bytes =
            serde_json::to_vec(&share).map_err(|e| Error::internal(format!("cannot encode the gateway entry: {e}")))?;
        self.gateway_store.put(&self.config.node, bytes.into()).await.map(drop).map_err(|e| {
            Error::new(ErrorKind::Transport, format!("cannot publish this node's LM spend: {e}"))
                .with_node(self.config.node.clone())
                .with_retryable(true)
        })
    }

    /// This node's own entry from before (it restarted, or joins again).
    pub(crate) async fn restore_share(&self) {
        match self.gateway_store.get(&self.config.node).await {
            Ok(Some(bytes)) => match serde_json::from_slice::<GatewayShare>(&bytes) {
                Ok(own) => self.gateway.restore(&own),
                Err(e) => warn!(error = %e, "malformed gateway entry of this node; not restored"),
            },
            Ok(None) => {}
            Err(e) => warn!(error = %e, "cannot read this node's gateway entry; its spend starts from zero"),
        }
    }

    /// Tell the gateway what the other nodes said: the spend of all, the
    /// LMs of the live ones.
    pub(crate) fn apply_shares(&self) {
        let lease = self.lease();
        let peers: Vec<GatewayShare> = self
            .shares
            .iter()
            .map(|e| {
                if self.members.is_live(e.key(), lease) {
                    e.value().clone()
                } else {
                    GatewayShare { spend: e.value().spend.clone(), active_lms: Vec::new() }
                }
            })
            .collect();
        self.gateway.set_peers(&peers);
    }
}

/// Follow the other nodes' entries.
pub(crate) async fn watch(node: Arc<Inner>) {
    let store = node.gateway_store.clone();
    let (me, lease) = (node.config.node.clone(), node.lease());
    crate::members::follow(store, me, lease, "gateway", move |key, value| {
        match value {
            Some(bytes) => match serde_json::from_slice::<GatewayShare>(bytes) {
                Ok(share) => {
                    node.shares.insert(key.to_string(), share);
                }
                Err(e) => warn!(key, error = %e, "malformed gateway entry; ignored"),
            },
            None => {
                node.shares.remove(key);
            }
        }
        node.apply_shares();
    })
    .await
}
