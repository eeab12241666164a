//! TLV metadata: the header's records and the index body's notes.

use crate::error::{Error, ErrorKind, Location, Result};
use crate::model::{Note, ProcessFacts, Validation};

pub(crate) const T_PRODUCER: u16 = 1;
pub(crate) const T_VALIDATION_TAG: u16 = 2;
pub(crate) const T_VALIDATION_DATA: u16 = 3;
pub(crate) const T_PID: u16 = 16;
pub(crate) const T_COMM: u16 = 17;
pub(crate) const T_CMDLINE: u16 = 18;
pub(crate) const T_EXE: u16 = 19;
pub(crate) const T_BUILD_ID: u16 = 20;
pub(crate) const T_KERNEL: u16 = 21;

/// Body TLV type of a note.
pub(crate) const B_NOTE: u16 = 1;

/// The most bytes a header record of `ty` may hold (spec.md, *Header TLV records*).
pub(crate) fn header_limit(ty: u16) -> Option<usize> {
    Some(match ty {
        T_PRODUCER => 128,
        T_VALIDATION_TAG => 64,
        T_VALIDATION_DATA => 2048,
        T_PID => 4,
        T_COMM => 64,
        T_CMDLINE | T_EXE => 1024,
        T_BUILD_ID => 64,
        T_KERNEL => 128,
        _ => return None,
    })
}

/// Appends a header record. Values over the limit are cut when `cut` is set,
/// else refused. Empty values are left out.
pub(crate) fn push_header_tlv(out: &mut Vec<u8>, ty: u16, value: &[u8], cut: bool) -> Result<()> {
    let limit = header_limit(ty).unwrap_or(0);
    let value = if value.len() > limit {
        if cut {
            &value[..limit]
        } else {
            return Err(Error::plain(
                ErrorKind::InvalidInput,
                format!(
                    "header record {} is {} bytes; the limit is {limit}",
                    header_name(ty),
                    value.len()
                ),
            ));
        }
    } else {
        value
    };
    if value.is_empty() && ty != T_VALIDATION_DATA && ty != T_VALIDATION_TAG {
        return Ok(());
    }
    out.extend_from_slice(&ty.to_le_bytes());
    // value.len() ≤ 2048 by the limits above.
    #[allow(clippy::cast_possible_truncation)]
    out.extend_from_slice(&(value.len() as u16).to_le_bytes());
    out.extend_from_slice(value);
    Ok(())
}

pub(crate) fn header_name(ty: u16) -> &'static str {
    match ty {
        T_PRODUCER => "producer",
        T_VALIDATION_TAG => "validation tag",
        T_VALIDATION_DATA => "validation data",
        T_PID => "pid",
        T_COMM => "comm",
        T_CMDLINE => "cmdline",
        T_EXE => "exe",
        T_BUILD_ID => "build id",
        T_KERNEL => "kernel release",
        _ => "unknown",
    }
}

/// What the header's records say.
#[derive(Default)]
pub(crate) struct HeaderMeta {
    pub producer: String,
    pub validation: Option<Validation>,
    pub process: Option<ProcessFacts>,
}

/// Parses the header records in `tlv`, which starts at file offset `base`.
pub(crate) fn parse_header_tlv(tlv: &[u8], base: u64) -> Result<HeaderMeta> {
    let mut m = HeaderMeta::default();
    let mut seen = Vec::new();
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
        if let Some(limit) = header_limit(ty) {
            if len > limit {
                return Err(bad(
                    off,
                    format!(
                        "header record {} is {len} bytes; the limit is {limit}",
                        header_name(ty)
                    ),
                ));
            }
            if seen.contains(&ty) {
                return Err(bad(
                    off,
                    format!("header record {} appears twice", header_name(ty)),
                ));
            }
            seen.push(ty);
        }
        match ty {
            T_PRODUCER => m.producer = String::from_utf8_lossy(value).into_owned(),
            T_VALIDATION_TAG => tag = Some(value.to_vec()),
            T_VALIDATION_DATA => data = Some(value.to_vec()),
            T_PID => {
                let arr: [u8; 4] = value
                    .try_into()
                    .map_err(|_| bad(off, "pid record is not 4 bytes"))?;
                p.pid = Some(u32::from_le_bytes(arr));
            }
            T_COMM => p.comm = value.to_vec(),
            T_CMDLINE => p.cmdline = value.to_vec(),
            T_EXE => p.exe = value.to_vec(),
            T_BUILD_ID => p.build_id = value.to_vec(),
            T_KERNEL => p.kernel_release = value.to_vec(),
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

/// Appends a note record to the body meta.
pub(crate) fn push_note(out: &mut Vec<u8>, n: &Note) -> Result<()> {
    let name = n.name.as_bytes();
    let name_len = u16::try_from(name.len())
        .map_err(|_| Error::plain(ErrorKind::InvalidInput, "a note name exceeds 65535 bytes"))?;
    let len = u32::try_from(2 + name.len() + n.data.len())
        .map_err(|_| Error::plain(ErrorKind::InvalidInput, "a note exceeds 4 GiB"))?;
    out.extend_from_slice(&B_NOTE.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&name_len.to_le_bytes());
    out.extend_from_slice(name);
    out.extend_from_slice(&n.data);
    Ok(())
}

/// Parses the body meta records; `loc` locates the meta for errors.
pub(crate) fn parse_body_meta(meta: &[u8], loc: Location) -> Result<Vec<Note>> {
    let mut notes = Vec::new();
    let mut rest = meta;
    while !rest.is_empty() {
        if rest.len() < 8 {
            return Err(Error::new(
                ErrorKind::Malformed,
                loc,
                "index meta record cut short",
            ));
        }
        let ty = u16::from_le_bytes([rest[0], rest[1]]);
        let reserved = u16::from_le_bytes([rest[2], rest[3]]);
        let len = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
        if reserved != 0 {
            return Err(Error::new(
                ErrorKind::NonZeroPadding,
                loc,
                "index meta record has non-zero reserved bytes",
            ));
        }
        if rest.len() - 8 < len {
            return Err(Error::new(
                ErrorKind::Malformed,
                loc,
                "index meta record runs past the body",
            ));
        }
        let value = &rest[8..8 + len];
        if ty == B_NOTE {
            if value.len() < 2 {
                return Err(Error::new(
                    ErrorKind::Malformed,
                    loc,
                    "note record too short",
                ));
            }
            let nl = usize::from(u16::from_le_bytes([value[0], value[1]]));
            if value.len() - 2 < nl {
                return Err(Error::new(
                    ErrorKind::Malformed,
                    loc,
                    "note name runs past its record",
                ));
            }
            notes.push(Note {
                name: String::from_utf8_lossy(&value[2..2 + nl]).into_owned(),
                data: value[2 + nl..].to_vec(),
            });
        }
        rest = &rest[8 + len..];
    }
    Ok(notes)
}

fn bad(off: u64, msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Malformed, Location::at(off), msg)
}
