//! Capture of a live child process with known patterns.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use memimg::{Codec, ExtentKind, Image, Key};
use memimg_capture::{capture_to_path, procfs, CaptureOptions};

use crate::child::*;
use crate::common::{self, spawn_role};

/// Why live capture cannot run here, if it cannot.
pub fn ptrace_unavailable() -> Option<String> {
    // Try to seize ourselves' child: simplest is to ask for the capability.
    let scope = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope").unwrap_or_default();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root && scope.trim() != "0" && !scope.is_empty() {
        return Some(format!(
            "not root and kernel.yama.ptrace_scope={}",
            scope.trim()
        ));
    }
    None
}

/// Returns from the calling test, recorded as a skip (see
/// [`common::skip`]), when ptrace is not available here.
macro_rules! need_ptrace {
    ($name:literal) => {
        if let Some(why) = crate::live::ptrace_unavailable() {
            crate::common::skip(crate::common::test_name!($name), &why);
            return;
        }
    };
}
pub(crate) use need_ptrace;

/// One page as `/proc/PID/mem` read it.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// The read failed.
    Unreadable,
    /// All zeros (kept apart: guard and reserved ranges hold a lot of them).
    Zero,
    Bytes(Vec<u8>),
}

/// Reads every mapping of `pid` but [vvar]/[vsyscall] from /proc/PID/mem,
/// which reads whatever the protection, a region at a time, page by page
/// where that fails.
pub fn snapshot(pid: i32) -> BTreeMap<u64, Seen> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut out = BTreeMap::new();
    let mut buf = Vec::new();
    for m in procfs::read_maps(pid).unwrap() {
        if m.is_special() {
            continue;
        }
        buf.resize(m.len() as usize, 0);
        let whole = f.read_exact_at(&mut buf, m.start).is_ok();
        for (i, a) in (m.start..m.end).step_by(4096).enumerate() {
            let page = &mut buf[i * 4096..(i + 1) * 4096];
            let ok = whole || f.read_exact_at(page, a).is_ok();
            let seen = if !ok {
                Seen::Unreadable
            } else if page.iter().all(|&b| b == 0) {
                Seen::Zero
            } else {
                Seen::Bytes(page.to_vec())
            };
            out.insert(a, seen);
        }
    }
    out
}

/// Checks that every page the image holds equals what `/proc/PID/mem`
/// showed in `seen`, and that pages it does not hold could not be read or
/// are file pages; returns how many pages were compared.
pub fn compare_with_snapshot(img: &Image, seen: &BTreeMap<u64, Seen>) -> u64 {
    let mut compared = 0u64;
    let mut buf = Vec::new();
    for r in img.regions().unwrap() {
        for e in img.region_extents(r).unwrap() {
            let len = e.len(4096) as usize;
            let pages = (e.addr..e.addr + len as u64).step_by(4096);
            match e.kind {
                ExtentKind::Absent => {
                    // Only file pages never loaded, or unreadable pages.
                    assert!(
                        r.info.inode != 0
                            || pages
                                .clone()
                                .all(|a| seen.get(&a) == Some(&Seen::Unreadable)),
                        "absent anonymous extent at {:#x} in {}",
                        e.addr,
                        r.info.name_lossy()
                    );
                }
                ExtentKind::InParent => panic!("a full capture has no parent"),
                ExtentKind::Zero => {
                    for a in pages {
                        assert_eq!(
                            seen.get(&a),
                            Some(&Seen::Zero),
                            "page {a:#x} of {} is a zero page in the image",
                            r.info.name_lossy()
                        );
                        compared += 1;
                    }
                }
                ExtentKind::Data => {
                    buf.resize(len, 0);
                    img.decode_extent(e, &mut buf).unwrap();
                    for (i, a) in pages.enumerate() {
                        let page = &buf[i * 4096..(i + 1) * 4096];
                        match seen.get(&a) {
                            Some(Seen::Bytes(b)) => assert!(
                                b[..] == page[..],
                                "page {a:#x} of {} differs from /proc/PID/mem",
                                r.info.name_lossy()
                            ),
                            Some(Seen::Zero) => assert!(
                                page.iter().all(|&b| b == 0),
                                "page {a:#x} of {} differs from /proc/PID/mem (zeros)",
                                r.info.name_lossy()
                            ),
                            other => {
                                panic!("{a:#x} is in the image but /proc/PID/mem gave {other:?}")
                            }
                        }
                        compared += 1;
                    }
                }
            }
        }
    }
    compared
}

fn check_capture(codec: Codec, key: Option<Key>) {
    let child = spawn_role("patterns", &[]);
    let pid = child.pid();
    // Let the threads get going.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("child.img");
    let seen: Arc<Mutex<BTreeMap<u64, Seen>>> = Arc::default();
    let seen2 = Arc::clone(&seen);
    let progress_calls = Arc::new(Mutex::new(0u64));
    let pc = Arc::clone(&progress_calls);
    let opts = CaptureOptions {
        codec,
        key: key.clone(),
        on_frozen: Some(Arc::new(move |pid| {
            assert_eq!(
                common::state(pid),
                b't',
                "the child is not stopped while frozen"
            );
            *seen2.lock().unwrap() = snapshot(pid);
        })),
        progress: Some(Arc::new(move |done, total| {
            assert!(done <= total);
            *pc.lock().unwrap() += 1;
        })),
        ..CaptureOptions::default()
    };
    let report = capture_to_path(pid, &out, &opts).unwrap();
    assert!(
        report.threads > WORKERS,
        "only {} threads frozen",
        report.threads
    );
    assert!(*progress_calls.lock().unwrap() > 0);

    // The child keeps running afterwards.
    let counters = child.var("counters");
    let a0 = u64::from_le_bytes(
        common::read_mem(pid, counters + A_OFF as u64, 8)
            .unwrap()
            .try_into()
            .unwrap(),
    );
    // It runs again at once, but a loaded machine may not schedule it for
    // a while: give it up to 5 s to move the counter.
    let t = std::time::Instant::now();
    let mut a1;
    loop {
        std::thread::sleep(std::time::Duration::from_millis(20));
        a1 = u64::from_le_bytes(
            common::read_mem(pid, counters + A_OFF as u64, 8)
                .unwrap()
                .try_into()
                .unwrap(),
        );
        if a1 > a0 || t.elapsed() > std::time::Duration::from_secs(5) {
            break;
        }
    }
    assert!(a1 > a0, "the child did not resume: counter stayed at {a0}");
    assert_ne!(common::state(pid), b't');

    let img = Image::open_with_key(&out, key.as_ref()).unwrap();
    let h = img.header();
    let facts = h.process.as_ref().unwrap();
    assert_eq!(facts.pid, Some(pid as u32));
    assert!(!facts.cmdline.is_empty());
    assert!(!facts.kernel_release.is_empty());
    assert!(!facts.exe.is_empty());

    // Every captured byte equals what /proc/PID/mem showed while frozen.
    let seen = seen.lock().unwrap();
    let compared = compare_with_snapshot(&img, &seen);
    assert!(compared > 4000, "only {compared} pages compared");

    // The known patterns.
    let read = |addr: u64, len: usize| {
        let mut v = vec![0u8; len];
        img.read_at(addr, &mut v).unwrap();
        v
    };
    let mut want = vec![0u8; RAND_LEN];
    common::fill_random(&mut want, RAND_SEED);
    assert!(
        read(child.var("rand"), RAND_LEN) == want,
        "random pattern differs"
    );
    assert!(read(child.var("zero"), ZERO_LEN).iter().all(|&b| b == 0));
    let mut text = vec![0u8; TEXT_LEN];
    common::fill_text(&mut text);
    assert!(read(child.var("text"), TEXT_LEN) == text, "text differs");
    assert!(
        read(child.var("freed"), FREED_LEN).iter().all(|&b| b == 0),
        "freed pages came back"
    );
    // The zero region's untouched half is recorded as zero pages, not data.
    let zr = img
        .extent_at(child.var("zero") + (ZERO_LEN as u64) - 4096)
        .unwrap()
        .unwrap();
    assert_eq!(zr.kind, ExtentKind::Zero);
    // The unmapped range is in no region, or a later mapping reused it:
    // either way its old contents are not in the image.
    if img.region_at(child.var("gone")).unwrap().is_some() {
        assert!(
            !read(child.var("gone"), 4096).iter().all(|&b| b == 0xbb),
            "unmapped memory is in the image"
        );
    }
    // The counters are never torn: equal unless a thread was stopped inside
    // the critical section, which the lock word then shows.
    let c = read(counters, COUNTER_PAGES * 4096);
    let lock = u32::from_le_bytes(c[..4].try_into().unwrap());
    let a = u64::from_le_bytes(c[A_OFF..A_OFF + 8].try_into().unwrap());
    let b = u64::from_le_bytes(c[B_OFF..B_OFF + 8].try_into().unwrap());
    assert!(a > 0);
    if lock == 0 {
        assert_eq!(a, b, "counters torn with the lock free");
    } else {
        assert!(a == b || a == b + 1, "counters torn: a={a} b={b}");
    }
    eprintln!(
        "captured {} regions, {} pages compared, {} threads, frozen {:?}, counters a={a} b={b} lock={lock}",
        img.regions().unwrap().len(), compared, report.threads, report.frozen
    );
}

#[test]
fn captures_patterns_zstd() {
    need_ptrace!("captures_patterns_zstd");
    check_capture(Codec::Zstd(1), None);
}

#[test]
fn captures_patterns_raw_encrypted() {
    need_ptrace!("captures_patterns_raw_encrypted");
    check_capture(Codec::None, Some(Key::generate().unwrap()));
}

#[test]
fn exclude_file_backed_keeps_private_copies_only() {
    need_ptrace!("exclude_file_backed_keeps_private_copies_only");
    // The `prot` role maps a file privately, writes its first page and
    // reads its second.
    let child = spawn_role("prot", &[]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.img");
    let opts = CaptureOptions {
        exclude_file_backed: true,
        ..CaptureOptions::default()
    };
    capture_to_path(child.pid(), &out, &opts).unwrap();
    let img = Image::open(&out).unwrap();
    let mut code_regions = 0;
    for r in img.regions().unwrap() {
        let ex = img.region_extents(r).unwrap();
        if r.info.inode != 0 && r.info.prot.exec() {
            code_regions += 1;
            // Code is never written: all of it comes from the file.
            assert!(
                ex.iter().all(|e| e.kind == ExtentKind::Absent),
                "code of {} was stored",
                r.info.name_lossy()
            );
        }
    }
    assert!(code_regions > 0);
    // The page written through the private mapping is a copy the file does
    // not hold: it is kept, with what was written.
    let file = child.var("file");
    let e = img.extent_at(file).unwrap().unwrap();
    assert_eq!(e.kind, ExtentKind::Data, "the private copy was left out");
    let mut got = vec![0u8; 4096];
    img.read_at(file, &mut got).unwrap();
    let mut want = pattern_page(FILE_SEED, 0);
    want[..FILE_WRITTEN.len()].copy_from_slice(FILE_WRITTEN);
    assert!(got == want, "the private copy differs");
    // The page that was only read, and the one never touched, are the
    // file's own: left out.
    for p in 1..3u64 {
        let e = img.extent_at(file + p * 4096).unwrap().unwrap();
        assert_eq!(e.kind, ExtentKind::Absent, "file page {p} was stored");
    }
    // Anonymous memory is still all there.
    let noaccess = child.var("noaccess");
    img.read_at(noaccess, &mut got).unwrap();
    assert!(got == pattern_page(PROT_SEED, 0));
}

/// Whether files in `dir` can be opened with O_DIRECT (tmpfs before Linux
/// 6.6 cannot, for one).
fn takes_o_direct(dir: &std::path::Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(dir.join("probe"))
        .is_ok()
}

/// A durable capture writes its full 1 MiB buffers with O_DIRECT and
/// reports how much; asked not to, or not durable, it writes none so. Each
/// image verifies and holds the child's random bytes.
#[test]
fn a_durable_capture_writes_with_o_direct() {
    need_ptrace!("a_durable_capture_writes_with_o_direct");
    let child = spawn_role("patterns", &[]);
    let pid = child.pid();
    let dir = tempfile::tempdir().unwrap();
    if !takes_o_direct(dir.path()) {
        common::skip(
            common::test_name!("a_durable_capture_writes_with_o_direct"),
            &format!("{} refuses O_DIRECT", dir.path().display()),
        );
        return;
    }
    let rand = child.var("rand");
    let mut want = vec![0u8; RAND_LEN];
    common::fill_random(&mut want, RAND_SEED);
    for (durable, direct_io) in [(true, true), (true, false), (false, true)] {
        let out = dir.path().join(format!("c-{durable}-{direct_io}.img"));
        let opts = CaptureOptions {
            codec: Codec::None,
            durable,
            direct_io,
            // From the first byte: the default keeps an image this small
            // in the page cache.
            direct_io_after: Some(0),
            ..CaptureOptions::default()
        };
        let report = capture_to_path(pid, &out, &opts).unwrap();
        if durable && direct_io {
            // The image holds 8 MiB of random bytes and more: all but its
            // last, partial buffer go direct.
            assert!(
                report.direct_bytes >= RAND_LEN as u64
                    && report.direct_bytes.is_multiple_of(1 << 20)
                    && report.direct_bytes <= report.stats.file_len,
                "direct {} of {}",
                report.direct_bytes,
                report.stats.file_len
            );
        } else {
            assert_eq!(
                report.direct_bytes, 0,
                "durable {durable}, direct_io {direct_io}"
            );
        }
        assert_eq!(
            std::fs::metadata(&out).unwrap().len(),
            report.stats.file_len
        );
        let r = memimg::verify_path(&out, None, &memimg::VerifyOptions::default());
        assert!(r.is_intact(), "{r:?}");
        let img = Image::open(&out).unwrap();
        let mut got = vec![0u8; RAND_LEN];
        img.read_at(rand, &mut got).unwrap();
        assert!(
            got == want,
            "the random bytes differ (durable {durable}, direct_io {direct_io})"
        );
    }
}
