//! `imgtool import-core`: an ELF core file (gcore's or the kernel's) as an
//! image.

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use memimg::{Codec, WriterOptions};
use memimg_remote::Location;
use serde::Serialize;

use super::rewrite::{create_tmp, create_upload, verify_tmp, verify_uploaded, Target};
use crate::cli::ImportCoreArgs;
use crate::elfcore;
use crate::fmt;
use crate::keys::KeySource;

struct Plan {
    core: PathBuf,
    target: Target,
    codec: Codec,
    page_size: Option<u32>,
    key: Option<KeySource>,
    json: bool,
}

impl Plan {
    fn new(a: &ImportCoreArgs) -> Result<Plan> {
        let codec = super::parse_codec(&a.codec)?;
        if let Some(ps) = a.page_size {
            if !matches!(ps, 4096 | 16384 | 65536) {
                bail!("--page-size: {ps} is not allowed: use 4096, 16384 or 65536");
            }
        }
        let core = crate::open::location(&a.core)?;
        let Location::Local(core_path) = &core else {
            bail!("{core}: import-core reads a local core file: give its path");
        };
        let out = crate::open::location(&a.output)?;
        Ok(Plan {
            target: Target::output(&core, &out, a.force)?,
            core: core_path.clone(),
            codec,
            page_size: a.page_size,
            key: a.key.source(),
            json: a.json,
        })
    }
}

/// What `import-core --json` reports.
#[derive(Debug, Serialize)]
pub struct ImportCoreDoc {
    /// The core read.
    pub core: String,
    /// The image written.
    pub image: String,
    /// `PT_LOAD` segments read.
    pub segments: u64,
    /// Regions written.
    pub regions: u64,
    /// Regions named from `NT_FILE`.
    pub file_mappings: u64,
    /// Bytes of data pages.
    pub data_bytes: u64,
    /// Bytes recorded as zero pages.
    pub zero_bytes: u64,
    /// Bytes recorded as not captured in regions with data (segment tails
    /// past `p_filesz`); regions recorded without data are not counted.
    pub absent_bytes: u64,
    /// Chunks written.
    pub chunks: u64,
    /// Stored bytes of the chunks.
    pub stored_bytes: u64,
    /// The image's size.
    pub file_size: u64,
    /// True when the core held process facts (`NT_PRPSINFO` or ours).
    pub process: bool,
    /// True when the core holds registers (`NT_PRSTATUS`).
    pub registers: bool,
    /// True when the core was written by `export-core`, so the regions, names
    /// and zero runs came back exactly.
    pub exact: bool,
    /// Notes kept in the image, in order (`CORE/1` is `NT_PRSTATUS`).
    pub kept_notes: Vec<String>,
    /// True when the image is encrypted.
    pub encrypted: bool,
    /// Things the user should know (notes that could not be read …).
    pub messages: Vec<String>,
}

/// Writes the core `args.core` as an image.
///
/// # Errors
/// When the arguments are invalid, the key cannot be read, the core is not a
/// valid ELF64 core (the message says which header, segment or note is wrong),
/// or the image cannot be written or fails its check (the target is then left
/// as it was).
pub fn import_core(args: &ImportCoreArgs, out: &mut dyn Write) -> Result<ExitCode> {
    let plan = Plan::new(args)?;
    let key = plan.key.as_ref().map(KeySource::load).transpose()?;
    let core = memimg::FileBytes::open(&plan.core)
        .map_err(|e| crate::open::lib_error(e, &plan.core, "opening"))?;
    let mut opts = WriterOptions::new()
        .codec(plan.codec)
        .key_opt(key.clone())
        .producer(concat!("imgtool import-core ", env!("CARGO_PKG_VERSION")));
    if let Some(ps) = plan.page_size {
        opts = opts.page_size(ps);
    }
    let page_size = u64::from(opts.get_page_size());

    let importing = || format!("importing {}", plan.core.display());
    let (stats, report) = match &plan.target.loc {
        Location::Local(_) => {
            // AtomicFile creates the image 0600 (it holds process memory),
            // or with the mode of the image it replaces.
            let af = create_tmp(&plan.target)?;
            let w = BufWriter::with_capacity(1 << 20, af);
            let (w, stats, report) = elfcore::import_core(&core, opts, w)
                .map_err(|e| anyhow!(e))
                .with_context(importing)?;
            let af = w
                .into_inner()
                .map_err(|e| e.into_error())
                .context("flushing the new image")?;
            verify_tmp(&af, key.as_ref(), true, &plan.target)?;
            af.commit()?;
            (stats, report)
        }
        Location::S3(url) => {
            // Streamed into a multipart upload, completed only when the
            // image is whole; then checked, and removed if it fails.
            let w = BufWriter::with_capacity(1 << 20, create_upload(url)?);
            let (w, stats, report) = elfcore::import_core(&core, opts, w)
                .map_err(|e| anyhow!(e))
                .with_context(importing)?;
            let w = w
                .into_inner()
                .map_err(|e| e.into_error())
                .context("sending the new image")?;
            w.commit().map_err(anyhow::Error::new)?;
            verify_uploaded(url, key.as_ref(), true)?;
            (stats, report)
        }
    };

    let doc = ImportCoreDoc {
        core: plan.core.display().to_string(),
        image: plan.target.loc.to_string(),
        segments: report.segments,
        regions: report.regions,
        file_mappings: report.file_mappings,
        data_bytes: stats.data_bytes,
        zero_bytes: stats.zero_pages.saturating_mul(page_size),
        absent_bytes: report.absent_bytes,
        chunks: stats.chunks,
        stored_bytes: stats.stored_bytes,
        file_size: stats.file_len,
        process: report.process,
        registers: report.registers,
        exact: report.from_memimg_notes,
        kept_notes: report.kept_notes,
        encrypted: key.is_some(),
        messages: report.messages,
    };
    if plan.json {
        serde_json::to_writer_pretty(&mut *out, &doc)?;
        writeln!(out)?;
    } else {
        print_text(&doc, plan.codec, out)?;
    }
    Ok(super::code(crate::EXIT_OK))
}

fn print_text(doc: &ImportCoreDoc, codec: Codec, out: &mut dyn Write) -> Result<()> {
    writeln!(
        out,
        "{}: {} segments imported as {} regions{}: {} of data in {} chunks stored in {} with {} ({}), {} zero, {} not captured; file {}",
        doc.image,
        doc.segments,
        doc.regions,
        if doc.file_mappings > 0 {
            format!(" ({} named from NT_FILE)", doc.file_mappings)
        } else {
            String::new()
        },
        fmt::size(doc.data_bytes),
        doc.chunks,
        fmt::size(doc.stored_bytes),
        codec,
        fmt::ratio(doc.data_bytes, doc.stored_bytes),
        fmt::size(doc.zero_bytes),
        fmt::size(doc.absent_bytes),
        fmt::size(doc.file_size),
    )?;
    let mut facts = Vec::new();
    if doc.exact {
        facts.push("written by export-core: regions, names and zero runs are exact".to_string());
    }
    facts.push(if doc.registers {
        "registers kept".to_string()
    } else {
        "no registers".to_string()
    });
    if !doc.process {
        facts.push("no process facts".to_string());
    }
    if doc.encrypted {
        facts.push("encrypted".to_string());
    }
    writeln!(
        out,
        "  {} notes kept{}; {}",
        doc.kept_notes.len(),
        if doc.kept_notes.is_empty() {
            String::new()
        } else {
            // Note names come from the core: escaped for the terminal.
            let names: Vec<String> = doc.kept_notes.iter().map(|n| fmt::escape_str(n)).collect();
            format!(" ({})", names.join(", "))
        },
        facts.join("; ")
    )?;
    for m in &doc.messages {
        writeln!(out, "  {}", fmt::escape_str(m))?;
    }
    Ok(())
}
