//! What a fork and a discard cost a lazily restored program, against an
//! eagerly restored one: the figures in the README and the restore docs.
//!
//! ```text
//! cargo test -p memimg-capture --test it -- --ignored lazy_costs --nocapture
//! ```
//!
//! A 192 MiB region (a third random pages, the rest text) is persisted with
//! zstd:1; each child restores it, touches its first tenth (a program that
//! has started working), then either forks twice, timing each fork() call,
//! or discards 2,000 pages still waiting with MADV_DONTNEED and touches them
//! again. Three rounds, each strategy in a fresh process.

use std::path::Path;
use std::time::Instant;

use memimg::{Codec, Prot, RegionKind};
use memimg_capture::{restore, PersistOptions, Persister, RestoreOptions, Strategy};

use crate::lazy_support::{self as ls, lazy_skip, run_limited, signame};

const LEN: usize = 192 << 20;
const PS: usize = 4096;

fn base() -> u64 {
    ls::base(12)
}

fn fill(p: *mut u8) {
    let words = b"alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu ";
    for page in 0..LEN / PS {
        // SAFETY: page < LEN / PS, inside the mapping.
        let s = unsafe { std::slice::from_raw_parts_mut(p.add(page * PS), PS) };
        if page % 3 == 0 {
            crate::common::fill_random(s, page as u64);
        } else {
            for (i, b) in s.iter_mut().enumerate() {
                *b = words[(page * PS + i) * 7 % words.len()];
            }
        }
    }
}

fn at(page: usize) -> u64 {
    base() + (page * PS) as u64
}

fn fork_ms() -> f64 {
    let t = Instant::now();
    // SAFETY: fork; the child exits at once.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: ends the child at once.
        unsafe { libc::_exit(0) };
    }
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let mut st = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(pid, &mut st, 0) };
    ms
}

/// The child: restore, touch a tenth, measure.
pub fn role() {
    let strategy: Strategy = std::env::var("STRATEGY").unwrap().parse().unwrap();
    let _r = restore(
        Path::new(&std::env::var("IMG").unwrap()),
        &RestoreOptions {
            strategy,
            ..RestoreOptions::default()
        },
    )
    .unwrap();
    for p in 0..LEN / PS / 10 {
        // SAFETY: restored memory.
        unsafe { std::ptr::read_volatile(at(p) as usize as *const u8) };
    }
    if std::env::var("WHAT").unwrap() == "fork" {
        let first = fork_ms();
        let second = fork_ms();
        println!("RESULT {strategy:<5} fork: first {first:6.1} ms, second {second:5.2} ms");
    } else {
        // Pages in the second half, which have not arrived.
        let pages = || (0..2000).map(|i| at(LEN / PS / 2 + i * 10 + 5));
        let t = Instant::now();
        for a in pages() {
            // SAFETY: discards one page of restored memory.
            unsafe { libc::madvise(a as usize as *mut libc::c_void, PS, libc::MADV_DONTNEED) };
        }
        let madv = t.elapsed().as_secs_f64() * 1e6 / 2000.0;
        let t = Instant::now();
        for a in pages() {
            // SAFETY: restored memory, discarded: reads zeros.
            unsafe { std::ptr::read_volatile(a as usize as *const u8) };
        }
        let touch = t.elapsed().as_secs_f64() * 1e6 / 2000.0;
        println!("RESULT {strategy:<5} MADV_DONTNEED {madv:5.1} us a call, touch after {touch:5.1} us a page");
    }
}

#[test]
#[ignore = "a measurement: run with --ignored --nocapture"]
fn lazy_costs() {
    if lazy_skip("lazy_costs") {
        return;
    }
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping.
    let p = unsafe {
        libc::mmap(
            base() as usize as *mut libc::c_void,
            LEN,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    assert_eq!(p as u64, base());
    fill(p.cast());
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("costs.img");
    // SAFETY: the mapping just made, only read while it is persisted.
    let st =
        unsafe { Persister::new().region_raw(p.cast(), LEN, Prot::RW, RegionKind::Heap, "costs") }
            .write_to_path(
                &img,
                &PersistOptions {
                    codec: Codec::Zstd(1),
                    ..PersistOptions::default()
                },
            )
            .unwrap();
    // SAFETY: our own mapping, no longer used.
    unsafe { libc::munmap(p, LEN) };
    println!(
        "{} MiB region in a {} MiB zstd:1 image",
        LEN >> 20,
        st.file_len >> 20
    );
    for _ in 0..3 {
        for (what, strategy) in [
            ("fork", "lazy"),
            ("fork", "eager"),
            ("madv", "lazy"),
            ("madv", "eager"),
        ] {
            let env = [
                ("IMG", img.display().to_string()),
                ("STRATEGY", strategy.to_string()),
                ("WHAT", what.to_string()),
            ];
            let o = run_limited("lazy-costs", &env, ls::limit());
            assert!(o.ok(), "{} ({}):\n{}", strategy, signame(&o), o.out);
            for l in o.out.lines().filter_map(|l| l.strip_prefix("RESULT ")) {
                println!("{l}");
            }
        }
    }
}
