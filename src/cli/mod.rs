//! Command-line interface: argument parsing and dispatch.

mod cluster;
mod common;
mod console;
mod demo;
mod doctor;
mod engine;
mod optimize;
mod progress;
mod serve;
#[cfg(feature = "top")]
mod top;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};

/// dspex: run DSPy programs from Rust.
#[derive(Debug, Parser)]
#[command(name = "dspex", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The adapter (prompt format) for `format` and `parse`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AdapterArg {
    /// DSPy's ChatAdapter (`[[ ## field ## ]]` sections).
    Chat,
    /// DSPy's JSONAdapter.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Parse a DSPy signature and print its fields as DSPy sees them.
    Signature {
        /// The signature, e.g. "question, context: list[str] -> answer".
        signature: String,
        /// Explicit instructions (otherwise DSPy's default text).
        #[arg(long)]
        instructions: Option<String>,
    },
    /// Print the messages DSPy sends. Reads {"signature", "demos", "inputs", "module"?} on stdin.
    Format {
        /// Prompt format.
        #[arg(long, value_enum, default_value = "chat")]
        adapter: AdapterArg,
    },
    /// Parse an LM completion into fields. Reads {"signature", "completion", "module"?} on stdin.
    Parse {
        /// Prompt format.
        #[arg(long, value_enum, default_value = "chat")]
        adapter: AdapterArg,
    },
    /// The runtime end to end, offline: routes, a session, a pipeline, an optimizer, a crash.
    Demo {
        /// LM settings (the demo defaults to 256 tokens at temperature 0).
        #[command(flatten)]
        lm: common::LmFlags,
    },
    /// Run a pipeline file (TOML or JSON) and print its result as JSON.
    Run {
        /// The pipeline file.
        pipeline: PathBuf,
        /// An input, KEY=VALUE (VALUE is parsed as JSON when it is JSON); repeatable.
        #[arg(long = "input", short = 'i')]
        inputs: Vec<String>,
        /// A JSON file with the inputs.
        #[arg(long)]
        inputs_file: Option<PathBuf>,
        /// Runtime settings (TOML).
        #[arg(long)]
        config: Option<PathBuf>,
        /// LM settings.
        #[command(flatten)]
        lm: common::LmFlags,
    },
    /// Compile a program with a DSPy optimizer on examples from a file; a
    /// progress bar on a terminal, JSON lines on stderr otherwise; the
    /// summary as JSON on stdout.
    Optimize {
        /// The program: a `[programs.NAME]` entry on its own, TOML or JSON
        /// (`module`, `signature`, optionally `state_file`).
        program: PathBuf,
        /// Training examples: JSON Lines or a JSON array of objects.
        #[arg(long)]
        trainset: PathBuf,
        /// Validation examples, for optimizers that take them.
        #[arg(long)]
        valset: Option<PathBuf>,
        /// The DSPy optimizer: BootstrapFewShot, LabeledFewShot, MIPROv2, COPRO, GEPA, ...
        #[arg(long, default_value = "BootstrapFewShot")]
        optimizer: String,
        /// The metric: exact_match, passage_match, or module:function.
        #[arg(long, default_value = "exact_match")]
        metric: String,
        /// An optimizer argument, KEY=VALUE (VALUE as JSON when it is JSON); repeatable.
        #[arg(long = "param", short = 'p')]
        params: Vec<String>,
        /// A `compile` argument, KEY=VALUE; repeatable.
        #[arg(long = "compile-param")]
        compile_params: Vec<String>,
        /// The examples' input keys (comma-separated; the signature's inputs by default).
        #[arg(long = "input-keys")]
        input_keys: Vec<String>,
        /// Write the optimized program (DSPy's `program.save` JSON) here.
        #[arg(long, short = 'o')]
        out: Option<PathBuf>,
        /// Runtime settings (TOML).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Time allowed, in seconds (1 hour by default).
        #[arg(long)]
        timeout: Option<f64>,
        /// LM settings.
        #[command(flatten)]
        lm: common::LmFlags,
    },
    /// Score a program on examples from a file with `dspy.Evaluate`; progress
    /// as for `optimize`; the score as JSON on stdout.
    Evaluate {
        /// The program file (as for `optimize`).
        program: PathBuf,
        /// The examples: JSON Lines or a JSON array of objects.
        #[arg(long)]
        devset: PathBuf,
        /// The metric: exact_match, passage_match, or module:function.
        #[arg(long, default_value = "exact_match")]
        metric: String,
        /// A saved program (`optimize --out`) to apply over the file's own state.
        #[arg(long)]
        state: Option<PathBuf>,
        /// Include every example's prediction and score.
        #[arg(long)]
        results: bool,
        /// Runtime settings (TOML).
        #[arg(long)]
        config: Option<PathBuf>,
        /// LM settings.
        #[command(flatten)]
        lm: common::LmFlags,
    },
    /// Check Python, DSPy, limits and settings; say what is missing and how to fix it.
    Doctor {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the runtime until SIGTERM/SIGINT, with the debug console endpoint.
    Serve {
        /// Runtime settings (TOML); a `general` pool of 2 workers otherwise.
        config: Option<PathBuf>,
        /// The console's unix socket (default $XDG_RUNTIME_DIR/dspex/console.sock or /tmp/dspex-UID/console.sock).
        #[arg(long)]
        console_socket: Option<PathBuf>,
        /// Serve the console on TCP (loopback only) instead; needs --token.
        #[arg(long)]
        console_tcp: Option<String>,
        /// The token for a TCP console.
        #[arg(long)]
        token: Option<String>,
        /// Serve Prometheus metrics on ADDR (`GET /metrics`; Cargo feature `prometheus`).
        #[arg(long)]
        metrics: Option<String>,
        /// Serve the config's programs, pipelines and sessions over HTTP on
        /// ADDR (over `[http] addr`; Cargo feature `http`).
        #[arg(long, value_name = "ADDR")]
        http: Option<String>,
        /// Export traces over OTLP/HTTP to URL (`http://127.0.0.1:4318`; over
        /// `OTEL_EXPORTER_OTLP_ENDPOINT`; Cargo feature `otel`).
        #[arg(long, value_name = "URL")]
        otlp: Option<String>,
        /// LM settings.
        #[command(flatten)]
        lm: common::LmFlags,
        /// Cluster settings (Cargo feature `cluster`).
        #[command(flatten)]
        cluster: cluster::ClusterFlags,
    },
    /// Run one worker command on a pool — here, or on a node of the cluster —
    /// and print its result and `Meta` as JSON.
    Call {
        /// The pool.
        pool: String,
        /// The command (e.g. `noop`, `echo`, `dspy.run`).
        command: String,
        /// Its arguments, a JSON object.
        args: Option<String>,
        /// Runtime settings (TOML).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Run it on this cluster node.
        #[arg(long)]
        on_node: Option<String>,
        /// Safe to run twice: retried on another worker or node if its own is lost.
        #[arg(long)]
        idempotent: bool,
        /// Deadline in seconds.
        #[arg(long)]
        timeout: Option<f64>,
        /// LM settings.
        #[command(flatten)]
        lm: common::LmFlags,
        /// Cluster settings (Cargo feature `cluster`).
        #[command(flatten)]
        cluster: cluster::ClusterFlags,
    },
    /// The debug console: a REPL onto a running runtime, or one command with --once.
    Console {
        /// The console's unix socket.
        #[arg(long, conflicts_with = "tcp")]
        socket: Option<PathBuf>,
        /// A TCP console's address.
        #[arg(long)]
        tcp: Option<String>,
        /// The token (read from SOCKET.token for unix sockets).
        #[arg(long)]
        token: Option<String>,
        /// Run one command and exit (e.g. "tree", "kill worker:general:0").
        #[arg(long)]
        once: Option<String>,
        /// With --once: print JSON.
        #[arg(long)]
        json: bool,
        /// With --once "events …": stop after this many events.
        #[arg(long, requires = "once")]
        count: Option<u64>,
        /// `top`: a live full-screen view (tree, pools, sessions, routes,
        /// events; Cargo feature `top`).
        #[arg(value_name = "VIEW", conflicts_with = "once")]
        view: Option<ConsoleView>,
    },
}

/// A full-screen view of `dspex console`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ConsoleView {
    /// Live tree, pools, sessions, routes and events.
    Top,
}

fn tokio_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()
}

/// Run an async command on a fresh tokio runtime.
fn block_on<F: std::future::Future<Output = dspex::Result<serde_json::Value>>>(
    f: F,
) -> dspex::Result<serde_json::Value> {
    match tokio_runtime() {
        Ok(rt) => rt.block_on(f),
        Err(e) => Err(dspex::Error::new(dspex::ErrorKind::Io, format!("cannot start tokio: {e}"))),
    }
}

/// Print an error as `{"error": {...}}` (what the console and the HTTP API
/// answer too) and return exit code 2.
pub fn fail(err: &dspex::Error) -> i32 {
    println!("{}", json!(err.reply()));
    2
}

/// Run the CLI; returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    let result = match cli.command {
        Command::Signature { signature, instructions } => engine::signature(&signature, instructions.as_deref()),
        Command::Format { adapter } => engine::format(adapter),
        Command::Parse { adapter } => engine::parse(adapter),
        Command::Demo { lm } => {
            // The demo kills a worker on purpose: only errors are worth a log line.
            let _tracing = common::init_tracing("error");
            return match block_on(demo::demo(lm)) {
                Ok(summary) => i32::from(summary.get("failed").and_then(Value::as_u64).unwrap_or(0) > 0),
                Err(e) => {
                    eprintln!("dspex demo failed: {} ({})", e.message(), e.kind());
                    1
                }
            };
        }
        Command::Run { pipeline, inputs, inputs_file, config, lm } => {
            let _tracing = common::init_tracing("warn");
            serve::inputs(&inputs, inputs_file.as_deref())
                .and_then(|inputs| block_on(serve::run(&pipeline, inputs, config, lm)))
        }
        Command::Optimize {
            program,
            trainset,
            valset,
            optimizer,
            metric,
            params,
            compile_params,
            input_keys,
            out,
            config,
            timeout,
            lm,
        } => {
            let _tracing = common::init_tracing("warn");
            block_on(optimize::optimize(optimize::OptimizeArgs {
                program,
                trainset,
                valset,
                optimizer,
                metric,
                params,
                compile_params,
                input_keys,
                out,
                config,
                timeout,
                lm,
            }))
        }
        Command::Evaluate { program, devset, metric, state, results, config, lm } => {
            let _tracing = common::init_tracing("warn");
            block_on(optimize::evaluate(optimize::EvaluateArgs { program, devset, metric, state, results, config, lm }))
        }
        Command::Doctor { json } => {
            let (report, missing) = match tokio_runtime() {
                Ok(rt) => rt.block_on(doctor::doctor()),
                Err(e) => {
                    eprintln!("cannot start tokio: {e}");
                    return 1;
                }
            };
            if json {
                println!("{report}");
            } else {
                print!("{}", doctor::render(&report));
            }
            return i32::from(missing);
        }
        Command::Call { pool, command, args, config, on_node, idempotent, timeout, lm, cluster } => {
            let _tracing = common::init_tracing("warn");
            block_on(serve::call(serve::CallArgs {
                pool,
                command,
                args,
                config,
                on_node,
                idempotent,
                timeout,
                lm,
                cluster,
            }))
        }
        Command::Serve { config, console_socket, console_tcp, token, metrics, http, otlp, lm, cluster } => {
            let _tracing = match common::init_tracing_with("info", otlp.as_deref()) {
                Ok(guard) => guard,
                Err(e) => {
                    eprintln!("dspex serve: {} ({})", e.message(), e.kind());
                    return 1;
                }
            };
            let opts = serve::ServeOptions {
                config,
                socket: console_socket,
                tcp: console_tcp,
                token,
                metrics,
                http,
                lm,
                cluster,
            };
            return match block_on(async { serve::serve(opts).await.map(|()| Value::Null) }) {
                Ok(_) => 0,
                Err(e) => {
                    eprintln!("dspex serve: {} ({})", e.message(), e.kind());
                    1
                }
            };
        }
        Command::Console { socket, tcp, token, once, json, count, view } => {
            let target = console::Target { socket, tcp, token };
            return match (once, view) {
                (Some(cmd), _) => console::once(&target, &cmd, json, count),
                #[cfg(feature = "top")]
                (None, Some(ConsoleView::Top)) => top::top(&target),
                #[cfg(not(feature = "top"))]
                (None, Some(ConsoleView::Top)) => {
                    eprintln!("dspex console top: this dspex was built without the `top` feature");
                    2
                }
                (None, None) => console::repl(&target),
            };
        }
    };
    match result {
        Ok(v) => {
            println!("{v}");
            0
        }
        Err(e) => fail(&e),
    }
}
