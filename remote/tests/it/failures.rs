//! Missing buckets and keys, refused credentials, an unreachable or dying
//! server, a replaced object, and damaged objects: each a typed error.

use std::sync::Arc;
use std::time::{Duration, Instant};

use memimg::{Image, ReadAt};
use memimg_remote::{
    open_image, ErrorKind, Location, ReaderOptions, RemoteReader, RemoteWriter, S3Options, Store,
    UploadOptions,
};

use crate::support::{bucket_for, free_port, key, regions, url, write_image, Kind, Moto};

#[test]
fn a_missing_bucket_or_key_is_named() {
    let test = "a_missing_bucket_or_key_is_named";
    let Some(moto) = Moto::shared(test) else {
        return;
    };
    let bucket = bucket_for(test);
    moto.create_bucket(&bucket);
    let s3 = moto.options();

    let nb = url("no-such-bucket-here", "k");
    let e = RemoteReader::open(&nb, &s3).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoSuchBucket, "{e}");
    assert_eq!(
        e.to_string(),
        "s3://no-such-bucket-here/k: the bucket does not exist"
    );
    let e = RemoteWriter::create(&nb, &s3, UploadOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoSuchBucket, "{e}");
    let e = Store::new(&nb.bucket, &s3)
        .unwrap()
        .exists(&nb)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoSuchBucket, "{e}");
    let e = open_image(&Location::S3(nb), None, &s3).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoSuchBucket, "{e}");

    let nk = url(&bucket, "dir/missing.mimg");
    let e = RemoteReader::open(&nk, &s3).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoSuchKey, "{e}");
    assert_eq!(
        e.to_string(),
        format!("s3://{bucket}/dir/missing.mimg: no object has this key")
    );
    assert!(!Store::new(&bucket, &s3).unwrap().exists(&nk).unwrap());
    // The control: once it exists, it opens.
    moto.put(&bucket, "dir/missing.mimg", b"hello");
    assert_eq!(RemoteReader::open(&nk, &s3).unwrap().len(), 5);
    assert!(Store::new(&bucket, &s3).unwrap().exists(&nk).unwrap());
}

#[test]
fn wrong_credentials_are_refused_clearly() {
    let test = "wrong_credentials_are_refused_clearly";
    let bucket = bucket_for(test);
    let Some(moto) = Moto::start_with_auth(test, &bucket) else {
        return;
    };
    let good = moto.options();
    let u = url(&bucket, "img");
    // The control: the right key writes and reads.
    let w = RemoteWriter::create(&u, &good, UploadOptions::default()).unwrap();
    write_image(w, Kind::Zstd, &regions(1 << 20, 1))
        .commit()
        .unwrap();
    let img = open_image(&Location::S3(u.clone()), None, &good).unwrap();
    assert_eq!(img.regions().unwrap().len(), 2);

    let base = || {
        S3Options::default()
            .with_endpoint(&moto.endpoint)
            .with_retries(1)
            .with_retry_timeout(Duration::from_secs(3))
    };
    for (opts, code) in [
        (
            base().with_credentials("AKIANOSUCHKEY0000000", &moto.secret),
            "InvalidAccessKeyId",
        ),
        (
            base().with_credentials(&moto.key_id, "not-the-secret"),
            "SignatureDoesNotMatch",
        ),
    ] {
        let e = RemoteReader::open(&u, &opts).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AccessDenied, "{e}");
        let msg = e.to_string();
        assert!(msg.starts_with(&format!("{u}: ")), "{msg}");
        assert!(
            msg.contains("refused the credentials") && msg.contains(code),
            "{msg}"
        );
        assert!(
            !msg.contains("not-the-secret"),
            "the secret is never printed: {msg}"
        );
        let e = RemoteWriter::create(&url(&bucket, "new"), &opts, UploadOptions::default())
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AccessDenied, "{e}");
    }
}

#[test]
fn an_unreachable_server_is_a_network_error_after_bounded_retries() {
    let test = "an_unreachable_server_is_a_network_error_after_bounded_retries";
    // Nothing listens on this port: connections are refused at once.
    let s3 = S3Options::default()
        .with_endpoint(format!("http://127.0.0.1:{}", free_port()))
        .with_credentials("testing", "testing")
        .with_retries(2);
    let t = Instant::now();
    let e = RemoteReader::open(&url("some-bucket", "k"), &s3).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Network, "{test}: {e}");
    assert!(e.to_string().contains("after 2 retries"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
}

/// Retries are made: a store that starts listening while the client backs
/// off is reached (its answer, a missing bucket, shows the request got
/// through), where without retries the same request fails at once.
#[test]
fn a_store_that_comes_up_during_the_retries_is_reached() {
    let test = "a_store_that_comes_up_during_the_retries_is_reached";
    let port = free_port();
    let s3 = |retries| {
        S3Options::default()
            .with_endpoint(format!("http://127.0.0.1:{port}"))
            .with_credentials("testing", "testing")
            .with_retries(retries)
            .with_retry_timeout(Duration::from_secs(120))
    };
    let u = url("not-created-yet", "k");
    let e = RemoteReader::open(&u, &s3(0)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Network, "{e}");
    // moto takes seconds to start listening; the client backs off from
    // 100 ms, doubling up to 2 s between tries.
    let Some(_moto) = Moto::start_at(test, port) else {
        return;
    };
    let e = RemoteReader::open(&u, &s3(60)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoSuchBucket, "{e}");
}

#[test]
fn the_server_killed_during_reads() {
    let test = "the_server_killed_during_reads";
    let Some(mut moto) = Moto::start(test) else {
        return;
    };
    let bucket = bucket_for(test);
    moto.create_bucket(&bucket);
    let s3 = moto.options();
    let u = url(&bucket, "img");
    let w = RemoteWriter::create(&u, &s3, UploadOptions::default()).unwrap();
    let regs = regions(4 << 20, 2);
    write_image(w, Kind::Zstd, &regs).commit().unwrap();
    let img = open_image(&Location::S3(u), None, &s3).unwrap();
    moto.kill();
    let t = Instant::now();
    let mut buf = vec![0u8; 1 << 20];
    let e = img.read_at(regs[1].0, &mut buf).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    let cause = memimg_remote::Error::find(&e).expect("the remote cause is kept");
    assert_eq!(cause.kind(), ErrorKind::Network, "{e}");
    assert!(!e.is_damage(), "a network failure is not damage: {e}");
}

#[test]
fn an_object_replaced_while_read_is_detected() {
    let test = "an_object_replaced_while_read_is_detected";
    let Some(moto) = Moto::shared(test) else {
        return;
    };
    let bucket = bucket_for(test);
    moto.create_bucket(&bucket);
    moto.put(&bucket, "obj", &vec![1u8; 1 << 20]);
    let r = RemoteReader::open(&url(&bucket, "obj"), &moto.options()).unwrap();
    let mut b = [0u8; 16];
    r.read_exact_at(&mut b, 0).unwrap();
    moto.put(&bucket, "obj", &vec![2u8; 1 << 20]);
    // Block 0 is cached; a read beyond it goes to the store.
    let e = r.read_exact_at(&mut b, 900 << 10).unwrap_err();
    let cause = memimg_remote::Error::find(&e).expect("typed");
    assert_eq!(cause.kind(), ErrorKind::Changed, "{e}");

    // Replaced between the HEAD and the first GET of an open: the image
    // error carries the remote cause's kind, and says each thing once.
    let u = url(&bucket, "obj");
    let r = Arc::new(RemoteReader::open(&u, &moto.options()).unwrap());
    moto.put(&bucket, "obj", &vec![3u8; 1 << 20]);
    let e = Image::from_read_at(r, None).unwrap_err();
    let e = memimg_remote::Error::from_memimg(&u.to_string(), e);
    assert_eq!(e.kind(), ErrorKind::Changed, "{e}");
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!("{u}: reading header at 0x0: reading bytes 0x0..")),
        "{msg}"
    );
    assert_eq!(msg.matches(&u.to_string()).count(), 1, "{msg}");
    assert_eq!(msg.matches("changed").count(), 1, "{msg}");
}

/// Damaged and truncated objects give the error a local file gives: the same
/// kind, location and message, on opening and on reading.
#[test]
fn damaged_objects_fail_like_local_files() {
    let test = "damaged_objects_fail_like_local_files";
    let Some(moto) = Moto::shared(test) else {
        return;
    };
    let bucket = bucket_for(test);
    moto.create_bucket(&bucket);
    let s3 = moto.options();
    for kind in [Kind::Plain, Kind::ZstdEncrypted] {
        let regs = regions(1 << 20, 4);
        let good = write_image(Vec::new(), kind, &regs);
        let k = matches!(kind, Kind::ZstdEncrypted).then(key);
        let img = Image::from_bytes(good.clone(), k.as_ref()).unwrap();
        let chunk = img.chunk_locs()[1];
        let len = good.len();
        let page = img.header_bytes().len();
        let index = usize::try_from(img.trailer().index_offset).unwrap();
        let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
        for cut in [
            0,
            1,
            100,
            page - 1,
            page,
            page + 1,
            len / 2,
            index + 3,
            len - 257,
            len - 256,
            len - 1,
        ] {
            cases.push((format!("truncated to {cut}"), good[..cut].to_vec()));
        }
        for (what, off) in [
            ("header", 0x30),
            ("chunk 1", usize::try_from(chunk.offset).unwrap() + 7),
            ("index", index + 70),
            ("trailer", len - 100),
        ] {
            let mut b = good.clone();
            b[off] ^= 0x10;
            cases.push((format!("bit flipped in the {what}"), b));
        }
        let mut damaged = 0;
        for (i, (what, bytes)) in cases.into_iter().enumerate() {
            let key_name = format!("{kind:?}-{i}");
            moto.put(&bucket, &key_name, &bytes);
            let local = Image::from_bytes(bytes.clone(), k.as_ref());
            // Opened by its ends, as a restore opens it: the same result.
            let ends = Store::new(&bucket, &s3)
                .unwrap()
                .reader_by_ends(
                    &url(&bucket, &key_name),
                    ReaderOptions::default(),
                    4096,
                    2048,
                )
                .unwrap_or_else(|e| panic!("{kind:?} {what}: opening by the ends: {e}"));
            let by_ends = Image::from_read_at(Arc::new(ends), k.as_ref());
            let said = |r: &memimg::Result<Image>| {
                r.as_ref()
                    .err()
                    .map(|e| (e.kind(), e.location(), e.message().to_string()))
            };
            assert_eq!(said(&by_ends), said(&local), "{kind:?} {what}: by the ends");
            let remote = open_image(&Location::S3(url(&bucket, &key_name)), k.as_ref(), &s3);
            let (l, r) = match (local, remote) {
                (Err(l), Err(r)) => {
                    let ri = r
                        .image()
                        .unwrap_or_else(|| panic!("{kind:?} {what}: not an image error: {r}"));
                    assert_eq!(
                        (ri.kind(), ri.location(), ri.message()),
                        (l.kind(), l.location(), l.message()),
                        "{kind:?} {what}"
                    );
                    assert_eq!(r.is_damage(), l.is_damage());
                    damaged += 1;
                    continue;
                }
                (Ok(l), Ok(r)) => (l, r),
                (l, r) => panic!("{kind:?} {what}: local {:?}, remote {:?}", l.err(), r.err()),
            };
            // Opened both ways (damage in a chunk): reading it fails the same.
            for (addr, data) in &regs {
                let mut lb = vec![0u8; data.len()];
                let mut rb = vec![0u8; data.len()];
                let le = l
                    .read_at(*addr, &mut lb)
                    .err()
                    .map(|e| (e.kind(), e.location(), e.to_string()));
                let re = r
                    .read_at(*addr, &mut rb)
                    .err()
                    .map(|e| (e.kind(), e.location(), e.to_string()));
                assert_eq!(le, re, "{kind:?} {what}: region {addr:#x}");
                if le.is_some() {
                    damaged += 1;
                }
            }
            let lv = l.verify(&Default::default());
            let rv = r.verify(&Default::default());
            assert_eq!(lv.problems, rv.problems, "{kind:?} {what}: verify");
        }
        assert_eq!(damaged, 15, "{kind:?}: every case failed somewhere");
    }
    // The reader reached through an Arc works the same as open_image.
    let r = Arc::new(RemoteReader::open(&url(&bucket, "Plain-0"), &s3).unwrap());
    let e = Image::from_read_at(r, None).unwrap_err();
    assert_eq!(e.kind(), memimg::ErrorKind::NotAnImage);
}

/// A trailer that claims an index longer than the object (a hostile or
/// damaged object) is refused before the index is fetched, opened either
/// way: a typed error (`Malformed`, at the trailer, saying where the index
/// would lie), no allocation of the claimed size, and nothing fetched but
/// the object's ends.
#[test]
fn a_hostile_index_length_is_refused_before_it_is_fetched() {
    use xxhash_rust::xxh3::xxh3_64;
    let test = "a_hostile_index_length_is_refused_before_it_is_fetched";
    let Some(moto) = Moto::shared(test) else {
        return;
    };
    let bucket = bucket_for(test);
    moto.create_bucket(&bucket);
    let s3 = moto.options();
    let store = Store::new(&bucket, &s3).unwrap();
    let good = write_image(Vec::new(), Kind::Plain, &regions(1 << 20, 9));
    let img = Image::from_bytes(good.clone(), None).unwrap();
    let t = usize::try_from(img.trailer().offset).unwrap();
    let size = good.len() as u64;
    assert_eq!(t + 256, good.len());
    for claim in [size, size + 1, 1 << 40, u64::MAX / 2, u64::MAX] {
        let mut b = good.clone();
        // index_len at +24; the trailer's checksum (its last 8 bytes) made
        // to match, so that only the claim is wrong.
        b[t + 24..t + 32].copy_from_slice(&claim.to_le_bytes());
        let sum = xxh3_64(&b[t..t + 248]);
        b[t + 248..t + 256].copy_from_slice(&sum.to_le_bytes());
        let name = format!("hostile-{claim}");
        moto.put(&bucket, &name, &b);
        let u = url(&bucket, &name);
        let local = Image::from_bytes(b.clone(), None)
            .err()
            .map(|e| e.to_string());
        let head = Arc::new(store.reader(&u, ReaderOptions::default()).unwrap());
        let ends = Arc::new(
            store
                .reader_by_ends(&u, ReaderOptions::default(), 4096, 2048)
                .unwrap(),
        );
        for (how, r) in [("with a HEAD", head), ("by its ends", ends)] {
            let e = Image::from_read_at(r.clone(), None).unwrap_err();
            assert_eq!(
                e.kind(),
                memimg::ErrorKind::Malformed,
                "{how}, {claim}: {e}"
            );
            assert!(e.message().contains("index"), "{how}, {claim}: {e}");
            assert_eq!(
                Some(e.to_string()),
                local,
                "{how}, {claim}: as a local file"
            );
            let st = r.stats();
            // The header page and the trailer's blocks, or the two ends.
            assert!(st.get_requests <= 2, "{how}, {claim}: {st:?}");
            assert!(
                st.bytes_fetched <= 4096 + 2 * 4096,
                "{how}, {claim}: {st:?}"
            );
            // open_image says the same, typed as damage of the image.
            let re = open_image(&Location::S3(u.clone()), None, &s3).unwrap_err();
            assert_eq!(re.kind(), ErrorKind::Image, "{re}");
            assert_eq!(
                re.image().map(memimg::Error::kind),
                Some(memimg::ErrorKind::Malformed)
            );
        }
    }
}
