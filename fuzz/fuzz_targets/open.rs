#![no_main]
//! Fuzz target `open`: see memimg_tests::fuzz::open.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| memimg_tests::fuzz::open(data));
