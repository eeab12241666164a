#![no_main]
//! Fuzz target `elf_core`: arbitrary bytes as an ELF core (imgtool::elfcore).
//!
//! Parsing and importing must give a typed error or an image, never a panic
//! or an allocation beyond a small multiple of the input. Every table and note
//! the parser exposes is walked. An image that imports must verify intact, and
//! its export must import again.
use imgtool::elfcore::{self, elf, notes, ExportOptions};
use libfuzzer_sys::fuzz_target;
use memimg::{Codec, Image, VerifyOptions, WriterOptions};

/// Exports writes the zero runs of file-backed regions as real bytes; past
/// this much mapped data the export is skipped, so a claimed huge zero run
/// does not make the target time out.
const EXPORT_LIMIT: u64 = 64 << 20;

fn opts() -> WriterOptions {
    WriterOptions::new()
        .page_size(4096)
        .chunk_size(4 * 4096)
        .codec(Codec::None)
        .workers(0)
}

fn walk(data: &[u8]) {
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

fuzz_target!(|data: &[u8]| {
    walk(data);
    let Ok((bytes, _, _)) = elfcore::import_core(data, opts(), Vec::new()) else {
        return;
    };
    let report = memimg::verify_bytes(
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
    let img = Image::from_bytes(bytes, None).expect("an imported image opens");
    let regions = img.regions().expect("a plain image's regions read");
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
        .expect("an imported image exports");
    elfcore::import_core(&core, opts(), Vec::new()).expect("an exported core imports again");
});
