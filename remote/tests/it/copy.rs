//! Copies between a path and a URL, either way, checked as they stream.

use memimg::Image;
use memimg_remote::{copy, CopyOptions, ErrorKind, Location, S3Url};

use crate::support::{bucket_for, key, regions, url, write_image, Kind, Moto};

fn s3(u: &S3Url) -> Location {
    Location::S3(u.clone())
}

#[test]
fn copies_both_ways_are_byte_identical() {
    let test = "copies_both_ways_are_byte_identical";
    let Some(moto) = Moto::shared(test) else {
        return;
    };
    let bucket = bucket_for(test);
    moto.create_bucket(&bucket);
    let opts = moto.options();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("app.mimg");
    // Encrypted: the copy needs no key, the checksums are in clear.
    let bytes = write_image(Vec::new(), Kind::ZstdEncrypted, &regions(12 << 20, 8));
    std::fs::write(&src, &bytes).unwrap();
    let chunks = Image::from_bytes(bytes.clone(), None)
        .unwrap()
        .chunk_locs()
        .len() as u64;

    let up = url(&bucket, "up/app.mimg");
    let rep = copy(
        &Location::Local(src.clone()),
        &s3(&up),
        &opts,
        &CopyOptions::default(),
    )
    .unwrap();
    assert_eq!(
        (rep.bytes, rep.chunks_checked),
        (bytes.len() as u64, chunks)
    );
    assert_eq!(rep.uploaded.unwrap().bytes, bytes.len() as u64);
    assert!(
        moto.get(&bucket, "up/app.mimg").unwrap() == bytes,
        "local -> remote differs"
    );

    let other = url(&bucket, "other/app.mimg");
    let rep = copy(&s3(&up), &s3(&other), &opts, &CopyOptions::default()).unwrap();
    assert_eq!(rep.chunks_checked, chunks);
    assert!(
        moto.get(&bucket, "other/app.mimg").unwrap() == bytes,
        "remote -> remote differs"
    );

    let back = dir.path().join("back.mimg");
    let rep = copy(
        &s3(&other),
        &Location::Local(back.clone()),
        &opts,
        &CopyOptions::default(),
    )
    .unwrap();
    assert_eq!(rep.chunks_checked, chunks);
    let fetched = rep.fetched.unwrap();
    assert!(
        fetched.bytes_fetched < 2 * bytes.len() as u64,
        "{fetched:?}"
    );
    assert!(
        std::fs::read(&back).unwrap() == bytes,
        "remote -> local differs"
    );
    // It opens with the key, as the original does.
    Image::open_with_key(&back, Some(&key())).unwrap();
}

#[test]
fn a_damaged_source_leaves_nothing_at_the_destination() {
    let test = "a_damaged_source_leaves_nothing_at_the_destination";
    let Some(moto) = Moto::shared(test) else {
        return;
    };
    let bucket = bucket_for(test);
    moto.create_bucket(&bucket);
    let opts = moto.options();
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = write_image(Vec::new(), Kind::Zstd, &regions(12 << 20, 9));
    let img = Image::from_bytes(bytes.clone(), None).unwrap();
    let n = img.chunk_locs().len() - 2;
    let c = img.chunk_locs()[n];
    bytes[usize::try_from(c.offset).unwrap() + 5] ^= 1;
    let src = dir.path().join("bad.mimg");
    std::fs::write(&src, &bytes).unwrap();

    // Local -> remote: the upload is aborted.
    let dst = url(&bucket, "bad.mimg");
    let e = copy(
        &Location::Local(src.clone()),
        &s3(&dst),
        &opts,
        &CopyOptions::default(),
    )
    .unwrap_err();
    assert!(e.is_damage(), "{e}");
    let ie = e.image().unwrap();
    assert_eq!(ie.kind(), memimg::ErrorKind::Checksum);
    assert_eq!(ie.location().chunk, Some(n as u64));
    let msg = e.to_string();
    let start = format!(
        "{}: offset {:#x}, region 1, chunk {n}, address ",
        src.display(),
        c.offset
    );
    assert!(msg.starts_with(&start), "{msg}");
    assert!(
        msg.contains(": stored checksum mismatch (index says "),
        "{msg}"
    );
    assert_eq!(moto.keys(&bucket), Vec::<String>::new());
    assert_eq!(moto.open_uploads(&bucket), Vec::<String>::new());

    // Remote -> local: no file, and no temporary file, is left.
    moto.put(&bucket, "bad.mimg", &bytes);
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let e = copy(
        &s3(&dst),
        &Location::Local(out.join("x.mimg")),
        &opts,
        &CopyOptions::default(),
    )
    .unwrap_err();
    assert_eq!(e.image().unwrap().location().chunk, Some(n as u64), "{e}");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
}

#[test]
fn an_existing_destination_is_kept_unless_overwrite() {
    let test = "an_existing_destination_is_kept_unless_overwrite";
    let Some(moto) = Moto::shared(test) else {
        return;
    };
    let bucket = bucket_for(test);
    moto.create_bucket(&bucket);
    let opts = moto.options();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("a.mimg");
    let bytes = write_image(Vec::new(), Kind::Plain, &regions(1 << 20, 3));
    std::fs::write(&src, &bytes).unwrap();
    moto.put(&bucket, "a.mimg", b"old");
    let dst = url(&bucket, "a.mimg");
    let e = copy(
        &Location::Local(src.clone()),
        &s3(&dst),
        &opts,
        &CopyOptions::default(),
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    assert_eq!(moto.get(&bucket, "a.mimg").unwrap(), b"old");
    let local = dir.path().join("b.mimg");
    std::fs::write(&local, b"old").unwrap();
    let e = copy(
        &s3(&dst),
        &Location::Local(local.clone()),
        &opts,
        &CopyOptions::default(),
    )
    .unwrap_err();
    // The source is checked first: "old" is not an image.
    assert_eq!(
        e.image().map(memimg::Error::kind),
        Some(memimg::ErrorKind::NotAnImage),
        "{e}"
    );
    let o = CopyOptions {
        overwrite: true,
        ..CopyOptions::default()
    };
    copy(&Location::Local(src.clone()), &s3(&dst), &opts, &o).unwrap();
    assert!(moto.get(&bucket, "a.mimg").unwrap() == bytes);
    let e = copy(
        &s3(&dst),
        &Location::Local(local.clone()),
        &opts,
        &CopyOptions::default(),
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    assert_eq!(std::fs::read(&local).unwrap(), b"old");
    let e = copy(&s3(&dst), &s3(&dst), &opts, &o).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
}
