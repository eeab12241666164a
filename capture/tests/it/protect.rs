//! Pages a process cannot read itself hold data: a page written and then
//! made PROT_NONE, a write-only mapping. A capture keeps their bytes and
//! their protection (as gcore keeps the bytes), and a restore gives the
//! protection back after filling them.

use std::path::{Path, PathBuf};
use std::process::Command;

use memimg::{Codec, ExtentKind, Image, Prot, RegionInfo, RegionKind, Writer, WriterOptions};
use memimg_capture::{capture_to_path, restore, CaptureOptions, RestoreOptions, Strategy};

use crate::child::{pattern_page, FILE_SEED, FILE_WRITTEN, PROT_SEED, RESERVE_LEN};
use crate::common::{self, run_role, spawn_role, ChildProc};
use crate::live::need_ptrace;

const PS: u64 = 4096;

/// Starts the `prot` role and captures it into `dir/prot.img`.
fn capture_prot(dir: &Path, opts: &CaptureOptions) -> (ChildProc, PathBuf) {
    let child = spawn_role("prot", &[]);
    let out = dir.join("prot.img");
    capture_to_path(child.pid(), &out, opts).unwrap();
    (child, out)
}

fn read(img: &Image, addr: u64, len: u64) -> Vec<u8> {
    let mut v = vec![0u8; len as usize];
    img.read_at(addr, &mut v)
        .unwrap_or_else(|e| panic!("reading {len} bytes at {addr:#x} from the image: {e}"));
    v
}

/// The pages of the `prot` role that its own code cannot read, with the
/// bytes they hold and the protection of their region.
fn unreadable_pages(child: &ChildProc) -> Vec<(u64, Vec<u8>, Prot)> {
    let noaccess = child.var("noaccess");
    let wonly = child.var("wonly");
    let mut v = Vec::new();
    for i in 1..3 {
        v.push((
            noaccess + i * PS,
            pattern_page(PROT_SEED, i as usize),
            Prot(0),
        ));
    }
    for i in 0..2 {
        v.push((
            wonly + i * PS,
            pattern_page(PROT_SEED, 10 + i as usize),
            Prot(Prot::WRITE),
        ));
    }
    v
}

#[test]
fn captures_pages_the_process_cannot_read() {
    need_ptrace!("captures_pages_the_process_cannot_read");
    let dir = tempfile::tempdir().unwrap();
    let (child, out) = capture_prot(dir.path(), &CaptureOptions::default());
    let img = Image::open(&out).unwrap();
    for (addr, want, prot) in unreadable_pages(&child) {
        let r = img
            .region_at(addr)
            .unwrap()
            .expect("a region holds the page");
        assert_eq!(r.info.prot, prot, "protection of the region at {addr:#x}");
        let e = img.extent_at(addr).unwrap().unwrap();
        assert_eq!(e.kind, ExtentKind::Data, "page {addr:#x} ({prot})");
        assert!(
            read(&img, addr, PS) == want,
            "page {addr:#x} ({prot}) differs"
        );
    }
    // The readable neighbours of the PROT_NONE pages, in regions of their own.
    let noaccess = child.var("noaccess");
    for i in [0u64, 3] {
        let r = img.region_at(noaccess + i * PS).unwrap().unwrap();
        assert_eq!(r.info.prot, Prot::RW);
        assert!(read(&img, noaccess + i * PS, PS) == pattern_page(PROT_SEED, i as usize));
    }
    // Untouched PROT_NONE address space costs nothing: zero pages, no data.
    let reserve = child.var("reserve");
    let r = img.region_at(reserve).unwrap().unwrap();
    assert_eq!((r.info.start, r.info.len), (reserve, RESERVE_LEN as u64));
    assert_eq!(r.info.prot, Prot(0));
    let ex = img.region_extents(r).unwrap();
    assert!(
        ex.iter().all(|e| e.kind == ExtentKind::Zero),
        "the reservation is recorded as {:?}",
        ex.iter().map(|e| e.kind).collect::<Vec<_>>()
    );
    // And the capture did not read it: reading an untouched page, even
    // through /proc/PID/mem, would have mapped the zero page there.
    let f = std::fs::File::open(format!("/proc/{}/pagemap", child.pid())).unwrap();
    let mut entries = vec![0u8; RESERVE_LEN / 4096 * 8];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut entries, reserve / PS * 8).unwrap();
    let touched = entries
        .chunks_exact(8)
        .filter(|e| u64::from_le_bytes((*e).try_into().unwrap()) & (1 << 63) != 0)
        .count();
    assert_eq!(touched, 0, "the capture touched pages of the reservation");
    // The private file mapping: the written page is the private copy.
    let file = child.var("file");
    let mut want = pattern_page(FILE_SEED, 0);
    want[..FILE_WRITTEN.len()].copy_from_slice(FILE_WRITTEN);
    assert!(read(&img, file, PS) == want, "the private copy differs");
    assert!(read(&img, file + PS, PS) == pattern_page(FILE_SEED, 1));
}

/// The `PT_LOAD` segments of an ELF64 core: (vaddr, file offset, filesz).
fn core_loads(core: &[u8]) -> Vec<(u64, u64, u64)> {
    let u16_at = |o: usize| u16::from_le_bytes(core[o..o + 2].try_into().unwrap());
    let u32_at = |o: usize| u32::from_le_bytes(core[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(core[o..o + 8].try_into().unwrap());
    assert_eq!(&core[..5], b"\x7fELF\x02", "not an ELF64 core");
    let phoff = u64_at(0x20) as usize;
    let phentsize = u16_at(0x36) as usize;
    let phnum = u16_at(0x38) as usize;
    assert_ne!(phnum, 0xffff, "PN_XNUM cores are not read here");
    (0..phnum)
        .map(|i| phoff + i * phentsize)
        .filter(|&p| u32_at(p) == 1)
        .map(|p| (u64_at(p + 16), u64_at(p + 8), u64_at(p + 32)))
        .collect()
}

#[test]
fn pages_the_process_cannot_read_match_gcore() {
    need_ptrace!("pages_the_process_cannot_read_match_gcore");
    if let Some(why) = common::tool_missing("gcore") {
        common::skip(
            common::test_name!("pages_the_process_cannot_read_match_gcore"),
            &why,
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (child, out) = capture_prot(dir.path(), &CaptureOptions::default());
    let prefix = dir.path().join("core");
    let o = Command::new("gcore")
        .arg("-o")
        .arg(&prefix)
        .arg(child.pid().to_string())
        .output()
        .unwrap();
    let core_path = PathBuf::from(format!("{}.{}", prefix.display(), child.pid()));
    assert!(
        o.status.success() && core_path.exists(),
        "gcore failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let core = std::fs::read(&core_path).unwrap();
    let loads = core_loads(&core);
    let img = Image::open(&out).unwrap();
    // Each page the process cannot read: gcore holds it, and its bytes are
    // the image's (no differing page).
    for (addr, want, prot) in unreadable_pages(&child) {
        let (vaddr, off, _) = loads
            .iter()
            .copied()
            .find(|&(v, _, fsz)| v <= addr && addr + PS <= v + fsz)
            .unwrap_or_else(|| panic!("gcore did not keep page {addr:#x} ({prot})"));
        let at = (off + addr - vaddr) as usize;
        let theirs = &core[at..at + PS as usize];
        let ours = read(&img, addr, PS);
        assert!(theirs == ours, "page {addr:#x} ({prot}) differs from gcore");
        assert!(
            ours == want,
            "page {addr:#x} ({prot}) differs from what was written"
        );
    }
}

/// Where the protection test restores its regions, and how: (address,
/// pages, protection, seed of its bytes).
const RESTORED: [(u64, u64, u8, u64); 3] = [
    (0x3300_0000_0000, 2, 0, 1),
    (0x3300_0001_0000, 2, Prot::WRITE, 2),
    (0x3300_0002_0000, 1, Prot::READ, 3),
];

fn restored_bytes(seed: u64, pages: u64) -> Vec<u8> {
    (0..pages as usize)
        .flat_map(|i| pattern_page(seed << 8, i))
        .collect()
}

/// Writes an image of the regions in [`RESTORED`].
fn write_protected_image(path: &Path, codec: Codec) {
    let f = std::fs::File::create(path).unwrap();
    let mut w = Writer::new(f, WriterOptions::new().page_size(4096).codec(codec)).unwrap();
    for (addr, pages, prot, seed) in RESTORED {
        let info = RegionInfo::new(addr, pages * PS)
            .prot(Prot(prot))
            .kind(RegionKind::Anonymous)
            .name("protected");
        w.add_region(info, &restored_bytes(seed, pages)).unwrap();
    }
    w.finish().unwrap();
}

/// The child side: restores `IMG` with `STRATEGY`, then checks each
/// region's protection in /proc/self/maps and its bytes through
/// /proc/self/mem (which reads whatever the protection).
pub fn child_role(role: &str) -> bool {
    if role != "restore-prot" {
        return false;
    }
    let img = std::env::var("IMG").unwrap();
    let strategy: Strategy = std::env::var("STRATEGY").unwrap().parse().unwrap();
    let r = restore(
        Path::new(&img),
        &RestoreOptions {
            strategy,
            ..RestoreOptions::default()
        },
    )
    .unwrap();
    assert_eq!(r.strategy, strategy);
    // A lazy restore fills every page still missing before its handler stops.
    drop(r);
    let pid = std::process::id() as i32;
    let maps = memimg_capture::procfs::read_maps(pid).unwrap();
    for (addr, pages, prot, seed) in RESTORED {
        let m = maps
            .iter()
            .find(|m| m.start <= addr && addr < m.end)
            .unwrap_or_else(|| panic!("nothing mapped at {addr:#x}"));
        assert_eq!(
            (m.start, m.end, m.prot),
            (addr, addr + pages * PS, Prot(prot)),
            "{strategy}: the mapping at {addr:#x}"
        );
        let got = common::read_mem(pid, addr, (pages * PS) as usize).unwrap();
        assert!(
            got == restored_bytes(seed, pages),
            "{strategy}: the bytes at {addr:#x} ({}) differ",
            Prot(prot)
        );
    }
    println!("RESTORED-OK");
    true
}

fn restore_in_child(strategy: &str, codec: Codec) {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("prot.img");
    write_protected_image(&img, codec);
    let (ok, out) = run_role(
        "restore-prot",
        &[
            ("IMG", img.display().to_string()),
            ("STRATEGY", strategy.to_string()),
        ],
    );
    assert!(ok && out.contains("RESTORED-OK"), "{strategy}: {out}");
}

#[test]
fn restore_applies_recorded_protections() {
    restore_in_child("mmap", Codec::None);
    restore_in_child("eager", Codec::Zstd(1));
}

#[test]
fn restore_lazy_applies_recorded_protections() {
    if let Some(why) = memimg_capture::lazy_unavailable() {
        common::skip(
            common::test_name!("restore_lazy_applies_recorded_protections"),
            &why,
        );
        return;
    }
    restore_in_child("lazy", Codec::Zstd(1));
}
