//! Retrieve → generate → check, with parallel steps: the same pipeline from
//! the builder and from `examples/pipelines/answer.toml`.
//!
//! `cargo run --example pipeline`

use dspex::native::lm::{config_from_env, offline::OfflineResponder, server::LmServer};
use dspex::{Condition, LmConfig, ModuleKind, Pipeline, Runtime, Step, StepKind};
use serde_json::json;

#[tokio::main]
async fn main() -> dspex::Result<()> {
    let offline = LmServer::start(OfflineResponder::new()).await?;
    let lm = config_from_env()?.unwrap_or_else(|| LmConfig::new("offline").with_base_url(offline.base_url()));
    let rt = Runtime::builder().lm(lm).start().await?;

    let pipeline = Pipeline::builder("answer")
        .input("question")
        .step(Step::parallel(
            "retrieve",
            [
                Step::signature("keywords", StepKind::Native, "question -> keywords: list[str]"),
                Step::signature("passages", StepKind::Python, "question -> context"),
            ],
        ))
        .step(
            Step::signature("generate", StepKind::Program, "question, context -> answer")
                .module(ModuleKind::ChainOfThought),
        )
        .step(Step::conditional(
            "check",
            Condition::truthy("answer"),
            [Step::signature("verify", StepKind::Native, "question, answer -> verdict: bool")],
            [],
        ))
        .build()?;
    let inputs = json!({"question": "What is the capital of Italy?"}).as_object().cloned().unwrap_or_default();
    let result = rt.run_pipeline(&pipeline, inputs).await?;
    for step in &result.steps {
        let route = step.route.as_ref().map(|r| r.label()).unwrap_or_else(|| step.kind.as_str().into());
        println!("{:<20} {:<15} {:>7} µs", step.step, route, step.elapsed_us);
    }
    println!("answer: {}  verdict: {}", result.outputs["answer"], result.outputs["verdict"]);

    // The file form, with a map step over topics.
    let from_file = Pipeline::from_file("examples/pipelines/answer.toml")?;
    let inputs = json!({"question": "What is the capital of Kenya?", "topics": ["geography", "history"]});
    let result = rt.run_pipeline(&from_file, inputs.as_object().cloned().unwrap_or_default()).await?;
    println!("from the file: {}", serde_json::to_string(&result.outputs).unwrap_or_default());
    rt.shutdown().await
}
