//! Spawning and ending worker processes (Linux).
//!
//! Every worker runs in its own process group with a parent-death signal, so
//! it dies with the runtime. Linux delivers the parent-death signal when the
//! *thread* that forked the child exits, so all spawns happen on one
//! long-lived thread ([`spawn`] hands the work to it). Stopping is graceful
//! first (the caller sends `shutdown`), then `SIGTERM` to the whole group,
//! then `SIGKILL`, and the child is always reaped.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::thread;

use dspex_core::{Error, ErrorKind, Result};

/// A unidirectional pipe: (read end, write end), both close-on-exec.
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`; we take ownership of both.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A connected pair of unix `SOCK_SEQPACKET` sockets (message boundaries
/// kept, descriptors can travel), both close-on-exec.
pub(crate) fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: socketpair writes two descriptors into `fds`; we take ownership of both.
    let rc = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Send one message on a `SOCK_SEQPACKET` socket with `fds` attached
/// (`SCM_RIGHTS`: the receiver gets its own copies).
pub(crate) fn send_with_fds(sock: &OwnedFd, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let fd_bytes = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    // u64 words keep the control buffer aligned for `cmsghdr`.
    let mut control = vec![0u64; space.div_ceil(8).max(1)];
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    // SAFETY: a zeroed msghdr is valid; every pointer set below outlives the
    // sendmsg call (iov, control), and the cmsg header and data are written
    // inside `control`, which CMSG_SPACE sized for `fds`.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            if cmsg.is_null() {
                return Err(io::Error::other("no room for the control message"));
            }
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(cmsg), fd_bytes);
        }
        if libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Receive one message from a `SOCK_SEQPACKET` socket (blocking); 0 bytes
/// means the peer closed it.
pub(crate) fn recv_message(sock: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: recv writes at most `buf.len()` bytes into `buf`.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Take the descriptors attached to the next message on a `SOCK_SEQPACKET`
/// socket, without blocking: `Ok(None)` when the peer closed the socket,
/// `WouldBlock` when no message is waiting. A message may carry none.
/// The descriptors arrive close-on-exec.
pub(crate) fn recv_fds(sock: RawFd) -> io::Result<Option<Vec<OwnedFd>>> {
    const MAX_FDS: usize = 8;
    let mut data = [0u8; 64];
    let mut iov = libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: data.len() };
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<RawFd>()) as u32) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut fds = Vec::new();
    // SAFETY: a zeroed msghdr is valid; `iov` and `control` outlive the
    // recvmsg call and their sizes are the ones given. The kernel wrote
    // every cmsg the CMSG_* walk visits inside `control`; each SCM_RIGHTS
    // payload is whole descriptors, now ours (read unaligned: the payload
    // has no alignment guarantee for `RawFd`).
    let n = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let n = libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let first = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(first.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        n
    };
    Ok((n > 0 || !fds.is_empty()).then_some(fds))
}

/// Grow a pipe's buffer (large payloads need fewer wake-ups). Best effort.
pub(crate) fn set_pipe_size(fd: &OwnedFd, bytes: usize) {
    // SAFETY: F_SETPIPE_SZ on a pipe we own; failure is harmless.
    unsafe {
        libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, bytes as libc::c_int);
    }
}

/// Put a descriptor in non-blocking mode (for tokio's pipe types).
pub(crate) fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Limits and placement applied in the child between fork and exec.
#[derive(Debug, Clone, Default)]
pub struct ChildLimits {
    /// `RLIMIT_AS` in bytes.
    pub address_space: Option<u64>,
    /// CPU priority (`nice`), -20..19.
    pub nice: Option<i32>,
    /// CPUs the worker may run on.
    pub cpu_affinity: Option<Vec<usize>>,
}

/// What to start.
#[derive(Debug)]
pub(crate) struct SpawnSpec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    /// Descriptors the child inherits (their numbers are passed in `env`).
    pub inherit: Vec<RawFd>,
    pub limits: ChildLimits,
}

/// A started child: its handle, pid and process group.
#[derive(Debug)]
pub(crate) struct Spawned {
    pub child: Child,
    pub pid: u32,
    pub pgid: i32,
}

type Job = (SpawnSpec, mpsc::Sender<io::Result<Child>>);

fn spawner() -> &'static std::sync::Mutex<mpsc::Sender<Job>> {
    static SPAWNER: OnceLock<std::sync::Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        // This thread lives as long as the process: children's parent-death
        // signal is tied to it, so it must not be a pool thread that retires.
        let spawned = thread::Builder::new().name("dspex-spawner".into()).spawn(move || {
            while let Ok((spec, reply)) = rx.recv() {
                let _ = reply.send(spawn_here(spec));
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the spawner thread; workers will be spawned inline");
        }
        std::sync::Mutex::new(tx)
    })
}

fn spawn_here(spec: SpawnSpec) -> io::Result<Child> {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: getpid is async-signal-safe and has no preconditions.
    let parent = unsafe { libc::getpid() };
    let inherit = spec.inherit.clone();
    let limits = spec.limits.clone();
    let cpu_set = limits.cpu_affinity.as_ref().map(|cpus| {
        // SAFETY: a zeroed cpu_set_t is valid; CPU_SET only writes in bounds.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        for &c in cpus {
            if c < libc::CPU_SETSIZE as usize {
                unsafe { libc::CPU_SET(c, &mut set) };
            }
        }
        set
    });
    // SAFETY: the closure runs in the child between fork and exec and only
    // calls async-signal-safe functions (setpgid, prctl, getppid, fcntl,
    // setrlimit, setpriority, sched_setaffinity, _exit); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setpgid(0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            // The runtime may have died between fork and prctl.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            for &fd in &inherit {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some(bytes) = limits.address_space {
                let lim = libc::rlimit { rlim_cur: bytes as libc::rlim_t, rlim_max: bytes as libc::rlim_t };
                if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some(n) = limits.nice {
                libc::setpriority(libc::PRIO_PROCESS, 0, n);
            }
            if let Some(set) = cpu_set.as_ref() {
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set);
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Start a child on the spawner thread.
pub(crate) fn spawn(spec: SpawnSpec) -> Result<Spawned> {
    let program = spec.program.display().to_string();
    let (tx, rx) = mpsc::channel();
    let sender = spawner().lock().map_err(|_| Error::internal("the spawner's lock is poisoned"))?.clone();
    sender.send((spec, tx)).map_err(|_| Error::internal("the spawner thread is gone"))?;
    let child = rx.recv().map_err(|_| Error::internal("the spawner thread is gone"))?.map_err(|e| {
        let kind = if e.kind() == io::ErrorKind::NotFound { ErrorKind::Config } else { ErrorKind::Io };
        Error::new(kind, format!("cannot start {program}: {e}"))
    })?;
    let pid = child.id();
    Ok(Spawned { child, pid, pgid: pid as i32 })
}

/// Send `signal` to every process in group `pgid`.
pub fn signal_group(pgid: i32, signal: i32) -> bool {
    if pgid <= 1 {
        return false;
    }
    // SAFETY: kill with a negative pid signals a process group; no memory involved.
    unsafe { libc::kill(-pgid, signal) == 0 }
}

/// `SIGKILL` one process (not its group).
pub(crate) fn kill_process(pid: u32) -> bool {
    if pid <= 1 {
        return false;
    }
    // SAFETY: kill(2) on a pid; no memory involved.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) == 0 }
}

/// Whether a process exists (and is not a zombie).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

/// A process's start time (clock ticks since boot, field 22 of `/proc/PID/stat`):
/// with the pid, it identifies the process even after pid reuse.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A process's resident memory in bytes (from `/proc/PID/statm`), if it exists.
pub fn resident_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * page.max(4096) as u64)
}

/// The directory for this user's runtime files (console socket, run
/// registry): `$XDG_RUNTIME_DIR/dspex` when that directory exists, else
/// `/tmp/dspex-<uid>`.
pub fn runtime_dir() -> std::path::PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(std::path::PathBuf::from)
        .filter(|d| d.is_dir())
        .map(|d| d.join("dspex"))
        // SAFETY: getuid(2) has no preconditions and cannot fail.
        .unwrap_or_else(|| std::env::temp_dir().join(format!("dspex-{}", unsafe { libc::getuid() })))
}

/// Pids of the processes in group `pgid` (from `/proc`).
pub fn group_members(pgid: i32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(2)?.parse::<i32>().ok()))
                == Some(pgid)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_helpers_see_this_process() {
        let me = std::process::id();
        assert!(process_alive(me));
        assert!(process_start_time(me).is_some());
        assert!(!process_alive(u32::MAX - 1));
        assert!(!signal_group(1, 0), "never signal init's group");
        assert!(!signal_group(0, 0));
        assert!(resident_bytes(me).is_some_and(|b| b > 1024 * 1024));
        assert_eq!(resident_bytes(u32::MAX - 1), None);
        assert!(runtime_dir().to_string_lossy().contains("dspex"));
    }

    #[test]
    fn spawned_children_get_their_own_group_and_limits() {
        let spec = SpawnSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), "ulimit -v; exit 3".into()],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            inherit: Vec::new(),
            limits: ChildLimits { address_space: Some(512 * 1024 * 1024), nice: Some(5), cpu_affinity: Some(vec![0]) },
        };
        let spawned = spawn(spec).unwrap();
        assert_eq!(spawned.pgid as u32, spawned.pid);
        let out = spawned.child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "524288");
        let err = spawn(SpawnSpec {
            program: "/nonexistent/python".into(),
            args: Vec::new(),
            env: Vec::new(),
            inherit: Vec::new(),
            limits: ChildLimits::default(),
        })
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
    }
}
