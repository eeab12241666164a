//! The arena of the arena example, shared: a hash map of short strings in
//! an arena at a fixed address (every pointer in it is absolute), its
//! persist, and its lookups. Included with `#[path]` by
//! capture/examples/arena.rs, by the load-order section of
//! remote/benches/remote.rs and by remote/tests/it/loadorder.rs, so they
//! build, persist and check the same structure.
//!
//! Every lookup panics on a missing key or a wrong value, so a restore that
//! gave wrong bytes cannot go unnoticed.
// Each user takes what it needs.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]
// A 64-bit-only demo: addresses and sizes are u64 and fit usize there.
#![allow(clippy::cast_possible_truncation)]

use std::path::Path;

use memimg::{Codec, Prot, RegionKind};
use memimg_capture::{PersistOptions, Persister};

/// Where the arena lives, in the process that builds it and in those that
/// restore it.
pub const ARENA: u64 = 0x2000_0000_0000;
/// Address space reserved for it.
pub const RESERVE: usize = 4 << 30;
/// The head's magic, checked by every lookup.
pub const MAGIC: u64 = 0x4152_454e_4131_0001;

/// The arena's first bytes.
#[repr(C)]
struct Head {
    magic: u64,
    used: u64,
    buckets: *mut *mut Node,
    nbuckets: u64,
    count: u64,
}

/// A map entry: the key's bytes follow the node.
#[repr(C)]
struct Node {
    next: *mut Node,
    hash: u64,
    value: u64,
    len: u32,
}

struct Arena {
    next: u64,
}

impl Arena {
    fn map() -> Arena {
        // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping.
        let p = unsafe {
            libc::mmap(
                ARENA as usize as *mut libc::c_void,
                RESERVE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE
                    | libc::MAP_ANONYMOUS
                    | libc::MAP_FIXED_NOREPLACE
                    | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_eq!(p as u64, ARENA, "the arena address is taken");
        Arena {
            next: ARENA + std::mem::size_of::<Head>() as u64,
        }
    }

    fn alloc(&mut self, size: usize, align: usize) -> *mut u8 {
        let a = self.next.next_multiple_of(align as u64);
        self.next = a + size as u64;
        assert!(self.next < ARENA + RESERVE as u64, "arena full");
        a as usize as *mut u8
    }
}

fn hash(b: &[u8]) -> u64 {
    // FNV-1a.
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &c| {
        (h ^ u64::from(c)).wrapping_mul(0x100_0000_01b3)
    })
}

fn key(i: u64, out: &mut String) {
    use std::fmt::Write;
    out.clear();
    write!(out, "k{i}-{:x}", i.wrapping_mul(0x9e37_79b9)).unwrap();
}

/// The value stored under key `i`.
pub fn value_of(i: u64) -> u64 {
    i.wrapping_mul(7) + 1
}

fn head() -> *mut Head {
    ARENA as usize as *mut Head
}

/// Maps the arena at [`ARENA`] and fills it with `n` keys; returns the bytes
/// used (whole pages), which [`persist`] saves.
pub fn build(n: u64) -> u64 {
    let mut a = Arena::map();
    let nb = n.next_power_of_two();
    let buckets = a.alloc(nb as usize * 8, 8).cast::<*mut Node>();
    let mut k = String::new();
    for i in 0..n {
        key(i, &mut k);
        let h = hash(k.as_bytes());
        let node = a
            .alloc(std::mem::size_of::<Node>() + k.len(), 8)
            .cast::<Node>();
        // SAFETY: node and buckets point into the arena mapping, allocated
        // above with room for the node and its key bytes.
        unsafe {
            let slot = buckets.add((h & (nb - 1)) as usize);
            node.write(Node {
                next: *slot,
                hash: h,
                value: value_of(i),
                len: k.len() as u32,
            });
            std::ptr::copy_nonoverlapping(k.as_ptr(), node.add(1).cast::<u8>(), k.len());
            *slot = node;
        }
    }
    let used = (a.next - ARENA).next_multiple_of(4096);
    // SAFETY: the head is at the start of the arena.
    unsafe {
        head().write(Head {
            magic: MAGIC,
            used,
            buckets,
            nbuckets: nb,
            count: n,
        });
    }
    used
}

/// Unmaps the arena [`build`] mapped, so that this process can restore it
/// at the same address.
pub fn unmap() {
    // SAFETY: the arena mapping is this module's; nothing refers to it
    // once the caller has persisted it.
    let r = unsafe { libc::munmap(ARENA as usize as *mut libc::c_void, RESERVE) };
    assert_eq!(r, 0, "munmap of the arena failed");
}

/// The validation tag, as in capi/examples/arena.c; its data is the key count.
pub const TAG: &str = "arena-example";

/// Persists the arena's `used` bytes (from [`build`]) to `path`, with
/// `codec` and `chunk_size`, and the key count `n` as validation data (as
/// the C example does); returns the file's length.
pub fn persist(used: u64, n: u64, path: &Path, codec: Codec, chunk_size: Option<u32>) -> u64 {
    // SAFETY: the arena is mapped and nothing writes it while we persist.
    let p = unsafe {
        Persister::new()
            .region_raw(
                ARENA as usize as *const u8,
                used as usize,
                Prot::RW,
                RegionKind::Heap,
                "arena",
            )
            .validation(TAG, n.to_ne_bytes())
    };
    p.write_to_path(
        path,
        &PersistOptions {
            codec,
            chunk_size,
            ..PersistOptions::default()
        },
    )
    .unwrap()
    .file_len
}

/// Walks every bucket and looks every key up; panics on any difference.
pub fn walk(n: u64) {
    // SAFETY: the arena was restored at its address; every pointer in it
    // points into it, as built.
    unsafe {
        let h = &*head();
        assert_eq!(h.magic, MAGIC, "arena head is wrong");
        assert_eq!(h.count, n);
        let mut seen = 0u64;
        for b in 0..h.nbuckets {
            let mut p = *h.buckets.add(b as usize);
            while !p.is_null() {
                assert_eq!((*p).hash & (h.nbuckets - 1), b, "node in the wrong bucket");
                seen += 1;
                p = (*p).next;
            }
        }
        assert_eq!(seen, n, "walked {seen} nodes");
    }
    let mut k = String::new();
    for i in 0..n {
        lookup(i, &mut k);
    }
}

/// The keys a "startup" looks up: `k` keys spread over the whole map.
pub fn sample(n: u64, k: u64) -> impl Iterator<Item = u64> {
    let stride = (n / k.max(1)).max(1);
    (0..k.min(n)).map(move |j| (j * stride).wrapping_mul(0x9e37_79b9) % n)
}

/// Looks key `i` up (`k` is scratch); panics when it is missing or wrong.
pub fn lookup(i: u64, k: &mut String) {
    key(i, k);
    let hv = hash(k.as_bytes());
    // SAFETY: the arena was restored at its address; every pointer in it
    // points into it, as built.
    unsafe {
        let h = &*head();
        assert_eq!(h.magic, MAGIC, "arena head is wrong");
        let mut p = *h.buckets.add((hv & (h.nbuckets - 1)) as usize);
        loop {
            assert!(!p.is_null(), "key {k} is missing");
            let bytes = std::slice::from_raw_parts(p.add(1).cast::<u8>(), (*p).len as usize);
            if (*p).hash == hv && bytes == k.as_bytes() {
                assert_eq!((*p).value, value_of(i), "key {k} has the wrong value");
                return;
            }
            p = (*p).next;
        }
    }
}
