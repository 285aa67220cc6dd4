//! The offline OpenAI-compatible LM server on its own, for poking at the
//! Python side by hand (`curl`, a DSPy script, a profiler): prints its base
//! URL and serves until killed.
//!
//! ```text
//! cargo run -p dspex-native --example offline_lm
//! ```

use dspex_native::lm::offline::OfflineResponder;
use dspex_native::lm::server::LmServer;

#[tokio::main(flavor = "current_thread")]
async fn main() -> dspex_core::Result<()> {
    let server = LmServer::start(OfflineResponder::new()).await?;
    println!("{}", server.base_url());
    std::future::pending::<()>().await;
    Ok(())
}
