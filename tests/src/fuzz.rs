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
    let _ = (img.parent(), img.as_parent(), img.index_nonce_salt());
    let _ = (
        img.load_order(),
        img.layout_order(),
        img.working_set_range(),
    );
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
                        // Page digests (1.1): the extent's, and its pages
                        // compared with them.
                        let _ = img.page_digests(e.chunk);
                        let _ = img.same_pages(e, e.addr, &buf);
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
    // An image whose index comes first (1.1, INDEX_FIRST) is opened from
    // its front when read by ranges, without its trailer: that reader too.
    if memimg::front_open_need(data).flatten().is_some() {
        let at = std::sync::Arc::new(BytesAt(data.to_vec()));
        if let Ok(img) = Image::from_read_at(at, None) {
            walk(&img);
        }
    }
    if let Ok(img) = Image::from_bytes(data.to_vec(), None) {
        walk(&img);
        // read_at at addresses chosen by the input's last bytes, through the
        // image and through a chain of it alone (format 1.1: a child without
        // its parent resolves, segments and reads what it holds).
        if data.len() >= 16 {
            let a = u64::from_le_bytes(
                data[data.len() - 16..data.len() - 8]
                    .try_into()
                    .unwrap_or([0; 8]),
            );
            let mut buf = vec![0u8; (data[data.len() - 1] as usize + 1) * 16];
            let _ = img.read_at(a, &mut buf);
            let chain = memimg::Chain::single(img);
            let _ = chain.resolve(a);
            let _ = chain.segments(a, a.saturating_add(buf.len() as u64));
            let _ = chain.read_at(a, &mut buf);
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

/// Bytes read by ranges, as object storage is ([`memimg::ReadAt`]).
struct BytesAt(Vec<u8>);

impl memimg::ReadAt for BytesAt {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|o| self.0.get(o..o.checked_add(buf.len())?))
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
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
    // Mostly 4 KiB pages: the time per input grows with the bytes written,
    // read back and verified, and 16 and 64 KiB pages take the same paths
    // as 4 KiB ones with other sizes. One input in eight has each of them.
    let ps = match b.u8() % 8 {
        6 => 16384u32,
        7 => 65536,
        _ => 4096,
    };
    let chunk_pages = u32::from(b.u8() % 4) + 1;
    let codec = match b.u8() % 4 {
        0 => Codec::None,
        1 => Codec::Zstd(1),
        2 => Codec::Zstd(-3),
        _ => Codec::Zstd(5),
    };
    let kb = b.u8();
    let key = (kb % 2 == 1).then(|| Key::raw(FUZZ_KEY));
    // Page digests (1.1) in one input in two.
    let digests = kb & 2 != 0;
    let workers = usize::from(b.u8() % 3);
    let opts = WriterOptions::new()
        .page_size(ps)
        .chunk_size(ps * chunk_pages)
        .codec(codec)
        .workers(workers)
        .key_opt(key.clone())
        .page_digests(digests);
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
                    // Eight bytes a step: a loop per byte, instrumented,
                    // cost more than writing the page.
                    let mut p = vec![0u8; psz];
                    let seed = u64::from(b.u8()) | u64::from(mode) << 8;
                    crate::fill_page(&mut p, crate::PageKind::Random, seed);
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
    assert_eq!(img.has_page_digests(), digests);
    for r in regions {
        for e in img.region_extents(r).unwrap_or_default() {
            assert!(e.kind != ExtentKind::Data || e.page_count <= chunk_pages);
            if digests && e.kind == ExtentKind::Data {
                let mut buf = vec![0u8; e.len(ps) as usize];
                assert!(img.decode_extent(e, &mut buf).is_ok());
                let same = img.same_pages(e, e.addr, &buf);
                assert!(
                    matches!(same, Ok(Some(ref v)) if v.iter().all(|&s| s)),
                    "digests: {same:?}"
                );
            }
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
    if let Ok(images) = crate::small_images().and_then(|mut v| {
        v.extend(crate::small_1_1_images()?);
        Ok(v)
    }) {
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
    // With page digests (1.1, PAGE_DIGESTS), plain and encrypted.
    for (codec, k) in [(Codec::Zstd(1), None), (Codec::None, Some(key.clone()))] {
        let opts = WriterOptions::new()
            .workers(0)
            .codec(codec)
            .key_opt(k.clone())
            .page_digests(true);
        if let Ok(b) = crate::write_small(opts) {
            out.push((if k.is_some() { "encrypted" } else { "digests" }, b));
        }
    }
    // Laid out in load order (1.1, LOAD_ORDER): the load-order record and
    // the layout rule in layout order, plain and encrypted; plain with the
    // index first (INDEX_FIRST, a relayout's default) and at the end.
    for (codec, key, index_first) in [
        (Codec::None, None, true),
        (Codec::None, None, false),
        (Codec::Zstd(1), Some(key), false),
    ] {
        let opts = WriterOptions::new().workers(0).codec(codec);
        let opts = match &key {
            Some(k) => opts.key(k.clone()),
            None => opts,
        };
        let Ok(b) = crate::write_small(opts) else {
            continue;
        };
        let Ok(img) = memimg::Image::from_bytes(b, key.as_ref()) else {
            continue;
        };
        let n = img.chunk_locs().len() as u64;
        let p = memimg::Profile {
            image_id: img.header().image_id,
            chunks: (0..n).rev().step_by(2).collect(),
        };
        let lo = memimg::RelayoutOptions { index_first };
        if let Ok((b, _)) = memimg::relayout_with(&img, &p, &lo, Vec::new()) {
            // The encrypted one goes to the open_encrypted corpus (by name).
            out.push((
                if key.is_some() {
                    "encrypted"
                } else {
                    "load-order"
                },
                b,
            ));
        }
    }
    out
}

/// Target `structured`: builds a valid image from a description read from
/// `data`, fixes every checksum, mutates semantic fields, then opens, reads
/// and verifies it. See [`structured_with`].
pub fn structured(data: &[u8]) {
    structured_with(data, &mut |_, run| run());
}

/// The most pages the `structured` description gives one region.
const MAX_PAGES: u8 = 6;

/// The body of target `structured`.
///
/// The first bytes of `data` describe an image: page size, chunk size,
/// encryption, compression, whether it is an incremental image (format 1.1:
/// `PARENT`, a parent record of any id, index checksum and depth 1 to 64, a
/// hint, and its absent runs made in-parent extents), up to 8 regions (gap,
/// pages, name, and for each page zero, absent or data of one of three
/// contents) and up to 2 notes; and, when the first byte's top bit is set, a
/// byte of the other format 1.1 features: a key slot bound to the image
/// (`SLOT_BOUND`, encrypted images), an index nonce salt (encrypted images
/// with a 1.1 feature), and a load-order profile (`LOAD_ORDER`: 1 to all of
/// the chunks, in an order from the input, as the body's load-order record,
/// with the chunks laid out in that order), and page digests
/// (`PAGE_DIGESTS`: the body's page-digests record, of every data page). It
/// is built with [`crate::Forge`], which lays it out by spec.md and fixes
/// every checksum and tag. The rest of `data` is a list of mutations of
/// semantic fields: region names, extents and counts, extent kinds, codecs,
/// chunk numbers, addresses, body counts, chunk map offsets and lengths,
/// index head and trailer fields, string and note bytes, chunk contents,
/// load-order entries (out of range, twice, a bad length, no record, two),
/// a layout that does not follow the record, the key slot's binding (another
/// image id, other KDF fields, none) and its stored fields (KDF, costs,
/// salt, `kek_check`, nonce, wrapped key), and the index nonce salt. The
/// mutated image is opened (with its key when encrypted, and without),
/// walked, and verified with decoding, inside `measure(image_len, run)`,
/// which the fuzz binary uses to bound allocation by the image's size.
///
/// # Panics
/// When an input holds a description and no mutation, and the image built
/// from it does not open, read back what was described and verify intact:
/// then the reader and spec.md (which the builder follows) disagree.
pub fn structured_with(data: &[u8], measure: &mut dyn FnMut(usize, &mut dyn FnMut())) {
    let mut b = Bytes(data);
    let flags = b.u8();
    let ps: u32 = if flags & 3 == 3 { 16384 } else { 4096 };
    let chunk_pages = usize::from((flags >> 2) & 3) + 1;
    let key = (flags & 0x10 != 0).then_some(crate::ForgeKey {
        kek: FUZZ_KEY,
        dek: [0xd5; 32],
        wrap_nonce: [0x24; 24],
    });
    let zstd = flags & 0x20 != 0;
    let child = flags & 0x40 != 0;
    // Format 1.1's other features, in a byte of their own: inputs without
    // it keep the meaning they had before it.
    let v11 = if flags & 0x80 != 0 { b.u8() } else { 0 };
    let bound = key.is_some() && v11 & 1 != 0;
    let salt = if v11 & 2 != 0 { b.u64() } else { 0 };
    let load_order = v11 & 4 != 0;
    let mut f = crate::Forge::new(ps, ps * chunk_pages as u32, key);
    if bound {
        f.slot_binding = Some(crate::SlotBinding::default());
        f.set_incompat(memimg::Features::SLOT_BOUND);
    }
    if child {
        // The parent record: an id and index checksum from the input, a
        // depth from 1 to 64; and a hint.
        let mut record: Vec<u8> = (0..24).map(|_| b.u8()).collect();
        record.extend_from_slice(&(u32::from(b.u8() % 64) + 1).to_le_bytes());
        record.extend_from_slice(&[0; 4]);
        add_header_record(&mut f.header, meta_parent::RECORD, &record);
        let hint: Vec<u8> = (0..b.u8() % 16).map(|_| b'a' + b.u8() % 26).collect();
        if !hint.is_empty() {
            add_header_record(&mut f.header, meta_parent::HINT, &hint);
        }
        f.set_incompat(memimg::Features::PARENT);
    }
    let psu = u64::from(ps);
    let mut addr = 0x10_0000u64;
    // What each region holds, to check a build with no mutation.
    let mut want: Vec<(u64, Vec<crate::Page>)> = Vec::new();
    for _ in 0..=b.u8() % 8 {
        addr += u64::from(b.u8() % 3) * psu;
        let npages = b.u8() % (MAX_PAGES + 1);
        let name_len = usize::from(b.u8() % 17);
        let name: Vec<u8> = (0..name_len).map(|_| b.u8()).collect();
        let pages: Vec<crate::Page> = (0..npages)
            .map(|_| {
                let p = b.u8();
                match p % 4 {
                    0 => crate::Page::Zero,
                    1 => crate::Page::Absent,
                    2 => crate::Page::Data(vec![p | 1; ps as usize]),
                    _ => {
                        let mut page = vec![0u8; ps as usize];
                        crate::fill_page(&mut page, crate::PageKind::Random, u64::from(p));
                        crate::Page::Data(page)
                    }
                }
            })
            .collect();
        let first = f.extents.len();
        f.push_region(addr, &name, &pages, chunk_pages, zstd);
        if child {
            // Its absent runs are the parent's pages (reading them without
            // the parent fails, as an absent page's read does).
            for e in &mut f.extents[first..] {
                if e.kind == 2 {
                    e.kind = 3;
                }
            }
        }
        addr += u64::from(npages.max(1)) * psu;
        want.push((f.regions[f.regions.len() - 1].start, pages));
    }
    for _ in 0..b.u8() % 3 {
        let name: Vec<u8> = (0..b.u8() % 8).map(|_| b'a' + b.u8() % 26).collect();
        let data: Vec<u8> = (0..b.u8()).map(|_| b.u8()).collect();
        push_note(&mut f.meta, &name, &data);
    }
    if !f.meta.is_empty() {
        f.set_compat(memimg::Features::NOTES);
    }
    // Page digests (1.1, compatible): the digest of every data page, in
    // chunk order (address order, as the regions were pushed).
    let digests = v11 & 8 != 0;
    if digests {
        let d: Vec<u8> = want
            .iter()
            .flat_map(|(_, pages)| pages.iter())
            .filter_map(|p| match p {
                crate::Page::Data(d) => Some(xxhash_rust::xxh3::xxh3_64(d).to_le_bytes()),
                _ => None,
            })
            .flatten()
            .collect();
        f.meta.extend_from_slice(&3u16.to_le_bytes());
        f.meta.extend_from_slice(&0u16.to_le_bytes());
        f.meta.extend_from_slice(&(d.len() as u32).to_le_bytes());
        f.meta.extend_from_slice(&d);
        f.set_compat(memimg::Features::PAGE_DIGESTS);
    }
    // The load-order profile (an image with no chunk has none: the record
    // lists at least one), its record after the notes, and the layout.
    let mut profile: Option<Vec<u64>> = None;
    let mut record: Option<(usize, usize)> = None;
    if load_order && !f.chunks.is_empty() {
        let mut rest: Vec<u64> = (0..f.chunks.len() as u64).collect();
        let count = 1 + usize::from(b.u8()) % rest.len();
        let p: Vec<u64> = (0..count)
            .map(|_| rest.remove(usize::from(b.u8()) % rest.len()))
            .collect();
        record = Some((f.meta.len(), p.len()));
        f.push_load_order(&p);
        f.layout = Some(p.clone());
        f.set_incompat(memimg::Features::LOAD_ORDER);
        profile = Some(p);
    }
    let incompat = u64::from_le_bytes(f.header[0x10..0x18].try_into().unwrap_or([0; 8]));
    if key.is_some() && incompat & memimg::Features::V1_1_INCOMPAT != 0 {
        f.index_nonce_salt = salt;
    }
    let kek = key.map(|k| Key::raw(k.kek));
    let mutations = b.0;
    if mutations.is_empty() {
        // An input that ends with its description checks that the reader
        // accepts what the builder lays out by spec.md; the fuzzer keeps such
        // inputs, and checking only those halves the cost of the others.
        let img = check_unmutated(&f.assemble(), kek.as_ref(), &want, ps);
        // And that it reads the 1.1 features as described.
        assert_eq!(img.header().is_slot_bound(), bound, "SLOT_BOUND");
        assert_eq!(img.index_nonce_salt(), f.index_nonce_salt, "index salt");
        assert_eq!(img.has_page_digests(), digests, "PAGE_DIGESTS");
        match img.load_order() {
            Ok(p) => assert_eq!(p, profile.as_deref(), "load order"),
            Err(e) => panic!("load order: {e}"),
        }
        return;
    }
    let mut late = Vec::new();
    let mut m = Bytes(mutations);
    for _ in 0..16 {
        if m.0.is_empty() {
            break;
        }
        mutate(&mut f, &mut m, &mut late, record);
    }
    let bytes = f.assemble_with(&mut |a| {
        for l in &late {
            l.apply(a);
        }
    });
    let len = bytes.len();
    measure(len, &mut || {
        // An image that opens strictly is the one the lenient open of
        // `verify_bytes` would make (lenient opening only records what
        // strict opening lets pass), and `walk` verifies it with decoding,
        // as `verify_bytes` would next: each image is verified once, by
        // one of the two paths. This used to run both, for twice the time.
        match Image::from_bytes(bytes.clone(), kek.as_ref()) {
            Ok(img) => walk(&img),
            Err(_) => {
                let _ = verify_bytes(
                    bytes.clone(),
                    kek.as_ref(),
                    &VerifyOptions {
                        decode: true,
                        progress: None,
                    },
                );
            }
        }
        if kek.is_some() {
            if let Ok(img) = Image::from_bytes(bytes.clone(), None) {
                walk(&img);
            }
        }
    });
}

/// An image built with no mutation opens, reads back what was described,
/// and verifies intact; returns it opened.
fn check_unmutated(
    bytes: &[u8],
    key: Option<&Key>,
    want: &[(u64, Vec<crate::Page>)],
    ps: u32,
) -> Image {
    let img = Image::from_bytes(bytes.to_vec(), key)
        .unwrap_or_else(|e| panic!("a forged image does not open: {e}"));
    for (start, pages) in want {
        for (i, p) in pages.iter().enumerate() {
            let mut buf = vec![0u8; ps as usize];
            let r = img.read_at(start + (i as u64) * u64::from(ps), &mut buf);
            match p {
                crate::Page::Absent => assert!(r.is_err(), "an absent page read"),
                crate::Page::Zero => {
                    assert!(r.is_ok(), "{r:?}");
                    assert!(buf.iter().all(|&x| x == 0));
                }
                crate::Page::Data(d) => {
                    assert!(r.is_ok(), "{r:?}");
                    assert_eq!(&buf, d);
                }
            }
        }
    }
    let r = verify_bytes(
        bytes.to_vec(),
        key,
        &VerifyOptions {
            decode: true,
            progress: None,
        },
    );
    assert!(
        r.is_intact(),
        "a forged image does not verify: {:?} {:?}",
        r.fatal,
        r.problems
    );
    img
}

/// Appends a note record (spec.md, *Strings and meta*).
fn push_note(meta: &mut Vec<u8>, name: &[u8], data: &[u8]) {
    meta.extend_from_slice(&1u16.to_le_bytes());
    meta.extend_from_slice(&0u16.to_le_bytes());
    meta.extend_from_slice(&((2 + name.len() + data.len()) as u32).to_le_bytes());
    meta.extend_from_slice(&(name.len() as u16).to_le_bytes());
    meta.extend_from_slice(name);
    meta.extend_from_slice(data);
}

/// Header record types of format 1.1 (spec.md, *Incremental images*).
mod meta_parent {
    /// The parent record.
    pub const RECORD: u16 = 32;
    /// The parent hint.
    pub const HINT: u16 = 33;
}

/// Appends a header record after the others, if it fits the header page
/// (spec.md, *Header TLV records*).
fn add_header_record(header: &mut [u8], ty: u16, value: &[u8]) {
    let old = u32::from_le_bytes(header[0x58..0x5c].try_into().unwrap_or([0; 4]));
    let at = 0x80 + old as usize;
    let Ok(len) = u16::try_from(value.len()) else {
        return;
    };
    if at + 4 + value.len() < header.len() - 8 {
        header[at..at + 2].copy_from_slice(&ty.to_le_bytes());
        header[at + 2..at + 4].copy_from_slice(&len.to_le_bytes());
        header[at + 4..at + 4 + value.len()].copy_from_slice(value);
        let new = old + 4 + u32::from(len);
        header[0x58..0x5c].copy_from_slice(&new.to_le_bytes());
    }
}

impl Bytes<'_> {
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }

    /// A new value for a field holding `old`: mostly a small step from it
    /// (where off-by-one bugs live), sometimes anything, or an extreme.
    fn near(&mut self, old: u64) -> u64 {
        match self.u8() % 8 {
            0 => self.u64(),
            1 => u64::MAX,
            2 => 0,
            3 => u64::from(u32::MAX),
            _ => step(old, self.u8()),
        }
    }

    fn index(&mut self, len: usize) -> Option<usize> {
        (len > 0).then(|| usize::from(self.u8()) % len)
    }
}

/// `v` moved by `d` taken as a signed byte: -128 to 127.
fn step(v: u64, d: u8) -> u64 {
    let d = i8::from_le_bytes([d]);
    let by = u64::from(d.unsigned_abs());
    if d < 0 {
        v.wrapping_sub(by)
    } else {
        v.wrapping_add(by)
    }
}

/// A mutation applied while the image is laid out, to the parts the layout
/// computes.
enum Late {
    MapOffset(usize, u8),
    MapLen(usize, u8),
    ChunkCount(u8),
    BodyLen(u8),
    BodyPlainLen(u8),
    IndexOffset(u8),
    IndexLen(u8),
    Generation(u8),
    /// Format 1.1: the index nonce salt (0 in an image without a 1.1
    /// feature), in the head and in the nonce that seals the index.
    IndexSalt(u8),
    /// Format 1.1: the index sealed under a nonce of another salt than the
    /// head's.
    SealSalt(u8),
    /// A field of the stored key slot (`Slot(field, value)`), after the
    /// wrap: see [`Late::apply`].
    Slot(u8, u8),
    StaleChecksums,
}

/// Argon2id costs a mutated key slot takes: the limits of each field and of
/// the cost bound, each side (spec.md, *Key slot*, *Argon2id cost bound*).
/// No value makes a reader derive with more than 64 KiB × 64 passes: a
/// slot within the bound that asks for 256 MiB is one the reader must
/// compute, and the allocation bound of the target would call it a bug.
const M_COSTS: [u32; 8] = [0, 7, 8, 16, 64, 262_145, 1_048_576, u32::MAX];
const T_COSTS: [u32; 6] = [0, 1, 2, 64, 65, u32::MAX];
const P_COSTS: [u32; 5] = [0, 1, 2, 16, 17];

impl Late {
    fn apply(&self, a: &mut crate::Assembly) {
        match *self {
            Late::MapOffset(i, d) => {
                if let Some(e) = a.map.get_mut(i) {
                    e.offset = step(e.offset, d);
                }
            }
            Late::MapLen(i, d) => {
                if let Some(e) = a.map.get_mut(i) {
                    e.stored_len = step(u64::from(e.stored_len), d) as u32;
                }
            }
            Late::ChunkCount(d) => a.index_head.chunk_count = step(a.index_head.chunk_count, d),
            Late::BodyLen(d) => a.index_head.body_len = step(a.index_head.body_len, d),
            Late::BodyPlainLen(d) => {
                a.index_head.body_plain_len = step(a.index_head.body_plain_len, d);
            }
            Late::IndexOffset(d) => a.trailer.index_offset = step(a.trailer.index_offset, d),
            Late::IndexLen(d) => a.trailer.index_len = step(a.trailer.index_len, d),
            Late::Generation(d) => a.trailer.generation = u32::from(d),
            Late::IndexSalt(d) => {
                let s = step(a.index_head.index_nonce_salt, d);
                a.index_head.index_nonce_salt = s;
                a.seal_salt = s;
            }
            Late::SealSalt(d) => a.seal_salt = step(a.seal_salt, d | 1),
            Late::Slot(field, v) => {
                let k = &mut a.trailer.key_slot;
                let bit = |x: &mut u8| *x ^= 1 << (v % 8);
                match field % 9 {
                    0 => k.kdf = v % 4,
                    1 => k.m_cost = M_COSTS[usize::from(v) % M_COSTS.len()],
                    2 => k.t_cost = T_COSTS[usize::from(v) % T_COSTS.len()],
                    3 => k.p_cost = P_COSTS[usize::from(v) % P_COSTS.len()],
                    4 => bit(&mut k.salt[usize::from(v / 8) % 16]),
                    5 => bit(&mut k.kek_check[usize::from(v / 8) % 16]),
                    6 => bit(&mut k.wrap_nonce[usize::from(v / 8) % 24]),
                    7 => bit(&mut k.wrapped_dek[usize::from(v / 8) % 48]),
                    _ => {
                        if v & 1 == 0 {
                            bit(&mut k.reserved0[usize::from(v / 8) % 3]);
                        } else {
                            bit(&mut k.reserved1[usize::from(v / 8) % 8]);
                        }
                    }
                }
            }
            Late::StaleChecksums => a.fix_stored_checksums = false,
        }
    }
}

/// Applies one mutation chosen by `m` to `f`, or records it in `late`.
/// `record` is where the load-order record starts in `f.meta`, and how many
/// chunks it lists, when the description made one.
fn mutate(
    f: &mut crate::Forge,
    m: &mut Bytes<'_>,
    late: &mut Vec<Late>,
    record: Option<(usize, usize)>,
) {
    let which = m.u8();
    let nr = f.regions.len();
    let ne = f.extents.len();
    let nc = f.chunks.len();
    match which % 28 {
        0 => {
            if let Some(i) = m.index(nr) {
                f.regions[i].name_off = m.near(u64::from(f.regions[i].name_off)) as u32;
            }
        }
        1 => {
            if let Some(i) = m.index(nr) {
                f.regions[i].name_len = m.near(u64::from(f.regions[i].name_len)) as u32;
            }
        }
        2 => {
            if let Some(i) = m.index(nr) {
                f.regions[i].first_extent = m.near(u64::from(f.regions[i].first_extent)) as u32;
            }
        }
        3 => {
            if let Some(i) = m.index(nr) {
                f.regions[i].extent_count = m.near(u64::from(f.regions[i].extent_count)) as u32;
            }
        }
        4 => {
            if let Some(i) = m.index(nr) {
                f.regions[i].start = m.near(f.regions[i].start);
            }
        }
        5 => {
            if let Some(i) = m.index(nr) {
                f.regions[i].len = m.near(f.regions[i].len);
            }
        }
        6 => {
            if let Some(i) = m.index(ne) {
                f.extents[i].kind = m.u8() % 4;
            }
        }
        7 => {
            if let Some(i) = m.index(ne) {
                f.extents[i].codec = m.u8() % 3;
            }
        }
        8 => {
            if let Some(i) = m.index(ne) {
                f.extents[i].chunk = m.near(f.extents[i].chunk);
            }
        }
        9 => {
            if let Some(i) = m.index(ne) {
                f.extents[i].page_count = m.near(u64::from(f.extents[i].page_count)) as u32;
            }
        }
        10 => {
            if let Some(i) = m.index(ne) {
                f.extents[i].addr = m.near(f.extents[i].addr);
            }
        }
        11 => {
            if let Some(i) = m.index(ne) {
                f.extents[i].region = m.near(u64::from(f.extents[i].region)) as u32;
            }
        }
        12 => {
            f.keep_counts = true;
            let bh = &mut f.body_head;
            bh.region_count = f.regions.len() as u32;
            bh.extent_count = f.extents.len() as u64;
            bh.strings_len = f.strings.len() as u32;
            bh.meta_len = f.meta.len() as u32;
            match m.u8() % 4 {
                0 => bh.region_count = m.near(u64::from(bh.region_count)) as u32,
                1 => bh.extent_count = m.near(bh.extent_count),
                2 => bh.strings_len = m.near(u64::from(bh.strings_len)) as u32,
                _ => bh.meta_len = m.near(u64::from(bh.meta_len)) as u32,
            }
        }
        13 => {
            if let Some(i) = m.index(nc) {
                late.push(Late::MapOffset(i, m.u8()));
            }
        }
        14 => {
            if let Some(i) = m.index(nc) {
                late.push(Late::MapLen(i, m.u8()));
            }
        }
        15 => late.push(match m.u8() % 3 {
            0 => Late::ChunkCount(m.u8()),
            1 => Late::BodyLen(m.u8()),
            _ => Late::BodyPlainLen(m.u8()),
        }),
        16 => late.push(match m.u8() % 6 {
            0 => Late::IndexOffset(m.u8()),
            1 => Late::IndexLen(m.u8()),
            2 => Late::Generation(m.u8()),
            3 => Late::IndexSalt(m.u8()),
            4 => Late::SealSalt(m.u8()),
            _ => Late::StaleChecksums,
        }),
        17 => {
            // The string table: a byte changed, bytes added or cut.
            match m.u8() % 3 {
                0 => {
                    if let Some(i) = m.index(f.strings.len()) {
                        f.strings[i] = m.u8();
                    }
                }
                1 => {
                    let n = usize::from(m.u8() % 16);
                    f.strings.extend(std::iter::repeat_n(b'x', n));
                }
                _ => {
                    let n = usize::from(m.u8()) % (f.strings.len() + 1);
                    f.strings.truncate(f.strings.len() - n);
                }
            }
        }
        18 => {
            // The meta: a byte changed (record lengths, name lengths, types),
            // or a record of another type added.
            if m.u8() & 1 == 0 {
                if let Some(i) = m.index(f.meta.len()) {
                    f.meta[i] = m.u8();
                }
            } else {
                let ty = u16::from(m.u8());
                let data: Vec<u8> = (0..m.u8() % 32).map(|_| m.u8()).collect();
                f.meta.extend_from_slice(&ty.to_le_bytes());
                f.meta.extend_from_slice(&0u16.to_le_bytes());
                f.meta.extend_from_slice(&(data.len() as u32).to_le_bytes());
                f.meta.extend_from_slice(&data);
            }
        }
        19 => {
            // Header records: one added after the others (types 0 to 23,
            // and 32 and 33: the parent record and hint of format 1.1).
            let ty = match m.u8() % 26 {
                24 => meta_parent::RECORD,
                25 => meta_parent::HINT,
                t => u16::from(t),
            };
            let len = usize::from(m.u8());
            let old = u32::from_le_bytes(f.header[0x58..0x5c].try_into().unwrap_or([0; 4]));
            let at = 0x80 + old as usize;
            if at + 4 + len < f.header.len() - 8 {
                f.header[at..at + 2].copy_from_slice(&ty.to_le_bytes());
                f.header[at + 2..at + 4].copy_from_slice(&(len as u16).to_le_bytes());
                for k in 0..len {
                    f.header[at + 4 + k] = m.u8();
                }
                let new = old + 4 + len as u32;
                f.header[0x58..0x5c].copy_from_slice(&new.to_le_bytes());
            }
        }
        20 => {
            // Two chunks' bytes swapped.
            if let (Some(i), Some(j)) = (m.index(nc), m.index(nc)) {
                f.chunks.swap(i, j);
            }
        }
        21 => {
            // A chunk's bytes replaced: cut, grown, two zstd frames, a frame
            // of another size.
            if let Some(i) = m.index(nc) {
                let c = &mut f.chunks[i];
                match m.u8() % 4 {
                    0 => {
                        let n = usize::from(m.u8()) % (c.len() + 1);
                        c.truncate(c.len() - n);
                    }
                    1 => c.extend(std::iter::repeat_n(m.u8(), usize::from(m.u8()))),
                    2 => {
                        let frame = zstd::bulk::compress(&c[..c.len() / 2], 1).unwrap_or_default();
                        c.extend_from_slice(&frame);
                    }
                    _ => {
                        let n = usize::from(m.u8()) * 512;
                        *c = zstd::bulk::compress(&vec![m.u8(); n], 1).unwrap_or_default();
                    }
                }
            }
        }
        22 => {
            if let Some(i) = m.index(ne) {
                f.extents[i].raw_checksum ^= 1u128 << (m.u8() % 128);
            }
        }
        24 => mutate_load_order(f, m, record),
        25 => {
            // The layout (format 1.1): two chunks swapped, a chunk moved to
            // the front, or number order, whatever the record says.
            match (m.u8() % 3, f.layout.as_mut()) {
                (0, Some(l)) if l.len() >= 2 => {
                    let (i, j) = (usize::from(m.u8()) % l.len(), usize::from(m.u8()) % l.len());
                    l.swap(i, j);
                }
                (1, _) => f.layout = None,
                _ => {
                    if let Some(c) = m.index(nc) {
                        f.layout.get_or_insert_with(Vec::new).insert(0, c as u64);
                    }
                }
            }
        }
        26 => {
            // The key slot's binding (format 1.1): to another image id, to
            // other KDF fields, none (a 1.0 slot) or one (a bound slot in an
            // image without SLOT_BOUND); or the image's own id changed
            // (everything that binds it follows).
            let own = memimg::raw::to_bytes(&memimg::raw::KeySlotRaw {
                kdf: 1,
                ..Default::default()
            });
            match m.u8() % 4 {
                0 => {
                    let mut id: [u8; 16] = f.header[0x30..0x40].try_into().unwrap_or([0; 16]);
                    id[usize::from(m.u8()) % 16] ^= m.u8() | 1;
                    f.slot_binding.get_or_insert_with(Default::default).image_id = Some(id);
                }
                1 => {
                    let mut fields: [u8; 32] = own[..32].try_into().unwrap_or([0; 32]);
                    fields[usize::from(m.u8()) % 32] ^= m.u8() | 1;
                    f.slot_binding
                        .get_or_insert_with(Default::default)
                        .kdf_fields = Some(fields);
                }
                2 => {
                    f.slot_binding = match f.slot_binding {
                        Some(_) => None,
                        None => Some(crate::SlotBinding::default()),
                    }
                }
                _ => f.header[0x30 + usize::from(m.u8()) % 16] ^= m.u8() | 1,
            }
        }
        27 => late.push(Late::Slot(m.u8(), m.u8())),
        _ => {
            // A header field: chunk size, feature bits (up to format 1.1's
            // SLOT_BOUND, PARENT and LOAD_ORDER), cipher.
            match m.u8() % 3 {
                0 => {
                    let v = m.near(u64::from(u32::from_le_bytes(
                        f.header[0x2c..0x30].try_into().unwrap_or([0; 4]),
                    ))) as u32;
                    f.header[0x2c..0x30].copy_from_slice(&v.to_le_bytes());
                }
                1 => f.header[0x10] ^= 1 << (m.u8() % 5),
                _ => f.header[0x54] ^= 1,
            }
        }
    }
}

/// A mutation of the load-order record (format 1.1), which starts at
/// `record.0` in `f.meta` and lists `record.1` chunks: an entry changed (past
/// the chunk map, or any value), an entry made another's (twice), its length
/// (not a multiple of 8, zero, past the body), its type (no record), or a
/// second record. Without a record, one is added after the others: a record
/// of unknown type where `LOAD_ORDER` is not set, or a second one.
fn mutate_load_order(f: &mut crate::Forge, m: &mut Bytes<'_>, record: Option<(usize, usize)>) {
    let entry = |meta: &[u8], at: usize, k: usize| -> Option<u64> {
        let b = meta.get(at + 8 + 8 * k..at + 16 + 8 * k)?;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    };
    let set = |meta: &mut [u8], at: usize, k: usize, v: u64| {
        if let Some(b) = meta.get_mut(at + 8 + 8 * k..at + 16 + 8 * k) {
            b.copy_from_slice(&v.to_le_bytes());
        }
    };
    let Some((at, count)) = record else {
        let n = usize::from(m.u8() % 4);
        let chunks: Vec<u64> = (0..n).map(|_| m.near(0)).collect();
        f.push_load_order(&chunks);
        return;
    };
    match m.u8() % 5 {
        0 => {
            let k = usize::from(m.u8()) % count;
            if let Some(old) = entry(&f.meta, at, k) {
                let v = match m.u8() % 2 {
                    0 => f.chunks.len() as u64 + u64::from(m.u8() % 4),
                    _ => m.near(old),
                };
                set(&mut f.meta, at, k, v);
            }
        }
        1 => {
            let (i, j) = (usize::from(m.u8()) % count, usize::from(m.u8()) % count);
            if let Some(v) = entry(&f.meta, at, j) {
                set(&mut f.meta, at, i, v);
            }
        }
        2 => {
            if let Some(b) = f.meta.get_mut(at + 4..at + 8) {
                let old = u32::from_le_bytes(b.try_into().unwrap_or([0; 4]));
                b.copy_from_slice(&(step(u64::from(old), m.u8()) as u32).to_le_bytes());
            }
        }
        3 => {
            if let Some(b) = f.meta.get_mut(at..at + 2) {
                b.copy_from_slice(&u16::from(m.u8()).to_le_bytes());
            }
        }
        _ => {
            if let Some(r) = f.meta.get(at..at + 8 + 8 * count).map(<[u8]>::to_vec) {
                f.meta.extend_from_slice(&r);
            }
        }
    }
}
