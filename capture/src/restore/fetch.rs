//! Fetching on worker threads, for a lazy restore from a slow source (an
//! image in object storage).
//!
//! The handler thread of a lazy restore answers every fault, and a remote
//! fetch takes milliseconds to seconds: fetched on the handler, one chunk
//! would hold up the faults of every other chunk, including those already
//! fetched. So for such a source the handler only places bytes, and a pool
//! of worker threads fetches (one ranged GET each), decrypts and
//! decompresses:
//!
//! - a fault on a chunk not yet fetched **demands** it: demanded chunks are
//!   fetched first, in the order asked, by the next free worker, and the
//!   fault waits (parked) while the handler goes on with other faults;
//! - when prefetching is on (`LazyHandle::prefetch`, or the restore must
//!   finish: the handle is dropped, or the process forks), idle workers
//!   take the chunk still wanted **nearest to the last fault** (by image
//!   address; lowest first before any fault), so the pages a program is
//!   about to touch arrive first. At most `2 × workers` fetched chunks wait
//!   for the handler at once, which bounds the memory held;
//! - each result goes back to the handler, which is woken through its
//!   eventfd.
//!
//! **Load order.** For an image with a load order (`order.rs`), once the
//! handler starts its plan ([`Pool::start_plan`]) the working set comes
//! before any prefetching: when the restore waits for it, one worker
//! fetches its whole file range with **one ranged GET**, and the workers
//! then decode its chunks from that buffer, in profile order (a fault on
//! one of them meanwhile waits for that GET rather than fetching the chunk
//! again); in the background, the workers fetch its chunks one by one in
//! profile order, so a first touch waits for its own chunk only. Demands
//! still come first. If the one GET fails, each chunk is fetched on its
//! own, as without a profile.
//!
//! **Errors.** A chunk that is damaged fails alone. A fetch that fails for
//! any other reason (the network, after the reader's retries; refused
//! credentials; an object replaced meanwhile) **breaks** the pool: every
//! chunk not yet fetched then fails at once with that reason, instead of
//! each one waiting for its own retries. The handler treats a failed chunk
//! as it treats damage: its pages are made inaccessible, never filled with
//! wrong bytes, and a thread touching them gets SIGSEGV. So a restore whose
//! store went away ends, with every thread answered, in the time of one
//! fetch and its retries.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use memimg::{Extent, Image};

/// A fetched chunk, or why it could not be had.
pub(super) type Fetched = Result<Vec<u8>, String>;

/// The working set of an image with a load order, for the pool.
pub(super) struct Plan {
    /// Its units, in profile order.
    pub units: Vec<usize>,
    /// Its file range, to fetch with one ranged GET; `None`: chunk by chunk.
    pub range: Option<Range<u64>>,
    /// Reads made for it (one, or none) and their bytes, for the handle's
    /// statistics.
    pub counts: Arc<[AtomicU64; 2]>,
}

/// The working set's bytes once fetched: the file's bytes from an offset.
type WorkingSet = Arc<(u64, Vec<u8>)>;

/// What a worker does next.
#[derive(Debug, PartialEq, Eq)]
enum Job {
    /// Fetch and decode one unit.
    Unit(usize),
    /// Fetch the working set's range with one request.
    WorkingSet(Range<u64>),
}

/// What the pool and its workers share.
struct Inner {
    img: Arc<Image>,
    /// The data extent of each unit (`None` for zero units, never fetched).
    extents: Vec<Option<Extent>>,
    /// The image address of each unit.
    addrs: Vec<u64>,
    /// For each unit, whether it is in the working set.
    listed: Vec<bool>,
    counts: Arc<[AtomicU64; 2]>,
    st: Mutex<State>,
    work: Condvar,
    /// Wakes the handler thread.
    poke: Box<dyn Fn() + Send + Sync>,
    /// Fetched chunks waiting for the handler, at most, before idle workers
    /// stop prefetching.
    cap: usize,
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
    in_flight: usize,
    /// Units being fetched, or fetched and not yet taken by the handler: a
    /// demand for one of them waits for that result instead of fetching
    /// again (a fault on a chunk the prefetch has under way).
    coming: HashSet<usize>,
    done: Vec<(usize, Fetched)>,
    /// Why the source stopped working, once it has.
    broken: Option<String>,
    stop: bool,
    /// The working set's units not yet taken, in profile order.
    plan: VecDeque<usize>,
    /// The handler has started its plan: the working set comes before any
    /// prefetching.
    planning: bool,
    /// The working set's range, until a worker takes it to fetch.
    ws_range: Option<Range<u64>>,
    /// The one request for the working set is under way: its chunks wait
    /// for it.
    ws_fetching: bool,
    /// The working set's bytes, once fetched, until each of its chunks has
    /// been decoded from them (`ws_left`) or the plan is over.
    ws: Option<WorkingSet>,
    ws_left: usize,
}

/// The worker threads of one lazy restore. Dropping it stops them once
/// their current fetch ends (they are not waited for).
pub(super) struct Pool {
    inner: Arc<Inner>,
}

impl Pool {
    /// Starts `workers` threads fetching the data units of `extents` from
    /// `img`; `poke` wakes the handler when a result is ready.
    /// `plan` is the working set of an image with a load order (empty
    /// without one), fetched first once [`Pool::start_plan`] is called.
    pub(super) fn start(
        img: Arc<Image>,
        extents: Vec<Option<Extent>>,
        addrs: &[u64],
        workers: usize,
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
        let workers = workers.max(1);
        let mut listed = vec![false; extents.len()];
        for &u in &plan.units {
            if let Some(l) = listed.get_mut(u) {
                *l = true;
            }
        }
        let ws_range = plan.range.filter(|_| !plan.units.is_empty());
        let inner = Arc::new(Inner {
            img,
            extents,
            addrs: addrs.to_vec(),
            listed,
            counts: plan.counts,
            st: Mutex::new(State {
                wanted,
                plan: plan.units.into(),
                ws_range,
                ..State::default()
            }),
            work: Condvar::new(),
            poke,
            cap: 2 * workers,
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
            if !s.coming.contains(&unit) {
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

    /// The working set is placed (or no longer waits): let its bytes go.
    pub(super) fn plan_done(&self) {
        self.with(|s| {
            s.plan.clear();
            s.ws_range = None;
            s.ws = None;
        });
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
                    s.coming.remove(u);
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

/// What a worker takes next, if anything: a demanded unit (one of the
/// working set waits while its one request is under way), else, once the
/// plan is started, the working set (its one request, then its units in
/// profile order), else (when prefetching, and while fewer than `cap`
/// results wait) the wanted unit nearest to the last fault. `listed` and
/// `addrs` are [`Inner`]'s.
fn next(s: &mut State, cap: usize, listed: &[bool], addrs: &[u64]) -> Option<Job> {
    let job = pick(s, cap, listed, addrs)?;
    if let Job::Unit(u) = job {
        s.coming.insert(u);
    }
    Some(job)
}

fn pick(s: &mut State, cap: usize, listed: &[bool], addrs: &[u64]) -> Option<Job> {
    // Asked twice before a worker took it: once is enough.
    let coming = &s.coming;
    s.demand.retain(|u| !coming.contains(u));
    let held = |u: usize| s.ws_fetching && listed.get(u).copied().unwrap_or(false);
    if let Some(k) = s.demand.iter().position(|&u| !held(u)) {
        return s.demand.remove(k).map(Job::Unit);
    }
    if s.planning {
        if let Some(r) = s.ws_range.take() {
            s.ws_fetching = true;
            return Some(Job::WorkingSet(r));
        }
    }
    if s.ws_fetching || s.in_flight + s.done.len() >= cap {
        return None;
    }
    if s.planning {
        while let Some(u) = s.plan.pop_front() {
            // Not demanded, fetched or placed already.
            if addrs.get(u).is_some_and(|a| s.wanted.remove(a).is_some()) {
                return Some(Job::Unit(u));
            }
        }
    }
    if !s.prefetch {
        return None;
    }
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
    Some(Job::Unit(u))
}

fn worker(inner: &Inner) {
    let Ok(mut s) = inner.st.lock() else { return };
    loop {
        if s.stop {
            return;
        }
        let Some(job) = next(&mut s, inner.cap, &inner.listed, &inner.addrs) else {
            s = match inner.work.wait(s) {
                Ok(s) => s,
                Err(_) => return,
            };
            continue;
        };
        let unit = match job {
            Job::Unit(u) => u,
            Job::WorkingSet(r) => {
                s.in_flight += 1;
                drop(s);
                let got = fetch_range(inner, &r);
                s = match inner.st.lock() {
                    Ok(s) => s,
                    Err(_) => return,
                };
                s.in_flight -= 1;
                s.ws_fetching = false;
                // Unless the plan ended meanwhile. On failure each chunk is
                // fetched on its own (a store that is gone then breaks the
                // pool there).
                if let Some(ws) = got.filter(|_| !s.plan.is_empty()) {
                    s.ws_left = inner.listed.iter().filter(|&&l| l).count();
                    s.ws = Some(ws);
                }
                // The chunks that waited for it.
                inner.work.notify_all();
                continue;
            }
        };
        let broken = s.broken.clone();
        let ws =
            s.ws.clone()
                .filter(|_| inner.listed.get(unit) == Some(&true));
        s.in_flight += 1;
        drop(s);
        let res = match (broken, inner.extents.get(unit).copied().flatten()) {
            (Some(why), _) => Err((format!("not fetched: {why}"), false)),
            (None, None) => Err(("not a data extent".to_string(), false)),
            (None, Some(ext)) => fetch(&inner.img, &ext, ws.as_deref()),
        };
        s = match inner.st.lock() {
            Ok(s) => s,
            Err(_) => return,
        };
        s.in_flight -= 1;
        if ws.is_some() && s.ws.is_some() {
            s.ws_left = s.ws_left.saturating_sub(1);
            if s.ws_left == 0 {
                // Every chunk of it has been decoded: let the memory go.
                s.ws = None;
            }
        }
        if let Err((why, fatal)) = &res {
            if *fatal && s.broken.is_none() {
                s.broken = Some(why.clone());
            }
        }
        s.done.push((unit, res.map_err(|(why, _)| why)));
        (inner.poke)();
    }
}

/// Fetches and decodes one data extent, its stored bytes taken from the
/// working set `ws` when it holds them (checked as bytes read from the
/// image: `Image::decode_extent_with`). The error says whether the source
/// is broken (anything but damage of this chunk).
fn fetch(
    img: &Image,
    ext: &Extent,
    ws: Option<&(u64, Vec<u8>)>,
) -> Result<Vec<u8>, (String, bool)> {
    let len = usize::try_from(ext.len(img.header().page_size)).unwrap_or(usize::MAX);
    let mut buf = vec![0u8; len];
    let r = match ws {
        Some((at, bytes)) => img.decode_extent_with(*at, bytes, ext, &mut buf),
        None => img.decode_extent(ext, &mut buf),
    };
    match r {
        Ok(()) => Ok(buf),
        Err(e) => Err((e.to_string(), !e.is_damage())),
    }
}

/// Fetches the working set's file range `r` with one request; `None` when
/// that fails.
fn fetch_range(inner: &Inner, r: &Range<u64>) -> Option<WorkingSet> {
    let b = inner.img.file_range(r.start, r.end - r.start).ok()?;
    inner.counts[0].fetch_add(1, Ordering::Relaxed);
    inner.counts[1].fetch_add(r.end - r.start, Ordering::Relaxed);
    Some(Arc::new((r.start, b.into_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(addrs: &[u64]) -> State {
        State {
            wanted: addrs.iter().enumerate().map(|(i, &a)| (a, i)).collect(),
            ..State::default()
        }
    }

    #[test]
    fn demands_come_first_then_nearest_to_the_last_fault() {
        let mut s = state(&[0, 10, 20, 30, 40]);
        // Nothing without a demand until prefetching is on.
        assert_eq!(next(&mut s, 8, &[], &[]), None);
        s.demand.push_back(4);
        assert_eq!(next(&mut s, 8, &[], &[]), Some(Job::Unit(4)));
        s.prefetch = true;
        s.hint = 24;
        assert_eq!(next(&mut s, 8, &[], &[]), Some(Job::Unit(2))); // 20: 4 away
        assert_eq!(next(&mut s, 8, &[], &[]), Some(Job::Unit(3))); // 30: 6 away
        assert_eq!(next(&mut s, 8, &[], &[]), Some(Job::Unit(1))); // 10
        assert_eq!(next(&mut s, 8, &[], &[]), Some(Job::Unit(4))); // 40
        assert_eq!(next(&mut s, 8, &[], &[]), Some(Job::Unit(0)));
        assert_eq!(next(&mut s, 8, &[], &[]), None);
    }

    #[test]
    fn a_chunk_under_way_is_not_fetched_again() {
        let mut s = state(&[0, 10]);
        s.prefetch = true;
        assert_eq!(next(&mut s, 8, &[], &[]), Some(Job::Unit(0)));
        // A fault demands it while it is fetched: nothing more to fetch.
        s.demand.push_back(0);
        assert_eq!(next(&mut s, 8, &[], &[]), Some(Job::Unit(1)));
        assert_eq!(next(&mut s, 8, &[], &[]), None);
    }

    #[test]
    fn prefetching_stops_while_results_wait() {
        let mut s = state(&[0, 10, 20]);
        s.prefetch = true;
        s.in_flight = 1;
        s.done.push((0, Ok(Vec::new())));
        assert_eq!(next(&mut s, 2, &[], &[]), None, "two results held: no more");
        // A demand is served whatever is held.
        s.demand.push_back(2);
        assert_eq!(next(&mut s, 2, &[], &[]), Some(Job::Unit(2)));
    }

    #[test]
    fn the_working_set_comes_first_in_one_request_then_in_profile_order() {
        let addrs = [0, 10, 20, 30, 40];
        // Units 3 and 1 are the working set, in that order.
        let listed = [false, true, false, true, false];
        let mut s = state(&addrs);
        s.plan = [3, 1].into();
        s.ws_range = Some(100..200);
        s.prefetch = true;
        s.hint = 40;
        let take = |s: &mut State| next(s, 8, &listed, &addrs);
        // Before the handler starts its plan: prefetching as without one.
        assert_eq!(take(&mut s), Some(Job::Unit(4)));
        s.planning = true;
        assert_eq!(take(&mut s), Some(Job::WorkingSet(100..200)));
        // While it is fetched, a demand of one of its chunks waits for it,
        // a demand of another chunk does not, and nothing is prefetched.
        for (u, a) in [(1, 10), (0, 0)] {
            s.wanted.remove(&a);
            s.demand.push_back(u);
        }
        assert_eq!(take(&mut s), Some(Job::Unit(0)));
        assert_eq!(take(&mut s), None);
        s.ws_fetching = false;
        assert_eq!(take(&mut s), Some(Job::Unit(1)));
        // Then the rest of it in profile order (1 was demanded), then the
        // prefetch.
        assert_eq!(take(&mut s), Some(Job::Unit(3)));
        assert_eq!(take(&mut s), Some(Job::Unit(2)));
        assert_eq!(take(&mut s), None);
    }
}
