//! What is not a regular file is refused before a byte of it is read: a FIFO
//! with no writer (which used to make `open` wait for ever), a character
//! device that never ends (`/dev/zero`, which used to be read into memory
//! until it ran out), a directory.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use memimg::{verify_path, ErrorKind, FileBytes, Image, Key, VerifyOptions};

/// Runs `f` on a thread and fails when it does not return within 20 s (a
/// call that waits on a FIFO, or reads a device without end).
fn within_time<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("{what} did not return within 20 s"))
}

/// Every entry point that takes a path refuses `path` with `InvalidInput`,
/// naming it and saying what it is.
fn refused(path: &Path, is: &str) {
    let want = format!("{} is {is}, not a regular file", path.display());
    let p = path.to_path_buf();
    let errors: Vec<(String, memimg::Error)> = within_time(&want, move || {
        let key = Key::raw([7; 32]);
        let mut v = vec![
            ("Image::open".into(), Image::open(&p).unwrap_err()),
            (
                "Image::open_with_key".into(),
                Image::open_with_key(&p, Some(&key)).unwrap_err(),
            ),
        ];
        let r = verify_path(&p, None, &VerifyOptions::default());
        v.push(("verify_path".into(), r.fatal.unwrap()));
        let fb = FileBytes::open(&p).err().unwrap();
        v.push(("FileBytes::open".into(), fb));
        v
    });
    for (what, e) in errors {
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{what}: {e}");
        assert_eq!(e.to_string(), want, "{what}");
    }
}

#[test]
fn what_is_not_a_regular_file_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    refused(dir.path(), "a directory");
    refused(Path::new("/dev/zero"), "a character device");
    let fifo: PathBuf = dir.path().join("fifo");
    match std::process::Command::new("mkfifo").arg(&fifo).status() {
        Ok(s) if s.success() => refused(&fifo, "a FIFO"),
        Ok(s) => memimg_tests::skip(
            "files::what_is_not_a_regular_file_is_refused_unread (FIFO case)",
            &format!("mkfifo failed: {s}"),
        ),
        Err(e) => memimg_tests::skip(
            "files::what_is_not_a_regular_file_is_refused_unread (FIFO case)",
            &format!("mkfifo cannot run: {e}"),
        ),
    }
}

#[test]
fn a_missing_file_names_itself_once() {
    let e = Image::open("/nonexistent/image.mimg").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    let s = e.to_string();
    assert_eq!(
        s.matches("/nonexistent/image.mimg").count(),
        1,
        "the path appears once: {s}"
    );
    assert_eq!(
        s.matches("os error 2").count(),
        1,
        "the cause appears once: {s}"
    );
    // Display carries the cause, so source() does not repeat it: a chain
    // printer (anyhow's {:#}) shows it once.
    assert!(std::error::Error::source(&e).is_none(), "{s}");
    assert_eq!(
        e.io_error().map(std::io::Error::kind),
        Some(std::io::ErrorKind::NotFound)
    );
}
