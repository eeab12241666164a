//! Writing an object as a stream: [`RemoteWriter`], a multipart upload behind
//! `std::io::Write`.
//!
//! The format is single-pass and never seeks, so [`memimg::Writer`] can write
//! straight into an upload: a capture needs no local temporary copy. Bytes
//! are gathered into parts; each full part is sent while the next one fills,
//! with a bounded number in flight. The object appears only when
//! [`RemoteWriter::commit`] completes the upload, after the image's last byte:
//! an error, or dropping the writer without a commit, aborts the upload, so
//! no object (whole or partial) is left under the key and the store drops
//! the parts already sent.
//!
//! **Memory.** At most `(parts_in_flight + 1) × part_size` bytes are held:
//! the parts being sent and the one filling. By default 3 in flight of 8 MiB,
//! so 32 MiB, whatever the size of the image. A part's buffer is reused for
//! a later part once the store has answered (when the client has let go of
//! it), so a long upload touches those 32 MiB instead of fresh memory for
//! every part: fresh pages cost a fault and a zeroing each.
//!
//! **What cannot be cleaned up.** A process killed outright (SIGKILL, power
//! loss) cannot abort its upload: the store keeps the parts, invisible as an
//! object, until a lifecycle rule (`AbortIncompleteMultipartUpload`) removes
//! them. No object appears under the key either way.

use std::io::Write;

use bytes::Bytes;
use object_store::{MultipartUpload, ObjectStore, ObjectStoreExt, PutPayload};
use tokio::task::JoinSet;

use crate::error::{from_store, Error, ErrorKind, Result};
use crate::location::S3Url;
use crate::runtime::{block_on, handle};
use crate::S3Options;

/// Bytes in each part (the last may be shorter). By default 8 MiB: S3 needs
/// at least 5 MiB for every part but the last and allows 10,000 parts, so
/// images up to 78 GiB fit; larger ones need a larger part size.
pub const DEFAULT_PART_SIZE: usize = 8 << 20;
/// Parts sent at once. By default 3.
pub const DEFAULT_PARTS_IN_FLIGHT: usize = 3;
/// The smallest part S3 accepts (except for the last part): 5 MiB.
pub const MIN_PART_SIZE: usize = 5 << 20;

/// How a [`RemoteWriter`] uploads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadOptions {
    /// Bytes per part; raised to [`MIN_PART_SIZE`] if smaller. By default
    /// [`DEFAULT_PART_SIZE`].
    pub part_size: usize,
    /// Parts sent at once; at least 1. By default [`DEFAULT_PARTS_IN_FLIGHT`].
    pub parts_in_flight: usize,
}

impl Default for UploadOptions {
    fn default() -> Self {
        UploadOptions {
            part_size: DEFAULT_PART_SIZE,
            parts_in_flight: DEFAULT_PARTS_IN_FLIGHT,
        }
    }
}

/// What an upload sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UploadStats {
    /// Parts started.
    pub parts: u64,
    /// Bytes written into the upload.
    pub bytes: u64,
}

/// The result of a completed upload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Committed {
    /// The new object's ETag, when the store gave one.
    pub e_tag: Option<String>,
    /// What was sent.
    pub stats: UploadStats,
}

/// The parts under way, each answering with its number and, when the client
/// has let go of it, its buffer for reuse.
type Parts = JoinSet<(u64, object_store::Result<()>, Option<Vec<u8>>)>;

enum State {
    Open {
        upload: Box<dyn MultipartUpload>,
        tasks: Parts,
    },
    /// Failed and aborted (or abandoned): the message says why.
    Failed(String),
    Done,
}

/// A multipart upload of one object, written through `std::io::Write`.
///
/// Nothing is visible under the key until [`RemoteWriter::commit`]. `flush`
/// sends nothing early: parts leave when full.
pub struct RemoteWriter {
    name: String,
    state: State,
    buf: Vec<u8>,
    /// Buffers of parts sent, for the next parts: with `buf` and the parts
    /// under way, never more than `in_flight + 1`.
    spare: Vec<Vec<u8>>,
    /// Part buffers made (not reused), for the tests.
    made: u64,
    part_size: usize,
    in_flight: usize,
    stats: UploadStats,
}

impl std::fmt::Debug for RemoteWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteWriter")
            .field("object", &self.name)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl RemoteWriter {
    /// Starts a multipart upload to `url` (one request).
    ///
    /// An existing object under the key is replaced only when the upload is
    /// committed; callers that must not replace one check first (see
    /// [`crate::Store::exists`]).
    ///
    /// # Errors
    /// [`ErrorKind::NoSuchBucket`], [`ErrorKind::AccessDenied`],
    /// [`ErrorKind::Network`] after the retries, [`ErrorKind::Config`].
    pub fn create(url: &S3Url, s3: &S3Options, opts: UploadOptions) -> Result<RemoteWriter> {
        Self::create_in(&*s3.store(&url.bucket)?, url, opts)
    }

    /// Starts a multipart upload to `url` in a store the caller built.
    ///
    /// # Errors
    /// As [`RemoteWriter::create`].
    pub fn create_in(
        store: &dyn ObjectStore,
        url: &S3Url,
        opts: UploadOptions,
    ) -> Result<RemoteWriter> {
        let name = url.to_string();
        let upload = block_on(store.put_multipart(&url.path()))?
            .map_err(|e| from_store(&name, "starting the upload", &e))?;
        Ok(Self::from_upload(upload, &name, opts))
    }

    /// Wraps an upload the caller started, named `name` in messages (for
    /// tests that inject faults into the parts).
    pub fn from_upload(
        upload: Box<dyn MultipartUpload>,
        name: &str,
        opts: UploadOptions,
    ) -> RemoteWriter {
        let part_size = opts.part_size.max(MIN_PART_SIZE);
        RemoteWriter {
            name: name.to_string(),
            state: State::Open {
                upload,
                tasks: JoinSet::new(),
            },
            buf: Vec::new(),
            spare: Vec::new(),
            made: 0,
            part_size,
            in_flight: opts.parts_in_flight.max(1),
            stats: UploadStats::default(),
        }
    }

    /// What has been sent so far.
    pub fn stats(&self) -> UploadStats {
        self.stats
    }

    /// The object's URL.
    pub fn url(&self) -> &str {
        &self.name
    }

    /// Sends the last part, waits for every part and completes the upload:
    /// the object appears under its key, whole.
    ///
    /// # Errors
    /// When a part or the completion fails (after retries). The upload is
    /// then aborted, and the error says whether the abort went through.
    pub fn commit(mut self) -> Result<Committed> {
        self.check_open()?;
        if !self.buf.is_empty() || self.stats.parts == 0 {
            // S3 needs at least one part; an empty one is allowed as the last.
            self.send_part()?;
        }
        let State::Open { upload, tasks } = &mut self.state else {
            return Err(self.failed_error());
        };
        if let Err((part, e)) = block_on(wait_parts(tasks, 0, &mut self.spare))? {
            let doing = format!("uploading part {part}");
            return Err(self.fail(from_store(&self.name.clone(), &doing, &e)));
        }
        match block_on(upload.complete())? {
            Ok(put) => {
                self.state = State::Done;
                Ok(Committed {
                    e_tag: put.e_tag,
                    stats: self.stats,
                })
            }
            Err(e) => Err(self.fail(from_store(&self.name.clone(), "completing the upload", &e))),
        }
    }

    /// Aborts the upload: the store drops the parts sent, and no object
    /// appears. Dropping the writer without a commit does the same.
    ///
    /// # Errors
    /// When the store cannot be told (it then keeps the parts until a
    /// lifecycle rule removes them; no object appears either way).
    pub fn abort(mut self) -> Result<()> {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Open { upload, tasks } => abort_upload(upload, tasks).map_err(|e| {
                Error::new(
                    ErrorKind::Network,
                    Some(&self.name),
                    format!("aborting the upload: {e}; no object was created, but the store keeps the parts sent until a lifecycle rule removes them"),
                )
            }),
            State::Failed(_) | State::Done => Ok(()),
        }
    }

    fn check_open(&self) -> Result<()> {
        match self.state {
            State::Open { .. } => Ok(()),
            State::Failed(_) | State::Done => Err(self.failed_error()),
        }
    }

    fn failed_error(&self) -> Error {
        let why = match &self.state {
            State::Failed(why) => format!("the upload failed earlier ({why})"),
            _ => "the upload is finished".to_string(),
        };
        Error::new(ErrorKind::Aborted, Some(&self.name), why)
    }

    /// Sends the filled part, first waiting until fewer than `in_flight`
    /// parts are under way.
    fn send_part(&mut self) -> Result<()> {
        let in_flight = self.in_flight;
        let State::Open { upload, tasks } = &mut self.state else {
            return Err(self.failed_error());
        };
        if let Err((part, e)) = block_on(wait_parts(tasks, in_flight - 1, &mut self.spare))? {
            let doing = format!("uploading part {part}");
            return Err(self.fail(from_store(&self.name.clone(), &doing, &e)));
        }
        let data = Bytes::from(std::mem::take(&mut self.buf));
        let mine = data.clone();
        self.stats.parts += 1;
        let (n, fut) = (self.stats.parts, upload.put_part(PutPayload::from(data)));
        tasks.spawn_on(
            async move {
                let r = fut.await;
                // The request and its retries are over (the future is
                // gone): the buffer comes back unless something still
                // holds it, in which case a new one is made.
                let back = mine.try_into_mut().ok().map(Vec::from);
                (n, r, back)
            },
            &handle()?,
        );
        Ok(())
    }

    /// Aborts after an error and returns it, saying whether the abort worked.
    fn fail(&mut self, e: Error) -> Error {
        let state = std::mem::replace(&mut self.state, State::Failed(e.message().to_string()));
        let State::Open { upload, tasks } = state else {
            return e;
        };
        let note = match abort_upload(upload, tasks) {
            Ok(()) => "; the upload was aborted, no object was created".to_string(),
            Err(ae) => format!(
                "; aborting the upload failed too ({ae}): no object was created, but the store keeps the parts sent until a lifecycle rule removes them"
            ),
        };
        let message = format!("{}{note}", e.message());
        self.state = State::Failed(message.clone());
        Error::new(e.kind(), Some(&self.name), message)
    }
}

/// Waits until at most `left` parts are under way, keeping the buffers
/// they give back in `spare`; the first part that failed stops the wait,
/// with its number.
async fn wait_parts(
    tasks: &mut Parts,
    left: usize,
    spare: &mut Vec<Vec<u8>>,
) -> std::result::Result<(), (u64, object_store::Error)> {
    while tasks.len() > left {
        match tasks.join_next().await {
            Some(Ok((_, Ok(()), back))) => spare.extend(back),
            Some(Ok((n, Err(e), _))) => return Err((n, e)),
            Some(Err(e)) => return Err((0, object_store::Error::JoinError { source: e })),
            None => break,
        }
    }
    Ok(())
}

/// Stops the parts under way and tells the store to drop the upload.
fn abort_upload(
    mut upload: Box<dyn MultipartUpload>,
    mut tasks: Parts,
) -> std::result::Result<(), String> {
    block_on(async move {
        tasks.shutdown().await;
        upload.abort().await
    })
    .map_err(|e| e.to_string())?
    .map_err(|e| crate::error::one_line(&e))
}

impl Write for RemoteWriter {
    fn write(&mut self, mut data: &[u8]) -> std::io::Result<usize> {
        self.check_open().map_err(Error::into_io)?;
        let n = data.len();
        while !data.is_empty() {
            if self.buf.capacity() == 0 {
                self.buf = match self.spare.pop() {
                    Some(b) => b,
                    None => {
                        self.made += 1;
                        Vec::new()
                    }
                };
                self.buf.clear();
                self.buf.reserve_exact(self.part_size);
            }
            let take = (self.part_size - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            self.stats.bytes += take as u64;
            if self.buf.len() == self.part_size {
                self.send_part().map_err(Error::into_io)?;
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.check_open().map_err(Error::into_io)
    }
}

impl Drop for RemoteWriter {
    fn drop(&mut self) {
        if let State::Open { upload, tasks } = std::mem::replace(&mut self.state, State::Done) {
            // Best effort: an error here has no one to go to. The parts stay
            // invisible either way.
            let _ = abort_upload(upload, tasks);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use object_store::{PutResult, UploadPart};

    use super::*;

    /// The parts received, each with its number (from 0).
    type Got = Arc<Mutex<Vec<(usize, Vec<u8>)>>>;

    /// Keeps the bytes of every part, by part number, and lets go of the
    /// payload at once.
    #[derive(Debug, Default)]
    struct Sink {
        parts: usize,
        got: Got,
    }

    #[async_trait::async_trait]
    impl MultipartUpload for Sink {
        fn put_part(&mut self, data: PutPayload) -> UploadPart {
            let got = Arc::clone(&self.got);
            let n = self.parts;
            self.parts += 1;
            Box::pin(async move {
                let mut g = got
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                g.push((n, data.iter().flatten().copied().collect()));
                Ok(())
            })
        }

        async fn complete(&mut self) -> object_store::Result<PutResult> {
            Ok(PutResult {
                e_tag: None,
                version: None,
                extensions: Default::default(),
            })
        }

        async fn abort(&mut self) -> object_store::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn part_buffers_come_back_and_stay_bounded() {
        let sink = Sink::default();
        let got = Arc::clone(&sink.got);
        let opts = UploadOptions {
            part_size: MIN_PART_SIZE,
            parts_in_flight: 2,
        };
        let mut w = RemoteWriter::from_upload(Box::new(sink), "test", opts);
        let data: Vec<u8> = (0..MIN_PART_SIZE * 7 + 123)
            .map(|i| (i % 251).to_le_bytes()[0])
            .collect();
        for piece in data.chunks(300_000) {
            w.write_all(piece).unwrap();
            // Part buffers: the one filling, the spares and those under way.
            let State::Open { tasks, .. } = &w.state else {
                panic!("the upload failed")
            };
            let filling = usize::from(w.buf.capacity() > 0);
            assert!(filling + w.spare.len() + tasks.len() <= opts.parts_in_flight + 1);
        }
        assert_eq!(w.stats().parts, 7);
        // Eight buffers were filled (the last is filling), but parts that
        // were answered gave theirs back: no more were made than the bound.
        assert!(w.made <= 3, "{} part buffers made", w.made);
        let c = w.commit().unwrap();
        assert_eq!(c.stats.parts, 8);
        let mut got = std::mem::take(&mut *got.lock().unwrap());
        got.sort_by_key(|(n, _)| *n);
        let got: Vec<u8> = got.into_iter().flat_map(|(_, b)| b).collect();
        assert!(got == data, "every byte, in order");
    }
}
