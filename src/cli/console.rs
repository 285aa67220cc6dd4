//! `dspex console`: a client for a runtime's console endpoint — a REPL with
//! history, completion and help, or one command with `--once`.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dspex::actors::console::{default_socket, token_file, ConsoleRequest, COMMANDS, MUTATING};
use dspex::Value;
use rustyline::completion::{Completer, Pair};
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;
use rustyline::Helper;
use serde_json::json;

use super::common::{render_tree, table};

/// Where to connect.
#[derive(Clone)]
pub struct Target {
    /// A unix socket (the default one when neither is given).
    pub socket: Option<PathBuf>,
    /// A TCP address.
    pub tcp: Option<String>,
    /// The token (read from `<socket>.token` when not given).
    pub token: Option<String>,
}

trait Stream: std::io::Read + Write + Send {
    fn set_timeout(&self, t: Option<Duration>) -> std::io::Result<()>;
}

impl Stream for std::os::unix::net::UnixStream {
    fn set_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        self.set_read_timeout(t)
    }
}

impl Stream for std::net::TcpStream {
    fn set_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        self.set_read_timeout(t)
    }
}

/// A connection to a console endpoint.
pub(super) struct Client {
    reader: BufReader<Box<dyn Stream>>,
    writer: Box<dyn Stream>,
    token: Option<String>,
    next_id: u64,
}

/// A console error: its kind and message.
pub struct Failure {
    kind: String,
    message: String,
}

impl Failure {
    fn io(message: String) -> Failure {
        Failure { kind: "io".into(), message }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl Client {
    pub(super) fn connect(target: &Target) -> Result<Client, Failure> {
        let (a, b): (Box<dyn Stream>, Box<dyn Stream>) = match (&target.tcp, &target.socket) {
            (Some(addr), _) => {
                let s = std::net::TcpStream::connect(addr)
                    .map_err(|e| Failure::io(format!("cannot connect to the console at {addr}: {e}")))?;
                let _ = s.set_nodelay(true);
                let c = s.try_clone().map_err(|e| Failure::io(e.to_string()))?;
                (Box::new(s), Box::new(c))
            }
            (None, socket) => {
                let path = socket.clone().unwrap_or_else(default_socket);
                let s = std::os::unix::net::UnixStream::connect(&path).map_err(|e| {
                    Failure::io(format!(
                        "cannot connect to the console at {}: {e} (is `dspex serve` running?)",
                        path.display()
                    ))
                })?;
                let c = s.try_clone().map_err(|e| Failure::io(e.to_string()))?;
                (Box::new(s), Box::new(c))
            }
        };
        let token = target.token.clone().or_else(|| {
            if target.tcp.is_some() {
                return None;
            }
            let path = target.socket.clone().unwrap_or_else(default_socket);
            std::fs::read_to_string(token_file(&path)).ok().map(|t| t.trim().to_string())
        });
        Ok(Client { reader: BufReader::new(a), writer: b, token, next_id: 1 })
    }

    fn send(&mut self, cmd: &str, args: &[String]) -> Result<u64, Failure> {
        let id = self.next_id;
        self.next_id += 1;
        let mut req = ConsoleRequest::new(id, cmd, args);
        req.token = self.token.clone();
        let line = req.to_line();
        self.writer.write_all(line.as_bytes()).map_err(|e| Failure::io(format!("console connection lost: {e}")))?;
        Ok(id)
    }

    pub(super) fn read(&mut self) -> Result<Value, Failure> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err(Failure::io("the console closed the connection".into())),
            Ok(_) => serde_json::from_str(&line).map_err(|e| Failure::io(format!("bad console reply: {e}"))),
            Err(e) => Err(Failure::io(e.to_string())),
        }
    }

    pub(super) fn request(&mut self, cmd: &str, args: &[String]) -> Result<Value, Failure> {
        self.send(cmd, args)?;
        let reply = self.read()?;
        if reply["ok"] == json!(true) {
            Ok(reply["result"].clone())
        } else {
            Err(Failure {
                kind: reply["error"]["kind"].as_str().unwrap_or("error").to_string(),
                message: reply["error"]["message"].as_str().unwrap_or("unknown error").to_string(),
            })
        }
    }
}

/// Render a command's result as text.
fn render(cmd: &str, v: &Value) -> String {
    let rows = v.as_array().cloned().unwrap_or_default();
    match cmd {
        "tree" => render_tree(v),
        "pools" => table(
            &rows,
            &["name", "size", "ready", "in_flight", "queued", "requests", "failed", "overloaded", "retried"],
        ),
        "workers" => table(&rows, &["name", "state", "pid", "in_flight", "served"]),
        "nodes" => {
            let flat: Vec<Value> = rows
                .iter()
                .map(|n| {
                    let pools: Vec<String> = n["pools"]
                        .as_array()
                        .map(|ps| {
                            ps.iter()
                                .map(|p| {
                                    let offered =
                                        if p["offered"].as_bool() == Some(true) { "" } else { " (local only)" };
                                    format!(
                                        "{} {}/{}{offered}",
                                        p["name"].as_str().unwrap_or("?"),
                                        p["ready"],
                                        p["size"]
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    let mut row = n.clone();
                    row["pools"] = Value::String(if pools.is_empty() { "-".into() } else { pools.join(", ") });
                    row["node"] = Value::String(format!(
                        "{}{}",
                        n["node"].as_str().unwrap_or("?"),
                        if n["local"].as_bool() == Some(true) { " (this node)" } else { "" }
                    ));
                    row
                })
                .collect();
            table(&flat, &["node", "pools", "remote_in_flight", "accepting", "age_ms", "version"])
        }
        "sessions" => table(&rows, &["id", "programs", "turns", "requests", "worker", "rebuilds", "idle_ms"]),
        "pipelines" => table(&rows, &["run_id", "pipeline", "session", "running_ms"]),
        "help" => {
            let mut out = String::from("commands:\n");
            for (c, d) in COMMANDS {
                out.push_str(&format!("  {c:<16} {d}\n"));
            }
            out.push_str("  quit             leave the console\n");
            out
        }
        "gateway" => {
            let rows_of = |key: &str, label: &str| -> Vec<Value> {
                v[key]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(name, t)| {
                                let mut row = t.clone();
                                row[label] = Value::String(name.clone());
                                row["cost_usd"] =
                                    Value::String(format!("{:.6}", t["cost_usd"].as_f64().unwrap_or(0.0)));
                                row
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let cols = ["requests", "cache_hits", "retries", "rate_limited", "refused", "fallbacks", "errors"];
            let tokens = ["prompt_tokens", "completion_tokens", "cost_usd"];
            let with = |first: &'static str| [&[first][..], &cols[..], &tokens[..]].concat();
            let mut out = format!(
                "LMs:\n{}tenants:\n{}cached responses: {}\n",
                table(&rows_of("lms", "lm"), &with("lm")),
                table(&rows_of("tenants", "tenant"), &with("tenant")),
                v["cached_responses"]
            );
            let spend = rows_of("spend", "tenant");
            if !spend.is_empty() {
                let spend: Vec<Value> = spend
                    .into_iter()
                    .map(|mut row| {
                        row["usd"] = Value::String(format!("{:.6}", row["usd"].as_f64().unwrap_or(0.0)));
                        row
                    })
                    .collect();
                out.push_str("budget spend this period (cluster-wide):\n");
                out.push_str(&table(&spend, &["tenant", "requests", "tokens", "usd", "period_secs"]));
            }
            if let Some(shared) = v["lm_nodes"].as_object().filter(|m| !m.is_empty()) {
                out.push_str("rate limits shared by nodes:");
                for (lm, n) in shared {
                    out.push_str(&format!(" {lm}={n}"));
                }
                out.push('\n');
            }
            out
        }
        "routes" => {
            let mut out = String::new();
            out.push_str(&format!(
                "routes {}  fallbacks {}  shadowed {}  divergences {}\nbreakers {}\nrecent decisions:\n",
                v["routes"], v["fallbacks"], v["shadowed"], v["divergences"], v["breakers"]
            ));
            let recent = v["recent"].as_array().cloned().unwrap_or_default();
            let start = recent.len().saturating_sub(15);
            out.push_str(&table(&recent[start..], &["op", "route", "reason"]));
            out
        }
        _ => serde_json::to_string_pretty(v).unwrap_or_default() + "\n",
    }
}

/// One event as a line: its name, its trace id, then its fields.
pub(super) fn render_event(e: &Value) -> String {
    let name = e.get("event").and_then(Value::as_str).unwrap_or("?");
    let trace = e.get("trace_id").and_then(Value::as_str).unwrap_or("-");
    let fields: Vec<String> = e
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| !matches!(k.as_str(), "event" | "trace_id" | "at_ms"))
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect();
    format!("{name:<16} {trace:<20} {}", fields.join(" "))
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Tail events until the connection ends, Ctrl-C, or `count` events (a
/// connection that ends before them is a failure: they did not all come).
fn tail(client: &mut Client, args: &[String], json_out: bool, count: Option<u64>) -> Result<(), Failure> {
    client.request("events", args)?;
    INTERRUPTED.store(false, Ordering::SeqCst);
    // SAFETY: installing a handler that only stores to an atomic.
    let previous = unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
    let _ = client.reader.get_ref().set_timeout(Some(Duration::from_millis(200)));
    let mut line = String::new();
    let mut seen = 0;
    let result = loop {
        if INTERRUPTED.load(Ordering::SeqCst) || count.is_some_and(|n| seen >= n) {
            break Ok(());
        }
        // A read that times out may leave part of a line in `line`: it is
        // kept, and the next read completes it.
        match client.reader.read_line(&mut line) {
            Ok(0) if count.is_some() => {
                break Err(Failure::io(format!("the console closed the connection after {seen} events")))
            }
            Ok(0) => break Ok(()),
            Ok(_) => {
                let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                let e = &v["event"];
                // A "lagged" marker (events dropped for a slow reader) is not an event.
                if e.get("lagged").is_none() {
                    seen += 1;
                }
                line.clear();
                let text = if json_out { e.to_string() } else { render_event(e) };
                // A reader that went away (`| head`, a closed pipe) ends the
                // tail as Ctrl-C would, not with a panic.
                let mut out = std::io::stdout().lock();
                if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
                    break Ok(());
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(e) => break Err(Failure::io(e.to_string())),
        }
    };
    // SAFETY: restoring the handler that was there.
    unsafe {
        libc::signal(libc::SIGINT, previous);
    }
    result
}

/// `dspex console --once CMD`: exit 0 on success, 2 on an error reply, 1
/// when the console cannot be reached. `events` tails until Ctrl-C, or until
/// `count` events when given.
pub fn once(target: &Target, command: &str, json_out: bool, count: Option<u64>) -> i32 {
    let words: Vec<String> = command.split_whitespace().map(String::from).collect();
    let Some((cmd, args)) = words.split_first() else {
        eprintln!("dspex console: --once needs a command (try `help`)");
        return 2;
    };
    if count.is_some() && cmd != "events" {
        eprintln!("dspex console: --count applies to `events` only");
        return 2;
    }
    let mut client = match Client::connect(target) {
        Ok(c) => c,
        Err(f) => return report(&f, json_out, 1),
    };
    if cmd == "events" {
        return match tail(&mut client, args, json_out, count) {
            Ok(()) => 0,
            Err(f) if f.kind == "io" => report(&f, json_out, 1),
            Err(f) => report(&f, json_out, 2),
        };
    }
    match client.request(cmd, args) {
        Ok(v) => {
            if json_out {
                println!("{v}");
            } else {
                print!("{}", render(cmd, &v));
            }
            0
        }
        Err(f) => report(&f, json_out, 2),
    }
}

fn report(f: &Failure, json_out: bool, code: i32) -> i32 {
    if json_out {
        println!("{}", json!({"error": {"kind": f.kind, "message": f.message}}));
    } else {
        eprintln!("error ({}): {}", f.kind, f.message);
    }
    code
}

/// Completion of command names and, after them, of actor and pool names.
struct ConsoleHelper {
    names: Vec<String>,
}

impl Completer for ConsoleHelper {
    type Candidate = Pair;

    fn complete(&self, line: &str, pos: usize, _: &rustyline::Context<'_>) -> rustyline::Result<(usize, Vec<Pair>)> {
        let head = &line[..pos];
        let start = head.rfind(' ').map(|i| i + 1).unwrap_or(0);
        let word = &head[start..];
        let options: Vec<String> = if start == 0 {
            COMMANDS.iter().map(|(c, _)| c.split(' ').next().unwrap_or(c).to_string()).chain(["quit".into()]).collect()
        } else {
            self.names.clone()
        };
        let pairs = options
            .into_iter()
            .filter(|o| o.starts_with(word))
            .map(|o| Pair { display: o.clone(), replacement: o })
            .collect();
        Ok((start, pairs))
    }
}

impl Hinter for ConsoleHelper {
    type Hint = String;
}
impl Highlighter for ConsoleHelper {}
impl Validator for ConsoleHelper {}
impl Helper for ConsoleHelper {}

fn names_in(tree: &Value, out: &mut Vec<String>) {
    if let Some(n) = tree.get("name").and_then(Value::as_str) {
        out.push(n.to_string());
        if let Some(pool) = n.strip_prefix("pool:") {
            out.push(pool.to_string());
        }
    }
    for c in tree.get("children").and_then(Value::as_array).into_iter().flatten() {
        names_in(c, out);
    }
}

/// `client.request`, but a lost connection (`dspex serve` restarted, say:
/// a new socket and token) is opened again once. A read-only command is then
/// sent again; a mutating one is not, since it may have run.
fn request_reconnecting(target: &Target, client: &mut Client, cmd: &str, args: &[String]) -> Result<Value, Failure> {
    match client.request(cmd, args) {
        Err(lost) if lost.kind == "io" => {
            *client = Client::connect(target)?;
            if MUTATING.contains(&cmd) {
                return Err(Failure {
                    kind: "reconnected".into(),
                    message: format!(
                        "{}; connected again, but `{cmd}` may or may not have run: check, then repeat it",
                        lost.message
                    ),
                });
            }
            println!("(connected again: {})", lost.message);
            client.request(cmd, args)
        }
        reply => reply,
    }
}

/// The interactive console.
pub fn repl(target: &Target) -> i32 {
    let mut client = match Client::connect(target) {
        Ok(c) => c,
        Err(f) => return report(&f, false, 1),
    };
    let mut names = Vec::new();
    if let Ok(tree) = client.request("tree", &[]) {
        names_in(&tree, &mut names);
    }
    let config = rustyline::Config::builder().auto_add_history(true).build();
    let mut editor: rustyline::Editor<ConsoleHelper, rustyline::history::FileHistory> =
        match rustyline::Editor::with_config(config) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("dspex console: cannot open the terminal: {e}");
                return 1;
            }
        };
    editor.set_helper(Some(ConsoleHelper { names }));
    let history = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".dspex_console_history"));
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    println!("dspex console — `help` lists the commands, `quit` leaves");
    let code = loop {
        let line = match editor.readline("dspex> ") {
            Ok(l) => l,
            Err(rustyline::error::ReadlineError::Interrupted) => continue,
            Err(_) => break 0,
        };
        let words: Vec<String> = line.split_whitespace().map(String::from).collect();
        let Some((cmd, args)) = words.split_first() else { continue };
        match cmd.as_str() {
            "quit" | "exit" => break 0,
            "help" => print!("{}", render("help", &Value::Null)),
            "events" => {
                println!("(live tail — Ctrl-C to stop)");
                if let Err(f) = tail(&mut client, args, false, None) {
                    report(&f, false, 2);
                }
                // The stream ends with the connection: open a fresh one.
                match Client::connect(target) {
                    Ok(c) => client = c,
                    Err(f) => break report(&f, false, 1),
                }
            }
            _ => match request_reconnecting(target, &mut client, cmd, args) {
                Ok(v) => {
                    if cmd == "tree" {
                        let mut names = Vec::new();
                        names_in(&v, &mut names);
                        if let Some(h) = editor.helper_mut() {
                            h.names = names;
                        }
                    }
                    print!("{}", render(cmd, &v));
                }
                Err(f) if f.kind == "io" => break report(&f, false, 1),
                Err(f) => {
                    report(&f, false, 2);
                }
            },
        }
        let _ = std::io::stdout().flush();
    };
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_render_with_their_name_and_fields() {
        let e = json!({"at_ms": 1, "event": "lifecycle", "actor": "worker:general:0", "what": "started", "detail": "pid 7"});
        let line = render_event(&e);
        assert!(line.starts_with("lifecycle "), "{line}");
        assert!(line.contains("actor=worker:general:0 what=started detail=pid 7"), "{line}");
        let e = json!({"event": "cache_hit", "trace_id": "t-1", "op": "predict"});
        assert!(render_event(&e).contains("t-1"));
    }

    #[test]
    fn the_gateway_renders_per_lm_tenant_spend_and_shares() {
        let totals = json!({"requests": 3, "cache_hits": 1, "retries": 0, "rate_limited": 0, "refused": 2,
            "fallbacks": 0, "errors": 0, "prompt_tokens": 30, "completion_tokens": 12, "cost_usd": 0.0000123});
        let v = json!({
            "lms": {"gpt-4o-mini@http://lm/v1": totals},
            "tenants": {"acme": totals},
            "cached_responses": 4,
            "spend": {"acme": {"period_secs": 3600, "period": 9, "requests": 5, "tokens": 70, "usd": 0.25}},
            "lm_nodes": {"gpt-4o-mini@http://lm/v1": 2},
        });
        let text = render("gateway", &v);
        assert!(text.contains("gpt-4o-mini@http://lm/v1") && text.contains("0.000012"), "{text}");
        assert!(text.contains("cached responses: 4"), "{text}");
        assert!(text.contains("budget spend this period (cluster-wide):"), "{text}");
        assert!(text.contains("0.250000") && text.contains("3600"), "{text}");
        assert!(text.contains("rate limits shared by nodes: gpt-4o-mini@http://lm/v1=2"), "{text}");
        let alone = render("gateway", &json!({"lms": {}, "tenants": {}, "cached_responses": 0}));
        assert!(!alone.contains("budget spend") && !alone.contains("shared by nodes"), "{alone}");
    }
}
