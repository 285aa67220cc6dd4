//! Connecting to NATS with the `[cluster]` settings: credentials, TLS, and
//! the refusal to join an open server anywhere but loopback.

use std::time::Duration;

use async_nats::ConnectOptions;
use dspex_core::{ClusterConfig, Error, ErrorKind, Result};

/// Connect as `config.node`. Checks the settings first
/// ([`ClusterConfig::check`]), so an insecure join is refused before any
/// byte is sent.
pub(crate) async fn connect(config: &ClusterConfig) -> Result<async_nats::Client> {
    config.check()?;
    let mut opts = ConnectOptions::new()
        .name(format!("dspex:{}:{}", config.name, config.node))
        .connection_timeout(Duration::from_secs(5));
    if let Some(t) = &config.token {
        opts = opts.token(t.require("[cluster] token")?.to_string());
    }
    if let (Some(u), Some(p)) = (&config.user, &config.password) {
        opts = opts.user_and_password(u.clone(), p.require("[cluster] password")?.to_string());
    }
    if let Some(path) = &config.nkey_seed_file {
        let seed = std::fs::read_to_string(path).map_err(|e| {
            Error::new(ErrorKind::Config, format!("[cluster] cannot read nkey_seed_file {}: {e}", path.display()))
        })?;
        opts = opts.nkey(seed.trim().to_string());
    }
    let tls = config.tls
        || config.tls_ca_file.is_some()
        || config.tls_cert_file.is_some()
        || config.urls.iter().any(|u| u.starts_with("tls://"));
    if tls {
        opts = opts.require_tls(true);
    }
    if let Some(ca) = &config.tls_ca_file {
        opts = opts.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&config.tls_cert_file, &config.tls_key_file) {
        opts = opts.add_client_certificate(cert.clone(), key.clone());
    }
    opts.connect(config.urls.as_slice()).await.map_err(|e| {
        Error::new(ErrorKind::Transport, format!("cannot connect to the cluster at {}: {e}", config.urls.join(", ")))
            .with_node(config.node.clone())
            .with_retryable(true)
    })
}
