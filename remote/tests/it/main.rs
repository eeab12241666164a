//! memimg-remote against a local S3 server (moto): every test starts or
//! shares a `moto_server` on a loopback port; without moto they follow the
//! skip protocol (see `support::skip`).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod copy;
mod failures;
mod loadorder;
mod reads;
mod roundtrip;
mod support;
mod upload;
mod verify;
