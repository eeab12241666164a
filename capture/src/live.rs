//! Capture of another live process: freeze, walk the maps, read resident
//! pages, stream them into a [`memimg::Writer`], resume.
//!
//! With a fork snapshot (see [`crate::fork`]), the process is resumed right
//! after it forked a traced copy of itself, and the pages are read from the
//! copy.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use memimg::atomic::AtomicFile;
use memimg::{Codec, Key, RegionInfo, RegionKind, WriteStats, Writer, WriterOptions};

use crate::bgwrite::{Background, ImageFile};
use crate::error::CaptureError;
use crate::fork;
use crate::freeze::{self, Frozen, SignalGuard};
use crate::memread::{MemReader, ReadError, Run, Via};
use crate::pagemap::{self, Pagemap};
use crate::procfs::{self, MapsEntry};

/// Bytes of address space handled at a time: the read buffer is this big,
/// which bounds the memory a capture uses besides the writer's chunks in
/// flight. 4 MiB.
const WINDOW: u64 = 4 << 20;

/// A progress callback: `(bytes done, bytes total)` of address space walked.
pub type Progress = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// A hook called while the process is still frozen, after its memory was read.
pub type FrozenHook = Arc<dyn Fn(i32) + Send + Sync>;

/// How to capture.
#[derive(Clone)]
pub struct CaptureOptions {
    /// Chunk codec. By default zstd level 1.
    pub codec: Codec,
    /// Encrypts the image under this key. By default none.
    pub key: Option<Key>,
    /// Chunk size in bytes. By default [`memimg::DEFAULT_CHUNK_SIZE`].
    pub chunk_size: Option<u32>,
    /// Leaves out the pages of file mappings that are the file's own pages
    /// (they are recorded absent); copies made by writes to private file
    /// mappings are still captured. By default everything is captured.
    pub exclude_file_backed: bool,
    /// Threads that compress and encrypt. By default one per core.
    pub workers: usize,
    /// Called after each piece of memory is captured. By default none.
    pub progress: Option<Progress>,
    /// Called with the pid once every thread is stopped, before any memory
    /// is read and before a fork snapshot is taken: the image holds what the
    /// process held at this moment (tests use it to compare the image with
    /// `/proc/PID/mem`). By default none.
    pub on_frozen: Option<FrozenHook>,
    /// Takes a fork snapshot when it can (x86-64): the stopped process is
    /// made to fork a traced copy of itself that never runs, the process is
    /// resumed at once, and its memory is read from the copy, so the process
    /// stands still for the fork (tens of milliseconds per GiB) rather than
    /// for the whole capture. When the fork cannot be used the capture
    /// stops the process for the whole read, as with `false`, and
    /// [`CaptureReport::method`] says why. By default on.
    pub fork: bool,
    /// With a fork snapshot, the most bytes of non-zero pages that are read
    /// from the stopped process itself and held in memory until the copy is
    /// read: shared mappings (a copy shares them, so they change once the
    /// process runs) and regions a copy does not inherit as they are
    /// (`MADV_DONTFORK`, `MADV_WIPEONFORK`). Past it, the capture does
    /// without the fork. By default 256 MiB.
    pub fork_hold_limit: u64,
    /// Makes the image durable before it is renamed into place: the bytes
    /// go to the disk while the capture runs (see
    /// [`CaptureOptions::direct_io`]), and the file and its directory are
    /// synced at the end. `false` leaves the bytes in the page cache (a
    /// crash may then lose the image even under its final name);
    /// benchmarks use it to compare with tools that do not sync. By default
    /// on.
    pub durable: bool,
    /// With [`CaptureOptions::durable`], writes the image's full 1 MiB
    /// buffers with `O_DIRECT`, from memory straight to the disk, once the
    /// file holds [`CaptureOptions::direct_io_after`] bytes, rather than
    /// copying them into the page cache and starting writeback every 8 MiB:
    /// past the kernel's writeback threshold that copy, throttled, was the
    /// capture's longest path. Where the file system refuses `O_DIRECT`,
    /// the page cache is used anyway. By default on.
    pub direct_io: bool,
    /// With [`CaptureOptions::direct_io`], the bytes written through the
    /// page cache before `O_DIRECT` takes over (below the kernel's
    /// writeback threshold the page cache is the faster way). By default
    /// `None`: that threshold (`vm.dirty_background_bytes` or
    /// `vm.dirty_background_ratio` percent of the available memory), at
    /// most 256 MiB.
    pub direct_io_after: Option<u64>,
    /// With a fork snapshot, the thread that runs the `clone` (it must be in
    /// a plain ptrace stop, else the capture does without the fork). By
    /// default the main thread, or the first thread that can.
    pub fork_thread: Option<i32>,
    /// Writes a child of this chain (format 1.1, an incremental image):
    /// every resident page is still read, but only the pages that differ
    /// from the chain's at the same addresses are stored, the rest recorded
    /// as the parent's (see `child.rs`). The parent must have been captured
    /// on a machine like this one (page size, architecture). By default
    /// none: a full image.
    pub parent: Option<Arc<memimg::Chain>>,
    /// The parent hint the child stores, with [`CaptureOptions::parent`]
    /// (a path relative to the child's directory, or absolute; see
    /// [`crate::hint_for`]). By default none: readers must be given the
    /// parent.
    pub parent_hint: Option<String>,
    /// Writes a digest of every stored page in the image's index (spec.md,
    /// *Page digests*), so that a later capture with this image as its
    /// parent compares each page with its digest instead of decoding the
    /// parent's chunks. Costs 8 bytes of index per stored page (2 MiB per
    /// GiB) and a hash of each page. A child is written with digests
    /// whatever this says when its parent has them, so that a chain keeps
    /// them. By default off.
    pub page_digests: bool,
}

impl std::fmt::Debug for CaptureOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptureOptions")
            .field("codec", &self.codec)
            .field("encrypted", &self.key.is_some())
            .field("chunk_size", &self.chunk_size)
            .field("exclude_file_backed", &self.exclude_file_backed)
            .field("workers", &self.workers)
            .field("fork", &self.fork)
            .field("fork_hold_limit", &self.fork_hold_limit)
            .field("fork_thread", &self.fork_thread)
            .field("durable", &self.durable)
            .field("direct_io", &self.direct_io)
            .field("direct_io_after", &self.direct_io_after)
            .field(
                "parent",
                &self
                    .parent
                    .as_ref()
                    .map(|c| c.image().header().image_id_hex()),
            )
            .field("parent_hint", &self.parent_hint)
            .field("page_digests", &self.page_digests)
            .finish_non_exhaustive()
    }
}

impl Default for CaptureOptions {
    fn default() -> Self {
        CaptureOptions {
            codec: Codec::Zstd(1),
            key: None,
            chunk_size: None,
            exclude_file_backed: false,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            progress: None,
            on_frozen: None,
            fork: true,
            fork_hold_limit: 256 << 20,
            fork_thread: None,
            durable: true,
            direct_io: true,
            direct_io_after: None,
            parent: None,
            parent_hint: None,
            page_digests: false,
        }
    }
}

/// How a capture read the memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// From a forked copy of the process (a fork snapshot): the process
    /// was stopped only until the copy existed.
    Fork {
        /// How long the fork took, within [`CaptureReport::frozen`].
        fork: Duration,
        /// Bytes of non-zero pages read from the stopped process itself and
        /// held until the copy was read (shared mappings, regions a copy
        /// does not inherit).
        held: u64,
        /// The pid the copy had (it is killed and reaped before the capture
        /// returns).
        copy: i32,
    },
    /// From the process, stopped for the whole read.
    Freeze {
        /// Why there was no fork snapshot.
        why: String,
    },
}

impl Method {
    /// `fork` or `freeze`.
    pub fn name(&self) -> &'static str {
        match self {
            Method::Fork { .. } => "fork",
            Method::Freeze { .. } => "freeze",
        }
    }
}

/// What a capture did.
#[derive(Debug, Clone)]
pub struct CaptureReport {
    /// How long the process's threads were all stopped.
    pub frozen: Duration,
    /// The whole capture, from start to the finished image.
    pub elapsed: Duration,
    /// Threads stopped.
    pub threads: usize,
    /// Threads whose registers the image holds (0 on architectures other
    /// than x86_64, where registers are not read).
    pub registers: usize,
    /// What the writer produced.
    pub stats: WriteStats,
    /// How the memory was read.
    pub method: Method,
    /// Problems that did not fail the capture, for the user to know: the
    /// snapshot copy could not be reaped, for instance.
    pub warnings: Vec<String>,
    /// With a parent: how the pages read compared with the parent's.
    pub compare: Option<crate::CompareStats>,
    /// Bytes of the image written with `O_DIRECT` ([`capture_to_path`] of
    /// a durable capture, see [`CaptureOptions::direct_io`]); 0 when all
    /// went through the page cache (not durable, asked, refused by the
    /// file system, or an image under 1 MiB) or to a writer.
    pub direct_bytes: u64,
}

/// Captures process `pid` into a new image file at `out`.
///
/// The image is written under a temporary name beside `out` and renamed into
/// place only when complete, so a failed or interrupted capture leaves no
/// file under `out`.
///
/// # Errors
/// See [`CaptureError`]. Whatever happens, the process is resumed.
pub fn capture_to_path(
    pid: i32,
    out: &Path,
    opts: &CaptureOptions,
) -> Result<CaptureReport, CaptureError> {
    check_exists(pid)?;
    let file = AtomicFile::create(out)?;
    // A durable capture writes its full buffers with O_DIRECT where the
    // file system takes it (see ImageFile).
    let sink = ImageFile::new(file, opts.durable, opts.direct_io, opts.direct_io_after);
    let io = |e| CaptureError::io(format!("writing {}", out.display()), e);
    // The page-cache copies happen on a thread of their own, overlapping the
    // reading of the process (see bgwrite).
    let (w, mut report) = capture_to_writer(pid, Background::new(sink).map_err(io)?, opts)?;
    let sink = w.into_inner().map_err(io)?;
    report.direct_bytes = sink.direct_bytes();
    if opts.durable {
        sink.into_file().commit()?;
    } else {
        let file = sink.into_file();
        let tmp = file.tmp_path().to_path_buf();
        std::fs::rename(&tmp, out).map_err(|e| {
            CaptureError::io(
                format!("renaming {} to {}", tmp.display(), out.display()),
                e,
            )
        })?;
        // The temporary name is gone: the drop finds nothing to remove.
        drop(file);
    }
    Ok(report)
}

/// Captures process `pid` into `out` and gives it back with a report.
///
/// # Errors
/// See [`CaptureError`]. Whatever happens, the process is resumed.
pub fn capture_to_writer<W: Write>(
    pid: i32,
    out: W,
    opts: &CaptureOptions,
) -> Result<(W, CaptureReport), CaptureError> {
    let t0 = Instant::now();
    check_exists(pid)?;
    let facts = procfs::process_facts(pid);
    let ps = memimg::page_size();
    let mut wo = WriterOptions::new()
        .page_size(ps)
        .codec(opts.codec)
        .key_opt(opts.key.clone())
        .workers(opts.workers)
        .process(Some(facts))
        .page_digests(
            opts.page_digests
                || opts
                    .parent
                    .as_ref()
                    .is_some_and(|c| c.image().has_page_digests()),
        );
    if let Some(cs) = opts.chunk_size {
        wo = wo.chunk_size(cs);
    }
    if let Some(chain) = &opts.parent {
        wo = child_options(wo, chain, opts.parent_hint.clone())?;
    }
    let guard = SignalGuard::install();
    // The checks that cost time are made before the process is stopped.
    let mut no_fork = if opts.fork {
        fork::precheck(pid)
    } else {
        Some("fork snapshots were turned off".to_string())
    };
    let mut frozen = Frozen::freeze(pid)?;
    let threads = frozen.threads();
    // Registers are read while every thread is stopped, so they match the
    // memory read next; the writer takes them as notes when it starts.
    let state = crate::threads::read(pid, &frozen.tids());
    let registers = state.threads;
    let wo = wo.notes(state.notes);
    if let Some(h) = &opts.on_frozen {
        h(pid);
    }
    let maps = procfs::read_maps(pid).map_err(|e| map_proc_err(pid, e))?;
    let total: u64 = maps
        .iter()
        .filter(|m| captured(m))
        .map(MapsEntry::len)
        .sum();
    let mut done = 0u64;
    let mut progress = |n| {
        done += n;
        if let Some(p) = &opts.progress {
            p(done, total);
        }
    };
    let ps = u64::from(ps);
    let snapshot = match no_fork {
        Some(_) => None,
        None => match fork::Snapshot::take(&mut frozen, pid, &maps, opts, ps) {
            Ok(s) => Some(s),
            Err(fork::NoFork::Why(why)) => {
                no_fork = Some(why);
                None
            }
            Err(fork::NoFork::Failed(e)) => return Err(e),
        },
    };
    let (writer, frozen_time, method, snapshot) = match snapshot {
        None => {
            // Its header is buffered, its workers spawn in well under a
            // millisecond.
            let mut writer = Out::new(out, wo, opts)?;
            let mut walker = Walker::new(pid, ps, opts.exclude_file_backed);
            for m in &maps {
                walker.region(m, writer.sink(), &mut progress)?;
            }
            if !procfs::alive(pid) {
                return Err(CaptureError::ProcessExited { pid });
            }
            let why = no_fork.unwrap_or_default();
            (writer, frozen.resume(), Method::Freeze { why }, None)
        }
        Some(mut snap) => {
            // The copy holds the memory: the process goes on at once, and
            // the writer starts (compression contexts, threads) after.
            let frozen_time = frozen.resume();
            let mut writer = Out::new(out, wo, opts)?;
            snap.read(&maps, writer.sink(), &mut progress)?;
            let method = Method::Fork {
                fork: snap.fork_time(),
                held: snap.held_bytes(),
                copy: snap.copy_pid(),
            };
            // The copy is read: it dies (unmapping its memory takes the
            // kernel about 15 ms a GiB) while the writer finishes.
            snap.kill();
            (writer, frozen_time, method, Some(snap))
        }
    };
    drop(guard);
    let (w, stats, compare) = writer.finish()?;
    let warnings = snapshot.map(fork::Snapshot::finish).unwrap_or_default();
    Ok((
        w,
        CaptureReport {
            frozen: frozen_time,
            elapsed: t0.elapsed(),
            threads,
            registers,
            stats,
            method,
            warnings,
            compare,
            direct_bytes: 0,
        },
    ))
}

/// The writer options of a child of `chain`: its parent record and page
/// size, after checking that the parent was captured on a machine like
/// this one (a child records the parent's machine facts).
fn child_options(
    wo: WriterOptions,
    chain: &memimg::Chain,
    hint: Option<String>,
) -> Result<WriterOptions, CaptureError> {
    let ph = chain.image().header();
    if let Some(d) = ph
        .machine
        .first_difference(&memimg::MachineFacts::current())
    {
        return Err(CaptureError::Format(memimg::Error::plain(
            memimg::ErrorKind::InvalidInput,
            format!("the parent was captured on another machine (its {d} differs): capture a full image"),
        )));
    }
    let wo = wo.parent_of(chain.image())?;
    Ok(match hint {
        Some(h) => wo.parent_hint(h),
        None => wo,
    })
}

/// The image being written: a full image, or a child compared with its
/// parent chain.
enum Out<'c, W: Write> {
    Full(Writer<W>),
    Child(crate::child::ChildWriter<'c, W>),
}

impl<'c, W: Write> Out<'c, W> {
    fn new(out: W, wo: WriterOptions, opts: &'c CaptureOptions) -> Result<Self, CaptureError> {
        let w = Writer::new(out, wo)?;
        Ok(match &opts.parent {
            Some(chain) => Out::Child(crate::child::ChildWriter::new(w, chain)),
            None => Out::Full(w),
        })
    }

    fn sink(&mut self) -> &mut dyn Sink {
        match self {
            Out::Full(w) => w,
            Out::Child(c) => c,
        }
    }

    #[allow(clippy::type_complexity)]
    fn finish(self) -> Result<(W, WriteStats, Option<crate::CompareStats>), CaptureError> {
        Ok(match self {
            Out::Full(w) => {
                let (w, s) = w.finish()?;
                (w, s, None)
            }
            Out::Child(c) => {
                let (w, s, c) = c.finish()?;
                (w, s, Some(c))
            }
        })
    }
}

fn check_exists(pid: i32) -> Result<(), CaptureError> {
    if pid <= 0 || !Path::new(&format!("/proc/{pid}")).exists() || !procfs::alive(pid) {
        return Err(CaptureError::NoSuchProcess { pid });
    }
    Ok(())
}

fn map_proc_err(pid: i32, e: std::io::Error) -> CaptureError {
    match e.kind() {
        std::io::ErrorKind::NotFound => CaptureError::ProcessExited { pid },
        std::io::ErrorKind::PermissionDenied => CaptureError::permission(pid),
        _ => CaptureError::io(format!("reading /proc/{pid}"), e),
    }
}

/// Regions whose bytes are captured, whatever their protection: a page the
/// process wrote and then made `PROT_NONE`, or a write-only mapping, holds
/// data (gcore keeps it too). Only `[vvar]` and `[vsyscall]`, which the
/// kernel fills and which hold nothing of the process, are recorded without
/// data.
pub(crate) fn captured(m: &MapsEntry) -> bool {
    !m.is_special() && !m.is_empty()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PageState {
    Read,
    Zero,
    Absent,
}

/// Where the walk of the maps goes: the image writer, or memory held for
/// later (see `fork::Held`).
pub(crate) trait Sink {
    fn begin_region(&mut self, info: RegionInfo) -> Result<(), CaptureError>;
    fn push_data(&mut self, data: &[u8]) -> Result<(), CaptureError>;
    /// True when the sink compares pages by their digests: the walker then
    /// hashes each page as it reads it, and gives the digests with the
    /// bytes ([`Sink::push_data_digested`]).
    fn wants_digests(&self) -> bool {
        false
    }
    /// [`Sink::push_data`], with each page's `xxh3_64` digest.
    fn push_data_digested(&mut self, data: &[u8], _digests: &[u64]) -> Result<(), CaptureError> {
        self.push_data(data)
    }
    fn push_zero(&mut self, len: u64) -> Result<(), CaptureError>;
    fn push_absent(&mut self, len: u64) -> Result<(), CaptureError>;
    fn end_region(&mut self) -> Result<(), CaptureError>;
    fn add_empty_region(&mut self, info: RegionInfo) -> Result<(), CaptureError>;
}

impl<W: Write> Sink for Writer<W> {
    fn begin_region(&mut self, info: RegionInfo) -> Result<(), CaptureError> {
        Ok(Writer::begin_region(self, info)?)
    }
    fn push_data(&mut self, data: &[u8]) -> Result<(), CaptureError> {
        Ok(Writer::push_data(self, data)?)
    }
    fn push_zero(&mut self, len: u64) -> Result<(), CaptureError> {
        Ok(Writer::push_zero(self, len)?)
    }
    fn push_absent(&mut self, len: u64) -> Result<(), CaptureError> {
        Ok(Writer::push_absent(self, len)?)
    }
    fn end_region(&mut self) -> Result<(), CaptureError> {
        Ok(Writer::end_region(self)?)
    }
    fn add_empty_region(&mut self, info: RegionInfo) -> Result<(), CaptureError> {
        Ok(Writer::add_empty_region(self, info)?)
    }
}

/// Walks regions of a process, page run by page run, into a [`Sink`].
pub(crate) struct Walker {
    /// The process read: the target, or its snapshot copy.
    pid: i32,
    /// The target, when `pid` is its snapshot copy.
    copy_of: Option<i32>,
    ps: u64,
    pagemap: Pagemap,
    reader: MemReader,
    exclude_file: bool,
    /// Pagemap entries that stand in for those of `pid`, by region start.
    /// A fork copies no page table entry of a file mapping the process never
    /// wrote to, so the copy's pagemap would call all its pages untouched:
    /// the target's entries, recorded at the fork, say which were loaded.
    entries_of: std::collections::HashMap<u64, Vec<u64>>,
    /// Bytes to put in the image in place of what is read: what the fork's
    /// injection changed, as it was before (see `fork`).
    patches: Vec<(u64, Vec<u8>)>,
    entries: Vec<u64>,
    /// The window being read.
    win: Win,
    /// A window read and not yet given to the sink, when `pending`: it
    /// goes to the sink while the next one is read (see `window`).
    held: Win,
    pending: bool,
}

/// One window of pages: what each page is, the runs to read, their bytes
/// and (when the sink wants them) their digests.
#[derive(Default)]
struct Win {
    addr: u64,
    pages: usize,
    state: Vec<PageState>,
    runs: Vec<Run>,
    buf: Vec<u8>,
    digests: Vec<u64>,
    digested: bool,
}

impl Walker {
    /// A walker reading process `pid` (the target, or a snapshot copy).
    pub(crate) fn new(pid: i32, ps: u64, exclude_file: bool) -> Walker {
        Walker {
            pid,
            copy_of: None,
            ps,
            pagemap: Pagemap::open(pid, ps),
            reader: MemReader::new(pid, usize::try_from(ps).unwrap_or(4096)),
            exclude_file,
            entries_of: std::collections::HashMap::new(),
            patches: Vec::new(),
            entries: Vec::new(),
            win: Win::default(),
            held: Win::default(),
            pending: false,
        }
    }

    /// Says that `pid` is a snapshot copy of `target`: it going away is
    /// then [`CaptureError::SnapshotLost`].
    pub(crate) fn copy_of(mut self, target: i32) -> Walker {
        self.copy_of = Some(target);
        self
    }

    /// Uses `entries` (one pagemap entry per page) for the region starting
    /// at `start` instead of the process's own pagemap.
    pub(crate) fn set_entries(&mut self, start: u64, entries: Vec<u64>) {
        self.entries_of.insert(start, entries);
    }

    /// Puts `bytes` at `addr` in the image in place of what is read there.
    pub(crate) fn add_patch(&mut self, addr: u64, bytes: Vec<u8>) {
        self.patches.push((addr, bytes));
    }

    /// The first page at or after `addr` (before `end`) that is present or
    /// swapped, from the stand-in entries of region `m`; `None` without
    /// stand-in entries.
    fn next_resident_standin(&self, m: &MapsEntry, addr: u64, end: u64) -> Option<Option<u64>> {
        let e = self.entries_of.get(&m.start)?;
        let first = usize::try_from((addr - m.start) / self.ps).ok()?;
        let last = usize::try_from((end - m.start) / self.ps).ok()?;
        let found = e
            .get(first..last.min(e.len()))?
            .iter()
            .position(|&x| x & (pagemap::PRESENT | pagemap::SWAPPED) != 0);
        Some(found.map(|k| addr + k as u64 * self.ps))
    }

    /// What to do with a page, from its pagemap entry.
    fn classify(&self, m: &MapsEntry, e: u64) -> PageState {
        let resident = e & (pagemap::PRESENT | pagemap::SWAPPED) != 0;
        let file_page = e & pagemap::FILE_OR_SHARED != 0;
        if m.is_file() {
            if !resident || (self.exclude_file && (file_page || m.shared)) {
                // Never loaded, or excluded: its bytes are the file's.
                PageState::Absent
            } else {
                PageState::Read
            }
        } else if resident
            || m.shared
            || !matches!(
                m.kind(),
                RegionKind::Anonymous | RegionKind::Heap | RegionKind::Stack | RegionKind::Guard
            )
        {
            // Shared anonymous memory may hold pages this process has not
            // mapped yet, and special mappings ([vdso] …) are filled on
            // demand by the kernel: read them (the writer drops zero pages).
            PageState::Read
        } else {
            // Private anonymous memory never touched reads as zeros, also
            // behind PROT_NONE (a guard page, or address space reserved
            // by an allocator or a runtime, often gigabytes).
            PageState::Zero
        }
    }

    /// Walks region `m` into `w`: a region without data when it is not
    /// [`captured`].
    pub(crate) fn region(
        &mut self,
        m: &MapsEntry,
        w: &mut dyn Sink,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), CaptureError> {
        if !captured(m) {
            return w.add_empty_region(m.region_info());
        }
        w.begin_region(m.region_info())?;
        // What a page that was never touched becomes here.
        let untouched = self.classify(m, 0);
        let mut addr = m.start;
        while addr < m.end {
            if freeze::interrupted() {
                return Err(CaptureError::Interrupted);
            }
            if untouched != PageState::Read {
                // Jump over untouched address space in one step.
                let next = self
                    .next_resident_standin(m, addr, m.end)
                    .or_else(|| self.pagemap.next_resident(addr, m.end));
                if let Some(next) = next {
                    let to = next.unwrap_or(m.end);
                    if to > addr {
                        self.flush(w)?;
                        match untouched {
                            PageState::Zero => w.push_zero(to - addr)?,
                            _ => w.push_absent(to - addr)?,
                        }
                        progress(to - addr);
                        addr = to;
                        continue;
                    }
                }
            }
            let len = WINDOW.min(m.end - addr);
            self.window(m, addr, len, w)?;
            progress(len);
            addr += len;
        }
        self.flush(w)?;
        w.end_region()?;
        Ok(())
    }

    /// Reads the window of `len` bytes at `addr` of region `m`, and gives
    /// the window read before it (if any) to `w` meanwhile: the read runs
    /// on the rayon pool while this thread hands the held window to the
    /// sink, which compares, compresses and writes it. The held window
    /// goes to `w` at the latest before anything else does (`flush`).
    fn window(
        &mut self,
        m: &MapsEntry,
        addr: u64,
        len: u64,
        w: &mut dyn Sink,
    ) -> Result<(), CaptureError> {
        self.plan(m, addr, len, w.wants_digests());
        // A region the process cannot read itself is read through
        // /proc/PID/mem, which process_vm_readv would refuse page by page.
        // So is a snapshot copy: process_vm_readv pins the pages it reads,
        // and pinning a page a fork shares makes the kernel copy it first
        // (it "unshares" it), which would copy the whole process.
        let via = if m.prot.read() && self.copy_of.is_none() {
            Via::VmReadv
        } else {
            Via::ProcMem
        };
        let read = if self.pending && !self.win.runs.is_empty() {
            let Walker {
                reader,
                win,
                held,
                patches,
                ps,
                ..
            } = self;
            let ps = *ps;
            let mut read = Ok(());
            let mut given = Ok(());
            rayon::in_place_scope(|s| {
                s.spawn(|_| read = fill(reader, win, via, ps, patches));
                given = give(held, ps, w);
            });
            self.pending = false;
            given?;
            read
        } else {
            self.flush(w)?;
            fill(&mut self.reader, &mut self.win, via, self.ps, &self.patches)
        };
        if let Err(ReadError::Gone) = read {
            return Err(match self.copy_of {
                Some(pid) => CaptureError::SnapshotLost { pid },
                None => CaptureError::ProcessExited { pid: self.pid },
            });
        }
        std::mem::swap(&mut self.win, &mut self.held);
        self.pending = true;
        Ok(())
    }

    /// Gives the held window, if any, to `w`.
    fn flush(&mut self, w: &mut dyn Sink) -> Result<(), CaptureError> {
        if std::mem::take(&mut self.pending) {
            give(&self.held, self.ps, w)?;
        }
        Ok(())
    }

    /// Classifies the pages of the window of `len` bytes at `addr` of
    /// region `m` into `self.win`: what each page is, the runs to read,
    /// room for their bytes (and digests, with `digested`).
    fn plan(&mut self, m: &MapsEntry, addr: u64, len: u64, digested: bool) {
        let ps = self.ps;
        // len ≤ WINDOW, so these fit in usize.
        let pages = usize::try_from(len / ps).unwrap_or(0);
        let psz = usize::try_from(ps).unwrap_or(4096);
        let mut entries = std::mem::take(&mut self.entries);
        match self.entries_of.get(&m.start) {
            Some(e) => {
                let first = usize::try_from((addr - m.start) / ps).unwrap_or(usize::MAX);
                entries.clear();
                entries.extend(e.iter().skip(first).take(pages));
                entries.resize(pages, 0);
            }
            None => self.pagemap.read(addr, &mut entries, pages),
        }
        let mut win = std::mem::take(&mut self.win);
        win.addr = addr;
        win.pages = pages;
        win.digested = digested;
        win.state.clear();
        for &e in &entries {
            win.state.push(self.classify(m, e));
        }
        self.entries = entries;
        // Runs of pages to read, each at its own offset in the buffer.
        win.runs.clear();
        let mut i = 0;
        while i < pages {
            if win.state[i] != PageState::Read {
                i += 1;
                continue;
            }
            let j = (i..pages)
                .find(|&k| win.state[k] != PageState::Read)
                .unwrap_or(pages);
            win.runs.push(Run {
                addr: addr + i as u64 * ps,
                len: (j - i) * psz,
                local: i * psz,
            });
            i = j;
        }
        if !win.runs.is_empty() {
            if win.buf.len() < pages * psz {
                win.buf.resize(pages * psz, 0);
            }
            if digested && win.digests.len() < pages {
                win.digests.resize(pages, 0);
            }
        }
        self.win = win;
    }
}

/// Reads the runs of `win` with `reader` (a page neither way can read
/// becomes absent), then puts `patches` over what was read.
fn fill(
    reader: &mut MemReader,
    win: &mut Win,
    via: Via,
    ps: u64,
    patches: &[(u64, Vec<u8>)],
) -> Result<(), ReadError> {
    if win.runs.is_empty() {
        return Ok(());
    }
    let (addr, pages) = (win.addr, win.pages);
    let state = &mut win.state;
    let digests = if win.digested {
        Some(&mut win.digests[..pages])
    } else {
        None
    };
    reader.read(&win.runs, &mut win.buf, via, digests, &mut |a| {
        if let Some(s) = usize::try_from((a - addr) / ps)
            .ok()
            .and_then(|k| state.get_mut(k))
        {
            *s = PageState::Absent;
        }
    })?;
    apply_patches(win, ps, patches);
    Ok(())
}

/// Gives window `win` to `w`: runs of equal state in address order.
fn give(win: &Win, ps: u64, w: &mut dyn Sink) -> Result<(), CaptureError> {
    let psz = usize::try_from(ps).unwrap_or(4096);
    let mut i = 0;
    while i < win.pages {
        let s = win.state[i];
        let j = (i..win.pages)
            .find(|&k| win.state[k] != s)
            .unwrap_or(win.pages);
        let bytes = ((j - i) * psz) as u64;
        match s {
            PageState::Read if win.digested => {
                w.push_data_digested(&win.buf[i * psz..j * psz], &win.digests[i..j])?;
            }
            PageState::Read => w.push_data(&win.buf[i * psz..j * psz])?,
            PageState::Zero => w.push_zero(bytes)?,
            PageState::Absent => w.push_absent(bytes)?,
        }
        i = j;
    }
    Ok(())
}

/// Copies `patches` over the bytes just read into `win`, on the pages that
/// were read; with digests, hashes the pages patched again.
fn apply_patches(win: &mut Win, ps: u64, patches: &[(u64, Vec<u8>)]) {
    let addr = win.addr;
    let end = addr + win.pages as u64 * ps;
    let psz = usize::try_from(ps).unwrap_or(4096);
    for (at, bytes) in patches {
        let (from, to) = ((*at).max(addr), (at + bytes.len() as u64).min(end));
        for a in from..to {
            let (Ok(i), Ok(k)) = (usize::try_from(a - addr), usize::try_from(a - at)) else {
                continue;
            };
            if win.state.get(i / psz) == Some(&PageState::Read) {
                win.buf[i] = bytes[k];
            }
        }
        if win.digested && from < to {
            // The patched pages, hashed again as the reader hashed them.
            let first = usize::try_from((from - addr) / ps).unwrap_or(usize::MAX);
            let last = usize::try_from((to - 1 - addr) / ps).unwrap_or(usize::MAX);
            if let (Some(d), Some(pages)) = (
                win.digests.get_mut(first..=last),
                win.buf.get(first * psz..(last + 1) * psz),
            ) {
                let ps32 = u32::try_from(ps).unwrap_or(u32::MAX);
                for (slot, g) in d.iter_mut().zip(memimg::page_digests_of(pages, ps32)) {
                    *slot = g;
                }
            }
        }
    }
}
