//! Cluster settings and what nodes say of themselves.
//!
//! A runtime joins a cluster of dspex nodes over NATS (the `dspex-cluster`
//! crate does the talking); this module holds what both the configuration
//! and the runtime's public API need: [`ClusterConfig`] (the `[cluster]`
//! section) and [`NodeStatus`] (one node as the membership bucket has it).
//!
//! ```
//! use dspex_core::ClusterConfig;
//!
//! let c = ClusterConfig::new("nats://127.0.0.1:4222", "node-a").allow_insecure(true);
//! assert!(c.check().is_ok());
//! // Without credentials, only a loopback server is accepted, and only when asked.
//! let open = ClusterConfig::new("nats://10.0.0.7:4222", "node-a").allow_insecure(true);
//! assert!(open.check().is_err());
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::Secret;
use crate::error::{Error, ErrorKind, Result};

/// How a node joins the cluster (`[cluster]` in the runtime's TOML).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS server URLs (`nats://host:port`, `tls://host:port`); the client
    /// fails over between them.
    pub urls: Vec<String>,
    /// The cluster's name: subjects and buckets are prefixed with it, so
    /// several clusters can share one NATS deployment.
    #[serde(default = "default_cluster_name")]
    pub name: String,
    /// This node's name, unique in the cluster.
    pub node: String,
    /// Token authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// User and password authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The password of `user`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// A file holding an nkey seed (`SU…`), for nkey authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nkey_seed_file: Option<PathBuf>,
    /// Require TLS (also implied by `tls://` URLs and by any TLS file below).
    #[serde(default)]
    pub tls: bool,
    /// CA certificate(s) to verify the server with (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate (PEM), for mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    /// Client key (PEM), for mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<PathBuf>,
    /// Join without credentials. Accepted only when every URL is loopback.
    #[serde(default)]
    pub allow_insecure: bool,
    /// Local pools other nodes may use (`None`: all of them; empty: none —
    /// a client-only node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offer: Option<Vec<String>>,
    /// Remote requests this node runs at once; more are refused with a
    /// retryable `overloaded` (the sender tries another node).
    #[serde(default = "default_max_remote")]
    pub max_remote_in_flight: usize,
    /// Send work to another node once this many requests wait for a local
    /// worker (the local pool is saturated).
    #[serde(default = "default_spill_queue")]
    pub spill_queue: usize,
    /// A node that has not refreshed its membership entry for this long is
    /// gone (milliseconds; refreshed every third of it).
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// A serving node says a request is still running this often
    /// (milliseconds); three silent intervals mean the node was lost.
    #[serde(default = "default_keepalive_ms")]
    pub keepalive_ms: u64,
    /// Replicas of the membership bucket in a clustered NATS deployment
    /// (3 survives the loss of one server; at most the number of servers).
    #[serde(default = "default_kv_replicas")]
    pub kv_replicas: usize,
}

fn default_kv_replicas() -> usize {
    1
}

fn default_cluster_name() -> String {
    "dspex".into()
}
fn default_max_remote() -> usize {
    256
}
fn default_spill_queue() -> usize {
    8
}
fn default_lease_ms() -> u64 {
    3_000
}
fn default_keepalive_ms() -> u64 {
    500
}

impl ClusterConfig {
    /// Join the cluster at `url` as `node`, with the defaults.
    pub fn new(url: impl Into<String>, node: impl Into<String>) -> ClusterConfig {
        ClusterConfig {
            urls: vec![url.into()],
            name: default_cluster_name(),
            node: node.into(),
            token: None,
            user: None,
            password: None,
            nkey_seed_file: None,
            tls: false,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            allow_insecure: false,
            offer: None,
            max_remote_in_flight: default_max_remote(),
            spill_queue: default_spill_queue(),
            lease_ms: default_lease_ms(),
            keepalive_ms: default_keepalive_ms(),
            kv_replicas: default_kv_replicas(),
        }
    }

    /// Authenticate with a token.
    pub fn token(mut self, token: impl Into<String>) -> ClusterConfig {
        self.token = Some(Secret::new(token));
        self
    }

    /// Join without credentials (loopback servers only).
    pub fn allow_insecure(mut self, on: bool) -> ClusterConfig {
        self.allow_insecure = on;
        self
    }

    /// Offer only these local pools to other nodes (empty: a client-only node).
    pub fn offer(mut self, pools: impl IntoIterator<Item = impl Into<String>>) -> ClusterConfig {
        self.offer = Some(pools.into_iter().map(Into::into).collect());
        self
    }

    /// Set the cluster's name.
    pub fn name(mut self, name: impl Into<String>) -> ClusterConfig {
        self.name = name.into();
        self
    }

    /// Set the membership lease (milliseconds).
    pub fn lease_ms(mut self, ms: u64) -> ClusterConfig {
        self.lease_ms = ms;
        self
    }

    /// Whether any credential is configured.
    pub fn has_credentials(&self) -> bool {
        self.token.is_some() || self.user.is_some() || self.nkey_seed_file.is_some() || self.tls_cert_file.is_some()
    }

    /// Whether this node offers local pool `pool` to the cluster.
    pub fn offers(&self, pool: &str) -> bool {
        self.offer.as_ref().is_none_or(|o| o.iter().any(|p| p == pool))
    }

    /// Reject settings that cannot work or are unsafe: no URL, names that
    /// cannot be NATS subject tokens, a password without a user, and joining
    /// without credentials anywhere but loopback (and there only with
    /// `allow_insecure`).
    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(Error::new(ErrorKind::Config, format!("[cluster]: {m}")));
        if self.urls.is_empty() {
            return bad("no NATS server URL (urls)".into());
        }
        for (what, v) in [("name", &self.name), ("node", &self.node)] {
            if !is_token(v) {
                return bad(format!("{what} {v:?} must be letters, digits, '-' or '_' (it is part of subjects)"));
            }
        }
        if self.password.is_some() != self.user.is_some() {
            return bad("user and password go together".into());
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return bad("tls_cert_file and tls_key_file go together".into());
        }
        if !(1..=5).contains(&self.kv_replicas) {
            return bad(format!("kv_replicas must be 1 to 5, not {}", self.kv_replicas));
        }
        if self.lease_ms < 300 || self.keepalive_ms == 0 {
            return bad("lease_ms must be at least 300 and keepalive_ms above 0".into());
        }
        if !self.has_credentials() {
            let loopback = self.urls.iter().all(|u| is_loopback_url(u));
            if !loopback {
                return bad(format!(
                    "refusing to join {} without credentials: set token, user/password, nkey_seed_file or a TLS \
                     client certificate (allow_insecure is honoured for loopback servers only)",
                    self.urls.join(", ")
                ));
            }
            if !self.allow_insecure {
                return bad("no credentials: set token, user/password or nkey_seed_file, or allow_insecure = true \
                            for a loopback server"
                    .into());
            }
        }
        Ok(())
    }
}

/// A NATS subject token: what node and cluster names may contain.
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Whether `url`'s host is a loopback address (`localhost`, `127.x`, `::1`).
fn is_loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(inner) = host_port.strip_prefix('[') {
        inner.split(']').next().unwrap_or(inner)
    } else {
        host_port.split(':').next().unwrap_or(host_port)
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// One pool as its node reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolStatus {
    /// Pool name.
    pub name: String,
    /// Configured workers.
    pub size: usize,
    /// Workers ready.
    pub ready: usize,
    /// Requests running.
    pub in_flight: usize,
    /// Requests waiting for a worker.
    pub queued: usize,
    /// Whether other nodes may send it work.
    pub offered: bool,
}

/// A cluster node, as its membership entry says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Node name.
    pub node: String,
    /// dspex version it runs.
    pub version: String,
    /// Its pools.
    pub pools: Vec<PoolStatus>,
    /// Remote requests it is running.
    pub remote_in_flight: usize,
    /// Taking new work (false while draining).
    pub accepting: bool,
    /// Milliseconds since the entry was last refreshed, as this node saw it.
    #[serde(default)]
    pub age_ms: u64,
    /// This runtime's own entry.
    #[serde(default)]
    pub local: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_urls_are_recognised() {
        for u in ["nats://127.0.0.1:4222", "localhost:4222", "nats://[::1]:4222", "tls://user:pw@127.0.0.2:1"] {
            assert!(is_loopback_url(u), "{u}");
        }
        for u in ["nats://10.0.0.1:4222", "nats://example.com:4222", "nats://[2001:db8::1]:4222"] {
            assert!(!is_loopback_url(u), "{u}");
        }
    }

    #[test]
    fn insecure_joins_need_loopback_and_consent() {
        let base = ClusterConfig::new("nats://127.0.0.1:4222", "a");
        assert!(base.check().is_err(), "no credentials and no allow_insecure");
        assert!(base.clone().allow_insecure(true).check().is_ok());
        assert!(base.clone().token("t").check().is_ok());
        let remote = ClusterConfig::new("nats://192.0.2.1:4222", "a").allow_insecure(true);
        assert!(remote.check().unwrap_err().message().contains("without credentials"));
        assert!(remote.token("t").check().is_ok());
        let bad = ClusterConfig::new("nats://127.0.0.1:4222", "a.b").allow_insecure(true);
        assert!(bad.check().unwrap_err().message().contains("node"));
    }

    #[test]
    fn offer_defaults_to_every_pool() {
        let c = ClusterConfig::new("nats://127.0.0.1:1", "a");
        assert!(c.offers("general"));
        let c = c.offer(Vec::<String>::new());
        assert!(!c.offers("general"));
    }

    #[test]
    fn the_toml_section_parses() {
        let c: ClusterConfig = toml::from_str(
            "urls = [\"nats://127.0.0.1:4222\"]\nnode = \"a\"\ntoken = \"s3cret\"\noffer = [\"general\"]\n",
        )
        .unwrap();
        assert_eq!(c.name, "dspex");
        assert_eq!(c.token.as_ref().map(Secret::expose), Some("s3cret"));
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(toml::from_str::<ClusterConfig>("urls = []\nnode = \"a\"\nbogus = 1\n").is_err());
    }
}
