//! `imgtool export-core`: an image as an ELF core file that gdb opens.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use memimg::atomic::AtomicFile;
use memimg_remote::Location;
use serde::Serialize;

use super::rewrite::{raw_total, Target};
use crate::cli::ExportCoreArgs;
use crate::elfcore::{self, ExportOptions, ExportReport};
use crate::fmt;
use crate::keys::KeySource;
use crate::ui;

struct Plan {
    image: Location,
    /// The core file (always local: gdb opens files).
    core: PathBuf,
    target: Target,
    key: Option<KeySource>,
    opts: ExportOptions,
    json: bool,
}

impl Plan {
    fn new(a: &ExportCoreArgs) -> Result<Plan> {
        let image = crate::open::location(&a.image)?;
        let out = crate::open::location(&a.output)?;
        let Location::Local(core) = &out else {
            bail!("{out}: export-core writes a local file, for gdb: give a path for -o");
        };
        Ok(Plan {
            target: Target::output(&image, &out, a.force)?,
            core: core.clone(),
            image,
            key: a.key.source(),
            opts: ExportOptions {
                memimg_notes: !a.no_memimg_notes,
            },
            json: a.json,
        })
    }
}

/// What `export-core --json` reports.
#[derive(Debug, Serialize)]
pub struct ExportCoreDoc {
    /// The image read.
    pub image: String,
    /// The core written.
    pub core: String,
    /// `PT_LOAD` segments written.
    pub segments: u64,
    /// Memory bytes written into the core.
    pub file_bytes: u64,
    /// Memory bytes left as holes past `p_filesz` (zero runs, pages not
    /// captured, regions without data).
    pub hole_bytes: u64,
    /// The core's size.
    pub file_size: u64,
    /// The notes written, in order (`CORE/1` is `NT_PRSTATUS`).
    pub notes: Vec<String>,
    /// True when the core holds registers.
    pub registers: bool,
    /// Things the user should know ("no registers: memory inspection only" …).
    pub messages: Vec<String>,
}

/// Writes `args.image` as an ELF core.
///
/// # Errors
/// When the arguments are invalid, the image cannot be read or unlocked, is
/// not of a 64-bit machine, or the core cannot be written or does not parse
/// back (the target is then left as it was).
pub fn export_core(args: &ExportCoreArgs, out: &mut dyn Write) -> Result<ExitCode> {
    let plan = Plan::new(args)?;
    let key = plan.key.as_ref().map(KeySource::load).transpose()?;
    let img = crate::open::open_at(&plan.image, key.as_ref(), true)?;
    drop(key);

    // AtomicFile creates the core 0600 (it holds process memory), or with the
    // mode of the file it replaces.
    let af = AtomicFile::create(&plan.core)?;
    let pb = ui::progress(raw_total(&img), "export");
    let mut w = Counting {
        inner: BufWriter::with_capacity(1 << 20, af),
        tick: |n| pb.inc(n),
    };
    let report = elfcore::export_core(&img, &mut w, &plan.opts)
        .map_err(|e| anyhow!(e))
        .with_context(|| format!("exporting {}", plan.image))?;
    pb.finish_and_clear();
    let af = w
        .inner
        .into_inner()
        .map_err(|e| e.into_error())
        .context("flushing the core")?;
    check_core(af.tmp_path(), &report, &plan.target)?;
    af.commit()?;

    let doc = ExportCoreDoc {
        image: plan.image.to_string(),
        core: plan.core.display().to_string(),
        segments: report.segments,
        file_bytes: report.file_bytes,
        hole_bytes: report.hole_bytes,
        file_size: report.file_len,
        notes: report.notes,
        registers: report.registers,
        messages: report.messages,
    };
    if plan.json {
        serde_json::to_writer_pretty(&mut *out, &doc)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "{}: ELF core with {} segments: {} of memory in the file, {} left as holes; {} notes{}; file {}",
            doc.core,
            doc.segments,
            fmt::size(doc.file_bytes),
            fmt::size(doc.hole_bytes),
            doc.notes.len(),
            if doc.registers { ", with registers" } else { "" },
            fmt::size(doc.file_size),
        )?;
        for m in &doc.messages {
            writeln!(out, "  {}", fmt::escape_str(m))?;
        }
    }
    Ok(super::code(crate::EXIT_OK))
}

/// Parses the core just written and checks that it is what the export says it
/// wrote; nothing is renamed when it is not.
fn check_core(path: &Path, report: &ExportReport, target: &Target) -> Result<()> {
    let bytes = memimg::FileBytes::open(path)
        .map_err(|e| crate::open::lib_error(e, path, "reading back"))?;
    let cf = elfcore::parse_core(&bytes).map_err(|e| {
        anyhow!(
            "the new core does not parse ({e}); {} was not changed",
            target.loc
        )
    })?;
    let segments = cf.segments.len() as u64 + u64::from(cf.empty_segments);
    let found = (bytes.len() as u64, segments, cf.notes.len());
    let wrote = (report.file_len, report.segments, report.notes.len());
    if found != wrote {
        bail!(
            "the new core is not what was written (length, PT_LOADs, notes: {found:?}, expected {wrote:?}); {} was not changed",
            target.loc
        );
    }
    Ok(())
}

/// A writer that reports the bytes passing through, for the progress bar.
struct Counting<W, F> {
    inner: W,
    tick: F,
}

impl<W: Write, F: Fn(u64)> Write for Counting<W, F> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        (self.tick)(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
