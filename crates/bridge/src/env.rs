//! Python environments for worker pools, and the embedded worker sources.
//!
//! A [`PythonEnv`] is a virtual environment built from a requirements spec
//! ([`EnvSpec`]) into a cache directory keyed by the spec's hash, so every
//! pool profile (`general`, `optimizer`, `neural`, or your own) gets exactly
//! its packages, built once. `uv` is used when it is on `PATH` (much faster),
//! `pip` otherwise. An existing interpreter can be used as is
//! ([`PythonEnv::from_interpreter`]).
//!
//! The `dspex_worker` package is compiled into this crate and written to the
//! cache on first use ([`worker_sources`]), so an application that depends on
//! dspex needs nothing from this repository at run time.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use dspex_core::{Error, ErrorKind, Result};

/// The worker package's files: (path relative to the package's parent, content).
pub const WORKER_SOURCES: &[(&str, &str)] = &[
    ("dspex_worker/__init__.py", include_str!("../../../python/dspex_worker/dspex_worker/__init__.py")),
    ("dspex_worker/__main__.py", include_str!("../../../python/dspex_worker/dspex_worker/__main__.py")),
    ("dspex_worker/aio.py", include_str!("../../../python/dspex_worker/dspex_worker/aio.py")),
    ("dspex_worker/builtins.py", include_str!("../../../python/dspex_worker/dspex_worker/builtins.py")),
    ("dspex_worker/dspy_commands.py", include_str!("../../../python/dspex_worker/dspex_worker/dspy_commands.py")),
    ("dspex_worker/protocol.py", include_str!("../../../python/dspex_worker/dspex_worker/protocol.py")),
    ("dspex_worker/registry.py", include_str!("../../../python/dspex_worker/dspex_worker/registry.py")),
    ("dspex_worker/server.py", include_str!("../../../python/dspex_worker/dspex_worker/server.py")),
    ("dspex_worker/sessions.py", include_str!("../../../python/dspex_worker/dspex_worker/sessions.py")),
];

/// The pinned DSPy stack every preset starts from.
pub const DSPY_REQUIREMENT: &str = "dspy==3.4.1";

/// The default cache directory: `$DSPEX_CACHE_DIR`, else `$XDG_CACHE_HOME/dspex`,
/// else `~/.cache/dspex`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("DSPEX_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("dspex");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".cache/dspex"),
        None => std::env::temp_dir().join("dspex-cache"),
    }
}

fn hash_hex(parts: &[&str]) -> String {
    let mut h = DefaultHasher::new();
    for p in parts {
        p.hash(&mut h);
    }
    format!("{:016x}", h.finish())
}

/// Write the embedded worker package under `cache_dir` (once per version) and
/// return the directory to put on `PYTHONPATH`.
pub fn worker_sources(cache_dir: &Path) -> Result<PathBuf> {
    let contents: Vec<&str> = WORKER_SOURCES.iter().flat_map(|(p, c)| [*p, *c]).collect();
    let dir = cache_dir.join("worker").join(hash_hex(&contents));
    let marker = dir.join(".complete");
    if marker.exists() {
        return Ok(dir);
    }
    let io =
        |what: &str, p: &Path, e: std::io::Error| Error::new(ErrorKind::Io, format!("{what} {}: {e}", p.display()));
    // Write to a private directory, then rename into place: concurrent runtimes never see half a package.
    let staging = cache_dir.join("worker").join(format!(
        ".staging-{}-{}",
        std::process::id(),
        hash_hex(&[&format!("{:?}", std::time::Instant::now())])
    ));
    for (rel, content) in WORKER_SOURCES {
        let path = staging.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io("cannot create", parent, e))?;
        }
        std::fs::write(&path, content).map_err(|e| io("cannot write", &path, e))?;
    }
    std::fs::write(staging.join(".complete"), b"").map_err(|e| io("cannot write", &staging, e))?;
    match std::fs::rename(&staging, &dir) {
        Ok(()) => {}
        // Another process won the race; its copy is identical.
        Err(_) if marker.exists() => {
            let _ = std::fs::remove_dir_all(&staging);
        }
        Err(e) => return Err(io("cannot install", &dir, e)),
    }
    Ok(dir)
}

/// The packages of one pool profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvSpec {
    /// Profile name (part of the directory name).
    pub name: String,
    /// pip requirement lines.
    pub requirements: Vec<String>,
    /// The interpreter that creates the venv (`python3` on `PATH` if unset).
    pub base_python: Option<PathBuf>,
}

impl EnvSpec {
    /// A profile with these requirements.
    pub fn new(name: impl Into<String>, requirements: Vec<String>) -> EnvSpec {
        EnvSpec { name: name.into(), requirements, base_python: None }
    }

    /// A preset: `general` (DSPy and the worker's codec), `optimizer` (plus
    /// Optuna, which MIPROv2 uses), `neural` (plus NumPy for embedding work).
    pub fn preset(name: &str) -> Option<EnvSpec> {
        let base = vec![DSPY_REQUIREMENT.to_string(), "msgpack>=1.0".to_string()];
        let extra: &[&str] = match name {
            "general" => &[],
            "optimizer" => &["optuna>=3.0"],
            "neural" => &["numpy>=1.26"],
            _ => return None,
        };
        Some(EnvSpec::new(name, base.into_iter().chain(extra.iter().map(|s| s.to_string())).collect()))
    }

    /// The spec's cache key.
    pub fn hash(&self) -> String {
        let mut parts: Vec<&str> = vec![self.name.as_str()];
        parts.extend(self.requirements.iter().map(String::as_str));
        let base = self.base_python.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        parts.push(&base);
        hash_hex(&parts)
    }
}

/// A Python interpreter ready to run workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonEnv {
    python: PathBuf,
}

/// Progress messages while an environment is built.
pub type Progress<'a> = &'a (dyn Fn(&str) + Send + Sync);

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| p.is_file())
}

async fn run(cmd: &mut tokio::process::Command, what: &str, progress: Progress<'_>) -> Result<()> {
    let program = cmd.as_std().get_program().to_string_lossy().to_string();
    let started = std::time::Instant::now();
    let output = cmd.stdin(Stdio::null()).output();
    tokio::pin!(output);
    // Installs take a minute: say that they are still going.
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + std::time::Duration::from_secs(10),
        std::time::Duration::from_secs(10),
    );
    let out = loop {
        tokio::select! {
            out = &mut output => break out,
            _ = tick.tick() => progress(&format!("{what}: still running ({}s)", started.elapsed().as_secs())),
        }
    }
    .map_err(|e| Error::new(ErrorKind::Config, format!("{what}: cannot run {program}: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    let tail: Vec<&str> = text.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
    Err(Error::new(ErrorKind::Config, format!("{what} failed ({}):\n{}", out.status, tail.join("\n"))))
}

impl PythonEnv {
    /// Use an existing interpreter (a venv's `bin/python`, say) as is.
    pub fn from_interpreter(python: impl Into<PathBuf>) -> PythonEnv {
        PythonEnv { python: python.into() }
    }

    /// The interpreter to start workers with.
    pub fn python(&self) -> &Path {
        &self.python
    }

    /// Build (or reuse) the environment for `spec` under `cache_dir/envs/`.
    pub async fn ensure(spec: &EnvSpec, cache_dir: &Path, progress: Progress<'_>) -> Result<PythonEnv> {
        let dir = cache_dir.join("envs").join(format!("{}-{}", spec.name, &spec.hash()[..12]));
        let python = dir.join("bin/python");
        let marker = dir.join(".dspex-ready");
        if marker.exists() && python.exists() {
            return Ok(PythonEnv { python });
        }
        let base = match &spec.base_python {
            Some(p) if !p.exists() => {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!("the base interpreter {} for environment `{}` does not exist", p.display(), spec.name),
                ))
            }
            Some(p) => p.clone(),
            None => which("python3").ok_or_else(|| {
                Error::new(
                    ErrorKind::Config,
                    "no python3 on PATH: install Python 3.10+ or set the pool's base interpreter",
                )
            })?,
        };
        progress(&format!("creating Python environment `{}` in {}", spec.name, dir.display()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::new(ErrorKind::Io, format!("cannot create {}: {e}", dir.display())))?;
        if !python.exists() {
            run(
                tokio::process::Command::new(&base).arg("-m").arg("venv").arg(&dir),
                "creating the virtual environment",
                progress,
            )
            .await?;
        }
        let reqs = dir.join("requirements.txt");
        std::fs::write(&reqs, spec.requirements.join("\n") + "\n")
            .map_err(|e| Error::new(ErrorKind::Io, format!("cannot write {}: {e}", reqs.display())))?;
        progress(&format!("installing {} ({} packages requested)", spec.name, spec.requirements.len()));
        match which("uv") {
            Some(uv) => {
                run(
                    tokio::process::Command::new(uv)
                        .args(["pip", "install", "--python"])
                        .arg(&python)
                        .arg("-r")
                        .arg(&reqs),
                    "uv pip install",
                    progress,
                )
                .await?
            }
            None => {
                run(
                    tokio::process::Command::new(&python)
                        .args(["-m", "pip", "install", "--disable-pip-version-check", "-q", "-r"])
                        .arg(&reqs),
                    "pip install",
                    progress,
                )
                .await?
            }
        }
        std::fs::write(&marker, spec.hash())
            .map_err(|e| Error::new(ErrorKind::Io, format!("cannot write {}: {e}", marker.display())))?;
        progress(&format!("environment `{}` ready", spec.name));
        Ok(PythonEnv { python })
    }

    /// The Python and DSPy versions of this environment.
    pub async fn versions(&self) -> Result<(String, Option<String>)> {
        let out = tokio::process::Command::new(&self.python)
            .args(["-c", "import sys\ntry:\n import importlib.metadata as m; d = m.version('dspy')\nexcept Exception: d = ''\nprint(sys.version.split()[0], d)"])
            .output()
            .await
            .map_err(|e| Error::new(ErrorKind::Config, format!("cannot run {}: {e}", self.python.display())))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut parts = text.split_whitespace();
        let py = parts.next().unwrap_or_default().to_string();
        if py.is_empty() {
            return Err(Error::new(ErrorKind::Config, format!("{} did not report its version", self.python.display())));
        }
        Ok((py, parts.next().map(str::to_string)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_hashes() {
        let g = EnvSpec::preset("general").unwrap();
        assert!(g.requirements.contains(&DSPY_REQUIREMENT.to_string()));
        let o = EnvSpec::preset("optimizer").unwrap();
        assert_ne!(g.hash(), o.hash());
        assert_eq!(g.hash(), EnvSpec::preset("general").unwrap().hash());
        assert!(EnvSpec::preset("nope").is_none());
    }

    #[test]
    fn worker_sources_are_written_once() {
        let cache = std::env::temp_dir().join(format!("dspex-src-test-{}", std::process::id()));
        let a = worker_sources(&cache).unwrap();
        let b = worker_sources(&cache).unwrap();
        assert_eq!(a, b);
        assert!(a.join("dspex_worker/server.py").exists());
        let _ = std::fs::remove_dir_all(&cache);
    }

    #[test]
    fn every_worker_module_is_embedded() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../python/dspex_worker/dspex_worker");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|name| name.ends_with(".py"))
            .map(|name| format!("dspex_worker/{name}"))
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = WORKER_SOURCES.iter().map(|(p, _)| p.to_string()).collect();
        embedded.sort();
        assert_eq!(embedded, on_disk, "WORKER_SOURCES must list every module of the worker package");
    }
}
