//! A `Write` adapter whose writes happen on a thread of their own.
//!
//! Capture reads a frozen process and hands the bytes to the image writer on
//! one thread. With a plain `BufWriter`, every `write(2)` into the page cache
//! then stops the reading, and for an uncompressed 1 GiB image that copy costs
//! as much as reading the process. [`Background`] collects writes into 1 MiB
//! buffers and passes full ones to a writing thread, so reading and writing
//! overlap. At most [`IN_FLIGHT`] buffers exist at once, so memory stays
//! bounded (5 MiB by default) however fast the reader is.

use std::io::{self, Write};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

/// Size of one buffer handed to the writing thread.
pub const BUF_SIZE: usize = 1 << 20;
/// Buffers queued for, or being written by, the writing thread.
pub const IN_FLIGHT: usize = 4;

/// Writes on a background thread; see the module docs.
///
/// Bytes reach the inner writer in order. An error of the inner writer is
/// returned by a later `write`, `flush` or [`Background::into_inner`], and
/// nothing is written after it.
pub struct Background<W: Write + Send + 'static> {
    cur: Vec<u8>,
    full: Option<SyncSender<Msg>>,
    empty: Receiver<Vec<u8>>,
    thread: Option<JoinHandle<(W, io::Result<()>)>>,
}

enum Msg {
    Data(Vec<u8>),
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
        let (empty_tx, empty_rx) = mpsc::sync_channel::<Vec<u8>>(IN_FLIGHT);
        let thread = std::thread::Builder::new()
            .name("memimg-write".into())
            .spawn(move || {
                for msg in full_rx {
                    match msg {
                        Msg::Data(mut buf) => {
                            if let Err(e) = inner.write_all(&buf) {
                                return (inner, Err(e));
                            }
                            buf.clear();
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
            cur: Vec::with_capacity(BUF_SIZE),
            full: Some(full_tx),
            empty: empty_rx,
            thread: Some(thread),
        })
    }

    /// Sends the current buffer to the writing thread and takes an empty one.
    fn ship(&mut self) -> io::Result<()> {
        let next = self
            .empty
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(BUF_SIZE));
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
        if !self.cur.is_empty() {
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
        let n = buf.len().min(BUF_SIZE - self.cur.len());
        self.cur.extend_from_slice(&buf[..n]);
        if self.cur.len() == BUF_SIZE {
            self.ship()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.cur.is_empty() {
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
