//! Errors of capture and restore.

use std::io;
use std::ops::Range;

/// Why a capture failed. Whatever the error, every thread of the target was
/// resumed and no file was left under the output path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaptureError {
    /// There is no process with this pid.
    #[error("no process with pid {pid}")]
    NoSuchProcess {
        /// The pid asked for.
        pid: i32,
    },
    /// The kernel refused to let this process trace the target.
    #[error("permission denied to trace pid {pid}: {hint}")]
    PermissionDenied {
        /// The pid asked for.
        pid: i32,
        /// What to do about it.
        hint: String,
    },
    /// The process exited (or was killed) while it was being captured.
    #[error("process {pid} exited during the capture; no image was written")]
    ProcessExited {
        /// The pid asked for.
        pid: i32,
    },
    /// The traced copy of the process that held a fork snapshot was killed
    /// by someone else before it was read.
    #[error("the fork snapshot of pid {pid} was killed during the capture; no image was written")]
    SnapshotLost {
        /// The pid asked for.
        pid: i32,
    },
    /// SIGINT or SIGTERM arrived during the capture.
    #[error("interrupted; the process was resumed and no image was written")]
    Interrupted,
    /// The image writer failed.
    #[error("writing the image: {0}")]
    Format(#[from] memimg::Error),
    /// A system call or file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl CaptureError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        CaptureError::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn permission(pid: i32) -> Self {
        CaptureError::PermissionDenied {
            pid,
            hint: "run as root, or grant CAP_SYS_PTRACE (setcap cap_sys_ptrace+ep), \
                   or allow tracing with `sysctl kernel.yama.ptrace_scope=0`"
                .into(),
        }
    }
}

/// Why a restore failed. Mappings made before the failure are removed again.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// The image cannot be opened or decoded (damage, truncation, wrong key …).
    #[error("{0}")]
    Format(#[from] memimg::Error),
    /// The image was taken on a different kind of machine.
    #[error("the image was captured on a different machine: {field} differs (image {image}, this machine {here})")]
    MachineMismatch {
        /// The first field that differs (`architecture`, `page size` …).
        field: &'static str,
        /// The image's value.
        image: String,
        /// This machine's value.
        here: String,
    },
    /// The validation data differs from what the caller expects.
    #[error("validation {field} differs: the image has {image}, the caller expects {expected}")]
    ValidationMismatch {
        /// `tag` or `data`, or `data (missing)` when the image has none.
        field: &'static str,
        /// What the image holds, abbreviated.
        image: String,
        /// What the caller expects, abbreviated.
        expected: String,
    },
    /// Part of a region's address range is already mapped in this process.
    #[error("cannot restore region {name} at {:#x}-{:#x}: the address range is already in use", range.start, range.end)]
    AddressInUse {
        /// The region's range.
        range: Range<u64>,
        /// The region's name.
        name: String,
    },
    /// The strategy asked for cannot restore this image.
    #[error("strategy {strategy} cannot restore this image: {why}")]
    StrategyUnavailable {
        /// The strategy asked for.
        strategy: &'static str,
        /// Why not.
        why: String,
    },
    /// A system call failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The image in object storage could not be reached or read: a missing
    /// bucket or key, refused credentials, the network after the retries
    /// (its kind says which). Damage is [`RestoreError::Format`], as for a
    /// local file.
    #[cfg(feature = "remote")]
    #[error("{0}")]
    Remote(memimg_remote::Error),
}

impl RestoreError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        RestoreError::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn last_os(context: impl Into<String>) -> Self {
        Self::io(context, io::Error::last_os_error())
    }
}
