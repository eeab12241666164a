//! Tests of the ELF core conversion in inspect/src/elfcore: gdb on exported
//! cores, import of gcore and kernel cores, round trips, and malformed cores.
//!
//! The tests that need gdb, gcore or kernel core dumps skip where those
//! cannot run, through the skip protocol (support/skip.rs): a skip shows in
//! scripts/test.sh's summary, and fails on CI.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
// Test arithmetic is on small known values; the module under test is checked
// without these allowances.

use std::path::PathBuf;
use std::process::Command;

#[path = "support/gdb.rs"]
mod gdb;
#[path = "support/skip.rs"]
mod skip;
#[path = "support/sleeper.rs"]
mod sleeper;
use gdb::{gdb_bytes, have};
use imgtool::elfcore::{self, export_core, import_core, parse_core, CoreError, ExportOptions};
use memimg::{
    Codec, Image, Note, ProcessFacts, Prot, RegionInfo, RegionKind, Writer, WriterOptions,
};
use skip::skip;
use sleeper::{maps_range, Located, Sleeper};

const PS: u64 = 4096;

#[allow(clippy::cast_possible_truncation, clippy::type_complexity)]
fn pat(addr: u64) -> u8 {
    ((addr.wrapping_mul(0x9E37_79B9) >> 13) as u8) | 1
}

fn page_pat(addr: u64) -> Vec<u8> {
    (addr..addr + PS).map(pat).collect()
}

fn opts() -> WriterOptions {
    WriterOptions::new()
        .page_size(4096)
        .chunk_size(4 * 4096)
        .codec(Codec::None)
        .workers(0)
}

/// An image with every kind of content: data, zero runs, absent runs, a region
/// without data, a file-backed region, process facts, an ELF note and an
/// application note.
#[allow(clippy::cast_possible_truncation, clippy::type_complexity)]
fn sample_image() -> Vec<u8> {
    let facts = ProcessFacts {
        pid: Some(4242),
        comm: b"sampleproc".to_vec(),
        cmdline: b"sampleproc\0--flag\0value\0".to_vec(),
        exe: b"/usr/bin/sampleproc".to_vec(),
        build_id: vec![1, 2, 3, 4],
        kernel_release: b"6.1.0-test".to_vec(),
    };
    let notes = vec![
        Note {
            name: "CORE/6".into(),
            data: vec![
                9, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                0, 0, 0, 0, 0, 0,
            ],
        },
        Note {
            name: "app-state".into(),
            data: b"opaque".to_vec(),
        },
    ];
    let o = opts()
        .process(Some(facts))
        .notes(notes)
        .validation("tag", b"validation".to_vec());
    let mut w = Writer::new(Vec::new(), o).unwrap();
    // [heap]: data, zero, data, data.
    let mut heap = Vec::new();
    for p in 0..4u64 {
        let a = 0x10000 + p * PS;
        heap.extend(if p == 1 {
            vec![0; PS as usize]
        } else {
            page_pat(a)
        });
    }
    w.add_region(
        RegionInfo::new(0x10000, 4 * PS)
            .name("[heap]")
            .kind(RegionKind::Heap),
        &heap,
    )
    .unwrap();
    // [vvar]: no data.
    w.add_empty_region(
        RegionInfo::new(0x20000, 2 * PS)
            .name("[vvar]")
            .kind(RegionKind::Other)
            .prot(Prot(Prot::READ)),
    )
    .unwrap();
    // A file mapping: data, zero, data.
    let mut file = RegionInfo::new(0x30000, 3 * PS)
        .name("/usr/lib/libsample.so")
        .kind(RegionKind::FileBacked)
        .prot(Prot(Prot::READ | Prot::EXEC));
    file.file_offset = 0x2000;
    file.dev = (8 << 32) | 1;
    file.inode = 777;
    let mut fdata = page_pat(0x30000);
    fdata.extend(vec![0; PS as usize]);
    fdata.extend(page_pat(0x32000));
    w.add_region(file, &fdata).unwrap();
    // Anonymous: absent 2, data 1, zero 2, data 1.
    w.begin_region(RegionInfo::new(0x40000, 6 * PS)).unwrap();
    w.push_absent(2 * PS).unwrap();
    w.push_data(&page_pat(0x42000)).unwrap();
    w.push_zero(2 * PS).unwrap();
    w.push_data(&page_pat(0x45000)).unwrap();
    w.end_region().unwrap();
    w.finish().unwrap().0
}

fn export(img: &Image, o: &ExportOptions) -> (Vec<u8>, elfcore::ExportReport) {
    let mut core = Vec::new();
    let r = export_core(img, &mut core, o).unwrap();
    assert_eq!(r.file_len, core.len() as u64);
    (core, r)
}

fn import(core: &[u8]) -> (Image, elfcore::ImportReport) {
    let (bytes, _, r) = import_core(core, opts(), Vec::new()).unwrap();
    (Image::from_bytes(bytes, None).unwrap(), r)
}

/// Per page of every region: `Some(bytes)` when readable, `None` when not
/// captured; with the region facts. Two images with equal views hold the same
/// content.
#[allow(clippy::cast_possible_truncation, clippy::type_complexity)]
fn view(img: &Image) -> Vec<(RegionInfo, bool, Vec<(u64, Option<Vec<u8>>)>)> {
    let mut out = Vec::new();
    for r in img.regions().unwrap() {
        let mut pages = Vec::new();
        for a in (r.info.start..r.info.end()).step_by(PS as usize) {
            let mut b = vec![0u8; PS as usize];
            pages.push((a, img.read_at(a, &mut b).ok().map(|_| b)));
        }
        out.push((r.info.clone(), r.has_data(), pages));
    }
    out
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[allow(clippy::cast_possible_truncation, clippy::type_complexity)]
mod export {
    use super::*;

    #[test]
    fn gdb_reads_known_bytes() {
        if !have("gdb") {
            skip(
                concat!(module_path!(), "::gdb_reads_known_bytes"),
                "gdb is not installed",
            );
            return;
        }
        let img = Image::from_bytes(sample_image(), None).unwrap();
        let (core, report) = export(&img, &ExportOptions::default());
        assert!(!report.registers);
        assert!(
            report
                .messages
                .iter()
                .any(|m| m == "no registers: memory inspection only"),
            "{:?}",
            report.messages
        );
        let dir = tempdir();
        let path = dir.path().join("sample.core");
        std::fs::write(&path, &core).unwrap();
        // Data pages, in every region that has them.
        for addr in [0x10000u64, 0x12ff8, 0x30010, 0x32000, 0x42000, 0x45ff0] {
            let want: Vec<u8> = (addr..addr + 16).map(pat).collect();
            assert_eq!(gdb_bytes(&path, addr, 16).unwrap(), want, "at {addr:#x}");
        }
        // Across the end of a segment's file bytes into its hole.
        let mut want: Vec<u8> = (0x10ff8..0x11000).map(pat).collect();
        want.extend([0; 8]);
        assert_eq!(gdb_bytes(&path, 0x10ff8, 16).unwrap(), want);
        // Zero runs read as zeros: a hole of an anonymous region, and zeros
        // written out in the file mapping.
        for addr in [0x11000u64, 0x43000, 0x31000] {
            assert_eq!(
                gdb_bytes(&path, addr, 16).unwrap(),
                vec![0; 16],
                "at {addr:#x}"
            );
        }
        // An address in no segment is an error for gdb.
        assert!(gdb_bytes(&path, 0x90000, 16).is_err());
    }

    #[test]
    fn layout_is_sparse_and_flags_match() {
        let img = Image::from_bytes(sample_image(), None).unwrap();
        let (core, report) = export(&img, &ExportOptions::default());
        let cf = parse_core(&core).unwrap();
        let segs: Vec<(u64, u64, u64, u32)> = cf
            .segments
            .iter()
            .map(|s| (s.vaddr, s.memsz, s.filesz, s.flags))
            .collect();
        #[rustfmt::skip]
        assert_eq!(segs, vec![
            (0x10000, 2 * PS, PS, 6),     // data + zero hole
            (0x12000, 2 * PS, 2 * PS, 6), // data
            (0x20000, 2 * PS, 0, 4),      // no data
            (0x30000, 3 * PS, 3 * PS, 5), // file mapping: zeros written out
            (0x40000, 2 * PS, 0, 6),      // absent
            (0x42000, 3 * PS, PS, 6),     // data + zero hole
            (0x45000, PS, PS, 6),         // data
        ]);
        assert_eq!(report.segments, 7);
        assert_eq!(report.file_bytes, 8 * PS);
        assert_eq!(report.hole_bytes, 7 * PS);
        // Data starts on a page and the file holds nothing else.
        assert_eq!(cf.segments[0].offset % PS, 0);
        assert_eq!(core.len() as u64, cf.segments[0].offset + 8 * PS);
        let names: Vec<String> = cf
            .notes
            .iter()
            .map(|n| elfcore::notes::note_name(n.owner, n.n_type))
            .collect();
        assert_eq!(
            names,
            [
                "CORE/6",
                "CORE/3",
                "CORE/1179208773",
                "MEMIMG/1296891905",
                "MEMIMG/1296891907",
                "MEMIMG/1296891906"
            ]
        );
        assert_eq!(report.notes, names);
        let pr = elfcore::notes::parse_prpsinfo(cf.order, cf.notes[1].desc).unwrap();
        assert_eq!(
            (pr.pid, pr.fname.as_slice(), pr.psargs.as_slice()),
            (4242, &b"sampleproc"[..], &b"sampleproc --flag value"[..])
        );
        let f = elfcore::notes::parse_nt_file(cf.order, cf.notes[2].desc).unwrap();
        assert_eq!(f.entries.len(), 1);
        assert_eq!(
            (
                f.entries[0].start,
                f.entries[0].end,
                f.entries[0].path.as_slice()
            ),
            (0x30000, 0x33000, &b"/usr/lib/libsample.so"[..])
        );
        assert_eq!(f.entries[0].page_offset * f.page_size, 0x2000);
    }

    #[test]
    fn readelf_accepts_the_core() {
        if !have("readelf") {
            skip(
                concat!(module_path!(), "::readelf_accepts_the_core"),
                "readelf is not installed",
            );
            return;
        }
        let img = Image::from_bytes(sample_image(), None).unwrap();
        let (core, _) = export(&img, &ExportOptions::default());
        let dir = tempdir();
        let path = dir.path().join("c");
        std::fs::write(&path, &core).unwrap();
        if let Ok(keep) = std::env::var("ELFCORE_KEEP") {
            std::fs::write(keep, &core).unwrap();
        }
        let out = Command::new("readelf")
            .args(["-W", "-l", "-n"])
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            text
        );
        assert_eq!(text.matches("  LOAD ").count(), 7, "{text}");
        assert!(
            text.contains("NT_PRPSINFO") && text.contains("NT_FILE") && text.contains("NT_AUXV"),
            "{text}"
        );
    }

    #[test]
    fn many_segments_use_pn_xnum() {
        // 70000 one-page regions with a hole between each: more program headers
        // than e_phnum can count.
        let mut w = Writer::new(Vec::new(), opts()).unwrap();
        for i in 0..70_000u64 {
            w.add_empty_region(RegionInfo::new(0x1000_0000 + i * 2 * PS, PS))
                .unwrap();
        }
        let img = Image::from_bytes(w.finish().unwrap().0, None).unwrap();
        let (core, r) = export(
            &img,
            &ExportOptions {
                memimg_notes: false,
            },
        );
        assert_eq!(r.segments, 70_000);
        assert_eq!(u16::from_le_bytes([core[56], core[57]]), 0xffff);
        let cf = parse_core(&core).unwrap();
        assert_eq!(cf.segments.len(), 70_000);
        let (img2, _) = import(&core);
        assert_eq!(img2.regions().unwrap().len(), 70_000);
    }
}

#[allow(clippy::cast_possible_truncation, clippy::type_complexity)]
mod roundtrip {
    use super::*;

    #[test]
    fn image_core_image_is_identical() {
        let bytes = sample_image();
        let img = Image::from_bytes(bytes, None).unwrap();
        let (core, _) = export(&img, &ExportOptions::default());
        let (back, report) = import(&core);
        assert!(report.from_memimg_notes);
        let cf = parse_core(&core).unwrap();
        let rn = cf
            .notes
            .iter()
            .find(|n| n.is_owner("MEMIMG") && n.n_type == elfcore::notes::NT_MEMIMG_REGIONS)
            .unwrap();
        assert_eq!(
            elfcore::notes::parse_regions_note(cf.order, rn.desc)
                .unwrap()
                .generated,
            3
        );
        assert_eq!(view(&back), view(&img));
        assert_eq!(back.notes().unwrap(), img.notes().unwrap());
        assert_eq!(back.header().process, img.header().process);
        assert_eq!(back.header().validation, img.header().validation);
        assert_eq!(back.header().machine, img.header().machine);
        // Extent by extent, the same kinds (zero stays zero, absent stays absent).
        let kinds = |i: &Image| {
            i.extents()
                .unwrap()
                .iter()
                .map(|e| (e.addr, e.page_count, e.kind))
                .collect::<Vec<_>>()
        };
        assert_eq!(kinds(&back), kinds(&img));
        // And exporting again gives the same core, byte for byte.
        let (core2, _) = export(&back, &ExportOptions::default());
        assert_eq!(core2, core);
    }

    #[test]
    fn without_memimg_notes_content_survives() {
        let img = Image::from_bytes(sample_image(), None).unwrap();
        let (core, report) = export(
            &img,
            &ExportOptions {
                memimg_notes: false,
            },
        );
        assert!(report.messages.iter().any(|m| m.contains("left out")));
        let (back, r) = import(&core);
        assert!(!r.from_memimg_notes);
        // Every byte that was readable still reads the same, except zero runs
        // in holes, which a plain core cannot tell from absent pages.
        let mut buf = vec![0u8; PS as usize];
        for (info, _, pages) in view(&img) {
            for (a, p) in pages {
                match p {
                    Some(b) if b.iter().any(|&x| x != 0) || info.kind == RegionKind::FileBacked => {
                        back.read_at(a, &mut buf).unwrap();
                        assert_eq!(buf, b, "at {a:#x}");
                    }
                    _ => {}
                }
            }
        }
        let r = back.region_at(0x30000).unwrap().unwrap();
        assert_eq!(
            (r.info.kind, r.info.name.as_slice(), r.info.file_offset),
            (
                RegionKind::FileBacked,
                &b"/usr/lib/libsample.so"[..],
                0x2000
            )
        );
        // NT_PRPSINFO gives pid, comm and psargs.
        let p = back.header().process.clone().unwrap();
        assert_eq!(
            (p.pid, p.comm.as_slice(), p.cmdline.as_slice()),
            (
                Some(4242),
                &b"sampleproc"[..],
                &b"sampleproc --flag value"[..]
            )
        );
    }
}

/// Checks an imported real core against the live process's maps and pattern.
#[allow(clippy::cast_possible_truncation, clippy::type_complexity)]
fn check_real_import(core: &[u8], s: &Sleeper, addr: u64, maps: &str) -> Image {
    let (img, report) = import(core);
    assert!(!report.from_memimg_notes);
    assert!(report.registers, "{:?}", report.kept_notes);
    let mut buf = vec![0u8; s.pattern.len()];
    img.read_at(addr, &mut buf).unwrap();
    assert_eq!(buf, s.pattern);
    let p = img.header().process.clone().unwrap();
    assert_eq!(p.pid, Some(s.pid()));
    assert_eq!(p.comm, b"sleep");
    // The kernel writes `sleep 30`; gdb 13's gcore writes only `sleep`.
    assert!(
        p.cmdline.starts_with(b"sleep") && b"sleep 30".starts_with(&p.cmdline),
        "{:?}",
        String::from_utf8_lossy(&p.cmdline)
    );
    assert!(
        p.exe.ends_with(b"sleep"),
        "{}",
        String::from_utf8_lossy(&p.exe)
    );
    // Each mapping of the live process is a region with its path.
    let regions = img.regions().unwrap();
    let mut named = 0;
    for l in maps.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let start = maps_range(l).0;
        let Some(r) = regions.iter().find(|r| r.info.start == start) else {
            continue;
        };
        let path = f.get(5).copied().unwrap_or("");
        if path.starts_with('/') {
            assert_eq!(r.info.name_lossy(), path, "{l}");
            assert_eq!(r.info.kind, RegionKind::FileBacked);
            assert_eq!(
                r.info.file_offset,
                u64::from_str_radix(f[2], 16).unwrap(),
                "{l}"
            );
            named += 1;
        }
        if path == "[stack]" || path == "[vdso]" {
            assert_eq!(r.info.name_lossy(), path, "{l}");
        }
    }
    assert!(named >= 3, "only {named} file mappings named");
    assert_eq!(img.region_at(addr).unwrap().unwrap().info.name, b"[stack]");
    // One region per segment with its flags (gcore chooses its own: it marks
    // [vsyscall] readable and may split a mapping).
    let cf = parse_core(core).unwrap();
    assert_eq!(regions.len(), cf.segments.len());
    for (r, s) in regions.iter().zip(&cf.segments) {
        assert_eq!((r.info.start, r.info.len), (s.vaddr, s.memsz));
        let p = r.info.prot;
        assert_eq!(
            (p.read(), p.write(), p.exec()),
            (s.flags & 4 != 0, s.flags & 2 != 0, s.flags & 1 != 0)
        );
    }
    // Notes kept in order, byte for byte.
    let kept: Vec<(String, &[u8])> = cf
        .notes
        .iter()
        .map(|n| (elfcore::notes::note_name(n.owner, n.n_type), n.desc))
        .collect();
    let in_img: Vec<(String, &[u8])> = img
        .notes()
        .unwrap()
        .iter()
        .map(|n| (n.name.clone(), n.data.as_slice()))
        .collect();
    assert_eq!(in_img, kept);
    img
}

/// What each page of a core holds: `Some(bytes)` (file bytes, or zeros where a
/// MEMIMG note lists a zero run) or `None` (not dumped).
#[allow(clippy::cast_possible_truncation, clippy::type_complexity)]
fn core_pages(core: &[u8]) -> Vec<(u64, u32, Option<Vec<u8>>)> {
    let cf = parse_core(core).unwrap();
    let zeros = cf
        .notes
        .iter()
        .find(|n| n.is_owner("MEMIMG") && n.n_type == elfcore::notes::NT_MEMIMG_REGIONS)
        .map(|n| {
            elfcore::notes::parse_regions_note(cf.order, n.desc)
                .unwrap()
                .zeros
        })
        .unwrap_or_default();
    let mut out = Vec::new();
    for s in &cf.segments {
        let data = cf.segment_bytes(s);
        for a in (s.vaddr..s.end()).step_by(PS as usize) {
            let off = (a - s.vaddr) as usize;
            let page = if off < data.len() {
                Some(data[off..(off + PS as usize).min(data.len())].to_vec())
            } else if zeros.iter().any(|&(zs, zl)| zs <= a && a < zs + zl) {
                Some(vec![0; PS as usize])
            } else {
                None
            };
            out.push((a, s.flags, page));
        }
    }
    out
}

/// core → image → core keeps the loadable bytes and the notes.
fn check_core_roundtrip(core: &[u8], img: &Image) {
    let (core2, report) = export(img, &ExportOptions::default());
    assert!(report.registers);
    assert_eq!(core_pages(&core2), core_pages(core));
    let a = parse_core(core).unwrap();
    let b = parse_core(&core2).unwrap();
    let strip = |c: &elfcore::CoreFile<'_>| {
        c.notes
            .iter()
            .filter(|n| !n.is_owner("MEMIMG"))
            .map(|n| (n.owner.to_vec(), n.n_type, n.desc.to_vec()))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&b), strip(&a));
    assert_eq!(b.machine, a.machine);
    // Our own notes come last, so the original notes are a prefix.
    assert!(b.notes[..a.notes.len()]
        .iter()
        .all(|n| !n.is_owner("MEMIMG")));
    // And a second pass through an image is stable byte for byte.
    let (img3, _) = import(&core2);
    let (core3, _) = export(&img3, &ExportOptions::default());
    assert_eq!(core3, core2);
}

#[allow(clippy::cast_possible_truncation, clippy::type_complexity)]
mod real {
    use super::*;

    #[test]
    fn gcore_of_a_live_child() {
        if !have("gdb") || Command::new("gcore").arg("-h").output().is_err() {
            skip(
                concat!(module_path!(), "::gcore_of_a_live_child"),
                "gdb's gcore is not installed",
            );
            return;
        }
        let s = Sleeper::spawn(None);
        let Located { addr, maps, .. } = s.locate();
        let dir = tempdir();
        let prefix = dir.path().join("g");
        let out = Command::new("gcore")
            .arg("-o")
            .arg(&prefix)
            .arg(s.pid().to_string())
            .output()
            .unwrap();
        let path = PathBuf::from(format!("{}.{}", prefix.display(), s.pid()));
        if !path.exists() {
            skip(
                concat!(module_path!(), "::gcore_of_a_live_child"),
                &format!(
                    "gcore could not attach (ptrace not permitted?): {}",
                    String::from_utf8_lossy(&out.stderr)
                ),
            );
            return;
        }
        let core = std::fs::read(&path).unwrap();
        let img = check_real_import(&core, &s, addr, &maps);
        check_core_roundtrip(&core, &img);
    }

    #[test]
    fn kernel_core_dump() {
        let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
        if pattern.trim() != "core" {
            skip(
                concat!(module_path!(), "::kernel_core_dump"),
                &format!(
                    "core_pattern is {:?}, not a plain `core` file",
                    pattern.trim()
                ),
            );
            return;
        }
        let dir = tempdir();
        let mut s = Sleeper::spawn(Some(dir.path()));
        let Located { addr, maps, .. } = s.locate();
        let _ = Command::new("kill")
            .args(["-SEGV", &s.pid().to_string()])
            .status();
        let st = s.child.wait().unwrap();
        let path = dir.path().join("core");
        if !path.exists() {
            skip(
                concat!(module_path!(), "::kernel_core_dump"),
                &format!("no core written (status {st:?}; a core ulimit or filter applies)"),
            );
            return;
        }
        let core = std::fs::read(&path).unwrap();
        let img = check_real_import(&core, &s, addr, &maps);
        check_core_roundtrip(&core, &img);
        // The kernel's first segment of the executable dumps only its ELF
        // header page: the rest is recorded absent, not zero.
        let cf = parse_core(&core).unwrap();
        let partial = cf
            .segments
            .iter()
            .find(|s| s.filesz > 0 && s.filesz < s.memsz)
            .expect("a partly dumped segment");
        let e = img
            .extent_at(partial.vaddr + partial.filesz)
            .unwrap()
            .unwrap();
        assert_eq!(e.kind, memimg::ExtentKind::Absent);
    }
}

#[allow(clippy::cast_possible_truncation, clippy::type_complexity)]
mod corrupt {
    use super::*;

    fn small_core() -> Vec<u8> {
        let img = Image::from_bytes(sample_image(), None).unwrap();
        export(&img, &ExportOptions::default()).0
    }

    fn set_u64(c: &mut [u8], off: usize, v: u64) {
        c[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }

    fn set_u32(c: &mut [u8], off: usize, v: u32) {
        c[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn set_u16(c: &mut [u8], off: usize, v: u16) {
        c[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }

    /// Offset of program header `i` (0 is the PT_NOTE, then the PT_LOADs).
    fn ph(i: usize) -> usize {
        64 + 56 * i
    }

    fn err(core: &[u8]) -> CoreError {
        let e = import_core(core, opts(), std::io::sink())
            .map(|_| ())
            .unwrap_err();
        // Every error has a message.
        assert!(!e.to_string().is_empty());
        e
    }

    #[test]
    fn truncated_headers() {
        let c = small_core();
        assert!(matches!(
            err(&c[..40]),
            CoreError::Truncated {
                offset: 0,
                len: 64,
                ..
            }
        ));
        assert!(matches!(err(&c[..2]), CoreError::Truncated { .. }));
        assert!(
            matches!(err(&c[..100]), CoreError::Truncated { offset: 64, .. }),
            "{}",
            err(&c[..100])
        );
        let mut d = c.clone();
        set_u64(&mut d, 32, u64::MAX - 8); // e_phoff
        assert!(matches!(err(&d), CoreError::Truncated { .. }));
        let mut d = c.clone();
        set_u16(&mut d, 56, 0xfffe); // e_phnum absurd
        assert!(matches!(err(&d), CoreError::Truncated { len, .. } if len == 0xfffe * 56));
        let mut d = c.clone();
        set_u16(&mut d, 56, 0xffff); // PN_XNUM without a section header
        assert!(matches!(err(&d), CoreError::Malformed { .. }));
        set_u16(&mut d, 58, 64);
        set_u64(&mut d, 40, c.len() as u64 - 10);
        assert!(matches!(err(&d), CoreError::Truncated { .. }));
        set_u16(&mut d, 54, 8); // e_phentsize too small
        set_u16(&mut d, 56, 3);
        assert!(matches!(err(&d), CoreError::Malformed { offset: 54, .. }));
    }

    #[test]
    fn not_a_core() {
        let c = small_core();
        assert!(matches!(
            err(b"hello world, this is not ELF"),
            CoreError::NotElf
        ));
        assert!(matches!(
            err(b""),
            CoreError::NotElf | CoreError::Truncated { .. }
        ));
        let mut d = c.clone();
        d[4] = 1;
        assert!(matches!(err(&d), CoreError::Unsupported(_)));
        let mut d = c.clone();
        set_u16(&mut d, 16, 2); // ET_EXEC
        assert!(matches!(err(&d), CoreError::Unsupported(_)));
        let mut d = c;
        d[5] = 9;
        assert!(matches!(err(&d), CoreError::Malformed { offset: 5, .. }));
    }

    #[test]
    fn segment_past_end_of_file() {
        let c = small_core();
        let mut d = c.clone();
        set_u64(&mut d, ph(1) + 8, c.len() as u64 - 100); // p_offset
        assert!(matches!(
            err(&d),
            CoreError::SegmentPastEnd { index: 1, .. }
        ));
        let mut d = c.clone();
        d.truncate(c.len() - 1);
        assert!(matches!(
            err(&d),
            CoreError::SegmentPastEnd { index: 7, .. }
        ));
        let mut d = c;
        set_u64(&mut d, ph(0) + 32, 1 << 40); // PT_NOTE p_filesz
        assert!(matches!(
            err(&d),
            CoreError::SegmentPastEnd { index: 0, .. }
        ));
    }

    #[test]
    fn huge_p_filesz() {
        let c = small_core();
        let mut d = c.clone();
        // Used to be the classic allocation bomb: p_offset + p_filesz wraps.
        set_u64(&mut d, ph(1) + 32, u64::MAX - 0x1000);
        set_u64(&mut d, ph(1) + 40, u64::MAX - 0x1000);
        set_u64(&mut d, ph(1) + 16, 0);
        assert!(
            matches!(err(&d), CoreError::SegmentPastEnd { index: 1, filesz, .. } if filesz == u64::MAX - 0x1000)
        );
        let mut d = c;
        set_u64(&mut d, ph(1) + 32, 1 << 20); // p_filesz > p_memsz
        assert!(matches!(err(&d), CoreError::Malformed { .. }));
    }

    /// Found by the `elf_core` fuzz target within two minutes: a segment
    /// spanning most of the 64-bit address space used to give an image with
    /// about a million extents (50 MB, a 100 MB allocation) from a 38 KB core.
    #[test]
    fn huge_address_span() {
        let c = small_core();
        let last = ph(7);
        let mut d = c.clone();
        set_u64(&mut d, last + 40, 1 << 63); // p_memsz
        assert!(
            matches!(err(&d), CoreError::Unsupported(ref m) if m.contains("address space")),
            "{}",
            err(&d)
        );
        // A large but possible span imports to a small image: its tail is one
        // absent run.
        let mut d = c;
        set_u64(&mut d, last + 40, 1 << 50);
        let (bytes, _, r) = import_core(&d, opts(), Vec::new()).unwrap();
        assert!(bytes.len() < 1 << 20, "{} bytes", bytes.len());
        assert!(r.absent_bytes >= (1 << 50) - 0x1000, "{r:?}");
        assert!(!r.from_memimg_notes, "the regions note no longer fits");
    }

    #[test]
    fn overlapping_segments() {
        let c = small_core();
        let mut d = c.clone();
        set_u64(&mut d, ph(2) + 16, 0x11000); // second load now inside the first
        assert!(
            matches!(
                err(&d),
                CoreError::Overlap {
                    first: 1,
                    second: 2,
                    ..
                }
            ),
            "{}",
            err(&d)
        );
        // Unsorted but disjoint segments are fine: swap two program headers.
        let mut d = c.clone();
        let (a, b) = (ph(1), ph(4));
        let tmp = d[a..a + 56].to_vec();
        d.copy_within(b..b + 56, a);
        d[b..b + 56].copy_from_slice(&tmp);
        let (img, _) = import(&d);
        let (orig, _) = import(&c);
        assert_eq!(view(&img), view(&orig));
        // Not on an image page.
        let mut d = c;
        set_u64(&mut d, ph(3) + 16, 0x20010);
        assert!(matches!(
            err(&d),
            CoreError::Unaligned {
                index: 3,
                vaddr: 0x20010,
                ..
            }
        ));
    }

    #[test]
    fn segment_wrapping_the_address_space() {
        // Used to overflow `vaddr + round_up(p_filesz)` on the last segment.
        let mut d = small_core();
        set_u64(&mut d, ph(7) + 16, u64::MAX - 4095);
        set_u64(&mut d, ph(7) + 32, 4095);
        set_u64(&mut d, ph(7) + 40, 4095);
        assert!(
            matches!(err(&d), CoreError::Malformed { .. }),
            "{}",
            err(&d)
        );
    }

    #[test]
    fn note_with_bogus_length() {
        let c = small_core();
        let notes_off = u64::from_le_bytes(c[ph(0) + 8..ph(0) + 16].try_into().unwrap()) as usize;
        let mut d = c.clone();
        set_u32(&mut d, notes_off + 4, 0xffff_fff0); // descsz
        assert!(matches!(err(&d), CoreError::BadNote { offset, .. } if offset == notes_off as u64));
        let mut d = c.clone();
        set_u32(&mut d, notes_off, 0xffff_ffff); // namesz
        assert!(matches!(err(&d), CoreError::BadNote { .. }));
        let mut d = c;
        set_u64(&mut d, ph(0) + 32, 13); // a note header cut short after the first...
        assert!(matches!(err(&d), CoreError::BadNote { .. }));
    }

    #[test]
    fn bad_memimg_note_falls_back_to_segments() {
        let c = small_core();
        let cf = parse_core(&c).unwrap();
        let n = cf
            .notes
            .iter()
            .find(|n| n.n_type == elfcore::notes::NT_MEMIMG_REGIONS)
            .unwrap();
        let at = (n.offset + 12 + 8 + 8) as usize; // region count
        let mut d = c.clone();
        set_u32(&mut d, at, 0x7fff_ffff);
        let (img, r) = import(&d);
        assert!(!r.from_memimg_notes);
        assert!(
            r.messages.iter().any(|m| m.contains("regions")),
            "{:?}",
            r.messages
        );
        assert_eq!(img.regions().unwrap().len(), 7);
    }

    /// Random byte flips and truncations never panic.
    #[test]
    fn random_damage_never_panics() {
        let mut cores = vec![small_core()];
        // A real kernel core too, when one can be made here.
        let dir = tempdir();
        if std::fs::read_to_string("/proc/sys/kernel/core_pattern")
            .is_ok_and(|p| p.trim() == "core")
        {
            let mut s = Sleeper::spawn(Some(dir.path()));
            let _ = Command::new("kill")
                .args(["-SEGV", &s.pid().to_string()])
                .status();
            let _ = s.child.wait();
            if let Ok(c) = std::fs::read(dir.path().join("core")) {
                cores.push(c);
            }
        }
        let mut x: u64 = 0x1234_5678_9abc_def1;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let (mut ok, mut bad) = (0, 0);
        // ELFCORE_FUZZ_ITERS=N runs longer, by hand.
        let iters: u32 = std::env::var("ELFCORE_FUZZ_ITERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(400);
        for core in &cores {
            // Bias flips towards the headers and notes, where the parser looks.
            let hot = parse_core(core).unwrap().segments[0].offset as usize;
            for i in 0..iters {
                let mut d = core.clone();
                for _ in 0..1 + rnd() % 4 {
                    let at = if rnd() % 4 == 0 {
                        rnd() as usize % d.len()
                    } else {
                        rnd() as usize % hot
                    };
                    d[at] ^= 1 << (rnd() % 8);
                    if rnd() % 8 == 0 {
                        d[at] = 0xff;
                    }
                }
                if i % 5 == 0 {
                    d.truncate(rnd() as usize % d.len());
                }
                match import_core(&d, opts(), std::io::sink()) {
                    Ok(_) => ok += 1,
                    Err(e) => {
                        assert!(!e.to_string().is_empty());
                        bad += 1
                    }
                }
            }
        }
        eprintln!("random damage: {ok} imported, {bad} typed errors");
        assert!(bad > 0);
    }
}

/// Writes the files of the README's gdb session to `$ELFCORE_DEMO_DIR`:
/// `sample.img` and `sample.core` (exported from it).
#[test]
#[ignore = "writes demo files; run with ELFCORE_DEMO_DIR=DIR"]
fn demo_files() {
    let dir = PathBuf::from(std::env::var("ELFCORE_DEMO_DIR").unwrap());
    let bytes = sample_image();
    std::fs::write(dir.join("sample.img"), &bytes).unwrap();
    let img = Image::from_bytes(bytes, None).unwrap();
    let (core, report) = export(&img, &ExportOptions::default());
    std::fs::write(dir.join("sample.core"), core).unwrap();
    eprintln!("{report:#?}");
    // A gcore given as $ELFCORE_DEMO_GCORE goes through an image and back.
    if let Ok(g) = std::env::var("ELFCORE_DEMO_GCORE") {
        let core = std::fs::read(g).unwrap();
        let (bytes, stats, report) =
            import_core(&core, WriterOptions::new().page_size(4096), Vec::new()).unwrap();
        eprintln!("{stats:#?}\n{report:#?}");
        std::fs::write(dir.join("gcore.img"), &bytes).unwrap();
        let img = Image::from_bytes(bytes, None).unwrap();
        let (core2, report) = export(&img, &ExportOptions::default());
        eprintln!("{report:#?}");
        std::fs::write(dir.join("gcore-again.core"), core2).unwrap();
    }
}
