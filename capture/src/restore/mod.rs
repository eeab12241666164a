//! Restoring an image's regions at their recorded addresses in this process.
//!
//! Every strategy first checks the machine facts and the validation data,
//! then maps every region with `MAP_FIXED_NOREPLACE`, so an address
//! already in use is an error naming the range, never a silent overwrite,
//! and a restore that fails unmaps whatever it had mapped. Then:
//!
//! - [`Strategy::Mmap`] maps each region piece by piece into free space:
//!   each run of raw data extents straight from the file (private,
//!   copy-on-write), each gap between runs (zero pages) as anonymous
//!   memory, every piece at the region's protection. The time is
//!   O(extents), not O(bytes). Only for plain images whose chunks are all
//!   stored raw. (A chain's mmap restore maps its deepest link so and
//!   lays the nearer links' pages over it; see `chain.rs`.)
//! - [`Strategy::Eager`] decodes every chunk in parallel (rayon) into
//!   anonymous memory: any image, including compressed and encrypted ones.
//! - [`Strategy::Lazy`] registers the regions with userfaultfd and returns at
//!   once; a handler thread decodes each chunk on its first touch. See
//!   [`LazyHandle`].
//!
//! An image with a load order (spec.md, *Load order*; `imgtool optimize`)
//! stores the chunks a program touched first at the front of its data.
//! Eager restore decodes in file order; lazy restore reads that working set
//! with one read and places it, in profile order, between faults and
//! before anything else. A lazy restore can also record such a profile
//! ([`RestoreOptions::record_profile`], [`LazyHandle::profile`]). See
//! `order.rs`.
//!
//! The other strategies reserve each region whole with one anonymous
//! mapping, fill it, and finally apply the recorded protections. Regions
//! recorded without data (`[vvar]`, guard pages of a capture) are not
//! mapped; a region with pages that were not captured cannot be restored.
//!
//! # What a lazily restored program may do, and what it costs
//!
//! While pages are still arriving, the program may use its restored memory
//! as it uses any private anonymous memory, and it sees what the kernel
//! promises for that memory: the tests run each item below in a lazily
//! restored process and in an eagerly restored twin, and compare every
//! page. Figures are from the `lazy_costs` measurement of the capture
//! tests (a 192 MiB region, 64 MiB of zstd:1) on the 2-core development
//! machine, under load; see the README.
//!
//! - **Read and write**, from any number of threads, from system calls
//!   (`read(2)` into restored memory, `process_vm_readv` from another
//!   process), after `mprotect` or `mlock`. The first touch of a piece (one
//!   chunk, 512 KiB by default) waits for its decoding; every later touch
//!   of it costs nothing.
//! - **`MADV_DONTNEED`**: the range reads zeros, whether its pages had
//!   arrived or not, and the prefetcher never writes the image there
//!   afterwards. While pages are still arriving, each call waits for the
//!   handler thread to take note (4 to 21 µs against 2 to 4 µs; mostly the
//!   time to schedule that thread), and a touch of a discarded page is
//!   answered with a zero page by the handler (4 to 7 µs against 1 to 3). `MADV_FREE` is reported the same way: pages that
//!   had not arrived read zeros, which the kernel allows. `MADV_REMOVE`
//!   fails on private memory, restored or not.
//! - **`mremap`**: pages move with the mapping, and those still waiting
//!   get the image's bytes at their new address; the old range behaves as
//!   the kernel says (gone, or zeros after `MREMAP_DONTUNMAP`); the part a
//!   growing `mremap` adds reads zeros; a shrink unmaps the tail. Each call
//!   waits for the handler to take note, as for `MADV_DONTNEED`.
//! - **`munmap`**, or a new mapping made over restored memory: nothing is
//!   ever written into what is mapped there later.
//! - **`fork()`** (through the C library, as `system()`, `popen()` and
//!   Rust's `Command` do when they cannot use `posix_spawn`): the first fork
//!   **waits for the rest of the image** to be placed, then the restore is
//!   over and the child shares fully restored memory, copy-on-write. It may
//!   outlive its parent. The first fork took 125 to 161 ms, where the
//!   eager twin's took 6 to 19 ms; later forks cost what forks cost.
//!   `vfork` and `posix_spawn` share the address space and cost nothing.
//! - **A raw `fork`/`clone` system call**, which bypasses the C library's
//!   fork hooks: the child is served through the userfaultfd the kernel
//!   hands over with the fork event, before anything else, and reads the
//!   image on every page while its parent lives. If the parent dies before
//!   the child has every page, the rest reads zeros; and from then on the
//!   handler thread stays until such children are gone. Fork events need
//!   `CAP_SYS_PTRACE`: without it, a raw fork's child reads zeros where
//!   pages had not arrived.
//! - **Drop the [`Restored`] value** (or its [`LazyHandle`]): every page
//!   still waiting is placed first; faults meanwhile are answered.
//!
//! A chunk that fails to decode is never served as wrong bytes: a touch of
//! its pages ends in SIGSEGV (SIGBUS in a raw fork's child), and
//! [`LazyStats::error`] says why. Once every page is in place the handler
//! lets the userfaultfd go: the regions are ordinary memory, and nothing
//! the program does waits on the handler any more. How the handler does
//! all this is in `lazy.rs`.

mod chain;
mod fetch;
mod lazy;
mod order;
mod pending;
mod uffd;

use std::path::Path;
use std::time::{Duration, Instant};

use memimg::{ExtentKind, Image, Key, MachineFacts, Region, RegionInfo};
use rayon::prelude::*;

use crate::error::RestoreError;
pub use chain::restore_chain;
pub use lazy::{unavailable as lazy_unavailable, LazyHandle, LazyStats};

/// How to fill the restored regions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Mmap when the image allows it, else eager.
    #[default]
    Auto,
    /// Map raw chunks straight from the file.
    Mmap,
    /// Decode everything in parallel before returning.
    Eager,
    /// Decode on first touch, through userfaultfd. The program may fork,
    /// discard, move and unmap its memory meanwhile; see the module docs
    /// for what that costs (the first fork waits for the whole image).
    Lazy,
}

impl Strategy {
    /// `auto`, `mmap`, `eager` or `lazy`.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Auto => "auto",
            Strategy::Mmap => "mmap",
            Strategy::Eager => "eager",
            Strategy::Lazy => "lazy",
        }
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "auto" => Strategy::Auto,
            "mmap" => Strategy::Mmap,
            "eager" => Strategy::Eager,
            "lazy" => Strategy::Lazy,
            _ => {
                return Err(format!(
                    "unknown strategy {s:?}: expected auto, mmap, eager or lazy"
                ))
            }
        })
    }
}

/// How to restore.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// The strategy. By default [`Strategy::Auto`].
    pub strategy: Strategy,
    /// The validation `(tag, data)` the image must carry. By default none
    /// is checked.
    pub expect_validation: Option<(Vec<u8>, Vec<u8>)>,
    /// The key of an encrypted image. By default none.
    pub key: Option<Key>,
    /// Lazy restore only: record the load-order profile, the chunks the
    /// program first touches (by faults) in order, for at most this long or
    /// until [`LazyHandle::profile_ready`]; [`LazyHandle::profile`] returns
    /// it. While it records, nothing is prefetched, so that every first
    /// touch is seen. By default nothing is recorded.
    pub record_profile: Option<Duration>,
    /// Lazy restore of an image with a load order: return at once and place
    /// the working set while the program runs (between its faults), instead
    /// of placing it before returning. By default the restore returns once
    /// the working set is in place (one read, then decoding), so that the
    /// program's first touches of it do not wait.
    pub working_set_in_background: bool,
}

/// Regions restored into this process.
///
/// The mappings stay after this value is dropped: they belong to the
/// program now. Dropping it stops a lazy restore's handler thread after it
/// has placed every page still missing (the thread stays after a raw fork
/// system call, to serve the child).
#[derive(Debug)]
pub struct Restored {
    /// The strategy that was used (never `Auto`).
    pub strategy: Strategy,
    /// The regions mapped, in address order.
    pub regions: Vec<RegionInfo>,
    /// Time from the call to the return.
    pub elapsed: Duration,
    /// The fault handler of a lazy restore.
    pub lazy: Option<LazyHandle>,
}

/// Restores the image at `path` into this process.
///
/// # Errors
/// See [`RestoreError`]: the image cannot be opened (damage, truncation,
/// wrong or missing key), its machine facts or validation data differ, an
/// address range is in use, or the strategy cannot handle this image. On
/// error, nothing stays mapped.
pub fn restore(path: &Path, opts: &RestoreOptions) -> Result<Restored, RestoreError> {
    let t0 = Instant::now();
    let img = Image::open_with_key(path, opts.key.as_ref())?;
    if img.parent().is_some() {
        // A child: its parents found through their hints, under the same key.
        return chain::restore_path(path, opts);
    }
    restore_image(img, Some(path), opts, None, t0)
}

/// Restores `img`, read from the file `file` (`None`: from a store that is
/// not a file, where mmap is impossible). With `fetch` the chunks come
/// from a slow source: an eager restore decodes on `fetch.workers`
/// threads, a lazy one fetches with that pool (see `fetch.rs`).
fn restore_image(
    mut img: Image,
    file: Option<&Path>,
    opts: &RestoreOptions,
    fetch: Option<fetch::Config>,
    t0: Instant,
) -> Result<Restored, RestoreError> {
    // Each chunk's stored checksum (and, when encrypted, its tag) is still
    // checked before it is decoded; hashing the decoded bytes again would
    // only catch a zstd bug, at a tenth of the decode time.
    img.set_check_raw(false);
    check(&img, opts)?;
    // An image read alone whose extents take pages from its parent (a
    // child restored from a URL, or through this function by mistake):
    // refuse it with the error that names the parent it needs, rather than
    // restore those pages as anything else. `restore` and `restore_chain`
    // read children through their chain instead.
    if img.parent().is_some() {
        for r in img.regions()? {
            if let Some(e) = img
                .region_extents(r)?
                .iter()
                .find(|e| e.kind == ExtentKind::InParent)
            {
                let mut one = [0u8; 1];
                img.read_at(e.addr, &mut one)?;
            }
        }
    }
    let regions: Vec<Region> = img
        .regions()?
        .iter()
        .filter(|r| r.has_data())
        .cloned()
        .collect();
    for r in &regions {
        if img
            .region_extents(r)?
            .iter()
            .any(|e| e.kind == ExtentKind::Absent)
        {
            return Err(RestoreError::StrategyUnavailable {
                strategy: opts.strategy.name(),
                why: format!(
                    "region {} ({:#x}-{:#x}) has pages that were not captured",
                    r.info.name_lossy(),
                    r.info.start,
                    r.info.end()
                ),
            });
        }
    }
    let not_mappable = || match file {
        Some(_) => mmap_unavailable(&img, &regions),
        None => Some(
            "the image is not a local file (it is in object storage): there is no file to map; \
             use the eager or lazy strategy"
                .to_string(),
        ),
    };
    let strategy = choose_strategy(opts.strategy, not_mappable)?;
    let mut lazy = None;
    let res = match (strategy, file) {
        // Mapped piece by piece into free space, at the final protections.
        (Strategy::Mmap, Some(path)) => map_from_file(&img, path, &regions)?,
        _ => Reservation::new(&regions)?,
    };
    match (strategy, file) {
        (Strategy::Mmap, Some(_)) => {}
        (Strategy::Eager, _) if fetch.is_some() => {
            // Each decode of a remote chunk waits for its GET: as many
            // threads as requests wanted in flight.
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(fetch.map_or(1, |f| f.workers))
                .thread_name(|i| format!("memimg-restore-{i}"))
                .build()
                .map_err(|e| {
                    RestoreError::io("starting the restore threads", std::io::Error::other(e))
                })?;
            pool.install(|| decode_all(&img, &regions))?;
            res.protect(&regions)?;
        }
        (Strategy::Eager, _) => {
            decode_all(&img, &regions)?;
            res.protect(&regions)?;
        }
        _ => {
            // Lazy: UFFDIO_COPY fills pages whatever their protection.
            res.protect(&regions)?;
            lazy = Some(LazyHandle::start(
                img,
                &regions,
                fetch,
                opts.record_profile,
                opts.working_set_in_background,
            )?);
        }
    }
    res.keep();
    Ok(Restored {
        strategy,
        regions: regions.into_iter().map(|r| r.info).collect(),
        elapsed: t0.elapsed(),
        lazy,
    })
}

/// How [`restore_from`] reads an image in object storage.
#[cfg(feature = "remote")]
#[derive(Debug, Clone)]
pub struct RemoteOptions {
    /// The store's endpoint, region and credentials. By default from the
    /// environment, as the AWS CLI reads them
    /// ([`memimg_remote::S3Options::from_env`]).
    pub s3: memimg_remote::S3Options,
    /// Chunk requests in flight at once: the worker threads of a lazy
    /// restore (which fetch on first touch and prefetch), or the decoding
    /// threads of an eager one. By default [`DEFAULT_IN_FLIGHT`].
    pub in_flight: usize,
    /// Bytes one prefetch request of a lazy restore asks for at most: the
    /// prefetcher (and the fetch of a working set) takes chunks that are
    /// next to each other in the file in one ranged GET of up to this
    /// many bytes (and the end of the last chunk; a single larger chunk is
    /// still one request), each request within one such stretch of the
    /// file. A fault on a chunk that no request is fetching fetches it at
    /// once; one on a chunk a request is fetching waits for that request,
    /// for as long as a fetch of its own has taken. By default
    /// [`DEFAULT_MAX_REQUEST`].
    pub max_request: u64,
    /// Such requests held at once, under way or waiting to be decoded: with
    /// `max_request`, what bounds the memory of the prefetch (at most
    /// `max_request × prefetch_requests`, twice that while a request's
    /// bytes are copied out). Always fewer than `in_flight`, so a worker is
    /// left for faults. By default [`DEFAULT_PREFETCH_REQUESTS`].
    pub prefetch_requests: usize,
    /// Bytes fetched from the start of the object when opening it,
    /// together with its end: the header page and, speculatively, the
    /// start of the data, where an optimized image keeps its working set
    /// (a working set that ends past them is fetched with one GET of the
    /// rest). Kept, and read from, while the restore lives. On a store
    /// where bandwidth costs more than a round trip, a plain image pays
    /// for these bytes when opening; 4096 (one page) fetches the header
    /// page alone. By default [`REMOTE_OPEN_HEAD`].
    pub open_head: u64,
    /// Make the GET of the object's end together with the head's, instead
    /// of once the head's first page shows it is needed
    /// ([`memimg_remote::ReaderOptions::tail_with_head`]). Off by default:
    /// an image whose index comes first (what `imgtool optimize` writes for
    /// a plain image) then opens with one GET, and any other image opens
    /// after its head's first page and then its tail, one round trip more
    /// on a store whose answer to the head comes about as fast as a small
    /// one (README, *Load order*, the A/B against s3s-fs).
    pub open_tail_with_head: bool,
}

/// Bytes a restore from object storage fetches from the start of the object
/// when opening it, by default ([`RemoteOptions::open_head`]), in one GET:
/// the header page and the start of the data, where an image laid out by a
/// profile (spec.md, *Load order*) keeps its working set, which then needs
/// no request of its own, and, when the image's index comes first (spec.md,
/// *Index first*), its index, which then needs no tail. 4 MiB:
/// the arena example's startup of 150 lookups touches 2.8 MiB (stored).
/// The bytes are kept while the restore lives, and every chunk they hold
/// is read from them.
#[cfg(feature = "remote")]
pub const REMOTE_OPEN_HEAD: u64 = 4 << 20;

/// Bytes a restore from object storage fetches from the end of the object
/// when opening it, once the head's first page shows they are needed (or
/// with the head, [`RemoteOptions::open_tail_with_head`]): the trailer and, for
/// an index of up to about 250 KiB (an image of some 600 MiB of mixed
/// memory in 512 KiB chunks), the whole index, which is otherwise one more
/// GET. 256 KiB.
#[cfg(feature = "remote")]
pub const REMOTE_OPEN_TAIL: u64 = 256 << 10;

/// Bytes one prefetch request of a lazy restore from object storage asks
/// for at most, by default: 16 MiB. Measured against 4 and 8 MiB (README,
/// *Images on object storage*, *Tests and benchmark*): the walk of a
/// restored structure ended soonest with 16 MiB against both servers of
/// the benchmark; larger requests would only add memory (at most
/// `prefetch_requests` of them are held).
#[cfg(feature = "remote")]
pub const DEFAULT_MAX_REQUEST: u64 = 16 << 20;

/// Prefetch requests of a lazy restore from object storage held at once, by
/// default: 2.
#[cfg(feature = "remote")]
pub const DEFAULT_PREFETCH_REQUESTS: usize = 2;

/// Chunk requests a restore from object storage keeps in flight. By default
/// 8: enough to hide a store's latency of tens of milliseconds behind
/// 512 KiB chunks, few enough for a small machine.
#[cfg(feature = "remote")]
pub const DEFAULT_IN_FLIGHT: usize = 8;

#[cfg(feature = "remote")]
impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            s3: memimg_remote::S3Options::from_env(),
            in_flight: DEFAULT_IN_FLIGHT,
            max_request: DEFAULT_MAX_REQUEST,
            prefetch_requests: DEFAULT_PREFETCH_REQUESTS,
            open_head: REMOTE_OPEN_HEAD,
            open_tail_with_head: false,
        }
    }
}

/// Restores the image at `loc`, a path or an `s3://BUCKET/KEY` URL, into
/// this process.
///
/// A path is restored as by [`restore`]. For a URL, opening fetches the
/// object's first [`RemoteOptions::open_head`] bytes (the header page and
/// the start of the data, where an optimized image keeps its working set:
/// 4 MiB by default) with one ranged GET, and no HEAD. An optimized plain
/// image keeps its index there too (spec.md, *Index first*) and is opened
/// from its front (one GET more when the index ends past them). For any other image, once the first page of that answer
/// says so, a second GET fetches the object's last 256 KiB (its trailer,
/// and the index of most images), then one more the index when the end did
/// not hold it; never the whole object (unless it is that small). Then:
///
/// - [`Strategy::Lazy`] returns before any chunk is fetched. A chunk is
///   fetched (one ranged GET), decoded and placed on the first touch of one
///   of its pages; after [`LazyHandle::prefetch`], worker threads fetch the
///   rest nearest to the latest faults first, taking the chunks next to
///   each other in the file in one ranged GET of up to
///   [`RemoteOptions::max_request`] bytes (`prefetch_requests` of them at
///   a time; a fault on a chunk such a request is fetching waits for it,
///   but no longer than a GET of its own has taken). Fetching runs on those threads, never on the thread that
///   answers faults, so a slow request never holds up pages already
///   fetched. Everything `restore`'s docs say a lazily restored program
///   may do holds, and the first fork through the C library still waits
///   for the rest of the image: here, for it to be downloaded.
/// - [`Strategy::Eager`] (and `Auto`) fetches and decodes every chunk on
///   `in_flight` threads before returning.
/// - [`Strategy::Mmap`] is refused: there is no file to map.
///
/// **A child** (format 1.1, an incremental image) is restored with its
/// chain, as [`restore_chain`] does: each parent is found by its child's
/// hint, resolved against the URL of the link that stores it (a key beside
/// it, or a URL), opened with the key when it is encrypted, and checked
/// against its child's parent record. Its chunks are read from their links
/// as the restore needs them: eagerly on the decoding threads; lazily on
/// the thread that answers faults, so that a slow request holds up the
/// faults behind it (the fetch workers and the prefetch above serve a
/// single image only). A parent no hint finds leaves the chain partial,
/// and the restore fails with the error that names it (`ParentRequired`).
///
/// **When a chunk cannot be fetched** during a lazy restore (the network
/// failed after the reader's retries, credentials were revoked, the object
/// was replaced, or the chunk is damaged), its pages are never filled with
/// wrong bytes and no thread waits for ever: the pages are made
/// inaccessible, so a thread touching one gets SIGSEGV at that address, as
/// for a damaged chunk of a local image. [`LazyStats::error`] says why and
/// [`LazyStats::units_failed`] how many pieces failed. After the first
/// failure that is not damage, every chunk not yet fetched fails at once
/// (the store is taken to be gone), so a restore whose store went away ends
/// within one request's retries (`S3Options::with_retries`,
/// `with_request_timeout`), not one per chunk.
///
/// # Errors
/// As [`restore`], and [`RestoreError::Remote`] when the object cannot be
/// reached (a missing bucket or key, refused credentials, the network).
#[cfg(feature = "remote")]
pub fn restore_from(
    loc: &memimg_remote::Location,
    remote: &RemoteOptions,
    opts: &RestoreOptions,
) -> Result<Restored, RestoreError> {
    use memimg_remote::{Location, ReaderOptions, Store};
    let t0 = Instant::now();
    let url = match loc {
        Location::Local(p) => return restore(p, opts),
        Location::S3(url) => url,
    };
    // By its ends, with no HEAD: the head (header page, and the start of
    // the data: the working set and the index of an optimized image), then,
    // unless the index comes first, the tail (trailer, and the index of
    // most images), then the index if the tail did not hold it.
    let reader = Store::new(&url.bucket, &remote.s3)
        .and_then(|s| {
            s.reader_by_ends(
                url,
                ReaderOptions {
                    tail_with_head: remote.open_tail_with_head,
                    ..ReaderOptions::default()
                },
                remote.open_head,
                REMOTE_OPEN_TAIL,
            )
        })
        .map_err(RestoreError::Remote)?;
    let img = match Image::from_read_at(std::sync::Arc::new(reader), opts.key.as_ref()) {
        Ok(img) => img,
        // A failed request inside the reader: say which, with its kind.
        Err(e) if memimg_remote::Error::find(&e).is_some() => {
            return Err(RestoreError::Remote(memimg_remote::Error::from_memimg(
                &url.to_string(),
                e,
            )))
        }
        Err(e) => return Err(e.into()),
    };
    if img.parent().is_some() {
        // A child: its parents found through their hints, each resolved
        // against the URL of the link that stores it (spec.md, *The parent
        // hint*), and restored as a chain (mmap is refused: no file).
        let chain = remote_chain(img, url, remote, opts)?;
        return chain::restore_chain(chain, opts);
    }
    let fetch = fetch::Config {
        workers: remote.in_flight.max(1),
        max_request: remote.max_request,
        runs: remote.prefetch_requests,
    };
    restore_image(img, None, opts, Some(fetch), t0)
}

/// The chain of `img`, a child read from `url`: each parent found by its
/// child's hint in object storage and opened as `Chain::push_parent_with`
/// does (checked, then with `opts.key` when it is encrypted), until a full image, or a hint that is missing or names no
/// object (the chain is then partial, and the restore refuses the pages it
/// lacks, naming the parent).
#[cfg(feature = "remote")]
fn remote_chain(
    img: Image,
    url: &memimg_remote::S3Url,
    remote: &RemoteOptions,
    opts: &RestoreOptions,
) -> Result<memimg::Chain, RestoreError> {
    use memimg_remote::{ErrorKind, ReaderOptions, Store};
    let mut chain = memimg::Chain::single(img);
    let mut at = url.clone();
    loop {
        let last = &chain.links()[chain.links().len() - 1];
        if last.parent().is_none() {
            break;
        }
        let Some(purl) = last
            .header()
            .parent_hint
            .as_deref()
            .and_then(|h| at.resolve_hint(h))
        else {
            break;
        };
        let reader = match Store::new(&purl.bucket, &remote.s3)
            .and_then(|s| s.reader(&purl, ReaderOptions::default()))
        {
            Ok(r) => std::sync::Arc::new(r),
            Err(e) if matches!(e.kind(), ErrorKind::NoSuchKey | ErrorKind::NoSuchBucket) => break,
            Err(e) => return Err(RestoreError::Remote(e)),
        };
        chain
            .push_parent_with(opts.key.as_ref(), |k| {
                Image::from_read_at(reader.clone(), k)
            })
            .map_err(|e| match memimg_remote::Error::find(&e) {
                Some(_) => {
                    RestoreError::Remote(memimg_remote::Error::from_memimg(&purl.to_string(), e))
                }
                None => e.into(),
            })?;
        at = purl;
    }
    Ok(chain)
}

fn abbreviate(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(40)]).into_owned();
    if b.len() > 40 {
        format!("{s:?}… ({} bytes)", b.len())
    } else {
        format!("{s:?}")
    }
}

/// The strategy a restore uses: `Auto` maps when it can (`not_mappable()`
/// is `None`), else decodes eagerly; `Mmap` asked where it cannot map is
/// refused with the reason. Shared by the restore of one image and of a
/// chain.
///
/// `not_mappable` runs only for `Auto` and `Mmap`: an eager or lazy
/// restore does not scan the extents for a compressed chunk, nor format
/// the reason (a `format!` whose code, in a C program's first restore,
/// cost page faults on the library's text; README, *C ABI*).
fn choose_strategy(
    asked: Strategy,
    not_mappable: impl FnOnce() -> Option<String>,
) -> Result<Strategy, RestoreError> {
    match asked {
        Strategy::Eager | Strategy::Lazy => Ok(asked),
        Strategy::Auto => Ok(match not_mappable() {
            None => Strategy::Mmap,
            Some(_) => Strategy::Eager,
        }),
        Strategy::Mmap => match not_mappable() {
            None => Ok(Strategy::Mmap),
            Some(why) => Err(RestoreError::StrategyUnavailable {
                strategy: "mmap",
                why,
            }),
        },
    }
}

fn check(img: &Image, opts: &RestoreOptions) -> Result<(), RestoreError> {
    let here = MachineFacts::current();
    let theirs = img.header().machine;
    if let Some(field) = theirs.first_difference(&here) {
        let show = |m: &MachineFacts| match field {
            "architecture" => m.arch_name(),
            "endianness" => format!("{:?}", m.endian),
            "pointer width" => format!("{} bytes", m.ptr_bytes),
            _ => format!("{} bytes", m.page_size),
        };
        return Err(RestoreError::MachineMismatch {
            field,
            image: show(&theirs),
            here: show(&here),
        });
    }
    if let Some((tag, data)) = &opts.expect_validation {
        let Some(v) = &img.header().validation else {
            return Err(RestoreError::ValidationMismatch {
                field: "tag",
                image: "no validation data".into(),
                expected: abbreviate(tag),
            });
        };
        if &v.tag != tag {
            return Err(RestoreError::ValidationMismatch {
                field: "tag",
                image: abbreviate(&v.tag),
                expected: abbreviate(tag),
            });
        }
        if &v.data != data {
            return Err(RestoreError::ValidationMismatch {
                field: "data",
                image: abbreviate(&v.data),
                expected: abbreviate(data),
            });
        }
    }
    Ok(())
}

/// Why the image cannot be mapped straight from its file, if it cannot.
fn mmap_unavailable(img: &Image, regions: &[Region]) -> Option<String> {
    if img.is_encrypted() {
        return Some("the image is encrypted".into());
    }
    if img.header().page_size != memimg::page_size() {
        return Some("the image page size is not this machine's".into());
    }
    for r in regions {
        let ex = img.region_extents(r).ok()?;
        if let Some(e) = ex
            .iter()
            .find(|e| e.kind == ExtentKind::Data && img.raw_file_offset(e).is_none())
        {
            return Some(format!("the chunk at {:#x} is compressed", e.addr));
        }
    }
    None
}

/// The ranges a restore mapped: each region reserved whole, or an mmap
/// restore's pieces. Unmapped on drop unless kept, so a restore that fails
/// leaves nothing of its own mapped.
struct Reservation {
    /// `(start, len)`; pieces mapped next to each other are one range.
    ranges: Vec<(u64, u64)>,
}

/// Where the pages of a piece that [`Reservation::place`] maps come from.
#[derive(Clone, Copy)]
enum Pages {
    /// Anonymous memory: zeros.
    Zeros,
    /// The open file `fd`, from byte `offset` (a multiple of the page size).
    File { fd: libc::c_int, offset: u64 },
}

fn prot_bits(p: memimg::Prot) -> libc::c_int {
    let mut b = libc::PROT_NONE;
    if p.read() {
        b |= libc::PROT_READ;
    }
    if p.write() {
        b |= libc::PROT_WRITE;
    }
    if p.exec() {
        b |= libc::PROT_EXEC;
    }
    b
}

fn usize_of(v: u64) -> usize {
    // Addresses and lengths of this machine's address space fit in usize.
    usize::try_from(v).unwrap_or(usize::MAX)
}

impl Reservation {
    /// Reserves each region whole with one anonymous read-write mapping,
    /// for the strategies that fill it afterwards (eager, lazy).
    fn new(regions: &[Region]) -> Result<Reservation, RestoreError> {
        let mut res = Reservation { ranges: Vec::new() };
        for r in regions {
            let rw = libc::PROT_READ | libc::PROT_WRITE;
            res.place(r, r.info.start, r.info.len, rw, Pages::Zeros)?;
        }
        Ok(res)
    }

    /// Maps `addr..addr + len`, inside region `r`, at protection `prot`
    /// from `pages`, private, with `MAP_FIXED_NOREPLACE`, and records it.
    /// Any address of the range already mapped, by anyone (this restore
    /// included), is [`RestoreError::AddressInUse`] naming the region:
    /// nothing is ever mapped over.
    fn place(
        &mut self,
        r: &Region,
        addr: u64,
        len: u64,
        prot: libc::c_int,
        pages: Pages,
    ) -> Result<(), RestoreError> {
        let (flags, fd, offset, what) = match pages {
            Pages::Zeros => (
                libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
                "mapping anonymous memory at",
            ),
            Pages::File { fd, offset } => {
                let offset = libc::off_t::try_from(offset).map_err(|_| {
                    RestoreError::io(
                        "mapping",
                        std::io::Error::from_raw_os_error(libc::EOVERFLOW),
                    )
                })?;
                (0, fd, offset, "mapping from the file")
            }
        };
        let in_use = || RestoreError::AddressInUse {
            range: r.info.start..r.info.end(),
            name: r.info.name_lossy(),
        };
        // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping: it
        // fails with EEXIST instead, so no memory of ours or anyone's is
        // touched; a file mapping is private, so the file is never written.
        let p = unsafe {
            libc::mmap(
                usize_of(addr) as *mut libc::c_void,
                usize_of(len),
                prot,
                libc::MAP_PRIVATE | libc::MAP_FIXED_NOREPLACE | flags,
                fd,
                offset,
            )
        };
        if p == libc::MAP_FAILED {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EEXIST) {
                return Err(in_use());
            }
            return Err(RestoreError::io(
                format!("{what} {addr:#x}-{:#x}", addr + len),
                e,
            ));
        }
        if p as usize as u64 != addr {
            // A kernel older than 4.17 takes the flag as a hint.
            // SAFETY: p..p+len is the mapping just made, ours alone.
            unsafe { libc::munmap(p, usize_of(len)) };
            return Err(in_use());
        }
        match self.ranges.last_mut() {
            Some((s, l)) if *s + *l == addr => *l += len,
            _ => self.ranges.push((addr, len)),
        }
        Ok(())
    }

    fn protect(&self, regions: &[Region]) -> Result<(), RestoreError> {
        for r in regions {
            // SAFETY: the range is a mapping this reservation made.
            let rc = unsafe {
                libc::mprotect(
                    usize_of(r.info.start) as *mut libc::c_void,
                    usize_of(r.info.len),
                    prot_bits(r.info.prot),
                )
            };
            if rc != 0 {
                return Err(RestoreError::last_os(format!(
                    "protecting {:#x}-{:#x}",
                    r.info.start,
                    r.info.end()
                )));
            }
        }
        Ok(())
    }

    fn keep(mut self) {
        self.ranges.clear();
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        for &(start, len) in &self.ranges {
            // SAFETY: each range was mapped by `place` (with
            // MAP_FIXED_NOREPLACE, so over nothing else) and nothing outside
            // this module has seen it yet.
            unsafe { libc::munmap(usize_of(start) as *mut libc::c_void, usize_of(len)) };
        }
    }
}

/// Maps every region into free space, piece by piece in address order:
/// each run of data extents adjacent both in memory and in the file as one
/// private mapping of the file, each gap between runs (zero pages, which
/// the image does not store) as one anonymous mapping. Every piece is
/// mapped with `MAP_FIXED_NOREPLACE` at the region's protection, so an
/// address in use is [`RestoreError::AddressInUse`], no mapping is split
/// and none needs an `mprotect` afterwards. On error, every piece mapped so
/// far is unmapped (the returned value's drop); the caller keeps it.
fn map_from_file(
    img: &Image,
    path: &Path,
    regions: &[Region],
) -> Result<Reservation, RestoreError> {
    use std::os::unix::io::AsRawFd;
    let file = std::fs::File::open(path)
        .map_err(|e| RestoreError::io(format!("opening {}", path.display()), e))?;
    let fd = file.as_raw_fd();
    let ps = img.header().page_size;
    let mut placed = Reservation { ranges: Vec::new() };
    for r in regions {
        let prot = prot_bits(r.info.prot);
        // Everything of the region before `at` is mapped.
        let mut at = r.info.start;
        let mut run: Option<(u64, u64, u64)> = None; // (addr, file offset, len)
        for e in img.region_extents(r)? {
            if e.kind != ExtentKind::Data {
                continue;
            }
            let off = img
                .raw_file_offset(e)
                .ok_or_else(|| RestoreError::StrategyUnavailable {
                    strategy: "mmap",
                    why: format!("the chunk at {:#x} is not stored raw", e.addr),
                })?;
            let len = e.len(ps);
            run = match run {
                Some((a, o, l)) if a + l == e.addr && o + l == off => Some((a, o, l + len)),
                prev => {
                    if let Some(prev) = prev {
                        place_run(&mut placed, r, prot, fd, &mut at, prev)?;
                    }
                    Some((e.addr, off, len))
                }
            };
        }
        if let Some(last) = run {
            place_run(&mut placed, r, prot, fd, &mut at, last)?;
        }
        if at < r.info.end() {
            placed.place(r, at, r.info.end() - at, prot, Pages::Zeros)?;
        }
    }
    Ok(placed)
}

/// Maps zeros from `*at` up to a run of stored pages of region `r`, then
/// the run `(addr, file offset, len)` from the file `fd`, both at `prot`;
/// `*at` moves past the run.
fn place_run(
    placed: &mut Reservation,
    r: &Region,
    prot: libc::c_int,
    fd: libc::c_int,
    at: &mut u64,
    (addr, offset, len): (u64, u64, u64),
) -> Result<(), RestoreError> {
    // The reader checks that a region's extents cover it in address order;
    // refuse anything else rather than map it.
    if addr < *at || addr.saturating_add(len) > r.info.end() {
        return Err(RestoreError::StrategyUnavailable {
            strategy: "mmap",
            why: format!(
                "the run at {addr:#x} is out of order in region {:#x}-{:#x}",
                r.info.start,
                r.info.end()
            ),
        });
    }
    if *at < addr {
        placed.place(r, *at, addr - *at, prot, Pages::Zeros)?;
    }
    placed.place(r, addr, len, prot, Pages::File { fd, offset })?;
    *at = addr + len;
    Ok(())
}

/// `MADV_POPULATE_WRITE` of `<linux/mman.h>`.
const MADV_POPULATE_WRITE: libc::c_int = 23;

/// Decodes every data extent into its place, in parallel.
fn decode_all(img: &Image, regions: &[Region]) -> Result<(), RestoreError> {
    let ps = img.header().page_size;
    let mut work = Vec::new();
    for r in regions {
        work.extend(
            img.region_extents(r)?
                .iter()
                .filter(|e| e.kind == ExtentKind::Data)
                .copied(),
        );
    }
    // In layout order (the order of the chunks in the file): by address, or
    // the load-order profile's chunks first.
    let locs = img.chunk_locs();
    work.sort_by_key(|e| {
        usize::try_from(e.chunk)
            .ok()
            .and_then(|k| locs.get(k))
            .map_or(u64::MAX, |c| c.offset)
    });
    work.par_iter().try_for_each(|e| {
        // SAFETY: the extent lies inside a region reserved read-write by this
        // restore; extents do not overlap, so each task writes its own bytes.
        let out = unsafe {
            std::slice::from_raw_parts_mut(usize_of(e.addr) as *mut u8, usize_of(e.len(ps)))
        };
        // Fault the extent's pages in with one call rather than one trap per
        // page (Linux 5.14+; elsewhere the decode faults them in). Zero
        // extents are left alone and cost no memory.
        // SAFETY: the range is our own read-write mapping, about to be
        // overwritten anyway.
        unsafe { libc::madvise(out.as_mut_ptr().cast(), out.len(), MADV_POPULATE_WRITE) };
        img.decode_extent(e, out).map_err(RestoreError::from)
    })
}
