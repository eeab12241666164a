//! Status codes, the thread-local last error, and the guard every function
//! body runs under (no panic crosses the boundary).

use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use img::ErrorKind;
use memimg_capture::{PersistError, RestoreError};

use crate::types::{memimg_error_info, memimg_location};

/// What a function returns. Codes are never renumbered; new ones are
/// appended. `MEMIMG_OK` is 0 and every error is positive.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum memimg_status {
    /// Success.
    #[default]
    MEMIMG_OK = 0,
    /// An argument is NULL where one is needed, a constant or length is out
    /// of range, a handle is not live, or a `struct_size` is too small.
    MEMIMG_E_INVALID_ARGUMENT = 1,
    /// A bug in the library: a Rust panic, caught at the boundary. The
    /// message says where it happened.
    MEMIMG_E_PANIC = 2,
    /// A system call or file operation failed (a missing file, say).
    MEMIMG_E_IO = 3,
    /// The file does not start with the memimg magic.
    MEMIMG_E_NOT_AN_IMAGE = 4,
    /// A newer major version, or a feature this library does not know.
    MEMIMG_E_UNSUPPORTED = 5,
    /// Damage: the file ends before a structure it must hold.
    MEMIMG_E_TRUNCATED = 6,
    /// Damage: a checksum does not match the bytes it covers.
    MEMIMG_E_CHECKSUM = 7,
    /// Damage or tampering: an authentication tag does not match.
    MEMIMG_E_AUTHENTICATION = 8,
    /// Damage: a field holds a value the format does not allow.
    MEMIMG_E_MALFORMED = 9,
    /// Damage: bytes that must be zero are not.
    MEMIMG_E_NONZERO_PADDING = 10,
    /// The key does not open this image.
    MEMIMG_E_WRONG_KEY = 11,
    /// The image is encrypted and no key was given.
    MEMIMG_E_KEY_REQUIRED = 12,
    /// A key was given for an image that is not encrypted.
    MEMIMG_E_NOT_ENCRYPTED = 13,
    /// The bytes asked for were not captured.
    MEMIMG_E_NOT_CAPTURED = 14,
    /// Another process is changing the image in place; try again later.
    MEMIMG_E_BUSY = 15,
    /// A region to persist is not whole pages, overlaps another, or is not
    /// mapped readable in this process.
    MEMIMG_E_BAD_REGION = 16,
    /// The image was taken on a different kind of machine.
    MEMIMG_E_MACHINE_MISMATCH = 17,
    /// The image's validation data differs from what the caller expects.
    MEMIMG_E_VALIDATION_MISMATCH = 18,
    /// Part of a region's address range is already mapped in this process.
    MEMIMG_E_ADDRESS_IN_USE = 19,
    /// The strategy asked for cannot restore this image here (mmap of a
    /// compressed image, lazy without userfaultfd ...).
    MEMIMG_E_STRATEGY_UNAVAILABLE = 20,
    /// An index is past the end (of the regions, extents, problems).
    MEMIMG_E_OUT_OF_RANGE = 21,
    /// A structure passed in is larger than this library knows and sets a
    /// field it does not know (the caller's header is newer).
    MEMIMG_E_UNKNOWN_FIELDS = 22,
    /// An error this version of the ABI has no code for; the message says
    /// what it is.
    MEMIMG_E_FAILED = 23,
}

use memimg_status::*;

impl memimg_status {
    /// The constant's name, as in the header.
    pub fn name(self) -> &'static str {
        match self {
            MEMIMG_OK => "MEMIMG_OK",
            MEMIMG_E_INVALID_ARGUMENT => "MEMIMG_E_INVALID_ARGUMENT",
            MEMIMG_E_PANIC => "MEMIMG_E_PANIC",
            MEMIMG_E_IO => "MEMIMG_E_IO",
            MEMIMG_E_NOT_AN_IMAGE => "MEMIMG_E_NOT_AN_IMAGE",
            MEMIMG_E_UNSUPPORTED => "MEMIMG_E_UNSUPPORTED",
            MEMIMG_E_TRUNCATED => "MEMIMG_E_TRUNCATED",
            MEMIMG_E_CHECKSUM => "MEMIMG_E_CHECKSUM",
            MEMIMG_E_AUTHENTICATION => "MEMIMG_E_AUTHENTICATION",
            MEMIMG_E_MALFORMED => "MEMIMG_E_MALFORMED",
            MEMIMG_E_NONZERO_PADDING => "MEMIMG_E_NONZERO_PADDING",
            MEMIMG_E_WRONG_KEY => "MEMIMG_E_WRONG_KEY",
            MEMIMG_E_KEY_REQUIRED => "MEMIMG_E_KEY_REQUIRED",
            MEMIMG_E_NOT_ENCRYPTED => "MEMIMG_E_NOT_ENCRYPTED",
            MEMIMG_E_NOT_CAPTURED => "MEMIMG_E_NOT_CAPTURED",
            MEMIMG_E_BUSY => "MEMIMG_E_BUSY",
            MEMIMG_E_BAD_REGION => "MEMIMG_E_BAD_REGION",
            MEMIMG_E_MACHINE_MISMATCH => "MEMIMG_E_MACHINE_MISMATCH",
            MEMIMG_E_VALIDATION_MISMATCH => "MEMIMG_E_VALIDATION_MISMATCH",
            MEMIMG_E_ADDRESS_IN_USE => "MEMIMG_E_ADDRESS_IN_USE",
            MEMIMG_E_STRATEGY_UNAVAILABLE => "MEMIMG_E_STRATEGY_UNAVAILABLE",
            MEMIMG_E_OUT_OF_RANGE => "MEMIMG_E_OUT_OF_RANGE",
            MEMIMG_E_UNKNOWN_FIELDS => "MEMIMG_E_UNKNOWN_FIELDS",
            MEMIMG_E_FAILED => "MEMIMG_E_FAILED",
        }
    }

    /// The status of a format error of `kind`.
    pub(crate) fn of_kind(kind: ErrorKind) -> Self {
        match kind {
            ErrorKind::NotAnImage => MEMIMG_E_NOT_AN_IMAGE,
            ErrorKind::Unsupported => MEMIMG_E_UNSUPPORTED,
            ErrorKind::Truncated => MEMIMG_E_TRUNCATED,
            ErrorKind::Checksum => MEMIMG_E_CHECKSUM,
            ErrorKind::Authentication => MEMIMG_E_AUTHENTICATION,
            ErrorKind::Malformed => MEMIMG_E_MALFORMED,
            ErrorKind::NonZeroPadding => MEMIMG_E_NONZERO_PADDING,
            ErrorKind::WrongKey => MEMIMG_E_WRONG_KEY,
            ErrorKind::KeyRequired => MEMIMG_E_KEY_REQUIRED,
            ErrorKind::NotEncrypted => MEMIMG_E_NOT_ENCRYPTED,
            ErrorKind::NotCaptured => MEMIMG_E_NOT_CAPTURED,
            ErrorKind::InvalidInput => MEMIMG_E_INVALID_ARGUMENT,
            ErrorKind::Io => MEMIMG_E_IO,
            ErrorKind::Busy => MEMIMG_E_BUSY,
            _ => MEMIMG_E_FAILED,
        }
    }
}

/// Why a call failed: its status, the message and where.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) status: memimg_status,
    pub(crate) message: String,
    pub(crate) location: img::Location,
    /// An argument error, whose message is prefixed with the function's
    /// name (errors from the Rust API keep their own text).
    pub(crate) argument: bool,
}

impl Failure {
    /// An invalid argument: `message` says which and why.
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Failure::argument(MEMIMG_E_INVALID_ARGUMENT, message)
    }

    /// An argument error with its own status.
    pub(crate) fn argument(status: memimg_status, message: impl Into<String>) -> Self {
        Failure {
            status,
            message: message.into(),
            location: img::Location::default(),
            argument: true,
        }
    }

    /// Any other failure.
    pub(crate) fn new(status: memimg_status, message: impl Into<String>) -> Self {
        Failure {
            status,
            message: message.into(),
            location: img::Location::default(),
            argument: false,
        }
    }
}

impl From<img::Error> for Failure {
    fn from(e: img::Error) -> Self {
        Failure {
            status: memimg_status::of_kind(e.kind()),
            message: e.to_string(),
            location: e.location(),
            argument: false,
        }
    }
}

impl From<RestoreError> for Failure {
    fn from(e: RestoreError) -> Self {
        let message = e.to_string();
        let (status, location) = match &e {
            RestoreError::Format(f) => (memimg_status::of_kind(f.kind()), f.location()),
            RestoreError::MachineMismatch { .. } => (MEMIMG_E_MACHINE_MISMATCH, Default::default()),
            RestoreError::ValidationMismatch { .. } => {
                (MEMIMG_E_VALIDATION_MISMATCH, Default::default())
            }
            RestoreError::AddressInUse { range, .. } => (
                MEMIMG_E_ADDRESS_IN_USE,
                img::Location::default().with_addr(range.start),
            ),
            RestoreError::StrategyUnavailable { .. } => {
                (MEMIMG_E_STRATEGY_UNAVAILABLE, Default::default())
            }
            RestoreError::Io { .. } => (MEMIMG_E_IO, Default::default()),
            _ => (MEMIMG_E_FAILED, Default::default()),
        };
        Failure {
            status,
            message,
            location,
            argument: false,
        }
    }
}

impl From<PersistError> for Failure {
    fn from(e: PersistError) -> Self {
        let message = e.to_string();
        let (status, location) = match &e {
            PersistError::Format(f) => (memimg_status::of_kind(f.kind()), f.location()),
            PersistError::BadRegion { start, .. } => (
                MEMIMG_E_BAD_REGION,
                img::Location::default().with_addr(*start),
            ),
            PersistError::Io { .. } => (MEMIMG_E_IO, Default::default()),
            _ => (MEMIMG_E_FAILED, Default::default()),
        };
        Failure {
            status,
            message,
            location,
            argument: false,
        }
    }
}

/// A C string of `s`; a NUL inside (from a name in a file, say) is shown
/// as `\0` rather than cutting the text short.
pub(crate) fn c_string(s: &str) -> CString {
    CString::new(s.replace('\0', "\\0")).unwrap_or_default()
}

/// The last error of a thread.
struct Last {
    status: memimg_status,
    message: CString,
    location: memimg_location,
}

thread_local! {
    static LAST: RefCell<Last> = RefCell::new(Last {
        status: MEMIMG_OK,
        message: CString::default(),
        location: memimg_location::default(),
    });
}

fn set_last(func: &str, f: Failure) -> memimg_status {
    let status = f.status;
    let text = if f.argument {
        format!("{func}: {}", f.message)
    } else {
        f.message
    };
    let last = Last {
        status,
        message: c_string(&text),
        location: f.location.into(),
    };
    // During thread teardown the slot may be gone: the status still tells.
    let _ = LAST.try_with(|l| {
        if let Ok(mut l) = l.try_borrow_mut() {
            *l = last;
        }
    });
    status
}

/// Runs the body of the exported function `func`: its error becomes the
/// returned status and the thread's last error, and a panic becomes
/// `MEMIMG_E_PANIC` instead of unwinding into C.
///
/// Inlined into each exported function, so that its code lies with the
/// function's (see `capi/layout/`); what a panic needs is in [`panicked`],
/// out of the way.
#[inline(always)]
pub(crate) fn guard(func: &str, body: impl FnOnce() -> Result<(), Failure>) -> memimg_status {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => MEMIMG_OK,
        Ok(Err(f)) => set_last(func, f),
        Err(payload) => panicked(func, payload),
    }
}

/// The status and last error of a panic in `func`.
#[cold]
#[inline(never)]
fn panicked(func: &str, payload: Box<dyn std::any::Any + Send>) -> memimg_status {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with no message".into());
    // The payload is dropped here, inside no frame C can see; a payload
    // whose drop panics again aborts, as Rust does.
    drop(payload);
    set_last(
        func,
        Failure::argument(MEMIMG_E_PANIC, format!("internal error (a bug): {what}")),
    )
}

/// Fills `*info` with the calling thread's last error: the status, message
/// and location of the last call that failed on this thread. A call that
/// succeeds leaves it as it is; `status` is `MEMIMG_OK` when no call has
/// failed yet.
///
/// Returns `MEMIMG_E_INVALID_ARGUMENT` when `info` is NULL or its
/// `struct_size` is too small (and then does not change the last error).
#[no_mangle]
pub unsafe extern "C" fn memimg_last_error(info: *mut memimg_error_info) -> memimg_status {
    let body = || {
        let v = LAST
            .try_with(|l| {
                l.try_borrow().map(|l| memimg_error_info {
                    struct_size: 0,
                    message: l.message.as_ptr(),
                    location: l.location,
                    status: l.status,
                    reserved: 0,
                })
            })
            .ok()
            .and_then(Result::ok)
            .ok_or_else(|| Failure::new(MEMIMG_E_FAILED, "the thread is exiting"))?;
        // SAFETY: the caller passes a pointer to its struct (checked for
        // NULL and for its struct_size by write_out).
        unsafe { crate::ext::write_out(info, v, "info") }
    };
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => MEMIMG_OK,
        // Reporting an error about fetching the error would overwrite it.
        Ok(Err(f)) => f.status,
        Err(_) => MEMIMG_E_PANIC,
    }
}

/// The message of the calling thread's last error (see
/// `memimg_last_error()`), NUL-terminated; an empty string when no call
/// has failed. Never NULL. Owned by the library; valid until the next
/// failing call on this thread.
#[no_mangle]
pub extern "C" fn memimg_last_error_message() -> *const c_char {
    static EMPTY: &[u8] = b"\0";
    let body = || {
        LAST.try_with(|l| l.try_borrow().map(|l| l.message.as_ptr()).ok())
            .ok()
            .flatten()
    };
    match catch_unwind(body) {
        Ok(Some(p)) => p,
        _ => EMPTY.as_ptr().cast(),
    }
}

/// The name of a status code (`"MEMIMG_E_WRONG_KEY"`), NUL-terminated and
/// static; `"MEMIMG_E_UNKNOWN"` for a code this library does not know.
/// Never NULL.
#[no_mangle]
pub extern "C" fn memimg_status_name(status: i32) -> *const c_char {
    static NAMES: std::sync::OnceLock<Vec<CString>> = std::sync::OnceLock::new();
    static UNKNOWN: &[u8] = b"MEMIMG_E_UNKNOWN\0";
    let body = || {
        let names = NAMES.get_or_init(|| {
            (0..=MAX_STATUS)
                .map(|i| c_string(status_of(i).map_or("", memimg_status::name)))
                .collect()
        });
        usize::try_from(status)
            .ok()
            .and_then(|i| names.get(i))
            .filter(|n| !n.is_empty())
            .map(|n| n.as_ptr())
    };
    match catch_unwind(body) {
        Ok(Some(p)) => p,
        _ => UNKNOWN.as_ptr().cast(),
    }
}

/// The largest status code.
const MAX_STATUS: i32 = MEMIMG_E_FAILED as i32;

/// The status with code `code`, if there is one.
fn status_of(code: i32) -> Option<memimg_status> {
    const ALL: [memimg_status; 24] = [
        MEMIMG_OK,
        MEMIMG_E_INVALID_ARGUMENT,
        MEMIMG_E_PANIC,
        MEMIMG_E_IO,
        MEMIMG_E_NOT_AN_IMAGE,
        MEMIMG_E_UNSUPPORTED,
        MEMIMG_E_TRUNCATED,
        MEMIMG_E_CHECKSUM,
        MEMIMG_E_AUTHENTICATION,
        MEMIMG_E_MALFORMED,
        MEMIMG_E_NONZERO_PADDING,
        MEMIMG_E_WRONG_KEY,
        MEMIMG_E_KEY_REQUIRED,
        MEMIMG_E_NOT_ENCRYPTED,
        MEMIMG_E_NOT_CAPTURED,
        MEMIMG_E_BUSY,
        MEMIMG_E_BAD_REGION,
        MEMIMG_E_MACHINE_MISMATCH,
        MEMIMG_E_VALIDATION_MISMATCH,
        MEMIMG_E_ADDRESS_IN_USE,
        MEMIMG_E_STRATEGY_UNAVAILABLE,
        MEMIMG_E_OUT_OF_RANGE,
        MEMIMG_E_UNKNOWN_FIELDS,
        MEMIMG_E_FAILED,
    ];
    ALL.iter().copied().find(|s| *s as i32 == code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn last() -> (memimg_status, String) {
        let mut info = memimg_error_info {
            struct_size: std::mem::size_of::<memimg_error_info>(),
            message: std::ptr::null(),
            location: memimg_location::default(),
            status: MEMIMG_OK,
            reserved: 0,
        };
        // SAFETY: info is a valid, sized struct.
        assert_eq!(unsafe { memimg_last_error(&mut info) }, MEMIMG_OK);
        // SAFETY: the library returns a valid C string.
        let m = unsafe { CStr::from_ptr(info.message) };
        (info.status, m.to_string_lossy().into_owned())
    }

    #[test]
    fn a_panic_becomes_a_status_and_a_message() {
        let s = guard("memimg_test", || panic!("boom {}", 42));
        assert_eq!(s, MEMIMG_E_PANIC);
        let (st, msg) = last();
        assert_eq!(st, MEMIMG_E_PANIC);
        assert_eq!(msg, "memimg_test: internal error (a bug): boom 42");
    }

    #[test]
    fn success_leaves_the_last_error() {
        let s = guard("memimg_test", || Err(Failure::invalid("x is NULL")));
        assert_eq!(s, MEMIMG_E_INVALID_ARGUMENT);
        assert_eq!(guard("memimg_test", || Ok(())), MEMIMG_OK);
        assert_eq!(
            last(),
            (MEMIMG_E_INVALID_ARGUMENT, "memimg_test: x is NULL".into())
        );
    }

    #[test]
    fn format_errors_keep_their_text_and_location() {
        let e = img::Error::new(
            ErrorKind::Checksum,
            img::Location::chunk(3, 0x2000).with_region(1),
            "stored checksum mismatch",
        );
        let want = e.to_string();
        assert_eq!(guard("memimg_test", || Err(e.into())), MEMIMG_E_CHECKSUM);
        assert_eq!(last(), (MEMIMG_E_CHECKSUM, want));
    }

    #[test]
    fn every_status_has_its_name() {
        for code in -1..=MAX_STATUS + 1 {
            // SAFETY: the library returns a static C string.
            let n = unsafe { CStr::from_ptr(memimg_status_name(code)) };
            let n = n.to_str().unwrap();
            match status_of(code) {
                Some(s) => {
                    assert_eq!(n, s.name());
                    assert_eq!(s as i32, code);
                }
                None => assert_eq!(n, "MEMIMG_E_UNKNOWN"),
            }
        }
    }
}
