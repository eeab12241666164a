//! Images written straight into an upload and read back through ranged GETs.

use std::sync::Arc;

use memimg::Image;
use memimg_remote::{
    copy, open_image, CopyOptions, Location, RemoteReader, RemoteWriter, UploadOptions,
    MIN_PART_SIZE,
};

use crate::support::{bucket_for, key, regions, url, write_image, Kind, Moto};

fn roundtrip(test: &str, kind: Kind) {
    let Some(moto) = Moto::shared(test) else {
        return;
    };
    let bucket = bucket_for(test);
    moto.create_bucket(&bucket);
    let s3 = moto.options();
    let u = url(&bucket, "dir/app.mimg");
    // 24 MiB of memory: even compressed, more than one 5 MiB part.
    let regs = regions(24 << 20, 11);
    let opts = UploadOptions {
        part_size: MIN_PART_SIZE,
        parts_in_flight: 2,
    };
    let w = RemoteWriter::create(&u, &s3, opts).unwrap();
    let w = write_image(w, kind, &regs);
    let sent = w.stats();
    assert!(
        moto.keys(&bucket).is_empty(),
        "nothing is visible before the commit"
    );
    let done = w.commit().unwrap();
    // The last part leaves at the commit.
    assert!(
        done.stats.parts >= 2,
        "{kind:?}: the image went up in {} parts",
        done.stats.parts
    );
    assert_eq!(
        (done.stats.parts, done.stats.bytes),
        (sent.parts + 1, sent.bytes)
    );

    // The object is what was written, byte for byte.
    let object = moto
        .get(&bucket, "dir/app.mimg")
        .expect("the object exists");
    assert_eq!(object.len() as u64, sent.bytes);
    let k = matches!(kind, Kind::ZstdEncrypted).then(key);

    // Read back through ranged GETs: every region's content is the input.
    let img = open_image(&Location::S3(u.clone()), k.as_ref(), &s3).unwrap();
    assert_eq!(img.file_len(), object.len() as u64);
    for (addr, data) in &regs {
        let mut buf = vec![0u8; data.len()];
        img.read_at(*addr, &mut buf).unwrap();
        assert!(
            buf == *data,
            "{kind:?}: region at {addr:#x} reads back different"
        );
    }
    // And it is the same image a local reader sees.
    let local = Image::from_bytes(object.clone(), k.as_ref()).unwrap();
    assert_eq!(local.header_bytes(), img.header_bytes());
    assert_eq!(local.chunk_locs(), img.chunk_locs());

    // A download is byte-identical.
    let dir = tempfile::tempdir().unwrap();
    let back = dir.path().join("back.mimg");
    let rep = copy(
        &Location::S3(u.clone()),
        &Location::Local(back.clone()),
        &s3,
        &CopyOptions::default(),
    )
    .unwrap();
    assert_eq!(rep.chunks_checked, img.chunk_locs().len() as u64);
    assert!(
        std::fs::read(&back).unwrap() == object,
        "{kind:?}: the download differs"
    );

    // Two opens on one reader: the second is served from its cache.
    let r = Arc::new(RemoteReader::open(&u, &s3).unwrap());
    Image::from_read_at(r.clone(), None).unwrap();
    let first = r.stats();
    Image::from_read_at(r.clone(), k.as_ref()).unwrap();
    assert_eq!(
        r.stats().get_requests,
        first.get_requests,
        "{kind:?}: the second open made requests"
    );
}

#[test]
fn roundtrip_plain() {
    roundtrip("roundtrip_plain", Kind::Plain);
}

#[test]
fn roundtrip_zstd() {
    roundtrip("roundtrip_zstd", Kind::Zstd);
}

#[test]
fn roundtrip_zstd_encrypted() {
    roundtrip("roundtrip_zstd_encrypted", Kind::ZstdEncrypted);
}
