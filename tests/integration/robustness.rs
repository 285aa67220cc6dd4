//! Property tests: parsers never panic, whatever the input.

use dspex_core::AdapterKind;
use dspex_native::{adapter, parse_signature_uncached, parse_type};
use proptest::prelude::*;

/// Strings biased towards the syntax the parsers care about.
fn tricky() -> impl Strategy<Value = String> {
    let atoms = prop::sample::select(vec![
        "->",
        ",",
        ":",
        "[",
        "]",
        "(",
        ")",
        "{",
        "}",
        "'",
        "\"",
        "|",
        "=",
        "*",
        "/",
        "\\",
        "#",
        "\n",
        " ",
        "a",
        "_x",
        "int",
        "list",
        "Optional",
        "Literal",
        "dspy.",
        "Union",
        "1",
        "0x",
        "1e",
        "é",
        "→",
        "[[ ## ",
        " ## ]]",
        "answer",
        "completed",
        "```json",
        "True",
        "None",
        "null",
        "…",
        "\u{0}",
        "\t",
    ]);
    prop_oneof![prop::collection::vec(atoms, 0..40).prop_map(|v| v.concat()), any::<String>(),]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn signature_parser_never_panics(s in tricky()) {
        let _ = parse_signature_uncached(&s, None);
        let _ = parse_type(&s);
    }

    #[test]
    fn completion_parsers_never_panic(s in tricky()) {
        let sig = parse_signature_uncached("q -> answer, n: int, items: list[str], flag: bool, choice: Literal['a', 'b'], maybe: Optional[dict[str, float]], t: tuple[int, str]", None).unwrap();
        let _ = adapter::parse(AdapterKind::Chat, &sig, &s);
        let _ = adapter::parse(AdapterKind::Json, &sig, &s);
        let wrapped = format!("[[ ## answer ## ]]\nx\n[[ ## n ## ]]\n{s}\n[[ ## items ## ]]\n{s}\n[[ ## maybe ## ]]\n{s}");
        let _ = adapter::parse(AdapterKind::Chat, &sig, &wrapped);
        let json_wrapped = format!("{{\"answer\": {s}, \"n\": {s}}}");
        let _ = adapter::parse(AdapterKind::Json, &sig, &json_wrapped);
    }
}

/// Deeply nested input — from a user's signature or an LM's completion —
/// is an error or a value, never a stack overflow (which would abort the
/// whole process). Run on a thread with the 2 MiB stack tokio's workers
/// have, in the debug build's large frames.
#[test]
fn deep_nesting_never_overflows_the_stack() {
    type Case = Box<dyn FnOnce() + Send>;
    let cases: Vec<(&str, Case)> = vec![
        (
            "signature type",
            Box::new(|| {
                drop(parse_signature_uncached(
                    &format!("q -> a: {}int{}", "list[".repeat(20_000), "]".repeat(20_000)),
                    None,
                ))
            }),
        ),
        ("type annotation", Box::new(|| drop(parse_type(&"(".repeat(50_000))))),
        (
            "signature default",
            Box::new(|| drop(parse_signature_uncached(&format!("q -> a: int = {}", "(".repeat(50_000)), None))),
        ),
        (
            "chat list",
            Box::new(|| {
                let sig = parse_signature_uncached("q -> a: list[int]", None).unwrap();
                let completion = format!("[[ ## a ## ]]\n{}\n\n[[ ## completed ## ]]", "[".repeat(100_000));
                drop(adapter::parse(AdapterKind::Chat, &sig, &completion));
            }),
        ),
        (
            "chat tuple",
            Box::new(|| {
                let sig = parse_signature_uncached("q -> a: dict[str, int]", None).unwrap();
                let completion =
                    format!("[[ ## a ## ]]\n{}1{}\n\n[[ ## completed ## ]]", "(".repeat(100_000), ")".repeat(100_000));
                drop(adapter::parse(AdapterKind::Chat, &sig, &completion));
            }),
        ),
        (
            "json object",
            Box::new(|| {
                let sig = parse_signature_uncached("q -> a: list[int]", None).unwrap();
                let completion = format!("{{\"a\": {}}}", "{\"b\": [".repeat(50_000));
                drop(adapter::parse(AdapterKind::Json, &sig, &completion));
            }),
        ),
    ];
    for (what, case) in cases {
        let outcome = std::thread::Builder::new().stack_size(2 << 20).spawn(case).unwrap().join();
        assert!(outcome.is_ok(), "{what} panicked");
    }
}
