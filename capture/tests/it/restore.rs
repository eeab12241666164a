//! Persist and restore: each strategy restores in a fresh process and every
//! byte is compared; failures give clear errors and map nothing.

use std::path::Path;

use memimg::{Codec, Key, RegionKind};
use memimg_capture::{restore, PersistOptions, Persister, RestoreError, RestoreOptions, Strategy};

use crate::common;
use crate::lazy_support::{lazy_skip, limit, run_limited};

const LEN: usize = 32 << 20;
const TAG: &[u8] = b"memimg-test";
const DATA: &[u8] = b"schema 7";

/// Fills a region with a known mix: untouched (zero) pages, random pages
/// and text pages that name their own address.
fn fill(base: *mut u8, len: usize, seed: u64) {
    for p in 0..len / 4096 {
        // SAFETY: p * 4096 + 4096 ≤ len, inside the mapping.
        let page = unsafe { std::slice::from_raw_parts_mut(base.add(p * 4096), 4096) };
        match p % 4 {
            0 => {}
            1 => common::fill_random(page, seed ^ p as u64),
            _ => {
                common::fill_text(page);
                page[..8].copy_from_slice(&(base as u64 + p as u64 * 4096).to_le_bytes());
            }
        }
    }
}

fn map_at(addr: u64, len: usize) -> *mut u8 {
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping.
    let p = unsafe {
        libc::mmap(
            addr as usize as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    assert_eq!(p as u64, addr, "could not map the test region at {addr:#x}");
    p.cast()
}

/// Persists a filled region at `addr` into `path`; the region stays mapped
/// in this process when `keep`.
fn persist(addr: u64, path: &Path, opts: &PersistOptions, keep: bool) {
    let p = map_at(addr, LEN);
    fill(p, LEN, addr);
    // SAFETY: the mapping was just made, LEN bytes, and only read here.
    let data = unsafe { std::slice::from_raw_parts(p, LEN) };
    let stats = Persister::new()
        .region(data, RegionKind::Heap, "test-arena")
        .validation(TAG, DATA)
        .write_to_path(path, opts)
        .unwrap();
    assert_eq!(
        stats.zero_pages,
        (LEN / 4096 / 4) as u64,
        "untouched pages should be zero extents"
    );
    if !keep {
        // SAFETY: our own mapping, no longer used.
        unsafe { libc::munmap(p.cast(), LEN) };
    }
}

/// The child side: restore and compare every byte.
pub fn child_role(role: &str) -> bool {
    if role != "restore" {
        return crate::lazy_events::child_role(role);
    }
    let var = |k: &str| std::env::var(k).unwrap();
    let addr = u64::from_str_radix(&var("ADDR"), 16).unwrap();
    let strategy: Strategy = var("STRATEGY").parse().unwrap();
    let key = std::env::var("KEY").ok().map(|h| {
        let mut k = [0u8; 32];
        for (i, b) in k.iter_mut().enumerate() {
            *b = u8::from_str_radix(&h[i * 2..i * 2 + 2], 16).unwrap();
        }
        Key::raw(k)
    });
    let opts = RestoreOptions {
        strategy,
        expect_validation: Some((TAG.to_vec(), DATA.to_vec())),
        key,
        ..RestoreOptions::default()
    };
    let restored = restore(Path::new(&var("IMG")), &opts).unwrap();
    let want_strategy: Strategy = var("WANT").parse().unwrap();
    assert_eq!(restored.strategy, want_strategy);
    println!("restore returned in {:?}", restored.elapsed);
    let mut want = vec![0u8; LEN];
    fill(want.as_mut_ptr(), LEN, addr);
    // The text pages name their own address: patch them for the target.
    for p in (0..LEN / 4096).filter(|p| p % 4 >= 2) {
        want[p * 4096..p * 4096 + 8].copy_from_slice(&(addr + p as u64 * 4096).to_le_bytes());
    }
    if std::env::var("PREFETCH").is_ok() {
        let h = restored.lazy.as_ref().unwrap();
        h.prefetch();
        while h.stats().units_done < h.stats().units_total {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    // SAFETY: restore mapped LEN readable bytes at addr.
    let got = unsafe { std::slice::from_raw_parts(addr as usize as *const u8, LEN) };
    for p in 0..LEN / 4096 {
        assert!(
            got[p * 4096..(p + 1) * 4096] == want[p * 4096..(p + 1) * 4096],
            "page {p} differs after restore"
        );
    }
    // The region is writable again, as recorded.
    // SAFETY: the page is mapped read-write by restore.
    unsafe { *(addr as usize as *mut u8) = 1 };
    if let Some(h) = restored.lazy.as_ref() {
        let s = h.stats();
        println!("lazy stats {s:?}");
        assert!(s.error.is_none());
        if std::env::var("PREFETCH").is_err() {
            assert!(s.faults > 0, "no faults served");
        }
    }
    println!("RESTORED-OK strategy={}", restored.strategy);
    true
}

fn roundtrip(slot: u64, opts: PersistOptions, strategy: Strategy, want: Strategy, prefetch: bool) {
    let addr = 0x3000_0000_0000 + slot * 0x1_0000_0000;
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("r.img");
    persist(addr, &img, &opts, false);
    let mut env = vec![
        ("IMG", img.display().to_string()),
        ("ADDR", format!("{addr:x}")),
        ("STRATEGY", strategy.to_string()),
        ("WANT", want.to_string()),
    ];
    if let Some(k) = opts.key.as_ref().and_then(|k| k.raw_bytes()) {
        env.push(("KEY", memimg::hex(k)));
    }
    if prefetch {
        env.push(("PREFETCH", "1".into()));
    }
    // A thread left waiting for a page fails the test at the time limit.
    let o = run_limited("restore", &env, limit());
    assert!(
        o.ok() && o.out.contains(&format!("RESTORED-OK strategy={want}")),
        "child failed:\n{}",
        o.out
    );
}

#[test]
fn restore_mmap() {
    roundtrip(
        1,
        PersistOptions::default(),
        Strategy::Mmap,
        Strategy::Mmap,
        false,
    );
}

#[test]
fn restore_auto_picks_mmap_then_eager() {
    roundtrip(
        2,
        PersistOptions::default(),
        Strategy::Auto,
        Strategy::Mmap,
        false,
    );
    let z = PersistOptions {
        codec: Codec::Zstd(1),
        ..PersistOptions::default()
    };
    roundtrip(3, z, Strategy::Auto, Strategy::Eager, false);
}

#[test]
fn restore_eager_encrypted_compressed() {
    let o = PersistOptions {
        codec: Codec::Zstd(1),
        key: Some(Key::generate().unwrap()),
        ..PersistOptions::default()
    };
    roundtrip(4, o, Strategy::Eager, Strategy::Eager, false);
}

#[test]
fn restore_lazy_raw() {
    if lazy_skip("restore_lazy_raw") {
        return;
    }
    roundtrip(
        5,
        PersistOptions::default(),
        Strategy::Lazy,
        Strategy::Lazy,
        false,
    );
}

#[test]
fn restore_lazy_encrypted_compressed() {
    if lazy_skip("restore_lazy_encrypted_compressed") {
        return;
    }
    let o = PersistOptions {
        codec: Codec::Zstd(1),
        key: Some(Key::generate().unwrap()),
        ..PersistOptions::default()
    };
    roundtrip(6, o.clone(), Strategy::Lazy, Strategy::Lazy, false);
    roundtrip(7, o, Strategy::Lazy, Strategy::Lazy, true);
}

#[test]
fn address_in_use_is_refused() {
    let addr = 0x3000_0000_0000 + 8 * 0x1_0000_0000;
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("r.img");
    // Still mapped here: restoring into this process must refuse.
    persist(addr, &img, &PersistOptions::default(), true);
    // SAFETY: reading our own mapping.
    let before = unsafe { *((addr + 4096) as usize as *const u64) };
    let e = restore(&img, &RestoreOptions::default()).unwrap_err();
    assert!(
        matches!(e, RestoreError::AddressInUse { ref range, .. } if range.start == addr),
        "{e}"
    );
    assert!(e.to_string().contains(&format!("{addr:#x}")), "{e}");
    assert!(e.to_string().contains("already in use"), "{e}");
    // SAFETY: addr + 4096 is inside our own read-write mapping made by
    // persist (kept), 8-byte aligned; restore refused and left it alone.
    assert_eq!(before, unsafe { *((addr + 4096) as usize as *const u64) });
    // SAFETY: our own mapping.
    unsafe { libc::munmap(addr as usize as *mut libc::c_void, LEN) };
}

#[test]
fn validation_mismatch_names_the_field() {
    let addr = 0x3000_0000_0000 + 9 * 0x1_0000_0000;
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("r.img");
    persist(addr, &img, &PersistOptions::default(), false);
    let o = RestoreOptions {
        expect_validation: Some((TAG.to_vec(), b"schema 8".to_vec())),
        ..RestoreOptions::default()
    };
    let e = restore(&img, &o).unwrap_err();
    assert!(
        matches!(e, RestoreError::ValidationMismatch { field: "data", .. }),
        "{e}"
    );
    assert!(
        e.to_string().contains("schema 7") && e.to_string().contains("schema 8"),
        "{e}"
    );
    let o = RestoreOptions {
        expect_validation: Some((b"other".to_vec(), DATA.to_vec())),
        ..RestoreOptions::default()
    };
    let e = restore(&img, &o).unwrap_err();
    assert!(
        matches!(e, RestoreError::ValidationMismatch { field: "tag", .. }),
        "{e}"
    );
    // Nothing was mapped: the range is still free.
    let p = map_at(addr, LEN);
    // SAFETY: our own mapping.
    unsafe { libc::munmap(p.cast(), LEN) };
}

#[test]
fn truncated_image_is_refused() {
    let addr = 0x3000_0000_0000 + 10 * 0x1_0000_0000;
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("r.img");
    persist(addr, &img, &PersistOptions::default(), false);
    let len = std::fs::metadata(&img).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.set_len(len - 1000).unwrap();
    let e = restore(&img, &RestoreOptions::default()).unwrap_err();
    assert!(matches!(e, RestoreError::Format(_)), "{e}");
    let p = map_at(addr, LEN);
    // SAFETY: our own mapping.
    unsafe { libc::munmap(p.cast(), LEN) };
}

#[test]
fn mmap_of_compressed_image_is_refused() {
    let addr = 0x3000_0000_0000 + 11 * 0x1_0000_0000;
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("r.img");
    persist(
        addr,
        &img,
        &PersistOptions {
            codec: Codec::Zstd(1),
            ..PersistOptions::default()
        },
        false,
    );
    let o = RestoreOptions {
        strategy: Strategy::Mmap,
        ..RestoreOptions::default()
    };
    let e = restore(&img, &o).unwrap_err();
    assert!(
        matches!(
            e,
            RestoreError::StrategyUnavailable {
                strategy: "mmap",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("compressed"), "{e}");
}

#[test]
fn persist_refuses_unaligned_regions() {
    let v = vec![7u8; 3 * 4096];
    let off = (4096 - v.as_ptr() as usize % 4096) % 4096 + 1; // never page-aligned
    let e = Persister::new()
        .region(&v[off..off + 4096], RegionKind::Heap, "odd")
        .write_to(Vec::new(), &PersistOptions::default())
        .unwrap_err();
    assert!(
        matches!(e, memimg_capture::PersistError::BadRegion { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("region odd"), "{e}");
}

/// An incremental image (format 1.1) takes pages from its parent, which
/// restore does not read: it is refused with the error naming the parent
/// it needs, before anything is mapped, never restored with those pages
/// as zeros.
#[test]
fn a_child_image_is_refused_naming_its_parent() {
    let addr = 0x3000_0000_0000 + 40 * 0x1_0000_0000;
    let dir = tempfile::tempdir().unwrap();
    let info = || memimg::RegionInfo::new(addr, 4 * 4096).kind(RegionKind::Heap);
    let opts = || {
        memimg::WriterOptions::new()
            .page_size(4096)
            .chunk_size(4096)
            .workers(0)
    };
    let mut data = vec![7u8; 4 * 4096];
    let mut w = memimg::Writer::new(Vec::new(), opts()).unwrap();
    w.add_region(info(), &data).unwrap();
    let parent = memimg::Image::from_bytes(w.finish().unwrap().0, None).unwrap();
    let parent = memimg::Chain::single(parent);
    data[4096] = 8;
    let mut w = memimg::Writer::new(Vec::new(), opts().parent_of(parent.image()).unwrap()).unwrap();
    w.add_region_against(info(), &data, &parent).unwrap();
    let child = dir.path().join("child.img");
    std::fs::write(&child, w.finish().unwrap().0).unwrap();
    let e = restore(&child, &RestoreOptions::default()).unwrap_err();
    assert!(
        matches!(&e, RestoreError::Format(f) if f.kind() == memimg::ErrorKind::ParentRequired),
        "{e}"
    );
    // Nothing was mapped: the range is still free.
    let p = map_at(addr, 4 * 4096);
    // SAFETY: our own mapping.
    unsafe { libc::munmap(p.cast(), 4 * 4096) };
}
