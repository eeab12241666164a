//! `imgtool reencrypt`: rotate the key (in place, kilobytes written), or
//! rewrite every chunk under a fresh data key, or encrypt, or decrypt.

use std::fs::File;
use std::io::Write;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use memimg::{Codec, Features, Image};
use memimg_remote::{CopyOptions, FetchOptions, Location};
use serde::Serialize;

use super::rewrite::{check_in_place, create_tmp, lock_in_place, transcode_to, verify_tmp, Target};
use crate::cli::ReencryptArgs;
use crate::keys::{KeySource, NewKey};

struct Plan {
    image: Location,
    target: Target,
    old: Option<KeySource>,
    new: NewKey,
    full: bool,
    codec: Option<Codec>,
    json: bool,
}

impl Plan {
    fn new(a: &ReencryptArgs) -> Result<Plan> {
        let new = a.new_key.source().ok_or_else(|| {
            anyhow!("give the new key with --new-key-file, --new-passphrase-file or --new-key-fd, or --decrypt")
        })?;
        let codec = a.codec.as_deref().map(super::parse_codec).transpose()?;
        if codec.is_some() && !a.full && a.key.source().is_some() && new != NewKey::Decrypt {
            bail!("--codec needs --full: a key rotation does not touch the chunks");
        }
        let image = crate::open::location(&a.image)?;
        Ok(Plan {
            target: Target::new(&image, &a.output, a.force)?,
            image,
            old: a.key.source(),
            new,
            full: a.full,
            codec,
            json: a.json,
        })
    }
}

/// What `reencrypt --json` reports.
#[derive(Debug, Serialize)]
pub struct ReencryptDoc {
    /// The image read.
    pub image: String,
    /// The image written (the same path with --in-place).
    pub output: String,
    /// `rewrap` (only the key slot) or `full` (every chunk).
    pub mode: &'static str,
    /// True when the output is encrypted.
    pub encrypted: bool,
    /// Bytes written to the image file (for a rewrap: the key slots only).
    pub bytes_written: u64,
    /// Key generation of the output.
    pub key_generation: u32,
    /// Size of the output.
    pub file_size: u64,
}

/// Re-encrypts `args.image`.
///
/// # Errors
/// When the arguments are invalid, a key cannot be read or does not open the
/// image, or the new image cannot be written or fails its check (the target is
/// then left as it was).
pub fn reencrypt(args: &ReencryptArgs, out: &mut dyn Write) -> Result<ExitCode> {
    let plan = Plan::new(args)?;
    let old = plan.old.as_ref().map(KeySource::load).transpose()?;
    let new = match &plan.new {
        NewKey::Key(s) => Some(s.load()?),
        NewKey::Decrypt => None,
    };
    // In place, the lock comes before the image is read (see lock_in_place);
    // a key rotation lets it go, as rewrap_in_place takes it itself.
    let lock = lock_in_place(&plan.image, &plan.target)?;
    let img = crate::open::open_at(&plan.image, old.as_ref(), true)?;
    check_in_place(&img, &plan.image, &plan.target)?;
    if !img.is_encrypted() && new.is_none() {
        bail!(
            "{} is not encrypted: there is nothing to decrypt",
            plan.image
        );
    }
    let doc = match (img.is_encrypted(), &old, &new, plan.full) {
        (true, Some(old), Some(new), false) => {
            drop(img);
            drop(lock);
            rewrap(&plan, old, new)?
        }
        _ => {
            let codec = plan.codec.unwrap_or_else(|| default_codec(&img));
            let opts = memimg::options_from(&img)?
                .codec(codec)
                .key_opt(new.clone());
            let stats = transcode_to(
                &img,
                &plan.image,
                &plan.target,
                lock.as_ref(),
                opts,
                new.as_ref(),
                "reencrypt",
            )?;
            drop(lock);
            ReencryptDoc {
                image: plan.image.to_string(),
                output: plan.target.loc.to_string(),
                mode: "full",
                encrypted: new.is_some(),
                bytes_written: stats.file_len,
                key_generation: 0,
                file_size: stats.file_len,
            }
        }
    };
    if plan.json {
        serde_json::to_writer_pretty(&mut *out, &doc)?;
        writeln!(out)?;
    } else {
        let what = match (doc.mode, doc.encrypted) {
            ("rewrap", _) => format!(
                "key slot rewrapped (generation {}, {} bytes written; the data was not touched)",
                doc.key_generation, doc.bytes_written
            ),
            (_, true) => "every chunk encrypted under a fresh data key".to_string(),
            (_, false) => "decrypted: the new image is plain".to_string(),
        };
        writeln!(out, "{}: {what}", doc.output)?;
    }
    Ok(super::code(crate::EXIT_OK))
}

/// The codec of a full rewrite when none is given: zstd when the image uses it.
fn default_codec(img: &Image) -> Codec {
    if img.header().features.incompat & Features::ZSTD != 0 {
        Codec::default()
    } else {
        Codec::None
    }
}

/// Rotates the key-encryption key: in place with the format's crash-safe
/// key-slot update, or on a copy beside OUT that is then renamed. When the
/// image or OUT is remote, the copy is a scratch file in the temporary
/// directory: the image is downloaded into it, the key slot rewritten and
/// checked there, and the result uploaded with a checked copy (objects
/// cannot be changed in place).
fn rewrap(plan: &Plan, old: &memimg::Key, new: &memimg::Key) -> Result<ReencryptDoc> {
    let (stats, file_size) = match (&plan.image, plan.target.in_place) {
        (Location::Local(path), true) => {
            let stats = memimg::rewrap_in_place(path, old, new).map_err(|e| match e.kind() {
                memimg::ErrorKind::WrongKey => crate::open::wrong_key(path, &e),
                // The message names the image already.
                memimg::ErrorKind::Busy => anyhow::Error::new(e),
                _ => {
                    anyhow::Error::new(e).context(format!("rotating the key of {}", path.display()))
                }
            })?;
            // The image must open under the new key.
            let img = crate::open::open(path, Some(new), true)
                .context("the image does not open under the new key after the rotation")?;
            (stats, img.file_len())
        }
        (Location::S3(_), true) => bail!("{}: an object cannot be changed in place", plan.image),
        (src, false) => {
            let mut af = create_tmp(&plan.target)?;
            match src {
                Location::Local(path) => copy_locked(path, af.file())?,
                Location::S3(url) => download(url, af.file())?,
            }
            let stats =
                memimg::rewrap_in_place(af.tmp_path(), old, new).map_err(|e| match e.kind() {
                    memimg::ErrorKind::WrongKey => crate::open::wrong_key(&plan.image, &e),
                    _ => anyhow::Error::new(e).context("rotating the key of the copy"),
                })?;
            verify_tmp(&af, Some(new), false, &plan.target)?;
            let len = af.file().metadata().map(|m| m.len()).unwrap_or(0);
            match &plan.target.loc {
                Location::Local(_) => af.commit()?,
                dst @ Location::S3(_) => {
                    // Whether it may replace an object was settled by the
                    // plan (--force).
                    let opts = CopyOptions {
                        overwrite: true,
                        ..CopyOptions::default()
                    };
                    let tmp = Location::Local(af.tmp_path().to_path_buf());
                    memimg_remote::copy(&tmp, dst, crate::open::s3(), &opts)
                        .map_err(anyhow::Error::new)?;
                }
            }
            (stats, len)
        }
    };
    Ok(ReencryptDoc {
        image: plan.image.to_string(),
        output: plan.target.loc.to_string(),
        mode: "rewrap",
        encrypted: true,
        bytes_written: stats.bytes_written,
        key_generation: stats.generation,
        file_size,
    })
}

/// Copies the local image at `path` into `out`, under a shared lock: no
/// in-place change (which holds the exclusive one) runs while the copy is
/// taken, so the copy is of one state.
fn copy_locked(path: &std::path::Path, out: &mut File) -> Result<()> {
    let mut src = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    match src.try_lock_shared() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "{} is being changed in place by another process (a key rotation, recompress or re-encryption holds its lock): try again when it is done",
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(anyhow::Error::new(e).context(format!("locking {}", path.display())))
        }
    }
    std::io::copy(&mut src, out).with_context(|| format!("copying {}", path.display()))?;
    Ok(())
}

/// Downloads the object at `url` into `out`, several ranged GETs in flight.
fn download(url: &memimg_remote::S3Url, out: &mut File) -> Result<()> {
    let reader = crate::open::reader(url)?;
    let len = memimg::ReadAt::len(&*reader);
    let step = 8u64 << 20;
    let ranges: Vec<std::ops::Range<u64>> = (0..len.div_ceil(step))
        .map(|i| i * step..((i + 1) * step).min(len))
        .collect();
    reader.fetch_many(&ranges, FetchOptions::default(), |_, bytes| {
        out.write_all(bytes)
            .with_context(|| format!("writing the copy of {url}"))
    })
}
