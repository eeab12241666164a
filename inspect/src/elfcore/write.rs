//! The core writer: lays out an `ET_CORE` file from an image and streams it,
//! decoding one extent at a time.

use std::io::Write;

use memimg::{Endian, Extent, ExtentKind, Image, Region, RegionKind};

use super::elf::{self, align_up, Order, Phdr};
use super::notes::{self, FileEntry, NoteRegion, RegionsNote};
use super::CoreError;

/// Options for [`export_core`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportOptions {
    /// Add the `MEMIMG` notes (region kinds and names, zero runs, header facts,
    /// other image notes) so that importing the core gives back the same
    /// image. gdb ignores them. By default on.
    pub memimg_notes: bool,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions { memimg_notes: true }
    }
}

/// What [`export_core`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportReport {
    /// `PT_LOAD` segments written.
    pub segments: u64,
    /// Memory bytes written into the file (data, and zeros of file mappings).
    pub file_bytes: u64,
    /// Memory bytes left as holes past `p_filesz` (zero runs, absent pages,
    /// regions without data).
    pub hole_bytes: u64,
    /// The core's length.
    pub file_len: u64,
    /// The notes written, in order, named as the image names them (`CORE/1` …).
    pub notes: Vec<String>,
    /// True when register notes (`NT_PRSTATUS`) were written.
    pub registers: bool,
    /// Things the user should know (no registers, facts that did not fit …).
    pub messages: Vec<String>,
}

/// Where the bytes of a piece of a segment come from.
enum Piece {
    /// A data extent of the image.
    Data(Extent),
    /// Zero bytes written to the file.
    Zeros(u64),
}

struct SegPlan {
    vaddr: u64,
    memsz: u64,
    filesz: u64,
    flags: u32,
    pieces: Vec<Piece>,
}

/// Writes `img` to `out` as an ELF64 `ET_CORE` file.
///
/// The core has one `PT_NOTE` and, per region, one `PT_LOAD` per run of stored
/// pages followed by a run of zero or absent pages (the hole is the part past
/// `p_filesz`); a region without data is one `PT_LOAD` with `p_filesz` 0. Notes:
/// the image's kept ELF notes verbatim and in order, then `NT_PRPSINFO` from the
/// process facts and `NT_FILE` from the file-backed regions unless kept notes
/// already hold them, then the `MEMIMG` notes (see [`ExportOptions`]).
///
/// # Errors
/// `Unsupported` for 32-bit images, `Image` when the image cannot be read
/// (locked, damaged), `Io` when writing fails.
pub fn export_core(
    img: &Image,
    out: &mut dyn Write,
    opts: &ExportOptions,
) -> Result<ExportReport, CoreError> {
    let header = img.header();
    let m = header.machine;
    if m.ptr_bytes != 8 {
        return Err(CoreError::Unsupported(format!(
            "the image is of a {}-bit machine; only 64-bit cores are written",
            u32::from(m.ptr_bytes) * 8
        )));
    }
    let order = match m.endian {
        Endian::Little => Order::Little,
        Endian::Big => Order::Big,
    };
    let ps = u64::from(header.page_size);
    let mut report = ExportReport::default();

    // Segments.
    let mut segs = Vec::new();
    let mut zeros: Vec<(u64, u64)> = Vec::new();
    let regions = img.regions()?;
    for r in regions {
        plan_region(img, r, ps, &mut segs, &mut zeros)?;
    }

    // Notes.
    let (note_bytes, note_names) = build_notes(img, order, regions, &zeros, opts, &mut report)?;
    report.notes = note_names;

    // Layout.
    let nph = segs
        .len()
        .checked_add(1)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| CoreError::Unsupported("more than 2^32 segments".into()))?;
    let xnum = nph >= u32::from(elf::PN_XNUM);
    let phoff = elf::EHDR_SIZE as u64;
    let shoff = phoff + u64::from(nph) * elf::PHDR_SIZE as u64;
    let notes_off = shoff + if xnum { elf::SHDR_SIZE as u64 } else { 0 };
    let notes_len = note_bytes.len() as u64;
    let data_off = align_up(notes_off + notes_len, ps)
        .ok_or_else(|| CoreError::Unsupported("core too large".into()))?;

    let mut head = Vec::with_capacity(usize::try_from(data_off).unwrap_or(0));
    head.extend_from_slice(&elf::MAGIC);
    head.extend_from_slice(&[
        elf::ELFCLASS64,
        if order == Order::Little {
            elf::ELFDATA2LSB
        } else {
            elf::ELFDATA2MSB
        },
        1,
        0,
    ]);
    head.resize(16, 0);
    order.put16(&mut head, elf::ET_CORE);
    order.put16(&mut head, m.arch);
    order.put32(&mut head, 1);
    order.put64(&mut head, 0); // e_entry
    order.put64(&mut head, phoff);
    order.put64(&mut head, if xnum { shoff } else { 0 });
    order.put32(&mut head, 0); // e_flags
    order.put16(&mut head, 64); // e_ehsize
    order.put16(&mut head, 56); // e_phentsize
                                // With PN_XNUM the count is in section header 0; otherwise it fits.
    let e_phnum = u16::try_from(nph).unwrap_or(elf::PN_XNUM);
    order.put16(&mut head, e_phnum);
    order.put16(&mut head, if xnum { 64 } else { 0 });
    order.put16(&mut head, u16::from(xnum));
    order.put16(&mut head, 0);

    Phdr {
        p_type: elf::PT_NOTE,
        p_offset: notes_off,
        p_filesz: notes_len,
        p_align: 4,
        ..Phdr::default()
    }
    .put(order, &mut head);
    let mut off = data_off;
    for s in &segs {
        Phdr {
            p_type: elf::PT_LOAD,
            p_flags: s.flags,
            p_offset: off,
            p_vaddr: s.vaddr,
            p_paddr: 0,
            p_filesz: s.filesz,
            p_memsz: s.memsz,
            p_align: ps,
        }
        .put(order, &mut head);
        off = off
            .checked_add(s.filesz)
            .ok_or_else(|| CoreError::Unsupported("core too large".into()))?;
        report.file_bytes += s.filesz;
        report.hole_bytes += s.memsz - s.filesz;
    }
    if xnum {
        let mut sh = [0u8; elf::SHDR_SIZE];
        order.set64(&mut sh, 32, 1); // sh_size = e_shnum
        order.set32(&mut sh, 44, nph); // sh_info = real e_phnum
        head.extend_from_slice(&sh);
    }
    head.extend_from_slice(&note_bytes);
    head.resize(usize::try_from(data_off).unwrap_or(head.len()), 0);
    out.write_all(&head)?;

    // Decoded memory (plaintext, even from an encrypted image): zeroized on
    // drop, and allocated at the chunk size once so that growing leaves no
    // copy behind.
    let mut buf = zeroize::Zeroizing::new(Vec::with_capacity(header.chunk_size as usize));
    for s in &segs {
        for p in &s.pieces {
            match p {
                Piece::Data(ext) => {
                    let len = usize::try_from(ext.len(header.page_size))
                        .map_err(|_| CoreError::Unsupported("extent larger than memory".into()))?;
                    buf.clear();
                    buf.resize(len, 0);
                    img.decode_extent(ext, &mut buf)?;
                    out.write_all(&buf)?;
                }
                Piece::Zeros(n) => write_zeros(out, *n)?,
            }
        }
    }
    report.segments = segs.len() as u64;
    report.file_len = off;
    Ok(report)
}

fn write_zeros(out: &mut dyn Write, mut n: u64) -> Result<(), CoreError> {
    static Z: [u8; 1 << 16] = [0; 1 << 16];
    while n > 0 {
        let k = n.min(Z.len() as u64);
        out.write_all(&Z[..usize::try_from(k).unwrap_or(0)])?;
        n -= k;
    }
    Ok(())
}

fn pf(r: &Region) -> u32 {
    let p = r.info.prot;
    (if p.read() { elf::PF_R } else { 0 })
        | (if p.write() { elf::PF_W } else { 0 })
        | (if p.exec() { elf::PF_X } else { 0 })
}

/// Appends the segments of one region.
fn plan_region(
    img: &Image,
    r: &Region,
    ps: u64,
    segs: &mut Vec<SegPlan>,
    zeros: &mut Vec<(u64, u64)>,
) -> Result<(), CoreError> {
    let flags = pf(r);
    if !r.has_data() {
        segs.push(SegPlan {
            vaddr: r.info.start,
            memsz: r.info.len,
            filesz: 0,
            flags,
            pieces: Vec::new(),
        });
        return Ok(());
    }
    // gdb reads holes of file mappings from the mapped file, so zero runs there
    // are written out.
    let file_backed = r.info.kind == RegionKind::FileBacked;
    let mut cur: Option<SegPlan> = None;
    for ext in img.region_extents(r)? {
        let len = ext.len(u32::try_from(ps).unwrap_or(u32::MAX));
        let in_file = match ext.kind {
            ExtentKind::Data => true,
            ExtentKind::Zero => file_backed,
            // Format 1.1: the parent's pages are not in this image.
            ExtentKind::Absent | ExtentKind::InParent => false,
        };
        if in_file {
            if cur.as_ref().is_some_and(|c| c.memsz > c.filesz) {
                segs.extend(cur.take());
            }
            let c = cur.get_or_insert_with(|| SegPlan {
                vaddr: ext.addr,
                memsz: 0,
                filesz: 0,
                flags,
                pieces: Vec::new(),
            });
            c.pieces.push(if ext.kind == ExtentKind::Data {
                Piece::Data(*ext)
            } else {
                Piece::Zeros(len)
            });
            c.filesz += len;
            c.memsz += len;
        } else {
            let c = cur.get_or_insert_with(|| SegPlan {
                vaddr: ext.addr,
                memsz: 0,
                filesz: 0,
                flags,
                pieces: Vec::new(),
            });
            c.memsz += len;
            if ext.kind == ExtentKind::Zero {
                match zeros.last_mut() {
                    Some(z) if z.0 + z.1 == ext.addr => z.1 += len,
                    _ => zeros.push((ext.addr, len)),
                }
            }
        }
    }
    segs.extend(cur);
    Ok(())
}

/// Builds the `PT_NOTE` body and the names of its notes.
fn build_notes(
    img: &Image,
    order: Order,
    regions: &[Region],
    zeros: &[(u64, u64)],
    opts: &ExportOptions,
    report: &mut ExportReport,
) -> Result<(Vec<u8>, Vec<String>), CoreError> {
    let header = img.header();
    let mut body = Vec::new();
    let mut names = Vec::new();
    let mut other = Vec::new();
    let core = b"CORE\0";
    let (mut has_prpsinfo, mut has_file) = (false, false);
    let mut generated = 0;
    let put = |body: &mut Vec<u8>, owner: &[u8], ty: u32, desc: &[u8]| {
        notes::put_note(order, body, owner, ty, desc).map_err(CoreError::Unsupported)
    };
    for n in img.notes()? {
        match notes::parse_note_name(&n.name) {
            Some((owner, ty)) => {
                if owner == core {
                    has_prpsinfo |= ty == elf::NT_PRPSINFO;
                    has_file |= ty == elf::NT_FILE;
                    report.registers |= ty == elf::NT_PRSTATUS;
                }
                put(&mut body, &owner, ty, &n.data)?;
                names.push(n.name.clone());
            }
            None => other.push(n),
        }
    }
    let facts = header.process.clone().unwrap_or_default();
    if !has_prpsinfo && header.process.is_some() {
        let d = notes::build_prpsinfo(order, facts.pid.unwrap_or(0), &facts.comm, &facts.cmdline);
        put(&mut body, core, elf::NT_PRPSINFO, &d)?;
        names.push(notes::note_name(core, elf::NT_PRPSINFO));
        generated |= notes::GENERATED_PRPSINFO;
    }
    if !has_file {
        let nps = u64::from(header.machine.page_size.max(1));
        let mut entries = Vec::new();
        for r in regions
            .iter()
            .filter(|r| r.info.kind == RegionKind::FileBacked && !r.info.name.is_empty())
        {
            if r.info.file_offset % nps != 0 {
                report.messages.push(format!(
                    "region {:#x}-{:#x}: file offset {:#x} is not a multiple of the page size; left out of NT_FILE",
                    r.info.start,
                    r.info.end(),
                    r.info.file_offset
                ));
                continue;
            }
            entries.push(FileEntry {
                start: r.info.start,
                end: r.info.end(),
                page_offset: r.info.file_offset / nps,
                path: r.info.name.clone(),
            });
        }
        if !entries.is_empty() {
            put(
                &mut body,
                core,
                elf::NT_FILE,
                &notes::build_nt_file(order, nps, &entries),
            )?;
            names.push(notes::note_name(core, elf::NT_FILE));
            generated |= notes::GENERATED_FILE;
        }
    }
    if !report.registers {
        report
            .messages
            .push("no registers: memory inspection only".into());
    }
    let owner = b"MEMIMG\0";
    if opts.memimg_notes {
        let rn = RegionsNote {
            machine_page_size: header.machine.page_size,
            regions: regions
                .iter()
                .map(|r| NoteRegion {
                    info: r.info.clone(),
                    has_data: r.has_data(),
                })
                .collect(),
            zeros: zeros.to_vec(),
            generated,
        };
        let d = notes::build_regions_note(order, &rn).map_err(CoreError::Unsupported)?;
        put(&mut body, owner, notes::NT_MEMIMG_REGIONS, &d)?;
        names.push(notes::note_name(owner, notes::NT_MEMIMG_REGIONS));
        let mut recs: Vec<(u16, &[u8])> = Vec::new();
        let pid = facts.pid.map(u32::to_le_bytes);
        if let Some(v) = &header.validation {
            recs.push((2, &v.tag));
            recs.push((3, &v.data));
        }
        if let Some(p) = &pid {
            recs.push((16, p));
        }
        for (t, v) in [
            (17, &facts.comm),
            (18, &facts.cmdline),
            (19, &facts.exe),
            (20, &facts.build_id),
            (21, &facts.kernel_release),
        ] {
            if !v.is_empty() {
                recs.push((t, v));
            }
        }
        if !recs.is_empty() {
            put(
                &mut body,
                owner,
                notes::NT_MEMIMG_FACTS,
                &notes::build_facts_note(order, &recs),
            )?;
            names.push(notes::note_name(owner, notes::NT_MEMIMG_FACTS));
        }
        for n in other {
            let d =
                notes::build_image_note(order, &n.name, &n.data).map_err(CoreError::Unsupported)?;
            put(&mut body, owner, notes::NT_MEMIMG_NOTE, &d)?;
            names.push(notes::note_name(owner, notes::NT_MEMIMG_NOTE));
        }
    } else if !other.is_empty() {
        report.messages.push(format!(
            "{} image notes that are not ELF notes were left out (MEMIMG notes are off)",
            other.len()
        ));
    }
    Ok((body, names))
}
