//! Extensible structures: `struct_size` first, fields only appended.
//!
//! A structure the caller fills (options) is copied in with [`read_in`]: the
//! bytes the caller has, up to the size this library knows; the rest is
//! zero, which every appended field takes as its default. Bytes the caller
//! has beyond that must be zero (a field this library does not know, left
//! at its default), or the call fails with `MEMIMG_E_UNKNOWN_FIELDS`: the
//! rule of Linux's `copy_struct_from_user` (`openat2`, `clone3`).
//!
//! A structure the library fills (results) is copied out with [`write_out`]:
//! the bytes the caller has room for, up to the size this library knows;
//! bytes beyond that are zeroed, so a caller built against a newer header
//! reads its unknown fields as zero.

use std::mem::size_of;

use crate::error::{memimg_status, Failure};
use crate::types::*;

/// The largest `struct_size` taken: a guard against a garbage size making
/// the library read or write far past a caller's structure.
pub(crate) const MAX_STRUCT_SIZE: usize = 4096;

/// A structure of the ABI.
///
/// # Safety
/// The implementing type is `repr(C)` with no implicit padding, its first
/// field is a `usize` `struct_size`, and every field is an integer, a raw
/// pointer, an array of these, a `memimg_location` or a `memimg_status`, so
/// that all-zero bytes are a valid value and a value can be copied out byte
/// for byte.
pub(crate) unsafe trait Extensible: Copy {
    /// The size of the structure's first version: the smallest
    /// `struct_size` taken. When fields are appended it stays the size of
    /// version 1 (`offset_of!` of the first appended field).
    const V1_SIZE: usize;
    /// A value with every field zero.
    fn zeroed() -> Self;
    /// Sets `struct_size`.
    fn set_size(&mut self, size: usize);
}

macro_rules! extensible {
    ($($t:ty),* $(,)?) => {$(
        // SAFETY: every listed type is a repr(C) struct of types.rs whose
        // first field is `struct_size: usize` and whose other fields are
        // integers, pointers and arrays of them, location or status.
        unsafe impl Extensible for $t {
            const V1_SIZE: usize = size_of::<$t>();
            fn zeroed() -> Self {
                // SAFETY: all-zero bytes are a valid value of each field
                // (0, NULL, MEMIMG_OK, an empty location).
                unsafe { std::mem::zeroed() }
            }
            fn set_size(&mut self, size: usize) {
                self.struct_size = size;
            }
        }
    )*};
}

/// A structure the caller fills and the library copies in.
///
/// # Safety
/// Every field is an integer, a raw pointer or an array of these (no
/// `memimg_status`, whose Rust enum would not take every bit pattern), so
/// any bytes from C form a valid value.
pub(crate) unsafe trait FromC: Extensible {}

// SAFETY: these hold only integers and pointers (see types.rs).
unsafe impl FromC for memimg_region_spec {}
// SAFETY: as above.
unsafe impl FromC for memimg_restore_options {}
// SAFETY: as above.
unsafe impl FromC for memimg_verify_options {}

extensible!(
    memimg_error_info,
    memimg_region_spec,
    memimg_write_stats,
    memimg_restore_options,
    memimg_restore_info,
    memimg_lazy_stats,
    memimg_region_info,
    memimg_header_info,
    memimg_extent_info,
    memimg_verify_options,
    memimg_report_info,
    memimg_problem,
);

/// Reads the caller's `struct_size` at `p` and checks it.
///
/// # Safety
/// `p` is NULL or points to at least a `usize`.
unsafe fn caller_size<T: Extensible>(p: *const T, arg: &str) -> Result<usize, Failure> {
    if p.is_null() {
        return Err(Failure::invalid(format!("{arg} is NULL")));
    }
    // SAFETY: p is not NULL and, by the caller's contract, points to a
    // structure of the ABI, whose first field is a size_t.
    let size = unsafe { p.cast::<usize>().read_unaligned() };
    if size < T::V1_SIZE {
        return Err(Failure::invalid(format!(
            "{arg}->struct_size is {size}, less than the {} bytes of the first version of this structure (set it to sizeof the structure)",
            T::V1_SIZE
        )));
    }
    if size > MAX_STRUCT_SIZE {
        return Err(Failure::invalid(format!(
            "{arg}->struct_size is {size}: not the size of a structure (at most {MAX_STRUCT_SIZE})"
        )));
    }
    Ok(size)
}

/// Copies in a structure the caller filled.
///
/// # Safety
/// `p` is NULL or points to `struct_size` readable bytes.
pub(crate) unsafe fn read_in<T: FromC>(p: *const T, arg: &str) -> Result<T, Failure> {
    // SAFETY: forwarded contract.
    let size = unsafe { caller_size(p, arg)? };
    let ours = size_of::<T>();
    let mut v = T::zeroed();
    // SAFETY: the caller has `size` readable bytes at p; v has `ours`
    // writable bytes; any bytes form a valid T (FromC).
    unsafe {
        std::ptr::copy_nonoverlapping(
            p.cast::<u8>(),
            (&mut v as *mut T).cast::<u8>(),
            size.min(ours),
        );
    }
    if size > ours {
        // SAFETY: bytes ours..size are within the caller's structure.
        let tail = unsafe { std::slice::from_raw_parts(p.cast::<u8>().add(ours), size - ours) };
        if let Some(i) = tail.iter().position(|&b| b != 0) {
            return Err(Failure::argument(
                memimg_status::MEMIMG_E_UNKNOWN_FIELDS,
                format!(
                    "{arg} sets byte {} of the structure, past the {ours} bytes this library knows (a newer header asks for something this library cannot do)",
                    ours + i
                ),
            ));
        }
    }
    v.set_size(size);
    Ok(v)
}

/// Copies out a structure for the caller.
///
/// # Safety
/// `p` is NULL or points to `struct_size` writable bytes.
pub(crate) unsafe fn write_out<T: Extensible>(
    p: *mut T,
    mut v: T,
    arg: &str,
) -> Result<(), Failure> {
    // SAFETY: forwarded contract.
    let size = unsafe { caller_size(p, arg)? };
    let ours = size_of::<T>();
    v.set_size(size);
    // SAFETY: v has `ours` readable bytes (no padding: see types.rs); the
    // caller has `size` writable bytes at p.
    unsafe {
        std::ptr::copy_nonoverlapping(
            (&v as *const T).cast::<u8>(),
            p.cast::<u8>(),
            size.min(ours),
        );
        if size > ours {
            std::ptr::write_bytes(p.cast::<u8>().add(ours), 0, size - ours);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_caller_gets_the_fields_it_knows() {
        // A caller whose header had only the first two fields of
        // memimg_verify_options would pass 12 bytes; we only take V1 or
        // more, so simulate with a larger known struct: write_out copies
        // only struct_size bytes.
        let mut buf = [0xAAu8; 64];
        let size = size_of::<memimg_verify_options>();
        buf[..8].copy_from_slice(&size.to_ne_bytes());
        let v = memimg_verify_options {
            struct_size: 0,
            flags: 7,
            reserved: 0,
        };
        // SAFETY: buf has 64 writable bytes, more than struct_size.
        unsafe { write_out(buf.as_mut_ptr().cast::<memimg_verify_options>(), v, "o") }.unwrap();
        assert_eq!(&buf[8..12], &7u32.to_ne_bytes());
        assert!(
            buf[size..].iter().all(|&b| b == 0xAA),
            "wrote past struct_size"
        );
    }

    #[test]
    fn a_newer_caller_gets_zeros_past_what_we_know() {
        let mut buf = [0xAAu8; 64];
        let size = size_of::<memimg_verify_options>() + 8;
        buf[..8].copy_from_slice(&size.to_ne_bytes());
        let v = memimg_verify_options {
            struct_size: 0,
            flags: 1,
            reserved: 0,
        };
        // SAFETY: buf has 64 writable bytes, more than struct_size.
        unsafe { write_out(buf.as_mut_ptr().cast::<memimg_verify_options>(), v, "o") }.unwrap();
        assert!(buf[size - 8..size].iter().all(|&b| b == 0));
        assert!(buf[size..].iter().all(|&b| b == 0xAA));
    }

    #[test]
    fn unknown_fields_must_be_zero() {
        let mut buf = [0u8; 32];
        let size = size_of::<memimg_verify_options>() + 8;
        buf[..8].copy_from_slice(&size.to_ne_bytes());
        buf[8..12].copy_from_slice(&1u32.to_ne_bytes());
        let p = buf.as_ptr().cast::<memimg_verify_options>();
        // SAFETY: buf holds struct_size readable bytes.
        let v = unsafe { read_in(p, "o") }.unwrap();
        assert_eq!(v.flags, 1);
        buf[size - 1] = 1;
        let p = buf.as_ptr().cast::<memimg_verify_options>();
        // SAFETY: as above.
        let e = unsafe { read_in(p, "o") }.unwrap_err();
        assert_eq!(e.status, memimg_status::MEMIMG_E_UNKNOWN_FIELDS);
    }

    #[test]
    fn bad_sizes_are_refused() {
        for size in [0usize, 8, 15, MAX_STRUCT_SIZE + 1, usize::MAX] {
            let mut buf = [0u8; 16];
            buf[..8].copy_from_slice(&size.to_ne_bytes());
            let p = buf.as_ptr().cast::<memimg_verify_options>();
            // SAFETY: the size is refused before any byte past it is read.
            let e = unsafe { read_in(p, "o") }.unwrap_err();
            assert_eq!(e.status, memimg_status::MEMIMG_E_INVALID_ARGUMENT, "{size}");
        }
        // SAFETY: NULL is checked first.
        let e = unsafe { read_in(std::ptr::null::<memimg_verify_options>(), "o") }.unwrap_err();
        assert_eq!(e.status, memimg_status::MEMIMG_E_INVALID_ARGUMENT);
    }
}
