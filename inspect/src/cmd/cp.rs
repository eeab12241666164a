//! `imgtool cp`: copy an image between paths and `s3://` URLs, checking it
//! as it goes (`memimg_remote::copy`).

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use memimg_remote::{CopyOptions, Location};
use serde::Serialize;

use crate::cli::CpArgs;
use crate::{fmt, ui};

/// What `cp --json` reports.
#[derive(Debug, Serialize)]
pub struct CpDoc {
    /// The image copied.
    pub src: String,
    /// The copy.
    pub dst: String,
    /// Bytes copied: the image's length.
    pub bytes: u64,
    /// Chunks whose stored checksum was checked on the way.
    pub chunks_checked: u64,
    /// GET requests made to a remote source (opening included).
    pub get_requests: Option<u64>,
    /// Bytes fetched from a remote source.
    pub bytes_fetched: Option<u64>,
    /// Parts uploaded to a remote destination.
    pub parts_uploaded: Option<u64>,
}

/// Copies `args.src` to `args.dst`; see [`memimg_remote::copy`].
///
/// # Errors
/// A damaged source (the problem and its place, as verify names it), a
/// missing bucket or object, refused credentials, the network, an existing
/// DST without `--force`. DST is then left as it was.
pub fn cp(args: &CpArgs, out: &mut dyn Write) -> Result<ExitCode> {
    let src = crate::open::location(&args.src)?;
    let dst = crate::open::location(&args.dst)?;
    let total = match &src {
        Location::Local(p) => std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
        Location::S3(_) => 0,
    };
    let pb = ui::progress(total, "copy");
    let tick = |n: u64| pb.inc(n);
    let opts = CopyOptions {
        overwrite: args.force,
        progress: Some(&tick),
        ..CopyOptions::default()
    };
    let rep = memimg_remote::copy(&src, &dst, crate::open::s3(), &opts);
    pb.finish_and_clear();
    let rep = rep.map_err(|e| {
        if e.kind() == memimg_remote::ErrorKind::AlreadyExists {
            anyhow::anyhow!("{dst} exists: give --force to replace it")
        } else {
            anyhow::Error::new(e)
        }
    })?;
    let doc = CpDoc {
        src: src.to_string(),
        dst: dst.to_string(),
        bytes: rep.bytes,
        chunks_checked: rep.chunks_checked,
        get_requests: rep.fetched.map(|s| s.get_requests),
        bytes_fetched: rep.fetched.map(|s| s.bytes_fetched),
        parts_uploaded: rep.uploaded.map(|s| s.parts),
    };
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &doc)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "{}: copied from {}: {}, {} chunks checked",
            fmt::escape_str(&doc.dst),
            fmt::escape_str(&doc.src),
            fmt::size(doc.bytes),
            doc.chunks_checked
        )?;
    }
    Ok(super::code(crate::EXIT_OK))
}
