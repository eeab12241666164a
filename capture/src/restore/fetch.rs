//! Fetching on worker threads, for a lazy restore from a slow source (an
//! image in object storage).
//!
//! The handler thread of a lazy restore answers every fault, and a remote
//! fetch takes milliseconds to seconds: fetched on the handler, one chunk
//! would hold up the faults of every other chunk, including those already
//! fetched. So for such a source the handler only places bytes, and a pool
//! of worker threads fetches, decrypts and decompresses:
//!
//! - a fault on a chunk not yet fetched **demands** it: demanded chunks are
//!   fetched first, in the order asked, by the next free worker, each with
//!   a ranged GET of its own, and the fault waits (parked) while the
//!   handler goes on with other faults. A chunk whose run (below) has
//!   arrived is decoded from the run's bytes at once. A chunk that a run
//!   is still fetching **waits for the run** (and is decoded first when it
//!   arrives) rather than being fetched twice, but never longer than a GET
//!   of its own has taken (a moving average of the demands' fetch times,
//!   `State::patience`): then it is fetched on its own after all. So once
//!   a demand's fetch has been timed, a fault waits at most about twice
//!   as long as a GET of its own (before that, it waits for its run); and
//!   on a store whose GETs are slow or served one at a time (moto), where
//!   a GET of its own would queue behind the runs anyway, it makes none;
//! - when prefetching is on (`LazyHandle::prefetch`, or the restore must
//!   finish: the handle is dropped, or the process forks), idle workers
//!   take the chunk still wanted **nearest to the last fault** (by image
//!   address; lowest first before any fault) and fetch it together with
//!   the chunks next to it **in the file** that are still wanted and lie
//!   in the same `max_request` bytes of the file (its *cell*: by default
//!   16 MiB), as one **run**: one ranged GET, at most `runs` of them under
//!   way or waiting to be decoded at once (by default 2, and always fewer
//!   than the workers, so a worker is left for demands). Cells keep runs
//!   whole, so that a prefetch makes about one GET per `max_request` bytes
//!   of the file wherever the faults fall, and a run bridges chunks that a
//!   fault fetched meanwhile (up to 1 MiB in a row, fetched again) rather
//!   than split in two. Any idle
//!   worker then decodes the run's chunks from its bytes, checked as bytes
//!   read from the file (`Image::decode_extent_with`). A store answers one
//!   large GET far sooner than many small ones (a request costs a round
//!   trip, and some servers read the whole object for each);
//! - each result goes back to the handler, which is woken through its
//!   eventfd.
//!
//! **Memory.** At most `runs` runs are held, each at most `max_request`
//! bytes and the end of one chunk (a single chunk larger than that is a
//! run of its own), and twice
//! that for a moment while a run's bytes are copied out of the reader; and
//! at most `2 × workers` decoded chunks wait for the handler before idle
//! workers stop decoding. With the defaults (8 workers, 2 runs of 16 MiB,
//! 512 KiB chunks): 32 MiB of runs (64 MiB while copying) and 8 MiB of
//! decoded chunks, whatever the image's size.
//!
//! **Load order.** For an image with a load order (`order.rs`), once the
//! handler starts its plan ([`Pool::start_plan`]) the working set comes
//! before any prefetching: the workers fetch its chunks in profile order,
//! in runs as above (the chunks of a working set are next to each other in
//! the file, in profile order, so a working set of `max_request` bytes or
//! less is one GET). Demands still come first.
//!
//! **Errors.** A chunk that is damaged fails alone. A fetch that fails for
//! any other reason (the network, after the reader's retries; refused
//! credentials; an object replaced meanwhile) **breaks** the pool: every
//! chunk not yet fetched then fails at once with that reason, instead of
//! each one waiting for its own retries. A run that fails as damage (the
//! object is shorter than its index says) is fetched again chunk by chunk,
//! so that each chunk fails or succeeds alone. The handler treats a failed
//! chunk as it treats damage: its pages are made inaccessible, never filled
//! with wrong bytes, and a thread touching them gets SIGSEGV. So a restore
//! whose store went away ends, with every thread answered, in the time of
//! one fetch and its retries.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use memimg::{Extent, Image};

/// A fetched chunk, or why it could not be had.
pub(super) type Fetched = Result<Vec<u8>, String>;

/// How the pool fetches.
#[derive(Debug, Clone, Copy)]
// Made only by a restore from object storage (feature `remote`).
#[cfg_attr(not(feature = "remote"), allow(dead_code))]
pub(super) struct Config {
    /// Worker threads.
    pub workers: usize,
    /// Bytes one run asks for at most.
    pub max_request: u64,
    /// Runs held at once.
    pub runs: usize,
}

/// The working set of an image with a load order, for the pool.
pub(super) struct Plan {
    /// Its units, in profile order.
    pub units: Vec<usize>,
    /// The restore waits for it: its requests are counted in `counts`.
    pub counted: bool,
    /// Requests made for it and their bytes, for the handle's statistics.
    pub counts: Arc<[AtomicU64; 2]>,
    /// Stored bytes fetched twice (a fault's own fetch of a chunk whose run
    /// was under way, chunks a run bridged), for the handle's statistics.
    pub twice: Arc<AtomicU64>,
}

/// The bytes of a run: the file's bytes from an offset.
struct RunBuf {
    at: u64,
    bytes: Vec<u8>,
}

/// Chunks next to each other in the file, fetched with one request.
#[derive(Debug, PartialEq, Eq)]
struct Run {
    /// In file order.
    units: Vec<usize>,
    range: Range<u64>,
    /// Made of the working set's units.
    planned: bool,
    /// Bytes of `range` that hold no unit of the run: chunks already
    /// fetched another way, between two of its units (fetched again and
    /// dropped, so that one request still brings both sides).
    bridged: u64,
}

/// What a worker does next.
enum Job {
    /// Fetch and decode one unit; from the bytes of its run, when they
    /// have arrived.
    Unit(usize, Option<Arc<RunBuf>>),
    /// Fetch a run with one request.
    Run(Run),
}

/// Where a unit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Phase {
    /// Not under way: wanted by the prefetch (when in `wanted`), delivered
    /// and taken, or not needed.
    #[default]
    Idle,
    /// Its run's request is under way.
    InRun,
    /// Its run's bytes have arrived; it waits to be decoded from them.
    Buffered,
    /// A worker fetches or decodes it, or its result waits for the handler.
    Coming,
}

/// Where units lie in the file.
struct Layout {
    /// The image address of each unit.
    addrs: Vec<u64>,
    /// The file bytes each data unit needs: its chunk and the padding in
    /// front of it, so that adjacent chunks have adjacent spans.
    span: Vec<Range<u64>>,
    /// The data units in file order.
    by_file: Vec<usize>,
    /// Each unit's place in `by_file` (`usize::MAX` for zero units).
    file_pos: Vec<usize>,
}

impl Layout {
    fn new(img: &Image, extents: &[Option<Extent>], addrs: &[u64]) -> Layout {
        let ps = u64::from(img.header().page_size);
        let locs = img.chunk_locs();
        let mut ends: Vec<(u64, u64)> = locs
            .iter()
            .map(|c| (c.offset, c.offset + u64::from(c.stored_len)))
            .collect();
        ends.sort_unstable();
        let span: Vec<Range<u64>> = extents
            .iter()
            .map(|e| {
                let Some(c) = e
                    .as_ref()
                    .and_then(|e| locs.get(usize::try_from(e.chunk).ok()?))
                else {
                    return 0..0;
                };
                let end = c.offset + u64::from(c.stored_len);
                // The end of the chunk before it in the file: the padding
                // between the two belongs to this one.
                let k = ends.partition_point(|&(o, _)| o < c.offset);
                let prev = k.checked_sub(1).map_or(ps, |k| ends[k].1);
                let start = if prev <= c.offset && c.offset - prev < ps {
                    prev
                } else {
                    c.offset
                };
                start..end
            })
            .collect();
        let mut by_file: Vec<usize> = (0..extents.len())
            .filter(|&u| extents[u].is_some())
            .collect();
        by_file.sort_by_key(|&u| (span[u].start, u));
        let mut file_pos = vec![usize::MAX; extents.len()];
        for (k, &u) in by_file.iter().enumerate() {
            file_pos[u] = k;
        }
        Layout {
            addrs: addrs.to_vec(),
            span,
            by_file,
            file_pos,
        }
    }

    /// The unit after (`forward`) or before `u` in the file, when its span
    /// touches `u`'s.
    fn beside(&self, u: usize, forward: bool) -> Option<usize> {
        let k = *self.file_pos.get(u)?;
        let v = if forward {
            *self.by_file.get(k.checked_add(1)?)?
        } else {
            *self.by_file.get(k.checked_sub(1)?)?
        };
        let (a, b) = if forward { (u, v) } else { (v, u) };
        (self.span[a].end == self.span[b].start && self.span[b].start < self.span[b].end)
            .then_some(v)
    }
}

/// What the pool and its workers share.
struct Inner {
    img: Arc<Image>,
    /// The data extent of each unit (`None` for zero units, never fetched).
    extents: Vec<Option<Extent>>,
    layout: Layout,
    counts: Arc<[AtomicU64; 2]>,
    counted: bool,
    twice: Arc<AtomicU64>,
    st: Mutex<State>,
    work: Condvar,
    /// Wakes the handler thread.
    poke: Box<dyn Fn() + Send + Sync>,
    /// Fetched chunks waiting for the handler, at most, before idle workers
    /// stop decoding and prefetching.
    cap: usize,
    max_request: u64,
    runs: usize,
}

#[derive(Default)]
struct State {
    /// Units demanded by faults, in order.
    demand: VecDeque<usize>,
    /// Units this process still needs, by image address: what prefetching
    /// takes from.
    wanted: BTreeMap<u64, usize>,
    prefetch: bool,
    /// The image address of the latest fault.
    hint: u64,
    /// Jobs under way.
    in_flight: usize,
    /// Each unit's phase.
    phase: Vec<Phase>,
    /// Units demanded while their run's request was under way, and since
    /// when: decoded first, as demands, when it arrives, or fetched on
    /// their own once they have waited `patience`.
    awaited: HashMap<usize, Instant>,
    /// How long a fault waits for a run under way before its chunk is
    /// fetched on its own: as long as such a fetch has taken (a moving
    /// average), since waiting longer could only be slower. `None` until
    /// one was timed: a fault then waits for its run.
    patience: Option<Duration>,
    /// Units of runs that have arrived, to decode, in file order.
    buffered: VecDeque<usize>,
    /// The bytes of each `Buffered` unit's run.
    bufs: HashMap<usize, Arc<RunBuf>>,
    /// Runs under way, or arrived with units still to decode.
    runs_live: usize,
    done: Vec<(usize, Fetched)>,
    /// Why the source stopped working, once it has.
    broken: Option<String>,
    stop: bool,
    /// The working set's units not yet taken, in profile order.
    plan: VecDeque<usize>,
    /// The handler has started its plan: the working set comes before any
    /// prefetching.
    planning: bool,
}

impl State {
    fn phase(&self, u: usize) -> Phase {
        self.phase.get(u).copied().unwrap_or_default()
    }

    fn set(&mut self, u: usize, p: Phase) {
        if let Some(x) = self.phase.get_mut(u) {
            *x = p;
        }
    }

    /// Lets go of a reference to a run's bytes (all of them are made and
    /// dropped under the lock, so the count is exact): the last one ends
    /// the run.
    fn release(&mut self, b: Arc<RunBuf>) {
        if Arc::strong_count(&b) == 1 {
            self.runs_live = self.runs_live.saturating_sub(1);
        }
    }
}

/// The worker threads of one lazy restore. Dropping it stops them once
/// their current fetch ends (they are not waited for).
pub(super) struct Pool {
    inner: Arc<Inner>,
}

impl Pool {
    /// Starts `cfg.workers` threads fetching the data units of `extents`
    /// from `img`; `poke` wakes the handler when a result is ready. `plan`
    /// is the working set of an image with a load order (empty without
    /// one), fetched first once [`Pool::start_plan`] is called.
    pub(super) fn start(
        img: Arc<Image>,
        extents: Vec<Option<Extent>>,
        addrs: &[u64],
        cfg: Config,
        poke: Box<dyn Fn() + Send + Sync>,
        plan: Plan,
    ) -> std::io::Result<Pool> {
        let wanted = extents
            .iter()
            .zip(addrs)
            .enumerate()
            .filter(|(_, (e, _))| e.is_some())
            .map(|(i, (_, &a))| (a, i))
            .collect();
        let workers = cfg.workers.max(1);
        let layout = Layout::new(&img, &extents, addrs);
        let phase = vec![Phase::Idle; extents.len()];
        let inner = Arc::new(Inner {
            img,
            extents,
            layout,
            counts: plan.counts,
            counted: plan.counted,
            twice: plan.twice,
            st: Mutex::new(State {
                wanted,
                phase,
                plan: plan.units.into(),
                ..State::default()
            }),
            work: Condvar::new(),
            poke,
            cap: 2 * workers,
            max_request: cfg.max_request.max(1),
            // A worker is always left for demands.
            runs: cfg.runs.clamp(1, workers.saturating_sub(1).max(1)),
        });
        let pool = Pool { inner };
        for n in 0..workers {
            let inner = Arc::clone(&pool.inner);
            std::thread::Builder::new()
                .name(format!("memimg-fetch-{n}"))
                .spawn(move || worker(&inner))?;
        }
        Ok(pool)
    }

    fn with(&self, f: impl FnOnce(&mut State)) {
        if let Ok(mut s) = self.inner.st.lock() {
            f(&mut s);
        }
        self.inner.work.notify_all();
    }

    /// A fault at image address `fault` waits for `unit` (which starts at
    /// image address `at`): fetch it next.
    pub(super) fn demand(&self, unit: usize, at: u64, fault: u64) {
        self.with(|s| {
            s.hint = fault;
            s.wanted.remove(&at);
            if s.phase(unit) != Phase::Coming {
                s.demand.push_back(unit);
            }
        });
    }

    /// The latest fault was at image address `addr`: prefetch around it.
    pub(super) fn hint(&self, addr: u64) {
        if let Ok(mut s) = self.inner.st.lock() {
            s.hint = addr;
        }
    }

    /// Lets idle workers fetch every unit still wanted.
    pub(super) fn prefetch(&self) {
        self.with(|s| s.prefetch = true);
    }

    /// The handler places the working set now: fetch it before anything
    /// prefetched.
    pub(super) fn start_plan(&self) {
        self.with(|s| s.planning = true);
    }

    /// The working set is placed (or no longer waits).
    pub(super) fn plan_done(&self) {
        self.with(|s| s.plan.clear());
    }

    /// This process no longer needs `unit` at `addr` (its pages were
    /// placed another way, or discarded).
    pub(super) fn forget(&self, addr: u64) {
        if let Ok(mut s) = self.inner.st.lock() {
            s.wanted.remove(&addr);
        }
    }

    /// The results ready since the last call.
    pub(super) fn take(&self) -> Vec<(usize, Fetched)> {
        let out = match self.inner.st.lock() {
            Ok(mut s) => {
                let out = std::mem::take(&mut s.done);
                for (u, _) in &out {
                    s.set(*u, Phase::Idle);
                }
                out
            }
            Err(_) => Vec::new(),
        };
        if !out.is_empty() {
            // Room for more prefetching.
            self.inner.work.notify_all();
        }
        out
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.with(|s| s.stop = true);
    }
}

/// What a worker takes next, if anything: a demanded unit (decoded from
/// its run's bytes when they are here, else fetched on its own), else
/// (while fewer than `cap` results wait) a unit of a run that has arrived,
/// else (while fewer than `runs` runs are held) a new run: of the working
/// set once the plan is started, else, when prefetching, around the wanted
/// unit nearest to the last fault.
fn next(
    s: &mut State,
    cap: usize,
    runs: usize,
    max: u64,
    lay: &Layout,
    twice: &AtomicU64,
) -> Option<Job> {
    while let Some(u) = s.demand.pop_front() {
        match s.phase(u) {
            // Asked twice before a worker took it: once is enough.
            Phase::Coming => continue,
            Phase::Buffered => {
                s.set(u, Phase::Coming);
                let b = s.bufs.remove(&u);
                return Some(Job::Unit(u, b));
            }
            // Its run's request is under way: the fault waits for it (it
            // is decoded first when the run arrives) rather than fetching
            // the chunk again with a request of its own, unless it waits
            // longer than such a request takes (below).
            Phase::InRun => {
                s.awaited.entry(u).or_insert_with(Instant::now);
            }
            Phase::Idle => {
                s.set(u, Phase::Coming);
                return Some(Job::Unit(u, None));
            }
        }
    }
    if let Some(p) = s.patience {
        let late = s
            .awaited
            .iter()
            .find(|(_, t)| t.elapsed() >= p)
            .map(|(&u, _)| u);
        if let Some(u) = late {
            s.awaited.remove(&u);
            if s.phase(u) == Phase::InRun {
                // Its run brings it too: fetched twice.
                let r = lay.span.get(u).map_or(0, |r| r.end - r.start);
                twice.fetch_add(r, Ordering::Relaxed);
                s.set(u, Phase::Coming);
                return Some(Job::Unit(u, None));
            }
        }
    }
    if s.in_flight + s.done.len() >= cap {
        return None;
    }
    while let Some(u) = s.buffered.pop_front() {
        if s.phase(u) == Phase::Buffered {
            s.set(u, Phase::Coming);
            let b = s.bufs.remove(&u);
            return Some(Job::Unit(u, b));
        }
    }
    if s.runs_live >= runs {
        return None;
    }
    let run = if s.planning {
        plan_run(s, max, lay)
    } else {
        None
    };
    let run = match run {
        Some(r) => r,
        None if s.prefetch => near_run(s, max, lay)?,
        None => return None,
    };
    for &u in &run.units {
        s.set(u, Phase::InRun);
    }
    s.runs_live += 1;
    Some(Job::Run(run))
}

/// Whether `u` may join a run: still wanted by the prefetch (taken out of
/// `wanted` when it is).
fn take_wanted(s: &mut State, lay: &Layout, u: usize) -> bool {
    let Some(&a) = lay.addrs.get(u) else {
        return false;
    };
    if s.phase(u) != Phase::Idle || s.wanted.get(&a) != Some(&u) {
        return false;
    }
    s.wanted.remove(&a);
    true
}

/// The next run of the working set: its next unit still wanted, and those
/// after it in profile order that follow it in the file.
fn plan_run(s: &mut State, max: u64, lay: &Layout) -> Option<Run> {
    let first = loop {
        let u = s.plan.pop_front()?;
        if take_wanted(s, lay, u) {
            break u;
        }
    };
    let mut units = vec![first];
    let mut range = lay.span[first].clone();
    while let Some(&v) = s.plan.front() {
        let last = *units.last()?;
        if lay.beside(last, true) != Some(v)
            || lay.span[v].end - range.start > max
            || !take_wanted(s, lay, v)
        {
            break;
        }
        s.plan.pop_front();
        range.end = lay.span[v].end;
        units.push(v);
    }
    Some(Run {
        units,
        range,
        planned: true,
        bridged: 0,
    })
}

/// Bytes of chunks not wanted (fetched by a fault meanwhile) that a run
/// bridges at most, in a row, between two of its units: it fetches them
/// again, and drops them, rather than split into two requests. 1 MiB: two
/// chunks of the default size (one, compressed); a request costs more than
/// that on every store measured (README, *Lazy restore from a URL*).
const BRIDGE: u64 = 1 << 20;

/// A run around the wanted unit nearest to the last fault: the wanted
/// units next to it in the file, after it then before it, that lie in the
/// same **cell** of the file, the `max` bytes `k × max .. (k + 1) × max`
/// where their spans start. Cells keep runs whole: a run started near a
/// fault never leaves a short piece of the file for another request to
/// fetch, so a prefetch makes about one request per `max` bytes of the
/// file (its range ends at most one chunk past its cell). Chunks not
/// wanted between two wanted ones are bridged, up to [`BRIDGE`] bytes in a
/// row (counted in `bridged`).
fn near_run(s: &mut State, max: u64, lay: &Layout) -> Option<Run> {
    let h = s.hint;
    let above = s.wanted.range(h..).next().map(|(&a, &u)| (a, u));
    let below = s.wanted.range(..h).next_back().map(|(&a, &u)| (a, u));
    let (a, u) = match (above, below) {
        (Some(x), Some(y)) => {
            if x.0 - h <= h - y.0 {
                x
            } else {
                y
            }
        }
        (Some(x), None) | (None, Some(x)) => x,
        (None, None) => return None,
    };
    s.wanted.remove(&a);
    let mut units = VecDeque::from([u]);
    let mut range = lay.span.get(u).cloned().unwrap_or(0..0);
    let cell = range.start / max.max(1);
    let mut bridged = 0;
    for forward in [true, false] {
        let mut at = u;
        // Bytes passed over since the last unit taken.
        let mut skipped = 0;
        while let Some(v) = lay.beside(at, forward) {
            let r = lay.span[v].clone();
            if r.start / max.max(1) != cell {
                break;
            }
            if take_wanted(s, lay, v) {
                range = range.start.min(r.start)..range.end.max(r.end);
                bridged += skipped;
                skipped = 0;
                if forward {
                    units.push_back(v);
                } else {
                    units.push_front(v);
                }
            } else {
                skipped += r.end - r.start;
                if skipped > BRIDGE {
                    break;
                }
            }
            at = v;
        }
    }
    Some(Run {
        units: units.into(),
        range,
        planned: false,
        bridged,
    })
}

fn worker(inner: &Inner) {
    let Ok(mut s) = inner.st.lock() else { return };
    loop {
        if s.stop {
            return;
        }
        let job = next(
            &mut s,
            inner.cap,
            inner.runs,
            inner.max_request,
            &inner.layout,
            &inner.twice,
        );
        let Some(job) = job else {
            // A fault waiting for a run is looked at again when its
            // patience may have run out.
            let waits = s.patience.filter(|_| !s.awaited.is_empty());
            s = match waits {
                Some(p) => match inner.work.wait_timeout(s, p / 4 + Duration::from_millis(1)) {
                    Ok((s, _)) => s,
                    Err(_) => return,
                },
                None => match inner.work.wait(s) {
                    Ok(s) => s,
                    Err(_) => return,
                },
            };
            continue;
        };
        match job {
            Job::Run(run) => {
                s.in_flight += 1;
                let broken = s.broken.clone();
                drop(s);
                let got = match broken {
                    Some(why) => Err((why, true)),
                    None => fetch_run(inner, &run),
                };
                s = match inner.st.lock() {
                    Ok(s) => s,
                    Err(_) => return,
                };
                s.in_flight -= 1;
                arrived(&mut s, run, got, &*inner.poke);
                // Its chunks wait for workers to decode them.
                inner.work.notify_all();
            }
            Job::Unit(unit, buf) => {
                let broken = s.broken.clone();
                s.in_flight += 1;
                drop(s);
                let t = Instant::now();
                let res = match (broken, inner.extents.get(unit).copied().flatten()) {
                    (Some(why), _) => Err((format!("not fetched: {why}"), false)),
                    (None, None) => Err(("not a data extent".to_string(), false)),
                    (None, Some(ext)) => fetch(&inner.img, &ext, buf.as_deref()),
                };
                let took = t.elapsed();
                s = match inner.st.lock() {
                    Ok(s) => s,
                    Err(_) => return,
                };
                s.in_flight -= 1;
                if buf.is_none() && res.is_ok() {
                    // A chunk fetched with a request of its own: what a
                    // fault waiting for a run could have had instead.
                    s.patience = Some(match s.patience {
                        Some(p) => (p * 3 + took) / 4,
                        None => took,
                    });
                }
                if let Some(b) = buf {
                    s.release(b);
                }
                if let Err((why, fatal)) = &res {
                    if *fatal && s.broken.is_none() {
                        s.broken = Some(why.clone());
                    }
                }
                s.done.push((unit, res.map_err(|(why, _)| why)));
                (inner.poke)();
                // A run may have ended: room for another.
                inner.work.notify_all();
            }
        }
    }
}

/// A run's request has ended: its units still waiting for it are decoded
/// from its bytes; on failure they fail at once (the store is broken), or,
/// when the failure is damage, are fetched one by one.
fn arrived(
    s: &mut State,
    run: Run,
    got: Result<Vec<u8>, (String, bool)>,
    poke: &(dyn Fn() + Send + Sync),
) {
    match got {
        Ok(bytes) => {
            let b = Arc::new(RunBuf {
                at: run.range.start,
                bytes,
            });
            for &u in &run.units {
                if s.phase(u) == Phase::InRun {
                    s.set(u, Phase::Buffered);
                    s.bufs.insert(u, Arc::clone(&b));
                    if s.awaited.remove(&u).is_some() {
                        // A fault waits for it: before the rest.
                        s.demand.push_back(u);
                    } else {
                        s.buffered.push_back(u);
                    }
                }
            }
            s.release(b);
        }
        Err((why, fatal)) => {
            s.runs_live = s.runs_live.saturating_sub(1);
            if fatal && s.broken.is_none() {
                s.broken = Some(why.clone());
            }
            let mut failed = false;
            for &u in &run.units {
                s.awaited.remove(&u);
                if s.phase(u) != Phase::InRun {
                    continue;
                }
                if fatal {
                    s.set(u, Phase::Coming);
                    s.done.push((u, Err(format!("not fetched: {why}"))));
                    failed = true;
                } else {
                    s.set(u, Phase::Idle);
                    s.demand.push_back(u);
                }
            }
            if failed {
                poke();
            }
        }
    }
}

/// Fetches a run's file range with one request. The error says whether
/// the source is broken (anything but damage).
fn fetch_run(inner: &Inner, run: &Run) -> Result<Vec<u8>, (String, bool)> {
    let len = run.range.end - run.range.start;
    let b = inner
        .img
        .file_range(run.range.start, len)
        .map_err(|e| (e.to_string(), !e.is_damage()))?;
    if run.planned && inner.counted {
        inner.counts[0].fetch_add(1, Ordering::Relaxed);
        inner.counts[1].fetch_add(len, Ordering::Relaxed);
    }
    inner.twice.fetch_add(run.bridged, Ordering::Relaxed);
    Ok(b.into_owned())
}

/// Fetches and decodes one data extent, its stored bytes taken from its
/// run's bytes `buf` when given (checked as bytes read from the image:
/// `Image::decode_extent_with`). The error says whether the source is
/// broken (anything but damage of this chunk).
fn fetch(img: &Image, ext: &Extent, buf: Option<&RunBuf>) -> Result<Vec<u8>, (String, bool)> {
    let len = usize::try_from(ext.len(img.header().page_size)).unwrap_or(usize::MAX);
    let mut out = vec![0u8; len];
    let r = match buf {
        Some(b) => img.decode_extent_with(b.at, &b.bytes, ext, &mut out),
        None => img.decode_extent(ext, &mut out),
    };
    match r {
        Ok(()) => Ok(out),
        Err(e) => Err((e.to_string(), !e.is_damage())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Units at image addresses `addrs`, each 10 bytes in the file, in
    /// file order `order` (unit numbers), adjacent.
    fn layout(addrs: &[u64], order: &[usize]) -> Layout {
        let mut span = vec![0..0; addrs.len()];
        let mut file_pos = vec![usize::MAX; addrs.len()];
        for (k, &u) in order.iter().enumerate() {
            span[u] = (k as u64 * 10)..(k as u64 * 10 + 10);
            file_pos[u] = k;
        }
        Layout {
            addrs: addrs.to_vec(),
            span,
            by_file: order.to_vec(),
            file_pos,
        }
    }

    static TWICE: AtomicU64 = AtomicU64::new(0);

    fn state(addrs: &[u64]) -> State {
        State {
            wanted: addrs.iter().enumerate().map(|(i, &a)| (a, i)).collect(),
            phase: vec![Phase::Idle; addrs.len()],
            ..State::default()
        }
    }

    fn units(j: Option<Job>) -> Option<(Vec<usize>, Option<Range<u64>>)> {
        match j? {
            Job::Unit(u, _) => Some((vec![u], None)),
            Job::Run(r) => Some((r.units, Some(r.range))),
        }
    }

    #[test]
    fn demands_come_first_then_runs_nearest_to_the_last_fault() {
        let addrs = [0, 10, 20, 30, 40];
        let lay = layout(&addrs, &[0, 1, 2, 3, 4]);
        let mut s = state(&addrs);
        // Nothing without a demand until prefetching is on.
        assert!(next(&mut s, 8, 2, 20, &lay, &TWICE).is_none());
        s.demand.push_back(4);
        s.wanted.remove(&40);
        assert_eq!(
            units(next(&mut s, 8, 2, 20, &lay, &TWICE)),
            Some((vec![4], None))
        );
        s.prefetch = true;
        s.hint = 24;
        // 20 is nearest; 30 follows it in the file; 20 bytes at most.
        assert_eq!(
            units(next(&mut s, 8, 2, 20, &lay, &TWICE)),
            Some((vec![2, 3], Some(20..40)))
        );
        // One run held: no second while one is the most.
        assert!(next(&mut s, 8, 1, 20, &lay, &TWICE).is_none());
        // Then 10, and 0 before it in the file.
        assert_eq!(
            units(next(&mut s, 8, 2, 20, &lay, &TWICE)),
            Some((vec![0, 1], Some(0..20)))
        );
        s.runs_live = 0;
        assert!(next(&mut s, 8, 2, 20, &lay, &TWICE).is_none());
    }

    #[test]
    fn runs_follow_the_file_not_the_addresses() {
        // Units 0..4 at addresses 0, 10, 20, 30, stored in the file in the
        // order 2, 0, 3, 1.
        let addrs = [0, 10, 20, 30];
        let lay = layout(&addrs, &[2, 0, 3, 1]);
        let mut s = state(&addrs);
        s.prefetch = true;
        // Unit 0 first (lowest), then 3 and 1 after it in the file, then 2
        // before it.
        assert_eq!(
            units(next(&mut s, 8, 2, 100, &lay, &TWICE)),
            Some((vec![2, 0, 3, 1], Some(0..40)))
        );
        // A unit not wanted (fetched by a fault) in the file between two
        // wanted ones is fetched again with them rather than split the run.
        let mut s = state(&addrs);
        s.prefetch = true;
        s.wanted.remove(&20); // unit 2, the second in the file order below
        let lay = layout(&addrs, &[0, 2, 1, 3]);
        assert_eq!(
            units(next(&mut s, 8, 2, 100, &lay, &TWICE)),
            Some((vec![0, 1, 3], Some(0..40)))
        );
    }

    fn run_of(j: Option<Job>) -> Run {
        match j {
            Some(Job::Run(r)) => r,
            _ => panic!("a run was expected"),
        }
    }

    #[test]
    fn a_demand_waits_for_its_run_and_is_decoded_first() {
        let addrs = [0, 10, 20];
        let lay = layout(&addrs, &[0, 1, 2]);
        let mut s = state(&addrs);
        s.prefetch = true;
        let run = run_of(next(&mut s, 8, 2, 100, &lay, &TWICE));
        assert_eq!(
            (run.units.clone(), run.range.clone()),
            (vec![0, 1, 2], 0..30)
        );
        // A fault on 1 while the run is under way: no request of its own
        // (no fetch has been timed yet, so it waits however long).
        s.demand.push_back(1);
        assert!(next(&mut s, 8, 2, 100, &lay, &TWICE).is_none());
        assert!(s.awaited.contains_key(&1));
        // The run arrives: 1 comes first, then 0 and 2 in file order.
        arrived(&mut s, run, Ok(vec![0; 30]), &|| {});
        assert!(s.awaited.is_empty());
        let mut order = Vec::new();
        while let Some(j) = next(&mut s, 8, 2, 100, &lay, &TWICE) {
            match j {
                Job::Unit(u, Some(b)) => {
                    order.push(u);
                    s.release(b);
                }
                _ => panic!("decoded from the run's bytes"),
            }
        }
        assert_eq!(order, vec![1, 0, 2]);
        assert_eq!(s.runs_live, 0);
    }

    #[test]
    fn a_demand_stops_waiting_for_its_run_after_a_fetch_time() {
        let addrs = [0, 10, 20];
        let lay = layout(&addrs, &[0, 1, 2]);
        let twice = AtomicU64::new(0);
        let mut s = state(&addrs);
        s.prefetch = true;
        let run = run_of(next(&mut s, 8, 2, 100, &lay, &twice));
        // A fetch of its own took an hour: the fault waits for the run.
        s.patience = Some(Duration::from_secs(3600));
        s.demand.push_back(1);
        assert!(next(&mut s, 8, 2, 100, &lay, &twice).is_none());
        // It took no time: the fault has waited as long, and its chunk is
        // fetched on its own (and counted as fetched twice).
        s.patience = Some(Duration::ZERO);
        assert_eq!(
            units(next(&mut s, 8, 2, 100, &lay, &twice)),
            Some((vec![1], None))
        );
        assert_eq!(twice.load(Ordering::Relaxed), 10);
        assert!(s.awaited.is_empty());
        // The run arrives: 1 is not decoded from it again.
        arrived(&mut s, run, Ok(vec![0; 30]), &|| {});
        let mut got = Vec::new();
        while let Some(Job::Unit(u, Some(b))) = next(&mut s, 8, 2, 100, &lay, &twice) {
            got.push(u);
            s.release(b);
        }
        assert_eq!(got, vec![0, 2]);
    }

    #[test]
    fn a_failed_run_answers_the_faults_that_wait_for_it() {
        let addrs = [0, 10];
        let lay = layout(&addrs, &[0, 1]);
        // A run of both under way, and a fault on 1 waiting for it.
        let waiting = || {
            let mut s = state(&addrs);
            s.prefetch = true;
            let run = run_of(next(&mut s, 8, 2, 100, &lay, &TWICE));
            s.demand.push_back(1);
            assert!(next(&mut s, 8, 2, 100, &lay, &TWICE).is_none());
            (s, run)
        };
        // The store is gone: both fail at once, none waits.
        let (mut s, run) = waiting();
        arrived(&mut s, run, Err(("gone".into(), true)), &|| {});
        assert!(s.awaited.is_empty());
        assert_eq!(s.done.len(), 2);
        assert!(s.broken.is_some());
        // Damage instead: each is fetched on its own.
        let (mut s, run) = waiting();
        arrived(&mut s, run, Err(("short".into(), false)), &|| {});
        assert!(s.awaited.is_empty());
        assert_eq!(
            units(next(&mut s, 8, 2, 100, &lay, &TWICE)),
            Some((vec![0], None))
        );
        assert_eq!(
            units(next(&mut s, 8, 2, 100, &lay, &TWICE)),
            Some((vec![1], None))
        );
    }

    #[test]
    fn runs_keep_to_their_cell_of_the_file() {
        // Eight units of 10 bytes, in file order; cells of 40 bytes.
        let addrs = [0, 10, 20, 30, 40, 50, 60, 70];
        let lay = layout(&addrs, &[0, 1, 2, 3, 4, 5, 6, 7]);
        let mut s = state(&addrs);
        s.prefetch = true;
        // Nearest to a fault at 25 is unit 2: its cell is units 0 to 3,
        // not 2 to 5, which would leave 0 and 1 for a request of their own.
        s.hint = 22;
        assert_eq!(
            units(next(&mut s, 8, 4, 40, &lay, &TWICE)),
            Some((vec![0, 1, 2, 3], Some(0..40)))
        );
        assert_eq!(
            units(next(&mut s, 8, 4, 40, &lay, &TWICE)),
            Some((vec![4, 5, 6, 7], Some(40..80)))
        );
    }

    #[test]
    fn runs_bridge_a_chunk_already_fetched() {
        let addrs = [0, 10, 20, 30];
        let lay = layout(&addrs, &[0, 1, 2, 3]);
        let mut s = state(&addrs);
        s.prefetch = true;
        // A fault took unit 1 on its own: one request still brings 0, 2
        // and 3, and 1's 10 bytes again.
        s.wanted.remove(&10);
        let run = run_of(next(&mut s, 8, 2, 100, &lay, &TWICE));
        assert_eq!(
            (run.units, run.range, run.bridged),
            (vec![0, 2, 3], 0..40, 10)
        );
        // Not more than BRIDGE bytes in a row: units of 600 KiB, two gone.
        let big = 600 << 10;
        let mut lay = layout(&addrs, &[0, 1, 2, 3]);
        for (k, sp) in lay.span.iter_mut().enumerate() {
            *sp = k as u64 * big..(k as u64 + 1) * big;
        }
        let mut s = state(&addrs);
        s.prefetch = true;
        s.wanted.remove(&10);
        s.wanted.remove(&20);
        let run = run_of(next(&mut s, 8, 2, 64 << 20, &lay, &TWICE));
        assert_eq!((run.units, run.bridged), (vec![0], 0));
        let run = run_of(next(&mut s, 8, 2, 64 << 20, &lay, &TWICE));
        assert_eq!((run.units, run.bridged), (vec![3], 0));
    }

    #[test]
    fn decoding_and_prefetching_stop_while_results_wait() {
        let addrs = [0, 10, 20];
        let lay = layout(&addrs, &[0, 1, 2]);
        let mut s = state(&addrs);
        s.prefetch = true;
        s.in_flight = 1;
        s.done.push((0, Ok(Vec::new())));
        assert!(
            next(&mut s, 2, 2, 100, &lay, &TWICE).is_none(),
            "two results held: no more"
        );
        // A demand is served whatever is held.
        s.demand.push_back(2);
        assert_eq!(
            units(next(&mut s, 2, 2, 100, &lay, &TWICE)),
            Some((vec![2], None))
        );
    }

    #[test]
    fn the_working_set_comes_first_in_runs_in_profile_order() {
        let addrs = [0, 10, 20, 30, 40];
        // Units 3 and 1 are the working set, in that order, stored first
        // in the file in that order; 4 was demanded meanwhile.
        let lay = layout(&addrs, &[3, 1, 0, 2, 4]);
        let mut s = state(&addrs);
        s.plan = [3, 1].into();
        s.prefetch = true;
        s.hint = 40;
        // Before the handler starts its plan: prefetching as without one.
        assert_eq!(
            units(next(&mut s, 8, 1, 10, &lay, &TWICE)),
            Some((vec![4], Some(40..50)))
        );
        s.runs_live = 0;
        s.planning = true;
        assert_eq!(
            units(next(&mut s, 8, 1, 100, &lay, &TWICE)),
            Some((vec![3, 1], Some(0..20)))
        );
        s.runs_live = 0;
        // Then the prefetch: 2, then 0 before it in the file.
        assert_eq!(
            units(next(&mut s, 8, 1, 100, &lay, &TWICE)),
            Some((vec![0, 2], Some(20..40)))
        );
    }
}
