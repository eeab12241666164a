//! The constants and structures of the ABI.
//!
//! Every structure is `repr(C)`, starts with `struct_size` (except
//! `memimg_location`, a fixed value embedded in others), holds only
//! integers and pointers (any bit pattern is a valid value, so a structure
//! can be copied in from C byte for byte), and has no implicit padding.
//! Fields are only ever appended; see the crate docs.

use std::ffi::c_char;

use crate::error::memimg_status;

/// The version of this ABI: the newest version of the function table
/// `memimg_api()` gives. Version 1 is the first.
pub const MEMIMG_ABI_VERSION: u32 = 1;

/// A restore strategy: one of the `MEMIMG_STRATEGY_*` constants.
pub type memimg_strategy = u32;
/// Mmap when the image allows it (plain, chunks stored raw), else eager.
pub const MEMIMG_STRATEGY_AUTO: memimg_strategy = 0;
/// Map raw chunks straight from the file (zero copy, copy-on-write).
pub const MEMIMG_STRATEGY_MMAP: memimg_strategy = 1;
/// Decode every chunk, in parallel, before returning.
pub const MEMIMG_STRATEGY_EAGER: memimg_strategy = 2;
/// Return at once and decode each chunk on its first touch (userfaultfd).
pub const MEMIMG_STRATEGY_LAZY: memimg_strategy = 3;

/// A chunk codec: one of the `MEMIMG_CODEC_*` constants.
pub type memimg_codec = u32;
/// Raw pages (a plain image with raw chunks can be restored by mmap).
pub const MEMIMG_CODEC_NONE: memimg_codec = 0;
/// zstd, at a level given beside it.
pub const MEMIMG_CODEC_ZSTD: memimg_codec = 1;

/// What a region holds: one of the `MEMIMG_KIND_*` constants (the on-disk
/// codes of spec.md).
pub type memimg_region_kind = u32;
/// Anything else (`[vdso]`, `[vvar]` ...).
pub const MEMIMG_KIND_OTHER: memimg_region_kind = 0;
/// The heap.
pub const MEMIMG_KIND_HEAP: memimg_region_kind = 1;
/// A thread stack.
pub const MEMIMG_KIND_STACK: memimg_region_kind = 2;
/// Executable code.
pub const MEMIMG_KIND_CODE: memimg_region_kind = 3;
/// Anonymous memory.
pub const MEMIMG_KIND_ANONYMOUS: memimg_region_kind = 4;
/// A file mapping.
pub const MEMIMG_KIND_FILE_BACKED: memimg_region_kind = 5;
/// A guard page or reserved gap.
pub const MEMIMG_KIND_GUARD: memimg_region_kind = 6;

/// Protection bits of a region, as Linux's `PROT_*`.
pub const MEMIMG_PROT_READ: u32 = 1;
/// Writable.
pub const MEMIMG_PROT_WRITE: u32 = 2;
/// Executable.
pub const MEMIMG_PROT_EXEC: u32 = 4;

/// State of an extent (a run of pages): one of the `MEMIMG_EXTENT_*`
/// constants.
pub type memimg_extent_kind = u32;
/// Stored in a chunk.
pub const MEMIMG_EXTENT_DATA: memimg_extent_kind = 0;
/// All-zero pages, not stored.
pub const MEMIMG_EXTENT_ZERO: memimg_extent_kind = 1;
/// Pages that were not captured.
pub const MEMIMG_EXTENT_ABSENT: memimg_extent_kind = 2;
/// The parent's pages at the same addresses (format 1.1, an incremental
/// image): they are read through the image's parent.
pub const MEMIMG_EXTENT_IN_PARENT: memimg_extent_kind = 3;

/// The verdict of a verify: one of the `MEMIMG_VERIFY_*` constants.
pub type memimg_verdict = u32;
/// Every check passed.
pub const MEMIMG_VERIFY_INTACT: memimg_verdict = 0;
/// Damage was found: see the report's problems.
pub const MEMIMG_VERIFY_DAMAGED: memimg_verdict = 1;
/// The image could not be checked (not an image, unsupported, wrong key,
/// unreadable): see the report's fatal error.
pub const MEMIMG_VERIFY_UNCHECKED: memimg_verdict = 2;

/// `memimg_location.present`: `offset` is set.
pub const MEMIMG_LOCATION_OFFSET: u32 = 1;
/// `memimg_location.present`: `region` is set.
pub const MEMIMG_LOCATION_REGION: u32 = 2;
/// `memimg_location.present`: `chunk` is set.
pub const MEMIMG_LOCATION_CHUNK: u32 = 4;
/// `memimg_location.present`: `addr` is set.
pub const MEMIMG_LOCATION_ADDR: u32 = 8;

/// `memimg_restore_options.flags`: check the validation tag and data.
pub const MEMIMG_RESTORE_CHECK_VALIDATION: u32 = 1;

/// `memimg_verify_options.flags`: decode every chunk (decrypt, decompress)
/// and check its raw-content checksum; needs the key of an encrypted image.
pub const MEMIMG_VERIFY_DECODE: u32 = 1;

/// `memimg_header_info.flags`: the image is encrypted.
pub const MEMIMG_HEADER_ENCRYPTED: u32 = 1;
/// `memimg_header_info.flags`: the index is readable (plain, or opened with
/// its key): regions and extents can be listed.
pub const MEMIMG_HEADER_UNLOCKED: u32 = 2;
/// `memimg_header_info.flags`: the image carries validation data.
pub const MEMIMG_HEADER_HAS_VALIDATION: u32 = 4;
/// `memimg_header_info.flags`: the image carries process facts.
pub const MEMIMG_HEADER_HAS_PROCESS: u32 = 8;
/// `memimg_header_info.flags`: the process facts include a pid.
pub const MEMIMG_HEADER_HAS_PID: u32 = 16;

/// A structure of this ABI, named for `memimg_struct_size()`: one of
/// the `MEMIMG_STRUCT_*` constants.
pub type memimg_struct_id = u32;
/// `struct memimg_api`.
pub const MEMIMG_STRUCT_API: memimg_struct_id = 0;
/// `struct memimg_location`.
pub const MEMIMG_STRUCT_LOCATION: memimg_struct_id = 1;
/// `struct memimg_error_info`.
pub const MEMIMG_STRUCT_ERROR_INFO: memimg_struct_id = 2;
/// `struct memimg_region_spec`.
pub const MEMIMG_STRUCT_REGION_SPEC: memimg_struct_id = 3;
/// `struct memimg_write_stats`.
pub const MEMIMG_STRUCT_WRITE_STATS: memimg_struct_id = 4;
/// `struct memimg_restore_options`.
pub const MEMIMG_STRUCT_RESTORE_OPTIONS: memimg_struct_id = 5;
/// `struct memimg_restore_info`.
pub const MEMIMG_STRUCT_RESTORE_INFO: memimg_struct_id = 6;
/// `struct memimg_lazy_stats`.
pub const MEMIMG_STRUCT_LAZY_STATS: memimg_struct_id = 7;
/// `struct memimg_region_info`.
pub const MEMIMG_STRUCT_REGION_INFO: memimg_struct_id = 8;
/// `struct memimg_header_info`.
pub const MEMIMG_STRUCT_HEADER_INFO: memimg_struct_id = 9;
/// `struct memimg_extent_info`.
pub const MEMIMG_STRUCT_EXTENT_INFO: memimg_struct_id = 10;
/// `struct memimg_verify_options`.
pub const MEMIMG_STRUCT_VERIFY_OPTIONS: memimg_struct_id = 11;
/// `struct memimg_report_info`.
pub const MEMIMG_STRUCT_REPORT_INFO: memimg_struct_id = 12;
/// `struct memimg_problem`.
pub const MEMIMG_STRUCT_PROBLEM: memimg_struct_id = 13;

/// Where in an image a problem lies. A fixed value, embedded in other
/// structures: it never grows. Each field is meaningful only when its
/// `MEMIMG_LOCATION_*` bit is set in `present`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct memimg_location {
    /// Byte offset in the file.
    pub offset: u64,
    /// Chunk number (its position in the chunk map).
    pub chunk: u64,
    /// Virtual address involved.
    pub addr: u64,
    /// Index of the region in the image's region table.
    pub region: u32,
    /// `MEMIMG_LOCATION_*` bits: which fields are set.
    pub present: u32,
}

impl From<img::Location> for memimg_location {
    fn from(l: img::Location) -> Self {
        let mut out = memimg_location::default();
        if let Some(o) = l.offset {
            out.offset = o;
            out.present |= MEMIMG_LOCATION_OFFSET;
        }
        if let Some(r) = l.region {
            out.region = r;
            out.present |= MEMIMG_LOCATION_REGION;
        }
        if let Some(c) = l.chunk {
            out.chunk = c;
            out.present |= MEMIMG_LOCATION_CHUNK;
        }
        if let Some(a) = l.addr {
            out.addr = a;
            out.present |= MEMIMG_LOCATION_ADDR;
        }
        out
    }
}

/// The last error of the calling thread, filled by
/// `memimg_last_error()`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct memimg_error_info {
    /// Set by the caller: `sizeof(struct memimg_error_info)`.
    pub struct_size: usize,
    /// The message, NUL-terminated: the text the Rust error prints, its
    /// location first (`offset 0x2000, chunk 3: stored checksum mismatch
    /// ...`). Owned by the library; valid until the next failing call on
    /// this thread. An empty string when no call has failed.
    pub message: *const c_char,
    /// Where in the image, when the error comes from an image's bytes.
    pub location: memimg_location,
    /// The status the failing call returned; `MEMIMG_OK` when none failed.
    pub status: memimg_status,
    /// Zero.
    pub reserved: u32,
}

/// A region of this process's memory to persist, for
/// `memimg_persister_add_region()`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct memimg_region_spec {
    /// Set by the caller: `sizeof(struct memimg_region_spec)`.
    pub struct_size: usize,
    /// Start address: a multiple of the page size.
    pub addr: u64,
    /// Length in bytes: a non-zero multiple of the page size.
    pub len: u64,
    /// The region's name, NUL-terminated UTF-8 (copied); NULL for none.
    pub name: *const c_char,
    /// What the region holds: a `MEMIMG_KIND_*` constant.
    pub kind: memimg_region_kind,
    /// The protection to restore it with: `MEMIMG_PROT_*` bits. The memory
    /// itself must be readable when the image is written.
    pub prot: u32,
}

/// What writing an image produced, filled by
/// `memimg_persister_write()`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct memimg_write_stats {
    /// Set by the caller: `sizeof(struct memimg_write_stats)`.
    pub struct_size: usize,
    /// Regions written.
    pub regions: u64,
    /// Chunks written.
    pub chunks: u64,
    /// Bytes of non-zero pages (the raw size of all chunks).
    pub data_bytes: u64,
    /// Stored bytes of all chunks.
    pub stored_bytes: u64,
    /// Pages recorded as zero.
    pub zero_pages: u64,
    /// Pages recorded as not captured.
    pub absent_pages: u64,
    /// Total bytes of the file.
    pub file_len: u64,
    /// The new image's random id.
    pub image_id: [u8; 16],
}

/// How to restore, for `memimg_restore()`. A NULL pointer instead of
/// this structure means: strategy auto, no key, no validation check.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct memimg_restore_options {
    /// Set by the caller: `sizeof(struct memimg_restore_options)`.
    pub struct_size: usize,
    /// The key of an encrypted image; NULL for none.
    pub key: *const crate::key::memimg_key,
    /// The validation tag the image must carry (with
    /// `MEMIMG_RESTORE_CHECK_VALIDATION`).
    pub validation_tag: *const u8,
    /// Its length in bytes.
    pub validation_tag_len: usize,
    /// The validation data the image must carry (with
    /// `MEMIMG_RESTORE_CHECK_VALIDATION`).
    pub validation_data: *const u8,
    /// Its length in bytes.
    pub validation_data_len: usize,
    /// A `MEMIMG_STRATEGY_*` constant.
    pub strategy: memimg_strategy,
    /// `MEMIMG_RESTORE_*` bits.
    pub flags: u32,
}

/// Facts of a restore, filled by `memimg_restored_info()`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct memimg_restore_info {
    /// Set by the caller: `sizeof(struct memimg_restore_info)`.
    pub struct_size: usize,
    /// Time from the call to its return, in nanoseconds.
    pub elapsed_ns: u64,
    /// Regions mapped.
    pub region_count: usize,
    /// The strategy used (never `MEMIMG_STRATEGY_AUTO`).
    pub strategy: memimg_strategy,
    /// 1 when a lazy restore's fault handler is still running (until
    /// `memimg_restored_finish()` or free), else 0.
    pub lazy_running: u32,
}

/// What a lazy restore's fault handler has done, filled by
/// `memimg_restored_stats()` and `memimg_restored_finish()`.
/// All zero for a restore that was not lazy.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct memimg_lazy_stats {
    /// Set by the caller: `sizeof(struct memimg_lazy_stats)`.
    pub struct_size: usize,
    /// Page faults served.
    pub faults: u64,
    /// Pieces (chunks or zero runs) filled, by fault or prefetch.
    pub units_done: u64,
    /// Pieces in all.
    pub units_total: u64,
    /// Bytes decoded and copied in.
    pub bytes_copied: u64,
    /// The first chunk that failed to decode (its range was made
    /// inaccessible, so a touch raises SIGSEGV rather than reading wrong
    /// bytes), NUL-terminated; NULL when none did. Owned by the restore
    /// handle; valid until the handle is freed.
    pub error: *const c_char,
    /// 1 once the handler has filled every page and stopped.
    pub finished: u32,
    /// Zero.
    pub reserved: u32,
}

/// A region, filled by `memimg_image_region()` (a region of an
/// image) and `memimg_restored_region()` (a region mapped by a
/// restore, with no extents).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct memimg_region_info {
    /// Set by the caller: `sizeof(struct memimg_region_info)`.
    pub struct_size: usize,
    /// Start address.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// Offset in the mapped file, for file-backed regions.
    pub file_offset: u64,
    /// Device of the mapped file (`major << 32 | minor`).
    pub dev: u64,
    /// Inode of the mapped file.
    pub inode: u64,
    /// The name as stored (bytes, not NUL-terminated; may be empty). Owned
    /// by the handle; valid until it is freed.
    pub name: *const u8,
    /// Its length.
    pub name_len: usize,
    /// Its position in the region table.
    pub index: u32,
    /// A `MEMIMG_KIND_*` constant.
    pub kind: memimg_region_kind,
    /// `MEMIMG_PROT_*` bits.
    pub prot: u32,
    /// 1 for a shared mapping, 0 for a private one.
    pub shared: u32,
    /// Its first extent (an index for `memimg_image_extent()`).
    pub first_extent: u32,
    /// Its number of extents; 0 when recorded with no data.
    pub extent_count: u32,
}

/// The header of an image, filled by `memimg_image_header()`. The
/// byte strings are not NUL-terminated; they are owned by the image handle
/// and valid until it is freed. A string that is absent has length 0.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct memimg_header_info {
    /// Set by the caller: `sizeof(struct memimg_header_info)`.
    pub struct_size: usize,
    /// Incompatible feature bits.
    pub incompat_features: u64,
    /// Read-only-compatible feature bits.
    pub ro_compat_features: u64,
    /// Compatible feature bits.
    pub compat_features: u64,
    /// Creation time: seconds since the Unix epoch.
    pub created_secs: i64,
    /// Length of the file in bytes.
    pub file_len: u64,
    /// Chunks in the file (known without a key).
    pub chunk_count: u64,
    /// Random id of the image.
    pub image_id: [u8; 16],
    /// Name and version of the program that wrote it.
    pub producer: *const u8,
    /// Its length.
    pub producer_len: usize,
    /// Application validation tag.
    pub validation_tag: *const u8,
    /// Its length.
    pub validation_tag_len: usize,
    /// Application validation data.
    pub validation_data: *const u8,
    /// Its length.
    pub validation_data_len: usize,
    /// `/proc/PID/comm` of a captured process.
    pub comm: *const u8,
    /// Its length.
    pub comm_len: usize,
    /// Its command line, NUL-separated.
    pub cmdline: *const u8,
    /// Its length.
    pub cmdline_len: usize,
    /// The path of its executable.
    pub exe: *const u8,
    /// Its length.
    pub exe_len: usize,
    /// The GNU build id of its executable, raw.
    pub build_id: *const u8,
    /// Its length.
    pub build_id_len: usize,
    /// Kernel release of the capturing machine.
    pub kernel_release: *const u8,
    /// Its length.
    pub kernel_release_len: usize,
    /// Format major version.
    pub version_major: u32,
    /// Format minor version.
    pub version_minor: u32,
    /// Image page size in bytes.
    pub page_size: u32,
    /// Largest raw chunk in bytes.
    pub chunk_size: u32,
    /// Creation time: nanoseconds.
    pub created_nanos: u32,
    /// Architecture of the captured machine, as ELF `e_machine` (62 x86-64).
    pub machine_arch: u32,
    /// Its byte order: 1 little-endian, 2 big-endian (ELF `EI_DATA`).
    pub machine_endian: u32,
    /// Its pointer width in bytes.
    pub machine_ptr_bytes: u32,
    /// Its page size in bytes.
    pub machine_page_size: u32,
    /// The captured process's pid (with `MEMIMG_HEADER_HAS_PID`).
    pub pid: u32,
    /// `MEMIMG_HEADER_*` bits.
    pub flags: u32,
    /// Zero.
    pub reserved: u32,
}

/// An extent: a run of pages of one region in one state, filled by
/// `memimg_image_extent()`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct memimg_extent_info {
    /// Set by the caller: `sizeof(struct memimg_extent_info)`.
    pub struct_size: usize,
    /// Address of the first page.
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
    /// Chunk number (data extents).
    pub chunk: u64,
    /// XXH3-128 of the raw pages, little-endian (data extents).
    pub raw_checksum: [u8; 16],
    /// Number of pages.
    pub page_count: u32,
    /// The owning region's index.
    pub region: u32,
    /// A `MEMIMG_EXTENT_*` constant.
    pub kind: memimg_extent_kind,
    /// The chunk's codec (data extents): a `MEMIMG_CODEC_*` constant.
    pub codec: memimg_codec,
}

/// How deep to verify, for `memimg_verify()`. A NULL pointer instead
/// of this structure means no flags.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct memimg_verify_options {
    /// Set by the caller: `sizeof(struct memimg_verify_options)`.
    pub struct_size: usize,
    /// `MEMIMG_VERIFY_DECODE` or 0.
    pub flags: u32,
    /// Zero.
    pub reserved: u32,
}

/// The summary of a verify report, filled by `memimg_report_info()`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct memimg_report_info {
    /// Set by the caller: `sizeof(struct memimg_report_info)`.
    pub struct_size: usize,
    /// Chunks whose stored bytes were checked.
    pub chunks_checked: u64,
    /// Chunks decoded and checked against their raw-content checksum.
    pub chunks_decoded: u64,
    /// Stored bytes read.
    pub bytes_checked: u64,
    /// Problems found (see `memimg_report_problem()`).
    pub problem_count: usize,
    /// Why the image could not be checked (with `MEMIMG_VERIFY_UNCHECKED`),
    /// NUL-terminated; NULL otherwise. Owned by the report.
    pub fatal_message: *const c_char,
    /// Where, for the fatal error.
    pub fatal_location: memimg_location,
    /// A `MEMIMG_VERIFY_*` constant.
    pub verdict: memimg_verdict,
    /// The status of the fatal error; `MEMIMG_OK` when there is none.
    pub fatal_status: memimg_status,
    /// 1 when the index was readable (plain image, or the key was given).
    pub unlocked: u32,
    /// Zero.
    pub reserved: u32,
}

/// One problem of a verify report, filled by
/// `memimg_report_problem()`. The strings are owned by the report.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct memimg_problem {
    /// Set by the caller: `sizeof(struct memimg_problem)`.
    pub struct_size: usize,
    /// What is wrong, NUL-terminated, without the location.
    pub message: *const c_char,
    /// The location then the message, as a line to print.
    pub text: *const c_char,
    /// Where.
    pub location: memimg_location,
    /// What kind of problem: `MEMIMG_E_CHECKSUM`, `MEMIMG_E_TRUNCATED` ...
    pub status: memimg_status,
    /// Zero.
    pub reserved: u32,
}
