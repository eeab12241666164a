//! `imgtool optimize`: lay an image out by a load-order profile.

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use memimg::Profile;
use memimg_remote::Location;

use super::rewrite::{
    check_in_place, create_tmp, create_upload, lock_in_place, verify_tmp, verify_uploaded, Target,
};
use crate::cli::OptimizeArgs;
use crate::fmt;
use crate::keys::KeySource;

struct Plan {
    image: Location,
    profile: PathBuf,
    target: Target,
    key: Option<KeySource>,
}

impl Plan {
    fn new(a: &OptimizeArgs) -> Result<Plan> {
        let image = crate::open::location(&a.image)?;
        Ok(Plan {
            target: Target::new(&image, &a.output, a.force)?,
            image,
            profile: a.profile.clone(),
            key: a.key.source(),
        })
    }
}

/// Writes `args.image` laid out by the profile `args.profile` (spec.md,
/// *Load order*): the profile's chunks first, in its order. The content
/// does not change. The image and `-o` may be `s3://` URLs (the profile is
/// a local file); a new object is streamed into an upload and verified, as
/// recompress does.
///
/// # Errors
/// When the arguments are invalid, the profile is damaged or belongs to
/// another image, the image cannot be read or unlocked, or the new image
/// cannot be written or fails its check (the target is then left as it
/// was).
pub fn optimize(args: &OptimizeArgs, out: &mut dyn Write) -> Result<ExitCode> {
    let plan = Plan::new(args)?;
    let key = plan.key.as_ref().map(KeySource::load).transpose()?;
    let profile = Profile::read(&plan.profile)
        .with_context(|| format!("reading the profile {}", plan.profile.display()))?;
    let lock = lock_in_place(&plan.image, &plan.target)?;
    let img = crate::open::open_at(&plan.image, key.as_ref(), true)?;
    check_in_place(&img, &plan.image, &plan.target)?;
    profile.check_for(&img).with_context(|| {
        format!(
            "the profile {} does not apply to {}",
            plan.profile.display(),
            plan.image
        )
    })?;
    let old_len = img.file_len();
    let rewriting = |e| crate::open::remote_error(e, &plan.image, "rewriting");
    let opts = memimg::RelayoutOptions {
        index_first: !args.index_at_end,
    };
    let stats = if let Location::S3(url) = &plan.target.loc {
        // Streamed into the upload: a failure before the last byte aborts
        // it and leaves no object.
        let w = BufWriter::with_capacity(1 << 20, create_upload(url)?);
        let (w, stats) = memimg::relayout_with(&img, &profile, &opts, w).map_err(rewriting)?;
        let w = w
            .into_inner()
            .map_err(|e| e.into_error())
            .context("sending the new image")?;
        w.commit().map_err(anyhow::Error::new)?;
        verify_uploaded(url, key.as_ref(), true)?;
        stats
    } else {
        let af = create_tmp(&plan.target)?;
        let w = BufWriter::with_capacity(1 << 20, af);
        let (w, stats) = memimg::relayout_with(&img, &profile, &opts, w).map_err(rewriting)?;
        let af = w
            .into_inner()
            .map_err(|e| e.into_error())
            .context("flushing the new image")?;
        verify_tmp(&af, key.as_ref(), true, &plan.target)?;
        if let Some(lock) = &lock {
            lock.check_current()?;
        }
        af.commit()?;
        stats
    };
    drop(lock);
    let first = if stats.index_first {
        format!(
            "the header, the index and the working set: {} in one read from offset 0",
            fmt::size(stats.working_set_end)
        )
    } else {
        format!(
            "{} in one read from offset {:#x}",
            fmt::size(stats.working_set_bytes),
            stats.working_set_end - stats.working_set_bytes,
        )
    };
    writeln!(
        out,
        "{}: laid out by the profile: {} of {} chunks first ({first}); file {} -> {}",
        plan.target.loc,
        stats.working_set_chunks,
        stats.chunks,
        fmt::size(old_len),
        fmt::size(stats.file_len),
    )?;
    Ok(super::code(crate::EXIT_OK))
}
