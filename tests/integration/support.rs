//! Helpers shared by the integration tests.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Load a parity fixture file's cases.
pub fn fixture_cases(name: &str) -> Vec<Value> {
    let path = repo_root().join("tests/fixtures/parity").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let doc: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
    doc["cases"].as_array().cloned().unwrap_or_default()
}

/// Collects mismatches so one run reports every failing case, not just the first.
#[derive(Default)]
pub struct Mismatches(Vec<String>);

impl Mismatches {
    pub fn push(&mut self, id: &str, what: impl std::fmt::Display) {
        self.0.push(format!("[{id}] {what}"));
    }

    pub fn check<T: PartialEq + std::fmt::Debug>(&mut self, id: &str, what: &str, got: T, want: T) {
        if got != want {
            self.push(id, format!("{what}:\n   got: {got:?}\n  want: {want:?}"));
        }
    }

    pub fn assert_none(self, total: usize) {
        assert!(self.0.is_empty(), "{} of {total} cases differ from DSPy:\n{}", self.0.len(), self.0.join("\n"));
    }
}

/// The Python interpreter of the project's venv (`DSPEX_PYTHON`, else `.venv/bin/python`).
///
/// Tests that need real DSPy call this; a missing venv fails them with a
/// pointer to the setup script rather than skipping silently.
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("DSPEX_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = repo_root().join(".venv/bin/python");
    assert!(venv.exists(), "this test needs Python with dspy==3.4.1: run `scripts/setup-python` (or set DSPEX_PYTHON)");
    venv
}

/// Run a Python snippet with `args` (JSON) on stdin; returns its stdout parsed as JSON.
pub fn run_python(script: &str, args: &Value) -> Value {
    use std::io::Write;
    let mut child = std::process::Command::new(python())
        .arg("-c")
        .arg(script)
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .env("DSPY_CACHEDIR", std::env::temp_dir().join("dspex-test-dspy-cache"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn python");
    child.stdin.take().expect("stdin").write_all(args.to_string().as_bytes()).expect("write stdin");
    let out = child.wait_with_output().expect("python ran");
    assert!(out.status.success(), "python failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("python printed no JSON ({e}):\n{stdout}"))
}

/// A multi-threaded runtime for tests that run servers and clients together.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

/// Read a program's stream to its end: the chunks' texts in order, then the
/// final output. Panics on an error, a chunk after the end, or no end.
pub async fn stream_to_end(mut stream: dspex::OutputStream) -> (Vec<String>, Box<dspex::Output>) {
    use futures_util::StreamExt;
    let mut chunks = Vec::new();
    let mut done = None;
    while let Some(ev) = stream.next().await {
        match ev.expect("a stream event") {
            dspex::StreamEvent::Chunk { text, .. } => {
                assert!(done.is_none(), "a chunk after the final prediction");
                chunks.push(text);
            }
            dspex::StreamEvent::Done(out) => done = Some(out),
        }
    }
    (chunks, done.expect("the stream ends with the prediction"))
}

/// The `dspex` binary, with the test venv's Python and quiet logs.
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dspex"));
    c.env("DSPEX_PYTHON", python()).env_remove("DSPEX_LM_BASE_URL").env("DSPEX_LOG", "warn");
    c
}

/// A fresh scratch directory.
pub fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dspex-cli-{tag}-{}-{}", std::process::id(), fastrand::u32(..)));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// `dspex serve` running until dropped (SIGTERM, then reaped).
pub struct Serve {
    child: Child,
    /// The line `dspex serve` printed when it was ready.
    pub ready: String,
}

impl Serve {
    /// Start `dspex serve ARGS` and wait for its ready line.
    pub fn start(args: &[&str]) -> Serve {
        Serve::start_with(args, &[])
    }

    /// [`Serve::start`] with extra environment variables.
    pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> Serve {
        let mut child = bin()
            .envs(env.iter().copied())
            .arg("serve")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dspex serve");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut ready = String::new();
        out.read_line(&mut ready).expect("the ready line");
        assert!(ready.contains("ready"), "dspex serve printed {ready:?}");
        Serve { child, ready }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then its exit code.
    pub fn stop(mut self) -> i32 {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < end, "dspex serve did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A command running on a pseudo-terminal, its screen read back through a
/// terminal emulator.
pub struct Pty {
    /// The process.
    pub child: Child,
    /// The terminal's master side: write keys here.
    pub term: std::fs::File,
    parser: std::sync::Arc<parking_lot::Mutex<vt100::Parser>>,
}

impl Pty {
    /// Start `cmd` on a new `rows` x `cols` pseudo-terminal (stdin, stdout, stderr).
    pub fn spawn(mut cmd: Command, rows: u16, cols: u16) -> Pty {
        use std::io::Read;
        use std::os::fd::FromRawFd;
        let (mut master, mut slave) = (0, 0);
        let size = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: openpty(3) fills the two descriptors we pass; `size` outlives the call.
        let rc = unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), &size) };
        assert_eq!(rc, 0, "openpty");
        let stdio = |fd: i32| {
            // SAFETY: dup(2) of a descriptor we own; the Stdio takes the copy.
            unsafe { Stdio::from(std::os::fd::OwnedFd::from_raw_fd(libc::dup(fd))) }
        };
        let child = cmd
            .env("TERM", "xterm-256color")
            .stdin(stdio(slave))
            .stdout(stdio(slave))
            .stderr(stdio(slave))
            .spawn()
            .expect("start the command on a pty");
        // SAFETY: the parent's copy of the slave is no longer needed.
        unsafe {
            libc::close(slave);
        }
        // SAFETY: we own the master descriptor.
        let term = unsafe { std::fs::File::from_raw_fd(master) };
        let parser = std::sync::Arc::new(parking_lot::Mutex::new(vt100::Parser::new(rows, cols, 0)));
        let feed = parser.clone();
        let mut reader = term.try_clone().expect("a second handle on the pty");
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                feed.lock().process(&buf[..n]);
            }
        });
        Pty { child, term, parser }
    }

    /// The screen's text now.
    pub fn text(&self) -> String {
        self.parser.lock().screen().contents()
    }

    /// Wait (30 s at most) until `ok` holds for the screen's text; that text.
    pub fn wait(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let text = self.text();
            if ok(&text) {
                return text;
            }
            assert!(Instant::now() < end, "the screen never showed {what}:\n{text}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait until the screen shows `needle`.
    pub fn wait_for(&self, needle: &str) -> String {
        self.wait(needle, |t| t.contains(needle))
    }

    /// Wait (10 s at most) for the process to exit; its status.
    pub fn exit(&mut self) -> std::process::ExitStatus {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the pty's process") {
                return status;
            }
            assert!(Instant::now() < end, "the process on the pty did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An offline LM with something to learn, for the optimizer tests.
///
/// It answers a question correctly (through [`OfflineResponder`]) only when
/// the prompt shows what an optimizer adds: demos (more than the system and
/// one user message), an objective other than DSPy's default instruction
/// ("Given the fields `…`"), or — at temperature 1 or more, and when the question's first
/// number is even — by luck, which gives SIMBA's sampled trajectories the
/// variance it looks for. Otherwise it answers without the question's
/// digits, which is wrong. Instruction proposals (COPRO's and MIPROv2's
/// proposers) are answered by the offline LM; GEPA's reflection is answered
/// with [`LEARNED_INSTRUCTION`].
///
/// [`OfflineResponder`]: dspex::native::lm::offline::OfflineResponder
#[derive(Debug, Default, Clone)]
pub struct Learner;

/// The instruction the learner proposes when GEPA asks it to reflect.
pub const LEARNED_INSTRUCTION: &str = "Add the two numbers in the question; answer with the sum in digits.";

impl Learner {
    fn learned(request: &Value, system: &str, user: &str) -> bool {
        let messages = request["messages"].as_array().map_or(0, Vec::len);
        let objective = system.split_once("your objective is:").map_or("", |(_, rest)| rest.trim_start());
        if messages > 2 || !objective.starts_with("Given the fields `") {
            return true;
        }
        let hot = request["temperature"].as_f64().is_some_and(|t| t >= 1.0);
        let first =
            user.split(|c: char| !c.is_ascii_digit()).find(|t| !t.is_empty()).and_then(|t| t.parse::<u64>().ok());
        hot && first.is_some_and(|n| n % 2 == 0)
    }
}

impl dspex::native::lm::server::Responder for Learner {
    fn respond(&self, request: &Value) -> dspex::native::lm::server::Reply {
        use dspex::native::lm::offline::OfflineResponder;
        let messages = request["messages"].as_array().cloned().unwrap_or_default();
        let text = |role: &str| {
            messages.iter().rev().find(|m| m["role"] == role).and_then(|m| m["content"].as_str()).unwrap_or_default()
        };
        let (system, user) = (text("system"), text("user"));
        // GEPA's proposer in DSPy 3.4.1: a `ProposeInstruction` signature
        // whose output is `new_instruction`, in Chat or JSON format.
        if system.contains("`new_instruction`") {
            let json = system.contains("Outputs will be a JSON object") || request.get("response_format").is_some();
            return dspex::native::lm::server::Reply::text(if json {
                serde_json::json!({ "new_instruction": LEARNED_INSTRUCTION }).to_string()
            } else {
                format!("[[ ## new_instruction ## ]]\n{LEARNED_INSTRUCTION}\n\n[[ ## completed ## ]]")
            });
        }
        // Questions are the last user message's first field: only those are
        // made wrong; proposer prompts (no `question` field) pass through.
        if !user.contains("[[ ## question ## ]]") || Learner::learned(request, system, user) {
            return OfflineResponder::new().respond(request);
        }
        let mut forgetful = request.clone();
        if let Some(last) = forgetful["messages"].as_array_mut().and_then(|m| m.last_mut()) {
            let blurred: String = user.chars().filter(|c| !c.is_ascii_digit()).collect();
            last["content"] = Value::String(blurred);
        }
        OfflineResponder::new().respond(&forgetful)
    }
}
