#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| gomail::fuzzing::config(data));
