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
use std::sync::{Arc, Condvar, Mutex};

use memimg::{Extent, Image};

/// A fetched chunk, or why it could not be had.
pub(super) type Fetched = Result<Vec<u8>, String>;

/// What the pool and its workers share.
struct Inner {
    img: Arc<Image>,
    /// The data extent of each unit (`None` for zero units, never fetched).
    extents: Vec<Option<Extent>>,
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
}

/// The worker threads of one lazy restore. Dropping it stops them once
/// their current fetch ends (they are not waited for).
pub(super) struct Pool {
    inner: Arc<Inner>,
}

impl Pool {
    /// Starts `workers` threads fetching the data units of `extents` from
    /// `img`; `poke` wakes the handler when a result is ready.
    pub(super) fn start(
        img: Arc<Image>,
        extents: Vec<Option<Extent>>,
        addrs: &[u64],
        workers: usize,
        poke: Box<dyn Fn() + Send + Sync>,
    ) -> std::io::Result<Pool> {
        let wanted = extents
            .iter()
            .zip(addrs)
            .enumerate()
            .filter(|(_, (e, _))| e.is_some())
            .map(|(i, (_, &a))| (a, i))
            .collect();
        let workers = workers.max(1);
        let inner = Arc::new(Inner {
            img,
            extents,
            st: Mutex::new(State {
                wanted,
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

/// The unit a worker takes next, if any: a demanded one, else (when
/// prefetching, and while fewer than `cap` results wait) the wanted unit
/// nearest to the last fault.
fn next(s: &mut State, cap: usize) -> Option<usize> {
    let u = pick(s, cap)?;
    s.coming.insert(u);
    Some(u)
}

fn pick(s: &mut State, cap: usize) -> Option<usize> {
    while let Some(u) = s.demand.pop_front() {
        // Asked twice before a worker took it: once is enough.
        if !s.coming.contains(&u) {
            return Some(u);
        }
    }
    if !s.prefetch || s.in_flight + s.done.len() >= cap {
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
    Some(u)
}

fn worker(inner: &Inner) {
    let Ok(mut s) = inner.st.lock() else { return };
    loop {
        if s.stop {
            return;
        }
        let Some(unit) = next(&mut s, inner.cap) else {
            s = match inner.work.wait(s) {
                Ok(s) => s,
                Err(_) => return,
            };
            continue;
        };
        let broken = s.broken.clone();
        s.in_flight += 1;
        drop(s);
        let res = match (broken, inner.extents.get(unit).copied().flatten()) {
            (Some(why), _) => Err((format!("not fetched: {why}"), false)),
            (None, None) => Err(("not a data extent".to_string(), false)),
            (None, Some(ext)) => fetch(&inner.img, &ext),
        };
        s = match inner.st.lock() {
            Ok(s) => s,
            Err(_) => return,
        };
        s.in_flight -= 1;
        if let Err((why, fatal)) = &res {
            if *fatal && s.broken.is_none() {
                s.broken = Some(why.clone());
            }
        }
        s.done.push((unit, res.map_err(|(why, _)| why)));
        (inner.poke)();
    }
}

/// Fetches and decodes one data extent. The error says whether the source
/// is broken (anything but damage of this chunk).
fn fetch(img: &Image, ext: &Extent) -> Result<Vec<u8>, (String, bool)> {
    let len = usize::try_from(ext.len(img.header().page_size)).unwrap_or(usize::MAX);
    let mut buf = vec![0u8; len];
    match img.decode_extent(ext, &mut buf) {
        Ok(()) => Ok(buf),
        Err(e) => Err((e.to_string(), !e.is_damage())),
    }
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
        assert_eq!(next(&mut s, 8), None);
        s.demand.push_back(4);
        assert_eq!(next(&mut s, 8), Some(4));
        s.prefetch = true;
        s.hint = 24;
        assert_eq!(next(&mut s, 8), Some(2)); // 20: 4 away
        assert_eq!(next(&mut s, 8), Some(3)); // 30: 6 away
        assert_eq!(next(&mut s, 8), Some(1)); // 10
        assert_eq!(next(&mut s, 8), Some(4)); // 40
        assert_eq!(next(&mut s, 8), Some(0));
        assert_eq!(next(&mut s, 8), None);
    }

    #[test]
    fn a_chunk_under_way_is_not_fetched_again() {
        let mut s = state(&[0, 10]);
        s.prefetch = true;
        assert_eq!(next(&mut s, 8), Some(0));
        // A fault demands it while it is fetched: nothing more to fetch.
        s.demand.push_back(0);
        assert_eq!(next(&mut s, 8), Some(1));
        assert_eq!(next(&mut s, 8), None);
    }

    #[test]
    fn prefetching_stops_while_results_wait() {
        let mut s = state(&[0, 10, 20]);
        s.prefetch = true;
        s.in_flight = 1;
        s.done.push((0, Ok(Vec::new())));
        assert_eq!(next(&mut s, 2), None, "two results held: no more");
        // A demand is served whatever is held.
        s.demand.push_back(2);
        assert_eq!(next(&mut s, 2), Some(2));
    }
}
