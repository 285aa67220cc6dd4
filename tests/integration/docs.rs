//! Examples in the docs that are not compiled as doctests still have to
//! work: the runtime configuration file in `docs/configuration.md` parses.

use crate::support::repo_root;

fn blocks(markdown: &str, lang: &str) -> Vec<String> {
    let fence = format!("```{lang}");
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match &mut current {
            None if line.trim_start() == fence => current = Some(String::new()),
            Some(text) if line.trim_start() == "```" => {
                out.push(std::mem::take(text));
                current = None;
            }
            Some(text) => {
                text.push_str(line);
                text.push('\n');
            }
            None => {}
        }
    }
    out
}

#[test]
fn the_configuration_example_parses() {
    let doc = std::fs::read_to_string(repo_root().join("docs/configuration.md")).unwrap();
    let tomls = blocks(&doc, "toml");
    assert!(!tomls.is_empty(), "docs/configuration.md has a TOML example");
    let cfg = dspex::RuntimeConfig::from_toml(&tomls[0]).unwrap_or_else(|e| panic!("{e}\n{}", tomls[0]));
    assert!(cfg.pools.iter().any(|p| p.name == "general"));
    assert!(cfg.lm.is_some());
    for extra in &tomls[1..] {
        // Further TOML blocks are pipelines or runtime configs; either must parse.
        let ok = dspex::RuntimeConfig::from_toml(extra).is_ok() || dspex::Pipeline::from_toml(extra).is_ok();
        assert!(ok, "a TOML block in docs/configuration.md does not parse:\n{extra}");
    }
}
