#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| firebreak_fuzzing::disk_object(data));
