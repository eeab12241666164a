//! A record of every (key, nonce) pair the crate seals with, for the test
//! that audits that no pair is ever used twice (tests/tests/nonce.rs).
//!
//! It exists only with the `nonce-audit` feature, which only the
//! `memimg-tests` crate enables, and records nothing until [`start`] is
//! called. Keys are recorded as fingerprints (XXH3-128 of the key), never as
//! keys.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// (key fingerprint, nonce) pairs.
pub type Pairs = Vec<(u128, Vec<u8>)>;

/// Every sealing since [`start`], or `None` when not recording.
static RECORD: Mutex<Option<Pairs>> = Mutex::new(None);

fn record_lock() -> MutexGuard<'static, Option<Pairs>> {
    RECORD.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Starts recording every sealing in this process, from every thread (what
/// was recorded before is dropped).
pub fn start() {
    *record_lock() = Some(Vec::new());
}

/// Stops recording; returns the (key fingerprint, nonce) pairs recorded
/// since [`start`], in the order they were used.
pub fn stop() -> Pairs {
    record_lock().take().unwrap_or_default()
}

/// Records that `nonce` was used under the key whose fingerprint is
/// `key_fingerprint`. Called by the sealing paths in crypt.rs: every chunk
/// and index seal under a data key, every key-slot wrap under a KEK.
pub(crate) fn record(key_fingerprint: u128, nonce: &[u8]) {
    if let Some(v) = record_lock().as_mut() {
        v.push((key_fingerprint, nonce.to_vec()));
    }
}
