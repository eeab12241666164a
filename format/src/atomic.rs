//! Crash-safe replacement of a file: write a temporary file beside it, fsync,
//! rename over the target, fsync the directory.
//!
//! The files written here hold process memory or keys, so the temporary file
//! is created with mode 0600 whatever the umask, and when it replaces an
//! existing file it takes that file's mode (and owner, where allowed) before
//! anything is written to it; nothing is ever chmod-ed after the rename.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};

/// A file being written under a temporary name, renamed into place by
/// [`AtomicFile::commit`]. Dropped without a commit, it removes itself, so no
/// half-written file is ever left under the final name.
#[derive(Debug)]
pub struct AtomicFile {
    file: File,
    tmp: PathBuf,
    target: PathBuf,
}

impl AtomicFile {
    /// Creates `.NAME.tmp-PID-N` in the target's directory, mode 0600 (the
    /// umask cannot widen it). When the target exists and is a regular file,
    /// the temporary file takes its permission bits and, where the process
    /// may, its owner and group, so that a rewrite keeps them; when the group
    /// cannot be kept, the group bits are dropped (they were granted to
    /// another group).
    ///
    /// Temporary files of the same target left by a process that no longer
    /// exists (one killed mid-write) are removed first.
    ///
    /// # Errors
    /// When the temporary file cannot be created or given the target's mode.
    pub fn create(target: &Path) -> Result<AtomicFile> {
        let dir = parent_dir(target);
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into());
        remove_stale(&dir, &name);
        let mut n = 0u32;
        loop {
            let tmp = dir.join(format!(".{name}.tmp-{}-{n}", std::process::id()));
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
            {
                Ok(file) => {
                    let af = AtomicFile {
                        file,
                        tmp,
                        target: target.to_path_buf(),
                    };
                    if let Ok(orig) = std::fs::metadata(target) {
                        if orig.is_file() {
                            keep_mode(&af.file, &orig).map_err(|e| {
                                Error::io(
                                    format!(
                                        "giving {} the permissions of {}",
                                        af.tmp.display(),
                                        target.display()
                                    ),
                                    e,
                                )
                            })?;
                        }
                    }
                    return Ok(af);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(e) => {
                    return Err(Error::io(
                        format!("creating a temporary file in {}", dir.display()),
                        e,
                    ))
                }
            }
        }
    }

    /// The temporary path.
    pub fn tmp_path(&self) -> &Path {
        &self.tmp
    }

    /// The file being written.
    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// Syncs the file, renames it over the target and syncs the directory.
    ///
    /// # Errors
    /// When any step fails; the target is then untouched.
    pub fn commit(mut self) -> Result<()> {
        self.file
            .sync_all()
            .map_err(|e| Error::io(format!("syncing {}", self.tmp.display()), e))?;
        std::fs::rename(&self.tmp, &self.target).map_err(|e| {
            Error::io(
                format!(
                    "renaming {} to {}",
                    self.tmp.display(),
                    self.target.display()
                ),
                e,
            )
        })?;
        self.tmp = PathBuf::new();
        sync_dir(&parent_dir(&self.target))
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file().write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file().flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// The exclusive lock of an image being changed in place.
///
/// Every in-place change (key rotation, and imgtool's in-place recompress,
/// re-encryption, encryption and decryption) holds it from before it reads the
/// image until its last write or rename, so that two of them cannot undo each
/// other: two rotations from the same key would each wrap the data key under
/// their own new key, and the second append would silently replace the first;
/// a rotation during an in-place recompress would be lost when the recompressed
/// file is renamed over it. The second one fails at once with
/// [`ErrorKind::Busy`] rather than wait (an in-place recompress of a large
/// image takes minutes, and a command that waits silently looks hung).
///
/// The lock is an advisory `flock` on the image file (released when the lock
/// is dropped, or when the process dies): readers take no lock, and the
/// crash-safe order of every in-place change is what protects them.
#[derive(Debug)]
pub struct ImageLock {
    file: File,
    path: PathBuf,
}

impl ImageLock {
    /// Opens the image at `path` (read-write when `write`, for changes made in
    /// the file itself; read-only for rewrites that rename a new file over it)
    /// and takes its exclusive lock without waiting.
    ///
    /// When another process replaced the file between the open and the lock
    /// (an in-place rewrite that renamed its new file over it and let its lock
    /// go), the lock held is that of a file that is no longer the image: it is
    /// dropped and the new file is locked instead.
    ///
    /// # Errors
    /// [`ErrorKind::Busy`] when another process holds the lock; I/O errors.
    pub fn acquire(path: &Path, write: bool) -> Result<ImageLock> {
        let mut tries = 0;
        loop {
            let file = OpenOptions::new()
                .read(true)
                .write(write)
                .open(path)
                .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => return Err(busy(path)),
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(Error::io(format!("locking {}", path.display()), e))
                }
            }
            let lock = ImageLock {
                file,
                path: path.to_path_buf(),
            };
            match lock.is_current() {
                Ok(true) => return Ok(lock),
                Ok(false) if tries < 10 => tries += 1,
                Ok(false) => return Err(busy(path)),
                Err(e) => return Err(e),
            }
        }
    }

    /// The locked file (`&File` reads, writes and seeks).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Checks that the path still names the locked file, before a rename
    /// replaces it: a program that does not take the lock (a `mv`, a copy)
    /// may have replaced it meanwhile, and its file would be lost.
    ///
    /// # Errors
    /// [`ErrorKind::Busy`] when the path now names another file; I/O errors.
    pub fn check_current(&self) -> Result<()> {
        if self.is_current()? {
            Ok(())
        } else {
            Err(Error::plain(
                ErrorKind::Busy,
                format!(
                    "{} was replaced by another program while it was being changed: nothing was renamed over it",
                    self.path.display()
                ),
            ))
        }
    }

    fn is_current(&self) -> Result<bool> {
        let held = self
            .file
            .metadata()
            .map_err(|e| Error::io(format!("reading the status of {}", self.path.display()), e))?;
        Ok(match std::fs::metadata(&self.path) {
            Ok(now) => (now.dev(), now.ino()) == (held.dev(), held.ino()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => {
                return Err(Error::io(
                    format!("reading the status of {}", self.path.display()),
                    e,
                ))
            }
        })
    }
}

fn busy(path: &Path) -> Error {
    Error::plain(
        ErrorKind::Busy,
        format!(
            "{} is being changed in place by another process (a key rotation, recompress or re-encryption holds its lock): try again when it is done",
            path.display()
        ),
    )
}

/// Gives `file` (just created, still empty) the permission bits of `orig`,
/// and its owner and group where the process may (root may; others may pick
/// among their own groups). Group bits are dropped when the group cannot be
/// kept. Done on the descriptor (fchown, fchmod), before any data is written.
fn keep_mode(file: &File, orig: &Metadata) -> io::Result<()> {
    let mut mode = orig.mode() & 0o777;
    let now = file.metadata()?;
    if (now.uid(), now.gid()) != (orig.uid(), orig.gid()) {
        if std::os::unix::fs::fchown(file, Some(orig.uid()), Some(orig.gid())).is_err() {
            let _ = std::os::unix::fs::fchown(file, None, Some(orig.gid()));
        }
        if file.metadata()?.gid() != orig.gid() {
            mode &= !0o070;
        }
    }
    file.set_permissions(std::fs::Permissions::from_mode(mode))
}

/// Removes `.NAME.tmp-PID-N` files in `dir` whose writer process is gone.
fn remove_stale(dir: &Path, name: &str) {
    let prefix = format!(".{name}.tmp-");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let file = e.file_name();
        let Some(rest) = file.to_str().and_then(|f| f.strip_prefix(&prefix)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let alive = pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists();
        if !alive {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn parent_dir(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Fsyncs a directory, so a rename in it is durable.
///
/// # Errors
/// When the directory cannot be opened or synced.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("syncing directory {}", dir.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_replaces_and_drop_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("img");
        std::fs::write(&target, b"old").unwrap();
        // A temporary file of a writer that no longer exists is removed.
        let stale = dir.path().join(".img.tmp-999999999-0");
        std::fs::write(&stale, b"half").unwrap();
        let mut a = AtomicFile::create(&target).unwrap();
        assert!(!stale.exists());
        a.write_all(b"new").unwrap();
        let tmp = a.tmp_path().to_path_buf();
        drop(a);
        assert!(!tmp.exists());
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        let mut a = AtomicFile::create(&target).unwrap();
        a.write_all(b"new").unwrap();
        a.commit().unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// The skip protocol: a test that cannot run here says so, and fails
    /// where everything is required (`MEMIMG_REQUIRE_ALL`).
    fn skip(test: &str, why: &str) {
        if std::env::var_os("MEMIMG_REQUIRE_ALL").is_some_and(|v| !v.is_empty()) {
            panic!("would skip: {why}");
        }
        if let Some(log) = std::env::var_os("MEMIMG_SKIP_LOG") {
            if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(log) {
                let _ = writeln!(f, "{test}\t{why}");
            }
        }
        eprintln!("skipped: {why}");
    }

    fn mode_of(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().mode() & 0o7777
    }

    /// Writes and commits `target` through an AtomicFile; returns the mode the
    /// temporary file had before any byte was written, and the final mode.
    fn rewrite(target: &Path) -> (u32, u32) {
        let mut a = AtomicFile::create(target).unwrap();
        let before = mode_of(a.tmp_path());
        a.write_all(b"secret").unwrap();
        a.commit().unwrap();
        (before, mode_of(target))
    }

    /// New files are 0600 from their creation under permissive umasks, and a
    /// rewrite keeps the mode of the file it replaces, set on the temporary
    /// file before anything is written (never chmod after the rename).
    #[test]
    fn modes_under_permissive_umasks() {
        use rustix::fs::Mode;
        let old = rustix::process::umask(Mode::from_raw_mode(0o022));
        let result = std::panic::catch_unwind(|| {
            for umask in [0o022, 0o000] {
                rustix::process::umask(Mode::from_raw_mode(umask));
                let dir = tempfile::tempdir().unwrap();
                let target = dir.path().join("img");
                assert_eq!(
                    rewrite(&target),
                    (0o600, 0o600),
                    "new file, umask {umask:o}"
                );
                for keep in [0o644, 0o640, 0o600, 0o400, 0o755] {
                    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(keep))
                        .unwrap();
                    assert_eq!(rewrite(&target), (keep, keep), "umask {umask:o}");
                }
                // Special bits are not carried over.
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o4750)).unwrap();
                assert_eq!(rewrite(&target).1, 0o750);
            }
        });
        rustix::process::umask(old);
        if let Err(e) = result {
            std::panic::resume_unwind(e);
        }
    }

    /// A rewrite by root keeps the owner and group of the file it replaces.
    #[test]
    fn rewrite_keeps_owner_and_group() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("img");
        std::fs::write(&target, b"old").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640)).unwrap();
        if std::os::unix::fs::chown(&target, Some(54321), Some(54322)).is_err() {
            skip(
                "atomic::tests::rewrite_keeps_owner_and_group",
                "cannot chown a file to another user (not root)",
            );
            return;
        }
        assert_eq!(rewrite(&target), (0o640, 0o640));
        let m = std::fs::metadata(&target).unwrap();
        assert_eq!((m.uid(), m.gid()), (54321, 54322));
    }
}
