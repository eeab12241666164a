//! verify_remote: every stored byte once, in parallel ranged GETs, with the
//! report a local verify gives.

use std::sync::Arc;

use memimg::{Image, Status, VerifyOptions};
use memimg_remote::{verify_remote, FetchOptions, RemoteReader};

use crate::support::{bucket_for, key, regions, url, write_image, Kind, Moto};

#[test]
fn remote_verify_reports_what_a_local_verify_reports() {
    let test = "remote_verify_reports_what_a_local_verify_reports";
    let Some(moto) = Moto::shared(test) else {
        return;
    };
    let bucket = bucket_for(test);
    moto.create_bucket(&bucket);
    let s3 = moto.options();
    let fetch = FetchOptions {
        concurrency: 3,
        max_request: 1 << 20,
        merge_gap: 64 << 10,
    };
    for kind in [Kind::Zstd, Kind::ZstdEncrypted] {
        let good = write_image(Vec::new(), kind, &regions(8 << 20, 12));
        let img = Image::from_bytes(good.clone(), None).unwrap();
        let chunks = img.chunk_locs().to_vec();
        let stored: u64 = chunks.iter().map(|c| u64::from(c.stored_len)).sum();
        let k = matches!(kind, Kind::ZstdEncrypted).then(key);

        // Intact: every chunk checked, each stored byte fetched about once.
        let name = format!("{kind:?}-good");
        moto.put(&bucket, &name, &good);
        let r = Arc::new(RemoteReader::open(&url(&bucket, &name), &s3).unwrap());
        let rep = verify_remote(r.clone(), None, &VerifyOptions::default(), fetch);
        assert_eq!(rep.status(), Status::Intact, "{kind:?}: {:?}", rep.problems);
        assert_eq!(
            (rep.chunks_checked, rep.bytes_checked),
            (chunks.len() as u64, stored)
        );
        let st = r.stats();
        // At most the object once (header, chunks with their padding,
        // index, trailer), plus the two blocks opening reads around the
        // header and the trailer.
        let bound = good.len() as u64 + 2 * u64::from(memimg_remote::DEFAULT_BLOCK_SIZE);
        assert!(
            st.bytes_fetched >= stored && st.bytes_fetched <= bound,
            "{kind:?}: fetched {} for {stored} stored, object {}",
            st.bytes_fetched,
            good.len()
        );
        assert!(
            st.get_requests < 3 + stored / (1 << 20) + 2,
            "{kind:?}: {st:?}"
        );
        // Deep, with the key for the encrypted one.
        let deep = VerifyOptions {
            decode: true,
            ..VerifyOptions::default()
        };
        let r = Arc::new(RemoteReader::open(&url(&bucket, &name), &s3).unwrap());
        let rep = verify_remote(r, k.as_ref(), &deep, fetch);
        assert_eq!(
            rep.status(),
            Status::Intact,
            "{kind:?} deep: {:?}",
            rep.problems
        );
        assert_eq!(rep.chunks_decoded, chunks.len() as u64);

        // Two damaged chunks and, in the plain image (where raw chunks are
        // page-aligned after compressed ones), damaged padding: the same
        // problems as a local verify, in the same words.
        let mut bad = good.clone();
        for n in [1, chunks.len() - 1] {
            bad[usize::try_from(chunks[n].offset).unwrap() + 3] ^= 0x40;
        }
        let gap = chunks
            .windows(2)
            .find(|w| w[1].offset > w[0].offset + u64::from(w[0].stored_len));
        assert_eq!(
            gap.is_some(),
            matches!(kind, Kind::Zstd),
            "{kind:?}: padding"
        );
        if let Some(gap) = gap {
            bad[usize::try_from(gap[0].offset + u64::from(gap[0].stored_len)).unwrap()] = 1;
        }
        let name = format!("{kind:?}-bad");
        moto.put(&bucket, &name, &bad);
        let local = memimg::verify_bytes(bad.clone(), None, &VerifyOptions::default());
        assert!(local.problems.len() >= 2);
        let r = Arc::new(RemoteReader::open(&url(&bucket, &name), &s3).unwrap());
        let rep = verify_remote(r, None, &VerifyOptions::default(), fetch);
        assert_eq!(rep.status(), Status::Damaged);
        assert_eq!(rep.problems, local.problems, "{kind:?}");
        let local_deep = memimg::verify_bytes(bad.clone(), k.as_ref(), &deep);
        let r = Arc::new(RemoteReader::open(&url(&bucket, &name), &s3).unwrap());
        let rep = verify_remote(r, k.as_ref(), &deep, fetch);
        assert_eq!(rep.problems, local_deep.problems, "{kind:?} deep");

        // Damage found while opening is one problem; the verdict is the same.
        let mut head = good.clone();
        head[0x30] ^= 1;
        let name = format!("{kind:?}-head");
        moto.put(&bucket, &name, &head);
        let r = Arc::new(RemoteReader::open(&url(&bucket, &name), &s3).unwrap());
        let rep = verify_remote(r, None, &VerifyOptions::default(), fetch);
        assert_eq!(rep.status(), Status::Damaged);
        assert_eq!(
            memimg::verify_bytes(head, None, &VerifyOptions::default()).status(),
            Status::Damaged
        );
    }
}

/// An image laid out in load order (its chunks not in number order in the
/// file): the remote verify walks it in file order, finds it intact, and
/// names a damaged chunk as a local verify does.
#[test]
fn remote_verify_of_an_image_in_load_order() {
    let test = "remote_verify_of_an_image_in_load_order";
    let Some(moto) = Moto::shared(test) else {
        return;
    };
    let bucket = bucket_for(test);
    moto.create_bucket(&bucket);
    let s3 = moto.options();
    let fetch = FetchOptions {
        concurrency: 2,
        max_request: 256 << 10,
        merge_gap: 64 << 10,
    };
    let src = write_image(Vec::new(), Kind::Zstd, &regions(4 << 20, 7));
    let img = Image::from_bytes(src, None).unwrap();
    let n = img.chunk_locs().len() as u64;
    let p = memimg::Profile {
        image_id: img.header().image_id,
        chunks: (0..n).rev().step_by(3).collect(),
    };
    let (good, _) = memimg::relayout(&img, &p, Vec::new()).unwrap();
    let good_bytes = good.clone();
    moto.put(&bucket, "lo-good", &good);
    let r = Arc::new(RemoteReader::open(&url(&bucket, "lo-good"), &s3).unwrap());
    let rep = verify_remote(r, None, &VerifyOptions::default(), fetch);
    assert_eq!(rep.status(), Status::Intact, "{:?}", rep.problems);
    assert_eq!(rep.chunks_checked, n);
    let opt = Image::from_bytes(good.clone(), None).unwrap();
    let hit = p.chunks[1];
    let mut bad = good;
    let at = opt.chunk_locs()[usize::try_from(hit).unwrap()].offset;
    bad[usize::try_from(at).unwrap() + 3] ^= 0x40;
    moto.put(&bucket, "lo-bad", &bad);
    let r = Arc::new(RemoteReader::open(&url(&bucket, "lo-bad"), &s3).unwrap());
    let rep = verify_remote(r, None, &VerifyOptions::default(), fetch);
    let local = memimg::verify_bytes(bad, None, &VerifyOptions::default());
    assert_eq!(rep.status(), Status::Damaged);
    assert_eq!(
        rep.problems
            .iter()
            .map(|p| p.location.chunk)
            .collect::<Vec<_>>(),
        local
            .problems
            .iter()
            .map(|p| p.location.chunk)
            .collect::<Vec<_>>()
    );
    assert!(rep.problems.iter().any(|p| p.location.chunk == Some(hit)));
    // Its index came first (a relayout's default for a plain image): a
    // restore opens it without its trailer, but a verify reads the trailer,
    // and finds it damaged, where it is.
    assert!(opt.header().index_first.is_some());
    let mut bad = good_bytes;
    let t = bad.len() - 256;
    bad[t + 40] ^= 1; // the generation, under the trailer's checksum
    moto.put(&bucket, "lo-trailer", &bad);
    let r = Arc::new(RemoteReader::open(&url(&bucket, "lo-trailer"), &s3).unwrap());
    assert!(
        Image::from_read_at(r.clone(), None).is_ok(),
        "opened from the front"
    );
    let rep = verify_remote(r, None, &VerifyOptions::default(), fetch);
    assert_eq!(rep.status(), Status::Damaged, "{:?}", rep.problems);
    assert!(
        rep.problems
            .iter()
            .any(|p| p.location.offset.is_some_and(|o| o >= t as u64)),
        "{:?}",
        rep.problems
    );
}
