//! Sessions across cluster nodes: requests forwarded to the owner, a session
//! that outlives its owner process's `kill -9`, two nodes racing to take one
//! over, and a partitioned owner that, healed, cannot write stale state.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use dspex::cluster::ClusterNode;
use dspex::{ClusterConfig, ErrorKind, LmConfig, Map, ProgramSpec, RequestOptions, Runtime, SessionOptions};
use serde_json::json;

use crate::cluster::until_nodes;
use crate::nats::{command_in, Link, NatsServer, Netns};
use crate::runtime::{builder, offline_lm};

const CHAT: &str = "history: dspy.History, question -> answer";

fn q(question: &str) -> Map {
    json!({ "question": question }).as_object().cloned().expect("an object")
}

fn python() -> RequestOptions {
    RequestOptions::python().no_cache()
}

fn native() -> RequestOptions {
    RequestOptions::native().no_cache()
}

/// A runtime with the offline LM, in the cluster at `url` as `name` (a
/// `general` pool of one worker when `pool`, else client-only).
async fn node(url: &str, name: &str, pool: bool, lm: LmConfig) -> (Runtime, ClusterNode) {
    node_with(url, name, pool, lm, None).await
}

async fn node_with(url: &str, name: &str, pool: bool, lm: LmConfig, token: Option<&str>) -> (Runtime, ClusterNode) {
    let rt = if pool {
        builder(1).lm(lm).start().await.expect("a runtime with a pool")
    } else {
        let config = dspex::RuntimeConfig { default_pool: false, lm: Some(lm), ..dspex::RuntimeConfig::default() };
        Runtime::from_config(config).await.expect("a client-only runtime")
    };
    let mut c = ClusterConfig::new(url, name).allow_insecure(true).lease_ms(1000);
    if let Some(t) = token {
        c = c.token(t);
    }
    c.keepalive_ms = 100;
    let joined = ClusterNode::join(&rt, c).await.expect("join");
    (rt, joined)
}

/// A new session `id` on `rt` with the chat program and its first turn
/// ("What is 17 + 25?") run with `opts`.
async fn chat_session(rt: &Runtime, id: &str, opts: RequestOptions) -> dspex::Session {
    let s = rt.sessions().create(SessionOptions::default().id(id)).await.expect("a cluster session");
    s.define("chat", ProgramSpec::predict(CHAT)).await.expect("define");
    let out = s.run_with("chat", q("What is 17 + 25?"), opts).await.expect("the first turn");
    assert_eq!(out.get_str("answer"), Some("42"));
    s
}

fn questions(history: &[Map]) -> Vec<String> {
    history.iter().map(|t| t["question"].as_str().unwrap_or_default().to_string()).collect()
}

const OWNER_ENV: &str = "DSPEX_TEST_SESSION_OWNER";

/// How the owner process is asked to run: where it joins, as whom, which
/// sessions it creates.
#[derive(serde::Serialize, serde::Deserialize)]
struct OwnerSpec {
    url: String,
    node: String,
    token: Option<String>,
    sessions: Vec<String>,
}

/// The node that owns the sessions, in its own process (this test binary
/// run again for [`session_owner_node`], optionally inside a network
/// namespace), so the test can `kill -9` it or cut its network.
struct OwnerProcess {
    child: Child,
    stdin: std::process::ChildStdin,
    turns: std::sync::mpsc::Receiver<serde_json::Value>,
}

impl OwnerProcess {
    fn start(spec: &OwnerSpec, netns: Option<&str>) -> OwnerProcess {
        let exe = std::env::current_exe().expect("the test binary");
        let mut child = command_in(netns, exe)
            .args(["cluster_sessions::session_owner_node", "--exact", "--ignored", "--nocapture"])
            .env(OWNER_ENV, serde_json::to_string(spec).expect("a spec"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the owner process");
        let stdout = child.stdout.take().expect("its stdout");
        let stdin = child.stdin.take().expect("its stdin");
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let (turn_tx, turns) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // The markers may follow libtest's own "test NAME ... " on a line.
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                if line.trim_end().ends_with("OWNER READY") {
                    let _ = ready_tx.send(());
                } else if let Some(at) = line.find("OWNER TURN ") {
                    let json = &line[at + "OWNER TURN ".len()..];
                    let _ = turn_tx.send(serde_json::from_str(json).unwrap_or(serde_json::Value::Null));
                }
            }
        });
        let owner = OwnerProcess { child, stdin, turns };
        ready.recv_timeout(Duration::from_secs(90)).expect("the owner process created its sessions");
        owner
    }

    /// Have the owner run one turn of `session` through the handle it
    /// created; its answer, node, and where the handle points afterwards.
    fn turn(&mut self, session: &str, question: &str) -> serde_json::Value {
        use std::io::Write;
        writeln!(self.stdin, "{}", json!({"session": session, "question": question})).expect("write to the owner");
        self.turns.recv_timeout(Duration::from_secs(60)).expect("the owner answered")
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Not a test by itself: the body of the owner process that the session
/// tests start. It joins as the spec says, creates its sessions (one turn
/// each, on its own Python worker), says so, then runs the turns it is sent
/// on stdin (one JSON line each) through the handles it created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the owner process of the cluster session tests, which start it"]
async fn session_owner_node() {
    let Ok(spec) = std::env::var(OWNER_ENV) else {
        eprintln!("session_owner_node runs only as the owner process the cluster session tests start");
        return;
    };
    let spec: OwnerSpec = serde_json::from_str(&spec).expect("the owner spec");
    let (_lm_server, lm) = offline_lm().await;
    let (rt, _joined) = node_with(&spec.url, &spec.node, true, lm, spec.token.as_deref()).await;
    let mut held = std::collections::HashMap::new();
    for id in &spec.sessions {
        held.insert(id.clone(), chat_session(&rt, id, python()).await);
    }
    println!("OWNER READY");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(tokio::io::stdin()));
    while let Ok(Some(line)) = lines.next_line().await {
        let ask: serde_json::Value = serde_json::from_str(&line).expect("a turn");
        let s = &held[ask["session"].as_str().expect("a session id")];
        let question = ask["question"].as_str().expect("a question");
        let answer = match s.run_with("chat", q(question), python()).await {
            Ok(out) => json!({"answer": out.get_str("answer"), "node": out.meta.node, "owner": s.owner()}),
            Err(e) => json!({"error": e.kind(), "message": e.message(), "owner": s.owner()}),
        };
        println!("OWNER TURN {answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_outlives_its_owner_node_and_one_of_two_racing_nodes_takes_it() {
    let nats = NatsServer::start();
    let spec =
        OwnerSpec { url: nats.url(), node: "owner".into(), token: None, sessions: vec!["conv".into(), "race".into()] };
    let mut owner = OwnerProcess::start(&spec, None);
    let (lm_server, lm) = offline_lm().await;
    let (b, joined_b) = node(&nats.url(), "b", true, lm.clone()).await;
    let (d, joined_d) = node(&nats.url(), "d", false, lm).await;
    until_nodes(&b, &["b", "d", "owner"]).await;

    // Any node opens any session; while its owner lives, requests go there.
    let conv = b.sessions().open("conv").await.unwrap();
    assert_eq!(conv.owner().as_deref(), Some("owner"));
    let second = conv.run_with("chat", q("What is the capital of France?"), python()).await.unwrap();
    assert_eq!(second.get_str("answer"), Some("Paris"));
    assert_eq!(second.meta.node.as_deref(), Some("owner"), "{:?}", second.meta);
    assert!(b.sessions().list().is_empty(), "b holds nothing while the owner lives");
    assert_eq!(questions(&conv.history("chat").await.unwrap()), ["What is 17 + 25?", "What is the capital of France?"]);
    assert_eq!(b.sessions().open("nobody").await.unwrap_err().kind(), ErrorKind::NotFound);
    let pipeline = dspex::Pipeline::from_toml(
        "name = \"p\"\ninputs = [\"question\"]\n[[steps]]\nname = \"a\"\nkind = \"native\"\nsignature = \"question -> answer\"\n",
    )
    .unwrap();
    let e = conv.run_pipeline(&pipeline, q("What is 2 + 3?")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "pipelines run where the session is held: {e}");

    // kill -9 the owner: the next requests — two at once, through two
    // handles — take the session over (once) and succeed at once, its
    // history intact and rebuilt on b's own worker.
    let again = b.sessions().open("conv").await.unwrap();
    owner.kill();
    let t = Instant::now();
    let (third, fourth) = tokio::join!(
        conv.run_with("chat", q("What is 2 + 3?"), python()),
        again.run_with("chat", q("What is the capital of Japan?"), python())
    );
    let took = t.elapsed();
    let (third, fourth) = (third.unwrap(), fourth.unwrap());
    assert_eq!((third.get_str("answer"), fourth.get_str("answer")), (Some("5"), Some("Tokyo")));
    assert_eq!(again.owner(), None);
    assert!(took < Duration::from_secs(2), "the takeover took {took:?}");
    assert_eq!(conv.owner(), None, "b holds the session now");
    assert!(b.sessions().list().iter().any(|s| s.id == "conv"));
    assert!(third.meta.worker.as_deref().is_some_and(|w| w.starts_with("worker:general:")), "{:?}", third.meta);
    let reqs = lm_server.requests();
    let sent = reqs.last().expect("b's LM was called").to_string();
    assert!(
        sent.contains("What is 17 + 25?") && sent.contains("Paris"),
        "the owner's turns reached b's worker: {sent}"
    );
    let history = questions(&conv.history("chat").await.unwrap());
    assert_eq!(history[..2], ["What is 17 + 25?", "What is the capital of France?"]);
    let mut last_two = history[2..].to_vec();
    last_two.sort();
    assert_eq!(last_two, ["What is 2 + 3?", "What is the capital of Japan?"], "{history:?}");
    assert_eq!(b.sessions().list().len(), 1, "started once");

    // Two nodes race for the other orphaned session: exactly one takes it,
    // the other's request is forwarded to the winner, and both are served.
    let turn = |rt: Runtime, question: &'static str| async move {
        let s = rt.sessions().open("race").await?;
        let out = s.run_with("chat", q(question), native()).await?;
        Ok::<_, dspex::Error>((s, out))
    };
    let (at_b, at_d) =
        tokio::join!(turn(b.clone(), "What is the capital of France?"), turn(d.clone(), "What is 2 + 3?"));
    let ((sb, out_b), (sd, out_d)) = (at_b.unwrap(), at_d.unwrap());
    assert_eq!((out_b.get_str("answer"), out_d.get_str("answer")), (Some("Paris"), Some("5")));
    let holders: Vec<&str> = [("b", &b), ("d", &d)]
        .into_iter()
        .filter(|(_, rt)| rt.sessions().list().iter().any(|s| s.id == "race"))
        .map(|(n, _)| n)
        .collect();
    assert_eq!(holders.len(), 1, "held by {holders:?}");
    let (winner, loser) = if holders[0] == "b" { (&sb, &sd) } else { (&sd, &sb) };
    assert_eq!(winner.owner(), None);
    assert_eq!(loser.owner().as_deref(), Some(holders[0]));
    let history = questions(&loser.history("chat").await.unwrap());
    assert_eq!(history.len(), 3, "{history:?}");
    assert_eq!(history[0], "What is 17 + 25?");

    // Closing through the non-owner ends it everywhere.
    loser.close().await.unwrap();
    assert!(b.sessions().list().iter().all(|s| s.id != "race") && d.sessions().list().is_empty());
    assert_eq!(d.sessions().open("race").await.unwrap_err().kind(), ErrorKind::NotFound);

    joined_b.leave().await;
    joined_d.leave().await;
    b.shutdown().await.unwrap();
    d.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_owner_loses_its_session_and_after_healing_never_writes_stale_state() {
    let nats = NatsServer::start();
    let link = Link::to(nats.port).await;
    let (lm_server, lm) = offline_lm().await;
    let (a, joined_a) = node(&link.url(), "a", false, lm.clone()).await;
    let (b, joined_b) = node(&nats.url(), "b", false, lm).await;
    until_nodes(&b, &["a", "b"]).await;
    let stale = chat_session(&a, "split", native()).await;

    // Cut a off: its lease runs out, and b takes the session over.
    link.cut();
    until_nodes(&b, &["b"]).await;
    let taken = b.sessions().open("split").await.unwrap();
    let out = taken.run_with("chat", q("What is the capital of France?"), native()).await.unwrap();
    assert_eq!(out.get_str("answer"), Some("Paris"));
    assert_eq!(taken.owner(), None, "b took the session over");

    // Heal. a still holds its old copy; its next request runs there against
    // stale history, but the write is refused (b wrote since), so a drops
    // its copy and the request is sent to b, which runs it on the real state.
    link.heal();
    until_nodes(&b, &["a", "b"]).await;
    let out = stale.run_with("chat", q("What is 2 + 3?"), native()).await.unwrap();
    assert_eq!(out.get_str("answer"), Some("5"));
    assert_eq!(out.meta.node.as_deref(), Some("b"), "{:?}", out.meta);
    assert_eq!(stale.owner().as_deref(), Some("b"));
    assert!(a.sessions().list().is_empty(), "a dropped its copy");
    let sent = lm_server.requests().last().expect("an LM call").to_string();
    assert!(sent.contains("Paris"), "the last turn ran with b's history: {sent}");
    assert_eq!(
        questions(&taken.history("chat").await.unwrap()),
        ["What is 17 + 25?", "What is the capital of France?", "What is 2 + 3?"]
    );
    assert_eq!(taken.state().await.unwrap().requests, 4, "define and three turns: none lost, none doubled");

    joined_a.leave().await;
    joined_b.leave().await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_by_the_network_loses_its_session_and_after_healing_writes_nothing_stale() {
    // Three namespaces' worth of network: the NATS server in its own, the
    // owner node (a process) in another, this test's node in the root one;
    // veth pairs join each to the server's namespace.
    let k = std::process::id() % 200 + 20;
    let Some(nats_ns) = Netns::create(&format!("dx{k}nats")) else {
        eprintln!("SKIPPED: this kernel (or user) refuses network namespaces (`ip netns add` failed)");
        return;
    };
    let owner_ns = Netns::create(&format!("dx{k}own")).expect("a second namespace");
    let (to_root, to_owner) = (format!("dx{k}r"), format!("dx{k}o"));
    nats_ns.link((&format!("{to_root}n"), &format!("10.201.{k}.2/30")), None, (&to_root, &format!("10.201.{k}.1/30")));
    nats_ns.link(
        (&format!("{to_owner}n"), &format!("10.201.{k}.5/30")),
        Some(&owner_ns),
        (&to_owner, &format!("10.201.{k}.6/30")),
    );
    let token = format!("t{}", fastrand::u64(..));
    let nats = NatsServer::in_netns(&nats_ns, &format!("10.201.{k}.2"), &token);
    let spec = OwnerSpec {
        url: format!("nats://10.201.{k}.5:4222"),
        node: "cut".into(),
        token: Some(token.clone()),
        sessions: vec!["netsplit".into()],
    };
    let mut owner = OwnerProcess::start(&spec, Some(&owner_ns.name));
    let (_lm_server, lm) = offline_lm().await;
    let (b, joined_b) = node_with(&nats.url(), "b", true, lm, Some(&token)).await;
    until_nodes(&b, &["b", "cut"]).await;

    let s = b.sessions().open("netsplit").await.unwrap();
    let out = s.run_with("chat", q("What is the capital of France?"), python()).await.unwrap();
    assert_eq!(out.meta.node.as_deref(), Some("cut"), "forwarded to the owner across namespaces");

    // Cut the owner's link at the server's side: no FIN, no RST, packets
    // just stop. The request waits for the owner until its lease runs out,
    // then this node takes the session over.
    nats_ns.set_link(&format!("{to_owner}n"), false);
    let t = Instant::now();
    let out = s.run_with("chat", q("What is 2 + 3?"), python()).await.unwrap();
    let took = t.elapsed();
    assert_eq!(out.get_str("answer"), Some("5"));
    assert_eq!(s.owner(), None, "b took the session over");
    assert!(took < Duration::from_secs(4), "the takeover of a cut-off owner's session took {took:?}");

    // Heal: the owner's connection comes back (it never saw it break). Its
    // handle still points at its own copy; that copy's next write is
    // refused, so the turn goes to b and runs on the real state.
    nats_ns.set_link(&format!("{to_owner}n"), true);
    until_nodes(&b, &["b", "cut"]).await;
    let turn = owner.turn("netsplit", "What is the capital of Japan?");
    assert_eq!(turn["answer"], "Tokyo", "{turn}");
    assert_eq!(turn["node"], "b", "{turn}");
    assert_eq!(turn["owner"], "b", "{turn}");
    assert_eq!(
        questions(&s.history("chat").await.unwrap()),
        ["What is 17 + 25?", "What is the capital of France?", "What is 2 + 3?", "What is the capital of Japan?"]
    );
    assert_eq!(s.state().await.unwrap().requests, 5, "define and four turns: none lost, none doubled");

    joined_b.leave().await;
    b.shutdown().await.unwrap();
    drop(owner);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_hands_its_sessions_over() {
    let nats = NatsServer::start();
    let (_lm_server, lm) = offline_lm().await;
    let (a, joined_a) = node(&nats.url(), "a", false, lm.clone()).await;
    let (b, joined_b) = node(&nats.url(), "b", false, lm).await;
    until_nodes(&b, &["a", "b"]).await;
    let s = chat_session(&a, "handed", native()).await;
    // Ids are the cluster's: another node cannot create the same one.
    let e = b.sessions().create(SessionOptions::default().id("handed")).await.unwrap_err();
    assert_eq!((e.kind(), e.is_retryable()), (ErrorKind::Conflict, false), "{e}");

    a.drain_cluster(Duration::from_millis(100)).await.unwrap();
    assert!(a.sessions().list().is_empty(), "a handed its session over");
    // A request on a's old handle is not a reason for a to take it back.
    let e = s.run_with("chat", q("What is the capital of France?"), native()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert!(a.sessions().list().is_empty(), "a draining node took a session back");
    // Owned by nobody: the first node to open it holds it at once.
    let t = Instant::now();
    let taken = b.sessions().open("handed").await.unwrap();
    assert_eq!(taken.owner(), None);
    assert!(b.sessions().list().iter().any(|i| i.id == "handed"));
    let out = taken.run_with("chat", q("What is 2 + 3?"), native()).await.unwrap();
    assert_eq!(out.get_str("answer"), Some("5"));
    assert!(t.elapsed() < Duration::from_secs(1), "the handover took {:?}", t.elapsed());
    assert_eq!(questions(&taken.history("chat").await.unwrap()), ["What is 17 + 25?", "What is 2 + 3?"]);

    joined_a.leave().await;
    joined_b.leave().await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_restarted_under_its_name_serves_its_sessions_again() {
    let nats = NatsServer::start();
    let spec = |sessions: Vec<String>| OwnerSpec { url: nats.url(), node: "phoenix".into(), token: None, sessions };
    let mut first = OwnerProcess::start(&spec(vec!["phx".into()]), None);
    let (_lm_server, lm) = offline_lm().await;
    let (b, joined_b) = node(&nats.url(), "b", false, lm).await;
    until_nodes(&b, &["b", "phoenix"]).await;
    let s = b.sessions().open("phx").await.unwrap();
    assert_eq!(s.owner().as_deref(), Some("phoenix"));

    // The owner dies and comes back under the same name, holding nothing;
    // the store still names it, so it takes the session from the store and
    // answers — nobody is told "no such session".
    first.kill();
    let _second = OwnerProcess::start(&spec(vec![]), None);
    let out = s.run_with("chat", q("What is the capital of France?"), python()).await.unwrap();
    assert_eq!(out.get_str("answer"), Some("Paris"));
    assert_eq!(out.meta.node.as_deref(), Some("phoenix"), "{:?}", out.meta);
    assert_eq!(s.owner().as_deref(), Some("phoenix"));
    assert!(b.sessions().list().is_empty());
    assert_eq!(questions(&s.history("chat").await.unwrap()), ["What is 17 + 25?", "What is the capital of France?"]);

    joined_b.leave().await;
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_defers_to_the_clusters_copy_of_its_restored_sessions() {
    let nats = NatsServer::start();
    let (_lm_server, lm) = offline_lm().await;
    let dir = std::env::temp_dir().join(format!("dspex-test-defer-{}-{}", std::process::id(), fastrand::u32(..)));
    let with_snapshots = |lm: LmConfig| dspex::RuntimeConfig {
        default_pool: false,
        lm: Some(lm),
        sessions: dspex::SessionConfig { snapshot_dir: Some(dir.clone()), ..dspex::SessionConfig::default() },
        ..dspex::RuntimeConfig::default()
    };
    let join = |rt: Runtime, name: &'static str| {
        let url = nats.url();
        async move {
            let mut c = ClusterConfig::new(url, name).allow_insecure(true).lease_ms(1000);
            c.keepalive_ms = 100;
            ClusterNode::join(&rt, c).await.expect("join")
        }
    };
    let a = Runtime::from_config(with_snapshots(lm.clone())).await.unwrap();
    let joined_a = join(a.clone(), "a").await;
    chat_session(&a, "kept", native()).await;
    joined_a.leave().await;
    a.shutdown().await.unwrap();

    // While a is down, b takes the session over and adds a turn.
    let (b, joined_b) = node(&nats.url(), "b", false, lm.clone()).await;
    let taken = b.sessions().open("kept").await.unwrap();
    taken.run_with("chat", q("What is the capital of France?"), native()).await.unwrap();
    assert_eq!(taken.owner(), None);

    // a comes back on the same snapshot directory: it restores its old copy,
    // and on joining drops it for the cluster's, so its requests go to b.
    let again = Runtime::from_config(with_snapshots(lm)).await.unwrap();
    assert_eq!(again.sessions().restore_report().restored, ["kept"]);
    let rejoined = join(again.clone(), "a").await;
    assert!(again.sessions().list().is_empty(), "the stale restored copy was dropped");
    let s = again.sessions().open("kept").await.unwrap();
    assert_eq!(s.owner().as_deref(), Some("b"));
    let out = s.run_with("chat", q("What is 2 + 3?"), native()).await.unwrap();
    assert_eq!(out.meta.node.as_deref(), Some("b"), "{:?}", out.meta);
    assert_eq!(
        questions(&taken.history("chat").await.unwrap()),
        ["What is 17 + 25?", "What is the capital of France?", "What is 2 + 3?"]
    );

    rejoined.leave().await;
    joined_b.leave().await;
    again.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every file under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// A session whose program carries its own LM key, stored, forwarded and
/// taken over between two nodes: the NATS server's JetStream store — every
/// key-value entry either node ever wrote, membership and gateway shares
/// included — holds the key's fingerprint, never the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_api_key_reaches_the_cluster_store() {
    const KEY: &str = "sk-canary-CLUSTERKV-5d2e9a71c4";
    let nats = NatsServer::start();
    let (_lm_server, lm) = offline_lm().await;
    let lm = lm.with_api_key(KEY);
    let (a, joined_a) = node(&nats.url(), "a", false, lm.clone()).await;
    let (b, joined_b) = node(&nats.url(), "b", false, lm.clone()).await;
    until_nodes(&b, &["a", "b"]).await;
    let s = a.sessions().create(SessionOptions::default().id("keyed")).await.unwrap();
    s.define("chat", ProgramSpec::predict(CHAT).with_lm(lm.clone())).await.unwrap();
    s.run_with("chat", q("What is 17 + 25?"), native()).await.unwrap();
    let on_b = b.sessions().open("keyed").await.unwrap();
    on_b.run_with("chat", q("What is 2 + 3?"), native()).await.unwrap();
    a.drain_cluster(Duration::from_millis(100)).await.unwrap();
    let taken = b.sessions().open("keyed").await.unwrap();
    let out = taken.run_with("chat", q("What is the capital of France?"), native()).await.unwrap();
    assert_eq!(out.get_str("answer"), Some("Paris"), "b resolved the stored key's fingerprint and ran");
    // Membership and gateway entries are refreshed every third of the lease.
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let (mut stored, mut fingerprints) = (0, 0);
    for path in files_under(nats.store_dir()) {
        let bytes = std::fs::read(&path).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(KEY) && !text.contains(&KEY[KEY.len() - 10..]), "the key is in {}", path.display());
        stored += bytes.len();
        fingerprints += text.matches("secret:sha256:").count();
    }
    assert!(stored > 0 && fingerprints > 0, "the session's LM settings were stored, as a fingerprint");

    joined_a.leave().await;
    joined_b.leave().await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
