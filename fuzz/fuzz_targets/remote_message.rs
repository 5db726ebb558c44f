#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vla_rt::fuzzing::remote_message(data));
