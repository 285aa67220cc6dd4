//! Profiling loop for the completion and signature parsers:
//! `parse_loop [cot|cot-json|min|sig] [iterations]`, under `perf record`
//! (timing) or `valgrind --tool=callgrind` (instruction counts, stable on a
//! shared machine). Prints the mean time per call.
fn main() {
    let base =
        dspex_native::parse_signature("question, context: list[str] -> answer, confidence: float", None).unwrap();
    let cot = dspex_native::chain_of_thought_signature(&base).unwrap();
    let min = "[[ ## answer ## ]]\nParis\n\n[[ ## confidence ## ]]\n0.93\n\n[[ ## completed ## ]]";
    let cot_chat = "[[ ## reasoning ## ]]\nThe first passage states that Paris is the capital and largest city of France.\nThe second passage only says where France is, so it does not change the answer.\nBoth passages agree, so I am confident.\n\n[[ ## answer ## ]]\nParis\n\n[[ ## confidence ## ]]\n0.93\n\n[[ ## completed ## ]]";
    let cot_json = "{\"reasoning\": \"The first passage states that Paris is the capital and largest city of France. The second passage only says where France is, so it does not change the answer. Both passages agree, so I am confident.\", \"answer\": \"Paris\", \"confidence\": 0.93}";
    let mode = std::env::args().nth(1).unwrap_or_else(|| "min".into());
    let iterations: usize = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(3_000_000);
    let parse = |kind, sig, text| dspex_native::adapter::parse(kind, sig, std::hint::black_box(text)).unwrap().len();
    let start = std::time::Instant::now();
    let mut n = 0;
    for _ in 0..iterations {
        n += match mode.as_str() {
            "min" => parse(dspex_core::AdapterKind::Chat, &base, min),
            "cot" => parse(dspex_core::AdapterKind::Chat, &cot, cot_chat),
            "cot-json" => parse(dspex_core::AdapterKind::Json, &cot, cot_json),
            _ => dspex_native::parse_signature_uncached(
                "question, context: list[str] -> answer, confidence: float",
                None,
            )
            .unwrap()
            .fields()
            .len(),
        };
    }
    println!("{n} fields, {:.0} ns per call", start.elapsed().as_nanos() as f64 / iterations as f64);
}
