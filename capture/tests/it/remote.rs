//! Restoring from object storage (feature `remote`), against a local S3
//! server (moto): a lazy restore of a compressed, encrypted image checked
//! byte for byte while threads fault and fetches are under way; the
//! restore returning before any chunk is fetched; a fork from a remote lazy
//! restore; the server stopped in the middle (the error reaches the caller,
//! no thread waits for ever); a damaged object; a missing key; mmap
//! refused. Without moto the tests follow the skip protocol.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use memimg::{Image, Key};
use memimg_capture::memimg_remote::{Location, ReaderOptions, S3Options, S3Url, Store};
use memimg_capture::{restore_from, RemoteOptions, RestoreError, RestoreOptions, Strategy};

use crate::lazy_support::{
    self as ls, assert_same_view, key_from_env, lazy_skip, run_limited, signame, stat, Outcome,
    A_PAGES, B_OFF, B_PAGES, PS,
};

/// memimg-remote's moto support: the server, buckets, plain PUTs.
#[allow(dead_code)]
#[path = "../../../remote/tests/it/support.rs"]
mod moto;

use moto::Moto;

/// The roles of this module; false for any other.
pub fn child_role(role: &str) -> bool {
    match role {
        "remote-lazy" => lazy_check(),
        "remote-stop" => server_stops(),
        "remote-chain" => chain_check(),
        _ => return false,
    }
    true
}

/// The environment a child needs to reach `moto`'s `url` with `key`.
fn child_env(moto: &Moto, url: &S3Url, key: &Key, base: u64) -> Vec<(&'static str, String)> {
    vec![
        ("IMG", url.to_string()),
        ("KEY", ls::key_hex(key)),
        ("BASE", format!("{base:x}")),
        ("AWS_ENDPOINT_URL", moto.endpoint.clone()),
        ("AWS_ACCESS_KEY_ID", moto.key_id.clone()),
        ("AWS_SECRET_ACCESS_KEY", moto.secret.clone()),
        ("AWS_REGION", "us-east-1".into()),
    ]
}

/// The twin image of the lazy tests (zstd, encrypted, 64 KiB chunks) at
/// `base`, written locally and stored under `key` in a bucket of its own.
struct Stored {
    /// Holds the local copy until the test ends.
    dir: tempfile::TempDir,
    url: S3Url,
    key: Key,
    base: u64,
}

fn store(moto: &Moto, test: &str, slot: u64, damage: Option<u64>) -> Stored {
    let base = ls::base(slot);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("twin.img");
    let key = ls::make_image(base, &path);
    let mut bytes = std::fs::read(&path).unwrap();
    if let Some(addr) = damage {
        let img = Image::open_with_key(&path, Some(&key)).unwrap();
        let ext = *img.extent_at(addr).unwrap().unwrap();
        let loc = img.chunk_locs()[ext.chunk as usize];
        bytes[(loc.offset + u64::from(loc.stored_len) / 2) as usize] ^= 0x40;
    }
    let bucket = moto::bucket_for(test);
    moto.create_bucket(&bucket);
    moto.put(&bucket, "twin.img", &bytes);
    Stored {
        dir,
        url: moto::url(&bucket, "twin.img"),
        key,
        base,
    }
}

fn env(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set"))
}

fn hex_env(k: &str) -> u64 {
    u64::from_str_radix(&env(k), 16).unwrap()
}

fn say(line: &str) {
    println!("{line}");
    std::io::stdout().flush().unwrap();
}

/// The lazy restore of the URL in `IMG`, for the child roles (here and in
/// `lazy_events`).
pub fn restore_url(opts: &RestoreOptions) -> memimg_capture::Restored {
    let loc: Location = env("IMG").parse().unwrap();
    restore_from(&loc, &RemoteOptions::default(), opts).unwrap()
}

/// Reads page `p` of the region at `start` and checks it against the
/// bytes the image was made from.
fn check_page(start: u64, p: usize, want: &mut [u8]) {
    ls::fill_page(start, p, want);
    let a = start + (p * PS) as u64;
    // SAFETY: a restored, readable page of a region this role restored.
    let got = unsafe { std::slice::from_raw_parts(a as usize as *const u8, PS) };
    assert!(
        got == &want[..],
        "page {p} of the region at {start:#x} ({a:#x}) differs from the image"
    );
}

/// Restores `IMG` lazily; says what had been fetched when the restore
/// returned; then four threads touch pages all over both regions while
/// their chunks are fetched, the rest is prefetched, and every page is
/// compared with the image's bytes.
fn lazy_check() {
    let opts = RestoreOptions {
        strategy: Strategy::Lazy,
        key: Some(key_from_env()),
        ..RestoreOptions::default()
    };
    let before = memimg_capture::memimg_remote::global_stats();
    let mut r = restore_url(&opts);
    let at_return = memimg_capture::memimg_remote::global_stats();
    let h = r.lazy.take().unwrap();
    let s = h.stats();
    say(&format!(
        "OPEN gets={} bytes={} units_done={} returned_ms={:.3}",
        at_return.get_requests - before.get_requests,
        at_return.bytes_fetched - before.bytes_fetched,
        s.units_done,
        r.elapsed.as_secs_f64() * 1e3
    ));
    let base = hex_env("BASE");
    // Faults from four threads at once, each on pages of chunks no other
    // thread asked for first, so fetches overlap and faults park.
    std::thread::scope(|sc| {
        for t in 0..4usize {
            sc.spawn(move || {
                let mut want = vec![0u8; PS];
                for p in (t * 97..A_PAGES).step_by(389) {
                    check_page(base, p, &mut want);
                }
                for p in (t * 31..B_PAGES).step_by(211) {
                    check_page(base + B_OFF, p, &mut want);
                }
            });
        }
    });
    let faulted = h.stats();
    say(&format!(
        "FAULTED faults={} units_done={}",
        faulted.faults, faulted.units_done
    ));
    // Then faults while the prefetch runs: some land on chunks it has under
    // way, which must not be fetched twice.
    h.prefetch();
    std::thread::scope(|sc| {
        for t in 0..4usize {
            sc.spawn(move || {
                let mut want = vec![0u8; PS];
                for p in (t * 53 + 40..A_PAGES).step_by(67) {
                    check_page(base, p, &mut want);
                }
            });
        }
    });
    let t0 = Instant::now();
    while !h.stats().released {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the prefetch never ended: {:?}",
            h.stats()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut want = vec![0u8; PS];
    for p in 0..A_PAGES {
        check_page(base, p, &mut want);
    }
    for p in 0..B_PAGES {
        check_page(base + B_OFF, p, &mut want);
    }
    let s = h.finish();
    assert!(s.error.is_none(), "{:?}", s.error);
    say(&format!(
        "STATS faults={} units_done={} units_total={} units_failed={} bytes_copied={} released={} bytes_fetched_twice={}",
        s.faults,
        s.units_done,
        s.units_total,
        s.units_failed,
        s.bytes_copied,
        u8::from(s.released),
        s.bytes_fetched_twice
    ));
    let end = memimg_capture::memimg_remote::global_stats();
    say(&format!(
        "FETCHED bytes={}",
        end.bytes_fetched - before.bytes_fetched
    ));
    say(&format!("CHECKED {}", A_PAGES + B_PAGES));
}

/// Restores `IMG` lazily, touches a few pages, then kills the server
/// (`MOTO_PID`). With `FINISH` set, the handle is then dropped (which
/// places every page still missing) and must return with the error; in
/// both modes a thread then touches a page whose chunk was never fetched,
/// and must end in SIGSEGV, never wait for ever or read wrong bytes.
fn server_stops() {
    let opts = RestoreOptions {
        strategy: Strategy::Lazy,
        key: Some(key_from_env()),
        ..RestoreOptions::default()
    };
    let mut r = restore_url(&opts);
    let h = r.lazy.take().unwrap();
    let base = hex_env("BASE");
    let mut want = vec![0u8; PS];
    for p in 0..8 {
        check_page(base, p, &mut want);
    }
    say("GOOD");
    // SAFETY: sends SIGKILL to the test's moto server, whose pid the test
    // gave; nothing of this process is affected.
    let rc = unsafe { libc::kill(env("MOTO_PID").parse().unwrap(), libc::SIGKILL) };
    assert_eq!(rc, 0, "could not kill moto");
    std::thread::sleep(Duration::from_millis(300));
    say("KILLED");
    if std::env::var("FINISH").is_ok() {
        let t0 = Instant::now();
        let s = h.finish();
        say(&format!(
            "FINISHED ms={} released={} units_failed={} error={}",
            t0.elapsed().as_millis(),
            s.released,
            s.units_failed,
            s.error.unwrap_or_default()
        ));
        // The pages placed before the server went are still right.
        for p in 0..8 {
            check_page(base, p, &mut want);
        }
        say("STILL-GOOD");
    } else {
        std::mem::forget(h);
    }
    let bad = base + ((A_PAGES - 5) * PS) as u64 + 8;
    // SAFETY: a restored page whose chunk can no longer be fetched: the
    // handler makes it inaccessible, so this read ends in SIGSEGV.
    let v = unsafe { std::ptr::read_volatile(bad as usize as *const u64) };
    say(&format!("SURVIVED {v:x}"));
}

fn moto_for(test: &str) -> Option<&'static Moto> {
    if lazy_skip(test) {
        return None;
    }
    Moto::shared(test)
}

#[test]
fn remote_lazy_restore_compares_every_byte() {
    let test = "remote::remote_lazy_restore_compares_every_byte";
    let Some(moto) = moto_for(test) else { return };
    let st = store(moto, test, 20, None);
    // What opening the object costs, measured apart: the restore must
    // return having fetched exactly that, and no chunk.
    let s3 = S3Options::default()
        .with_endpoint(&moto.endpoint)
        .with_credentials(&moto.key_id, &moto.secret);
    // A restore opens by the ends: the tail and the header page together,
    // no HEAD.
    let reader = Arc::new(
        Store::new(&st.url.bucket, &s3)
            .unwrap()
            .reader_by_ends(
                &st.url,
                ReaderOptions::default(),
                memimg_capture::REMOTE_OPEN_HEAD,
                memimg_capture::REMOTE_OPEN_TAIL,
            )
            .unwrap(),
    );
    Image::from_read_at(reader.clone(), Some(&st.key)).unwrap();
    let open = reader.stats();
    assert_eq!(open.head_requests, 0);
    assert!(open.get_requests <= 3, "{open:?}");
    let o = run_limited(
        "remote-lazy",
        &child_env(moto, &st.url, &st.key, st.base),
        ls::limit(),
    );
    assert!(
        o.ok() && o.out.contains(&format!("CHECKED {}", A_PAGES + B_PAGES)),
        "the lazy restore from {} failed ({}):\n{}",
        st.url,
        signame(&o),
        o.out
    );
    let line = o.out.lines().find(|l| l.starts_with("OPEN ")).unwrap();
    let val = |k: &str| -> u64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .unwrap()
            .parse()
            .unwrap_or(0)
    };
    assert_eq!(
        (val("gets"), val("bytes")),
        (open.get_requests, open.bytes_fetched),
        "the restore fetched more than the header, trailer and index before returning: {line}"
    );
    assert_eq!(val("units_done"), 0, "{line}");
    assert!(stat(&o.out, "faults") > 0, "{}", o.out);
    assert_eq!(stat(&o.out, "units_failed"), 0, "{}", o.out);
    assert_eq!(
        stat(&o.out, "units_done"),
        stat(&o.out, "units_total"),
        "{}",
        o.out
    );
    // Every chunk fetched once: at most the object, and the ends opening
    // fetched (chunks they hold are read from them).
    let len = memimg::ReadAt::len(&*reader);
    let line = o.out.lines().find(|l| l.starts_with("FETCHED ")).unwrap();
    let bytes: u64 = line.trim_start_matches("FETCHED bytes=").parse().unwrap();
    let twice = stat(&o.out, "bytes_fetched_twice");
    assert!(
        bytes <= len + open.bytes_fetched + twice,
        "the restore fetched {bytes} bytes of a {len}-byte object: some chunk was fetched twice"
    );
}

/// fork() from a lazily restored program whose image is remote: the first
/// fork waits for the rest of the image (downloaded by the fetch threads),
/// and the child reads every page; an eager restore from the URL is the
/// twin it is compared with, page by page.
#[test]
fn remote_lazy_fork_waits_for_the_rest() {
    let test = "remote::remote_lazy_fork_waits_for_the_rest";
    let Some(moto) = moto_for(test) else { return };
    let st = store(moto, test, 21, None);
    let mut runs: Vec<Outcome> = Vec::new();
    for strategy in ["eager", "lazy"] {
        let mut e = child_env(moto, &st.url, &st.key, st.base);
        e.push(("SCENARIO", "fork".into()));
        e.push(("STRATEGY", strategy.into()));
        let o = run_limited("lazy-twin", &e, ls::limit());
        assert!(
            o.ok() && o.out.lines().any(|l| l == "END"),
            "the {strategy} twin failed ({}):\n{}",
            signame(&o),
            o.out
        );
        runs.push(o);
    }
    assert_same_view(&runs[0], &runs[1]);
    assert!(runs[1].out.contains("VIEW child-a"), "{}", runs[1].out);
    assert_eq!(stat(&runs[1].out, "errors"), 0, "{}", runs[1].out);
}

/// The server stops during a lazy restore: dropping the handle returns,
/// with the error and the pieces that failed; a page that was placed stays
/// right; a touch of a page that never came is SIGSEGV at that address,
/// never a hang and never wrong bytes. Without the drop, a thread faulting
/// on such a page gets the same, once the fetch has failed.
#[test]
fn remote_server_stopped_during_lazy_restore() {
    let test = "remote::remote_server_stopped_during_lazy_restore";
    if lazy_skip(test) {
        return;
    }
    for finish in [true, false] {
        let Some(moto) = Moto::start(test) else {
            return;
        };
        let st = store(&moto, test, 22, None);
        let mut e = child_env(&moto, &st.url, &st.key, st.base);
        e.push(("MOTO_PID", moto.pid.to_string()));
        if finish {
            e.push(("FINISH", "1".into()));
        }
        let t0 = Instant::now();
        let o = run_limited("remote-stop", &e, ls::limit());
        assert_eq!(
            ls::signal(&o),
            Some(libc::SIGSEGV),
            "expected SIGSEGV after the server stopped ({}; finish {finish}):\n{}",
            signame(&o),
            o.out
        );
        assert!(o.out.contains("GOOD\nKILLED"), "{}", o.out);
        assert!(!o.out.contains("SURVIVED"), "{}", o.out);
        if finish {
            let line = o.out.lines().find(|l| l.starts_with("FINISHED ")).unwrap();
            assert!(
                line.contains("released=true") && !line.contains("units_failed=0 "),
                "{line}"
            );
            assert!(
                line.contains(&st.url.to_string()),
                "the error names the object: {line}"
            );
            assert!(o.out.contains("STILL-GOOD"), "{}", o.out);
        }
        eprintln!("finish {finish}: the child ended in {:?}", t0.elapsed());
    }
}

/// A damaged chunk in the object: the same rule as for a local file.
#[test]
fn remote_damaged_chunk_is_sigsegv() {
    let test = "remote::remote_damaged_chunk_is_sigsegv";
    let Some(moto) = moto_for(test) else { return };
    let bad = ls::base(23) + 1000 * PS as u64 + 24;
    let st = store(moto, test, 23, Some(bad));
    let mut e = child_env(moto, &st.url, &st.key, st.base);
    e.push(("DAMAGED", format!("{bad:x}")));
    e.push(("DROP", "1".into()));
    let o = run_limited("lazy-damaged", &e, ls::limit());
    assert_eq!(
        ls::signal(&o),
        Some(libc::SIGSEGV),
        "expected SIGSEGV ({}):\n{}",
        signame(&o),
        o.out
    );
    assert!(o.out.contains("GOOD "), "{}", o.out);
    assert!(o.out.contains("FINISHED released=true error="), "{}", o.out);
    assert!(!o.out.contains("SURVIVED"), "{}", o.out);
    drop(st.dir);
}

/// A missing object is a typed error naming it; mmap of a remote image is
/// refused, saying why; neither maps anything.
#[test]
fn remote_missing_key_and_mmap_are_refused() {
    let test = "remote::remote_missing_key_and_mmap_are_refused";
    let Some(moto) = Moto::shared(test) else {
        return;
    };
    let bucket = moto::bucket_for(test);
    moto.create_bucket(&bucket);
    let remote = RemoteOptions {
        s3: S3Options::default()
            .with_endpoint(&moto.endpoint)
            .with_credentials(&moto.key_id, &moto.secret),
        in_flight: 2,
        ..RemoteOptions::default()
    };
    let missing = Location::S3(moto::url(&bucket, "nope.img"));
    let e = restore_from(&missing, &remote, &RestoreOptions::default()).unwrap_err();
    match &e {
        RestoreError::Remote(r) => assert_eq!(
            r.kind(),
            memimg_capture::memimg_remote::ErrorKind::NoSuchKey,
            "{e}"
        ),
        other => panic!("expected a remote error, got {other:?}"),
    }
    assert!(e.to_string().contains("nope.img"), "{e}");
    // A plain image whose chunks are raw: mappable as a file, not remote.
    let w = moto::write_image(Vec::new(), moto::Kind::Plain, &moto::regions(1 << 20, 3));
    moto.put(&bucket, "plain.img", &w);
    let loc = Location::S3(moto::url(&bucket, "plain.img"));
    let opts = RestoreOptions {
        strategy: Strategy::Mmap,
        ..RestoreOptions::default()
    };
    let e = restore_from(&loc, &remote, &opts).unwrap_err();
    assert!(
        matches!(
            &e,
            RestoreError::StrategyUnavailable {
                strategy: "mmap",
                ..
            }
        ) && e.to_string().contains("no file to map"),
        "{e}"
    );
    assert!(!ls::mapped(0x10_0000), "nothing stays mapped");
}

/// An image laid out in load order, in object storage: a lazy restore from
/// its URL fetches the working set with one ranged GET on a fetch thread
/// and places it before returning, so no startup touch waits; with the
/// working set in the background it returns at once and fetches it chunk
/// by chunk. Every page is compared with the image's content either way.
#[test]
fn remote_optimized_image_fetches_its_working_set_in_one_get() {
    use crate::loadorder::{assert_content, list, Setup, STARTUP};
    let test = "remote::remote_optimized_image_fetches_its_working_set_in_one_get";
    let Some(moto) = moto_for(test) else { return };
    let s = Setup::new(24);
    let touched: Vec<usize> = STARTUP.iter().copied().filter(|&p| p % 7 != 0).collect();
    let (opt, chunks, ws) = s.optimized(&touched);
    let bucket = moto::bucket_for(test);
    moto.create_bucket(&bucket);
    moto.put(&bucket, "opt.img", &std::fs::read(&opt).unwrap());
    let url = moto::url(&bucket, "opt.img");
    for mode in ["use", "background"] {
        let mut e = child_env(moto, &url, &s.key, s.base);
        e.push(("MODE", mode.into()));
        e.push(("TOUCH", list(&touched)));
        e.push(("WS", chunks.len().to_string()));
        let o = run_limited("lo-run", &e, ls::limit());
        assert!(
            o.ok() && o.out.contains("END"),
            "{mode} ({}):\n{}",
            signame(&o),
            o.out
        );
        assert_content(&o, s.base, &[]);
        assert_eq!(stat(&o.out, "errors"), 0, "{}", o.out);
        if mode == "use" {
            assert_eq!(stat(&o.out, "faults_waited"), 0, "{}", o.out);
            assert_eq!(stat(&o.out, "ws_reads"), 1, "{}", o.out);
            assert_eq!(stat(&o.out, "ws_bytes"), ws.end - ws.start, "{}", o.out);
        } else {
            assert_eq!(stat(&o.out, "ws_reads"), 0, "{}", o.out);
            assert!(
                stat(&o.out, "faults_waited") <= chunks.len() as u64,
                "{}",
                o.out
            );
        }
    }
}

/// Pages of the chain test's region.
const CHAIN_PAGES: usize = 96;

/// Page `p` of generation `g` of the chain test's region: generation 0
/// text naming the page, each later one rewriting the pages whose number
/// is `g` modulo 7 (plus page 1, in every generation).
fn chain_page(g: u64, p: usize, out: &mut [u8]) {
    let mut gen = 0;
    for k in 1..=g {
        if p % 7 == k as usize % 7 || p == 1 {
            gen = k;
        }
    }
    let text = format!("page {p} of generation {gen} ");
    for (i, b) in out.iter_mut().enumerate() {
        *b = text.as_bytes()[i % text.len()];
    }
}

fn chain_region(g: u64) -> Vec<u8> {
    let mut buf = vec![0u8; CHAIN_PAGES * PS];
    for (p, page) in buf.chunks_mut(PS).enumerate() {
        chain_page(g, p, page);
    }
    buf
}

/// Restores the child `IMG` with the strategy `STRATEGY` and compares
/// every page with the last generation's (`GEN`), or prints the error.
fn chain_check() {
    let strategy: Strategy = env("STRATEGY").parse().unwrap();
    let g: u64 = env("GEN").parse().unwrap();
    let base = hex_env("BASE");
    let loc: Location = env("IMG").parse().unwrap();
    let opts = RestoreOptions {
        strategy,
        ..RestoreOptions::default()
    };
    let r = match restore_from(&loc, &RemoteOptions::default(), &opts) {
        Ok(r) => r,
        Err(e) => {
            say(&format!("ERROR {e}"));
            return;
        }
    };
    let mut want = vec![0u8; PS];
    for p in 0..CHAIN_PAGES {
        chain_page(g, p, &mut want);
        // SAFETY: a restored, readable page of the region.
        let got = unsafe { std::slice::from_raw_parts((base as usize + p * PS) as *const u8, PS) };
        assert!(got == &want[..], "page {p} differs from generation {g}");
    }
    say(&format!("CHECKED {CHAIN_PAGES}"));
    drop(r);
}

/// A chain of three in object storage, each child storing its parent's key
/// as its hint: a lazy and an eager restore from the grandchild's URL find
/// the parents by the hints and restore every page of the last generation;
/// mmap is refused (no file); a copy of the grandchild with no parent
/// beside it is refused, naming the parent it needs.
#[test]
fn remote_chain_restores_through_its_hints() {
    use memimg::{Chain, ChainOptions, Codec, RegionInfo, RegionKind, Writer, WriterOptions};
    let test = "remote::remote_chain_restores_through_its_hints";
    let Some(moto) = moto_for(test) else { return };
    let bucket = moto::bucket_for(test);
    moto.create_bucket(&bucket);
    let base = ls::base(24);
    let dir = tempfile::tempdir().unwrap();
    let info = RegionInfo::new(base, (CHAIN_PAGES * PS) as u64)
        .kind(RegionKind::Heap)
        .name("chain");
    let names = ["g0.img", "g1.img", "g2.img"];
    for (g, name) in names.iter().enumerate() {
        let path = dir.path().join(name);
        let mut opts = WriterOptions::new()
            .page_size(PS as u32)
            .chunk_size(8 * PS as u32)
            .codec(Codec::Zstd(1))
            // So that each child holds exactly its changed pages, and
            // takes the rest from its parents.
            .page_digests(true);
        let parent = (g > 0).then(|| {
            Chain::open(
                dir.path().join(names[g - 1]),
                None,
                &ChainOptions::default(),
            )
            .unwrap()
        });
        if let Some(p) = &parent {
            opts = opts.parent_of(p.image()).unwrap().parent_hint(names[g - 1]);
        }
        let mut w = Writer::new(std::fs::File::create(&path).unwrap(), opts).unwrap();
        let bytes = chain_region(g as u64);
        match &parent {
            Some(p) => w.add_region_against(info.clone(), &bytes, p).unwrap(),
            None => w.add_region(info.clone(), &bytes).unwrap(),
        }
        w.finish().unwrap();
        if g > 0 {
            let img = memimg::Image::open(&path).unwrap();
            let own = img
                .extents()
                .unwrap()
                .iter()
                .filter(|e| e.kind == memimg::ExtentKind::Data);
            let pages: u32 = own.map(|e| e.page_count).sum();
            assert!(
                pages < CHAIN_PAGES as u32 / 2,
                "generation {g} holds {pages} pages"
            );
        }
        moto.put(
            &bucket,
            &format!("app/{name}"),
            &std::fs::read(&path).unwrap(),
        );
    }
    moto.put(
        &bucket,
        "lonely/g2.img",
        &std::fs::read(dir.path().join("g2.img")).unwrap(),
    );
    let run = |key: &str, strategy: &str| {
        let url = moto::url(&bucket, key);
        let mut env = child_env(moto, &url, &Key::raw([0; 32]), base);
        env.retain(|(k, _)| *k != "KEY");
        env.push(("STRATEGY", strategy.to_string()));
        env.push(("GEN", "2".to_string()));
        run_limited("remote-chain", &env, ls::limit())
    };
    for strategy in ["lazy", "eager"] {
        let o = run("app/g2.img", strategy);
        assert!(
            o.ok() && o.out.contains(&format!("CHECKED {CHAIN_PAGES}")),
            "{strategy} restore of the chain ({}):\n{}",
            signame(&o),
            o.out
        );
    }
    let o = run("app/g2.img", "mmap");
    assert!(
        o.out.contains("ERROR") && o.out.contains("mmap"),
        "{}",
        o.out
    );
    let o = run("lonely/g2.img", "lazy");
    assert!(
        o.out.contains("ERROR")
            && o.out.contains("its parent, image")
            && o.out.contains("is needed"),
        "{}",
        o.out
    );
}
