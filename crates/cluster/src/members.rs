//! Membership: who is in the cluster, what they offer, how loaded they are.
//!
//! Each node puts its [`NodeStatus`] into the bucket every third of the
//! lease; the bucket's `max_age` is the lease, so the entry of a node that
//! stopped refreshing ages out. Every node watches the bucket and keeps the
//! latest entry of each peer with the time it arrived: a peer not heard of
//! for a lease is gone, whether or not its entry has aged out yet (a watch
//! does not announce age-outs).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{self, Operation};
use dashmap::DashMap;
use dspex_core::{Error, ErrorKind, NodeStatus, Result};
use futures_util::StreamExt;
use tracing::{debug, info, warn};

/// The peers this node has heard of, and when.
#[derive(Debug, Default)]
pub(crate) struct Members {
    peers: DashMap<String, (NodeStatus, Instant)>,
}

impl Members {
    /// Live peers (heard of within `lease`), with their entries' ages.
    pub(crate) fn live(&self, lease: Duration) -> Vec<NodeStatus> {
        let mut out: Vec<NodeStatus> = self
            .peers
            .iter()
            .filter(|e| e.value().1.elapsed() < lease)
            .map(|e| {
                let (status, seen) = e.value();
                NodeStatus { age_ms: seen.elapsed().as_millis() as u64, local: false, ..status.clone() }
            })
            .collect();
        out.sort_by(|a, b| a.node.cmp(&b.node));
        out
    }

    /// Whether a live peer (`node`, or any) offers `pool` and takes work.
    pub(crate) fn offers(&self, pool: &str, node: Option<&str>, lease: Duration) -> bool {
        self.peers.iter().any(|e| {
            let (status, seen) = e.value();
            seen.elapsed() < lease
                && status.accepting
                && node.is_none_or(|n| n == status.node)
                && status.pools.iter().any(|p| p.name == pool && p.offered)
        })
    }

    /// A live peer that offers `pool` and takes work, other than those in
    /// `avoid`, picked at random; `None` when there is none.
    pub(crate) fn pick(&self, pool: &str, lease: Duration, avoid: &[String]) -> Option<String> {
        let candidates: Vec<String> = self
            .peers
            .iter()
            .filter(|e| {
                let (status, seen) = e.value();
                seen.elapsed() < lease
                    && status.accepting
                    && !avoid.contains(&status.node)
                    && status.pools.iter().any(|p| p.name == pool && p.offered)
            })
            .map(|e| e.value().0.node.clone())
            .collect();
        (!candidates.is_empty()).then(|| candidates[fastrand::usize(..candidates.len())].clone())
    }

    /// Whether peer `node` was heard of within `lease`.
    pub(crate) fn is_live(&self, node: &str, lease: Duration) -> bool {
        self.peers.get(node).is_some_and(|e| e.value().1.elapsed() < lease)
    }

    fn update(&self, key: &str, entry: Option<NodeStatus>) {
        match entry {
            Some(status) => {
                if self.peers.insert(key.to_string(), (status, Instant::now())).is_none() {
                    info!(node = key, "cluster node joined");
                }
            }
            None => {
                if self.peers.remove(key).is_some() {
                    info!(node = key, "cluster node left");
                }
            }
        }
    }
}

/// Open (or create) a bucket of the cluster: `max_age` ages entries out
/// (zero: never). A JetStream that is still electing its leader (a
/// clustered server just started) is waited for, up to `patience`.
pub(crate) async fn bucket(
    js: &async_nats::jetstream::Context,
    name: &str,
    description: &str,
    max_age: Duration,
    replicas: usize,
    patience: Duration,
) -> Result<kv::Store> {
    let config = kv::Config {
        bucket: name.to_string(),
        description: description.into(),
        history: 1,
        max_age,
        num_replicas: replicas,
        ..Default::default()
    };
    let end = Instant::now() + patience;
    loop {
        let created = match js.create_key_value(config.clone()).await {
            Ok(store) => Ok(store),
            // Another node created it first, or it exists from before.
            Err(create) => js.get_key_value(name).await.map_err(|e| format!("{create}; {e}")),
        };
        match created {
            Ok(store) => return Ok(store),
            Err(e) if Instant::now() >= end => {
                return Err(Error::new(ErrorKind::Transport, format!("cannot open the bucket {name}: {e}"))
                    .with_retryable(true))
            }
            Err(e) => {
                debug!(bucket = name, error = %e, "bucket not available yet; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

/// Follow the membership bucket: every put and delete, from the current
/// entries on. Ends when the watch does (the connection is closing).
pub(crate) async fn watch(store: kv::Store, members: Arc<Members>, me: String, lease: Duration) {
    follow(store, me, lease, "membership", move |key, value| match value {
        Some(bytes) => match serde_json::from_slice::<NodeStatus>(bytes) {
            Ok(status) if status.node == key => members.update(key, Some(status)),
            Ok(status) => {
                warn!(key, node = %status.node, "membership entry under another node's name; ignored")
            }
            Err(e) => warn!(key, error = %e, "malformed membership entry; ignored"),
        },
        None => members.update(key, None),
    })
    .await
}

/// Follow a bucket whose entries every live node refreshes three times a
/// lease: `on` gets each other node's put (`Some(value)`) and delete
/// (`None`), from the current entries on.
pub(crate) async fn follow(
    store: kv::Store,
    me: String,
    lease: Duration,
    what: &'static str,
    on: impl Fn(&str, Option<&[u8]>) + Send + 'static,
) {
    loop {
        let mut entries = match store.watch_with_history(">").await {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, bucket = what, "cannot watch a cluster bucket; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            // Every live node refreshes three times a lease (this one too), so
            // a lease of silence means the watch stalled — its server died
            // and the consumer went with it: watch again from the current
            // entries.
            let entry = match tokio::time::timeout(lease, entries.next()).await {
                Ok(Some(Ok(e))) => e,
                Ok(Some(Err(e))) => {
                    debug!(error = %e, bucket = what, "bucket watch interrupted");
                    break;
                }
                Ok(None) => break,
                Err(_) => {
                    debug!(bucket = what, "bucket watch silent for a lease; watching again");
                    break;
                }
            };
            if entry.key == me {
                continue;
            }
            match entry.operation {
                Operation::Put => on(&entry.key, Some(&entry.value)),
                Operation::Delete | Operation::Purge => on(&entry.key, None),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
