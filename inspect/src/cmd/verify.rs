//! `imgtool verify`: every check, every problem with its location.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use memimg::{ErrorKind, Key, Problem, Report, Status, VerifyOptions};
use memimg_remote::{FetchOptions, Location, RemoteReader};
use serde::Serialize;

use crate::cli::VerifyArgs;
use crate::{fmt, ui};

/// A validated verify.
struct Plan {
    image: Location,
    key: Option<Key>,
    decode: bool,
    json: bool,
    parents: Vec<std::path::PathBuf>,
    no_hints: bool,
}

impl Plan {
    fn new(a: &VerifyArgs) -> Result<Plan> {
        let key = a.key.load()?;
        let decode = key.is_some() || a.deep;
        Ok(Plan {
            image: crate::open::location(&a.image)?,
            key,
            decode,
            json: a.json,
            parents: a.chain.parents.clone(),
            no_hints: a.chain.no_hints,
        })
    }
}

/// The JSON document of `verify --json`.
#[derive(Debug, Serialize)]
pub struct VerifyDoc {
    /// The image path.
    pub image: String,
    /// `intact`, `damaged` or `unchecked`.
    pub status: &'static str,
    /// Why the image could not be checked.
    pub error: Option<String>,
    /// True when the error is a wrong key.
    pub wrong_key: bool,
    /// Every problem, in file order.
    pub problems: Vec<ProblemDoc>,
    /// Chunks whose stored bytes were checked.
    pub chunks_checked: u64,
    /// Chunks decoded and checked against their raw checksum.
    pub chunks_decoded: u64,
    /// Stored bytes read.
    pub bytes_checked: u64,
    /// True when the index could be read.
    pub unlocked: bool,
    /// `checked`; `encrypted` when no key was given for an encrypted image;
    /// `unreadable` when damage stopped the reader before the index.
    pub index: &'static str,
    /// True when chunks were decoded (a key was given, or --deep).
    pub deep: bool,
    /// True when decoding was asked for (a key was given, or --deep).
    pub deep_requested: bool,
    /// Parents of an incremental image verified with it: each link as an
    /// image, its identity against its child's parent record, and every
    /// page a child takes from it found there.
    pub parents_checked: u32,
    /// The parent that was not checked (not given, not found where its
    /// hint says), and why: the bytes the image holds were checked all the
    /// same.
    pub parent_unchecked: Option<String>,
}

/// One problem.
#[derive(Debug, Serialize)]
pub struct ProblemDoc {
    /// Kind, as the library names it (`Checksum`, `Truncated` …).
    pub kind: String,
    /// The message without the location.
    pub message: String,
    /// File offset, hex.
    pub offset: Option<String>,
    /// Region index.
    pub region: Option<u32>,
    /// Chunk number.
    pub chunk: Option<u64>,
    /// Virtual address, hex.
    pub addr: Option<String>,
    /// The link of a chain of incremental images (0 the image, 1 its
    /// parent ...).
    pub link: Option<u32>,
}

impl From<&Problem> for ProblemDoc {
    fn from(p: &Problem) -> Self {
        ProblemDoc {
            kind: format!("{:?}", p.kind),
            message: p.message.clone(),
            offset: p.location.offset.map(|o| format!("{o:#x}")),
            region: p.location.region,
            chunk: p.location.chunk,
            addr: p.location.addr.map(|a| format!("{a:#x}")),
            link: p.location.link,
        }
    }
}

/// Why the index was not read, when it was not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Index {
    /// Read and checked.
    Checked,
    /// The image is encrypted and no key was given.
    Locked,
    /// Damage (reported among the problems) stopped the reader before it.
    Unreadable,
}

impl Index {
    /// What the report says, asking the image itself when only it can tell
    /// a locked index from a damaged one: a report without a key whose index
    /// was not read is about an encrypted image only when the image opens
    /// without its key and says it is encrypted.
    fn of(plan: &Plan, r: &Report, reader: Option<&Arc<RemoteReader>>) -> Index {
        if r.unlocked {
            Index::Checked
        } else if plan.key.is_some() {
            // With a key, an index that cannot be read is damaged (a wrong
            // key is fatal, not a problem).
            Index::Unreadable
        } else {
            let img = match (&plan.image, reader) {
                (_, Some(r)) => memimg::Image::from_read_at(r.clone(), None),
                (Location::Local(p), None) => memimg::Image::open(p),
                (Location::S3(_), None) => return Index::Unreadable,
            };
            match img {
                Ok(img) if img.is_encrypted() => Index::Locked,
                _ => Index::Unreadable,
            }
        }
    }
}

/// The chain of a child in object storage, as [`memimg::verify_chain_path`]
/// checks a local one: its parents given with `--parent` (files or URLs),
/// then those its hints find (`crate::open::open_chain_located`), each
/// checked against its child's parent record when the chain is put
/// together, then verified as an image, then every in-parent range checked
/// to be held. A parent neither given nor found is reported as not checked.
///
/// The child is opened again from `reader`, which verified it: from the
/// reader's cache, with no new request.
fn remote_chain(
    plan: &Plan,
    reader: &Arc<RemoteReader>,
    opts: &VerifyOptions<'_>,
    report: &mut Report,
) {
    if plan.parents.is_empty() && plan.no_hints {
        return;
    }
    let args = crate::cli::ChainArgs {
        parents: plan.parents.clone(),
        no_hints: plan.no_hints,
    };
    let key = plan.key.as_ref();
    let (chain, at) = match crate::open::open_remote(reader, &plan.image, key, false)
        .and_then(|img| crate::open::chain_located(img, &plan.image, key, &args))
    {
        Ok(c) => c,
        Err(e) => {
            // A parent that is missing, replaced, rewritten or damaged.
            report
                .problems
                .push(match e.downcast_ref::<memimg::Error>() {
                    Some(m) => Problem {
                        kind: m.kind(),
                        location: m.location(),
                        message: m.message().to_string(),
                    },
                    None => Problem {
                        kind: ErrorKind::ParentRequired,
                        location: memimg::Location::default().with_link(1),
                        message: crate::error_text(&e),
                    },
                });
            report.parent_unchecked = None;
            return;
        }
    };
    for (i, link) in chain.links().iter().enumerate().skip(1) {
        let n = u32::try_from(i).unwrap_or(u32::MAX);
        let key = plan.key.as_ref().filter(|_| link.is_encrypted());
        let r = match &at[i] {
            Location::Local(p) => memimg::verify_path(p, key, opts),
            Location::S3(url) => match crate::open::reader(url) {
                Ok(r) => memimg_remote::verify_remote(r, key, opts, FetchOptions::default()),
                Err(e) => Report {
                    fatal: Some(memimg::Error::plain(ErrorKind::Io, crate::error_text(&e))),
                    ..Report::default()
                },
            },
        };
        // As verify_chain_path names a link's problems.
        report.problems.extend(r.problems.into_iter().map(|mut p| {
            p.location.link = p.location.link.or(Some(n));
            p
        }));
        if let Some(e) = r.fatal {
            let mut p = Problem::from(e);
            p.location.link = Some(n);
            report.problems.push(p);
            report.parent_unchecked = None;
            return;
        }
        report.chunks_checked += r.chunks_checked;
        report.chunks_decoded += r.chunks_decoded;
        report.bytes_checked += r.bytes_checked;
        report.parents_checked += 1;
    }
    report.problems.extend(memimg::verify_chain_ranges(&chain));
    report.parent_unchecked = chain.missing_parent().map(|(rec, hint)| {
        let last = u32::try_from(chain.links().len() - 1).unwrap_or(u32::MAX);
        memimg::parent_unchecked_note(
            last,
            &rec,
            hint,
            "not checked: it was neither given nor found by its hint",
        )
    });
}

/// Verifies `args.image`: exit 0 intact, 1 damaged, 2 unable to check.
///
/// A key given for a plain image is refused (exit 2), as every command does:
/// see [`crate::open::open`].
///
/// # Errors
/// When the key cannot be read, or (without `--json`) when the image cannot
/// be checked at all.
pub fn verify(args: &VerifyArgs, out: &mut dyn Write) -> Result<ExitCode> {
    let plan = Plan::new(args)?;
    // A remote image: every stored byte fetched once, several ranged GETs
    // in flight (memimg_remote::verify_remote).
    let (reader, unreachable) = match &plan.image {
        Location::Local(_) => (None, None),
        Location::S3(url) => match crate::open::reader(url) {
            Ok(r) => (Some(r), None),
            Err(e) => (None, Some(e)),
        },
    };
    let total = match (&plan.image, &reader) {
        (Location::Local(p), _) => std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
        (_, Some(r)) => memimg::ReadAt::len(&**r),
        _ => 0,
    };
    let pb = ui::progress(total, "verify");
    let tick = |n: u64| pb.inc(n);
    let opts = VerifyOptions {
        decode: plan.decode,
        progress: Some(&tick),
    };
    let mut report = match (&plan.image, &reader, unreachable) {
        (Location::Local(p), _, _) => memimg::verify_chain_path(
            p,
            plan.key.as_ref(),
            &memimg::ChainOptions {
                parents: plan.parents.clone(),
                no_hints: plan.no_hints,
                parent_key: None,
            },
            &opts,
        ),
        (_, Some(r), _) => memimg_remote::verify_remote(
            r.clone(),
            plan.key.as_ref(),
            &opts,
            FetchOptions::default(),
        ),
        // The object could not be reached: unable to check, as a local
        // file that cannot be opened.
        (_, None, e) => Report {
            fatal: Some(memimg::Error::plain(
                ErrorKind::Io,
                e.map(|e| crate::error_text(&e)).unwrap_or_default(),
            )),
            ..Report::default()
        },
    };
    if let Some(r) = reader
        .as_ref()
        .filter(|_| report.fatal.is_none() && report.parent_unchecked.is_some())
    {
        remote_chain(&plan, r, &opts, &mut report);
    }
    pb.finish_and_clear();
    let index = Index::of(&plan, &report, reader.as_ref());
    // A deep check of an encrypted image without its key could not decode
    // the chunks: it did not do what was asked. Damage found anyway is still
    // reported as damage.
    let undecoded = plan.decode && index == Index::Locked && report.fatal.is_none();
    let doc = document(&plan, &report, index, undecoded);
    let code = exit_of(&report, undecoded);
    if plan.json {
        serde_json::to_writer_pretty(&mut *out, &doc)?;
        writeln!(out)?;
        return Ok(super::code(code));
    }
    if let Some(e) = &report.fatal {
        return Err(fatal_error(&plan, e));
    }
    if undecoded && report.problems.is_empty() {
        bail!(
            "{}: unable to check deeply: the image is encrypted and no key was given",
            plan.image
        );
    }
    write_text(&doc, out)?;
    Ok(super::code(code))
}

/// The error for a report that could not check the image, naming the path
/// once: the library's I/O messages already name it (`opening PATH: …`).
fn fatal_error(plan: &Plan, e: &memimg::Error) -> anyhow::Error {
    match e.kind() {
        ErrorKind::WrongKey => crate::open::wrong_key(&plan.image, e),
        ErrorKind::NotEncrypted => crate::open::not_encrypted(&plan.image),
        _ => {
            let text = e.to_string();
            let path = plan.image.to_string();
            if text.contains(&path) {
                anyhow!("unable to check: {text}")
            } else {
                anyhow!("{path}: unable to check: {text}")
            }
        }
    }
}

/// True when a parent of an incremental image is missing or is not the
/// image its child names: the chain cannot be checked (exit 2), which is
/// not damage of the image.
fn chain_broken(report: &Report) -> bool {
    report.problems.iter().any(|p| {
        matches!(
            p.kind,
            ErrorKind::ParentRequired | ErrorKind::ParentMismatch
        )
    })
}

fn exit_of(report: &Report, undecoded: bool) -> u8 {
    if chain_broken(report) {
        return crate::EXIT_ERROR;
    }
    match report.status() {
        Status::Intact if undecoded => crate::EXIT_ERROR,
        Status::Intact => crate::EXIT_OK,
        Status::Damaged => crate::EXIT_FOUND,
        Status::Unchecked => crate::EXIT_ERROR,
    }
}

fn document(plan: &Plan, r: &Report, index: Index, undecoded: bool) -> VerifyDoc {
    let status = match r.status() {
        _ if chain_broken(r) => "unchecked",
        Status::Intact if undecoded => "unchecked",
        Status::Intact => "intact",
        Status::Damaged => "damaged",
        Status::Unchecked => "unchecked",
    };
    let error = match &r.fatal {
        Some(e) if e.kind() == ErrorKind::WrongKey => Some(crate::open::WRONG_KEY.to_string()),
        Some(e) if e.kind() == ErrorKind::NotEncrypted => Some(
            "the image is not encrypted, but a key was given: refusing to check it as if the \
             key had opened it"
                .to_string(),
        ),
        Some(e) => Some(e.to_string()),
        None if undecoded && r.problems.is_empty() => {
            Some("the image is encrypted and no key was given: chunks cannot be decoded".into())
        }
        None => None,
    };
    VerifyDoc {
        image: plan.image.to_string(),
        status,
        error,
        wrong_key: r
            .fatal
            .as_ref()
            .is_some_and(|e| e.kind() == ErrorKind::WrongKey),
        problems: r.problems.iter().map(ProblemDoc::from).collect(),
        chunks_checked: r.chunks_checked,
        chunks_decoded: r.chunks_decoded,
        bytes_checked: r.bytes_checked,
        unlocked: r.unlocked,
        index: match index {
            Index::Checked => "checked",
            Index::Locked => "encrypted",
            Index::Unreadable => "unreadable",
        },
        deep: plan.decode && r.unlocked,
        deep_requested: plan.decode,
        parents_checked: r.parents_checked,
        parent_unchecked: r.parent_unchecked.clone(),
    }
}

fn write_text(doc: &VerifyDoc, out: &mut dyn Write) -> Result<()> {
    let n = doc.problems.len();
    let verdict = match doc.status {
        "intact" => ui::good("intact"),
        "unchecked" => ui::bad(
            "UNABLE TO CHECK the chain: a parent is missing or is not the image its child names",
        ),
        _ => ui::bad(&format!(
            "DAMAGED, {n} problem{}",
            if n == 1 { "" } else { "s" }
        )),
    };
    writeln!(out, "{}: {verdict}", doc.image)?;
    for p in &doc.problems {
        let mut loc = Vec::new();
        if let Some(l) = p.link {
            loc.push(match l {
                0 => "link 0 (the image)".to_string(),
                1 => "link 1 (its parent)".to_string(),
                l => format!("link {l} (ancestor {l})"),
            });
        }
        if let Some(o) = &p.offset {
            loc.push(format!("offset {o}"));
        }
        if let Some(r) = p.region {
            loc.push(format!("region {r}"));
        }
        if let Some(c) = p.chunk {
            loc.push(format!("chunk {c}"));
        }
        if let Some(a) = &p.addr {
            loc.push(format!("address {a}"));
        }
        if loc.is_empty() {
            writeln!(out, "  {}", fmt::escape_str(&p.message))?;
        } else {
            writeln!(out, "  {}: {}", loc.join(", "), fmt::escape_str(&p.message))?;
        }
    }
    let what = if doc.deep {
        format!("{} chunks checked and decoded", doc.chunks_checked)
    } else {
        format!("{} chunks checked", doc.chunks_checked)
    };
    let index = match (doc.index, doc.deep_requested) {
        ("checked", _) => "index checked",
        ("encrypted", false) => "index encrypted (give a key to check it and decode the chunks)",
        ("encrypted", true) => {
            "index encrypted: the chunks were not decoded (give a key to check it and decode them)"
        }
        _ => "index unreadable: the damage above stops it from being read, and the chunks it locates from being checked",
    };
    writeln!(
        out,
        "  {what}, {} stored, {index}",
        fmt::size(doc.bytes_checked)
    )?;
    if doc.parents_checked > 0 {
        writeln!(
            out,
            "  chain: {} parent{} checked, and every page taken from a parent found there",
            doc.parents_checked,
            if doc.parents_checked == 1 { "" } else { "s" }
        )?;
    }
    if let Some(why) = &doc.parent_unchecked {
        writeln!(
            out,
            "  note: {}; only the pages this image holds were checked (give it with --parent)",
            fmt::escape_str(why)
        )?;
    }
    Ok(())
}
