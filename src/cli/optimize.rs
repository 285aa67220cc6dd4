//! `dspex optimize` and `dspex evaluate`: compile a program with a DSPy
//! optimizer, or score it, on examples from files — with progress.
//!
//! A program file is a `[programs.NAME]` table on its own (TOML: `module`,
//! `signature`, `demos`, ..., optionally `state_file`) or the same as JSON.
//! Examples are JSON Lines (one object per line) or a JSON array of objects.
//! `optimize --out FILE` writes what DSPy's `program.save` writes: DSPy loads
//! it with `program.load`, and the runtime serves it (natively when it can)
//! from `state_file = "FILE"` in a program entry.

use std::path::{Path, PathBuf};
use std::time::Duration;

use dspex::{Error, ErrorKind, EvaluateRequest, Map, OptimizeRequest, Program, ProgramEntry, Result, Value};
use serde_json::json;

use super::cluster::ClusterFlags;
use super::common::LmFlags;
use super::progress::Progress;
use super::serve;

/// What `dspex optimize` was asked for.
pub struct OptimizeArgs {
    pub program: PathBuf,
    pub trainset: PathBuf,
    pub valset: Option<PathBuf>,
    pub optimizer: String,
    pub metric: String,
    pub params: Vec<String>,
    pub compile_params: Vec<String>,
    pub input_keys: Vec<String>,
    pub out: Option<PathBuf>,
    pub config: Option<PathBuf>,
    pub timeout: Option<f64>,
    pub lm: LmFlags,
}

/// What `dspex evaluate` was asked for.
pub struct EvaluateArgs {
    pub program: PathBuf,
    pub devset: PathBuf,
    pub metric: String,
    pub state: Option<PathBuf>,
    pub results: bool,
    pub config: Option<PathBuf>,
    pub lm: LmFlags,
}

/// A program file: a program entry in TOML or JSON, its `state_file`
/// relative to the file (`state` over it when given).
pub fn load_program(path: &Path, state: Option<&Path>) -> Result<Program> {
    let text = read(path)?;
    let mut entry: ProgramEntry = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|e| config_error(path, &e.to_string()))?
    } else {
        toml::from_str(&text).map_err(|e| config_error(path, &e.to_string()))?
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    entry.state_file = match state {
        Some(s) => Some(s.to_path_buf()),
        None => entry.state_file.map(|f| if f.is_absolute() { f } else { dir.join(f) }),
    };
    Ok(Program::new(entry.load()?))
}

/// Examples: JSON Lines, or a JSON array of objects.
pub fn load_examples(path: &Path) -> Result<Vec<Map>> {
    let text = read(path)?;
    let bad = |what: String| Error::new(ErrorKind::InvalidRequest, format!("{}: {what}", path.display()));
    if text.trim_start().starts_with('[') {
        let all: Vec<Value> = serde_json::from_str(&text).map_err(|e| bad(format!("not a JSON array: {e}")))?;
        return all
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::Object(m) => Ok(m),
                _ => Err(bad(format!("item {} is not an object", i + 1))),
            })
            .collect();
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        match serde_json::from_str(line) {
            Ok(Value::Object(m)) => out.push(m),
            Ok(_) => return Err(bad(format!("line {} is not a JSON object", i + 1))),
            Err(e) => return Err(bad(format!("line {} is not JSON: {e}", i + 1))),
        }
    }
    if out.is_empty() {
        return Err(bad("no examples".into()));
    }
    Ok(out)
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| Error::new(ErrorKind::Io, format!("cannot read {}: {e}", path.display())).with_retryable(false))
}

fn config_error(path: &Path, why: &str) -> Error {
    Error::new(ErrorKind::Config, format!("{} is not a program entry: {why}", path.display()))
}

/// `KEY=VALUE` (VALUE as JSON when it parses, else a string) into `map`.
fn params(pairs: &[String], what: &str) -> Result<Map> {
    let mut map = Map::new();
    for pair in pairs {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| Error::invalid_request(format!("{what} {pair:?}: expected KEY=VALUE")))?;
        map.insert(k.trim().to_string(), serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string())));
    }
    Ok(map)
}

/// The input keys: given, else the program's input fields when its
/// signature is known, else every key but `answer` (the runtime's default).
fn input_keys(given: &[String], program: &Program) -> Vec<String> {
    if !given.is_empty() {
        return given
            .iter()
            .flat_map(|k| k.split(','))
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty())
            .collect();
    }
    program
        .native()
        .map(|n| n.predictor().signature().inputs().iter().map(|f| f.name().to_string()).collect())
        .unwrap_or_default()
}

/// Compile; write the state to `--out`; a summary as JSON.
pub async fn optimize(a: OptimizeArgs) -> Result<Value> {
    let program = load_program(&a.program, None)?;
    let trainset = load_examples(&a.trainset)?;
    let valset = a.valset.as_deref().map(load_examples).transpose()?;
    let mut req = OptimizeRequest::new(&a.optimizer, program.clone(), trainset, &a.metric);
    req.params = params(&a.params, "--param")?;
    req.compile_params = params(&a.compile_params, "--compile-param")?;
    req.input_keys = input_keys(&a.input_keys, &program);
    req.valset = valset;
    req.timeout = a.timeout.map(|t| Duration::from_secs_f64(t.max(0.001)));
    let examples = req.trainset.len();
    let built = serve::build(a.config.as_deref(), 1, a.lm, &ClusterFlags::default()).await?;
    let progress = Progress::stderr(&format!("optimize {}", a.optimizer));
    let result = built.rt.optimize(req, Some(progress.callback())).await;
    progress.finish();
    built.shutdown().await?;
    let optimized = result?;
    if let Some(out) = &a.out {
        let text = serde_json::to_string_pretty(&optimized.saved).map_err(|e| Error::internal(e.to_string()))?;
        std::fs::write(out, text + "\n")
            .map_err(|e| Error::new(ErrorKind::Io, format!("cannot write {}: {e}", out.display())))?;
    }
    Ok(json!({
        "optimizer": a.optimizer,
        "trainset": examples,
        "demos": optimized.demos,
        "out": a.out.as_ref().map(|p| p.display().to_string()),
        "native": optimized.program.native_support().is_ok(),
        "elapsed_ms": optimized.meta.timings.total_us / 1000,
    }))
}

/// Score with `dspy.Evaluate`; the score (and per-example results when asked).
pub async fn evaluate(a: EvaluateArgs) -> Result<Value> {
    let program = load_program(&a.program, a.state.as_deref())?;
    let devset = load_examples(&a.devset)?;
    let examples = devset.len();
    let built = serve::build(a.config.as_deref(), 1, a.lm, &ClusterFlags::default()).await?;
    let progress = Progress::stderr("evaluate");
    let result = built.rt.evaluate(EvaluateRequest::new(program, devset, &a.metric), Some(progress.callback())).await;
    progress.finish();
    built.shutdown().await?;
    let evaluation = result?;
    let mut out = json!({
        "metric": a.metric,
        "examples": examples,
        "score": evaluation.score,
        "elapsed_ms": evaluation.meta.timings.total_us / 1000,
    });
    if a.results {
        out["results"] = Value::Array(evaluation.results);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_parse_json_values_and_fall_back_to_strings() {
        let m = params(&["k=3".into(), "name=x".into(), "on=true".into()], "--param").unwrap();
        assert_eq!(Value::Object(m), json!({"k": 3, "name": "x", "on": true}));
        assert!(params(&["nokey".into()], "--param").unwrap_err().message().contains("KEY=VALUE"));
    }

    #[test]
    fn examples_files_are_jsonl_or_a_json_array_and_bad_ones_say_where() {
        let dir = std::env::temp_dir().join(format!("dspex-examples-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let ok = load_examples(&write("a.jsonl", "{\"q\": 1}\n\n{\"q\": 2}\n")).unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(load_examples(&write("b.json", "[{\"q\": 1}]")).unwrap().len(), 1);
        for (name, text, why) in [
            ("c.json", "[1]", "item 1 is not an object"),
            ("d.json", "[", "not a JSON array"),
            ("e.jsonl", "[]x", "not a JSON array"),
            ("f.jsonl", "7\n", "line 1 is not a JSON object"),
            ("g.jsonl", "\n\n", "no examples"),
        ] {
            let e = load_examples(&write(name, text)).unwrap_err();
            assert!(e.message().contains(why), "{name}: {e}");
        }
        assert_eq!(load_examples(&dir.join("missing.jsonl")).unwrap_err().kind(), ErrorKind::Io);
        let program = write("p.json", "{\"module\": \"predict\", \"signature\": \"question, context -> answer\"}");
        let program = load_program(&program, None).unwrap();
        assert_eq!(input_keys(&[], &program), vec!["question", "context"]);
        assert_eq!(input_keys(&["a, b".into(), "c".into()], &program), vec!["a", "b", "c"]);
        assert_eq!(load_program(&write("bad.toml", "module = 3"), None).unwrap_err().kind(), ErrorKind::Config);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
