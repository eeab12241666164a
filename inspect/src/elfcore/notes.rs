//! The notes this module reads and writes: `NT_PRPSINFO`, `NT_FILE`, `NT_AUXV`,
//! the naming of ELF notes kept in an image, and the `MEMIMG` notes.
//!
//! ## Kept notes
//!
//! An ELF note the image format cannot hold (registers, signal info, auxv …) is
//! kept in the image as a [`memimg::Note`] named `OWNER/TYPE`, `TYPE` in
//! decimal (`CORE/1` is `NT_PRSTATUS`, `LINUX/514` is `NT_X86_XSTATE`), whose
//! data is the descriptor. The owner is stored without its final NUL; an owner
//! that is not UTF-8 text ending in exactly one NUL is written `raw:HEX/TYPE`.
//!
//! ## `MEMIMG` notes
//!
//! Exports add notes owned by `MEMIMG` for what ELF cannot say; imports read
//! them back and do not keep them. gdb and readelf show them as unknown notes.
//! Integers are in the core's byte order. Types are chosen away from every
//! `NT_*` value binutils knows, because BFD hands notes of unknown owners to its
//! generic `CORE` decoder.
//!
//! - `0x4d4d0001` regions: `version: u32 = 1`, `machine_page_size: u32`,
//!   `count: u32`, `generated: u32` (bit 0: the `NT_PRPSINFO`, bit 1: the
//!   `NT_FILE` of this core were made by the export, not kept from an import,
//!   so an import does not keep them), then per region `start, len, file_offset,
//!   dev, inode: u64`, `prot, flags (bit 0 shared), kind, has_data: u8`,
//!   `name_len: u32`, name; then `zero_count: u64` and that many
//!   `(start, len): u64` page-aligned zero runs held in segment tails.
//! - `0x4d4d0002` image note: `name_len: u32`, name, data — an image note whose
//!   name is not of the `OWNER/TYPE` form.
//! - `0x4d4d0003` header facts: records `type: u16`, `len: u32`, value, with the
//!   header TLV types of spec.md (2, 3 validation; 16 to 21 process facts).

use memimg::{Prot, RegionInfo, RegionKind};

use super::elf::{Order, PRPSINFO_SIZE};

/// Owner of this module's own notes.
pub const MEMIMG_OWNER: &str = "MEMIMG";
/// `MEMIMG` note: the region table and zero runs.
pub const NT_MEMIMG_REGIONS: u32 = 0x4d4d_0001;
/// `MEMIMG` note: an image note that is not an ELF note.
pub const NT_MEMIMG_NOTE: u32 = 0x4d4d_0002;
/// `MEMIMG` note: header facts.
pub const NT_MEMIMG_FACTS: u32 = 0x4d4d_0003;

/// The image note name of an ELF note.
pub fn note_name(owner: &[u8], n_type: u32) -> String {
    if let Some(text) = owner.strip_suffix(b"\0") {
        if let Ok(t) = std::str::from_utf8(text) {
            if !t.contains('\0') && !t.starts_with("raw:") {
                return format!("{t}/{n_type}");
            }
        }
    }
    format!("raw:{}/{n_type}", memimg::hex(owner))
}

/// The owner bytes (as stored, with NUL) and type of an image note named by
/// [`note_name`]; `None` for other names.
pub fn parse_note_name(name: &str) -> Option<(Vec<u8>, u32)> {
    let (owner, ty) = name.rsplit_once('/')?;
    if ty.is_empty()
        || !ty.bytes().all(|b| b.is_ascii_digit())
        || (ty.len() > 1 && ty.starts_with('0'))
    {
        return None;
    }
    let n_type: u32 = ty.parse().ok()?;
    if let Some(hex) = owner.strip_prefix("raw:") {
        if hex.len() % 2 != 0 {
            return None;
        }
        let owner = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        return Some((owner, n_type));
    }
    if owner.contains('\0') {
        return None;
    }
    let mut o = owner.as_bytes().to_vec();
    o.push(0);
    Some((o, n_type))
}

/// Appends one ELF note (4-byte aligned, as Linux cores are).
pub fn put_note(
    o: Order,
    out: &mut Vec<u8>,
    owner: &[u8],
    n_type: u32,
    desc: &[u8],
) -> Result<(), String> {
    let namesz = u32::try_from(owner.len()).map_err(|_| "note owner exceeds 4 GiB".to_string())?;
    let descsz =
        u32::try_from(desc.len()).map_err(|_| "note descriptor exceeds 4 GiB".to_string())?;
    o.put32(out, namesz);
    o.put32(out, descsz);
    o.put32(out, n_type);
    out.extend_from_slice(owner);
    pad4(out);
    out.extend_from_slice(desc);
    pad4(out);
    Ok(())
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// The facts of a 64-bit Linux `NT_PRPSINFO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prpsinfo {
    /// `pr_pid`.
    pub pid: u32,
    /// `pr_fname` up to its NUL (at most 16 bytes).
    pub fname: Vec<u8>,
    /// `pr_psargs` up to its NUL: arguments joined by spaces, at most 80 bytes.
    pub psargs: Vec<u8>,
}

fn cstr(b: &[u8]) -> Vec<u8> {
    b.iter().take_while(|&&c| c != 0).copied().collect()
}

/// Reads an `NT_PRPSINFO` descriptor of the 64-bit layout (136 bytes).
pub fn parse_prpsinfo(o: Order, desc: &[u8]) -> Option<Prpsinfo> {
    if desc.len() != PRPSINFO_SIZE {
        return None;
    }
    Some(Prpsinfo {
        pid: o.u32(desc, 24)?,
        fname: cstr(desc.get(40..56)?),
        psargs: cstr(desc.get(56..136)?),
    })
}

/// Builds a 64-bit `NT_PRPSINFO`: `pid`, `comm` as `pr_fname` (cut to 15
/// bytes), the cmdline with NULs turned to spaces as `pr_psargs` (cut to 79).
/// The state is `R`; uid, gid and the parent ids are unknown and 0.
pub fn build_prpsinfo(o: Order, pid: u32, comm: &[u8], cmdline: &[u8]) -> Vec<u8> {
    let mut d = vec![0u8; PRPSINFO_SIZE];
    d[1] = b'R';
    o.set32(&mut d, 24, pid);
    let comm = cstr(comm);
    let n = comm.len().min(15);
    d[40..40 + n].copy_from_slice(&comm[..n]);
    let mut args: Vec<u8> = cmdline
        .iter()
        .map(|&c| if c == 0 { b' ' } else { c })
        .collect();
    while args.last() == Some(&b' ') {
        args.pop();
    }
    let n = args.len().min(79);
    d[56..56 + n].copy_from_slice(&args[..n]);
    d
}

/// One `NT_FILE` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Offset in the file, in units of the note's page size.
    pub page_offset: u64,
    /// The path.
    pub path: Vec<u8>,
}

/// A parsed `NT_FILE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NtFile {
    /// The page size that file offsets count in.
    pub page_size: u64,
    /// The mappings, in note order.
    pub entries: Vec<FileEntry>,
}

/// Reads a 64-bit `NT_FILE`: `count`, `page_size`, `count × (start, end,
/// page_offset)`, then `count` NUL-terminated paths.
///
/// # Errors
/// A message when a count or path runs past the descriptor.
pub fn parse_nt_file(o: Order, desc: &[u8]) -> Result<NtFile, String> {
    let count = o
        .u64(desc, 0)
        .ok_or("NT_FILE shorter than its 16-byte head")?;
    let page_size = o
        .u64(desc, 8)
        .ok_or("NT_FILE shorter than its 16-byte head")?;
    let room = (desc.len() as u64 - 16) / 24;
    if count > room {
        return Err(format!(
            "NT_FILE says {count} mappings; its {} bytes hold at most {room}",
            desc.len()
        ));
    }
    // count ≤ desc.len() / 24, so these fit.
    let n = usize::try_from(count).map_err(|_| "NT_FILE count overflows")?;
    let mut entries = Vec::with_capacity(n);
    let mut names = desc.get(16 + 24 * n..).unwrap_or(&[]);
    for i in 0..n {
        let at = 16 + 24 * i;
        let field = |k: usize| o.u64(desc, at + 8 * k).ok_or("NT_FILE entry cut short");
        let (start, end, page_offset) = (field(0)?, field(1)?, field(2)?);
        let nul = names
            .iter()
            .position(|&c| c == 0)
            .ok_or_else(|| format!("NT_FILE path {i} has no terminating NUL"))?;
        entries.push(FileEntry {
            start,
            end,
            page_offset,
            path: names[..nul].to_vec(),
        });
        names = &names[nul + 1..];
    }
    Ok(NtFile { page_size, entries })
}

/// Builds a 64-bit `NT_FILE`.
pub fn build_nt_file(o: Order, page_size: u64, entries: &[FileEntry]) -> Vec<u8> {
    let mut d = Vec::new();
    o.put64(&mut d, entries.len() as u64);
    o.put64(&mut d, page_size);
    for e in entries {
        o.put64(&mut d, e.start);
        o.put64(&mut d, e.end);
        o.put64(&mut d, e.page_offset);
    }
    for e in entries {
        d.extend_from_slice(&e.path);
        d.push(0);
    }
    d
}

/// `AT_ENTRY`: the program's entry point.
pub const AT_ENTRY: u64 = 9;
/// `AT_EXECFN`: pointer to the executable's file name (on the stack).
pub const AT_EXECFN: u64 = 31;
/// `AT_SYSINFO_EHDR`: address of the vDSO.
pub const AT_SYSINFO_EHDR: u64 = 33;

/// The value of `key` in a 64-bit auxiliary vector.
pub fn auxv_get(o: Order, desc: &[u8], key: u64) -> Option<u64> {
    desc.chunks_exact(16)
        .map(|p| (o.u64(p, 0).unwrap_or(0), o.u64(p, 8).unwrap_or(0)))
        .take_while(|&(k, _)| k != 0)
        .find(|&(k, _)| k == key)
        .map(|(_, v)| v)
}

/// One region of a `MEMIMG` regions note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteRegion {
    /// Its facts.
    pub info: RegionInfo,
    /// False when the region is recorded without data.
    pub has_data: bool,
}

/// A `MEMIMG` regions note.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RegionsNote {
    /// The captured machine's page size.
    pub machine_page_size: u32,
    /// The regions, in address order.
    pub regions: Vec<NoteRegion>,
    /// Zero runs `(start, len)` that lie in segment tails.
    pub zeros: Vec<(u64, u64)>,
    /// Which notes the export generated: [`GENERATED_PRPSINFO`], [`GENERATED_FILE`].
    pub generated: u32,
}

/// [`RegionsNote::generated`]: the `NT_PRPSINFO` was generated.
pub const GENERATED_PRPSINFO: u32 = 1;
/// [`RegionsNote::generated`]: the `NT_FILE` was generated.
pub const GENERATED_FILE: u32 = 2;

/// Builds a `MEMIMG` regions note.
pub fn build_regions_note(o: Order, n: &RegionsNote) -> Result<Vec<u8>, String> {
    let mut d = Vec::new();
    o.put32(&mut d, 1);
    o.put32(&mut d, n.machine_page_size);
    o.put32(
        &mut d,
        u32::try_from(n.regions.len()).map_err(|_| "more than 2^32 regions")?,
    );
    o.put32(&mut d, n.generated);
    for r in &n.regions {
        let i = &r.info;
        for v in [i.start, i.len, i.file_offset, i.dev, i.inode] {
            o.put64(&mut d, v);
        }
        d.extend_from_slice(&[
            i.prot.0,
            u8::from(i.shared),
            i.kind.code(),
            u8::from(r.has_data),
        ]);
        o.put32(
            &mut d,
            u32::try_from(i.name.len()).map_err(|_| "a region name exceeds 4 GiB")?,
        );
        d.extend_from_slice(&i.name);
    }
    o.put64(&mut d, n.zeros.len() as u64);
    for &(s, l) in &n.zeros {
        o.put64(&mut d, s);
        o.put64(&mut d, l);
    }
    Ok(d)
}

/// Reads a `MEMIMG` regions note. Counts are checked against the bytes that
/// hold them before anything is allocated.
///
/// # Errors
/// A message naming the first inconsistency.
pub fn parse_regions_note(o: Order, d: &[u8]) -> Result<RegionsNote, String> {
    let short = || "MEMIMG regions note cut short".to_string();
    let version = o.u32(d, 0).ok_or_else(short)?;
    if version != 1 {
        return Err(format!("MEMIMG regions note version {version} is not 1"));
    }
    let machine_page_size = o.u32(d, 4).ok_or_else(short)?;
    let count = o.u32(d, 8).ok_or_else(short)?;
    let generated = o.u32(d, 12).ok_or_else(short)?;
    let mut pos = 16usize;
    if u64::from(count) > (d.len() as u64).saturating_sub(16) / 48 {
        return Err(format!(
            "MEMIMG regions note says {count} regions in {} bytes",
            d.len()
        ));
    }
    let mut regions = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    for _ in 0..count {
        let f = |k: usize| o.u64(d, pos + 8 * k).ok_or_else(short);
        let (start, len, file_offset, dev, inode) = (f(0)?, f(1)?, f(2)?, f(3)?, f(4)?);
        let b = d.get(pos + 40..pos + 44).ok_or_else(short)?;
        let kind =
            RegionKind::from_code(b[2]).ok_or_else(|| format!("unknown region kind {}", b[2]))?;
        if b[0] & !7 != 0 || b[1] & !1 != 0 || b[3] > 1 {
            return Err(format!("region at {start:#x}: undefined flag bits"));
        }
        let name_len =
            usize::try_from(o.u32(d, pos + 44).ok_or_else(short)?).map_err(|_| short())?;
        let name_start = pos + 48;
        let name = d
            .get(name_start..name_start.checked_add(name_len).ok_or_else(short)?)
            .ok_or_else(short)?;
        regions.push(NoteRegion {
            info: RegionInfo {
                start,
                len,
                prot: Prot(b[0]),
                shared: b[1] == 1,
                kind,
                name: name.to_vec(),
                file_offset,
                dev,
                inode,
            },
            has_data: b[3] == 1,
        });
        pos = name_start + name_len;
    }
    let zc = o.u64(d, pos).ok_or_else(short)?;
    pos += 8;
    if zc > (d.len() - pos) as u64 / 16 {
        return Err(format!(
            "MEMIMG regions note says {zc} zero runs in {} bytes",
            d.len() - pos
        ));
    }
    let mut zeros = Vec::with_capacity(usize::try_from(zc).unwrap_or(0));
    for _ in 0..zc {
        zeros.push((
            o.u64(d, pos).ok_or_else(short)?,
            o.u64(d, pos + 8).ok_or_else(short)?,
        ));
        pos += 16;
    }
    if pos != d.len() {
        return Err(format!(
            "MEMIMG regions note has {} trailing bytes",
            d.len() - pos
        ));
    }
    Ok(RegionsNote {
        machine_page_size,
        regions,
        zeros,
        generated,
    })
}

/// Builds a `MEMIMG` image-note note.
pub fn build_image_note(o: Order, name: &str, data: &[u8]) -> Result<Vec<u8>, String> {
    let mut d = Vec::with_capacity(4 + name.len() + data.len());
    o.put32(
        &mut d,
        u32::try_from(name.len()).map_err(|_| "note name exceeds 4 GiB")?,
    );
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(data);
    Ok(d)
}

/// Reads a `MEMIMG` image-note note: `(name, data)`.
pub fn parse_image_note(o: Order, d: &[u8]) -> Option<(String, Vec<u8>)> {
    let n = usize::try_from(o.u32(d, 0)?).ok()?;
    let name = d.get(4..4usize.checked_add(n)?)?;
    Some((
        String::from_utf8(name.to_vec()).ok()?,
        d.get(4 + n..)?.to_vec(),
    ))
}

/// Builds a `MEMIMG` header-facts note from `(type, value)` records.
pub fn build_facts_note(o: Order, records: &[(u16, &[u8])]) -> Vec<u8> {
    let mut d = Vec::new();
    for (t, v) in records {
        o.put16(&mut d, *t);
        // Header values are at most 2048 bytes (spec.md).
        o.put32(&mut d, u32::try_from(v.len()).unwrap_or(u32::MAX));
        d.extend_from_slice(v);
    }
    d
}

/// Reads a `MEMIMG` header-facts note into `(type, value)` records.
pub fn parse_facts_note(o: Order, d: &[u8]) -> Option<Vec<(u16, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < d.len() {
        let t = o.u16(d, pos)?;
        let n = usize::try_from(o.u32(d, pos + 2)?).ok()?;
        let v = d.get(pos + 6..(pos + 6).checked_add(n)?)?;
        out.push((t, v.to_vec()));
        pos += 6 + n;
    }
    Some(out)
}
