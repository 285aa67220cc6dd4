//! `dspex console top` through a pseudo-terminal: the screen it draws (read
//! back through a terminal emulator), its refreshes, panes and filter, and
//! that it survives the runtime restarting.

use std::io::Write;

use crate::support::{bin, scratch, Pty, Serve};

fn refresh_count(text: &str) -> u64 {
    text.split("refresh #").nth(1).and_then(|r| r.split_whitespace().next()).and_then(|n| n.parse().ok()).unwrap_or(0)
}

#[test]
fn top_draws_the_live_runtime_refreshes_switches_panes_filters_and_survives_a_restart() {
    let dir = scratch("top");
    let socket = dir.join("c.sock");
    let serve = Serve::start(&["--console-socket", socket.to_str().unwrap()]);
    let mut cmd = bin();
    cmd.args(["console", "top", "--socket"]).arg(&socket);
    let mut screen = Pty::spawn(cmd, 40, 150);

    // The tree pane, live.
    let text = screen.wait_for("pool:general [pool]");
    assert!(text.contains("1 Tree") && text.contains("5 Events") && text.contains("Last events"), "{text}");
    assert!(text.contains("worker:general:0") && text.contains("worker:general:1"), "{text}");
    let first = refresh_count(&screen.wait_for("refresh #"));
    screen.wait("a refresh", |t| refresh_count(t) >= first + 2);

    // Pools: the table with rates and latencies.
    screen.term.write_all(b"2").unwrap();
    let text = screen.wait_for("REQ/S");
    assert!(text.contains("P99") && text.contains("general"), "{text}");

    // Events arrive as they happen: a worker killed through the console.
    let kill =
        bin().args(["console", "--socket"]).arg(&socket).args(["--once", "kill worker:general:0"]).output().unwrap();
    assert!(kill.status.success(), "{kill:?}");
    screen
        .wait("the kill's lifecycle event", |t| t.split("Last events").nth(1).is_some_and(|e| e.contains("lifecycle")));

    // A filter on the tree keeps the matching lines only.
    screen.term.write_all(b"1/worker:general:1\r").unwrap();
    let pane = |t: &str| t.split("Last events").next().unwrap_or_default().to_string();
    let text = screen
        .wait("the filtered tree", |t| t.contains("filter: worker:general:1") && !pane(t).contains("worker:general:0"));
    assert!(pane(&text).contains("worker:general:1"), "{text}");
    screen.term.write_all(b"\x1b").unwrap();
    screen.wait("the whole tree again", |t| pane(t).contains("worker:general:0"));

    // The runtime goes away and comes back: top says so, then shows it again.
    assert_eq!(serve.stop(), 0);
    screen.wait_for("disconnected");
    let serve = Serve::start(&["--console-socket", socket.to_str().unwrap()]);
    screen.wait("the runtime again", |t| t.contains("connected  up") && t.contains("worker:general:0"));

    screen.term.write_all(b"q").unwrap();
    let status = screen.exit();
    assert!(status.success(), "{status:?}");
    assert_eq!(serve.stop(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}
