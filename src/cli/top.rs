//! `dspex console top`: a live, full-screen view of a running runtime.
//!
//! It reads the same console endpoint as `dspex console` (no new
//! privileges): one connection polls `tree`, `pools`, `sessions` and
//! `routes` about twice a second, a second one tails `events`. Requests per
//! second come from the pools' request counters between two polls; p50/p99
//! from the `python.execute` events of the last 30 s. A runtime that stops
//! or restarts shows as "disconnected" until its endpoint answers again.
//!
//! Keys: `1`–`5` or Tab / Shift-Tab switch panes, `/` filters the pane's
//! lines (Enter keeps the filter, Esc clears it), `q` or Ctrl-C quits.

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dspex::Value;
use ratatui::crossterm::event::{self, Event as Key, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Tabs};
use ratatui::Frame;

use super::common::{render_tree, table};
use super::console::{Client, Target};

const PANES: [&str; 5] = ["Tree", "Pools", "Sessions", "Routes", "Events"];
/// How long latencies count toward a pool's p50/p99.
const WINDOW: Duration = Duration::from_secs(30);
const EVENTS_KEPT: usize = 500;

/// What the pollers send the screen.
enum Update {
    Snapshot(Box<Snapshot>),
    Disconnected(String),
    Event(Value),
}

struct Snapshot {
    at: Instant,
    tree: Value,
    pools: Value,
    sessions: Value,
    routes: Value,
}

/// The screen's state.
struct Top {
    target: String,
    pane: usize,
    filter: String,
    editing: bool,
    snapshot: Option<Snapshot>,
    disconnected: Option<String>,
    events: VecDeque<String>,
    /// Per pool: (when, python.execute elapsed µs).
    latencies: HashMap<String, VecDeque<(Instant, u64)>>,
    /// Per pool: requests per second between the last two polls.
    rates: HashMap<String, f64>,
    refreshes: u64,
}

/// Run the view until the user quits; the exit code.
pub fn top(target: &Target) -> i32 {
    let (tx, rx) = mpsc::channel();
    spawn_poller(target.clone(), tx.clone());
    spawn_tail(target.clone(), tx);
    let label = match (&target.tcp, &target.socket) {
        (Some(addr), _) => addr.clone(),
        (None, Some(path)) => path.display().to_string(),
        (None, None) => dspex::actors::console::default_socket().display().to_string(),
    };
    let mut state = Top::new(label);
    let mut terminal = ratatui::init();
    let result = run(&mut terminal, &mut state, &rx);
    ratatui::restore();
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("dspex console top: {e}");
            1
        }
    }
}

fn run(terminal: &mut ratatui::DefaultTerminal, state: &mut Top, rx: &mpsc::Receiver<Update>) -> std::io::Result<()> {
    loop {
        while let Ok(update) = rx.try_recv() {
            state.apply(update);
        }
        terminal.draw(|f| state.draw(f))?;
        if event::poll(Duration::from_millis(100))? {
            if let Key::Key(k) = event::read()? {
                if k.kind != KeyEventKind::Release && !state.key(k.code, k.modifiers) {
                    return Ok(());
                }
            }
        }
    }
}

impl Top {
    fn new(target: String) -> Top {
        Top {
            target,
            pane: 0,
            filter: String::new(),
            editing: false,
            snapshot: None,
            disconnected: None,
            events: VecDeque::new(),
            latencies: HashMap::new(),
            rates: HashMap::new(),
            refreshes: 0,
        }
    }

    fn apply(&mut self, update: Update) {
        match update {
            Update::Snapshot(s) => {
                if let Some(prev) = &self.snapshot {
                    let secs = s.at.duration_since(prev.at).as_secs_f64().max(1e-3);
                    for pool in s.pools.as_array().into_iter().flatten() {
                        let name = pool["name"].as_str().unwrap_or("?");
                        let before = prev
                            .pools
                            .as_array()
                            .into_iter()
                            .flatten()
                            .find(|p| p["name"] == pool["name"])
                            .and_then(|p| p["requests"].as_u64());
                        if let (Some(b), Some(now)) = (before, pool["requests"].as_u64()) {
                            self.rates.insert(name.to_string(), now.saturating_sub(b) as f64 / secs);
                        }
                    }
                }
                self.snapshot = Some(*s);
                self.disconnected = None;
                self.refreshes += 1;
            }
            Update::Disconnected(why) => self.disconnected = Some(why),
            Update::Event(e) => {
                if e["event"] == "python.execute" {
                    if let (Some(pool), Some(us)) = (e["pool"].as_str(), e["elapsed_us"].as_u64()) {
                        self.latencies.entry(pool.to_string()).or_default().push_back((Instant::now(), us));
                    }
                }
                self.events.push_back(super::console::render_event(&e));
                while self.events.len() > EVENTS_KEPT {
                    self.events.pop_front();
                }
            }
        }
        let cutoff = Instant::now().checked_sub(WINDOW);
        for samples in self.latencies.values_mut() {
            while samples.front().is_some_and(|(t, _)| cutoff.is_some_and(|c| *t < c)) {
                samples.pop_front();
            }
        }
    }

    /// Handle a key; false to quit.
    fn key(&mut self, code: KeyCode, modifiers: KeyModifiers) -> bool {
        if modifiers.contains(KeyModifiers::CONTROL) && code == KeyCode::Char('c') {
            return false;
        }
        if self.editing {
            match code {
                KeyCode::Enter => self.editing = false,
                KeyCode::Esc => {
                    self.editing = false;
                    self.filter.clear();
                }
                KeyCode::Backspace => {
                    self.filter.pop();
                }
                KeyCode::Char(c) => self.filter.push(c),
                _ => {}
            }
            return true;
        }
        match code {
            KeyCode::Char('q') => return false,
            KeyCode::Esc => self.filter.clear(),
            KeyCode::Char('/') => self.editing = true,
            KeyCode::Tab | KeyCode::Right => self.pane = (self.pane + 1) % PANES.len(),
            KeyCode::BackTab | KeyCode::Left => self.pane = (self.pane + PANES.len() - 1) % PANES.len(),
            KeyCode::Char(c @ '1'..='5') => self.pane = c as usize - '1' as usize,
            _ => {}
        }
        true
    }

    fn draw(&self, f: &mut Frame) {
        let [header, tabs, body, events] =
            Layout::vertical([Constraint::Length(1), Constraint::Length(1), Constraint::Min(5), Constraint::Length(9)])
                .areas(f.area());
        let status = match (&self.disconnected, &self.snapshot) {
            (Some(why), _) => Span::styled(format!("disconnected: {why} (retrying)"), Style::new().fg(Color::Red)),
            (None, None) => Span::raw("connecting..."),
            (None, Some(s)) => Span::styled(
                format!(
                    "connected  up {}  sessions {}  refresh #{}",
                    super::common::ms(s.tree.get("uptime_ms")),
                    s.sessions.as_array().map_or(0, Vec::len),
                    self.refreshes
                ),
                Style::new().fg(Color::Green),
            ),
        };
        f.render_widget(
            Paragraph::new(Line::from(vec![
                Span::styled("dspex top ", Style::new().add_modifier(Modifier::BOLD)),
                Span::raw(format!("{}  ", self.target)),
                status,
            ])),
            header,
        );
        let titles: Vec<String> = PANES.iter().enumerate().map(|(i, p)| format!("{} {p}", i + 1)).collect();
        f.render_widget(
            Tabs::new(titles)
                .select(self.pane)
                .highlight_style(Style::new().add_modifier(Modifier::REVERSED))
                .divider("|"),
            tabs,
        );
        let filter = if self.editing || !self.filter.is_empty() {
            format!(" filter: {}{} ", self.filter, if self.editing { "_" } else { "" })
        } else {
            " / filter  Tab panes  q quit ".to_string()
        };
        let lines = self.pane_lines();
        let needle = self.filter.to_lowercase();
        let shown: Vec<Line> = lines
            .into_iter()
            .filter(|l| needle.is_empty() || l.to_lowercase().contains(&needle))
            .map(Line::from)
            .collect();
        f.render_widget(
            Paragraph::new(shown)
                .block(Block::default().borders(Borders::ALL).title(PANES[self.pane]).title_bottom(filter)),
            body,
        );
        let keep = events.height.saturating_sub(2) as usize;
        let recent: Vec<Line> =
            self.events.iter().skip(self.events.len().saturating_sub(keep)).map(|e| Line::from(e.as_str())).collect();
        f.render_widget(
            Paragraph::new(recent).block(Block::default().borders(Borders::ALL).title("Last events")),
            events,
        );
    }

    fn pane_lines(&self) -> Vec<String> {
        if PANES[self.pane] == "Events" {
            return self.events.iter().rev().cloned().collect();
        }
        let Some(s) = &self.snapshot else { return vec!["waiting for the runtime...".into()] };
        let text = match PANES[self.pane] {
            "Tree" => render_tree(&s.tree),
            "Pools" => self.pools_table(&s.pools),
            "Sessions" => table(
                s.sessions.as_array().map_or(&[][..], Vec::as_slice),
                &["id", "programs", "turns", "requests", "idle_ms"],
            ),
            _ => routes_text(&s.routes),
        };
        text.lines().map(str::to_string).collect()
    }

    fn pools_table(&self, pools: &Value) -> String {
        let rows: Vec<Value> = pools
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                let name = p["name"].as_str().unwrap_or("?");
                let (p50, p99) = self.percentiles(name);
                let mut row = p.clone();
                row["req/s"] = Value::String(self.rates.get(name).map_or("-".into(), |r| format!("{r:.1}")));
                row["p50"] = Value::String(p50);
                row["p99"] = Value::String(p99);
                row
            })
            .collect();
        table(&rows, &["name", "size", "ready", "in_flight", "queued", "req/s", "p50", "p99", "requests", "failed"])
    }

    fn percentiles(&self, pool: &str) -> (String, String) {
        let Some(samples) = self.latencies.get(pool).filter(|s| !s.is_empty()) else { return ("-".into(), "-".into()) };
        let mut us: Vec<u64> = samples.iter().map(|(_, us)| *us).collect();
        us.sort_unstable();
        let at = |q: f64| us[((us.len() - 1) as f64 * q).round() as usize];
        (micros(at(0.5)), micros(at(0.99)))
    }
}

fn micros(us: u64) -> String {
    if us >= 10_000 {
        format!("{:.0} ms", us as f64 / 1000.0)
    } else if us >= 1000 {
        format!("{:.1} ms", us as f64 / 1000.0)
    } else {
        format!("{us} µs")
    }
}

fn routes_text(v: &Value) -> String {
    let mut out = format!(
        "routes {}  fallbacks {}  shadowed {}  divergences {}\n",
        v["routes"], v["fallbacks"], v["shadowed"], v["divergences"]
    );
    out.push_str("breakers:\n");
    match v["breakers"].as_object() {
        Some(b) if !b.is_empty() => {
            for (target, state) in b {
                out.push_str(&format!("  {target:<24} {}\n", state.as_str().unwrap_or("?")));
            }
        }
        _ => out.push_str("  (none yet)\n"),
    }
    out.push_str("recent decisions:\n");
    let recent = v["recent"].as_array().cloned().unwrap_or_default();
    out.push_str(&table(&recent[recent.len().saturating_sub(30)..], &["op", "route", "reason"]));
    out
}

/// Poll the snapshot commands about twice a second, reconnecting as needed.
fn spawn_poller(target: Target, tx: mpsc::Sender<Update>) {
    std::thread::spawn(move || {
        let mut client: Option<Client> = None;
        loop {
            let started = Instant::now();
            let result = (|| {
                if client.is_none() {
                    client = Some(Client::connect(&target).map_err(|f| f.to_string())?);
                }
                let c = client.as_mut().ok_or("not connected")?;
                let mut get = |cmd: &str| c.request(cmd, &[]).map_err(|f| f.to_string());
                Ok::<_, String>(Snapshot {
                    at: Instant::now(),
                    tree: get("tree")?,
                    pools: get("pools")?,
                    sessions: get("sessions")?,
                    routes: get("routes")?,
                })
            })();
            let update = match result {
                Ok(s) => Update::Snapshot(Box::new(s)),
                Err(why) => {
                    client = None;
                    Update::Disconnected(why)
                }
            };
            if tx.send(update).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(500).saturating_sub(started.elapsed()));
        }
    });
}

/// Tail `events` on a second connection, reconnecting as needed.
fn spawn_tail(target: Target, tx: mpsc::Sender<Update>) {
    std::thread::spawn(move || loop {
        if let Ok(mut client) = Client::connect(&target) {
            if client.request("events", &[]).is_ok() {
                while let Ok(v) = client.read() {
                    let e = &v["event"];
                    if e.get("lagged").is_none() && tx.send(Update::Event(e.clone())).is_err() {
                        return;
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn snapshot(requests: u64, at: Instant) -> Update {
        Update::Snapshot(Box::new(Snapshot {
            at,
            tree: json!({"name": "dspex", "kind": "supervisor", "status": "running", "uptime_ms": 1500, "children": []}),
            pools: json!([{"name": "general", "size": 2, "ready": 2, "in_flight": 0, "queued": 0, "requests": requests, "failed": 0}]),
            sessions: json!([{"id": "s-1", "programs": 1, "turns": 3, "requests": 3, "idle_ms": 10}]),
            routes: json!({"routes": {"native": 4}, "fallbacks": 0, "shadowed": 0, "divergences": 0,
                "breakers": {"python:general": "closed"}, "recent": [{"op": "predict", "route": "native", "reason": "auto"}]}),
        }))
    }

    #[test]
    fn rates_latencies_and_every_pane_come_from_the_updates() {
        let mut top = Top::new("sock".into());
        assert_eq!(top.pane_lines(), vec!["waiting for the runtime...".to_string()]);
        let t0 = Instant::now();
        top.apply(snapshot(10, t0));
        top.apply(snapshot(30, t0 + Duration::from_secs(2)));
        assert_eq!(top.rates.get("general").copied(), Some(10.0));
        for us in [800, 1_500, 12_000, 40_000] {
            top.apply(Update::Event(json!({"event": "python.execute", "pool": "general", "elapsed_us": us})));
        }
        assert_eq!(top.percentiles("general"), ("12 ms".to_string(), "40 ms".to_string()));
        assert_eq!(top.percentiles("other"), ("-".to_string(), "-".to_string()));
        assert_eq!((micros(800), micros(1_500)), ("800 µs".to_string(), "1.5 ms".to_string()));
        let panes: Vec<String> = (0..PANES.len())
            .map(|i| {
                top.pane = i;
                top.pane_lines().join("\n")
            })
            .collect();
        assert!(panes[0].contains("dspex [supervisor] running"), "{}", panes[0]);
        assert!(panes[1].contains("10.0") && panes[1].contains("40 ms"), "{}", panes[1]);
        assert!(panes[2].contains("s-1"), "{}", panes[2]);
        assert!(panes[3].contains("python:general") && panes[3].contains("closed"), "{}", panes[3]);
        assert!(panes[4].starts_with("python.execute"), "newest first: {}", panes[4]);
        top.apply(Update::Disconnected("gone".into()));
        assert_eq!(top.disconnected.as_deref(), Some("gone"));
        assert!(routes_text(&json!({})).contains("(none yet)"));
    }

    #[test]
    fn keys_switch_panes_edit_the_filter_and_quit() {
        let mut top = Top::new("sock".into());
        let none = KeyModifiers::NONE;
        assert!(top.key(KeyCode::Tab, none) && top.pane == 1);
        assert!(top.key(KeyCode::BackTab, none) && top.pane == 0);
        assert!(top.key(KeyCode::Left, none) && top.pane == PANES.len() - 1);
        assert!(top.key(KeyCode::Right, none) && top.pane == 0);
        assert!(top.key(KeyCode::Char('4'), none) && top.pane == 3);
        top.key(KeyCode::Char('/'), none);
        for c in "abx".chars() {
            top.key(KeyCode::Char(c), none);
        }
        top.key(KeyCode::Backspace, none);
        top.key(KeyCode::Up, none);
        assert!(top.key(KeyCode::Char('q'), none), "q while editing is text");
        assert_eq!(top.filter, "abq");
        top.key(KeyCode::Esc, none);
        assert!(!top.editing && top.filter.is_empty());
        top.key(KeyCode::Char('/'), none);
        top.key(KeyCode::Char('z'), none);
        top.key(KeyCode::Enter, none);
        assert_eq!((top.editing, top.filter.as_str()), (false, "z"));
        top.key(KeyCode::Esc, none);
        assert!(top.filter.is_empty());
        assert!(!top.key(KeyCode::Char('c'), KeyModifiers::CONTROL));
        assert!(!top.key(KeyCode::Char('q'), none));
    }
}
