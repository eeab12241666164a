//! An image builder from parts, written from spec.md alone: it lays out a
//! header page, chunks, an index and a trailer, and fixes every checksum (and,
//! for an encrypted image, every tag and the key slot), so that a hostile
//! image reaches the reader's semantic checks instead of failing a checksum.
//!
//! It does not use the crate's writer, and it checks nothing: regions,
//! extents, names, counts, notes and chunk map entries are whatever the test
//! or the fuzz target puts in.

use std::cell::RefCell;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, XChaCha20Poly1305, XNonce};
use memimg::raw::*;
use xxhash_rust::xxh3::xxh3_64;

/// The keys of an encrypted forged image: the data key encrypts the chunks and
/// the index body; the key slot wraps it under the key-encryption key (a raw
/// 32-byte key, KDF 1), so `memimg::Key::raw(kek)` opens the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForgeKey {
    /// The key-encryption key.
    pub kek: [u8; 32],
    /// The data key.
    pub dek: [u8; 32],
    /// The nonce of the key wrap.
    pub wrap_nonce: [u8; 24],
}

/// An image taken apart into its raw structures (or built from them), to
/// forge hostile images that are consistent everywhere except where a test
/// says.
#[derive(Debug, Clone)]
pub struct Forge {
    /// The header page. [`Forge::assemble`] fixes its checksum unless
    /// `keep_header_checksum` is set.
    pub header: Vec<u8>,
    /// Each chunk's bytes before encryption: raw pages, or a zstd frame.
    pub chunks: Vec<Vec<u8>>,
    /// The body head (counts are recomputed by `assemble` unless `keep_counts`).
    pub body_head: BodyHeadRaw,
    /// Region records.
    pub regions: Vec<RegionRaw>,
    /// Extent records.
    pub extents: Vec<ExtentRaw>,
    /// The string table.
    pub strings: Vec<u8>,
    /// The body meta.
    pub meta: Vec<u8>,
    /// Keep `body_head` counts as set, to forge lying counts.
    pub keep_counts: bool,
    /// Leave the header checksum as it is in `header`.
    pub keep_header_checksum: bool,
    /// Encrypt with these keys (the header's cipher and encrypted feature are
    /// left as `header` says: [`Forge::new`] sets them).
    pub key: Option<ForgeKey>,
    /// With a key, seal each chunk (on by default); off, chunks are stored
    /// exactly as given, to forge chunks without a tag.
    pub seal_chunks: bool,
    /// With a key, bind the key slot to the image (format 1.1,
    /// `SLOT_BOUND`: the slot gets its `kek_check` and the wrap the v2
    /// associated data); `None` (the default) makes a 1.0 slot. The header's
    /// `SLOT_BOUND` bit is left as `header` says.
    pub slot_binding: Option<SlotBinding>,
    /// The index nonce salt (format 1.1): written in the index head, and
    /// the salt of the nonce that seals the index body of an encrypted
    /// image. 0 by default, as every writer seals a new data key's first
    /// index.
    pub index_nonce_salt: u64,
    /// The layout order (format 1.1, `LOAD_ORDER`): chunk numbers stored
    /// first, in this order, then every other chunk in ascending number
    /// (numbers past the chunks, or listed twice, are skipped). `None`
    /// (the default) stores them in number order. The load-order record and
    /// the header's `LOAD_ORDER` bit are left to `meta` and `header`.
    pub layout: Option<Vec<u64>>,
}

/// How a forged key slot is bound to its image (format 1.1, `SLOT_BOUND`;
/// spec.md, *Key slot*): the slot holds `kek_check` = BLAKE2b-128(key =
/// KEK, "memimg kek check v2"), and the wrap's associated data is
/// `"memimg key slot v2"` ‖ image id ‖ the slot's bytes `[0, 32)` ‖
/// `kek_check`. The default binds the header's image id and the slot's own
/// fields, as a writer does; the others forge a slot copied from another
/// image or edited after it was wrapped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlotBinding {
    /// Bind this image id instead of the header's.
    pub image_id: Option<[u8; 16]>,
    /// Bind these bytes instead of the slot's own `[0, 32)` (kdf, reserved,
    /// `m_cost`, `t_cost`, `p_cost`, salt).
    pub kdf_fields: Option<[u8; 32]>,
}

/// One page of a region given to [`Forge::push_region`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Page {
    /// Stored bytes (padded with zeros to the page size).
    Data(Vec<u8>),
    /// A zero page, recorded and not stored.
    Zero,
    /// A page that was not captured.
    Absent,
}

impl Page {
    fn kind(&self) -> u8 {
        match self {
            Page::Data(_) => 0,
            Page::Zero => 1,
            Page::Absent => 2,
        }
    }
}

/// The parts of the file laid out by [`Forge::assemble_with`], which a test
/// may change before the checksums that cover them are computed.
#[derive(Debug, Clone)]
pub struct Assembly {
    /// The chunk map, as laid out by the layout rule.
    pub map: Vec<ChunkEntryRaw>,
    /// Recompute each entry's `stored_checksum` from the bytes it now names
    /// (when they lie in the file). On by default.
    pub fix_stored_checksums: bool,
    /// The index head.
    pub index_head: IndexHeadRaw,
    /// The salt of the nonce that seals the index body of an encrypted
    /// image: the forge's `index_nonce_salt`, and so the head's, unless an
    /// edit makes them differ.
    pub seal_salt: u64,
    /// The trailer (its `index_checksum` and `trailer_checksum` are computed
    /// after the edit; the rest is kept).
    pub trailer: TrailerRaw,
}

impl Forge {
    /// An image with no regions and no chunks: a header page of `page_size`
    /// bytes with `chunk_size`, x86-64 machine facts and image id 1, 2, 3 …;
    /// encrypted (cipher 1, feature `ENCRYPTED`) when `key` is given. The zstd
    /// feature is set, so chunks may be raw or compressed.
    pub fn new(page_size: u32, chunk_size: u32, key: Option<ForgeKey>) -> Forge {
        let mut id = [0u8; 16];
        for (i, b) in id.iter_mut().enumerate() {
            *b = i as u8 + 1;
        }
        let fixed = HeaderFixed {
            magic: HEADER_MAGIC,
            version_major: 1,
            version_minor: 0,
            header_size: page_size,
            incompat: memimg::Features::ZSTD
                | if key.is_some() {
                    memimg::Features::ENCRYPTED
                } else {
                    0
                },
            ro_compat: 0,
            compat: 0,
            page_size,
            chunk_size,
            image_id: id,
            created_secs: 1_700_000_000,
            created_nanos: 0,
            machine_arch: 62,
            machine_endian: 1,
            machine_ptr_bytes: 8,
            machine_page_size: 4096,
            cipher: u8::from(key.is_some()),
            reserved0: [0; 3],
            meta_len: 0,
            reserved1: [0; 36],
        };
        let mut header = vec![0u8; page_size as usize];
        header[..HEADER_FIXED_LEN].copy_from_slice(&to_bytes(&fixed));
        Forge {
            header,
            chunks: Vec::new(),
            body_head: BodyHeadRaw::default(),
            regions: Vec::new(),
            extents: Vec::new(),
            strings: Vec::new(),
            meta: Vec::new(),
            keep_counts: false,
            keep_header_checksum: false,
            key,
            seal_chunks: true,
            slot_binding: None,
            index_nonce_salt: 0,
            layout: None,
        }
    }

    /// Takes a plain image apart.
    ///
    /// # Panics
    /// When the image is encrypted or damaged (a test helper).
    pub fn disassemble(bytes: &[u8]) -> Forge {
        let (h, _, idx, _) = crate::parts_of(bytes);
        let index = &bytes[idx.clone()];
        let head: IndexHeadRaw = from_bytes(index).unwrap_or_else(|| panic!("index head"));
        let n = head.chunk_count as usize;
        let mut chunks = Vec::new();
        for i in 0..n {
            let e: ChunkEntryRaw = from_bytes(&index[INDEX_HEAD_LEN + i * CHUNK_ENTRY_LEN..])
                .unwrap_or_else(|| panic!("entry"));
            chunks.push(
                bytes[e.offset as usize..(e.offset + u64::from(e.stored_len)) as usize].to_vec(),
            );
        }
        let body = &index[INDEX_HEAD_LEN + n * CHUNK_ENTRY_LEN..];
        let bh: BodyHeadRaw = from_bytes(body).unwrap_or_else(|| panic!("body head"));
        let mut at = BODY_HEAD_LEN;
        let regions = (0..bh.region_count as usize)
            .map(|i| from_bytes(&body[at + i * REGION_LEN..]).unwrap_or_else(|| panic!("region")))
            .collect();
        at += REGION_LEN * bh.region_count as usize;
        let extents = (0..bh.extent_count as usize)
            .map(|i| from_bytes(&body[at + i * EXTENT_LEN..]).unwrap_or_else(|| panic!("extent")))
            .collect();
        at += EXTENT_LEN * bh.extent_count as usize;
        let strings = body[at..at + bh.strings_len as usize].to_vec();
        at += bh.strings_len as usize;
        let meta = body[at..].to_vec();
        Forge {
            header: bytes[h].to_vec(),
            chunks,
            body_head: bh,
            regions,
            extents,
            strings,
            meta,
            keep_counts: false,
            keep_header_checksum: false,
            key: None,
            seal_chunks: true,
            slot_binding: None,
            index_nonce_salt: head.index_nonce_salt,
            layout: None,
        }
    }

    /// Appends a region at `start` holding `pages`, named `name` (the name
    /// is appended to the string table, as the writer does): runs of data
    /// pages become data extents of at most `chunk_pages` pages, each with a
    /// chunk of its own (zstd-compressed when `zstd` is set and it shrinks),
    /// runs of zero and absent pages become zero and absent extents. A region
    /// with no pages is recorded without data.
    pub fn push_region(
        &mut self,
        start: u64,
        name: &[u8],
        pages: &[Page],
        chunk_pages: usize,
        zstd: bool,
    ) {
        let ps = self.page_size();
        let index = self.regions.len() as u32;
        let first = self.extents.len();
        let mut i = 0;
        while i < pages.len() {
            let kind = pages[i].kind();
            let mut j = i + 1;
            while j < pages.len()
                && pages[j].kind() == kind
                && (kind != 0 || j - i < chunk_pages.max(1))
            {
                j += 1;
            }
            let addr = start + i as u64 * ps;
            let mut e = ExtentRaw {
                addr,
                page_count: (j - i) as u32,
                region: index,
                kind,
                ..ExtentRaw::default()
            };
            if kind == 0 {
                let mut raw = Vec::new();
                for p in &pages[i..j] {
                    if let Page::Data(d) = p {
                        let mut d = d.clone();
                        d.resize(ps as usize, 0);
                        raw.extend_from_slice(&d);
                    }
                }
                e.raw_checksum = xxhash_rust::xxh3::xxh3_128(&raw);
                e.chunk = self.chunks.len() as u64;
                let packed = zstd
                    .then(|| zstd_frame(&raw))
                    .flatten()
                    .filter(|z| z.len() < raw.len());
                match packed {
                    Some(z) => {
                        e.codec = 1;
                        self.chunks.push(z);
                    }
                    None => self.chunks.push(raw),
                }
            }
            self.extents.push(e);
            i = j;
        }
        self.regions.push(RegionRaw {
            start,
            len: pages.len().max(1) as u64 * ps,
            first_extent: first as u32,
            extent_count: (self.extents.len() - first) as u32,
            name_off: self.strings.len() as u32,
            name_len: name.len() as u32,
            prot: 3,
            kind: 4,
            ..RegionRaw::default()
        });
        self.strings.extend_from_slice(name);
    }

    /// Sets incompatible feature `bit` (a [`memimg::Features`] constant) in
    /// the header, and version 1.1 (each feature of 1.1 is one).
    pub fn set_incompat(&mut self, bit: u64) {
        let h = &mut self.header;
        let incompat = u64::from_le_bytes(h[0x10..0x18].try_into().unwrap_or([0; 8]));
        h[0x10..0x18].copy_from_slice(&(incompat | bit).to_le_bytes());
        h[10..12].copy_from_slice(&1u16.to_le_bytes());
    }

    /// Sets compatible feature `bit` (a [`memimg::Features`] constant) in
    /// the header.
    pub fn set_compat(&mut self, bit: u64) {
        let h = &mut self.header;
        let compat = u64::from_le_bytes(h[0x20..0x28].try_into().unwrap_or([0; 8]));
        h[0x20..0x28].copy_from_slice(&(compat | bit).to_le_bytes());
    }

    /// Clears compatible feature `bit` in the header.
    pub fn clear_compat(&mut self, bit: u64) {
        let h = &mut self.header;
        let compat = u64::from_le_bytes(h[0x20..0x28].try_into().unwrap_or([0; 8]));
        h[0x20..0x28].copy_from_slice(&(compat & !bit).to_le_bytes());
    }

    /// Appends a load-order record listing `chunks` to the body meta
    /// (format 1.1; spec.md, *Load order*: type 2, each chunk number a
    /// u64); it sets neither `LOAD_ORDER` nor the layout.
    pub fn push_load_order(&mut self, chunks: &[u64]) {
        let m = &mut self.meta;
        m.extend_from_slice(&2u16.to_le_bytes());
        m.extend_from_slice(&0u16.to_le_bytes());
        m.extend_from_slice(&((8 * chunks.len()) as u32).to_le_bytes());
        for c in chunks {
            m.extend_from_slice(&c.to_le_bytes());
        }
    }

    /// The chunk numbers in the order `assemble` stores them: `layout`'s
    /// (those in range, each once), then the others ascending.
    pub fn layout_order(&self) -> Vec<usize> {
        let n = self.chunks.len();
        let mut seen = vec![false; n];
        let mut out = Vec::with_capacity(n);
        for &c in self.layout.iter().flatten() {
            if let Some(k) = usize::try_from(c).ok().filter(|&k| k < n && !seen[k]) {
                seen[k] = true;
                out.push(k);
            }
        }
        out.extend((0..n).filter(|&k| !seen[k]));
        out
    }

    /// The page size the header names (4096 when it names none that fits).
    pub fn page_size(&self) -> u64 {
        let ps = u32::from_le_bytes(self.header[0x28..0x2c].try_into().unwrap_or([0; 4]));
        if ps == 0 {
            4096
        } else {
            u64::from(ps)
        }
    }

    /// Puts the image together with every checksum, tag and the layout right.
    pub fn assemble(&self) -> Vec<u8> {
        self.assemble_with(&mut |_| {})
    }

    /// Puts the image together, letting `edit` change the chunk map, the
    /// index head and the trailer before the checksums (and the index tag)
    /// that cover them are computed.
    pub fn assemble_with(&self, edit: &mut dyn FnMut(&mut Assembly)) -> Vec<u8> {
        let ps = self.page_size();
        let mut header = self.header.clone();
        if !self.keep_header_checksum && header.len() >= 8 {
            let n = header.len();
            let sum = xxh3_64(&header[..n - 8]);
            header[n - 8..].copy_from_slice(&sum.to_le_bytes());
        }
        let image_id: [u8; 16] = header
            .get(0x30..0x40)
            .and_then(|b| b.try_into().ok())
            .unwrap_or([0; 16]);
        let dek = self.key.map(|k| ChaCha20Poly1305::new(&k.dek.into()));
        let mut out = header.clone();
        let mut map = vec![ChunkEntryRaw::default(); self.chunks.len()];
        for i in self.layout_order() {
            let c = &self.chunks[i];
            let ext = self
                .extents
                .iter()
                .find(|e| e.kind == 0 && e.chunk == i as u64);
            let mut stored = c.clone();
            if let (Some(cipher), true) = (&dek, self.seal_chunks) {
                let mut aad = [0u8; 48];
                aad[..8].copy_from_slice(b"MIMGCHNK");
                aad[8..24].copy_from_slice(&image_id);
                aad[24..32].copy_from_slice(&(i as u64).to_le_bytes());
                if let Some(e) = ext {
                    aad[32..40].copy_from_slice(&e.addr.to_le_bytes());
                    aad[40..44].copy_from_slice(&e.page_count.to_le_bytes());
                    aad[44..48].copy_from_slice(&e.region.to_le_bytes());
                }
                seal(cipher, &chunk_nonce(i as u64), &aad, &mut stored);
            } else if dek.is_none() && ext.is_some_and(|e| e.codec == 0) {
                let pad = (ps - out.len() as u64 % ps) % ps;
                out.resize(out.len() + pad as usize, 0);
            }
            map[i] = ChunkEntryRaw {
                offset: out.len() as u64,
                stored_len: stored.len() as u32,
                reserved: 0,
                stored_checksum: 0,
            };
            out.extend_from_slice(&stored);
        }
        let mut bh = self.body_head.clone();
        if !self.keep_counts {
            bh.region_count = self.regions.len() as u32;
            bh.extent_count = self.extents.len() as u64;
            bh.strings_len = self.strings.len() as u32;
            bh.meta_len = self.meta.len() as u32;
        }
        bh.body_checksum = 0;
        let mut body = to_bytes(&bh);
        for r in &self.regions {
            body.extend_from_slice(&to_bytes(r));
        }
        for e in &self.extents {
            body.extend_from_slice(&to_bytes(e));
        }
        body.extend_from_slice(&self.strings);
        body.extend_from_slice(&self.meta);
        let sum = xxh3_64(&body);
        body[24..32].copy_from_slice(&sum.to_le_bytes());
        let tag = if dek.is_some() { TAG_LEN as u64 } else { 0 };
        let index_offset = out.len() as u64;
        let mut a = Assembly {
            map,
            fix_stored_checksums: true,
            index_head: IndexHeadRaw {
                magic: INDEX_MAGIC,
                chunk_count: self.chunks.len() as u64,
                body_len: body.len() as u64 + tag,
                body_plain_len: body.len() as u64,
                index_nonce_salt: self.index_nonce_salt,
                reserved: [0; 24],
            },
            seal_salt: self.index_nonce_salt,
            trailer: TrailerRaw {
                magic: TRAILER_MAGIC,
                trailer_offset: 0,
                index_offset,
                index_len: 0,
                index_checksum: 0,
                generation: 0,
                reserved0: 0,
                image_id,
                key_slot: self
                    .key
                    .map(|k| key_slot(k, self.slot_binding.as_ref(), &image_id))
                    .unwrap_or_default(),
                reserved1: [0; 56],
                checksum: 0,
            },
        };
        let index_len =
            (INDEX_HEAD_LEN + CHUNK_ENTRY_LEN * a.map.len()) as u64 + body.len() as u64 + tag;
        a.trailer.index_len = index_len;
        a.trailer.trailer_offset = index_offset + index_len;
        edit(&mut a);
        if a.fix_stored_checksums {
            for e in &mut a.map {
                let end = e.offset.checked_add(u64::from(e.stored_len));
                if let Some(bytes) = end.and_then(|end| out.get(e.offset as usize..end as usize)) {
                    e.stored_checksum = xxh3_64(bytes);
                }
            }
        }
        let mut index = to_bytes(&a.index_head);
        for e in &a.map {
            index.extend_from_slice(&to_bytes(e));
        }
        if let Some(cipher) = &dek {
            let mut aad = header.clone();
            aad.extend_from_slice(&index);
            seal(cipher, &index_nonce(a.seal_salt), &aad, &mut body);
        }
        index.extend_from_slice(&body);
        out.extend_from_slice(&index);
        let mut t = a.trailer;
        t.index_checksum = xxh3_64(&index);
        out.extend_from_slice(&trailer_bytes(&t));
        out
    }
}

thread_local! {
    /// A zstd compression context (level 1) per thread, reused from chunk to
    /// chunk: creating one for every chunk, as `zstd::bulk::compress` does,
    /// allocated and cleared more memory than compressing a chunk of a few
    /// pages touched, and was a tenth of the `structured` fuzz target's time.
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { RefCell::new(None) };
}

/// `raw` as one zstd frame at level 1, the same bytes as
/// `zstd::bulk::compress(raw, 1)`; `None` when zstd fails.
pub fn zstd_frame(raw: &[u8]) -> Option<Vec<u8>> {
    COMPRESSOR.with(|c| {
        let mut c = c.try_borrow_mut().ok()?;
        if c.is_none() {
            *c = Some(zstd::bulk::Compressor::new(1).ok()?);
        }
        c.as_mut()?.compress(raw).ok()
    })
}

/// The bytes of trailer `t` with its checksum computed.
pub fn trailer_bytes(t: &TrailerRaw) -> Vec<u8> {
    let mut b = to_bytes(t);
    let s = xxh3_64(&b[..TRAILER_LEN - 8]);
    b[TRAILER_LEN - 8..].copy_from_slice(&s.to_le_bytes());
    b
}

/// The nonce of chunk `i` (spec.md, *Nonces and associated data*).
fn chunk_nonce(i: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&i.to_le_bytes());
    n
}

/// The nonce of the index body: the salt, then `01 00 00 00`.
fn index_nonce(salt: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&salt.to_le_bytes());
    n[8] = 1;
    n
}

fn seal(cipher: &ChaCha20Poly1305, nonce: &[u8; 12], aad: &[u8], buf: &mut Vec<u8>) {
    match cipher.encrypt_in_place_detached(nonce.into(), aad, buf) {
        Ok(tag) => buf.extend_from_slice(&tag),
        Err(_) => buf.extend_from_slice(&[0; TAG_LEN]),
    }
}

/// A key-file key slot (KDF 1) wrapping `k.dek` under `k.kek` (spec.md, *Key
/// slot*): a 1.0 slot, or with `binding` one bound to the image `image_id`
/// (format 1.1, `SLOT_BOUND`), unless the binding names other values.
fn key_slot(k: ForgeKey, binding: Option<&SlotBinding>, image_id: &[u8; 16]) -> KeySlotRaw {
    let mut slot = KeySlotRaw {
        kdf: 1,
        wrap_nonce: k.wrap_nonce,
        ..KeySlotRaw::default()
    };
    let aad = match binding {
        None => b"memimg key slot v1".to_vec(),
        Some(b) => {
            slot.kek_check = kek_check(&k.kek);
            let mut aad = b"memimg key slot v2".to_vec();
            aad.extend_from_slice(b.image_id.as_ref().unwrap_or(image_id));
            let fields = to_bytes(&slot);
            aad.extend_from_slice(b.kdf_fields.as_ref().map_or(&fields[..32], |f| &f[..]));
            aad.extend_from_slice(&slot.kek_check);
            aad
        }
    };
    let cipher = XChaCha20Poly1305::new(&k.kek.into());
    let mut dek = k.dek;
    if let Ok(tag) =
        cipher.encrypt_in_place_detached(XNonce::from_slice(&k.wrap_nonce), &aad, &mut dek)
    {
        slot.wrapped_dek[..32].copy_from_slice(&dek);
        slot.wrapped_dek[32..].copy_from_slice(&tag);
    }
    slot
}

/// `kek_check` of a bound key slot: BLAKE2b (RFC 7693) keyed with the
/// 32-byte KEK, 16 bytes of output, of `"memimg kek check v2"`.
pub fn kek_check(kek: &[u8; 32]) -> [u8; 16] {
    use blake2::digest::{consts::U16, Mac};
    match <blake2::Blake2bMac<U16> as Mac>::new_from_slice(kek) {
        Ok(mut mac) => {
            mac.update(b"memimg kek check v2");
            mac.finalize().into_bytes().into()
        }
        // A 32-byte key is within BLAKE2b's 64: this does not happen.
        Err(_) => [0; 16],
    }
}
