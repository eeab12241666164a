//! # memimg-capture: capture live processes, persist and restore memory
//!
//! Two ways into a [`memimg`] image, and the way back:
//!
//! - **Capture of another process** by pid ([`capture_to_path`]): every
//!   thread is stopped with ptrace for a consistent snapshot, resident pages
//!   are read with `process_vm_readv`, or through `/proc/PID/mem` where the
//!   process cannot read them itself (`PROT_NONE`, write-only), whatever
//!   their protection, which the region keeps (never-touched pages are
//!   skipped using `/proc/PID/pagemap`, so the cost follows resident memory,
//!   not reserved address space), and the threads are resumed, also on error
//!   and Ctrl-C. On x86-64 the stopped process first forks a traced copy of
//!   itself (a fork snapshot, see `fork.rs`), is resumed at once, and the
//!   copy is read instead: the process stands still for the fork only.
//!   Each thread's registers (x86_64 only) and the auxiliary vector are kept
//!   as image notes laid out as in a kernel core dump (`CORE/1`, `CORE/2`,
//!   `LINUX/514`, `CORE/6`), so a core exported from the image gives gdb a
//!   backtrace of every thread.
//! - **Persisting a program's own memory** ([`Persister`]): the program names
//!   the regions it wants back and its validation data. With
//!   [`Persister::track`] it tracks writes to them ([`track`]: userfaultfd
//!   write-protection and `PAGEMAP_SCAN`, or checksums where the kernel lacks
//!   those), so a persist with a parent reads only the pages written since.
//! - **Restore** ([`restore()`]): maps the regions back at their recorded
//!   addresses in a new process, by mmap of the file, eager parallel
//!   decoding, or lazily through userfaultfd.
//!
//! Linux only.
#![deny(unsafe_op_in_unsafe_fn)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod bgwrite;
mod child;
mod elfnote;
mod error;
mod fork;
mod freeze;
#[cfg(target_arch = "x86_64")]
mod inject;
mod live;
mod memread;
mod pagemap;
mod persist;
pub mod procfs;
mod restore;
#[cfg(target_arch = "x86_64")]
mod seccomp;
mod threads;
pub mod track;

pub use child::{hint_for, CompareStats};
pub use error::{CaptureError, RestoreError};
pub use live::{
    capture_to_path, capture_to_writer, CaptureOptions, CaptureReport, FrozenHook, Method, Progress,
};
/// Locations and store settings, for [`restore_from`].
#[cfg(feature = "remote")]
pub use memimg_remote;
pub use persist::{ChildReport, PersistError, PersistOptions, Persister};
pub use restore::{
    lazy_unavailable, restore, restore_chain, LazyHandle, LazyStats, RestoreOptions, Restored,
    Strategy,
};
#[cfg(feature = "remote")]
pub use restore::{
    restore_from, RemoteOptions, DEFAULT_IN_FLIGHT, DEFAULT_MAX_REQUEST, DEFAULT_PREFETCH_REQUESTS,
    REMOTE_OPEN_HEAD, REMOTE_OPEN_TAIL,
};
pub use track::{TrackError, TrackMethod, TrackOptions, TrackStats, Tracker};

/// An address as a pointer. Addresses come from this machine's address
/// space (maps, images checked against this machine's pointer width), so they
/// fit in `usize`.
#[allow(clippy::cast_possible_truncation)]
pub(crate) fn ptr_of(addr: u64) -> *mut libc::c_void {
    addr as usize as *mut libc::c_void
}

/// A fresh private anonymous mapping of `len` bytes with protection `prot`,
/// for unit tests (as the integration tests' `common::map_anon`); the test
/// unmaps it.
#[cfg(test)]
pub(crate) fn test_map_anon(len: usize, prot: libc::c_int) -> *mut libc::c_void {
    // SAFETY: a fresh anonymous mapping; no existing memory is touched.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    p
}

/// The skip protocol for unit tests (as the integration tests'
/// `common::skip`): a failure when `MEMIMG_REQUIRE_ALL` is set, else a line
/// `{test}\t{why}` in the file named by `MEMIMG_SKIP_LOG` and a message.
#[cfg(test)]
pub(crate) fn test_skip(test: &str, why: &str) {
    if std::env::var_os("MEMIMG_REQUIRE_ALL").is_some_and(|v| !v.is_empty()) {
        panic!("would skip: {why}");
    }
    if let Some(log) = std::env::var_os("MEMIMG_SKIP_LOG") {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| writeln!(f, "{test}\t{why}"))
            .expect("writing the skip log");
    }
    eprintln!("skipped: {why}");
}
