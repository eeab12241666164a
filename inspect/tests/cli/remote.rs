//! imgtool on `s3://` URLs, end to end against a local S3 server (moto):
//! a live process captured straight to a URL, then inspect, verify, cat,
//! diff and export-core on it; cp both ways byte for byte; rewrites to and
//! from URLs; what inspect and cat fetch; and the failures: a missing
//! bucket or key, wrong credentials, a capture interrupted or whose server
//! dies (no object left, the process resumed), truncated and damaged
//! objects (the same errors and exit codes as a local file). Without moto
//! the tests follow the skip protocol.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use memimg::{Codec, Image};

use crate::capture::{capture_or_skip, pattern, Target, ADDR, PAGES};
use crate::common::*;
use crate::moto::{self, Moto};

/// Runs imgtool against `moto`; returns (exit code, stdout, stderr).
fn rrun(moto: &Moto, args: &[&str]) -> (i32, String, String) {
    let o = with_env(bin(), moto).args(args).output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The store's settings, as the AWS CLI takes them, and the fetch counts.
fn with_env(mut c: Command, moto: &Moto) -> Command {
    c.env("AWS_ENDPOINT_URL", &moto.endpoint)
        .env("AWS_ACCESS_KEY_ID", &moto.key_id)
        .env("AWS_SECRET_ACCESS_KEY", &moto.secret)
        .env("AWS_REGION", "us-east-1")
        .env("IMGTOOL_REMOTE_STATS", "1");
    c
}

/// Runs and asserts exit 0.
fn ok(moto: &Moto, args: &[&str]) -> (String, String) {
    let (code, out, err) = rrun(moto, args);
    assert_eq!(code, 0, "imgtool {args:?} failed:\n{out}{err}");
    (out, err)
}

/// The bytes fetched, from the `IMGTOOL_REMOTE_STATS` line.
fn fetched(err: &str) -> u64 {
    let line = err
        .lines()
        .find(|l| l.starts_with("imgtool: remote: "))
        .unwrap_or_else(|| panic!("no remote statistics in:\n{err}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let i = words.iter().position(|w| *w == "bytes").unwrap();
    words[i - 1].parse().unwrap()
}

/// Whether this process may capture others (ptrace), by capturing a small
/// child; skips the test when not.
fn ptrace_ok(test: &str) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let t = Target::spawn("pattern", 0);
    capture_or_skip(&t, &dir.path().join("probe.mimg"), test).is_some()
}

/// The shared server and a bucket of the test's own, or a skip.
fn setup(test: &str) -> Option<(&'static Moto, String)> {
    let moto = Moto::shared(test)?;
    let bucket = moto::bucket_for(test);
    moto.create_bucket(&bucket);
    Some((moto, bucket))
}

fn url(bucket: &str, key: &str) -> String {
    format!("s3://{bucket}/{key}")
}

#[test]
fn remote_capture_then_inspect_verify_cat_diff_export_core() {
    let test = "remote::remote_capture_then_inspect_verify_cat_diff_export_core";
    let Some((moto, bucket)) = setup(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut t = Target::spawn("pattern", 0);
    // Ptrace may be refused here: a local capture says so, and skips.
    if capture_or_skip(&t, &dir.path().join("probe.mimg"), test).is_none() {
        return;
    }
    let u = url(&bucket, "live/app.mimg");
    let pid = t.pid().to_string();
    let (out, _) = ok(moto, &["capture", "--pid", &pid, "-o", &u]);
    assert!(
        out.starts_with(&format!("{u}: captured pid {pid}")),
        "{out}"
    );
    t.running()
        .expect("the process runs on after a capture to a URL");
    assert_eq!(moto.keys(&bucket), vec!["live/app.mimg".to_string()]);
    assert!(moto.open_uploads(&bucket).is_empty());
    // An existing object is kept without --force.
    let (code, _, err) = rrun(moto, &["capture", "--pid", &pid, "-o", &u]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("exists") && err.contains("--force"), "{err}");

    // The local copy, by cp, is the object byte for byte.
    let local = dir.path().join("app.mimg");
    ok(moto, &["cp", &u, s(&local)]);
    assert_eq!(
        std::fs::read(&local).unwrap(),
        moto.get(&bucket, "live/app.mimg").unwrap()
    );

    // inspect: the same document from the URL as from the file.
    let (from_url, _) = ok(moto, &["inspect", "--json", &u]);
    let (from_file, _) = ok(moto, &["inspect", "--json", s(&local)]);
    assert_eq!(json(&from_url), json(&from_file));
    let (text, _) = ok(moto, &["inspect", &u]);
    assert!(text.contains("process         pid"), "{text}");

    // verify: intact, every chunk checked.
    let (v, err) = ok(moto, &["verify", "--json", &u]);
    let doc = json(&v);
    assert_eq!(doc["status"], "intact", "{v}");
    let img = Image::open(&local).unwrap();
    assert_eq!(doc["chunks_checked"], img.chunk_locs().len() as u64);
    // Every stored byte once, plus what opening reads around them.
    assert!(fetched(&err) <= img.file_len() + 8192, "{err}");

    // cat: the pattern the process holds.
    let len = (PAGES * PS as usize).to_string();
    let o = with_env(bin(), moto)
        .args(["cat", "--addr", &format!("{ADDR:#x}"), "--len", &len, &u])
        .output()
        .unwrap();
    assert_success(&o);
    assert_eq!(o.stdout, pattern());

    // diff: the local copy against the object, both ways, is identical.
    for (a, b) in [(s(&local), u.as_str()), (u.as_str(), s(&local))] {
        let (out, _) = ok(moto, &["diff", a, b]);
        assert!(out.trim_end().ends_with("identical"), "{out}");
    }

    // export-core of the URL: the core the local copy gives, byte for byte.
    let core_u = dir.path().join("u.core");
    let core_l = dir.path().join("l.core");
    ok(moto, &["export-core", &u, "-o", s(&core_u)]);
    ok(moto, &["export-core", s(&local), "-o", s(&core_l)]);
    assert_eq!(
        std::fs::read(&core_u).unwrap(),
        std::fs::read(&core_l).unwrap()
    );
    // A core is a local file, for gdb.
    let (code, _, err) = rrun(moto, &["export-core", &u, "-o", &url(&bucket, "c")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("local file"), "{err}");
}

#[test]
fn remote_cp_both_ways_rewrites_and_import_core() {
    let test = "remote::remote_cp_both_ways_rewrites_and_import_core";
    let Some((moto, bucket)) = setup(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (kf, key) = key_file(dir.path(), "a.key", 7);
    let (kf2, _) = key_file(dir.path(), "b.key", 9);
    let src = dir.path().join("enc.mimg");
    write_image(&src, Codec::Zstd(1), Some(key));
    let u = url(&bucket, "enc.mimg");

    // Up and down again: byte for byte, no key needed.
    let (out, _) = ok(moto, &["cp", s(&src), &u]);
    assert!(out.contains("chunks checked"), "{out}");
    let bytes = std::fs::read(&src).unwrap();
    assert_eq!(moto.get(&bucket, "enc.mimg").unwrap(), bytes);
    let back = dir.path().join("back.mimg");
    ok(moto, &["cp", &u, s(&back)]);
    assert_eq!(std::fs::read(&back).unwrap(), bytes);
    // URL to URL too.
    ok(moto, &["cp", &u, &url(&bucket, "copy.mimg")]);
    assert_eq!(moto.get(&bucket, "copy.mimg").unwrap(), bytes);
    // An existing destination needs --force, either way.
    for dst in [u.as_str(), s(&back)] {
        let (code, _, err) = rrun(moto, &["cp", s(&src), dst]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("exists") && err.contains("--force"), "{err}");
    }
    ok(moto, &["cp", "--force", s(&src), &u]);

    // recompress from a URL to a URL: the same content.
    let z3 = url(&bucket, "z3.mimg");
    let (out, _) = ok(
        moto,
        &[
            "recompress",
            "--codec",
            "zstd:3",
            "--key-file",
            s(&kf),
            "-o",
            &z3,
            &u,
        ],
    );
    assert!(out.starts_with(&format!("{z3}: recompressed")), "{out}");
    let (out, _) = ok(moto, &["diff", "--key-file", s(&kf), &u, &z3]);
    assert!(out.trim_end().ends_with("identical"), "{out}");
    // A key rotation to a URL: the new key opens it, the old one does not.
    let rot = url(&bucket, "rotated.mimg");
    ok(
        moto,
        &[
            "reencrypt",
            "--key-file",
            s(&kf),
            "--new-key-file",
            s(&kf2),
            "-o",
            &rot,
            &u,
        ],
    );
    ok(moto, &["verify", "--key-file", s(&kf2), &rot]);
    let (code, _, err) = rrun(moto, &["verify", "--key-file", s(&kf), &rot]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("the key does not open this image"), "{err}");
    // And from a URL to a local file.
    let rot_l = dir.path().join("rot.mimg");
    ok(
        moto,
        &[
            "reencrypt",
            "--key-file",
            s(&kf),
            "--new-key-file",
            s(&kf2),
            "-o",
            s(&rot_l),
            &u,
        ],
    );
    ok(moto, &["verify", "--key-file", s(&kf2), s(&rot_l)]);
    // A full re-encryption to a URL.
    let full = url(&bucket, "full.mimg");
    ok(
        moto,
        &[
            "reencrypt",
            "--full",
            "--key-file",
            s(&kf),
            "--new-key-file",
            s(&kf2),
            "-o",
            &full,
            &u,
        ],
    );
    let (out, _) = ok(
        moto,
        &[
            "diff",
            "--key-file",
            s(&kf),
            "--key-file-b",
            s(&kf2),
            &u,
            &full,
        ],
    );
    assert!(out.trim_end().ends_with("identical"), "{out}");

    // Objects are never changed in place: refused, pointing to -o, and the
    // object is left as it was.
    for args in [
        vec![
            "reencrypt",
            "--in-place",
            "--key-file",
            s(&kf),
            "--new-key-file",
            s(&kf2),
            &u,
        ],
        vec![
            "recompress",
            "--in-place",
            "--codec",
            "none",
            "--key-file",
            s(&kf),
            &u,
        ],
    ] {
        let (code, _, err) = rrun(moto, &args);
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains("cannot be changed in place") && err.contains("-o"),
            "{err}"
        );
    }
    assert_eq!(moto.get(&bucket, "enc.mimg").unwrap(), bytes);

    // import-core to a URL: the image the core came from, by content.
    let plain = dir.path().join("plain.mimg");
    write_image(&plain, Codec::Zstd(1), None);
    let core = dir.path().join("plain.core");
    ok(moto, &["export-core", s(&plain), "-o", s(&core)]);
    let imp = url(&bucket, "imported.mimg");
    let (out, _) = ok(moto, &["import-core", s(&core), "-o", &imp]);
    assert!(out.starts_with(&format!("{imp}: ")), "{out}");
    let (out, _) = ok(moto, &["diff", s(&plain), &imp]);
    assert!(out.trim_end().ends_with("identical"), "{out}");
    assert!(moto.open_uploads(&bucket).is_empty());
}

/// inspect reads the header page, the trailer and the index, nothing else;
/// `cat --len 4096` adds one chunk.
#[test]
fn remote_inspect_and_cat_fetch_only_what_they_need() {
    let test = "remote::remote_inspect_and_cat_fetch_only_what_they_need";
    let Some((moto, bucket)) = setup(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("big.mimg");
    write_big(&p, 48, Codec::Zstd(1), None);
    let img = Image::open(&p).unwrap();
    let t = img.trailer();
    let u = url(&bucket, "big.mimg");
    ok(moto, &["cp", s(&p), &u]);
    let (_, err) = ok(moto, &["inspect", &u]);
    let inspect = fetched(&err);
    // Opening reads whole 4 KiB blocks around the header page and the
    // trailer; the index exactly.
    let ends = 4096 + t.index_len + 2 * 4096;
    assert!(
        inspect <= ends,
        "inspect fetched {inspect} bytes of a {}-byte object; the header page, index and trailer are {} bytes:\n{err}",
        img.file_len(),
        4096 + t.index_len + 256
    );
    let (_, err) = ok(moto, &["cat", "--addr", "0x10100000", "--len", "4096", &u]);
    let cat = fetched(&err);
    let ext = img.extent_at(0x1010_0000).unwrap().unwrap();
    let chunk = u64::from(img.chunk_locs()[ext.chunk as usize].stored_len);
    assert!(
        cat <= inspect + chunk,
        "cat fetched {cat} bytes: more than inspect ({inspect}) and one chunk ({chunk})\n{err}"
    );
    assert!(cat > inspect, "cat read its chunk: {err}");
}

#[test]
fn remote_missing_bucket_key_and_bad_urls() {
    let test = "remote::remote_missing_bucket_key_and_bad_urls";
    let Some((moto, bucket)) = setup(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("x.mimg");
    write_image(&local, Codec::None, None);
    let nb = "s3://no-such-bucket-x/app.mimg";
    let nk = url(&bucket, "missing.mimg");
    for cmd in [
        vec!["inspect", nb],
        vec!["verify", nb],
        vec!["cat", "--addr", "0x600000", "--len", "16", nb],
        vec!["cp", nb, s(&local)],
        vec!["cp", "--force", s(&local), nb],
        vec!["diff", s(&local), nb],
    ] {
        let (code, out, err) = rrun(moto, &cmd);
        assert_eq!(code, 2, "{cmd:?}:\n{out}{err}");
        assert!(
            err.contains("s3://no-such-bucket-x/app.mimg: the bucket does not exist"),
            "{cmd:?}:\n{err}"
        );
    }
    for cmd in [
        vec!["inspect", nk.as_str()],
        vec!["verify", nk.as_str()],
        vec!["export-core", nk.as_str(), "-o", "/dev/null/x"],
        vec!["diff", nk.as_str(), s(&local)],
    ] {
        let (code, out, err) = rrun(moto, &cmd);
        assert_eq!(code, 2, "{cmd:?}:\n{out}{err}");
        assert!(
            err.contains(&format!("{nk}: no object has this key")),
            "{cmd:?}:\n{err}"
        );
        assert_eq!(err.matches(nk.as_str()).count(), 1, "named once: {err}");
    }
    let (code, _, err) = rrun(moto, &["inspect", "gs://bucket/app.mimg"]);
    assert_eq!(code, 2);
    assert!(err.contains("gs:// is not supported"), "{err}");
    let (code, _, err) = rrun(moto, &["inspect", "s3://bucket"]);
    assert_eq!(code, 2);
    assert!(err.contains("no key"), "{err}");
}

#[test]
fn remote_wrong_credentials_are_refused() {
    let test = "remote::remote_wrong_credentials_are_refused";
    let bucket = moto::bucket_for(test);
    let Some(moto) = Moto::start_with_auth(test, &bucket) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("x.mimg");
    write_image(&local, Codec::Zstd(1), None);
    let u = url(&bucket, "x.mimg");
    // The control: the right key writes and reads.
    ok(&moto, &["cp", s(&local), &u]);
    ok(&moto, &["inspect", &u]);
    for (id, secret) in [
        ("AKIANOSUCHKEY0000000", moto.secret.as_str()),
        (moto.key_id.as_str(), "not-the-secret"),
    ] {
        for cmd in [vec!["inspect", u.as_str()], vec!["verify", u.as_str()]] {
            let o = with_env(bin(), &moto)
                .env("AWS_ACCESS_KEY_ID", id)
                .env("AWS_SECRET_ACCESS_KEY", secret)
                .args(&cmd)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(2), "{cmd:?}: {err}");
            assert!(
                err.contains("refused the credentials"),
                "{cmd:?} with {id}: {err}"
            );
        }
    }
}

/// The same bytes, damaged or cut short, give the same answer from a URL as
/// from a file: the same exit code, and the same message but for the name.
#[test]
fn remote_truncated_and_damaged_objects_answer_as_files_do() {
    let test = "remote::remote_truncated_and_damaged_objects_answer_as_files_do";
    let Some((moto, bucket)) = setup(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.mimg");
    write_image(&good, Codec::Zstd(1), None);
    let bytes = std::fs::read(&good).unwrap();
    let img = Image::open(&good).unwrap();
    let c1 = img.chunk_locs()[1];
    let mut damaged = bytes.clone();
    damaged[(c1.offset + 5) as usize] ^= 0x10;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("damaged", damaged),
        ("truncated", bytes[..bytes.len() - 300].to_vec()),
        ("short", bytes[..3000].to_vec()),
        ("not-an-image", b"hello, not an image at all".to_vec()),
    ];
    for (name, data) in cases {
        let file = dir.path().join(format!("{name}.mimg"));
        std::fs::write(&file, &data).unwrap();
        moto.put(&bucket, name, &data);
        let u = url(&bucket, name);
        for cmd in [
            vec!["verify"],
            vec!["verify", "--deep"],
            vec!["verify", "--json"],
            vec!["inspect"],
            vec!["cat", "--addr", "0x600000", "--len", "8192"],
            vec!["cp", "--force"],
        ] {
            let target = dir.path().join("cp-out.mimg");
            let run_on = |what: &str| {
                let mut a = cmd.clone();
                a.push(what);
                if a[0] == "cp" {
                    a.push(s(&target));
                }
                rrun(moto, &a)
            };
            let (fc, fo, fe) = run_on(s(&file));
            let (uc, uo, ue) = run_on(&u);
            let norm = |t: &str, who: &str| {
                t.lines()
                    .filter(|l| !l.starts_with("imgtool: remote: "))
                    .collect::<Vec<_>>()
                    .join("\n")
                    .replace(who, "IMAGE")
            };
            assert_eq!(
                fc, uc,
                "{name} {cmd:?}: exit {fc} for the file, {uc} for the URL\nfile: {fo}{fe}\nurl: {uo}{ue}"
            );
            assert_eq!(
                (norm(&fo, s(&file)), norm(&fe, s(&file))),
                (norm(&uo, &u), norm(&ue, &u)),
                "{name} {cmd:?}: the answers differ"
            );
            if name == "damaged" && cmd == ["verify"] {
                assert_eq!(uc, 1, "damage is exit 1 in verify: {uo}{ue}");
                assert!(
                    uo.contains("chunk 1") && uo.contains("checksum mismatch"),
                    "{uo}"
                );
            }
            if cmd[0] == "cp" && name != "not-an-image" {
                assert_eq!(uc, 2, "{ue}");
            }
        }
    }
}

/// A capture to a URL that fails half way (here, interrupted by SIGTERM
/// while its parts upload) leaves no object, aborts its upload, and resumes
/// the process.
#[test]
fn remote_interrupted_capture_leaves_no_object_and_aborts_the_upload() {
    let test = "remote::remote_interrupted_capture_leaves_no_object_and_aborts_the_upload";
    let Some((moto, bucket)) = setup(test) else {
        return;
    };
    if !ptrace_ok(test) {
        return;
    }
    let mut t = Target::spawn("big", 256);
    let u = url(&bucket, "cut.mimg");
    let pid = t.pid().to_string();
    let mut child = with_env(bin(), moto)
        .args(["capture", "--pid", &pid, "--codec", "zstd:6", "-o", &u])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once its upload exists, interrupt it.
    let t0 = Instant::now();
    while moto.open_uploads(&bucket).is_empty() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the capture ended before its upload was seen"
        );
        assert!(t0.elapsed() < Duration::from_secs(60), "no upload started");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe { libc::kill(libc::pid_t::try_from(child.id()).unwrap(), libc::SIGTERM) };
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    t.running()
        .expect("the process runs on after the failed capture");
    assert!(moto.keys(&bucket).is_empty(), "an object was left");
    assert!(
        moto.open_uploads(&bucket).is_empty(),
        "the multipart upload was not aborted"
    );
}

/// The server dies in the middle of a capture to it: the capture fails,
/// says why, and the process runs on.
#[test]
fn remote_server_killed_during_a_capture() {
    let test = "remote::remote_server_killed_during_a_capture";
    let Some(mut moto) = Moto::start(test) else {
        return;
    };
    let bucket = moto::bucket_for(test);
    moto.create_bucket(&bucket);
    if !ptrace_ok(test) {
        return;
    }
    let mut t = Target::spawn("big", 256);
    let u = url(&bucket, "dying.mimg");
    let pid = t.pid().to_string();
    let mut child = with_env(bin(), &moto)
        .args(["capture", "--pid", &pid, "--codec", "zstd:6", "-o", &u])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while moto.open_uploads(&bucket).is_empty() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the capture ended early"
        );
        assert!(t0.elapsed() < Duration::from_secs(60), "no upload started");
        std::thread::sleep(Duration::from_millis(10));
    }
    moto.kill();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains(&u), "the error names the object: {err}");
    assert!(
        err.contains("no object was created"),
        "the error says what became of the upload: {err}"
    );
    t.running()
        .expect("the process runs on after the failed capture");
}

/// A child captured against a parent in object storage: with page digests
/// in the parent's index, the capture compares pages with them and fetches
/// little more than the parent's index; without, it fetches and decodes
/// the parent's chunks that hold a changed page. Both children hold the
/// same pages and verify with their parent.
#[test]
fn remote_child_of_a_parent_with_page_digests_fetches_its_index_only() {
    use std::collections::BTreeSet;

    use crate::incremental::Live;
    let test = "remote::remote_child_of_a_parent_with_page_digests_fetches_its_index_only";
    let Some((moto, bucket)) = setup(test) else {
        return;
    };
    if !ptrace_ok(test) {
        return;
    }
    let mib = 16;
    let live = Live::spawn_mib(mib);
    let pid = live.pid();
    for (name, flag) in [("digests", "--page-digests"), ("plain", "--codec=zstd:1")] {
        ok(
            moto,
            &[
                "capture",
                "--pid",
                &pid,
                flag,
                "-o",
                &url(&bucket, &format!("{name}/base.mimg")),
            ],
        );
    }
    // One page in 64, scattered: most 512 KiB chunks hold one.
    let pages = (mib << 20) as u64 / PS;
    let changed: BTreeSet<u64> = (0..pages / 64).map(|i| i * 64 + i % 61).collect();
    live.change(&changed, 1);
    live.stop();
    let mut fetched_by = Vec::new();
    for name in ["digests", "plain"] {
        let base = url(&bucket, &format!("{name}/base.mimg"));
        let child = url(&bucket, &format!("{name}/child.mimg"));
        let (out, err) = ok(
            moto,
            &["capture", "--pid", &pid, "--parent", &base, "-o", &child],
        );
        let decoded_none = out.contains("0 B of the parent decoded");
        assert_eq!(decoded_none, name == "digests", "{name}: {out}");
        fetched_by.push(fetched(&err));
        // The child holds exactly the changed pages of the region.
        let local = tempfile::NamedTempFile::new().unwrap();
        ok(moto, &["cp", "--force", &child, s(local.path())]);
        let img = Image::open(local.path()).unwrap();
        let mut stored = BTreeSet::new();
        for e in img.extents().unwrap() {
            if e.kind == memimg::ExtentKind::Data
                && e.addr >= crate::incremental::ADDR
                && e.addr < crate::incremental::ADDR + (mib << 20) as u64
            {
                let first = (e.addr - crate::incremental::ADDR) / PS;
                stored.extend(first..first + u64::from(e.page_count));
            }
        }
        assert_eq!(stored, changed, "{name}");
        assert_eq!(img.has_page_digests(), name == "digests");
        // verify: with its parent given (a URL), or found by the hint the
        // child stores (its key beside the child's), the chain; with
        // neither, the child alone, saying that its parent was not checked.
        assert_eq!(img.header().parent_hint.as_deref(), Some("base.mimg"));
        let (v, _) = ok(moto, &["verify", "--parent", &base, &child]);
        assert!(v.contains("1 parent checked"), "{name}: {v}");
        let (v, _) = ok(moto, &["verify", &child]);
        assert!(v.contains("1 parent checked"), "{name}: {v}");
        let (v, _) = ok(moto, &["verify", "--no-hints", &child]);
        assert!(
            v.contains("not checked: only this image was verified"),
            "{name}: {v}"
        );
        let (i, _) = ok(moto, &["inspect", &child]);
        assert!(
            i.contains("chain           depth 1, 2 links open"),
            "{name}: {i}"
        );
        // cat through the chain (found by the hint): a changed page and an
        // unchanged one.
        for (p, g) in [(*changed.iter().next().unwrap(), 1), (1, 0)] {
            let mut want = vec![0u8; PS as usize];
            crate::incremental::page(p, g, &mut want);
            let o = with_env(bin(), moto)
                .args([
                    "cat",
                    "--addr",
                    &format!("{:#x}", crate::incremental::ADDR + p * PS),
                    "--len",
                    "4096",
                    &child,
                ])
                .output()
                .unwrap();
            assert_success(&o);
            assert!(o.stdout == want, "{name}: page {p}");
        }
    }
    // A copy of a child without its parent beside it: its hint finds no
    // object, so the chain is partial, as for a file whose hint names none.
    let lonely = url(&bucket, "lonely/child.mimg");
    ok(moto, &["cp", &url(&bucket, "digests/child.mimg"), &lonely]);
    let (v, _) = ok(moto, &["verify", &lonely]);
    assert!(v.contains("neither given nor found by its hint"), "{v}");
    let (code, _, err) = rrun(
        moto,
        &[
            "cat",
            "--addr",
            &format!("{:#x}", crate::incremental::ADDR + PS),
            "--len",
            "4096",
            &lonely,
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("its parent, image") && err.contains("is needed"),
        "{err}"
    );
    // Another image given as the parent: the chain is left unchecked (2),
    // as for a local child, naming the link.
    let (code, out, err) = rrun(
        moto,
        &[
            "verify",
            "--parent",
            &url(&bucket, "digests/base.mimg"),
            &url(&bucket, "plain/child.mimg"),
        ],
    );
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        out.contains("link 1 (its parent): the parent must be image"),
        "{out}{err}"
    );
    // The parent's index, against most of its chunks.
    let base_len = moto.get(&bucket, "plain/base.mimg").unwrap().len() as u64;
    eprintln!(
        "capture --parent fetched {} bytes with page digests, {} without; the parent is {base_len} bytes",
        fetched_by[0], fetched_by[1]
    );
    assert!(
        fetched_by[0] * 4 < fetched_by[1] && fetched_by[1] > base_len / 2,
        "fetched with digests {} bytes, without {} (parent {base_len} bytes)",
        fetched_by[0],
        fetched_by[1]
    );
}
