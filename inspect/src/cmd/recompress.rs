//! `imgtool recompress`: re-encode every chunk with another codec.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use memimg::Codec;
use memimg_remote::Location;

use super::rewrite::{check_in_place, lock_in_place, transcode_to, Target};
use crate::cli::RecompressArgs;
use crate::fmt;
use crate::keys::KeySource;

struct Plan {
    image: Location,
    target: Target,
    codec: Codec,
    key: Option<KeySource>,
}

impl Plan {
    fn new(a: &RecompressArgs) -> Result<Plan> {
        let codec = super::parse_codec(&a.codec)?;
        let image = crate::open::location(&a.image)?;
        Ok(Plan {
            target: Target::new(&image, &a.output, a.force)?,
            image,
            codec,
            key: a.key.source(),
        })
    }
}

/// Recompresses `args.image`; the content does not change.
///
/// # Errors
/// When the arguments are invalid, the image cannot be read or unlocked, or
/// the new image cannot be written or fails its check (the target is then
/// left as it was).
pub fn recompress(args: &RecompressArgs, out: &mut dyn Write) -> Result<ExitCode> {
    let plan = Plan::new(args)?;
    let key = plan.key.as_ref().map(KeySource::load).transpose()?;
    let lock = lock_in_place(&plan.image, &plan.target)?;
    let img = crate::open::open_at(&plan.image, key.as_ref(), true)?;
    check_in_place(&img, &plan.image, &plan.target)?;
    let key = key.filter(|_| img.is_encrypted());
    let old_len = img.file_len();
    let opts = memimg::options_from(&img)?
        .codec(plan.codec)
        .key_opt(key.clone());
    let stats = transcode_to(
        &img,
        &plan.image,
        &plan.target,
        lock.as_ref(),
        opts,
        key.as_ref(),
        "recompress",
    )?;
    drop(lock);
    writeln!(
        out,
        "{}: recompressed with {}: {} of data in {} chunks stored in {} ({}); file {} -> {}",
        plan.target.loc,
        plan.codec,
        fmt::size(stats.data_bytes),
        stats.chunks,
        fmt::size(stats.stored_bytes),
        fmt::ratio(stats.data_bytes, stats.stored_bytes),
        fmt::size(old_len),
        fmt::size(stats.file_len),
    )?;
    Ok(super::code(crate::EXIT_OK))
}
