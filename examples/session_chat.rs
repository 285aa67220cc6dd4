//! A multi-turn chat session: its `dspy.History` lives in Rust, its Python
//! work is pinned to one worker, and it survives that worker's `kill -9`.
//!
//! `cargo run --example session_chat` (a real LM with `DSPEX_LM_BASE_URL`,
//! else the offline one; Python from `DSPEX_PYTHON`, or provisioned).

use dspex::native::lm::{config_from_env, offline::OfflineResponder, server::LmServer};
use dspex::{LmConfig, Map, ProgramSpec, RequestOptions, Runtime};

fn ask(question: &str) -> Map {
    Map::from_iter([("question".to_string(), question.into())])
}

#[tokio::main]
async fn main() -> dspex::Result<()> {
    let offline = LmServer::start(OfflineResponder::new()).await?;
    let lm = config_from_env()?.unwrap_or_else(|| LmConfig::new("offline").with_base_url(offline.base_url()));
    let rt = Runtime::builder().lm(lm).start().await?;

    let chat = rt.session().await?;
    chat.define("chat", ProgramSpec::predict("history: dspy.History, question -> answer")).await?;
    // In Python: DSPy builds the program once in the session's worker.
    let out = chat.run_with("chat", ask("What is the capital of France?"), RequestOptions::python()).await?;
    println!("1: {} (on {})", out.get_str("answer").unwrap_or("?"), out.meta.worker.as_deref().unwrap_or("?"));

    // Kill that worker: the session rebuilds its Python state elsewhere.
    let worker = rt.sessions().list()[0].worker.clone().unwrap_or_default();
    let index = worker.rsplit(':').next().and_then(|i| i.parse().ok()).unwrap_or(0);
    rt.kill_worker("general", index)?;
    let out = chat.run_with("chat", ask("And the capital of Japan?"), RequestOptions::python()).await?;
    println!("2: {} (after kill -9 of {worker})", out.get_str("answer").unwrap_or("?"));

    // Natively: the same history, rendered exactly as DSPy's ChatAdapter does.
    let out = chat.run_with("chat", ask("What is 2 + 3?"), RequestOptions::native()).await?;
    println!("3: {} ({})", out.get_str("answer").unwrap_or("?"), out.meta.route.label());
    for (i, turn) in chat.history("chat").await?.iter().enumerate() {
        println!("   turn {}: {} → {}", i + 1, turn["question"], turn["answer"]);
    }
    println!("rebuilds: {}", rt.sessions().list()[0].rebuilds);
    rt.shutdown().await
}
