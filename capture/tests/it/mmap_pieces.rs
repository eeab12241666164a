//! An mmap restore maps each region piece by piece into free space: the
//! runs of stored pages from the file, the gaps between them (zero pages)
//! as anonymous memory. These tests check what that must keep: each piece
//! has its region's protection, gaps read zeros, stored pages read the
//! image, and an address in use anywhere in a region (on stored pages or
//! in a gap, in the first region or a later one) is `AddressInUse` with
//! nothing of the restore left mapped. The mmap restore of a chain maps
//! its deepest link that way and the nearer links' pages over it: the same
//! checks, on a parent with gaps, short runs (copied) and long ones
//! (mapped), and a child that writes into its gaps and zeros its pages.

use std::path::Path;

use memimg::{Chain, ChainOptions, Codec, Prot, RegionInfo, RegionKind, Writer, WriterOptions};
use memimg_capture::{restore, RestoreError, RestoreOptions, Restored, Strategy};

use crate::child::pattern_page;
use crate::common::{self, run_role};

const PS: u64 = 4096;

/// The regions of the test images: (address, pages, protection, seed).
/// In the page strings `D` is a stored (non-zero) page and `.` a zero
/// page: runs of stored pages with gaps between them, at either end or not.
/// The first two regions touch, with different protections.
type Layout = (u64, &'static str, u8, u64);

const BASE: u64 = 0x3600_0000_0000;

const LAYOUT: [Layout; 4] = [
    (BASE, "..DDD...D..DDDD..", Prot::READ | Prot::WRITE, 1),
    (BASE + 17 * PS, "DD....DDD", Prot::READ, 2),
    (BASE + 0x10_0000, "D..D.", 0, 3),
    (BASE + 0x20_0000, "....DD", Prot::READ | Prot::WRITE, 4),
];

/// The bytes of a region: pattern pages where `D`, zeros where `.`.
fn bytes(pages: &str, seed: u64) -> Vec<u8> {
    pages
        .bytes()
        .enumerate()
        .flat_map(|(i, c)| {
            if c == b'D' {
                pattern_page(seed << 8, i)
            } else {
                vec![0u8; PS as usize]
            }
        })
        .collect()
}

/// Writes an uncompressed image (chunks of two pages, so that some runs
/// are several chunks) of `layout`, shifted by `shift` bytes.
fn write_image(path: &Path, layout: &[Layout], shift: u64) {
    let f = std::fs::File::create(path).unwrap();
    let opts = WriterOptions::new()
        .page_size(PS as u32)
        .chunk_size(2 * PS as u32)
        .codec(Codec::None);
    let mut w = Writer::new(f, opts).unwrap();
    for &(addr, pages, prot, seed) in layout {
        let info = RegionInfo::new(addr + shift, pages.len() as u64 * PS)
            .prot(Prot(prot))
            .kind(RegionKind::Anonymous)
            .name("pieces");
        w.add_region(info, &bytes(pages, seed)).unwrap();
    }
    w.finish().unwrap();
}

/// The lines of /proc/self/maps that overlap `start..end`, as
/// (start, end, perms).
fn maps_within(start: u64, end: u64) -> Vec<(u64, u64, String)> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines()
        .filter_map(|line| {
            let (range, rest) = line.split_once(' ')?;
            let (a, b) = range.split_once('-')?;
            let a = u64::from_str_radix(a, 16).ok()?;
            let b = u64::from_str_radix(b, 16).ok()?;
            (a < end && start < b).then(|| (a, b, rest[..4].to_string()))
        })
        .collect()
}

fn perms(prot: u8) -> String {
    let p = Prot(prot);
    format!(
        "{}{}{}p",
        if p.read() { 'r' } else { '-' },
        if p.write() { 'w' } else { '-' },
        if p.exec() { 'x' } else { '-' }
    )
}

/// The child side: restores `IMG` with mmap; every page of every region is
/// mapped with the region's protection (and nothing else around it), and
/// reads the image's bytes (zeros in the gaps), whatever its protection.
pub fn child_role(role: &str) -> bool {
    if role == "mmap-chain" {
        return chain_child();
    }
    if role != "mmap-pieces" {
        return false;
    }
    let _restored = restore_env_image_by_mmap();
    let want: Vec<_> = LAYOUT
        .iter()
        .map(|&(addr, pages, prot, seed)| (addr, pages, prot, bytes(pages, seed)))
        .collect();
    check_restored(&want);
    // The first region is writable as recorded, and a write lands in this
    // process's private copy.
    // SAFETY: page 2 of the first region is mapped read-write by restore.
    unsafe { *((BASE + 2 * PS) as usize as *mut u8) = 0xa5 };
    // SAFETY: as above.
    assert_eq!(unsafe { *((BASE + 2 * PS) as usize as *const u8) }, 0xa5);
    println!("PIECES-OK");
    true
}

/// Restores the image named by `$IMG` in this process with mmap (no
/// fallback to another strategy).
fn restore_env_image_by_mmap() -> Restored {
    let img = std::env::var("IMG").unwrap();
    let r = restore(
        Path::new(&img),
        &RestoreOptions {
            strategy: Strategy::Mmap,
            ..RestoreOptions::default()
        },
    )
    .unwrap();
    assert_eq!(r.strategy, Strategy::Mmap);
    r
}

/// Checks regions restored in this process, given as (address, page
/// string, protection, bytes): mapped exactly with their protection, and
/// holding `bytes` (read through /proc/self/mem, whatever the protection).
fn check_restored(want: &[(u64, &str, u8, Vec<u8>)]) {
    let pid = std::process::id() as i32;
    for (addr, pages, prot, want) in want {
        let (addr, prot) = (*addr, *prot);
        let end = addr + pages.len() as u64 * PS;
        let maps = maps_within(addr, end);
        // The mappings cover the region exactly, page after page.
        let mut at = addr;
        for (a, b, p) in &maps {
            assert!(
                *a <= at && at < *b,
                "nothing mapped at {at:#x} in region {addr:#x}: {maps:?}"
            );
            assert_eq!(*p, perms(prot), "the mapping {a:#x}-{b:#x} of {addr:#x}");
            at = *b;
        }
        assert!(at >= end, "region {addr:#x} mapped only up to {at:#x}");
        let got = common::read_mem(pid, addr, (end - addr) as usize).unwrap();
        for (i, c) in pages.bytes().enumerate() {
            let page = i * PS as usize..(i + 1) * PS as usize;
            assert!(
                got[page.clone()] == want[page],
                "page {i} ({}) of region {addr:#x} differs",
                if c == b'.' { "zero" } else { "stored" }
            );
        }
    }
}

#[test]
fn mmap_restore_maps_each_piece_with_its_regions_protection() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("pieces.img");
    write_image(&img, &LAYOUT, 0);
    let before = std::fs::read(&img).unwrap();
    let (ok, out) = run_role("mmap-pieces", &[("IMG", img.display().to_string())]);
    assert!(ok && out.contains("PIECES-OK"), "{out}");
    // The write went to the child's private copy, never to the file.
    assert!(std::fs::read(&img).unwrap() == before, "the image changed");
}

/// Maps one anonymous read-write page at `addr`, holding `marker`.
fn block(addr: u64, marker: u64) {
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping.
    let p = unsafe {
        libc::mmap(
            addr as usize as *mut libc::c_void,
            PS as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    assert_eq!(p as u64, addr, "could not map the blocking page");
    // SAFETY: p is the page just mapped read-write, 8-byte aligned.
    unsafe { *(p as *mut u64) = marker };
}

/// Restores an image of [`LAYOUT`] moved by `shift` while one page,
/// page `page` of region `region`, is mapped by someone else: the restore
/// must fail with `AddressInUse` naming that region, leave that page alone
/// and leave nothing else mapped in the image's address range.
fn refused_at(shift: u64, region: usize, page: usize, strategy: Strategy) {
    let (addr, pages, _, _) = LAYOUT[region];
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("pieces.img");
    write_image(&img, &LAYOUT, shift);
    let (start, end) = (BASE + shift, BASE + shift + 0x30_0000);
    assert!(
        maps_within(start, end).is_empty(),
        "the test range is in use"
    );
    let at = addr + shift + page as u64 * PS;
    let marker = 0x6d6d_6170_0000_0000 | at;
    block(at, marker);
    let e = restore(
        &img,
        &RestoreOptions {
            strategy,
            ..RestoreOptions::default()
        },
    )
    .unwrap_err();
    let range = addr + shift..addr + shift + pages.len() as u64 * PS;
    assert!(
        matches!(e, RestoreError::AddressInUse { range: ref r, ref name } if *r == range && name == "pieces"),
        "{strategy}, page {page} of region {region}: {e}"
    );
    // Only the blocking page is mapped in the whole range, untouched.
    let left = maps_within(start, end);
    assert_eq!(
        left,
        vec![(at, at + PS, "rw-p".to_string())],
        "{strategy}, page {page} of region {region}: mappings left behind"
    );
    // SAFETY: the blocking page, still ours and read-write.
    assert_eq!(unsafe { *(at as usize as *const u64) }, marker);
    // SAFETY: our own page.
    unsafe { libc::munmap(at as usize as *mut libc::c_void, PS as usize) };
}

/// A page in use on a run of stored pages in the middle of the first
/// region (after its first run was mapped), or in a gap between runs of a
/// later region (after the earlier regions were mapped), or at the last
/// page of a region, or at the first: refused, nothing left behind.
#[test]
fn mmap_restore_over_an_address_in_use_leaves_nothing_mapped() {
    // (region, page) of the first region ("..DDD...D..DDDD.."): a stored
    // page alone between two gaps, a gap between two runs, a page inside
    // the last run (made of two chunks), the last page (a gap); a gap of
    // a later region (the regions before it are mapped by then); the
    // first page (stored) of the second region, which touches the first;
    // the last page (stored) of the last region.
    let cases = [
        (0, 8),
        (0, 9),
        (0, 13),
        (0, 16),
        (2, 1),
        (1, 4),
        (1, 0),
        (3, 5),
    ];
    for (i, &(region, page)) in cases.iter().enumerate() {
        assert!(
            page < LAYOUT[region].1.len(),
            "case {i} is outside its region"
        );
        let shift = (i as u64 + 1) * 0x100_0000;
        refused_at(shift, region, page, Strategy::Mmap);
    }
    // Eager refuses the same way (it reserves each region whole first), and
    // so does Auto (which maps this image).
    let n = cases.len() as u64 + 1;
    refused_at(n * 0x100_0000, 2, 1, Strategy::Eager);
    refused_at((n + 1) * 0x100_0000, 1, 4, Strategy::Auto);
}

/// The chain of the chain tests, at `CHAIN_BASE`: (offset, the parent's
/// pages, protection, seed). `D` is stored, `.` zero: short runs (at most
/// 16 pages, which a chain's mmap restore copies) and long ones (mapped).
const CHAIN_BASE: u64 = BASE + 0x4000_0000;

const CHAIN: [Layout; 2] = [
    (
        0,
        "..DDDD..DDDDDDDDDDDDDDDDDDDD......DDDDDDDDDDDDDDDDDDDDDDDD.....",
        Prot::READ | Prot::WRITE,
        5,
    ),
    (0x10_0000, "DDDDDDDDDDDDDDDDDDDD..........DD", Prot::READ, 6),
];

/// The child's changes to each region of [`CHAIN`]: `D` rewritten, `.`
/// zeroed, `-` as in the parent. Region 0: a page in the leading gap, a
/// page zeroed inside a long run, 22 pages across a gap and a run (long:
/// mapped over the parent's), a page in the trailing gap. Region 1
/// (read-only): a page zeroed, three pages in the gap, the last page.
const CHANGES: [&str; 2] = [
    "D------------.----------------DDDDDDDDDDDDDDDDDDDDDD-------D---",
    "-----.----------------DDD------D",
];

/// The bytes of region `k` of the chain: the parent's, or the child's.
fn chain_bytes(k: usize, child: bool) -> Vec<u8> {
    let (_, pages, _, seed) = CHAIN[k];
    let mut b = bytes(pages, seed);
    if child {
        for (i, c) in CHANGES[k].bytes().enumerate() {
            let page = &mut b[i * PS as usize..(i + 1) * PS as usize];
            match c {
                b'D' => page.copy_from_slice(&pattern_page((seed << 8) ^ 0xc0de, i)),
                b'.' => page.fill(0),
                _ => {}
            }
        }
    }
    b
}

/// Writes the parent and its child (page by page against it, as a capture
/// does), moved by `shift`; returns the child's path.
fn write_chain(dir: &Path, shift: u64) -> std::path::PathBuf {
    let mut parent = None;
    for g in 0..2 {
        let path = dir.join(format!("g{g}.img"));
        let mut o = WriterOptions::new()
            .page_size(PS as u32)
            .chunk_size(4 * PS as u32)
            .codec(Codec::None);
        if let Some(p) = &parent {
            let c = Chain::open(p, None, &ChainOptions::default()).unwrap();
            o = o.parent_of(c.image()).unwrap().parent_hint("g0.img");
        }
        let mut w = Writer::new(std::fs::File::create(&path).unwrap(), o).unwrap();
        for (k, &(off, pages, prot, _)) in CHAIN.iter().enumerate() {
            let info = RegionInfo::new(CHAIN_BASE + shift + off, pages.len() as u64 * PS)
                .prot(Prot(prot))
                .kind(RegionKind::Anonymous)
                .name("chain");
            let data = chain_bytes(k, g == 1);
            if g == 0 {
                w.add_region(info, &data).unwrap();
                continue;
            }
            let old = chain_bytes(k, false);
            w.begin_region(info).unwrap();
            for (new, was) in data.chunks(PS as usize).zip(old.chunks(PS as usize)) {
                if new == was {
                    w.push_in_parent(PS).unwrap();
                } else {
                    w.push_data(new).unwrap();
                }
            }
            w.end_region().unwrap();
        }
        w.finish().unwrap();
        parent = Some(path);
    }
    parent.unwrap()
}

fn chain_child() -> bool {
    let _restored = restore_env_image_by_mmap();
    let want: Vec<_> = CHAIN
        .iter()
        .enumerate()
        .map(|(k, &(off, pages, prot, _))| (CHAIN_BASE + off, pages, prot, chain_bytes(k, true)))
        .collect();
    check_restored(&want);
    println!("CHAIN-PIECES-OK");
    true
}

#[test]
fn mmap_restore_of_a_chain_maps_each_piece_with_its_regions_protection() {
    let dir = tempfile::tempdir().unwrap();
    let img = write_chain(dir.path(), 0);
    let (ok, out) = run_role("mmap-chain", &[("IMG", img.display().to_string())]);
    assert!(ok && out.contains("CHAIN-PIECES-OK"), "{out}");
}

/// The chain restored while one page of it is in use: AddressInUse naming
/// the region, only that page left in the chain's range.
#[test]
fn mmap_restore_of_a_chain_over_an_address_in_use_leaves_nothing_mapped() {
    // (region, page): in the parent's gap where the child writes, on a
    // page the child zeroes, inside a long parent run, on the read-only
    // region's gap.
    let cases = [(0, 30), (0, 13), (0, 40), (1, 23), (1, 0)];
    for (i, &(k, page)) in cases.iter().enumerate() {
        let shift = (i as u64 + 1) * 0x100_0000;
        let dir = tempfile::tempdir().unwrap();
        let img = write_chain(dir.path(), shift);
        let (start, end) = (CHAIN_BASE + shift, CHAIN_BASE + shift + 0x20_0000);
        assert!(
            maps_within(start, end).is_empty(),
            "the test range is in use"
        );
        let (off, pages, _, _) = CHAIN[k];
        let at = CHAIN_BASE + shift + off + page as u64 * PS;
        let marker = 0x6368_6169_0000_0000 | at;
        block(at, marker);
        let e = restore(
            &img,
            &RestoreOptions {
                strategy: Strategy::Mmap,
                ..RestoreOptions::default()
            },
        )
        .unwrap_err();
        let region = CHAIN_BASE + shift + off;
        let range = region..region + pages.len() as u64 * PS;
        assert!(
            matches!(e, RestoreError::AddressInUse { range: ref r, ref name } if *r == range && name == "chain"),
            "page {page} of region {k}: {e}"
        );
        assert_eq!(
            maps_within(start, end),
            vec![(at, at + PS, "rw-p".to_string())],
            "page {page} of region {k}: mappings left behind"
        );
        // SAFETY: the blocking page, still ours and read-write.
        assert_eq!(unsafe { *(at as usize as *const u64) }, marker);
        // SAFETY: our own page.
        unsafe { libc::munmap(at as usize as *mut libc::c_void, PS as usize) };
    }
}
