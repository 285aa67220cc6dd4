//! Resource exhaustion: many sessions, huge inputs, file descriptors, a full
//! disk under the snapshots, workers that eat memory, spin in C or flood
//! their pipes. In every case the caller gets a result or a classified
//! error, other requests keep being served, and nothing hangs.

use std::time::{Duration, Instant};

use dspex::{ErrorKind, Map, PoolConfig, ProgramSpec, RequestOptions, Runtime, SessionConfig, SessionOptions};
use serde_json::json;

use crate::runtime::offline_lm;
use crate::support;

fn q(question: &str) -> Map {
    json!({ "question": question }).as_object().cloned().expect("an object")
}

/// 10 000 live sessions at the cap, the next one refused as `overloaded`;
/// all of them closed within seconds (which once escalated the sessions
/// supervisor and lost every other session); a long-lived session and
/// plain requests served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_sessions_open_and_close_while_one_lives_on() {
    let (_server, lm) = offline_lm().await;
    let config = SessionConfig { max_sessions: 10_001, ..SessionConfig::default() };
    let rt = Runtime::builder().native_only().lm(lm).sessions(config).start().await.unwrap();
    let keep = rt.sessions().create(SessionOptions::default().id("keep")).await.unwrap();
    keep.define("qa", ProgramSpec::predict("question -> answer")).await.unwrap();
    keep.run("qa", q("first")).await.unwrap();

    let t = Instant::now();
    let mut sessions = Vec::with_capacity(10_000);
    for _ in 0..10_000 {
        sessions.push(rt.session().await.unwrap());
    }
    let created = t.elapsed();
    assert_eq!(rt.sessions().list().len(), 10_001);
    let over = rt.session().await.unwrap_err();
    assert_eq!((over.kind(), over.is_retryable()), (ErrorKind::Overloaded, true), "{over}");
    // Requests are still served at the cap.
    rt.predict("question -> answer", q("at the cap")).await.unwrap();
    sessions[9_999].define("qa", ProgramSpec::predict("question -> answer")).await.unwrap();
    sessions[9_999].run("qa", q("the last one")).await.unwrap();

    let t = Instant::now();
    for s in sessions {
        s.close().await.unwrap();
    }
    let closed = t.elapsed();
    // Let the supervisor take in the 10 000 ends.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rt.sessions().list().into_iter().map(|i| i.id).collect::<Vec<_>>(), ["keep"]);
    // Closing is not failing: nothing was restarted, no supervisor escalated.
    let tree = rt.tree().await.unwrap();
    let sessions_sup = tree.find("sessions").expect("the sessions supervisor");
    assert_eq!(sessions_sup.restarts, 0, "the sessions supervisor escalated");
    let kept = sessions_sup.find("session:keep").expect("the session's actor");
    assert_eq!((kept.restarts, sessions_sup.children.len()), (0, 1));
    // The survivor kept its actor and its history.
    let out = keep.run("qa", q("second")).await.unwrap();
    assert!(out.get_str("answer").is_some());
    assert!(keep.state().await.unwrap().requests >= 2, "the survivor kept its count");
    // New sessions start at once.
    rt.session().await.unwrap();
    eprintln!("10 000 sessions: created in {created:?}, closed in {closed:?}");
    assert!(created < Duration::from_secs(120) && closed < Duration::from_secs(120));
    rt.shutdown().await.unwrap();
}

/// A runtime with one `hostile` pool of `size` workers that load the test
/// helpers' hostile commands.
async fn hostile(size: usize, memory_limit_mb: Option<u64>) -> Runtime {
    hostile_with(size, |pool| pool.memory_limit_mb = memory_limit_mb).await
}

async fn hostile_with(size: usize, adjust: impl FnOnce(&mut PoolConfig)) -> Runtime {
    let mut pool = PoolConfig::new("hostile").size(size).concurrency(2);
    pool.modules = vec!["dspex_test_helpers".into()];
    pool.python_path = vec![support::repo_root().join("tests/python")];
    adjust(&mut pool);
    Runtime::builder().python(support::python()).pool(pool).start().await.unwrap()
}

fn opts(timeout_ms: u64) -> RequestOptions {
    RequestOptions::default().timeout(Duration::from_millis(timeout_ms))
}

/// `n` echo calls on the pool, each of which must succeed within its deadline.
async fn served(rt: &Runtime, n: usize) {
    for i in 0..n {
        let out = rt.call("hostile", "echo", json!({"i": i}), opts(10_000)).await;
        assert_eq!(out.map(|o| o.value).ok(), Some(json!({"i": i})), "echo {i} while under attack");
    }
}

fn pids(rt: &Runtime) -> Vec<u32> {
    rt.pool_stats()
        .iter()
        .find(|p| p.name == "hostile")
        .map(|p| p.workers.iter().filter_map(|w| w.pid).collect())
        .unwrap_or_default()
}

/// Wait (bounded) until the pool has `size` ready workers again.
async fn back_to_full(rt: &Runtime, size: usize) {
    let t = Instant::now();
    loop {
        let ready = rt.pool_stats().iter().find(|p| p.name == "hostile").map(|p| p.ready).unwrap_or(0);
        if ready == size {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "the pool is back to {size} ready workers ({ready} now)");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Allocating past the worker's address-space limit is a classified
/// `MemoryError` for that request; the worker lives on and the others serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_past_the_memory_limit_fails_alone() {
    let rt = hostile(2, Some(6 * 1024)).await;
    let before = pids(&rt);
    let (hog, ()) =
        tokio::join!(rt.call("hostile", "alloc", json!({"megabytes": 12 * 1024}), opts(30_000)), served(&rt, 20));
    let err = hog.unwrap_err();
    assert_eq!(err.python_type(), Some("MemoryError"), "{err}");
    served(&rt, 10).await;
    assert_eq!(pids(&rt), before, "no worker was lost to the allocation");
    rt.shutdown().await.unwrap();
}

/// A command spinning in C with the GIL held ignores cancel and heartbeats:
/// its caller gets `Timeout` at the deadline, the worker is killed after its
/// grace and replaced, and the other worker serves throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_spinning_in_c_times_out_and_its_worker_is_replaced() {
    let rt = hostile(2, None).await;
    let before = pids(&rt);
    let started = Instant::now();
    let (spin, ()) = tokio::join!(rt.call("hostile", "test.regex_spin", json!({"n": 60}), opts(500)), served(&rt, 20));
    let err = spin.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the caller was answered at its deadline: {:?}",
        started.elapsed()
    );
    let t = Instant::now();
    while pids(&rt).iter().all(|p| before.contains(p)) {
        assert!(t.elapsed() < Duration::from_secs(30), "the spinning worker was never replaced");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    back_to_full(&rt, 2).await;
    let after = pids(&rt);
    assert_eq!(after.len(), 2);
    assert_eq!(
        after.iter().filter(|p| before.contains(p)).count(),
        1,
        "exactly the spinning worker was replaced: {before:?} → {after:?}"
    );
    served(&rt, 10).await;
    rt.shutdown().await.unwrap();
}

/// A worker writing 64 MiB of binary garbage without newlines to stdout and
/// stderr at full speed finishes its command (the runtime keeps draining,
/// with bounded lines), and the pool serves meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_flooding_stdout_and_stderr_is_drained() {
    let rt = hostile(2, None).await;
    let (flood, ()) =
        tokio::join!(rt.call("hostile", "test.flood", json!({"megabytes": 64}), opts(60_000)), served(&rt, 20));
    assert_eq!(flood.unwrap().value["written"], json!(64 * 1024 * 1024));
    served(&rt, 10).await;
    rt.shutdown().await.unwrap();
}

/// Garbage on the response pipe is a protocol violation: the request gets a
/// classified, retryable error, the worker is replaced, the others serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_response_pipe_replaces_the_worker() {
    let rt = hostile(2, None).await;
    let before = pids(&rt);
    let opts_once = opts(10_000).idempotent(false);
    let (garbage, ()) =
        tokio::join!(rt.call("hostile", "test.garbage_frames", json!({"megabytes": 4}), opts_once), served(&rt, 20));
    let err = garbage.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::WorkerCrashed | ErrorKind::Protocol), "{err}");
    let t = Instant::now();
    while pids(&rt).iter().all(|p| before.contains(p)) {
        assert!(t.elapsed() < Duration::from_secs(30), "the worker that broke the protocol was never replaced");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    back_to_full(&rt, 2).await;
    served(&rt, 10).await;
    rt.shutdown().await.unwrap();
}

/// A 100 MB input goes through a Python worker and back, beside other work,
/// in a pool whose frame limit allows it; over the limit (the default 64
/// MiB) a request or a result is a clear `invalid_request` and the worker
/// carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_megabyte_input_round_trips_and_the_frame_limit_is_a_clear_error() {
    const MB100: usize = 100 * 1024 * 1024;
    let rt = hostile_with(2, |pool| pool.max_frame_mb = Some(256)).await;
    let big = "x".repeat(MB100);
    let (echo, ()) = tokio::join!(rt.call("hostile", "echo", json!({"text": big}), opts(120_000)), served(&rt, 10));
    assert_eq!(echo.unwrap().value["text"].as_str().map(str::len), Some(MB100));
    served(&rt, 5).await;
    rt.shutdown().await.unwrap();

    let rt = hostile(1, None).await;
    let before = pids(&rt);
    let err = rt.call("hostile", "echo", json!({"text": "y".repeat(MB100)}), opts(120_000)).await.unwrap_err();
    assert_eq!((err.kind(), err.is_retryable()), (ErrorKind::InvalidRequest, false), "{err}");
    assert!(err.message().contains("frame limit"), "{err}");
    // A result over the limit.
    let err = rt.call("hostile", "test.big", json!({"megabytes": 70}), opts(120_000)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidRequest, "{err}");
    assert!(err.message().contains("frame limit"), "{err}");
    served(&rt, 5).await;
    assert_eq!(pids(&rt), before, "the worker was not disturbed");
    rt.shutdown().await.unwrap();
}

/// A tmpfs of a few KiB mounted for one test, unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(kib: u64) -> SmallDisk {
        let dir = std::env::temp_dir().join(format!("dspex-full-{}-{}", std::process::id(), fastrand::u32(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k,mode=0700"), "tmpfs"])
            .arg(&dir)
            .status()
            .expect("mount(8)");
        assert!(status.success(), "this test mounts a small tmpfs and needs root (CI runs as root)");
        SmallDisk(dir)
    }

    /// Fill it to the last byte.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        while f.write_all(&[0]).is_ok() {}
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The snapshot directory on a full filesystem: requests still succeed (the
/// state is in memory), the session reports the failed write, the last good
/// snapshot stays whole with no partial file beside it, and once space is
/// back the next write catches up; a restart restores the latest state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_snapshot_disk_is_reported_and_nothing_on_it_is_torn() {
    let disk = SmallDisk::mount(64);
    let dir = disk.0.join("sessions");
    let (_server, lm) = offline_lm().await;
    let config = SessionConfig { snapshot_dir: Some(dir.clone()), ..SessionConfig::default() };
    let rt = Runtime::builder().native_only().lm(lm.clone()).sessions(config.clone()).start().await.unwrap();
    let s = rt.sessions().create(SessionOptions::default().id("full")).await.unwrap();
    s.define("qa", ProgramSpec::predict("question -> answer")).await.unwrap();
    s.run("qa", q("before the disk filled")).await.unwrap();
    let snapshot = dir.join("full.session");
    let good = std::fs::read(&snapshot).unwrap();
    let info = |rt: &Runtime| rt.sessions().list().into_iter().find(|i| i.id == "full").expect("the session");
    assert_eq!(info(&rt).snapshot_error, None);

    let filler = disk.fill();
    let mut events = rt.subscribe();
    for i in 0..5 {
        s.run("qa", q(&format!("while the disk is full {i} {}", "x".repeat(2000)))).await.unwrap();
    }
    let error = info(&rt).snapshot_error.expect("the failed write is reported");
    assert!(error.contains("No space left"), "{error}");
    let event = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(e) = events.recv().await {
                if e.kind.name() == "error" {
                    return e;
                }
            }
        }
    })
    .await
    .expect("an error event for the failed snapshot");
    assert!(format!("{event:?}").contains("session.snapshot full"), "{event:?}");
    assert_eq!(std::fs::read(&snapshot).unwrap(), good, "the last good snapshot is untouched");
    let names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    assert_eq!(names, ["full.session"], "no partial file left beside it");
    // Everything else goes on.
    assert_eq!(s.state().await.unwrap().requests, 7);
    rt.predict("question -> answer", q("unrelated")).await.unwrap();

    std::fs::remove_file(filler).unwrap();
    s.run("qa", q("space again")).await.unwrap();
    assert_eq!(info(&rt).snapshot_error, None, "the next write succeeded");
    let state = s.state().await.unwrap();
    rt.shutdown().await.unwrap();

    let rt = Runtime::builder().native_only().lm(lm).sessions(config).start().await.unwrap();
    assert_eq!(rt.sessions().restore_report().restored, ["full"]);
    assert_eq!(rt.sessions().get("full").unwrap().state().await.unwrap(), state);
    rt.shutdown().await.unwrap();
}

/// One HTTP/1.1 request on an open connection; the status and the body.
fn http_on(conn: &mut std::net::TcpStream, path: &str, body: &str) -> (u16, String) {
    use std::io::{BufRead, BufReader, Read, Write};
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: dspex\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(req.as_bytes()).unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    (status.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0), String::from_utf8_lossy(&body).into())
}

/// `dspex serve` out of file descriptors: a request that needs one (its LM
/// connection) gets a clear, retryable error naming the cause, the server
/// stays up, and once descriptors are free again requests succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptor_exhaustion_is_a_clear_error_and_the_runtime_recovers() {
    use dspex::native::lm::offline::OfflineResponder;
    use dspex::native::lm::server::LmServer;
    let lm = LmServer::start(OfflineResponder::new()).await.unwrap();
    let dir = support::scratch("nofile");
    let config = dir.join("serve.toml");
    std::fs::write(
        &config,
        format!(
            "default_pool = false\n[lm]\nmodel = \"offline\"\nbase_url = \"{}\"\napi_key = \"k\"\nmax_retries = 0\n\
             [http]\naddr = \"127.0.0.1:0\"\n[programs.qa]\nmodule = \"predict\"\nsignature = \"question -> answer\"\n",
            lm.base_url()
        ),
    )
    .unwrap();
    let body = r#"{"inputs": {"question": "still there?"}}"#;
    tokio::task::spawn_blocking(move || {
        let serve = support::Serve::start(&[config.to_str().unwrap()]);
        let after = serve.ready.split("HTTP API at http://").nth(1).expect("the HTTP address");
        let addr: String = after.chars().take_while(|c| c.is_ascii_digit() || matches!(c, '.' | ':')).collect();
        let addr = addr.as_str();
        let mut keep = std::net::TcpStream::connect(addr).unwrap();
        keep.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        // Lower its descriptor limit to what it has open now, plus two.
        let pid = serve.pid() as i32;
        let open = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count() as u64;
        let mut before = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        let limit = libc::rlimit { rlim_cur: open + 2, rlim_max: libc::RLIM_INFINITY };
        // SAFETY: prlimit(2) on our own child: reads the old limit into `before`.
        assert_eq!(unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut before) }, 0);
        let limit = libc::rlimit { rlim_max: before.rlim_max, ..limit };
        // SAFETY: as above, setting a valid soft limit under the same hard one.
        assert_eq!(unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &limit, std::ptr::null_mut()) }, 0);
        // Connections take the last ones; more wait in the backlog.
        let flood: Vec<_> = (0..32).filter_map(|_| std::net::TcpStream::connect(addr).ok()).collect();
        std::thread::sleep(Duration::from_millis(500));

        let (status, text) = http_on(&mut keep, "/v1/programs/qa/run", body);
        assert!(matches!(status, 502 | 503), "{status} {text}");
        assert!(text.contains("open files"), "the cause is named: {text}");
        let reply: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(reply["error"]["retryable"], json!(true), "{text}");

        // Free descriptors (the limit stays): the server sees those
        // connections close, and the next request gets its LM connection.
        drop(flood);
        let t = Instant::now();
        loop {
            let (status, text) = http_on(&mut keep, "/v1/programs/qa/run", body);
            if status == 200 {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "never recovered: {status} {text}");
            std::thread::sleep(Duration::from_millis(100));
        }
        // SAFETY: as above, restoring the old limit.
        assert_eq!(unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &before, std::ptr::null_mut()) }, 0);
        let mut fresh = std::net::TcpStream::connect(addr).unwrap();
        fresh.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        assert_eq!(http_on(&mut fresh, "/v1/programs/qa/run", body).0, 200, "new connections are served");
        assert_eq!(serve.stop(), 0);
    })
    .await
    .unwrap();
}
