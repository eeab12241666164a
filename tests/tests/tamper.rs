//! Tampering with an encrypted image must be detected, even when the tamperer
//! fixes up every checksum.

use memimg::{raw, Codec, ErrorKind, Image, Key, RegionInfo, VerifyOptions, Writer, WriterOptions};
use memimg_tests::{fill_page, fix_header_checksum, PageKind, GOLDEN_KEY};
use xxhash_rust::xxh3::xxh3_64;

fn image(codec: Codec, seed: u64) -> Vec<u8> {
    let key = Key::raw(GOLDEN_KEY);
    let opts = WriterOptions::new()
        .page_size(4096)
        .chunk_size(4096)
        .codec(codec)
        .workers(0)
        .key(key)
        .validation("app", b"abc".to_vec());
    let mut w = Writer::new(Vec::new(), opts).unwrap();
    let mut buf = vec![0u8; 4 * 4096];
    for (i, p) in buf.chunks_mut(4096).enumerate() {
        fill_page(p, PageKind::Text, seed + i as u64);
    }
    w.add_region(RegionInfo::new(0x10000, buf.len() as u64), &buf)
        .unwrap();
    w.add_region(RegionInfo::new(0x40000, 4096), &buf[..4096])
        .unwrap();
    w.finish().unwrap().0
}

fn map(bytes: &[u8]) -> (usize, Vec<raw::ChunkEntryRaw>, raw::TrailerRaw) {
    let t = bytes.len() - raw::TRAILER_LEN;
    let tr: raw::TrailerRaw = raw::from_bytes(&bytes[t..]).unwrap();
    let io = tr.index_offset as usize;
    let head: raw::IndexHeadRaw = raw::from_bytes(&bytes[io..]).unwrap();
    let entries = (0..head.chunk_count as usize)
        .map(|i| raw::from_bytes(&bytes[io + 64 + 24 * i..]).unwrap())
        .collect();
    (io, entries, tr)
}

/// Rewrites the chunk map entries and fixes the index and trailer checksums.
fn set_map(bytes: &mut [u8], entries: &[raw::ChunkEntryRaw]) {
    let (io, _, mut tr) = map(bytes);
    for (i, e) in entries.iter().enumerate() {
        bytes[io + 64 + 24 * i..io + 88 + 24 * i].copy_from_slice(&raw::to_bytes(e));
    }
    fix_index_and_trailer(bytes, io, &mut tr);
}

fn fix_index_and_trailer(bytes: &mut [u8], io: usize, tr: &mut raw::TrailerRaw) {
    let t = bytes.len() - raw::TRAILER_LEN;
    tr.index_checksum = xxh3_64(&bytes[io..t]);
    let mut tb = raw::to_bytes(tr);
    let s = xxh3_64(&tb[..248]);
    tb[248..].copy_from_slice(&s.to_le_bytes());
    bytes[t..].copy_from_slice(&tb);
}

fn detected(bytes: Vec<u8>) -> bool {
    let key = Key::raw(GOLDEN_KEY);
    let r = memimg::verify_bytes(
        bytes,
        Some(&key),
        &VerifyOptions {
            decode: true,
            progress: None,
        },
    );
    match r.status() {
        memimg::Status::Damaged => true,
        memimg::Status::Unchecked => r
            .fatal
            .map(|e| e.kind() != ErrorKind::WrongKey)
            .unwrap_or(false),
        memimg::Status::Intact => false,
    }
}

#[test]
fn tampering_is_detected() {
    let mut results = Vec::new();
    for codec in [Codec::None, Codec::Zstd(1)] {
        let orig = image(codec, 1);
        let (_, entries, _) = map(&orig);
        // Swap two chunks (same length: raw chunks of one page each), fixing checksums.
        let mut d = orig.clone();
        let (a, b) = (entries[0], entries[1]);
        if a.stored_len == b.stored_len {
            let (x, y) = (a.offset as usize, b.offset as usize);
            let n = a.stored_len as usize;
            let ca = d[x..x + n].to_vec();
            let cb = d[y..y + n].to_vec();
            d[x..x + n].copy_from_slice(&cb);
            d[y..y + n].copy_from_slice(&ca);
            let mut e2 = entries.clone();
            e2[0].stored_checksum = xxh3_64(&cb);
            e2[1].stored_checksum = xxh3_64(&ca);
            set_map(&mut d, &e2);
            results.push(("swap two chunks", detected(d)));
        } else {
            // Swap the map entries instead (pointing chunk 0 at chunk 1's bytes).
            let mut e2 = entries.clone();
            e2.swap(0, 1);
            set_map(&mut d, &e2);
            results.push(("swap two chunks (map)", detected(d)));
        }
        // Replay chunk 0 from another image written under the same KEK.
        let other = image(codec, 1);
        let (_, oentries, _) = map(&other);
        let mut d = orig.clone();
        if oentries[0].stored_len == entries[0].stored_len {
            let n = entries[0].stored_len as usize;
            let (x, y) = (entries[0].offset as usize, oentries[0].offset as usize);
            d[x..x + n].copy_from_slice(&other[y..y + n]);
            let mut e2 = entries.clone();
            e2[0].stored_checksum = oentries[0].stored_checksum;
            set_map(&mut d, &e2);
            results.push(("replay a chunk from another image", detected(d)));
        }
        // Move a chunk to another address: the last chunk (region 2, 0x40000)
        // has the same content as chunk 0 (region 1, 0x10000); swap their bytes.
        let mut d = orig.clone();
        let last = entries[entries.len() - 1];
        if last.stored_len == entries[0].stored_len {
            let n = last.stored_len as usize;
            let c0 = d[entries[0].offset as usize..][..n].to_vec();
            d[last.offset as usize..][..n].copy_from_slice(&c0);
            let mut e2 = entries.clone();
            let k = e2.len() - 1;
            e2[k].stored_checksum = xxh3_64(&c0);
            set_map(&mut d, &e2);
            results.push(("move a chunk to another address", detected(d)));
        }
        // Edit header fields and fix the checksum.
        for (what, off, val) in [
            ("page size", 0x28usize, 16384u32.to_le_bytes().to_vec()),
            ("feature flags", 0x20, vec![0x04]),
            ("validation data", 0x80 + 4, vec![b'X']),
        ] {
            let mut d = orig.clone();
            if what == "validation data" {
                let pos = d[..4096].windows(3).position(|w| w == b"abc").unwrap();
                d[pos] = b'X';
            } else {
                d[off..off + val.len()].copy_from_slice(&val);
            }
            fix_header_checksum(&mut d);
            results.push((what, detected(d)));
        }
        // Roll the index back to an earlier image's index (same layout, same KEK).
        let earlier = image(codec, 1);
        let mut d = orig.clone();
        let (io, _, mut tr) = map(&d);
        let (eio, _, _) = map(&earlier);
        let t = d.len() - raw::TRAILER_LEN;
        let et = earlier.len() - raw::TRAILER_LEN;
        if t - io == et - eio {
            d[io..t].copy_from_slice(&earlier[eio..et]);
            fix_index_and_trailer(&mut d, io, &mut tr);
            results.push(("roll the index back", detected(d)));
        }
        // The wrong key: its own error, never damage.
        let wrong = Key::raw([9; 32]);
        let e = Image::from_bytes(orig.clone(), Some(&wrong)).unwrap_err();
        results.push((
            "wrong key",
            e.kind() == ErrorKind::WrongKey
                && e.to_string().contains("the key does not open this image"),
        ));
        // Strip the encryption feature flag (and cipher), fixing the checksum.
        let mut d = orig.clone();
        d[0x10] &= !1;
        d[0x54] = 0;
        fix_header_checksum(&mut d);
        let key = Key::raw(GOLDEN_KEY);
        let r = memimg::verify_bytes(
            d.clone(),
            None,
            &VerifyOptions {
                decode: true,
                progress: None,
            },
        );
        let with_key = Image::from_bytes(d, Some(&key));
        results.push((
            "strip the encryption flag",
            r.status() != memimg::Status::Intact && with_key.is_err(),
        ));
    }
    for (what, ok) in &results {
        println!(
            "tamper: {what}: {}",
            if *ok { "detected" } else { "MISSED" }
        );
    }
    assert!(results.iter().all(|(_, ok)| *ok), "{results:?}");
    assert!(results.len() >= 18, "every case ran: {}", results.len());
}
