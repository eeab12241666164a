#![no_main]
//! Fuzz target `trailer`: see memimg_tests::fuzz::trailer.
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

static HEADER: OnceLock<Vec<u8>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let header = HEADER.get_or_init(memimg_tests::fuzz::template_header);
    memimg_tests::fuzz::trailer(header, data)
});
