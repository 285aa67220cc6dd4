#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dspex_fuzz::lm_answer(data));
