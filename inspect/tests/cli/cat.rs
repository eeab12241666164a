use std::io::Read;
use std::process::Stdio;

use memimg::Codec;

use crate::common::*;

#[test]
fn raw_hex_zero_and_gaps() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("a.mimg");
    let (kf, key) = key_file(d.path(), "k", 4);
    write_image(&p, Codec::Zstd(1), Some(key));
    let heap = heap_bytes();
    // Raw bytes across chunk and zero-page boundaries.
    let addr = HEAP + 15 * PS + 100;
    let len = 14 * PS as usize;
    let o = bin()
        .args([
            "cat",
            "--key-file",
            s(&kf),
            "--addr",
            &format!("{addr:#x}"),
            "--len",
            &len.to_string(),
            s(&p),
        ])
        .output()
        .unwrap();
    assert_success(&o);
    let off = (addr - HEAP) as usize;
    assert_eq!(o.stdout, heap[off..off + len]);
    // Recorded zero pages read as zeros.
    let o = bin()
        .args([
            "cat",
            "--key-file",
            s(&kf),
            "--addr",
            &format!("{:#x}", STACK + 24 * PS),
            "--len",
            "8K",
            s(&p),
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(o.stdout, vec![0u8; 8192]);
    // Hexdump.
    let (code, out, _) = run(&[
        "cat",
        "--key-file",
        s(&kf),
        "--addr",
        &format!("{HEAP:#x}"),
        "--len",
        "40",
        "--hex",
        s(&p),
    ]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(
        lines[0].starts_with(&format!("{HEAP:016x}  {:02x} {:02x}", heap[0], heap[1])),
        "{out}"
    );
    assert!(
        lines[2].starts_with(&format!("{:016x}  ", HEAP + 32)),
        "{out}"
    );
    assert!(lines[0].ends_with(&format!(
        "|{}|",
        heap[..16]
            .iter()
            .map(|&c| if (0x20..0x7f).contains(&c) {
                c as char
            } else {
                '.'
            })
            .collect::<String>()
    )));
    // Gaps are errors that name them, and nothing is written.
    for (addr, want) in [
        (HEAP + 64 * PS - 8, "gap"),
        (VVAR, "recorded without data"),
        (STACK + PS, "absent"),
    ] {
        let (code, out, err) = run(&[
            "cat",
            "--key-file",
            s(&kf),
            "--addr",
            &format!("{addr:#x}"),
            "--len",
            "16",
            s(&p),
        ]);
        assert_eq!(code, 2, "{addr:#x}");
        assert!(out.is_empty());
        assert!(
            err.contains("was not captured") && err.contains(want),
            "{addr:#x}: {err}"
        );
    }
    // Encrypted without a key.
    let (code, _, err) = run(&["cat", "--addr", &format!("{HEAP:#x}"), "--len", "16", s(&p)]);
    assert_eq!(code, 2);
    assert!(err.contains("is encrypted"), "{err}");
}

#[test]
fn broken_pipe_exits_quietly() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("big.mimg");
    write_big(&p, 8, Codec::None, None);
    let mut child = bin()
        .args(["cat", "--addr", "0x10000000", "--len", "8M", "--hex", s(&p)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 100];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout);
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
