//! `imgtool inspect`: header facts, the region table, totals and chunks.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use comfy_table::{presets, CellAlignment, ContentArrangement, Table, TableComponent};
use memimg::{ExtentKind, Image, Kdf};
use serde::Serialize;

use crate::cli::InspectArgs;
use crate::fmt;

/// What to show, from the raw arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    json: bool,
    header: bool,
    regions: bool,
    chunks: bool,
}

impl Plan {
    fn new(a: &InspectArgs) -> Self {
        Plan {
            json: a.json,
            header: !a.regions,
            regions: true,
            chunks: a.chunks,
        }
    }
}

/// Shows the image `args.image`.
///
/// # Errors
/// When the image cannot be opened or the key does not open it.
pub fn inspect(args: &InspectArgs, out: &mut dyn Write) -> Result<ExitCode> {
    let plan = Plan::new(args);
    let loc = crate::open::location(&args.image)?;
    let key = args.key.load()?;
    let chain = crate::open::open_chain_at(&loc, key.as_ref(), false, &args.chain)?;
    let mut doc = Doc::build(chain.image(), plan.chunks)?;
    doc.chain = ChainDoc::build(&chain)?;
    if plan.json {
        serde_json::to_writer_pretty(&mut *out, &doc)?;
        writeln!(out)?;
    } else {
        doc.write_text(plan, out)?;
    }
    Ok(super::code(crate::EXIT_OK))
}

/// The facts of an image, serialised as `inspect --json` prints them.
#[derive(Debug, Serialize)]
pub struct Doc {
    /// `"1.0"`.
    pub version: String,
    /// Names of the set feature bits.
    pub features: Vec<String>,
    /// Page size in bytes.
    pub page_size: u32,
    /// Largest chunk in bytes.
    pub chunk_size: u32,
    /// 32 hex digits.
    pub image_id: String,
    /// RFC 3339, UTC.
    pub created: String,
    /// The writing program.
    pub producer: String,
    /// The producer's bytes in hex, present only when they are not UTF-8
    /// (`producer` then shows them with U+FFFD).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub producer_hex: Option<String>,
    /// The captured machine.
    pub machine: Machine,
    /// Application validation data, if any.
    pub validation: Option<ValidationDoc>,
    /// Process facts, if any.
    pub process: Option<ProcessDoc>,
    /// Cipher and KDF.
    pub encryption: Encryption,
    /// Key rotations so far.
    pub key_generation: u32,
    /// File size in bytes.
    pub file_size: u64,
    /// True when the regions could be read (plain image, or key given).
    pub unlocked: bool,
    /// The regions, when unlocked.
    pub regions: Option<Vec<RegionDoc>>,
    /// Totals, when unlocked.
    pub totals: Option<Totals>,
    /// Every chunk, with `--chunks` and when unlocked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunks: Option<Vec<ChunkDoc>>,
    /// The load-order profile (`imgtool optimize`); `null` when the image
    /// has none.
    pub load_order: Option<LoadOrderDoc>,
    /// Where the index is when it comes right after the header (format 1.1,
    /// `INDEX_FIRST`, what `imgtool optimize` writes for a plain image);
    /// `null` when it is at the end.
    pub index_first: Option<IndexFirstDoc>,
    /// An incremental image (format 1.1): its parent and its chain. Left
    /// out for a full image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain: Option<ChainDoc>,
}

/// The chain of an incremental image, as `inspect` shows it.
#[derive(Debug, Serialize)]
pub struct ChainDoc {
    /// The image's depth: 1 for a child of a full image.
    pub depth: u32,
    /// The parent its record names: image id, hex.
    pub parent_id: String,
    /// The checksum of the parent's index the record names, hex.
    pub parent_index_checksum: String,
    /// Where the parent was, when the image was written (a hint only).
    pub parent_hint: Option<String>,
    /// The links opened, the image first.
    pub links: Vec<LinkDoc>,
    /// The parent the chain lacks, when a link's parent was neither given
    /// nor found: what its child names.
    pub missing: Option<String>,
}

/// One link of a chain.
#[derive(Debug, Serialize)]
pub struct LinkDoc {
    /// 0 for the image, 1 for its parent ...
    pub link: usize,
    /// Its path, when known.
    pub path: Option<String>,
    /// Its image id, hex.
    pub image_id: String,
    /// Its depth.
    pub depth: u32,
    /// Pages it stores (data), when it could be read.
    pub stored_pages: Option<u64>,
    /// Pages it takes from its parent, when it could be read.
    pub in_parent_pages: Option<u64>,
    /// Pages of the image's content this link answers: stored or zero
    /// pages of its own that no nearer link overrides.
    pub answers_pages: Option<u64>,
}

impl ChainDoc {
    /// The chain of `chain`'s image, or `None` for a full image.
    ///
    /// # Errors
    /// Only on inconsistencies the reader should have caught.
    pub fn build(chain: &memimg::Chain) -> Result<Option<ChainDoc>> {
        let img = chain.image();
        let Some(rec) = img.parent() else {
            return Ok(None);
        };
        let ps = img.header().page_size;
        let unlocked = chain.links().iter().all(Image::is_unlocked);
        let mut answers = vec![0u64; chain.links().len()];
        if unlocked {
            for r in img.regions()?.iter().filter(|r| r.has_data()) {
                for s in chain.segments(r.info.start, r.info.end())? {
                    if matches!(
                        s.kind,
                        memimg::SegmentKind::Data(_) | memimg::SegmentKind::Zero
                    ) {
                        answers[s.link] += (s.end - s.start) / u64::from(ps);
                    }
                }
            }
        }
        let mut links = Vec::new();
        for (i, l) in chain.links().iter().enumerate() {
            let counts = if l.is_unlocked() {
                let (mut data, mut inp) = (0u64, 0u64);
                for e in l.extents()? {
                    match e.kind {
                        ExtentKind::Data => data += u64::from(e.page_count),
                        ExtentKind::InParent => inp += u64::from(e.page_count),
                        _ => {}
                    }
                }
                Some((data, inp))
            } else {
                None
            };
            links.push(LinkDoc {
                link: i,
                path: l.path().map(|p| p.display().to_string()),
                image_id: l.header().image_id_hex(),
                depth: l.depth(),
                stored_pages: counts.map(|c| c.0),
                in_parent_pages: counts.map(|c| c.1),
                answers_pages: unlocked.then(|| answers[i]),
            });
        }
        let missing = chain.missing_parent().map(|(r, hint)| {
            format!(
                "image {} (depth {}{}) was not given or found: give it with --parent",
                r.image_id_hex(),
                r.depth - 1,
                hint.map(|h| format!(", hint {h:?}")).unwrap_or_default()
            )
        });
        Ok(Some(ChainDoc {
            depth: rec.depth,
            parent_id: rec.image_id_hex(),
            parent_index_checksum: format!("{:016x}", rec.index_checksum),
            parent_hint: img.header().parent_hint.clone(),
            links,
            missing,
        }))
    }

    fn write_text(&self, out: &mut dyn Write) -> Result<()> {
        writeln!(
            out,
            "{:<15} image {}, index {}{}",
            "parent",
            self.parent_id,
            self.parent_index_checksum,
            self.parent_hint
                .as_ref()
                .map(|h| format!(", hint \"{}\"", fmt::escape_str(h)))
                .unwrap_or_default()
        )?;
        writeln!(
            out,
            "{:<15} depth {}, {} links open",
            "chain",
            self.depth,
            self.links.len()
        )?;
        for l in &self.links {
            let pages = match (l.stored_pages, l.in_parent_pages, l.answers_pages) {
                (Some(s), Some(p), Some(a)) => {
                    format!("{s} pages stored, {p} from its parent; answers {a} pages")
                }
                (Some(s), Some(p), None) => format!("{s} pages stored, {p} from its parent"),
                _ => "encrypted (give the key to count its pages)".to_string(),
            };
            writeln!(
                out,
                "  link {}  {}  image {} depth {}: {pages}",
                l.link,
                l.path
                    .as_deref()
                    .map_or_else(|| "-".to_string(), fmt::escape_str),
                l.image_id,
                l.depth
            )?;
        }
        if let Some(m) = &self.missing {
            writeln!(out, "  missing: {}", fmt::escape_str(m))?;
        }
        Ok(())
    }
}

/// The load-order profile of an optimized image (spec.md, *Load order*).
#[derive(Debug, Serialize)]
pub struct LoadOrderDoc {
    /// Chunks in the profile (`null` when the image is encrypted and no key
    /// was given: the profile is in the encrypted index).
    pub chunks: Option<u64>,
    /// Stored bytes of the working set: the one read from `offset` that
    /// fetches them (`null` when locked).
    pub bytes: Option<u64>,
    /// File offset of the working set, hex (`null` when locked).
    pub offset: Option<String>,
    /// The chunk numbers, in the order the program first touched them
    /// (`null` when locked).
    pub order: Option<Vec<u64>>,
}

/// An index right after the header (spec.md, *Index first*).
#[derive(Debug, Serialize)]
pub struct IndexFirstDoc {
    /// Length of the index, which starts at the page size.
    pub index_len: u64,
    /// Bytes from offset 0 that hold the header, the index and the working
    /// set (or the data start, without a load order): what one read, or one
    /// ranged GET, fetches to open the image and serve its startup.
    pub front_bytes: u64,
}

/// Machine facts.
#[derive(Debug, Serialize)]
pub struct Machine {
    /// `x86_64`, `aarch64` …
    pub arch: String,
    /// ELF `e_machine`.
    pub e_machine: u16,
    /// `little` or `big`.
    pub endian: &'static str,
    /// Pointer width in bytes.
    pub pointer_bytes: u8,
    /// The machine's page size.
    pub page_size: u32,
}

/// Validation data, described but not dumped.
#[derive(Debug, Serialize)]
pub struct ValidationDoc {
    /// The tag, as text (invalid UTF-8 replaced).
    pub tag: String,
    /// The tag's bytes in hex, only when they are not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag_hex: Option<String>,
    /// The tag's bytes.
    #[serde(skip)]
    pub tag_raw: Vec<u8>,
    /// Bytes of data.
    pub size: usize,
}

/// Process facts.
#[derive(Debug, Serialize)]
pub struct ProcessDoc {
    /// Process id.
    pub pid: Option<u32>,
    /// Command name.
    pub comm: String,
    /// Arguments.
    pub cmdline: Vec<String>,
    /// Executable path.
    pub exe: String,
    /// GNU build id, hex.
    pub build_id: String,
    /// `uname -r`.
    pub kernel_release: String,
    /// Each of `comm`, `cmdline`, `exe` and `kernel_release` whose bytes are
    /// not UTF-8, by name, as hex of its bytes (`cmdline`: the whole record,
    /// NUL-separated). Left out when all are UTF-8.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub hex: std::collections::BTreeMap<&'static str, String>,
    /// The raw bytes, for the text output.
    #[serde(skip)]
    pub raw: memimg::ProcessFacts,
}

/// Encryption facts.
#[derive(Debug, Serialize)]
pub struct Encryption {
    /// `none` or `chacha20-poly1305`.
    pub cipher: String,
    /// `none`, `key-file` or `argon2id`.
    pub kdf: String,
    /// Argon2id memory in KiB, passes and lanes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub argon2: Option<[u32; 3]>,
}

/// One row of the region table.
#[derive(Debug, Serialize, Clone)]
pub struct RegionDoc {
    /// Position in the region table.
    pub index: u32,
    /// Start address, hex.
    pub start: String,
    /// End address (exclusive), hex.
    pub end: String,
    /// Length in bytes.
    pub size: u64,
    /// `rw-p` …
    pub perms: String,
    /// `heap`, `stack` …
    pub kind: String,
    /// Name or path (invalid UTF-8 replaced).
    pub name: String,
    /// The name's bytes in hex, only when they are not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name_hex: Option<String>,
    /// The name's bytes.
    #[serde(skip)]
    pub name_raw: Vec<u8>,
    /// Bytes of non-zero pages stored.
    pub data_bytes: u64,
    /// Stored bytes of its chunks.
    pub stored_bytes: u64,
    /// `data_bytes / stored_bytes`, two decimals.
    pub ratio: Option<f64>,
    /// Pages recorded as zero.
    pub zero_pages: u64,
    /// Pages not captured (including a region recorded without data).
    pub absent_pages: u64,
    /// Pages recorded as the parent's (an incremental image); left out
    /// when none.
    #[serde(skip_serializing_if = "is_zero")]
    pub parent_pages: u64,
    /// Chunks.
    pub chunks: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Totals over all regions.
#[derive(Debug, Serialize, Clone, Default)]
pub struct Totals {
    /// Regions.
    pub regions: u64,
    /// Sum of region sizes.
    pub mapped_bytes: u64,
    /// Bytes of non-zero pages stored.
    pub data_bytes: u64,
    /// Stored bytes of all chunks.
    pub stored_bytes: u64,
    /// `data_bytes / stored_bytes`.
    pub ratio: Option<f64>,
    /// Pages recorded as zero.
    pub zero_pages: u64,
    /// Pages not captured.
    pub absent_pages: u64,
    /// Pages recorded as the parent's; left out when none.
    #[serde(skip_serializing_if = "is_zero")]
    pub parent_pages: u64,
    /// Chunks.
    pub chunks: u64,
    /// File size.
    pub file_size: u64,
}

/// One chunk.
#[derive(Debug, Serialize)]
pub struct ChunkDoc {
    /// Chunk number.
    pub index: u64,
    /// Virtual address of its first page, hex.
    pub addr: String,
    /// Owning region.
    pub region: u32,
    /// Raw length in bytes.
    pub raw_len: u64,
    /// Stored length in bytes.
    pub stored_len: u32,
    /// `none` or `zstd`.
    pub codec: String,
    /// File offset of its stored bytes, hex.
    pub offset: String,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The hex of `b` when it is not UTF-8: how JSON keeps the exact bytes of a
/// text field read from a file.
pub fn hex_if_binary(b: &[u8]) -> Option<String> {
    std::str::from_utf8(b).is_err().then(|| memimg::hex(b))
}

/// The producer record's bytes as stored in the header page (the library
/// gives it as text, with invalid UTF-8 replaced): the first type-1 record of
/// the header's TLV area, see spec.md, *Header TLV records*.
fn producer_bytes(page: &[u8]) -> Option<&[u8]> {
    let meta_len =
        usize::try_from(u32::from_le_bytes(page.get(0x58..0x5c)?.try_into().ok()?)).ok()?;
    let mut rest = page.get(0x80..0x80usize.checked_add(meta_len)?)?;
    while rest.len() >= 4 {
        let ty = u16::from_le_bytes([rest[0], rest[1]]);
        let len = usize::from(u16::from_le_bytes([rest[2], rest[3]]));
        let value = rest.get(4..4 + len)?;
        if ty == 1 {
            return Some(value);
        }
        rest = &rest[4 + len..];
    }
    None
}

impl Doc {
    /// Gathers the facts of `img`.
    ///
    /// # Errors
    /// Only on inconsistencies the reader should have caught.
    pub fn build(img: &Image, want_chunks: bool) -> Result<Doc> {
        let h = img.header();
        let t = img.trailer();
        let ps = h.page_size;
        let (kdf, argon2) = match t.kdf {
            None => ("none".to_string(), None),
            Some(Kdf::RawKey) => ("key-file".to_string(), None),
            Some(Kdf::Argon2id(p)) => {
                ("argon2id".to_string(), Some([p.m_cost, p.t_cost, p.p_cost]))
            }
        };
        let mut doc = Doc {
            version: format!("{}.{}", h.version.0, h.version.1),
            features: h.features.names(),
            page_size: ps,
            chunk_size: h.chunk_size,
            image_id: h.image_id_hex(),
            created: fmt::rfc3339(h.created_secs, h.created_nanos),
            producer: h.producer.clone(),
            producer_hex: producer_bytes(img.header_bytes()).and_then(hex_if_binary),
            machine: Machine {
                arch: h.machine.arch_name(),
                e_machine: h.machine.arch,
                endian: match h.machine.endian {
                    memimg::Endian::Little => "little",
                    memimg::Endian::Big => "big",
                },
                pointer_bytes: h.machine.ptr_bytes,
                page_size: h.machine.page_size,
            },
            validation: h.validation.as_ref().map(|v| ValidationDoc {
                tag: text(&v.tag),
                tag_hex: hex_if_binary(&v.tag),
                tag_raw: v.tag.clone(),
                size: v.data.len(),
            }),
            process: h.process.as_ref().map(|p| ProcessDoc {
                pid: p.pid,
                comm: text(&p.comm),
                cmdline: p
                    .cmdline
                    .split(|&b| b == 0)
                    .filter(|s| !s.is_empty())
                    .map(text)
                    .collect(),
                exe: text(&p.exe),
                build_id: memimg::hex(&p.build_id),
                kernel_release: text(&p.kernel_release),
                hex: [
                    ("comm", &p.comm),
                    ("cmdline", &p.cmdline),
                    ("exe", &p.exe),
                    ("kernel_release", &p.kernel_release),
                ]
                .into_iter()
                .filter_map(|(k, v)| Some((k, hex_if_binary(v)?)))
                .collect(),
                raw: p.clone(),
            }),
            encryption: Encryption {
                cipher: h.cipher.to_string(),
                kdf,
                argon2,
            },
            key_generation: t.generation,
            file_size: img.file_len(),
            unlocked: img.is_unlocked(),
            regions: None,
            totals: None,
            chunks: None,
            chain: None,
            load_order: None,
            index_first: None,
        };
        if let Some(rec) = img.header().index_first {
            let ws_end = img.working_set_range().ok().flatten().map(|r| r.end);
            doc.index_first = Some(IndexFirstDoc {
                index_len: rec.index_len,
                front_bytes: ws_end.unwrap_or_else(|| img.header().data_start()),
            });
        }
        if img.has_load_order() {
            let order = img.load_order().ok().flatten();
            let range = img.working_set_range().ok().flatten();
            doc.load_order = Some(LoadOrderDoc {
                chunks: order.map(|o| o.len() as u64),
                bytes: range.as_ref().map(|r| r.end - r.start),
                offset: range.as_ref().map(|r| format!("{:#x}", r.start)),
                order: order.map(<[u64]>::to_vec),
            });
        }
        if !img.is_unlocked() {
            return Ok(doc);
        }
        let locs = img.chunk_locs();
        let stored_of = |chunk: u64| {
            usize::try_from(chunk)
                .ok()
                .and_then(|i| locs.get(i))
                .map_or(0, |c| u64::from(c.stored_len))
        };
        let mut rows = Vec::new();
        let mut tot = Totals {
            file_size: img.file_len(),
            ..Totals::default()
        };
        for r in img.regions()? {
            let mut row = RegionDoc {
                index: r.index,
                start: fmt::addr(r.info.start),
                end: fmt::addr(r.info.end()),
                size: r.info.len,
                perms: fmt::perms(&r.info),
                kind: r.info.kind.to_string(),
                name: r.info.name_lossy(),
                name_hex: hex_if_binary(&r.info.name),
                name_raw: r.info.name.clone(),
                data_bytes: 0,
                stored_bytes: 0,
                ratio: None,
                zero_pages: 0,
                absent_pages: if r.has_data() {
                    0
                } else {
                    r.info.len / u64::from(ps)
                },
                parent_pages: 0,
                chunks: 0,
            };
            for e in img.region_extents(r)? {
                match e.kind {
                    ExtentKind::Data => {
                        row.data_bytes += e.len(ps);
                        row.stored_bytes += stored_of(e.chunk);
                        row.chunks += 1;
                    }
                    ExtentKind::Zero => row.zero_pages += u64::from(e.page_count),
                    ExtentKind::Absent => row.absent_pages += u64::from(e.page_count),
                    ExtentKind::InParent => row.parent_pages += u64::from(e.page_count),
                }
            }
            row.ratio = fmt::ratio_f64(row.data_bytes, row.stored_bytes);
            tot.regions += 1;
            tot.mapped_bytes += row.size;
            tot.data_bytes += row.data_bytes;
            tot.stored_bytes += row.stored_bytes;
            tot.zero_pages += row.zero_pages;
            tot.absent_pages += row.absent_pages;
            tot.parent_pages += row.parent_pages;
            tot.chunks += row.chunks;
            rows.push(row);
        }
        tot.ratio = fmt::ratio_f64(tot.data_bytes, tot.stored_bytes);
        doc.regions = Some(rows);
        doc.totals = Some(tot);
        if want_chunks {
            let mut chunks = Vec::new();
            for e in img.extents()?.iter().filter(|e| e.kind == ExtentKind::Data) {
                let loc = usize::try_from(e.chunk).ok().and_then(|i| locs.get(i));
                chunks.push(ChunkDoc {
                    index: e.chunk,
                    addr: fmt::addr(e.addr),
                    region: e.region,
                    raw_len: e.len(ps),
                    stored_len: loc.map_or(0, |c| c.stored_len),
                    codec: e.codec.to_string(),
                    offset: format!("{:#x}", loc.map_or(0, |c| c.offset)),
                });
            }
            doc.chunks = Some(chunks);
        }
        Ok(doc)
    }

    fn write_text(&self, plan: Plan, out: &mut dyn Write) -> Result<()> {
        if plan.header {
            self.write_header(out)?;
            if let Some(c) = &self.chain {
                c.write_text(out)?;
            }
        }
        let (Some(rows), Some(tot)) = (&self.regions, &self.totals) else {
            writeln!(
                out,
                "\nThe regions, chunks and totals are encrypted: give the key with --key-file, --passphrase-file or --key-fd to see them."
            )?;
            return Ok(());
        };
        if plan.header {
            writeln!(out)?;
        }
        if plan.regions {
            write_regions(rows, tot, out)?;
        }
        if let Some(chunks) = self.chunks.as_ref().filter(|_| plan.chunks) {
            writeln!(out)?;
            write_chunks(chunks, out)?;
        }
        Ok(())
    }

    fn write_header(&self, out: &mut dyn Write) -> Result<()> {
        let mut lines: Vec<(&str, String)> = vec![
            ("version", self.version.clone()),
            (
                "features",
                if self.features.is_empty() {
                    "none".into()
                } else {
                    self.features.join(", ")
                },
            ),
            ("page size", format!("{} bytes", self.page_size)),
            (
                "chunk size",
                format!(
                    "{} ({} bytes)",
                    fmt::size(self.chunk_size.into()),
                    self.chunk_size
                ),
            ),
            ("image id", self.image_id.clone()),
            ("created", self.created.clone()),
            (
                "producer",
                producer_bytes_of(self)
                    .map_or_else(|| fmt::escape_str(&self.producer), |b| fmt::escape(&b)),
            ),
            (
                "machine",
                format!(
                    "{} (e_machine {}), {}-endian, {}-byte pointers, {}-byte pages",
                    self.machine.arch,
                    self.machine.e_machine,
                    self.machine.endian,
                    self.machine.pointer_bytes,
                    self.machine.page_size
                ),
            ),
        ];
        lines.push((
            "validation",
            match &self.validation {
                Some(v) => format!(
                    "tag \"{}\", {} bytes",
                    fmt::escape_quoted(&v.tag_raw),
                    v.size
                ),
                None => "none".into(),
            },
        ));
        if let Some(p) = &self.process {
            let mut parts = Vec::new();
            if let Some(pid) = p.pid {
                parts.push(format!("pid {pid}"));
            }
            if !p.raw.comm.is_empty() {
                parts.push(format!("comm \"{}\"", fmt::escape_quoted(&p.raw.comm)));
            }
            if !p.raw.exe.is_empty() {
                parts.push(format!("exe {}", fmt::escape(&p.raw.exe)));
            }
            lines.push(("process", parts.join(", ")));
            let args: Vec<String> = p
                .raw
                .cmdline
                .split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(fmt::escape)
                .collect();
            if !args.is_empty() {
                lines.push(("cmdline", args.join(" ")));
            }
            if !p.build_id.is_empty() {
                lines.push(("build id", p.build_id.clone()));
            }
            if !p.raw.kernel_release.is_empty() {
                lines.push(("kernel", fmt::escape(&p.raw.kernel_release)));
            }
        }
        let enc = &self.encryption;
        lines.push((
            "encryption",
            match (enc.cipher.as_str(), enc.argon2) {
                ("none", _) => "none".into(),
                (c, Some([m, t, p])) => {
                    format!("{c}, passphrase (argon2id m={m} KiB, t={t}, p={p})")
                }
                (c, None) => format!("{c}, {}", enc.kdf),
            },
        ));
        if enc.cipher != "none" {
            lines.push(("key generation", self.key_generation.to_string()));
        }
        if let Some(lo) = &self.load_order {
            lines.push((
                "load order",
                match (lo.chunks, lo.bytes) {
                    (Some(n), Some(b)) => format!(
                        "{n} chunks first, {} in one read from {}",
                        fmt::size(b),
                        lo.offset.as_deref().unwrap_or("?")
                    ),
                    _ => "yes (the profile is encrypted: give the key to see it)".into(),
                },
            ));
        }
        if let Some(ix) = &self.index_first {
            lines.push((
                "index",
                format!(
                    "first, {} at {:#x}: header, index and working set in one read of {} from offset 0",
                    fmt::size(ix.index_len),
                    self.page_size,
                    fmt::size(ix.front_bytes)
                ),
            ));
        }
        lines.push((
            "file size",
            format!("{} ({} bytes)", fmt::size(self.file_size), self.file_size),
        ));
        for (k, v) in lines {
            writeln!(out, "{k:<15} {v}")?;
        }
        Ok(())
    }
}

fn table(headers: &[&str], right: &[usize]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::UTF8_HORIZONTAL_ONLY);
    // A line under the header and around the table, none between rows.
    t.remove_style(TableComponent::HorizontalLines);
    t.remove_style(TableComponent::LeftBorderIntersections);
    t.remove_style(TableComponent::RightBorderIntersections);
    t.remove_style(TableComponent::MiddleIntersections);
    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        t.set_content_arrangement(ContentArrangement::Dynamic);
    }
    t.set_header(headers.iter().copied());
    for &c in right {
        if let Some(col) = t.column_mut(c) {
            col.set_cell_alignment(CellAlignment::Right);
        }
    }
    t
}

fn write_regions(rows: &[RegionDoc], tot: &Totals, out: &mut dyn Write) -> Result<()> {
    let mut t = table(
        &[
            "#",
            "start-end",
            "size",
            "perms",
            "kind",
            "name",
            "stored",
            "ratio",
            "zero pages",
        ],
        &[0, 2, 6, 7, 8],
    );
    for r in rows {
        t.add_row(vec![
            r.index.to_string(),
            format!("{}-{}", r.start, r.end),
            fmt::size(r.size),
            r.perms.clone(),
            r.kind.clone(),
            fmt::escape(&r.name_raw),
            fmt::size(r.stored_bytes),
            fmt::ratio(r.data_bytes, r.stored_bytes),
            r.zero_pages.to_string(),
        ]);
    }
    writeln!(out, "{t}")?;
    writeln!(
        out,
        "total: {} regions, {} mapped, {} of data in {} chunks stored in {} ({}), {} zero pages, {} pages not captured, file {}",
        tot.regions,
        fmt::size(tot.mapped_bytes),
        fmt::size(tot.data_bytes),
        tot.chunks,
        fmt::size(tot.stored_bytes),
        fmt::ratio(tot.data_bytes, tot.stored_bytes),
        tot.zero_pages,
        tot.absent_pages,
        fmt::size(tot.file_size),
    )?;
    if tot.parent_pages > 0 {
        writeln!(
            out,
            "       {} pages are the parent's (an incremental image)",
            tot.parent_pages
        )?;
    }
    Ok(())
}

fn write_chunks(chunks: &[ChunkDoc], out: &mut dyn Write) -> Result<()> {
    let mut t = table(
        &[
            "chunk",
            "address",
            "region",
            "raw",
            "stored",
            "codec",
            "file offset",
        ],
        &[0, 2, 3, 4, 6],
    );
    for c in chunks {
        t.add_row(vec![
            c.index.to_string(),
            c.addr.clone(),
            c.region.to_string(),
            c.raw_len.to_string(),
            c.stored_len.to_string(),
            c.codec.clone(),
            c.offset.clone(),
        ]);
    }
    writeln!(out, "{t}")?;
    writeln!(out, "{} chunks", chunks.len())?;
    Ok(())
}

/// The producer's bytes, from its hex when they are not UTF-8.
fn producer_bytes_of(doc: &Doc) -> Option<Vec<u8>> {
    let h = doc.producer_hex.as_ref()?;
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok())
        .collect()
}
