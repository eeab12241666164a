//! What reads cost: the requests and bytes of opening and reading an image,
//! the block cache, coalescing, and fetch_many.

use std::ops::Range;
use std::sync::Arc;

use memimg::{ExtentKind, Image, ReadAt};
use memimg_remote::{
    FetchOptions, ReaderOptions, RemoteReader, Store, UploadOptions, DEFAULT_BLOCK_SIZE,
};

use crate::support::{bucket_for, url, write_image, Kind, Moto, Rng};

#[test]
fn opening_a_large_image_fetches_only_its_ends() {
    let test = "opening_a_large_image_fetches_only_its_ends";
    let Some(moto) = Moto::shared(test) else {
        return;
    };
    let bucket = bucket_for(test);
    moto.create_bucket(&bucket);
    let s3 = moto.options();
    let u = url(&bucket, "big.mimg");
    // 72 MiB of memory, stored raw in 512 KiB chunks (one MiB in eight is
    // zero and not stored): a 64 MiB object.
    let dense = |len: usize, seed: u64| {
        let mut v = crate::support::content(len, seed);
        for (i, page) in v.chunks_mut(4096).enumerate() {
            if i % 256 >= 224 {
                page.fill(0);
            } else if page.iter().all(|&b| b == 0) {
                page.fill(0x5a);
            }
        }
        v
    };
    let regs = vec![
        (0x10_0000, dense(8 << 20, 5)),
        (0x4000_0000, dense(64 << 20, 6)),
    ];
    let store = Store::new(&bucket, &s3).unwrap();
    let w = store.writer(&u, UploadOptions::default()).unwrap();
    write_image(w, Kind::Plain, &regs).commit().unwrap();

    let r = Arc::new(store.reader(&u, ReaderOptions::default()).unwrap());
    let size = r.len();
    assert!(size > 60 << 20, "the object is {size} bytes");
    let img = Image::from_read_at(r.clone(), None).unwrap();
    let opened = r.stats();
    let page = img.header_bytes().len() as u64;
    let tail = size - img.trailer().index_offset; // index and trailer
    let block = u64::from(DEFAULT_BLOCK_SIZE);
    // The header page is one block; the block holding the trailer holds the
    // end of the index too, and the index is then fetched without it. So
    // opening fetches exactly the header page, the index and the trailer
    // (before the index read left out the cached end, it fetched that end
    // twice: 20,176 bytes here instead of 18,408).
    assert_eq!(page, block);
    assert!(tail > block, "the index and trailer are {tail} bytes");
    assert_eq!(opened.head_requests, 1);
    assert!(opened.get_requests <= 3, "{opened:?}");
    assert_eq!(
        opened.bytes_fetched,
        page + tail,
        "opening fetched {} bytes; header page + index + trailer = {}",
        opened.bytes_fetched,
        page + tail
    );
    // Regions, extents and chunk map come from the index: no more requests.
    let n_regions = img.regions().unwrap().len();
    assert_eq!(n_regions, 2);
    assert_eq!(r.stats(), opened);

    // 4096 bytes from the middle of a data extent: one chunk at most.
    let ext = *img
        .extents()
        .unwrap()
        .iter()
        .filter(|e| e.kind == ExtentKind::Data)
        .nth(40)
        .expect("a data extent");
    let chunk = img.chunk_locs()[usize::try_from(ext.chunk).unwrap()];
    let mut buf = vec![0u8; 4096];
    img.read_at(ext.addr, &mut buf).unwrap();
    let (base, data) = regs
        .iter()
        .find(|(a, d)| ext.addr >= *a && ext.addr < a + d.len() as u64)
        .unwrap();
    let off = usize::try_from(ext.addr - base).unwrap();
    assert!(buf == data[off..off + 4096]);
    let read = r.stats();
    assert_eq!(read.get_requests - opened.get_requests, 1, "{read:?}");
    // One chunk of 512 KiB, fetched exactly.
    let got = read.bytes_fetched - opened.bytes_fetched;
    assert_eq!(chunk.stored_len, 512 << 10);
    assert_eq!(
        got,
        u64::from(chunk.stored_len),
        "the read fetched {got} bytes"
    );
    assert!(
        read.bytes_fetched * 20 < size,
        "{} of {size} bytes fetched",
        read.bytes_fetched
    );
    eprintln!(
        "object {size} bytes; header page {page}, index and trailer {tail}; open fetched {} bytes in {} GETs; a 4096-byte read_at fetched {got} more (chunk {} bytes)",
        opened.bytes_fetched, opened.get_requests, chunk.stored_len
    );
}

/// Opening by the ends (as a restore from a URL opens): no HEAD, the tail
/// and the header page in two GETs made together, and the index from the
/// tail when it holds it, else in one more GET; the image is the same as
/// one opened with a HEAD, and reads after it cost what they cost then.
#[test]
fn opening_by_the_ends_costs_two_requests() {
    let test = "opening_by_the_ends_costs_two_requests";
    let Some(moto) = Moto::shared(test) else {
        return;
    };
    let bucket = bucket_for(test);
    moto.create_bucket(&bucket);
    let s3 = moto.options();
    let u = url(&bucket, "ends.mimg");
    let regs = vec![
        (0x10_0000, crate::support::content(3 << 20, 7)),
        (0x4000_0000, crate::support::content(5 << 20, 8)),
    ];
    let store = Store::new(&bucket, &s3).unwrap();
    let w = store.writer(&u, UploadOptions::default()).unwrap();
    write_image(w, Kind::Plain, &regs).commit().unwrap();
    let head = Arc::new(store.reader(&u, ReaderOptions::default()).unwrap());
    let want = Image::from_read_at(head.clone(), None).unwrap();
    let size = head.len();
    let index_and_trailer = size - want.trailer().index_offset;
    assert!(want.trailer().index_len > 256, "{:?}", want.trailer());
    // The trailer is read with the 256 bytes before it: a tail of 512
    // bytes holds that read, not the whole index.
    for (tail, gets) in [(256 << 10, 2), (index_and_trailer, 2), (512, 3)] {
        let r = Arc::new(
            store
                .reader_by_ends(&u, ReaderOptions::default(), 4096, tail)
                .unwrap(),
        );
        assert_eq!(r.len(), size);
        assert_eq!(r.e_tag(), head.e_tag());
        let img = Image::from_read_at(r.clone(), None).unwrap();
        let st = r.stats();
        assert_eq!(st.head_requests, 0, "tail {tail}: {st:?}");
        assert_eq!(st.get_requests, gets, "tail {tail}: {st:?}");
        assert_eq!(img.header_bytes(), want.header_bytes());
        assert_eq!(img.trailer().index_checksum, want.trailer().index_checksum);
        assert_eq!(img.regions().unwrap(), want.regions().unwrap());
        // Every byte of the memory reads back.
        for (addr, data) in &regs {
            let mut b = vec![0u8; data.len()];
            img.read_at(*addr, &mut b).unwrap();
            assert!(b == *data, "tail {tail}: region {addr:#x}");
        }
    }
    // An object shorter than the head asked for: all of it in one GET.
    let small = url(&bucket, "small.bin");
    moto.put(&bucket, "small.bin", &[7u8; 3000]);
    let r = store
        .reader_by_ends(&small, ReaderOptions::default(), 4096, 256 << 10)
        .unwrap();
    assert_eq!(r.len(), 3000);
    let mut b = [0u8; 100];
    r.read_exact_at(&mut b, 2900).unwrap();
    assert_eq!(b, [7u8; 100]);
    // The head held the whole object: no second GET for its end.
    assert_eq!(r.stats().bytes_fetched, 3000, "all of it, once");
    assert_eq!(r.stats().get_requests, 1, "{:?}", r.stats());
    // A missing key is named as with a HEAD.
    let e = store
        .reader_by_ends(&url(&bucket, "nope"), ReaderOptions::default(), 4096, 1024)
        .unwrap_err();
    assert_eq!(e.kind(), memimg_remote::ErrorKind::NoSuchKey, "{e}");
}

/// A plain object of `len` pseudo-random bytes, put past the code under test.
fn object(moto: &Moto, bucket: &str, key: &str, len: usize) -> Vec<u8> {
    moto.create_bucket(bucket);
    let mut data = vec![0u8; len];
    Rng::new(3).fill(&mut data);
    moto.put(bucket, key, &data);
    data
}

#[test]
fn the_cache_serves_repeats_and_missing_blocks_are_fetched_together() {
    let test = "the_cache_serves_repeats_and_missing_blocks_are_fetched_together";
    let Some(moto) = Moto::shared(test) else {
        return;
    };
    let bucket = bucket_for(test);
    let data = object(moto, &bucket, "obj", 1 << 20);
    let s3 = moto.options();
    let bs = 16usize << 10;
    let opts = ReaderOptions {
        block_size: u32::try_from(bs).unwrap(),
        cache_bytes: 4 * bs,
        ..ReaderOptions::default()
    };
    let r = Store::new(&bucket, &s3)
        .unwrap()
        .reader(&url(&bucket, "obj"), opts)
        .unwrap();
    assert_eq!(r.len(), data.len() as u64);
    let read = |off: usize, len: usize| {
        let mut b = vec![0u8; len];
        r.read_exact_at(&mut b, off as u64).unwrap();
        assert!(b == data[off..off + len], "bytes at {off:#x}+{len} differ");
    };
    read(0, 100);
    let s = r.stats();
    assert_eq!(
        (s.get_requests, s.bytes_fetched),
        (1, bs as u64),
        "one block fetched: {s:?}"
    );
    read(200, 100);
    let s = r.stats();
    assert_eq!(
        (s.get_requests, s.cache_hits),
        (1, 1),
        "served from the cache: {s:?}"
    );
    // Blocks 0 (cached), 1 and 2 (missing, adjacent): one GET of two blocks.
    read(bs - 10, bs + 20);
    let s = r.stats();
    assert_eq!(
        (s.get_requests, s.bytes_fetched),
        (2, 3 * bs as u64),
        "{s:?}"
    );
    // Block 6 cached, 5 and 7 missing: two GETs (not adjacent), made at once.
    read(6 * bs, 10);
    read(6 * bs - 5, bs + 10);
    let s = r.stats();
    assert_eq!(
        (s.get_requests, s.bytes_fetched),
        (5, 6 * bs as u64),
        "{s:?}"
    );
    // A read of two blocks or more is fetched exactly, and kept by its
    // exact range: the same read again is a hit, an overlapping one is not.
    read(40 * bs + 3, 2 * bs);
    let s = r.stats();
    assert_eq!(
        (s.get_requests, s.bytes_fetched),
        (6, 8 * bs as u64),
        "{s:?}"
    );
    read(40 * bs + 3, 2 * bs);
    assert_eq!(r.stats().get_requests, 6);
    read(40 * bs + 4, 2 * bs);
    assert_eq!(r.stats().get_requests, 7);
    // The cache stays within its bound.
    for i in 10..30 {
        read(i * bs, 1);
    }
    assert!(
        r.cached_bytes() <= 8 * bs,
        "{} bytes cached",
        r.cached_bytes()
    );
    // The last block of the object is shorter when the size is not a
    // multiple of the block size; reads past the end are errors.
    let mut b = [0u8; 2];
    assert!(r.read_exact_at(&mut b, data.len() as u64 - 1).is_err());
    read(data.len() - 1, 1);
    // A large read whose ends lie in cached blocks fetches only the middle
    // (opening an image reads the trailer's block, which holds the end of
    // the index, before the index); one the cached blocks hold whole
    // fetches nothing.
    read(50 * bs, 1);
    read(53 * bs, 1);
    let before = r.stats();
    read(50 * bs + 7, 3 * bs + 2);
    let s = r.stats();
    assert_eq!(
        (
            s.get_requests - before.get_requests,
            s.bytes_fetched - before.bytes_fetched
        ),
        (1, 2 * bs as u64),
        "only blocks 51 and 52 fetched: {s:?}"
    );
    read(60 * bs, 1);
    read(61 * bs, 1);
    let before = r.stats();
    read(60 * bs, 2 * bs);
    assert_eq!(r.stats().get_requests, before.get_requests, "all cached");
}

#[test]
fn fetch_many_merges_neighbours_and_delivers_in_order() {
    let test = "fetch_many_merges_neighbours_and_delivers_in_order";
    let Some(moto) = Moto::shared(test) else {
        return;
    };
    let bucket = bucket_for(test);
    let data = object(moto, &bucket, "obj", 3 << 20);
    let s3 = moto.options();
    let r = RemoteReader::open(&url(&bucket, "obj"), &s3).unwrap();
    let mib = 1u64 << 20;
    let ranges: Vec<Range<u64>> = vec![
        0..100,
        100..5000,        // adjacent: same request
        10_000..10_000,   // empty: no request
        2 * mib..3 * mib, // far: a request of its own
        50..60,           // backwards: a request of its own
        3 * mib - 1..3 * mib,
    ];
    let opts = FetchOptions {
        concurrency: 2,
        max_request: mib,
        merge_gap: 0,
    };
    let mut seen = Vec::new();
    r.fetch_many(&ranges, opts, |i, bytes| {
        let rg = &ranges[i];
        assert!(
            bytes == &data[usize::try_from(rg.start).unwrap()..usize::try_from(rg.end).unwrap()],
            "range {i} differs"
        );
        // The callback may use the crate itself: it runs outside the runtime.
        let mut b = [0u8; 8];
        r.read_exact_at(&mut b, 8).unwrap();
        seen.push(i);
        Ok::<(), memimg_remote::Error>(())
    })
    .unwrap();
    assert_eq!(
        seen,
        (0..ranges.len()).collect::<Vec<_>>(),
        "in the order given"
    );
    // 0..100 and 100..5000 in one; 2..3 MiB; 50..60; the last byte (3 MiB is
    // over max_request with the range before it); plus the cache's block.
    let s = r.stats();
    assert_eq!(s.get_requests, 5, "{s:?}");

    // An error from the callback stops it and is returned.
    let mut calls = 0;
    let e = r
        .fetch_many(&ranges, opts, |i, _| {
            calls += 1;
            if i == 1 {
                Err(memimg_remote::Error::new(
                    memimg_remote::ErrorKind::Io,
                    None,
                    "stop here",
                ))
            } else {
                Ok(())
            }
        })
        .unwrap_err();
    assert_eq!(e.message(), "stop here");
    assert_eq!(calls, 2);
}

/// A reader opened by its ends with a large head serves the start of the
/// object from it: a large read it holds makes no request, and one that
/// runs past its end fetches only the rest, with one GET.
#[test]
fn a_large_head_serves_the_start_and_a_read_past_it_fetches_the_rest() {
    let test = "a_large_head_serves_the_start_and_a_read_past_it_fetches_the_rest";
    let Some(moto) = Moto::shared(test) else {
        return;
    };
    let bucket = bucket_for(test);
    let data = object(moto, &bucket, "obj.bin", 3 << 20);
    let store = Store::new(&bucket, &moto.options()).unwrap();
    let head: u64 = 1 << 20;
    let r = store
        .reader_by_ends(
            &url(&bucket, "obj.bin"),
            ReaderOptions::default(),
            head,
            4096,
        )
        .unwrap();
    let opened = r.stats();
    assert_eq!(opened.get_requests, 2, "{opened:?}");
    assert_eq!(opened.bytes_fetched, head + 4096, "{opened:?}");
    // Held: 512 KiB from 4096, as a working set right after the header.
    let mut b = vec![0u8; 512 << 10];
    r.read_exact_at(&mut b, 4096).unwrap();
    assert!(b == data[4096..4096 + (512 << 10)]);
    assert_eq!(r.stats().get_requests, 2, "{:?}", r.stats());
    assert_eq!(r.stats().bytes_fetched, opened.bytes_fetched);
    // Past the head's end: one GET of the 256 KiB that it does not hold.
    let at = (1 << 20) - (256 << 10);
    let mut b = vec![0u8; 512 << 10];
    r.read_exact_at(&mut b, at as u64).unwrap();
    assert!(b == data[at..at + (512 << 10)]);
    let st = r.stats();
    assert_eq!(st.get_requests, 3, "{st:?}");
    assert_eq!(
        st.bytes_fetched,
        opened.bytes_fetched + (256 << 10),
        "{st:?}"
    );
    // Reaching into the tail from before it: the tail's part is not
    // fetched again.
    let at = data.len() - 4096 - (64 << 10);
    let mut b = vec![0u8; (64 << 10) + 4096];
    r.read_exact_at(&mut b, at as u64).unwrap();
    assert!(b == data[at..]);
    let st2 = r.stats();
    assert_eq!(st2.get_requests, 4, "{st2:?}");
    assert_eq!(st2.bytes_fetched, st.bytes_fetched + (64 << 10), "{st2:?}");
}
