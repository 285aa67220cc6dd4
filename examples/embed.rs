//! Embed the runtime: start it, run one signature natively and in Python,
//! look at the routing metadata and the supervision tree, shut down.
//!
//! Uses the LM named by `DSPEX_LM_BASE_URL` / `DSPEX_LM_MODEL` /
//! `DSPEX_LM_API_KEY` when set, else a deterministic offline LM on
//! 127.0.0.1. Python comes from `DSPEX_PYTHON` (or is provisioned).
//!
//! `cargo run --example embed`

use dspex::native::lm::{config_from_env, offline::OfflineResponder, server::LmServer};
use dspex::{LmConfig, PoolConfig, Program, ProgramSpec, RequestOptions, Runtime};
use serde_json::json;

#[tokio::main]
async fn main() -> dspex::Result<()> {
    let from_env = config_from_env()?;
    let offline = match &from_env {
        Some(_) => None,
        None => Some(LmServer::start(OfflineResponder::new()).await?),
    };
    let lm = from_env.unwrap_or_else(|| {
        LmConfig::new("offline").with_base_url(offline.as_ref().map(|s| s.base_url()).unwrap_or_default())
    });

    let rt = Runtime::builder().lm(lm.with_temperature(0.0)).pool(PoolConfig::new("general").size(2)).start().await?;
    let program = Program::new(ProgramSpec::chain_of_thought("question -> answer: int"));
    let inputs = json!({"question": "What is 17 + 25?"}).as_object().cloned().unwrap_or_default();

    for opts in [RequestOptions::default(), RequestOptions::python()] {
        let out = rt.run(&program, inputs.clone(), opts).await?;
        println!(
            "{:<16} answer={} ({}; {} µs; trace {})",
            out.meta.route.label(),
            out.prediction.fields["answer"],
            out.meta.reason,
            out.meta.timings.total_us,
            out.meta.trace_id
        );
    }
    let tree = rt.tree().await?;
    for node in tree.walk() {
        println!("{:<20} {:<10} {:<9} pid={:?}", node.name, node.kind, node.status, node.info.pid);
    }
    rt.shutdown().await
}
