//! The safe, validated view of an image: header facts, regions and extents.

use std::fmt;

/// Feature bits, in three sets (see spec.md, *Features*).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features {
    /// Bits a reader must understand to read the image at all.
    pub incompat: u64,
    /// Bits a reader must understand to modify the image in place.
    pub ro_compat: u64,
    /// Bits a reader may ignore.
    pub compat: u64,
}

impl Features {
    /// Incompatible: chunks and index body are encrypted.
    pub const ENCRYPTED: u64 = 1 << 0;
    /// Incompatible: some chunks may be zstd-compressed.
    pub const ZSTD: u64 = 1 << 1;
    /// Incompatible (1.1): the key slot's wrap is bound to the image (its id,
    /// KDF and parameters), and the slot holds a KEK check.
    pub const SLOT_BOUND: u64 = 1 << 2;
    /// Incompatible (1.1): an incremental image, whose header names its
    /// parent and whose in-parent extents are the parent's pages.
    pub const PARENT: u64 = 1 << 3;
    /// Incompatible (1.1): chunks are laid out in load order, and the index
    /// body carries the load-order profile.
    pub const LOAD_ORDER: u64 = 1 << 4;
    /// Incompatible (1.1): the index lies right after the header, which
    /// locates it with an index record; plain images only (spec.md, *Index
    /// first*).
    pub const INDEX_FIRST: u64 = 1 << 5;
    /// The incompatible bits version 1.1 added: an image that sets none of
    /// them follows every 1.0 rule.
    pub const V1_1_INCOMPAT: u64 =
        Self::SLOT_BOUND | Self::PARENT | Self::LOAD_ORDER | Self::INDEX_FIRST;
    /// Incompatible bits this reader knows.
    pub const KNOWN_INCOMPAT: u64 = Self::ENCRYPTED | Self::ZSTD | Self::V1_1_INCOMPAT;
    /// Read-only-compatible bits this reader knows.
    pub const KNOWN_RO_COMPAT: u64 = 0;
    /// Compatible: the header carries process facts.
    pub const PROCESS_FACTS: u64 = 1 << 0;
    /// Compatible: the index body carries named notes.
    pub const NOTES: u64 = 1 << 1;
    /// Compatible (1.1): the index body carries a digest of every stored
    /// page (spec.md, *Page digests*).
    pub const PAGE_DIGESTS: u64 = 1 << 2;

    /// Names of the set bits, for display (`encrypted`, `zstd`, `bit5` …).
    pub fn names(&self) -> Vec<String> {
        let mut out = Vec::new();
        let named = |set: u64, names: &[(u64, &str)], prefix: &str, out: &mut Vec<String>| {
            for bit in 0..64 {
                let mask = 1u64 << bit;
                if set & mask == 0 {
                    continue;
                }
                match names.iter().find(|(m, _)| *m == mask) {
                    Some((_, n)) => out.push((*n).to_string()),
                    None => out.push(format!("{prefix}-bit{bit}")),
                }
            }
        };
        named(
            self.incompat,
            &[
                (Self::ENCRYPTED, "encrypted"),
                (Self::ZSTD, "zstd"),
                (Self::SLOT_BOUND, "slot-bound"),
                (Self::PARENT, "parent"),
                (Self::LOAD_ORDER, "load-order"),
                (Self::INDEX_FIRST, "index-first"),
            ],
            "incompat",
            &mut out,
        );
        named(self.ro_compat, &[], "ro-compat", &mut out);
        named(
            self.compat,
            &[
                (Self::PROCESS_FACTS, "process-facts"),
                (Self::NOTES, "notes"),
                (Self::PAGE_DIGESTS, "page-digests"),
            ],
            "compat",
            &mut out,
        );
        out
    }
}

/// Byte order of the captured machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endian {
    /// Little-endian (ELF `EI_DATA` 1).
    Little,
    /// Big-endian (ELF `EI_DATA` 2).
    Big,
}

/// The machine facts a restore must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineFacts {
    /// ELF `e_machine` of the architecture (62 is x86-64).
    pub arch: u16,
    /// Byte order.
    pub endian: Endian,
    /// Pointer width in bytes.
    pub ptr_bytes: u8,
    /// The machine's page size in bytes.
    pub page_size: u32,
}

impl MachineFacts {
    /// The facts of the machine this code runs on.
    pub fn current() -> Self {
        let arch = match std::env::consts::ARCH {
            "x86_64" => 62,
            "aarch64" => 183,
            "riscv64" => 243,
            "x86" => 3,
            "arm" => 40,
            "powerpc64" => 21,
            "s390x" => 22,
            _ => 0,
        };
        MachineFacts {
            arch,
            endian: if cfg!(target_endian = "big") {
                Endian::Big
            } else {
                Endian::Little
            },
            ptr_bytes: u8::try_from(std::mem::size_of::<usize>()).unwrap_or(8),
            page_size: crate::page_size(),
        }
    }

    /// The architecture's usual name (`x86_64`, `aarch64` …).
    pub fn arch_name(&self) -> String {
        match self.arch {
            62 => "x86_64".into(),
            183 => "aarch64".into(),
            243 => "riscv64".into(),
            3 => "i386".into(),
            40 => "arm".into(),
            21 => "ppc64".into(),
            22 => "s390x".into(),
            n => format!("e_machine {n}"),
        }
    }

    /// The first field in which `self` and `other` differ, by name.
    pub fn first_difference(&self, other: &MachineFacts) -> Option<&'static str> {
        if self.arch != other.arch {
            Some("architecture")
        } else if self.endian != other.endian {
            Some("endianness")
        } else if self.ptr_bytes != other.ptr_bytes {
            Some("pointer width")
        } else if self.page_size != other.page_size {
            Some("page size")
        } else {
            None
        }
    }
}

/// Application validation data: an opaque, bounded blob with a tag that the
/// embedding program sets when it writes and checks when it restores.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validation {
    /// What kind of data this is, chosen by the program (at most 64 bytes).
    pub tag: Vec<u8>,
    /// The data (at most 2048 bytes).
    pub data: Vec<u8>,
}

/// Facts about a captured process, kept in the header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessFacts {
    /// Process id.
    pub pid: Option<u32>,
    /// `/proc/PID/comm`.
    pub comm: Vec<u8>,
    /// `/proc/PID/cmdline`, NUL-separated, at most 1024 bytes.
    pub cmdline: Vec<u8>,
    /// Path of the executable.
    pub exe: Vec<u8>,
    /// GNU build id of the executable, raw.
    pub build_id: Vec<u8>,
    /// Kernel release of the capturing machine.
    pub kernel_release: Vec<u8>,
}

impl ProcessFacts {
    /// True when no fact is set.
    pub fn is_empty(&self) -> bool {
        *self == ProcessFacts::default()
    }
}

/// A named opaque blob carried in the index body (for example an ELF note).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The blob's name.
    pub name: String,
    /// Its bytes.
    pub data: Vec<u8>,
}

/// The cipher of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cipher {
    /// Not encrypted.
    None,
    /// ChaCha20-Poly1305 (RFC 8439).
    ChaCha20Poly1305,
}

impl fmt::Display for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cipher::None => "none",
            Cipher::ChaCha20Poly1305 => "chacha20-poly1305",
        })
    }
}

/// The validated header of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Format version (major, minor).
    pub version: (u16, u16),
    /// Feature bits.
    pub features: Features,
    /// Page size of the image in bytes.
    pub page_size: u32,
    /// Largest raw chunk in bytes.
    pub chunk_size: u32,
    /// Random id of this image.
    pub image_id: [u8; 16],
    /// Creation time: seconds since the Unix epoch.
    pub created_secs: i64,
    /// Creation time: nanoseconds.
    pub created_nanos: u32,
    /// Facts of the captured machine.
    pub machine: MachineFacts,
    /// Cipher of chunks and index body.
    pub cipher: Cipher,
    /// Name and version of the program that wrote the image.
    pub producer: String,
    /// Application validation data, if the writer set any.
    pub validation: Option<Validation>,
    /// Process facts, if the writer set any.
    pub process: Option<ProcessFacts>,
    /// The parent of an incremental image (1.1, feature `PARENT`): `None`
    /// for a full image.
    pub parent: Option<ParentRecord>,
    /// Where the parent was when the image was written (1.1): a path
    /// relative to the image's directory, an absolute path or a URL. Only a
    /// hint for finding it: whatever it names is checked against
    /// [`Header::parent`].
    pub parent_hint: Option<String>,
    /// The index record of an image whose index lies right after the header
    /// (1.1, feature `INDEX_FIRST`): the index's length and checksum. `None`
    /// when the index is at the end.
    pub index_first: Option<IndexRecord>,
}

/// The header's index record (spec.md, *Index first*): where the trailer
/// would say the index is, for a reader that opens the image from its front.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexRecord {
    /// Length of the index, which starts at the page size.
    pub index_len: u64,
    /// `xxh3_64` of the index's bytes.
    pub index_checksum: u64,
}

impl Header {
    /// Where the chunk data starts (spec.md, *Chunk data*): right after the
    /// header, or after the index when it comes first.
    pub fn data_start(&self) -> u64 {
        let ps = u64::from(self.page_size);
        self.index_first
            .map_or(ps, |r| ps.saturating_add(r.index_len))
    }

    /// The image's depth in its chain: 0 for a full image, 1 + its
    /// parent's for an incremental one.
    pub fn depth(&self) -> u32 {
        self.parent.as_ref().map_or(0, |p| p.depth)
    }

    /// True when the key slot is bound to the image (feature `SLOT_BOUND`).
    pub fn is_slot_bound(&self) -> bool {
        self.features.incompat & Features::SLOT_BOUND != 0
    }

    /// The image id as 32 lowercase hex digits.
    pub fn image_id_hex(&self) -> String {
        hex(&self.image_id)
    }
}

/// What an incremental image (1.1) says about its parent: its header's
/// parent record (spec.md, *Incremental images*).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ParentRecord {
    /// The parent's image id.
    pub image_id: [u8; 16],
    /// The `index_checksum` of the parent's active trailer: a parent whose
    /// index was rewritten (recompressed, re-encrypted, relaid out, rebased)
    /// no longer matches. Key rotation keeps the index, so a rotated parent
    /// still does.
    pub index_checksum: u64,
    /// The child's depth: 1 + the parent's depth, from 1 to
    /// [`crate::MAX_CHAIN_DEPTH`].
    pub depth: u32,
}

impl ParentRecord {
    /// The parent's image id as 32 lowercase hex digits.
    pub fn image_id_hex(&self) -> String {
        hex(&self.image_id)
    }
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Memory protection of a region.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Prot(pub u8);

impl Prot {
    /// Readable.
    pub const READ: u8 = 1;
    /// Writable.
    pub const WRITE: u8 = 2;
    /// Executable.
    pub const EXEC: u8 = 4;
    /// Read and write.
    pub const RW: Prot = Prot(Self::READ | Self::WRITE);

    /// Readable?
    pub fn read(self) -> bool {
        self.0 & Self::READ != 0
    }
    /// Writable?
    pub fn write(self) -> bool {
        self.0 & Self::WRITE != 0
    }
    /// Executable?
    pub fn exec(self) -> bool {
        self.0 & Self::EXEC != 0
    }
}

impl fmt::Display for Prot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = |on: bool, ch: char| if on { ch } else { '-' };
        write!(
            f,
            "{}{}{}",
            c(self.read(), 'r'),
            c(self.write(), 'w'),
            c(self.exec(), 'x')
        )
    }
}

/// What a region holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum RegionKind {
    /// Anything else (`[vdso]`, `[vvar]` …).
    #[default]
    Other,
    /// The heap.
    Heap,
    /// A thread stack.
    Stack,
    /// Executable code.
    Code,
    /// Anonymous memory.
    Anonymous,
    /// A file mapping.
    FileBacked,
    /// A guard page or reserved gap.
    Guard,
}

impl RegionKind {
    /// The on-disk code.
    pub fn code(self) -> u8 {
        match self {
            RegionKind::Other => 0,
            RegionKind::Heap => 1,
            RegionKind::Stack => 2,
            RegionKind::Code => 3,
            RegionKind::Anonymous => 4,
            RegionKind::FileBacked => 5,
            RegionKind::Guard => 6,
        }
    }

    /// From the on-disk code.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => RegionKind::Other,
            1 => RegionKind::Heap,
            2 => RegionKind::Stack,
            3 => RegionKind::Code,
            4 => RegionKind::Anonymous,
            5 => RegionKind::FileBacked,
            6 => RegionKind::Guard,
            _ => return None,
        })
    }

    /// A short lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            RegionKind::Other => "other",
            RegionKind::Heap => "heap",
            RegionKind::Stack => "stack",
            RegionKind::Code => "code",
            RegionKind::Anonymous => "anon",
            RegionKind::FileBacked => "file",
            RegionKind::Guard => "guard",
        }
    }
}

impl fmt::Display for RegionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a writer is told about a region, and what a reader reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegionInfo {
    /// Start address; a multiple of the image page size.
    pub start: u64,
    /// Length in bytes; a multiple of the image page size, > 0.
    pub len: u64,
    /// Protection.
    pub prot: Prot,
    /// A shared mapping (`MAP_SHARED`); otherwise private.
    pub shared: bool,
    /// What the region holds.
    pub kind: RegionKind,
    /// Name or path (`[heap]`, `/usr/lib/libc.so.6` …), bytes as the kernel gives them.
    pub name: Vec<u8>,
    /// Offset in the mapped file, for file-backed regions.
    pub file_offset: u64,
    /// Device of the mapped file (`major << 32 | minor`).
    pub dev: u64,
    /// Inode of the mapped file.
    pub inode: u64,
}

impl RegionInfo {
    /// A private anonymous read-write region of `len` bytes at `start`.
    pub fn new(start: u64, len: u64) -> Self {
        RegionInfo {
            start,
            len,
            prot: Prot::RW,
            kind: RegionKind::Anonymous,
            ..RegionInfo::default()
        }
    }

    /// Sets the kind.
    pub fn kind(mut self, kind: RegionKind) -> Self {
        self.kind = kind;
        self
    }

    /// Sets the name.
    pub fn name(mut self, name: impl Into<Vec<u8>>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the protection.
    pub fn prot(mut self, prot: Prot) -> Self {
        self.prot = prot;
        self
    }

    /// One past the last address.
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.len)
    }

    /// The name as text, with invalid UTF-8 replaced.
    pub fn name_lossy(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }
}

/// A region of a read image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    /// Its position in the region table.
    pub index: u32,
    /// Its facts.
    pub info: RegionInfo,
    /// Its first extent.
    pub first_extent: u32,
    /// Its number of extents; 0 when recorded with no data.
    pub extent_count: u32,
}

impl Region {
    /// True when the region is recorded with no data at all.
    pub fn has_data(&self) -> bool {
        self.extent_count > 0
    }
}

/// State of a run of pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExtentKind {
    /// Stored in a chunk.
    Data,
    /// All-zero pages, not stored.
    Zero,
    /// Not captured.
    Absent,
    /// The parent's pages at the same addresses (1.1, an incremental image).
    InParent,
}

/// How a chunk's bytes are encoded before any encryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChunkCodec {
    /// Raw pages.
    None,
    /// One zstd frame.
    Zstd,
}

impl fmt::Display for ChunkCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChunkCodec::None => "none",
            ChunkCodec::Zstd => "zstd",
        })
    }
}

/// A run of pages of one region in one state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Address of the first page.
    pub addr: u64,
    /// Number of pages.
    pub page_count: u32,
    /// The owning region.
    pub region: u32,
    /// State of the pages.
    pub kind: ExtentKind,
    /// Codec (data extents).
    pub codec: ChunkCodec,
    /// Chunk number (data extents).
    pub chunk: u64,
    /// `xxh3_128` of the raw pages (data extents).
    pub raw_checksum: u128,
}

impl Extent {
    /// Length in bytes, given the page size.
    pub fn len(&self, page_size: u32) -> u64 {
        u64::from(self.page_count) * u64::from(page_size)
    }

    /// One past the last address.
    pub fn end(&self, page_size: u32) -> u64 {
        self.addr.saturating_add(self.len(page_size))
    }
}

/// Where a chunk's stored bytes are in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLoc {
    /// File offset.
    pub offset: u64,
    /// Stored length.
    pub stored_len: u32,
    /// `xxh3_64` of the stored bytes.
    pub stored_checksum: u64,
}
