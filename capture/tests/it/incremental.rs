//! Incremental images in memimg-capture: a tracked persist of 1 GiB whose
//! child holds exactly the pages written, and random chains of 1 to 5
//! images that read back every generation through `Chain::read_at` and
//! restore it with each strategy in a fresh process.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use memimg::{
    Chain, ChainOptions, Codec, ExtentKind, Image, Prot, RegionInfo, RegionKind, Writer,
    WriterOptions,
};
use memimg_capture::{
    restore, PersistOptions, Persister, RestoreOptions, Strategy, TrackError, TrackMethod,
    TrackOptions,
};

use crate::common::{self, skip};
use crate::lazy_support::{lazy_skip, limit, run_limited};

const PS: usize = 4096;

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// `count` distinct page numbers below `pages`, from `seed`.
fn scattered(pages: usize, count: usize, seed: u64) -> BTreeSet<usize> {
    let mut x = seed | 1;
    let mut v = BTreeSet::new();
    while v.len() < count {
        v.insert(xorshift(&mut x) as usize % pages);
    }
    v
}

fn persist_mib() -> usize {
    std::env::var("MEMIMG_TRACK_TEST_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

/// The data pages of `img`'s region at `base`, as page numbers.
fn stored_pages(img: &Image, base: u64) -> BTreeSet<usize> {
    let r = img
        .regions()
        .unwrap()
        .iter()
        .find(|r| r.info.start == base)
        .unwrap()
        .clone();
    let mut v = BTreeSet::new();
    for e in img.region_extents(&r).unwrap() {
        match e.kind {
            ExtentKind::Data => {
                let first = ((e.addr - base) / PS as u64) as usize;
                v.extend(first..first + e.page_count as usize);
            }
            ExtentKind::InParent => {}
            k => panic!("unexpected {k:?} extent at {:#x}", e.addr),
        }
    }
    v
}

/// The in-process test: a persist API workload writes 1% of 1 GiB
/// between a tracked full persist and a persist with a parent; the child
/// holds exactly the written pages (write-protection tracking), or exactly
/// the pieces holding them (the checksum fallback), and reads back through
/// its chain; a second child, of the first, holds the next writes only.
fn persist_child(method: TrackMethod) {
    let test = format!("incremental::persist_child_{method}");
    let len = persist_mib() << 20;
    let pages = len / PS;
    let base = common::map_anon(len);
    for p in 0..pages {
        // SAFETY: inside the mapping; every page non-zero and its own.
        unsafe { base.add(p * PS).cast::<u64>().write_volatile(p as u64 + 1) };
    }
    // SAFETY: the mapping stays for the test; written only through
    // volatile stores between persists, which the tracker sees.
    let data = unsafe { std::slice::from_raw_parts(base, len) };
    let opts = TrackOptions {
        force: Some(method),
        ..TrackOptions::default()
    };
    let p = match Persister::new()
        .region(data, RegionKind::Heap, "arena")
        .track(&opts)
    {
        Ok(p) => p,
        Err(memimg_capture::PersistError::Track(TrackError::Unavailable(why))) => {
            skip(&test, &why);
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let d = tempfile::tempdir().unwrap();
    let (b, c1, c2) = (
        d.path().join("base.img"),
        d.path().join("c1.img"),
        d.path().join("c2.img"),
    );
    // With page digests, which every link keeps (checked by the verify of
    // the chain below, which hashes each page against its digest).
    let po = PersistOptions {
        codec: Codec::Zstd(1),
        page_digests: true,
        ..PersistOptions::default()
    };
    p.write_to_path(&b, &po).unwrap();
    let write = |set: &BTreeSet<usize>, v: u8| {
        for &pg in set {
            // SAFETY: inside the mapping.
            unsafe { base.add(pg * PS + 100).write_volatile(v) };
        }
    };
    let first = scattered(pages, pages / 100, 0xfeed);
    write(&first, 0xab);
    let rep = p.write_child_to_path(&c1, Some("base.img"), &po).unwrap();
    assert_eq!(rep.method, method);
    let piece = TrackOptions::default().piece_size as usize / PS;
    let expect = |set: &BTreeSet<usize>| -> BTreeSet<usize> {
        match method {
            TrackMethod::WpAsync => set.clone(),
            _ => set
                .iter()
                .flat_map(|&pg| (pg / piece * piece)..(pg / piece * piece + piece))
                .collect(),
        }
    };
    let child = Image::open(&c1).unwrap();
    assert_eq!(child.depth(), 1);
    assert_eq!(stored_pages(&child, base as u64), expect(&first));
    assert_eq!(rep.child.written_bytes, (expect(&first).len() * PS) as u64);
    // A second generation, child of the first.
    let second = scattered(pages, pages / 100, 0xbeef);
    write(&second, 0xcd);
    let rep2 = p.write_child_to_path(&c2, Some("c1.img"), &po).unwrap();
    let child2 = Image::open(&c2).unwrap();
    assert_eq!(child2.depth(), 2);
    assert_eq!(stored_pages(&child2, base as u64), expect(&second));
    assert_eq!(rep2.stats.data_bytes, (expect(&second).len() * PS) as u64);
    // Read back through the chain: every written page and a sample of the
    // others.
    let chain = Chain::open(&c2, None, &ChainOptions::default()).unwrap();
    assert_eq!(chain.links().len(), 3);
    assert!(chain.links().iter().all(Image::has_page_digests));
    let report = memimg::verify_chain_path(
        &c2,
        None,
        &ChainOptions::default(),
        &memimg::VerifyOptions {
            decode: true,
            progress: None,
        },
    );
    assert!(report.is_intact(), "{:?}", report.problems);
    let mut buf = vec![0u8; PS];
    let check = |pg: usize, buf: &mut Vec<u8>| {
        chain.read_at(base as u64 + (pg * PS) as u64, buf).unwrap();
        // SAFETY: inside the mapping.
        let want = unsafe { std::slice::from_raw_parts(base.add(pg * PS), PS) };
        assert!(buf[..] == want[..], "page {pg} differs through the chain");
    };
    for &pg in first.iter().chain(&second) {
        check(pg, &mut buf);
    }
    for pg in (0..pages).step_by(997) {
        check(pg, &mut buf);
    }
    drop(chain);
    drop(p);
    // SAFETY: our own mapping, no longer borrowed.
    unsafe { libc::munmap(base.cast(), len) };
}

#[test]
fn persist_child_wp_async_holds_exactly_the_written_pages() {
    persist_child(TrackMethod::WpAsync);
}

#[test]
fn persist_child_checksums_holds_exactly_the_written_pieces() {
    persist_child(TrackMethod::Checksums);
}

/// The regions of the random chains: 40 and 24 pages.
const R1_PAGES: usize = 40;
const R2_PAGES: usize = 24;

fn region_addrs(slot: u64) -> [u64; 2] {
    let a = 0x3b00_0000_0000 + slot * 0x1000_0000;
    [a, a + 0x10_0000]
}

/// The content of generation `g` of chain `seed`: random pages, then per
/// generation about ten pages rewritten and three zeroed, at random.
fn content(seed: u64, g: u64) -> [Vec<u8>; 2] {
    let mut r = [vec![0u8; R1_PAGES * PS], vec![0u8; R2_PAGES * PS]];
    common::fill_random(&mut r[0], seed ^ 0x11);
    common::fill_random(&mut r[1], seed ^ 0x22);
    for k in 1..=g {
        let mut x = ((seed << 8) | k).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        for _ in 0..13 {
            let which = (xorshift(&mut x) % 2) as usize;
            let pg = xorshift(&mut x) as usize % (r[which].len() / PS);
            let page = &mut r[which][pg * PS..(pg + 1) * PS];
            if xorshift(&mut x).is_multiple_of(4) {
                page.fill(0);
            } else {
                common::fill_random(page, x);
            }
        }
    }
    r
}

/// Writes chain `seed` of `depth` children into `dir`; returns the paths,
/// full image first. Codec none (mmap-able) for even seeds, zstd for odd.
fn write_chain(dir: &Path, seed: u64, depth: u64, slot: u64) -> Vec<PathBuf> {
    let addrs = region_addrs(slot);
    let codec = if seed.is_multiple_of(2) {
        Codec::None
    } else {
        Codec::Zstd(1)
    };
    let mut paths: Vec<PathBuf> = Vec::new();
    for g in 0..=depth {
        let path = dir.join(format!("g{g}.img"));
        let mut o = WriterOptions::new()
            .page_size(PS as u32)
            // Chunk sizes differ between links, so a child's stored pages
            // cut its parents' chunks: restores then read parts of them.
            .chunk_size([16u32, 4, 8, 4, 16, 8][g as usize % 6] * 1024)
            .codec(codec)
            .validation("chain", b"v".to_vec());
        let parent = paths
            .last()
            .map(|p| Chain::open(p, None, &ChainOptions::default()).unwrap());
        if let Some(c) = &parent {
            o = o
                .parent_of(c.image())
                .unwrap()
                .parent_hint(format!("g{}.img", g - 1));
        }
        let mut w = Writer::new(std::fs::File::create(&path).unwrap(), o).unwrap();
        let before = content(seed, g.saturating_sub(1));
        for (k, ((addr, data), old)) in addrs.iter().zip(content(seed, g)).zip(before).enumerate() {
            // The second region read-only: a restore that copies pages into
            // it must do so before protecting it.
            let info = RegionInfo::new(*addr, data.len() as u64);
            let info = if k == 1 {
                info.prot(Prot(Prot::READ))
            } else {
                info
            };
            match &parent {
                // The last generation, and every second one before it, as
                // a capture writes them: page by page, only the pages that
                // changed (they cut the parents' chunks); the others by
                // whole chunks of the parent.
                Some(_) if (depth - g).is_multiple_of(2) => {
                    w.begin_region(info).unwrap();
                    for (new, was) in data.chunks(PS).zip(old.chunks(PS)) {
                        if new == was {
                            w.push_in_parent(PS as u64).unwrap();
                        } else {
                            w.push_data(new).unwrap();
                        }
                    }
                    w.end_region().unwrap();
                }
                Some(c) => w.add_region_against(info, &data, c).unwrap(),
                None => w.add_region(info, &data).unwrap(),
            }
        }
        w.finish().unwrap();
        paths.push(path);
    }
    paths
}

/// The child side: restores the chain at IMG and compares every byte with
/// generation GEN of chain SEED.
pub fn child_role(role: &str) -> bool {
    if role != "chain-restore" {
        return false;
    }
    let var = |k: &str| std::env::var(k).unwrap();
    let seed: u64 = var("SEED").parse().unwrap();
    let g: u64 = var("GEN").parse().unwrap();
    let slot: u64 = var("SLOT").parse().unwrap();
    let strategy: Strategy = var("STRATEGY").parse().unwrap();
    let restored = restore(
        Path::new(&var("IMG")),
        &RestoreOptions {
            strategy,
            expect_validation: Some((b"chain".to_vec(), b"v".to_vec())),
            ..RestoreOptions::default()
        },
    )
    .unwrap();
    assert_eq!(restored.strategy, strategy);
    // SKIP: pages of the first region not to read (a damaged piece), and
    // the first of them is touched at the end.
    let skip: Vec<usize> = std::env::var("SKIP")
        .map(|v| v.split(',').map(|p| p.parse().unwrap()).collect())
        .unwrap_or_default();
    for (k, (addr, want)) in region_addrs(slot).iter().zip(content(seed, g)).enumerate() {
        // SAFETY: restore mapped the region readable at addr.
        let got = unsafe { std::slice::from_raw_parts(*addr as usize as *const u8, want.len()) };
        for p in 0..want.len() / PS {
            if k == 0 && skip.contains(&p) {
                continue;
            }
            assert!(
                got[p * PS..(p + 1) * PS] == want[p * PS..(p + 1) * PS],
                "page {p} of {addr:#x} differs after a {strategy} restore"
            );
        }
    }
    if let Some(&p) = skip.first() {
        println!("TOUCHING-DAMAGED page {p}");
        let at = region_addrs(slot)[0] as usize + p * PS;
        // SAFETY: a page of the restored region; the handler makes a damaged
        // piece inaccessible, so this read ends the process with SIGSEGV.
        let b = unsafe { std::ptr::read_volatile(at as *const u8) };
        println!("SURVIVED with {b}");
        return true;
    }
    if let Some(h) = restored.lazy.as_ref() {
        assert!(h.stats().error.is_none(), "{:?}", h.stats());
    }
    // Each region ends with its recorded protection, wherever its pages
    // came from (mapped, copied, decoded or cleared).
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    for (addr, perms) in region_addrs(slot).iter().zip(["rw-p", "r--p"]) {
        let len = [R1_PAGES, R2_PAGES][usize::from(perms == "r--p")] * PS;
        for line in maps.lines() {
            let (range, rest) = line.split_once(' ').unwrap();
            let (a, _) = range.split_once('-').unwrap();
            let a = u64::from_str_radix(a, 16).unwrap();
            if (*addr..*addr + len as u64).contains(&a) {
                assert!(rest.starts_with(perms), "{strategy}: {line}");
            }
        }
    }
    println!("CHAIN-RESTORED-OK");
    true
}

/// Random chains of 1 to 5 children: each generation reads back exactly
/// through `Chain::read_at`, and the last restores with each strategy
/// (mmap where every link is plain and raw) in a fresh process.
#[test]
fn random_chains_read_back_and_restore_with_each_strategy() {
    let lazy_ok = !lazy_skip("incremental::random_chains_read_back_and_restore_with_each_strategy");
    let mut partial = 0;
    for seed in 0..6u64 {
        let depth = 1 + seed % 5;
        let d = tempfile::tempdir().unwrap();
        let paths = write_chain(d.path(), seed, depth, seed);
        for (g, p) in paths.iter().enumerate() {
            let chain = Chain::open(p, None, &ChainOptions::default()).unwrap();
            assert_eq!(chain.links().len(), g + 1);
            for (addr, want) in region_addrs(seed).iter().zip(content(seed, g as u64)) {
                let mut got = vec![0u8; want.len()];
                chain.read_at(*addr, &mut got).unwrap();
                assert!(got == want, "chain {seed} generation {g} at {addr:#x}");
            }
        }
        // Restores read parts of chunks: a child's pages cut its parents'.
        let last = Chain::open(paths.last().unwrap(), None, &ChainOptions::default()).unwrap();
        partial += region_addrs(seed)
            .iter()
            .flat_map(|&a| last.segments(a, a + (R1_PAGES * PS) as u64).unwrap())
            .filter(|s| {
                matches!(s.kind, memimg::SegmentKind::Data(e)
                    if e.addr != s.start || e.end(PS as u32) != s.end)
            })
            .count();
        let mut strategies = vec![Strategy::Eager];
        if seed.is_multiple_of(2) {
            strategies.push(Strategy::Mmap);
        }
        if lazy_ok {
            strategies.push(Strategy::Lazy);
        }
        for st in strategies {
            let env = [
                ("IMG", paths.last().unwrap().display().to_string()),
                ("SEED", seed.to_string()),
                ("GEN", depth.to_string()),
                ("SLOT", seed.to_string()),
                ("STRATEGY", st.to_string()),
            ];
            let o = run_limited("chain-restore", &env, limit());
            assert!(
                o.ok() && o.out.contains("CHAIN-RESTORED-OK"),
                "chain {seed} (depth {depth}), {st}:\n{}",
                o.out
            );
        }
    }
    assert!(partial > 0, "no restore read a chunk in part");
}

/// A lazy restore of a chain never serves a damaged chunk of a link: the
/// pieces that hold its pages are made inaccessible (a touch is SIGSEGV),
/// and every other page reads right, from every link.
#[test]
fn lazy_chain_restore_never_serves_a_damaged_link() {
    if lazy_skip("incremental::lazy_chain_restore_never_serves_a_damaged_link") {
        return;
    }
    let (seed, depth, slot) = (2u64, 3u64, 20u64);
    let d = tempfile::tempdir().unwrap();
    let paths = write_chain(d.path(), seed, depth, slot);
    let last = paths.last().unwrap();
    let base = region_addrs(slot)[0];
    let (chunk, piece) = {
        let img = Image::open(last).unwrap();
        let chunk = img
            .extents()
            .unwrap()
            .iter()
            .find(|e| e.kind == ExtentKind::Data && e.region == 0)
            .unwrap()
            .chunk;
        // Flip one bit of the chunk's stored bytes (raw pages: codec none
        // for an even seed); its checksum no longer matches.
        let at = img.chunk_locs()[chunk as usize].offset + 20;
        let mut bytes = std::fs::read(last).unwrap();
        bytes[at as usize] ^= 1;
        std::fs::write(last, &bytes).unwrap();
        (chunk, u64::from(img.header().chunk_size))
    };
    // The damaged pages, widened to the restore's pieces (chunk-sized, from
    // the region's start).
    let img = Image::open(last).unwrap();
    let mut skip = BTreeSet::new();
    for e in img.extents().unwrap() {
        if e.kind == ExtentKind::Data && e.chunk == chunk && e.region == 0 {
            for p in 0..u64::from(e.page_count) {
                let off = e.addr + p * PS as u64 - base;
                let first = off / piece * piece;
                for q in (first..(first + piece).min((R1_PAGES * PS) as u64)).step_by(PS) {
                    skip.insert((q / PS as u64) as usize);
                }
            }
        }
    }
    assert!(!skip.is_empty());
    let env = [
        ("IMG", last.display().to_string()),
        ("SEED", seed.to_string()),
        ("GEN", depth.to_string()),
        ("SLOT", slot.to_string()),
        ("STRATEGY", "lazy".to_string()),
        (
            "SKIP",
            crate::loadorder::list(&skip.iter().copied().collect::<Vec<_>>()),
        ),
    ];
    let o = run_limited("chain-restore", &env, limit());
    assert_eq!(
        crate::lazy_support::signal(&o),
        Some(libc::SIGSEGV),
        "pages {skip:?} of chunk {chunk}:\n{}",
        o.out
    );
    assert!(o.out.contains("TOUCHING-DAMAGED") && !o.out.contains("SURVIVED"));
}

/// A chain whose parent is missing does not restore: the error names the
/// parent it needs, and nothing is mapped.
#[test]
fn restore_of_a_child_without_its_parent_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let paths = write_chain(d.path(), 2, 1, 9);
    std::fs::remove_file(&paths[0]).unwrap();
    let e = restore(&paths[1], &RestoreOptions::default()).unwrap_err();
    let text = e.to_string();
    assert!(text.contains("its parent"), "{text}");
    // Nothing stays mapped at the region.
    let addr = region_addrs(9)[0];
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    assert!(!maps.contains(&format!("{addr:x}-")), "{maps}");
}
