//! `dspex optimize` and `dspex evaluate` on the example dataset, offline:
//! progress as JSON lines in a log and as a bar on a terminal, the optimized
//! program loadable by DSPy and served natively over HTTP.

use std::process::Stdio;

use serde_json::{json, Value};

use crate::support::{self, bin, repo_root, scratch, Pty, Serve};

fn example(name: &str) -> String {
    repo_root().join("examples/optimize").join(name).display().to_string()
}

#[test]
fn optimize_writes_a_program_dspy_loads_and_http_serves_natively_and_evaluate_scores_it() {
    let dir = scratch("optimize");
    let out = dir.join("qa.optimized.json");
    let run = bin()
        .args(["optimize", &example("qa.toml"), "--trainset", &example("train.jsonl")])
        .args(["-p", "max_bootstrapped_demos=3", "-p", "max_labeled_demos=0", "-o"])
        .arg(&out)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let summary: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!((summary["demos"].clone(), summary["trainset"].clone()), (json!(3), json!(8)), "{summary}");
    assert_eq!(summary["native"], true, "{summary}");
    // Not a terminal: every progress event as a JSON line, in order.
    let events: Vec<Value> = stderr.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(kinds.first(), Some(&"started"), "{stderr}");
    assert_eq!(kinds.last(), Some(&"finished"), "{stderr}");
    assert!(events.iter().any(|e| e["event"] == "progress" && e["total"] == 8), "{stderr}");
    assert!(!stderr.contains("it/s"), "no tqdm bar leaks into the log: {stderr}");

    // DSPy loads it as saved by `program.save`.
    let loaded = support::run_python(
        "import json, sys, dspy\nargs = json.loads(sys.stdin.read())\np = dspy.Predict('question -> answer')\n\
         p.load(args['path'])\nprint(json.dumps({'demos': [dict(d)['answer'] for d in p.demos]}))",
        &json!({"path": out.display().to_string()}),
    );
    assert_eq!(loaded["demos"], json!(["5", "14", "15"]), "{loaded}");

    // `dspex evaluate` scores it (and the file's program without it).
    let eval = |extra: &[&str]| -> Value {
        let r = bin()
            .args(["evaluate", &example("qa.toml"), "--devset", &example("dev.json")])
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        serde_json::from_slice(&r.stdout).unwrap()
    };
    let scored = eval(&["--state", out.to_str().unwrap(), "--results"]);
    assert_eq!((scored["examples"].clone(), scored["score"].clone()), (json!(5), json!(100.0)), "{scored}");
    assert_eq!(scored["results"].as_array().map(Vec::len), Some(5), "{scored}");

    // Served by name from `state_file`, on the native route.
    let config = dir.join("serve.toml");
    std::fs::write(
        &config,
        format!(
            "default_pool = false\n[http]\naddr = \"127.0.0.1:0\"\n[programs.qa]\nmodule = \"predict\"\n\
             signature = \"question -> answer\"\nstate_file = {:?}\n",
            out.display().to_string()
        ),
    )
    .unwrap();
    let serve = Serve::start(&[config.to_str().unwrap()]);
    let addr = serve.ready.split("HTTP API at http://").nth(1).expect("the HTTP API's address").trim().to_string();
    let addr = addr.split([' ', ',']).next().unwrap().to_string();
    support::runtime().block_on(async {
        let r = reqwest::Client::new()
            .post(format!("http://{addr}/v1/programs/qa/run"))
            .header("content-type", "application/json")
            .body(json!({"inputs": {"question": "What is 40 + 2?"}}).to_string())
            .send()
            .await
            .unwrap();
        let reply: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        assert_eq!(reply["meta"]["route"]["target"], "native", "{reply}");
        assert_eq!(reply["prediction"]["fields"]["answer"], "42", "{reply}");
    });
    assert_eq!(serve.stop(), 0);

    // Bad input is a clear error, not a panic.
    let r = bin().args(["optimize", &example("qa.toml"), "--trainset", &example("qa.toml")]).output().unwrap();
    assert_eq!(r.status.code(), Some(2), "{r:?}");
    let error: Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(error["error"]["kind"], "invalid_request", "{error}");
    assert!(error["error"]["message"].as_str().is_some_and(|m| m.contains("line 1 is not JSON")), "{error}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn optimize_draws_a_progress_bar_on_a_terminal() {
    let mut cmd = bin();
    cmd.args(["optimize", &example("qa.toml"), "--trainset", &example("train.jsonl")]).args([
        "-p",
        "max_bootstrapped_demos=8",
        "-p",
        "max_labeled_demos=0",
    ]);
    let mut pty = Pty::spawn(cmd, 24, 120);
    let text = pty.wait("the finished bar", |t| t.contains("optimize BootstrapFewShot [") && t.contains("8/8"));
    assert!(text.contains("#"), "{text}");
    assert!(!text.contains("{\"event\""), "no JSON lines on a terminal: {text}");
    pty.wait_for("\"demos\":");
    assert!(pty.exit().success());
}
