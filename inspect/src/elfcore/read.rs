//! The core parser: validates an ELF64 core held in memory and exposes its
//! loadable segments and notes, borrowing from the input.
//!
//! # Security
//! Any byte sequence gives a [`CoreFile`] or a typed [`CoreError`]. Every
//! offset and length from the file is checked against the file length with
//! checked arithmetic before use; the only allocations are one entry per
//! program header and per note, both counted against the bytes that hold them.

use super::elf::{self, align_up, Order, Phdr};
use super::CoreError;

/// A `PT_LOAD` segment, checked to lie inside the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Its index in the program header table.
    pub index: u32,
    /// `p_vaddr`.
    pub vaddr: u64,
    /// `p_memsz`.
    pub memsz: u64,
    /// `p_offset`.
    pub offset: u64,
    /// `p_filesz`, at most `p_memsz`.
    pub filesz: u64,
    /// `PF_*` flags.
    pub flags: u32,
}

impl Segment {
    /// One past the last address (checked not to overflow by the parser).
    pub fn end(&self) -> u64 {
        self.vaddr.saturating_add(self.memsz)
    }
}

/// One note of a `PT_NOTE` segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElfNote<'a> {
    /// File offset of the note header.
    pub offset: u64,
    /// The owner name exactly as stored (`namesz` bytes, usually with a final NUL).
    pub owner: &'a [u8],
    /// `n_type`.
    pub n_type: u32,
    /// The descriptor (`descsz` bytes).
    pub desc: &'a [u8],
}

impl ElfNote<'_> {
    /// True when the owner is `name` followed by one NUL.
    pub fn is_owner(&self, name: &str) -> bool {
        self.owner.strip_suffix(b"\0") == Some(name.as_bytes())
    }
}

/// A validated core file.
#[derive(Debug, Clone)]
pub struct CoreFile<'a> {
    /// The whole file.
    pub bytes: &'a [u8],
    /// Byte order.
    pub order: Order,
    /// `e_machine`.
    pub machine: u16,
    /// The `PT_LOAD` segments with `p_memsz > 0`, sorted by address, not overlapping.
    pub segments: Vec<Segment>,
    /// `PT_LOAD` segments skipped because `p_memsz` is 0.
    pub empty_segments: u32,
    /// The notes of every `PT_NOTE`, in file order.
    pub notes: Vec<ElfNote<'a>>,
}

impl<'a> CoreFile<'a> {
    /// The file bytes of a segment (checked by the parser to be in the file).
    pub fn segment_bytes(&self, s: &Segment) -> &'a [u8] {
        let bytes: &'a [u8] = self.bytes;
        let start = usize::try_from(s.offset).unwrap_or(usize::MAX);
        let len = usize::try_from(s.filesz).unwrap_or(usize::MAX);
        start
            .checked_add(len)
            .and_then(|end| bytes.get(start..end))
            .unwrap_or(&[])
    }
}

fn truncated(what: impl Into<String>, offset: u64, len: u64, file_len: u64) -> CoreError {
    CoreError::Truncated {
        what: what.into(),
        offset,
        len,
        file_len,
    }
}

fn malformed(offset: u64, reason: impl Into<String>) -> CoreError {
    CoreError::Malformed {
        offset,
        reason: reason.into(),
    }
}

/// Checks that `[offset, offset + len)` lies in a file of `file_len` bytes and
/// returns it as a `usize` range.
fn range_in(offset: u64, len: u64, file_len: usize) -> Option<std::ops::Range<usize>> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    (end <= file_len).then_some(start..end)
}

/// Parses and validates a core file.
///
/// # Errors
/// [`CoreError::NotElf`] without the magic, `Unsupported` for 32-bit files and
/// non-cores, `Truncated` for headers past the end, `SegmentPastEnd`,
/// `Overlap`, `BadNote` and `Malformed` for inconsistent tables.
pub fn parse_core(bytes: &[u8]) -> Result<CoreFile<'_>, CoreError> {
    let file_len = bytes.len() as u64;
    let n = bytes.len().min(4);
    if bytes[..n] != elf::MAGIC[..n] {
        return Err(CoreError::NotElf);
    }
    if bytes.len() < elf::EHDR_SIZE {
        return Err(truncated(
            "the ELF header",
            0,
            elf::EHDR_SIZE as u64,
            file_len,
        ));
    }
    match bytes[4] {
        elf::ELFCLASS64 => {}
        elf::ELFCLASS32 => {
            return Err(CoreError::Unsupported(
                "32-bit ELF cores are not read; only ELF64".into(),
            ))
        }
        c => return Err(malformed(4, format!("unknown ELF class {c}"))),
    }
    let order = match bytes[5] {
        elf::ELFDATA2LSB => Order::Little,
        elf::ELFDATA2MSB => Order::Big,
        d => return Err(malformed(5, format!("unknown ELF byte order {d}"))),
    };
    let h = |off: usize| order.u16(bytes, off).unwrap_or(0);
    let e_type = h(16);
    if e_type != elf::ET_CORE {
        return Err(CoreError::Unsupported(format!(
            "e_type is {e_type}, not ET_CORE (4): this is an ELF file but not a core"
        )));
    }
    let machine = h(18);
    let e_phoff = order.u64(bytes, 32).unwrap_or(0);
    let e_shoff = order.u64(bytes, 40).unwrap_or(0);
    let e_phentsize = h(54);
    let e_phnum = h(56);
    let e_shentsize = h(58);

    let phnum: u64 = if e_phnum == elf::PN_XNUM {
        // The real count is sh_info of section header 0.
        if usize::from(e_shentsize) < elf::SHDR_SIZE {
            return Err(malformed(
                58,
                format!("e_phnum is PN_XNUM but e_shentsize is {e_shentsize}"),
            ));
        }
        let r = range_in(e_shoff, elf::SHDR_SIZE as u64, bytes.len()).ok_or_else(|| {
            truncated(
                "section header 0 (holding the program header count)",
                e_shoff,
                elf::SHDR_SIZE as u64,
                file_len,
            )
        })?;
        u64::from(order.u32(bytes, r.start + 44).unwrap_or(0))
    } else {
        u64::from(e_phnum)
    };
    if phnum > 0 && usize::from(e_phentsize) < elf::PHDR_SIZE {
        return Err(malformed(
            54,
            format!("e_phentsize is {e_phentsize}; an Elf64_Phdr needs 56"),
        ));
    }
    let table_len = phnum
        .checked_mul(u64::from(e_phentsize))
        .ok_or_else(|| malformed(56, "program header table size overflows"))?;
    let table = range_in(e_phoff, table_len, bytes.len()).ok_or_else(|| {
        truncated(
            format!("the program header table ({phnum} entries)"),
            e_phoff,
            table_len,
            file_len,
        )
    })?;

    // phnum ≤ file_len / 56 here, so the allocation is bounded by the input.
    let mut segments = Vec::new();
    let mut notes = Vec::new();
    let mut empty_segments = 0u32;
    for i in 0..phnum {
        let index = u32::try_from(i).map_err(|_| malformed(56, "too many program headers"))?;
        let at = table.start + usize::try_from(i).unwrap_or(0) * usize::from(e_phentsize);
        let ph = Phdr::parse(order, bytes, at).ok_or_else(|| {
            truncated(
                "a program header",
                at as u64,
                elf::PHDR_SIZE as u64,
                file_len,
            )
        })?;
        match ph.p_type {
            elf::PT_LOAD => {
                if ph.p_filesz > ph.p_memsz {
                    return Err(malformed(
                        at as u64 + 32,
                        format!(
                            "program header {index}: p_filesz {:#x} exceeds p_memsz {:#x}",
                            ph.p_filesz, ph.p_memsz
                        ),
                    ));
                }
                if ph.p_filesz > 0 && range_in(ph.p_offset, ph.p_filesz, bytes.len()).is_none() {
                    return Err(CoreError::SegmentPastEnd {
                        index,
                        offset: ph.p_offset,
                        filesz: ph.p_filesz,
                        file_len,
                    });
                }
                if ph.p_vaddr.checked_add(ph.p_memsz).is_none() {
                    return Err(malformed(
                        at as u64 + 16,
                        format!(
                            "program header {index}: segment at {:#x} of {:#x} bytes wraps the address space",
                            ph.p_vaddr, ph.p_memsz
                        ),
                    ));
                }
                if ph.p_memsz == 0 {
                    empty_segments = empty_segments.saturating_add(1);
                    continue;
                }
                segments.push(Segment {
                    index,
                    vaddr: ph.p_vaddr,
                    memsz: ph.p_memsz,
                    offset: ph.p_offset,
                    filesz: ph.p_filesz,
                    flags: ph.p_flags,
                });
            }
            elf::PT_NOTE => {
                let r = range_in(ph.p_offset, ph.p_filesz, bytes.len()).ok_or(
                    CoreError::SegmentPastEnd {
                        index,
                        offset: ph.p_offset,
                        filesz: ph.p_filesz,
                        file_len,
                    },
                )?;
                let align = if ph.p_align == 8 { 8 } else { 4 };
                parse_notes(order, &bytes[r.clone()], r.start as u64, align, &mut notes)?;
            }
            _ => {}
        }
    }
    segments.sort_by_key(|s| (s.vaddr, s.index));
    for w in segments.windows(2) {
        if w[0].end() > w[1].vaddr {
            return Err(CoreError::Overlap {
                first: w[0].index,
                first_range: (w[0].vaddr, w[0].end()),
                second: w[1].index,
                second_range: (w[1].vaddr, w[1].end()),
            });
        }
    }
    Ok(CoreFile {
        bytes,
        order,
        machine,
        segments,
        empty_segments,
        notes,
    })
}

/// Parses the notes of one `PT_NOTE` whose bytes are `seg`, at file offset `base`.
fn parse_notes<'a>(
    order: Order,
    seg: &'a [u8],
    base: u64,
    align: u64,
    out: &mut Vec<ElfNote<'a>>,
) -> Result<(), CoreError> {
    let len = seg.len() as u64;
    let mut pos: u64 = 0;
    while pos < len {
        let offset = base.saturating_add(pos);
        let bad = |reason: String| CoreError::BadNote { offset, reason };
        let p = usize::try_from(pos).map_err(|_| bad("offset overflows".into()))?;
        if len - pos < 12 {
            return Err(bad(format!(
                "note header needs 12 bytes, {} left in the note segment",
                len - pos
            )));
        }
        let namesz = u64::from(order.u32(seg, p).unwrap_or(0));
        let descsz = u64::from(order.u32(seg, p + 4).unwrap_or(0));
        let n_type = order.u32(seg, p + 8).unwrap_or(0);
        let name_start = pos + 12;
        let name_end = name_start + namesz; // ≤ 2^32 + len: no overflow in u64.
        let desc_start = align_up(name_end, align).ok_or_else(|| bad("overflow".into()))?;
        let desc_end = desc_start + descsz;
        if desc_end > len {
            return Err(bad(format!(
                "name of {namesz} bytes and descriptor of {descsz} bytes run past the end of the note segment ({} bytes left)",
                len - pos - 12
            )));
        }
        // In range by the check above, so the conversions and slices hold.
        let sl = |a: u64, b: u64| {
            let a = usize::try_from(a).unwrap_or(0);
            let b = usize::try_from(b).unwrap_or(0);
            seg.get(a..b).unwrap_or(&[])
        };
        out.push(ElfNote {
            offset,
            owner: sl(name_start, name_end),
            n_type,
            desc: sl(desc_start, desc_end),
        });
        // The padding after the last descriptor may be missing.
        pos = align_up(desc_end, align)
            .ok_or_else(|| bad("overflow".into()))?
            .min(len);
    }
    Ok(())
}
