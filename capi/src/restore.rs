//! Restore: map an image's regions back at their recorded addresses in this
//! process, through [`memimg_capture::restore`].

use std::ffi::{c_char, CString};
use std::sync::Mutex;

use memimg_capture::{LazyStats, RestoreOptions, Restored, Strategy};

use crate::args;
use crate::error::{c_string, guard, memimg_status, Failure};
use crate::ext::{read_in, write_out, Extensible};
use crate::handle::{free_handle, give, handle_ref, Handle};
use crate::key::opt_key;
use crate::types::*;

/// A restore: the regions it mapped and, for a lazy one, its fault
/// handler. Opaque: made by `memimg_restore()`, freed by
/// `memimg_restored_free()`. The mappings stay when it is freed: they
/// belong to the program.
pub struct memimg_restored {
    restored: Mutex<Restored>,
    /// The final statistics once the lazy handler has finished.
    finished: Mutex<Option<LazyStats>>,
    /// The lazy handler's error texts, kept so pointers given out stay
    /// valid until the handle is freed.
    errors: Mutex<Vec<CString>>,
}

impl Handle for memimg_restored {
    const NAME: &'static str = "memimg_restored";
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing here is left half-changed by a panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn strategy_of(s: memimg_strategy) -> Result<Strategy, Failure> {
    Ok(match s {
        MEMIMG_STRATEGY_AUTO => Strategy::Auto,
        MEMIMG_STRATEGY_MMAP => Strategy::Mmap,
        MEMIMG_STRATEGY_EAGER => Strategy::Eager,
        MEMIMG_STRATEGY_LAZY => Strategy::Lazy,
        n => {
            return Err(Failure::invalid(format!(
                "strategy {n} is not a MEMIMG_STRATEGY_*"
            )))
        }
    })
}

fn strategy_code(s: Strategy) -> memimg_strategy {
    match s {
        Strategy::Auto => MEMIMG_STRATEGY_AUTO,
        Strategy::Mmap => MEMIMG_STRATEGY_MMAP,
        Strategy::Eager => MEMIMG_STRATEGY_EAGER,
        Strategy::Lazy => MEMIMG_STRATEGY_LAZY,
    }
}

/// Restores the image at `path` into this process: each region at its
/// recorded address, never over an existing mapping. `opts` may be NULL
/// (strategy auto, no key, no validation check). On success `*out` is a
/// restore handle; on failure it is NULL and nothing stays mapped.
///
/// Errors: `MEMIMG_E_IO` (a missing file ...), the format's errors (damage,
/// `MEMIMG_E_WRONG_KEY`, `MEMIMG_E_KEY_REQUIRED`), `MEMIMG_E_MACHINE_MISMATCH`,
/// `MEMIMG_E_VALIDATION_MISMATCH`, `MEMIMG_E_ADDRESS_IN_USE` (the location's
/// address is the region's start), `MEMIMG_E_STRATEGY_UNAVAILABLE`.
#[no_mangle]
pub unsafe extern "C" fn memimg_restore(
    path: *const c_char,
    opts: *const memimg_restore_options,
    out: *mut *mut memimg_restored,
) -> memimg_status {
    guard("memimg_restore", || {
        // SAFETY: out is checked by give; the rest by contract and checks.
        unsafe {
            give(out, || {
                let path = args::path(path, "path")?;
                let o = if opts.is_null() {
                    memimg_restore_options::zeroed()
                } else {
                    read_in(opts, "opts")?
                };
                if o.flags & !MEMIMG_RESTORE_CHECK_VALIDATION != 0 {
                    return Err(Failure::invalid(format!(
                        "opts->flags {:#x} has bits other than MEMIMG_RESTORE_*",
                        o.flags
                    )));
                }
                let expect_validation = if o.flags & MEMIMG_RESTORE_CHECK_VALIDATION != 0 {
                    let t = args::bytes(
                        o.validation_tag,
                        o.validation_tag_len,
                        "opts->validation_tag",
                    )?;
                    let d = args::bytes(
                        o.validation_data,
                        o.validation_data_len,
                        "opts->validation_data",
                    )?;
                    Some((t.to_vec(), d.to_vec()))
                } else {
                    None
                };
                let ro = RestoreOptions {
                    strategy: strategy_of(o.strategy)?,
                    expect_validation,
                    key: opt_key(o.key, "opts->key")?.cloned(),
                    ..RestoreOptions::default()
                };
                let restored = memimg_capture::restore(path, &ro)?;
                Ok(memimg_restored {
                    restored: Mutex::new(restored),
                    finished: Mutex::new(None),
                    errors: Mutex::new(Vec::new()),
                })
            })
        }
    })
}

/// Fills `*info` with the facts of a restore.
#[no_mangle]
pub unsafe extern "C" fn memimg_restored_info(
    r: *const memimg_restored,
    info: *mut memimg_restore_info,
) -> memimg_status {
    guard("memimg_restored_info", || {
        // SAFETY: checked against the handle table.
        let h = unsafe { handle_ref(r, "restored")? };
        let g = lock(&h.restored);
        let v = memimg_restore_info {
            struct_size: 0,
            elapsed_ns: u64::try_from(g.elapsed.as_nanos()).unwrap_or(u64::MAX),
            region_count: g.regions.len(),
            strategy: strategy_code(g.strategy),
            lazy_running: u32::from(g.lazy.is_some()),
        };
        // SAFETY: the caller's struct, checked by write_out.
        unsafe { write_out(info, v, "info") }
    })
}

/// Fills `*info` with region `index` (0 to `region_count - 1`) of those
/// the restore mapped. Its name stays valid until the handle is freed.
///
/// Errors: `MEMIMG_E_OUT_OF_RANGE` past the last region.
#[no_mangle]
pub unsafe extern "C" fn memimg_restored_region(
    r: *const memimg_restored,
    index: usize,
    info: *mut memimg_region_info,
) -> memimg_status {
    guard("memimg_restored_region", || {
        // SAFETY: checked against the handle table.
        let h = unsafe { handle_ref(r, "restored")? };
        let g = lock(&h.restored);
        let ri = args::nth(&g.regions, index, "region")?;
        let v = crate::image::region_info(u32::try_from(index).unwrap_or(u32::MAX), ri, 0, 0);
        // The name points into the Restored, which lives as long as the
        // handle and is never changed.
        // SAFETY: the caller's struct, checked by write_out.
        unsafe { write_out(info, v, "info") }
    })
}

/// Starts filling every page of a lazy restore not yet touched, in the
/// background (faults are still served first). Does nothing for a restore
/// that is not lazy, or whose handler has finished.
#[no_mangle]
pub unsafe extern "C" fn memimg_restored_prefetch(r: *const memimg_restored) -> memimg_status {
    guard("memimg_restored_prefetch", || {
        // SAFETY: checked against the handle table.
        let h = unsafe { handle_ref(r, "restored")? };
        if let Some(l) = &lock(&h.restored).lazy {
            l.prefetch();
        }
        Ok(())
    })
}

fn stats_of(h: &memimg_restored, s: &LazyStats, finished: bool) -> memimg_lazy_stats {
    let error = s.error.as_ref().map_or(std::ptr::null(), |e| {
        let mut errs = lock(&h.errors);
        let c = c_string(e);
        // Keep one copy of each text; the pointer of the kept one is given.
        match errs.iter().find(|x| **x == c) {
            Some(x) => x.as_ptr(),
            None => {
                errs.push(c);
                errs.last().map_or(std::ptr::null(), |x| x.as_ptr())
            }
        }
    });
    memimg_lazy_stats {
        struct_size: 0,
        faults: s.faults,
        units_done: s.units_done,
        units_total: s.units_total,
        bytes_copied: s.bytes_copied,
        error,
        finished: u32::from(finished),
        reserved: 0,
    }
}

/// Fills `*stats` with what a lazy restore's handler has done so far (all
/// zero for a restore that was not lazy; the final figures once it has
/// finished).
#[no_mangle]
pub unsafe extern "C" fn memimg_restored_stats(
    r: *const memimg_restored,
    stats: *mut memimg_lazy_stats,
) -> memimg_status {
    guard("memimg_restored_stats", || {
        // SAFETY: checked against the handle table.
        let h = unsafe { handle_ref(r, "restored")? };
        let v = {
            let g = lock(&h.restored);
            match (&g.lazy, &*lock(&h.finished)) {
                (Some(l), _) => stats_of(h, &l.stats(), false),
                (None, Some(done)) => stats_of(h, done, true),
                (None, None) => memimg_lazy_stats::zeroed(),
            }
        };
        // SAFETY: the caller's struct, checked by write_out.
        unsafe { write_out(stats, v, "stats") }
    })
}

/// Waits until a lazy restore's handler has filled every page not yet
/// filled, stops it, and fills `*stats` (may be NULL) with the final
/// figures. After it, every page is in place and no fault is served any
/// more. Does nothing (and gives zeros) for a restore that was not lazy;
/// calling it again gives the same final figures.
#[no_mangle]
pub unsafe extern "C" fn memimg_restored_finish(
    r: *const memimg_restored,
    stats: *mut memimg_lazy_stats,
) -> memimg_status {
    guard("memimg_restored_finish", || {
        // SAFETY: checked against the handle table.
        let h = unsafe { handle_ref(r, "restored")? };
        if !stats.is_null() {
            // Check the caller's struct before the handler is stopped.
            // SAFETY: the caller's struct, checked by write_out.
            unsafe { write_out(stats, memimg_lazy_stats::zeroed(), "stats")? };
        }
        let lazy = lock(&h.restored).lazy.take();
        if let Some(l) = lazy {
            let done = l.finish();
            *lock(&h.finished) = Some(done);
        }
        let v = match &*lock(&h.finished) {
            Some(done) => stats_of(h, done, true),
            None => memimg_lazy_stats::zeroed(),
        };
        if !stats.is_null() {
            // SAFETY: checked above.
            unsafe { write_out(stats, v, "stats")? };
        }
        Ok(())
    })
}

/// Frees a restore handle. The regions stay mapped. A lazy restore's
/// handler first fills every page not yet filled (as
/// `memimg_restored_finish()`). NULL is allowed.
#[no_mangle]
pub unsafe extern "C" fn memimg_restored_free(r: *mut memimg_restored) -> memimg_status {
    // SAFETY: the handle table checks the pointer before it is freed.
    guard("memimg_restored_free", || unsafe {
        free_handle(r, "restored")
    })
}
