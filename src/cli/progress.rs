//! Progress of long commands (`optimize`, `evaluate`, the demo's compile
//! step): a bar (indicatif) on a terminal, JSON lines when the output is not
//! one, so a script or CI log gets every event in a form it can parse.
//!
//! The events are the Python worker's: `{"event": "started", "optimizer",
//! "trainset"}`, `{"event": "progress", "phase", "done", "total"}`,
//! `{"event": "finished", ...}`.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use dspex::actors::ProgressFn;
use dspex::Value;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Where progress goes.
#[derive(Clone)]
pub enum Progress {
    /// A bar on the terminal.
    Bar(ProgressBar),
    /// One JSON object per event, on stderr.
    Lines,
}

impl Progress {
    /// A bar on stderr when it is a terminal, else JSON lines on stderr.
    pub fn stderr(label: &str) -> Progress {
        if std::io::stderr().is_terminal() {
            Progress::Bar(bar(label, ProgressDrawTarget::stderr()))
        } else {
            Progress::Lines
        }
    }

    /// A bar on stdout, or nothing when stdout is not a terminal (the
    /// demo: its own lines say what happened).
    pub fn stdout_bar(label: &str) -> Option<ProgressBar> {
        std::io::stdout().is_terminal().then(|| bar(label, ProgressDrawTarget::stdout()))
    }

    /// The callback the runtime calls with each event.
    pub fn callback(&self) -> ProgressFn {
        let this = self.clone();
        Arc::new(move |event: &Value| this.event(event))
    }

    fn event(&self, event: &Value) {
        match self {
            Progress::Bar(bar) => show(bar, event),
            Progress::Lines => {
                let mut err = std::io::stderr().lock();
                let _ = writeln!(err, "{event}");
            }
        }
    }

    /// Leave the bar as it is (finished) on the screen.
    pub fn finish(&self) {
        if let Progress::Bar(bar) = self {
            bar.finish();
        }
    }
}

fn bar(label: &str, target: ProgressDrawTarget) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, target);
    let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("#>-");
    bar.set_style(style);
    bar.set_prefix(label.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Apply one worker event to `bar`.
pub fn show(bar: &ProgressBar, event: &Value) {
    let n = |k: &str| event.get(k).and_then(Value::as_u64);
    match event.get("event").and_then(Value::as_str).unwrap_or("") {
        "started" => {
            if let Some(total) = n("trainset").or(n("total")) {
                bar.set_length(total);
            }
            if let Some(optimizer) = event.get("optimizer").and_then(Value::as_str) {
                bar.set_message(optimizer.to_string());
            }
        }
        "progress" => {
            if let Some(total) = n("total") {
                bar.set_length(total);
            }
            if let Some(done) = n("done") {
                bar.set_position(done);
            }
            if let Some(phase) = event.get("phase").and_then(Value::as_str) {
                bar.set_message(phase.to_string());
            }
        }
        "finished" => {
            if let Some(total) = bar.length() {
                bar.set_position(total);
            }
        }
        _ => {}
    }
}
