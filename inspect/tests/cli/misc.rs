//! Help, completions, man page, and the rule that keys never go on argv.

use crate::common::*;

const SUBCOMMANDS: [&str; 11] = [
    "inspect",
    "verify",
    "diff",
    "recompress",
    "reencrypt",
    "cat",
    "export-core",
    "import-core",
    "keygen",
    "completions",
    "man",
];

#[test]
fn every_subcommand_help_has_an_example() {
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("Exit codes:") && out.contains("  2  error"),
        "{out}"
    );
    for sub in SUBCOMMANDS {
        let (code, out, err) = run(&[sub, "--help"]);
        assert_eq!(code, 0, "{sub}: {err}");
        assert!(out.contains("imgtool "), "{sub}");
        assert!(
            out.contains("Example"),
            "{sub} --help has no example:\n{out}"
        );
    }
    for sub in ["verify", "diff"] {
        let (_, out, _) = run(&[sub, "--help"]);
        assert!(
            out.contains("0  ") && out.contains("1  ") && out.contains("2  "),
            "{sub}: {out}"
        );
    }
}

#[test]
fn completions_and_man() {
    for shell in ["bash", "zsh", "fish"] {
        let (code, out, _) = run(&["completions", shell]);
        assert_eq!(code, 0);
        assert!(
            out.contains("reencrypt") && out.contains("key-file"),
            "{shell}"
        );
    }
    let (code, out, _) = run(&["man"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with(".ie") || out.contains(".TH imgtool"),
        "{}",
        &out[..200.min(out.len())]
    );
    assert!(out.contains("reencrypt"));
}

/// No option takes key material itself: every key option names a file or a
/// descriptor.
#[test]
fn no_key_on_argv() {
    use clap::CommandFactory;
    let cmd = imgtool::cli::Cli::command();
    for sub in cmd.get_subcommands() {
        for arg in sub.get_arguments() {
            let id = arg.get_id().as_str();
            if id.contains("key") || id.contains("pass") {
                let ok = id.ends_with("file")
                    || id.ends_with("file_b")
                    || id.contains("fd")
                    || id == "decrypt";
                assert!(
                    ok,
                    "{} --{id} would take key material on argv",
                    sub.get_name()
                );
            }
        }
    }
    let (code, _, err) = run(&["verify", "--key", "00112233", "x"]);
    assert_eq!(code, 2);
    assert!(err.contains("unexpected argument"), "{err}");
}

#[test]
fn usage_errors_exit_2() {
    let (code, _, _) = run(&[]);
    assert_eq!(code, 2);
    let (code, _, _) = run(&["frobnicate"]);
    assert_eq!(code, 2);
}

/// Writes the standard test images to `$IMGTOOL_DEMO_DIR`, to produce the
/// examples in README.md: `IMGTOOL_DEMO_DIR=/tmp/demo cargo test -p imgtool
/// --test cli -- --ignored write_demo_images`.
#[test]
#[ignore = "writes demo images for the README"]
fn write_demo_images() {
    let dir = std::path::PathBuf::from(std::env::var("IMGTOOL_DEMO_DIR").unwrap());
    std::fs::create_dir_all(&dir).unwrap();
    write_image(&dir.join("app.mimg"), memimg::Codec::Zstd(1), None);
}

/// Every subcommand that takes a path, given one that does not exist, says
/// so with the path once and the OS error once ("each context once": never
/// `opening x: opening x: No such file …: No such file …`).
#[test]
fn missing_paths_are_named_once() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("app.mimg");
    write_image(&img, memimg::Codec::Zstd(1), None);
    let (kf, _) = key_file(d.path(), "k", 1);
    let gone = d.path().join("no-such-file");
    let gone_dir = d.path().join("no-such-dir").join("out");
    let out = d.path().join("out");
    let sleeper = crate::sleeper::Sleeper::spawn(None);
    let pid = sleeper.pid().to_string();
    let (g, gd, i, o, k) = (s(&gone), s(&gone_dir), s(&img), s(&out), s(&kf));
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["inspect", g], g),
        (vec!["verify", g], g),
        (vec!["verify", "--json", g], g),
        (vec!["diff", g, i], g),
        (vec!["diff", i, g], g),
        (vec!["recompress", "--codec", "none", "-o", o, g], g),
        (vec!["recompress", "--codec", "none", "-o", gd, i], gd),
        (vec!["reencrypt", "--new-key-file", k, "-o", o, g], g),
        (vec!["reencrypt", "--new-key-file", k, "-o", gd, i], gd),
        (vec!["cat", "--addr", "0x600000", "--len", "1", g], g),
        (vec!["export-core", g, "-o", o], g),
        (vec!["export-core", i, "-o", gd], gd),
        (vec!["import-core", g, "-o", o], g),
        (vec!["keygen", "-o", gd], gd),
        (vec!["capture", "--pid", &pid, "-o", gd], gd),
        (vec!["verify", "--key-file", g, i], g),
        (vec!["inspect", "--passphrase-file", g, i], g),
        (vec!["reencrypt", "--new-key-file", g, "-o", o, i], g),
    ];
    for (args, path) in cases {
        let (code, stdout, err) = run(&args);
        assert_eq!(code, 2, "{args:?}: {stdout}{err}");
        let os = "No such file or directory";
        let shown = if args[0] == "verify" && args[1] == "--json" {
            json(&stdout)["error"].as_str().unwrap().to_string()
        } else {
            assert!(err.starts_with("imgtool: "), "{args:?}: {err}");
            err.clone()
        };
        // The parent of a missing directory is named in messages about it.
        let name = if path == gd {
            "no-such-dir"
        } else {
            "no-such-file"
        };
        assert_eq!(shown.matches(os).count(), 1, "{args:?}: {shown}");
        assert_eq!(shown.matches(name).count(), 1, "{args:?}: {shown}");
        assert_eq!(
            err.lines().count(),
            usize::from(!err.is_empty()),
            "{args:?}: {err}"
        );
    }
}

/// Two key sources at once are refused by the argument parser, with files
/// that exist, so that the refusal is not a missing file's.
#[test]
fn one_key_source_at_a_time() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("e.mimg");
    let (kf, key) = key_file(d.path(), "k", 1);
    let pf = pass_file(d.path(), "p", "pass");
    write_image(&img, memimg::Codec::None, Some(key));
    // Each alone opens the image or is the wrong key: exit 0 or 2 with its
    // own message.
    assert_eq!(run(&["verify", "--key-file", s(&kf), s(&img)]).0, 0);
    let (code, _, err) = run(&[
        "verify",
        "--key-file",
        s(&kf),
        "--passphrase-file",
        s(&pf),
        s(&img),
    ]);
    assert_eq!(code, 2, "one key source at a time");
    assert!(err.contains("cannot be used with"), "{err}");
    let (code, _, err) = run(&["verify", "--key-file", s(&kf), "--key-fd", "0", s(&img)]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot be used with"), "{err}");
    let (code, _, err) = run(&[
        "diff",
        "--key-file-b",
        s(&kf),
        "--plain-b",
        s(&img),
        s(&img),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot be used with"), "{err}");
}
