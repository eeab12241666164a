//! The C side of the ABI: C programs compiled with `cc` against the
//! checked-in header and the library this build made, run, and checked.
//!
//! - `header`: the checked-in `include/memimg.h` is what cbindgen makes of
//!   the code now (`MEMIMG_UPDATE_HEADER=1` rewrites it).
//! - `abi`: a C program checks `sizeof` of every structure and the order of
//!   the function table against what the library reports, linked against
//!   the shared and against the static library; a C++ program uses the
//!   header and the table.
//! - `errors`: `errors.c` calls every function with NULL and invalid
//!   arguments, a wrong key, a damaged image, a missing file and an address
//!   in use; under ASan and UBSan where the compiler has them, and under
//!   valgrind where it is installed.
//! - `example`: the C example persists and restores a small arena with
//!   each strategy.
//! - `layout`: the restore path's functions come first in `libmemimg.so`
//!   and in a C program linked with `libmemimg.a` (`layout/hot.ld`), and
//!   the program `layout/regen.sh` traces still restores with each strategy.
//!
//! A test that cannot run here (no `cc`, no sanitizer runtime, no valgrind,
//! no userfaultfd) follows the skip protocol of [`support::skip`].
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod abi;
mod errors;
mod example;
mod header;
mod layout;
mod support;
