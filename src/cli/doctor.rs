//! `dspex doctor`: what this machine has, what is missing, and how to fix it.

use std::path::{Path, PathBuf};

use dspex::bridge::env::DSPY_REQUIREMENT;
use dspex::bridge::{default_cache_dir, EnvSpec, PythonEnv};
use dspex::Value;
use serde_json::json;

struct Check {
    name: &'static str,
    status: &'static str,
    detail: String,
    fix: Option<String>,
}

fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(cmd)).find(|p| p.is_file())
}

fn rlimit(resource: libc::__rlimit_resource_t) -> Option<u64> {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit(2) writes into the struct we own.
    (unsafe { libc::getrlimit(resource, &mut r) } == 0).then_some(r.rlim_cur)
}

/// Run the checks; the report and whether anything is missing.
pub async fn doctor() -> (Value, bool) {
    let mut checks = Vec::new();
    let wanted = DSPY_REQUIREMENT.trim_start_matches("dspy==");
    let cache = default_cache_dir();
    let provisioned = EnvSpec::preset("general")
        .map(|s| cache.join("envs").join(format!("{}-{}", s.name, &s.hash()[..12])).join("bin/python"));
    // The interpreter the runtime would use, in its order.
    let chosen: Option<(PathBuf, &str)> = std::env::var_os("DSPEX_PYTHON")
        .map(|p| (PathBuf::from(p), "DSPEX_PYTHON"))
        .or_else(|| provisioned.clone().filter(|p| p.exists()).map(|p| (p, "provisioned environment `general`")));
    match &chosen {
        Some((python, from)) => match PythonEnv::from_interpreter(python).versions().await {
            Ok((py, dspy)) => {
                checks.push(Check {
                    name: "python",
                    status: "ok",
                    detail: format!("{} {py} (from {from})", python.display()),
                    fix: None,
                });
                match PythonEnv::from_interpreter(python).extras().await {
                    Ok(extras) => {
                        for (extra, needed_by, found) in extras {
                            checks.push(match found {
                                Some(what) => Check {
                                    name: extra,
                                    status: "ok",
                                    detail: format!("{extra} {what} (for {needed_by})"),
                                    fix: None,
                                },
                                None => Check {
                                    name: extra,
                                    status: "warn",
                                    detail: format!("no {extra}: {needed_by} cannot run"),
                                    fix: Some(match extra {
                                        "pyarrow" => format!("{} -m pip install pyarrow", python.display()),
                                        _ => format!("{} -m pip install 'dspy[{extra}]=={wanted}'", python.display()),
                                    }),
                                },
                            });
                        }
                    }
                    Err(e) => checks.push(Check {
                        name: "extras",
                        status: "warn",
                        detail: e.message().to_string(),
                        fix: None,
                    }),
                }
                match dspy {
                    Some(v) if v == wanted => {
                        checks.push(Check { name: "dspy", status: "ok", detail: format!("dspy {v}"), fix: None })
                    }
                    Some(v) => checks.push(Check {
                        name: "dspy",
                        status: "warn",
                        detail: format!("dspy {v}, the runtime is tested with {wanted}"),
                        fix: Some(format!("{} -m pip install '{DSPY_REQUIREMENT}'", python.display())),
                    }),
                    None => checks.push(Check {
                        name: "dspy",
                        status: "missing",
                        detail: format!("{} has no dspy", python.display()),
                        fix: Some(format!("{} -m pip install '{DSPY_REQUIREMENT}'", python.display())),
                    }),
                }
            }
            Err(e) => checks.push(Check {
                name: "python",
                status: "missing",
                detail: e.message().to_string(),
                fix: Some("point DSPEX_PYTHON at a Python 3.10+ with dspy installed".into()),
            }),
        },
        None => {
            let base = which("python3");
            checks.push(Check {
                name: "python",
                status: if base.is_some() { "ok" } else { "missing" },
                detail: match &base {
                    Some(p) => format!(
                        "no environment yet; the first start provisions `general` (dspy {wanted}) into {} with {}",
                        cache.display(),
                        p.display()
                    ),
                    None => "no python3 on PATH and no DSPEX_PYTHON".into(),
                },
                fix: base.is_none().then(|| "install Python 3.10+ (python3 with venv and pip)".into()),
            });
        }
    }
    checks.push(Check {
        name: "installer",
        status: "ok",
        detail: match which("uv") {
            Some(uv) => format!("uv at {} (fast environment installs)", uv.display()),
            None => "pip (install uv for faster environment installs)".into(),
        },
        fix: None,
    });
    checks.push(
        match dspex::native::lm::config_from_env().and_then(|lm| lm.map(|l| l.check().map(|()| l)).transpose()) {
            Ok(Some(lm)) => Check {
                name: "lm",
                status: "ok",
                detail: format!(
                    "{} at {}{}",
                    lm.model,
                    lm.base_url.as_deref().unwrap_or_default(),
                    super::common::describe(&lm)
                ),
                fix: None,
            },
            Err(e) => Check {
                name: "lm",
                status: "missing",
                detail: e.message().to_string(),
                fix: Some("fix or unset the DSPEX_LM_* variable named above".into()),
            },
            Ok(None) => Check {
                name: "lm",
                status: "warn",
                detail: "no DSPEX_LM_BASE_URL: demo, serve and run use the built-in offline LM".into(),
                fix: Some("export DSPEX_LM_BASE_URL=… DSPEX_LM_MODEL=… DSPEX_LM_API_KEY=…".into()),
            },
        },
    );
    let files = rlimit(libc::RLIMIT_NOFILE).unwrap_or(0);
    checks.push(Check {
        name: "open files",
        status: if files >= 1024 { "ok" } else { "warn" },
        detail: format!("limit {files} (each worker holds a few descriptors)"),
        fix: (files < 1024).then(|| "ulimit -n 4096".into()),
    });
    let mem_mb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().find(|l| l.starts_with("MemAvailable:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|k| k.parse::<u64>().ok()))
        .map(|kb| kb / 1024)
        .unwrap_or(0);
    checks.push(Check {
        name: "memory",
        status: if mem_mb >= 1024 { "ok" } else { "warn" },
        detail: format!("{mem_mb} MiB available (a DSPy worker takes about 150-250 MiB)"),
        fix: (mem_mb < 1024).then(|| "use smaller pools (size) or more memory".into()),
    });
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    checks.push(Check { name: "cpus", status: "ok", detail: format!("{cores} available"), fix: None });
    let socket = dspex::actors::console::default_socket();
    let dir = socket.parent().map(Path::to_path_buf).unwrap_or_default();
    let writable = std::fs::create_dir_all(&dir).is_ok()
        && std::fs::metadata(&dir).map(|m| !m.permissions().readonly()).unwrap_or(false);
    checks.push(Check {
        name: "console",
        status: if writable { "ok" } else { "warn" },
        detail: format!("default socket {}", socket.display()),
        fix: (!writable).then(|| "pass --console-socket PATH to `dspex serve`".into()),
    });
    let missing = checks.iter().any(|c| c.status == "missing");
    let report = json!({
        "ok": !missing,
        "checks": checks.iter().map(|c| json!({"check": c.name, "status": c.status, "detail": c.detail, "fix": c.fix})).collect::<Vec<_>>(),
    });
    (report, missing)
}

/// The report as text.
pub fn render(report: &Value) -> String {
    let mut out = String::new();
    for c in report["checks"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<8} {:<11} {}\n",
            c["status"].as_str().unwrap_or(""),
            c["check"].as_str().unwrap_or(""),
            c["detail"].as_str().unwrap_or("")
        ));
        if let Some(fix) = c["fix"].as_str() {
            out.push_str(&format!("{:<20} fix: {fix}\n", ""));
        }
    }
    out
}
