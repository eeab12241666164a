//! TLV metadata: the record types and limits of the header's records and the
//! index body's notes, and how the writer appends them. The reader parses
//! them in `read::header` and `read::body`.

use crate::error::{Error, ErrorKind, Result};
use crate::model::Note;

pub(crate) const T_PRODUCER: u16 = 1;
pub(crate) const T_VALIDATION_TAG: u16 = 2;
pub(crate) const T_VALIDATION_DATA: u16 = 3;
pub(crate) const T_PID: u16 = 16;
pub(crate) const T_COMM: u16 = 17;
pub(crate) const T_CMDLINE: u16 = 18;
pub(crate) const T_EXE: u16 = 19;
pub(crate) const T_BUILD_ID: u16 = 20;
pub(crate) const T_KERNEL: u16 = 21;
/// 1.1, with `PARENT` only: the parent record (exactly 32 bytes).
pub(crate) const T_PARENT: u16 = 32;
/// 1.1, with `PARENT` only: the parent hint (1 to 1024 bytes of UTF-8).
pub(crate) const T_PARENT_HINT: u16 = 33;
/// 1.1, with `INDEX_FIRST` only: the index record (exactly 16 bytes).
pub(crate) const T_INDEX: u16 = 34;
/// Length of an index record.
pub(crate) const INDEX_RECORD_LEN: usize = 16;
/// Longest parent hint, in bytes.
pub(crate) const MAX_PARENT_HINT: usize = 1024;
/// Length of a parent record.
pub(crate) const PARENT_RECORD_LEN: usize = 32;

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
        T_PARENT => "parent",
        T_PARENT_HINT => "parent hint",
        T_INDEX => "index",
        _ => "unknown",
    }
}

/// Appends the parent record (spec.md, *Incremental images*).
pub(crate) fn push_parent(out: &mut Vec<u8>, p: &crate::model::ParentRecord) {
    out.extend_from_slice(&T_PARENT.to_le_bytes());
    out.extend_from_slice(&32u16.to_le_bytes());
    out.extend_from_slice(&p.image_id);
    out.extend_from_slice(&p.index_checksum.to_le_bytes());
    out.extend_from_slice(&p.depth.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
}

/// Parses a parent record's value (exactly [`PARENT_RECORD_LEN`] bytes):
/// the record, and whether its reserved bytes are zero.
pub(crate) fn parse_parent(v: &[u8]) -> Option<(crate::model::ParentRecord, bool)> {
    if v.len() != PARENT_RECORD_LEN {
        return None;
    }
    let image_id: [u8; 16] = v[..16].try_into().ok()?;
    let index_checksum = u64::from_le_bytes(v[16..24].try_into().ok()?);
    let depth = u32::from_le_bytes(v[24..28].try_into().ok()?);
    let record = crate::model::ParentRecord {
        image_id,
        index_checksum,
        depth,
    };
    Some((record, v[28..32] == [0; 4]))
}

/// Appends the parent hint: 1 to [`MAX_PARENT_HINT`] bytes (an empty hint
/// is left out).
///
/// # Errors
/// `InvalidInput` when it is longer.
pub(crate) fn push_parent_hint(out: &mut Vec<u8>, hint: &str) -> Result<()> {
    if hint.is_empty() {
        return Ok(());
    }
    if hint.len() > MAX_PARENT_HINT {
        return Err(Error::plain(
            ErrorKind::InvalidInput,
            format!(
                "the parent hint is {} bytes; the limit is {MAX_PARENT_HINT}",
                hint.len()
            ),
        ));
    }
    out.extend_from_slice(&T_PARENT_HINT.to_le_bytes());
    // hint.len() ≤ 1024, checked above.
    #[allow(clippy::cast_possible_truncation)]
    out.extend_from_slice(&(hint.len() as u16).to_le_bytes());
    out.extend_from_slice(hint.as_bytes());
    Ok(())
}

/// Body record type 3: the page digests (1.1, `PAGE_DIGESTS` only).
pub(crate) const B_PAGE_DIGESTS: u16 = 3;

/// Appends a body record of type `ty` whose value is `values`, each a u64
/// (the load-order and page-digests records); `what` names it in the
/// error.
///
/// # Errors
/// `InvalidInput` when the value would exceed 4 GiB.
pub(crate) fn push_u64_record(
    out: &mut Vec<u8>,
    ty: u16,
    values: &[u64],
    what: &str,
) -> Result<()> {
    let len = values
        .len()
        .checked_mul(8)
        .and_then(|l| u32::try_from(l).ok())
        .ok_or_else(|| {
            Error::plain(
                ErrorKind::InvalidInput,
                format!("{what} exceed 4 GiB, more than one body record holds"),
            )
        })?;
    out.extend_from_slice(&ty.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(())
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
