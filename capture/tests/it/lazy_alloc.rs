//! A real allocator workload in a lazily restored heap.
//!
//! This test binary's global allocator serves the threads that opt in from
//! an arena at a fixed address whose free lists live in the arena itself,
//! and gives memory back the way real allocators do: a freed block of two
//! pages or more is discarded with `MADV_DONTNEED` (all but its first page,
//! which holds the free-list link), and a large block that grows moves with
//! `mremap`, as glibc's `realloc` does. Other threads (the test harness, the
//! restore's handler thread) use the system allocator.
//!
//! One process builds a heap of hash maps, vectors, strings and B-trees and
//! persists the arena (zstd, encrypted). Two twins restore it, eagerly and
//! lazily, and run the same allocating and freeing workload for a few
//! seconds while pages are still arriving (the prefetch starts half way),
//! check every value, and compare digests.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use memimg::{Codec, Prot, RegionKind};
use memimg_capture::{restore, PersistOptions, Persister, RestoreOptions, Strategy};

use crate::lazy_support::{self as ls, key_from_env, lazy_skip, run_limited, signame, stat};

const ARENA: u64 = 0x3900_0000_0000;
const ARENA_LEN: u64 = 1 << 30;
const MAGIC: u64 = 0x6172_656e_6121_0001;
const PAGE: usize = 4096;
/// Size classes up to 2 KiB, then power-of-two page counts up to 8 MiB.
const SMALL: usize = 8;
const LARGE: usize = 12;
/// Blocks of this many pages or more grow with mremap.
const MOVE_PAGES: usize = 16;

thread_local! {
    /// Whether this thread allocates from the arena.
    static ON: Cell<bool> = const { Cell::new(false) };
}

fn on() -> bool {
    ON.try_with(Cell::get).unwrap_or(false)
}

fn in_arena(p: *mut u8) -> bool {
    (ARENA..ARENA + ARENA_LEN).contains(&(p as u64))
}

/// The arena's first bytes: everything the allocator knows lives here, so
/// that it is persisted and restored with the blocks. Atomics (plain words
/// in memory) so that it is only ever shared; the lock orders its users.
#[repr(C)]
struct Head {
    magic: AtomicU64,
    lock: AtomicU32,
    bump: AtomicU64,
    small: [AtomicU64; SMALL],
    large: [AtomicU64; LARGE],
    root: AtomicU64,
}

fn head() -> &'static Head {
    // SAFETY: the arena is mapped at ARENA, read-write, on every thread
    // that allocates from it (ON is set only after it is), for the rest of
    // the process; Head is atomics only, valid for any bytes.
    unsafe { &*(ARENA as usize as *const Head) }
}

/// A block class: (is small, index, bytes).
fn class(size: usize, align: usize) -> (bool, usize, usize) {
    let size = size.max(align).max(16);
    if size <= 2048 {
        let c = size.next_power_of_two();
        return (true, c.trailing_zeros() as usize - 4, c);
    }
    let pages = size.div_ceil(PAGE).next_power_of_two();
    (false, pages.trailing_zeros() as usize, pages * PAGE)
}

fn lock(h: &Head) {
    while h
        .lock
        .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        std::hint::spin_loop();
    }
}

fn unlock(h: &Head) {
    h.lock.store(0, Ordering::Release);
}

fn list(h: &Head, small: bool, idx: usize) -> Option<&AtomicU64> {
    if small {
        h.small.get(idx)
    } else {
        h.large.get(idx)
    }
}

/// A block of the class; whether it is fresh (never used: zeros).
fn take_block(small: bool, idx: usize, bytes: usize) -> (*mut u8, bool) {
    let h = head();
    lock(h);
    let free = list(h, small, idx).filter(|l| l.load(Ordering::Relaxed) != 0);
    let (p, fresh) = match free {
        Some(l) => {
            let p = l.load(Ordering::Relaxed);
            // SAFETY: a free block's first word holds the next free block.
            l.store(unsafe { *(p as usize as *const u64) }, Ordering::Relaxed);
            (p, false)
        }
        None => {
            let align = bytes.min(PAGE) as u64;
            let p = h.bump.load(Ordering::Relaxed).next_multiple_of(align);
            h.bump.store(p + bytes as u64, Ordering::Relaxed);
            assert!(p + bytes as u64 <= ARENA + ARENA_LEN, "arena full");
            (p, true)
        }
    };
    unlock(h);
    (p as usize as *mut u8, fresh)
}

fn madvise(p: u64, len: usize, advice: i32) {
    // SAFETY: a range of a free block of the arena, which nothing uses.
    unsafe { libc::madvise(p as usize as *mut libc::c_void, len, advice) };
}

fn give_back(p: *mut u8, small: bool, idx: usize, bytes: usize) {
    let a = p as u64;
    if !small && bytes >= 2 * PAGE {
        // Like jemalloc or glibc's trim: the pages go back to the kernel.
        madvise(a + PAGE as u64, bytes - PAGE, libc::MADV_DONTNEED);
    }
    let h = head();
    let Some(l) = list(h, small, idx) else {
        // Too large to keep: discarded and left.
        madvise(a, bytes, libc::MADV_DONTNEED);
        return;
    };
    lock(h);
    // SAFETY: p is a free block of at least 16 bytes, ours now.
    unsafe { *(p as *mut u64) = l.load(Ordering::Relaxed) };
    l.store(a, Ordering::Relaxed);
    unlock(h);
}

/// Grows a large block by moving its pages with mremap onto a new block,
/// then maps the old place afresh and frees it. None if mremap fails.
fn grow_by_mremap(
    p: *mut u8,
    old: (bool, usize, usize),
    new: (bool, usize, usize),
) -> Option<*mut u8> {
    let (q, _) = take_block(new.0, new.1, new.2);
    // SAFETY: moves the pages of block p (ours, one mapping) onto block q
    // (just taken, ours): both lie in the arena.
    let r = unsafe {
        libc::mremap(
            p.cast(),
            old.2,
            new.2,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            q.cast::<libc::c_void>(),
        )
    };
    if r != q.cast() {
        give_back(q, new.0, new.1, new.2);
        return None;
    }
    // SAFETY: p's range is a hole of the arena now; map it again.
    let m = unsafe {
        libc::mmap(
            p.cast(),
            old.2,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    assert_eq!(m, p.cast(), "remapping a hole of the arena");
    give_back(p, old.0, old.1, old.2);
    Some(q)
}

struct ArenaAlloc;

#[global_allocator]
static GLOBAL: ArenaAlloc = ArenaAlloc;

// SAFETY: blocks of the arena are handed out once until freed, large enough
// and aligned for their layout (classes are powers of two carved on their
// own alignment, pages past 2 KiB); everything else is the system's.
unsafe impl GlobalAlloc for ArenaAlloc {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if on() {
            let (s, i, b) = class(l.size(), l.align());
            take_block(s, i, b).0
        } else {
            // SAFETY: forwarded with the caller's layout.
            unsafe { System.alloc(l) }
        }
    }

    /// Like jemalloc after a purge, or glibc's calloc on fresh memory: the
    /// pages a freed block gave back with MADV_DONTNEED read zeros, so only
    /// its first page (the free-list link) is cleared.
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        if !on() {
            // SAFETY: forwarded with the caller's layout.
            return unsafe { System.alloc_zeroed(l) };
        }
        let (s, i, b) = class(l.size(), l.align());
        let (p, fresh) = take_block(s, i, b);
        let clear = match (fresh, s, i < LARGE) {
            (true, _, _) => 0,
            (false, true, _) => b,
            (false, false, true) => PAGE.min(b),
            (false, false, false) => b,
        };
        // SAFETY: p is a block of b >= clear bytes, ours now.
        unsafe { std::ptr::write_bytes(p, 0, clear) };
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        if in_arena(p) {
            let (s, i, b) = class(l.size(), l.align());
            give_back(p, s, i, b);
        } else {
            // SAFETY: p came from System with layout l.
            unsafe { System.dealloc(p, l) }
        }
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        if !in_arena(p) && !on() {
            // SAFETY: p came from System with layout l.
            return unsafe { System.realloc(p, l, new_size) };
        }
        let old = class(l.size(), l.align());
        let new = class(new_size, l.align());
        if in_arena(p) && old == new {
            return p;
        }
        if in_arena(p) && !old.0 && !new.0 && new.2 > old.2 && old.2 >= MOVE_PAGES * PAGE {
            if let Some(q) = grow_by_mremap(p, old, new) {
                return q;
            }
        }
        // SAFETY: new_size and l.align() come from a valid layout.
        let nl = unsafe { Layout::from_size_align_unchecked(new_size, l.align()) };
        // SAFETY: as GlobalAlloc::alloc.
        let q = unsafe { self.alloc(nl) };
        if !q.is_null() {
            // SAFETY: both blocks hold at least the smaller size.
            unsafe { std::ptr::copy_nonoverlapping(p, q, l.size().min(new_size)) };
            // SAFETY: p was allocated with l.
            unsafe { self.dealloc(p, l) };
        }
        q
    }
}

/// What the workload keeps in the arena.
struct Root {
    map: HashMap<u64, Vec<u64>>,
    names: Vec<String>,
    tree: BTreeMap<u64, Box<[u8]>>,
    /// Zeroed vectors (from `alloc_zeroed`) with every 1000th element set.
    sparse: HashMap<u64, Vec<u64>>,
}

fn value(k: u64, ver: u64, i: usize) -> u64 {
    let mut x =
        k.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ ver.wrapping_mul(0xbf58_476d_1ce4_e5b9) ^ i as u64;
    x ^= x >> 31;
    x.wrapping_mul(0x94d0_49bb_1331_11eb)
}

fn make_vec(k: u64, ver: u64, len: usize) -> Vec<u64> {
    let mut v = Vec::with_capacity(len);
    v.push(ver);
    for i in 1..len {
        v.push(value(k, ver, i));
    }
    v
}

fn check_vec(k: u64, v: &[u64]) {
    let ver = v[0];
    for (i, &x) in v.iter().enumerate().skip(1) {
        assert_eq!(
            x,
            value(k, ver, i),
            "map[{k}][{i}] (version {ver}, at {:p}) is wrong",
            &v[i]
        );
    }
}

fn make_sparse(k: u64, ver: u64, len: usize) -> Vec<u64> {
    let mut v = vec![0u64; len];
    v[0] = ver;
    for i in (1000..len).step_by(1000) {
        v[i] = value(k, ver, i);
    }
    v
}

fn check_sparse(k: u64, v: &[u64]) {
    let ver = v[0];
    for (i, &x) in v.iter().enumerate().skip(1) {
        let want = if i % 1000 == 0 { value(k, ver, i) } else { 0 };
        assert_eq!(
            x, want,
            "sparse[{k}][{i}] (version {ver}, at {:p}) is wrong: a page given back with MADV_DONTNEED does not read zeros",
            &v[i]
        );
    }
}

fn name(j: u64) -> String {
    format!("{j:08}-").repeat(j as usize % 13 + 1)
}

fn check_name(s: &str) {
    let j: u64 = s[..8].parse().unwrap_or(u64::MAX);
    assert_eq!(s, name(j), "a name is wrong at {:p}", s.as_ptr());
}

fn blob(k: u64, ver: u64, len: usize) -> Box<[u8]> {
    let mut b = vec![0u8; len.max(8)];
    b[..8].copy_from_slice(&ver.to_le_bytes());
    for (i, x) in b.iter_mut().enumerate().skip(8) {
        *x = value(k, ver, i) as u8;
    }
    b.into_boxed_slice()
}

fn check_blob(k: u64, b: &[u8]) {
    let ver = u64::from_le_bytes(b[..8].try_into().unwrap());
    for (i, &x) in b.iter().enumerate().skip(8) {
        assert_eq!(
            x,
            value(k, ver, i) as u8,
            "tree[{k}][{i}] is wrong at {:p}",
            &b[i]
        );
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A vector length: mostly small, now and then 64 KiB to 1 MiB.
    fn len(&mut self) -> usize {
        if self.below(40) == 0 {
            8192 + self.below(120_000) as usize
        } else {
            1 + self.below(600) as usize
        }
    }
}

fn map_arena_rest(from: u64) {
    let len = (ARENA + ARENA_LEN - from) as usize;
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping.
    let p = unsafe {
        libc::mmap(
            from as usize as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE
                | libc::MAP_ANONYMOUS
                | libc::MAP_FIXED_NOREPLACE
                | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    assert_eq!(p as u64, from, "the arena address is taken");
}

fn check_all(r: &Root) {
    for (&k, v) in &r.map {
        check_vec(k, v);
    }
    for s in &r.names {
        check_name(s);
    }
    for (&k, b) in &r.tree {
        check_blob(k, b);
    }
    for (&k, v) in &r.sparse {
        check_sparse(k, v);
    }
}

fn digest(r: &Root) -> u64 {
    let mut keys: Vec<&u64> = r.map.keys().collect();
    keys.sort();
    let mut h = 0u64;
    let mut mix = |x: u64| h = (h ^ x).wrapping_mul(0x100_0000_01b3).rotate_left(17);
    for k in keys {
        let v = &r.map[k];
        mix(*k);
        mix(v.len() as u64);
        mix(v[0]);
    }
    for s in &r.names {
        mix(s.len() as u64);
    }
    for (&k, b) in &r.tree {
        mix(k ^ b.len() as u64);
    }
    let mut keys: Vec<&u64> = r.sparse.keys().collect();
    keys.sort();
    for k in keys {
        mix(*k ^ r.sparse[k].len() as u64);
    }
    h
}

/// Builds the heap in a fresh arena and persists it.
fn persist_role() {
    map_arena_rest(ARENA);
    let h = head();
    h.magic.store(MAGIC, Ordering::Relaxed);
    h.bump.store(ARENA + PAGE as u64, Ordering::Relaxed);
    ON.with(|c| c.set(true));
    let mut rng = Rng(0x5151_2323_7777_1111);
    let mut root = Box::new(Root {
        map: HashMap::new(),
        names: Vec::new(),
        tree: BTreeMap::new(),
        sparse: HashMap::new(),
    });
    for k in 0..4000u64 {
        let len = rng.len();
        root.map.insert(k, make_vec(k, 1, len));
    }
    for j in 0..20_000 {
        root.names.push(name(j));
    }
    for k in 0..3000u64 {
        let len = 256 + rng.below(8000) as usize;
        root.tree.insert(k, blob(k, 1, len));
    }
    for k in 0..40u64 {
        let len = 16_384 + rng.below(48_000) as usize;
        root.sparse.insert(k, make_sparse(k, 1, len));
    }
    // Free some, so that the free lists are not empty.
    for k in (0..4000u64).step_by(10) {
        root.map.remove(&k);
    }
    h.root.store(Box::into_raw(root) as u64, Ordering::Relaxed);
    ON.with(|c| c.set(false));
    let used = h.bump.load(Ordering::Relaxed).next_multiple_of(PAGE as u64) - ARENA;
    let key = key_from_env();
    let opts = PersistOptions {
        codec: Codec::Zstd(1),
        key: Some(key),
        ..PersistOptions::default()
    };
    // SAFETY: the arena is mapped and nothing writes to it while it is
    // persisted (this thread allocates from the system now).
    let p = unsafe {
        Persister::new().region_raw(
            ARENA as usize as *const u8,
            used as usize,
            Prot::RW,
            RegionKind::Heap,
            "arena",
        )
    };
    p.write_to_path(Path::new(&std::env::var("IMG").unwrap()), &opts)
        .unwrap();
    println!("PERSISTED {} MiB", used >> 20);
}

/// Restores the heap and runs the workload on it.
fn run_role() {
    let strategy: Strategy = std::env::var("STRATEGY").unwrap().parse().unwrap();
    let r = restore(
        Path::new(&std::env::var("IMG").unwrap()),
        &RestoreOptions {
            strategy,
            key: Some(key_from_env()),
            ..RestoreOptions::default()
        },
    )
    .unwrap();
    let end = r.regions[0].end();
    map_arena_rest(end);
    let lazy = r.lazy.as_ref();
    let ops: u64 = std::env::var("OPS").unwrap().parse().unwrap();
    let t0 = Instant::now();
    ON.with(|c| c.set(true));
    let h = head();
    assert_eq!(
        h.magic.load(Ordering::Relaxed),
        MAGIC,
        "the arena head is wrong"
    );
    // New blocks come from past the restored region, each in one mapping.
    h.bump.store(end, Ordering::Relaxed);
    // SAFETY: the root was leaked into the arena by the persisting process
    // of this same binary, and the arena is back at its address.
    let root = unsafe { &mut *(h.root.load(Ordering::Relaxed) as usize as *mut Root) };
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    for op in 0..ops {
        let ver = op + 2;
        if op == ops / 2 {
            if let Some(l) = lazy {
                let s = l.stats();
                println!(
                    "INFO halfway units_done={} units_total={} removes={} remaps={}",
                    s.units_done, s.units_total, s.removes, s.remaps
                );
                l.prefetch();
            }
        }
        let k = rng.below(6000);
        match rng.below(100) {
            0..20 => {
                let len = rng.len();
                root.map.insert(k, make_vec(k, ver, len));
            }
            20..32 => {
                root.map.remove(&k);
            }
            32..45 => {
                if let Some(v) = root.map.get_mut(&k) {
                    let add = if rng.below(10) == 0 {
                        20_000
                    } else {
                        1 + rng.below(2000)
                    } as usize;
                    let n = v.len();
                    let ver = v[0];
                    v.extend((n..n + add).map(|i| value(k, ver, i)));
                }
            }
            45..58 => {
                if let Some(v) = root.map.get(&k) {
                    check_vec(k, v);
                }
            }
            58..66 => {
                if rng.below(2) == 0 {
                    root.names.push(name(rng.below(1_000_000)));
                } else if !root.names.is_empty() {
                    let j = rng.below(root.names.len() as u64) as usize;
                    check_name(&root.names.swap_remove(j));
                }
            }
            66..76 => {
                let k = k % 4000;
                if rng.below(3) == 0 {
                    if let Some(b) = root.tree.remove(&k) {
                        check_blob(k, &b);
                    }
                } else {
                    let len = 256 + rng.below(20_000) as usize;
                    root.tree.insert(k, blob(k, ver, len));
                }
            }
            76..80 => {
                if let Some(v) = root.map.get_mut(&k) {
                    v.truncate(v.len().div_ceil(2));
                    v.shrink_to_fit();
                }
            }
            80..85 => {
                // Frees a zeroed vector (its pages go back) and makes another.
                let k = k % 40;
                let len = 16_384 + rng.below(48_000) as usize;
                if let Some(old) = root.sparse.insert(k, make_sparse(k, ver, len)) {
                    check_sparse(k, &old);
                }
            }
            85..88 => {
                if let Some(v) = root.sparse.get(&(k % 40)) {
                    check_sparse(k % 40, v);
                }
            }
            _ => {
                if let Some(b) = root.tree.get(&(k % 4000)) {
                    check_blob(k % 4000, b);
                }
            }
        }
    }
    check_all(root);
    let d = digest(root);
    ON.with(|c| c.set(false));
    println!("NOTE digest {d:x}");
    println!("NOTE entries {}", root.map.len());
    println!(
        "INFO {ops} operations in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    if let Some(l) = r.lazy {
        let s = l.finish();
        assert!(s.error.is_none(), "{:?}", s.error);
        println!(
            "STATS faults={} refaults={} removes={} remaps={} unmaps={} released={}",
            s.faults,
            s.refaults,
            s.removes,
            s.remaps,
            s.unmaps,
            u8::from(s.released)
        );
    }
    println!("END");
}

/// The roles of this module; false for any other.
pub fn child_role(role: &str) -> bool {
    match role {
        "alloc-persist" => persist_role(),
        "alloc-run" => run_role(),
        _ => return false,
    }
    true
}

#[test]
fn lazy_allocator_workload_while_pages_arrive() {
    let test = "lazy_allocator_workload_while_pages_arrive";
    if lazy_skip(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("heap.img");
    let key = memimg::Key::generate().unwrap();
    let mut env = vec![
        ("IMG", img.display().to_string()),
        ("KEY", ls::key_hex(&key)),
        ("OPS", "150000".to_string()),
    ];
    let p = run_limited("alloc-persist", &env, ls::limit());
    assert!(
        p.ok(),
        "persisting the heap failed ({}):\n{}",
        signame(&p),
        p.out
    );
    let mut runs = Vec::new();
    for strategy in ["eager", "lazy"] {
        env.push(("STRATEGY", strategy.to_string()));
        let o = run_limited("alloc-run", &env, ls::limit());
        env.pop();
        assert!(
            o.ok() && o.out.lines().any(|l| l == "END"),
            "the {strategy} run failed ({}):\n{}",
            signame(&o),
            o.out
        );
        runs.push(o);
    }
    ls::assert_same_view(&runs[0], &runs[1]);
    let lazy = &runs[1].out;
    // The allocator gave pages back and moved blocks while pages were
    // still arriving: at half way, the restore was not complete.
    assert!(
        stat(lazy, "removes") > 0 && stat(lazy, "remaps") > 0,
        "{lazy}"
    );
    let half = lazy
        .lines()
        .find_map(|l| l.strip_prefix("INFO halfway "))
        .unwrap_or_else(|| panic!("{lazy}"));
    let field = |k: &str| -> u64 {
        half.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(field("units_done") < field("units_total"), "{half}");
    assert!(field("removes") > 0, "{half}");
    eprintln!(
        "{}",
        lazy.lines()
            .filter(|l| l.starts_with("INFO"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
