//! `export-core` and `import-core`: gdb on an exported image, import of a
//! gcore of a live child, round trips, malformed cores, and SIGKILL at any
//! moment never leaving a partial file under the final name.
//!
//! The tests that need gdb or gcore skip where those cannot run, through the
//! skip protocol (support/skip.rs).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use memimg::{Codec, VerifyOptions};

use crate::common::*;
use crate::gdb::{gdb_bytes, have};
use crate::skip::skip;
use crate::sleeper::{maps_range, Located, Sleeper};

/// The names in `dir`, with the temporary files of killed runs removed (and
/// returned apart).
fn listing(dir: &Path) -> (Vec<String>, Vec<String>) {
    let (mut names, mut tmps) = (Vec::new(), Vec::new());
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.contains(".tmp-") {
            std::fs::remove_file(dir.join(&name)).unwrap();
            tmps.push(name);
        } else {
            names.push(name);
        }
    }
    names.sort();
    (names, tmps)
}

fn intact(path: &Path) -> bool {
    memimg::verify_path(
        path,
        None,
        &VerifyOptions {
            decode: true,
            progress: None,
        },
    )
    .is_intact()
}

#[test]
fn export_core_gdb_reads_known_bytes() {
    if !have("gdb") {
        skip(
            concat!(module_path!(), "::export_core_gdb_reads_known_bytes"),
            "gdb is not installed",
        );
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("app.mimg");
    let core = d.path().join("app.core");
    write_image(&img, Codec::Zstd(1), None);
    let (code, out, err) = run(&["export-core", s(&img), "-o", s(&core)]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("no registers: memory inspection only"),
        "{out}"
    );
    let heap = heap_bytes();
    // Data at the start of the heap, the last bytes before its zero pages,
    // a zero page (a hole in the core), and stack data after absent pages.
    let stack = bytes(3, 8 * PS as usize, 30);
    let z = 20 * PS as usize;
    let cases: [(u64, Vec<u8>); 4] = [
        (HEAP, heap[..16].to_vec()),
        (HEAP + z as u64 - 8, heap[z - 8..z].to_vec()),
        (HEAP + z as u64 + 40, vec![0; 16]),
        (STACK + 16 * PS + 4000, stack[4000..4032].to_vec()),
    ];
    for (addr, want) in cases {
        match gdb_bytes(&core, addr, want.len()) {
            Ok(got) => assert_eq!(got, want, "gdb x/{}xb {addr:#x}", want.len()),
            Err(text) => panic!("gdb x/{}xb {addr:#x} printed:\n{text}", want.len()),
        }
    }
    // Only the owner may read the memory in the core.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&core).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn import_core_of_a_gcore() {
    if !have("gdb") || Command::new("gcore").arg("-h").output().is_err() {
        skip(
            concat!(module_path!(), "::import_core_of_a_gcore"),
            "gdb's gcore is not installed",
        );
        return;
    }
    let child = Sleeper::spawn(None);
    let Located { stack, addr, .. } = child.locate();
    let d = tempfile::tempdir().unwrap();
    let prefix = d.path().join("g");
    let out = Command::new("gcore")
        .arg("-o")
        .arg(&prefix)
        .arg(child.pid().to_string())
        .output()
        .unwrap();
    let core = PathBuf::from(format!("{}.{}", prefix.display(), child.pid()));
    if !core.exists() {
        skip(
            concat!(module_path!(), "::import_core_of_a_gcore"),
            &format!(
                "gcore could not attach (ptrace not permitted?): {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        );
        return;
    }
    let img = d.path().join("g.mimg");
    let (code, out, err) = run(&["import-core", s(&core), "-o", s(&img)]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("registers kept"), "{out}");

    // The regions: the stack is there with its bounds, and the process facts.
    let (code, text, err) = run(&["inspect", "--json", s(&img)]);
    assert_eq!(code, 0, "{err}");
    let doc = json(&text);
    let regions = doc["regions"].as_array().unwrap();
    assert!(regions.len() >= 5, "{text}");
    let parse = |v: &serde_json::Value| {
        u64::from_str_radix(v.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
    };
    let st = regions
        .iter()
        .find(|r| r["name"] == "[stack]")
        .unwrap_or_else(|| panic!("no [stack] region:\n{text}"));
    // gcore may dump the stack from its lowest page or from the guard gap.
    assert_eq!(parse(&st["end"]), stack.1, "{st}");
    assert!(parse(&st["start"]) <= stack.0, "{st}");
    assert!(st["data_bytes"].as_u64().unwrap() > 0);
    assert_eq!(doc["process"]["pid"], child.pid());
    assert_eq!(doc["process"]["comm"], "sleep");
    // Every region matches a line of the maps of the live child.
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", child.pid())).unwrap();
    for r in regions {
        let (a, b) = (parse(&r["start"]), parse(&r["end"]));
        assert!(
            maps.lines().any(|l| {
                let (lo, hi) = maps_range(l);
                lo <= a && b <= hi || (a <= lo && hi <= b)
            }),
            "region {a:#x}-{b:#x} is in no mapping:\n{maps}"
        );
    }

    // cat prints the known bytes.
    let o = bin()
        .args([
            "cat",
            "--addr",
            &format!("{addr:#x}"),
            "--len",
            &child.pattern.len().to_string(),
            s(&img),
        ])
        .output()
        .unwrap();
    assert_success(&o);
    assert_eq!(o.stdout, child.pattern);

    // And back to a core that gdb reads the same bytes from.
    let core2 = d.path().join("again.core");
    let (code, out, err) = run(&["export-core", s(&img), "-o", s(&core2)]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("with registers"), "{out}");
    let got = gdb_bytes(&core2, addr, child.pattern.len()).unwrap_or_else(|t| panic!("{t}"));
    assert_eq!(got, child.pattern);
}

#[test]
fn image_core_image_round_trip() {
    let d = tempfile::tempdir().unwrap();
    let (kf, key) = key_file(d.path(), "k", 9);
    for (codec, key) in [
        ("none", None),
        ("zstd:3", None),
        ("zstd", Some((kf.clone(), key))),
    ] {
        let img = d.path().join("a.mimg");
        let core = d.path().join("a.core");
        let back = d.path().join("b.mimg");
        write_image(&img, Codec::Zstd(1), key.as_ref().map(|k| k.1.clone()));
        let kargs: Vec<&str> = match &key {
            Some((p, _)) => vec!["--key-file", s(p)],
            None => vec![],
        };
        let mut a = vec!["export-core", s(&img), "-o", s(&core), "--force"];
        a.extend(&kargs);
        let (code, out, err) = run(&a);
        assert_eq!(code, 0, "{out}{err}");
        let mut a = vec![
            "import-core",
            s(&core),
            "-o",
            s(&back),
            "--force",
            "--codec",
            codec,
        ];
        a.extend(&kargs);
        let (code, out, err) = run(&a);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("exact"), "{out}");
        let mut a = vec!["diff", s(&img), s(&back)];
        a.extend(&kargs);
        let (code, out, err) = run(&a);
        assert_eq!(code, 0, "{codec}: diff says\n{out}{err}");
        // The same regions, names and kinds, and the same process facts.
        let show = |p: &Path| {
            let mut a = vec!["inspect", "--json", s(p)];
            a.extend(&kargs);
            let v = json(&run(&a).1);
            let regions: Vec<_> = v["regions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    (
                        r["start"].clone(),
                        r["end"].clone(),
                        r["perms"].clone(),
                        r["kind"].clone(),
                        r["name"].clone(),
                        r["zero_pages"].clone(),
                        r["absent_pages"].clone(),
                    )
                })
                .collect();
            (
                regions,
                v["process"].clone(),
                v["encryption"]["cipher"].clone(),
            )
        };
        assert_eq!(show(&img), show(&back), "{codec}");
    }
}

#[test]
fn json_reports() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("a.mimg");
    let core = d.path().join("a.core");
    let back = d.path().join("b.mimg");
    write_image(&img, Codec::Zstd(1), None);
    let (code, out, err) = run(&["export-core", "--json", s(&img), "-o", s(&core)]);
    assert_eq!(code, 0, "{err}");
    let e = json(&out);
    assert_eq!(e["file_size"], std::fs::metadata(&core).unwrap().len());
    assert_eq!(e["registers"], false);
    assert!(e["messages"][0]
        .as_str()
        .unwrap()
        .contains("memory inspection only"));
    // Code, heap (data, zero, data), vvar (no data), stack (absent, data, zero).
    assert!(e["segments"].as_u64().unwrap() >= 4, "{out}");
    let (code, out, err) = run(&["import-core", "--json", s(&core), "-o", s(&back)]);
    assert_eq!(code, 0, "{err}");
    let i = json(&out);
    assert_eq!(i["regions"], 4);
    assert_eq!(i["exact"], true);
    assert_eq!(i["zero_bytes"], 16 * PS);
    // The stack's absent pages; [vvar] is a region without data, not counted.
    assert_eq!(i["absent_bytes"], 16 * PS);
    assert_eq!(i["file_size"], std::fs::metadata(&back).unwrap().len());
}

#[test]
fn malformed_cores_exit_2() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("a.mimg");
    let core = d.path().join("a.core");
    write_image(&img, Codec::Zstd(1), None);
    let (code, _, err) = run(&["export-core", s(&img), "-o", s(&core)]);
    assert_eq!(code, 0, "{err}");
    let good = std::fs::read(&core).unwrap();
    let bad = d.path().join("bad.core");
    let out = d.path().join("out.mimg");

    let phoff = u64::from_le_bytes(good[32..40].try_into().unwrap()) as usize;
    let phnum = u16::from_le_bytes(good[56..58].try_into().unwrap()) as usize;
    // The first PT_LOAD with file bytes.
    let load = (0..phnum)
        .map(|i| phoff + i * 56)
        .find(|&o| {
            u32::from_le_bytes(good[o..o + 4].try_into().unwrap()) == 1
                && u64::from_le_bytes(good[o + 32..o + 40].try_into().unwrap()) > 0
        })
        .unwrap();
    let mut huge = good.clone();
    huge[load + 32..load + 40].copy_from_slice(&0xffff_ffff_ffff_f000u64.to_le_bytes());
    let mut past = good.clone();
    past[load + 8..load + 16].copy_from_slice(&(good.len() as u64).to_le_bytes());
    let cases: [(&str, Vec<u8>, &str); 6] = [
        ("empty", Vec::new(), "ELF header"),
        ("text", b"hello, world\n".to_vec(), "not an ELF file"),
        ("truncated header", good[..40].to_vec(), "ELF header"),
        (
            "truncated program headers",
            good[..phoff + 60].to_vec(),
            "program header table",
        ),
        ("huge p_filesz", huge, "p_filesz 0xfffffffffffff000"),
        ("segment past the end", past, "past the end"),
    ];
    for (what, bytes, msg) in cases {
        std::fs::write(&bad, &bytes).unwrap();
        let (code, o, err) = run(&["import-core", s(&bad), "-o", s(&out)]);
        assert_eq!(code, 2, "{what}: {o}{err}");
        assert!(
            err.starts_with("imgtool: importing ") && err.contains(msg),
            "{what}: {err}"
        );
        assert!(!err.contains("panicked"), "{what}: {err}");
        let (names, tmps) = listing(d.path());
        assert_eq!(names, ["a.core", "a.mimg", "bad.core"], "{what}");
        assert!(tmps.is_empty(), "{what}: temporary files left: {tmps:?}");
    }
    // Not a core at all: an image given to import-core, and a core to export-core.
    let (code, _, err) = run(&["import-core", s(&img), "-o", s(&out)]);
    assert_eq!(code, 2);
    assert!(err.contains("not an ELF file"), "{err}");
    let (code, _, err) = run(&["export-core", s(&core), "-o", s(&out)]);
    assert_eq!(code, 2);
    assert!(err.contains("not a memimg image"), "{err}");
    assert!(!out.exists());
}

#[test]
fn arguments_are_checked_first() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("a.mimg");
    let core = d.path().join("a.core");
    let (kf, key) = key_file(d.path(), "k", 3);
    write_image(&img, Codec::Zstd(1), Some(key));
    // An encrypted image needs its key.
    let (code, _, err) = run(&["export-core", s(&img), "-o", s(&core)]);
    assert_eq!(code, 2);
    assert!(err.contains("is encrypted: give its key"), "{err}");
    assert!(!core.exists());
    // A wrong key says so.
    let (wk, _) = key_file(d.path(), "wrong", 4);
    let (code, _, err) = run(&["export-core", "--key-file", s(&wk), s(&img), "-o", s(&core)]);
    assert_eq!(code, 2);
    assert!(err.contains("the key does not open this image"), "{err}");
    let (code, _, err) = run(&["export-core", "--key-file", s(&kf), s(&img), "-o", s(&core)]);
    assert_eq!(code, 0, "{err}");
    // An existing output is refused without --force, and the input is never
    // the output.
    let before = std::fs::read(&core).unwrap();
    let (code, _, err) = run(&["export-core", "--key-file", s(&kf), s(&img), "-o", s(&core)]);
    assert_eq!(code, 2);
    assert!(err.contains("exists: give --force"), "{err}");
    let (code, _, err) = run(&["import-core", s(&core), "-o", s(&img)]);
    assert_eq!(code, 2);
    assert!(err.contains("exists: give --force"), "{err}");
    let (code, _, err) = run(&["import-core", s(&core), "-o", s(&core), "--force"]);
    assert_eq!(code, 2);
    assert!(err.contains("is the input file itself"), "{err}");
    assert_eq!(std::fs::read(&core).unwrap(), before);
    let (code, _, err) = run(&["import-core", "--codec", "lz4", s(&core), "-o", "x"]);
    assert_eq!(code, 2);
    assert!(err.contains("--codec"), "{err}");
    let (code, _, err) = run(&["import-core", "--page-size", "8192", s(&core), "-o", "x"]);
    assert_eq!(code, 2);
    assert!(err.contains("--page-size"), "{err}");
}

/// Runs `args` (writing `out`, which starts as a copy of `old`) and SIGKILLs
/// it after each delay. After every kill `out` must be either the old file,
/// byte for byte, or a complete new one that `complete` accepts; nothing else
/// may appear in `dir` but the temporary files of killed runs.
fn kill_at_moments(
    dir: &Path,
    out: &Path,
    old: &Path,
    args: &[&str],
    complete: &dyn Fn(&Path) -> bool,
) {
    let old_bytes = std::fs::read(old).unwrap();
    std::fs::copy(old, out).unwrap();
    let (expect_names, _) = listing(dir);
    let (mut killed, mut finished, mut replaced, mut tmps_seen) = (0, 0, 0, 0);
    for delay_ms in [0u64, 10, 30, 60, 100, 150, 250, 400, 700, 1200] {
        std::fs::copy(old, out).unwrap();
        match run_killed_after(args, Duration::from_millis(delay_ms)) {
            Some(st) => {
                assert!(st.success(), "{args:?} failed");
                finished += 1;
            }
            None => killed += 1,
        }
        let now = std::fs::read(out).unwrap();
        if now != old_bytes {
            assert!(
                complete(out),
                "after {delay_ms} ms: {} is neither the old file nor a complete new one",
                out.display()
            );
            replaced += 1;
        }
        let (names, tmps) = listing(dir);
        assert_eq!(names, expect_names, "after {delay_ms} ms");
        tmps_seen += tmps.len();
    }
    eprintln!(
        "{args:?}: {killed} runs killed ({tmps_seen} left a temporary file), {finished} finished; {replaced} replaced the target"
    );
    assert!(
        killed >= 3,
        "the core was too small to kill the command mid-way ({killed} kills)"
    );
}

#[test]
fn sigkill_export_and_import_core() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let big = dir.join("big.mimg");
    let core = dir.join("big.core");
    write_big(&big, 64, Codec::Zstd(1), None);
    let (code, out, err) = run(&["export-core", s(&big), "-o", s(&core)]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(std::fs::metadata(&core).unwrap().len() > 64 << 20);
    // A small image and a small core that the runs replace.
    let small = dir.join("small.mimg");
    let small_core = dir.join("small.core");
    write_image(&small, Codec::Zstd(1), None);
    let (code, _, err) = run(&["export-core", s(&small), "-o", s(&small_core)]);
    assert_eq!(code, 0, "{err}");

    // import-core: the target is the old image or a complete new one.
    let out = dir.join("out.mimg");
    let complete = |p: &Path| intact(p) && run(&["diff", s(&big), s(p)]).0 == 0;
    kill_at_moments(
        dir,
        &out,
        &small,
        &["import-core", "--force", s(&core), "-o", s(&out)],
        &complete,
    );
    std::fs::remove_file(&out).unwrap();

    // export-core: the target is the old core or the whole new one.
    let reference = std::fs::read(&core).unwrap();
    let out = dir.join("out.core");
    let complete = |p: &Path| std::fs::read(p).unwrap() == reference;
    kill_at_moments(
        dir,
        &out,
        &small_core,
        &["export-core", "--force", s(&big), "-o", s(&out)],
        &complete,
    );
}
