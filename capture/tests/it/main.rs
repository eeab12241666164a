//! Integration tests of memimg-capture, in one binary.
//!
//! Some tests need a second process: they re-execute this binary with
//! `MEMIMG_TEST_ROLE` set, and [`child::role_entry`] then runs that role
//! instead of being a test (see `common::spawn_role`).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod child;
mod common;
mod failures;
mod fork;
mod incremental;
mod lazy_alloc;
mod lazy_costs;
mod lazy_events;
mod lazy_support;
mod live;
mod loadorder;
mod mmap_pieces;
mod protect;
mod registers;
#[cfg(feature = "remote")]
mod remote;
#[cfg(not(feature = "remote"))]
mod remote_off;
mod restore;
mod track;
