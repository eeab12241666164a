//! The raw command-line arguments, as clap parses them.
//!
//! These structs hold what the user typed and nothing more; each subcommand
//! turns its arguments into a validated plan before doing any work. Adding a
//! subcommand is one variant of [`Command`], one `Args` struct here and one
//! module under `cmd/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Exit codes, shown in `imgtool --help`.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success: the image is intact, the images are identical, the rewrite is done
  1  damage found (verify) or differences found (diff)
  2  error: not an image, unreadable, wrong key, bad arguments — unable to check";

const MAIN_AFTER: &str = "\
Examples:
  imgtool capture --pid 1234 -o app.mimg
  imgtool inspect app.mimg
  imgtool verify --key-file app.key app.mimg
  imgtool diff before.mimg after.mimg
  imgtool recompress --in-place --codec zstd:3 app.mimg
  imgtool reencrypt --in-place --key-file old.key --new-key-file new.key app.mimg
  imgtool export-core app.mimg -o app.core && gdb -c app.core
  imgtool import-core core.1234 -o app.mimg
  imgtool cp app.mimg s3://images/app.mimg && imgtool inspect s3://images/app.mimg

Every IMAGE argument, and every -o of an image, may be an s3://BUCKET/KEY URL
of S3 or an S3-compatible store: imgtool reads it by ranged GETs (inspect and
cat fetch only the header page, trailer, index and the chunks they need) and
writes it by a multipart upload that completes only when the image is whole.
The store's endpoint, region and credentials come from the environment, as
for the AWS CLI: AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_ALLOW_HTTP. Objects cannot be
changed in place: --in-place on a URL is refused (give -o).

Keys are never given on the command line: they come from --key-file (32 raw
bytes), --passphrase-file (one line) or --key-fd (an inherited descriptor),
each a regular file or a pipe, read with a bound. A key given for a plain
image is refused.

Exit codes:
  0  success: the image is intact, the images are identical, the rewrite is done
  1  damage found (verify) or differences found (diff)
  2  error: not an image, unreadable, wrong key, bad arguments — unable to check";

/// Capture, inspect, verify, diff and rewrite memimg process-memory images.
#[derive(Debug, Parser)]
#[command(name = "imgtool", version, about, after_help = MAIN_AFTER)]
pub struct Cli {
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// One subcommand.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Capture a running process into an image.
    Capture(CaptureArgs),
    /// Show an image's header, regions and chunks.
    Inspect(InspectArgs),
    /// Check every structure, checksum and tag of an image.
    Verify(VerifyArgs),
    /// Compare the content of two images.
    Diff(DiffArgs),
    /// Re-encode every chunk with another codec; the content does not change.
    Recompress(RecompressArgs),
    /// Change the key of an image, encrypt a plain one or decrypt one.
    Reencrypt(ReencryptArgs),
    /// Lay an image out by a load-order profile: the chunks a restored
    /// program touched first are stored first.
    Optimize(OptimizeArgs),
    /// Write the bytes at a virtual address to stdout.
    Cat(CatArgs),
    /// Write an image as an ELF core file that gdb opens.
    ExportCore(ExportCoreArgs),
    /// Write an ELF core file (gcore or the kernel's) as an image.
    ImportCore(ImportCoreArgs),
    /// Copy an image between paths and s3:// URLs, checking it as it goes.
    Cp(CpArgs),
    /// Write a new random 32-byte key file.
    Keygen(KeygenArgs),
    /// Print a shell completion script.
    Completions(CompletionsArgs),
    /// Print the man page.
    Man(ManArgs),
    /// Write an incremental image and its parents as one full image.
    Flatten(FlattenArgs),
    /// Point an incremental image at another parent with the same content.
    Rebase(RebaseArgs),
}

/// Where a key comes from: one of a key file, a passphrase file or a descriptor.
#[derive(Debug, Clone, Default, Args)]
pub struct KeyArgs {
    /// Read the 32-byte key from this file.
    #[arg(long, value_name = "FILE", group = "key_a")]
    pub key_file: Option<PathBuf>,
    /// Read a passphrase (one line) from this file.
    #[arg(long, value_name = "FILE", group = "key_a")]
    pub passphrase_file: Option<PathBuf>,
    /// Read the 32-byte key from this inherited file descriptor.
    #[arg(long, value_name = "FD", group = "key_a")]
    pub key_fd: Option<u32>,
}

/// The parents of an incremental image (format 1.1), when their hints do
/// not find them.
#[derive(Debug, Clone, Default, Args)]
pub struct ChainArgs {
    /// The image's parent, for an incremental image (a child): repeat it for
    /// the parent's parent, and so on, nearest first. Links not given are
    /// found through the hint each child stores (a path relative to the
    /// child). A parent that is not the image its child names (replaced,
    /// rewritten, truncated, re-keyed) is refused, naming the link.
    #[arg(long = "parent", value_name = "PARENT")]
    pub parents: Vec<PathBuf>,
    /// Do not follow parent hints: only the parents given with --parent are
    /// used.
    #[arg(long)]
    pub no_hints: bool,
}

/// The parents of the second image of a diff.
#[derive(Debug, Clone, Default, Args)]
pub struct ChainArgsB {
    /// The second image's parent, as --parent for the first (repeatable,
    /// nearest first).
    #[arg(long = "parent-b", value_name = "PARENT")]
    pub parents_b: Vec<PathBuf>,
}

impl ChainArgsB {
    /// As chain arguments of their own, following hints unless `no_hints`.
    pub fn chain(&self, no_hints: bool) -> ChainArgs {
        ChainArgs {
            parents: self.parents_b.clone(),
            no_hints,
        }
    }
}

/// The key of the second image of a diff.
#[derive(Debug, Clone, Default, Args)]
pub struct KeyArgsB {
    /// Read the second image's 32-byte key from this file (by default the first image's key).
    #[arg(long, value_name = "FILE", group = "key_b")]
    pub key_file_b: Option<PathBuf>,
    /// Read the second image's passphrase from this file.
    #[arg(long, value_name = "FILE", group = "key_b")]
    pub passphrase_file_b: Option<PathBuf>,
    /// Read the second image's 32-byte key from this inherited file descriptor.
    #[arg(long, value_name = "FD", group = "key_b")]
    pub key_fd_b: Option<u32>,
    /// The second image is plain: open it without the first image's key
    /// (a key given for a plain image is refused).
    #[arg(long, group = "key_b")]
    pub plain_b: bool,
}

/// The new key of a reencrypt.
#[derive(Debug, Clone, Default, Args)]
pub struct NewKeyArgs {
    /// Encrypt under the 32-byte key in this file.
    #[arg(long, value_name = "FILE", group = "new_key")]
    pub new_key_file: Option<PathBuf>,
    /// Encrypt under the passphrase in this file.
    #[arg(long, value_name = "FILE", group = "new_key")]
    pub new_passphrase_file: Option<PathBuf>,
    /// Encrypt under the 32-byte key read from this inherited file descriptor.
    #[arg(long, value_name = "FD", group = "new_key")]
    pub new_key_fd: Option<u32>,
    /// Write a plain (unencrypted) image.
    #[arg(long, group = "new_key")]
    pub decrypt: bool,
}

/// Where a rewrite goes: a new file or the original, in place.
#[derive(Debug, Clone, Default, Args)]
#[group(required = true, multiple = false)]
pub struct OutputArgs {
    /// Write the result to this file.
    #[arg(short, long, value_name = "OUT")]
    pub output: Option<PathBuf>,
    /// Replace the image itself, crash-safely.
    #[arg(long)]
    pub in_place: bool,
}

/// `imgtool inspect`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Without --regions or --chunks, shows the header, the region table and totals.
--regions shows the region table and totals only; --chunks adds every chunk.
An encrypted image shows its header only, unless a key is given.

Examples:
  imgtool inspect app.mimg
  imgtool inspect --chunks --key-file app.key app.mimg
  imgtool inspect --json app.mimg | jq .totals

Exit codes: 0 shown, 2 error.")]
pub struct InspectArgs {
    /// The image.
    pub image: PathBuf,
    /// One JSON document instead of tables (addresses as hex strings).
    #[arg(long)]
    pub json: bool,
    /// Show the region table and totals (without the header).
    #[arg(long)]
    pub regions: bool,
    /// List every chunk: address, raw and stored length, codec, file offset.
    #[arg(long)]
    pub chunks: bool,
    /// The key, to show the regions of an encrypted image.
    #[command(flatten)]
    pub key: KeyArgs,
    /// The parents of an incremental image.
    #[command(flatten)]
    pub chain: ChainArgs,
}

/// `imgtool verify`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Checks the header, the trailer, the index, every stored checksum and
authentication tag, and every padding byte, and reports every problem with its
location. With a key (or --deep on a plain image) it also decodes every chunk
and checks its raw-content checksum.

Examples:
  imgtool verify app.mimg
  imgtool verify --key-file app.key --json app.mimg

Exit codes:
  0  intact
  1  damage found
  2  unable to check (not an image, unreadable, wrong key)")]
pub struct VerifyArgs {
    /// The image.
    pub image: PathBuf,
    /// One JSON document instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also decode every chunk and check its raw-content checksum (implied by a key).
    #[arg(long)]
    pub deep: bool,
    /// The key: decrypt and check every chunk.
    #[command(flatten)]
    pub key: KeyArgs,
    /// The parents of an incremental image: each link is verified, and
    /// every page the child takes from its parent must be there.
    #[command(flatten)]
    pub chain: ChainArgs,
}

/// `imgtool diff`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Compares content, not encoding: an image and its recompressed or re-encrypted
copy are identical. Chunks at the same place whose raw-content checksums match
are not decoded and compared; their stored bytes are still read and checked
(the stored checksum, and with a key the authentication tag and raw content),
so that identical never rests on bytes that were not read. --index-only
skips that check, and says so.

A key given for a plain image is refused: with --key-file alone, both images
must be encrypted under it; give --key-file-b for B's own key, or --plain-b
when B is plain.

Examples:
  imgtool diff before.mimg after.mimg
  imgtool diff --key-file a.key --key-file-b b.key --json a.mimg b.mimg

Exit codes:
  0  identical
  1  different
  2  error")]
pub struct DiffArgs {
    /// The first image.
    pub a: PathBuf,
    /// The second image.
    pub b: PathBuf,
    /// One JSON document instead of text.
    #[arg(long)]
    pub json: bool,
    /// The first image's key (also used for the second unless --key-file-b is given).
    #[command(flatten)]
    pub key: KeyArgs,
    /// The second image's key.
    #[command(flatten)]
    pub key_b: KeyArgsB,
    /// The first image's parents, when it is an incremental image.
    #[command(flatten)]
    pub chain: ChainArgs,
    /// The second image's parents.
    #[command(flatten)]
    pub chain_b: ChainArgsB,
    /// Trust the index for chunks whose raw-content checksums match: do not
    /// read their stored bytes (faster; the output says the result rests on
    /// the index only). By default they are read and checked.
    #[arg(long)]
    pub index_only: bool,
}

/// `imgtool recompress`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Re-encodes every chunk in parallel. An encrypted image stays encrypted under
the same key (which is needed to read it), with a fresh data key. The output is
written to a temporary file beside the target, verified, synced and renamed.

Examples:
  imgtool recompress --codec zstd:9 -o small.mimg app.mimg
  imgtool recompress --in-place --codec none --key-file app.key app.mimg

Exit codes: 0 done, 2 error (the original is left as it was).")]
pub struct RecompressArgs {
    /// The image.
    pub image: PathBuf,
    /// Where to write.
    #[command(flatten)]
    pub output: OutputArgs,
    /// The codec: none, zstd (level 1) or zstd:LEVEL.
    #[arg(long, value_name = "CODEC")]
    pub codec: String,
    /// Replace OUT if it exists.
    #[arg(long)]
    pub force: bool,
    /// The image's key, when it is encrypted.
    #[command(flatten)]
    pub key: KeyArgs,
}

/// `imgtool optimize`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
The profile is the order in which a restored program first touched the
image's chunks, recorded by a lazy restore (memimg-capture's
RestoreOptions::record_profile and LazyHandle::profile). The new image stores
those chunks first, in that order, so a restore fetches them with one read;
only their file offsets move: the content, the image id, every chunk's bytes,
the data key and the key slot stay. A profile recorded on another image is
refused. --in-place takes the image's lock and writes a temporary file that is
checked, synced and renamed over the image.

Examples:
  imgtool optimize --profile app.profile -o fast.mimg app.mimg
  imgtool optimize --in-place --profile app.profile --key-file app.key app.mimg

Exit codes: 0 done, 2 error (the original is left as it was).")]
pub struct OptimizeArgs {
    /// The image.
    pub image: PathBuf,
    /// The load-order profile file (magic MEMIMGPF).
    #[arg(long, value_name = "FILE")]
    pub profile: PathBuf,
    /// Where to write.
    #[command(flatten)]
    pub output: OutputArgs,
    /// Replace OUT if it exists.
    #[arg(long)]
    pub force: bool,
    /// The image's key, when it is encrypted (needed: the new index is
    /// sealed under the image's data key).
    #[command(flatten)]
    pub key: KeyArgs,
    /// Keep the index at the end of the file. By default a plain image gets
    /// its index right after the header (format 1.1, INDEX_FIRST), so that a
    /// restore from object storage opens it and fetches its working set
    /// with one GET; readers older than that feature refuse such an image.
    /// An encrypted image always keeps its index at the end.
    #[arg(long)]
    pub index_at_end: bool,
}

/// `imgtool reencrypt`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Without --full and with both keys, only the wrapped data key is rewritten: the
time taken does not depend on the image size, and --in-place uses the format's
crash-safe key-slot update. --full uses a fresh data key and re-encrypts every
chunk. Without an old key a plain image is encrypted; --decrypt writes a plain
image.

Examples:
  imgtool reencrypt --in-place --key-file old.key --new-key-file new.key app.mimg
  imgtool reencrypt --full -o rekeyed.mimg --key-file old.key --new-key-file new.key app.mimg
  imgtool reencrypt -o plain.mimg --key-file app.key --decrypt app.mimg

Exit codes: 0 done, 2 error (the original is left as it was).")]
pub struct ReencryptArgs {
    /// The image.
    pub image: PathBuf,
    /// Where to write.
    #[command(flatten)]
    pub output: OutputArgs,
    /// The current key (none for a plain image).
    #[command(flatten)]
    pub key: KeyArgs,
    /// The new key, or --decrypt.
    #[command(flatten)]
    pub new_key: NewKeyArgs,
    /// Re-encrypt every chunk under a fresh data key.
    #[arg(long)]
    pub full: bool,
    /// Codec of a full rewrite (by default zstd when the image uses zstd, else none).
    #[arg(long, value_name = "CODEC")]
    pub codec: Option<String>,
    /// Replace OUT if it exists.
    #[arg(long)]
    pub force: bool,
    /// Print what was done as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `imgtool cat`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Bytes that were not captured are an error naming the gap; recorded zero pages
read as zeros.

Examples:
  imgtool cat --addr 0x7f0000001000 --len 4096 app.mimg > page.bin
  imgtool cat --addr 0x7f0000001000 --len 256 --hex app.mimg

Exit codes: 0 written, 2 error.")]
pub struct CatArgs {
    /// The image.
    pub image: PathBuf,
    /// Virtual address (hex with 0x, or decimal).
    #[arg(long, value_name = "ADDR")]
    pub addr: String,
    /// Number of bytes (hex with 0x, or decimal; K, M, G suffixes).
    #[arg(long, value_name = "N")]
    pub len: String,
    /// A hexdump instead of raw bytes.
    #[arg(long)]
    pub hex: bool,
    /// The key, when the image is encrypted.
    #[command(flatten)]
    pub key: KeyArgs,
    /// The parents of an incremental image.
    #[command(flatten)]
    pub chain: ChainArgs,
}

/// `imgtool export-core`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Writes an ELF64 core: one PT_LOAD per run of stored pages of each region, with
its address and R/W/X flags; zero runs and pages that were not captured are
holes past p_filesz, so the core stays sparse. The PT_NOTE holds NT_PRPSINFO
(process facts), NT_FILE (file-backed regions) and every ELF note the image
kept (registers, auxv ...), then MEMIMG notes that gdb ignores and that let
import-core give back the same image. Without register notes the core is for
memory inspection only, and the command says so.

The core holds the memory in the clear, even from an encrypted image: it is
created with mode 0600. It is written to a temporary file beside CORE, checked,
synced and renamed, so CORE is never left half-written.

Examples:
  imgtool export-core app.mimg -o app.core
  gdb -batch -nx -c app.core -ex 'x/16xb 0x600000'
  imgtool export-core --key-file app.key secret.mimg -o secret.core

Exit codes: 0 written, 2 error (CORE is left as it was).")]
pub struct ExportCoreArgs {
    /// The image.
    pub image: PathBuf,
    /// The core file to write.
    #[arg(short, long, value_name = "CORE")]
    pub output: PathBuf,
    /// Replace CORE if it exists.
    #[arg(long)]
    pub force: bool,
    /// Leave out the MEMIMG notes (an import then gives back the content, not
    /// region kinds, names or zero runs).
    #[arg(long)]
    pub no_memimg_notes: bool,
    /// Print what was written as JSON.
    #[arg(long)]
    pub json: bool,
    /// The image's key, when it is encrypted.
    #[command(flatten)]
    pub key: KeyArgs,
    /// The parents of an incremental image.
    #[command(flatten)]
    pub chain: ChainArgs,
}

/// `imgtool flatten`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Writes one self-contained image with the content of an incremental image and
its parents: every page from whichever link holds it. `imgtool diff CHILD
FULL` then says identical. The codec is the image's (zstd where it is
compressed) unless --codec is given; an encrypted chain needs its key, and
the full image is encrypted under it. It is written to a temporary file
beside OUT, verified, synced and renamed.

Examples:
  imgtool flatten app.2.mimg -o app.full.mimg
  imgtool flatten --parent /backup/app.0.mimg app.1.mimg -o app.full.mimg

Exit codes: 0 written, 2 error (OUT is left as it was).")]
pub struct FlattenArgs {
    /// The incremental image (or a full one: it is copied).
    pub image: PathBuf,
    /// The full image to write.
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,
    /// The codec: none, zstd (level 1) or zstd:LEVEL (by default the image's).
    #[arg(long, value_name = "CODEC")]
    pub codec: Option<String>,
    /// Replace OUT if it exists.
    #[arg(long)]
    pub force: bool,
    /// Print what was written as JSON.
    #[arg(long)]
    pub json: bool,
    /// The key of the chain, when it is encrypted.
    #[command(flatten)]
    pub key: KeyArgs,
    /// The parents, when their hints do not find them.
    #[command(flatten)]
    pub chain: ChainArgs,
}

/// `imgtool rebase`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Points an incremental image at NEWPARENT instead of its parent, after checking
that NEWPARENT holds the same content wherever the child takes pages from its
parent: typically a flattened, recompressed or relaid-out copy of the parent,
which the child otherwise refuses (the parent's index changed). The child's
chunks are copied unchanged; its new parent record names NEWPARENT, and its
hint NEWPARENT's path relative to the child. The old parent is needed for the
check. Written to a temporary file, synced and renamed (--in-place replaces
the child itself).

Examples:
  imgtool flatten app.1.mimg -o app.1.full.mimg
  imgtool rebase app.2.mimg --onto app.1.full.mimg --in-place

Exit codes: 0 done, 2 error (NEWPARENT differs, a parent is missing; the
child is left as it was).")]
pub struct RebaseArgs {
    /// The incremental image.
    pub image: PathBuf,
    /// The new parent.
    #[arg(long, value_name = "NEWPARENT")]
    pub onto: PathBuf,
    /// Where to write.
    #[command(flatten)]
    pub output: OutputArgs,
    /// Replace OUT if it exists.
    #[arg(long)]
    pub force: bool,
    /// The key of the chain, when it is encrypted.
    #[command(flatten)]
    pub key: KeyArgs,
    /// The child's current parents, when their hints do not find them.
    #[command(flatten)]
    pub chain: ChainArgs,
}

/// `imgtool import-core`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Reads an ELF64 core from gdb's gcore or the Linux kernel. Each PT_LOAD becomes a
region; its file bytes are data and the part past p_filesz is recorded as not
captured (absent). NT_FILE names file-backed regions, NT_PRPSINFO gives the
process facts, and every note is kept in the image so export-core writes it
back. A core written by export-core gives back the image it came from.

The core is mapped, not read into memory. The image is written to a temporary
file beside IMG, verified (decoding every chunk), synced and renamed, so IMG is
never left half-written. A key encrypts the new image.

Examples:
  gcore -o app 1234 && imgtool import-core app.1234 -o app.mimg
  imgtool import-core --codec zstd:9 --key-file app.key core -o app.mimg

Exit codes: 0 written, 2 error (not a core, malformed core, bad arguments;
IMG is left as it was).")]
pub struct ImportCoreArgs {
    /// The ELF core file.
    pub core: PathBuf,
    /// The image to write.
    #[arg(short, long, value_name = "IMG")]
    pub output: PathBuf,
    /// The codec: none, zstd (level 1) or zstd:LEVEL.
    #[arg(long, value_name = "CODEC", default_value = "zstd")]
    pub codec: String,
    /// Image page size: 4096, 16384 or 65536, no larger than the core's pages
    /// (by default this machine's).
    #[arg(long, value_name = "BYTES")]
    pub page_size: Option<u32>,
    /// Replace IMG if it exists.
    #[arg(long)]
    pub force: bool,
    /// Print what was found and written as JSON.
    #[arg(long)]
    pub json: bool,
    /// Encrypt the new image under this key.
    #[command(flatten)]
    pub key: KeyArgs,
}

/// `imgtool cp`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Copies an image between a path and an s3://BUCKET/KEY URL, either way (or
between two paths or two URLs), byte for byte. The source is opened as an
image first (header, trailer and index checked); then, as its bytes stream,
each chunk's stored checksum, the padding between chunks, the header and the
index are checked, as verify does without --deep: no key is needed, even for
an encrypted image. A damaged source stops the copy with verify's error, and
nothing is left at DST: a local DST is written to a temporary file renamed at
the end, a remote one is a multipart upload completed at the end and aborted
otherwise.

Examples:
  imgtool cp app.mimg s3://images/app.mimg
  imgtool cp s3://images/app.mimg restored.mimg
  AWS_ENDPOINT_URL=http://127.0.0.1:9000 imgtool cp app.mimg s3://test/app.mimg

Exit codes: 0 copied, 2 error (a damaged source, an unreachable store; DST is
left as it was).")]
pub struct CpArgs {
    /// The image to copy: a path or an s3://BUCKET/KEY URL.
    pub src: PathBuf,
    /// Where to copy it: a path or an s3://BUCKET/KEY URL.
    pub dst: PathBuf,
    /// Replace DST if it exists.
    #[arg(long)]
    pub force: bool,
    /// Print what was done as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `imgtool keygen`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Writes 32 random bytes with mode 0600; an existing file is never overwritten.

Example:
  imgtool keygen -o app.key

Exit codes: 0 written, 2 error.")]
pub struct KeygenArgs {
    /// The key file to create.
    #[arg(short, long, value_name = "KEYFILE")]
    pub output: PathBuf,
}

/// `imgtool completions`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Example:
  imgtool completions bash > /etc/bash_completion.d/imgtool")]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

impl Command {
    /// The name of the subcommand, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Capture(_) => "capture",
            Command::Inspect(_) => "inspect",
            Command::Verify(_) => "verify",
            Command::Diff(_) => "diff",
            Command::Recompress(_) => "recompress",
            Command::Reencrypt(_) => "reencrypt",
            Command::Optimize(_) => "optimize",
            Command::Cat(_) => "cat",
            Command::ExportCore(_) => "export-core",
            Command::ImportCore(_) => "import-core",
            Command::Cp(_) => "cp",
            Command::Keygen(_) => "keygen",
            Command::Completions(_) => "completions",
            Command::Man(_) => "man",
            Command::Flatten(_) => "flatten",
            Command::Rebase(_) => "rebase",
        }
    }
}

/// `imgtool man`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Example:
  imgtool man > /usr/local/share/man/man1/imgtool.1")]
pub struct ManArgs {}

/// `imgtool capture`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Stops every thread of the process (ptrace) for a consistent snapshot. On x86-64
the stopped process is made to fork a copy of itself that never runs (a fork
snapshot), and is resumed at once: it stands still for the fork only, and the
copy is read, then killed. When the fork cannot be used (--no-fork, a seccomp
filter refusing clone, a process or memory limit, job control, ...) the process
stays stopped while its memory is read; the output says which and why. The
image is written under a temporary name that is renamed to OUT only when
complete. Needs ptrace rights over the process: root, CAP_SYS_PTRACE, or
kernel.yama.ptrace_scope=0 for your own processes.

Examples:
  imgtool capture --pid 1234 -o app.mimg
  imgtool capture --pid 1234 -o app.mimg --codec zstd:3 --key-file app.key
  imgtool capture --pid $$ -o shell.mimg --exclude-file-backed --no-fork
  imgtool capture --pid 1234 -o app.mimg --page-digests
  imgtool capture --pid 1234 --parent app.mimg -o app.1.mimg

With --parent BASE the image is a child of BASE (an incremental image): every
resident page is still read, and each chunk's XXH3-128 is compared with
BASE's raw checksum at the same place; a chunk that differs is compared page
by page with BASE's, so the child stores exactly the pages that changed. The
rest are recorded as BASE's pages. When BASE was captured with
--page-digests, each page is compared with its digest in BASE's index and
nothing of BASE is decoded; otherwise BASE's chunk is decoded to compare.
A child of a BASE with digests has them too. Reading the child needs BASE
(found through the hint, or given with --parent): keep the chain together,
or flatten it.")]
pub struct CaptureArgs {
    /// The process to capture.
    #[arg(long)]
    pub pid: i32,
    /// Write the image here.
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,
    /// Chunk codec: none, zstd or zstd:LEVEL.
    #[arg(long, default_value = "zstd:1")]
    pub codec: String,
    /// Chunk size, e.g. 512K or 1M (by default 512 KiB).
    #[arg(long, value_name = "SIZE")]
    pub chunk_size: Option<String>,
    /// Leave out the pages of file mappings that are the file's own (they are
    /// recorded as not captured).
    #[arg(long)]
    pub exclude_file_backed: bool,
    /// Threads that compress and encrypt (by default one per core).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Keep the process stopped while its memory is read, instead of taking
    /// a fork snapshot.
    #[arg(long)]
    pub no_fork: bool,
    /// Print what was done as JSON.
    #[arg(long)]
    pub json: bool,
    /// Replace OUT if it exists.
    #[arg(long)]
    pub force: bool,
    /// The key to encrypt with.
    #[command(flatten)]
    pub key: KeyArgs,
    /// Write an incremental image, a child of this one (the first
    /// --parent; more --parent give its own parents, nearest first, where
    /// hints do not find them): only the pages that differ from the
    /// parent's are stored. OUT stores a hint to find it: its path relative
    /// to OUT's directory, or absolute; for an object beside an object
    /// (s3://), its key relative to OUT's folder, or its URL.
    #[command(flatten)]
    pub chain: ChainArgs,
    /// With --parent: store no parent hint in the child (readers must then
    /// be given --parent).
    #[arg(long)]
    pub no_parent_hint: bool,
    /// Store a digest of every page in the index (8 bytes a page), so that
    /// a later capture with this image as --parent compares pages without
    /// decoding it. On for a child whose parent has them.
    #[arg(long)]
    pub page_digests: bool,
}
