//! Run a DSPy ChainOfThought natively against an OpenAI-compatible LM.
//!
//! With `DSPEX_LM_BASE_URL` / `DSPEX_LM_MODEL` / `DSPEX_LM_API_KEY` set, a real
//! service answers; otherwise a deterministic offline LM on 127.0.0.1 does.
//!
//! `cargo run --example native_predict`

use dspex::native::lm::{offline::OfflineResponder, server::LmServer, OpenAiClient};
use dspex::native::{parse_signature, ChainOfThought, PredictOptions};
use dspex::LmConfig;
use serde_json::json;

#[tokio::main]
async fn main() -> dspex::Result<()> {
    let (config, _offline) = match std::env::var("DSPEX_LM_BASE_URL") {
        Ok(url) => {
            let model = std::env::var("DSPEX_LM_MODEL").unwrap_or_else(|_| "gpt-4o-mini".into());
            let key =
                std::env::var("DSPEX_LM_API_KEY").or_else(|_| std::env::var("OPENAI_API_KEY")).unwrap_or_default();
            (LmConfig::new(model).with_base_url(url).with_api_key(key), None)
        }
        Err(_) => {
            let server = LmServer::start(OfflineResponder::new()).await?;
            (LmConfig::new("offline").with_base_url(server.base_url()), Some(server))
        }
    };
    let lm = OpenAiClient::new(&config)?;
    let cot = ChainOfThought::new(parse_signature("question -> answer: int", None)?)?;
    let inputs = json!({"question": "What is 17 + 25?"});
    let pred = cot.call(&lm, inputs.as_object().unwrap_or(&Default::default()), &PredictOptions::default()).await?;
    println!("reasoning: {}", pred.fields["reasoning"]);
    println!("answer:    {}", pred.fields["answer"]);
    Ok(())
}
