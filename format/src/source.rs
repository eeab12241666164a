//! Where an image's bytes come from: a file read by position, a buffer, a
//! reader, or any other positional store.
//!
//! Files are read with positional reads (`pread`), never mapped: a map dies
//! of SIGBUS when another process truncates the file, whereas a read that
//! finds the file shorter than it was gives a typed error.

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{truncated, Error, ErrorKind, Location, Result};

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
    /// When the bytes cannot be read, or the store ends before `buf` is full
    /// (an error of kind [`std::io::ErrorKind::UnexpectedEof`], which the
    /// reader reports as [`ErrorKind::Truncated`] at `offset`).
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;

    /// A name for messages: a path or a URL.
    fn describe(&self) -> String {
        String::from("store")
    }
}

/// A local file read with positional reads (`pread`), from many threads at
/// once. This is how [`crate::Image::open`] and [`crate::verify_path`] read
/// files.
///
/// Its length is taken when it is opened. When another process truncates the
/// file afterwards, a read past the new end fails with an error of kind
/// `UnexpectedEof` that says how long the file is now; nothing is mapped, so
/// nothing can raise SIGBUS.
#[derive(Debug)]
pub struct FileAt {
    file: File,
    len: u64,
    path: PathBuf,
}

impl FileAt {
    /// Opens the regular file at `path` for positional reads.
    ///
    /// # Errors
    /// [`ErrorKind::Io`] when the file cannot be opened (`opening PATH: No
    /// such file or directory (os error 2)`); [`ErrorKind::InvalidInput`]
    /// when it is not a regular file, before any byte is read (`PATH is a
    /// FIFO, not a regular file`; or a character device, a block device, a
    /// directory, a socket).
    pub fn open(path: &Path) -> Result<FileAt> {
        let (file, len) = open_regular(path)?;
        Ok(FileAt {
            file,
            len,
            path: path.to_path_buf(),
        })
    }
}

impl ReadAt for FileAt {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            match self.file.read_at(&mut buf[done..], at) {
                Ok(0) => {
                    let now = self
                        .file
                        .metadata()
                        .map(|m| format!("{} bytes long", m.len()))
                        .unwrap_or_else(|_| "shorter".into());
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!(
                            "the file is now {now}, {} when opened: it was truncated while being read (by another process?)",
                            self.len
                        ),
                    ));
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// Opens `path` for reading and checks that it is a regular file, without
/// reading it; returns the file and its length.
///
/// The file is opened with `O_NONBLOCK`, so that opening a FIFO with no
/// writer returns at once instead of waiting for one; `fstat` then tells
/// what it is. (On a regular file `O_NONBLOCK` changes nothing.)
///
/// # Errors
/// [`ErrorKind::Io`] when it cannot be opened: `opening PATH: No such file
/// or directory (os error 2)`. [`ErrorKind::InvalidInput`] when it is not a
/// regular file: `PATH is a FIFO, not a regular file` (or a character
/// device, a block device, a directory, a socket).
pub(crate) fn open_regular(path: &Path) -> Result<(File, u64)> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let meta = file
        .metadata()
        .map_err(|e| Error::io(format!("reading the metadata of {}", path.display()), e))?;
    let ft = meta.file_type();
    if !ft.is_file() {
        let what = if ft.is_dir() {
            "a directory"
        } else if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_char_device() {
            "a character device"
        } else if ft.is_block_device() {
            "a block device"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "of an unknown type"
        };
        return Err(Error::plain(
            ErrorKind::InvalidInput,
            format!("{} is {what}, not a regular file", path.display()),
        ));
    }
    let len = meta.len();
    usize_of(len)?;
    Ok((file, len))
}

pub(crate) enum Source {
    Bytes(Vec<u8>),
    Reader(Mutex<Box<dyn ReadSeek>>, u64),
    At(Arc<dyn ReadAt>, u64),
}

impl Source {
    pub(crate) fn len(&self) -> u64 {
        match self {
            Source::Bytes(b) => b.len() as u64,
            Source::Reader(_, len) | Source::At(_, len) => *len,
        }
    }

    /// The `len` bytes at `offset`, or a truncation error naming `what`.
    pub(crate) fn get(&self, offset: u64, len: u64, what: &str) -> Result<Cow<'_, [u8]>> {
        match self {
            Source::Bytes(b) => {
                let (s, e) = self.bounds(offset, len, what)?;
                Ok(Cow::Borrowed(&b[s..e]))
            }
            Source::Reader(..) | Source::At(..) => {
                let mut buf = Vec::new();
                self.read_into(offset, len, what, &mut buf)?;
                Ok(Cow::Owned(buf))
            }
        }
    }

    /// The `len` bytes at `offset`: borrowed when the image is in memory,
    /// else read into `buf` (which is resized, and reused across calls so a
    /// walk over many chunks allocates once).
    pub(crate) fn get_into<'a>(
        &'a self,
        offset: u64,
        len: u64,
        what: &str,
        buf: &'a mut Vec<u8>,
    ) -> Result<&'a [u8]> {
        let (s, e) = self.bounds(offset, len, what)?;
        match self {
            Source::Bytes(b) => Ok(&b[s..e]),
            Source::Reader(..) | Source::At(..) => {
                // Grown (and zeroed) only when too small, so that a reused
                // buffer is not cleared again before every read.
                if buf.len() < e - s {
                    buf.resize(e - s, 0);
                }
                let part = &mut buf[..e - s];
                self.fill(offset, len, what, part)?;
                Ok(part)
            }
        }
    }

    /// The whole file as a slice, when it is in memory.
    pub(crate) fn as_slice(&self) -> Option<&[u8]> {
        match self {
            Source::Bytes(b) => Some(b),
            Source::Reader(..) | Source::At(..) => None,
        }
    }

    /// Checks that `offset..offset + len` lies in the file; returns it as
    /// indices.
    fn bounds(&self, offset: u64, len: u64, what: &str) -> Result<(usize, usize)> {
        let flen = self.len();
        let end = offset.checked_add(len).filter(|&e| e <= flen);
        let Some(end) = end else {
            return Err(truncated(offset, what, len, flen.saturating_sub(offset)));
        };
        // Both bounds are ≤ the length of an in-memory slice (or of the file,
        // which is checked to fit in usize when the reader is made).
        Ok((usize_of(offset)?, usize_of(end)?))
    }

    /// Reads the bytes at `offset` into `out`, exactly its length: straight
    /// into the caller's buffer, with no buffer of our own to allocate and
    /// clear first.
    pub(crate) fn read_exact_into(&self, offset: u64, what: &str, out: &mut [u8]) -> Result<()> {
        let len = out.len() as u64;
        self.bounds(offset, len, what)?;
        self.fill(offset, len, what, out)
    }

    /// Reads the `len` bytes at `offset` into `buf`, resized to `len`.
    fn read_into(&self, offset: u64, len: u64, what: &str, buf: &mut Vec<u8>) -> Result<()> {
        let (s, e) = self.bounds(offset, len, what)?;
        buf.clear();
        buf.resize(e - s, 0);
        self.fill(offset, len, what, buf)
    }

    /// Fills `buf` with the bytes at `offset`; the caller has checked that
    /// they lie in the file, and `buf.len()` is `len`.
    fn fill(&self, offset: u64, len: u64, what: &str, buf: &mut [u8]) -> Result<()> {
        match self {
            Source::Bytes(b) => {
                let (s, e) = self.bounds(offset, len, what)?;
                buf.copy_from_slice(&b[s..e]);
            }
            Source::Reader(r, _) => {
                let mut r = r
                    .lock()
                    .map_err(|_| Error::plain(ErrorKind::Io, "reader lock poisoned"))?;
                r.seek(SeekFrom::Start(offset))
                    .map_err(|e| Error::io(format!("seeking to {offset:#x}"), e))?;
                r.read_exact(buf)
                    .map_err(|e| read_error(offset, len, what, e))?;
            }
            Source::At(r, _) => r
                .read_exact_at(buf, offset)
                .map_err(|e| read_error(offset, len, what, e))?,
        }
        Ok(())
    }
}

/// A failed read: a store that ends early (it shrank since it was opened) is
/// a truncation at `offset`; anything else is an I/O error.
fn read_error(offset: u64, len: u64, what: &str, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        Error::new(
            ErrorKind::Truncated,
            Location::at(offset),
            format!("{what} of {len} bytes lies past the end of the file: {e}"),
        )
    } else {
        Error::io(format!("reading {what} at {offset:#x}"), e)
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

/// A whole file's bytes in memory, for callers that parse other formats from
/// disk (imgtool's ELF core import).
///
/// The file is read, not mapped: a map would die of SIGBUS if another process
/// truncated the file while it is parsed. So it costs memory of the file's
/// size.
///
/// # Security
/// Only a regular file is read; a FIFO or a device such as `/dev/zero` is
/// refused before any byte is read. A file that shrinks while it is read
/// gives a `Truncated` error naming the offset; one that grows is read up
/// to the length it had when opened.
pub struct FileBytes(Vec<u8>);

impl FileBytes {
    /// Reads the regular file at `path` into memory.
    ///
    /// # Errors
    /// When the file cannot be opened or read, is not a regular file, or
    /// shrinks while it is read.
    pub fn open(path: &std::path::Path) -> Result<FileBytes> {
        let f = FileAt::open(path)?;
        let mut buf = vec![0u8; usize_of(f.len)?];
        f.read_exact_at(&mut buf, 0)
            .map_err(|e| read_error(0, f.len, &path.display().to_string(), e))?;
        Ok(FileBytes(buf))
    }
}

impl std::ops::Deref for FileBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

/// Opens the file at `path` for positional reads (see [`FileAt`]).
pub(crate) fn open_path(path: &Path) -> Result<Source> {
    let f = FileAt::open(path)?;
    let len = f.len();
    Ok(Source::At(Arc::new(f), len))
}
