//! A tiny ELF note reader: just enough to find the GNU build id of an
//! executable through its `PT_NOTE` program headers.

const PT_NOTE: u32 = 4;
const NT_GNU_BUILD_ID: u32 = 3;

fn u16_at(b: &[u8], off: usize, le: bool) -> Option<u16> {
    let a: [u8; 2] = b.get(off..off.checked_add(2)?)?.try_into().ok()?;
    Some(if le {
        u16::from_le_bytes(a)
    } else {
        u16::from_be_bytes(a)
    })
}

fn u32_at(b: &[u8], off: usize, le: bool) -> Option<u32> {
    let a: [u8; 4] = b.get(off..off.checked_add(4)?)?.try_into().ok()?;
    Some(if le {
        u32::from_le_bytes(a)
    } else {
        u32::from_be_bytes(a)
    })
}

fn u64_at(b: &[u8], off: usize, le: bool) -> Option<u64> {
    let a: [u8; 8] = b.get(off..off.checked_add(8)?)?.try_into().ok()?;
    Some(if le {
        u64::from_le_bytes(a)
    } else {
        u64::from_be_bytes(a)
    })
}

/// Finds the GNU build id in an ELF file whose first bytes are `head`.
/// `fetch(offset, len)` reads note segments that lie past `head`; it is
/// asked for at most 64 KiB at a time. Any malformed input gives `None`.
pub fn build_id(
    head: &[u8],
    mut fetch: impl FnMut(u64, u64) -> Option<Vec<u8>>,
) -> Option<Vec<u8>> {
    if head.get(..4)? != b"\x7fELF" {
        return None;
    }
    let is64 = match head.get(4)? {
        1 => false,
        2 => true,
        _ => return None,
    };
    let le = match head.get(5)? {
        1 => true,
        2 => false,
        _ => return None,
    };
    let (phoff, phentsize, phnum) = if is64 {
        (
            u64_at(head, 0x20, le)?,
            u16_at(head, 0x36, le)?,
            u16_at(head, 0x38, le)?,
        )
    } else {
        (
            u64::from(u32_at(head, 0x1c, le)?),
            u16_at(head, 0x2a, le)?,
            u16_at(head, 0x2c, le)?,
        )
    };
    for i in 0..u64::from(phnum) {
        let at = usize::try_from(phoff.checked_add(i * u64::from(phentsize))?).ok()?;
        if u32_at(head, at, le)? != PT_NOTE {
            continue;
        }
        let (off, size) = if is64 {
            (u64_at(head, at + 8, le)?, u64_at(head, at + 32, le)?)
        } else {
            (
                u64::from(u32_at(head, at + 4, le)?),
                u64::from(u32_at(head, at + 16, le)?),
            )
        };
        let size = size.min(1 << 16);
        let end = off.checked_add(size)?;
        let notes: Vec<u8> = match (usize::try_from(off), usize::try_from(end)) {
            (Ok(s), Ok(e)) if e <= head.len() => head[s..e].to_vec(),
            _ => match fetch(off, size) {
                Some(v) => v,
                None => continue,
            },
        };
        if let Some(id) = find_in_notes(&notes, le) {
            return Some(id);
        }
    }
    None
}

/// Walks the notes of one segment: `namesz, descsz, type, name, desc`, each
/// padded to 4 bytes.
fn find_in_notes(notes: &[u8], le: bool) -> Option<Vec<u8>> {
    let mut at = 0usize;
    while at + 12 <= notes.len() {
        let namesz = usize::try_from(u32_at(notes, at, le)?).ok()?;
        let descsz = usize::try_from(u32_at(notes, at + 4, le)?).ok()?;
        let ty = u32_at(notes, at + 8, le)?;
        let name_at = at + 12;
        let desc_at = name_at.checked_add(namesz.checked_next_multiple_of(4)?)?;
        let next = desc_at.checked_add(descsz.checked_next_multiple_of(4)?)?;
        if ty == NT_GNU_BUILD_ID && notes.get(name_at..name_at + namesz)? == b"GNU\0" {
            let id = notes.get(desc_at..desc_at.checked_add(descsz)?)?;
            return (id.len() <= 64).then(|| id.to_vec());
        }
        at = next;
    }
    None
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
mod tests {
    use super::*;

    #[rustfmt::skip]
    fn tiny_elf(id: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 0x40];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2; // ELFCLASS64
        f[5] = 1; // little-endian
        f[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes()); // e_phoff
        f[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());   // e_phentsize
        f[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());    // e_phnum
        let note_off = 0x40 + 56;
        let mut ph = vec![0u8; 56];
        ph[0..4].copy_from_slice(&PT_NOTE.to_le_bytes());      // p_type
        ph[8..16].copy_from_slice(&(note_off as u64).to_le_bytes()); // p_offset
        let mut note = Vec::new();
        note.extend_from_slice(&4u32.to_le_bytes());           // namesz
        note.extend_from_slice(&(id.len() as u32).to_le_bytes()); // descsz
        note.extend_from_slice(&NT_GNU_BUILD_ID.to_le_bytes());   // type
        note.extend_from_slice(b"GNU\0");
        note.extend_from_slice(id);
        ph[32..40].copy_from_slice(&(note.len() as u64).to_le_bytes()); // p_filesz
        f.extend_from_slice(&ph);
        f.extend_from_slice(&note);
        f
    }

    #[test]
    fn finds_build_id() {
        let id = [0xab; 20];
        assert_eq!(build_id(&tiny_elf(&id), |_, _| None).unwrap(), id);
    }

    #[test]
    fn garbage_is_none() {
        assert!(build_id(b"not an elf", |_, _| None).is_none());
        let mut f = tiny_elf(&[1; 20]);
        f[0x38] = 0xff; // absurd phnum: runs off the end
        let _ = build_id(&f, |_, _| None);
        for n in 0..f.len() {
            let _ = build_id(&f[..n], |_, _| None);
        }
    }

    #[test]
    fn own_executable_has_one_or_none() {
        let head = std::fs::read("/proc/self/exe").unwrap();
        if let Some(id) = build_id(&head, |_, _| None) {
            assert!(!id.is_empty());
        }
    }
}
