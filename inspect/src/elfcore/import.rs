//! Core → image: turns the segments and notes of a parsed core into regions,
//! process facts and kept notes, and streams them into a [`Writer`].

use std::io::Write;

use memimg::{
    Endian, MachineFacts, Note, ProcessFacts, Prot, RegionInfo, RegionKind, Validation, WriteStats,
    Writer, WriterOptions,
};

use super::elf::{self, align_up, Order};
use super::notes::{self, NoteRegion, NtFile, RegionsNote};
use super::read::{parse_core, CoreFile, Segment};
use super::CoreError;

/// What [`import_core`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// `PT_LOAD` segments read.
    pub segments: u64,
    /// Regions written.
    pub regions: u64,
    /// Notes kept verbatim in the image, by image note name (`CORE/1` …).
    pub kept_notes: Vec<String>,
    /// Regions named from `NT_FILE`.
    pub file_mappings: u64,
    /// Bytes recorded as absent (segment tails past `p_filesz`).
    pub absent_bytes: u64,
    /// True when process facts were found.
    pub process: bool,
    /// True when the region table came from a `MEMIMG` note (a core this
    /// module exported), so kinds, names and zero runs are exact.
    pub from_memimg_notes: bool,
    /// True when the core holds registers (`NT_PRSTATUS`).
    pub registers: bool,
    /// Things the user should know (notes that could not be read …).
    pub messages: Vec<String>,
}

/// The most address space the regions of one import may cover: 2^57 bytes,
/// twice the user half of a 57-bit (5-level paging) address space. Real cores
/// cover far less. The image's extent table grows with the span (one extent
/// per 2^32 pages), so without this limit a 200-byte core with one segment
/// spanning 2^64 bytes would make a 50 MB image.
const MAX_SPAN: u64 = 1 << 57;

/// One region to write and the segments that fill it.
struct Planned {
    info: RegionInfo,
    has_data: bool,
}

/// What the notes of a core say.
#[derive(Default)]
struct NoteFacts {
    kept: Vec<Note>,
    regions: Option<RegionsNote>,
    facts: Option<Vec<(u16, Vec<u8>)>>,
    prpsinfo: Option<notes::Prpsinfo>,
    nt_file: Option<NtFile>,
    auxv: Option<Vec<u8>>,
}

/// Reads the ELF core `core` and writes it as an image to `out`.
///
/// - Each `PT_LOAD` becomes a region with its address and protection; its file
///   bytes are data (zero pages are found and recorded as zero), and the part
///   past `p_filesz` is recorded as **absent**: the kernel and gcore leave out
///   pages they chose not to dump, which is not the same as zero.
/// - `NT_FILE` names file-backed regions and gives their file offsets; the
///   auxiliary vector names `[vdso]` and `[stack]` and the executable.
/// - `NT_PRPSINFO` gives the pid, comm and cmdline (its `pr_psargs`: at most 80
///   bytes, arguments joined by spaces).
/// - Every note is kept in the image as a [`Note`] named `OWNER/TYPE` (see
///   [`notes`]), so exporting the image writes the same notes back.
/// - A core written by [`super::export_core`] carries `MEMIMG` notes, which give
///   back the exact regions, zero runs and header facts; they are not kept.
///
/// `opts` gives the codec, key, chunk size and image page size; the machine
/// facts, process facts and notes of `opts` are replaced by the core's.
///
/// # Errors
/// Any [`CoreError`] from [`parse_core`]; `Unaligned` when a segment does not
/// start on an image page; `Overlap` when segments overlap once rounded to
/// pages; `Image` when the writer fails.
pub fn import_core<W: Write>(
    core: &[u8],
    opts: WriterOptions,
    out: W,
) -> Result<(W, WriteStats, ImportReport), CoreError> {
    let cf = parse_core(core)?;
    let ps = opts.get_page_size();
    let ps64 = u64::from(ps);
    let mut report = ImportReport {
        segments: cf.segments.len() as u64,
        ..ImportReport::default()
    };
    if cf.empty_segments > 0 {
        report.messages.push(format!(
            "{} PT_LOAD segments with p_memsz 0 were skipped",
            cf.empty_segments
        ));
    }
    for s in &cf.segments {
        if s.vaddr % ps64 != 0 {
            return Err(CoreError::Unaligned {
                index: s.index,
                vaddr: s.vaddr,
                page_size: ps,
            });
        }
    }
    for w in cf.segments.windows(2) {
        let end = align_up(w[0].end(), ps64).ok_or_else(|| CoreError::Malformed {
            offset: 0,
            reason: format!(
                "segment {} at {:#x}: size overflows",
                w[0].index, w[0].vaddr
            ),
        })?;
        if end > w[1].vaddr {
            return Err(CoreError::Overlap {
                first: w[0].index,
                first_range: (w[0].vaddr, end),
                second: w[1].index,
                second_range: (w[1].vaddr, w[1].end()),
            });
        }
    }
    let span = cf
        .segments
        .iter()
        .try_fold(0u64, |t, s| t.checked_add(s.memsz))
        .filter(|&t| t <= MAX_SPAN);
    if span.is_none() {
        return Err(CoreError::Unsupported(format!(
            "the PT_LOAD segments cover more than {MAX_SPAN:#x} bytes of address space, more than any process maps"
        )));
    }
    let nf = read_notes(&cf, &mut report);

    // The region table: from our own note when it fits the segments, else one
    // region per segment.
    let mut plan = None;
    if let Some(rn) = &nf.regions {
        match check_regions_note(rn, &cf.segments, ps64) {
            Ok(()) => {
                plan = Some(
                    rn.regions
                        .iter()
                        .map(|r: &NoteRegion| Planned {
                            info: r.info.clone(),
                            has_data: r.has_data,
                        })
                        .collect::<Vec<_>>(),
                );
                report.from_memimg_notes = true;
            }
            Err(m) => report
                .messages
                .push(format!("MEMIMG regions note ignored: {m}")),
        }
    }
    let mut nf = nf;
    if let (Some(_), Some(rn)) = (&plan, &nf.regions) {
        // Notes the export made up are not kept: they come back from the facts.
        let drop_prpsinfo = rn.generated & notes::GENERATED_PRPSINFO != 0;
        let drop_file = rn.generated & notes::GENERATED_FILE != 0;
        let (p, f) = (
            notes::note_name(b"CORE\0", elf::NT_PRPSINFO),
            notes::note_name(b"CORE\0", elf::NT_FILE),
        );
        nf.kept
            .retain(|n| !(drop_prpsinfo && n.name == p || drop_file && n.name == f));
    }
    let zeros: &[(u64, u64)] = match (&plan, &nf.regions) {
        (Some(_), Some(rn)) => &rn.zeros,
        _ => &[],
    };
    let plan = match plan {
        Some(p) => p,
        None => plan_from_segments(&cf, &nf, ps64, &mut report)?,
    };

    // Header facts.
    let mut process = ProcessFacts::default();
    let mut validation: Option<Validation> = None;
    if let Some(recs) = &nf.facts {
        for (t, v) in recs {
            match t {
                2 => validation.get_or_insert_with(Validation::default).tag = v.clone(),
                3 => validation.get_or_insert_with(Validation::default).data = v.clone(),
                16 => process.pid = v.as_slice().try_into().ok().map(u32::from_le_bytes),
                17 => process.comm = v.clone(),
                18 => process.cmdline = v.clone(),
                19 => process.exe = v.clone(),
                20 => process.build_id = v.clone(),
                21 => process.kernel_release = v.clone(),
                _ => {}
            }
        }
    } else if let Some(p) = &nf.prpsinfo {
        process.pid = Some(p.pid);
        process.comm = p.fname.clone();
        // The kernel turns every NUL of the cmdline into a space, the last too.
        process.cmdline = p.psargs.clone();
        while process.cmdline.last() == Some(&b' ') {
            process.cmdline.pop();
        }
        if let (Some(auxv), Some(f)) = (&nf.auxv, &nf.nt_file) {
            if let Some(entry) = notes::auxv_get(cf.order, auxv, notes::AT_ENTRY) {
                if let Some(e) = f.entries.iter().find(|e| e.start <= entry && entry < e.end) {
                    process.exe = e.path.clone();
                }
            }
        }
    }
    report.process = !process.is_empty();
    let machine_page_size = nf
        .regions
        .as_ref()
        .filter(|_| report.from_memimg_notes)
        .map(|r| r.machine_page_size)
        .or_else(|| {
            nf.nt_file
                .as_ref()
                .and_then(|f| u32::try_from(f.page_size).ok())
        })
        .filter(|p| p.is_power_of_two())
        .unwrap_or_else(|| MachineFacts::current().page_size);
    let machine = MachineFacts {
        arch: cf.machine,
        endian: if cf.order == Order::Little {
            Endian::Little
        } else {
            Endian::Big
        },
        ptr_bytes: 8,
        page_size: machine_page_size,
    };
    report.kept_notes = nf.kept.iter().map(|n| n.name.clone()).collect();
    report.registers = report.kept_notes.iter().any(|n| n == "CORE/1");
    let opts = opts
        .machine(machine)
        .process(report.process.then_some(process))
        .validation_opt(validation)
        .notes(nf.kept);

    let mut w = Writer::new(out, opts)?;
    let mut segs = cf.segments.iter().peekable();
    let mut pad_warned = false;
    for p in &plan {
        if !p.has_data {
            while segs.peek().is_some_and(|s| s.vaddr < p.info.end()) {
                segs.next();
            }
            w.add_empty_region(p.info.clone())?;
            continue;
        }
        let end = p.info.end();
        w.begin_region(p.info.clone())?;
        let mut cursor = p.info.start;
        while let Some(s) = segs.next_if(|s| s.vaddr < end) {
            fill(&mut w, cursor, s.vaddr, zeros)?;
            let data = cf.segment_bytes(s);
            let whole = data.len() - data.len() % (ps as usize);
            w.push_data(&data[..whole])?;
            if whole < data.len() {
                let mut page = zeroize::Zeroizing::new(vec![0u8; ps as usize]);
                page[..data.len() - whole].copy_from_slice(&data[whole..]);
                w.push_data(&page)?;
                if !pad_warned {
                    report.messages.push(format!(
                        "segment {} at {:#x}: p_filesz {:#x} is not whole pages; the last page is padded with zeros",
                        s.index, s.vaddr, s.filesz
                    ));
                    pad_warned = true;
                }
            }
            // The plan checked both against the region end; stay checked anyway.
            let wraps = || CoreError::Malformed {
                offset: 0,
                reason: format!(
                    "segment {} at {:#x} wraps the address space",
                    s.index, s.vaddr
                ),
            };
            let seg_end = align_up(s.end(), ps64).ok_or_else(wraps)?.min(end);
            let file_end = align_up(s.filesz, ps64)
                .and_then(|f| s.vaddr.checked_add(f))
                .ok_or_else(wraps)?
                .min(seg_end);
            fill(&mut w, file_end, seg_end, zeros)?;
            cursor = seg_end;
        }
        fill(&mut w, cursor, end, zeros)?;
        w.end_region()?;
    }
    report.regions = plan.len() as u64;
    let (out, stats) = w.finish()?;
    report.absent_bytes = stats.absent_pages.saturating_mul(ps64);
    Ok((out, stats, report))
}

/// Records `[a, b)` as zero where `zeros` says so and absent elsewhere.
fn fill<W: Write>(
    w: &mut Writer<W>,
    a: u64,
    b: u64,
    zeros: &[(u64, u64)],
) -> Result<(), CoreError> {
    let mut at = a;
    let first = zeros.partition_point(|z| z.0 + z.1 <= a);
    for &(zs, zl) in &zeros[first..] {
        if at >= b || zs >= b {
            break;
        }
        let zs = zs.max(at);
        let ze = (zs + zl).min(b).max(zs);
        if zs > at {
            w.push_absent(zs - at)?;
        }
        w.push_zero(ze - zs)?;
        at = ze;
    }
    if b > at {
        w.push_absent(b - at)?;
    }
    Ok(())
}

/// Sorts the notes into kept ones and the ones this module reads.
fn read_notes(cf: &CoreFile<'_>, report: &mut ImportReport) -> NoteFacts {
    let mut nf = NoteFacts::default();
    let o = cf.order;
    for n in &cf.notes {
        if n.is_owner(notes::MEMIMG_OWNER) {
            match n.n_type {
                notes::NT_MEMIMG_REGIONS => match notes::parse_regions_note(o, n.desc) {
                    Ok(r) => nf.regions = Some(r),
                    Err(m) => report
                        .messages
                        .push(format!("note at {:#x}: {m}", n.offset)),
                },
                notes::NT_MEMIMG_FACTS => match notes::parse_facts_note(o, n.desc) {
                    Some(f) => nf.facts = Some(f),
                    None => report
                        .messages
                        .push(format!("note at {:#x}: bad MEMIMG facts note", n.offset)),
                },
                notes::NT_MEMIMG_NOTE => match notes::parse_image_note(o, n.desc) {
                    Some((name, data)) => nf.kept.push(Note { name, data }),
                    None => report
                        .messages
                        .push(format!("note at {:#x}: bad MEMIMG image note", n.offset)),
                },
                t => report.messages.push(format!(
                    "note at {:#x}: unknown MEMIMG note type {t:#x} dropped",
                    n.offset
                )),
            }
            continue;
        }
        if n.is_owner("CORE") {
            match n.n_type {
                elf::NT_PRPSINFO if nf.prpsinfo.is_none() => {
                    nf.prpsinfo = notes::parse_prpsinfo(o, n.desc);
                    if nf.prpsinfo.is_none() {
                        report.messages.push(format!(
                            "NT_PRPSINFO of {} bytes is not the 64-bit Linux layout; process facts not read",
                            n.desc.len()
                        ));
                    }
                }
                elf::NT_FILE if nf.nt_file.is_none() => match notes::parse_nt_file(o, n.desc) {
                    Ok(f) => nf.nt_file = Some(f),
                    Err(m) => report
                        .messages
                        .push(format!("note at {:#x}: {m}; file names not read", n.offset)),
                },
                elf::NT_AUXV if nf.auxv.is_none() => nf.auxv = Some(n.desc.to_vec()),
                _ => {}
            }
        }
        nf.kept.push(Note {
            name: notes::note_name(n.owner, n.n_type),
            data: n.desc.to_vec(),
        });
    }
    nf
}

/// Checks that a `MEMIMG` regions note describes these segments.
fn check_regions_note(rn: &RegionsNote, segs: &[Segment], ps: u64) -> Result<(), String> {
    let mut prev_end = 0u64;
    let mut span = 0u64;
    for r in &rn.regions {
        let i = &r.info;
        span = span
            .checked_add(i.len)
            .filter(|&t| t <= MAX_SPAN)
            .ok_or_else(|| format!("the regions cover more than {MAX_SPAN:#x} bytes"))?;
        let end = i
            .start
            .checked_add(i.len)
            .ok_or("a region wraps the address space")?;
        if i.start % ps != 0 || i.len % ps != 0 || i.len == 0 {
            return Err(format!("region at {:#x} is not whole image pages", i.start));
        }
        if i.start < prev_end {
            return Err(format!(
                "region at {:#x} is out of order or overlaps",
                i.start
            ));
        }
        prev_end = end;
    }
    for s in segs {
        let k = rn.regions.partition_point(|r| r.info.end() <= s.vaddr);
        let r = rn
            .regions
            .get(k)
            .filter(|r| r.info.start <= s.vaddr)
            .ok_or_else(|| format!("segment at {:#x} lies in no region", s.vaddr))?;
        if align_up(s.end(), ps).is_none_or(|e| e > r.info.end()) {
            return Err(format!("segment at {:#x} runs past its region", s.vaddr));
        }
        if !r.has_data && s.filesz > 0 {
            return Err(format!(
                "segment at {:#x} has bytes but its region has no data",
                s.vaddr
            ));
        }
    }
    let mut prev = 0u64;
    for &(zs, zl) in &rn.zeros {
        let ze = zs.checked_add(zl).ok_or("a zero run wraps")?;
        if zs % ps != 0 || zl % ps != 0 || zl == 0 || zs < prev {
            return Err(format!("zero run at {zs:#x} is not sorted whole pages"));
        }
        prev = ze;
    }
    Ok(())
}

/// One region per segment, named from `NT_FILE` and the auxiliary vector.
fn plan_from_segments(
    cf: &CoreFile<'_>,
    nf: &NoteFacts,
    ps: u64,
    report: &mut ImportReport,
) -> Result<Vec<Planned>, CoreError> {
    let mut files: Vec<&notes::FileEntry> =
        nf.nt_file.iter().flat_map(|f| f.entries.iter()).collect();
    files.sort_by_key(|e| e.start);
    let nt_ps = nf.nt_file.as_ref().map_or(0, |f| f.page_size);
    let aux = |key| {
        nf.auxv
            .as_ref()
            .and_then(|a| notes::auxv_get(cf.order, a, key))
    };
    let (vdso, execfn) = (aux(notes::AT_SYSINFO_EHDR), aux(notes::AT_EXECFN));
    let mut plan: Vec<Planned> = Vec::with_capacity(cf.segments.len());
    for s in &cf.segments {
        let len = align_up(s.memsz, ps).ok_or_else(|| CoreError::Malformed {
            offset: 0,
            reason: format!("segment {} at {:#x}: size overflows", s.index, s.vaddr),
        })?;
        let end = s
            .vaddr
            .checked_add(len)
            .ok_or_else(|| CoreError::Malformed {
                offset: 0,
                reason: format!(
                    "segment {} at {:#x} wraps the address space",
                    s.index, s.vaddr
                ),
            })?;
        let prot = Prot(
            (if s.flags & elf::PF_R != 0 {
                Prot::READ
            } else {
                0
            }) | (if s.flags & elf::PF_W != 0 {
                Prot::WRITE
            } else {
                0
            }) | (if s.flags & elf::PF_X != 0 {
                Prot::EXEC
            } else {
                0
            }),
        );
        let mut info = RegionInfo::new(s.vaddr, len).prot(prot);
        let within = |a: Option<u64>| a.is_some_and(|a| s.vaddr <= a && a < end);
        let fi = files.partition_point(|e| e.start <= s.vaddr);
        let file = fi
            .checked_sub(1)
            .and_then(|i| files.get(i))
            .filter(|e| s.vaddr < e.end);
        if let Some(e) = file {
            info.kind = RegionKind::FileBacked;
            info.name = e.path.clone();
            info.file_offset = e
                .page_offset
                .checked_mul(nt_ps)
                .and_then(|o| o.checked_add(s.vaddr - e.start))
                .unwrap_or(0);
            report.file_mappings += 1;
        } else if within(vdso) {
            info = info.kind(RegionKind::Other).name("[vdso]");
        } else if within(execfn) {
            info = info.kind(RegionKind::Stack).name("[stack]");
        } else if cf.machine == 62 && s.vaddr == 0xffff_ffff_ff60_0000 {
            info = info.kind(RegionKind::Other).name("[vsyscall]");
        }
        plan.push(Planned {
            info,
            has_data: true,
        });
    }
    Ok(plan)
}
