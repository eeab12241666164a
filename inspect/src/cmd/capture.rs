//! `imgtool capture`: capture a live process into an image.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use memimg::Codec;
use memimg_capture::{capture_to_path, CaptureOptions};

use crate::cli::CaptureArgs;
use crate::fmt;

struct Plan {
    pid: i32,
    output: PathBuf,
    codec: Codec,
    chunk_size: Option<u32>,
    exclude_file_backed: bool,
    workers: Option<usize>,
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
        if a.output.exists() && !a.force {
            bail!(
                "{} exists: choose another name, or pass --force to replace it",
                a.output.display()
            );
        }
        if a.pid <= 0 {
            bail!("--pid {}: a process id is a positive number", a.pid);
        }
        Ok(Plan {
            pid: a.pid,
            output: a.output.clone(),
            codec,
            chunk_size,
            exclude_file_backed: a.exclude_file_backed,
            workers: a.workers,
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
    let pb = crate::ui::progress(0, "capture");
    let bar = pb.clone();
    let mut opts = CaptureOptions {
        codec: plan.codec,
        key,
        chunk_size: plan.chunk_size,
        exclude_file_backed: plan.exclude_file_backed,
        progress: Some(Arc::new(move |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        })),
        ..CaptureOptions::default()
    };
    if let Some(w) = plan.workers {
        opts.workers = w;
    }
    let rep = capture_to_path(plan.pid, &plan.output, &opts);
    pb.finish_and_clear();
    let rep = rep?;
    let s = &rep.stats;
    writeln!(
        out,
        "{}: captured pid {} ({} threads): {} regions, {} of data in {} chunks stored in {} ({}), {} zero pages, {} pages not captured",
        plan.output.display(),
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
    writeln!(
        out,
        "frozen for {:.1} ms; capture took {:.1} ms; file {}",
        rep.frozen.as_secs_f64() * 1e3,
        rep.elapsed.as_secs_f64() * 1e3,
        fmt::size(s.file_len),
    )?;
    Ok(super::code(crate::EXIT_OK))
}
