#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vla_rt::fuzzing::proprio_message(data));
