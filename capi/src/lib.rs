//! # memimg-capi: the C ABI of memimg
//!
//! This crate is the C interface to [`img`] (the format: read, verify) and
//! `memimg_capture` (persist a program's own memory, restore it). It builds
//! `libmemimg.so` and `libmemimg.a`; the header `include/memimg.h` is
//! generated from this code by cbindgen and checked in, and a test fails when
//! the two disagree.
//!
//! It is a crate of its own rather than a module of memimg-capture so that
//! the `unsafe` of the FFI boundary (raw pointers from C, handles, the
//! function table) stays out of the capture crate, and so that a C program
//! links one library that holds the format, persist and restore together.
//!
//! ## The rules every function follows
//!
//! - **Status codes.** Every function that can fail returns a
//!   `memimg_status`. On failure the thread-local last error holds the
//!   status, the message (the same text the Rust error prints) and its
//!   location; see `memimg_last_error()`. A call that succeeds leaves it as
//!   it is.
//! - **No panic crosses the boundary.** Each function runs its body under
//!   `catch_unwind`; a panic becomes [`memimg_status::MEMIMG_E_PANIC`].
//! - **Arguments are checked.** A NULL pointer where one is needed, an
//!   unknown constant, a handle that is not live (never made, already freed,
//!   or of another type) or a bad `struct_size` gives
//!   [`memimg_status::MEMIMG_E_INVALID_ARGUMENT`], never a crash. Handles are
//!   looked up in a table of live handles before they are used, so freeing
//!   one twice is an error, not a double free.
//! - **Extensible structures.** Every structure passed across starts with
//!   `size_t struct_size`, which the caller sets to `sizeof` the structure
//!   as its header declares it. Fields are only ever appended. A library
//!   newer than the caller's header reads the fields the caller knows and
//!   takes zero (the default) for the rest; it writes only the bytes the
//!   caller has. A library older than the caller's header zeroes the fields
//!   it does not know in structures it fills, and refuses (with
//!   [`memimg_status::MEMIMG_E_UNKNOWN_FIELDS`]) a structure given to it
//!   with a non-zero field it does not know, as Linux's `openat2` does.
//! - **Memory.** The caller owns what it passes in; the library copies what
//!   it keeps (key bytes go into storage zeroized on free). What the
//!   library returns is a handle freed by its `_free` function (which
//!   accepts NULL), or a pointer into a handle, valid until that handle is
//!   freed.
//! - **Versions.** `memimg_api()` returns a table of every function, whose
//!   first field is its size; functions are appended to it in later
//!   versions, as in CRaC's `crlib`. Every function is also exported by
//!   name.
#![deny(unsafe_op_in_unsafe_fn)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]
// The C names are the Rust names, so that the header and the code read the
// same and can be searched for the same words.
#![allow(non_camel_case_types)]
// The safety contract is the same for every function and is stated once, in
// the crate docs above and at the top of the header: pointers are valid for
// what they describe or NULL, and handles come from this library.
#![allow(clippy::missing_safety_doc)]

mod api;
mod args;
mod error;
mod ext;
mod handle;
mod image;
mod key;
mod persist;
mod restore;
mod types;
mod verify;

pub use api::*;
pub use error::*;
pub use image::*;
pub use key::*;
pub use persist::*;
pub use restore::*;
pub use types::*;
pub use verify::*;
