//! # memimg-remote: memimg images on object storage
//!
//! A memimg image was made one file, with its index at the end, so that it
//! can live on network storage: the trailer locates the index, the index
//! locates every chunk, and every chunk is checked on its own. Reading a
//! remote image therefore costs one ranged GET for the header page, one for
//! the tail, one for the index, and one per chunk actually touched. This
//! crate puts images in S3 and S3-compatible stores (MinIO, Ceph, moto)
//! through the `object_store` crate:
//!
//! - [`Location`] is a path or an `s3://BUCKET/KEY` URL: what every image
//!   argument of `imgtool` is. [`S3Options::from_env`] reads the endpoint,
//!   region and credentials the way the AWS CLI does.
//! - [`RemoteReader`] is a [`memimg::ReadAt`] over ranged GETs, with a small
//!   LRU cache of blocks and coalescing of adjacent reads; it never downloads
//!   the whole object to open it. [`RemoteReader::fetch_many`] reads many
//!   ranges with several requests in flight. [`open_image`] opens a
//!   [`memimg::Image`] at any [`Location`].
//! - [`RemoteWriter`] is a `std::io::Write` for [`memimg::Writer`] that
//!   streams a multipart upload and completes it only on
//!   [`RemoteWriter::commit`]: a failed or abandoned write leaves no object.
//!   [`Output`] is a local temporary file or an upload, committed the same
//!   way.
//! - [`copy`] copies an image between any two locations, checking every
//!   chunk's stored checksum, the header and the index as it streams, and
//!   gives a byte-identical copy. [`verify_remote`] checks every stored byte
//!   of a remote image with parallel ranged GETs.
//!
//! The `memimg` crate stays synchronous and small: tokio and object_store
//! live only here, on one runtime per process (see [`runtime`]).
#![deny(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod cache;
mod check;
mod config;
mod copy;
mod error;
mod location;
mod open;
mod reader;
pub mod runtime;
mod verify;
mod writer;

pub use config::{
    S3Options, DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT, DEFAULT_RETRIES,
    DEFAULT_RETRY_TIMEOUT, DEFAULT_UPLOAD_CHECKSUM,
};
pub use copy::{copy, CopyOptions, CopyReport};
pub use error::{Error, ErrorKind, Result};
pub use location::{Location, S3Url};
pub use open::{open_image, open_store, Output, Store};
pub use reader::{
    global_stats, FetchOptions, ReaderOptions, RemoteReader, Stats, DEFAULT_BLOCK_SIZE,
    DEFAULT_CACHE_BYTES,
};
pub use verify::verify_remote;
pub use writer::{
    Committed, RemoteWriter, UploadOptions, UploadStats, DEFAULT_PARTS_IN_FLIGHT,
    DEFAULT_PART_SIZE, MIN_PART_SIZE,
};

/// The object_store crate this one is built on, for callers that build their
/// own store or upload (see [`RemoteReader::open_with`],
/// [`RemoteWriter::from_upload`]).
pub use object_store;

/// The reader is shared between threads (a restore's fault handler and its
/// prefetcher), and the writer and outputs move to a writer thread (capture
/// writes from a thread of its own).
#[allow(dead_code)]
fn _thread_safety() {
    fn shared<T: Send + Sync>() {}
    fn sent<T: Send>() {}
    shared::<RemoteReader>();
    shared::<Store>();
    sent::<RemoteWriter>();
    sent::<Output>();
    sent::<Error>();
    shared::<Error>();
}
