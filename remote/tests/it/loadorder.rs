//! Load order from the store (issue 13): a lazy restore from a URL of an
//! image laid out by its recorded profile fetches the working set with one
//! ranged GET before it returns, so the startup's lookups wait on no fault
//! and make no request; the same restore of the plain image makes one per
//! chunk touched. The arena is the arena example's
//! (capture/examples/shared/arena.rs); restores run in child processes
//! (this binary again, `startup_child`), so the arena's address is free and
//! the process's request counters are the restore's reader's alone.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use memimg::{Codec, Image, Profile};
use memimg_capture::{restore_from, RemoteOptions, RestoreOptions, Strategy};
use memimg_remote::{copy, CopyOptions, Location, ReaderOptions, S3Options, Store};

use crate::support::{bucket_for, skip, url, Moto};

#[path = "../../../capture/examples/shared/arena.rs"]
mod arena;

/// Keys in the arena: 26 MiB of memory (4 MiB of buckets, then the
/// nodes), about 420 chunks of 64 KiB, an image of several MiB.
const N: u64 = 400_000;
/// Keys the startup looks up: a chunk of buckets and one or two of nodes
/// each, a few percent of the chunks.
const K: u64 = 10;
const CHILD: &str = "MEMIMG_LOADORDER_CHILD";
const ENDPOINT: &str = "MEMIMG_LOADORDER_ENDPOINT";

/// Not a test on its own: the child's side of the tests below (it returns
/// at once unless `MEMIMG_LOADORDER_CHILD` says what to do). `record:IMG:PROFILE`
/// restores the local IMG lazily while recording, looks the sample up and
/// writes the profile; `s3:URL` restores URL lazily from the store at
/// `MEMIMG_LOADORDER_ENDPOINT` and looks the sample up. Prints `STARTUP`
/// with the GETs made when the restore returned and after the lookups, the
/// faults that waited and the working set's reads.
#[test]
fn startup_child() {
    let Ok(role) = std::env::var(CHILD) else {
        return;
    };
    let (what, rest) = role.split_once(':').unwrap();
    let (loc, remote, profile) = match what {
        "record" => {
            let (img, prof) = rest.split_once(':').unwrap();
            (
                Location::Local(img.into()),
                RemoteOptions::default(),
                Some(prof.to_string()),
            )
        }
        _ => {
            let s3 = S3Options::default()
                .with_endpoint(std::env::var(ENDPOINT).unwrap())
                .with_region("us-east-1")
                .with_credentials("testing", "testing")
                .with_request_timeout(Duration::from_secs(180));
            let remote = RemoteOptions {
                s3,
                ..RemoteOptions::default()
            };
            (rest.parse().unwrap(), remote, None)
        }
    };
    let r = restore_from(
        &loc,
        &remote,
        &RestoreOptions {
            strategy: Strategy::Lazy,
            record_profile: profile.as_ref().map(|_| Duration::from_secs(600)),
            ..RestoreOptions::default()
        },
    )
    .unwrap();
    let at_return = memimg_remote::global_stats().get_requests;
    let mut k = String::new();
    for i in arena::sample(N, K) {
        // Panics on a missing key or a wrong value.
        arena::lookup(i, &mut k);
    }
    let end = memimg_remote::global_stats().get_requests;
    let lazy = r.lazy.as_ref().unwrap();
    let st = lazy.stats();
    if let Some(p) = &profile {
        lazy.profile_ready();
        lazy.profile().unwrap().write(Path::new(p)).unwrap();
    }
    println!(
        "STARTUP {at_return} {end} {} {} {}",
        st.faults_waited, st.working_set_reads, st.faults
    );
}

/// Runs `startup_child` with `role`; its `STARTUP` figures.
fn child(role: &str, endpoint: &str) -> [u64; 5] {
    let mut c = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "loadorder::startup_child",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env(CHILD, role)
        .env(ENDPOINT, endpoint)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut so = c.stdout.take().unwrap();
    let mut se = c.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let t = Instant::now();
    let status = loop {
        if let Some(s) = c.try_wait().unwrap() {
            break Some(s);
        }
        if t.elapsed() > Duration::from_secs(300) {
            let _ = c.kill();
            let _ = c.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    assert!(
        status.is_some_and(|s| s.success()),
        "the {role} child failed ({status:?}):\n{out}{err}"
    );
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("STARTUP "))
        .unwrap_or_else(|| panic!("no STARTUP line from the {role} child:\n{out}{err}"));
    let v: Vec<u64> = line
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    [v[0], v[1], v[2], v[3], v[4]]
}

#[test]
fn a_lazy_restore_with_a_profile_fetches_the_working_set_in_one_get() {
    let test = "loadorder::a_lazy_restore_with_a_profile_fetches_the_working_set_in_one_get";
    if let Some(why) = memimg_capture::lazy_unavailable() {
        skip(test, &format!("no lazy restore here: {why}"));
        return;
    }
    let Some(moto) = Moto::shared(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("arena.img");
    let used = arena::build(N);
    arena::persist(used, N, &plain, Codec::Zstd(1), Some(64 << 10));
    arena::unmap();

    // Record the startup's profile from the local file, and lay the image
    // out by it.
    let prof_path = dir.path().join("startup.profile");
    let rec = child(
        &format!("record:{}:{}", plain.display(), prof_path.display()),
        &moto.endpoint,
    );
    let profile = Profile::read(&prof_path).unwrap();
    let src = Image::open(&plain).unwrap();
    let opt = dir.path().join("arena-optimized.img");
    let (w, st) = memimg::relayout(
        &src,
        &profile,
        std::io::BufWriter::new(std::fs::File::create(&opt).unwrap()),
    )
    .unwrap();
    w.into_inner().unwrap().sync_all().unwrap();
    let chunks = st.chunks;
    assert!(
        st.working_set_chunks >= 3 && st.working_set_chunks < chunks / 2,
        "a startup-like working set: {} of {chunks} chunks (recording waited on {})",
        st.working_set_chunks,
        rec[2]
    );

    let bucket = bucket_for(test);
    moto.create_bucket(&bucket);
    let s3 = moto.options();
    let copy_opts = CopyOptions {
        overwrite: true,
        ..CopyOptions::default()
    };
    let (plain_url, opt_url) = (url(&bucket, "arena.img"), url(&bucket, "optimized.img"));
    for (from, to) in [(&plain, &plain_url), (&opt, &opt_url)] {
        copy(
            &Location::Local(from.clone()),
            &Location::S3(to.clone()),
            &s3,
            &copy_opts,
        )
        .unwrap();
    }

    // What opening costs, measured apart, as a restore opens.
    let open_gets_with = |u: &memimg_remote::S3Url, tail_with_head: bool| {
        let reader = Arc::new(
            Store::new(&bucket, &s3)
                .unwrap()
                .reader_by_ends(
                    u,
                    ReaderOptions {
                        tail_with_head,
                        ..ReaderOptions::default()
                    },
                    memimg_capture::REMOTE_OPEN_HEAD,
                    memimg_capture::REMOTE_OPEN_TAIL,
                )
                .unwrap(),
        );
        Image::from_read_at(reader.clone(), None).unwrap();
        reader.stats().get_requests
    };
    let open_gets = |u: &memimg_remote::S3Url| open_gets_with(u, false);
    let opened = open_gets(&opt_url);
    // Asked to, the tail is fetched with the head even when the index came
    // first; an image whose index is at the end takes two GETs either way.
    assert_eq!(open_gets_with(&opt_url, true), 2);
    assert_eq!(open_gets_with(&plain_url, true), 2);
    assert_eq!(open_gets_with(&plain_url, false), 2);
    // A head of one page, which the index (right after it) runs past: no
    // tail, one GET more for the rest of the index, read from the front.
    let reader = Arc::new(
        Store::new(&bucket, &s3)
            .unwrap()
            .reader_by_ends(
                &opt_url,
                ReaderOptions::default(),
                4096,
                memimg_capture::REMOTE_OPEN_TAIL,
            )
            .unwrap(),
    );
    let img = Image::from_read_at(reader.clone(), None).unwrap();
    assert!(!img.trailer().read);
    assert_eq!(reader.stats().get_requests, 2, "{:?}", reader.stats());

    // With the profile: the working set in one read, at most one GET past
    // opening, before the restore returns; then no fault waits and no
    // lookup makes a request.
    let [at_return, end, waited, ws_reads, _] = child(&format!("s3:{opt_url}"), &moto.endpoint);
    eprintln!(
        "working set {} of {chunks} chunks; with the profile: {at_return} GETs at return ({opened} to open), {end} after the lookups, {waited} faults waited",
        st.working_set_chunks
    );
    assert_eq!(ws_reads, 1, "the working set is read once");
    assert!(
        at_return <= opened + 1,
        "{at_return} GETs when the restore returned: opening takes {opened}, and the working set one at most"
    );
    if st.working_set_end <= memimg_capture::REMOTE_OPEN_HEAD {
        // It came with the object's head, in the opening's own GETs, and
        // with it the index, which a relayout puts first in a plain image
        // (spec.md, *Index first*): one GET in all.
        assert!(st.index_first);
        assert_eq!(
            (at_return, opened),
            (1, 1),
            "a working set of {} bytes, and the index, within the head fetched when opening",
            st.working_set_bytes
        );
    }
    assert_eq!(end, at_return, "the lookups made requests");
    assert_eq!(waited, 0, "faults waited");

    // The plain image: a GET for each chunk the lookups touch that
    // opening did not bring (the test tells the two apart).
    let plain_opened = open_gets(&plain_url);
    let [p_ret, p_end, p_waited, p_ws, _] = child(&format!("s3:{plain_url}"), &moto.endpoint);
    eprintln!(
        "plain: {p_ret} GETs at return ({plain_opened} to open), {p_end} after the lookups, {p_waited} faults waited"
    );
    assert_eq!(p_ws, 0);
    assert!(p_ret <= plain_opened, "{p_ret} GETs at return");
    assert!(
        p_end >= p_ret + 3 && p_waited >= 3,
        "plain lazy: {p_end} GETs after the lookups, {p_ret} at return, {p_waited} faults waited, {} chunks in the working set",
        st.working_set_chunks
    );
}
