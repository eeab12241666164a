//! On-disk structures, exactly as spec.md lays them out.
//!
//! These are plain binrw declarations with no I/O logic and no validation: the
//! `read` module checks every field, the `write` module fills them in. Reserved
//! bytes are kept as arrays so that the reader can check they are zero.

use binrw::{BinRead, BinWrite};

/// `\x89MEMIMG\n`: the header magic.
pub const HEADER_MAGIC: [u8; 8] = *b"\x89MEMIMG\n";
/// The index head magic.
pub const INDEX_MAGIC: [u8; 8] = *b"MEMIMGIX";
/// The trailer magic.
pub const TRAILER_MAGIC: [u8; 8] = *b"MEMIMGTR";

/// Size of the fixed part of the header; TLV records start here.
pub const HEADER_FIXED_LEN: usize = 0x80;
/// Size of the trailer.
pub const TRAILER_LEN: usize = 256;
/// Size of a key slot.
pub const KEY_SLOT_LEN: usize = 128;
/// Size of the index head.
pub const INDEX_HEAD_LEN: usize = 64;
/// Size of one chunk-map entry.
pub const CHUNK_ENTRY_LEN: usize = 24;
/// Size of the body head.
pub const BODY_HEAD_LEN: usize = 32;
/// Size of one region record.
pub const REGION_LEN: usize = 64;
/// Size of one extent record.
pub const EXTENT_LEN: usize = 48;
/// Length of a ChaCha20-Poly1305 tag.
pub const TAG_LEN: usize = 16;

/// The fixed first 128 bytes of the header page.
#[derive(BinRead, BinWrite, Debug, Clone, PartialEq, Eq)]
#[brw(little)]
pub struct HeaderFixed {
    pub magic: [u8; 8],
    pub version_major: u16,
    pub version_minor: u16,
    pub header_size: u32,
    pub incompat: u64,
    pub ro_compat: u64,
    pub compat: u64,
    pub page_size: u32,
    pub chunk_size: u32,
    pub image_id: [u8; 16],
    pub created_secs: i64,
    pub created_nanos: u32,
    pub machine_arch: u16,
    pub machine_endian: u8,
    pub machine_ptr_bytes: u8,
    pub machine_page_size: u32,
    pub cipher: u8,
    pub reserved0: [u8; 3],
    pub meta_len: u32,
    pub reserved1: [u8; 36],
}

/// The wrapped data key and how to derive the key-encryption key.
#[derive(BinRead, BinWrite, Debug, Clone, PartialEq, Eq)]
#[brw(little)]
pub struct KeySlotRaw {
    pub kdf: u8,
    pub reserved0: [u8; 3],
    pub m_cost: u32,
    pub t_cost: u32,
    pub p_cost: u32,
    pub salt: [u8; 16],
    pub wrap_nonce: [u8; 24],
    pub wrapped_dek: [u8; 48],
    /// 1.1, `SLOT_BOUND` only (reserved, zero, otherwise).
    pub kek_check: [u8; 16],
    pub reserved1: [u8; 8],
}

impl Default for HeaderFixed {
    fn default() -> Self {
        HeaderFixed {
            magic: [0; 8],
            version_major: 0,
            version_minor: 0,
            header_size: 0,
            incompat: 0,
            ro_compat: 0,
            compat: 0,
            page_size: 0,
            chunk_size: 0,
            image_id: [0; 16],
            created_secs: 0,
            created_nanos: 0,
            machine_arch: 0,
            machine_endian: 0,
            machine_ptr_bytes: 0,
            machine_page_size: 0,
            cipher: 0,
            reserved0: [0; 3],
            meta_len: 0,
            reserved1: [0; 36],
        }
    }
}

impl Default for KeySlotRaw {
    fn default() -> Self {
        KeySlotRaw {
            kdf: 0,
            reserved0: [0; 3],
            m_cost: 0,
            t_cost: 0,
            p_cost: 0,
            salt: [0; 16],
            wrap_nonce: [0; 24],
            wrapped_dek: [0; 48],
            kek_check: [0; 16],
            reserved1: [0; 8],
        }
    }
}

/// The 256-byte trailer at the end of the file.
#[derive(BinRead, BinWrite, Debug, Clone, PartialEq, Eq)]
#[brw(little)]
pub struct TrailerRaw {
    pub magic: [u8; 8],
    pub trailer_offset: u64,
    pub index_offset: u64,
    pub index_len: u64,
    pub index_checksum: u64,
    pub generation: u32,
    pub reserved0: u32,
    pub image_id: [u8; 16],
    pub key_slot: KeySlotRaw,
    pub reserved1: [u8; 56],
    pub checksum: u64,
}

/// The head of the index.
#[derive(BinRead, BinWrite, Debug, Clone, Default, PartialEq, Eq)]
#[brw(little)]
pub struct IndexHeadRaw {
    pub magic: [u8; 8],
    pub chunk_count: u64,
    pub body_len: u64,
    pub body_plain_len: u64,
    /// 1.1: the salt of the index nonce (reserved, zero, in 1.0).
    pub index_nonce_salt: u64,
    pub reserved: [u8; 24],
}

/// One chunk-map entry: where a chunk's stored bytes are.
#[derive(BinRead, BinWrite, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[brw(little)]
pub struct ChunkEntryRaw {
    pub offset: u64,
    pub stored_len: u32,
    pub reserved: u32,
    pub stored_checksum: u64,
}

/// The head of the index body.
#[derive(BinRead, BinWrite, Debug, Clone, Default, PartialEq, Eq)]
#[brw(little)]
pub struct BodyHeadRaw {
    pub region_count: u32,
    pub reserved: u32,
    pub extent_count: u64,
    pub strings_len: u32,
    pub meta_len: u32,
    pub body_checksum: u64,
}

/// One region record.
#[derive(BinRead, BinWrite, Debug, Clone, Default, PartialEq, Eq)]
#[brw(little)]
pub struct RegionRaw {
    pub start: u64,
    pub len: u64,
    pub file_offset: u64,
    pub dev: u64,
    pub inode: u64,
    pub first_extent: u32,
    pub extent_count: u32,
    pub name_off: u32,
    pub name_len: u32,
    pub prot: u8,
    pub flags: u8,
    pub kind: u8,
    pub reserved: [u8; 5],
}

/// One extent record.
#[derive(BinRead, BinWrite, Debug, Clone, Default, PartialEq, Eq)]
#[brw(little)]
pub struct ExtentRaw {
    pub addr: u64,
    pub page_count: u32,
    pub region: u32,
    pub kind: u8,
    pub codec: u8,
    pub reserved: [u8; 6],
    pub chunk: u64,
    pub raw_checksum: u128,
}

/// Serialises a raw structure into bytes.
pub fn to_bytes<T>(value: &T) -> Vec<u8>
where
    T: for<'a> BinWrite<Args<'a> = ()>,
{
    let mut cursor = std::io::Cursor::new(Vec::new());
    // Writing plain integers and arrays into a Vec cannot fail.
    if value.write_le(&mut cursor).is_err() {
        return Vec::new();
    }
    cursor.into_inner()
}

/// Parses a raw structure from a slice that the caller has checked is long
/// enough. Returns `None` only if it is not.
pub fn from_bytes<T>(bytes: &[u8]) -> Option<T>
where
    T: for<'a> BinRead<Args<'a> = ()>,
{
    T::read_le(&mut std::io::Cursor::new(bytes)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_spec() {
        assert_eq!(to_bytes(&HeaderFixed::default()).len(), HEADER_FIXED_LEN);
        assert_eq!(to_bytes(&KeySlotRaw::default()).len(), KEY_SLOT_LEN);
        let t = TrailerRaw {
            magic: TRAILER_MAGIC,
            trailer_offset: 0,
            index_offset: 0,
            index_len: 0,
            index_checksum: 0,
            generation: 0,
            reserved0: 0,
            image_id: [0; 16],
            key_slot: KeySlotRaw::default(),
            reserved1: [0; 56],
            checksum: 0,
        };
        assert_eq!(to_bytes(&t).len(), TRAILER_LEN);
        assert_eq!(to_bytes(&IndexHeadRaw::default()).len(), INDEX_HEAD_LEN);
        assert_eq!(to_bytes(&ChunkEntryRaw::default()).len(), CHUNK_ENTRY_LEN);
        assert_eq!(to_bytes(&BodyHeadRaw::default()).len(), BODY_HEAD_LEN);
        assert_eq!(to_bytes(&RegionRaw::default()).len(), REGION_LEN);
        assert_eq!(to_bytes(&ExtentRaw::default()).len(), EXTENT_LEN);
    }

    #[rustfmt::skip]
    #[test]
    fn chunk_entry_layout() {
        let e = ChunkEntryRaw { offset: 0x1000, stored_len: 0x20, reserved: 0, stored_checksum: 0x0102030405060708 };
        assert_eq!(to_bytes(&e), [
            0x00, 0x10, 0, 0, 0, 0, 0, 0,   // offset
            0x20, 0, 0, 0,                  // stored_len
            0, 0, 0, 0,                     // reserved
            8, 7, 6, 5, 4, 3, 2, 1,         // stored_checksum
        ]);
    }
}
