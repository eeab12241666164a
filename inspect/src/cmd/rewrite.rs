//! What recompress and reencrypt share: choosing the target, and writing a
//! whole new image crash-safely, verified before it replaces anything.

use std::io::BufWriter;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use memimg::atomic::{AtomicFile, ImageLock};
use memimg::{Image, Key, VerifyOptions, WriteStats, WriterOptions};

use crate::cli::OutputArgs;
use crate::ui;

/// The file a rewrite replaces or creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// The final path.
    pub path: PathBuf,
    /// True when it is the image itself.
    pub in_place: bool,
}

impl Target {
    /// Validates `-o OUT | --in-place` for `image`.
    pub(crate) fn new(image: &Path, o: &OutputArgs, force: bool) -> Result<Target> {
        if o.in_place {
            return Ok(Target {
                path: image.to_path_buf(),
                in_place: true,
            });
        }
        let Some(out) = &o.output else {
            bail!("give -o OUT or --in-place");
        };
        if same_file(image, out) {
            bail!(
                "{} is the image itself: use --in-place to rewrite it",
                out.display()
            );
        }
        Target::output(image, out, force)
    }

    /// Validates `-o OUT` of a conversion of `input` into another format
    /// (export-core, import-core): OUT must not be `input`, and must not exist
    /// unless `force`.
    pub(crate) fn output(input: &Path, out: &Path, force: bool) -> Result<Target> {
        if same_file(input, out) {
            bail!(
                "{} is the input file itself: give another -o",
                out.display()
            );
        }
        if !force && std::fs::symlink_metadata(out).is_ok() {
            bail!("{} exists: give --force to replace it", out.display());
        }
        Ok(Target {
            path: out.to_path_buf(),
            in_place: false,
        })
    }
}

/// True when both paths exist and name the same file.
fn same_file(a: &Path, b: &Path) -> bool {
    matches!(
        (std::fs::canonicalize(a), std::fs::canonicalize(b)),
        (Ok(a), Ok(b)) if a == b
    )
}

/// Raw bytes a transcode of `img` walks, for its progress bar.
pub(crate) fn raw_total(img: &Image) -> u64 {
    let ps = img.header().page_size;
    img.extents()
        .map(|ex| ex.iter().map(|e| e.len(ps)).sum())
        .unwrap_or(0)
}

/// Creates the temporary file beside `target`: mode 0600, or the mode (and
/// owner) of the file it will replace, set on the descriptor before anything
/// is written ([`AtomicFile::create`]).
pub(crate) fn create_tmp(target: &Target) -> Result<AtomicFile> {
    Ok(AtomicFile::create(&target.path)?)
}

/// For an in-place rewrite, takes the image's exclusive lock, before the
/// image is opened; it is held until the new file has been renamed over the
/// image, so a key rotation or another in-place rewrite cannot run meanwhile
/// (it fails at once, as this one does when another holds the lock). `None`
/// for `-o`, which changes nothing the others touch.
///
/// # Errors
/// When another process holds the lock, or the image cannot be opened.
pub(crate) fn lock_in_place(image: &Path, target: &Target) -> Result<Option<ImageLock>> {
    if !target.in_place {
        return Ok(None);
    }
    Ok(Some(ImageLock::acquire(image, false)?))
}

/// Refuses to rewrite in place an image with read-only-compatible features
/// this build does not know (spec.md, *Features*): it may be read, and
/// rewritten to `-o`, not changed in place.
///
/// # Errors
/// When `img` sets such a feature and the target is the image itself.
pub(crate) fn check_in_place(img: &Image, image: &Path, target: &Target) -> Result<()> {
    if target.in_place {
        memimg::check_modifiable(img).with_context(|| {
            format!(
                "{} cannot be rewritten in place (give -o to write a new image)",
                image.display()
            )
        })?;
    }
    Ok(())
}

/// Checks the new image at `af`'s temporary path, decoding every chunk when
/// `decode`; nothing is renamed when it fails.
pub(crate) fn verify_tmp(
    af: &AtomicFile,
    key: Option<&Key>,
    decode: bool,
    target: &Target,
) -> Result<()> {
    let pb = ui::progress(
        std::fs::metadata(af.tmp_path())
            .map(|m| m.len())
            .unwrap_or(0),
        "check",
    );
    let tick = |n: u64| pb.inc(n);
    let report = memimg::verify_path(
        af.tmp_path(),
        key,
        &VerifyOptions {
            decode,
            progress: Some(&tick),
        },
    );
    pb.finish_and_clear();
    if !report.is_intact() {
        let first = report
            .fatal
            .as_ref()
            .map(ToString::to_string)
            .or_else(|| report.problems.first().map(ToString::to_string))
            .unwrap_or_default();
        bail!(
            "the new image failed verification ({} problems, first: {first}); {} was not changed",
            report.problems.len(),
            target.path.display()
        );
    }
    Ok(())
}

/// Transcodes `src` with `opts` into a temporary file beside the target,
/// verifies it (decoding every chunk, with `new_key` when encrypted), syncs it
/// and renames it into place. Killed at any moment, the target is untouched.
/// With `lock` (an in-place rewrite), the image must still be the locked file
/// when the new one is renamed over it.
pub(crate) fn transcode_to(
    src: &Image,
    image: &Path,
    target: &Target,
    lock: Option<&ImageLock>,
    opts: WriterOptions,
    new_key: Option<&Key>,
    what: &str,
) -> Result<WriteStats> {
    let af = create_tmp(target)?;
    let pb = ui::progress(raw_total(src), what);
    let tick = |n: u64| pb.inc(n);
    let w = BufWriter::with_capacity(1 << 20, af);
    let (w, stats) = memimg::transcode(src, w, opts, &tick)
        .with_context(|| format!("rewriting {}", image.display()))?;
    pb.finish_and_clear();
    let af = w
        .into_inner()
        .map_err(|e| e.into_error())
        .context("flushing the new image")?;
    verify_tmp(&af, new_key, true, target)?;
    if let Some(lock) = lock {
        lock.check_current()?;
    }
    af.commit()?;
    Ok(stats)
}
