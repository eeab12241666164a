//! Opening and creating images wherever they are.

use std::io::Write;
use std::sync::Arc;

use memimg::atomic::AtomicFile;
use memimg::{Image, Key};
use object_store::{ObjectStore, ObjectStoreExt};

use crate::error::{from_store, Error, Result};
use crate::location::{Location, S3Url};
use crate::reader::{ReaderOptions, RemoteReader};
use crate::runtime::block_on;
use crate::writer::{RemoteWriter, UploadOptions};
use crate::S3Options;

/// A client for one bucket, to open, create, test and remove its objects
/// with one connection pool.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    bucket: String,
}

/// A client for `url`'s bucket; makes no request.
///
/// # Errors
/// [`crate::ErrorKind::Config`] for unusable settings.
pub fn open_store(url: &S3Url, s3: &S3Options) -> Result<Store> {
    Store::new(&url.bucket, s3)
}

impl Store {
    /// A client for `bucket`; makes no request.
    ///
    /// # Errors
    /// [`crate::ErrorKind::Config`] for unusable settings.
    pub fn new(bucket: &str, s3: &S3Options) -> Result<Store> {
        Ok(Store {
            inner: s3.store(bucket)?,
            bucket: bucket.to_string(),
        })
    }

    /// Wraps a store the caller built (tests wrap one to inject faults).
    pub fn with_object_store(bucket: &str, inner: Arc<dyn ObjectStore>) -> Store {
        Store {
            inner,
            bucket: bucket.to_string(),
        }
    }

    /// The underlying object_store client.
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    fn check(&self, url: &S3Url) -> Result<()> {
        if url.bucket == self.bucket {
            Ok(())
        } else {
            Err(Error::new(
                crate::ErrorKind::Config,
                Some(&url.to_string()),
                format!("this client is for bucket {:?}", self.bucket),
            ))
        }
    }

    /// Opens `url` for reading (one HEAD request).
    ///
    /// # Errors
    /// As [`RemoteReader::open`].
    pub fn reader(&self, url: &S3Url, opts: ReaderOptions) -> Result<RemoteReader> {
        self.check(url)?;
        RemoteReader::open_with(Arc::clone(&self.inner), url, opts)
    }

    /// Opens `url` for reading by its ends: a GET of its first `head` bytes
    /// and, unless the image's index comes first, a suffix GET of its last
    /// `tail` bytes, and no HEAD (see [`RemoteReader::open_ends_with`]).
    ///
    /// # Errors
    /// As [`RemoteReader::open`].
    pub fn reader_by_ends(
        &self,
        url: &S3Url,
        opts: ReaderOptions,
        head: u64,
        tail: u64,
    ) -> Result<RemoteReader> {
        self.check(url)?;
        RemoteReader::open_ends_with(Arc::clone(&self.inner), url, opts, head, tail)
    }

    /// Starts an upload to `url` (one request).
    ///
    /// # Errors
    /// As [`RemoteWriter::create`].
    pub fn writer(&self, url: &S3Url, opts: UploadOptions) -> Result<RemoteWriter> {
        self.check(url)?;
        RemoteWriter::create_in(&*self.inner, url, opts)
    }

    /// True when an object exists under `url` (one HEAD request). For
    /// commands that refuse to replace an object without `--force`.
    ///
    /// # Errors
    /// A missing bucket, refused credentials, network failures.
    pub fn exists(&self, url: &S3Url) -> Result<bool> {
        self.check(url)?;
        let name = url.to_string();
        match block_on(self.inner.head(&url.path()))? {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => {
                // A missing bucket is an error, not "no object": probe it.
                let doing = "checking whether the object exists";
                match crate::reader::probe(
                    &*self.inner,
                    &url.path(),
                    &name,
                    doing,
                    &Default::default(),
                ) {
                    Some(e) if e.kind() == crate::ErrorKind::NoSuchBucket => Err(e),
                    Some(_) => Ok(false),
                    None => Ok(true),
                }
            }
            Err(e) => Err(from_store(&name, "checking whether the object exists", &e)),
        }
    }

    /// Removes the object under `url`. S3 reports success for a key that
    /// does not exist.
    ///
    /// # Errors
    /// A missing bucket, refused credentials, network failures.
    pub fn delete(&self, url: &S3Url) -> Result<()> {
        self.check(url)?;
        block_on(self.inner.delete(&url.path()))?
            .map_err(|e| from_store(&url.to_string(), "deleting the object", &e))
    }
}

/// Opens the image at `loc`, unlocking it with `key` when it is encrypted.
///
/// A local image is memory-mapped ([`Image::open_with_key`]); a remote one is
/// read through a [`RemoteReader`] with default caching, fetching the header
/// page, the trailer and the index now and each chunk when it is read.
///
/// To open one remote image twice (without and then with a key, as imgtool
/// does), build one [`RemoteReader`] and call [`Image::from_read_at`] on the
/// same `Arc` twice: the second open is served from its cache.
///
/// # Errors
/// [`crate::ErrorKind::Image`] for an image error (damage, wrong key…: see
/// [`Error::image`]); the remote kinds for a remote failure.
pub fn open_image(loc: &Location, key: Option<&Key>, s3: &S3Options) -> Result<Image> {
    match loc {
        Location::Local(p) => {
            Image::open_with_key(p, key).map_err(|e| Error::from_memimg(&loc.to_string(), e))
        }
        Location::S3(url) => {
            let reader = Arc::new(RemoteReader::open(url, s3)?);
            Image::from_read_at(reader, key).map_err(|e| Error::from_memimg(&loc.to_string(), e))
        }
    }
}

/// Where a new image is written: a temporary file renamed into place, or a
/// multipart upload completed, by [`Output::commit`]. Dropped without a
/// commit, neither leaves anything under the final name.
#[derive(Debug)]
pub enum Output {
    /// A local file, written beside its target and renamed on commit.
    Local(AtomicFile),
    /// An object, uploaded in parts and completed on commit.
    Remote(RemoteWriter),
}

impl Output {
    /// Starts writing an image to `loc`.
    ///
    /// # Errors
    /// When the temporary file or the upload cannot be created.
    pub fn create(loc: &Location, s3: &S3Options, opts: UploadOptions) -> Result<Output> {
        match loc {
            Location::Local(p) => AtomicFile::create(p)
                .map(Output::Local)
                .map_err(|e| Error::from_memimg(&loc.to_string(), e)),
            Location::S3(url) => RemoteWriter::create(url, s3, opts).map(Output::Remote),
        }
    }

    /// Makes the image visible under its name: fsync and rename, or complete
    /// the upload.
    ///
    /// # Errors
    /// When that fails; nothing is then left under the name (a local target
    /// keeps its old content).
    pub fn commit(self) -> Result<()> {
        match self {
            Output::Local(f) => {
                let name = f.tmp_path().display().to_string();
                f.commit().map_err(|e| Error::from_memimg(&name, e))
            }
            Output::Remote(w) => w.commit().map(|_| ()),
        }
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Output::Local(f) => f.write(buf),
            Output::Remote(w) => w.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Output::Local(f) => f.write_all(buf),
            Output::Remote(w) => w.write_all(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Output::Local(f) => f.flush(),
            Output::Remote(w) => w.flush(),
        }
    }
}
