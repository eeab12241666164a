//! # memimg: the process-memory image format
//!
//! A memory image holds the contents of a set of virtual-memory regions of a
//! process, captured at one instant, with what is needed to validate and
//! restore them. This crate reads, writes and verifies it; `spec.md` at the top
//! of the repository defines every byte.
//!
//! ```text
//!  0            P (page size)                                        EOF
//!  +------------+--------------------------------+--------+---------+
//!  | header     | chunks, in layout order: by    | index  | trailer |
//!  | (one page) | number, or the load-order      |        | (256 B) |
//!  |            | profile first (raw chunks of a |        |         |
//!  |            | plain image page-aligned)      |        |         |
//!  +------------+--------------------------------+--------+---------+
//!                                                 ^ located by the trailer
//! ```
//!
//! - The [`Writer`] produces this in one pass over any `Write`.
//! - The [`Image`] reader checks it and gives regions, extents and
//!   [`Image::read_at`].
//! - [`verify_path`] walks everything and reports every problem.
//!
//! **Versions.** This crate writes version 1.1 and reads 1.0 and 1.1. The
//! major version must equal this reader's (1); a newer minor version is read
//! as long as it sets no unknown incompatible feature. A 1.1 image that sets
//! none of 1.1's feature bits (`SLOT_BOUND`, `PARENT`, `LOAD_ORDER`) follows
//! every 1.0 rule, so 1.0 readers read it; every 1.0 image reads here, byte
//! for byte (the golden files in `tests/golden` freeze both versions).
//!
//! **Untrusted input.** Any byte sequence given to [`Image::open`] yields an
//! image or a typed [`Error`]; see its `# Security` section.
#![deny(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod atomic;
#[cfg(feature = "nonce-audit")]
#[doc(hidden)]
pub mod audit;
mod chain;
mod codec;
mod crypt;
mod error;
mod meta;
mod model;
mod profile;
#[allow(missing_docs)] // Every field is documented, with its offset, in spec.md.
pub mod raw;
mod read;
mod relayout;
mod rewrite;
mod source;
mod verify;
mod write;
mod zero;

pub use chain::{
    flatten, hint_path, rebase, rebase_in_place, Chain, ChainOptions, ParentKey, Resolution,
    Segment, SegmentKind,
};
pub use codec::Codec;
pub use crypt::{
    Argon2Params, Kdf, Key, MAX_ARGON2_M_COST, MAX_ARGON2_WORK, MAX_PASSPHRASE_FILE_LEN,
};
pub use error::{Error, ErrorKind, Location, Result};
pub use model::*;
pub use profile::{Profile, PROFILE_MAGIC, PROFILE_VERSION};
pub use read::{front_open_need, fuzz_api, page_digests_of, Image, TrailerInfo};
pub use relayout::{relayout, relayout_in_place, relayout_with, RelayoutOptions, RelayoutStats};
pub use rewrite::{check_modifiable, options_from, rewrap_in_place, transcode, RewrapStats};
pub use source::{FileAt, FileBytes, ReadAt, ReadSeek};
pub use verify::{
    parent_unchecked_note, verify_bytes, verify_chain_path, verify_chain_ranges, verify_path,
    Problem, Report, Status, VerifyOptions,
};
pub use write::{WriteStats, Writer, WriterOptions};

/// Major format version this crate reads and writes.
pub const VERSION_MAJOR: u16 = 1;
/// Minor format version this crate writes.
pub const VERSION_MINOR: u16 = 1;
/// Default chunk size: 512 KiB.
///
/// Chosen with `cargo bench -p memimg-tests --bench write -- --chunks`: on the
/// benchmark mix, zstd:1 throughput peaked at 256–512 KiB (64 KiB was 25%
/// slower, 4 MiB 15% slower), the compressed size was the same within 0.3%
/// from 256 KiB to 4 MiB, and a smaller chunk halves the work of each lazy
/// restore fault compared with 1 MiB.
pub const DEFAULT_CHUNK_SIZE: u32 = 512 << 10;
/// Largest chunk size the format allows: 16 MiB.
pub const MAX_CHUNK_SIZE: u32 = 16 << 20;
/// Deepest chain of incremental images (1.1): a parent record's depth is at
/// most 64 (spec.md, *Incremental images*). A reader refuses a deeper one
/// before opening anything.
pub const MAX_CHAIN_DEPTH: u32 = 64;

/// The page size of this machine (4096 where it cannot be asked).
///
/// Asked once per process. Linux gives it in the auxiliary vector
/// (`AT_PAGESZ` of `/proc/self/auxv`, a few hundred bytes); without unsafe
/// code that file is the way to read it. `/proc/self/smaps` (its first
/// `KernelPageSize`) is the fallback. It is not read first: the kernel
/// writes the whole of it, walking the page tables of every mapping, which
/// took 0.2 to 0.4 ms in a small process (more with more mappings, such as
/// a program that loads `libmemimg.so`), inside every restore's time.
pub fn page_size() -> u32 {
    static PS: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *PS.get_or_init(|| {
        std::fs::read("/proc/self/auxv")
            .ok()
            .and_then(|a| auxv_page_size(&a))
            .or_else(smaps_page_size)
            .filter(|&p| p.is_power_of_two() && p >= 4096)
            .unwrap_or(4096)
    })
}

/// `AT_PAGESZ` of an auxiliary vector: pairs of native words (type, value),
/// ended by `AT_NULL`.
fn auxv_page_size(auxv: &[u8]) -> Option<u32> {
    const AT_NULL: u64 = 0;
    const AT_PAGESZ: u64 = 6;
    let w = std::mem::size_of::<usize>();
    let word = |b: &[u8]| -> u64 {
        let mut v = [0u8; 8];
        if cfg!(target_endian = "big") {
            v[8 - w..].copy_from_slice(b);
            u64::from_be_bytes(v)
        } else {
            v[..w].copy_from_slice(b);
            u64::from_le_bytes(v)
        }
    };
    for pair in auxv.chunks_exact(2 * w) {
        match word(&pair[..w]) {
            AT_NULL => return None,
            AT_PAGESZ => return u32::try_from(word(&pair[w..])).ok(),
            _ => {}
        }
    }
    None
}

/// The first `KernelPageSize` of `/proc/self/smaps`.
fn smaps_page_size() -> Option<u32> {
    std::fs::read_to_string("/proc/self/smaps")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("KernelPageSize:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u32>().ok())
        })
        .and_then(|kb| kb.checked_mul(1024))
}

#[cfg(test)]
mod page_size_tests {
    use super::*;

    fn auxv(pairs: &[(usize, usize)]) -> Vec<u8> {
        pairs
            .iter()
            .flat_map(|&(t, v)| [t.to_ne_bytes(), v.to_ne_bytes()])
            .flatten()
            .collect()
    }

    #[test]
    fn auxv_gives_at_pagesz() {
        assert_eq!(
            auxv_page_size(&auxv(&[(33, 0x7fff_0000), (6, 16384), (0, 0)])),
            Some(16384)
        );
        // Missing, after AT_NULL, cut short: none.
        assert_eq!(auxv_page_size(&auxv(&[(33, 1), (0, 0)])), None);
        assert_eq!(auxv_page_size(&auxv(&[(0, 0), (6, 4096)])), None);
        let mut cut = auxv(&[(6, 4096)]);
        cut.pop();
        assert_eq!(auxv_page_size(&cut), None);
        assert_eq!(auxv_page_size(&[]), None);
    }

    #[test]
    fn auxv_and_smaps_agree_here() {
        let from_auxv = std::fs::read("/proc/self/auxv")
            .ok()
            .and_then(|a| auxv_page_size(&a));
        let from_smaps = smaps_page_size();
        assert!(from_auxv.is_some(), "no AT_PAGESZ in /proc/self/auxv");
        assert_eq!(from_auxv, from_smaps);
        assert_eq!(Some(page_size()), from_auxv);
    }
}
