//! A runtime with no Python at all: native programs, sessions and pipelines
//! run; what needs Python is refused with a `config` error naming the pool.
//! The runtime runs in a child process whose `DSPEX_PYTHON` names an
//! interpreter that does not exist and whose `PATH` has no Python on it.

use dspex::native::lm::offline::OfflineResponder;
use dspex::native::lm::server::LmServer;
use dspex::{ErrorKind, LmConfig, Map, Pipeline, Program, ProgramSpec, RequestOptions, Route, Runtime, Step, StepKind};
use serde_json::json;

use crate::support::runtime;

fn inputs(v: serde_json::Value) -> Map {
    v.as_object().cloned().expect("an object")
}

#[test]
#[ignore = "helper process, started by a_native_only_runtime_needs_no_python"]
fn native_only_child() {
    if std::env::var_os("DSPEX_NATIVE_ONLY_CHILD").is_none() {
        return;
    }
    runtime().block_on(async {
        let server = LmServer::start(OfflineResponder::new()).await.unwrap();
        let lm = LmConfig::new("offline").with_base_url(server.base_url()).with_api_key("test");
        // Without `native_only` the default pool needs the missing interpreter.
        let e = Runtime::builder().lm(lm.clone()).start().await.unwrap_err();
        assert!(e.message().contains("cannot start") && e.message().contains("python3"), "{e}");

        let rt = Runtime::builder().native_only().lm(lm).start().await.unwrap();
        assert!(rt.pools().is_empty() && rt.python().is_none());
        let q = inputs(json!({"question": "What is 17 + 25?"}));
        let out = rt.chain_of_thought("question -> answer: int", q.clone()).await.unwrap();
        assert_eq!((out.meta.route.clone(), out.get("answer")), (Route::Native, Some(&json!(42))));

        let chat = rt.session().await.unwrap();
        chat.define("chat", ProgramSpec::predict("history: dspy.History, question -> answer")).await.unwrap();
        assert_eq!(chat.run("chat", q.clone()).await.unwrap().meta.route, Route::Native);
        assert_eq!(chat.history("chat").await.unwrap().len(), 1);

        let pipeline = Pipeline::builder("p")
            .input("question")
            .step(Step::signature("answer", StepKind::Native, "question -> answer"))
            .build()
            .unwrap();
        assert_eq!(rt.run_pipeline(&pipeline, q.clone()).await.unwrap().get("answer"), Some(&json!("42")));

        // What needs Python says so, naming the pool it needed.
        let python = Program::new(ProgramSpec::predict("question -> answer"));
        let e = rt.run(&python, q.clone(), RequestOptions::python()).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config, "{e}");
        assert!(e.message().contains("general") && e.message().contains("no Python pools"), "{e}");
        assert_eq!(e.context().pool.as_deref(), Some("general"));
        let react = rt.react("question -> answer", &["tools:search"], q.clone()).await.unwrap_err();
        assert_eq!(react.kind(), ErrorKind::Config, "{react}");
        let call = rt.call("general", "noop", json!({}), RequestOptions::default()).await.unwrap_err();
        assert_eq!(call.kind(), ErrorKind::Config, "{call}");
        rt.shutdown().await.unwrap();
        println!("NATIVE-ONLY OK");
    });
}

#[test]
fn a_native_only_runtime_needs_no_python() {
    let empty = std::env::temp_dir().join(format!("dspex-no-python-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "native_only::native_only_child", "--nocapture", "--test-threads=1"])
        .env("DSPEX_NATIVE_ONLY_CHILD", "1")
        .env("DSPEX_PYTHON", empty.join("python3"))
        .env("PATH", &empty)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir(&empty);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("NATIVE-ONLY OK"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
