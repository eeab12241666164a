//! Where an image's bytes come from: a memory map, a buffer, or a reader.

use std::borrow::Cow;
use std::io::{Read, Seek, SeekFrom};
use std::sync::Mutex;

use crate::error::{truncated, Error, Result};
use std::fs::File;
use std::path::Path;

/// Anything a reader can be built on, besides a path.
pub trait ReadSeek: Read + Seek + Send {}
impl<T: Read + Seek + Send> ReadSeek for T {}

/// A store of bytes read by position: a local file read with `pread`, or an
/// object in remote storage read with ranged GETs. Reads may run from many
/// threads at once, so implementations take `&self`.
///
/// This is the seam between the format crate, which stays synchronous and
/// small, and stores that sit above it (see the `memimg-remote` crate).
pub trait ReadAt: Send + Sync {
    /// The length of the stored bytes. It must not change while an image is
    /// read from it; when it does, reads fail with a typed error.
    fn len(&self) -> u64;

    /// True when the store holds no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `buf` with the bytes at `offset`.
    ///
    /// # Errors
    /// When the bytes cannot be read, or the store ends before `buf` is full.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;

    /// A name for messages: a path or a URL.
    fn describe(&self) -> String {
        String::from("store")
    }
}

pub(crate) enum Source {
    Mapped(memmap2::Mmap),
    Bytes(Vec<u8>),
    Reader(Mutex<Box<dyn ReadSeek>>, u64),
    At(std::sync::Arc<dyn ReadAt>, u64),
}

impl Source {
    pub(crate) fn len(&self) -> u64 {
        match self {
            Source::Mapped(m) => m.len() as u64,
            Source::Bytes(b) => b.len() as u64,
            Source::Reader(_, len) | Source::At(_, len) => *len,
        }
    }

    /// The `len` bytes at `offset`, or a truncation error naming `what`.
    pub(crate) fn get(&self, offset: u64, len: u64, what: &str) -> Result<Cow<'_, [u8]>> {
        let flen = self.len();
        let end = offset.checked_add(len).filter(|&e| e <= flen);
        let Some(end) = end else {
            return Err(truncated(offset, what, len, flen.saturating_sub(offset)));
        };
        // Both bounds are ≤ the length of an in-memory slice (or of the file,
        // which is checked to fit in usize when the reader is made).
        let (s, e) = (usize_of(offset)?, usize_of(end)?);
        match self {
            Source::Mapped(m) => Ok(Cow::Borrowed(&m[s..e])),
            Source::Bytes(b) => Ok(Cow::Borrowed(&b[s..e])),
            Source::Reader(r, _) => {
                let mut buf = vec![0u8; e - s];
                let mut r = r
                    .lock()
                    .map_err(|_| Error::plain(crate::ErrorKind::Io, "reader lock poisoned"))?;
                r.seek(SeekFrom::Start(offset))
                    .map_err(|e| Error::io(format!("seeking to {offset:#x}"), e))?;
                r.read_exact(&mut buf)
                    .map_err(|e| Error::io(format!("reading {what} at {offset:#x}"), e))?;
                Ok(Cow::Owned(buf))
            }
            Source::At(r, _) => {
                let mut buf = vec![0u8; e - s];
                r.read_exact_at(&mut buf, offset)
                    .map_err(|e| Error::io(format!("reading {what} at {offset:#x}"), e))?;
                Ok(Cow::Owned(buf))
            }
        }
    }

    /// The whole file as a slice, when it is in memory.
    pub(crate) fn as_slice(&self) -> Option<&[u8]> {
        match self {
            Source::Mapped(m) => Some(&m[..]),
            Source::Bytes(b) => Some(b),
            Source::Reader(..) | Source::At(..) => None,
        }
    }
}

pub(crate) fn usize_of(v: u64) -> Result<usize> {
    usize::try_from(v).map_err(|_| {
        Error::plain(
            crate::ErrorKind::Unsupported,
            format!("{v:#x} does not fit this machine's address size"),
        )
    })
}

/// A whole file's bytes, memory-mapped (small files are read), for callers
/// that parse other formats from disk without unsafe code of their own.
///
/// # Security
/// Like [`crate::Image::open`], a map raises SIGBUS if another process
/// truncates the file while it is mapped.
pub struct FileBytes(Source);

impl FileBytes {
    /// Maps (or, when small, reads) the file at `path`.
    ///
    /// # Errors
    /// When the file cannot be opened, measured or mapped.
    pub fn open(path: &std::path::Path) -> Result<FileBytes> {
        Ok(FileBytes(map_path(path)?))
    }
}

impl std::ops::Deref for FileBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.0.as_slice().unwrap_or(&[])
    }
}

/// Maps a file, or reads a tiny one into memory (an empty file cannot be mapped).
pub(crate) fn map_path(path: &Path) -> Result<Source> {
    let file = File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let len = file
        .metadata()
        .map_err(|e| Error::io(format!("reading the size of {}", path.display()), e))?
        .len();
    usize_of(len)?;
    if len < 65536 {
        let bytes =
            std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        return Ok(Source::Bytes(bytes));
    }
    // SAFETY: the map is read-only and private to this Image; the file is not
    // modified by this process while mapped. Another process truncating it
    // would raise SIGBUS, as documented on Image::open.
    #[allow(unsafe_code)]
    let map = unsafe { memmap2::Mmap::map(&file) }
        .map_err(|e| Error::io(format!("mapping {}", path.display()), e))?;
    Ok(Source::Mapped(map))
}
