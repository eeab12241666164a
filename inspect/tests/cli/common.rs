//! Fixtures: deterministic test images, running the binary, golden files.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};

use memimg::*;

pub const PS: u64 = 4096;

/// Deterministic bytes: text-like and compressible when `mix` is small,
/// random-looking when it is large.
pub fn bytes(seed: u64, len: usize, mix: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let words: [&[u8]; 8] = [
        b"alpha ", b"beta ", b"gamma ", b"delta ", b"heap ", b"page ", b"0123 ", b"\n",
    ];
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if (x % 100) < u64::from(mix) {
            v.extend_from_slice(&x.to_le_bytes());
        } else {
            v.extend_from_slice(words[(x >> 32) as usize % 8]);
        }
    }
    v.truncate(len);
    // Never an all-zero page by accident.
    for p in v.chunks_mut(PS as usize) {
        p[0] = p[0].max(1);
    }
    v
}

/// Writer options with every fact fixed, so output is the same every run
/// except for the image id and creation time.
pub fn opts(codec: Codec, key: Option<Key>) -> WriterOptions {
    WriterOptions::new()
        .page_size(4096)
        .chunk_size(64 * 1024)
        .codec(codec)
        .workers(2)
        .key_opt(key)
        .producer("imgtool-tests 1")
        .machine(MachineFacts {
            arch: 62,
            endian: Endian::Little,
            ptr_bytes: 8,
            page_size: 4096,
        })
        .validation("test-tag", b"validation data".to_vec())
        .process(Some(ProcessFacts {
            pid: Some(4242),
            comm: b"testproc".to_vec(),
            cmdline: b"testproc\0--serve\0".to_vec(),
            exe: b"/usr/bin/testproc".to_vec(),
            build_id: vec![0xab, 0xcd, 0xef, 0x01],
            kernel_release: b"6.1.0-test".to_vec(),
        }))
}

pub const CODE: u64 = 0x40_0000;
pub const HEAP: u64 = 0x60_0000;
pub const VVAR: u64 = 0x7fff_f7ff_0000;
pub const STACK: u64 = 0x7fff_fffd_e000;

/// The heap of the standard image: data, zero pages, data.
pub fn heap_bytes() -> Vec<u8> {
    let mut h = bytes(2, 64 * PS as usize, 5);
    h[20 * PS as usize..28 * PS as usize].fill(0);
    h
}

/// Writes the standard small image: a code region, a heap with zero pages,
/// a region without data, and a stack with absent, data and zero pages.
pub fn write_image(path: &Path, codec: Codec, key: Option<Key>) -> WriteStats {
    let out = std::fs::File::create(path).unwrap();
    let mut w = Writer::new(std::io::BufWriter::new(out), opts(codec, key)).unwrap();
    let mut code = RegionInfo::new(CODE, 16 * PS)
        .kind(RegionKind::Code)
        .name("/usr/bin/testproc")
        .prot(Prot(Prot::READ | Prot::EXEC));
    code.file_offset = 0x1000;
    w.add_region(code, &bytes(1, 16 * PS as usize, 60)).unwrap();
    w.add_region(
        RegionInfo::new(HEAP, 64 * PS)
            .kind(RegionKind::Heap)
            .name("[heap]"),
        &heap_bytes(),
    )
    .unwrap();
    w.add_empty_region(
        RegionInfo::new(VVAR, 2 * PS)
            .kind(RegionKind::Other)
            .name("[vvar]")
            .prot(Prot(Prot::READ)),
    )
    .unwrap();
    w.begin_region(
        RegionInfo::new(STACK, 32 * PS)
            .kind(RegionKind::Stack)
            .name("[stack]"),
    )
    .unwrap();
    w.push_absent(16 * PS).unwrap();
    w.push_data(&bytes(3, 8 * PS as usize, 30)).unwrap();
    w.push_zero(8 * PS).unwrap();
    w.end_region().unwrap();
    let (bw, stats) = w.finish().unwrap();
    bw.into_inner().unwrap().sync_all().unwrap();
    stats
}

/// Writes an image of one anonymous region of `mib` MiB of mixed content.
pub fn write_big(path: &Path, mib: usize, codec: Codec, key: Option<Key>) {
    let out = std::fs::File::create(path).unwrap();
    let o = opts(codec, key).chunk_size(1 << 20);
    let mut w = Writer::new(std::io::BufWriter::new(out), o).unwrap();
    w.begin_region(RegionInfo::new(0x1000_0000, (mib as u64) << 20).name("big"))
        .unwrap();
    for i in 0..mib {
        w.push_data(&bytes(100 + i as u64, 1 << 20, 25)).unwrap();
    }
    w.end_region().unwrap();
    w.finish().unwrap();
}

pub fn key_file(dir: &Path, name: &str, byte: u8) -> (PathBuf, Key) {
    let p = dir.join(name);
    std::fs::write(&p, [byte; 32]).unwrap();
    (p, Key::raw([byte; 32]))
}

/// A small passphrase file. The passphrase key uses cheap Argon2 parameters
/// only when opening; writing with it uses the library defaults.
pub fn pass_file(dir: &Path, name: &str, pass: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("{pass}\n")).unwrap();
    p
}

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_imgtool"))
}

/// Runs the binary; returns (exit code, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, String, String) {
    let o: Output = bin().args(args).output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Asserts that a run of the binary exited 0, showing its stderr if not.
pub fn assert_success(o: &Output) {
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Runs the binary with `args` (output discarded) and SIGKILLs it after
/// `delay`. Returns its exit status when it finished first, None when it was
/// killed.
pub fn run_killed_after(args: &[&str], delay: std::time::Duration) -> Option<ExitStatus> {
    let mut child = bin()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(delay);
    let done = child.try_wait().unwrap();
    if done.is_none() {
        child.kill().unwrap(); // SIGKILL
    }
    child.wait().unwrap();
    done
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Replaces what varies from run to run (the temp dir, image ids, creation
/// times) with placeholders. The ids and times are read from the images, so
/// nothing else is masked.
pub fn normalise(text: &str, dir: &Path, images: &[&Path]) -> String {
    let mut t = text.replace(s(dir), "$DIR");
    for p in images {
        if let Ok(img) = Image::open(p) {
            let h = img.header();
            t = t.replace(&h.image_id_hex(), "<IMAGE-ID>");
            t = t.replace(
                &imgtool::fmt::rfc3339(h.created_secs, h.created_nanos),
                "<CREATED>",
            );
        }
    }
    t
}

/// Compares `actual` with `tests/data/NAME.expected`, or rewrites it when
/// `IMGTOOL_UPDATE_GOLDEN=1`.
pub fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(format!("{name}.expected"));
    if std::env::var_os("IMGTOOL_UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with IMGTOOL_UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    if expected != actual {
        panic!(
            "output differs from {}\n--- expected\n{expected}\n--- actual\n{actual}\n(run with IMGTOOL_UPDATE_GOLDEN=1 to accept)",
            path.display()
        );
    }
}

pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

/// The bytes at `addr` of an image, through the library.
pub fn read(path: &Path, key: Option<&Key>, addr: u64, len: usize) -> Vec<u8> {
    let img = Image::open_with_key(path, key).unwrap();
    let mut v = vec![0u8; len];
    img.read_at(addr, &mut v).unwrap();
    v
}
