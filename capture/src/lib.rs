//! # memimg-capture: capture live processes, persist and restore memory
//!
//! Two ways into a [`memimg`] image, and the way back:
//!
//! - **Capture of another process** by pid ([`capture_to_path`]): every
//!   thread is stopped with ptrace for a consistent snapshot, resident pages
//!   are read with `process_vm_readv` (never-touched pages are skipped using
//!   `/proc/PID/pagemap`, so the cost follows resident memory, not reserved
//!   address space), and the threads are resumed, also on error and Ctrl-C.
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
mod elfnote;
mod error;
mod freeze;
mod live;
mod memread;
mod pagemap;
mod persist;
pub mod procfs;
mod restore;
mod threads;
pub mod track;

pub use error::{CaptureError, RestoreError};
pub use live::{
    capture_to_path, capture_to_writer, CaptureOptions, CaptureReport, FrozenHook, Progress,
};
pub use persist::{PersistError, PersistOptions, Persister};
pub use restore::{
    lazy_unavailable, restore, LazyHandle, LazyStats, RestoreOptions, Restored, Strategy,
};
pub use track::{TrackError, TrackMethod, TrackOptions, TrackStats, Tracker};

/// An address as a pointer. Addresses come from this machine's address
/// space (maps, images checked against this machine's pointer width), so they
/// fit in `usize`.
#[allow(clippy::cast_possible_truncation)]
pub(crate) fn ptr_of(addr: u64) -> *mut libc::c_void {
    addr as usize as *mut libc::c_void
}
