//! The header page (spec.md, *Header*, *Features*, *Versions*).

use xxhash_rust::xxh3::xxh3_64;

use super::Sink;
use crate::error::{malformed, Error, ErrorKind, Location, Result};
use crate::meta;
use crate::model::*;
use crate::raw::{self, *};
use crate::source::Source;
use crate::{MAX_CHUNK_SIZE, VERSION_MAJOR, VERSION_MINOR};

pub(super) fn parse_header(src: &Source, sink: &mut Sink) -> Result<(Header, Vec<u8>)> {
    let flen = src.len();
    let head_len = flen.min(HEADER_FIXED_LEN as u64);
    let head = src.get(0, head_len, "header")?;
    let magic_len = head.len().min(8);
    if head[..magic_len] != HEADER_MAGIC[..magic_len] || head.is_empty() {
        return Err(Error::new(
            ErrorKind::NotAnImage,
            Location::at(0),
            "not a memimg image (the magic number is wrong)",
        ));
    }
    if head.len() < HEADER_FIXED_LEN {
        return Err(crate::error::truncated(
            0,
            "header",
            HEADER_FIXED_LEN as u64,
            flen,
        ));
    }
    let f: HeaderFixed = raw::from_bytes(&head)
        .ok_or_else(|| malformed(Location::at(0), "header does not parse"))?;
    let ps = f.page_size;
    if !matches!(ps, 4096 | 16384 | 65536) {
        return Err(malformed(
            Location::at(0x28),
            format!("page size {ps} is not 4096, 16384 or 65536"),
        ));
    }
    if u64::from(ps) > flen {
        return Err(crate::error::truncated(
            0,
            "header page",
            u64::from(ps),
            flen,
        ));
    }
    let page = src.get(0, u64::from(ps), "header page")?.into_owned();
    let psu = ps as usize;
    let sum = xxh3_64(&page[..psu - 8]);
    let stored = u64::from_le_bytes(page[psu - 8..].try_into().unwrap_or([0; 8]));
    let checksum_ok = sum == stored;
    // A version or feature the reader does not know is "unsupported" only when
    // the header is intact; in a damaged header it is damage.
    let refuse = |off: u64, msg: String| {
        if checksum_ok {
            Error::new(ErrorKind::Unsupported, Location::at(off), msg)
        } else {
            malformed(
                Location::at(off),
                format!("{msg} (and the header checksum does not match: the header is damaged)"),
            )
        }
    };
    if f.version_major != VERSION_MAJOR {
        return Err(refuse(
            8,
            format!(
                "format version {}.{} is not supported: this reader reads version {VERSION_MAJOR}.x",
                f.version_major, f.version_minor
            ),
        ));
    }
    let unknown = f.incompat & !crate::Features::KNOWN_INCOMPAT;
    if unknown != 0 {
        let bit = unknown.trailing_zeros();
        return Err(refuse(
            0x10,
            format!(
                "unknown incompatible feature bit {bit} ({:#x}) in a version {}.{} image: this reader ({VERSION_MAJOR}.{VERSION_MINOR}) cannot read it",
                1u64 << bit,
                f.version_major,
                f.version_minor
            ),
        ));
    }
    if !checksum_ok {
        sink.report(Error::new(
            ErrorKind::Checksum,
            Location::at(u64::from(ps) - 8),
            format!("header checksum mismatch (stored {stored:016x}, header hashes to {sum:016x})"),
        ))?;
    }
    let loc = Location::at;
    if f.header_size != ps {
        sink.report(malformed(
            loc(0x0c),
            format!("header size {} differs from page size {ps}", f.header_size),
        ))?;
    }
    let cs = f.chunk_size;
    if cs < ps || !cs.is_multiple_of(ps) || cs > MAX_CHUNK_SIZE {
        return Err(malformed(
            loc(0x2c),
            format!(
                "chunk size {cs} is not a multiple of the page size {ps} up to {MAX_CHUNK_SIZE}"
            ),
        ));
    }
    if f.reserved0 != [0; 3] {
        sink.report(Error::new(
            ErrorKind::NonZeroPadding,
            loc(0x55),
            "reserved header bytes are not zero",
        ))?;
    }
    if f.reserved1 != [0; 36] {
        sink.report(Error::new(
            ErrorKind::NonZeroPadding,
            loc(0x5c),
            "reserved header bytes are not zero",
        ))?;
    }
    let cipher = match f.cipher {
        0 => Cipher::None,
        1 => Cipher::ChaCha20Poly1305,
        c => return Err(malformed(loc(0x54), format!("unknown cipher {c}"))),
    };
    if (cipher != Cipher::None) != (f.incompat & crate::Features::ENCRYPTED != 0) {
        return Err(malformed(
            loc(0x10),
            "the encrypted feature flag and the cipher field disagree",
        ));
    }
    if f.incompat & crate::Features::SLOT_BOUND != 0 && cipher == Cipher::None {
        return Err(malformed(
            loc(0x10),
            "the slot-bound feature is set in an image that is not encrypted",
        ));
    }
    let endian = match f.machine_endian {
        1 => Endian::Little,
        2 => Endian::Big,
        e => {
            return Err(malformed(
                loc(0x4e),
                format!("machine endianness {e} is not 1 or 2"),
            ))
        }
    };
    if !matches!(f.machine_ptr_bytes, 4 | 8) {
        sink.report(malformed(
            loc(0x4f),
            format!("pointer width {} is not 4 or 8", f.machine_ptr_bytes),
        ))?;
    }
    if f.created_nanos >= 1_000_000_000 {
        sink.report(malformed(
            loc(0x48),
            "creation nanoseconds are 10^9 or more",
        ))?;
    }
    let meta_len = f.meta_len as usize;
    if HEADER_FIXED_LEN + meta_len > psu - 8 {
        return Err(malformed(
            loc(0x58),
            format!("header metadata of {meta_len} bytes runs past the header page"),
        ));
    }
    let tlv_end = HEADER_FIXED_LEN + meta_len;
    if let Some(p) = crate::zero::first_non_zero(&page[tlv_end..psu - 8]) {
        sink.report(Error::new(
            ErrorKind::NonZeroPadding,
            loc((tlv_end + p) as u64),
            "header padding is not zero",
        ))?;
    }
    let with_parent = f.incompat & crate::Features::PARENT != 0;
    let index_first = f.incompat & crate::Features::INDEX_FIRST != 0;
    if index_first && cipher != Cipher::None {
        return Err(malformed(
            loc(0x10),
            "the index-first feature is set in an encrypted image",
        ));
    }
    let m = match parse_header_tlv(
        &page[HEADER_FIXED_LEN..tlv_end],
        HEADER_FIXED_LEN as u64,
        with_parent,
        index_first,
    ) {
        Ok(m) => m,
        Err(e) => {
            sink.report(e)?;
            HeaderMeta::default()
        }
    };
    if with_parent && m.parent.is_none() {
        sink.report(malformed(
            loc(0x10),
            "the parent feature is set but the header has no parent record",
        ))?;
    }
    if index_first && m.index_first.is_none() {
        // Without the record nothing locates the index a reader opening from
        // the front would trust: fatal even to verify.
        return Err(malformed(
            loc(0x10),
            "the index-first feature is set but the header has no index record",
        ));
    }
    let header = Header {
        version: (f.version_major, f.version_minor),
        features: Features {
            incompat: f.incompat,
            ro_compat: f.ro_compat,
            compat: f.compat,
        },
        page_size: ps,
        chunk_size: cs,
        image_id: f.image_id,
        created_secs: f.created_secs,
        created_nanos: f.created_nanos,
        machine: MachineFacts {
            arch: f.machine_arch,
            endian,
            ptr_bytes: f.machine_ptr_bytes,
            page_size: f.machine_page_size,
        },
        cipher,
        producer: m.producer,
        validation: m.validation,
        process: m.process,
        parent: m.parent,
        parent_hint: m.parent_hint,
        index_first: m.index_first,
    };
    Ok((header, page))
}

/// What the header's records say.
#[derive(Default)]
struct HeaderMeta {
    pub producer: String,
    pub validation: Option<Validation>,
    pub process: Option<ProcessFacts>,
    pub parent: Option<ParentRecord>,
    pub parent_hint: Option<String>,
    pub index_first: Option<crate::model::IndexRecord>,
}

/// Parses the header records in `tlv`, which starts at file offset `base`.
/// The parent record and hint have a meaning only `with_parent` (the
/// image sets `PARENT`); without it they are records of unknown type, as in
/// 1.0 (spec.md, *Header TLV records*); so is the index record without
/// `index_first` (the image sets `INDEX_FIRST`).
fn parse_header_tlv(
    tlv: &[u8],
    base: u64,
    with_parent: bool,
    index_first: bool,
) -> Result<HeaderMeta> {
    let mut m = HeaderMeta::default();
    // One bit per record type: 8 KiB, whatever the number of records.
    let mut seen = vec![0u64; 1024];
    let mut tag = None;
    let mut data = None;
    let mut p = ProcessFacts::default();
    let mut rest = tlv;
    let mut off = base;
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err(bad(off, "header record cut short"));
        }
        let ty = u16::from_le_bytes([rest[0], rest[1]]);
        let len = usize::from(u16::from_le_bytes([rest[2], rest[3]]));
        if rest.len() - 4 < len {
            return Err(bad(
                off,
                format!("header record type {ty} of {len} bytes runs past meta_len"),
            ));
        }
        let value = &rest[4..4 + len];
        if let Some(limit) = meta::header_limit(ty) {
            if len > limit {
                return Err(bad(
                    off,
                    format!(
                        "header record {} is {len} bytes; the limit is {limit}",
                        meta::header_name(ty)
                    ),
                ));
            }
        }
        // Each type at most once, known or not (spec.md, *Header TLV records*).
        let (word, bit) = (usize::from(ty / 64), 1u64 << (ty % 64));
        if seen[word] & bit != 0 {
            let name = match meta::header_name(ty) {
                "unknown" => format!("type {ty}"),
                n => n.to_string(),
            };
            return Err(bad(off, format!("header record {name} appears twice")));
        }
        seen[word] |= bit;
        match ty {
            meta::T_PRODUCER => m.producer = String::from_utf8_lossy(value).into_owned(),
            meta::T_VALIDATION_TAG => tag = Some(value.to_vec()),
            meta::T_VALIDATION_DATA => data = Some(value.to_vec()),
            meta::T_PID => {
                let arr: [u8; 4] = value
                    .try_into()
                    .map_err(|_| bad(off, "pid record is not 4 bytes"))?;
                p.pid = Some(u32::from_le_bytes(arr));
            }
            meta::T_COMM => p.comm = value.to_vec(),
            meta::T_CMDLINE => p.cmdline = value.to_vec(),
            meta::T_EXE => p.exe = value.to_vec(),
            meta::T_BUILD_ID => p.build_id = value.to_vec(),
            meta::T_KERNEL => p.kernel_release = value.to_vec(),
            meta::T_PARENT if with_parent => {
                let Some((record, reserved_zero)) = meta::parse_parent(value) else {
                    return Err(bad(
                        off,
                        format!(
                            "parent record is {len} bytes, not {}",
                            meta::PARENT_RECORD_LEN
                        ),
                    ));
                };
                if !reserved_zero {
                    return Err(Error::new(
                        ErrorKind::NonZeroPadding,
                        Location::at(off + 4 + 28),
                        "reserved parent record bytes are not zero",
                    ));
                }
                let d = record.depth;
                if d == 0 || d > crate::MAX_CHAIN_DEPTH {
                    return Err(bad(
                        off + 4 + 24,
                        format!(
                            "parent record depth {d} is not from 1 to {} (the deepest chain a reader opens)",
                            crate::MAX_CHAIN_DEPTH
                        ),
                    ));
                }
                m.parent = Some(record);
            }
            meta::T_PARENT_HINT if with_parent => {
                if value.is_empty() || value.len() > meta::MAX_PARENT_HINT {
                    return Err(bad(
                        off,
                        format!(
                            "parent hint of {len} bytes is not from 1 to {}",
                            meta::MAX_PARENT_HINT
                        ),
                    ));
                }
                let hint =
                    std::str::from_utf8(value).map_err(|_| bad(off, "parent hint is not UTF-8"))?;
                m.parent_hint = Some(hint.to_string());
            }
            meta::T_INDEX if index_first => {
                let v: [u8; meta::INDEX_RECORD_LEN] = value.try_into().map_err(|_| {
                    bad(
                        off,
                        format!(
                            "index record is {len} bytes, not {}",
                            meta::INDEX_RECORD_LEN
                        ),
                    )
                })?;
                let (l, c) = v.split_at(8);
                m.index_first = Some(crate::model::IndexRecord {
                    index_len: u64::from_le_bytes(l.try_into().unwrap_or_default()),
                    index_checksum: u64::from_le_bytes(c.try_into().unwrap_or_default()),
                });
            }
            _ => {}
        }
        rest = &rest[4 + len..];
        off += 4 + len as u64;
    }
    if tag.is_some() || data.is_some() {
        m.validation = Some(Validation {
            tag: tag.unwrap_or_default(),
            data: data.unwrap_or_default(),
        });
    }
    if !p.is_empty() {
        m.process = Some(p);
    }
    Ok(m)
}

fn bad(off: u64, msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Malformed, Location::at(off), msg)
}
