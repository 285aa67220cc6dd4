//! Embeds the `dspex_worker` Python package (`worker/dspex_worker/*.py`, inside
//! this crate so `cargo package` ships it) as a generated list of
//! `include_str!`s: a module added to the package is embedded without
//! anyone having to remember a list.

use std::path::Path;

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let package = Path::new(&manifest).join("worker").join("dspex_worker");
    println!("cargo:rerun-if-changed={}", package.display());
    let mut modules: Vec<String> = std::fs::read_dir(&package)
        .unwrap_or_else(|e| panic!("cannot read the worker package at {}: {e}", package.display()))
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".py"))
        .collect();
    modules.sort();
    let mut out = String::from("&[\n");
    for name in &modules {
        let path = package.join(name);
        println!("cargo:rerun-if-changed={}", path.display());
        out.push_str(&format!(
            "    ({:?}, include_str!({:?})),\n",
            format!("dspex_worker/{name}"),
            path.display().to_string()
        ));
    }
    out.push_str("]\n");
    let dest = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("worker_sources.rs");
    std::fs::write(&dest, out).unwrap_or_else(|e| panic!("cannot write {}: {e}", dest.display()));
}
