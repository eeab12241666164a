//! Lazy restore through userfaultfd.
//!
//! The regions are registered in "missing" mode: the first touch of a page
//! that was never filled stops the touching thread and sends a message to
//! the handler thread, which fetches the whole piece holding it (one chunk,
//! decrypted and decompressed as needed) and places it with `UFFDIO_COPY`,
//! which also wakes the thread; zero extents are placed with
//! `UFFDIO_ZEROPAGE`, a chunk-sized piece at a time. Between faults the same
//! thread can prefetch the rest.
//!
//! # Following the program's changes
//!
//! What a program sees, and what it costs, is listed in the module docs of
//! `restore`. How: the handler asks the kernel to report the program's
//! changes to its own memory (`UFFD_FEATURE_EVENT_REMAP`, `_REMOVE`,
//! `_UNMAP` and, with `CAP_SYS_PTRACE`, `_FORK`), and keeps, for each
//! address space, the runs of pages still waiting for the image's bytes
//! with the image address each comes from ([`Pending`]), as CRIU's
//! lazy-pages daemon does.
//!
//! - A discarded (`MADV_DONTNEED`, `MADV_FREE`) or unmapped range stops
//!   waiting. The kernel drops the pages only after the handler has read
//!   the event, and a page dropped that way faults again: any fault on a
//!   page that no longer waits is answered with a zero page, never with the
//!   image (on a page that is present, that is a harmless `EEXIST`).
//! - `mremap` moves the waiting runs and keeps their image addresses.
//! - While an event waits to be read, the kernel refuses every fill with
//!   `EAGAIN`; the handler then reads the event and works out again what to
//!   place, so nothing is placed by a picture that is out of date. The
//!   kernel hands out waiting faults before waiting events, so all events
//!   read are applied before the faults read with them.
//! - A fill can stop part way (`EAGAIN` with a count), find its first page
//!   present (`EEXIST`) or span two mappings after an `mprotect` (`ENOENT`):
//!   it goes on page by page, and wakes whatever it does not fill.
//! - Faults come first: the prefetcher takes the next piece only when no
//!   fault waits.
//!
//! **Fork.** The handler is a thread of the restored process. Serving a
//! child's userfaultfd, as CRIU does, would keep forks instant, but a child
//! that outlives its parent would lose its server with the parent, and the
//! pages it had not received would read zeros. So a `pthread_atfork` hook
//! finishes the restore before every fork through the C library: the child
//! starts with every page and needs nothing from this thread. The hook also
//! keeps such forks from ever reaching the handler as events: the C library
//! holds its allocator locks across the fork system call, and the handler
//! allocates. A raw fork system call bypasses the hook; its fork event hands
//! over the child's userfaultfd, which the handler serves first. Such a
//! child also holds copies of the handler's descriptors, so the handler
//! keeps serving it (and probes now and then whether it is gone).
//!
//! **Letting go.** Once this process has every page, the handler unregisters
//! every mapping of its userfaultfd (in `/proc/self/smaps`, flag `um`, which
//! also finds what a growing `mremap` added), waits until no event is on its
//! way, and closes it. Unregistering first matters: a copy of the
//! descriptor held elsewhere (a raw fork's child, a `vfork` child before its
//! `exec`) would otherwise keep the ranges armed with nobody reading.
//!
//! No thread waits for ever: every fault ends in a copy, a zero page, a wake
//! or a signal. A chunk that fails to decode (damage) is never served as
//! wrong bytes: in this process its range is made inaccessible and
//! unregistered, so the touching thread gets SIGSEGV at that address (in a
//! raw fork's child it is poisoned, SIGBUS), and [`LazyStats::error`] says
//! why.
//!
//! # The seam for other sources
//!
//! Fetching a chunk's bytes and placing them are apart: the handler asks a
//! [`ChunkSource`] (today the image, `Image::decode_extent`, whose bytes
//! may already come from any store through `Image::from_read_at`) for a
//! piece's bytes, then places them. A source for a remote image implements
//! the same trait; everything above holds for it unchanged. Two things a
//! source must bear in mind: it runs on the handler thread, so a slow fetch
//! delays every fault behind it; and a fork waits until every piece has
//! been fetched (for a remote image, downloaded).

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Once, Weak};
use std::thread::JoinHandle;

use memimg::{Extent, ExtentKind, Image, Profile, Region};

use super::fetch::{Config, Fetched, Plan, Pool};
use super::order::{Ordered, Recorder};
use super::pending::{Pending, Run};
use super::uffd::{feature, Msg, RawMsg, Uffd};
use super::usize_of;
use crate::error::RestoreError;

/// Where the handler gets a chunk's bytes: the seam between fetching
/// (reading, decrypting, decompressing; for a remote image, downloading) and
/// placing (userfaultfd). Only the handler thread uses it.
pub(crate) trait ChunkSource: Send + 'static {
    /// Writes the content of the data extent `ext` into `out`, which is
    /// exactly as long as the extent.
    ///
    /// # Errors
    /// Why the bytes cannot be had (damage, a wrong key, an I/O error): the
    /// extent's pages are then made inaccessible, never filled with wrong
    /// bytes.
    fn fetch(&mut self, ext: &Extent, out: &mut [u8]) -> Result<(), memimg::Error>;
}

impl ChunkSource for Image {
    fn fetch(&mut self, ext: &Extent, out: &mut [u8]) -> Result<(), memimg::Error> {
        self.decode_extent(ext, out)
    }
}

/// The events without which a lazily restored program could read wrong
/// bytes or hang: see the module docs.
const NEED: u64 = feature::EVENT_REMAP | feature::EVENT_REMOVE | feature::EVENT_UNMAP;

/// Enables the features a lazy restore uses on `uffd`; returns them.
fn negotiate(uffd: &Uffd) -> Result<u64, String> {
    let offered = Uffd::open()?
        .api(0)
        .map_err(|e| format!("UFFDIO_API: {e}"))?;
    if offered & NEED != NEED {
        return Err(
            "the kernel does not report mremap, madvise and munmap to a userfaultfd (Linux 4.11 or later is needed)"
                .into(),
        );
    }
    let mut want = NEED | (offered & (feature::EVENT_FORK | feature::THREAD_ID | feature::POISON));
    loop {
        match uffd.api(want) {
            Ok(_) => return Ok(want),
            // Fork events need CAP_SYS_PTRACE. Forks through the C library
            // are still right without them (they wait for the whole image).
            Err(e) if e.raw_os_error() == Some(libc::EPERM) && want & feature::EVENT_FORK != 0 => {
                want &= !feature::EVENT_FORK;
            }
            Err(e) => return Err(format!("UFFDIO_API: {e}")),
        }
    }
}

/// Why a lazy restore cannot run here, if it cannot.
pub fn unavailable() -> Option<String> {
    match Uffd::open() {
        Ok(u) => negotiate(&u).err(),
        Err(e) => Some(e),
    }
}

/// A piece of the image the handler fetches and places in one go: a data
/// extent (one chunk), or a chunk-sized part of a zero extent.
#[derive(Debug, Clone, Copy)]
struct Unit {
    /// Its image address.
    addr: u64,
    len: u64,
    /// The data extent to fetch; `None` for zeros.
    extent: Option<Extent>,
}

/// What a lazy restore's handler has done so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LazyStats {
    /// Page faults read (in this process, and in children of raw forks).
    pub faults: u64,
    /// Faults answered with a zero page because the page no longer waited
    /// for the image: the program had discarded it (`MADV_DONTNEED`), the
    /// kernel had dropped it, or it lies outside the image (the part a
    /// growing `mremap` adds).
    pub refaults: u64,
    /// Pieces (chunks or zero runs) of this process with no page left
    /// waiting: placed by fault or prefetch, or discarded by the program.
    pub units_done: u64,
    /// Pieces in all.
    pub units_total: u64,
    /// Bytes fetched and copied in.
    pub bytes_copied: u64,
    /// Forks reported by the kernel: raw fork system calls, whose children
    /// the handler serves (see the module docs).
    pub forks: u64,
    /// `mremap` moves of restored memory.
    pub remaps: u64,
    /// `madvise` discards of restored memory.
    pub removes: u64,
    /// Unmappings of restored memory.
    pub unmaps: u64,
    /// Every page of this process has its bytes and the userfaultfd was
    /// let go: the regions are ordinary memory now.
    pub released: bool,
    /// Pieces whose bytes could not be had (damage; for a remote image, a
    /// fetch that failed after its retries): their pages were made
    /// inaccessible, never filled with wrong bytes.
    pub units_failed: u64,
    /// The first chunk that failed to decode or fetch, if any.
    pub error: Option<String>,
    /// Faults that had to wait for the image's bytes: the page still waited
    /// when it was touched, so the handler fetched (or took from a buffer)
    /// and placed its piece while the thread waited. The other faults are
    /// [`LazyStats::refaults`].
    pub faults_waited: u64,
    /// Pieces placed by the prefetcher before anything touched them (the
    /// working set of an image with a load order, then the rest when asked
    /// by [`LazyHandle::prefetch`]): touches of those never fault.
    pub units_prefetched: u64,
    /// Reads made to fetch the working set of an image with a load order
    /// before returning: for a local image 1 once it was needed, else 0;
    /// for a remote one, its ranged GETs of up to
    /// `RemoteOptions::max_request` bytes each (1 for a working set
    /// that size or smaller).
    pub working_set_reads: u64,
    /// Bytes of those reads.
    pub working_set_bytes: u64,
    /// Stored bytes a remote restore fetched twice: chunks a fault fetched
    /// on its own because the prefetch request holding them was still under
    /// way after as long as such a fetch takes (a fault waits for the
    /// request until then), and chunks already fetched that a prefetch
    /// request bridged (fetched again rather than split the request in
    /// two). 0 for a local image.
    pub bytes_fetched_twice: u64,
    /// Recording a load-order profile
    /// ([`super::RestoreOptions::record_profile`]) is still on.
    pub recording: bool,
}

/// Where the handler is, for the threads that wait on it.
#[derive(Debug, Clone, Copy, Default)]
struct State {
    /// This process has every page and the handler let its userfaultfd go.
    released: bool,
    /// Children of raw forks still wait for pages.
    children_waiting: bool,
    /// The handler thread has ended.
    ended: bool,
    /// The working set of an image with a load order has been placed (or
    /// there is none).
    planned: bool,
}

struct Shared {
    /// An eventfd that wakes the handler thread.
    wake: OwnedFd,
    /// The process the handler thread runs in. A forked child has a copy of
    /// this value and no thread behind it.
    pid: u32,
    prefetch: AtomicBool,
    /// Place every page now (the handle is dropped, or the process forks).
    finish: AtomicBool,
    faults: AtomicU64,
    refaults: AtomicU64,
    units_done: AtomicU64,
    units_failed: AtomicU64,
    bytes_copied: AtomicU64,
    forks: AtomicU64,
    remaps: AtomicU64,
    removes: AtomicU64,
    unmaps: AtomicU64,
    faults_waited: AtomicU64,
    units_prefetched: AtomicU64,
    /// The working set's reads and bytes (see `order::Ordered`).
    ws: Arc<[AtomicU64; 2]>,
    /// [`LazyStats::bytes_fetched_twice`].
    twice: Arc<AtomicU64>,
    recorder: Option<Arc<Recorder>>,
    error: Mutex<Option<String>>,
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn poke(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a valid buffer to our eventfd.
        unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), 8) };
    }

    fn state(&self) -> State {
        self.state.lock().map(|s| *s).unwrap_or_default()
    }

    fn set(&self, f: impl FnOnce(&mut State)) {
        if let Ok(mut s) = self.state.lock() {
            f(&mut s);
        }
        self.changed.notify_all();
    }

    /// Waits until `done` holds, or the handler thread has ended.
    fn wait(&self, done: impl Fn(&State) -> bool) {
        let Ok(mut s) = self.state.lock() else { return };
        while !done(&s) && !s.ended {
            s = match self.changed.wait(s) {
                Ok(s) => s,
                Err(_) => return,
            };
        }
    }

    fn note_error(&self, why: String) {
        if let Ok(mut e) = self.error.lock() {
            e.get_or_insert(why);
        }
    }

    fn count(&self, c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// The handlers of this process, for the fork hook.
static LIVE: Mutex<Vec<Weak<Shared>>> = Mutex::new(Vec::new());
static HOOK: Once = Once::new();

fn track(shared: &Arc<Shared>) {
    HOOK.call_once(|| {
        // SAFETY: registers a function that takes no arguments, to run in the
        // forking thread before each fork through the C library.
        unsafe { libc::pthread_atfork(Some(before_fork), None, None) };
    });
    if let Ok(mut live) = LIVE.lock() {
        live.retain(|w| w.strong_count() > 0);
        live.push(Arc::downgrade(shared));
    }
}

/// Runs in the forking thread before every fork through the C library (and
/// before the C library takes its own locks, so allocating is fine): places
/// every page still waiting, so that the child starts with fully restored
/// memory and needs nothing from this process's handler thread.
extern "C" fn before_fork() {
    let live: Vec<Arc<Shared>> = match LIVE.lock() {
        Ok(l) => l.iter().filter_map(Weak::upgrade).collect(),
        Err(_) => return,
    };
    let me = std::process::id();
    let mine: Vec<&Arc<Shared>> = live.iter().filter(|s| s.pid == me).collect();
    for s in &mine {
        s.finish.store(true, Ordering::SeqCst);
        s.poke();
    }
    for s in &mine {
        s.wait(|st| st.released && !st.children_waiting);
    }
}

/// The fault handler of a lazy restore. It owns the handler thread; dropping
/// it places every page not yet placed, then stops the thread (which stays,
/// after a raw fork, to serve the children; see the module docs).
pub struct LazyHandle {
    shared: Arc<Shared>,
    units_total: u64,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for LazyHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyHandle")
            .field("stats", &self.stats())
            .finish()
    }
}

impl LazyHandle {
    /// Starts the handler of `img`'s `regions`. With `fetch` `None` the
    /// handler reads and decodes each piece itself (a local image); with a
    /// pool's configuration, its worker threads fetch and decode while the
    /// handler only places (a remote image: see `fetch.rs`). `record` and
    /// `background` are [`super::RestoreOptions::record_profile`] and
    /// [`super::RestoreOptions::working_set_in_background`].
    pub(super) fn start(
        img: Image,
        regions: &[Region],
        fetch: Option<Config>,
        record: Option<std::time::Duration>,
        background: bool,
    ) -> Result<LazyHandle, RestoreError> {
        let ps = img.header().page_size;
        let piece = u64::from(img.header().chunk_size);
        let mut units = Vec::new();
        for r in regions {
            for e in img.region_extents(r)? {
                match e.kind {
                    ExtentKind::Data => units.push(Unit {
                        addr: e.addr,
                        len: e.len(ps),
                        extent: Some(*e),
                    }),
                    _ => {
                        let mut a = e.addr;
                        while a < e.end(ps) {
                            let len = piece.min(e.end(ps) - a);
                            units.push(Unit {
                                addr: a,
                                len,
                                extent: None,
                            });
                            a += len;
                        }
                    }
                }
            }
        }
        let ranges: Vec<(u64, u64)> = regions
            .iter()
            .map(|r| (r.info.start, r.info.end()))
            .collect();
        // The working set of an image with a load order is placed first,
        // in profile order (see order.rs). The map from chunk to unit is
        // built only for such an image: for any other it was a hash map of
        // every chunk (384 for a 192 MiB region) built and dropped inside
        // the restore call.
        let plan: VecDeque<usize> = match img.load_order().ok().flatten() {
            Some(order) if !order.is_empty() => {
                let unit_of: std::collections::HashMap<u64, usize> = units
                    .iter()
                    .enumerate()
                    .filter_map(|(i, u)| u.extent.as_ref().map(|e| (e.chunk, i)))
                    .collect();
                order
                    .iter()
                    .filter_map(|c| unit_of.get(c).copied())
                    .collect()
            }
            _ => VecDeque::new(),
        };
        let recorder = record.map(|d| {
            Arc::new(Recorder::new(
                img.header().image_id,
                img.chunk_locs().len(),
                d,
            ))
        });
        let ws = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        // Before returning: one read (for a remote image, ranged GETs of up
        // to `max_request` bytes on the fetch threads). In the background:
        // read-ahead of the whole range (for a remote image, the fetch
        // threads fetch it in such runs, in profile order), so the first
        // touches need not wait for the whole working set.
        let via = match fetch {
            None => {
                if background {
                    super::order::read_ahead(&img);
                }
                Via::Inline(Ordered::new(img, Arc::clone(&ws), !background))
            }
            Some(cfg) => Via::Workers(Arc::new(img), cfg, !background),
        };
        let wait = !plan.is_empty() && !background && recorder.is_none();
        let h = Self::start_with(via, units, &ranges, u64::from(ps), (plan, recorder, ws))?;
        if wait {
            // The working set is placed before the program goes on (faults
            // meanwhile are answered first, as always).
            h.shared.wait(|s| s.planned || s.released);
        }
        Ok(h)
    }

    /// Starts the handler of `regions` with the pieces `units` (address,
    /// length, the extent `src` fetches, or `None` for zeros), each
    /// fetched from `src` on the handler thread: a chain of images
    /// (`chain.rs`), whose pieces are not one image's extents.
    pub(super) fn start_source<S: ChunkSource>(
        src: S,
        units: &[(u64, u64, Option<Extent>)],
        regions: &[Region],
        ps: u64,
    ) -> Result<LazyHandle, RestoreError> {
        let units = units
            .iter()
            .map(|&(addr, len, extent)| Unit { addr, len, extent })
            .collect();
        let ranges: Vec<(u64, u64)> = regions
            .iter()
            .map(|r| (r.info.start, r.info.end()))
            .collect();
        // A chain has no load order of its own (each link's layout is its
        // own), and records no profile: nothing is planned.
        let none = (
            VecDeque::new(),
            None,
            Arc::new([AtomicU64::new(0), AtomicU64::new(0)]),
        );
        Self::start_with(Via::Inline(src), units, &ranges, ps, none)
    }

    fn start_with<S: ChunkSource>(
        via: Via<S>,
        units: Vec<Unit>,
        ranges: &[(u64, u64)],
        ps: u64,
        (plan, recorder, ws): (VecDeque<usize>, Option<Arc<Recorder>>, Arc<[AtomicU64; 2]>),
    ) -> Result<LazyHandle, RestoreError> {
        let unavailable = |why: String| RestoreError::StrategyUnavailable {
            strategy: "lazy",
            why,
        };
        // SAFETY: eventfd takes an initial value and flags.
        let wake = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if wake < 0 {
            return Err(RestoreError::last_os("eventfd"));
        }
        let shared = Arc::new(Shared {
            // SAFETY: wake is a new descriptor that nothing else owns.
            wake: unsafe { OwnedFd::from_raw_fd(wake) },
            pid: std::process::id(),
            prefetch: AtomicBool::new(false),
            finish: AtomicBool::new(false),
            faults: AtomicU64::new(0),
            refaults: AtomicU64::new(0),
            units_done: AtomicU64::new(0),
            units_failed: AtomicU64::new(0),
            bytes_copied: AtomicU64::new(0),
            forks: AtomicU64::new(0),
            remaps: AtomicU64::new(0),
            removes: AtomicU64::new(0),
            unmaps: AtomicU64::new(0),
            faults_waited: AtomicU64::new(0),
            units_prefetched: AtomicU64::new(0),
            ws,
            twice: Arc::new(AtomicU64::new(0)),
            recorder,
            error: Mutex::new(None),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        // Known to the fork hook before any range is registered: a fork from
        // another thread from now on waits for this restore to finish, and
        // never reaches the handler as an event while the C library holds
        // its allocator locks (the handler allocates).
        track(&shared);
        let mut starting = Starting(Some(Arc::clone(&shared)));
        let uffd = Uffd::open().map_err(unavailable)?;
        let features = negotiate(&uffd).map_err(unavailable)?;
        let mut poison = features & feature::POISON != 0;
        let mut pending = Pending::default();
        for &(start, end) in ranges {
            let (basic, can_poison) = uffd.register_missing(start, end - start).map_err(|e| {
                RestoreError::io(
                    format!("registering {start:#x}-{end:#x} with userfaultfd"),
                    e,
                )
            })?;
            if !basic {
                return Err(unavailable(
                    "the kernel does not offer UFFDIO_COPY and UFFDIO_ZEROPAGE here".into(),
                ));
            }
            poison &= can_poison;
            pending.insert(start, end, start);
        }
        let units_total = units.len() as u64;
        let left = units.iter().map(|u| u.len).collect();
        let fetch = match via {
            Via::Inline(src) => Fetch::Inline(src),
            Via::Workers(img, cfg, counted) => {
                let weak = Arc::downgrade(&shared);
                let poke = Box::new(move || {
                    if let Some(s) = weak.upgrade() {
                        s.poke();
                    }
                });
                let extents = units.iter().map(|u| u.extent).collect();
                let addrs: Vec<u64> = units.iter().map(|u| u.addr).collect();
                let plan = Plan {
                    units: plan.iter().copied().collect(),
                    counted,
                    counts: Arc::clone(&shared.ws),
                    twice: Arc::clone(&shared.twice),
                };
                let pool = Pool::start(img, extents, &addrs, cfg, poke, plan)
                    .map_err(|e| RestoreError::io("starting the fetch threads", e))?;
                Fetch::Pool(pool)
            }
        };
        let handler = Handler {
            eng: Engine {
                fetch,
                ready: HashMap::new(),
                asked: HashSet::new(),
                zero_next: 0,
                shared: Arc::clone(&shared),
                ps,
                units,
                left,
                poison,
                buf: Vec::new(),
                buf_unit: None,
                plan,
                plan_started: false,
            },
            spaces: vec![Space {
                uffd,
                pending,
                faults: VecDeque::new(),
                parked: Vec::new(),
                known: ranges.to_vec(),
                damaged: Vec::new(),
                main: true,
                probe_at: ranges.first().map_or(0x10000, |r| r.0),
                dead: false,
            }],
            raw: [RawMsg::default(); 16],
            msgs: Vec::new(),
            released: false,
        };
        let thread = std::thread::Builder::new()
            .name("memimg-uffd".into())
            .spawn(move || handler.run())
            .map_err(|e| RestoreError::io("starting the fault handler thread", e))?;
        // The thread owns the ending now.
        starting.0 = None;
        Ok(LazyHandle {
            shared,
            units_total,
            thread: Some(thread),
        })
    }

    /// Starts filling every page not yet touched, in the background, between
    /// faults (which are still served first).
    pub fn prefetch(&self) {
        self.shared.prefetch.store(true, Ordering::Relaxed);
        self.shared.poke();
    }

    /// What the handler has done so far.
    pub fn stats(&self) -> LazyStats {
        let s = &self.shared;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        LazyStats {
            faults: get(&s.faults),
            refaults: get(&s.refaults),
            units_done: get(&s.units_done),
            units_total: self.units_total,
            units_failed: get(&s.units_failed),
            bytes_copied: get(&s.bytes_copied),
            forks: get(&s.forks),
            remaps: get(&s.remaps),
            removes: get(&s.removes),
            unmaps: get(&s.unmaps),
            released: s.state().released,
            error: s.error.lock().ok().and_then(|e| e.clone()),
            faults_waited: get(&s.faults_waited),
            units_prefetched: get(&s.units_prefetched),
            working_set_reads: get(&s.ws[0]),
            working_set_bytes: get(&s.ws[1]),
            bytes_fetched_twice: get(&s.twice),
            recording: s.recorder.as_ref().is_some_and(|r| r.recording()),
        }
    }

    /// Ends the recording of the load-order profile: the program is ready
    /// (what it touched from now on is not its startup), and the prefetcher
    /// may run again. Nothing happens when the restore does not record.
    pub fn profile_ready(&self) {
        if let Some(r) = &self.shared.recorder {
            r.stop();
            self.shared.poke();
        }
    }

    /// The load-order profile recorded so far: the chunks first touched by
    /// faults, in order, with the image id. `None` when the restore does not
    /// record ([`super::RestoreOptions::record_profile`]) or nothing was
    /// touched yet. Write it with [`Profile::write`] and give it to
    /// `imgtool optimize`.
    pub fn profile(&self) -> Option<Profile> {
        self.shared.recorder.as_ref().and_then(|r| r.profile())
    }

    /// Places every page not yet placed, stops the thread and returns the
    /// final statistics.
    pub fn finish(mut self) -> LazyStats {
        self.stop();
        self.stats()
    }

    fn stop(&mut self) {
        let Some(t) = self.thread.take() else { return };
        if std::process::id() != self.shared.pid {
            // A forked child's copy of the handle: the thread is the
            // parent's, and joining it here would wait for ever.
            std::mem::forget(t);
            return;
        }
        self.shared.finish.store(true, Ordering::SeqCst);
        self.shared.poke();
        self.shared.wait(|s| s.released);
        if self.shared.state().ended {
            let _ = t.join();
        }
        // Otherwise the thread still serves children of raw forks, and ends
        // when they are gone: dropping the JoinHandle detaches it.
    }
}

impl Drop for LazyHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One address space the handler serves: this process, or a child of a raw
/// fork.
struct Space {
    uffd: Uffd,
    pending: Pending,
    /// Faults read and not yet answered: (address, thread id).
    faults: VecDeque<(u64, i32)>,
    /// Faults waiting for a piece the fetch threads have not delivered yet:
    /// (unit, address, thread id).
    parked: Vec<(usize, u64, i32)>,
    /// The ranges registered with `uffd`, as far as the handler knows: the
    /// regions, plus where `mremap` moved them, less what was unmapped.
    known: Vec<(u64, u64)>,
    /// Damaged ranges of a child, where the kernel cannot poison: a touch
    /// gets SIGBUS.
    damaged: Vec<(u64, u64)>,
    /// This process (its damaged ranges get SIGSEGV; its pieces count in
    /// the statistics).
    main: bool,
    /// A page-aligned user address for [`Space::probe`]: the first region's.
    probe_at: u64,
    /// The process is gone.
    dead: bool,
}

/// What one step of the handler came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Did what it set out to do.
    Did,
    /// Nothing to do.
    Idle,
    /// The kernel refused to fill because an event waits to be read: read
    /// messages, then try again.
    Blocked,
    /// The address space is gone.
    Gone,
    /// The piece's bytes are being fetched by the worker threads (unit
    /// number): answer other faults meanwhile.
    Wait(usize),
}

/// How the handler gets a piece's bytes.
enum Via<S> {
    /// From `S` on the handler thread.
    Inline(S),
    /// From the image on a pool of worker threads; whether the restore
    /// waits for the working set (its requests are then counted).
    Workers(Arc<Image>, Config, bool),
}

/// The running form of [`Via`].
enum Fetch<S> {
    Inline(S),
    Pool(Pool),
}

/// Fetching and placing, apart from the spaces it works on.
struct Engine<S> {
    fetch: Fetch<S>,
    /// Pieces the worker threads delivered and the handler has not placed
    /// yet, by unit.
    ready: HashMap<usize, Fetched>,
    /// Units demanded of the worker threads and not delivered yet.
    asked: HashSet<usize>,
    /// The first unit that may be a zero piece still waiting (prefetching
    /// with worker threads places zero pieces in order).
    zero_next: usize,
    shared: Arc<Shared>,
    ps: u64,
    /// Sorted by image address.
    units: Vec<Unit>,
    /// Bytes of each unit still waiting in this process.
    left: Vec<u64>,
    /// The kernel offers UFFDIO_POISON on every region.
    poison: bool,
    buf: Vec<u8>,
    /// The unit whose bytes `buf` holds.
    buf_unit: Option<usize>,
    /// Units to place first, in this order: the working set of an image
    /// with a load order.
    plan: VecDeque<usize>,
    /// The fetch threads were told to fetch the plan, and not yet that it
    /// is over.
    plan_started: bool,
}

struct Handler<S> {
    eng: Engine<S>,
    /// This process's space first, until released; then children of raw
    /// forks.
    spaces: Vec<Space>,
    raw: [RawMsg; 16],
    msgs: Vec<Msg>,
    released: bool,
}

/// Marks the handler ended when its thread returns, however it returns, so
/// that nothing waits on it for ever.
struct Ended(Arc<Shared>);

/// Marks the handler ended if it fails to start.
struct Starting(Option<Arc<Shared>>);

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            s.set(|s| s.ended = true);
        }
    }
}

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.set(|s| s.ended = true);
    }
}

impl<S: ChunkSource> Handler<S> {
    fn run(mut self) {
        let _ended = Ended(Arc::clone(&self.eng.shared));
        let mut told = (false, false);
        loop {
            self.read_messages();
            self.eng.collect(&mut self.spaces);
            let mut blocked = false;
            for sp in &mut self.spaces {
                blocked |= self.eng.answer_faults(sp) == Step::Blocked;
            }
            self.spaces.retain(|s| !s.dead);
            if blocked {
                self.sleep(10);
                continue;
            }
            // A piece the fetch threads delivered, one per turn: faults
            // that came meanwhile are answered first.
            match self.eng.place_ready(&mut self.spaces) {
                Step::Idle => {}
                Step::Blocked => {
                    self.sleep(10);
                    continue;
                }
                _ => continue,
            }
            let placed = self.spaces.first().is_some_and(|s| {
                s.main && s.pending.is_empty() && s.faults.is_empty() && s.parked.is_empty()
            });
            if !self.released && placed && self.release() == Step::Blocked {
                self.sleep(1);
                continue;
            }
            let now = (
                self.released,
                self.spaces.iter().any(|s| !s.main && !s.pending.is_empty()),
            );
            if now != told {
                told = now;
                self.eng
                    .shared
                    .set(|s| (s.released, s.children_waiting) = now);
            }
            if self.released && self.spaces.is_empty() {
                return;
            }
            // Faults come before prefetching: a fault that arrived while the
            // last ones were answered is answered before the next piece.
            self.read_messages();
            if self.spaces.iter().any(|s| !s.faults.is_empty()) {
                continue;
            }
            let shared = &self.eng.shared;
            // While a profile is recorded, nothing is prefetched, so that
            // every first touch is a fault (unless every page must be placed
            // now).
            let recording = shared.recorder.as_ref().is_some_and(|r| r.recording());
            let finish = shared.finish.load(Ordering::Relaxed);
            let children = self.spaces.iter().any(|s| !s.main && !s.pending.is_empty());
            if (!recording || finish) && !children {
                if let Some(sp) = self.spaces.first_mut().filter(|s| s.main) {
                    match self.eng.fill_planned(sp) {
                        Step::Idle => {
                            if !self.eng.shared.state().planned {
                                self.eng.shared.set(|s| s.planned = true);
                            }
                        }
                        Step::Blocked => {
                            self.sleep(10);
                            continue;
                        }
                        Step::Gone => {
                            sp.dead = true;
                            continue;
                        }
                        Step::Did => continue,
                        // The fetch threads bring the working set: go on
                        // below until they deliver.
                        Step::Wait(_) => {}
                    }
                }
            }
            let shared = &self.eng.shared;
            let main_too = (shared.prefetch.load(Ordering::Relaxed) && !recording) || finish;
            if main_too {
                if let Fetch::Pool(p) = &self.eng.fetch {
                    p.prefetch();
                }
            }
            // Children first: they may outlive this process.
            let target = self
                .spaces
                .iter()
                .position(|s| !s.main && !s.pending.is_empty())
                .or_else(|| {
                    self.spaces
                        .iter()
                        .position(|s| s.main && !s.pending.is_empty())
                        .filter(|_| main_too)
                });
            if let Some(i) = target {
                let sp = &mut self.spaces[i];
                let main = sp.main;
                let before = self.eng.shared.units_done.load(Ordering::Relaxed);
                let step = match self.eng.fetch {
                    // The fetch threads bring the data pieces of this
                    // process; the handler places its zero pieces.
                    Fetch::Pool(_) if main => self.eng.fill_zero(sp),
                    _ => self.eng.fill_first(sp),
                };
                if main && step == Step::Did {
                    let done = self.eng.shared.units_done.load(Ordering::Relaxed);
                    self.eng
                        .shared
                        .count(&self.eng.shared.units_prefetched, done - before);
                }
                match step {
                    Step::Blocked => {
                        self.sleep(10);
                        continue;
                    }
                    Step::Gone => {
                        self.spaces[i].dead = true;
                        continue;
                    }
                    // Waiting for the fetch threads: sleep until they
                    // deliver or a fault comes.
                    Step::Wait(_) | Step::Idle => {}
                    Step::Did => continue,
                }
            }
            // Children that have every page stay registered (a copy of their
            // userfaultfd may live in another child): probe now and then
            // whether they are gone.
            let idle = self.spaces.iter().any(|s| !s.main && s.pending.is_empty());
            if !self.sleep(if idle { 1000 } else { -1 }) {
                let ps = self.eng.ps;
                for sp in self.spaces.iter_mut().filter(|s| !s.main) {
                    sp.dead = sp.probe(ps) == Some(libc::ESRCH);
                }
            }
        }
    }

    /// Reads every message waiting, applies the events in the order they
    /// came, and queues the faults. All events read are applied before any
    /// fault is answered: the kernel hands out waiting faults before
    /// waiting events, so a fault may concern a page an event already moved
    /// or discarded.
    fn read_messages(&mut self) {
        let mut born = Vec::new();
        for sp in &mut self.spaces {
            loop {
                self.msgs.clear();
                let n = sp.uffd.read(&mut self.raw, &mut self.msgs);
                for &m in &self.msgs {
                    self.eng.apply(sp, m, &mut born);
                }
                if n < self.raw.len() {
                    break;
                }
            }
        }
        self.spaces.extend(born);
    }

    /// Waits up to `ms` (-1: for ever) for a message or a poke; returns
    /// whether something came.
    fn sleep(&mut self, ms: i32) -> bool {
        let mut fds: Vec<libc::pollfd> = self
            .spaces
            .iter()
            .map(|s| libc::pollfd {
                fd: s.uffd.raw(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let wake = self.eng.shared.wake.as_raw_fd();
        fds.push(libc::pollfd {
            fd: wake,
            events: libc::POLLIN,
            revents: 0,
        });
        let n = libc::nfds_t::try_from(fds.len()).unwrap_or(1);
        // SAFETY: fds is a valid array of n pollfds.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), n, ms) };
        if fds.last().is_some_and(|f| f.revents & libc::POLLIN != 0) {
            let mut v = [0u8; 8];
            // SAFETY: reads 8 bytes into a valid buffer from our eventfd.
            unsafe { libc::read(wake, v.as_mut_ptr().cast(), 8) };
        }
        rc != 0
    }

    /// This process has every page: let its userfaultfd go, so that the
    /// program's memory is ordinary memory again and nothing it does waits
    /// on this thread.
    fn release(&mut self) -> Step {
        let Some(sp) = self.spaces.first() else {
            return Step::Idle;
        };
        // Unregister first: a copy of the descriptor (in the child of a raw
        // fork, or of a vfork before its exec) would otherwise keep the
        // ranges armed after we close ours, with nobody reading.
        for (s, e) in registered(&sp.known) {
            let _ = sp.uffd.unregister(s, e - s);
        }
        // An event that started before the unregistering may still be on
        // its way: the run loop reads it (and answers any fault) first.
        // Once none is, none can come, and closing is harmless.
        if sp.probe(self.eng.ps) == Some(libc::EAGAIN) {
            return Step::Blocked;
        }
        self.spaces.remove(0);
        self.released = true;
        Step::Did
    }
}

impl Space {
    /// What a fill would fail with now, without filling anything: `EAGAIN`
    /// while an event is on its way, `ESRCH` once the process is gone.
    fn probe(&self, ps: u64) -> Option<i32> {
        self.uffd.probe_copy(self.probe_at, ps)
    }
}

impl<S: ChunkSource> Engine<S> {
    fn apply(&mut self, sp: &mut Space, m: Msg, born: &mut Vec<Space>) {
        let sh = &self.shared;
        match m {
            Msg::Fault { addr, tid } => {
                sh.count(&sh.faults, 1);
                sp.faults.push_back((addr, tid));
            }
            Msg::Fork { fd } => {
                sh.count(&sh.forks, 1);
                if let Some(uffd) = Uffd::from_fork(fd) {
                    // The child has the pages this space had at the fork, and
                    // misses the ones it missed.
                    born.push(Space {
                        uffd,
                        pending: sp.pending.clone(),
                        faults: VecDeque::new(),
                        parked: Vec::new(),
                        known: sp.known.clone(),
                        damaged: sp.damaged.clone(),
                        main: false,
                        probe_at: sp.probe_at,
                        dead: false,
                    });
                }
            }
            Msg::Remap { from, to, len } => {
                sh.count(&sh.remaps, 1);
                sp.pending.shift(from, to, len);
                sp.known.push((to, to.saturating_add(len)));
            }
            Msg::Remove { start, end } => {
                sh.count(&sh.removes, 1);
                let gone = sp.pending.remove(start, end);
                self.discount(sp.main, &gone);
            }
            Msg::Unmap { start, end } => {
                sh.count(&sh.unmaps, 1);
                let gone = sp.pending.remove(start, end);
                self.discount(sp.main, &gone);
                cut(&mut sp.known, start, end);
                cut(&mut sp.damaged, start, end);
            }
            Msg::Other(_) => {}
        }
    }

    /// Pages of this process stopped waiting: count the pieces that have
    /// none left.
    fn discount(&mut self, main: bool, gone: &[Run]) {
        if !main {
            return;
        }
        for r in gone {
            let end = r.img + (r.end - r.start);
            let mut i = self.units.partition_point(|u| u.addr + u.len <= r.img);
            while let Some(u) = self.units.get(i).filter(|u| u.addr < end) {
                let overlap = (u.addr + u.len).min(end) - u.addr.max(r.img);
                if let Some(left) = self.left.get_mut(i) {
                    let was = *left;
                    *left = left.saturating_sub(overlap);
                    if was > 0 && *left == 0 {
                        self.shared.count(&self.shared.units_done, 1);
                        if let Fetch::Pool(p) = &self.fetch {
                            p.forget(u.addr);
                        }
                    }
                }
                i += 1;
            }
        }
    }

    fn answer_faults(&mut self, sp: &mut Space) -> Step {
        while let Some(&(addr, tid)) = sp.faults.front() {
            match self.answer(sp, addr, tid) {
                Step::Blocked => return Step::Blocked,
                Step::Gone => {
                    sp.dead = true;
                    sp.faults.clear();
                    sp.parked.clear();
                    return Step::Gone;
                }
                Step::Wait(unit) => {
                    sp.faults.pop_front();
                    sp.parked.push((unit, addr, tid));
                }
                _ => {
                    sp.faults.pop_front();
                }
            }
        }
        Step::Idle
    }

    fn answer(&mut self, sp: &mut Space, addr: u64, tid: i32) -> Step {
        let ps = self.ps;
        let page = addr & !(ps - 1);
        if let Some(run) = sp.pending.lookup(page) {
            if sp.main {
                self.note_fault(page.wrapping_sub(run.delta()));
            }
            if let Fetch::Pool(p) = &self.fetch {
                p.hint(page.wrapping_sub(run.delta()));
            }
            return self.fill(sp, page, run);
        }
        if sp.damaged.iter().any(|&(s, e)| s <= page && page < e) {
            if tid > 0 {
                // SAFETY: sends a signal to the process of the thread that
                // touched a damaged page (a thread id names its process).
                unsafe { libc::kill(tid, libc::SIGBUS) };
            }
            sp.uffd.wake(page, ps);
            return Step::Did;
        }
        // The page does not wait for the image: it was placed or discarded
        // and the kernel has dropped it since, or it is not the image's.
        // Ordinary anonymous memory reads zeros there.
        self.shared.count(&self.shared.refaults, 1);
        let f = sp.uffd.zeropage(page, ps);
        match f.errno {
            Some(libc::EAGAIN) if f.bytes == 0 => Step::Blocked,
            Some(libc::ESRCH) => Step::Gone,
            None => Step::Did,
            // Present already (EEXIST), or no longer a range of ours
            // (ENOENT): wake the thread, which touches it again.
            Some(_) => {
                sp.uffd.wake(page, ps);
                Step::Did
            }
        }
    }

    /// A fault in this process touched a page that waits for the image at
    /// image address `img`: count it, and record its chunk's first touch
    /// when a profile is recorded. (A fault retried after `EAGAIN` counts
    /// once more; the recorder keeps each chunk's first touch only.)
    fn note_fault(&mut self, img: u64) {
        let sh = &self.shared;
        sh.count(&sh.faults_waited, 1);
        let Some(rec) = &sh.recorder else { return };
        let i = self.units.partition_point(|u| u.addr + u.len <= img);
        if let Some(e) = self
            .units
            .get(i)
            .filter(|u| u.addr <= img)
            .and_then(|u| u.extent)
        {
            rec.touch(e.chunk);
        }
    }

    /// Places the next unit of the plan (the working set, in profile order)
    /// that still waits at its own address; `Idle` once none does. Units
    /// the program moved (`mremap`) are left to the general prefetch.
    fn fill_planned(&mut self, sp: &mut Space) -> Step {
        while let Some(&i) = self.plan.front() {
            let Some(u) = self.units.get(i).copied() else {
                self.plan.pop_front();
                continue;
            };
            let first = sp
                .pending
                .pieces(u.addr, u.addr + u.len, 0)
                .first()
                .copied();
            match first.and_then(|(s, _)| sp.pending.lookup(s).map(|r| (s, r))) {
                Some(_) if self.waits_for_pool(i) => {
                    // The fetch threads bring it (place_ready places it):
                    // they fetch the working set in profile order once told.
                    if let Fetch::Pool(p) = &self.fetch {
                        if !self.plan_started {
                            self.plan_started = true;
                            p.start_plan();
                        }
                    }
                    return Step::Wait(i);
                }
                Some((s, run)) if run.delta() == 0 => {
                    let before = self.shared.units_done.load(Ordering::Relaxed);
                    let step = self.fill(sp, s, run);
                    let done = self.shared.units_done.load(Ordering::Relaxed);
                    self.shared
                        .count(&self.shared.units_prefetched, done - before);
                    return step;
                }
                _ => {
                    self.plan.pop_front();
                }
            }
        }
        if let Fetch::Pool(p) = &self.fetch {
            if self.plan_started {
                self.plan_started = false;
                p.plan_done();
            }
        }
        Step::Idle
    }

    /// With fetch threads: unit `i`'s bytes have not been delivered yet.
    fn waits_for_pool(&self, i: usize) -> bool {
        matches!(self.fetch, Fetch::Pool(_))
            && self.buf_unit != Some(i)
            && !self.ready.contains_key(&i)
    }

    /// Takes what the fetch threads delivered, and sends the faults parked
    /// on it (or on a page that no longer waits) back to be answered.
    fn collect(&mut self, spaces: &mut [Space]) {
        if let Fetch::Pool(p) = &self.fetch {
            for (i, r) in p.take() {
                self.asked.remove(&i);
                self.ready.insert(i, r);
            }
        }
        let ps = self.ps;
        for sp in spaces.iter_mut().filter(|s| !s.parked.is_empty()) {
            let parked = std::mem::take(&mut sp.parked);
            for (i, addr, tid) in parked {
                let here = self.ready.contains_key(&i) || self.buf_unit == Some(i);
                let waits = sp.pending.lookup(addr & !(ps - 1)).is_some();
                if here || !waits {
                    if waits && sp.main {
                        // Counted in faults_waited when first answered; it
                        // is counted again when answered now.
                        self.shared.faults_waited.fetch_sub(1, Ordering::Relaxed);
                    }
                    sp.faults.push_front((addr, tid));
                } else {
                    sp.parked.push((i, addr, tid));
                }
            }
        }
    }

    /// Places one delivered piece wherever it is still waiting; `Idle` when
    /// none was delivered.
    fn place_ready(&mut self, spaces: &mut [Space]) -> Step {
        let Some(&i) = self.ready.keys().next() else {
            return Step::Idle;
        };
        for sp in spaces.iter_mut() {
            let before = self.shared.units_done.load(Ordering::Relaxed);
            match self.fill_unit(sp, i) {
                Step::Blocked => return Step::Blocked,
                Step::Gone => sp.dead = true,
                // No fault took it first (those are answered before): it
                // was prefetched, or is the working set.
                Step::Did if sp.main => {
                    let done = self.shared.units_done.load(Ordering::Relaxed);
                    self.shared
                        .count(&self.shared.units_prefetched, done - before);
                }
                _ => {}
            }
        }
        // Waiting nowhere any more (discarded meanwhile): let it go.
        self.ready.remove(&i);
        Step::Did
    }

    /// Fills every waiting page of `sp` whose bytes are those of unit `i`,
    /// wherever `mremap` has moved them.
    fn fill_unit(&mut self, sp: &mut Space, i: usize) -> Step {
        let Some(u) = self.units.get(i).copied() else {
            return Step::Idle;
        };
        // Each turn places one run at one distance from the image, or
        // drops it; the bound only guards against a bug looping for ever.
        let mut step = Step::Idle;
        for _ in 0..1024 {
            let Some((page, run)) = sp.pending.find_img(u.addr, u.addr + u.len) else {
                break;
            };
            step = self.fill(sp, page, run);
            if step != Step::Did {
                break;
            }
        }
        step
    }

    /// Prefetch with fetch threads: places the next zero piece of this
    /// process still waiting (the threads bring the data pieces).
    fn fill_zero(&mut self, sp: &mut Space) -> Step {
        while let Some(u) = self.units.get(self.zero_next).copied() {
            let waiting = self.left.get(self.zero_next).is_some_and(|&l| l > 0);
            if u.extent.is_none() && waiting {
                match self.fill_unit(sp, self.zero_next) {
                    // Nothing of it waits in this space after all.
                    Step::Idle => {}
                    step => return step,
                }
            }
            self.zero_next += 1;
        }
        Step::Idle
    }

    /// Prefetch: fills the piece holding the lowest waiting page.
    fn fill_first(&mut self, sp: &mut Space) -> Step {
        match sp.pending.first() {
            Some(run) => self.fill(sp, run.start, run),
            None => Step::Idle,
        }
    }

    /// Fills the unit holding waiting page `page` of `run`: every waiting
    /// page of it that lies at the same distance from the image.
    fn fill(&mut self, sp: &mut Space, page: u64, run: Run) -> Step {
        let delta = run.delta();
        let img = page.wrapping_sub(delta);
        let i = self.units.partition_point(|u| u.addr + u.len <= img);
        let Some(u) = self.units.get(i).copied().filter(|u| u.addr <= img) else {
            // Waiting pages all come from units; answer rather than wait.
            let gone = sp.pending.remove(page, page + self.ps);
            self.discount(sp.main, &gone);
            return self.answer(sp, page, 0);
        };
        let lo = u.addr.wrapping_add(delta);
        let pieces = sp.pending.pieces(lo, lo + u.len, delta);
        if let Some(ext) = u.extent {
            if self.buf_unit != Some(i) {
                let got = match &mut self.fetch {
                    Fetch::Inline(src) => {
                        let len = usize_of(u.len);
                        if self.buf.len() < len {
                            self.buf.resize(len, 0);
                        }
                        self.buf_unit = None;
                        src.fetch(&ext, &mut self.buf[..len])
                            .map_err(|e| e.to_string())
                    }
                    Fetch::Pool(pool) => match self.ready.remove(&i) {
                        Some(Ok(bytes)) => {
                            self.buf = bytes;
                            Ok(())
                        }
                        Some(Err(why)) => Err(why),
                        None => {
                            if self.asked.insert(i) {
                                pool.demand(i, u.addr, img);
                            }
                            return Step::Wait(i);
                        }
                    },
                };
                if let Err(e) = got {
                    let why = format!("{:#x}-{:#x}: {e}", u.addr, u.addr + u.len);
                    if sp.main {
                        self.shared.count(&self.shared.units_failed, 1);
                    }
                    self.damage(sp, &pieces, why);
                    return Step::Did;
                }
                self.buf_unit = Some(i);
            }
        }
        for (s, e) in pieces {
            match self.place(sp, s, e, &u, delta) {
                Step::Did => {}
                other => return other,
            }
        }
        Step::Did
    }

    /// Places `s..e` (waiting pages of unit `u`, whose bytes are in `buf`
    /// when it has data).
    fn place(&mut self, sp: &mut Space, s: u64, e: u64, u: &Unit, delta: u64) -> Step {
        let ps = self.ps;
        let mut at = s;
        // Page by page, after a range that spans two mappings (the program
        // changed the protection of part of it).
        let mut one = false;
        while at < e {
            let end = if one { at + ps } else { e };
            let f = if u.extent.is_some() {
                let off = usize_of(at.wrapping_sub(delta).wrapping_sub(u.addr));
                let Some(bytes) = self.buf.get(off..off + usize_of(end - at)) else {
                    self.damage(sp, &[(at, e)], format!("{at:#x}: outside its chunk"));
                    return Step::Did;
                };
                sp.uffd.copy(at, bytes)
            } else {
                sp.uffd.zeropage(at, end - at)
            };
            if f.bytes > 0 {
                let gone = sp.pending.remove(at, at + f.bytes);
                self.discount(sp.main, &gone);
                if u.extent.is_some() {
                    self.shared.count(&self.shared.bytes_copied, f.bytes);
                }
                at += f.bytes;
            }
            match f.errno {
                None => {}
                Some(libc::EAGAIN) if f.bytes == 0 => return Step::Blocked,
                // Stopped part way; go on from there.
                Some(libc::EAGAIN) => {}
                Some(libc::ENOENT) if !one && end - at > ps => one = true,
                // Present already (only the first page is reported), or not
                // ours: nothing to place there.
                Some(libc::EEXIST) | Some(libc::ENOENT) => {
                    let gone = sp.pending.remove(at, at + ps);
                    self.discount(sp.main, &gone);
                    sp.uffd.wake(at, ps);
                    at += ps;
                }
                Some(libc::ESRCH) => return Step::Gone,
                Some(err) => {
                    let why = format!(
                        "placing {at:#x}-{e:#x}: {}",
                        std::io::Error::from_raw_os_error(err)
                    );
                    self.damage(sp, &[(at, e)], why);
                    return Step::Did;
                }
            }
        }
        Step::Did
    }

    /// The bytes of `pieces` cannot be had: never serve wrong bytes. In this
    /// process, make the range inaccessible and unregister it, which wakes
    /// the waiting threads into a SIGSEGV at the damaged address; in a child,
    /// poison it (SIGBUS on touch).
    fn damage(&mut self, sp: &mut Space, pieces: &[(u64, u64)], why: String) {
        self.shared.note_error(why);
        for &(s, e) in pieces {
            let gone = sp.pending.remove(s, e);
            self.discount(sp.main, &gone);
            if sp.main {
                // SAFETY: s..e is waiting memory of a region this restore
                // mapped (unmapped ranges stop waiting); only its protection
                // changes.
                unsafe {
                    libc::mprotect(
                        usize_of(s) as *mut libc::c_void,
                        usize_of(e - s),
                        libc::PROT_NONE,
                    )
                };
                let _ = sp.uffd.unregister(s, e - s);
            } else if !(self.poison && sp.uffd.poison(s, e - s).errno.is_none()) {
                sp.damaged.push((s, e));
                sp.uffd.wake(s, e - s);
            }
        }
    }
}

/// Removes `start..end` from a list of ranges.
fn cut(ranges: &mut Vec<(u64, u64)>, start: u64, end: u64) {
    let mut out = Vec::with_capacity(ranges.len());
    for &(s, e) in ranges.iter() {
        if e <= start || end <= s {
            out.push((s, e));
            continue;
        }
        if s < start {
            out.push((s, start));
        }
        if end < e {
            out.push((end, e));
        }
    }
    *ranges = out;
}

/// The mappings registered with a userfaultfd that overlap `known`, from
/// `/proc/self/smaps` (flag `um`): a region that `mremap` grew is one
/// mapping larger than the handler knows. Without `/proc`, `known` itself.
fn registered(known: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let Ok(text) = std::fs::read_to_string("/proc/self/smaps") else {
        return known.to_vec();
    };
    let overlaps = |s: u64, e: u64| known.iter().any(|&(ks, ke)| s < ke && ks < e);
    let mut out = Vec::new();
    let mut cur: Option<(u64, u64)> = None;
    for line in text.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if let Some((s, e)) = cur.take() {
                if flags.split_whitespace().any(|f| f == "um") && overlaps(s, e) {
                    out.push((s, e));
                }
            }
        } else if let Some((range, _)) = line.split_once(' ') {
            if let Some((s, e)) = range.split_once('-') {
                if let (Ok(s), Ok(e)) = (u64::from_str_radix(s, 16), u64::from_str_radix(e, 16)) {
                    cur = Some((s, e));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_splits_ranges() {
        let mut r = vec![(0, 10), (20, 30)];
        cut(&mut r, 5, 25);
        assert_eq!(r, vec![(0, 5), (25, 30)]);
        cut(&mut r, 0, 100);
        assert!(r.is_empty());
    }

    #[test]
    fn smaps_flags_find_registered_mappings() {
        // This process has no userfaultfd: nothing is registered.
        let here = &0u8 as *const u8 as u64;
        assert!(registered(&[(here & !0xfff, (here & !0xfff) + 0x1000)]).is_empty());
    }
}
