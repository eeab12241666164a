//! The profile file (spec.md, *Appendix: the profile file*): a recorded
//! load order, exchanged between a lazy restore that records it and
//! `imgtool optimize`, which lays an image out by it ([`crate::relayout`]).
//!
//! ```text
//!  0        8         12       16              32         40            40+8n   48+8n
//!  +--------+---------+--------+---------------+----------+-------------+-------+
//!  |MEMIMGPF| version | count  | image_id      | reserved | chunk u64 × | xxh3  |
//!  |        | 1       | n      | (16 bytes)    | (zero)   | n, in order | _64   |
//!  +--------+---------+--------+---------------+----------+-------------+-------+
//! ```
//!
//! Reading is safe on any bytes, like [`crate::Image::open`]: a profile file
//! of any content gives a [`Profile`] or a typed error naming the offset,
//! and never allocates more than the file's length.

use std::io::{Read, Write};
use std::path::Path;

use xxhash_rust::xxh3::xxh3_64;

use crate::atomic::AtomicFile;
use crate::error::{malformed, Error, ErrorKind, Location, Result};
use crate::read::Image;

/// The magic of a profile file.
pub const PROFILE_MAGIC: [u8; 8] = *b"MEMIMGPF";
/// The profile file version this crate reads and writes.
pub const PROFILE_VERSION: u32 = 1;
/// Length of the fixed part before the chunk numbers.
const HEAD_LEN: usize = 40;

/// A load-order profile: the chunks of one image in the order a restored
/// program first touched them (spec.md, *Load order*).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// The id of the image it was recorded on. It applies to that image, to
    /// an optimized or rotated copy of it (same id), and to no other.
    pub image_id: [u8; 16],
    /// Chunk numbers in first-touch order: at least one, none twice.
    pub chunks: Vec<u64>,
}

impl Profile {
    /// The profile file's bytes: exactly `48 + 8 × count`.
    ///
    /// # Errors
    /// `InvalidInput` when the profile lists no chunk, lists one twice, or
    /// lists more than a `u32` count can say.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.check_own()?;
        let count = u32::try_from(self.chunks.len()).map_err(|_| {
            Error::plain(
                ErrorKind::InvalidInput,
                "a profile lists at most 2^32-1 chunks",
            )
        })?;
        let mut b = Vec::with_capacity(HEAD_LEN + 8 * self.chunks.len() + 8);
        b.extend_from_slice(&PROFILE_MAGIC);
        b.extend_from_slice(&PROFILE_VERSION.to_le_bytes());
        b.extend_from_slice(&count.to_le_bytes());
        b.extend_from_slice(&self.image_id);
        b.extend_from_slice(&[0u8; 8]);
        for c in &self.chunks {
            b.extend_from_slice(&c.to_le_bytes());
        }
        let sum = xxh3_64(&b);
        b.extend_from_slice(&sum.to_le_bytes());
        Ok(b)
    }

    /// Parses a profile file's bytes, checking every field: magic, version,
    /// the exact length its count gives, the checksum, the reserved bytes,
    /// at least one number and none twice.
    ///
    /// # Errors
    /// `NotAnImage` when the magic is wrong (not a profile), `Unsupported`
    /// for another version, `Truncated` or `Malformed` for a length that
    /// does not match the count, `Checksum`, `NonZeroPadding`, and
    /// `Malformed` for an empty profile or a number listed twice; each
    /// names the offset in the file.
    pub fn from_bytes(b: &[u8]) -> Result<Profile> {
        if b.len() < 8 || b[..8] != PROFILE_MAGIC {
            return Err(Error::new(
                ErrorKind::NotAnImage,
                Location::at(0),
                "not a load-order profile (the magic MEMIMGPF is missing)",
            ));
        }
        if b.len() < HEAD_LEN + 8 {
            return Err(Error::new(
                ErrorKind::Truncated,
                Location::at(b.len() as u64),
                format!(
                    "a profile file is at least {} bytes; this one has {}",
                    HEAD_LEN + 8,
                    b.len()
                ),
            ));
        }
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| {
            let mut v = [0u8; 8];
            v.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(v)
        };
        let version = u32_at(8);
        if version != PROFILE_VERSION {
            return Err(Error::new(
                ErrorKind::Unsupported,
                Location::at(8),
                format!(
                    "profile file version {version}: this reader reads version {PROFILE_VERSION}"
                ),
            ));
        }
        let count = u64::from(u32_at(12));
        let want = (HEAD_LEN as u64 + 8) + 8 * count;
        if want != b.len() as u64 {
            return Err(Error::new(
                if want > b.len() as u64 {
                    ErrorKind::Truncated
                } else {
                    ErrorKind::Malformed
                },
                Location::at(12),
                format!(
                    "the profile lists {count} chunks, which take {want} bytes; the file has {}",
                    b.len()
                ),
            ));
        }
        let end = b.len() - 8;
        let stored = u64_at(end);
        let sum = xxh3_64(&b[..end]);
        if sum != stored {
            return Err(Error::new(
                ErrorKind::Checksum,
                Location::at(end as u64),
                format!("profile checksum mismatch (stored {stored:016x}, profile hashes to {sum:016x})"),
            ));
        }
        if b[32..40] != [0u8; 8] {
            return Err(Error::new(
                ErrorKind::NonZeroPadding,
                Location::at(32),
                "reserved profile bytes are not zero",
            ));
        }
        let mut image_id = [0u8; 16];
        image_id.copy_from_slice(&b[16..32]);
        // count × 8 bytes are in the file: the allocation is bounded by it.
        let chunks: Vec<u64> = (0..end.saturating_sub(HEAD_LEN) / 8)
            .map(|i| u64_at(HEAD_LEN + 8 * i))
            .collect();
        let p = Profile { image_id, chunks };
        if let Err((i, e)) = p.first_problem() {
            return Err(e.with_location(Location::at((HEAD_LEN + 8 * i) as u64)));
        }
        Ok(p)
    }

    /// Reads and checks the profile file at `path`, as
    /// [`Profile::from_bytes`]. Only a regular file is read (not a FIFO or a
    /// device), and no more than a count of `u32::MAX` numbers can take.
    ///
    /// # Errors
    /// As [`Profile::from_bytes`], plus `InvalidInput` for what is not a
    /// regular file and `Io` when it cannot be read.
    pub fn read(path: &Path) -> Result<Profile> {
        let (file, len) = crate::source::open_regular(path)?;
        let max = HEAD_LEN as u64 + 8 + 8 * u64::from(u32::MAX);
        if len > max {
            return Err(malformed(
                Location::at(max),
                format!(
                    "{} is {len} bytes, longer than any profile file",
                    path.display()
                ),
            ));
        }
        let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        file.take(max + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        Profile::from_bytes(&bytes)
    }

    /// Writes the profile to `path` crash-safely (a temporary file, fsync,
    /// rename), mode 0600: the order in which a program touches its memory
    /// is the program's business.
    ///
    /// # Errors
    /// As [`Profile::to_bytes`], and I/O errors.
    pub fn write(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes()?;
        let mut af = AtomicFile::create(path)?;
        af.write_all(&bytes)
            .map_err(|e| Error::io(format!("writing {}", af.tmp_path().display()), e))?;
        af.commit()
    }

    /// Checks that the profile applies to `img` (spec.md, *Appendix*): the
    /// same image id (so also an optimized or rotated copy), and every
    /// number below its chunk count.
    ///
    /// # Errors
    /// `WrongImage` for a profile recorded on another image;
    /// `InvalidInput` for a number past the image's chunks, an empty
    /// profile or a number listed twice.
    pub fn check_for(&self, img: &Image) -> Result<()> {
        let id = img.header().image_id;
        if self.image_id != id {
            return Err(Error::plain(
                ErrorKind::WrongImage,
                format!(
                    "the profile was recorded on image {}, not on this image ({})",
                    hex(&self.image_id),
                    hex(&id)
                ),
            ));
        }
        self.check_own()?;
        let n = img.chunk_locs().len() as u64;
        if let Some((i, c)) = self.chunks.iter().enumerate().find(|(_, &c)| c >= n) {
            return Err(Error::plain(
                ErrorKind::InvalidInput,
                format!("profile entry {i} names chunk {c}; the image has {n} chunks"),
            ));
        }
        Ok(())
    }

    fn check_own(&self) -> Result<()> {
        self.first_problem().map_err(|(_, e)| e)
    }

    /// The first rule of its own the profile breaks: empty, or a number
    /// listed twice (with the entry's position).
    fn first_problem(&self) -> std::result::Result<(), (usize, Error)> {
        if self.chunks.is_empty() {
            return Err((
                0,
                Error::plain(ErrorKind::Malformed, "the profile lists no chunk"),
            ));
        }
        let mut seen = std::collections::HashSet::with_capacity(self.chunks.len());
        for (i, &c) in self.chunks.iter().enumerate() {
            if !seen.insert(c) {
                return Err((
                    i,
                    Error::plain(
                        ErrorKind::Malformed,
                        format!("profile entry {i} names chunk {c} a second time"),
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// An image id in hex, as `imgtool inspect` shows it.
fn hex(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Profile {
        Profile {
            image_id: [7; 16],
            chunks: vec![5, 0, 3],
        }
    }

    #[test]
    fn roundtrip() {
        let b = sample().to_bytes().unwrap();
        assert_eq!(b.len(), 48 + 8 * 3);
        assert_eq!(Profile::from_bytes(&b).unwrap(), sample());
    }

    #[test]
    #[rustfmt::skip]
    fn layout_is_the_spec_s() {
        let b = sample().to_bytes().unwrap();
        assert_eq!(&b[0..8], b"MEMIMGPF");         // magic
        assert_eq!(&b[8..12], &[1, 0, 0, 0]);       // version
        assert_eq!(&b[12..16], &[3, 0, 0, 0]);      // count
        assert_eq!(&b[16..32], &[7; 16]);           // image id
        assert_eq!(&b[32..40], &[0; 8]);            // reserved
        assert_eq!(&b[40..48], &5u64.to_le_bytes()); // first chunk
        assert_eq!(&b[64..72], &xxh3_64(&b[..64]).to_le_bytes());
    }

    #[test]
    fn every_flip_and_cut_is_an_error() {
        let b = sample().to_bytes().unwrap();
        for i in 0..b.len() {
            for bit in 0..8 {
                let mut d = b.clone();
                d[i] ^= 1 << bit;
                let e = Profile::from_bytes(&d).unwrap_err();
                assert!(e.location().offset.is_some(), "{i}.{bit}: {e}");
            }
        }
        for n in 0..b.len() {
            assert!(Profile::from_bytes(&b[..n]).is_err(), "cut at {n}");
        }
        let mut longer = b.clone();
        longer.push(0);
        assert!(Profile::from_bytes(&longer).is_err());
    }

    /// Checksums fixed up, so each case reaches the rule it breaks.
    fn fixed(mut b: Vec<u8>) -> Vec<u8> {
        let end = b.len() - 8;
        let sum = xxh3_64(&b[..end]);
        b[end..].copy_from_slice(&sum.to_le_bytes());
        b
    }

    #[test]
    fn hostile_profiles_give_typed_errors() {
        let b = sample().to_bytes().unwrap();
        // A number twice.
        let mut d = b.clone();
        d[48..56].copy_from_slice(&5u64.to_le_bytes());
        let e = Profile::from_bytes(&fixed(d)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Malformed);
        assert_eq!(e.location().offset, Some(48));
        // A count of 2^32-1 in a short file: no allocation, Truncated.
        let mut d = b.clone();
        d[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            Profile::from_bytes(&fixed(d)).unwrap_err().kind(),
            ErrorKind::Truncated
        );
        // A count of zero with no numbers.
        let mut d = b[..40].to_vec();
        d[12..16].fill(0);
        d.extend_from_slice(&[0; 8]);
        assert_eq!(
            Profile::from_bytes(&fixed(d)).unwrap_err().kind(),
            ErrorKind::Malformed
        );
        // Reserved bytes.
        let mut d = b.clone();
        d[35] = 1;
        assert_eq!(
            Profile::from_bytes(&fixed(d)).unwrap_err().kind(),
            ErrorKind::NonZeroPadding
        );
    }
}
