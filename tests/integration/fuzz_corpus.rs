//! Every committed fuzz input — the seeds, the corpora the fuzzers grew and
//! every input that ever crashed a target — replayed through the same
//! harness the `cargo fuzz` targets run (`fuzz/src/lib.rs`), so a fixed
//! crash stays fixed under plain `cargo test`. See docs/fuzzing.md.

use std::path::Path;

#[path = "../../fuzz/src/lib.rs"]
#[allow(dead_code, unreachable_pub)]
mod harness;

fn inputs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut found: Vec<(String, Vec<u8>)> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| (e.path().display().to_string(), std::fs::read(e.path()).expect("a corpus file")))
        .collect();
    found.sort();
    found
}

#[test]
fn every_committed_fuzz_input_replays_cleanly() {
    let root = crate::support::repo_root().join("fuzz");
    let mut replayed = 0;
    for (target, run) in harness::TARGETS {
        let mut count = 0;
        for kind in ["seeds", "corpus", "regressions"] {
            for (name, data) in inputs(&root.join(kind).join(target)) {
                if std::env::var_os("DSPEX_FUZZ_TRACE").is_some() {
                    eprintln!("{target}: {name}");
                }
                let outcome = std::panic::catch_unwind(|| run(&data));
                assert!(outcome.is_ok(), "fuzz target {target} fails on {name}");
                count += 1;
            }
        }
        assert!(count > 0, "no committed inputs for fuzz target {target}");
        replayed += count;
    }
    eprintln!("replayed {replayed} fuzz inputs");
}
