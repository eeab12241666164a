//! End-to-end tests across the memimg crates, built into one binary and
//! grouped by purpose.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation,
    missing_docs
)]

mod binding;
mod chain;
mod corrupt;
mod digests;
mod files;
mod forge;
mod fuzz_regressions;
mod golden;
mod golden_load_order;
mod hostile;
mod index_first;
mod loadorder;
mod rotation;
mod roundtrip;
mod tamper;
