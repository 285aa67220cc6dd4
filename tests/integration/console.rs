//! The `dspex` binary's runtime commands, driven as a user drives them:
//! `serve` with its console endpoint, `console --once`, the REPL through a
//! pseudo-terminal, `demo`, `run` and `doctor`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{self, bin, scratch, Serve};

fn console(socket: &Path, cmd: &str) -> (i32, Value) {
    let out = bin()
        .args(["console", "--socket"])
        .arg(socket)
        .args(["--once", cmd, "--json"])
        .output()
        .expect("run dspex console");
    let text = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (out.status.code().unwrap_or(-1), v)
}

/// Wait until `n` event tails are subscribed (so an event sent now reaches them).
fn wait_for_tails(socket: &Path, n: u64) {
    let end = Instant::now() + Duration::from_secs(20);
    while console(socket, "stats").1["telemetry_subscribers"].as_u64().unwrap_or(0) < n {
        assert!(Instant::now() < end, "no event tail subscribed");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The exit status of `child`, which must end within 30 s.
fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("the command did not end");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn node<'a>(tree: &'a Value, name: &str) -> Option<&'a Value> {
    if tree["name"] == name {
        return Some(tree);
    }
    tree["children"].as_array()?.iter().find_map(|c| node(c, name))
}

/// One raw request on a fresh connection: the reply line.
fn raw(stream: &mut std::os::unix::net::UnixStream, line: &str) -> Value {
    stream.write_all(format!("{line}\n").as_bytes()).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut reply = String::new();
    reader.read_line(&mut reply).unwrap();
    serde_json::from_str(&reply).unwrap_or_else(|e| panic!("bad reply ({e}): {reply}"))
}

#[test]
fn serve_and_console_show_the_tree_and_restart_a_killed_worker() {
    let dir = scratch("serve");
    let socket = dir.join("console.sock");
    let serve = Serve::start(&["--console-socket", socket.to_str().unwrap(), "--metrics", "127.0.0.1:0"]);
    assert!(serve.ready.contains("general (2 workers)"), "{}", serve.ready);
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the console socket is private");
    let token_mode = std::fs::metadata(dir.join("console.sock.token")).unwrap().permissions().mode() & 0o777;
    assert_eq!(token_mode, 0o600);

    let (code, tree) = console(&socket, "tree");
    assert_eq!(code, 0, "{tree}");
    let worker = node(&tree, "worker:general:0").expect("worker:general:0 in the tree");
    let pid = worker["pid"].as_u64().expect("a pid");
    assert_eq!(worker["status"], "ready");
    assert_eq!(worker["restarts"], 0);
    assert!(node(&tree, "worker:general:1").is_some());
    let console_node = node(&tree, "console").expect("the console is an actor of the tree");
    assert_eq!(console_node["extra"]["socket"], socket.to_str().unwrap());

    let (code, killed) = console(&socket, "kill worker:general:0");
    assert_eq!(code, 0, "{killed}");
    assert_eq!(killed["pid"], pid);
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, tree) = console(&socket, "tree");
        let w = node(&tree, "worker:general:0").unwrap().clone();
        if w["restarts"].as_u64() >= Some(1) && w["status"] == "ready" {
            assert_ne!(w["pid"].as_u64(), Some(pid), "a new process");
            break;
        }
        assert!(Instant::now() < end, "the worker did not come back: {w}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Raw protocol: mutating commands need the token, malformed requests get
    // an error reply, and the connection (and the runtime) keep working.
    let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    let refused = raw(&mut stream, r#"{"id": 7, "cmd": "kill", "args": ["worker:general:1"]}"#);
    assert_eq!(refused["id"], 7);
    assert_eq!(refused["ok"], false);
    assert!(refused["error"]["message"].as_str().unwrap().contains("token"), "{refused}");
    let bad = raw(&mut stream, "this is not json");
    assert_eq!(bad["ok"], false);
    assert_eq!(bad["error"]["kind"], "invalid_request");
    let unknown = raw(&mut stream, r#"{"cmd": "frobnicate"}"#);
    assert!(unknown["error"]["message"].as_str().unwrap().contains("unknown command"));
    let pools = raw(&mut stream, r#"{"id": "p", "cmd": "pools"}"#);
    assert_eq!(pools["ok"], true);
    assert_eq!(pools["result"][0]["ready"], 2, "worker:general:1 was not killed: {pools}");
    let (code, _) = console(&socket, "stats");
    assert_eq!(code, 0);
    let (code, err) = console(&socket, "workers nosuchpool");
    assert_eq!(code, 2);
    assert_eq!(err["error"]["kind"], "not_found");

    // Text output for people, one command at a time.
    for (cmd, needle) in [
        ("tree", "└─ "),
        ("pools", "READY"),
        ("workers general", "worker:general:1"),
        ("sessions", "(none)"),
        ("pipelines", "(none)"),
        ("routes", "recent decisions"),
        ("stats", "uptime_ms"),
        ("help", "restart POOL"),
    ] {
        let out = bin().args(["console", "--socket"]).arg(&socket).args(["--once", cmd]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains(needle), "{cmd}: {text}");
    }
    let out = bin().args(["console", "--socket"]).arg(&socket).args(["--once", " "]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "an empty command");
    let out = bin().args(["console", "--socket"]).arg(dir.join("nope.sock")).args(["--once", "tree"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "no console there");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));

    // `--once events --json` tails until interrupted.
    let mut tail_cmd = bin()
        .args(["console", "--socket"])
        .arg(&socket)
        .args(["--once", "events lifecycle", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_tails(&socket, 1);
    let (code, _) = console(&socket, "kill worker:general:0");
    assert_eq!(code, 0);
    let mut first = String::new();
    BufReader::new(tail_cmd.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.contains("\"event\":\"lifecycle\""), "{first}");
    // SAFETY: SIGINT to our own child, as Ctrl-C would.
    unsafe {
        libc::kill(tail_cmd.id() as i32, libc::SIGINT);
    }
    assert!(wait_exit(&mut tail_cmd).success(), "Ctrl-C ends the tail cleanly");

    // With --count it ends by itself.
    let mut counted = bin()
        .args(["console", "--socket"])
        .arg(&socket)
        .args(["--once", "events lifecycle", "--json", "--count", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill worker:general:0 (once it is back from the kill above) until the
    // tail, subscribed at some point meanwhile, has seen one event.
    let end = Instant::now() + Duration::from_secs(30);
    while counted.try_wait().unwrap().is_none() {
        assert!(Instant::now() < end, "the counted tail saw no event");
        let _ = console(&socket, "kill worker:general:0");
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = wait_exit(&mut counted);
    let mut text = String::new();
    counted.stdout.take().unwrap().read_to_string(&mut text).unwrap();
    assert!(status.success(), "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("\"event\":\"lifecycle\""), "{text}");
    let out =
        bin().args(["console", "--socket"]).arg(&socket).args(["--once", "pools", "--count", "1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "--count is for events only");

    // A live tail of events: a worker killed through the console shows up.
    let mut tail = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    let started = raw(&mut tail, r#"{"id": 1, "cmd": "events", "args": ["lifecycle"]}"#);
    assert_eq!(started["result"], "streaming");
    let (code, _) = console(&socket, "kill worker:general:1");
    assert_eq!(code, 0);
    tail.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut lines = BufReader::new(tail);
    // (worker:general:0's own restart may show up first.)
    let mut event = String::new();
    while !event.contains("worker:general:1") {
        event.clear();
        assert!(lines.read_line(&mut event).unwrap() > 0, "the tail ended");
    }
    assert!(event.contains("lifecycle"), "{event}");

    // Prometheus metrics saw the worker's exit and restart.
    let metrics_addr = serve.ready.split("http://").nth(1).unwrap().trim_end_matches("/metrics\n").to_string();
    let metrics_addr = metrics_addr.trim().trim_end_matches("/metrics").to_string();
    let mut http = std::net::TcpStream::connect(&metrics_addr).unwrap();
    http.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    http.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").unwrap();
    let mut body = String::new();
    http.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains("dspex_events_total{event=\"lifecycle\"}"), "{body}");

    assert_eq!(serve.stop(), 0, "a clean stop on SIGTERM");
    assert!(!socket.exists(), "the socket is removed on stop");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_repl_works_through_a_pseudo_terminal() {
    let dir = scratch("pty");
    let socket = dir.join("c.sock");
    let serve = Serve::start(&["--console-socket", socket.to_str().unwrap()]);
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty(3) fills the two descriptors we pass.
    let rc =
        unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) };
    assert_eq!(rc, 0, "openpty");
    let stdio = |fd: i32| {
        // SAFETY: dup(2) of a descriptor we own; the Stdio takes the copy.
        unsafe { Stdio::from(std::os::fd::OwnedFd::from_raw_fd(libc::dup(fd))) }
    };
    use std::os::fd::FromRawFd;
    let mut child = bin()
        .args(["console", "--socket"])
        .arg(&socket)
        .env("TERM", "dumb")
        .env("HOME", &dir)
        .stdin(stdio(slave))
        .stdout(stdio(slave))
        .stderr(stdio(slave))
        .spawn()
        .expect("start dspex console");
    // SAFETY: the parent's copy of the slave is no longer needed.
    unsafe {
        libc::close(slave);
    }
    // SAFETY: we own the master descriptor.
    let mut term = unsafe { std::fs::File::from_raw_fd(master) };
    let reader_term = term.try_clone().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut r = reader_term;
        let mut buf = [0u8; 4096];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 || tx.send(String::from_utf8_lossy(&buf[..n]).into_owned()).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    let wait_for = |needle: &str, seen: &mut String| {
        let end = Instant::now() + Duration::from_secs(20);
        while !seen.contains(needle) {
            let left = end.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no {needle:?} on the terminal; got:\n{seen}");
            if let Ok(chunk) = rx.recv_timeout(left.min(Duration::from_millis(200))) {
                seen.push_str(&chunk);
            }
        }
    };
    wait_for("dspex> ", &mut seen);
    term.write_all(b"tree\r").unwrap();
    wait_for("worker:general:1", &mut seen);
    assert!(seen.contains("pool:general [pool]"), "{seen}");
    term.write_all(b"help\r").unwrap();
    wait_for("scale POOL N", &mut seen);
    term.write_all(b"pools\r").unwrap();
    wait_for("OVERLOADED", &mut seen);
    term.write_all(b"workers general\r").unwrap();
    wait_for("SERVED", &mut seen);
    term.write_all(b"frobnicate\r").unwrap();
    wait_for("unknown command", &mut seen);
    // `dspex serve` restarts (a new socket and token): the REPL connects again.
    let restart = |serve: Serve| {
        assert_eq!(serve.stop(), 0);
        Serve::start(&["--console-socket", socket.to_str().unwrap()])
    };
    let serve = restart(serve);
    seen.clear();
    term.write_all(b"tree\r").unwrap();
    wait_for("connected again", &mut seen);
    wait_for("worker:general:1", &mut seen);
    seen.clear();
    term.write_all(b"pools\r").unwrap();
    wait_for("OVERLOADED", &mut seen);
    // Lost again, on a mutating command: it is not sent again by itself.
    let serve = restart(serve);
    seen.clear();
    term.write_all(b"kill worker:general:0\r").unwrap();
    wait_for("may or may not have run", &mut seen);
    let (_, tree) = console(&socket, "tree");
    assert_eq!(node(&tree, "worker:general:0").unwrap()["restarts"], 0, "the kill was not repeated");
    term.write_all(b"quit\r").unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break s;
        }
        assert!(Instant::now() < end, "the REPL did not quit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    assert_eq!(serve.stop(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_tcp_console_needs_its_token() {
    let serve = Serve::start(&["--console-tcp", "127.0.0.1:0", "--token", "s3cret-token"]);
    let addr = serve.ready.rsplit("tcp ").next().unwrap().trim().to_string();
    let run = |token: Option<&str>| {
        let mut c = bin();
        c.args(["console", "--tcp", &addr, "--once", "pools", "--json"]);
        if let Some(t) = token {
            c.args(["--token", t]);
        }
        let out = c.output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            serde_json::from_str::<Value>(String::from_utf8_lossy(&out.stdout).trim()).unwrap(),
        )
    };
    let (code, v) = run(None);
    assert_eq!(code, 2);
    assert!(v["error"]["message"].as_str().unwrap().contains("token"), "{v}");
    let (code, _) = run(Some("wrong-token!"));
    assert_eq!(code, 2);
    let (code, v) = run(Some("s3cret-token"));
    assert_eq!(code, 0, "{v}");
    assert_eq!(v[0]["name"], "general");
    // Guessing is throttled per address, across connections.
    for _ in 0..6 {
        assert_eq!(run(Some("wrong-token!")).0, 2);
    }
    let (code, v) = run(Some("s3cret-token"));
    assert_eq!(code, 2, "{v}");
    assert_eq!(v["error"]["kind"], "rate_limited", "{v}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(run(Some("s3cret-token")).0, 0, "after the wait");
    assert_eq!(serve.stop(), 0);
}

#[test]
fn demo_run_and_doctor_work_offline() {
    let out = bin().arg("demo").output().expect("dspex demo");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    for stage in [
        "built-in OFFLINE LM",
        "1. Language model and Python environment",
        "2. The supervision tree",
        "worker:general:1 [worker] ready",
        "3. One signature, two routes",
        "router chose native",
        "forced python:general",
        "4. A multi-turn session",
        "turn 3",
        "5. A pipeline",
        "gather/retrieve",
        "6. Compile with BootstrapFewShot",
        "demos bootstrapped",
        "served the compiled program via native",
        "7. Kill a worker",
        "is back as pid",
        "8. Summary",
        "total",
    ] {
        assert!(text.contains(stage), "the demo did not print {stage:?}:\n{text}");
    }

    let pipeline = support::repo_root().join("examples/pipelines/answer.toml");
    let out = bin()
        .arg("run")
        .arg(&pipeline)
        .args(["-i", "question=What is the capital of Kenya?", "-i", r#"topics=["geography"]"#])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let result: Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(result["outputs"]["answer"], "Nairobi");
    assert_eq!(result["outputs"]["scores"], json!([0.9]));
    let out = bin().arg("run").arg(&pipeline).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "missing inputs are an error");
    let err: Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(err["error"]["kind"], "validation");

    // Without a usable Python, doctor says so and how to fix it.
    let out = bin().args(["doctor"]).env("DSPEX_PYTHON", "/nonexistent/python").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("missing") && text.contains("fix: "), "{text}");
    // A Python without DSPy: missing, with the pip command that fixes it.
    let dir = scratch("doctor");
    let bare = dir.join("python");
    std::fs::write(&bare, "#!/bin/sh\nexec python3 -S \"$@\"\n").unwrap();
    std::fs::set_permissions(&bare, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = bin().args(["doctor", "--json"]).env("DSPEX_PYTHON", &bare).output().unwrap();
    let report: Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(out.status.code(), Some(1), "{report}");
    let dspy = report["checks"].as_array().unwrap().iter().find(|c| c["check"] == "dspy").unwrap();
    assert_eq!(dspy["status"], "missing", "{dspy}");
    assert!(dspy["fix"].as_str().unwrap().contains("pip install 'dspy==3.4.1'"), "{dspy}");
    let check = |report: &Value, name: &str| {
        report["checks"].as_array().unwrap().iter().find(|c| c["check"] == name).cloned().unwrap_or_default()
    };
    let optuna = check(&report, "optuna");
    assert_eq!(optuna["status"], "warn", "{report}");
    assert!(optuna["detail"].as_str().unwrap().contains("MIPROv2"), "{optuna}");
    assert!(optuna["fix"].as_str().unwrap().contains("dspy[optuna]==3.4.1"), "{optuna}");
    // The project's environment has every extra.
    let out = bin().args(["doctor", "--json"]).output().unwrap();
    let report: Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    for extra in ["deno", "optuna", "numpy", "pyarrow"] {
        assert_eq!(check(&report, extra)["status"], "ok", "{extra}: {report}");
    }
    assert!(check(&report, "deno")["detail"].as_str().unwrap().contains("/deno"), "{report}");
    // No interpreter chosen yet: the first start will provision one.
    let out = bin()
        .args(["doctor", "--json"])
        .env_remove("DSPEX_PYTHON")
        .env("DSPEX_CACHE_DIR", dir.join("cache"))
        .output()
        .unwrap();
    let report: Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    let python = report["checks"].as_array().unwrap().iter().find(|c| c["check"] == "python").unwrap();
    assert!(python["detail"].as_str().unwrap().contains("provisions"), "{python}");
    let _ = std::fs::remove_dir_all(&dir);

    let out = bin().args(["doctor", "--json"]).output().unwrap();
    let report: Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(out.status.code(), Some(0), "{report}");
    let dspy = report["checks"].as_array().unwrap().iter().find(|c| c["check"] == "dspy").unwrap();
    assert_eq!(dspy["status"], "ok", "{dspy}");
    assert!(dspy["detail"].as_str().unwrap().contains("3.4.1"));
}

#[test]
fn serve_with_an_http_section_records_and_serves_metrics() {
    let dir = scratch("http-metrics");
    let socket = dir.join("c.sock");
    let config = support::repo_root().join("tests/fixtures/http/serve.toml");
    let serve = Serve::start(&[config.to_str().unwrap(), "--console-socket", socket.to_str().unwrap()]);
    // `[http]` in the file (no --http, no --metrics) is enough to record.
    let addr = serve.ready.split("HTTP API at http://").nth(1).expect("the HTTP API's address").trim().to_string();
    let addr = addr.split([' ', ',']).next().unwrap().to_string();
    support::runtime().block_on(async {
        let c = reqwest::Client::new();
        let body = json!({"inputs": {"question": "What is 2 + 3?"}, "options": {"cache": false}});
        let r = c
            .post(format!("http://{addr}/v1/programs/qa/run"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        let text = c.get(format!("http://{addr}/metrics")).send().await.unwrap().text().await.unwrap();
        assert!(text.contains("dspex_overhead_seconds_count{route=\"native\"} 1"), "{text}");
    });
    assert_eq!(serve.stop(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}
