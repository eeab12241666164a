//! Write tracking (`memimg_capture::track`) and the persist path that uses
//! it (`Persister::track`, `plan_since`, `write_child`).
//!
//! Every workload runs through both methods where it makes sense: `WpAsync`
//! (userfaultfd write-protection + `PAGEMAP_SCAN`; skipped, per the skip
//! protocol, where the kernel lacks it) and the checksum fallback, forced.
//!
//! The 1% workload tracks `MEMIMG_TRACK_TEST_MIB` MiB (1024 by default).

use std::collections::BTreeSet;
use std::io::Write;
use std::ops::Range;

use memimg::{Image, RegionInfo, RegionKind, Writer, WriterOptions};
use memimg_capture::track::{ChildSink, IncrementalPlan, Run};
use memimg_capture::{
    PersistError, PersistOptions, Persister, TrackError, TrackMethod, TrackOptions, Tracker,
};

const PS: usize = 4096;
const MIB: usize = 1 << 20;
const HUGE: usize = 2 << 20;

/// The skip protocol (see inspect/tests/support/skip.rs): a test that cannot
/// run here records why and returns; under `MEMIMG_REQUIRE_ALL` it fails.
fn skip(test: &str, why: &str) {
    let why = why.replace(['\n', '\t'], " ");
    if std::env::var_os("MEMIMG_REQUIRE_ALL").is_some_and(|v| !v.is_empty()) {
        panic!("would skip: {why}");
    }
    if let Some(log) = std::env::var_os("MEMIMG_SKIP_LOG").filter(|v| !v.is_empty()) {
        let line = format!("{test}\t{why}\n");
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            panic!("cannot record the skip of {test} in MEMIMG_SKIP_LOG: {e}");
        }
    }
    eprintln!("skipped: {why}");
}

/// Anonymous memory aligned to 2 MiB, unmapped on drop.
struct Mem {
    raw: *mut u8,
    raw_len: usize,
    base: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory; tests share it between threads only
// through volatile byte writes and reads.
unsafe impl Send for Mem {}
// SAFETY: as above.
unsafe impl Sync for Mem {}

impl Mem {
    fn new(len: usize) -> Mem {
        let raw_len = len + HUGE;
        // SAFETY: a fresh anonymous mapping; no existing memory is touched.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                raw_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(raw, libc::MAP_FAILED);
        let raw = raw.cast::<u8>();
        let base = (raw as usize).next_multiple_of(HUGE) as *mut u8;
        Mem {
            raw,
            raw_len,
            base,
            len,
        }
    }

    fn addr(&self) -> u64 {
        self.base as u64
    }

    fn range(&self) -> Range<u64> {
        self.addr()..self.addr() + self.len as u64
    }

    fn pages(&self) -> usize {
        self.len / PS
    }

    fn write(&self, page: usize, off: usize, v: u8) {
        assert!(page * PS + off < self.len);
        // SAFETY: inside our mapping.
        unsafe { std::ptr::write_volatile(self.base.add(page * PS + off), v) }
    }

    fn read(&self, page: usize, off: usize) -> u8 {
        assert!(page * PS + off < self.len);
        // SAFETY: inside our mapping.
        unsafe { std::ptr::read_volatile(self.base.add(page * PS + off)) }
    }

    /// Gives each page of `pages` a non-zero first byte that differs from
    /// its neighbours'.
    fn populate(&self, pages: Range<usize>) {
        for p in pages {
            self.write(p, 0, (p % 251 + 1) as u8);
        }
    }

    /// A new value for a byte: different from what it holds.
    fn bump(&self, page: usize, off: usize) {
        self.write(page, off, self.read(page, off).wrapping_add(1));
    }

    fn madvise(&self, pages: Range<usize>, advice: libc::c_int) {
        // SAFETY: a range of our own mapping.
        let rc = unsafe {
            libc::madvise(
                self.base.add(pages.start * PS).cast(),
                (pages.end - pages.start) * PS,
                advice,
            )
        };
        assert_eq!(rc, 0, "madvise: {}", std::io::Error::last_os_error());
    }

    fn munmap(&self, pages: Range<usize>) {
        // SAFETY: a range of our own mapping; nothing refers to it after.
        let rc = unsafe {
            libc::munmap(
                self.base.add(pages.start * PS).cast(),
                (pages.end - pages.start) * PS,
            )
        };
        assert_eq!(rc, 0);
    }

    fn remap(&self, pages: Range<usize>) {
        // SAFETY: replaces a range of our own mapping with fresh memory.
        let p = unsafe {
            libc::mmap(
                self.base.add(pages.start * PS).cast(),
                (pages.end - pages.start) * PS,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
    }
}

impl Drop for Mem {
    fn drop(&mut self) {
        // SAFETY: our own mapping (parts already unmapped are ignored).
        unsafe { libc::munmap(self.raw.cast(), self.raw_len) };
    }
}

fn test_mib() -> usize {
    std::env::var("MEMIMG_TRACK_TEST_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

/// `count` distinct pages of `0..pages`, scattered by xorshift from `seed`.
fn scattered(pages: usize, count: usize, seed: u64) -> Vec<usize> {
    let mut seen = vec![false; pages];
    let mut out = Vec::with_capacity(count);
    let mut x = seed | 1;
    while out.len() < count {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let p = (x % pages as u64) as usize;
        if !seen[p] {
            seen[p] = true;
            out.push(p);
        }
    }
    out.sort_unstable();
    out
}

/// The pages (indices from `mem`'s start) that `ranges` cover.
fn pages_in(mem: &Mem, ranges: &[Range<u64>]) -> BTreeSet<usize> {
    let mut s = BTreeSet::new();
    for r in ranges {
        assert!(
            r.start >= mem.addr() && r.end <= mem.range().end,
            "{r:x?} outside {:x?}",
            mem.range()
        );
        assert_eq!(r.start % PS as u64, 0, "{r:x?} not page-aligned");
        assert_eq!(r.end % PS as u64, 0, "{r:x?} not page-aligned");
        let a = ((r.start - mem.addr()) / PS as u64) as usize;
        let b = ((r.end - mem.addr()) / PS as u64) as usize;
        s.extend(a..b);
    }
    s
}

/// Asserts that `got` covers exactly `want`, saying what differs.
#[track_caller]
fn assert_pages(what: &str, mem: &Mem, got: &[Range<u64>], want: impl IntoIterator<Item = usize>) {
    let got = pages_in(mem, got);
    let want: BTreeSet<usize> = want.into_iter().collect();
    if got != want {
        let missing: Vec<_> = want.difference(&got).take(10).collect();
        let extra: Vec<_> = got.difference(&want).take(10).collect();
        panic!(
            "{what}: {} pages reported, {} expected; missing {} (first {missing:?}), extra {} (first {extra:?})",
            got.len(),
            want.len(),
            want.difference(&got).count(),
            got.difference(&want).count(),
        );
    }
}

/// The checksum method's answer for written `pages`: every page of every
/// piece that holds one.
fn piece_pages(mem: &Mem, pages: impl IntoIterator<Item = usize>, piece: usize) -> BTreeSet<usize> {
    let per = piece / PS;
    let mut s = BTreeSet::new();
    for p in pages {
        let first = p / per * per;
        s.extend(first..(first + per).min(mem.pages()));
    }
    s
}

fn options(method: TrackMethod) -> TrackOptions {
    TrackOptions {
        force: Some(method),
        ..TrackOptions::default()
    }
}

/// Starts a tracker with `method` forced; `None` (a recorded skip) when the
/// kernel cannot track with write-protection here.
fn start(test: &str, ranges: &[Range<u64>], method: TrackMethod) -> Option<Tracker> {
    start_with(test, ranges, &options(method))
}

fn start_with(test: &str, ranges: &[Range<u64>], opts: &TrackOptions) -> Option<Tracker> {
    match Tracker::start(ranges, opts) {
        Ok(t) => {
            assert_eq!(Some(t.method()), opts.force);
            Some(t)
        }
        Err(TrackError::Unavailable(why)) => {
            skip(test, &why);
            None
        }
        Err(e) => panic!("{test}: {e}"),
    }
}

const BOTH: [TrackMethod; 2] = [TrackMethod::WpAsync, TrackMethod::Checksums];
const PIECE: usize = memimg::DEFAULT_CHUNK_SIZE as usize;

/// The 1% workload: a region half populated, half never touched; 1% of its
/// pages, scattered over both halves, get one byte changed.
fn one_percent(method: TrackMethod) {
    let test = format!("track::one_percent_{method}");
    let mem = Mem::new(test_mib() * MIB);
    let pages = mem.pages();
    mem.populate(0..pages / 2);
    let Some(mut t) = start(&test, &[mem.range()], method) else {
        return;
    };
    assert_pages("nothing written yet", &mem, &t.take_written().unwrap(), []);
    let written = scattered(pages, pages / 100, 0x5eed);
    for &p in &written {
        mem.bump(p, (p * 7) % PS);
    }
    let got = t.take_written().unwrap();
    let stats = t.stats();
    match method {
        TrackMethod::WpAsync => {
            assert_pages("1% written", &mem, &got, written.iter().copied());
            assert_eq!(stats.last_read_bytes, 0, "WpAsync reads no memory");
        }
        _ => {
            assert_pages(
                "1% written",
                &mem,
                &got,
                piece_pages(&mem, written.iter().copied(), PIECE),
            );
            assert_eq!(stats.last_read_bytes, mem.len as u64);
        }
    }
    assert_eq!(stats.method, method);
    eprintln!(
        "{test}: {} MiB, {} pages written, {} reported in {} runs, scan {:?}",
        mem.len / MIB,
        written.len(),
        pages_in(&mem, &got).len(),
        got.len(),
        stats.last_scan
    );
    assert_pages("after the take", &mem, &t.take_written().unwrap(), []);
}

#[test]
fn one_percent_wp_async_exact_pages() {
    one_percent(TrackMethod::WpAsync);
}

#[test]
fn one_percent_checksums_exact_pieces() {
    one_percent(TrackMethod::Checksums);
}

#[test]
fn writes_between_takes_go_to_the_next_take() {
    for method in BOTH {
        let test = format!("track::writes_between_takes_{method}");
        let mem = Mem::new(8 * MIB);
        mem.populate(0..mem.pages());
        let Some(mut t) = start(&test, &[mem.range()], method) else {
            continue;
        };
        let expect = |pages: &[usize]| match method {
            TrackMethod::WpAsync => pages.iter().copied().collect::<BTreeSet<_>>(),
            _ => piece_pages(&mem, pages.iter().copied(), PIECE),
        };
        let a = [3, 200, 1500];
        let b = [200, 201, 1800];
        for &p in &a {
            mem.bump(p, 1);
        }
        assert_pages("take 1", &mem, &t.take_written().unwrap(), expect(&a));
        for &p in &b {
            mem.bump(p, 2);
        }
        assert_pages("take 2", &mem, &t.take_written().unwrap(), expect(&b));
        assert_pages("take 3", &mem, &t.take_written().unwrap(), []);
        // `written` does not re-arm: it reports the same until a take.
        let c = [700];
        mem.bump(700, 3);
        assert_pages("peek 1", &mem, &t.written().unwrap(), expect(&c));
        assert_pages("peek 2", &mem, &t.written().unwrap(), expect(&c));
        assert_pages("take 4", &mem, &t.take_written().unwrap(), expect(&c));
        // `reset` forgets.
        mem.bump(900, 3);
        t.reset().unwrap();
        assert_pages("after reset", &mem, &t.take_written().unwrap(), []);
    }
}

#[test]
fn page_written_by_another_thread() {
    for method in BOTH {
        let test = format!("track::another_thread_{method}");
        let mem = Mem::new(4 * MIB);
        mem.populate(0..mem.pages());
        let Some(mut t) = start(&test, &[mem.range()], method) else {
            continue;
        };
        std::thread::scope(|s| {
            s.spawn(|| mem.bump(321, 5));
        });
        let want = match method {
            TrackMethod::WpAsync => BTreeSet::from([321]),
            _ => piece_pages(&mem, [321], PIECE),
        };
        assert_pages("thread's write", &mem, &t.take_written().unwrap(), want);
    }
}

/// A thread writes pages one after another while this one takes again and
/// again. No write is lost (every page is in some take), none is invented (a
/// take never reports a page whose write had not begun when it returned),
/// and a page is reported twice only when its write was in flight during a
/// take: the store faults, the take re-arms the page, the store runs again
/// and faults again, so the page really is written after that take.
#[test]
fn concurrent_writes_are_never_lost() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    let test = "track::concurrent_writes_are_never_lost";
    let mem = Mem::new(16 * MIB);
    mem.populate(0..mem.pages());
    let Some(mut t) = start(test, &[mem.range()], TrackMethod::WpAsync) else {
        return;
    };
    let pages = scattered(mem.pages(), 2000, 0xc0ffee);
    let order: std::collections::HashMap<usize, usize> =
        pages.iter().enumerate().map(|(i, &p)| (p, i)).collect();
    // Writes begun so far.
    let begun = AtomicUsize::new(0);
    let mut takes: Vec<BTreeSet<usize>> = Vec::new();
    let mut check = |got: BTreeSet<usize>, begun_now: usize| {
        for p in &got {
            let i = order
                .get(p)
                .unwrap_or_else(|| panic!("page {p} was never written"));
            assert!(
                *i < begun_now,
                "page {p} (write {i}) reported before its write began ({begun_now})"
            );
        }
        takes.push(got);
    };
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            for &p in &pages {
                begun.fetch_add(1, SeqCst);
                mem.bump(p, 9);
                // Spread the writes over some milliseconds, so that takes
                // fall between them.
                for _ in 0..5000 {
                    std::hint::spin_loop();
                }
            }
        });
        while !writer.is_finished() {
            let got = pages_in(&mem, &t.take_written().unwrap());
            check(got, begun.load(SeqCst));
        }
    });
    check(pages_in(&mem, &t.take_written().unwrap()), pages.len());
    let union: BTreeSet<usize> = takes.iter().flatten().copied().collect();
    assert_eq!(
        union,
        pages.iter().copied().collect::<BTreeSet<_>>(),
        "a write was lost"
    );
    let reports: usize = takes.iter().map(BTreeSet::len).sum();
    assert!(
        reports - pages.len() < takes.len(),
        "{} pages reported twice in {} takes",
        reports - pages.len(),
        takes.len()
    );
    eprintln!(
        "{test}: {} takes, {} pages reported twice",
        takes.len(),
        reports - pages.len()
    );
}

/// A zero written over zero is a write for `WpAsync`; the checksum method
/// compares content, so it reports nothing.
#[test]
fn zero_over_zero() {
    for method in BOTH {
        let test = format!("track::zero_over_zero_{method}");
        let mem = Mem::new(4 * MIB);
        // Page 10 holds zeros and is populated; page 700 was never touched.
        mem.write(10, 0, 0);
        let Some(mut t) = start(&test, &[mem.range()], method) else {
            continue;
        };
        mem.write(10, 100, 0);
        mem.write(700, 100, 0);
        let got = t.take_written().unwrap();
        match method {
            TrackMethod::WpAsync => assert_pages("zero over zero", &mem, &got, [10, 700]),
            _ => assert_pages("zero over zero", &mem, &got, []),
        }
    }
}

/// Pages dropped with `MADV_DONTNEED` read as zero: they changed, and are
/// reported; touched again, a write is reported and a read is not.
#[test]
fn dontneed_and_retouch() {
    for method in BOTH {
        let test = format!("track::dontneed_{method}");
        let mem = Mem::new(8 * MIB);
        mem.populate(0..mem.pages());
        let Some(mut t) = start(&test, &[mem.range()], method) else {
            continue;
        };
        // A few pages inside a page table, and a whole 2 MiB-aligned block
        // (its page table may be freed).
        let few = 10..13;
        let block = 1024..1536;
        mem.madvise(few.clone(), libc::MADV_DONTNEED);
        mem.madvise(block.clone(), libc::MADV_DONTNEED);
        assert_eq!(mem.read(11, 0), 0);
        let dropped = few.clone().chain(block.clone());
        let got = t.take_written().unwrap();
        match method {
            TrackMethod::WpAsync => assert_pages("dropped", &mem, &got, dropped),
            _ => assert_pages("dropped", &mem, &got, piece_pages(&mem, dropped, PIECE)),
        }
        assert_pages("after the take", &mem, &t.take_written().unwrap(), []);
        // Touched again: page 1100 written, page 1200 only read.
        mem.write(1100, 0, 42);
        assert_eq!(mem.read(1200, 0), 0);
        let got = t.take_written().unwrap();
        match method {
            TrackMethod::WpAsync => assert_pages("re-touched", &mem, &got, [1100]),
            _ => assert_pages("re-touched", &mem, &got, piece_pages(&mem, [1100], PIECE)),
        }
    }
}

#[test]
fn unmapped_range_is_an_error_not_a_crash() {
    for method in BOTH {
        let test = format!("track::unmapped_{method}");
        let mem = Mem::new(8 * MIB);
        mem.populate(0..mem.pages());
        let other = Mem::new(4 * MIB);
        let Some(mut t) = start(&test, &[mem.range(), other.range()], method) else {
            continue;
        };
        mem.munmap(256..512);
        for r in [t.written(), t.take_written()] {
            match r {
                Err(TrackError::Unmapped { range }) => assert_eq!(range, mem.range()),
                other => panic!("{test}: {other:?}"),
            }
        }
        // Mapped again by the program: WpAsync knows it is not tracked any
        // more; the checksum method sees its new content (zeros).
        mem.remap(256..512);
        let r = t.take_written();
        match method {
            TrackMethod::WpAsync => match r {
                Err(e @ TrackError::Replaced { .. }) => {
                    assert!(e.to_string().contains("replaced"), "{e}");
                }
                other => panic!("{test}: {other:?}"),
            },
            _ => assert_pages(
                "remapped",
                &mem,
                &r.unwrap(),
                piece_pages(&mem, 256..512, PIECE),
            ),
        }
    }
}

/// The output buffer of `PAGEMAP_SCAN` holds 3 runs here: the tracker calls
/// again from `walk_end` until it has them all.
#[test]
fn scan_buffer_fills_and_the_scan_goes_on() {
    let test = "track::scan_buffer_fills";
    let mem = Mem::new(4 * MIB);
    let opts = TrackOptions {
        scan_buffer: 3,
        ..options(TrackMethod::WpAsync)
    };
    let Some(mut t) = start_with(test, &[mem.range()], &opts) else {
        return;
    };
    let pages: Vec<usize> = (0..50).map(|i| 5 + i * 17).collect();
    for &p in &pages {
        mem.write(p, 0, 1);
    }
    assert_pages("peek", &mem, &t.written().unwrap(), pages.iter().copied());
    assert_pages(
        "take",
        &mem,
        &t.take_written().unwrap(),
        pages.iter().copied(),
    );
    assert_pages("re-armed", &mem, &t.take_written().unwrap(), []);
}

/// The size of the transparent huge pages in the VMA holding `addr`, from
/// /proc/self/smaps.
fn anon_huge_kb(addr: u64) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut inside = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ') {
            if let Some((a, b)) = range.split_once('-') {
                if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                    inside = a <= addr && addr < b;
                    continue;
                }
            }
        }
        if inside {
            if let Some(v) = line.strip_prefix("AnonHugePages:") {
                return v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
            }
        }
    }
    0
}

/// The VmFlags of the VMA holding `addr`.
fn vm_flags(addr: u64) -> String {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut inside = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ') {
            if let Some((a, b)) = range.split_once('-') {
                if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                    inside = a <= addr && addr < b;
                    continue;
                }
            }
        }
        if inside {
            if let Some(v) = line.strip_prefix("VmFlags:") {
                return v.trim().to_string();
            }
        }
    }
    String::new()
}

/// A write to a transparent huge page makes the kernel split its mapping:
/// only the written small page is reported. A huge page dropped whole is
/// reported whole.
#[test]
fn transparent_huge_pages() {
    let test = "track::transparent_huge_pages";
    let mem = Mem::new(2 * HUGE);
    mem.madvise(0..mem.pages(), libc::MADV_HUGEPAGE);
    mem.populate(0..mem.pages());
    let kb = anon_huge_kb(mem.addr());
    if kb < 2 * 2048 {
        skip(test, &format!("no transparent huge pages formed ({kb} kB)"));
        return;
    }
    let Some(mut t) = start(test, &[mem.range()], TrackMethod::WpAsync) else {
        return;
    };
    mem.bump(7, 0);
    assert_pages(
        "one small page of a huge page",
        &mem,
        &t.take_written().unwrap(),
        [7],
    );
    mem.madvise(512..1024, libc::MADV_DONTNEED);
    assert_pages(
        "a huge page dropped",
        &mem,
        &t.take_written().unwrap(),
        512..1024,
    );
    assert_pages("re-armed", &mem, &t.take_written().unwrap(), []);
}

#[test]
fn drop_unregisters() {
    let test = "track::drop_unregisters";
    let mem = Mem::new(4 * MIB);
    mem.populate(0..mem.pages());
    let Some(t) = start(test, &[mem.range()], TrackMethod::WpAsync) else {
        return;
    };
    // "uw": userfaultfd write-protect tracking (proc(5)).
    assert!(vm_flags(mem.addr()).split(' ').any(|f| f == "uw"));
    drop(t);
    assert!(!vm_flags(mem.addr()).split(' ').any(|f| f == "uw"));
    mem.bump(3, 0);
}

#[test]
fn default_method_and_fallback_reason() {
    let mem = Mem::new(2 * MIB);
    let t = Tracker::start(&[mem.range()], &TrackOptions::default()).unwrap();
    match t.method() {
        TrackMethod::WpAsync => assert!(t.fallback_reason().is_none()),
        _ => {
            let why = t.fallback_reason().unwrap();
            skip("track::default_method_and_fallback_reason", why);
        }
    }
    assert_eq!(t.stats().method, t.method());
    assert_eq!(t.stats().bytes, mem.len as u64);
    let forced = Tracker::start(&[mem.range()], &options(TrackMethod::Checksums)).unwrap();
    assert_eq!(forced.method(), TrackMethod::Checksums);
    assert!(
        forced.fallback_reason().is_none(),
        "forced, not fallen back"
    );
}

/// Where userfaultfd refuses a range, the tracker falls back to checksums
/// and says why; forced to write-protection, it fails instead. Two real
/// cases: memory another userfaultfd already tracks (`EBUSY`), and a
/// `MAP_DROPPABLE` mapping (Linux 6.11+), which userfaultfd never handles.
#[test]
fn fallback_when_userfaultfd_refuses_a_range() {
    let test = "track::fallback_when_userfaultfd_refuses_a_range";
    let mem = Mem::new(2 * MIB);
    mem.populate(0..mem.pages());
    let Some(_first) = start(test, &[mem.range()], TrackMethod::WpAsync) else {
        return;
    };
    let mut second = Tracker::start(&[mem.range()], &TrackOptions::default()).unwrap();
    assert_eq!(second.method(), TrackMethod::Checksums);
    let why = second.fallback_reason().unwrap().to_string();
    assert!(why.contains("refused") && why.contains("busy"), "{why}");
    assert_eq!(
        second.stats().fallback_reason.as_deref(),
        Some(why.as_str())
    );
    mem.bump(5, 0);
    assert_pages(
        "second tracker",
        &mem,
        &second.take_written().unwrap(),
        piece_pages(&mem, [5], PIECE),
    );
    match Tracker::start(&[mem.range()], &options(TrackMethod::WpAsync)) {
        Err(e @ TrackError::Unavailable(_)) => assert!(e.to_string().contains("refused"), "{e}"),
        other => panic!("{other:?}"),
    }

    const MAP_DROPPABLE: libc::c_int = 0x08;
    // SAFETY: a fresh mapping, unmapped below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            MIB,
            libc::PROT_READ | libc::PROT_WRITE,
            MAP_DROPPABLE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return skip(test, "MAP_DROPPABLE is not supported (Linux 6.11+)");
    }
    let dropp = p as u64..p as u64 + MIB as u64;
    let t = Tracker::start(std::slice::from_ref(&dropp), &TrackOptions::default()).unwrap();
    assert_eq!(t.method(), TrackMethod::Checksums);
    assert!(t.fallback_reason().unwrap().contains("refused"));
    drop(t);
    // SAFETY: our own mapping.
    unsafe { libc::munmap(p, MIB) };
}

#[test]
#[allow(clippy::single_range_in_vec_init)] // lists of one range are meant
fn bad_ranges_are_refused() {
    let mem = Mem::new(4 * MIB);
    let a = mem.addr();
    let o = TrackOptions::default();
    for (ranges, want) in [
        (vec![a + 1..a + 4096], "whole pages"),
        (vec![a..a], "whole pages"),
        (vec![a..a + 8192, a + 4096..a + 12288], "overlaps"),
    ] {
        match Tracker::start(&ranges, &o) {
            Err(e @ TrackError::BadRange { .. }) => assert!(e.to_string().contains(want), "{e}"),
            other => panic!("{ranges:x?}: {other:?}"),
        }
    }
    mem.munmap(0..1);
    assert!(matches!(
        Tracker::start(&[mem.range()], &o),
        Err(TrackError::Unmapped { .. })
    ));
    let bad_piece = TrackOptions {
        piece_size: 1000,
        ..TrackOptions::default()
    };
    assert!(matches!(
        Tracker::start(&[a + 4096..a + 8192], &bad_piece),
        Err(TrackError::BadOption(_))
    ));
}

// ---------------------------------------------------------------------------
// The persist path.

/// A child sink that writes a full image: its in-parent runs are read from
/// the parent image, so the result must equal memory. It also counts what
/// it was given.
struct Flatten<'p> {
    parent: &'p Image,
    w: Writer<std::fs::File>,
    at: u64,
    data: u64,
    zero: u64,
    in_parent: u64,
}

impl ChildSink for Flatten<'_> {
    fn begin_region(&mut self, info: RegionInfo) -> memimg::Result<()> {
        self.at = info.start;
        self.w.begin_region(info)
    }
    fn push_data(&mut self, data: &[u8]) -> memimg::Result<()> {
        self.at += data.len() as u64;
        self.data += data.len() as u64;
        self.w.push_data(data)
    }
    fn push_zero(&mut self, len: u64) -> memimg::Result<()> {
        self.at += len;
        self.zero += len;
        self.w.push_zero(len)
    }
    fn push_in_parent(&mut self, len: u64) -> memimg::Result<()> {
        let mut buf = vec![0u8; len as usize];
        self.parent.read_at(self.at, &mut buf)?;
        self.at += len;
        self.in_parent += len;
        self.w.push_data(&buf)
    }
    fn end_region(&mut self) -> memimg::Result<()> {
        self.w.end_region()
    }
}

/// Writes the child of `plan` flattened against `parent`, checks every
/// region against memory, and returns the child's id and what the sink got.
fn flatten_child(
    p: &Persister<'_>,
    plan: &IncrementalPlan,
    parent: &std::path::Path,
    out: &std::path::Path,
    regions: &[&Mem],
) -> ([u8; 16], (u64, u64, u64)) {
    let parent = Image::open(parent).unwrap();
    let file = std::fs::File::create(out).unwrap();
    let w = Writer::new(file, WriterOptions::new()).unwrap();
    let mut sink = Flatten {
        parent: &parent,
        w,
        at: 0,
        data: 0,
        zero: 0,
        in_parent: 0,
    };
    let st = p.write_child(plan, &mut sink).unwrap();
    assert_eq!(st.data_bytes, sink.data);
    assert_eq!(st.zero_bytes, sink.zero);
    assert_eq!(st.in_parent_bytes, sink.in_parent);
    assert_eq!(st.written_bytes, st.data_bytes + st.zero_bytes);
    assert_eq!(st.written_bytes, plan.written_bytes());
    assert_eq!(st.in_parent_bytes, plan.unchanged_bytes());
    let counts = (sink.data, sink.zero, sink.in_parent);
    let (_, stats) = sink.w.finish().unwrap();
    let img = Image::open(out).unwrap();
    for m in regions {
        let mut buf = vec![0u8; m.len];
        img.read_at(m.addr(), &mut buf).unwrap();
        // SAFETY: our own mapping, not written meanwhile.
        let now = unsafe { std::slice::from_raw_parts(m.base, m.len) };
        assert!(buf == now, "the flattened child differs from memory");
    }
    (stats.image_id, counts)
}

fn persister<'a>(mems: &[&Mem]) -> Persister<'a> {
    let mut p = Persister::new().validation("track-test", b"1".to_vec());
    for (i, m) in mems.iter().enumerate() {
        // SAFETY: the mappings outlive the persister, and nothing writes to
        // them while an image is written.
        p = unsafe {
            p.region_raw(
                m.base,
                m.len,
                memimg::Prot::RW,
                RegionKind::Heap,
                &format!("r{i}"),
            )
        };
    }
    p
}

/// A full persist arms the tracker; a plan relative to it holds exactly the
/// pages written since (pieces for checksums), the child made from it equals
/// memory, and the committed child becomes the next parent.
#[test]
fn persist_with_a_parent_reads_only_what_was_written() {
    for method in BOTH {
        let test = format!("track::persist_with_parent_{method}");
        let dir = tempfile::tempdir().unwrap();
        let a = Mem::new(8 * MIB);
        let b = Mem::new(4 * MIB);
        a.populate(0..a.pages());
        b.populate(0..b.pages() / 2); // the rest never touched
        let p = match persister(&[&a, &b]).track(&options(method)) {
            Ok(p) => p,
            Err(PersistError::Track(TrackError::Unavailable(why))) => {
                skip(&test, &why);
                continue;
            }
            Err(e) => panic!("{e}"),
        };
        assert_eq!(p.tracking().unwrap().method, method);
        assert!(matches!(
            p.plan_since([0; 16]),
            Err(PersistError::NotParent { base: None, .. })
        ));
        // Written before the parent: in the parent, not in its child.
        a.bump(1500, 10);
        let parent_path = dir.path().join("parent.mimg");
        let parent = p
            .write_to_path(&parent_path, &PersistOptions::default())
            .unwrap()
            .image_id;
        assert_eq!(p.tracked_base(), Some(parent));

        let wa = [1usize, 2, 3, 1000, 2047];
        let wb = [5usize, 900]; // 900 was never touched before
        for &q in &wa {
            a.bump(q, 11);
        }
        for &q in &wb {
            b.bump(q, 11);
        }
        match p.plan_since([7; 16]) {
            Err(e @ PersistError::NotParent { .. }) => assert!(e.to_string().contains("0707")),
            other => panic!("{other:?}"),
        }
        let plan = p.plan_since(parent).unwrap();
        assert_eq!(plan.method, method);
        assert_eq!(plan.parent, parent);
        for rp in &plan.regions {
            assert!(rp.tracked);
            let mut at = rp.info.start;
            for run in &rp.runs {
                assert_eq!(run.range().start, at, "runs tile the region");
                at = run.range().end;
            }
            assert_eq!(at, rp.info.end());
        }
        let written = plan.written();
        let (want_a, want_b) = match method {
            TrackMethod::WpAsync => (
                wa.iter().copied().collect::<BTreeSet<_>>(),
                wb.iter().copied().collect::<BTreeSet<_>>(),
            ),
            _ => (piece_pages(&a, wa, PIECE), piece_pages(&b, wb, PIECE)),
        };
        let in_a: Vec<_> = written
            .iter()
            .filter(|r| a.range().contains(&r.start))
            .cloned()
            .collect();
        let in_b: Vec<_> = written
            .iter()
            .filter(|r| b.range().contains(&r.start))
            .cloned()
            .collect();
        assert_pages("region a", &a, &in_a, want_a.iter().copied());
        assert_pages("region b", &b, &in_b, want_b.iter().copied());

        let (child, (data, zero, in_parent)) = flatten_child(
            &p,
            &plan,
            &parent_path,
            &dir.path().join("c1.mimg"),
            &[&a, &b],
        );
        assert_eq!(data + zero, plan.written_bytes());
        assert_eq!(
            in_parent,
            (a.len + b.len) as u64 - plan.written_bytes(),
            "everything else comes from the parent"
        );
        if method == TrackMethod::WpAsync {
            assert_eq!(
                data,
                ((wa.len() + wb.len()) * PS) as u64,
                "only the written pages are read"
            );
        }
        p.child_committed(&plan, child).unwrap();
        assert_eq!(p.tracked_base(), Some(child));

        // The next child is relative to the first: only the new writes.
        a.bump(4, 12);
        assert!(matches!(
            p.plan_since(parent),
            Err(PersistError::NotParent { .. })
        ));
        let plan2 = p.plan_since(child).unwrap();
        let want = match method {
            TrackMethod::WpAsync => BTreeSet::from([4]),
            _ => piece_pages(&a, [4], PIECE),
        };
        assert_pages("second child", &a, &plan2.written(), want);
        flatten_child(
            &p,
            &plan2,
            &dir.path().join("c1.mimg"),
            &dir.path().join("c2.mimg"),
            &[&a, &b],
        );
    }
}

/// A plan whose child was never committed loses nothing: the next plan
/// includes its pages too. A full persist in between makes the old parent
/// unusable and the plan's commit refused.
#[test]
fn uncommitted_plans_lose_nothing() {
    let test = "track::uncommitted_plans_lose_nothing";
    let dir = tempfile::tempdir().unwrap();
    let a = Mem::new(4 * MIB);
    a.populate(0..a.pages());
    let p = match persister(&[&a]).track(&options(TrackMethod::WpAsync)) {
        Ok(p) => p,
        Err(PersistError::Track(TrackError::Unavailable(why))) => return skip(test, &why),
        Err(e) => panic!("{e}"),
    };
    let parent = p
        .write_to_path(&dir.path().join("p.mimg"), &PersistOptions::default())
        .unwrap()
        .image_id;
    a.bump(10, 1);
    let lost = p.plan_since(parent).unwrap();
    assert_pages("first plan", &a, &lost.written(), [10]);
    a.bump(20, 1);
    let plan = p.plan_since(parent).unwrap();
    assert_pages("second plan", &a, &plan.written(), [10, 20]);
    // A full persist now: the base moves, the plan cannot be committed.
    let full = p
        .write_to_path(&dir.path().join("full.mimg"), &PersistOptions::default())
        .unwrap()
        .image_id;
    assert!(matches!(
        p.child_committed(&plan, [9; 16]),
        Err(PersistError::NotParent { .. })
    ));
    assert_eq!(p.tracked_base(), Some(full));
    a.bump(30, 1);
    assert_pages(
        "since the full persist",
        &a,
        &p.plan_since(full).unwrap().written(),
        [30],
    );
}

/// How many pages of `pages` are present, from /proc/self/pagemap.
fn present(mem: &Mem, pages: Range<usize>) -> usize {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open("/proc/self/pagemap").unwrap();
    let mut buf = vec![0u8; (pages.end - pages.start) * 8];
    f.read_exact_at(&mut buf, (mem.addr() / PS as u64 + pages.start as u64) * 8)
        .unwrap();
    buf.chunks_exact(8)
        .filter(|e| u64::from_ne_bytes((*e).try_into().unwrap()) >> 63 == 1)
        .count()
}

/// With write-protection armed, a never-touched page has a protection
/// marker, which pagemap shows as swapped. A full persist still skips it:
/// it does not read it (which would fault it in) but records it as zero.
#[test]
fn tracked_full_persist_skips_untouched_pages() {
    let test = "track::tracked_full_persist_skips_untouched_pages";
    let dir = tempfile::tempdir().unwrap();
    let a = Mem::new(4 * MIB);
    a.populate(0..a.pages() / 2);
    let p = match persister(&[&a]).track(&options(TrackMethod::WpAsync)) {
        Ok(p) => p,
        Err(PersistError::Track(TrackError::Unavailable(why))) => return skip(test, &why),
        Err(e) => panic!("{e}"),
    };
    let half = a.pages() / 2;
    assert_eq!(present(&a, half..a.pages()), 0);
    let path = dir.path().join("full.mimg");
    let st = p.write_to_path(&path, &PersistOptions::default()).unwrap();
    assert_eq!(
        present(&a, half..a.pages()),
        0,
        "the persist read untouched pages"
    );
    assert_eq!(st.zero_pages, half as u64);
    let img = Image::open(&path).unwrap();
    let mut buf = vec![1u8; a.len];
    img.read_at(a.addr(), &mut buf).unwrap();
    // SAFETY: our own mapping, not written meanwhile.
    assert!(buf == unsafe { std::slice::from_raw_parts(a.base, a.len) });
}

/// A region added after tracking started is not tracked: a plan stores it
/// whole. Without tracking there is no plan at all.
#[test]
fn untracked_regions_are_written_whole() {
    let test = "track::untracked_regions";
    let dir = tempfile::tempdir().unwrap();
    let a = Mem::new(2 * MIB);
    let late = Mem::new(2 * MIB);
    assert!(matches!(
        persister(&[&a]).plan_since([0; 16]),
        Err(PersistError::NotTracking)
    ));
    let p = match persister(&[&a]).track(&options(TrackMethod::WpAsync)) {
        Ok(p) => p,
        Err(PersistError::Track(TrackError::Unavailable(why))) => return skip(test, &why),
        Err(e) => panic!("{e}"),
    };
    // SAFETY: as in `persister`.
    let p = unsafe {
        p.region_raw(
            late.base,
            late.len,
            memimg::Prot::RW,
            RegionKind::Heap,
            "late",
        )
    };
    let parent_path = dir.path().join("p.mimg");
    let parent = p
        .write_to_path(&parent_path, &PersistOptions::default())
        .unwrap()
        .image_id;
    let plan = p.plan_since(parent).unwrap();
    assert_eq!(plan.written_bytes(), late.len as u64);
    let late_plan = plan
        .regions
        .iter()
        .find(|r| r.info.start == late.addr())
        .unwrap();
    assert!(!late_plan.tracked);
    assert_eq!(late_plan.runs, vec![Run::Written(late.range())]);
    flatten_child(
        &p,
        &plan,
        &parent_path,
        &dir.path().join("c.mimg"),
        &[&a, &late],
    );
}
