//! The plan of a persist with a parent, and what it needs from the writer.
//!
//! A persist with a parent (an incremental persist) stores, for each region,
//! the pages written since the parent was persisted and records the rest as
//! the parent's pages at the same addresses. [`IncrementalPlan`] says which
//! is which; [`ChildSink`] is the interface it needs from the image writer:
//! memimg's `Writer` calls plus `push_in_parent`, format 1.1's "in parent"
//! extent. The format's child writer implements it when format 1.1 lands.

use std::ops::Range;

use memimg::RegionInfo;

use super::TrackMethod;

/// Sorts `v` and merges ranges that overlap or touch.
pub(crate) fn coalesce(v: &mut Vec<Range<u64>>) {
    v.retain(|r| r.end > r.start);
    v.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(v.len());
    for r in v.drain(..) {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    *v = out;
}

/// A run of pages of a region in a persist with a parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Run {
    /// Written since the parent: read and stored in the child.
    Written(Range<u64>),
    /// Not written since the parent: the child records it as the parent's
    /// pages, without reading it.
    Unchanged(Range<u64>),
}

impl Run {
    /// The addresses the run covers.
    pub fn range(&self) -> &Range<u64> {
        match self {
            Run::Written(r) | Run::Unchanged(r) => r,
        }
    }

    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        let r = self.range();
        r.end - r.start
    }

    /// Whether it covers no byte (never in a plan).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One region of a plan: its runs tile it in address order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionPlan {
    /// The region as the child records it.
    pub info: RegionInfo,
    /// Whether its writes were tracked. A region added to the persister
    /// after tracking started is not, and is one `Written` run.
    pub tracked: bool,
    /// Its runs, in address order, covering it exactly.
    pub runs: Vec<Run>,
}

/// What a persist with a parent stores: for each region, the runs written
/// since the parent and the runs left to the parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncrementalPlan {
    /// The image id of the parent the child is relative to.
    pub parent: [u8; 16],
    /// How the written runs were found.
    pub method: TrackMethod,
    /// The regions, in address order.
    pub regions: Vec<RegionPlan>,
    /// The tracker take this plan includes, to forget what it covers once
    /// the child is written.
    pub(crate) take: u64,
}

impl IncrementalPlan {
    /// Bytes in `Written` runs.
    pub fn written_bytes(&self) -> u64 {
        self.runs()
            .filter(|r| matches!(r, Run::Written(_)))
            .map(Run::len)
            .sum()
    }

    /// Bytes in `Unchanged` runs.
    pub fn unchanged_bytes(&self) -> u64 {
        self.runs()
            .filter(|r| matches!(r, Run::Unchanged(_)))
            .map(Run::len)
            .sum()
    }

    /// The `Written` runs of every region, in address order.
    pub fn written(&self) -> Vec<Range<u64>> {
        self.runs()
            .filter_map(|r| match r {
                Run::Written(r) => Some(r.clone()),
                Run::Unchanged(_) => None,
            })
            .collect()
    }

    fn runs(&self) -> impl Iterator<Item = &Run> {
        self.regions.iter().flat_map(|r| r.runs.iter())
    }
}

/// The runs of each region: a region inside a tracked range is split by
/// `written` (sorted, coalesced); any other region is written whole.
pub(crate) fn build_plan(
    regions: &[RegionInfo],
    tracked: &[Range<u64>],
    written: &[Range<u64>],
) -> Vec<RegionPlan> {
    regions
        .iter()
        .map(|info| {
            let (start, end) = (info.start, info.end());
            let is_tracked = tracked.iter().any(|t| t.start <= start && end <= t.end);
            let mut runs = Vec::new();
            if is_tracked {
                let mut at = start;
                let first = written.partition_point(|w| w.end <= start);
                for w in written[first..].iter().take_while(|w| w.start < end) {
                    let (a, b) = (w.start.max(start), w.end.min(end));
                    if a > at {
                        runs.push(Run::Unchanged(at..a));
                    }
                    runs.push(Run::Written(a..b));
                    at = b;
                }
                if at < end {
                    runs.push(Run::Unchanged(at..end));
                }
            } else {
                runs.push(Run::Written(start..end));
            }
            RegionPlan {
                info: info.clone(),
                tracked: is_tracked,
                runs,
            }
        })
        .collect()
}

/// What a persist with a parent needs from the image writer: the calls of
/// [`memimg::Writer`] (`begin_region`, `push_data`, `push_zero`,
/// `end_region`, in that order for each region) plus `push_in_parent`, which
/// records the next `len` bytes of the region as the parent's pages at the
/// same addresses (format 1.1's "in parent" extent kind).
///
/// The format's child writer implements it once format 1.1 exists; the
/// persister drives it with [`crate::Persister::write_child`].
pub trait ChildSink {
    /// Starts a region.
    ///
    /// # Errors
    /// The writer's.
    fn begin_region(&mut self, info: RegionInfo) -> Result<(), memimg::Error>;
    /// Appends bytes read from memory (whole pages).
    ///
    /// # Errors
    /// The writer's.
    fn push_data(&mut self, data: &[u8]) -> Result<(), memimg::Error>;
    /// Appends `len` bytes of zero pages.
    ///
    /// # Errors
    /// The writer's.
    fn push_zero(&mut self, len: u64) -> Result<(), memimg::Error>;
    /// Appends `len` bytes that are the parent's pages at the same addresses.
    ///
    /// # Errors
    /// The writer's.
    fn push_in_parent(&mut self, len: u64) -> Result<(), memimg::Error>;
    /// Ends the region.
    ///
    /// # Errors
    /// The writer's.
    fn end_region(&mut self) -> Result<(), memimg::Error>;
}

/// What [`crate::Persister::write_child`] gave its sink.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChildStats {
    /// Regions written.
    pub regions: u64,
    /// Bytes of `Written` runs.
    pub written_bytes: u64,
    /// Of those, bytes read from memory and pushed as data.
    pub data_bytes: u64,
    /// Of those, bytes of pages never touched, pushed as zero without being
    /// read.
    pub zero_bytes: u64,
    /// Bytes recorded as the parent's pages.
    pub in_parent_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesce_merges_touching_and_overlapping() {
        let mut v = vec![8..12, 0..4, 4..6, 10..16, 20..20, 30..31];
        coalesce(&mut v);
        assert_eq!(v, vec![0..6, 8..16, 30..31]);
    }

    #[test]
    fn plan_tiles_each_region() {
        let regions = [
            RegionInfo::new(0x1000, 0x4000),
            RegionInfo::new(0x8000, 0x2000),
            RegionInfo::new(0x10000, 0x1000),
        ];
        let tracked = [0x1000..0x5000, 0x8000..0xa000];
        let written = [0x0..0x2000, 0x3000..0x4000, 0x9000..0xc000];
        let p = build_plan(&regions, &tracked, &written);
        assert_eq!(
            p[0].runs,
            vec![
                Run::Written(0x1000..0x2000),
                Run::Unchanged(0x2000..0x3000),
                Run::Written(0x3000..0x4000),
                Run::Unchanged(0x4000..0x5000),
            ]
        );
        assert_eq!(
            p[1].runs,
            vec![Run::Unchanged(0x8000..0x9000), Run::Written(0x9000..0xa000)]
        );
        // Not tracked: written whole.
        assert!(!p[2].tracked);
        assert_eq!(p[2].runs, vec![Run::Written(0x10000..0x11000)]);
    }
}
