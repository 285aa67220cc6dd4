//! The runtime from synchronous code: `BlockingRuntime` owns its own tokio
//! runtime, so `main` needs no async.
//!
//! `cargo run --example blocking`

use dspex::native::lm::{config_from_env, offline::OfflineResponder, server::LmServer};
use dspex::{BlockingRuntime, LmConfig, PoolConfig, Runtime};
use serde_json::json;

fn main() -> dspex::Result<()> {
    // The offline LM server needs an async runtime of its own.
    let io = tokio::runtime::Runtime::new().map_err(|e| dspex::Error::internal(e.to_string()))?;
    let from_env = config_from_env()?;
    let offline = match &from_env {
        Some(_) => None,
        None => Some(io.block_on(LmServer::start(OfflineResponder::new()))?),
    };
    let lm = from_env.unwrap_or_else(|| {
        LmConfig::new("offline").with_base_url(offline.as_ref().map(|s| s.base_url()).unwrap_or_default())
    });

    let rt = BlockingRuntime::start(Runtime::builder().lm(lm).pool(PoolConfig::new("general").size(1)))?;
    let q = json!({"question": "What is the capital of France?"}).as_object().cloned().unwrap_or_default();
    let out = rt.predict("question -> answer", q)?;
    println!("{} (via {})", out.prediction.fields["answer"], out.meta.route.label());
    rt.shutdown()
}
