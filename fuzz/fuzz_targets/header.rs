#![no_main]
//! Fuzz target `header`: see memimg_tests::fuzz::header.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| memimg_tests::fuzz::header(data));
