//! A `Write` adapter whose writes happen on a thread of their own.
//!
//! Capture reads a frozen process and hands the bytes to the image writer on
//! one thread. With a plain `BufWriter`, every `write(2)` into the page cache
//! then stops the reading, and for an uncompressed 1 GiB image that copy costs
//! as much as reading the process. [`Background`] collects writes into 1 MiB
//! buffers and passes full ones to a writing thread, so reading and writing
//! overlap. At most [`IN_FLIGHT`] buffers exist at once, so memory stays
//! bounded (5 MiB by default) however fast the reader is.
//!
//! Each buffer's bytes start at a page boundary ([`ALIGN`]), so a full
//! buffer is a page-aligned piece of memory at a page-aligned offset of
//! the stream: an inner writer can pass it to `O_DIRECT` as it is (see
//! `ImageFile`).

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

use memimg::atomic::AtomicFile;

/// Size of one buffer handed to the writing thread.
pub const BUF_SIZE: usize = 1 << 20;
/// Buffers queued for, or being written by, the writing thread.
pub const IN_FLIGHT: usize = 4;
/// The alignment of each buffer's bytes in memory.
pub const ALIGN: usize = 4096;

/// A buffer whose bytes start at an [`ALIGN`]-aligned address: a `Vec`
/// one `ALIGN` longer than needed, used from its first aligned byte (no
/// unsafe code, and the allocation is made once per buffer).
struct Buf {
    v: Vec<u8>,
    start: usize,
    len: usize,
}

impl Buf {
    fn new() -> Buf {
        let v = vec![0u8; BUF_SIZE + ALIGN];
        let start = v.as_ptr().align_offset(ALIGN).min(ALIGN);
        Buf { v, start, len: 0 }
    }

    fn bytes(&self) -> &[u8] {
        &self.v[self.start..self.start + self.len]
    }

    /// Appends what fits of `data`; returns how much did.
    fn fill(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(BUF_SIZE - self.len);
        let at = self.start + self.len;
        self.v[at..at + n].copy_from_slice(&data[..n]);
        self.len += n;
        n
    }
}

/// Writes on a background thread; see the module docs.
///
/// Bytes reach the inner writer in order. An error of the inner writer is
/// returned by a later `write`, `flush` or [`Background::into_inner`], and
/// nothing is written after it.
pub struct Background<W: Write + Send + 'static> {
    cur: Buf,
    full: Option<SyncSender<Msg>>,
    empty: Receiver<Buf>,
    thread: Option<JoinHandle<(W, io::Result<()>)>>,
}

enum Msg {
    Data(Buf),
    /// Flush the inner writer and report back.
    Flush(SyncSender<io::Result<()>>),
}

impl<W: Write + Send + 'static> Background<W> {
    /// Starts the writing thread.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn new(mut inner: W) -> io::Result<Self> {
        let (full_tx, full_rx) = mpsc::sync_channel::<Msg>(IN_FLIGHT - 1);
        let (empty_tx, empty_rx) = mpsc::sync_channel::<Buf>(IN_FLIGHT);
        let thread = std::thread::Builder::new()
            .name("memimg-write".into())
            .spawn(move || {
                for msg in full_rx {
                    match msg {
                        Msg::Data(mut buf) => {
                            if let Err(e) = inner.write_all(buf.bytes()) {
                                return (inner, Err(e));
                            }
                            buf.len = 0;
                            // The producer may be gone or have enough buffers.
                            let _ = empty_tx.try_send(buf);
                        }
                        Msg::Flush(reply) => {
                            let r = inner.flush();
                            let failed = r.as_ref().err().map(copy_err);
                            let _ = reply.send(r);
                            if let Some(e) = failed {
                                return (inner, Err(e));
                            }
                        }
                    }
                }
                (inner, Ok(()))
            })?;
        Ok(Background {
            cur: Buf::new(),
            full: Some(full_tx),
            empty: empty_rx,
            thread: Some(thread),
        })
    }

    /// Sends the current buffer to the writing thread and takes an empty one.
    fn ship(&mut self) -> io::Result<()> {
        let next = self.empty.try_recv().unwrap_or_else(|_| Buf::new());
        let buf = std::mem::replace(&mut self.cur, next);
        let sent = self
            .full
            .as_ref()
            .is_some_and(|tx| tx.send(Msg::Data(buf)).is_ok());
        if sent {
            Ok(())
        } else {
            Err(self.stopped())
        }
    }

    /// The writing thread has stopped: join it and return its error.
    fn stopped(&mut self) -> io::Error {
        self.full = None;
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok((_, Err(e)))) => e,
            Some(Err(_)) => io::Error::other("the writing thread panicked"),
            _ => io::Error::other("the writing thread stopped"),
        }
    }

    /// Writes what is buffered, flushes the inner writer and gives it back.
    ///
    /// # Errors
    /// The first error of the inner writer.
    pub fn into_inner(mut self) -> io::Result<W> {
        if self.cur.len > 0 {
            self.ship()?;
        }
        self.full = None;
        let (mut inner, r) = match self.thread.take().map(JoinHandle::join) {
            Some(Ok(done)) => done,
            Some(Err(_)) => return Err(io::Error::other("the writing thread panicked")),
            None => return Err(io::Error::other("the writing thread stopped")),
        };
        r?;
        inner.flush()?;
        Ok(inner)
    }
}

/// An `io::Error` cannot be cloned; keep its kind and message.
fn copy_err(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}

impl<W: Write + Send + 'static> Write for Background<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.full.is_none() {
            return Err(io::Error::other("the writing thread stopped"));
        }
        let n = self.cur.fill(buf);
        if self.cur.len == BUF_SIZE {
            self.ship()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.cur.len > 0 {
            self.ship()?;
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let sent = self
            .full
            .as_ref()
            .is_some_and(|full| full.send(Msg::Flush(tx)).is_ok());
        if !sent {
            return Err(self.stopped());
        }
        match rx.recv() {
            Ok(r) => r,
            Err(_) => Err(self.stopped()),
        }
    }
}

impl<W: Write + Send + 'static> Drop for Background<W> {
    fn drop(&mut self) {
        // Closing the channel ends the thread after what is queued; dropping
        // without into_inner is the error path, so its result is not needed.
        self.full = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Bytes written through the page cache between two requests to start
/// writeback.
const WRITEBACK_STEP: u64 = 8 << 20;

/// The image file being written by [`Background`]'s thread: each write at
/// its offset of the temporary file.
///
/// A durable write must put every byte on the disk before it returns.
/// Through the page cache that costs a copy of each byte into the cache on
/// the writing thread, and once the kernel's writeback threshold is passed
/// the writer is also throttled: at several GiB that thread was the longest
/// path of a capture (`perf record` of a 4 GiB capture with `--codec none`:
/// 47% of all samples on it, 34% in `copy_folio_from_iter_atomic`). Below
/// that threshold the page cache is the faster way here (a quiet 1 GiB
/// capture: 435 ms through it, 592 ms with `O_DIRECT`). So a durable
/// `ImageFile` writes through the page cache, starting writeback every few
/// MiB, until the file holds `direct_after` bytes (by default the kernel's
/// background writeback threshold, see [`writeback_threshold`], and at most
/// [`PAGE_CACHE_MAX`]), and from there writes each full buffer of
/// [`Background`] (page-aligned memory at a page-aligned offset) with
/// `O_DIRECT`, straight from the buffer to the disk; the commit's fsync then makes both durable. Where `O_DIRECT` is
/// refused (at open, or `EINVAL` on a write) the page cache is used to the
/// end. A file that need not be durable is written through the page cache,
/// where it stays for whoever reads it next.
pub(crate) struct ImageFile {
    file: AtomicFile,
    fd: RawFd,
    /// The same file opened again with `O_DIRECT`, while that works.
    direct: Option<File>,
    pos: u64,
    kicked: u64,
    /// Start writeback as we go (a durable file).
    kick: bool,
    /// Bytes written with `O_DIRECT`.
    direct_bytes: u64,
    /// Bytes written through the page cache before `O_DIRECT` is used.
    direct_after: u64,
}

impl ImageFile {
    /// Writes `file`; `durable` when it will be synced at the end, and then
    /// with `O_DIRECT` when `direct` (and the file system takes it) past
    /// `direct_after` bytes (`None`: the kernel's background writeback
    /// threshold, at most [`PAGE_CACHE_MAX`]).
    pub(crate) fn new(
        mut file: AtomicFile,
        durable: bool,
        direct: bool,
        direct_after: Option<u64>,
    ) -> ImageFile {
        let fd = file.file().as_raw_fd();
        let direct = if durable && direct {
            open_direct(fd)
        } else {
            None
        };
        // Read from /proc only where O_DIRECT will be used.
        let direct_after = match (&direct, direct_after) {
            (None, _) => u64::MAX,
            (Some(_), Some(b)) => b,
            (Some(_), None) => writeback_threshold().min(PAGE_CACHE_MAX),
        };
        ImageFile {
            file,
            fd,
            direct,
            pos: 0,
            kicked: 0,
            kick: durable,
            direct_bytes: 0,
            direct_after,
        }
    }

    /// Bytes written with `O_DIRECT` so far.
    pub(crate) fn direct_bytes(&self) -> u64 {
        self.direct_bytes
    }

    /// The file, to commit or rename.
    pub(crate) fn into_file(self) -> AtomicFile {
        self.file
    }
}

/// The most a durable file writes through the page cache before O_DIRECT
/// by default: 256 MiB. In one quiet run at 4 GiB (3 GiB written) the page
/// cache up to the writeback threshold (about 1.8 GB here) then O_DIRECT
/// took 4,926 ms, O_DIRECT from the first byte 2,831 ms, the page cache
/// throughout 8,504 ms: the bytes the page cache takes first are written
/// back while the O_DIRECT writes need the disk. Below 256 MiB written the
/// page cache was the faster way (a 256 MiB capture, 195 MiB written: 96.5
/// against 162.6 ms).
const PAGE_CACHE_MAX: u64 = 256 << 20;

/// The bytes of dirty page cache at which the kernel starts writing back
/// in the background: `vm.dirty_background_bytes` when set, else
/// `vm.dirty_background_ratio` percent of the available memory (the
/// kernel counts free and reclaimable page-cache memory; `MemAvailable` is
/// close). Below it a writer is never throttled. 256 MiB when it cannot be
/// read.
pub(crate) fn writeback_threshold() -> u64 {
    let num = |p: &str| -> Option<u64> { std::fs::read_to_string(p).ok()?.trim().parse().ok() };
    if let Some(b) = num("/proc/sys/vm/dirty_background_bytes").filter(|&b| b > 0) {
        return b;
    }
    let avail = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    });
    match (num("/proc/sys/vm/dirty_background_ratio"), avail) {
        (Some(r), Some(kib)) => kib.saturating_mul(1024) / 100 * r.min(100),
        _ => 256 << 20,
    }
}

/// The file `fd` opened a second time (through `/proc/self/fd`, so the same
/// file whatever happens to its name) with `O_DIRECT`; `None` where that is
/// refused.
fn open_direct(fd: RawFd) -> Option<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(format!("/proc/self/fd/{fd}"))
        .ok()
}

impl Write for ImageFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let aligned = !buf.is_empty()
            && (buf.as_ptr() as usize).is_multiple_of(ALIGN)
            && buf.len().is_multiple_of(ALIGN)
            && self.pos.is_multiple_of(ALIGN as u64)
            && self.pos >= self.direct_after;
        if let (true, Some(d)) = (aligned, &self.direct) {
            match d.write_at(buf, self.pos) {
                Ok(n) => {
                    self.pos += n as u64;
                    self.kicked = self.pos;
                    self.direct_bytes += n as u64;
                    return Ok(n);
                }
                // The file system's alignment is stricter, or it takes no
                // O_DIRECT writes after all: the page cache from here on.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.direct = None,
                Err(e) => return Err(e),
            }
        }
        let n = self.file.file().write_at(buf, self.pos)?;
        self.pos += n as u64;
        if self.kick && self.pos - self.kicked >= WRITEBACK_STEP {
            let (off, len) = (self.kicked, self.pos - self.kicked);
            if let (Ok(off), Ok(len)) = (libc::off64_t::try_from(off), libc::off64_t::try_from(len))
            {
                // SAFETY: sync_file_range only takes integers; a failure only
                // means the final fsync does all the work.
                unsafe { libc::sync_file_range(self.fd, off, len, libc::SYNC_FILE_RANGE_WRITE) };
            }
            self.kicked = self.pos;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_arrive_in_order() {
        let mut b = Background::new(Vec::new()).unwrap();
        let mut want = Vec::new();
        for i in 0..3000u32 {
            let piece: Vec<u8> = (0..(i % 977 + 1) * 7)
                .map(|j| (i ^ j).to_le_bytes()[0])
                .collect();
            b.write_all(&piece).unwrap();
            want.extend_from_slice(&piece);
            if i % 1000 == 0 {
                b.flush().unwrap();
            }
        }
        assert_eq!(b.into_inner().unwrap(), want);
    }

    /// Records where each write's bytes were in memory.
    #[derive(Default)]
    struct Recording {
        data: Vec<u8>,
        writes: Vec<(usize, usize)>,
    }

    impl Write for Recording {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.writes.push((buf.as_ptr() as usize, buf.len()));
            self.data.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i * 31 + i / 4096).to_le_bytes()[0])
            .collect()
    }

    /// Every full buffer reaches the inner writer as page-aligned memory,
    /// so that `ImageFile` can hand it to O_DIRECT.
    #[test]
    fn full_buffers_are_page_aligned() {
        let want = pattern(3 * BUF_SIZE + 1000);
        let mut b = Background::new(Recording::default()).unwrap();
        for piece in want.chunks(4099) {
            b.write_all(piece).unwrap();
        }
        let r = b.into_inner().unwrap();
        assert_eq!(r.data, want);
        assert_eq!(r.writes.len(), 4, "{:?}", r.writes);
        for &(at, len) in &r.writes[..3] {
            assert_eq!(len, BUF_SIZE);
            assert_eq!(at % ALIGN, 0, "a full buffer at {at:#x}");
        }
        assert_eq!(r.writes[3].1, 1000);
    }

    /// A durable image file writes the full buffers with O_DIRECT (where
    /// the file system takes it) and the rest through the page cache; the
    /// file holds exactly the bytes, and the commit puts it in place.
    #[test]
    fn a_durable_image_file_writes_full_buffers_direct() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let mut af = AtomicFile::create(&path).unwrap();
        let takes_direct = open_direct(af.file().as_raw_fd()).is_some();
        let want = pattern(5 * BUF_SIZE + 123);
        let mut b = Background::new(ImageFile::new(af, true, true, Some(0))).unwrap();
        for piece in want.chunks(70_001) {
            b.write_all(piece).unwrap();
        }
        let f = b.into_inner().unwrap();
        if takes_direct {
            assert_eq!(f.direct_bytes(), 5 * BUF_SIZE as u64);
        } else {
            eprintln!(
                "note: {} refuses O_DIRECT: only the page-cache path was tested",
                dir.path().display()
            );
            assert_eq!(f.direct_bytes(), 0);
        }
        f.into_file().commit().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), want);
    }

    /// The first `direct_after` bytes go through the page cache, the full
    /// buffers after them with O_DIRECT.
    #[test]
    fn o_direct_only_past_direct_after() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let mut af = AtomicFile::create(&path).unwrap();
        if open_direct(af.file().as_raw_fd()).is_none() {
            eprintln!(
                "note: {} refuses O_DIRECT: not tested",
                dir.path().display()
            );
            return;
        }
        let want = pattern(5 * BUF_SIZE + 99);
        let file = ImageFile::new(af, true, true, Some(2 * BUF_SIZE as u64));
        let mut b = Background::new(file).unwrap();
        b.write_all(&want).unwrap();
        let f = b.into_inner().unwrap();
        assert_eq!(f.direct_bytes(), 3 * BUF_SIZE as u64);
        f.into_file().commit().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), want);
    }

    #[test]
    fn the_writeback_threshold_is_read() {
        let t = writeback_threshold();
        assert!(t >= 1 << 20, "{t}");
    }

    /// A file that need not be durable stays in the page cache, and so does
    /// a durable one asked not to use O_DIRECT.
    #[test]
    fn o_direct_only_when_durable_and_asked() {
        for (durable, direct) in [(false, true), (true, false)] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("img");
            let want = pattern(2 * BUF_SIZE);
            let file = ImageFile::new(AtomicFile::create(&path).unwrap(), durable, direct, Some(0));
            let mut b = Background::new(file).unwrap();
            b.write_all(&want).unwrap();
            let f = b.into_inner().unwrap();
            assert_eq!(f.direct_bytes(), 0, "durable {durable}, direct {direct}");
            f.into_file().commit().unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), want);
        }
    }

    /// Fails after `left` bytes.
    struct Failing {
        left: usize,
    }

    impl Write for Failing {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.left == 0 {
                return Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"));
            }
            let n = buf.len().min(self.left);
            self.left -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn an_inner_error_is_returned() {
        let mut b = Background::new(Failing { left: 3 << 20 }).unwrap();
        let chunk = vec![7u8; 1 << 16];
        let mut err = None;
        for _ in 0..200 {
            if let Err(e) = b.write_all(&chunk) {
                err = Some(e);
                break;
            }
        }
        let e = match err {
            Some(e) => e,
            None => b.into_inner().err().expect("the error surfaces at the end"),
        };
        assert_eq!(e.kind(), io::ErrorKind::StorageFull, "{e}");
    }
}
