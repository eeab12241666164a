//! The single-pass writer.
//!
//! A [`Writer`] writes the header at once, then streams chunks as regions are
//! pushed, and writes the index and trailer in [`Writer::finish`]. It never
//! seeks, so it can write to a pipe or a socket. Chunks are compressed,
//! encrypted and checksummed on a pool of worker threads and written in order;
//! at most `2 × workers + 1` chunks are in flight, so memory stays bounded by a
//! few chunks per worker whatever the size of the image.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use xxhash_rust::xxh3::{xxh3_128, xxh3_64, Xxh3};

use crate::codec::{Codec, Compressor};
use crate::crypt::{self, DataKey, Key};
use crate::error::{Error, ErrorKind, Result};
use crate::model::{
    Features, MachineFacts, Note, ParentRecord, ProcessFacts, RegionInfo, Validation,
};
use crate::raw::{self, *};
use crate::zero::is_zero;
use crate::{meta, DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE};

/// Options for a [`Writer`], set through a builder.
///
/// ```
/// use memimg::{Codec, WriterOptions};
/// let opts = WriterOptions::new().codec(Codec::Zstd(3)).chunk_size(512 * 1024);
/// ```
#[derive(Debug, Clone)]
pub struct WriterOptions {
    pub(crate) page_size: u32,
    pub(crate) chunk_size: u32,
    pub(crate) codec: Codec,
    pub(crate) workers: usize,
    pub(crate) key: Option<Key>,
    pub(crate) validation: Option<Validation>,
    pub(crate) producer: String,
    pub(crate) machine: MachineFacts,
    pub(crate) process: Option<ProcessFacts>,
    pub(crate) notes: Vec<Note>,
    pub(crate) page_digests: bool,
    pub(crate) parent: Option<ParentRecord>,
    pub(crate) parent_hint: Option<String>,
    /// The page size and machine of the parent named through
    /// [`WriterOptions::parent_of`], which the image must share.
    pub(crate) parent_facts: Option<(u32, MachineFacts)>,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions::new()
    }
}

impl WriterOptions {
    /// The defaults: the machine's page size, [`DEFAULT_CHUNK_SIZE`] chunks,
    /// zstd level 1, one worker per core (at most 8), no encryption.
    pub fn new() -> Self {
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(8);
        WriterOptions {
            page_size: crate::page_size(),
            chunk_size: DEFAULT_CHUNK_SIZE,
            codec: Codec::default(),
            workers,
            key: None,
            validation: None,
            producer: format!("memimg {}", env!("CARGO_PKG_VERSION")),
            machine: MachineFacts::current(),
            process: None,
            notes: Vec::new(),
            page_digests: false,
            parent: None,
            parent_hint: None,
            parent_facts: None,
        }
    }

    /// The image page size: 4096, 16384 or 65536. By default, the machine's.
    pub fn page_size(mut self, page_size: u32) -> Self {
        self.page_size = page_size;
        self
    }

    /// The largest chunk, a multiple of the page size up to 16 MiB. By default
    /// [`DEFAULT_CHUNK_SIZE`].
    pub fn chunk_size(mut self, chunk_size: u32) -> Self {
        self.chunk_size = chunk_size;
        self
    }

    /// The codec. By default zstd level 1.
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// Worker threads that compress and encrypt; 0 does the work on the
    /// calling thread. By default one per core, at most 8.
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// Encrypts the image; the data key is wrapped under `key`. By default the
    /// image is not encrypted.
    pub fn key(mut self, key: Key) -> Self {
        self.key = Some(key);
        self
    }

    /// Sets or clears the key.
    pub fn key_opt(mut self, key: Option<Key>) -> Self {
        self.key = key;
        self
    }

    /// Application validation data (tag ≤ 64 bytes, data ≤ 2048 bytes).
    pub fn validation(mut self, tag: impl Into<Vec<u8>>, data: impl Into<Vec<u8>>) -> Self {
        self.validation = Some(Validation {
            tag: tag.into(),
            data: data.into(),
        });
        self
    }

    /// Sets or clears the validation data.
    pub fn validation_opt(mut self, v: Option<Validation>) -> Self {
        self.validation = v;
        self
    }

    /// The producer string (≤ 128 bytes). By default `memimg VERSION`.
    pub fn producer(mut self, producer: impl Into<String>) -> Self {
        self.producer = producer.into();
        self
    }

    /// The machine facts. By default those of this machine.
    pub fn machine(mut self, machine: MachineFacts) -> Self {
        self.machine = machine;
        self
    }

    /// Process facts for the header. Over-long cmdline and paths are cut to the
    /// spec's limits. By default none.
    pub fn process(mut self, process: Option<ProcessFacts>) -> Self {
        self.process = process;
        self
    }

    /// Writes a digest of every stored page in the index (spec.md, *Page
    /// digests*), so that a child written against this image can tell
    /// which pages changed from its index alone, without decoding its
    /// chunks. It costs 8 bytes of index per stored page and a hash of each
    /// page. By default off.
    pub fn page_digests(mut self, on: bool) -> Self {
        self.page_digests = on;
        self
    }

    /// Named notes for the index body. By default none.
    pub fn notes(mut self, notes: Vec<Note>) -> Self {
        self.notes = notes;
        self
    }

    /// Makes the image an incremental image (format 1.1) whose parent is
    /// `parent`: the header carries the parent record, and
    /// [`Writer::push_in_parent`] records pages as the parent's. The parent
    /// must have the image's page size and machine, which a reader checks;
    /// [`WriterOptions::parent_of`] checks them when writing. By default an
    /// image has no parent.
    pub fn parent(mut self, parent: ParentRecord) -> Self {
        self.parent = Some(parent);
        self.parent_facts = None;
        self
    }

    /// Makes the image a child of `parent` (an open image, full or itself a
    /// child): its id, the checksum of its index, and its depth plus one;
    /// the image's page size and machine facts are set to the parent's.
    ///
    /// # Errors
    /// `InvalidInput` when the parent is already at the deepest depth a
    /// chain may have ([`crate::MAX_CHAIN_DEPTH`]).
    pub fn parent_of(mut self, parent: &crate::Image) -> Result<Self> {
        self.parent = Some(parent.as_parent()?);
        let h = parent.header();
        self.page_size = h.page_size;
        self.machine = h.machine;
        self.parent_facts = Some((h.page_size, h.machine));
        Ok(self)
    }

    /// Where the parent is, for readers to find it (at most 1024 bytes of
    /// UTF-8): a path relative to the image's directory (it survives moving
    /// the chain as a whole), an absolute path, or a URL. It is stored in
    /// clear, even in an encrypted image; leave it out to reveal no path. By
    /// default there is none.
    pub fn parent_hint(mut self, hint: impl Into<String>) -> Self {
        self.parent_hint = Some(hint.into());
        self
    }

    /// Sets or clears the parent and its hint at once (a transcode keeps
    /// its source's; a flatten clears them).
    pub fn parent_opt(mut self, parent: Option<ParentRecord>, hint: Option<String>) -> Self {
        self.parent = parent;
        self.parent_hint = hint;
        self.parent_facts = None;
        self
    }

    /// The parent in force.
    pub fn get_parent(&self) -> Option<&ParentRecord> {
        self.parent.as_ref()
    }

    /// The codec in force.
    pub fn get_codec(&self) -> Codec {
        self.codec
    }

    /// The page size in force.
    pub fn get_page_size(&self) -> u32 {
        self.page_size
    }
}

/// What a finished write produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// The new image's id.
    pub image_id: [u8; 16],
    /// Regions written.
    pub regions: u64,
    /// Chunks written.
    pub chunks: u64,
    /// Bytes of non-zero pages (the raw size of all chunks).
    pub data_bytes: u64,
    /// Stored bytes of all chunks.
    pub stored_bytes: u64,
    /// Pages recorded as zero.
    pub zero_pages: u64,
    /// Pages recorded as not captured.
    pub absent_pages: u64,
    /// Pages recorded as the parent's (an incremental image).
    pub in_parent_pages: u64,
    /// Total bytes written.
    pub file_len: u64,
    /// `xxh3_64` of the index written: what a child's parent record names
    /// (with [`WriteStats::image_id`] and the depth).
    pub index_checksum: u64,
}

struct Job {
    ordinal: u64,
    aad: Option<[u8; 48]>,
    raw: Vec<u8>,
    out: Vec<u8>,
}

struct Done {
    ordinal: u64,
    raw_checksum: u128,
    /// The digest of each page, when the image has page digests.
    digests: Vec<u64>,
    stored_checksum: u64,
    compressed: bool,
    /// When `compressed` or encrypted, the stored bytes; otherwise empty and
    /// `raw` is stored as is.
    stored: Vec<u8>,
    raw: Vec<u8>,
}

struct Encoder {
    compressor: Compressor,
    dek: Option<DataKey>,
    /// The page size, when each page's digest is taken.
    digest_pages: Option<u32>,
}

impl Encoder {
    fn new(codec: Codec, dek: Option<&DataKey>, digest_pages: Option<u32>) -> Result<Encoder> {
        Ok(Encoder {
            compressor: Compressor::new(codec).map_err(|e| Error::io("starting zstd", e))?,
            dek: dek.cloned(),
            digest_pages,
        })
    }

    fn encode(&mut self, mut job: Job) -> Result<Done> {
        let raw_checksum = xxh3_128(&job.raw);
        let digests = match self.digest_pages {
            Some(ps) => crate::read::page_digests_of(&job.raw, ps).collect(),
            None => Vec::new(),
        };
        let compressed = self.compressor.compress(&job.raw, &mut job.out);
        let stored_checksum;
        if let Some(dek) = &self.dek {
            if !compressed {
                job.out.clear();
                job.out.extend_from_slice(&job.raw);
            }
            let aad = job.aad.unwrap_or([0; 48]);
            dek.seal(&crypt::chunk_nonce(job.ordinal), &aad, &mut job.out)?;
            stored_checksum = xxh3_64(&job.out);
        } else if compressed {
            stored_checksum = xxh3_64(&job.out);
        } else {
            job.out.clear();
            stored_checksum = xxh3_64(&job.raw);
        }
        Ok(Done {
            ordinal: job.ordinal,
            raw_checksum,
            digests,
            stored_checksum,
            compressed,
            stored: job.out,
            raw: job.raw,
        })
    }
}

/// Chunks of at most this many bytes (four 4 KiB pages) are encoded on the
/// writer's own thread even when it has workers. Handing a chunk to a worker
/// and taking it back costs a few microseconds of wake-ups, more than
/// checksumming (or compressing) a page or two: a child image whose changes
/// are scattered is made of one-page chunks, thousands of them (`strace -f`
/// of a 1 GiB persist with 1% of pages changed: 2,567 one-page chunks, 7,118
/// `futex` calls).
const INLINE_MAX: usize = 16 << 10;

struct Pool {
    jobs: Option<SyncSender<Job>>,
    results: Receiver<Result<Done>>,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    fn new(
        workers: usize,
        codec: Codec,
        dek: Option<&DataKey>,
        digest_pages: Option<u32>,
    ) -> Result<Pool> {
        let (jtx, jrx) = mpsc::sync_channel::<Job>(workers * 2);
        let (rtx, rrx) = mpsc::channel();
        let jrx = Arc::new(Mutex::new(jrx));
        let mut threads = Vec::with_capacity(workers);
        for i in 0..workers {
            let jrx = Arc::clone(&jrx);
            let rtx = rtx.clone();
            let mut enc = Encoder::new(codec, dek, digest_pages)?;
            let t = std::thread::Builder::new()
                .name(format!("memimg-enc-{i}"))
                .spawn(move || loop {
                    let job = match jrx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok(job) = job else { return };
                    if rtx.send(enc.encode(job)).is_err() {
                        return;
                    }
                })
                .map_err(|e| Error::io("starting a writer thread", e))?;
            threads.push(t);
        }
        Ok(Pool {
            jobs: Some(jtx),
            results: rrx,
            threads,
        })
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Writes every byte through to `W` and counts them.
struct Counting<W> {
    inner: W,
    pos: u64,
}

impl<W: Write> Counting<W> {
    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.inner
            .write_all(bytes)
            .map_err(|e| Error::io("writing the image", e))?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    fn zeros(&mut self, mut n: u64) -> Result<()> {
        const Z: [u8; 4096] = [0; 4096];
        while n > 0 {
            let k = n.min(Z.len() as u64);
            // k ≤ 4096, so the cast is lossless.
            #[allow(clippy::cast_possible_truncation)]
            self.put(&Z[..k as usize])?;
            n -= k;
        }
        Ok(())
    }
}

struct OpenRegion {
    index: u32,
    start: u64,
    end: u64,
    /// Next address to be pushed.
    next: u64,
    first_extent: usize,
}

/// Writes an image to any `Write`, in a single pass.
///
/// Regions must be added in ascending address order without overlap. Each
/// region's bytes are pushed as data (zero pages are detected and not stored),
/// zeros, or absent (not captured) runs, which together must cover it; or the
/// region is added with no data at all.
///
/// ```
/// use memimg::{RegionInfo, Writer, WriterOptions};
/// let page = 4096;
/// let mut w = Writer::new(Vec::new(), WriterOptions::new().page_size(page))?;
/// w.add_region(RegionInfo::new(0x10000, 2 * page as u64).name("[heap]"), &vec![7u8; 2 * page as usize])?;
/// let (bytes, stats) = w.finish()?;
/// assert_eq!(stats.chunks, 1);
/// # Ok::<(), memimg::Error>(())
/// ```
pub struct Writer<W: Write> {
    out: Counting<W>,
    page_size: u32,
    chunk_pages: u32,
    header_page: Vec<u8>,
    image_id: [u8; 16],
    encrypted: bool,
    dek: Option<DataKey>,
    key_slot: KeySlotRaw,
    parent: Option<ParentRecord>,
    notes: Vec<Note>,
    /// The digest of every stored page, in chunk order, when the image has
    /// page digests (`PAGE_DIGESTS`).
    digests: Option<Vec<u64>>,
    regions: Vec<RegionRaw>,
    extents: Vec<ExtentRaw>,
    strings: Vec<u8>,
    chunks: Vec<ChunkEntryRaw>,
    open: Option<OpenRegion>,
    /// The non-zero pages waiting to become a chunk, and their address.
    pending: Vec<u8>,
    pending_addr: u64,
    spare: Vec<Vec<u8>>,
    next_chunk: u64,
    written_chunks: u64,
    reorder: BTreeMap<u64, Done>,
    in_flight: usize,
    /// The encoder of the writer's own thread: every chunk without workers,
    /// chunks of at most [`INLINE_MAX`] bytes with them (made on first use).
    inline: Option<Encoder>,
    codec: Codec,
    pool: Option<Pool>,
    max_in_flight: usize,
    stats: WriteStats,
}

impl<W: Write> Writer<W> {
    /// Starts an image: checks the options and writes the header.
    ///
    /// # Errors
    /// When an option is out of range (page size, chunk size, validation data
    /// too long, header metadata over one page), or writing fails.
    pub fn new(out: W, opts: WriterOptions) -> Result<Self> {
        let ps = opts.page_size;
        if !matches!(ps, 4096 | 16384 | 65536) {
            return Err(invalid(format!(
                "page size {ps} is not allowed: use 4096, 16384 or 65536"
            )));
        }
        let cs = opts.chunk_size;
        if cs < ps || !cs.is_multiple_of(ps) || cs > MAX_CHUNK_SIZE {
            return Err(invalid(format!(
                "chunk size {cs} must be a multiple of the page size {ps}, at most {MAX_CHUNK_SIZE}"
            )));
        }
        if let Some(p) = &opts.parent {
            if p.depth == 0 || p.depth > crate::MAX_CHAIN_DEPTH {
                return Err(invalid(format!(
                    "a child's depth is from 1 to {}, not {}",
                    crate::MAX_CHAIN_DEPTH,
                    p.depth
                )));
            }
        }
        if let Some((pps, machine)) = opts.parent_facts {
            if pps != ps {
                return Err(invalid(format!(
                    "the parent has {pps}-byte pages: a child keeps its parent's page size, not {ps}"
                )));
            }
            if let Some(what) = machine.first_difference(&opts.machine) {
                return Err(invalid(format!(
                    "a child keeps its parent's machine facts: the {what} differs"
                )));
            }
        }
        let mut image_id = [0u8; 16];
        crypt::fill_random(&mut image_id)?;
        let (dek, key_slot) = match &opts.key {
            Some(k) => {
                let dek = DataKey::generate()?;
                // A new data key: the slot is bound to this image (1.1).
                let slot = crypt::wrap_slot(&dek, k, Some(&image_id))?;
                (Some(dek), slot)
            }
            None => (None, KeySlotRaw::default()),
        };
        let header_page = build_header(&opts, &image_id)?;
        let mut out = Counting { inner: out, pos: 0 };
        out.put(&header_page)?;
        let workers = opts.workers;
        let pool = if workers == 0 {
            None
        } else {
            Some(Pool::new(
                workers,
                opts.codec,
                dek.as_ref(),
                opts.page_digests.then_some(ps),
            )?)
        };
        Ok(Writer {
            out,
            page_size: ps,
            chunk_pages: cs / ps,
            header_page,
            image_id,
            encrypted: dek.is_some(),
            dek,
            key_slot,
            parent: opts.parent,
            notes: opts.notes,
            digests: opts.page_digests.then(Vec::new),
            regions: Vec::new(),
            extents: Vec::new(),
            strings: Vec::new(),
            chunks: Vec::new(),
            open: None,
            pending: Vec::new(),
            pending_addr: 0,
            spare: Vec::new(),
            next_chunk: 0,
            written_chunks: 0,
            reorder: BTreeMap::new(),
            in_flight: 0,
            inline: None,
            codec: opts.codec,
            pool,
            max_in_flight: workers * 2 + 1,
            stats: WriteStats {
                image_id,
                ..WriteStats::default()
            },
        })
    }

    /// The id of the image being written.
    pub fn image_id(&self) -> [u8; 16] {
        self.image_id
    }

    /// The image page size.
    pub fn page_size(&self) -> u32 {
        self.page_size
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.out.pos
    }

    /// Adds a region and all its bytes (`data.len()` must equal `info.len`).
    ///
    /// # Errors
    /// See [`Writer::begin_region`] and [`Writer::push_data`].
    pub fn add_region(&mut self, info: RegionInfo, data: &[u8]) -> Result<()> {
        if data.len() as u64 != info.len {
            return Err(invalid(format!(
                "region at {:#x}: {} bytes given for a {}-byte region",
                info.start,
                data.len(),
                info.len
            )));
        }
        self.begin_region(info)?;
        self.push_data(data)?;
        self.end_region()
    }

    /// Adds a region whose bytes come from a reader, which must yield exactly
    /// `info.len` bytes.
    ///
    /// # Errors
    /// When the reader fails or ends early, or as [`Writer::add_region`].
    pub fn add_region_from_reader(&mut self, info: RegionInfo, r: &mut dyn Read) -> Result<()> {
        let len = info.len;
        self.begin_region(info)?;
        let step = (self.chunk_pages as usize) * (self.page_size as usize);
        let mut buf = vec![0u8; step];
        let mut left = len;
        while left > 0 {
            let want = usize::try_from(left.min(step as u64)).unwrap_or(step);
            r.read_exact(&mut buf[..want])
                .map_err(|e| Error::io("reading region data", e))?;
            self.push_data(&buf[..want])?;
            left -= want as u64;
        }
        self.end_region()
    }

    /// Adds a region recorded with no data at all (a guard range, `[vvar]` …).
    ///
    /// # Errors
    /// As [`Writer::begin_region`].
    pub fn add_empty_region(&mut self, info: RegionInfo) -> Result<()> {
        self.begin_region(info)?;
        let open = self.open.take();
        if let Some(o) = open {
            self.close_region(o, true);
        }
        Ok(())
    }

    /// Starts a region. Its bytes follow with `push_*`, then [`Writer::end_region`].
    ///
    /// # Errors
    /// When a region is already open, or `info` is not page-aligned, is empty,
    /// or starts below the end of the previous region.
    pub fn begin_region(&mut self, info: RegionInfo) -> Result<()> {
        if self.open.is_some() {
            return Err(invalid("a region is already open: call end_region first"));
        }
        let ps = u64::from(self.page_size);
        if !info.start.is_multiple_of(ps) || !info.len.is_multiple_of(ps) || info.len == 0 {
            return Err(invalid(format!(
                "region at {:#x} of {} bytes is not a non-empty run of whole {}-byte pages",
                info.start, info.len, ps
            )));
        }
        let end = info.start.checked_add(info.len).ok_or_else(|| {
            invalid(format!(
                "region at {:#x} wraps the address space",
                info.start
            ))
        })?;
        if let Some(prev) = self.regions.last() {
            if info.start < prev.start + prev.len {
                return Err(invalid(format!(
                    "region at {:#x} overlaps or precedes the previous region ({:#x}-{:#x}); add regions in address order",
                    info.start,
                    prev.start,
                    prev.start + prev.len
                )));
            }
        }
        let index =
            u32::try_from(self.regions.len()).map_err(|_| invalid("more than 2^32 regions"))?;
        let name_off =
            u32::try_from(self.strings.len()).map_err(|_| invalid("names exceed 4 GiB"))?;
        let name_len = u32::try_from(info.name.len()).map_err(|_| invalid("name exceeds 4 GiB"))?;
        self.strings.extend_from_slice(&info.name);
        self.regions.push(RegionRaw {
            start: info.start,
            len: info.len,
            file_offset: info.file_offset,
            dev: info.dev,
            inode: info.inode,
            first_extent: 0,
            extent_count: 0,
            name_off,
            name_len,
            prot: info.prot.0 & 7,
            flags: u8::from(info.shared),
            kind: info.kind.code(),
            reserved: [0; 5],
        });
        self.open = Some(OpenRegion {
            index,
            start: info.start,
            end,
            next: info.start,
            first_extent: self.extents.len(),
        });
        Ok(())
    }

    fn open_region(&mut self, len: u64) -> Result<&mut OpenRegion> {
        let ps = u64::from(self.page_size);
        let open = self
            .open
            .as_mut()
            .ok_or_else(|| invalid("no region is open: call begin_region first"))?;
        if !len.is_multiple_of(ps) {
            return Err(invalid(format!(
                "{len} bytes pushed: whole {ps}-byte pages are needed"
            )));
        }
        if open.next + len > open.end {
            return Err(invalid(format!(
                "{len} bytes pushed at {:#x} run past the region's end {:#x}",
                open.next, open.end
            )));
        }
        Ok(open)
    }

    /// Pushes bytes of the open region (whole pages). Zero pages are detected
    /// and recorded, not stored.
    ///
    /// # Errors
    /// When no region is open, `data` is not whole pages or runs past the
    /// region, or writing fails.
    pub fn push_data(&mut self, data: &[u8]) -> Result<()> {
        let open = self.open_region(data.len() as u64)?;
        let mut addr = open.next;
        open.next += data.len() as u64;
        let ps = self.page_size as usize;
        let mut i = 0;
        while i < data.len() {
            // Find the run of zero or non-zero pages starting at i.
            let zero = is_zero(&data[i..i + ps]);
            let mut j = i + ps;
            while j < data.len() && is_zero(&data[j..j + ps]) == zero {
                j += ps;
            }
            let run = &data[i..j];
            if zero {
                self.flush_pending()?;
                self.push_run(addr, run.len() as u64, 1);
                self.stats.zero_pages += (run.len() / ps) as u64;
            } else {
                let mut k = 0;
                while k < run.len() {
                    let room = self.chunk_pages as usize * ps - self.pending.len();
                    let take = room.min(run.len() - k);
                    if self.pending.is_empty() {
                        self.pending_addr = addr + k as u64;
                        if self.pending.capacity() == 0 {
                            if let Some(b) = self.spare.pop() {
                                self.pending = b;
                            }
                        }
                    }
                    self.pending.extend_from_slice(&run[k..k + take]);
                    k += take;
                    if self.pending.len() == self.chunk_pages as usize * ps {
                        self.flush_pending()?;
                    }
                }
            }
            addr += run.len() as u64;
            i = j;
        }
        Ok(())
    }

    /// Records `len` bytes of zero pages in the open region.
    ///
    /// # Errors
    /// As [`Writer::push_data`].
    pub fn push_zero(&mut self, len: u64) -> Result<()> {
        self.push_marker(len, 1)
    }

    /// Records `len` bytes of the open region as not captured.
    ///
    /// # Errors
    /// As [`Writer::push_data`].
    pub fn push_absent(&mut self, len: u64) -> Result<()> {
        self.push_marker(len, 2)
    }

    /// Records `len` bytes of the open region as the parent's pages at the
    /// same addresses (format 1.1, an in-parent extent): nothing is stored,
    /// and a reader takes them from the parent.
    ///
    /// # Errors
    /// `InvalidInput` when the image has no parent
    /// ([`WriterOptions::parent`]); otherwise as [`Writer::push_data`].
    pub fn push_in_parent(&mut self, len: u64) -> Result<()> {
        if self.parent.is_none() {
            return Err(invalid(
                "pages pushed as the parent's in an image that has no parent (set WriterOptions::parent)",
            ));
        }
        self.push_marker(len, 3)
    }

    /// Pushes `data`, the next bytes of the open region, as a child of
    /// `parent` stores them: each run that lines up with a whole data extent
    /// of the parent's chain at the same addresses, and whose content
    /// checksum (XXH3-128) equals that extent's, is recorded as the
    /// parent's pages ([`Writer::push_in_parent`]); so is each page of the
    /// other data runs whose digest equals the page digest of the link that
    /// holds it, when that link has page digests (spec.md, *Page digests*);
    /// everything else is pushed as data (zero pages recorded as zero).
    /// Only `data` is hashed: nothing of the parent is read but its index.
    ///
    /// This is how a capture with a parent writes a child: read every page,
    /// store what differs.
    ///
    /// # Errors
    /// `InvalidInput` when the image's parent record is not `parent`'s
    /// image; `KeyRequired` for a locked link; otherwise as
    /// [`Writer::push_data`].
    pub fn push_data_against(&mut self, parent: &crate::Chain, data: &[u8]) -> Result<()> {
        let want = parent.image().as_parent()?;
        if self.parent != Some(want) {
            return Err(invalid(format!(
                "pages compared with image {} (depth {}), but this image's parent is {}",
                want.image_id_hex(),
                want.depth - 1,
                self.parent.map_or_else(
                    || "none".to_string(),
                    |p| format!("image {}", p.image_id_hex())
                )
            )));
        }
        let start = self.open_region(data.len() as u64)?.next;
        let end = start + data.len() as u64;
        let ps = self.page_size;
        for seg in parent.segments(start, end)? {
            let from = usize::try_from(seg.start - start).unwrap_or(usize::MAX);
            let to = usize::try_from(seg.end - start).unwrap_or(usize::MAX);
            let piece = data
                .get(from..to)
                .ok_or_else(|| invalid("a segment outside the pushed bytes"))?;
            match seg.kind {
                crate::SegmentKind::Data(e)
                    if e.addr == seg.start
                        && e.end(ps) == seg.end
                        && xxh3_128(piece) == e.raw_checksum =>
                {
                    self.push_in_parent(piece.len() as u64)?;
                }
                crate::SegmentKind::Data(e) => {
                    // Page by page, when the link has page digests.
                    let link = parent.links().get(seg.link);
                    match link
                        .map(|l| l.same_pages(&e, seg.start, piece))
                        .transpose()?
                    {
                        Some(Some(same)) => {
                            self.push_pages_against(piece, &same)?;
                        }
                        _ => self.push_data(piece)?,
                    }
                }
                _ => self.push_data(piece)?,
            }
        }
        Ok(())
    }

    /// Pushes `data`, the next bytes of the open region, page by page: the
    /// runs of pages whose `same` is true as the parent's pages
    /// ([`Writer::push_in_parent`]), the others as data. Returns the bytes
    /// pushed as the parent's.
    ///
    /// # Errors
    /// `InvalidInput` when `same` does not have one entry per page of
    /// `data`; otherwise as [`Writer::push_data`].
    pub fn push_pages_against(&mut self, data: &[u8], same: &[bool]) -> Result<u64> {
        let psz = self.page_size as usize;
        if same.len().checked_mul(psz) != Some(data.len()) {
            return Err(invalid(format!(
                "{} page flags for {} bytes of {psz}-byte pages",
                same.len(),
                data.len()
            )));
        }
        let mut kept = 0;
        let mut k = 0;
        while k < same.len() {
            let eq = same[k];
            let j = (k..same.len())
                .find(|&x| same[x] != eq)
                .unwrap_or(same.len());
            let run = &data[k * psz..j * psz];
            if eq {
                kept += run.len() as u64;
                self.push_in_parent(run.len() as u64)?;
            } else {
                self.push_data(run)?;
            }
            k = j;
        }
        Ok(kept)
    }

    /// Adds a region whose bytes are `data`, as a child of `parent` stores
    /// them (see [`Writer::push_data_against`]).
    ///
    /// # Errors
    /// As [`Writer::add_region`] and [`Writer::push_data_against`].
    pub fn add_region_against(
        &mut self,
        info: RegionInfo,
        data: &[u8],
        parent: &crate::Chain,
    ) -> Result<()> {
        if data.len() as u64 != info.len {
            return Err(invalid(format!(
                "region at {:#x}: {} bytes given for a {}-byte region",
                info.start,
                data.len(),
                info.len
            )));
        }
        self.begin_region(info)?;
        self.push_data_against(parent, data)?;
        self.end_region()
    }

    /// The parent this image is written against, if it is a child.
    pub fn parent(&self) -> Option<&ParentRecord> {
        self.parent.as_ref()
    }

    fn push_marker(&mut self, len: u64, kind: u8) -> Result<()> {
        let open = self.open_region(len)?;
        let addr = open.next;
        open.next += len;
        if len == 0 {
            return Ok(());
        }
        self.flush_pending()?;
        let pages = len / u64::from(self.page_size);
        match kind {
            1 => self.stats.zero_pages += pages,
            2 => self.stats.absent_pages += pages,
            _ => self.stats.in_parent_pages += pages,
        }
        self.push_run(addr, len, kind);
        Ok(())
    }

    /// Appends a zero (kind 1), absent (kind 2) or in-parent (kind 3) run, merging with the
    /// previous extent of the same kind in the open region.
    fn push_run(&mut self, addr: u64, len: u64, kind: u8) {
        let ps = u64::from(self.page_size);
        let first = self.open.as_ref().map_or(0, |o| o.first_extent);
        let region = self.open.as_ref().map_or(0, |o| o.index);
        let mut pages = len / ps;
        let mut addr = addr;
        let in_region = self.extents.len() > first;
        if let Some(last) = self.extents.last_mut() {
            if in_region && last.kind == kind && last.addr + u64::from(last.page_count) * ps == addr
            {
                let room = u64::from(u32::MAX - last.page_count);
                let add = room.min(pages);
                // add ≤ u32::MAX - page_count, so it fits.
                #[allow(clippy::cast_possible_truncation)]
                {
                    last.page_count += add as u32;
                }
                pages -= add;
                addr += add * ps;
            }
        }
        while pages > 0 {
            let n = pages.min(u64::from(u32::MAX));
            #[allow(clippy::cast_possible_truncation)]
            self.extents.push(ExtentRaw {
                addr,
                page_count: n as u32,
                region,
                kind,
                ..ExtentRaw::default()
            });
            pages -= n;
            addr += n * ps;
        }
    }

    /// Turns the pending pages into a chunk and hands it to a worker.
    fn flush_pending(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let region = self.open.as_ref().map_or(0, |o| o.index);
        let raw = std::mem::take(&mut self.pending);
        // pending holds at most chunk_pages pages, which fits in u32.
        #[allow(clippy::cast_possible_truncation)]
        let page_count = (raw.len() / self.page_size as usize) as u32;
        let ordinal = self.next_chunk;
        self.next_chunk += 1;
        self.extents.push(ExtentRaw {
            addr: self.pending_addr,
            page_count,
            region,
            kind: 0,
            chunk: ordinal,
            ..ExtentRaw::default()
        });
        self.stats.data_bytes += raw.len() as u64;
        let aad = self.encrypted.then(|| {
            crypt::chunk_aad(
                &self.image_id,
                ordinal,
                self.pending_addr,
                page_count,
                region,
            )
        });
        let out = self.spare.pop().unwrap_or_default();
        let job = Job {
            ordinal,
            aad,
            raw,
            out,
        };
        if self.pool.is_none() || job.raw.len() <= INLINE_MAX {
            let enc = match self.inline.as_mut() {
                Some(e) => e,
                None => self.inline.insert(Encoder::new(
                    self.codec,
                    self.dek.as_ref(),
                    self.digests.is_some().then_some(self.page_size),
                )?),
            };
            let done = enc.encode(job)?;
            // In order: after the chunks still with the workers, if any.
            return self.write_in_order(done);
        }
        while self.in_flight >= self.max_in_flight {
            self.receive_one()?;
        }
        let sent = self
            .pool
            .as_ref()
            .and_then(|p| p.jobs.as_ref())
            .map(|tx| tx.send(job).is_ok())
            .unwrap_or(false);
        if !sent {
            return Err(Error::plain(ErrorKind::Io, "a writer thread stopped"));
        }
        self.in_flight += 1;
        Ok(())
    }

    fn receive_one(&mut self) -> Result<()> {
        let done = self
            .pool
            .as_ref()
            .ok_or_else(|| Error::plain(ErrorKind::Io, "no writer threads"))?
            .results
            .recv()
            .map_err(|_| Error::plain(ErrorKind::Io, "a writer thread stopped"))??;
        self.in_flight -= 1;
        self.write_in_order(done)
    }

    /// Writes `done` and every chunk after it already encoded, once the
    /// chunks before it are written.
    fn write_in_order(&mut self, done: Done) -> Result<()> {
        self.reorder.insert(done.ordinal, done);
        while let Some(d) = self.reorder.remove(&self.written_chunks) {
            self.write_done(d)?;
        }
        Ok(())
    }

    fn write_done(&mut self, d: Done) -> Result<()> {
        let ps = u64::from(self.page_size);
        let stored: &[u8] = if d.compressed || self.encrypted {
            &d.stored
        } else {
            &d.raw
        };
        if !d.compressed && !self.encrypted {
            let pad = (ps - self.out.pos % ps) % ps;
            self.out.zeros(pad)?;
        }
        let offset = self.out.pos;
        self.out.put(stored)?;
        let stored_len =
            u32::try_from(stored.len()).map_err(|_| invalid("a stored chunk exceeds 4 GiB"))?;
        self.stats.stored_bytes += u64::from(stored_len);
        self.chunks.push(ChunkEntryRaw {
            offset,
            stored_len,
            reserved: 0,
            stored_checksum: d.stored_checksum,
        });
        // Extents are pushed in chunk order; find this one from the end.
        if let Some(e) = self
            .extents
            .iter_mut()
            .rev()
            .find(|e| e.kind == 0 && e.chunk == d.ordinal)
        {
            e.codec = u8::from(d.compressed);
            e.raw_checksum = d.raw_checksum;
        }
        if let Some(all) = self.digests.as_mut() {
            all.extend_from_slice(&d.digests);
        }
        self.written_chunks += 1;
        let mut raw = d.raw;
        raw.clear();
        let mut st = d.stored;
        st.clear();
        if self.spare.len() < self.max_in_flight * 2 + 2 {
            self.spare.push(raw);
            self.spare.push(st);
        }
        Ok(())
    }

    /// Ends the open region, which must be fully covered.
    ///
    /// # Errors
    /// When no region is open or its bytes were not all pushed.
    pub fn end_region(&mut self) -> Result<()> {
        let open = self
            .open
            .as_ref()
            .ok_or_else(|| invalid("no region is open"))?;
        if open.next != open.end {
            return Err(invalid(format!(
                "region at {:#x}: only {} of {} bytes were pushed",
                open.start,
                open.next - open.start,
                open.end - open.start
            )));
        }
        // Flush while the region is still open: the chunk belongs to it.
        self.flush_pending()?;
        if let Some(open) = self.open.take() {
            self.close_region(open, false);
        }
        Ok(())
    }

    fn close_region(&mut self, open: OpenRegion, empty: bool) {
        let idx = open.index as usize;
        let count = if empty {
            0
        } else {
            self.extents.len() - open.first_extent
        };
        if let Some(r) = self.regions.get_mut(idx) {
            r.first_extent = u32::try_from(open.first_extent).unwrap_or(u32::MAX);
            r.extent_count = u32::try_from(count).unwrap_or(u32::MAX);
        }
    }

    /// Writes the index and the trailer, and returns the inner writer with the
    /// statistics. The inner writer is flushed but not synced.
    ///
    /// # Errors
    /// When a region is still open, or writing fails.
    pub fn finish(mut self) -> Result<(W, WriteStats)> {
        if self.open.is_some() {
            return Err(invalid("a region is still open: call end_region first"));
        }
        while self.written_chunks < self.next_chunk {
            self.receive_one()?;
        }
        self.pool = None;
        let index_offset = self.out.pos;
        // Body in clear.
        let mut meta = Vec::new();
        for n in &self.notes {
            meta::push_note(&mut meta, n)?;
        }
        if let Some(d) = &self.digests {
            meta::push_u64_record(&mut meta, meta::B_PAGE_DIGESTS, d, "page digests")?;
        }
        let mut body = Vec::with_capacity(
            BODY_HEAD_LEN
                + REGION_LEN * self.regions.len()
                + EXTENT_LEN * self.extents.len()
                + self.strings.len()
                + meta.len(),
        );
        let head = BodyHeadRaw {
            region_count: u32::try_from(self.regions.len())
                .map_err(|_| invalid("too many regions"))?,
            reserved: 0,
            extent_count: self.extents.len() as u64,
            strings_len: u32::try_from(self.strings.len())
                .map_err(|_| invalid("names exceed 4 GiB"))?,
            meta_len: u32::try_from(meta.len())
                .map_err(|_| invalid("the body's records exceed 4 GiB"))?,
            body_checksum: 0,
        };
        body.extend_from_slice(&raw::to_bytes(&head));
        for r in &self.regions {
            body.extend_from_slice(&raw::to_bytes(r));
        }
        for e in &self.extents {
            body.extend_from_slice(&raw::to_bytes(e));
        }
        body.extend_from_slice(&self.strings);
        body.extend_from_slice(&meta);
        // The writer that creates a data key seals its first index with
        // salt 0 (spec.md, *Nonces and associated data*).
        let index = build_index(&self.header_page, &self.chunks, body, self.dek.as_ref(), 0)?;
        self.out.put(&index.bytes)?;
        let index_checksum = index.checksum;
        let index_len = self.out.pos - index_offset;
        let trailer = build_trailer(
            self.out.pos,
            index_offset,
            index_len,
            index_checksum,
            0,
            &self.image_id,
            &self.key_slot,
        );
        self.out.put(&trailer)?;
        self.out
            .inner
            .flush()
            .map_err(|e| Error::io("flushing the image", e))?;
        let mut stats = self.stats.clone();
        stats.regions = self.regions.len() as u64;
        stats.chunks = self.chunks.len() as u64;
        stats.file_len = self.out.pos;
        stats.index_checksum = index_checksum;
        Ok((self.out.inner, stats))
    }
}

/// An index, ready to write: head, chunk map and (sealed) body.
pub(crate) struct BuiltIndex {
    pub(crate) bytes: Vec<u8>,
    /// `xxh3_64` of `bytes`: the trailer's `index_checksum`.
    pub(crate) checksum: u64,
}

/// Builds the index from the chunk map and the body in clear (its checksum
/// field is filled in here): with `dek`, the body is sealed with the index
/// nonce of `salt`, over the header page, the index head and the chunk map
/// (spec.md, *Nonces and associated data*).
pub(crate) fn build_index(
    header_page: &[u8],
    chunks: &[ChunkEntryRaw],
    mut body: Vec<u8>,
    dek: Option<&DataKey>,
    salt: u64,
) -> Result<BuiltIndex> {
    if body.len() < BODY_HEAD_LEN {
        return Err(invalid("an index body is at least its head"));
    }
    body[24..32].fill(0);
    let sum = xxh3_64(&body);
    body[24..32].copy_from_slice(&sum.to_le_bytes());
    let body_plain_len = body.len() as u64;
    let body_len = body_plain_len + if dek.is_some() { TAG_LEN as u64 } else { 0 };
    let mut bytes = raw::to_bytes(&IndexHeadRaw {
        magic: INDEX_MAGIC,
        chunk_count: chunks.len() as u64,
        body_len,
        body_plain_len,
        index_nonce_salt: salt,
        reserved: [0; 24],
    });
    bytes.reserve(CHUNK_ENTRY_LEN * chunks.len() + body.len() + TAG_LEN);
    for c in chunks {
        bytes.extend_from_slice(&raw::to_bytes(c));
    }
    if let Some(dek) = dek {
        let mut aad = Vec::with_capacity(header_page.len() + bytes.len());
        aad.extend_from_slice(header_page);
        aad.extend_from_slice(&bytes);
        dek.seal(&crypt::index_nonce(salt), &aad, &mut body)?;
    }
    bytes.extend_from_slice(&body);
    let mut h = Xxh3::new();
    h.update(&bytes);
    Ok(BuiltIndex {
        checksum: h.digest(),
        bytes,
    })
}

pub(crate) fn build_trailer(
    at: u64,
    index_offset: u64,
    index_len: u64,
    index_checksum: u64,
    generation: u32,
    image_id: &[u8; 16],
    slot: &KeySlotRaw,
) -> Vec<u8> {
    let mut t = raw::to_bytes(&TrailerRaw {
        magic: TRAILER_MAGIC,
        trailer_offset: at,
        index_offset,
        index_len,
        index_checksum,
        generation,
        reserved0: 0,
        image_id: *image_id,
        key_slot: slot.clone(),
        reserved1: [0; 56],
        checksum: 0,
    });
    let sum = xxh3_64(&t[..TRAILER_LEN - 8]);
    t[TRAILER_LEN - 8..].copy_from_slice(&sum.to_le_bytes());
    t
}

fn build_header(opts: &WriterOptions, image_id: &[u8; 16]) -> Result<Vec<u8>> {
    let ps = opts.page_size as usize;
    let mut incompat = 0;
    if opts.key.is_some() {
        // 1.1: every image with a new data key has its slot bound to it.
        incompat |= Features::ENCRYPTED | Features::SLOT_BOUND;
    }
    if matches!(opts.codec, Codec::Zstd(_)) {
        incompat |= Features::ZSTD;
    }
    let mut compat = 0;
    let mut tlv = Vec::new();
    meta::push_header_tlv(&mut tlv, meta::T_PRODUCER, opts.producer.as_bytes(), false)?;
    if let Some(v) = &opts.validation {
        meta::push_header_tlv(&mut tlv, meta::T_VALIDATION_TAG, &v.tag, false)?;
        meta::push_header_tlv(&mut tlv, meta::T_VALIDATION_DATA, &v.data, false)?;
    }
    if let Some(p) = opts.process.as_ref().filter(|p| !p.is_empty()) {
        compat |= Features::PROCESS_FACTS;
        if let Some(pid) = p.pid {
            meta::push_header_tlv(&mut tlv, meta::T_PID, &pid.to_le_bytes(), false)?;
        }
        meta::push_header_tlv(&mut tlv, meta::T_COMM, &p.comm, true)?;
        meta::push_header_tlv(&mut tlv, meta::T_CMDLINE, &p.cmdline, true)?;
        meta::push_header_tlv(&mut tlv, meta::T_EXE, &p.exe, true)?;
        meta::push_header_tlv(&mut tlv, meta::T_BUILD_ID, &p.build_id, true)?;
        meta::push_header_tlv(&mut tlv, meta::T_KERNEL, &p.kernel_release, true)?;
    }
    if !opts.notes.is_empty() {
        compat |= Features::NOTES;
    }
    if opts.page_digests {
        compat |= Features::PAGE_DIGESTS;
    }
    if let Some(p) = &opts.parent {
        // The parent record and hint: 1.1, with PARENT only.
        incompat |= Features::PARENT;
        meta::push_parent(&mut tlv, p);
        if let Some(h) = &opts.parent_hint {
            meta::push_parent_hint(&mut tlv, h)?;
        }
    }
    if HEADER_FIXED_LEN + tlv.len() > ps - 8 {
        return Err(invalid(format!(
            "header metadata is {} bytes, more than a {ps}-byte header page holds",
            tlv.len()
        )));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let fixed = HeaderFixed {
        magic: HEADER_MAGIC,
        version_major: crate::VERSION_MAJOR,
        version_minor: crate::VERSION_MINOR,
        header_size: opts.page_size,
        incompat,
        ro_compat: 0,
        compat,
        page_size: opts.page_size,
        chunk_size: opts.chunk_size,
        image_id: *image_id,
        created_secs: i64::try_from(now.as_secs()).unwrap_or(i64::MAX),
        created_nanos: now.subsec_nanos(),
        machine_arch: opts.machine.arch,
        machine_endian: match opts.machine.endian {
            crate::Endian::Little => 1,
            crate::Endian::Big => 2,
        },
        machine_ptr_bytes: opts.machine.ptr_bytes,
        machine_page_size: opts.machine.page_size,
        cipher: u8::from(opts.key.is_some()),
        reserved0: [0; 3],
        meta_len: u32::try_from(tlv.len()).map_err(|_| invalid("header metadata too long"))?,
        reserved1: [0; 36],
    };
    let mut page = vec![0u8; ps];
    page[..HEADER_FIXED_LEN].copy_from_slice(&raw::to_bytes(&fixed));
    page[HEADER_FIXED_LEN..HEADER_FIXED_LEN + tlv.len()].copy_from_slice(&tlv);
    let sum = xxh3_64(&page[..ps - 8]);
    page[ps - 8..].copy_from_slice(&sum.to_le_bytes());
    Ok(page)
}

/// A header page rebuilt from `page`, the header page of an open image:
/// `edit` may change its fixed fields and its records (type and value, in
/// order). The version becomes at least this writer's (1.1), and the
/// checksum is recomputed. For rewrites that keep everything else of the
/// header: a rebase (a new parent record), a relayout (`LOAD_ORDER`).
///
/// # Errors
/// `InvalidInput` when the records no longer fit in the page, or `page` is
/// not a header page (a bug: it comes from an open image).
pub(crate) fn rewrite_header(
    page: &[u8],
    edit: impl FnOnce(&mut HeaderFixed, &mut Vec<(u16, Vec<u8>)>),
) -> Result<Vec<u8>> {
    let ps = page.len();
    let mut fixed: HeaderFixed = raw::from_bytes(page)
        .filter(|_| ps > HEADER_FIXED_LEN + 8)
        .ok_or_else(|| invalid("not a header page"))?;
    let tlv = page
        .get(HEADER_FIXED_LEN..HEADER_FIXED_LEN + fixed.meta_len as usize)
        .ok_or_else(|| invalid("header records past the page"))?;
    let mut records = Vec::new();
    let mut rest = tlv;
    while rest.len() >= 4 {
        let ty = u16::from_le_bytes([rest[0], rest[1]]);
        let len = usize::from(u16::from_le_bytes([rest[2], rest[3]]));
        let value = rest
            .get(4..4 + len)
            .ok_or_else(|| invalid("a header record runs past the records"))?;
        records.push((ty, value.to_vec()));
        rest = &rest[4 + len..];
    }
    edit(&mut fixed, &mut records);
    fixed.version_minor = fixed.version_minor.max(crate::VERSION_MINOR);
    let mut tlv = Vec::new();
    for (ty, v) in &records {
        let len = u16::try_from(v.len()).map_err(|_| invalid("a header record over 64 KiB"))?;
        tlv.extend_from_slice(&ty.to_le_bytes());
        tlv.extend_from_slice(&len.to_le_bytes());
        tlv.extend_from_slice(v);
    }
    if HEADER_FIXED_LEN + tlv.len() > ps - 8 {
        return Err(invalid(format!(
            "header records of {} bytes do not fit a {ps}-byte header page",
            tlv.len()
        )));
    }
    fixed.meta_len = u32::try_from(tlv.len()).map_err(|_| invalid("header records too long"))?;
    let mut out = vec![0u8; ps];
    out[..HEADER_FIXED_LEN].copy_from_slice(&raw::to_bytes(&fixed));
    out[HEADER_FIXED_LEN..HEADER_FIXED_LEN + tlv.len()].copy_from_slice(&tlv);
    let sum = xxh3_64(&out[..ps - 8]);
    out[ps - 8..].copy_from_slice(&sum.to_le_bytes());
    Ok(out)
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::plain(ErrorKind::InvalidInput, msg)
}
