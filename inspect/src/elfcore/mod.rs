//! # ELF core files: export an image as a core gdb opens, import gcore and kernel cores
//!
//! - [`export_core`] writes an `ET_CORE` ELF64 file from a [`memimg::Image`].
//! - [`import_core`] reads a core (from gdb's `gcore` or the Linux kernel) and
//!   writes an image through a [`memimg::Writer`].
//!
//! ## Why a hand-written ELF reader and writer, not `object`
//!
//! A core needs very little of ELF: one file header, the program headers, and
//! the note stream of `PT_NOTE`. `object` 0.36 reads cores (`read_core`) but its
//! writer emits relocatable objects, not cores, so the writer would be by hand
//! anyway. Reading with `object` would give `&'static str` errors that cannot
//! say which segment or note is wrong, and would still leave the checks this
//! module needs (overlap, page alignment, `p_filesz` against `p_memsz`) to us.
//! The layout fits in [`elf`] (about 200 lines) and every offset is checked, so
//! the module adds no dependency.
//!
//! ## What maps to what
//!
//! | image | core |
//! |---|---|
//! | region (address, length, protection) | `PT_LOAD`s with `p_vaddr`, `p_memsz`, `PF_R/W/X` |
//! | data pages | file bytes of a `PT_LOAD` (`p_filesz`) |
//! | zero pages | the tail past `p_filesz` (gdb reads it as zeros), listed in the `MEMIMG` note |
//! | absent pages, regions without data | the tail past `p_filesz`, not listed |
//! | file-backed region name and offset | `NT_FILE` entry |
//! | process facts (pid, comm, cmdline) | `NT_PRPSINFO` |
//! | notes named `OWNER/TYPE` (e.g. `CORE/1`) | the ELF note, verbatim |
//! | everything else (kinds, `[heap]` names, dev/inode, zero runs, other notes, exe, validation data) | notes owned by `MEMIMG` (see [`notes`]) |
//!
//! **Zero versus absent.** An ELF core cannot tell "these bytes were zero" from
//! "these bytes were not dumped": both are the part of a `PT_LOAD` past
//! `p_filesz`, which gdb reads as zeros (or, for a file mapping listed in
//! `NT_FILE`, from the mapped file). The kernel and gcore use it for pages they
//! chose not to dump, so [`import_core`] records such tails as **absent**. Our
//! own exports list the zero runs in a `MEMIMG` note, so they come back as
//! zero. Zero runs of file-backed regions are written as real zero bytes,
//! because gdb would otherwise read the mapped file there.
//!
//! A region is split into several `PT_LOAD`s where it has holes: each segment
//! is a run of data pages followed by a run of zero or absent pages.
//!
//! **Untrusted input.** [`import_core`] accepts any bytes: it returns a typed
//! [`CoreError`], never panics, and allocates at most a small multiple of the
//! input (program headers and notes are counted against the bytes that hold
//! them before anything is allocated; all arithmetic on file values is checked).
//! The image's extent table grows with the address span covered, which is at
//! most one 48-byte extent per segment plus one per 2^32 pages; a core whose
//! segments cover more than 2^57 bytes is refused (`Unsupported`), so that is
//! at most 8192 extents beyond one per segment.

pub mod elf;
mod import;
pub mod notes;
pub mod read;
mod write;

use std::fmt;

pub use import::{import_core, ImportReport};
pub use read::{parse_core, CoreFile, ElfNote, Segment};
pub use write::{export_core, ExportOptions, ExportReport};

/// What went wrong reading or writing a core.
///
/// Offsets are file offsets in the core.
#[derive(Debug)]
#[non_exhaustive]
pub enum CoreError {
    /// The file does not start with `\x7fELF`.
    NotElf,
    /// A valid ELF file that is not a core, or a kind of core this module does
    /// not read (32-bit, unknown byte order).
    Unsupported(String),
    /// A header or table runs past the end of the file.
    Truncated {
        /// What was being read.
        what: String,
        /// Where it starts.
        offset: u64,
        /// Its length.
        len: u64,
        /// The file length.
        file_len: u64,
    },
    /// A segment's file bytes lie past the end of the file (or `p_offset +
    /// p_filesz` overflows: a huge `p_filesz`).
    SegmentPastEnd {
        /// Program header index.
        index: u32,
        /// `p_offset`.
        offset: u64,
        /// `p_filesz`.
        filesz: u64,
        /// The file length.
        file_len: u64,
    },
    /// Two `PT_LOAD`s cover the same addresses.
    Overlap {
        /// Program header index of the lower segment.
        first: u32,
        /// Its address range.
        first_range: (u64, u64),
        /// Program header index of the other segment.
        second: u32,
        /// Its address range.
        second_range: (u64, u64),
    },
    /// A `PT_LOAD` does not start on an image page (choose a smaller page size).
    Unaligned {
        /// Program header index.
        index: u32,
        /// `p_vaddr`.
        vaddr: u64,
        /// The image page size.
        page_size: u32,
    },
    /// A note whose lengths do not fit its segment.
    BadNote {
        /// File offset of the note header.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// Any other inconsistency in the file.
    Malformed {
        /// File offset of the field.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The image could not be read or written.
    Image(memimg::Error),
    /// Writing the core failed.
    Io(std::io::Error),
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoreError::NotElf => f.write_str("not an ELF file (no \\x7fELF magic)"),
            CoreError::Unsupported(m) => write!(f, "unsupported core: {m}"),
            CoreError::Truncated {
                what,
                offset,
                len,
                file_len,
            } => write!(
                f,
                "{what} at offset {offset:#x} ({len} bytes) runs past the end of the {file_len}-byte file"
            ),
            CoreError::SegmentPastEnd {
                index,
                offset,
                filesz,
                file_len,
            } => write!(
                f,
                "program header {index}: segment bytes at offset {offset:#x} ({filesz:#x} bytes) lie past the end of the {file_len}-byte file"
            ),
            CoreError::Overlap {
                first,
                first_range,
                second,
                second_range,
            } => write!(
                f,
                "program headers {first} ({:#x}-{:#x}) and {second} ({:#x}-{:#x}) overlap",
                first_range.0, first_range.1, second_range.0, second_range.1
            ),
            CoreError::Unaligned {
                index,
                vaddr,
                page_size,
            } => write!(
                f,
                "program header {index}: segment at {vaddr:#x} does not start on a {page_size}-byte page; use a smaller image page size"
            ),
            CoreError::BadNote { offset, reason } => write!(f, "note at offset {offset:#x}: {reason}"),
            CoreError::Malformed { offset, reason } => write!(f, "offset {offset:#x}: {reason}"),
            CoreError::Image(e) => write!(f, "{e}"),
            CoreError::Io(e) => write!(f, "writing the core: {e}"),
        }
    }
}

/// No source: the `Image` and `Io` variants print their error in full
/// already, and a source would make `{:#}` print it a second time.
impl std::error::Error for CoreError {}

impl From<memimg::Error> for CoreError {
    fn from(e: memimg::Error) -> Self {
        CoreError::Image(e)
    }
}

impl From<std::io::Error> for CoreError {
    fn from(e: std::io::Error) -> Self {
        CoreError::Io(e)
    }
}
