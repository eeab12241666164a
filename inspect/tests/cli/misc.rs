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
    let (code, _, _) = run(&["verify", "--key-file", "a", "--passphrase-file", "b", "x"]);
    assert_eq!(code, 2, "one key source at a time");
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
