//! The bodies of the fuzz targets. The cargo-fuzz targets in fuzz/ call these,
//! and a stable `cargo test` replays the checked-in regression inputs through
//! the same functions (tests/tests/fuzz_regressions.rs).

use imgtool::elfcore::{self, elf, notes, ExportOptions};
use memimg::{
    fuzz_api, verify_bytes, Codec, ExtentKind, Image, Key, RegionInfo, VerifyOptions, Writer,
    WriterOptions,
};

/// The key of the encrypted fuzz target and its seed images.
pub const FUZZ_KEY: [u8; 32] = [0x5a; 32];

/// Walks everything an image offers, ignoring errors.
fn walk(img: &Image) {
    let ps = img.header().page_size;
    let _ = img.verify(&VerifyOptions {
        decode: true,
        progress: None,
    });
    if let Ok(regions) = img.regions() {
        for r in regions.iter().take(64) {
            let _ = img.region_at(r.info.start);
            if let Ok(exts) = img.region_extents(r) {
                for e in exts.iter().take(64) {
                    // Decode at most 1 MiB per extent: the chunk size bound.
                    if e.len(ps) <= 1 << 20 {
                        let mut buf = vec![0u8; e.len(ps) as usize];
                        let _ = img.decode_extent(e, &mut buf);
                    }
                    let mut small = [0u8; 64];
                    let _ = img.read_at(e.addr.saturating_add(e.len(ps) / 2), &mut small);
                }
            }
        }
    }
}

/// Target `open`: open arbitrary bytes and walk everything.
pub fn open(data: &[u8]) {
    if let Ok(img) = Image::from_bytes(data.to_vec(), None) {
        walk(&img);
        // read_at at addresses chosen by the input's last bytes.
        if data.len() >= 16 {
            let a = u64::from_le_bytes(
                data[data.len() - 16..data.len() - 8]
                    .try_into()
                    .unwrap_or([0; 8]),
            );
            let mut buf = vec![0u8; (data[data.len() - 1] as usize + 1) * 16];
            let _ = img.read_at(a, &mut buf);
        }
    }
    let _ = verify_bytes(
        data.to_vec(),
        None,
        &VerifyOptions {
            decode: true,
            progress: None,
        },
    );
}

/// Target `open_encrypted`: open arbitrary bytes with the fuzz key.
pub fn open_encrypted(data: &[u8]) {
    let key = Key::raw(FUZZ_KEY);
    if let Ok(img) = Image::from_bytes(data.to_vec(), Some(&key)) {
        walk(&img);
    }
    let _ = verify_bytes(
        data.to_vec(),
        Some(&key),
        &VerifyOptions {
            decode: true,
            progress: None,
        },
    );
}

/// A valid 4 KiB header page for the structure targets.
pub fn template_header() -> Vec<u8> {
    let w = Writer::new(Vec::new(), WriterOptions::new().page_size(4096).workers(0));
    match w.and_then(|w| w.finish()) {
        Ok((bytes, _)) => bytes[..4096].to_vec(),
        Err(_) => vec![0; 4096],
    }
}

/// Target `header`: the header page alone.
pub fn header(data: &[u8]) {
    fuzz_api::header(data);
}

/// Target `trailer`: a valid header followed by arbitrary bytes, searched for a trailer.
pub fn trailer(header: &[u8], data: &[u8]) {
    fuzz_api::trailer(header, data);
}

/// Target `index`: arbitrary bytes parsed as the index of a plain image.
pub fn index(header: &[u8], data: &[u8]) {
    fuzz_api::index(header, data);
}

/// Reads bytes of the input as a little program of choices.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
}

/// Target `roundtrip`: arbitrary regions, contents and options are written,
/// read back and compared.
///
/// # Panics
/// When what is read back differs from what was written: that is the bug the
/// target looks for.
pub fn roundtrip(data: &[u8]) {
    let mut b = Bytes(data);
    let ps = [4096u32, 16384, 65536][usize::from(b.u8() % 3)];
    let chunk_pages = u32::from(b.u8() % 4) + 1;
    let codec = match b.u8() % 4 {
        0 => Codec::None,
        1 => Codec::Zstd(1),
        2 => Codec::Zstd(-3),
        _ => Codec::Zstd(5),
    };
    let key = (b.u8() % 2 == 1).then(|| Key::raw(FUZZ_KEY));
    let workers = usize::from(b.u8() % 3);
    let opts = WriterOptions::new()
        .page_size(ps)
        .chunk_size(ps * chunk_pages)
        .codec(codec)
        .workers(workers)
        .key_opt(key.clone());
    let Ok(mut w) = Writer::new(Vec::new(), opts) else {
        return;
    };
    let psz = ps as usize;
    let nregions = b.u8() % 4 + 1;
    let mut addr = 0x10_0000u64;
    // (start, pages: Some(content) | None absent)
    let mut want: Vec<(u64, Vec<Option<Vec<u8>>>)> = Vec::new();
    for _ in 0..nregions {
        addr += u64::from(b.u8() % 3) * u64::from(ps);
        let npages = usize::from(b.u8() % 6) + 1;
        let info = RegionInfo::new(addr, (npages * psz) as u64);
        if w.begin_region(info).is_err() {
            return;
        }
        let mut pages = Vec::new();
        for _ in 0..npages {
            let mode = b.u8();
            let res = match mode % 4 {
                0 => {
                    pages.push(Some(vec![0u8; psz]));
                    w.push_zero(u64::from(ps))
                }
                1 => {
                    pages.push(None);
                    w.push_absent(u64::from(ps))
                }
                2 => {
                    let fill = b.u8();
                    let p = vec![fill; psz];
                    let r = w.push_data(&p);
                    pages.push(Some(p));
                    r
                }
                _ => {
                    let mut p = vec![0u8; psz];
                    let mut s = u64::from(b.u8()) | u64::from(mode) << 8 | 1;
                    for x in p.iter_mut() {
                        s ^= s << 13;
                        s ^= s >> 7;
                        s ^= s << 17;
                        *x = s as u8;
                    }
                    let r = w.push_data(&p);
                    pages.push(Some(p));
                    r
                }
            };
            assert!(res.is_ok(), "push failed: {res:?}");
        }
        assert!(w.end_region().is_ok());
        want.push((addr, pages));
        addr += (npages * psz) as u64;
    }
    let (bytes, _) = w.finish().unwrap_or_else(|e| panic!("finish: {e}"));
    let img =
        Image::from_bytes(bytes.clone(), key.as_ref()).unwrap_or_else(|e| panic!("open: {e}"));
    for (start, pages) in &want {
        for (i, p) in pages.iter().enumerate() {
            let mut buf = vec![0u8; psz];
            let r = img.read_at(start + (i * psz) as u64, &mut buf);
            match p {
                Some(content) => {
                    assert!(r.is_ok(), "read_at: {r:?}");
                    assert_eq!(&buf, content, "page {i} of region {start:#x}");
                }
                None => assert!(r.is_err(), "absent page read"),
            }
        }
    }
    let regions = img.regions().unwrap_or_else(|e| panic!("regions: {e}"));
    assert_eq!(regions.len(), want.len());
    for r in regions {
        for e in img.region_extents(r).unwrap_or_default() {
            assert!(e.kind != ExtentKind::Data || e.page_count <= chunk_pages);
        }
    }
    let rep = verify_bytes(
        bytes,
        key.as_ref(),
        &VerifyOptions {
            decode: true,
            progress: None,
        },
    );
    assert!(rep.is_intact(), "{:?}", rep.problems);
}

/// Exporting writes the zero runs of file-backed regions as real bytes; past
/// this much mapped data the `elf_core` target skips the export, so a claimed
/// huge zero run does not make it time out.
const EXPORT_LIMIT: u64 = 64 << 20;

/// Walks every table and note the ELF core parser exposes.
fn walk_core(data: &[u8]) {
    let Ok(cf) = elfcore::parse_core(data) else {
        return;
    };
    let o = cf.order;
    for s in &cf.segments {
        let _ = cf.segment_bytes(s).len();
    }
    for n in &cf.notes {
        let _ = notes::note_name(n.owner, n.n_type);
        if n.is_owner(notes::MEMIMG_OWNER) {
            let _ = notes::parse_regions_note(o, n.desc);
            let _ = notes::parse_facts_note(o, n.desc);
            let _ = notes::parse_image_note(o, n.desc);
            continue;
        }
        match n.n_type {
            elf::NT_PRPSINFO => {
                let _ = notes::parse_prpsinfo(o, n.desc);
            }
            elf::NT_FILE => {
                let _ = notes::parse_nt_file(o, n.desc);
            }
            elf::NT_AUXV => {
                let _ = notes::auxv_get(o, n.desc, notes::AT_ENTRY);
            }
            _ => {}
        }
    }
}

/// Target `elf_core`: arbitrary bytes as an ELF core for import.
///
/// Parsing and importing must give a typed error or an image, never a panic.
/// An image that imports must be at most a small multiple of the core (one
/// page per program header at worst), must verify intact, and its export must
/// import again.
///
/// # Panics
/// When one of those promises is broken: that is the bug the target looks for.
pub fn elf_core(data: &[u8]) {
    walk_core(data);
    let opts = || {
        WriterOptions::new()
            .page_size(4096)
            .chunk_size(4 * 4096)
            .codec(Codec::None)
            .workers(0)
    };
    let Ok((bytes, _, _)) = elfcore::import_core(data, opts(), Vec::new()) else {
        return;
    };
    // A program header is 56 bytes and can claim at most one stored page, so
    // 4096/56 < 128 bounds the growth; the index adds a fixed amount.
    assert!(
        bytes.len() <= 128 * data.len() + (1 << 20),
        "a {}-byte core imported to a {}-byte image",
        data.len(),
        bytes.len()
    );
    let report = verify_bytes(
        bytes.clone(),
        None,
        &VerifyOptions {
            decode: true,
            progress: None,
        },
    );
    assert!(
        report.is_intact(),
        "an imported image does not verify: {:?} {:?}",
        report.fatal,
        report.problems
    );
    let img = Image::from_bytes(bytes, None).unwrap_or_else(|e| panic!("open: {e}"));
    let regions = img
        .regions()
        .unwrap_or_else(|e| panic!("a plain image's regions: {e}"));
    let mapped: u64 = regions
        .iter()
        .filter(|r| r.has_data())
        .map(|r| r.info.len)
        .sum();
    if mapped > EXPORT_LIMIT {
        return;
    }
    let mut core = Vec::new();
    elfcore::export_core(&img, &mut core, &ExportOptions::default())
        .unwrap_or_else(|e| panic!("an imported image exports: {e}"));
    if let Err(e) = elfcore::import_core(&core, opts(), Vec::new()) {
        panic!("an exported core imports again: {e}");
    }
}

/// Seed images for the corpora: small real images of each kind.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    if let Ok(images) = crate::small_images() {
        for (name, bytes, key) in images {
            if key.is_none() {
                out.push((name, bytes));
            }
        }
    }
    let key = Key::raw(FUZZ_KEY);
    for codec in [Codec::None, Codec::Zstd(1)] {
        if let Ok(b) = crate::write_small(
            WriterOptions::new()
                .workers(0)
                .codec(codec)
                .key(key.clone()),
        ) {
            out.push(("encrypted", b));
        }
    }
    out
}
