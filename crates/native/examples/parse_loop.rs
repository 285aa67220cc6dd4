//! Profiling loop for the completion parser (`perf record ./parse_loop [cot|min|sig]`).
fn main() {
    let base =
        dspex_native::parse_signature("question, context: list[str] -> answer, confidence: float", None).unwrap();
    let cot = dspex_native::chain_of_thought_signature(&base).unwrap();
    let c = "[[ ## answer ## ]]\nParis\n\n[[ ## confidence ## ]]\n0.93\n\n[[ ## completed ## ]]";
    let cc = "[[ ## reasoning ## ]]\nThe first passage states that Paris is the capital and largest city of France.\nThe second passage only says where France is, so it does not change the answer.\nBoth passages agree, so I am confident.\n\n[[ ## answer ## ]]\nParis\n\n[[ ## confidence ## ]]\n0.93\n\n[[ ## completed ## ]]";
    let mode = std::env::args().nth(1).unwrap_or_else(|| "min".into());
    let mut n = 0;
    match mode.as_str() {
        "min" => {
            for _ in 0..3_000_000 {
                n += dspex_native::adapter::parse(dspex_core::AdapterKind::Chat, &base, std::hint::black_box(c))
                    .unwrap()
                    .len();
            }
        }
        "cot" => {
            for _ in 0..3_000_000 {
                n += dspex_native::adapter::parse(dspex_core::AdapterKind::Chat, &cot, std::hint::black_box(cc))
                    .unwrap()
                    .len();
            }
        }
        _ => {
            for _ in 0..300_000 {
                n += dspex_native::parse_signature_uncached(
                    "question, context: list[str] -> answer, confidence: float",
                    None,
                )
                .unwrap()
                .fields()
                .len();
            }
        }
    }
    println!("{n}");
}
