//! The offline OpenAI-compatible LM server on its own, for poking at the
//! Python side by hand (`curl`, a DSPy script, a profiler): prints its base
//! URL and serves until killed. An optional argument adds that many
//! milliseconds of latency to every reply.
//!
//! ```text
//! cargo run -p dspex-native --example offline_lm [LATENCY_MS]
//! ```

use std::time::Duration;

use dspex_native::lm::offline::OfflineResponder;
use dspex_native::lm::server::LmServer;

#[tokio::main(flavor = "current_thread")]
async fn main() -> dspex_core::Result<()> {
    let latency = std::env::args().nth(1).and_then(|ms| ms.parse().ok()).map(Duration::from_millis);
    let responder = match latency {
        Some(latency) => OfflineResponder::with_latency(latency),
        None => OfflineResponder::new(),
    };
    let server = LmServer::start(responder).await?;
    println!("{}", server.base_url());
    std::future::pending::<()>().await;
    Ok(())
}
