//! The versioned function table, the ABI version and the structure sizes.

use std::ffi::{c_char, c_void};
use std::mem::size_of;

use crate::error::*;
use crate::image::*;
use crate::key::*;
use crate::persist::*;
use crate::restore::*;
use crate::types::*;
use crate::verify::*;

/// Every function of the ABI, as a table: what `memimg_api()` returns.
///
/// Version 1 is this table. A later version appends functions at the end
/// and never changes or removes one, so a caller built against an older
/// header uses a prefix of a newer library's table. `size` is the size of
/// the table the library has (at least what the caller asked for).
#[repr(C)]
pub struct memimg_api {
    /// `sizeof` the library's table, in bytes.
    pub size: usize,
    /// The library's ABI version (`MEMIMG_ABI_VERSION` of its header).
    pub version: u32,
    /// Zero.
    pub reserved: u32,
    /// See `memimg_abi_version()`.
    pub abi_version: extern "C" fn() -> u32,
    /// See `memimg_library_version()`.
    pub library_version: extern "C" fn() -> *const c_char,
    /// See `memimg_struct_size()`.
    pub struct_size: unsafe extern "C" fn(memimg_struct_id, *mut usize) -> memimg_status,
    /// See `memimg_status_name()`.
    pub status_name: extern "C" fn(i32) -> *const c_char,
    /// See `memimg_last_error()`.
    pub last_error: unsafe extern "C" fn(*mut memimg_error_info) -> memimg_status,
    /// See `memimg_last_error_message()`.
    pub last_error_message: extern "C" fn() -> *const c_char,
    /// See `memimg_key_from_bytes()`.
    pub key_from_bytes:
        unsafe extern "C" fn(*const u8, usize, *mut *mut memimg_key) -> memimg_status,
    /// See `memimg_key_from_file()`.
    pub key_from_file: unsafe extern "C" fn(*const c_char, *mut *mut memimg_key) -> memimg_status,
    /// See `memimg_key_from_passphrase_file()`.
    pub key_from_passphrase_file:
        unsafe extern "C" fn(*const c_char, *mut *mut memimg_key) -> memimg_status,
    /// See `memimg_key_free()`.
    pub key_free: unsafe extern "C" fn(*mut memimg_key) -> memimg_status,
    /// See `memimg_persister_new()`.
    pub persister_new: unsafe extern "C" fn(*mut *mut memimg_persister) -> memimg_status,
    /// See `memimg_persister_free()`.
    pub persister_free: unsafe extern "C" fn(*mut memimg_persister) -> memimg_status,
    /// See `memimg_persister_add_region()`.
    pub persister_add_region:
        unsafe extern "C" fn(*mut memimg_persister, *const memimg_region_spec) -> memimg_status,
    /// See `memimg_persister_set_validation()`.
    pub persister_set_validation: unsafe extern "C" fn(
        *mut memimg_persister,
        *const u8,
        usize,
        *const u8,
        usize,
    ) -> memimg_status,
    /// See `memimg_persister_set_codec()`.
    pub persister_set_codec:
        unsafe extern "C" fn(*mut memimg_persister, memimg_codec, i32) -> memimg_status,
    /// See `memimg_persister_set_key()`.
    pub persister_set_key:
        unsafe extern "C" fn(*mut memimg_persister, *const memimg_key) -> memimg_status,
    /// See `memimg_persister_set_chunk_size()`.
    pub persister_set_chunk_size: unsafe extern "C" fn(*mut memimg_persister, u32) -> memimg_status,
    /// See `memimg_persister_set_workers()`.
    pub persister_set_workers: unsafe extern "C" fn(*mut memimg_persister, u32) -> memimg_status,
    /// See `memimg_persister_write()`.
    pub persister_write: unsafe extern "C" fn(
        *mut memimg_persister,
        *const c_char,
        *mut memimg_write_stats,
    ) -> memimg_status,
    /// See `memimg_restore()`.
    pub restore: unsafe extern "C" fn(
        *const c_char,
        *const memimg_restore_options,
        *mut *mut memimg_restored,
    ) -> memimg_status,
    /// See `memimg_restored_info()`.
    pub restored_info:
        unsafe extern "C" fn(*const memimg_restored, *mut memimg_restore_info) -> memimg_status,
    /// See `memimg_restored_region()`.
    pub restored_region: unsafe extern "C" fn(
        *const memimg_restored,
        usize,
        *mut memimg_region_info,
    ) -> memimg_status,
    /// See `memimg_restored_prefetch()`.
    pub restored_prefetch: unsafe extern "C" fn(*const memimg_restored) -> memimg_status,
    /// See `memimg_restored_stats()`.
    pub restored_stats:
        unsafe extern "C" fn(*const memimg_restored, *mut memimg_lazy_stats) -> memimg_status,
    /// See `memimg_restored_finish()`.
    pub restored_finish:
        unsafe extern "C" fn(*const memimg_restored, *mut memimg_lazy_stats) -> memimg_status,
    /// See `memimg_restored_free()`.
    pub restored_free: unsafe extern "C" fn(*mut memimg_restored) -> memimg_status,
    /// See `memimg_image_open()`.
    pub image_open: unsafe extern "C" fn(
        *const c_char,
        *const memimg_key,
        *mut *mut memimg_image,
    ) -> memimg_status,
    /// See `memimg_image_free()`.
    pub image_free: unsafe extern "C" fn(*mut memimg_image) -> memimg_status,
    /// See `memimg_image_header()`.
    pub image_header:
        unsafe extern "C" fn(*const memimg_image, *mut memimg_header_info) -> memimg_status,
    /// See `memimg_image_region_count()`.
    pub image_region_count: unsafe extern "C" fn(*const memimg_image, *mut usize) -> memimg_status,
    /// See `memimg_image_region()`.
    pub image_region:
        unsafe extern "C" fn(*const memimg_image, usize, *mut memimg_region_info) -> memimg_status,
    /// See `memimg_image_extent_count()`.
    pub image_extent_count: unsafe extern "C" fn(*const memimg_image, *mut usize) -> memimg_status,
    /// See `memimg_image_extent()`.
    pub image_extent:
        unsafe extern "C" fn(*const memimg_image, usize, *mut memimg_extent_info) -> memimg_status,
    /// See `memimg_image_read_at()`.
    pub image_read_at:
        unsafe extern "C" fn(*const memimg_image, u64, *mut c_void, usize) -> memimg_status,
    /// See `memimg_verify()`.
    pub verify: unsafe extern "C" fn(
        *const c_char,
        *const memimg_key,
        *const memimg_verify_options,
        *mut *mut memimg_report,
    ) -> memimg_status,
    /// See `memimg_report_info()`.
    pub report_info:
        unsafe extern "C" fn(*const memimg_report, *mut memimg_report_info) -> memimg_status,
    /// See `memimg_report_problem()`.
    pub report_problem:
        unsafe extern "C" fn(*const memimg_report, usize, *mut memimg_problem) -> memimg_status,
    /// See `memimg_report_text()`.
    pub report_text:
        unsafe extern "C" fn(*const memimg_report, *mut *const c_char) -> memimg_status,
    /// See `memimg_report_free()`.
    pub report_free: unsafe extern "C" fn(*mut memimg_report) -> memimg_status,
}

/// The size of the table of each version: `SIZES[v - 1]`. When version 2
/// appends functions, version 1's entry becomes `offset_of!` its first
/// function.
const SIZES: [usize; MEMIMG_ABI_VERSION as usize] = [size_of::<memimg_api>()];

static API: memimg_api = memimg_api {
    size: size_of::<memimg_api>(),
    version: MEMIMG_ABI_VERSION,
    reserved: 0,
    abi_version: memimg_abi_version,
    library_version: memimg_library_version,
    struct_size: memimg_struct_size,
    status_name: memimg_status_name,
    last_error: memimg_last_error,
    last_error_message: memimg_last_error_message,
    key_from_bytes: memimg_key_from_bytes,
    key_from_file: memimg_key_from_file,
    key_from_passphrase_file: memimg_key_from_passphrase_file,
    key_free: memimg_key_free,
    persister_new: memimg_persister_new,
    persister_free: memimg_persister_free,
    persister_add_region: memimg_persister_add_region,
    persister_set_validation: memimg_persister_set_validation,
    persister_set_codec: memimg_persister_set_codec,
    persister_set_key: memimg_persister_set_key,
    persister_set_chunk_size: memimg_persister_set_chunk_size,
    persister_set_workers: memimg_persister_set_workers,
    persister_write: memimg_persister_write,
    restore: memimg_restore,
    restored_info: memimg_restored_info,
    restored_region: memimg_restored_region,
    restored_prefetch: memimg_restored_prefetch,
    restored_stats: memimg_restored_stats,
    restored_finish: memimg_restored_finish,
    restored_free: memimg_restored_free,
    image_open: memimg_image_open,
    image_free: memimg_image_free,
    image_header: memimg_image_header,
    image_region_count: memimg_image_region_count,
    image_region: memimg_image_region,
    image_extent_count: memimg_image_extent_count,
    image_extent: memimg_image_extent,
    image_read_at: memimg_image_read_at,
    verify: memimg_verify,
    report_info: memimg_report_info,
    report_problem: memimg_report_problem,
    report_text: memimg_report_text,
    report_free: memimg_report_free,
};

/// The table of every function, for a caller built against version
/// `version` of the header whose `struct memimg_api` is `size` bytes:
/// call it as `memimg_api(MEMIMG_ABI_VERSION, sizeof(struct memimg_api))`.
/// The table is static: never freed.
///
/// Returns NULL, with the reason as the last error, when the library is
/// older than `version` (or `version` is 0), or `size` is not the size of
/// that version's table (a caller whose header is newer than the library,
/// or a mismatched header).
#[no_mangle]
pub extern "C" fn memimg_api(version: u32, size: usize) -> *const memimg_api {
    let mut out = std::ptr::null();
    let _ = guard("memimg_api", || {
        let want = usize::try_from(version)
            .ok()
            .and_then(|v| v.checked_sub(1))
            .and_then(|i| SIZES.get(i))
            .ok_or_else(|| {
                Failure::argument(
                    memimg_status::MEMIMG_E_UNSUPPORTED,
                    format!(
                        "ABI version {version} is not one this library has (1 to {MEMIMG_ABI_VERSION})"
                    ),
                )
            })?;
        if size != *want {
            return Err(Failure::invalid(format!(
                "the table of ABI version {version} is {want} bytes, the caller's is {size}: its header does not match its version"
            )));
        }
        out = &API;
        Ok(())
    });
    out
}

/// The ABI version of this library: the newest table `memimg_api()` gives.
/// A program built against header version N runs with any library whose
/// ABI version is N or later.
#[no_mangle]
pub extern "C" fn memimg_abi_version() -> u32 {
    MEMIMG_ABI_VERSION
}

/// The library's name and version (`"memimg-capi 0.1.0"`), NUL-terminated
/// and static.
#[no_mangle]
pub extern "C" fn memimg_library_version() -> *const c_char {
    static V: &str = concat!("memimg-capi ", env!("CARGO_PKG_VERSION"), "\0");
    V.as_ptr().cast()
}

/// Stores in `*size` the size this library gives the structure `id` (a
/// `MEMIMG_STRUCT_*` constant): a program can check that its header and
/// the library agree.
///
/// Errors: `MEMIMG_E_INVALID_ARGUMENT` for an unknown id or a NULL `size`.
#[no_mangle]
pub unsafe extern "C" fn memimg_struct_size(
    id: memimg_struct_id,
    size: *mut usize,
) -> memimg_status {
    guard("memimg_struct_size", || {
        let n = match id {
            MEMIMG_STRUCT_API => size_of::<memimg_api>(),
            MEMIMG_STRUCT_LOCATION => size_of::<memimg_location>(),
            MEMIMG_STRUCT_ERROR_INFO => size_of::<memimg_error_info>(),
            MEMIMG_STRUCT_REGION_SPEC => size_of::<memimg_region_spec>(),
            MEMIMG_STRUCT_WRITE_STATS => size_of::<memimg_write_stats>(),
            MEMIMG_STRUCT_RESTORE_OPTIONS => size_of::<memimg_restore_options>(),
            MEMIMG_STRUCT_RESTORE_INFO => size_of::<memimg_restore_info>(),
            MEMIMG_STRUCT_LAZY_STATS => size_of::<memimg_lazy_stats>(),
            MEMIMG_STRUCT_REGION_INFO => size_of::<memimg_region_info>(),
            MEMIMG_STRUCT_HEADER_INFO => size_of::<memimg_header_info>(),
            MEMIMG_STRUCT_EXTENT_INFO => size_of::<memimg_extent_info>(),
            MEMIMG_STRUCT_VERIFY_OPTIONS => size_of::<memimg_verify_options>(),
            MEMIMG_STRUCT_REPORT_INFO => size_of::<memimg_report_info>(),
            MEMIMG_STRUCT_PROBLEM => size_of::<memimg_problem>(),
            n => return Err(Failure::invalid(format!("{n} is not a MEMIMG_STRUCT_*"))),
        };
        // SAFETY: checked for NULL by put; writable by contract.
        unsafe { crate::args::put(size, n, "size") }
    })
}
