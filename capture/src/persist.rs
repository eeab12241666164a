//! Persisting a program's own memory: the program names the regions it wants
//! back, and writes them with its validation data into an image.
//!
//! With [`Persister::track`], writes to the regions are tracked (see
//! [`crate::track`]); each full persist re-arms the tracker, and a later
//! persist given that image as its parent reads only the pages written since
//! ([`Persister::plan_since`], [`Persister::write_child`]).

use std::io::Write;
use std::marker::PhantomData;
use std::ops::Range;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use memimg::atomic::AtomicFile;
use memimg::{Codec, Key, Prot, RegionInfo, RegionKind, WriteStats, Writer, WriterOptions};

use crate::bgwrite::{Background, ImageFile};
use crate::pagemap::{self, Pagemap};
use crate::procfs;
use crate::track::{
    build_plan, coalesce, marker_entry, ChildSink, ChildStats, IncrementalPlan, Run, TrackError,
    TrackMethod, TrackOptions, TrackStats, Tracker,
};

/// How to write a persisted image.
#[derive(Debug, Clone)]
pub struct PersistOptions {
    /// Chunk codec. By default none, so that [`crate::restore()`] can map the
    /// file straight into memory.
    pub codec: Codec,
    /// Encrypts the image under this key. By default none.
    pub key: Option<Key>,
    /// Chunk size in bytes. By default [`memimg::DEFAULT_CHUNK_SIZE`].
    pub chunk_size: Option<u32>,
    /// Threads that compress and encrypt. By default one per core.
    pub workers: usize,
    /// Writes a digest of every stored page in the index (spec.md, *Page
    /// digests*), so that a capture with this image as its parent
    /// (`imgtool capture --parent`) compares pages with the digests
    /// instead of decoding its chunks. 8 bytes of index per page. By
    /// default off.
    pub page_digests: bool,
}

impl Default for PersistOptions {
    fn default() -> Self {
        PersistOptions {
            codec: Codec::None,
            key: None,
            chunk_size: None,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            page_digests: false,
        }
    }
}

/// Why persisting failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PersistError {
    /// A region is not whole pages, or regions overlap.
    #[error("region {name} at {start:#x}+{len:#x}: {why}")]
    BadRegion {
        /// Its name.
        name: String,
        /// Its start.
        start: u64,
        /// Its length.
        len: u64,
        /// What is wrong.
        why: &'static str,
    },
    /// Writing the image failed.
    #[error("writing the image: {0}")]
    Format(#[from] memimg::Error),
    /// Writing the file failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The image path.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Write tracking failed.
    #[error("tracking writes: {0}")]
    Track(#[from] TrackError),
    /// A persist with a parent was asked of a persister that does not track
    /// writes ([`Persister::track`] was not called).
    #[error("writes are not tracked: call Persister::track before persisting with a parent")]
    NotTracking,
    /// The parent given is not the image the tracker was last armed at, so
    /// the writes since that parent are not known.
    #[error("the parent {} is not the last image persisted with tracking ({})", hex(parent), base.as_ref().map_or_else(|| "none yet".to_string(), hex))]
    NotParent {
        /// The parent asked for.
        parent: [u8; 16],
        /// The image the tracker covers writes since, if any.
        base: Option<[u8; 16]>,
    },
}

fn hex(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// The tracking state of a persister.
#[derive(Debug)]
struct Tracking {
    tracker: Tracker,
    /// The last image persisted with tracking: `since_base` holds every
    /// range written since it was read (with what the tracker holds).
    base: Option<[u8; 16]>,
    /// The index checksum and depth of `base`: with its id, the parent
    /// record of a child of it.
    base_facts: (u64, u32),
    /// Ranges taken from the tracker since `base`, with the take number.
    since_base: Vec<(u64, Vec<Range<u64>>)>,
    takes: u64,
}

impl Tracking {
    /// Takes the written ranges from the tracker into `since_base`; returns
    /// the take's number.
    fn take(&mut self) -> Result<u64, TrackError> {
        let w = self.tracker.take_written()?;
        self.takes += 1;
        self.since_base.push((self.takes, w));
        Ok(self.takes)
    }
}

#[derive(Debug, Clone)]
struct Entry {
    info: RegionInfo,
}

/// Builds an image of chosen regions of this process's memory.
///
/// ```no_run
/// use memimg::RegionKind;
/// use memimg_capture::{Persister, PersistOptions};
/// # fn arena() -> &'static [u8] { &[] }
/// let arena: &[u8] = arena(); // page-aligned, whole pages
/// Persister::new()
///     .region(arena, RegionKind::Heap, "arena")
///     .validation("my-app", b"schema 3".to_vec())
///     .write_to_path("arena.img".as_ref(), &PersistOptions::default())?;
/// # Ok::<(), memimg_capture::PersistError>(())
/// ```
#[derive(Debug, Default)]
pub struct Persister<'a> {
    regions: Vec<Entry>,
    validation: Option<(Vec<u8>, Vec<u8>)>,
    tracking: Option<Mutex<Tracking>>,
    _borrow: PhantomData<&'a [u8]>,
}

impl<'a> Persister<'a> {
    /// An empty persister.
    pub fn new() -> Self {
        Persister::default()
    }

    /// Adds a region: `data` must start on a page boundary and be whole
    /// pages (checked when writing). It is restored read-write.
    pub fn region(self, data: &'a [u8], kind: RegionKind, name: &str) -> Self {
        // SAFETY: a shared borrow of `data` is held for 'a, so the memory
        // stays mapped and readable until the persister is dropped.
        unsafe { self.region_raw(data.as_ptr(), data.len(), Prot::RW, kind, name) }
    }

    /// Adds a region by pointer, with the protection to restore it with.
    ///
    /// # Safety
    /// `ptr..ptr + len` must stay mapped and readable until the image is
    /// written, and nothing may write to it meanwhile (the bytes are read
    /// while the image is written; a concurrent write gives a torn image).
    pub unsafe fn region_raw(
        mut self,
        ptr: *const u8,
        len: usize,
        prot: Prot,
        kind: RegionKind,
        name: &str,
    ) -> Self {
        self.regions.push(Entry {
            info: RegionInfo {
                start: ptr as usize as u64,
                len: len as u64,
                prot,
                kind,
                name: name.as_bytes().to_vec(),
                ..RegionInfo::default()
            },
        });
        self
    }

    /// Sets the validation data that [`crate::restore()`] checks (tag ≤ 64
    /// bytes, data ≤ 2048 bytes).
    pub fn validation(mut self, tag: impl Into<Vec<u8>>, data: impl Into<Vec<u8>>) -> Self {
        self.validation = Some((tag.into(), data.into()));
        self
    }

    /// Writes the image to `path`, through a temporary file renamed into
    /// place when complete.
    ///
    /// # Errors
    /// See [`PersistError`].
    pub fn write_to_path(
        &self,
        path: &Path,
        opts: &PersistOptions,
    ) -> Result<WriteStats, PersistError> {
        let io = |source| PersistError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = ImageFile::new(AtomicFile::create(path)?, true, true, None);
        let (w, stats) = self.write_to(Background::new(file).map_err(io)?, opts)?;
        let file = w.into_inner().map_err(io)?;
        file.into_file().commit()?;
        Ok(stats)
    }

    /// Writes the image to `out`.
    ///
    /// # Errors
    /// See [`PersistError`].
    pub fn write_to<W: Write>(
        &self,
        out: W,
        opts: &PersistOptions,
    ) -> Result<(W, WriteStats), PersistError> {
        let ps = memimg::page_size();
        let psu = u64::from(ps);
        let regions = self.checked_regions()?;
        let mut tracking = self.tracking_lock();
        if let Some(t) = tracking.as_mut() {
            // Re-arm before reading: what is written from now on is what a
            // child of this image must store.
            t.take()?;
        }
        let mut wo = WriterOptions::new()
            .page_size(ps)
            .codec(opts.codec)
            .key_opt(opts.key.clone())
            .workers(opts.workers)
            .page_digests(opts.page_digests);
        if let Some(cs) = opts.chunk_size {
            wo = wo.chunk_size(cs);
        }
        if let Some((t, d)) = &self.validation {
            wo = wo.validation(t.clone(), d.clone());
        }
        let mut w = Writer::new(out, wo)?;
        let reader = PageReader::new(psu, tracking.as_deref());
        for r in &regions {
            w.begin_region(r.clone())?;
            reader.push(r, r.start..r.end(), &mut |p| match p {
                Pages::Data(s) => w.push_data(s),
                Pages::Zero(n) => w.push_zero(n),
            })?;
            w.end_region()?;
        }
        let (out, stats) = w.finish()?;
        if let Some(t) = tracking.as_mut() {
            t.base = Some(stats.image_id);
            t.base_facts = (stats.index_checksum, 0);
            t.since_base.clear();
        }
        Ok((out, stats))
    }

    /// The regions sorted by address, checked: whole pages on page
    /// boundaries, no overlap.
    fn checked_regions(&self) -> Result<Vec<RegionInfo>, PersistError> {
        let psu = u64::from(memimg::page_size());
        let mut regions: Vec<RegionInfo> = self.regions.iter().map(|e| e.info.clone()).collect();
        regions.sort_by_key(|r| r.start);
        let mut prev_end = 0;
        for r in &regions {
            let bad = |why| PersistError::BadRegion {
                name: r.name_lossy(),
                start: r.start,
                len: r.len,
                why,
            };
            if r.start % psu != 0 || r.len % psu != 0 || r.len == 0 {
                return Err(bad("not whole pages on page boundaries"));
            }
            if r.start < prev_end {
                return Err(bad("overlaps another region"));
            }
            prev_end = r.end();
        }
        Ok(regions)
    }

    fn tracking_lock(&self) -> Option<MutexGuard<'_, Tracking>> {
        self.tracking
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Starts tracking writes to the regions added so far (see
    /// [`crate::track`]), replacing any tracking already started. From then
    /// on each full persist ([`Persister::write_to_path`],
    /// [`Persister::write_to`]) re-arms the tracker before it reads, so a
    /// later persist given that image as its parent stores only the pages
    /// written since ([`Persister::plan_since`]). Regions added later are
    /// not tracked: a persist with a parent stores them whole.
    ///
    /// With the checksum method (the fallback, or forced), re-arming reads
    /// and hashes every region, so each full persist reads the memory twice.
    ///
    /// # Errors
    /// [`PersistError::BadRegion`], or [`PersistError::Track`] when tracking
    /// cannot start (a region not mapped, or a forced method unavailable).
    pub fn track(mut self, opts: &TrackOptions) -> Result<Self, PersistError> {
        self.tracking = None;
        let ranges: Vec<Range<u64>> = self
            .checked_regions()?
            .iter()
            .map(|r| r.start..r.end())
            .collect();
        let tracker = Tracker::start(&ranges, opts)?;
        self.tracking = Some(Mutex::new(Tracking {
            tracker,
            base: None,
            base_facts: (0, 0),
            since_base: Vec::new(),
            takes: 0,
        }));
        Ok(self)
    }

    /// The tracker's figures (its method among them), when tracking.
    pub fn tracking(&self) -> Option<TrackStats> {
        self.tracking_lock().map(|t| t.tracker.stats())
    }

    /// The image id of the last image persisted with tracking: the parent a
    /// persist with a parent may use now.
    pub fn tracked_base(&self) -> Option<[u8; 16]> {
        self.tracking_lock().and_then(|t| t.base)
    }

    /// Plans a persist with `parent` as parent: takes the writes from the
    /// tracker (re-arming it) and splits each region into runs written since
    /// `parent` was persisted and runs left unchanged. The tracker keeps
    /// what it took until [`Persister::child_committed`] says the child is
    /// written, so a failed child loses nothing: a new plan includes it.
    ///
    /// # Errors
    /// [`PersistError::NotTracking`]; [`PersistError::NotParent`] when
    /// `parent` is not the last image persisted with tracking (or the last
    /// committed child); [`PersistError::Track`] when the tracker fails.
    pub fn plan_since(&self, parent: [u8; 16]) -> Result<IncrementalPlan, PersistError> {
        let regions = self.checked_regions()?;
        let mut guard = self.tracking_lock().ok_or(PersistError::NotTracking)?;
        let t = &mut *guard;
        if t.base != Some(parent) {
            return Err(PersistError::NotParent {
                parent,
                base: t.base,
            });
        }
        let take = t.take()?;
        let mut written: Vec<Range<u64>> = t
            .since_base
            .iter()
            .flat_map(|(_, w)| w.iter().cloned())
            .collect();
        coalesce(&mut written);
        Ok(IncrementalPlan {
            parent,
            method: t.tracker.method(),
            regions: build_plan(&regions, t.tracker.ranges(), &written),
            take,
        })
    }

    /// Writes the child that `plan` describes into `sink`: every region,
    /// its `Written` runs read from memory (pages never touched pushed as
    /// zero, unread) and its `Unchanged` runs as the parent's pages. The
    /// caller finishes the sink, then calls [`Persister::child_committed`].
    ///
    /// # Errors
    /// [`PersistError::Format`] from the sink.
    pub fn write_child<S: ChildSink + ?Sized>(
        &self,
        plan: &IncrementalPlan,
        sink: &mut S,
    ) -> Result<ChildStats, PersistError> {
        let reader = PageReader::new(
            u64::from(memimg::page_size()),
            self.tracking_lock().as_deref(),
        );
        let mut st = ChildStats::default();
        for rp in &plan.regions {
            sink.begin_region(rp.info.clone())?;
            for run in &rp.runs {
                match run {
                    Run::Written(r) => {
                        st.written_bytes += run.len();
                        let (mut data, mut zero) = (0, 0);
                        reader.push(&rp.info, r.clone(), &mut |p| match p {
                            Pages::Data(s) => {
                                data += s.len() as u64;
                                sink.push_data(s)
                            }
                            Pages::Zero(n) => {
                                zero += n;
                                sink.push_zero(n)
                            }
                        })?;
                        st.data_bytes += data;
                        st.zero_bytes += zero;
                    }
                    Run::Unchanged(_) => {
                        st.in_parent_bytes += run.len();
                        sink.push_in_parent(run.len())?;
                    }
                }
            }
            sink.end_region()?;
            st.regions += 1;
        }
        Ok(st)
    }

    /// Records that the child written from `plan` is complete, with image id
    /// `child`: it becomes the parent the next persist with a parent uses,
    /// and the tracker forgets the writes the child holds.
    ///
    /// # Errors
    /// [`PersistError::NotTracking`]; [`PersistError::NotParent`] when an
    /// image was persisted with tracking since the plan was made (the plan's
    /// parent is no longer the base).
    pub fn child_committed(
        &self,
        plan: &IncrementalPlan,
        child: [u8; 16],
    ) -> Result<(), PersistError> {
        let mut guard = self.tracking_lock().ok_or(PersistError::NotTracking)?;
        let t = &mut *guard;
        if t.base != Some(plan.parent) {
            return Err(PersistError::NotParent {
                parent: plan.parent,
                base: t.base,
            });
        }
        t.base = Some(child);
        t.since_base.retain(|(n, _)| *n > plan.take);
        Ok(())
    }

    /// The parent record a child of the last image persisted with tracking
    /// (or the last committed child) carries: its id, its index checksum
    /// and depth, as the persist that wrote it knew them.
    pub fn tracked_parent(&self) -> Option<memimg::ParentRecord> {
        self.tracking_lock().and_then(|t| {
            t.base.map(|id| memimg::ParentRecord {
                image_id: id,
                index_checksum: t.base_facts.0,
                depth: t.base_facts.1 + 1,
            })
        })
    }

    /// Persists a child of the last image persisted with tracking (or of
    /// the last child) to `path`, through a temporary file renamed into
    /// place when complete: only the pages written since are read and
    /// stored ([`Persister::plan_since`], [`Persister::write_child`]), and
    /// the child becomes the parent of the next one. `hint` is the parent
    /// hint the child stores (see [`crate::hint_for`]); by default none.
    ///
    /// # Errors
    /// [`PersistError::NotTracking`]; [`PersistError::NotParent`] when
    /// nothing was persisted with tracking yet; writing errors. A failed
    /// child loses no write: the next one stores them.
    pub fn write_child_to_path(
        &self,
        path: &Path,
        hint: Option<&str>,
        opts: &PersistOptions,
    ) -> Result<ChildReport, PersistError> {
        let io = |source| PersistError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = ImageFile::new(AtomicFile::create(path)?, true, true, None);
        let (w, report) = self.write_child_to(Background::new(file).map_err(io)?, hint, opts)?;
        let file = w.into_inner().map_err(io)?;
        file.into_file().commit()?;
        Ok(report)
    }

    /// Persists a child of the last image persisted with tracking into
    /// `out` (see [`Persister::write_child_to_path`]). The child counts as
    /// committed when this returns: `out` must keep it.
    ///
    /// # Errors
    /// As [`Persister::write_child_to_path`].
    pub fn write_child_to<W: Write>(
        &self,
        out: W,
        hint: Option<&str>,
        opts: &PersistOptions,
    ) -> Result<(W, ChildReport), PersistError> {
        let t0 = std::time::Instant::now();
        let record = self.tracked_parent().ok_or(PersistError::NotParent {
            parent: [0; 16],
            base: None,
        })?;
        let plan = self.plan_since(record.image_id)?;
        let mut wo = WriterOptions::new()
            .page_size(memimg::page_size())
            .codec(opts.codec)
            .key_opt(opts.key.clone())
            .workers(opts.workers)
            .page_digests(opts.page_digests)
            .parent(record);
        if let Some(h) = hint {
            wo = wo.parent_hint(h);
        }
        if let Some(cs) = opts.chunk_size {
            wo = wo.chunk_size(cs);
        }
        if let Some((t, d)) = &self.validation {
            wo = wo.validation(t.clone(), d.clone());
        }
        let mut w = Writer::new(out, wo)?;
        let child = self.write_child(&plan, &mut w)?;
        let (out, stats) = w.finish()?;
        self.child_committed(&plan, stats.image_id)?;
        if let Some(mut t) = self.tracking_lock() {
            t.base_facts = (stats.index_checksum, record.depth);
        }
        Ok((
            out,
            ChildReport {
                stats,
                child,
                method: plan.method,
                elapsed: t0.elapsed(),
            },
        ))
    }
}

/// What [`Persister::write_child_to_path`] did.
#[derive(Debug, Clone)]
pub struct ChildReport {
    /// What the writer produced.
    pub stats: WriteStats,
    /// What the child holds: bytes written since the parent, read and
    /// stored, and bytes left to the parent.
    pub child: ChildStats,
    /// How the written pages were found: write-protection tracking, or
    /// the checksum fallback.
    pub method: TrackMethod,
    /// How long it took.
    pub elapsed: std::time::Duration,
}

/// A run of pages [`PageReader::push`] hands on.
enum Pages<'a> {
    /// Touched pages, read.
    Data(&'a [u8]),
    /// This many bytes of pages never touched.
    Zero(u64),
}

/// Reads pages of the registered regions for a writer.
struct PageReader {
    page_size: u64,
    maps: Vec<procfs::MapsEntry>,
    pm: Pagemap,
    /// The pagemap entry of a write-protection marker, when tracking with
    /// `WpAsync`: a page never touched, not a swapped one.
    marker: Option<u64>,
    /// Pagemap entries read ahead: the address of the first, and the
    /// entries (see [`PageReader::entries`]).
    window: std::cell::RefCell<(u64, Vec<u64>)>,
}

/// Pagemap entries read at a time when a run asks for fewer: 8,192 (32 MiB
/// of address space with 4 KiB pages, a 64 KiB read). A child's written
/// runs come in address order, and scattered changes make them one page
/// each: one `pread` of 8 bytes per page cost more than the rest of
/// reading it (2,567 of them in a 1 GiB persist with 1% of pages changed).
const WINDOW_PAGES: usize = 8192;

impl PageReader {
    fn new(page_size: u64, tracking: Option<&Tracking>) -> PageReader {
        let me = i32::try_from(std::process::id()).unwrap_or(0);
        let wp = tracking.is_some_and(|t| t.tracker.method() == TrackMethod::WpAsync);
        PageReader {
            page_size,
            maps: procfs::read_maps(me).unwrap_or_default(),
            pm: Pagemap::open(me, page_size),
            marker: if wp { marker_entry() } else { None },
            window: std::cell::RefCell::new((0, Vec::new())),
        }
    }

    /// The pagemap entries of `pages` pages from `at`, into `out`: from the
    /// window read ahead when it holds them, else from a new window read
    /// from `at` (at least `pages`, up to [`WINDOW_PAGES`], not past
    /// `limit`, the end of the region).
    fn entries(&self, at: u64, pages: usize, limit: u64, out: &mut Vec<u64>) {
        let psu = self.page_size;
        let mut w = self.window.borrow_mut();
        let (start, held) = (w.0, w.1.len() as u64);
        let end = at.saturating_add(pages as u64 * psu);
        if at < start || end > start.saturating_add(held * psu) {
            let ahead = usize::try_from(limit.saturating_sub(at) / psu).unwrap_or(usize::MAX);
            let n = pages.max(ahead.min(WINDOW_PAGES));
            self.pm.read(at, &mut w.1, n);
            w.0 = at;
        }
        let i = usize::try_from((at - w.0) / psu).unwrap_or(0);
        out.clear();
        out.extend_from_slice(&w.1[i..i + pages]);
    }

    /// Pushes the pages of `range` (inside region `r`): runs of touched
    /// pages as data, runs never touched as zero.
    fn push(
        &self,
        r: &RegionInfo,
        range: Range<u64>,
        out: &mut dyn FnMut(Pages<'_>) -> memimg::Result<()>,
    ) -> memimg::Result<()> {
        let psu = self.page_size;
        // Pages never touched in private anonymous memory are zero: skip
        // reading (and faulting in) them. Anything else is read.
        let anon_private = self
            .maps
            .iter()
            .filter(|m| m.end > r.start && m.start < r.end())
            .all(|m| !m.is_file() && !m.shared);
        let mut entries = Vec::new();
        let mut at = range.start;
        while at < range.end {
            let n = (4u64 << 20).min(range.end - at);
            let pages = usize::try_from(n / psu).unwrap_or(0);
            if anon_private {
                self.entries(at, pages, r.end(), &mut entries);
            } else {
                entries.clear();
                entries.resize(pages, pagemap::PRESENT);
            }
            let mut i = 0;
            while i < pages {
                let touched = |e: u64| {
                    e & (pagemap::PRESENT | pagemap::SWAPPED) != 0 && Some(e) != self.marker
                };
                let t = touched(entries[i]);
                let j = (i..pages)
                    .find(|&k| touched(entries[k]) != t)
                    .unwrap_or(pages);
                let a = at + i as u64 * psu;
                let len = (j - i) as u64 * psu;
                if t {
                    // SAFETY: a..a+len lies inside a region the caller
                    // registered as mapped and readable until now (the
                    // borrow in `region`, or region_raw's contract).
                    let s = unsafe {
                        std::slice::from_raw_parts(
                            crate::ptr_of(a) as *const u8,
                            usize::try_from(len).unwrap_or(0),
                        )
                    };
                    out(Pages::Data(s))?;
                } else {
                    out(Pages::Zero(len))?;
                }
                i = j;
            }
            at += n;
        }
        Ok(())
    }
}
