//! Which pages of one address space still wait for the image's bytes, and
//! where those bytes come from.
//!
//! A page is *pending* from the restore until the handler places the
//! image's bytes in it, or until the program discards it (`MADV_DONTNEED`,
//! `munmap` …): from then on its content is whatever the kernel says, and a
//! fault on it is answered with a zero page. `mremap` moves pending pages
//! to a new address while they keep their image address, so each run of
//! pending pages records the image address of its first page.

use std::collections::BTreeMap;

/// Consecutive pending pages `start..end` whose bytes are the image's at
/// `img..img + (end - start)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Run {
    pub start: u64,
    pub end: u64,
    pub img: u64,
}

impl Run {
    /// The distance from image address to current address, the same for
    /// every page of the run (wrapping: a run may move down).
    pub fn delta(&self) -> u64 {
        self.start.wrapping_sub(self.img)
    }
}

/// The pending pages of one address space, as disjoint runs.
#[derive(Debug, Clone, Default)]
pub(super) struct Pending {
    /// start → (end, image address of start).
    runs: BTreeMap<u64, (u64, u64)>,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// The pending run with the lowest address.
    pub fn first(&self) -> Option<Run> {
        self.runs
            .iter()
            .next()
            .map(|(&start, &(end, img))| Run { start, end, img })
    }

    /// The run holding `addr`, if `addr` is pending.
    pub fn lookup(&self, addr: u64) -> Option<Run> {
        let (&start, &(end, img)) = self.runs.range(..=addr).next_back()?;
        (addr < end).then_some(Run { start, end, img })
    }

    /// Makes `start..end` pending with the image's bytes from `img`. The
    /// range must not overlap a pending run (remove it first); it merges
    /// with neighbours that continue it in both spaces.
    pub fn insert(&mut self, start: u64, end: u64, img: u64) {
        if start >= end {
            return;
        }
        debug_assert!(self.overlapping(start, end).is_empty());
        let (mut start, mut end, mut img) = (start, end, img);
        let delta = start.wrapping_sub(img);
        if let Some((&ps, &(pe, pimg))) = self.runs.range(..start).next_back() {
            if pe == start && ps.wrapping_sub(pimg) == delta {
                self.runs.remove(&ps);
                start = ps;
                img = pimg;
            }
        }
        if let Some(&(ne, nimg)) = self.runs.get(&end) {
            if end.wrapping_sub(nimg) == delta {
                self.runs.remove(&end);
                end = ne;
            }
        }
        self.runs.insert(start, (end, img));
    }

    /// Starts of the runs overlapping `start..end`.
    fn overlapping(&self, start: u64, end: u64) -> Vec<u64> {
        let mut keys = Vec::new();
        if let Some((&s, &(e, _))) = self.runs.range(..start).next_back() {
            if e > start {
                keys.push(s);
            }
        }
        keys.extend(self.runs.range(start..end).map(|(&s, _)| s));
        keys
    }

    /// Makes `start..end` no longer pending; returns the pieces that were.
    pub fn remove(&mut self, start: u64, end: u64) -> Vec<Run> {
        let mut out = Vec::new();
        if start >= end {
            return out;
        }
        for s in self.overlapping(start, end) {
            let Some((e, img)) = self.runs.remove(&s) else {
                continue;
            };
            let (lo, hi) = (s.max(start), e.min(end));
            if s < lo {
                self.runs.insert(s, (lo, img));
            }
            if hi < e {
                self.runs.insert(hi, (e, img + (hi - s)));
            }
            out.push(Run {
                start: lo,
                end: hi,
                img: img + (lo - s),
            });
        }
        out
    }

    /// A pending run holding some of the image's bytes `img..img_end`,
    /// wherever it is now, and its first page that does: the place of a
    /// piece of the image to fill. Runs that kept their address are looked
    /// up directly; moved ones (after `mremap`) by a scan.
    pub fn find_img(&self, img: u64, img_end: u64) -> Option<(u64, Run)> {
        let direct = self.overlapping(img, img_end).into_iter().find_map(|s| {
            let &(e, i) = self.runs.get(&s)?;
            (s == i).then_some(Run {
                start: s,
                end: e,
                img: i,
            })
        });
        let run = direct.or_else(|| {
            self.runs.iter().find_map(|(&s, &(e, i))| {
                let holds = i < img_end && img < i + (e - s);
                holds.then_some(Run {
                    start: s,
                    end: e,
                    img: i,
                })
            })
        })?;
        Some((run.start + img.saturating_sub(run.img), run))
    }

    /// The pending pieces inside `start..end` whose distance to the image
    /// is `delta`: the pages one decoded chunk can fill.
    pub fn pieces(&self, start: u64, end: u64, delta: u64) -> Vec<(u64, u64)> {
        self.overlapping(start, end)
            .into_iter()
            .filter_map(|s| {
                let &(e, img) = self.runs.get(&s)?;
                (s.wrapping_sub(img) == delta).then(|| (s.max(start), e.min(end)))
            })
            .collect()
    }

    /// `mremap` moved `len` bytes from `from` to `to`: the pending pages
    /// there move along and keep their image addresses.
    pub fn shift(&mut self, from: u64, to: u64, len: u64) {
        let moved = self.remove(from, from.saturating_add(len));
        // Whatever was pending at the destination was unmapped by the move.
        self.remove(to, to.saturating_add(len));
        for r in moved {
            let s = to + (r.start - from);
            self.insert(s, s + (r.end - r.start), r.img);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = 0x1000;

    impl Pending {
        fn bytes(&self) -> u64 {
            self.runs.iter().map(|(s, (e, _))| e - s).sum()
        }
    }

    fn runs(p: &Pending) -> Vec<(u64, u64, u64)> {
        p.runs.iter().map(|(&s, &(e, i))| (s, e, i)).collect()
    }

    #[test]
    fn remove_splits_and_reports_what_was_pending() {
        let mut p = Pending::default();
        p.insert(10 * P, 20 * P, 10 * P);
        assert_eq!(p.bytes(), 10 * P);
        let got = p.remove(12 * P, 14 * P);
        assert_eq!(
            got,
            vec![Run {
                start: 12 * P,
                end: 14 * P,
                img: 12 * P
            }]
        );
        assert_eq!(
            runs(&p),
            vec![(10 * P, 12 * P, 10 * P), (14 * P, 20 * P, 14 * P)]
        );
        assert_eq!(p.bytes(), 8 * P);
        // Removing again finds nothing; a range over both runs takes parts of each.
        assert!(p.remove(12 * P, 14 * P).is_empty());
        let got = p.remove(11 * P, 15 * P);
        assert_eq!(got.len(), 2);
        assert_eq!(p.bytes(), 6 * P);
        assert!(p.lookup(11 * P).is_none());
        assert_eq!(p.lookup(10 * P).map(|r| r.end), Some(11 * P));
        assert_eq!(p.lookup(19 * P).map(|r| r.start), Some(15 * P));
        assert!(p.lookup(20 * P).is_none());
    }

    #[test]
    fn insert_merges_only_continuations() {
        let mut p = Pending::default();
        p.insert(0, 2 * P, 0);
        p.insert(2 * P, 4 * P, 2 * P);
        assert_eq!(runs(&p), vec![(0, 4 * P, 0)]);
        // Adjacent in memory but not in the image: stays apart.
        p.insert(4 * P, 5 * P, 100 * P);
        assert_eq!(runs(&p).len(), 2);
        // Filling the gap between two continuations joins all three.
        let mut q = Pending::default();
        q.insert(0, P, 0);
        q.insert(2 * P, 3 * P, 2 * P);
        q.insert(P, 2 * P, P);
        assert_eq!(runs(&q), vec![(0, 3 * P, 0)]);
    }

    #[test]
    fn shift_moves_pending_pages_and_keeps_their_source() {
        let mut p = Pending::default();
        p.insert(0, 8 * P, 0);
        p.remove(2 * P, 3 * P); // placed already
        p.shift(P, 100 * P, 4 * P);
        assert_eq!(
            runs(&p),
            vec![
                (0, P, 0),
                (5 * P, 8 * P, 5 * P),
                (100 * P, 101 * P, P),
                (102 * P, 104 * P, 3 * P),
            ]
        );
        assert_eq!(p.bytes(), 7 * P);
        // Moving down (negative delta) works the same.
        p.shift(100 * P, 50 * P, 4 * P);
        assert_eq!(
            p.lookup(53 * P).map(|r| r.img + (53 * P - r.start)),
            Some(4 * P)
        );
        assert_eq!(p.lookup(51 * P), None);
    }

    #[test]
    fn find_img_follows_moved_runs() {
        let mut p = Pending::default();
        p.insert(0, 4 * P, 0);
        p.insert(10 * P, 12 * P, 10 * P);
        assert_eq!(p.find_img(P, 2 * P).map(|(pg, _)| pg), Some(P));
        // Image pages 10..12 moved to 50..52: found there, at its page.
        p.shift(10 * P, 50 * P, 2 * P);
        let (pg, run) = p.find_img(11 * P, 12 * P).unwrap();
        assert_eq!((pg, run.start, run.img), (51 * P, 50 * P, 10 * P));
        // A run that starts inside the asked range gives its own first page.
        assert_eq!(p.find_img(0, 20 * P).map(|(pg, _)| pg), Some(0));
        p.remove(0, 4 * P);
        assert_eq!(p.find_img(0, 4 * P), None);
    }

    #[test]
    fn pieces_keep_to_one_delta() {
        let mut p = Pending::default();
        p.insert(0, 4 * P, 0);
        p.insert(4 * P, 6 * P, 40 * P); // moved here from elsewhere
        p.insert(6 * P, 8 * P, 6 * P);
        assert_eq!(p.pieces(P, 7 * P, 0), vec![(P, 4 * P), (6 * P, 7 * P)]);
        let d = (4 * P).wrapping_sub(40 * P);
        assert_eq!(p.pieces(0, 8 * P, d), vec![(4 * P, 6 * P)]);
        assert_eq!(p.first().map(|r| r.delta()), Some(0));
    }
}
