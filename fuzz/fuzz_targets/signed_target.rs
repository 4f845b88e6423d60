#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| firebreak_fuzzing::signed_target(data));
