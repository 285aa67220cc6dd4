//! Native modules against real DSPy talking to the same local LM server:
//! the requests must carry the same messages.

use dspex_core::{AdapterKind, LmConfig, Map, ModuleKind, ProgramSpec, SignatureSpec};
use dspex_native::lm::offline::OfflineResponder;
use dspex_native::lm::server::{LmServer, Reply, Scripted};
use dspex_native::lm::OpenAiClient;
use dspex_native::{NativeProgram, PredictOptions};
use serde_json::{json, Value};

use crate::support::{run_python, runtime};

const RUN_DSPY: &str = r#"
import json, sys, warnings
warnings.simplefilter("ignore")
import dspy
args = json.load(sys.stdin)
lm = dspy.LM("openai/test-model", api_base=args["base_url"], api_key="sk-test", cache=False, num_retries=0)
adapter = dspy.JSONAdapter() if args["adapter"] == "json" else dspy.ChatAdapter()
sig = args["signature"]
module = dspy.ChainOfThought(sig) if args["module"] == "chain_of_thought" else dspy.Predict(sig)
predictor = module.predict if args["module"] == "chain_of_thought" else module
predictor.demos = [dspy.Example(**d) for d in args["demos"]]
with dspy.context(lm=lm, adapter=adapter):
    pred = module(**args["inputs"])
print(json.dumps({k: pred[k] for k in pred.keys()}))
"#;

const COMPILE_SAVE: &str = r#"
import json, sys, warnings
warnings.simplefilter("ignore")
import dspy
from dspy.teleprompt import BootstrapFewShot
args = json.load(sys.stdin)
lm = dspy.LM("openai/offline", api_base=args["base_url"], api_key="sk-test", cache=False, num_retries=0)
train = [dspy.Example(question=f"What is {a} + {b}?", answer=str(a + b)).with_inputs("question")
         for a, b in [(2, 3), (10, 7), (21, 21), (5, 8)]]
metric = lambda ex, pred, trace=None: ex.answer == pred.answer
with dspy.context(lm=lm):
    compiled = BootstrapFewShot(metric=metric, max_bootstrapped_demos=2, max_labeled_demos=2).compile(
        dspy.ChainOfThought("question -> answer"), trainset=train)
    compiled.save(args["path"])
    pred = compiled(question="What is 17 + 25?")
print(json.dumps({"answer": pred.answer, "reasoning": pred.reasoning}))
"#;

fn native_request(server: &LmServer, spec: &ProgramSpec, inputs: &Map) -> Value {
    runtime().block_on(async {
        let lm = OpenAiClient::new(&LmConfig::new("openai/test-model").with_base_url(server.base_url())).unwrap();
        let program = NativeProgram::from_spec(spec).unwrap();
        program.call(&lm, inputs, &PredictOptions::default()).await.unwrap();
    });
    server.requests().last().cloned().unwrap()
}

#[test]
fn native_predict_sends_what_dspy_predict_sends() {
    let rt = runtime();
    let cases = [
        ("question -> answer", ModuleKind::Predict, AdapterKind::Chat, json!([]), "[[ ## answer ## ]]\nParis"),
        (
            "question, context: list[str] -> answer: int, confident: bool",
            ModuleKind::Predict,
            AdapterKind::Chat,
            json!([{"question": "1+1?", "context": ["math"], "answer": 2, "confident": true}]),
            "[[ ## answer ## ]]\n4\n\n[[ ## confident ## ]]\nTrue",
        ),
        (
            "question -> answer",
            ModuleKind::ChainOfThought,
            AdapterKind::Chat,
            json!([{"question": "2+3?", "reasoning": "add", "answer": "5"}, {"question": "q2", "answer": "a2"}]),
            "[[ ## reasoning ## ]]\nr\n\n[[ ## answer ## ]]\nParis",
        ),
        (
            "question -> answer, tags: list[str]",
            ModuleKind::Predict,
            AdapterKind::Json,
            json!([]),
            "{\"answer\": \"Paris\", \"tags\": [\"geo\"]}",
        ),
    ];
    for (sig, module, adapter, demos, reply) in cases {
        let server = rt.block_on(LmServer::start(Scripted::new(vec![Reply::text(reply)]))).unwrap();
        let inputs =
            json!({"question": "What is the capital of France?", "context": ["Paris is in France.", "Lyon too."]});
        let inputs = inputs.as_object().cloned().unwrap();
        let inputs: Map = inputs.into_iter().filter(|(k, _)| sig.contains(k.as_str())).collect();
        let mut spec = ProgramSpec::predict(SignatureSpec::Text(sig.into()));
        spec.module = module;
        spec.adapter = adapter;
        spec.demos = demos.as_array().unwrap().iter().map(|d| d.as_object().cloned().unwrap()).collect();
        let native = native_request(&server, &spec, &inputs);
        server.clear_requests();
        let args = json!({"base_url": server.base_url(), "signature": sig, "module": module.as_str(),
            "adapter": adapter.as_str(), "demos": demos, "inputs": inputs});
        run_python(RUN_DSPY, &args);
        let python = server.requests().last().cloned().expect("dspy sent a request");
        assert_eq!(native["messages"], python["messages"], "messages differ for {sig} ({module:?}, {adapter:?})");
        assert_eq!(native.get("response_format"), python.get("response_format"));
    }
}

#[test]
fn program_compiled_by_dspy_runs_natively() {
    let rt = runtime();
    let server = rt.block_on(LmServer::start(OfflineResponder::new())).unwrap();
    let dir = std::env::temp_dir().join(format!("dspex-compiled-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("program.json");
    let out = run_python(COMPILE_SAVE, &json!({"base_url": server.base_url(), "path": path}));
    assert_eq!(out["answer"], "42");
    let python = server.requests().last().cloned().unwrap();

    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(!saved["predict"]["demos"].as_array().unwrap().is_empty(), "BootstrapFewShot produced demos");
    let mut program = NativeProgram::from_spec(&ProgramSpec::chain_of_thought("question -> answer")).unwrap();
    program.load_saved(&saved, None).unwrap();
    server.clear_requests();
    let pred = rt.block_on(async {
        let lm = OpenAiClient::new(&LmConfig::new("openai/offline").with_base_url(server.base_url())).unwrap();
        program
            .call(&lm, json!({"question": "What is 17 + 25?"}).as_object().unwrap(), &PredictOptions::default())
            .await
            .unwrap()
    });
    assert_eq!(pred.fields["answer"], "42");
    let native = server.requests().last().cloned().unwrap();
    assert_eq!(native["messages"], python["messages"], "the loaded program prompts exactly as DSPy's");
    let _ = std::fs::remove_dir_all(&dir);
}
