//! Read: open an image, its header, regions and extents, and `read_at`.

use std::ffi::{c_char, c_void};

use img::{ChunkCodec, Endian, ExtentKind, Image, RegionInfo};

use crate::args;
use crate::error::{guard, memimg_status};
use crate::ext::write_out;
use crate::handle::{free_handle, give, handle_ref, Handle};
use crate::key::{memimg_key, opt_key};
use crate::types::*;

/// An open, validated image. Opaque: made by `memimg_image_open()`, freed
/// by `memimg_image_free()`. Reading functions may be called from several
/// threads at once.
pub struct memimg_image {
    img: Image,
}

impl Handle for memimg_image {
    const NAME: &'static str = "memimg_image";
}

/// Opens the image at `path`, unlocking it with `key` when it is encrypted
/// (`key` may be NULL; it is copied). Any file gives an image or an error
/// naming what is wrong and where; opening never crashes on bad bytes.
/// An encrypted image opened without a key gives its header only.
///
/// Errors: `MEMIMG_E_IO` (a missing file ...), `MEMIMG_E_NOT_AN_IMAGE`,
/// `MEMIMG_E_UNSUPPORTED`, damage (`MEMIMG_E_TRUNCATED`,
/// `MEMIMG_E_CHECKSUM` ...), `MEMIMG_E_WRONG_KEY`, `MEMIMG_E_NOT_ENCRYPTED`
/// (a key given for a plain image).
#[no_mangle]
pub unsafe extern "C" fn memimg_image_open(
    path: *const c_char,
    key: *const memimg_key,
    out: *mut *mut memimg_image,
) -> memimg_status {
    guard("memimg_image_open", || {
        // SAFETY: out is checked by give; the rest by contract and checks.
        unsafe {
            give(out, || {
                let path = args::path(path, "path")?;
                let key = opt_key(key, "key")?;
                Ok(memimg_image {
                    img: Image::open_with_key(path, key)?,
                })
            })
        }
    })
}

/// Frees an image. NULL is allowed.
#[no_mangle]
pub unsafe extern "C" fn memimg_image_free(img: *mut memimg_image) -> memimg_status {
    // SAFETY: the handle table checks the pointer before it is freed.
    guard("memimg_image_free", || unsafe { free_handle(img, "img") })
}

fn bytes_of(b: &[u8]) -> (*const u8, usize) {
    if b.is_empty() {
        (std::ptr::null(), 0)
    } else {
        (b.as_ptr(), b.len())
    }
}

/// Fills `*info` with the image's header facts.
#[no_mangle]
pub unsafe extern "C" fn memimg_image_header(
    img: *const memimg_image,
    info: *mut memimg_header_info,
) -> memimg_status {
    guard("memimg_image_header", || {
        // SAFETY: checked against the handle table.
        let im = &unsafe { handle_ref(img, "img")? }.img;
        let h = im.header();
        let mut flags = 0;
        if im.is_encrypted() {
            flags |= MEMIMG_HEADER_ENCRYPTED;
        }
        if im.is_unlocked() {
            flags |= MEMIMG_HEADER_UNLOCKED;
        }
        let empty: &[u8] = &[];
        let (tag, data) = match &h.validation {
            Some(v) => {
                flags |= MEMIMG_HEADER_HAS_VALIDATION;
                (&v.tag[..], &v.data[..])
            }
            None => (empty, empty),
        };
        let p = h.process.as_ref();
        let pid = p.and_then(|p| p.pid);
        if p.is_some() {
            flags |= MEMIMG_HEADER_HAS_PROCESS;
        }
        if pid.is_some() {
            flags |= MEMIMG_HEADER_HAS_PID;
        }
        let field = |f: fn(&img::ProcessFacts) -> &[u8]| {
            p.map_or((std::ptr::null(), 0), |p| bytes_of(f(p)))
        };
        let (producer, producer_len) = bytes_of(h.producer.as_bytes());
        let (validation_tag, validation_tag_len) = bytes_of(tag);
        let (validation_data, validation_data_len) = bytes_of(data);
        let (comm, comm_len) = field(|p| &p.comm);
        let (cmdline, cmdline_len) = field(|p| &p.cmdline);
        let (exe, exe_len) = field(|p| &p.exe);
        let (build_id, build_id_len) = field(|p| &p.build_id);
        let (kernel_release, kernel_release_len) = field(|p| &p.kernel_release);
        let v = memimg_header_info {
            struct_size: 0,
            incompat_features: h.features.incompat,
            ro_compat_features: h.features.ro_compat,
            compat_features: h.features.compat,
            created_secs: h.created_secs,
            file_len: im.file_len(),
            chunk_count: im.chunk_locs().len() as u64,
            image_id: h.image_id,
            producer,
            producer_len,
            validation_tag,
            validation_tag_len,
            validation_data,
            validation_data_len,
            comm,
            comm_len,
            cmdline,
            cmdline_len,
            exe,
            exe_len,
            build_id,
            build_id_len,
            kernel_release,
            kernel_release_len,
            version_major: u32::from(h.version.0),
            version_minor: u32::from(h.version.1),
            page_size: h.page_size,
            chunk_size: h.chunk_size,
            created_nanos: h.created_nanos,
            machine_arch: u32::from(h.machine.arch),
            machine_endian: match h.machine.endian {
                Endian::Little => 1,
                Endian::Big => 2,
            },
            machine_ptr_bytes: u32::from(h.machine.ptr_bytes),
            machine_page_size: h.machine.page_size,
            pid: pid.unwrap_or(0),
            flags,
            reserved: 0,
        };
        // SAFETY: the caller's struct, checked by write_out.
        unsafe { write_out(info, v, "info") }
    })
}

/// The C view of a region; its name points into `r`.
pub(crate) fn region_info(
    index: u32,
    r: &RegionInfo,
    first_extent: u32,
    extent_count: u32,
) -> memimg_region_info {
    let (name, name_len) = bytes_of(&r.name);
    memimg_region_info {
        struct_size: 0,
        start: r.start,
        len: r.len,
        file_offset: r.file_offset,
        dev: r.dev,
        inode: r.inode,
        name,
        name_len,
        index,
        kind: u32::from(r.kind.code()),
        prot: u32::from(r.prot.0),
        shared: u32::from(r.shared),
        first_extent,
        extent_count,
    }
}

/// Stores the number of regions in `*count`.
///
/// Errors: `MEMIMG_E_KEY_REQUIRED` for an encrypted image opened without a
/// key.
#[no_mangle]
pub unsafe extern "C" fn memimg_image_region_count(
    img: *const memimg_image,
    count: *mut usize,
) -> memimg_status {
    guard("memimg_image_region_count", || {
        // SAFETY: checked against the handle table.
        let im = &unsafe { handle_ref(img, "img")? }.img;
        let n = im.regions()?.len();
        // SAFETY: checked for NULL by put; writable by contract.
        unsafe { args::put(count, n, "count") }
    })
}

/// Fills `*info` with region `index` (0 to count - 1, in address order).
/// Its extents are `first_extent` to `first_extent + extent_count - 1`.
///
/// Errors: `MEMIMG_E_OUT_OF_RANGE`, `MEMIMG_E_KEY_REQUIRED`.
#[no_mangle]
pub unsafe extern "C" fn memimg_image_region(
    img: *const memimg_image,
    index: usize,
    info: *mut memimg_region_info,
) -> memimg_status {
    guard("memimg_image_region", || {
        // SAFETY: checked against the handle table.
        let im = &unsafe { handle_ref(img, "img")? }.img;
        let r = args::nth(im.regions()?, index, "region")?;
        let v = region_info(r.index, &r.info, r.first_extent, r.extent_count);
        // SAFETY: the caller's struct, checked by write_out.
        unsafe { write_out(info, v, "info") }
    })
}

/// Stores the number of extents (of all regions) in `*count`.
///
/// Errors: `MEMIMG_E_KEY_REQUIRED`.
#[no_mangle]
pub unsafe extern "C" fn memimg_image_extent_count(
    img: *const memimg_image,
    count: *mut usize,
) -> memimg_status {
    guard("memimg_image_extent_count", || {
        // SAFETY: checked against the handle table.
        let im = &unsafe { handle_ref(img, "img")? }.img;
        let n = im.extents()?.len();
        // SAFETY: checked for NULL by put; writable by contract.
        unsafe { args::put(count, n, "count") }
    })
}

/// Fills `*info` with extent `index` (0 to count - 1, in address order).
///
/// Errors: `MEMIMG_E_OUT_OF_RANGE`, `MEMIMG_E_KEY_REQUIRED`.
#[no_mangle]
pub unsafe extern "C" fn memimg_image_extent(
    img: *const memimg_image,
    index: usize,
    info: *mut memimg_extent_info,
) -> memimg_status {
    guard("memimg_image_extent", || {
        // SAFETY: checked against the handle table.
        let im = &unsafe { handle_ref(img, "img")? }.img;
        let e = args::nth(im.extents()?, index, "extent")?;
        let v = memimg_extent_info {
            struct_size: 0,
            addr: e.addr,
            len: e.len(im.header().page_size),
            chunk: e.chunk,
            raw_checksum: e.raw_checksum.to_le_bytes(),
            page_count: e.page_count,
            region: e.region,
            kind: match e.kind {
                ExtentKind::Data => MEMIMG_EXTENT_DATA,
                ExtentKind::Zero => MEMIMG_EXTENT_ZERO,
                ExtentKind::Absent => MEMIMG_EXTENT_ABSENT,
                ExtentKind::InParent => MEMIMG_EXTENT_IN_PARENT,
            },
            codec: match e.codec {
                ChunkCodec::None => MEMIMG_CODEC_NONE,
                ChunkCodec::Zstd => MEMIMG_CODEC_ZSTD,
            },
        };
        // SAFETY: the caller's struct, checked by write_out.
        unsafe { write_out(info, v, "info") }
    })
}

/// Copies the `len` bytes at virtual address `addr` of the image into
/// `buf`, decoding only the chunks they touch. Zero pages read as zeros.
///
/// Errors: `MEMIMG_E_NOT_CAPTURED` (the message names the gap) when part of
/// the range was not captured, damage when a chunk is damaged,
/// `MEMIMG_E_KEY_REQUIRED`. On error the content of `buf` is unspecified.
#[no_mangle]
pub unsafe extern "C" fn memimg_image_read_at(
    img: *const memimg_image,
    addr: u64,
    buf: *mut c_void,
    len: usize,
) -> memimg_status {
    guard("memimg_image_read_at", || {
        // SAFETY: checked against the handle table.
        let im = &unsafe { handle_ref(img, "img")? }.img;
        // SAFETY: the caller's buffer of len bytes.
        let b = unsafe { args::bytes_mut(buf.cast::<u8>(), len, "buf")? };
        im.read_at(addr, b)?;
        Ok(())
    })
}

// The header promises that an image may be read from several threads.
const _: fn() = || {
    fn sync<T: Sync>() {}
    sync::<memimg_image>();
};
