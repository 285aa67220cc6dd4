//! The run registry: which workers each runtime started, so that a later
//! start can clean up what a killed runtime left behind.
//!
//! Each runtime writes `<dir>/<run-id>.json` (written atomically) holding its
//! own pid and start time and, for every live worker, the pid, process group
//! and start time. [`RunRegistry::sweep`] removes the files of runtimes that
//! are no longer running and kills their workers' process groups — after
//! checking in `/proc` that each pid still belongs to the same process (same
//! start time), so a reused pid is never touched, and never for a runtime
//! that is still alive.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dspex_core::{Error, ErrorKind, Result};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::process::{process_alive, process_start_time, signal_group};

/// One worker recorded in a run file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRecord {
    /// Process id.
    pub pid: u32,
    /// Process group.
    pub pgid: i32,
    /// Start time (`/proc/PID/stat` field 22).
    pub start_time: u64,
}

/// A run file's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The run's id.
    pub run_id: String,
    /// The runtime's pid.
    pub pid: u32,
    /// The runtime's start time.
    pub start_time: u64,
    /// Live workers, by pid.
    pub workers: BTreeMap<u32, WorkerRecord>,
}

/// What a sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Run files of dead runtimes removed.
    pub dead_runs: usize,
    /// Leftover workers killed.
    pub killed: Vec<u32>,
    /// Run files of live runtimes left alone.
    pub live_runs: usize,
}

/// This runtime's entry in the run registry.
#[derive(Debug)]
pub struct RunRegistry {
    path: PathBuf,
    record: Mutex<RunRecord>,
}

/// The default registry directory: `$DSPEX_RUN_DIR`, else
/// `$XDG_RUNTIME_DIR/dspex/runs`, else `/tmp/dspex-<uid>/runs`.
pub fn default_dir() -> PathBuf {
    match std::env::var_os("DSPEX_RUN_DIR") {
        Some(d) => PathBuf::from(d),
        None => crate::process::runtime_dir().join("runs"),
    }
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::new(ErrorKind::Io, format!("{what} {}: {e}", path.display()))
}

fn write_atomic(path: &Path, record: &RunRecord) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(record).map_err(|e| Error::internal(e.to_string()))?;
    std::fs::write(&tmp, bytes).map_err(|e| io_err("cannot write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_err("cannot rename", &tmp, e))
}

impl RunRegistry {
    /// Register this runtime in `dir` (created if missing) under a fresh run id.
    pub fn open(dir: &Path) -> Result<RunRegistry> {
        std::fs::create_dir_all(dir).map_err(|e| io_err("cannot create", dir, e))?;
        let pid = std::process::id();
        let start_time = process_start_time(pid).unwrap_or(0);
        let run_id = format!("{pid}-{start_time}-{:08x}", fastrand_u32());
        let record = RunRecord { run_id: run_id.clone(), pid, start_time, workers: BTreeMap::new() };
        let path = dir.join(format!("{run_id}.json"));
        write_atomic(&path, &record)?;
        Ok(RunRegistry { path, record: Mutex::new(record) })
    }

    /// This run's id.
    pub fn run_id(&self) -> String {
        self.record.lock().run_id.clone()
    }

    /// The run file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Record a started worker.
    pub fn add_worker(&self, pid: u32, pgid: i32) -> Result<()> {
        let start_time = process_start_time(pid).unwrap_or(0);
        let mut rec = self.record.lock();
        rec.workers.insert(pid, WorkerRecord { pid, pgid, start_time });
        write_atomic(&self.path, &rec)
    }

    /// Forget a worker that has exited.
    pub fn remove_worker(&self, pid: u32) -> Result<()> {
        let mut rec = self.record.lock();
        if rec.workers.remove(&pid).is_some() {
            write_atomic(&self.path, &rec)?;
        }
        Ok(())
    }

    /// Kill the workers of dead runs found in `dir` and remove their files.
    pub fn sweep(dir: &Path) -> Result<SweepReport> {
        let mut report = SweepReport::default();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(report),
            Err(e) => return Err(io_err("cannot read", dir, e)),
        };
        let me = std::process::id();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&path) else { continue };
            let Ok(record) = serde_json::from_str::<RunRecord>(&text) else {
                tracing::warn!(file = %path.display(), "unreadable run file left in place");
                continue;
            };
            let owner_alive = record.pid == me
                || (process_alive(record.pid) && process_start_time(record.pid) == Some(record.start_time));
            if owner_alive {
                report.live_runs += 1;
                continue;
            }
            for w in record.workers.values() {
                // Same pid *and* same start time: the very process we started.
                if process_alive(w.pid) && process_start_time(w.pid) == Some(w.start_time) {
                    signal_group(w.pgid, libc::SIGKILL);
                    crate::process::kill_process(w.pid);
                    report.killed.push(w.pid);
                }
            }
            let _ = std::fs::remove_file(&path);
            report.dead_runs += 1;
        }
        if !report.killed.is_empty() {
            tracing::warn!(killed = ?report.killed, runs = report.dead_runs, "killed workers left by dead runtimes");
        }
        Ok(report)
    }
}

impl Drop for RunRegistry {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn fastrand_u32() -> u32 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    t ^ std::process::id().rotate_left(16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_add_remove_and_drop() {
        let dir = std::env::temp_dir().join(format!("dspex-runs-test-{}", std::process::id()));
        let reg = RunRegistry::open(&dir).unwrap();
        reg.add_worker(std::process::id(), 0).unwrap();
        let text = std::fs::read_to_string(reg.path()).unwrap();
        let rec: RunRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(rec.workers.len(), 1);
        assert_eq!(rec.run_id, reg.run_id());
        // Our own run is alive: a sweep leaves it alone.
        let report = RunRegistry::sweep(&dir).unwrap();
        assert_eq!(report.live_runs, 1);
        assert!(report.killed.is_empty());
        reg.remove_worker(std::process::id()).unwrap();
        let path = reg.path().to_path_buf();
        drop(reg);
        assert!(!path.exists());
        assert_eq!(RunRegistry::sweep(&dir.join("missing")).unwrap(), SweepReport::default());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
