//! Integration tests of the `imgtool` binary and library, one module per
//! subcommand. Golden files live in `tests/data/*.expected`; regenerate them
//! with `IMGTOOL_UPDATE_GOLDEN=1 cargo test -p imgtool --test cli`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
// Test images are small and the tests run on 64-bit hosts.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss
)]

mod common;
#[path = "../support/gdb.rs"]
mod gdb;
/// memimg-remote's local S3 server (moto) for the tests, and the skip
/// protocol when it is missing.
#[allow(dead_code)]
#[path = "../../../remote/tests/it/support.rs"]
mod moto;
#[path = "../support/skip.rs"]
mod skip;
#[path = "../support/sleeper.rs"]
mod sleeper;

mod capture;
mod cat;
mod core;
mod crash;
mod diff;
mod incremental;
mod inspect;
mod keygen;
mod keys;
mod misc;
mod modes;
mod optimize;
mod recompress;
mod reencrypt;
mod remote;
mod truncate;
mod verify;
