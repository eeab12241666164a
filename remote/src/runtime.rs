//! The one tokio runtime of the process, built on first use.
//!
//! object_store is asynchronous; this crate's API (like the `memimg` crate it
//! serves) is synchronous, so each call blocks on a future run here.
//!
//! **Why one runtime per process.** The HTTP client keeps a pool of open
//! connections, and each connection is driven by a task of the runtime that
//! opened it: a client used from two runtimes loses its connections when one
//! of them stops. One runtime also bounds the threads this crate adds to a
//! process (two workers, whatever the number of readers and writers), which
//! matters in the capture and restore paths, where a process's own threads are
//! being stopped and faulted. It is built lazily, so programs that never touch
//! object storage start no thread, and it is never dropped, so no shutdown can
//! race a request still in flight.
//!
//! **Blocking.** [`block_on`] must not be called from inside an asynchronous
//! task (tokio forbids blocking a worker); every public function of this crate
//! is synchronous and is called from ordinary threads, many at once if need
//! be (a multi-thread runtime lets each caller block on its own future).
//!
//! **Fork.** The runtime's threads do not exist in a child made by `fork`:
//! a child must not use a runtime its parent started (a child that execs, as
//! a restored program does, is not affected).

use std::future::Future;
use std::sync::OnceLock;

use crate::error::{Error, ErrorKind, Result};

/// Worker threads of the runtime: requests are I/O-bound, and decoding and
/// checking run on the caller's threads. By default 2.
pub const WORKER_THREADS: usize = 2;

static RUNTIME: OnceLock<std::result::Result<tokio::runtime::Runtime, String>> = OnceLock::new();

fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(WORKER_THREADS)
                .thread_name("memimg-remote")
                .enable_io()
                .enable_time()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| {
            Error::new(
                ErrorKind::Config,
                None,
                format!("cannot start the I/O runtime for object storage: {e}"),
            )
        })
}

/// Runs `fut` to completion on the process's runtime, blocking this thread:
/// for callers that use the object_store client directly (see
/// [`crate::Store::object_store`]).
///
/// # Errors
/// When the runtime cannot be started.
///
/// # Panics
/// When called from inside an asynchronous task (tokio forbids blocking
/// one of its workers).
pub fn block_on<F: Future>(fut: F) -> Result<F::Output> {
    Ok(runtime()?.block_on(fut))
}

/// Starts `fut` on the runtime without waiting for it.
pub(crate) fn spawn<F>(fut: F) -> Result<tokio::task::JoinHandle<F::Output>>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    Ok(runtime()?.spawn(fut))
}

/// A handle to the runtime, for spawning into a `JoinSet`.
pub(crate) fn handle() -> Result<tokio::runtime::Handle> {
    Ok(runtime()?.handle().clone())
}
