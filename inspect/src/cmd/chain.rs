//! `imgtool flatten` and `imgtool rebase`: rewrites of incremental images
//! (format 1.1), each through a temporary file that is verified, synced
//! and renamed, so the target is never left half-written.

use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use memimg_remote::Location;
use serde::Serialize;

use super::rewrite::{create_tmp, lock_in_place, verify_tmp, Target};
use crate::cli::{ChainArgs, FlattenArgs, RebaseArgs};
use crate::fmt;

/// What `flatten --json` reports.
#[derive(Debug, Serialize)]
pub struct FlattenDoc {
    /// The image flattened.
    pub image: String,
    /// The full image written.
    pub output: String,
    /// The links read (1 for a full image).
    pub links: usize,
    /// The new image's id.
    pub image_id: String,
    /// Bytes of data (non-zero pages).
    pub data_bytes: u64,
    /// Bytes the chunks take in the file.
    pub stored_bytes: u64,
    /// The new image's size.
    pub file_size: u64,
}

fn local(loc: &Location, what: &str) -> Result<()> {
    if loc.is_remote() {
        bail!("{what} {loc}: only local files are supported here; copy it with imgtool cp first");
    }
    Ok(())
}

/// Writes the content of an incremental image and its parents as one full
/// image.
///
/// # Errors
/// A parent missing, replaced or damaged (naming the link), a wrong key,
/// writing errors; the target is then left as it was.
pub fn flatten(args: &FlattenArgs, out: &mut dyn Write) -> Result<ExitCode> {
    let image = crate::open::location(&args.image)?;
    let to = crate::open::location(&args.output)?;
    local(&image, "the image")?;
    local(&to, "the output")?;
    let target = Target::output(&image, &to, args.force)?;
    let codec = args.codec.as_deref().map(super::parse_codec).transpose()?;
    let key = args.key.load()?;
    let chain = crate::open::open_chain_at(&image, key.as_ref(), true, &args.chain)?;
    if let Some((rec, hint)) = chain.missing_parent() {
        bail!(
            "{image}: its parent (image {}, {}) was not found: give it with --parent",
            rec.image_id_hex(),
            hint.map_or_else(|| "no hint".to_string(), |h| format!("hint {h:?}"))
        );
    }
    let img = chain.image();
    let key = key.filter(|_| img.is_encrypted());
    let mut opts = memimg::options_from(img)?.key_opt(key.clone());
    if let Some(c) = codec {
        opts = opts.codec(c);
    }
    let pb = crate::ui::progress(super::rewrite::raw_total(img), "flatten");
    let tick = |n: u64| pb.inc(n);
    let af = create_tmp(&target)?;
    let (w, stats) = memimg::flatten(&chain, BufWriter::with_capacity(1 << 20, af), opts, &tick)
        .map_err(|e| crate::open::lib_error(e, &args.image, "flattening"))?;
    pb.finish_and_clear();
    let af = w
        .into_inner()
        .map_err(|e| e.into_error())
        .context("flushing the new image")?;
    verify_tmp(&af, key.as_ref(), true, &target)?;
    af.commit()?;
    let doc = FlattenDoc {
        image: image.to_string(),
        output: target.loc.to_string(),
        links: chain.links().len(),
        image_id: memimg::hex(&stats.image_id),
        data_bytes: stats.data_bytes,
        stored_bytes: stats.stored_bytes,
        file_size: stats.file_len,
    };
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &doc)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "{}: flattened {} ({} links): {} of data stored in {}; file {}",
            doc.output,
            doc.image,
            doc.links,
            fmt::size(doc.data_bytes),
            fmt::size(doc.stored_bytes),
            fmt::size(doc.file_size),
        )?;
    }
    Ok(super::code(crate::EXIT_OK))
}

/// Points an incremental image at another parent with the same content.
///
/// # Errors
/// The new parent differs where the child takes pages from its parent
/// (naming the address), a parent is missing, a wrong key, writing errors;
/// the child is then left as it was.
pub fn rebase(args: &RebaseArgs, out: &mut dyn Write) -> Result<ExitCode> {
    let image = crate::open::location(&args.image)?;
    local(&image, "the image")?;
    let target = Target::new(&image, &args.output, args.force)?;
    local(&target.loc, "the output")?;
    let onto = crate::open::location(&args.onto)?;
    local(&onto, "the new parent")?;
    let key = args.key.load()?;
    let lock = lock_in_place(&image, &target)?;
    let chain = crate::open::open_chain_at(&image, key.as_ref(), true, &args.chain)?;
    if chain.image().parent().is_none() {
        bail!("{image} is a full image: it has no parent to replace");
    }
    let key = key.filter(|_| chain.image().is_encrypted());
    // The new parent's own parents are found through its hints.
    let new_parent = crate::open::open_chain_at(&onto, key.as_ref(), true, &ChainArgs::default())?;
    let Location::Local(out_path) = &target.loc else {
        bail!("{}: not a local file", target.loc);
    };
    let hint = memimg_capture::hint_for(out_path, &args.onto);
    let af = create_tmp(&target)?;
    let (w, stats) = memimg::rebase(
        &chain,
        &new_parent,
        hint.as_deref(),
        BufWriter::with_capacity(1 << 20, af),
    )
    .map_err(|e| crate::open::lib_error(e, &args.image, "rebasing"))?;
    let af = w
        .into_inner()
        .map_err(|e| e.into_error())
        .context("flushing the new image")?;
    verify_tmp(&af, key.as_ref(), key.is_some(), &target)?;
    check_opens(af.tmp_path(), out_path, &args.onto, key.as_ref())?;
    if let Some(lock) = &lock {
        lock.check_current()?;
    }
    af.commit()?;
    drop(lock);
    writeln!(
        out,
        "{}: rebased onto {} (image {}); {} stored pages kept, file {}",
        target.loc,
        args.onto.display(),
        new_parent.image().header().image_id_hex(),
        stats.data_bytes / u64::from(chain.image().header().page_size),
        fmt::size(stats.file_len),
    )?;
    Ok(super::code(crate::EXIT_OK))
}

/// Checks that the rebased child at `tmp` (to be renamed to `dest`) opens
/// with the new parent `onto` as its parent.
fn check_opens(tmp: &Path, dest: &Path, onto: &Path, key: Option<&memimg::Key>) -> Result<()> {
    let child = memimg::Image::open_with_key(tmp, key)?;
    let parent = memimg::Image::open_with_key(onto, key)?;
    memimg::Chain::from_links(child, vec![parent]).with_context(|| {
        format!(
            "the rebased child does not take {} as its parent; {} was not changed",
            onto.display(),
            dest.display()
        )
    })?;
    Ok(())
}
