//! # dspex-cluster
//!
//! A dspex runtime across machines, on NATS JetStream — a proven engine, not
//! a home-made one. Supervision stays local to each node, as in Erlang; the
//! cluster decides only where pool calls go.
//!
//! [`ClusterNode::join`] connects a running [`Runtime`] (settings in
//! [`ClusterConfig`]: URLs, credentials, TLS, what to offer), then:
//!
//! - **membership** — the node publishes its [`NodeStatus`] (pools with
//!   size, ready, in-flight and queued; remote load; whether it accepts
//!   work) in the bucket `dspex-CLUSTER-nodes`, refreshed every third of the
//!   lease; peers that stop refreshing are gone after one lease
//!   ([`Runtime::nodes`]);
//! - **serving** — each offered pool answers calls on its subject in a queue
//!   group (NATS hands a call to one subscribed node) and on this node's own
//!   subject for pinned calls;
//! - **remote targets** — the runtime's dispatcher sends a pool call here
//!   when the request names another node or prefers a remote one, when no
//!   local pool has the name (a node with no pools is a client-only node),
//!   or when the local pool is saturated; idempotent calls whose node is lost
//!   are sent again and land on another node.
//!
//! - **LM gateway** — tenant budgets and LM rate limits hold across the
//!   nodes, within a documented bound (see `gateway`'s docs).
//!
//! The wire payloads and subjects are in one place, [`wire`](crate::wire)'s
//! docs (MessagePack, named fields).
//!
//! ```no_run
//! # async fn demo() -> dspex_core::Result<()> {
//! use dspex_actors::Runtime;
//! use dspex_core::ClusterConfig;
//! use dspex_cluster::ClusterNode;
//!
//! let rt = Runtime::builder().start().await?;
//! let node = ClusterNode::join(&rt, ClusterConfig::new("nats://127.0.0.1:4222", "node-a").token("s3cret")).await?;
//! println!("{:?}", rt.nodes());
//! node.leave().await;
//! rt.shutdown().await?;
//! # Ok(()) }
//! ```
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]
#![forbid(unsafe_code)]

mod connect;
mod gateway;
mod members;
mod remote;
mod serve;
mod sessions;
mod wire;

#[doc(hidden)]
pub use wire::decode_untrusted;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use dashmap::DashMap;
use dspex_actors::{
    Cluster, PoolCallOptions, PoolHandle, PoolReply, Runtime, SessionAnswer, SessionCall, SessionState, StoredSession,
};
use dspex_core::{ClusterConfig, Error, ErrorKind, NodeStatus, PoolStatus, Result, Value};
use futures_util::future::BoxFuture;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use members::Members;
use wire::Names;

/// What the node's tasks and the runtime share.
struct Inner {
    config: ClusterConfig,
    names: Names,
    client: async_nats::Client,
    /// The membership bucket.
    store: kv::Store,
    /// The sessions bucket.
    sessions: kv::Store,
    /// The gateway bucket: each node's LM spend and active LMs.
    gateway_store: kv::Store,
    /// The other nodes' gateway entries.
    shares: DashMap<String, dspex_core::GatewayShare>,
    /// The runtime's LM gateway.
    gateway: dspex_actors::Gateway,
    members: Arc<Members>,
    /// Local pools (offered or not: membership reports them all).
    pools: Vec<PoolHandle>,
    remote_in_flight: AtomicUsize,
    accepting: AtomicBool,
    /// Set when the node drains: its queue-group subscriptions go.
    draining: tokio::sync::watch::Sender<bool>,
    next_id: AtomicU64,
    /// Remote calls running here, by (caller node, call id): their cancel switches.
    running: DashMap<(String, u64), oneshot::Sender<()>>,
    /// This node's calls waiting for replies, by id.
    calls: DashMap<u64, remote::ReplySlot>,
    /// The subject prefix of this node's replies (`_INBOX.<unique>`).
    reply_prefix: String,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterNode").field("cluster", &self.config.name).field("node", &self.config.node).finish()
    }
}

impl Inner {
    fn lease(&self) -> Duration {
        Duration::from_millis(self.config.lease_ms)
    }

    /// This node's membership entry.
    fn status(&self) -> NodeStatus {
        NodeStatus {
            node: self.config.node.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            pools: self
                .pools
                .iter()
                .map(|p| {
                    let s = p.stats();
                    PoolStatus {
                        name: s.name.clone(),
                        size: s.size,
                        ready: s.ready,
                        in_flight: s.in_flight,
                        queued: s.queued,
                        offered: self.config.offers(&s.name) && wire::is_token(&s.name),
                    }
                })
                .collect(),
            remote_in_flight: self.remote_in_flight.load(Ordering::Relaxed),
            accepting: self.accepting.load(Ordering::Acquire),
            age_ms: 0,
            local: true,
        }
    }

    async fn publish_status(&self) -> Result<()> {
        let bytes = serde_json::to_vec(&self.status())
            .map_err(|e| Error::internal(format!("cannot encode the membership entry: {e}")))?;
        self.store.put(&self.config.node, bytes.into()).await.map(drop).map_err(|e| {
            Error::new(ErrorKind::Transport, format!("cannot refresh membership: {e}"))
                .with_node(self.config.node.clone())
                .with_retryable(true)
        })
    }
}

impl Cluster for Inner {
    fn node(&self) -> &str {
        &self.config.node
    }

    fn serves(&self, pool: &str, node: Option<&str>) -> bool {
        self.members.offers(pool, node, self.lease())
    }

    fn spill_queue(&self) -> usize {
        self.config.spill_queue
    }

    fn call<'a>(
        &'a self,
        pool: &'a str,
        op: &'a str,
        args: Value,
        opts: &'a PoolCallOptions,
    ) -> BoxFuture<'a, Result<PoolReply>> {
        Box::pin(remote::call(self, pool, op, args, opts))
    }

    fn stream(
        self: Arc<Self>,
        pool: String,
        op: String,
        args: Value,
        opts: PoolCallOptions,
    ) -> BoxFuture<'static, Result<dspex_actors::RemoteStream>> {
        Box::pin(remote::stream(self, pool, op, args, opts))
    }

    fn nodes(&self) -> Vec<NodeStatus> {
        let mut all = vec![self.status()];
        all.extend(self.members.live(self.lease()));
        all
    }

    fn drain(self: Arc<Self>, grace: Duration) -> BoxFuture<'static, ()> {
        Box::pin(async move { self.drain_remote(grace).await })
    }

    fn accepting(&self) -> bool {
        self.accepting.load(Ordering::Acquire)
    }

    fn session_load<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<StoredSession>>> {
        Box::pin(sessions::load(self, id))
    }

    fn session_store<'a>(
        &'a self,
        owner: &'a str,
        state: &'a SessionState,
        revision: Option<u64>,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(sessions::store(self, owner, state, revision))
    }

    fn session_remove<'a>(&'a self, id: &'a str, revision: u64) -> BoxFuture<'a, Result<()>> {
        Box::pin(sessions::remove(self, id, revision))
    }

    fn session_forward<'a>(
        &'a self,
        owner: &'a str,
        id: &'a str,
        call: &'a SessionCall,
        deadline: std::time::Instant,
        trace_id: &'a str,
    ) -> BoxFuture<'a, Result<Result<SessionAnswer>>> {
        Box::pin(sessions::forward(self, owner, id, call, deadline, trace_id))
    }
}

impl Inner {
    async fn drain_remote(&self, grace: Duration) {
        self.accepting.store(false, Ordering::Release);
        self.draining.send_replace(true);
        let _ = self.client.flush().await;
        let _ = self.publish_status().await;
        let end = tokio::time::Instant::now() + grace;
        while self.remote_in_flight.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A runtime's membership in a cluster. Dropping it does not leave the
/// cluster; call [`ClusterNode::leave`] (the entry also ages out).
#[derive(Debug)]
pub struct ClusterNode {
    inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
}

impl ClusterNode {
    /// Connect `runtime` to the cluster: check the settings (an insecure join
    /// is refused unless every URL is loopback and `allow_insecure` is set),
    /// connect, open the membership bucket, serve the offered pools, publish
    /// this node, and attach the cluster to the runtime's dispatcher.
    pub async fn join(runtime: &Runtime, config: ClusterConfig) -> Result<ClusterNode> {
        let client = connect::connect(&config).await?;
        let names = Names::new(&config.name);
        // Every JetStream request is bounded (a cluster still electing its
        // leader answers none; `members::bucket` retries within its patience).
        let js = async_nats::jetstream::ContextBuilder::new().timeout(Duration::from_secs(5)).build(client.clone());
        let reply_prefix = client.new_inbox();
        let lease = Duration::from_millis(config.lease_ms);
        let patience = Duration::from_secs(30);
        let store =
            members::bucket(&js, &names.bucket, "dspex cluster membership", lease, config.kv_replicas, patience)
                .await?;
        let sessions =
            members::bucket(&js, &names.sessions, "dspex sessions", Duration::ZERO, config.kv_replicas, patience)
                .await?;
        let gateway_store = members::bucket(
            &js,
            &names.gateway,
            "dspex LM spend and rate-limit shares",
            gateway::KEEP,
            config.kv_replicas,
            patience,
        )
        .await?;
        let inner = Arc::new(Inner {
            names,
            client,
            store,
            sessions,
            gateway_store,
            shares: DashMap::new(),
            gateway: runtime.gateway().clone(),
            members: Arc::new(Members::default()),
            pools: runtime.pools(),
            remote_in_flight: AtomicUsize::new(0),
            accepting: AtomicBool::new(true),
            draining: tokio::sync::watch::Sender::new(false),
            next_id: AtomicU64::new(1),
            running: DashMap::new(),
            calls: DashMap::new(),
            reply_prefix,
            config,
        });
        let mut tasks = Vec::new();
        let sub_err = |e: &dyn std::fmt::Display| {
            Error::new(ErrorKind::Transport, format!("cannot subscribe: {e}")).with_retryable(true)
        };
        for pool in &inner.pools {
            let name = pool.name().to_string();
            if !inner.config.offers(&name) {
                continue;
            }
            if !wire::is_token(&name) {
                warn!(pool = %name, "not offering a pool whose name cannot be a subject token");
                continue;
            }
            let any =
                inner.client.queue_subscribe(inner.names.pool(&name), name.clone()).await.map_err(|e| sub_err(&e))?;
            let pinned = inner
                .client
                .subscribe(inner.names.node_pool(&inner.config.node, &name))
                .await
                .map_err(|e| sub_err(&e))?;
            tasks.push(tokio::spawn(serve::serve_pool(inner.clone(), pool.clone(), any, true)));
            tasks.push(tokio::spawn(serve::serve_pool(inner.clone(), pool.clone(), pinned, false)));
        }
        let replies = inner.client.subscribe(format!("{}.*", inner.reply_prefix)).await.map_err(|e| sub_err(&e))?;
        tasks.push(tokio::spawn(remote::route_replies(inner.clone(), replies)));
        let cancels = inner.client.subscribe(inner.names.cancel(&inner.config.node)).await.map_err(|e| sub_err(&e))?;
        tasks.push(tokio::spawn(serve::serve_cancels(inner.clone(), cancels)));
        let session_requests =
            inner.client.subscribe(inner.names.node_session(&inner.config.node)).await.map_err(|e| sub_err(&e))?;
        tasks.push(tokio::spawn(sessions::serve(inner.clone(), runtime.sessions(), session_requests)));
        tasks.push(tokio::spawn(members::watch(
            inner.store.clone(),
            inner.members.clone(),
            inner.config.node.clone(),
            lease,
        )));
        inner.restore_share().await;
        tasks.push(tokio::spawn(gateway::watch(inner.clone())));
        inner.publish_status().await?;
        tasks.push(tokio::spawn(refresh(inner.clone())));
        // Subscriptions reach the server before others are told to use them.
        let _ = inner.client.flush().await;
        runtime.attach_cluster(inner.clone())?;
        let superseded = runtime.sessions().defer_to_cluster().await;
        if superseded > 0 {
            info!(sessions = superseded, "restored sessions the cluster also holds were dropped for its copies");
        }
        info!(cluster = %inner.config.name, node = %inner.config.node, "joined the cluster");
        Ok(ClusterNode { inner, tasks })
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.inner.config.node
    }

    /// The live nodes, this one first.
    pub fn nodes(&self) -> Vec<NodeStatus> {
        self.inner.nodes()
    }

    /// Stop taking remote calls (new ones are refused with a retryable
    /// `overloaded`, so callers go elsewhere), wait up to `grace` for the
    /// running ones, and say so in the membership entry.
    pub async fn drain(&self, grace: Duration) {
        self.inner.drain_remote(grace).await;
    }

    /// Leave: stop serving, remove this node's entry, close the connection.
    pub async fn leave(self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Err(e) = self.inner.store.delete(&self.inner.config.node).await {
            warn!(error = %e, "cannot remove this node's membership entry (it will age out)");
        }
        let _ = self.inner.client.flush().await;
        info!(node = %self.inner.config.node, "left the cluster");
    }
}

/// Keep this node's entries fresh: every third of the lease, its
/// membership and its gateway share; and let peers that went quiet stop
/// sharing LM limits.
async fn refresh(node: Arc<Inner>) {
    let mut every = tokio::time::interval(node.lease() / 3);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if let Err(e) = node.publish_status().await {
            warn!(error = %e, "cannot refresh this node's membership entry");
        }
        if let Err(e) = node.publish_share().await {
            warn!(error = %e, "cannot refresh this node's gateway entry");
        }
        node.apply_shares();
    }
}

/// The floor under any remote call from here: `samples` bare NATS
/// request/reply round trips (an empty payload, answered by a responder on
/// a second connection in this process) through the cluster's servers.
/// For diagnostics and benchmarks.
pub async fn nats_round_trip(config: &ClusterConfig, samples: usize) -> Result<Vec<Duration>> {
    use futures_util::StreamExt;
    let (client, responder) = (connect::connect(config).await?, connect::connect(config).await?);
    let subject = format!("{}.probe.{}", Names::new(&config.name).pool("_"), client.new_inbox());
    let transport = |e: &dyn std::fmt::Display| Error::new(ErrorKind::Transport, format!("NATS round trip: {e}"));
    let mut sub = responder.subscribe(subject.clone()).await.map_err(|e| transport(&e))?;
    responder.flush().await.map_err(|e| transport(&e))?;
    let answer = tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Some(reply) = m.reply {
                let _ = responder.publish(reply, bytes::Bytes::new()).await;
            }
        }
    });
    // Interest reaches the other servers of a NATS cluster (and a loaded
    // single server's routing) a moment after the flush: warm up until the
    // responder answers, within a bound, before timing anything.
    let warm_until = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match client.request(subject.clone(), bytes::Bytes::new()).await {
            Ok(_) => break,
            Err(e) if std::time::Instant::now() < warm_until => {
                tracing::debug!("NATS round trip warm-up: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(transport(&e)),
        }
    }
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = std::time::Instant::now();
        client.request(subject.clone(), bytes::Bytes::new()).await.map_err(|e| transport(&e))?;
        times.push(t.elapsed());
    }
    answer.abort();
    Ok(times)
}
