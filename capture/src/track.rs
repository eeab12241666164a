//! Write tracking: which pages of this process's memory were written since a
//! moment, so that a persist with a parent reads and stores only those.
//!
//! A [`Tracker`] watches a set of page-aligned address ranges of **this
//! process** and answers "which pages were written since the tracker started,
//! or since the last [`Tracker::take_written`] or [`Tracker::reset`]". It uses
//! one of two methods, chosen at start and reported by [`Tracker::method`] and
//! [`TrackStats::method`]:
//!
//! - [`TrackMethod::WpAsync`]: userfaultfd write-protection in asynchronous
//!   mode (`UFFD_FEATURE_WP_ASYNC`, with `UFFD_FEATURE_WP_UNPOPULATED` so that
//!   pages never touched are protected too) and the `PAGEMAP_SCAN` ioctl on
//!   `/proc/self/pagemap` (Linux 6.7 and later). The kernel clears a page's
//!   protection on its first write; one `PAGEMAP_SCAN` with
//!   `PM_SCAN_WP_MATCHING` returns the written pages and protects them again,
//!   atomically for each page, so no write is lost between two takes. Finding
//!   the written pages walks page tables and reads no memory.
//! - [`TrackMethod::Checksums`], the fallback where the kernel lacks either
//!   (no userfaultfd, no `WP_ASYNC`, `ENOTTY` or `EINVAL` from
//!   `PAGEMAP_SCAN`, or a range userfaultfd refuses): an XXH3-128 checksum of
//!   every piece of [`TrackOptions::piece_size`] bytes (the chunk size, 512 KiB
//!   by default), taken at the last take; a piece whose checksum changed is
//!   reported whole. It is coarser (a piece, not a page) and reads all the
//!   tracked memory at every take. It can be forced with
//!   [`TrackOptions::force`].
//!
//! # What tracking costs
//!
//! With `WpAsync`, the first write to each page after each arming (start,
//! take, reset) takes a write-protect fault that the kernel resolves itself:
//! no signal, no handler thread, no message to read; the program sees a
//! slower first write (a minor fault, about a microsecond) and nothing else.
//! Later writes to the same page run at full speed until the next take.
//! Arming a range allocates its page tables (about 2 MiB per GiB tracked,
//! also for pages never touched, which get protection markers). A take walks
//! the page tables of the tracked ranges: its cost follows the tracked size
//! and the number of written runs, not the bytes written. With `Checksums`,
//! writes cost nothing and every take reads and hashes all tracked memory.
//!
//! # Limits
//!
//! - Only this process: a tracker sees writes by any thread of this process,
//!   and writes the kernel makes on its behalf (`read(2)` into a tracked
//!   buffer), but not a child's after `fork` (the child's copy is not
//!   registered).
//! - Only the ranges given at start. Memory the program maps later is not
//!   tracked until it is registered with a new tracker.
//! - A range the program unmaps is an error at the next take
//!   ([`TrackError::Unmapped`]), and one unmapped and mapped again a
//!   [`TrackError::Replaced`] (`WpAsync`; the checksum method sees only
//!   content). Neither crashes.
//! - Pages freed with `MADV_DONTNEED` (or dropped by the kernel in any other
//!   way) read as zero afterwards: both methods report them as written when
//!   their content changed (`WpAsync` reports every dropped page, since the
//!   kernel cannot say what it held).
//! - Huge pages: a transparent huge page is protected as one entry; the
//!   first write to it makes the kernel split its mapping into small pages,
//!   so only the written small page is reported. A huge page dropped whole
//!   (`MADV_DONTNEED` of 2 MiB) is reported whole. hugetlbfs pages are
//!   reported at their own size.
//! - A write of the same bytes is a write for `WpAsync` (a zero written over
//!   zero is reported); the checksum method sees content, so it reports only
//!   pieces whose bytes changed.
//! - A page whose write is in flight during a take (the store faulted, the
//!   kernel resolved the fault, the store has not run again yet) can be
//!   reported by that take and by the next one: the take re-arms it, and the
//!   store then writes it after the take. Reporting it twice is right; no
//!   write is ever reported only before it happened.
//! - [`Tracker::written`] followed by [`Tracker::reset`] loses the writes
//!   made between the two calls; [`Tracker::take_written`] does both at once
//!   and loses nothing.

use std::ops::Range;
use std::time::{Duration, Instant};

mod plan;
mod sums;
mod wp;

pub(crate) use plan::{build_plan, coalesce};
pub use plan::{ChildSink, ChildStats, IncrementalPlan, RegionPlan, Run};
pub(crate) use wp::marker_entry;

/// How a tracker finds written pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TrackMethod {
    /// userfaultfd asynchronous write-protection and `PAGEMAP_SCAN`: exact
    /// to the page, reads no memory.
    WpAsync,
    /// XXH3-128 checksums of fixed pieces, compared with those of the last
    /// take: exact to the piece, reads all tracked memory.
    Checksums,
}

impl std::fmt::Display for TrackMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TrackMethod::WpAsync => "wp-async",
            TrackMethod::Checksums => "checksums",
        })
    }
}

/// How to track.
#[derive(Debug, Clone)]
pub struct TrackOptions {
    /// Use this method or fail, instead of the best one available. Forcing
    /// [`TrackMethod::WpAsync`] where the kernel lacks it is
    /// [`TrackError::Unavailable`]; forcing [`TrackMethod::Checksums`] always
    /// works. By default none: `WpAsync` where the kernel has it, checksums
    /// otherwise.
    pub force: Option<TrackMethod>,
    /// The size of the pieces the checksum method compares, a multiple of
    /// the page size. By default [`memimg::DEFAULT_CHUNK_SIZE`] (512 KiB), so
    /// a changed piece is one chunk of the image.
    pub piece_size: u64,
    /// How many written runs one `PAGEMAP_SCAN` call returns before the
    /// tracker calls again from where it stopped (each run costs 24 bytes).
    /// By default 4096.
    pub scan_buffer: usize,
}

impl Default for TrackOptions {
    fn default() -> Self {
        TrackOptions {
            force: None,
            piece_size: u64::from(memimg::DEFAULT_CHUNK_SIZE),
            scan_buffer: 4096,
        }
    }
}

/// Why tracking failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrackError {
    /// A range is not whole pages on page boundaries, or ranges overlap.
    #[error("range {:#x}-{:#x}: {why}", range.start, range.end)]
    BadRange {
        /// The range.
        range: Range<u64>,
        /// What is wrong.
        why: &'static str,
    },
    /// An option is out of range.
    #[error("bad tracking option: {0}")]
    BadOption(&'static str),
    /// A tracked range, or part of it, is no longer mapped.
    #[error("tracked range {:#x}-{:#x} is no longer mapped: the program unmapped it", range.start, range.end)]
    Unmapped {
        /// The tracked range.
        range: Range<u64>,
    },
    /// A tracked range was unmapped and something else mapped in its place,
    /// whose writes are not tracked.
    #[error("tracked range {:#x}-{:#x} was replaced by a new mapping: writes to it are no longer tracked", range.start, range.end)]
    Replaced {
        /// The tracked range.
        range: Range<u64>,
    },
    /// [`TrackMethod::WpAsync`] was forced and the kernel cannot do it.
    #[error("write-protection tracking is not available: {0}")]
    Unavailable(String),
    /// A system call failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// What a tracker has done so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackStats {
    /// The method in use.
    pub method: TrackMethod,
    /// Why the tracker fell back to checksums, when it did without being
    /// forced to.
    pub fallback_reason: Option<String>,
    /// Ranges tracked.
    pub ranges: usize,
    /// Bytes tracked.
    pub bytes: u64,
    /// Scans so far ([`Tracker::written`], [`Tracker::take_written`] and
    /// [`Tracker::reset`] calls).
    pub scans: u64,
    /// How long the last scan took.
    pub last_scan: Duration,
    /// Bytes reported written by the last scan.
    pub last_written_bytes: u64,
    /// Bytes of memory the last scan read: none with `WpAsync`, all tracked
    /// bytes with `Checksums`.
    pub last_read_bytes: u64,
}

enum Backend {
    Wp(wp::Wp),
    Sums(sums::Sums),
}

/// Tracks writes to ranges of this process's memory; see the module docs.
///
/// ```no_run
/// use memimg_capture::track::{Tracker, TrackOptions};
/// # let (start, len) = (0x7f00_0000_0000u64, 1u64 << 30);
/// let mut t = Tracker::start(&[start..start + len], &TrackOptions::default())?;
/// // … the program writes …
/// for r in t.take_written()? {
///     println!("written: {:#x}-{:#x}", r.start, r.end);
/// }
/// # Ok::<(), memimg_capture::track::TrackError>(())
/// ```
///
/// Dropping the tracker closes its userfaultfd, which unregisters the ranges
/// and removes their write protection.
pub struct Tracker {
    ranges: Vec<Range<u64>>,
    backend: Backend,
    fallback_reason: Option<String>,
    scans: u64,
    last_scan: Duration,
    last_written: u64,
    last_read: u64,
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker")
            .field("method", &self.method())
            .field("ranges", &self.ranges)
            .finish_non_exhaustive()
    }
}

/// The page size of this machine, in bytes.
fn page_size() -> u64 {
    u64::from(memimg::page_size())
}

/// Fails with [`TrackError::Unmapped`] unless every byte of `r` is mapped.
/// `msync(MS_ASYNC)` does nothing on any kernel since 2.6.19 except report
/// `ENOMEM` for unmapped pages, and costs one walk of the VMAs.
fn check_mapped(r: &Range<u64>) -> Result<(), TrackError> {
    let len =
        usize::try_from(r.end - r.start).map_err(|_| TrackError::Unmapped { range: r.clone() })?;
    // SAFETY: msync with MS_ASYNC only inspects the mappings of the range;
    // it neither reads nor changes memory.
    let rc = unsafe { libc::msync(crate::ptr_of(r.start), len, libc::MS_ASYNC) };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENOMEM) {
        Err(TrackError::Unmapped { range: r.clone() })
    } else {
        Err(TrackError::Io {
            context: format!("checking that {:#x}-{:#x} is mapped", r.start, r.end),
            source: e,
        })
    }
}

impl Tracker {
    /// Starts tracking writes to `ranges` of this process's memory. Each
    /// must be whole pages on page boundaries and mapped; they must not
    /// overlap. Writes from now on are reported.
    ///
    /// # Errors
    /// [`TrackError::BadRange`], [`TrackError::Unmapped`],
    /// [`TrackError::Unavailable`] when `WpAsync` was forced and is not
    /// available, [`TrackError::Io`] when reading memory for checksums
    /// fails.
    pub fn start(ranges: &[Range<u64>], opts: &TrackOptions) -> Result<Tracker, TrackError> {
        let ps = page_size();
        if opts.piece_size == 0 || !opts.piece_size.is_multiple_of(ps) {
            return Err(TrackError::BadOption(
                "piece_size must be a non-zero multiple of the page size",
            ));
        }
        if opts.scan_buffer == 0 {
            return Err(TrackError::BadOption("scan_buffer must be at least 1"));
        }
        let mut sorted: Vec<Range<u64>> = ranges.to_vec();
        sorted.sort_by_key(|r| r.start);
        let mut prev_end = 0;
        for r in &sorted {
            let bad = |why| TrackError::BadRange {
                range: r.clone(),
                why,
            };
            if !r.start.is_multiple_of(ps) || !r.end.is_multiple_of(ps) || r.end <= r.start {
                return Err(bad("not whole pages on page boundaries"));
            }
            if r.start < prev_end {
                return Err(bad("overlaps another range"));
            }
            prev_end = r.end;
            check_mapped(r)?;
        }
        let mut fallback_reason = None;
        let backend = match opts.force {
            Some(TrackMethod::Checksums) => None,
            Some(TrackMethod::WpAsync) => {
                Some(wp::Wp::start(&sorted, opts.scan_buffer)?.map_err(TrackError::Unavailable)?)
            }
            None => match wp::Wp::start(&sorted, opts.scan_buffer)? {
                Ok(w) => Some(w),
                Err(why) => {
                    fallback_reason = Some(why);
                    None
                }
            },
        };
        let backend = match backend {
            Some(w) => Backend::Wp(w),
            None => Backend::Sums(sums::Sums::start(&sorted, opts.piece_size)?),
        };
        Ok(Tracker {
            ranges: sorted,
            backend,
            fallback_reason,
            scans: 0,
            last_scan: Duration::ZERO,
            last_written: 0,
            last_read: 0,
        })
    }

    /// The method in use.
    pub fn method(&self) -> TrackMethod {
        match self.backend {
            Backend::Wp(_) => TrackMethod::WpAsync,
            Backend::Sums(_) => TrackMethod::Checksums,
        }
    }

    /// Why the tracker fell back to checksums without being forced to, if
    /// it did.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
    }

    /// The tracked ranges, sorted.
    pub fn ranges(&self) -> &[Range<u64>] {
        &self.ranges
    }

    /// What the tracker has done so far.
    pub fn stats(&self) -> TrackStats {
        TrackStats {
            method: self.method(),
            fallback_reason: self.fallback_reason.clone(),
            ranges: self.ranges.len(),
            bytes: self.ranges.iter().map(|r| r.end - r.start).sum(),
            scans: self.scans,
            last_scan: self.last_scan,
            last_written_bytes: self.last_written,
            last_read_bytes: self.last_read,
        }
    }

    /// The ranges written since the start or the last take or reset, sorted
    /// and coalesced, without re-arming: a later take reports them again.
    /// Whole pages with `WpAsync`, whole pieces with `Checksums`.
    ///
    /// # Errors
    /// [`TrackError::Unmapped`] or [`TrackError::Replaced`] for a range the
    /// program unmapped; [`TrackError::Io`] when a scan fails.
    pub fn written(&mut self) -> Result<Vec<Range<u64>>, TrackError> {
        self.scan(false, true)
    }

    /// The ranges written since the start or the last take or reset, like
    /// [`Tracker::written`], and re-arms in the same step: each page is
    /// reported and protected again atomically, so a write made during the
    /// call is reported now or by the next take, never lost.
    ///
    /// # Errors
    /// As [`Tracker::written`]. After an error the written state of the
    /// ranges scanned before it was reset; the tracker should not be trusted
    /// to cover the interval any more.
    pub fn take_written(&mut self) -> Result<Vec<Range<u64>>, TrackError> {
        self.scan(true, true)
    }

    /// Forgets the writes so far and re-arms: the next scan reports writes
    /// from now on. Writes made between an earlier [`Tracker::written`] and
    /// this call are lost; use [`Tracker::take_written`] to avoid that.
    ///
    /// # Errors
    /// As [`Tracker::written`].
    pub fn reset(&mut self) -> Result<(), TrackError> {
        self.scan(true, false).map(|_| ())
    }

    fn scan(&mut self, rearm: bool, report: bool) -> Result<Vec<Range<u64>>, TrackError> {
        let t0 = Instant::now();
        for r in &self.ranges {
            check_mapped(r)?;
        }
        let (mut out, read) = match &mut self.backend {
            Backend::Wp(w) => (w.scan(&self.ranges, rearm)?, 0),
            Backend::Sums(s) => (
                s.scan(&self.ranges, rearm)?,
                self.ranges.iter().map(|r| r.end - r.start).sum(),
            ),
        };
        coalesce(&mut out);
        if !report {
            out.clear();
        }
        self.scans += 1;
        self.last_scan = t0.elapsed();
        self.last_written = out.iter().map(|r| r.end - r.start).sum();
        self.last_read = read;
        Ok(out)
    }
}
