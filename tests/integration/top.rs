//! `dspex console top` through a pseudo-terminal: the screen it draws (read
//! back through a terminal emulator), its refreshes, panes and filter, and
//! that it survives the runtime restarting.

use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::support::{bin, scratch, Serve};

struct Screen {
    parser: Arc<Mutex<vt100::Parser>>,
}

impl Screen {
    fn text(&self) -> String {
        self.parser.lock().screen().contents()
    }

    /// Wait until `ok` holds for the screen's text.
    fn wait(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
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

    fn wait_for(&self, needle: &str) -> String {
        self.wait(needle, |t| t.contains(needle))
    }
}

fn refresh_count(text: &str) -> u64 {
    text.split("refresh #").nth(1).and_then(|r| r.split_whitespace().next()).and_then(|n| n.parse().ok()).unwrap_or(0)
}

#[test]
fn top_draws_the_live_runtime_refreshes_switches_panes_filters_and_survives_a_restart() {
    let dir = scratch("top");
    let socket = dir.join("c.sock");
    let serve = Serve::start(&["--console-socket", socket.to_str().unwrap()]);
    let (mut master, mut slave) = (0, 0);
    let size = libc::winsize { ws_row: 40, ws_col: 150, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: openpty(3) fills the two descriptors we pass; `size` outlives the call.
    let rc = unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), &size) };
    assert_eq!(rc, 0, "openpty");
    let stdio = |fd: i32| {
        // SAFETY: dup(2) of a descriptor we own; the Stdio takes the copy.
        unsafe { Stdio::from(std::os::fd::OwnedFd::from_raw_fd(libc::dup(fd))) }
    };
    let mut child = bin()
        .args(["console", "top", "--socket"])
        .arg(&socket)
        .env("TERM", "xterm-256color")
        .stdin(stdio(slave))
        .stdout(stdio(slave))
        .stderr(stdio(slave))
        .spawn()
        .expect("start dspex console top");
    // SAFETY: the parent's copy of the slave is no longer needed.
    unsafe {
        libc::close(slave);
    }
    // SAFETY: we own the master descriptor.
    let mut term = unsafe { std::fs::File::from_raw_fd(master) };
    let parser = Arc::new(Mutex::new(vt100::Parser::new(40, 150, 0)));
    let feed = parser.clone();
    let mut reader = term.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            feed.lock().process(&buf[..n]);
        }
    });
    let screen = Screen { parser };

    // The tree pane, live.
    let text = screen.wait_for("pool:general [pool]");
    assert!(text.contains("1 Tree") && text.contains("5 Events") && text.contains("Last events"), "{text}");
    assert!(text.contains("worker:general:0") && text.contains("worker:general:1"), "{text}");
    let first = refresh_count(&screen.wait_for("refresh #"));
    screen.wait("a refresh", |t| refresh_count(t) >= first + 2);

    // Pools: the table with rates and latencies.
    term.write_all(b"2").unwrap();
    let text = screen.wait_for("REQ/S");
    assert!(text.contains("P99") && text.contains("general"), "{text}");

    // Events arrive as they happen: a worker killed through the console.
    let kill =
        bin().args(["console", "--socket"]).arg(&socket).args(["--once", "kill worker:general:0"]).output().unwrap();
    assert!(kill.status.success(), "{kill:?}");
    screen
        .wait("the kill's lifecycle event", |t| t.split("Last events").nth(1).is_some_and(|e| e.contains("lifecycle")));

    // A filter on the tree keeps the matching lines only.
    term.write_all(b"1/worker:general:1\r").unwrap();
    let pane = |t: &str| t.split("Last events").next().unwrap_or_default().to_string();
    let text = screen
        .wait("the filtered tree", |t| t.contains("filter: worker:general:1") && !pane(t).contains("worker:general:0"));
    assert!(pane(&text).contains("worker:general:1"), "{text}");
    term.write_all(b"\x1b").unwrap();
    screen.wait("the whole tree again", |t| pane(t).contains("worker:general:0"));

    // The runtime goes away and comes back: top says so, then shows it again.
    assert_eq!(serve.stop(), 0);
    screen.wait_for("disconnected");
    let serve = Serve::start(&["--console-socket", socket.to_str().unwrap()]);
    screen.wait("the runtime again", |t| t.contains("connected  up") && t.contains("worker:general:0"));

    term.write_all(b"q").unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < end, "top did not quit on q");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    assert_eq!(serve.stop(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}
