//! What recompress and reencrypt share: choosing the target, and writing a
//! whole new image crash-safely, verified before it replaces anything.
//!
//! A target is a path or an `s3://` URL. A local target is written to a
//! temporary file beside it, verified, synced and renamed. A remote one is
//! streamed into a multipart upload, which completes only once the whole
//! image is written (an error before that aborts it, and leaves no object);
//! the new object is then verified (every chunk fetched and decoded) and
//! removed again if it fails. Objects cannot be changed in place: an
//! in-place rewrite or key rotation of a remote image is refused, pointing
//! to `-o`.

use std::io::BufWriter;
use std::path::Path;

use anyhow::{bail, Context, Result};
use memimg::atomic::{AtomicFile, ImageLock};
use memimg::{Image, Key, VerifyOptions, WriteStats, WriterOptions};
use memimg_remote::{FetchOptions, Location, RemoteWriter, S3Url, Store, UploadOptions};

use crate::cli::OutputArgs;
use crate::ui;

/// The file or object a rewrite replaces or creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// Where it ends up.
    pub loc: Location,
    /// True when it is the image itself.
    pub in_place: bool,
}

impl Target {
    /// Validates `-o OUT | --in-place` for `image`.
    pub(crate) fn new(image: &Location, o: &OutputArgs, force: bool) -> Result<Target> {
        if o.in_place {
            if image.is_remote() {
                bail!(
                    "{image} is an object in remote storage, which cannot be changed in place \
                     (an object is only ever replaced whole): give -o OUT, a path or an s3:// \
                     URL, to write the new image there"
                );
            }
            return Ok(Target {
                loc: image.clone(),
                in_place: true,
            });
        }
        let Some(out) = &o.output else {
            bail!("give -o OUT or --in-place");
        };
        let out = crate::open::location(out)?;
        if same(image, &out) {
            bail!("{out} is the image itself: use --in-place to rewrite it");
        }
        Target::output(image, &out, force)
    }

    /// Validates `-o OUT` of a conversion of `input` into another format
    /// (export-core, import-core): OUT must not be `input`, and must not exist
    /// unless `force`.
    pub(crate) fn output(input: &Location, out: &Location, force: bool) -> Result<Target> {
        if same(input, out) {
            bail!("{out} is the input file itself: give another -o");
        }
        if !force && exists(out)? {
            bail!("{out} exists: give --force to replace it");
        }
        Ok(Target {
            loc: out.clone(),
            in_place: false,
        })
    }
}

/// True when `loc` names an existing file or object.
fn exists(loc: &Location) -> Result<bool> {
    match loc {
        Location::Local(p) => Ok(std::fs::symlink_metadata(p).is_ok()),
        Location::S3(url) => Store::new(&url.bucket, crate::open::s3())
            .and_then(|s| s.exists(url))
            .map_err(anyhow::Error::new),
    }
}

/// True when both name the same image: the same existing file, or the
/// same object.
fn same(a: &Location, b: &Location) -> bool {
    match (a, b) {
        (Location::Local(a), Location::Local(b)) => same_file(a, b),
        (Location::S3(a), Location::S3(b)) => a == b,
        _ => false,
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
/// is written ([`AtomicFile::create`]). For a remote target, a scratch file
/// in the temporary directory, never renamed (removed when dropped).
pub(crate) fn create_tmp(target: &Target) -> Result<AtomicFile> {
    match &target.loc {
        Location::Local(p) => Ok(AtomicFile::create(p)?),
        Location::S3(_) => Ok(AtomicFile::create(
            &std::env::temp_dir().join("imgtool-upload.mimg"),
        )?),
    }
}

/// Starts the multipart upload of a new object at `url`.
///
/// # Errors
/// A missing bucket, refused credentials, the network.
pub(crate) fn create_upload(url: &S3Url) -> Result<RemoteWriter> {
    RemoteWriter::create(url, crate::open::s3(), UploadOptions::default())
        .map_err(anyhow::Error::new)
}

/// Checks a new object, decoding every chunk when `decode` (with `key`
/// when encrypted); removes it when it fails, since it is already visible.
///
/// # Errors
/// When the check fails or cannot be made; the message says whether the
/// object was removed.
pub(crate) fn verify_uploaded(url: &S3Url, key: Option<&Key>, decode: bool) -> Result<()> {
    let reader = crate::open::reader(url)?;
    let pb = ui::progress(memimg::ReadAt::len(&*reader), "check");
    let tick = |n: u64| pb.inc(n);
    let report = memimg_remote::verify_remote(
        reader,
        key,
        &VerifyOptions {
            decode,
            progress: Some(&tick),
        },
        FetchOptions::default(),
    );
    pb.finish_and_clear();
    if report.is_intact() {
        return Ok(());
    }
    let first = report
        .fatal
        .as_ref()
        .map(ToString::to_string)
        .or_else(|| report.problems.first().map(ToString::to_string))
        .unwrap_or_default();
    let removed = match Store::new(&url.bucket, crate::open::s3()).and_then(|s| s.delete(url)) {
        Ok(()) => "it was removed".to_string(),
        Err(e) => format!("removing it failed too ({e})"),
    };
    bail!(
        "the new image {url} failed verification ({} problems, first: {first}); {removed}",
        report.problems.len()
    )
}

/// For an in-place rewrite, takes the image's exclusive lock, before the
/// image is opened; it is held until the new file has been renamed over the
/// image, so a key rotation or another in-place rewrite cannot run meanwhile
/// (it fails at once, as this one does when another holds the lock). `None`
/// for `-o`, which changes nothing the others touch.
///
/// # Errors
/// When another process holds the lock, or the image cannot be opened.
pub(crate) fn lock_in_place(image: &Location, target: &Target) -> Result<Option<ImageLock>> {
    match (target.in_place, image) {
        (true, Location::Local(p)) => Ok(Some(ImageLock::acquire(p, false)?)),
        _ => Ok(None),
    }
}

/// Refuses to rewrite in place an image with read-only-compatible features
/// this build does not know (spec.md, *Features*): it may be read, and
/// rewritten to `-o`, not changed in place.
///
/// # Errors
/// When `img` sets such a feature and the target is the image itself.
pub(crate) fn check_in_place(img: &Image, image: &Location, target: &Target) -> Result<()> {
    if target.in_place {
        memimg::check_modifiable(img).with_context(|| {
            format!("{image} cannot be rewritten in place (give -o to write a new image)")
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
            target.loc
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
    image: &Location,
    target: &Target,
    lock: Option<&ImageLock>,
    opts: WriterOptions,
    new_key: Option<&Key>,
    what: &str,
) -> Result<WriteStats> {
    let pb = ui::progress(raw_total(src), what);
    let tick = |n: u64| pb.inc(n);
    if let Location::S3(url) = &target.loc {
        if src.has_load_order() {
            // Streamed: a layout needs a second pass over the new image.
            // Said, not silently lost.
            eprintln!(
                "imgtool {what}: warning: {image} is laid out in load order (imgtool optimize); \
                 the new object is written in address order, with a new image id its profile \
                 does not apply to: write it to a file to keep the order, or record a new \
                 profile on it and optimize it again"
            );
        }
        // Streamed into the upload: a failure before the last byte aborts
        // it and leaves no object.
        let w = BufWriter::with_capacity(1 << 20, create_upload(url)?);
        let (w, stats) = memimg::transcode(src, w, opts, &tick)
            .map_err(|e| crate::open::remote_error(e, image, "rewriting"))?;
        pb.finish_and_clear();
        let w = w
            .into_inner()
            .map_err(|e| e.into_error())
            .context("sending the new image")?;
        w.commit().map_err(anyhow::Error::new)?;
        verify_uploaded(url, new_key, true)?;
        return Ok(stats);
    }
    let af = create_tmp(target)?;
    let w = BufWriter::with_capacity(1 << 20, af);
    let (w, stats) = memimg::transcode(src, w, opts, &tick)
        .map_err(|e| crate::open::remote_error(e, image, "rewriting"))?;
    pb.finish_and_clear();
    let af = w
        .into_inner()
        .map_err(|e| e.into_error())
        .context("flushing the new image")?;
    let af = keep_load_order(src, af, new_key, target)?;
    verify_tmp(&af, new_key, true, target)?;
    if let Some(lock) = lock {
        lock.check_current()?;
    }
    af.commit()?;
    Ok(stats)
}

/// When `src` is laid out in load order (`imgtool optimize`), lays out the
/// new image in `af` by the same order into a second temporary file beside
/// it, which replaces `af` (whose file is removed). The new image has its
/// own id and chunk numbers: the order is carried over by address
/// ([`carried_profile`]), and the index stays first when it was.
fn keep_load_order(
    src: &Image,
    af: AtomicFile,
    key: Option<&Key>,
    target: &Target,
) -> Result<AtomicFile> {
    if !src.has_load_order() {
        return Ok(af);
    }
    let new = Image::open_with_key(af.tmp_path(), key).context("opening the new image")?;
    let Some(profile) = carried_profile(src, &new)? else {
        return Ok(af);
    };
    let opts = memimg::RelayoutOptions {
        index_first: src.header().index_first.is_some(),
    };
    let w = BufWriter::with_capacity(1 << 20, create_tmp(target)?);
    let (w, _) = memimg::relayout_with(&new, &profile, &opts, w)
        .context("laying out the new image in the source's load order")?;
    w.into_inner()
        .map_err(|e| e.into_error())
        .context("flushing the new image")
}

/// The load order of `src` as a profile of `new`, an image of the same
/// content with other chunks: for each chunk of the order, the chunks of
/// `new` that hold any of its pages, in address order, each listed once.
/// `None` when `src` has no order or none of it maps.
fn carried_profile(src: &Image, new: &Image) -> Result<Option<memimg::Profile>> {
    let Some(order) = src.load_order()? else {
        return Ok(None);
    };
    let ps = src.header().page_size;
    // Data extents as (start, end, chunk), in address order (as
    // `Image::extents` lists them).
    let data = |img: &Image| -> Result<Vec<(u64, u64, u64)>> {
        Ok(img
            .extents()?
            .iter()
            .filter(|e| e.kind == memimg::ExtentKind::Data)
            .map(|e| (e.addr, e.end(ps), e.chunk))
            .collect())
    };
    let mut at = std::collections::HashMap::new();
    for (start, end, chunk) in data(src)? {
        at.entry(chunk).or_insert_with(Vec::new).push((start, end));
    }
    let new_data = data(new)?;
    let mut listed = std::collections::HashSet::new();
    let mut chunks = Vec::new();
    for k in order {
        for &(start, end) in at.get(k).map(Vec::as_slice).unwrap_or_default() {
            // The new extents that overlap [start, end), in address order.
            let first = new_data.partition_point(|&(_, e, _)| e <= start);
            let overlapping = new_data[first..].iter().take_while(|&&(s, _, _)| s < end);
            for &(_, _, c) in overlapping {
                if listed.insert(c) {
                    chunks.push(c);
                }
            }
        }
    }
    Ok((!chunks.is_empty()).then(|| memimg::Profile {
        image_id: new.header().image_id,
        chunks,
    }))
}
