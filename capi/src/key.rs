//! Keys: raw bytes, a key file or a passphrase file, held in storage that
//! is zeroized when the handle is freed.

use std::ffi::c_char;

use crate::args;
use crate::error::{guard, memimg_status};
use crate::handle::{free_handle, give, Handle};

/// A key that encrypts or opens an image. Opaque: made by
/// `memimg_key_from_bytes()`, `memimg_key_from_file()` or
/// `memimg_key_from_passphrase_file()`, freed by `memimg_key_free()`. The
/// key material is zeroized when it is freed. Functions that take a key
/// copy it, so it may be freed as soon as they return.
pub struct memimg_key {
    pub(crate) key: img::Key,
}

impl Handle for memimg_key {
    const NAME: &'static str = "memimg_key";
}

/// Makes a key from `len` raw bytes (32), copied straight into zeroized
/// storage; the caller's buffer stays the caller's to wipe.
///
/// Errors: `MEMIMG_E_INVALID_ARGUMENT` when `bytes` or `out` is NULL or
/// `len` is not 32.
#[no_mangle]
pub unsafe extern "C" fn memimg_key_from_bytes(
    bytes: *const u8,
    len: usize,
    out: *mut *mut memimg_key,
) -> memimg_status {
    guard("memimg_key_from_bytes", || {
        // SAFETY: out is checked by give; bytes has len bytes by contract.
        unsafe {
            give(out, || {
                let b = args::bytes(bytes, len, "bytes")?;
                if b.is_empty() {
                    return Err(crate::error::Failure::invalid(
                        "bytes is empty: a key is 32 bytes",
                    ));
                }
                Ok(memimg_key {
                    key: img::Key::from_key_bytes(b)
                        .map_err(|e| crate::error::Failure::invalid(e.message().to_string()))?,
                })
            })
        }
    })
}

/// Reads a key file: a regular file of exactly 32 bytes (a device, a FIFO
/// or a directory is refused before anything is read).
///
/// Errors: `MEMIMG_E_IO` when it cannot be read, `MEMIMG_E_INVALID_ARGUMENT`
/// when it is not a key file or an argument is NULL.
#[no_mangle]
pub unsafe extern "C" fn memimg_key_from_file(
    path: *const c_char,
    out: *mut *mut memimg_key,
) -> memimg_status {
    guard("memimg_key_from_file", || {
        // SAFETY: out is checked by give; path is a C string by contract.
        unsafe {
            give(out, || {
                let p = args::path(path, "path")?;
                Ok(memimg_key {
                    key: img::Key::from_key_file(p)?,
                })
            })
        }
    })
}

/// Reads a passphrase file: a regular file of at most 4 KiB; one trailing
/// newline is not part of the passphrase. New images get Argon2id with the
/// default cost (64 MiB, 3 passes).
///
/// Errors: as `memimg_key_from_file()`.
#[no_mangle]
pub unsafe extern "C" fn memimg_key_from_passphrase_file(
    path: *const c_char,
    out: *mut *mut memimg_key,
) -> memimg_status {
    guard("memimg_key_from_passphrase_file", || {
        // SAFETY: out is checked by give; path is a C string by contract.
        unsafe {
            give(out, || {
                let p = args::path(path, "path")?;
                Ok(memimg_key {
                    key: img::Key::from_passphrase_file(p)?,
                })
            })
        }
    })
}

/// Frees a key and zeroizes its material. NULL is allowed. Freeing a
/// pointer that is not a live key is `MEMIMG_E_INVALID_ARGUMENT` (nothing
/// is freed).
#[no_mangle]
pub unsafe extern "C" fn memimg_key_free(key: *mut memimg_key) -> memimg_status {
    // SAFETY: the handle table checks the pointer before it is freed.
    guard("memimg_key_free", || unsafe { free_handle(key, "key") })
}

/// The key behind an optional handle: NULL is no key.
///
/// # Safety
/// `p` is NULL or a pointer the caller got from this library; no other
/// thread frees it meanwhile.
pub(crate) unsafe fn opt_key<'a>(
    p: *const memimg_key,
    arg: &str,
) -> Result<Option<&'a img::Key>, crate::error::Failure> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: checked against the table of live handles.
    Ok(Some(&unsafe { crate::handle::handle_ref(p, arg)? }.key))
}
