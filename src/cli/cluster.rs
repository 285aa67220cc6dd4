//! Cluster flags shared by `serve` and `call`, and joining with or without
//! the `cluster` feature compiled in.

use dspex::{ClusterConfig, Result, Runtime};

/// `--cluster URL --node NAME …`: join a cluster (overrides `[cluster]`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClusterFlags {
    /// NATS server URL(s) of the cluster to join (repeat for several).
    #[arg(long = "cluster", value_name = "URL")]
    pub urls: Vec<String>,
    /// This node's name in the cluster (default: `HOST-PID`).
    #[arg(long)]
    pub node: Option<String>,
    /// The cluster's name (subjects and buckets are prefixed with it).
    #[arg(long)]
    pub cluster_name: Option<String>,
    /// Token for the NATS server (or DSPEX_CLUSTER_TOKEN).
    #[arg(long)]
    pub cluster_token: Option<String>,
    /// Join a loopback server without credentials.
    #[arg(long)]
    pub allow_insecure: bool,
}

impl ClusterFlags {
    /// The cluster settings: the file's `[cluster]` with the flags over it.
    pub fn settle(&self, file: Option<ClusterConfig>) -> Option<ClusterConfig> {
        let mut c = match (file, self.urls.is_empty()) {
            (Some(c), true) => c,
            (None, true) => return None,
            (Some(mut c), false) => {
                c.urls = self.urls.clone();
                c
            }
            (None, false) => {
                let mut c = ClusterConfig::new(self.urls[0].clone(), default_node());
                c.urls = self.urls.clone();
                c
            }
        };
        if let Some(n) = &self.node {
            c.node = n.clone();
        }
        if let Some(n) = &self.cluster_name {
            c.name = n.clone();
        }
        if let Some(t) = self.cluster_token.clone().or_else(|| std::env::var("DSPEX_CLUSTER_TOKEN").ok()) {
            c = c.token(t);
        }
        if self.allow_insecure {
            c.allow_insecure = true;
        }
        Some(c)
    }
}

fn default_node() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String =
        host.trim().chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).collect();
    format!("{}-{}", if host.is_empty() { "node" } else { &host }, std::process::id())
}

/// A runtime's cluster membership (nothing without the feature).
#[cfg(feature = "cluster")]
pub type Joined = dspex::cluster::ClusterNode;
/// A runtime's cluster membership (nothing without the feature).
#[cfg(not(feature = "cluster"))]
#[derive(Debug)]
pub struct Joined;

/// Whether this build can join a cluster (the `cluster` feature).
pub fn available() -> Result<()> {
    if cfg!(feature = "cluster") {
        Ok(())
    } else {
        Err(dspex::Error::new(
            dspex::ErrorKind::Config,
            "this dspex was built without the `cluster` feature (cargo build --features cluster)",
        ))
    }
}

/// Join the cluster `config` names, if any.
pub async fn join(rt: &Runtime, config: Option<ClusterConfig>) -> Result<Option<Joined>> {
    let Some(config) = config else { return Ok(None) };
    #[cfg(feature = "cluster")]
    {
        Ok(Some(dspex::cluster::ClusterNode::join(rt, config).await?))
    }
    #[cfg(not(feature = "cluster"))]
    {
        let _ = (rt, config);
        available().map(|()| None)
    }
}

/// Finish remote work (up to `grace`), then leave.
pub async fn leave(joined: Option<Joined>, grace: std::time::Duration) {
    #[cfg(feature = "cluster")]
    if let Some(node) = joined {
        node.drain(grace).await;
        node.leave().await;
    }
    #[cfg(not(feature = "cluster"))]
    let _ = (joined, grace);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_make_a_config_of_their_own() {
        let none = ClusterFlags::default();
        assert!(none.settle(None).is_none());
        let file = ClusterConfig::new("nats://127.0.0.1:1", "from-file");
        assert_eq!(none.settle(Some(file.clone())).map(|c| c.node), Some("from-file".into()));
        let flags = ClusterFlags {
            urls: vec!["nats://127.0.0.1:2".into(), "nats://127.0.0.1:3".into()],
            node: Some("n".into()),
            cluster_name: Some("prod".into()),
            cluster_token: Some("t0ken".into()),
            allow_insecure: true,
        };
        let c = flags.settle(Some(file)).unwrap();
        assert_eq!((c.urls.len(), c.node.as_str(), c.name.as_str()), (2, "n", "prod"));
        assert_eq!(c.token.as_ref().map(|t| t.expose()), Some("t0ken"));
        assert!(c.allow_insecure);
        let fresh = ClusterFlags { node: None, ..flags }.settle(None).unwrap();
        assert!(fresh.node.contains('-') && fresh.check().is_ok(), "{fresh:?}");
        assert_eq!(available().is_ok(), cfg!(feature = "cluster"));
    }
}
