//! Persisting a program's own memory: the program names the regions it wants
//! back, and writes them with its validation data into an image.

use std::io::Write;
use std::marker::PhantomData;
use std::path::Path;

use memimg::atomic::AtomicFile;
use memimg::{Codec, Key, Prot, RegionInfo, RegionKind, WriteStats, Writer, WriterOptions};

use crate::bgwrite::Background;
use crate::pagemap::{self, Pagemap};
use crate::procfs;

/// How to write a persisted image.
#[derive(Debug, Clone)]
pub struct PersistOptions {
    /// Chunk codec. By default none, so that [`crate::restore()`] can map the
    /// file straight into memory.
    pub codec: Codec,
    /// Encrypts the image under this key. By default none.
    pub key: Option<Key>,
    /// Chunk size in bytes. By default [`memimg::DEFAULT_CHUNK_SIZE`].
    pub chunk_size: Option<u32>,
    /// Threads that compress and encrypt. By default one per core.
    pub workers: usize,
}

impl Default for PersistOptions {
    fn default() -> Self {
        PersistOptions {
            codec: Codec::None,
            key: None,
            chunk_size: None,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// Why persisting failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PersistError {
    /// A region is not whole pages, or regions overlap.
    #[error("region {name} at {start:#x}+{len:#x}: {why}")]
    BadRegion {
        /// Its name.
        name: String,
        /// Its start.
        start: u64,
        /// Its length.
        len: u64,
        /// What is wrong.
        why: &'static str,
    },
    /// Writing the image failed.
    #[error("writing the image: {0}")]
    Format(#[from] memimg::Error),
    /// Writing the file failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The image path.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
struct Entry {
    info: RegionInfo,
}

/// Builds an image of chosen regions of this process's memory.
///
/// ```no_run
/// use memimg::RegionKind;
/// use memimg_capture::{Persister, PersistOptions};
/// # fn arena() -> &'static [u8] { &[] }
/// let arena: &[u8] = arena(); // page-aligned, whole pages
/// Persister::new()
///     .region(arena, RegionKind::Heap, "arena")
///     .validation("my-app", b"schema 3".to_vec())
///     .write_to_path("arena.img".as_ref(), &PersistOptions::default())?;
/// # Ok::<(), memimg_capture::PersistError>(())
/// ```
#[derive(Debug, Default)]
pub struct Persister<'a> {
    regions: Vec<Entry>,
    validation: Option<(Vec<u8>, Vec<u8>)>,
    _borrow: PhantomData<&'a [u8]>,
}

impl<'a> Persister<'a> {
    /// An empty persister.
    pub fn new() -> Self {
        Persister::default()
    }

    /// Adds a region: `data` must start on a page boundary and be whole
    /// pages (checked when writing). It is restored read-write.
    pub fn region(self, data: &'a [u8], kind: RegionKind, name: &str) -> Self {
        // SAFETY: a shared borrow of `data` is held for 'a, so the memory
        // stays mapped and readable until the persister is dropped.
        unsafe { self.region_raw(data.as_ptr(), data.len(), Prot::RW, kind, name) }
    }

    /// Adds a region by pointer, with the protection to restore it with.
    ///
    /// # Safety
    /// `ptr..ptr + len` must stay mapped and readable until the image is
    /// written, and nothing may write to it meanwhile (the bytes are read
    /// while the image is written; a concurrent write gives a torn image).
    pub unsafe fn region_raw(
        mut self,
        ptr: *const u8,
        len: usize,
        prot: Prot,
        kind: RegionKind,
        name: &str,
    ) -> Self {
        self.regions.push(Entry {
            info: RegionInfo {
                start: ptr as usize as u64,
                len: len as u64,
                prot,
                kind,
                name: name.as_bytes().to_vec(),
                ..RegionInfo::default()
            },
        });
        self
    }

    /// Sets the validation data that [`crate::restore()`] checks (tag ≤ 64
    /// bytes, data ≤ 2048 bytes).
    pub fn validation(mut self, tag: impl Into<Vec<u8>>, data: impl Into<Vec<u8>>) -> Self {
        self.validation = Some((tag.into(), data.into()));
        self
    }

    /// Writes the image to `path`, through a temporary file renamed into
    /// place when complete.
    ///
    /// # Errors
    /// See [`PersistError`].
    pub fn write_to_path(
        &self,
        path: &Path,
        opts: &PersistOptions,
    ) -> Result<WriteStats, PersistError> {
        let io = |source| PersistError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = AtomicFile::create(path)?;
        let (w, stats) = self.write_to(Background::new(file).map_err(io)?, opts)?;
        let file = w.into_inner().map_err(io)?;
        file.commit()?;
        Ok(stats)
    }

    /// Writes the image to `out`.
    ///
    /// # Errors
    /// See [`PersistError`].
    pub fn write_to<W: Write>(
        &self,
        out: W,
        opts: &PersistOptions,
    ) -> Result<(W, WriteStats), PersistError> {
        let ps = memimg::page_size();
        let psu = u64::from(ps);
        let mut regions = self.regions.clone();
        regions.sort_by_key(|e| e.info.start);
        let mut prev_end = 0;
        for e in &regions {
            let r = &e.info;
            let bad = |why| PersistError::BadRegion {
                name: r.name_lossy(),
                start: r.start,
                len: r.len,
                why,
            };
            if r.start % psu != 0 || r.len % psu != 0 || r.len == 0 {
                return Err(bad("not whole pages on page boundaries"));
            }
            if r.start < prev_end {
                return Err(bad("overlaps another region"));
            }
            prev_end = r.end();
        }
        let mut wo = WriterOptions::new()
            .page_size(ps)
            .codec(opts.codec)
            .key_opt(opts.key.clone())
            .workers(opts.workers);
        if let Some(cs) = opts.chunk_size {
            wo = wo.chunk_size(cs);
        }
        if let Some((t, d)) = &self.validation {
            wo = wo.validation(t.clone(), d.clone());
        }
        let mut w = Writer::new(out, wo)?;
        let me = i32::try_from(std::process::id()).unwrap_or(0);
        let maps = procfs::read_maps(me).unwrap_or_default();
        let pm = Pagemap::open(me, psu);
        let mut entries = Vec::new();
        for e in &regions {
            let r = &e.info;
            // Pages never touched in private anonymous memory are zero: skip
            // reading (and faulting in) them. Anything else is read.
            let anon_private = maps
                .iter()
                .filter(|m| m.end > r.start && m.start < r.end())
                .all(|m| !m.is_file() && !m.shared);
            w.begin_region(r.clone())?;
            let mut at = r.start;
            while at < r.end() {
                let n = (4u64 << 20).min(r.end() - at);
                let pages = usize::try_from(n / psu).unwrap_or(0);
                if anon_private {
                    pm.read(at, &mut entries, pages);
                } else {
                    entries.clear();
                    entries.resize(pages, pagemap::PRESENT);
                }
                let mut i = 0;
                while i < pages {
                    let touched = |e: u64| e & (pagemap::PRESENT | pagemap::SWAPPED) != 0;
                    let t = touched(entries[i]);
                    let j = (i..pages)
                        .find(|&k| touched(entries[k]) != t)
                        .unwrap_or(pages);
                    let a = at + i as u64 * psu;
                    let len = (j - i) as u64 * psu;
                    if t {
                        // SAFETY: a..a+len lies inside a region the caller
                        // registered as mapped and readable until now (the
                        // borrow in `region`, or region_raw's contract).
                        let s = unsafe {
                            std::slice::from_raw_parts(
                                crate::ptr_of(a) as *const u8,
                                usize::try_from(len).unwrap_or(0),
                            )
                        };
                        w.push_data(s)?;
                    } else {
                        w.push_zero(len)?;
                    }
                    i = j;
                }
                at += n;
            }
            w.end_region()?;
        }
        Ok(w.finish()?)
    }
}
