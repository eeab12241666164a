//! Load order in restore: a lazy restore records the chunks a program
//! touches first, in order; an image laid out by that profile has its
//! working set fetched in one read and placed before the restore returns; eager restore reads it right; damage in the working set is never
//! served as content.
//!
//! Each restore runs in a fresh child process (the image's addresses must
//! be free), under a time limit, and reports a digest of every page it can
//! see, which the test compares with the image's content page by page.

use std::path::{Path, PathBuf};
use std::time::Duration;

use memimg::{ExtentKind, Image, Key, Profile};
use memimg_capture::{restore, RestoreOptions, Strategy};

use crate::lazy_support::{
    self as ls, digest, fill_page, key_from_env, lazy_skip, run_limited, signame, stat, view_line,
    Outcome, A_PAGES, B_OFF, B_PAGES, PS,
};

/// The roles of this module; false for any other.
pub fn child_role(role: &str) -> bool {
    if role != "lo-run" {
        return false;
    }
    run();
    true
}

fn env(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set"))
}

fn pages_env(k: &str) -> Vec<usize> {
    std::env::var(k)
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect()
}

fn touch(addr: u64) {
    // SAFETY: a page of a region this process restored, readable.
    unsafe { std::ptr::read_volatile(addr as usize as *const u8) };
}

/// The child: restores `IMG` (a path, or with the `remote` feature an
/// `s3://` URL) at `BASE` (`MODE`: `record`, `use`, `background` (the
/// working set placed in the background), `plain` or `eager`), touches the pages of region A listed in `TOUCH` in order,
/// and reports.
fn run() {
    let base = u64::from_str_radix(&env("BASE"), 16).unwrap();
    let mode = env("MODE");
    let opts = RestoreOptions {
        strategy: if mode == "eager" {
            Strategy::Eager
        } else {
            Strategy::Lazy
        },
        key: Some(key_from_env()),
        record_profile: (mode == "record").then_some(Duration::from_secs(600)),
        working_set_in_background: mode == "background",
        ..RestoreOptions::default()
    };
    let img = env("IMG");
    #[cfg(feature = "remote")]
    let mut restored = if img.starts_with("s3://") {
        crate::remote::restore_url(&opts)
    } else {
        restore(Path::new(&img), &opts).unwrap()
    };
    #[cfg(not(feature = "remote"))]
    let mut restored = restore(Path::new(&img), &opts).unwrap();
    let lazy = restored.lazy.take();
    if let (Some(h), "use") = (&lazy, mode.as_str()) {
        // The working set was placed before the restore returned, without
        // being asked.
        let want: u64 = env("WS").parse().unwrap();
        assert!(h.stats().units_prefetched >= want, "{:?}", h.stats());
    }
    for p in pages_env("TOUCH") {
        touch(base + (p * PS) as u64);
    }
    if let Some(h) = &lazy {
        let s = h.stats();
        println!(
            "STATS faults_waited={} units_prefetched={} ws_reads={} ws_bytes={} recording={} errors={}",
            s.faults_waited,
            s.units_prefetched,
            s.working_set_reads,
            s.working_set_bytes,
            u8::from(s.recording),
            u8::from(s.error.is_some()),
        );
        if mode == "record" {
            assert!(s.recording);
            h.profile_ready();
            assert!(!h.stats().recording);
            // Touched after the program is ready: not its startup.
            for p in pages_env("AFTER") {
                touch(base + (p * PS) as u64);
            }
            h.profile()
                .unwrap()
                .write(Path::new(&env("PROFILE")))
                .unwrap();
        }
    }
    // Every page, except a damaged range (`SKIP`), then that range.
    let skip = pages_env("SKIP");
    let mut d = Vec::new();
    for p in 0..A_PAGES {
        if !skip.contains(&p) {
            ls::view_into(base + (p * PS) as u64, 1, &mut d);
        } else {
            d.push(0);
        }
    }
    println!("{}", ls::format_view("a", base, &d));
    println!("{}", view_line("b", base + B_OFF, B_PAGES));
    if let Some(&p) = skip.first() {
        use std::io::Write;
        println!("TOUCHING-DAMAGED");
        std::io::stdout().flush().unwrap();
        touch(base + (p * PS) as u64);
        println!("SURVIVED");
    }
    if let Some(h) = lazy {
        let s = h.finish();
        assert!(s.error.is_none(), "{:?}", s.error);
    }
    println!("END");
}

/// Checks every page a child reported against the image's content.
pub(crate) fn assert_content(o: &Outcome, base: u64, skip: &[usize]) {
    let mut page = vec![0u8; PS];
    for (label, start, pages) in [("a", base, A_PAGES), ("b", base + B_OFF, B_PAGES)] {
        let line = o
            .out
            .lines()
            .find(|l| l.starts_with(&format!("VIEW {label} ")))
            .unwrap_or_else(|| panic!("no view of {label}:\n{}", o.out));
        let d: Vec<u64> = line
            .split_whitespace()
            .skip(3)
            .map(|x| u64::from_str_radix(x, 16).unwrap())
            .collect();
        assert_eq!(d.len(), pages);
        for (p, &got) in d.iter().enumerate() {
            if label == "a" && skip.contains(&p) {
                continue;
            }
            fill_page(start, p, &mut page);
            assert_eq!(got, digest(&page), "region {label}, page {p}: wrong bytes");
        }
    }
}

pub(crate) struct Setup {
    pub base: u64,
    pub dir: tempfile::TempDir,
    pub img: std::path::PathBuf,
    pub key: Key,
}

impl Setup {
    pub fn new(slot: u64) -> Setup {
        let base = ls::base(slot);
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("lo.img");
        let key = ls::make_image(base, &img);
        Setup {
            base,
            dir,
            img,
            key,
        }
    }

    fn run(&self, img: &Path, mode: &str, extra: &[(&str, String)]) -> Outcome {
        let mut env = vec![
            ("IMG", img.display().to_string()),
            ("KEY", ls::key_hex(&self.key)),
            ("BASE", format!("{:x}", self.base)),
            ("MODE", mode.to_string()),
        ];
        env.extend(extra.iter().cloned());
        run_limited("lo-run", &env, ls::limit())
    }

    /// The image laid out by the profile of the chunks `touched` (pages of
    /// region A) holds, in first-touch order: its path, that profile's
    /// chunks and the working set's file range.
    pub fn optimized(&self, touched: &[usize]) -> (PathBuf, Vec<u64>, std::ops::Range<u64>) {
        let mut chunks = Vec::new();
        for &p in touched {
            let c = self.chunk_of(p).unwrap();
            if !chunks.contains(&c) {
                chunks.push(c);
            }
        }
        let id = Image::open_with_key(&self.img, Some(&self.key))
            .unwrap()
            .header()
            .image_id;
        let p = Profile {
            image_id: id,
            chunks: chunks.clone(),
        };
        let opt = self.dir.path().join("opt.img");
        std::fs::copy(&self.img, &opt).unwrap();
        memimg::relayout_in_place(&opt, Some(&self.key), &p, &Default::default()).unwrap();
        let ws = Image::open_with_key(&opt, Some(&self.key))
            .unwrap()
            .working_set_range()
            .unwrap()
            .unwrap();
        (opt, chunks, ws)
    }

    /// The chunk of each page of region A, `None` for pages not stored.
    fn chunk_of(&self, p: usize) -> Option<u64> {
        let img = Image::open_with_key(&self.img, Some(&self.key)).unwrap();
        let e = *img.extent_at(self.base + (p * PS) as u64).unwrap().unwrap();
        (e.kind == ExtentKind::Data).then_some(e.chunk)
    }
}

pub(crate) fn list(pages: &[usize]) -> String {
    pages
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Pages touched at "startup": data pages in many chunks, one chunk touched
/// twice (17 and 18), and a zero page (7), which has no chunk.
pub(crate) const STARTUP: &[usize] = &[3000, 17, 1500, 18, 7, 40, 4000, 2, 2500, 1];

#[test]
fn lazy_restore_records_the_chunks_touched_in_order() {
    let test = "lazy_restore_records_the_chunks_touched_in_order";
    if lazy_skip(test) {
        return;
    }
    let s = Setup::new(20);
    let profile = s.dir.path().join("p.profile");
    let o = s.run(
        &s.img,
        "record",
        &[
            ("TOUCH", list(STARTUP)),
            ("AFTER", list(&[100, 2600, 3500])),
            ("PROFILE", profile.display().to_string()),
        ],
    );
    assert!(
        o.ok() && o.out.contains("END"),
        "{}:\n{}",
        signame(&o),
        o.out
    );
    assert_content(&o, s.base, &[]);
    // Exactly the chunks touched, in first-touch order, once each.
    let mut want = Vec::new();
    for &p in STARTUP {
        if let Some(c) = s.chunk_of(p) {
            if !want.contains(&c) {
                want.push(c);
            }
        }
    }
    let got = Profile::read(&profile).unwrap();
    assert_eq!(got.chunks, want, "recorded profile");
    let img = Image::open_with_key(&s.img, Some(&s.key)).unwrap();
    assert_eq!(got.image_id, img.header().image_id);
    // Nothing was prefetched while recording: each of them was a fault.
    assert_eq!(stat(&o.out, "units_prefetched"), 0);
    assert!(stat(&o.out, "faults_waited") >= want.len() as u64);
}

#[test]
fn an_optimized_image_fetches_its_working_set_first() {
    let test = "an_optimized_image_fetches_its_working_set_first";
    if lazy_skip(test) {
        return;
    }
    let s = Setup::new(21);
    let touched: Vec<usize> = STARTUP.iter().copied().filter(|&p| p % 7 != 0).collect();
    let (opt, chunks, ws) = s.optimized(&touched);

    // Plain lazy: every startup chunk is a fault that waits.
    let plain = s.run(&s.img, "plain", &[("TOUCH", list(&touched))]);
    assert!(plain.ok(), "{}:\n{}", signame(&plain), plain.out);
    assert_eq!(stat(&plain.out, "faults_waited"), chunks.len() as u64);
    assert_eq!(stat(&plain.out, "ws_reads"), 0);

    // With the profile: the working set is read in one read and placed
    // before the program touches it, so no startup touch waits.
    let o = s.run(
        &opt,
        "use",
        &[("TOUCH", list(&touched)), ("WS", chunks.len().to_string())],
    );
    assert!(
        o.ok() && o.out.contains("END"),
        "{}:\n{}",
        signame(&o),
        o.out
    );
    assert_eq!(stat(&o.out, "faults_waited"), 0, "{}", o.out);
    assert_eq!(stat(&o.out, "ws_reads"), 1);
    assert_eq!(stat(&o.out, "ws_bytes"), ws.end - ws.start);
    assert_content(&o, s.base, &[]);

    // Eager restore of the optimized image: the same content.
    let e = s.run(&opt, "eager", &[]);
    assert!(
        e.ok() && e.out.contains("END"),
        "{}:\n{}",
        signame(&e),
        e.out
    );
    assert_content(&e, s.base, &[]);
}

/// A damaged chunk in the working set (its stored bytes changed) is never
/// placed: every other page reads right, and a touch of the damaged one
/// ends the program with SIGSEGV.
#[test]
fn damage_in_the_working_set_is_never_served() {
    let test = "damage_in_the_working_set_is_never_served";
    if lazy_skip(test) {
        return;
    }
    let s = Setup::new(22);
    let pages = [3000usize, 17, 1500];
    let chunks: Vec<u64> = pages.iter().map(|&p| s.chunk_of(p).unwrap()).collect();
    let img = Image::open_with_key(&s.img, Some(&s.key)).unwrap();
    let p = Profile {
        image_id: img.header().image_id,
        chunks: chunks.clone(),
    };
    let opt = s.dir.path().join("opt.img");
    let (bytes, _) = memimg::relayout(&img, &p, Vec::new()).unwrap();
    // Chunk 17's stored bytes (second in the working set) get one bit
    // flipped.
    let o2 = Image::from_bytes(bytes.clone(), Some(&s.key)).unwrap();
    let at = o2.chunk_locs()[chunks[1] as usize].offset as usize + 20;
    let mut bad = bytes;
    bad[at] ^= 1;
    std::fs::write(&opt, &bad).unwrap();
    let ext = *o2.extent_at(s.base + (17 * PS) as u64).unwrap().unwrap();
    let first = ((ext.addr - s.base) / PS as u64) as usize;
    let skip: Vec<usize> = (first..first + ext.page_count as usize).collect();
    let o = s.run(
        &opt,
        "use",
        &[
            ("TOUCH", list(&[3000, 1500])),
            ("WS", chunks.len().to_string()),
            ("SKIP", list(&skip)),
        ],
    );
    assert_eq!(
        ls::signal(&o),
        Some(libc::SIGSEGV),
        "{}:\n{}",
        signame(&o),
        o.out
    );
    assert!(o.out.contains("TOUCHING-DAMAGED") && !o.out.contains("SURVIVED"));
    assert_eq!(stat(&o.out, "errors"), 1);
    assert_content(&o, s.base, &skip);
    // Verify names the damaged chunk.
    let r = memimg::verify_path(&opt, Some(&s.key), &memimg::VerifyOptions::default());
    assert!(r
        .problems
        .iter()
        .any(|p| p.location.chunk == Some(chunks[1])));
}
