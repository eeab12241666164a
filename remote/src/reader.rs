//! Reading an object by ranges: [`RemoteReader`], the [`memimg::ReadAt`] of
//! an object in S3-compatible storage.
//!
//! Opening costs one HEAD (the object's size and ETag), never a download.
//! A small read then fetches only the blocks it lacks, with one ranged GET
//! per run of adjacent missing blocks (the runs of one read are fetched at
//! once), and keeps them in a small LRU cache: opening an image reads 128
//! bytes and then the page at offset 0, then the trailer, then the index, and
//! the block holding the trailer often holds the end of the index too. A
//! read of two blocks or more (a chunk, a large index) is one GET of exactly
//! its bytes, less those that cached blocks hold at either end (so the end
//! of the index is not fetched twice), kept by range in a cache of its own,
//! so that reading a chunk costs the chunk. [`RemoteReader::fetch_many`] serves bulk reads
//! (verify, copies, a restore's prefetcher) with several requests in flight,
//! past the cache.
//!
//! Every GET carries `If-Match` with the ETag seen when opening, so an object
//! replaced while it is read gives [`ErrorKind::Changed`] instead of a mix of
//! two images.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};

use crate::cache::BlockCache;
use crate::error::{from_store, Error, ErrorKind, Result};
use crate::location::S3Url;
use crate::runtime::{block_on, spawn};
use crate::S3Options;

/// Size of a cached block. By default 4 KiB: what a reader reads in small
/// pieces (the first 128 bytes and then the page of the header, the 256-byte
/// trailer) costs a page each, so opening an image fetches little more than
/// its header page, index and trailer. Everything large is read exactly.
pub const DEFAULT_BLOCK_SIZE: u32 = 4 << 10;
/// Bytes kept per reader, for small reads (by block) and again for large
/// ones (by exact range). By default 4 MiB each.
pub const DEFAULT_CACHE_BYTES: usize = 4 << 20;

/// Reads of at least this many blocks are fetched exactly and not cached.
const LARGE_READ_BLOCKS: u64 = 2;

/// How a [`RemoteReader`] caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReaderOptions {
    /// Reads shorter than two blocks fetch whole blocks of this size (the
    /// last block of the object may be shorter); longer ones fetch exactly
    /// their bytes. By default [`DEFAULT_BLOCK_SIZE`]; at least 4 KiB.
    pub block_size: u32,
    /// Bytes kept, least recently used out first, by each of the two
    /// caches: blocks of small reads, and large reads by exact range (a
    /// large read bigger than this is not kept). By default
    /// [`DEFAULT_CACHE_BYTES`], so at most 8 MiB per reader; 0 keeps none.
    pub cache_bytes: usize,
    /// For [`RemoteReader::open_ends_with`]: make the tail's GET together
    /// with the head's, instead of once the head's first page says it is
    /// needed. Off by default, so that an image whose index comes first
    /// (spec.md, *Index first*) opens with one GET, and a store that serves
    /// the GETs of one object one after the other does not serve a second
    /// first. On, any other image (its index at the end, or encrypted) opens
    /// one round trip sooner on a store that serves GETs in parallel and
    /// sends the head about as fast as a small answer (a local server), at
    /// the price of a second request for an image whose index comes first.
    /// Where sending the head takes longer than a round trip (4 MiB over a
    /// real network), the tail's GET made after its first page ends within
    /// it anyway.
    pub tail_with_head: bool,
}

impl Default for ReaderOptions {
    fn default() -> Self {
        ReaderOptions {
            block_size: DEFAULT_BLOCK_SIZE,
            cache_bytes: DEFAULT_CACHE_BYTES,
            tail_with_head: false,
        }
    }
}

/// How [`RemoteReader::fetch_many`] fetches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchOptions {
    /// Requests in flight at once. By default 4.
    pub concurrency: usize,
    /// Ranges next to each other in the list and in the object (at most
    /// `merge_gap` bytes apart) are fetched in one request of at most this
    /// many bytes. A single range larger than this is still one request. By
    /// default 8 MiB.
    pub max_request: u64,
    /// The largest gap between two ranges that are merged (the gap's bytes
    /// are fetched and dropped). By default 64 KiB.
    pub merge_gap: u64,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            concurrency: 4,
            max_request: 8 << 20,
            merge_gap: 64 << 10,
        }
    }
}

/// What a reader (or, from [`global_stats`], the whole process) has asked of
/// the store. Retries made inside object_store's client are not counted: a
/// request is counted once, however many attempts it took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// HEAD requests (one per open).
    pub head_requests: u64,
    /// Ranged GET requests.
    pub get_requests: u64,
    /// Bytes received by GET requests.
    pub bytes_fetched: u64,
    /// Blocks, and large reads, served from the cache.
    pub cache_hits: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    head: AtomicU64,
    get: AtomicU64,
    bytes: AtomicU64,
    hits: AtomicU64,
}

impl Counters {
    const fn new() -> Self {
        Counters {
            head: AtomicU64::new(0),
            get: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            hits: AtomicU64::new(0),
        }
    }

    fn snapshot(&self) -> Stats {
        Stats {
            head_requests: self.head.load(Ordering::Relaxed),
            get_requests: self.get.load(Ordering::Relaxed),
            bytes_fetched: self.bytes.load(Ordering::Relaxed),
            cache_hits: self.hits.load(Ordering::Relaxed),
        }
    }
}

static GLOBAL: Counters = Counters::new();

/// Totals over every reader of this process, for tools that report what a
/// command fetched (`imgtool` with a statistics option, the benchmark).
pub fn global_stats() -> Stats {
    GLOBAL.snapshot()
}

fn count(local: &Counters, f: impl Fn(&Counters)) {
    f(local);
    f(&GLOBAL);
}

/// An object in S3-compatible storage, read by ranges.
///
/// It implements [`memimg::ReadAt`], so `Image::from_read_at(Arc::new(reader),
/// key)` opens a remote image fetching only the header page, the trailer and
/// the index, and then one chunk per chunk read. Reads may come from many
/// threads at once.
pub struct RemoteReader {
    store: Arc<dyn ObjectStore>,
    path: object_store::path::Path,
    name: String,
    len: u64,
    e_tag: Option<String>,
    block: u64,
    cache: Mutex<BlockCache>,
    /// Large reads, by exact range: a second open of the same image reads
    /// the same index, and a restore or cat may read a chunk again.
    ranges: Mutex<BlockCache<(u64, u64)>>,
    /// The object's ends, fetched when it was opened by them
    /// ([`RemoteReader::open_ends_with`]): (offset, bytes), kept while the
    /// reader lives; every read they hold is served from them.
    ends: Vec<(u64, Bytes)>,
    counters: Counters,
}

impl std::fmt::Debug for RemoteReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteReader")
            .field("object", &self.name)
            .field("len", &self.len)
            .field("e_tag", &self.e_tag)
            .finish_non_exhaustive()
    }
}

impl RemoteReader {
    /// Opens `url` with `s3` settings and default caching: one HEAD request.
    ///
    /// # Errors
    /// [`ErrorKind::NoSuchBucket`], [`ErrorKind::NoSuchKey`],
    /// [`ErrorKind::AccessDenied`], [`ErrorKind::Network`] after the retries,
    /// [`ErrorKind::Config`] for unusable settings.
    pub fn open(url: &S3Url, s3: &S3Options) -> Result<RemoteReader> {
        Self::open_with(s3.store(&url.bucket)?, url, ReaderOptions::default())
    }

    /// Opens `url` in a store the caller built (for tests that inject faults,
    /// and for callers that reuse one client for many objects).
    ///
    /// # Errors
    /// As [`RemoteReader::open`].
    pub fn open_with(
        store: Arc<dyn ObjectStore>,
        url: &S3Url,
        opts: ReaderOptions,
    ) -> Result<RemoteReader> {
        let name = url.to_string();
        let path = url.path();
        let counters = Counters::default();
        count(&counters, |c| {
            c.head.fetch_add(1, Ordering::Relaxed);
        });
        let meta = match block_on(store.head(&path))? {
            Ok(m) => m,
            Err(e) => {
                return Err(explain(
                    &*store,
                    &path,
                    &name,
                    "reading the object's size",
                    &e,
                    &counters,
                ))
            }
        };
        Ok(RemoteReader {
            store,
            path,
            name,
            len: meta.size,
            e_tag: meta.e_tag,
            block: u64::from(opts.block_size.max(4096)),
            cache: Mutex::new(BlockCache::new(opts.cache_bytes)),
            ranges: Mutex::new(BlockCache::new(opts.cache_bytes)),
            ends: Vec::new(),
            counters,
        })
    }

    /// Opens `url` by its ends, for a caller that reads an image at once
    /// and must be quick about it (a lazy restore): instead of a HEAD, one
    /// GET of its first `head` bytes (rounded up to whole blocks) and one
    /// suffix GET of its last `tail` bytes (the object's size and ETag come
    /// from the answers). Both are kept while the reader lives, and every
    /// read they hold is served from them, so opening an image then costs
    /// these two requests, plus one GET of the index when `tail` does not
    /// hold it: two round trips instead of four.
    ///
    /// The tail's GET is made once the first page of the head's answer has
    /// come (the header page: a round trip, while the rest of the head is
    /// still arriving), and only when it is needed: not for an image whose
    /// index comes first (spec.md, *Index first*;
    /// [`memimg::front_open_need`]), which `Image::from_read_at` opens from
    /// its front (from the head alone, or with one GET more for an index
    /// that ends past it), nor when the head holds the whole object. So an
    /// image laid out for it opens with one GET, and a store that serves
    /// the GETs of one object one after the other (moto) does not make it
    /// wait for a second. Bytes of the tail's GET are used only when its
    /// answer has the head's ETag and size.
    ///
    /// A `head` larger than the header page brings the start of the data
    /// with it, where an image laid out by a profile (spec.md, *Load
    /// order*) keeps its working set: a large read that the ends hold is
    /// served from them, and one that runs past them fetches only the rest,
    /// with one GET. Memory: the ends are `head + tail` bytes at most, kept
    /// while the reader lives, besides the two caches.
    ///
    /// A store that does not answer the suffix GET as asked (an empty
    /// object, a server without suffix ranges) is opened as by
    /// [`RemoteReader::open_with`], with a HEAD.
    ///
    /// # Errors
    /// As [`RemoteReader::open`].
    pub fn open_ends_with(
        store: Arc<dyn ObjectStore>,
        url: &S3Url,
        opts: ReaderOptions,
        head: u64,
        tail: u64,
    ) -> Result<RemoteReader> {
        let name = url.to_string();
        let path = url.path();
        let counters = Counters::default();
        let bs = u64::from(opts.block_size.max(4096));
        let head = head.div_ceil(bs).saturating_mul(bs);
        let get = |range: GetRange| {
            let store = Arc::clone(&store);
            let path = path.clone();
            async move {
                let opts = GetOptions {
                    range: Some(range),
                    ..GetOptions::default()
                };
                let r = store.get_opts(&path, opts).await?;
                let (meta, range) = (r.meta.clone(), r.range.clone());
                let bytes = r.bytes().await?;
                Ok::<_, object_store::Error>((meta, range, bytes))
            }
        };
        // The head: its first page says whether the tail is needed.
        let (need_tail, tail_wanted) = tokio::sync::oneshot::channel::<bool>();
        let mut need_tail = Some(need_tail);
        if head == 0 || opts.tail_with_head {
            if let Some(tx) = need_tail.take() {
                let _ = tx.send(true);
            }
        }
        let head_fut = {
            let store = Arc::clone(&store);
            let path = path.clone();
            async move {
                if head == 0 {
                    return None;
                }
                let get = GetOptions {
                    range: Some(GetRange::Bounded(0..head)),
                    ..GetOptions::default()
                };
                let r = match store.get_opts(&path, get).await {
                    Ok(r) => r,
                    Err(e) => {
                        if let Some(tx) = need_tail.take() {
                            let _ = tx.send(true);
                        }
                        return Some(Err(e));
                    }
                };
                let (meta, range) = (r.meta.clone(), r.range.clone());
                let whole = range.start == 0 && range.end == meta.size;
                let want = usize::try_from(range.end - range.start).unwrap_or(usize::MAX);
                let mut buf = Vec::with_capacity(want.min(usize_of(head)));
                let mut stream = r.into_stream();
                while let Some(piece) = stream.next().await {
                    match piece {
                        Ok(b) => buf.extend_from_slice(&b),
                        Err(e) => {
                            if let Some(tx) = need_tail.take() {
                                let _ = tx.send(true);
                            }
                            return Some(Err(e));
                        }
                    }
                    if need_tail.is_some() {
                        let decided = if whole {
                            Some(false)
                        } else {
                            // An image whose index comes first never needs
                            // its tail: an index that ends past the head is
                            // read from the front, the rest in one GET.
                            memimg::front_open_need(&buf).map(|n| n.is_none())
                        };
                        if let Some(d) = decided {
                            if let Some(tx) = need_tail.take() {
                                let _ = tx.send(d);
                            }
                        }
                    }
                }
                if let Some(tx) = need_tail.take() {
                    let _ = tx.send(true);
                }
                Some(Ok((meta, range, Bytes::from(buf))))
            }
        };
        let tail_fut = async {
            // A dropped sender (the head's future ended) also means: fetch it.
            if tail_wanted.await.unwrap_or(true) {
                Some(get(GetRange::Suffix(tail.max(1))).await)
            } else {
                None
            }
        };
        let (t, h) = block_on(futures_util::future::join(tail_fut, head_fut))?;
        count(&counters, |c| {
            c.get.fetch_add(
                u64::from(h.is_some()) + u64::from(t.is_some()),
                Ordering::Relaxed,
            );
        });
        // One GET held the image's front (or all of it): no tail.
        let (t, h) = match (t, h) {
            (None, Some(Ok((meta, range, bytes)))) => {
                if bytes.len() as u64 != range.end - range.start || range.start != 0 {
                    return Self::open_with(store, url, opts);
                }
                let mut reader =
                    Self::from_ends(store, path, name, meta, bs, &opts, counters, Vec::new());
                reader.add_bytes(bytes.len());
                reader.ends.push((0, bytes));
                return Ok(reader);
            }
            (None, _) => return Self::open_with(store, url, opts),
            (Some(t), h) => (t, h),
        };
        let (meta, range, bytes) = match t {
            Ok(got) => got,
            Err(e) => {
                let err = from_store(&name, "reading the object's end", &e);
                return match err.kind() {
                    ErrorKind::NoSuchBucket | ErrorKind::NoSuchKey | ErrorKind::AccessDenied => {
                        Err(explain(
                            &*store,
                            &path,
                            &name,
                            "reading the object's end",
                            &e,
                            &counters,
                        ))
                    }
                    ErrorKind::Network => Err(err),
                    _ => Self::open_with(store, url, opts),
                };
            }
        };
        let len = meta.size;
        if range.end != len || bytes.len() as u64 != range.end - range.start {
            return Self::open_with(store, url, opts);
        }
        let e_tag = meta.e_tag.clone();
        let mut reader = Self::from_ends(store, path, name, meta, bs, &opts, counters, Vec::new());
        reader.add_bytes(bytes.len());
        reader.ends.push((range.start, bytes));
        if let Some(Ok((m, r, b))) = h {
            reader.add_bytes(b.len());
            if m.e_tag == e_tag && m.size == len && b.len() as u64 == r.end - r.start {
                reader.ends.push((r.start, b));
            }
        }
        Ok(reader)
    }

    /// A reader of the object `meta` describes, holding `ends`.
    #[allow(clippy::too_many_arguments)]
    fn from_ends(
        store: Arc<dyn ObjectStore>,
        path: object_store::path::Path,
        name: String,
        meta: object_store::ObjectMeta,
        block: u64,
        opts: &ReaderOptions,
        counters: Counters,
        ends: Vec<(u64, Bytes)>,
    ) -> RemoteReader {
        RemoteReader {
            store,
            path,
            name,
            len: meta.size,
            e_tag: meta.e_tag,
            block,
            cache: Mutex::new(BlockCache::new(opts.cache_bytes)),
            ranges: Mutex::new(BlockCache::new(opts.cache_bytes)),
            ends,
            counters,
        }
    }

    /// The object's URL.
    pub fn url(&self) -> &str {
        &self.name
    }

    /// The object's ETag when it was opened, if the store gave one.
    pub fn e_tag(&self) -> Option<&str> {
        self.e_tag.as_deref()
    }

    /// What this reader has asked of the store so far.
    pub fn stats(&self) -> Stats {
        self.counters.snapshot()
    }

    /// Bytes held in the caches now (with the ends fetched when opening).
    pub fn cached_bytes(&self) -> usize {
        let blocks = self.cache.lock().map(|c| c.bytes()).unwrap_or(0);
        let ends: usize = self.ends.iter().map(|(_, b)| b.len()).sum();
        blocks + ends + self.ranges.lock().map(|c| c.bytes()).unwrap_or(0)
    }

    fn get_opts(&self, range: Range<u64>) -> GetOptions {
        GetOptions {
            if_match: self.e_tag.clone(),
            range: Some(GetRange::Bounded(range)),
            ..GetOptions::default()
        }
    }

    /// One ranged GET, checked for length. It is counted as a request when
    /// made; the caller counts its bytes when they arrive.
    fn fetch_fut(
        &self,
        range: Range<u64>,
    ) -> impl std::future::Future<Output = Result<Bytes>> + Send + 'static {
        let store = Arc::clone(&self.store);
        let path = self.path.clone();
        let name = self.name.clone();
        let opts = self.get_opts(range.clone());
        count(&self.counters, |c| {
            c.get.fetch_add(1, Ordering::Relaxed);
        });
        async move {
            let doing = || format!("reading bytes {:#x}..{:#x}", range.start, range.end);
            let res = store.get_opts(&path, opts).await;
            let bytes = match res {
                Ok(r) => r.bytes().await,
                Err(e) => Err(e),
            }
            .map_err(|e| from_store(&name, &doing(), &e))?;
            if bytes.len() as u64 != range.end - range.start {
                return Err(Error::new(
                    ErrorKind::Changed,
                    Some(&name),
                    format!(
                        "{}: the store sent {} bytes instead of {}: the object changed while it was being read",
                        doing(),
                        bytes.len(),
                        range.end - range.start
                    ),
                ));
            }
            Ok(bytes)
        }
    }

    fn add_bytes(&self, n: usize) {
        count(&self.counters, |c| {
            c.bytes.fetch_add(n as u64, Ordering::Relaxed);
        });
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<u64> {
        offset
            .checked_add(len)
            .filter(|&e| e <= self.len)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Store,
                    Some(&self.name),
                    format!(
                        "reading {len} bytes at {offset:#x}: past the end of the object ({} bytes)",
                        self.len
                    ),
                )
            })
    }

    fn read_blocks(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let end = self.check_range(offset, buf.len() as u64)?;
        for (at, b) in &self.ends {
            let held = offset
                .checked_sub(*at)
                .and_then(|s| b.get(usize_of(s)..usize_of(s).checked_add(buf.len())?));
            if let Some(h) = held {
                count(&self.counters, |c| {
                    c.hits.fetch_add(1, Ordering::Relaxed);
                });
                buf.copy_from_slice(h);
                return Ok(());
            }
        }
        let bs = self.block;
        if buf.len() as u64 >= LARGE_READ_BLOCKS * bs {
            // A large read (a chunk, an index) is fetched exactly, and kept
            // by its exact range: rounding it out to blocks would fetch up to
            // two blocks more, and splitting it into blocks would push out
            // the small, reused ones (header page, trailer).
            let key = (offset, end);
            let hit = self
                .ranges
                .lock()
                .map_err(|_| poisoned(&self.name))?
                .get(key);
            if let Some(d) = hit {
                count(&self.counters, |c| {
                    c.hits.fetch_add(1, Ordering::Relaxed);
                });
                buf.copy_from_slice(&d);
                return Ok(());
            }
            // What the object's ends hold at either end of the range is not
            // fetched again (the start of the data, where an optimized
            // image keeps its working set, comes with the header page),
            // nor are blocks that small reads brought in: the block holding
            // the trailer also holds the end of the index, so opening
            // fetches the header page, the index and the trailer and
            // nothing twice.
            let (s, e) = self.copy_held_ends(buf, offset, end);
            let (s, e) = self.copy_cached_ends(buf, offset, s, e)?;
            let data = if (s, e) == (offset, end) {
                let d = block_on(self.fetch_fut(offset..end))??;
                self.add_bytes(d.len());
                buf.copy_from_slice(&d);
                d
            } else {
                if s < e {
                    let d = block_on(self.fetch_fut(s..e))??;
                    self.add_bytes(d.len());
                    buf[usize_of(s - offset)..usize_of(e - offset)].copy_from_slice(&d);
                }
                Bytes::copy_from_slice(buf)
            };
            self.ranges
                .lock()
                .map_err(|_| poisoned(&self.name))?
                .insert(key, data);
            return Ok(());
        }
        let (first, last) = (offset / bs, (end - 1) / bs);
        let mut have: Vec<Option<Bytes>> = {
            let mut c = self.cache.lock().map_err(|_| poisoned(&self.name))?;
            (first..=last).map(|b| c.get(b)).collect()
        };
        let hits = have.iter().filter(|b| b.is_some()).count() as u64;
        count(&self.counters, |c| {
            c.hits.fetch_add(hits, Ordering::Relaxed);
        });
        // Runs of adjacent missing blocks: one GET each, all at once.
        let mut runs: Vec<Range<u64>> = Vec::new();
        for (i, b) in have.iter().enumerate() {
            if b.is_none() {
                let blk = first + i as u64;
                match runs.last_mut() {
                    Some(r) if r.end == blk => r.end = blk + 1,
                    _ => runs.push(blk..blk + 1),
                }
            }
        }
        if !runs.is_empty() {
            let futs: Vec<_> = runs
                .iter()
                .map(|r| self.fetch_fut(r.start * bs..(r.end * bs).min(self.len)))
                .collect();
            let fetched = block_on(futures_util::future::try_join_all(futs))??;
            let mut c = self.cache.lock().map_err(|_| poisoned(&self.name))?;
            for (r, data) in runs.iter().zip(fetched) {
                self.add_bytes(data.len());
                for blk in r.clone() {
                    let s = usize_of((blk - r.start) * bs);
                    let e = usize_of(((blk + 1 - r.start) * bs).min(data.len() as u64));
                    if s >= e {
                        continue;
                    }
                    let piece = data.slice(s..e);
                    c.insert(blk, piece.clone());
                    if let Some(slot) = have.get_mut(usize_of(blk - first)) {
                        *slot = Some(piece);
                    }
                }
            }
        }
        // Copy out: block `first + i` holds the object's bytes from
        // (first + i) * bs.
        let mut pos = offset;
        let mut out = 0usize;
        for (i, b) in have.iter().enumerate() {
            let Some(b) = b else { continue };
            let bstart = (first + i as u64) * bs;
            let s = usize_of(pos - bstart);
            let n = (b.len() - s.min(b.len())).min(buf.len() - out);
            buf[out..out + n].copy_from_slice(&b[s..s + n]);
            out += n;
            pos += n as u64;
        }
        if out != buf.len() {
            return Err(Error::new(
                ErrorKind::Changed,
                Some(&self.name),
                format!("reading {} bytes at {offset:#x}: the object is shorter than when it was opened", buf.len()),
            ));
        }
        Ok(())
    }

    /// Copies into `buf` (the bytes `offset..end`) what the object's ends
    /// (fetched when opening) hold at either end of the range, and returns
    /// the part `s..e` left to fetch (empty when they hold it all).
    fn copy_held_ends(&self, buf: &mut [u8], offset: u64, end: u64) -> (u64, u64) {
        let (mut s, mut e) = (offset, end);
        for (at, b) in &self.ends {
            let (lo, hi) = (*at, at.saturating_add(b.len() as u64));
            if s < e && lo <= s && s < hi {
                let upto = hi.min(e);
                buf[usize_of(s - offset)..usize_of(upto - offset)]
                    .copy_from_slice(&b[usize_of(s - lo)..usize_of(upto - lo)]);
                s = upto;
            }
            if s < e && lo < e && e <= hi {
                let from = lo.max(s);
                buf[usize_of(from - offset)..usize_of(e - offset)]
                    .copy_from_slice(&b[usize_of(from - lo)..usize_of(e - lo)]);
                e = from;
            }
        }
        if (s, e) != (offset, end) {
            count(&self.counters, |c| {
                c.hits.fetch_add(1, Ordering::Relaxed);
            });
        }
        (s, e)
    }

    /// Copies into `buf` (the bytes `offset..end`, of which `s..e` are
    /// still wanted) what cached blocks hold at either end of `s..e`, and
    /// returns the part left to fetch (empty when the cache holds it all).
    fn copy_cached_ends(&self, buf: &mut [u8], offset: u64, s: u64, e: u64) -> Result<(u64, u64)> {
        let bs = self.block;
        let mut c = self.cache.lock().map_err(|_| poisoned(&self.name))?;
        let mut hits = 0;
        let (mut s, mut e) = (s, e);
        // From the front: block `s / bs` holds the object's bytes from
        // `(s / bs) * bs`.
        while s < e {
            let blk = s / bs;
            let Some(b) = c.get(blk) else { break };
            let upto = (blk * bs + b.len() as u64).min(e);
            if upto <= s {
                break;
            }
            buf[usize_of(s - offset)..usize_of(upto - offset)]
                .copy_from_slice(&b[usize_of(s - blk * bs)..usize_of(upto - blk * bs)]);
            s = upto;
            hits += 1;
        }
        // From the back.
        while s < e {
            let blk = (e - 1) / bs;
            let Some(b) = c.get(blk) else { break };
            let from = (blk * bs).max(s);
            if blk * bs + (b.len() as u64) < e {
                break;
            }
            buf[usize_of(from - offset)..usize_of(e - offset)]
                .copy_from_slice(&b[usize_of(from - blk * bs)..usize_of(e - blk * bs)]);
            e = from;
            hits += 1;
        }
        drop(c);
        count(&self.counters, |c| {
            c.hits.fetch_add(hits, Ordering::Relaxed);
        });
        Ok((s, e))
    }

    /// Fetches `ranges` with up to `opts.concurrency` requests in flight and
    /// gives each range's bytes to `f(i, bytes)` in the order of `ranges`, on
    /// the calling thread, while the next requests are under way.
    ///
    /// This is for reading much of an object once: verify reading every
    /// stored byte, a copy, a restore's prefetcher. It bypasses the cache (so
    /// it neither thrashes it nor is served from it) and is counted in
    /// [`RemoteReader::stats`].
    ///
    /// Memory: at most `concurrency + 1` requests' bytes are held at once,
    /// each at most `max(opts.max_request, largest range)`.
    ///
    /// # Errors
    /// The first error of a request (after its retries) or of `f`; the
    /// requests still in flight are then dropped.
    pub fn fetch_many<E: From<Error>>(
        &self,
        ranges: &[Range<u64>],
        opts: FetchOptions,
        mut f: impl FnMut(usize, &[u8]) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        for r in ranges {
            if r.start > r.end {
                return Err(Error::new(
                    ErrorKind::Store,
                    Some(&self.name),
                    format!("the range {:#x}..{:#x} is reversed", r.start, r.end),
                )
                .into());
            }
            self.check_range(r.start, r.end - r.start)?;
        }
        // Requests: runs of consecutive ranges that sit close in the object.
        let mut reqs: Vec<(Range<u64>, Range<usize>)> = Vec::new();
        for (i, r) in ranges.iter().enumerate() {
            if let Some((span, idx)) = reqs.last_mut() {
                let near = r.start >= span.end && r.start - span.end <= opts.merge_gap;
                if near && r.end - span.start <= opts.max_request {
                    span.end = r.end;
                    idx.end = i + 1;
                    continue;
                }
            }
            reqs.push((r.clone(), i..i + 1));
        }
        // Each request runs as a task of its own, so bodies keep arriving
        // while `f` works; `buffered` starts them lazily, so at most
        // `concurrency` are in flight, and delivers them in order.
        let futs = reqs.iter().map(|(span, _)| {
            let span = span.clone();
            async move {
                if span.is_empty() {
                    return Ok(Bytes::new());
                }
                let task = AbortOnDrop(spawn(self.fetch_fut(span))?);
                task.join().await
            }
        });
        let mut results = stream::iter(futs).buffered(opts.concurrency.max(1));
        // Each result is awaited in a block_on of its own and `f` runs
        // outside it, so `f` may itself use this crate (write the bytes into
        // a RemoteWriter, read another object) without nesting runtimes.
        for (span, idx) in &reqs {
            let Some(res) = block_on(results.next())? else {
                break;
            };
            let data: Bytes = res?;
            self.add_bytes(data.len());
            for i in idx.clone() {
                let r = &ranges[i];
                let s = usize_of(r.start - span.start);
                let e = usize_of(r.end - span.start);
                let piece = data.get(s..e).ok_or_else(|| {
                    Error::new(
                        ErrorKind::Changed,
                        Some(&self.name),
                        "a range came back short",
                    )
                })?;
                f(i, piece)?;
            }
        }
        Ok(())
    }
}

impl memimg::ReadAt for RemoteReader {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.read_blocks(buf, offset).map_err(Error::into_io)
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

/// A spawned request that is cancelled when dropped: when `fetch_many` stops
/// on an error, the requests still in flight stop with it.
struct AbortOnDrop(tokio::task::JoinHandle<Result<Bytes>>);

impl AbortOnDrop {
    async fn join(mut self) -> Result<Bytes> {
        (&mut self.0)
            .await
            .map_err(|e| Error::new(ErrorKind::Store, None, format!("a fetch task failed: {e}")))?
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn poisoned(name: &str) -> Error {
    Error::new(
        ErrorKind::Store,
        Some(name),
        "the block cache lock was poisoned by a panic",
    )
}

/// An offset within one in-memory buffer; buffers are at most a request
/// long, so this always fits.
fn usize_of(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// Turns a HEAD failure into a precise error. A HEAD answer has no body, so
/// a 404 cannot say whether the bucket or the key is missing, and a 403 does
/// not say why; a one-byte GET does (`NoSuchBucket`, `NoSuchKey`,
/// `InvalidAccessKeyId`, `SignatureDoesNotMatch`…). The probe is made only on
/// this error path.
pub(crate) fn explain(
    store: &dyn ObjectStore,
    path: &object_store::path::Path,
    name: &str,
    doing: &str,
    e: &object_store::Error,
    counters: &Counters,
) -> Error {
    use object_store::Error as E;
    let first = from_store(name, doing, e);
    if !matches!(
        e,
        E::NotFound { .. } | E::PermissionDenied { .. } | E::Unauthenticated { .. }
    ) {
        return first;
    }
    match probe(store, path, name, doing, counters) {
        Some(second)
            if second.kind() == first.kind() || second.kind() == ErrorKind::NoSuchBucket =>
        {
            second
        }
        _ => first,
    }
}

/// The error of a one-byte GET of `path`, or `None` when it succeeds (or
/// cannot be made).
pub(crate) fn probe(
    store: &dyn ObjectStore,
    path: &object_store::path::Path,
    name: &str,
    doing: &str,
    counters: &Counters,
) -> Option<Error> {
    count(counters, |c| {
        c.get.fetch_add(1, Ordering::Relaxed);
    });
    let res = block_on(store.get_opts(
        path,
        GetOptions {
            range: Some(GetRange::Bounded(0..1)),
            ..GetOptions::default()
        },
    ))
    .ok()?;
    res.err().map(|e| from_store(name, doing, &e))
}
