//! Arguments from C: strings, paths and byte ranges, checked.

use std::ffi::{c_char, CStr, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::Failure;

/// A NUL-terminated string from C, as bytes.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that outlives `'a`.
pub(crate) unsafe fn c_bytes<'a>(p: *const c_char, arg: &str) -> Result<&'a [u8], Failure> {
    if p.is_null() {
        return Err(Failure::invalid(format!("{arg} is NULL")));
    }
    // SAFETY: p is not NULL and, by contract, NUL-terminated.
    Ok(unsafe { CStr::from_ptr(p) }.to_bytes())
}

/// A path from C (bytes, as the kernel takes them).
///
/// # Safety
/// As [`c_bytes`].
pub(crate) unsafe fn path<'a>(p: *const c_char, arg: &str) -> Result<&'a Path, Failure> {
    // SAFETY: forwarded contract.
    let b = unsafe { c_bytes(p, arg)? };
    if b.is_empty() {
        return Err(Failure::invalid(format!("{arg} is an empty path")));
    }
    Ok(Path::new(OsStr::from_bytes(b)))
}

/// A UTF-8 string from C; NULL gives `""`.
///
/// # Safety
/// As [`c_bytes`].
pub(crate) unsafe fn opt_utf8<'a>(p: *const c_char, arg: &str) -> Result<&'a str, Failure> {
    if p.is_null() {
        return Ok("");
    }
    // SAFETY: forwarded contract.
    let b = unsafe { c_bytes(p, arg)? };
    std::str::from_utf8(b).map_err(|e| Failure::invalid(format!("{arg} is not UTF-8: {e}")))
}

/// `len` bytes at `p`; NULL is allowed when `len` is 0.
///
/// # Safety
/// `p` is NULL or points to `len` readable bytes that outlive `'a`.
pub(crate) unsafe fn bytes<'a>(p: *const u8, len: usize, arg: &str) -> Result<&'a [u8], Failure> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(Failure::invalid(format!(
            "{arg} is NULL but its length is {len}"
        )));
    }
    if isize::try_from(len).is_err() {
        return Err(Failure::invalid(format!(
            "{arg}'s length {len} is not a length"
        )));
    }
    // SAFETY: p is not NULL and, by contract, has len readable bytes; len
    // fits isize.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// `len` writable bytes at `p`; NULL is allowed when `len` is 0.
///
/// # Safety
/// `p` is NULL or points to `len` writable bytes that no one else uses
/// during `'a`.
pub(crate) unsafe fn bytes_mut<'a>(
    p: *mut u8,
    len: usize,
    arg: &str,
) -> Result<&'a mut [u8], Failure> {
    if len == 0 {
        return Ok(&mut []);
    }
    if p.is_null() {
        return Err(Failure::invalid(format!(
            "{arg} is NULL but its length is {len}"
        )));
    }
    if isize::try_from(len).is_err() {
        return Err(Failure::invalid(format!(
            "{arg}'s length {len} is not a length"
        )));
    }
    // SAFETY: as in bytes, and writable and unaliased by contract.
    Ok(unsafe { std::slice::from_raw_parts_mut(p, len) })
}

/// Writes `v` to `*out` after checking `out`.
///
/// # Safety
/// `out` is NULL or valid for a write of a `T`.
pub(crate) unsafe fn put<T>(out: *mut T, v: T, arg: &str) -> Result<(), Failure> {
    if out.is_null() {
        return Err(Failure::invalid(format!("{arg} is NULL")));
    }
    // SAFETY: not NULL and, by contract, writable.
    unsafe { out.write(v) };
    Ok(())
}

/// The element `index` of `items`, or `MEMIMG_E_OUT_OF_RANGE`.
pub(crate) fn nth<'a, T>(items: &'a [T], index: usize, what: &str) -> Result<&'a T, Failure> {
    items.get(index).ok_or_else(|| {
        Failure::argument(
            crate::error::memimg_status::MEMIMG_E_OUT_OF_RANGE,
            format!("{what} {index} does not exist: there are {}", items.len()),
        )
    })
}
