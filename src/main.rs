//! The `dspex` command-line tool.

mod cli;

// The allocator the benchmarks measure with (feature `mimalloc`).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(cli::main());
}
