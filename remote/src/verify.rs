//! Verifying a remote image: every stored byte read once, in parallel
//! ranged GETs.

use std::ops::Range;
use std::sync::Arc;

use memimg::{Image, Key, Report, VerifyOptions};

use crate::check::{plan, Checker};
use crate::reader::{FetchOptions, RemoteReader};

/// Verifies the image `reader` reads, as `memimg::verify_path` does a local
/// file, and with the same report.
///
/// Opening reads and checks the header, trailer and index. Then, without
/// `opts.decode`, every chunk's stored bytes (and the padding before it) are
/// fetched once with [`RemoteReader::fetch_many`], several requests in
/// flight, and checked against the chunk map as they arrive: no key is
/// needed, even for an encrypted image. In all, at most the object's bytes
/// are fetched, plus the two cache blocks opening reads around the header
/// and the trailer (8 KiB by default). With `opts.decode` (and the key of an
/// encrypted image), [`Image::verify`] decodes every chunk on a pool of
/// `fetch.concurrency` threads, each reading its chunks with one exact GET.
///
/// Unlike a local verify, damage found while opening stops there: the report
/// has that one problem (a local verify goes on past some of them).
/// A remote failure (network, refused credentials) is `fatal`: the image
/// could not be checked, which is not damage.
pub fn verify_remote(
    reader: Arc<RemoteReader>,
    key: Option<&Key>,
    opts: &VerifyOptions<'_>,
    fetch: FetchOptions,
) -> Report {
    let mut report = Report::default();
    // The trailer too, when the index comes first (spec.md, *Index first*:
    // verify always reads it).
    let img = match Image::from_read_at_whole(reader.clone(), key) {
        Ok(img) => img,
        Err(e) if e.is_damage() => {
            report.problems.push(e.into());
            return report;
        }
        Err(e) => {
            report.fatal = Some(e);
            return report;
        }
    };
    if opts.decode && img.is_unlocked() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(fetch.concurrency.max(1))
            .thread_name(|i| format!("memimg-verify-{i}"))
            .build();
        return match pool {
            Ok(pool) => {
                let mut r = pool.install(|| img.verify(opts));
                sort(&mut r);
                r
            }
            Err(e) => Report {
                fatal: Some(memimg::Error::plain(
                    memimg::ErrorKind::Io,
                    format!("cannot start the verify threads: {e}"),
                )),
                ..Report::default()
            },
        };
    }
    report.unlocked = img.is_unlocked();
    report.parent_unchecked = img.parent_not_checked();
    let segs = plan(&img, fetch.max_request, false);
    let ranges: Vec<Range<u64>> = segs.iter().map(|s| s.range.clone()).collect();
    let mut checker = Checker::new(&img);
    let mut problems = Vec::new();
    let res = reader.fetch_many(&ranges, fetch, |i, bytes| {
        let before = checker.chunks_checked;
        checker.check(&segs[i], bytes, &mut problems);
        if let Some(p) = opts.progress {
            // Progress in stored bytes of the chunks checked, as verify_path.
            let n = usize::try_from(before).unwrap_or(usize::MAX);
            let m = usize::try_from(checker.chunks_checked).unwrap_or(usize::MAX);
            for c in img.chunk_locs().get(n..m).unwrap_or(&[]) {
                p(u64::from(c.stored_len));
            }
        }
        Ok::<(), crate::Error>(())
    });
    if let Err(e) = res {
        report.fatal = Some(memimg::Error::io("reading the chunks", e.into_io()));
    }
    report.chunks_checked = checker.chunks_checked;
    report.bytes_checked = img
        .chunk_locs()
        .iter()
        .map(|c| u64::from(c.stored_len))
        .sum();
    report.problems = problems;
    sort(&mut report);
    report
}

/// Problems in file order, as `memimg::verify_path` gives them.
fn sort(r: &mut Report) {
    r.problems
        .sort_by_key(|p| (p.location.offset.unwrap_or(u64::MAX), p.location.chunk));
    r.problems.dedup();
}
