//! Key input: bounded, never hanging on a FIFO or a device, and refused for
//! plain images in every command that reads an image with a key.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use memimg::Codec;

use crate::common::*;

/// Runs `cmd` for at most `limit`; returns (exit code, stderr), or panics
/// naming `what` when it did not finish (it is killed first).
fn within(mut cmd: Command, limit: Duration, what: &str) -> (i32, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = child.wait_with_output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn mkfifo(p: &Path) {
    let st = Command::new("mkfifo").arg(p).status().unwrap();
    assert!(st.success(), "mkfifo {}", p.display());
}

/// Runs `script` under `bash -c` with the imgtool binary as `$0`.
fn bash(script: &str) -> Command {
    let mut c = Command::new("bash");
    c.args(["-c", script, env!("CARGO_BIN_EXE_imgtool")]);
    c
}

#[test]
fn key_input_is_bounded_and_never_hangs() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("e.mimg");
    let (kf, key) = key_file(d.path(), "k", 4);
    write_image(&img, Codec::None, Some(key));
    let fifo = d.path().join("fifo");
    mkfifo(&fifo);
    let limit = Duration::from_secs(20);
    let verify = |opt: &str, file: &Path| {
        let mut c = bin();
        c.args(["verify", opt, s(file), s(&img)]);
        c
    };
    // /dev/zero would read for ever: refused at once as a device.
    let (code, err) = within(
        verify("--key-file", Path::new("/dev/zero")),
        limit,
        "/dev/zero",
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("character device"), "{err}");
    let (code, err) = within(
        verify("--passphrase-file", Path::new("/dev/zero")),
        limit,
        "/dev/zero",
    );
    assert_eq!(code, 2, "{err}");
    // A FIFO with no writer: no hang, an empty key.
    let (code, err) = within(verify("--key-file", &fifo), limit, "FIFO key file");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("holds 0 bytes"), "{err}");
    let (code, err) = within(verify("--passphrase-file", &fifo), limit, "FIFO passphrase");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is empty"), "{err}");
    // A directory.
    let (code, err) = within(verify("--key-file", d.path()), limit, "directory");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("a directory"), "{err}");
    // A file too long to be a key, and a passphrase file too long.
    let long = d.path().join("long");
    std::fs::write(&long, vec![b'x'; 10_000]).unwrap();
    let (code, err) = within(verify("--key-file", &long), limit, "long key");
    assert_eq!(code, 2);
    assert!(err.contains("more than 32 bytes"), "{err}");
    let (code, err) = within(verify("--passphrase-file", &long), limit, "long passphrase");
    assert_eq!(code, 2);
    assert!(err.contains("more than 4096 bytes"), "{err}");

    // A pipe is a fine key file (`--key-file <(…)`), and so is a FIFO with a
    // writer.
    let (code, err) = within(
        bash(&format!(
            "\"$0\" verify --key-file <(cat {}) {}",
            s(&kf),
            s(&img)
        )),
        limit,
        "process substitution",
    );
    assert_eq!(code, 0, "{err}");

    // --key-fd: a file, a pipe, standard input; a device and a closed
    // descriptor are refused.
    let (code, err) = within(
        bash(&format!(
            "\"$0\" verify --key-fd 3 {} 3<{}",
            s(&img),
            s(&kf)
        )),
        limit,
        "--key-fd file",
    );
    assert_eq!(code, 0, "{err}");
    let (code, err) = within(
        bash(&format!(
            "cat {} | \"$0\" verify --key-fd 3 {} 3<&0",
            s(&kf),
            s(&img)
        )),
        limit,
        "--key-fd pipe",
    );
    assert_eq!(code, 0, "{err}");
    let (code, err) = within(
        bash(&format!(
            "cat {} | \"$0\" verify --key-fd 0 {}",
            s(&kf),
            s(&img)
        )),
        limit,
        "--key-fd 0 pipe",
    );
    assert_eq!(code, 0, "{err}");
    // A writer that keeps the pipe open after the key is not waited for.
    let t = Instant::now();
    let (code, err) = within(
        bash(&format!(
            "\"$0\" verify --key-fd 3 {} 3< <(exec 2>/dev/null; cat {}; exec sleep 30)",
            s(&img),
            s(&kf)
        )),
        limit,
        "--key-fd pipe held open",
    );
    assert_eq!(code, 0, "{err}");
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    let (code, err) = within(
        bash(&format!("\"$0\" verify --key-fd 3 {} 3</dev/zero", s(&img))),
        limit,
        "--key-fd /dev/zero",
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("character device"), "{err}");
    let (code, err) = within(
        bash(&format!("\"$0\" verify --key-fd 7 {} 7<&-", s(&img))),
        limit,
        "--key-fd closed",
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("key descriptor 7 is not open"), "{err}");
}

/// A key given for a plain image is refused by every command that reads an
/// image with a key (exit 2, saying why), and nothing is written.
#[test]
fn key_for_a_plain_image_is_refused_everywhere() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("plain.mimg");
    write_image(&p, Codec::Zstd(1), None);
    let (kf, _) = key_file(d.path(), "k", 4);
    let (nk, _) = key_file(d.path(), "nk", 5);
    let out = d.path().join("out");
    let (p_, k, o, n) = (s(&p), s(&kf), s(&out), s(&nk));
    let cases: Vec<Vec<&str>> = vec![
        vec!["inspect", "--key-file", k, p_],
        vec!["verify", "--key-file", k, p_],
        vec!["verify", "--json", "--key-file", k, p_],
        vec![
            "cat",
            "--key-file",
            k,
            "--addr",
            "0x600000",
            "--len",
            "16",
            p_,
        ],
        vec!["diff", "--key-file", k, p_, p_],
        vec![
            "recompress",
            "--key-file",
            k,
            "--codec",
            "none",
            "-o",
            o,
            p_,
        ],
        vec![
            "recompress",
            "--key-file",
            k,
            "--codec",
            "none",
            "--in-place",
            p_,
        ],
        vec!["export-core", "--key-file", k, p_, "-o", o],
        vec![
            "reencrypt",
            "--key-file",
            k,
            "--new-key-file",
            n,
            "-o",
            o,
            p_,
        ],
        vec![
            "reencrypt",
            "--key-file",
            k,
            "--new-key-file",
            n,
            "--in-place",
            p_,
        ],
    ];
    let before = std::fs::read(&p).unwrap();
    for args in cases {
        let (code, stdout, err) = run(&args);
        assert_eq!(code, 2, "{args:?}: {stdout}{err}");
        let msg = if args.contains(&"--json") {
            json(&stdout)["error"].as_str().unwrap().to_string()
        } else {
            err
        };
        assert!(
            msg.contains("not encrypted, but a key was given"),
            "{args:?}: {msg}"
        );
        assert!(!out.exists(), "{args:?} wrote {o}");
        assert_eq!(
            std::fs::read(&p).unwrap(),
            before,
            "{args:?} changed the image"
        );
    }
}
