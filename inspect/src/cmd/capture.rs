//! `imgtool capture`: capture a live process into an image.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use memimg::Codec;
use memimg_capture::{capture_to_path, capture_to_writer, CaptureOptions, CaptureReport, Method};
use memimg_remote::{Location, RemoteWriter, Store, UploadOptions};
use serde::Serialize;

use crate::cli::CaptureArgs;
use crate::fmt;

struct Plan {
    pid: i32,
    output: Location,
    codec: Codec,
    chunk_size: Option<u32>,
    exclude_file_backed: bool,
    workers: Option<usize>,
    fork: bool,
    json: bool,
}

impl Plan {
    fn new(a: &CaptureArgs) -> Result<Plan> {
        let codec = super::parse_codec(&a.codec)?;
        let chunk_size = a
            .chunk_size
            .as_deref()
            .map(|t| {
                let v = fmt::parse_u64(t, true).map_err(|e| anyhow!("--chunk-size: {e}"))?;
                u32::try_from(v).map_err(|_| anyhow!("--chunk-size: {t} is over 4 GiB"))
            })
            .transpose()?;
        if a.pid <= 0 {
            bail!("--pid {}: a process id is a positive number", a.pid);
        }
        let output = crate::open::location(&a.output)?;
        // With --force the answer does not matter: no HEAD request for it.
        let exists = !a.force
            && match &output {
                Location::Local(p) => p.exists(),
                Location::S3(url) => Store::new(&url.bucket, crate::open::s3())
                    .and_then(|s| s.exists(url))
                    .map_err(anyhow::Error::new)?,
            };
        if exists {
            bail!("{output} exists: choose another name, or pass --force to replace it");
        }
        Ok(Plan {
            pid: a.pid,
            output,
            codec,
            chunk_size,
            exclude_file_backed: a.exclude_file_backed,
            workers: a.workers,
            fork: !a.no_fork,
            json: a.json,
        })
    }
}

/// Captures a running process into an image. The process is stopped only
/// while its memory is read, and resumed whatever happens.
///
/// # Errors
/// No such process, permission denied (with what to do), the process exited
/// during the capture (no file is left under the output name), I/O errors.
pub fn capture(args: &CaptureArgs, out: &mut dyn Write) -> Result<ExitCode> {
    let plan = Plan::new(args)?;
    let key = args.key.load()?;
    // A child: its parent chain, opened (and checked) before the process is
    // stopped.
    let (parent, parent_hint) = match args.chain.parents.split_first() {
        None => (None, None),
        Some((base, rest)) => {
            let loc = crate::open::location(base)?;
            let up = crate::cli::ChainArgs {
                parents: rest.to_vec(),
                no_hints: args.chain.no_hints,
            };
            let chain = crate::open::open_chain_at(&loc, key.as_ref(), true, &up)?;
            if let Some((rec, _)) = chain.missing_parent() {
                anyhow::bail!(
                    "{}: its parent (image {}) was not found: give it with a second --parent",
                    base.display(),
                    rec.image_id_hex()
                );
            }
            // A hint: a path for a file beside a file, a key (relative to
            // the child's folder) or URL for an object beside an object.
            // None across the two (give the parent with --parent).
            let hint = match (&plan.output, &loc, args.no_parent_hint) {
                (Location::Local(out), Location::Local(p), false) => {
                    memimg_capture::hint_for(out, p)
                }
                (Location::S3(out), Location::S3(p), false) => Some(out.hint_for(p)),
                _ => None,
            };
            (Some(Arc::new(chain)), hint)
        }
    };
    let pb = crate::ui::progress(0, "capture");
    let bar = pb.clone();
    let mut opts = CaptureOptions {
        codec: plan.codec,
        key,
        chunk_size: plan.chunk_size,
        exclude_file_backed: plan.exclude_file_backed,
        fork: plan.fork,
        progress: Some(Arc::new(move |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        })),
        parent,
        parent_hint,
        page_digests: args.page_digests,
        ..CaptureOptions::default()
    };
    if let Some(w) = plan.workers {
        opts.workers = w;
    }
    let rep: Result<CaptureReport> = match &plan.output {
        Location::Local(p) => capture_to_path(plan.pid, p, &opts).map_err(anyhow::Error::new),
        // Streamed into a multipart upload: no local copy. The object
        // appears only when the upload completes, after the image's last
        // byte; a failed capture drops the writer, which aborts the upload
        // (the process is resumed whatever happens).
        Location::S3(url) => {
            let w = RemoteWriter::create(url, crate::open::s3(), UploadOptions::default())
                .map_err(anyhow::Error::new)?;
            capture_to_writer(plan.pid, w, &opts)
                .map_err(anyhow::Error::new)
                .and_then(|(w, rep)| w.commit().map(|_| rep).map_err(anyhow::Error::new))
        }
    };
    pb.finish_and_clear();
    let rep = rep?;
    let mut doc = CaptureDoc::new(&plan, &rep);
    doc.parent = opts
        .parent
        .as_ref()
        .map(|c| c.image().header().image_id_hex());
    if plan.json {
        serde_json::to_writer_pretty(&mut *out, &doc)?;
        writeln!(out)?;
        return Ok(super::code(crate::EXIT_OK));
    }
    let s = &rep.stats;
    writeln!(
        out,
        "{}: captured pid {} ({} threads): {} regions, {} of data in {} chunks stored in {} ({}), {} zero pages, {} pages not captured",
        plan.output,
        plan.pid,
        rep.threads,
        s.regions,
        fmt::size(s.data_bytes),
        s.chunks,
        fmt::size(s.stored_bytes),
        fmt::ratio(s.data_bytes, s.stored_bytes),
        s.zero_pages,
        s.absent_pages,
    )?;
    match &rep.method {
        Method::Fork { fork, held, .. } => writeln!(
            out,
            "fork snapshot: frozen for {:.1} ms (the fork took {:.1} ms{}); capture took {:.1} ms; file {}",
            doc.stopped_ms,
            fork.as_secs_f64() * 1e3,
            if *held > 0 {
                format!(", {} read while stopped", fmt::size(*held))
            } else {
                String::new()
            },
            doc.total_ms,
            fmt::size(s.file_len),
        )?,
        Method::Freeze { why } => writeln!(
            out,
            "no fork snapshot ({}): frozen for {:.1} ms, the whole read; capture took {:.1} ms; file {}",
            if plan.fork { why.as_str() } else { "--no-fork" },
            doc.stopped_ms,
            doc.total_ms,
            fmt::size(s.file_len),
        )?,
    }
    if let Some(c) = &rep.compare {
        writeln!(
            out,
            "child of {}: {} pages stored, {} pages left to the parent ({} by chunk checksum, {} by page digest, {} compared page by page; {} of the parent decoded)",
            args.chain.parents[0].display(),
            s.data_bytes / u64::from(memimg::page_size()),
            s.in_parent_pages,
            fmt::size(c.same_by_checksum),
            fmt::size(c.same_by_digest),
            fmt::size(c.same_by_compare),
            fmt::size(c.decoded),
        )?;
        if c.decoded > 0 {
            writeln!(
                out,
                "the parent has no page digests: a parent captured with --page-digests is compared without decoding it"
            )?;
        }
    }
    for w in &rep.warnings {
        writeln!(out, "warning: {w}")?;
    }
    Ok(super::code(crate::EXIT_OK))
}

/// What `capture --json` reports.
#[derive(Debug, Serialize)]
pub struct CaptureDoc {
    /// The image written.
    pub image: String,
    /// The process captured.
    pub pid: i32,
    /// Threads stopped.
    pub threads: usize,
    /// `fork` (a fork snapshot: the process was stopped until its copy
    /// existed) or `freeze` (stopped for the whole read).
    pub method: &'static str,
    /// Why there was no fork snapshot (`--no-fork` when asked), or null.
    pub fallback_reason: Option<String>,
    /// How long every thread of the process was stopped, in milliseconds.
    pub stopped_ms: f64,
    /// The fork, within the stop, in milliseconds (fork snapshots only).
    pub fork_ms: Option<f64>,
    /// Bytes read from the stopped process itself (fork snapshots only:
    /// shared mappings and regions a copy does not inherit).
    pub held_bytes: Option<u64>,
    /// The whole capture, up to the durable image, in milliseconds.
    pub total_ms: f64,
    /// Bytes written with `O_DIRECT` (a durable capture writes its full
    /// 1 MiB buffers so); 0 when the page cache was used for all.
    pub direct_io_bytes: u64,
    /// Regions recorded.
    pub regions: u64,
    /// Bytes of data (non-zero pages).
    pub data_bytes: u64,
    /// Chunks written.
    pub chunks: u64,
    /// Bytes the chunks take in the file.
    pub stored_bytes: u64,
    /// Pages recorded as zero.
    pub zero_pages: u64,
    /// Pages recorded as not captured.
    pub absent_pages: u64,
    /// The image's size.
    pub file_size: u64,
    /// Problems that did not fail the capture.
    pub warnings: Vec<String>,
    /// With --parent: the parent's image id.
    pub parent: Option<String>,
    /// With --parent: pages recorded as the parent's.
    pub in_parent_pages: u64,
    /// With --parent: bytes of pages stored because they differ from the
    /// parent's (or it has none there).
    pub stored_changed_bytes: Option<u64>,
}

impl CaptureDoc {
    fn new(plan: &Plan, rep: &CaptureReport) -> CaptureDoc {
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        let s = &rep.stats;
        let (fallback_reason, fork_ms, held_bytes) = match &rep.method {
            Method::Fork { fork, held, .. } => (None, Some(ms(*fork)), Some(*held)),
            Method::Freeze { why } => (
                Some(if plan.fork {
                    why.clone()
                } else {
                    "--no-fork".to_string()
                }),
                None,
                None,
            ),
        };
        CaptureDoc {
            image: plan.output.to_string(),
            pid: plan.pid,
            threads: rep.threads,
            method: rep.method.name(),
            fallback_reason,
            stopped_ms: ms(rep.frozen),
            fork_ms,
            held_bytes,
            total_ms: ms(rep.elapsed),
            direct_io_bytes: rep.direct_bytes,
            regions: s.regions,
            data_bytes: s.data_bytes,
            chunks: s.chunks,
            stored_bytes: s.stored_bytes,
            zero_pages: s.zero_pages,
            absent_pages: s.absent_pages,
            file_size: s.file_len,
            warnings: rep.warnings.clone(),
            parent: None,
            in_parent_pages: s.in_parent_pages,
            stored_changed_bytes: rep.compare.map(|c| c.stored),
        }
    }
}
