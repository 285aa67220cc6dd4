//! Command-line interface: argument parsing and dispatch.

mod engine;

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;

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
}

/// Print an error as `{"error": {...}}` and return exit code 2.
pub fn fail(err: &dspex::Error) -> i32 {
    let mut e = json!({"kind": err.kind().as_str(), "message": err.message()});
    if let Some(t) = err.python_type() {
        e["python_type"] = json!(t);
    }
    if let Some(f) = &err.context().field {
        e["field"] = json!(f);
    }
    println!("{}", json!({"error": e}));
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
    };
    match result {
        Ok(v) => {
            println!("{v}");
            0
        }
        Err(e) => fail(&e),
    }
}
