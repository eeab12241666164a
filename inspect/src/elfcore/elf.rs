//! The raw ELF64 layout a core file uses: constants, field offsets and the
//! byte-order helpers. No I/O and no validation here; `read` validates and
//! `write` emits.
//!
//! ```text
//!  0        64             64 + 56·n                          page aligned
//!  +--------+--------------+--------------------------------+--+---------------------+
//!  | Elf64  | n × Elf64    | PT_NOTE body: note, note, …     |  | PT_LOAD bytes, in   |
//!  | _Ehdr  | _Phdr        | (namesz descsz type name desc)  |  | segment order       |
//!  +--------+--------------+--------------------------------+--+---------------------+
//! ```
//!
//! When there are 0xffff or more program headers, `e_phnum` is `PN_XNUM` and
//! the real count is `sh_info` of section header 0 (as the kernel does).

/// `\x7fELF`.
pub const MAGIC: [u8; 4] = *b"\x7fELF";
/// `EI_CLASS` of a 64-bit file.
pub const ELFCLASS64: u8 = 2;
/// `EI_CLASS` of a 32-bit file.
pub const ELFCLASS32: u8 = 1;
/// `EI_DATA` little-endian.
pub const ELFDATA2LSB: u8 = 1;
/// `EI_DATA` big-endian.
pub const ELFDATA2MSB: u8 = 2;
/// `e_type` of a core file.
pub const ET_CORE: u16 = 4;
/// Size of `Elf64_Ehdr`.
pub const EHDR_SIZE: usize = 64;
/// Size of `Elf64_Phdr`.
pub const PHDR_SIZE: usize = 56;
/// Size of `Elf64_Shdr`.
pub const SHDR_SIZE: usize = 64;
/// `e_phnum` value meaning "the count is in section header 0".
pub const PN_XNUM: u16 = 0xffff;

/// Loadable segment.
pub const PT_LOAD: u32 = 1;
/// Note segment.
pub const PT_NOTE: u32 = 4;

/// Segment is executable.
pub const PF_X: u32 = 1;
/// Segment is writable.
pub const PF_W: u32 = 2;
/// Segment is readable.
pub const PF_R: u32 = 4;

/// General registers of one thread (`CORE`).
pub const NT_PRSTATUS: u32 = 1;
/// Process facts: pid, command name, arguments (`CORE`).
pub const NT_PRPSINFO: u32 = 3;
/// The auxiliary vector (`CORE`).
pub const NT_AUXV: u32 = 6;
/// The mapped files (`CORE`).
pub const NT_FILE: u32 = 0x4649_4c45;

/// Size of the 64-bit Linux `struct elf_prpsinfo` (x86-64, AArch64, RISC-V).
pub const PRPSINFO_SIZE: usize = 136;

/// Byte order of an ELF file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// `ELFDATA2LSB`.
    Little,
    /// `ELFDATA2MSB`.
    Big,
}

impl Order {
    /// Reads a u16 at `off` of `b`, if it is there.
    pub fn u16(self, b: &[u8], off: usize) -> Option<u16> {
        let a: [u8; 2] = b.get(off..off.checked_add(2)?)?.try_into().ok()?;
        Some(match self {
            Order::Little => u16::from_le_bytes(a),
            Order::Big => u16::from_be_bytes(a),
        })
    }

    /// Reads a u32 at `off` of `b`, if it is there.
    pub fn u32(self, b: &[u8], off: usize) -> Option<u32> {
        let a: [u8; 4] = b.get(off..off.checked_add(4)?)?.try_into().ok()?;
        Some(match self {
            Order::Little => u32::from_le_bytes(a),
            Order::Big => u32::from_be_bytes(a),
        })
    }

    /// Reads a u64 at `off` of `b`, if it is there.
    pub fn u64(self, b: &[u8], off: usize) -> Option<u64> {
        let a: [u8; 8] = b.get(off..off.checked_add(8)?)?.try_into().ok()?;
        Some(match self {
            Order::Little => u64::from_le_bytes(a),
            Order::Big => u64::from_be_bytes(a),
        })
    }

    /// Appends a u16.
    pub fn put16(self, out: &mut Vec<u8>, v: u16) {
        out.extend_from_slice(&match self {
            Order::Little => v.to_le_bytes(),
            Order::Big => v.to_be_bytes(),
        });
    }

    /// Appends a u32.
    pub fn put32(self, out: &mut Vec<u8>, v: u32) {
        out.extend_from_slice(&match self {
            Order::Little => v.to_le_bytes(),
            Order::Big => v.to_be_bytes(),
        });
    }

    /// Appends a u64.
    pub fn put64(self, out: &mut Vec<u8>, v: u64) {
        out.extend_from_slice(&match self {
            Order::Little => v.to_le_bytes(),
            Order::Big => v.to_be_bytes(),
        });
    }

    /// Writes a u32 into `out` at `off` (which must be in bounds).
    pub fn set32(self, out: &mut [u8], off: usize, v: u32) {
        let b = match self {
            Order::Little => v.to_le_bytes(),
            Order::Big => v.to_be_bytes(),
        };
        if let Some(dst) = out.get_mut(off..off + 4) {
            dst.copy_from_slice(&b);
        }
    }

    /// Writes a u64 into `out` at `off` (which must be in bounds).
    pub fn set64(self, out: &mut [u8], off: usize, v: u64) {
        let b = match self {
            Order::Little => v.to_le_bytes(),
            Order::Big => v.to_be_bytes(),
        };
        if let Some(dst) = out.get_mut(off..off + 8) {
            dst.copy_from_slice(&b);
        }
    }
}

/// Rounds `v` up to a multiple of `align` (a power of two), or `None` on overflow.
pub fn align_up(v: u64, align: u64) -> Option<u64> {
    let mask = align.checked_sub(1)?;
    Some(v.checked_add(mask)? & !mask)
}

/// One `Elf64_Phdr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Phdr {
    /// Segment type.
    pub p_type: u32,
    /// `PF_*` flags.
    pub p_flags: u32,
    /// File offset of the bytes.
    pub p_offset: u64,
    /// Virtual address.
    pub p_vaddr: u64,
    /// Physical address (0 in user cores).
    pub p_paddr: u64,
    /// Bytes in the file.
    pub p_filesz: u64,
    /// Bytes in memory.
    pub p_memsz: u64,
    /// Alignment.
    pub p_align: u64,
}

impl Phdr {
    /// Parses a program header from the 56 bytes at `off`.
    pub fn parse(o: Order, b: &[u8], off: usize) -> Option<Phdr> {
        Some(Phdr {
            p_type: o.u32(b, off)?,
            p_flags: o.u32(b, off.checked_add(4)?)?,
            p_offset: o.u64(b, off.checked_add(8)?)?,
            p_vaddr: o.u64(b, off.checked_add(16)?)?,
            p_paddr: o.u64(b, off.checked_add(24)?)?,
            p_filesz: o.u64(b, off.checked_add(32)?)?,
            p_memsz: o.u64(b, off.checked_add(40)?)?,
            p_align: o.u64(b, off.checked_add(48)?)?,
        })
    }

    /// Appends the 56 bytes of this header.
    pub fn put(&self, o: Order, out: &mut Vec<u8>) {
        o.put32(out, self.p_type);
        o.put32(out, self.p_flags);
        o.put64(out, self.p_offset);
        o.put64(out, self.p_vaddr);
        o.put64(out, self.p_paddr);
        o.put64(out, self.p_filesz);
        o.put64(out, self.p_memsz);
        o.put64(out, self.p_align);
    }
}
