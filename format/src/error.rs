//! The crate's one error type.
//!
//! Every error that comes from the bytes of a file says what is wrong and where:
//! a file offset, and the region or chunk when one is involved. Messages are plain
//! text; binrw's own errors never reach the user unmapped.

use std::fmt;
use std::io;

/// A result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where in an image a problem lies.
///
/// Each field is optional: a header problem has only an offset, a chunk problem
/// has all three.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Location {
    /// Byte offset in the file.
    pub offset: Option<u64>,
    /// Index of the region in the image's region table.
    pub region: Option<u32>,
    /// Chunk number (its position in the chunk map).
    pub chunk: Option<u64>,
    /// Virtual address involved, if any.
    pub addr: Option<u64>,
    /// The link of a chain of incremental images the problem lies in (1.1):
    /// 0 is the image opened, 1 its parent, 2 the parent's parent …; `None`
    /// when no chain is involved.
    pub link: Option<u32>,
}

impl Location {
    /// A location that is only a file offset.
    pub fn at(offset: u64) -> Self {
        Location {
            offset: Some(offset),
            ..Location::default()
        }
    }

    /// A location naming a chunk, at its file offset.
    pub fn chunk(chunk: u64, offset: u64) -> Self {
        Location {
            offset: Some(offset),
            chunk: Some(chunk),
            ..Location::default()
        }
    }

    /// Adds the region.
    pub fn with_region(mut self, region: u32) -> Self {
        self.region = Some(region);
        self
    }

    /// Adds the chunk number.
    pub fn with_chunk(mut self, chunk: u64) -> Self {
        self.chunk = Some(chunk);
        self
    }

    /// Adds the virtual address.
    pub fn with_addr(mut self, addr: u64) -> Self {
        self.addr = Some(addr);
        self
    }

    /// Adds the link of a chain (0 the image opened, 1 its parent …).
    pub fn with_link(mut self, link: u32) -> Self {
        self.link = Some(link);
        self
    }

    fn is_empty(&self) -> bool {
        *self == Location::default()
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(l) = self.link {
            parts.push(match l {
                0 => "link 0 (the image)".to_string(),
                1 => "link 1 (its parent)".to_string(),
                l => format!("link {l} (ancestor {l})"),
            });
        }
        if let Some(o) = self.offset {
            parts.push(format!("offset {o:#x}"));
        }
        if let Some(r) = self.region {
            parts.push(format!("region {r}"));
        }
        if let Some(c) = self.chunk {
            parts.push(format!("chunk {c}"));
        }
        if let Some(a) = self.addr {
            parts.push(format!("address {a:#x}"));
        }
        f.write_str(&parts.join(", "))
    }
}

/// What kind of problem an [`Error`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The file does not start with the memimg magic: it is not an image.
    NotAnImage,
    /// The image's major version, or an incompatible feature, is unknown here.
    Unsupported,
    /// The file ends before a structure it must hold.
    Truncated,
    /// A checksum does not match the bytes it covers.
    Checksum,
    /// An authentication tag does not match: the bytes were altered.
    Authentication,
    /// A field holds a value the format does not allow.
    Malformed,
    /// Bytes that must be zero (padding, reserved fields) are not.
    NonZeroPadding,
    /// The given key does not open this image.
    WrongKey,
    /// The image is encrypted and no key was given.
    KeyRequired,
    /// A key was given for an image that is not encrypted.
    NotEncrypted,
    /// The requested bytes were not captured.
    NotCaptured,
    /// A caller passed an argument the operation cannot use.
    InvalidInput,
    /// An I/O error.
    Io,
    /// Another process is changing the image in place (key rotation,
    /// in-place recompress or re-encryption) and holds its lock; try again
    /// when it is done.
    Busy,
    /// A file that belongs to one image (a load-order profile) was given
    /// for another: their image ids differ.
    WrongImage,
    /// The pages asked for are the parent's (an incremental image, 1.1), and
    /// the parent was not given nor found: the message names its id and
    /// where it was (the hint).
    ParentRequired,
    /// The image given or found as a parent is not the one the child names:
    /// another id, another index (rewritten), another depth, page size or
    /// machine, or a chain that repeats an image (a cycle). The location
    /// names the link.
    ParentMismatch,
}

/// The error type of this crate.
///
/// Its `Display` reads as a sentence with its location first, for example
/// `offset 0x2000, chunk 3: stored checksum mismatch (expected …, found …)`.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    location: Location,
    message: String,
    source: Option<io::Error>,
}

impl Error {
    /// Creates an error of `kind` at `location`.
    pub fn new(kind: ErrorKind, location: Location, message: impl Into<String>) -> Self {
        Error {
            kind,
            location,
            message: message.into(),
            source: None,
        }
    }

    /// Creates an error with no location.
    pub fn plain(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error::new(kind, Location::default(), message)
    }

    /// Wraps an I/O error with what was being done. The context names the
    /// file once (`opening PATH`); `Display` adds the I/O error once:
    /// `opening PATH: No such file or directory (os error 2)`.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error {
            kind: ErrorKind::Io,
            location: Location::default(),
            message: context.into(),
            source: Some(source),
        }
    }

    /// What kind of problem this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Where the problem lies.
    pub fn location(&self) -> Location {
        self.location
    }

    /// The message, without the location (and without the I/O error, for
    /// an [`ErrorKind::Io`] error: see [`Error::io_error`]).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The I/O error this error wraps, if any. `Display` prints it after the
    /// message; `source()` does not return it, so that it is printed once.
    pub fn io_error(&self) -> Option<&io::Error> {
        self.source.as_ref()
    }

    /// True when the error means the image's bytes are damaged or altered (as
    /// opposed to unsupported, locked, a wrong key, or an I/O failure).
    pub fn is_damage(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Truncated
                | ErrorKind::Checksum
                | ErrorKind::Authentication
                | ErrorKind::Malformed
                | ErrorKind::NonZeroPadding
        )
    }

    /// Replaces the error's location.
    pub(crate) fn with_location(mut self, location: Location) -> Self {
        self.location = location;
        self
    }

    /// Fills in what the error's location does not say from `outer` (the
    /// chunk's region and address around a padding or checksum error).
    pub(crate) fn within(mut self, outer: Location) -> Self {
        let l = &mut self.location;
        l.offset = l.offset.or(outer.offset);
        l.region = l.region.or(outer.region);
        l.chunk = l.chunk.or(outer.chunk);
        l.addr = l.addr.or(outer.addr);
        l.link = l.link.or(outer.link);
        self
    }

    /// Puts `prefix` (what was being done) in front of the message, once:
    /// `prefix: message`.
    pub(crate) fn prefixed(mut self, prefix: &str) -> Self {
        self.message = format!("{prefix}: {}", self.message);
        self
    }

    /// Names the link of a chain the error lies in, unless it names one.
    pub(crate) fn in_link(mut self, link: u32) -> Self {
        self.location.link = self.location.link.or(Some(link));
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.location.is_empty() {
            write!(f, "{}: ", self.location)?;
        }
        f.write_str(&self.message)?;
        if let Some(src) = &self.source {
            write!(f, ": {src}")?;
        }
        Ok(())
    }
}

/// `source()` is always `None`: `Display` already prints the I/O error an
/// [`Error::io`] wraps, and an error that did both would have a chain
/// printer (anyhow's `{:#}`) show the cause twice. The wrapped error is
/// still there, through [`Error::io_error`].
impl std::error::Error for Error {}

/// Shorthand for a malformed-field error.
pub(crate) fn malformed(location: Location, message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Malformed, location, message)
}

/// Shorthand for a truncation error.
pub(crate) fn truncated(offset: u64, what: &str, need: u64, have: u64) -> Error {
    Error::new(
        ErrorKind::Truncated,
        Location::at(offset),
        format!("{what} needs {need} bytes but the file has {have} from here"),
    )
}
