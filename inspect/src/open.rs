//! Opening images with an optional key, with messages that name the file
//! once; every image argument is a path or an `s3://BUCKET/KEY` URL.
//!
//! A remote image is read through a [`RemoteReader`]: ranged GETs for the
//! header page, the trailer and the index when it opens, then one GET per
//! chunk read, with the store's settings from the environment as the AWS
//! CLI reads them ([`S3Options::from_env`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use anyhow::{bail, Result};
use memimg::{ErrorKind, Image, Key};
use memimg_remote::{Location, ReaderOptions, RemoteReader, S3Options, S3Url, Store};

/// Something an error message names: a path or a URL.
pub trait Named {
    /// The name as shown.
    fn shown(&self) -> String;
}

impl Named for Path {
    fn shown(&self) -> String {
        self.display().to_string()
    }
}

impl Named for PathBuf {
    fn shown(&self) -> String {
        self.display().to_string()
    }
}

impl Named for Location {
    fn shown(&self) -> String {
        self.to_string()
    }
}

/// Reads an image argument: `s3://BUCKET/KEY` is an object, anything else a
/// path; other schemes (`gs://`, `http://`) are refused.
///
/// # Errors
/// A malformed `s3://` URL or an unknown scheme, naming what is wrong.
pub fn location(arg: &Path) -> Result<Location> {
    Location::parse(arg.as_os_str()).map_err(anyhow::Error::new)
}

/// The store's settings, from the environment (once per process).
pub fn s3() -> &'static S3Options {
    static S3: OnceLock<S3Options> = OnceLock::new();
    S3.get_or_init(S3Options::from_env)
}

/// Opens the object at `url` for reading: one HEAD request.
///
/// # Errors
/// A missing bucket or key, refused credentials, the network: each named.
pub fn reader(url: &S3Url) -> Result<Arc<RemoteReader>> {
    let r = Store::new(&url.bucket, s3())
        .and_then(|s| s.reader(url, ReaderOptions::default()))
        .map_err(anyhow::Error::new)?;
    Ok(Arc::new(r))
}

/// Opens the image at `loc`, a path or a URL, as [`open`] does a path.
///
/// # Errors
/// As [`open`]; for a URL also a missing bucket or key, refused
/// credentials and network failures, each named.
pub fn open_at(loc: &Location, key: Option<&Key>, need_unlock: bool) -> Result<Image> {
    match loc {
        Location::Local(p) => open(p, key, need_unlock),
        Location::S3(url) => open_remote(&reader(url)?, loc, key, need_unlock),
    }
}

/// Opens the image `reader` reads (named `loc`), as [`open`] does a path:
/// first without a key, then, for an encrypted image, with it (from the
/// reader's cache: no second download).
///
/// # Errors
/// As [`open_at`].
pub fn open_remote(
    reader: &Arc<RemoteReader>,
    loc: &Location,
    key: Option<&Key>,
    need_unlock: bool,
) -> Result<Image> {
    let from = |key: Option<&Key>| Image::from_read_at(reader.clone(), key);
    let img = from(None).map_err(|e| remote_error(e, loc, "opening"))?;
    if !img.is_encrypted() {
        if key.is_some() {
            return Err(not_encrypted(loc));
        }
        return Ok(img);
    }
    match key {
        Some(k) => match from(Some(k)) {
            Ok(img) => Ok(img),
            Err(e) if e.kind() == ErrorKind::WrongKey => Err(wrong_key(loc, &e)),
            Err(e) if e.kind() == ErrorKind::NotEncrypted => Err(not_encrypted(loc)),
            Err(e) => Err(remote_error(e, loc, "opening")),
        },
        None if need_unlock => bail!(
            "{} is encrypted: give its key with --key-file, --passphrase-file or --key-fd",
            loc
        ),
        None => Ok(img),
    }
}

/// An error of the reader of a remote image: a failed request keeps its
/// kind and says what was being read, once; damage is reported as for a
/// local file ([`lib_error`]).
pub fn remote_error(e: memimg::Error, loc: &Location, doing: &str) -> anyhow::Error {
    if memimg_remote::Error::find(&e).is_some() {
        return anyhow::Error::new(memimg_remote::Error::from_memimg(&loc.to_string(), e));
    }
    lib_error(e, loc, doing)
}

/// The message for a key that does not open an image. It is never damage.
pub const WRONG_KEY: &str = "the key does not open this image";

/// Opens `path`, unlocking it with `key` when it is encrypted.
///
/// # Security
/// A key given for a plain image is refused, never ignored: a user who gives
/// a key expects an encrypted image, and a plain file in its place may be a
/// substitute (anyone can write a plain image; only the key holder can write
/// one that the key opens).
///
/// # Errors
/// When the file is not a readable image, when a key is given and the image
/// is plain, when `key` does not open it (the message says so and never
/// calls it damage), and, with `need_unlock`, when it is encrypted and no key
/// was given.
pub fn open(path: &Path, key: Option<&Key>, need_unlock: bool) -> Result<Image> {
    let img = Image::open(path).map_err(|e| lib_error(e, path, "opening"))?;
    if !img.is_encrypted() {
        if key.is_some() {
            return Err(not_encrypted(path));
        }
        return Ok(img);
    }
    match key {
        Some(k) => open_with(path, k),
        None if need_unlock => bail!(
            "{} is encrypted: give its key with --key-file, --passphrase-file or --key-fd",
            path.display()
        ),
        None => Ok(img),
    }
}

/// The error for a key given for a plain image.
pub fn not_encrypted(path: &(impl Named + ?Sized)) -> anyhow::Error {
    anyhow::anyhow!(
        "{} is not encrypted, but a key was given: refusing to read it as if the key had \
         opened it (a plain file may have replaced an encrypted image); leave the key out \
         to read a plain image",
        path.shown()
    )
}

fn open_with(path: &Path, key: &Key) -> Result<Image> {
    match Image::open_with_key(path, Some(key)) {
        Ok(img) => Ok(img),
        Err(e) if e.kind() == ErrorKind::WrongKey => Err(wrong_key(path, &e)),
        Err(e) if e.kind() == ErrorKind::NotEncrypted => Err(not_encrypted(path)),
        Err(e) => Err(lib_error(e, path, "opening")),
    }
}

/// A library error about `path`, with "`doing` PATH" in front unless the
/// library's message already names the path (its I/O errors do: `opening
/// PATH: No such file or directory`), so that each context appears once.
pub fn lib_error(e: memimg::Error, path: &(impl Named + ?Sized), doing: &str) -> anyhow::Error {
    let shown = path.shown();
    if e.to_string().contains(&shown) {
        anyhow::Error::new(e)
    } else {
        anyhow::Error::new(e).context(format!("{doing} {shown}"))
    }
}

/// The error for a wrong key, keeping the library's reason when it gives one
/// (a passphrase given for a key-file image, …).
pub fn wrong_key(path: &(impl Named + ?Sized), e: &memimg::Error) -> anyhow::Error {
    let why = e
        .message()
        .strip_prefix(WRONG_KEY)
        .map(|rest| rest.trim_start_matches(':').trim())
        .unwrap_or("");
    if why.is_empty() {
        anyhow::anyhow!("{}: {WRONG_KEY}", path.shown())
    } else {
        anyhow::anyhow!("{}: {WRONG_KEY}: {why}", path.shown())
    }
}

/// Opens the image at `loc` with its chain (format 1.1): a full image is a
/// chain of one; a child's parents are those given in `chain.parents`
/// (nearest first, files or URLs), then those its hints find, unless
/// `chain.no_hints`: a file's hint as a path beside it, an object's as a
/// key beside it or a URL (spec.md, *The parent hint*). Each parent is
/// opened with `key` too. A parent neither given nor found leaves the
/// chain partial: what the child holds reads, and the rest fails naming
/// the parent it needs.
///
/// # Errors
/// As [`open_at`]; for a parent, what is wrong with it naming its link
/// (`link 1 (its parent)`): missing when given, replaced, rewritten,
/// truncated, damaged, a wrong key.
pub fn open_chain_at(
    loc: &Location,
    key: Option<&Key>,
    need_unlock: bool,
    chain: &crate::cli::ChainArgs,
) -> Result<memimg::Chain> {
    open_chain_located(loc, key, need_unlock, chain).map(|(c, _)| c)
}

/// [`open_chain_at`], with where each link was found (`[0]` is `loc`).
///
/// # Errors
/// As [`open_chain_at`].
pub fn open_chain_located(
    loc: &Location,
    key: Option<&Key>,
    need_unlock: bool,
    chain: &crate::cli::ChainArgs,
) -> Result<(memimg::Chain, Vec<Location>)> {
    chain_located(open_at(loc, key, need_unlock)?, loc, key, chain)
}

/// [`open_chain_located`] for `img`, already opened from `loc` (by a
/// caller that holds its reader, so that it is not opened twice).
///
/// # Errors
/// As [`open_chain_at`], for its parents.
pub fn chain_located(
    img: Image,
    loc: &Location,
    key: Option<&Key>,
    chain: &crate::cli::ChainArgs,
) -> Result<(memimg::Chain, Vec<Location>)> {
    if img.parent().is_none() {
        if !chain.parents.is_empty() {
            bail!("{loc} is a full image: it has no parent, so --parent does not apply");
        }
        return Ok((memimg::Chain::single(img), vec![loc.clone()]));
    }
    let key = key.filter(|_| img.is_encrypted());
    if let Location::Local(p) = loc {
        // Files all the way, unless a parent given is a URL.
        if chain
            .parents
            .iter()
            .all(|p| matches!(location(p), Ok(Location::Local(_))))
        {
            let opts = memimg::ChainOptions {
                parents: chain.parents.clone(),
                no_hints: chain.no_hints,
                parent_key: None,
            };
            let c = memimg::Chain::open(p, key, &opts)
                .map_err(|e| lib_error(e, p, "opening the chain of"))?;
            let at = c
                .links()
                .iter()
                .map(|l| Location::Local(l.path().map_or_else(|| p.clone(), Path::to_path_buf)))
                .collect();
            return Ok((c, at));
        }
    }
    let mut c = memimg::Chain::single(img);
    let mut at = vec![loc.clone()];
    let mut given = chain.parents.iter();
    loop {
        let link = c.links().len();
        let last = &c.links()[link - 1];
        if last.parent().is_none() {
            break;
        }
        let (ploc, by_hint) = match given.next() {
            Some(p) => (location(p)?, false),
            None if chain.no_hints => break,
            None => {
                let Some(h) = last.header().parent_hint.clone() else {
                    break;
                };
                let found = match &at[link - 1] {
                    Location::S3(u) => u.resolve_hint(&h).map(Location::S3),
                    Location::Local(p) => memimg::hint_path(p, &h)
                        .filter(|p| p.exists())
                        .map(Location::Local),
                };
                match found {
                    Some(l) => (l, true),
                    None => break,
                }
            }
        };
        // Checked against its child's record before any key is tried, as
        // a file parent of a local chain is (Chain::push_parent_with).
        let doing = format!("link {link} of");
        let pushed = match &ploc {
            Location::Local(lp) => c
                .push_parent_with(key, |k| memimg::Image::open_with_key(lp, k))
                .map_err(|e| lib_error(e, lp, &doing)),
            Location::S3(url) => reader(url).and_then(|r| {
                c.push_parent_with(key, |k| memimg::Image::from_read_at(r.clone(), k))
                    .map_err(|e| remote_error(e, &ploc, &doing))
            }),
        };
        match pushed {
            Ok(()) => at.push(ploc),
            // A hint that names no object leaves the chain partial, as a
            // hint that names no file does (those are not opened).
            Err(e) if by_hint && no_such_object(&e) => break,
            Err(e) => return Err(e),
        }
    }
    Ok((c, at))
}

/// Whether `e` says that an object (or its bucket) does not exist.
fn no_such_object(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<memimg_remote::Error>().is_some_and(|r| {
            matches!(
                r.kind(),
                memimg_remote::ErrorKind::NoSuchKey | memimg_remote::ErrorKind::NoSuchBucket
            )
        })
    })
}
