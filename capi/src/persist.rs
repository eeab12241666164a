//! Persist: name regions of this process's memory and write them to an
//! image, through [`memimg_capture::Persister`].

use std::ffi::c_char;

use img::{Codec, Prot, RegionKind};
use memimg_capture::{PersistOptions, Persister};

use crate::args;
use crate::error::{guard, memimg_status, Failure};
use crate::ext::{read_in, write_out, Extensible};
use crate::handle::{free_handle, give, handle_mut, Handle};
use crate::key::{memimg_key, opt_key};
use crate::types::*;

/// A region added to a persister.
#[derive(Debug, Clone)]
struct Spec {
    addr: u64,
    len: u64,
    prot: Prot,
    kind: RegionKind,
    name: String,
}

/// Builds an image of chosen regions of this process's memory. Opaque:
/// made by `memimg_persister_new()`, freed by `memimg_persister_free()`.
/// Used by one thread at a time.
pub struct memimg_persister {
    regions: Vec<Spec>,
    validation: Option<(Vec<u8>, Vec<u8>)>,
    opts: PersistOptions,
}

impl Handle for memimg_persister {
    const NAME: &'static str = "memimg_persister";
}

/// Makes an empty persister. Its defaults: codec none (so the image can be
/// restored by mmap), no key, no validation data, 512 KiB chunks, one
/// worker thread per core.
#[no_mangle]
pub unsafe extern "C" fn memimg_persister_new(out: *mut *mut memimg_persister) -> memimg_status {
    guard("memimg_persister_new", || {
        // SAFETY: out is checked by give.
        unsafe {
            give(out, || {
                Ok(memimg_persister {
                    regions: Vec::new(),
                    validation: None,
                    opts: PersistOptions::default(),
                })
            })
        }
    })
}

/// Frees a persister (the key it holds is zeroized). NULL is allowed.
#[no_mangle]
pub unsafe extern "C" fn memimg_persister_free(p: *mut memimg_persister) -> memimg_status {
    // SAFETY: the handle table checks the pointer before it is freed.
    guard("memimg_persister_free", || unsafe {
        free_handle(p, "persister")
    })
}

fn kind_of(k: memimg_region_kind) -> Option<RegionKind> {
    u8::try_from(k).ok().and_then(RegionKind::from_code)
}

/// Adds a region: `spec->len` bytes at `spec->addr` (whole pages on page
/// boundaries), to be restored with `spec->prot`. The memory is read when
/// the image is written: it must stay mapped and readable until then, and
/// nothing may write to it meanwhile.
///
/// Errors: `MEMIMG_E_INVALID_ARGUMENT` for a NULL pointer, an unknown kind
/// or protection bit, a name that is not UTF-8; `MEMIMG_E_BAD_REGION` when
/// the range is not whole pages on page boundaries. Overlaps, and memory
/// that is not mapped readable, are found when writing.
#[no_mangle]
pub unsafe extern "C" fn memimg_persister_add_region(
    p: *mut memimg_persister,
    spec: *const memimg_region_spec,
) -> memimg_status {
    guard("memimg_persister_add_region", || {
        // SAFETY: checked against the handle table; one thread at a time.
        let per = unsafe { handle_mut(p, "persister")? };
        // SAFETY: the caller's struct, checked by read_in.
        let s = unsafe { read_in(spec, "spec")? };
        let kind = kind_of(s.kind).ok_or_else(|| {
            Failure::invalid(format!("spec->kind {} is not a MEMIMG_KIND_*", s.kind))
        })?;
        let prot = u8::try_from(s.prot)
            .ok()
            .filter(|&b| b & !(Prot::READ | Prot::WRITE | Prot::EXEC) == 0)
            .map(Prot)
            .ok_or_else(|| {
                Failure::invalid(format!(
                    "spec->prot {:#x} has bits other than MEMIMG_PROT_*",
                    s.prot
                ))
            })?;
        // SAFETY: a C string by contract, or NULL.
        let name = unsafe { args::opt_utf8(s.name, "spec->name")? };
        let ps = u64::from(img::page_size());
        let bad = |why: &str| {
            Failure::argument(
                memimg_status::MEMIMG_E_BAD_REGION,
                format!("region {name} at {:#x}+{:#x}: {why}", s.addr, s.len),
            )
        };
        if s.len == 0 {
            return Err(bad("its length is 0"));
        }
        if s.addr % ps != 0 || s.len % ps != 0 {
            return Err(bad(&format!(
                "not whole {ps}-byte pages on page boundaries"
            )));
        }
        if s.addr.checked_add(s.len).is_none()
            || usize::try_from(s.addr.saturating_add(s.len)).is_err()
        {
            return Err(bad("it runs past the end of the address space"));
        }
        per.regions.push(Spec {
            addr: s.addr,
            len: s.len,
            prot,
            kind,
            name: name.to_string(),
        });
        Ok(())
    })
}

/// Sets the validation data that a restore can check (tag at most 64 bytes,
/// data at most 2048; both copied). By default there is none.
///
/// Errors: `MEMIMG_E_INVALID_ARGUMENT` for a NULL pointer with a non-zero
/// length. Over-long values are refused when writing.
#[no_mangle]
pub unsafe extern "C" fn memimg_persister_set_validation(
    p: *mut memimg_persister,
    tag: *const u8,
    tag_len: usize,
    data: *const u8,
    data_len: usize,
) -> memimg_status {
    guard("memimg_persister_set_validation", || {
        // SAFETY: checked against the handle table; one thread at a time.
        let per = unsafe { handle_mut(p, "persister")? };
        // SAFETY: the caller's buffers, of the lengths given.
        let (t, d) = unsafe {
            (
                args::bytes(tag, tag_len, "tag")?,
                args::bytes(data, data_len, "data")?,
            )
        };
        per.validation = Some((t.to_vec(), d.to_vec()));
        Ok(())
    })
}

/// Sets the codec: `MEMIMG_CODEC_NONE` (the default; `level` must be 0) or
/// `MEMIMG_CODEC_ZSTD` at `level` (1 to 22, negative levels are faster; 0
/// is level 1).
#[no_mangle]
pub unsafe extern "C" fn memimg_persister_set_codec(
    p: *mut memimg_persister,
    codec: memimg_codec,
    level: i32,
) -> memimg_status {
    guard("memimg_persister_set_codec", || {
        // SAFETY: checked against the handle table; one thread at a time.
        let per = unsafe { handle_mut(p, "persister")? };
        per.opts.codec = match (codec, level) {
            (MEMIMG_CODEC_NONE, 0) => Codec::None,
            (MEMIMG_CODEC_NONE, l) => {
                return Err(Failure::invalid(format!(
                    "codec none takes no level (got {l})"
                )))
            }
            (MEMIMG_CODEC_ZSTD, 0) => Codec::Zstd(1),
            (MEMIMG_CODEC_ZSTD, l) => format!("zstd:{l}").parse().map_err(Failure::invalid)?,
            (c, _) => {
                return Err(Failure::invalid(format!(
                    "codec {c} is not a MEMIMG_CODEC_*"
                )))
            }
        };
        Ok(())
    })
}

/// Encrypts the image under `key` (copied; the caller may free it at once),
/// or, with NULL, not. By default images are not encrypted.
#[no_mangle]
pub unsafe extern "C" fn memimg_persister_set_key(
    p: *mut memimg_persister,
    key: *const memimg_key,
) -> memimg_status {
    guard("memimg_persister_set_key", || {
        // SAFETY: checked against the handle table; one thread at a time.
        let per = unsafe { handle_mut(p, "persister")? };
        // SAFETY: NULL or checked against the handle table.
        per.opts.key = unsafe { opt_key(key, "key")? }.cloned();
        Ok(())
    })
}

/// Sets the largest chunk in bytes: a multiple of the page size up to
/// 16 MiB, checked when writing; 0 restores the default (512 KiB).
#[no_mangle]
pub unsafe extern "C" fn memimg_persister_set_chunk_size(
    p: *mut memimg_persister,
    chunk_size: u32,
) -> memimg_status {
    guard("memimg_persister_set_chunk_size", || {
        // SAFETY: checked against the handle table; one thread at a time.
        let per = unsafe { handle_mut(p, "persister")? };
        per.opts.chunk_size = (chunk_size != 0).then_some(chunk_size);
        Ok(())
    })
}

/// Sets the number of threads that compress and encrypt; 0 restores the
/// default (one per core).
#[no_mangle]
pub unsafe extern "C" fn memimg_persister_set_workers(
    p: *mut memimg_persister,
    workers: u32,
) -> memimg_status {
    guard("memimg_persister_set_workers", || {
        // SAFETY: checked against the handle table; one thread at a time.
        let per = unsafe { handle_mut(p, "persister")? };
        per.opts.workers = match workers {
            0 => PersistOptions::default().workers,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        };
        Ok(())
    })
}

/// Checks that every region is mapped readable in this process, so that
/// writing reads no unmapped memory (which would crash the program rather
/// than fail the call).
fn check_mapped(regions: &[Spec]) -> Result<(), Failure> {
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    let maps = memimg_capture::procfs::read_maps(me).map_err(|e| {
        Failure::new(
            memimg_status::MEMIMG_E_IO,
            format!("reading /proc/self/maps: {e}"),
        )
    })?;
    for r in regions {
        let end = r.addr + r.len;
        let mut at = r.addr;
        let bad = |why: String| {
            Failure::new(
                memimg_status::MEMIMG_E_BAD_REGION,
                format!("region {} at {:#x}-{end:#x}: {why}", r.name, r.addr),
            )
        };
        for m in &maps {
            if at >= end {
                break;
            }
            if m.end <= at {
                continue;
            }
            if m.start > at {
                break;
            }
            if !m.prot.read() {
                return Err(bad(format!(
                    "{at:#x}-{:#x} is not readable",
                    m.end.min(end)
                )));
            }
            at = m.end;
        }
        if at < end {
            return Err(bad(format!("{at:#x} is not mapped")));
        }
    }
    Ok(())
}

/// Writes the image to `path`, through a temporary file renamed into place
/// when complete (a failed write leaves nothing under `path`), and fills
/// `*stats` when it is not NULL. The persister can be written again.
///
/// Errors: `MEMIMG_E_BAD_REGION` when regions overlap or are not mapped
/// readable, `MEMIMG_E_IO` when the file cannot be written, and the format's
/// errors (`MEMIMG_E_INVALID_ARGUMENT` for over-long validation data or a
/// bad chunk size).
#[no_mangle]
pub unsafe extern "C" fn memimg_persister_write(
    p: *mut memimg_persister,
    path: *const c_char,
    stats: *mut memimg_write_stats,
) -> memimg_status {
    guard("memimg_persister_write", || {
        // SAFETY: checked against the handle table; one thread at a time.
        let per = unsafe { handle_mut(p, "persister")? };
        // SAFETY: a C string by contract.
        let path = unsafe { args::path(path, "path")? };
        if !stats.is_null() {
            // Check the caller's struct before anything is written.
            // SAFETY: the caller's struct, checked by write_out.
            unsafe { write_out(stats, memimg_write_stats::zeroed(), "stats")? };
        }
        check_mapped(&per.regions)?;
        let mut ps = Persister::new();
        for r in &per.regions {
            let len = usize::try_from(r.len)
                .map_err(|_| Failure::invalid(format!("region {} is too long", r.name)))?;
            // SAFETY: the caller promised (memimg_persister_add_region) that
            // the range stays mapped, readable and unwritten until the image
            // is written, and check_mapped just saw it mapped readable.
            ps = unsafe {
                ps.region_raw(
                    usize::try_from(r.addr).unwrap_or(usize::MAX) as *const u8,
                    len,
                    r.prot,
                    r.kind,
                    &r.name,
                )
            };
        }
        if let Some((t, d)) = &per.validation {
            ps = ps.validation(t.clone(), d.clone());
        }
        let st = ps.write_to_path(path, &per.opts)?;
        if !stats.is_null() {
            let out = memimg_write_stats {
                struct_size: 0,
                regions: st.regions,
                chunks: st.chunks,
                data_bytes: st.data_bytes,
                stored_bytes: st.stored_bytes,
                zero_pages: st.zero_pages,
                absent_pages: st.absent_pages,
                file_len: st.file_len,
                image_id: st.image_id,
            };
            // SAFETY: checked above.
            unsafe { write_out(stats, out, "stats")? };
        }
        Ok(())
    })
}
