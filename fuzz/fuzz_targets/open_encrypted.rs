#![no_main]
//! Fuzz target `open_encrypted`: see memimg_tests::fuzz::open_encrypted.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| memimg_tests::fuzz::open_encrypted(data));
