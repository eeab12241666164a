#![no_main]
//! Fuzz target `structured`: a valid image built from a description, every
//! checksum fixed, then semantic fields mutated; see
//! memimg_tests::fuzz::structured_with.
//!
//! Allocation is bounded by the image, not by a fixed limit: the reader may
//! allocate at most 16 times the image plus 4 MiB while it opens, walks and
//! verifies it, so that amplification shows even in small images (run.sh's
//! -malloc_limit_mb=64 stays as a backstop).
use libfuzzer_sys::fuzz_target;
use memimg_tests::alloc::{peak_during, Counting};

#[global_allocator]
static A: Counting = Counting;

fuzz_target!(|data: &[u8]| {
    memimg_tests::fuzz::structured_with(data, &mut |len, run| {
        let peak = peak_during(run);
        assert!(
            peak <= 16 * len + (4 << 20),
            "a {len}-byte image made the reader allocate {peak} bytes"
        );
    })
});
