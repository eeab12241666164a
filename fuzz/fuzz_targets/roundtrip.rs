#![no_main]
//! Fuzz target `roundtrip`: see memimg_tests::fuzz::roundtrip.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| memimg_tests::fuzz::roundtrip(data));
