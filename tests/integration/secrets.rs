//! No surface shows an API key. `dspex serve` runs with recognisable keys
//! planted in its LM config, in programs' own LMs (what a request or a
//! session carries) and in its environment, logging at trace level — once
//! as text, once as JSON. Every surface is driven: HTTP responses (errors
//! from a provider that refuses the key included), sessions and their
//! snapshots, console commands and its telemetry events, metrics, the
//! workers' environment — and none of the keys, nor their tails, may
//! appear anywhere.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use dspex::native::lm::offline::OfflineResponder;
use dspex::native::lm::server::{LmServer, Reply, Scripted};
use serde_json::{json, Value};

use crate::support;

const CONFIG_KEY: &str = "sk-canary-CONFIG-6b1f0e27d9";
const PROGRAM_KEY: &str = "sk-canary-PROGRAM-c44a19e2f0";
const FAILING_KEY: &str = "sk-canary-FAILING-90de3b7a15";
const ENV_KEY: &str = "sk-canary-ENVIRON-2f7c58a1e3";
const KEYS: [&str; 4] = [CONFIG_KEY, PROGRAM_KEY, FAILING_KEY, ENV_KEY];

/// Each surface's text, by name.
#[derive(Default)]
struct Seen(Vec<(String, String)>);

impl Seen {
    fn add(&mut self, surface: impl Into<String>, text: impl Into<String>) {
        self.0.push((surface.into(), text.into()));
    }

    fn leaks(&self) -> Vec<String> {
        let mut leaks = Vec::new();
        for (surface, text) in &self.0 {
            for key in KEYS {
                // The whole key, or its tail (a provider-style mask keeps the ends).
                if text.contains(&key[10..]) {
                    leaks.push(format!("{surface} shows {key}"));
                }
            }
        }
        leaks
    }
}

fn console(socket: &Path, cmd: &str, args: &[&str]) -> String {
    let mut stream = std::os::unix::net::UnixStream::connect(socket).expect("console");
    stream.write_all(format!("{}\n", json!({"id": 1, "cmd": cmd, "args": args})).as_bytes()).expect("write");
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply).expect("read");
    reply
}

struct Server {
    child: Child,
    http: String,
    socket: PathBuf,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path, config: &Path, json_logs: bool) -> Server {
    let socket = dir.join("console.sock");
    let log = dir.join(if json_logs { "serve.json.log" } else { "serve.text.log" });
    let mut cmd = support::bin();
    cmd.env("DSPEX_LOG", "trace")
        .env("DSPEX_LOG_FORMAT", if json_logs { "json" } else { "text" })
        .env("OPENAI_API_KEY", ENV_KEY)
        .env("DSPEX_LM_API_KEY", ENV_KEY)
        .args(["serve", config.to_str().unwrap_or_default(), "--console-socket"])
        .arg(&socket)
        .args(["--http", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log file"));
    let mut child = cmd.spawn().expect("dspex serve");
    let mut ready = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut ready).expect("ready line");
    assert!(ready.contains("ready"), "{ready}");
    let http = ready.split("HTTP API at ").nth(1).and_then(|s| s.split_whitespace().next()).unwrap_or_default();
    Server { child, http: http.trim_end_matches(',').to_string(), socket, log }
}

fn stop(mut server: Server) -> String {
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(server.child.id() as i32, libc::SIGTERM);
    }
    let end = Instant::now() + Duration::from_secs(20);
    while server.child.try_wait().ok().flatten().is_none() {
        assert!(Instant::now() < end, "dspex serve did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::read_to_string(&server.log).unwrap_or_default()
}

/// Drive every surface of a running server; gather what each shows.
async fn drive(server: &Server, seen: &mut Seen, session: &str) {
    let base = &server.http;
    let c = reqwest::Client::new();
    let question = |route: &str| json!({"inputs": {"question": "What is 2 + 2?"}, "options": {"route": route}});
    let mut calls: Vec<(&str, String, Option<Value>)> = vec![
        ("GET", "/v1/programs".into(), None),
        ("POST", "/v1/sessions".into(), Some(json!({"id": session, "tenant": "acme"}))),
    ];
    for route in ["native", "python"] {
        for program in ["qa", "own", "failing"] {
            calls.push(("POST", format!("/v1/programs/{program}/run"), Some(question(route))));
        }
        calls.push(("POST", "/v1/programs/own/stream".into(), Some(question(route))));
        calls.push(("POST", format!("/v1/sessions/{session}/programs/own/run"), Some(question(route))));
    }
    calls.extend([
        ("GET", format!("/v1/sessions/{session}"), None),
        ("GET", "/openapi.json".into(), None),
        ("GET", "/metrics".into(), None),
        ("GET", "/healthz".into(), None),
    ]);
    let mut refused = 0;
    for (method, path, body) in calls {
        let req = match body {
            Some(b) => c.post(format!("{base}{path}")).header("content-type", "application/json").body(b.to_string()),
            None => c.get(format!("{base}{path}")),
        };
        let _ = method;
        let r = req.send().await.expect("HTTP");
        let status = r.status().as_u16();
        let head = format!("{:?}", r.headers());
        let text = r.text().await.unwrap_or_default();
        if path.contains("failing") && path.ends_with("run") {
            assert_eq!(status, 502, "the refusing provider: {text}");
            refused += 1;
        } else {
            assert!(status < 300, "{path}: {status} {text}");
        }
        seen.add(format!("HTTP {path}"), format!("{head}\n{text}"));
    }
    assert_eq!(refused, 2, "a refused key on each route");

    // The console's reading commands, and its event stream.
    let tree = console(&server.socket, "tree", &[]);
    for (cmd, args) in [
        ("tree", vec![]),
        ("pools", vec![]),
        ("workers", vec!["general"]),
        ("sessions", vec![]),
        ("session", vec![session]),
        ("pipelines", vec![]),
        ("routes", vec![]),
        ("stats", vec![]),
        ("gateway", vec![]),
    ] {
        let reply = console(&server.socket, cmd, &args);
        assert!(reply.contains("\"ok\":true"), "{cmd}: {reply}");
        seen.add(format!("console {cmd}"), reply);
    }
    let mut events = std::os::unix::net::UnixStream::connect(&server.socket).expect("console");
    events.write_all(b"{\"id\": 1, \"cmd\": \"events\"}\n").expect("events");
    events.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    let uncached = json!({"inputs": {"question": "What is 3 + 4?"}, "options": {"route": "python", "cache": false}});
    let r = c.post(format!("{base}/v1/programs/own/run")).header("content-type", "application/json");
    assert!(r.body(uncached.to_string()).send().await.expect("run").status().is_success());
    let mut lines = BufReader::new(events).lines();
    let events: Vec<String> = (0..40).map_while(|_| lines.next().and_then(|l| l.ok())).collect();
    assert!(events.len() >= 3, "{events:?}");
    seen.add("console events", events.join("\n"));

    // The workers' environment: the allowlist keeps the keys out.
    let tree: Value = serde_json::from_str(&tree).expect("tree");
    fn pids(node: &Value, out: &mut Vec<u64>) {
        out.extend(node["pid"].as_u64());
        for c in node["children"].as_array().into_iter().flatten() {
            pids(c, out);
        }
    }
    let mut found = Vec::new();
    pids(&tree["result"], &mut found);
    assert!(!found.is_empty(), "{tree}");
    for pid in found {
        if let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) {
            let environ = String::from_utf8_lossy(&environ).replace('\0', "\n");
            assert!(environ.contains("DSPEX_WORKER_ID"), "a worker's environment");
            seen.add(format!("the environment of worker {pid}"), environ);
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn no_surface_shows_an_api_key() {
    support::runtime().block_on(async {
        let lm = LmServer::start(OfflineResponder::new()).await.expect("LM");
        let refusing = LmServer::start(Scripted::new(vec![Reply::Status {
            code: 401,
            body: "{\"error\": {\"message\": \"Incorrect API key provided\", \"type\": \"invalid_request_error\"}}"
                .into(),
            retry_after: None,
        }]))
        .await
        .expect("LM");
        let dir = support::scratch("secrets");
        let config = dir.join("serve.toml");
        let lm_table = |base: &str, key: &str| {
            format!("{{ model = \"gpt-4o-mini\", base_url = \"{base}\", api_key = \"{key}\", max_retries = 0 }}")
        };
        std::fs::write(
            &config,
            format!(
                "[lm]\nmodel = \"gpt-4o-mini\"\nbase_url = \"{lm}\"\napi_key = \"{CONFIG_KEY}\"\ntemperature = 0.0\n\n\
                 [sessions]\nsnapshot_dir = \"{snapshots}\"\n\n\
                 [[pools]]\nname = \"general\"\nsize = 1\nstandby = 0\n\n\
                 [programs.qa]\nsignature = \"question -> answer\"\n\n\
                 [programs.own]\nsignature = \"question -> answer\"\nlm = {own}\n\n\
                 [programs.failing]\nsignature = \"question -> answer\"\nlm = {failing}\n",
                lm = lm.base_url(),
                snapshots = dir.join("snapshots").display(),
                own = lm_table(&lm.base_url(), PROGRAM_KEY),
                failing = lm_table(&refusing.base_url(), FAILING_KEY),
            ),
        )
        .expect("config");
        let mut seen = Seen::default();
        for (i, json_logs) in [false, true].into_iter().enumerate() {
            let server = start(&dir, &config, json_logs);
            drive(&server, &mut seen, &format!("s-secret-{i}")).await;
            let logs = stop(server);
            assert!(logs.lines().count() > 100, "trace logs:\n{logs}");
            if json_logs {
                assert!(logs.contains("\"level\":\"TRACE\"") || logs.contains("\"level\":\"DEBUG\""), "JSON logs");
            }
            seen.add(if json_logs { "the JSON logs" } else { "the text logs" }, logs);
        }
        let snapshots = walk(&dir.join("snapshots"));
        assert!(!snapshots.is_empty(), "sessions were snapshotted");
        for path in snapshots {
            seen.add(format!("snapshot {}", path.display()), String::from_utf8_lossy(&std::fs::read(&path).unwrap()));
        }
        // The check itself finds a planted key.
        let mut probe = Seen::default();
        probe.add("probe", format!("Bearer {CONFIG_KEY}"));
        assert_eq!(probe.leaks().len(), 1);
        let leaks = seen.leaks();
        assert!(leaks.is_empty(), "{leaks:#?}");
        let _ = std::fs::remove_dir_all(&dir);
    });
}
