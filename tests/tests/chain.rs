//! Incremental images (format 1.1, `PARENT`; spec.md, *Incremental
//! images*): children written against a parent hold only what changed, and
//! a chain reads back every generation exactly; each link is checked
//! against its child's parent record; flatten and rebase keep the content.

use std::path::{Path, PathBuf};

use memimg::{
    flatten, options_from, rebase, rewrap_in_place, transcode, verify_bytes, verify_chain_path,
    verify_path, Chain, ChainOptions, Codec, ErrorKind, ExtentKind, Image, Key, RegionInfo,
    RegionKind, SegmentKind, Status, VerifyOptions, Writer, WriterOptions,
};
use memimg_tests::{fill_page, PageKind, Rng};

const PS: usize = 4096;

/// One generation of a process's memory: (region, bytes or `None` when the
/// region is recorded without data).
type Memory = Vec<(RegionInfo, Option<Vec<u8>>)>;

fn deep() -> VerifyOptions<'static> {
    VerifyOptions {
        decode: true,
        progress: None,
    }
}

/// A base generation: a heap of `pages` mixed pages (some zero), a stack,
/// and a guard region without data.
fn base(pages: usize, seed: u64) -> Memory {
    let mut heap = vec![0u8; pages * PS];
    let mut rng = Rng::new(seed);
    for (i, p) in heap.chunks_mut(PS).enumerate() {
        let kind = match rng.next_u64() % 4 {
            0 => PageKind::Zero,
            1 => PageKind::Random,
            2 => PageKind::Heap,
            _ => PageKind::Text,
        };
        fill_page(p, kind, seed ^ (i as u64) << 8);
    }
    let mut stack = vec![0u8; 4 * PS];
    fill_page(&mut stack[3 * PS..], PageKind::Random, seed + 1);
    vec![
        (
            RegionInfo::new(0x60_0000, heap.len() as u64)
                .kind(RegionKind::Heap)
                .name("[heap]"),
            Some(heap),
        ),
        (
            RegionInfo::new(0x7ff0_0000_0000, PS as u64).name("[vvar]"),
            None,
        ),
        (
            RegionInfo::new(0x7ffd_0000_0000, stack.len() as u64)
                .kind(RegionKind::Stack)
                .name("[stack]"),
            Some(stack),
        ),
    ]
}

/// The next generation: `n` pages changed at random (some to zero).
fn change(mem: &Memory, n: usize, rng: &mut Rng) -> (Memory, Vec<u64>) {
    let mut next = mem.clone();
    let mut changed = Vec::new();
    let with_data: Vec<usize> = (0..next.len()).filter(|&i| next[i].1.is_some()).collect();
    for _ in 0..n {
        let r = with_data[(rng.next_u64() % with_data.len() as u64) as usize];
        let (info, data) = &mut next[r];
        let data = data.as_mut().unwrap();
        let p = (rng.next_u64() % (data.len() / PS) as u64) as usize;
        let page = &mut data[p * PS..(p + 1) * PS];
        let kind = if rng.next_u64().is_multiple_of(5) {
            PageKind::Zero
        } else {
            PageKind::Random
        };
        fill_page(page, kind, rng.next_u64());
        changed.push(info.start + (p * PS) as u64);
    }
    changed.sort_unstable();
    changed.dedup();
    (next, changed)
}

fn opts(codec: Codec, key: Option<&Key>) -> WriterOptions {
    WriterOptions::new()
        .page_size(PS as u32)
        .chunk_size(4 * PS as u32)
        .codec(codec)
        .workers(0)
        .key_opt(key.cloned())
}

/// Writes `mem` as a full image.
fn write_full(mem: &Memory, o: WriterOptions) -> Vec<u8> {
    let mut w = Writer::new(Vec::new(), o).unwrap();
    for (info, data) in mem {
        match data {
            Some(d) => w.add_region(info.clone(), d).unwrap(),
            None => w.add_empty_region(info.clone()).unwrap(),
        }
    }
    w.finish().unwrap().0
}

/// Writes `mem` as a child of `parent` (its chain), storing what differs.
fn write_child(mem: &Memory, parent: &Chain, o: WriterOptions, hint: Option<&str>) -> Vec<u8> {
    let mut o = o.parent_of(parent.image()).unwrap();
    if let Some(h) = hint {
        o = o.parent_hint(h);
    }
    let mut w = Writer::new(Vec::new(), o).unwrap();
    for (info, data) in mem {
        match data {
            Some(d) => w.add_region_against(info.clone(), d, parent).unwrap(),
            None => w.add_empty_region(info.clone()).unwrap(),
        }
    }
    w.finish().unwrap().0
}

/// Asserts that `chain` reads back `mem` exactly, region by region and in
/// pieces that cross extent and link boundaries.
fn assert_reads(chain: &Chain, mem: &Memory, what: &str) {
    for (info, data) in mem {
        let mut buf = vec![0u8; info.len as usize];
        let r = chain.read_at(info.start, &mut buf);
        match data {
            Some(d) => {
                r.unwrap_or_else(|e| panic!("{what}: {e}"));
                assert!(buf == *d, "{what}: region {:#x} differs", info.start);
                // Odd pieces: 3 pages from the middle of each 5.
                for at in (0..d.len()).step_by(5 * PS) {
                    let end = (at + 3 * PS + 17).min(d.len());
                    let mut b = vec![0u8; end - at];
                    chain.read_at(info.start + at as u64, &mut b).unwrap();
                    assert!(b == d[at..end], "{what}: piece at {at:#x}");
                }
            }
            None => assert_eq!(r.unwrap_err().kind(), ErrorKind::NotCaptured, "{what}"),
        }
    }
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// A child stores only the chunks holding changed pages; the rest are the
/// parent's pages. Through its chain it reads back exactly its own
/// generation; alone, it reads the pages it holds and says which parent it
/// needs for the others.
#[test]
fn a_child_holds_only_what_changed() {
    let mut rng = Rng::new(7);
    let m0 = base(64, 1);
    let (m1, changed) = change(&m0, 5, &mut rng);
    let p = Image::from_bytes(write_full(&m0, opts(Codec::Zstd(1), None)), None).unwrap();
    let parent = Chain::single(p);
    let child_bytes = write_child(&m1, &parent, opts(Codec::Zstd(1), None), Some("parent.img"));
    let child = Image::from_bytes(child_bytes.clone(), None).unwrap();
    assert_eq!(child.header().version, (1, 1));
    assert_eq!(child.depth(), 1);
    assert_eq!(child.parent(), Some(&parent.image().as_parent().unwrap()));
    assert_eq!(child.header().parent_hint.as_deref(), Some("parent.img"));
    // What the child stores is only the parent's chunks that hold a changed
    // page (re-cut where a page became zero), and changed pages where the
    // parent had zeros.
    let ex = child.extents().unwrap();
    for e in ex.iter().filter(|e| e.kind == ExtentKind::Data) {
        let pe = *parent.image().extent_at(e.addr).unwrap().unwrap();
        if pe.kind == ExtentKind::Data {
            assert!(
                e.end(PS as u32) <= pe.end(PS as u32),
                "{e:?} spans parent extents"
            );
            assert!(
                changed
                    .iter()
                    .any(|c| (pe.addr..pe.end(PS as u32)).contains(c)),
                "{e:?} stored, but nothing changed in {pe:?}"
            );
        } else {
            for a in (e.addr..e.end(PS as u32)).step_by(PS) {
                assert!(changed.contains(&a), "unchanged page {a:#x} stored");
            }
        }
    }
    for a in &changed {
        let e = child.extent_at(*a).unwrap().unwrap();
        assert_ne!(
            e.kind,
            ExtentKind::InParent,
            "changed page {a:#x} left to the parent"
        );
    }
    assert!(ex.iter().any(|e| e.kind == ExtentKind::InParent));
    // Alone: a held page reads, an in-parent page names the parent.
    let held = changed[0];
    let mut page = vec![0u8; PS];
    child.read_at(held, &mut page).unwrap();
    let inp = ex.iter().find(|e| e.kind == ExtentKind::InParent).unwrap();
    let e = child.read_at(inp.addr, &mut page).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ParentRequired, "{e}");
    let s = e.to_string();
    assert!(
        s.contains(&parent.image().header().image_id_hex()) && s.contains("parent.img"),
        "{s}"
    );
    // A partial chain says the same, naming the link.
    let alone = Chain::single(Image::from_bytes(child_bytes.clone(), None).unwrap());
    assert!(!alone.is_complete());
    let e = alone.read_at(inp.addr, &mut page).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ParentRequired);
    assert_eq!(e.location().link, Some(0));
    // Verified alone: intact, the parent not checked.
    let r = verify_bytes(child_bytes.clone(), None, &deep());
    assert!(r.is_intact(), "{:?}", r.problems);
    assert!(
        r.parent_unchecked
            .as_deref()
            .unwrap()
            .contains("not checked"),
        "{r:?}"
    );
    // With its parent: every generation reads back.
    let chain = Chain::from_links(
        Image::from_bytes(child_bytes, None).unwrap(),
        parent.into_links(),
    )
    .unwrap();
    assert!(chain.is_complete());
    assert_reads(&chain, &m1, "child");
}

/// Random chains of 1 to 5 images over random page changes, plain,
/// compressed and encrypted (a key per link, so each parent is opened with
/// its own): each generation reads back exactly through its chain, each
/// chain verifies intact, and flatten gives a full image of the same
/// content.
#[test]
fn random_chains_read_back_every_generation() {
    let dir = tempfile::tempdir().unwrap();
    for seed in 0..6u64 {
        let mut rng = Rng::new(100 + seed);
        let depth = 1 + (rng.next_u64() % 5) as usize;
        let codec = [Codec::None, Codec::Zstd(1)][(seed % 2) as usize];
        let keys: Vec<Option<Key>> = (0..depth)
            .map(|i| (seed >= 3).then(|| Key::raw([i as u8 + 1; 32])))
            .collect();
        let mut mems = vec![base(24 + (seed as usize) * 3, seed)];
        let mut paths: Vec<PathBuf> = Vec::new();
        let mut bytes = write_full(&mems[0], opts(codec, keys[0].as_ref()));
        paths.push(write_file(dir.path(), &format!("s{seed}-0.img"), &bytes));
        for g in 1..depth {
            let (m, _) = change(&mems[g - 1], 1 + (rng.next_u64() % 6) as usize, &mut rng);
            let parent = open_chain(&paths[g - 1], &keys[..g]);
            let hint = format!("s{seed}-{}.img", g - 1);
            bytes = write_child(&m, &parent, opts(codec, keys[g].as_ref()), Some(&hint));
            paths.push(write_file(dir.path(), &format!("s{seed}-{g}.img"), &bytes));
            mems.push(m);
        }
        for g in 0..depth {
            let chain = open_chain(&paths[g], &keys[..=g]);
            assert_eq!(chain.links().len(), g + 1, "seed {seed} gen {g}");
            assert!(chain.is_complete());
            assert_reads(&chain, &mems[g], &format!("seed {seed} gen {g}"));
            let key_for = |link: u32, _: &memimg::Header| keys[g - link as usize].clone();
            let copts = ChainOptions {
                parent_key: Some(&key_for),
                ..ChainOptions::default()
            };
            let r = verify_chain_path(&paths[g], keys[g].as_ref(), &copts, &deep());
            assert!(
                r.is_intact(),
                "seed {seed} gen {g}: {:?} {:?}",
                r.fatal,
                r.problems
            );
            assert_eq!(r.parents_checked as usize, g);
            assert_eq!(r.parent_unchecked, None);
            // Flatten: one full image, the same content.
            let o = options_from(chain.image())
                .unwrap()
                .codec(Codec::Zstd(1))
                .workers(0);
            let (flat, _) = flatten(&chain, Vec::new(), o, &|_| {}).unwrap();
            let flat = Image::from_bytes(flat, None).unwrap();
            assert_eq!(flat.parent(), None);
            assert!(flat
                .extents()
                .unwrap()
                .iter()
                .all(|e| e.kind != ExtentKind::InParent));
            assert_reads(&Chain::single(flat), &mems[g], &format!("flat {seed} {g}"));
        }
    }
}

/// Opens the chain of the image at `path`, whose link `i` (0 the image)
/// has key `keys[len - 1 - i]`.
fn open_chain(path: &Path, keys: &[Option<Key>]) -> Chain {
    let n = keys.len();
    let key_for = |link: u32, _: &memimg::Header| keys[n - 1 - link as usize].clone();
    let copts = ChainOptions {
        parent_key: Some(&key_for),
        ..ChainOptions::default()
    };
    Chain::open(path, keys[n - 1].as_ref(), &copts).unwrap()
}

/// A parent and a child on disk (the child's hint names the parent by its
/// file name), with the parent's and the child's memory.
struct Pair {
    _dir: tempfile::TempDir,
    parent: PathBuf,
    child: PathBuf,
    m1: Memory,
}

fn pair(key: Option<&Key>) -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let m0 = base(32, 3);
    let (m1, _) = change(&m0, 4, &mut Rng::new(9));
    let parent = write_file(
        dir.path(),
        "parent.img",
        &write_full(&m0, opts(Codec::Zstd(1), key)),
    );
    let pc = Chain::open(&parent, key, &ChainOptions::default()).unwrap();
    let child = write_file(
        dir.path(),
        "child.img",
        &write_child(&m1, &pc, opts(Codec::Zstd(1), key), Some("parent.img")),
    );
    Pair {
        _dir: dir,
        parent,
        child,
        m1,
    }
}

/// What opening the chain of `p.child` gives now.
fn reopen(p: &Pair, key: Option<&Key>) -> memimg::Result<Chain> {
    Chain::open(&p.child, key, &ChainOptions::default())
}

/// The parent is found through the hint, relative to the child's directory,
/// so the chain moves as a whole; a parent given explicitly wins over the
/// hint; a parent key rotated since still matches (rotation keeps the
/// index).
#[test]
fn parents_are_found_given_and_rotated() {
    let key = Key::raw([3; 32]);
    let p = pair(Some(&key));
    assert_reads(&reopen(&p, Some(&key)).unwrap(), &p.m1, "found by hint");
    // Moved together to another directory.
    let moved = tempfile::tempdir().unwrap();
    let child = moved.path().join("child.img");
    std::fs::copy(&p.child, &child).unwrap();
    std::fs::copy(&p.parent, moved.path().join("parent.img")).unwrap();
    let c = Chain::open(&child, Some(&key), &ChainOptions::default()).unwrap();
    assert_reads(&c, &p.m1, "moved");
    // Given explicitly, under another name, hints off.
    let elsewhere = moved.path().join("base-copy");
    std::fs::rename(moved.path().join("parent.img"), &elsewhere).unwrap();
    let copts = ChainOptions {
        parents: vec![elsewhere.clone()],
        no_hints: true,
        ..ChainOptions::default()
    };
    assert_reads(
        &Chain::open(&child, Some(&key), &copts).unwrap(),
        &p.m1,
        "explicit",
    );
    // The parent's key rotated: same index, so it still matches, opened
    // with its new key.
    let k2 = Key::raw([4; 32]);
    rewrap_in_place(&elsewhere, &key, &k2).unwrap();
    let k2c = k2.clone();
    let key_for = move |_: u32, _: &memimg::Header| Some(k2c.clone());
    let copts = ChainOptions {
        parents: vec![elsewhere],
        parent_key: Some(&key_for),
        ..ChainOptions::default()
    };
    assert_reads(
        &Chain::open(&child, Some(&key), &copts).unwrap(),
        &p.m1,
        "rotated parent",
    );
}

/// A parent removed, replaced, truncated, rewritten (recompressed: a new
/// image) or re-keyed with a full re-encryption (a new image too) is
/// refused with a typed error that names link 1, never read as wrong bytes.
#[test]
fn a_wrong_parent_is_refused_naming_the_link() {
    let key = Key::raw([3; 32]);
    let p = pair(Some(&key));
    let original = std::fs::read(&p.parent).unwrap();
    let parent_img = Image::open_with_key(&p.parent, Some(&key)).unwrap();
    let inp = Image::open_with_key(&p.child, Some(&key))
        .unwrap()
        .extents()
        .unwrap()
        .iter()
        .find(|e| e.kind == ExtentKind::InParent)
        .copied()
        .unwrap();
    let mut page = vec![0u8; PS];
    // Removed: the chain is partial, and a read of the parent's pages names it.
    std::fs::remove_file(&p.parent).unwrap();
    let c = reopen(&p, Some(&key)).unwrap();
    assert!(!c.is_complete());
    let e = c.read_at(inp.addr, &mut page).unwrap_err();
    assert_eq!(
        (e.kind(), e.location().link),
        (ErrorKind::ParentRequired, Some(0)),
        "{e}"
    );
    let r = verify_chain_path(&p.child, Some(&key), &ChainOptions::default(), &deep());
    assert_eq!(r.status(), Status::Damaged, "{r:?}");
    assert!(
        r.problems
            .iter()
            .any(|q| q.kind == ErrorKind::ParentRequired && q.location.link == Some(1)),
        "{:?}",
        r.problems
    );
    // Replaced by another image, and re-keyed in full (a new image id).
    let other = write_full(&base(8, 99), opts(Codec::None, Some(&key)));
    let o = options_from(&parent_img)
        .unwrap()
        .key(Key::raw([8; 32]))
        .workers(0);
    let (rekeyed, _) = transcode(&parent_img, Vec::new(), o, &|_| {}).unwrap();
    for (what, bytes) in [("replaced", other), ("re-keyed in full", rekeyed)] {
        std::fs::write(&p.parent, &bytes).unwrap();
        let e = reopen(&p, Some(&key)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ParentMismatch, "{what}: {e}");
        assert_eq!(e.location().link, Some(1), "{what}");
        assert!(e.to_string().contains("another image"), "{what}: {e}");
        let r = verify_chain_path(&p.child, Some(&key), &ChainOptions::default(), &deep());
        assert!(
            r.problems
                .iter()
                .any(|q| q.kind == ErrorKind::ParentMismatch),
            "{what}: {:?} {:?}",
            r.fatal,
            r.problems
        );
    }
    // Truncated.
    std::fs::write(&p.parent, &original[..original.len() - 300]).unwrap();
    let e = reopen(&p, Some(&key)).unwrap_err();
    assert_eq!(e.location().link, Some(1), "{e}");
    assert!(e.is_damage(), "{e}");
    assert!(e.to_string().contains("parent"), "{e}");
    // A damaged chunk in the parent: its read names link 1 and the chunk.
    let mut damaged = original.clone();
    let c0 = parent_img.chunk_locs()[0];
    damaged[c0.offset as usize + 3] ^= 1;
    std::fs::write(&p.parent, &damaged).unwrap();
    let c = reopen(&p, Some(&key)).unwrap();
    let mut buf = vec![0u8; 32 * PS];
    let e = c.read_at(0x60_0000, &mut buf).unwrap_err();
    assert_eq!(e.location().link, Some(1), "{e}");
    let r = verify_chain_path(&p.child, Some(&key), &ChainOptions::default(), &deep());
    assert!(
        r.problems
            .iter()
            .any(|q| q.location.link == Some(1) && q.location.chunk == Some(0)),
        "{:?}",
        r.problems
    );
    // Back to the original: all is well again.
    std::fs::write(&p.parent, &original).unwrap();
    assert_reads(&reopen(&p, Some(&key)).unwrap(), &p.m1, "restored");
}

/// Rewriting a link gives it a new index: its children refuse it (index
/// checksum), and a rebase onto it, which checks the content, mends them.
/// A rebase onto a parent with other content is refused at the first
/// differing address.
#[test]
fn rebase_points_a_child_at_a_copy_of_its_parent() {
    for key in [None, Some(Key::raw([6; 32]))] {
        let key = key.as_ref();
        let dir = tempfile::tempdir().unwrap();
        let mut rng = Rng::new(5);
        let m0 = base(40, 5);
        let (m1, _) = change(&m0, 4, &mut rng);
        let (m2, _) = change(&m1, 4, &mut rng);
        let p0 = write_file(
            dir.path(),
            "g0.img",
            &write_full(&m0, opts(Codec::Zstd(1), key)),
        );
        let c0 = Chain::open(&p0, key, &ChainOptions::default()).unwrap();
        let p1 = write_file(
            dir.path(),
            "g1.img",
            &write_child(&m1, &c0, opts(Codec::None, key), Some("g0.img")),
        );
        let c1 = Chain::open(&p1, key, &ChainOptions::default()).unwrap();
        let p2 = write_file(
            dir.path(),
            "g2.img",
            &write_child(&m2, &c1, opts(Codec::Zstd(1), key), Some("g1.img")),
        );
        // Flatten g0 into a new full image, recompressed: another image.
        let o = options_from(c0.image())
            .unwrap()
            .codec(Codec::None)
            .key_opt(key.cloned())
            .workers(0);
        let (flat0, _) = flatten(&c0, Vec::new(), o, &|_| {}).unwrap();
        let f0 = write_file(dir.path(), "g0-flat.img", &flat0);
        // g1 refuses it...
        let copts = ChainOptions {
            parents: vec![f0.clone()],
            ..ChainOptions::default()
        };
        let e = Chain::open(&p1, key, &copts).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ParentMismatch, "{e}");
        // ...until rebased onto it, in place. Its id stays.
        let new_parent = Chain::open(&f0, key, &ChainOptions::default()).unwrap();
        let before = Image::open_with_key(&p1, key).unwrap();
        let stats = memimg::rebase_in_place(
            &p1,
            key,
            &ChainOptions::default(),
            &new_parent,
            Some("g0-flat.img"),
        )
        .unwrap();
        assert_eq!(stats.image_id, before.header().image_id);
        let after = Image::open_with_key(&p1, key).unwrap();
        assert_eq!(after.header().image_id, before.header().image_id);
        assert_eq!(
            after.parent().unwrap().image_id,
            new_parent.image().header().image_id
        );
        assert_eq!(after.header().parent_hint.as_deref(), Some("g0-flat.img"));
        if key.is_some() {
            assert_ne!(
                after.index_nonce_salt(),
                0,
                "a new index under the same data key"
            );
        }
        std::fs::remove_file(&p0).unwrap();
        let c1 = Chain::open(&p1, key, &ChainOptions::default()).unwrap();
        assert_reads(&c1, &m1, "g1 rebased");
        // An encrypted g1 has a new index (sealed again with a fresh salt):
        // g2 refuses it (index checksum), naming link 1. A plain g1 keeps
        // its index (it does not cover the header), and g2 reads through
        // it, its content checked the same by the rebase.
        let c2 = Chain::open(&p2, key, &ChainOptions::default());
        if key.is_some() {
            let e = c2.unwrap_err();
            assert_eq!(
                (e.kind(), e.location().link),
                (ErrorKind::ParentMismatch, Some(1)),
                "{e}"
            );
            assert!(e.to_string().contains("index checksum"), "{e}");
        } else {
            assert_reads(&c2.unwrap(), &m2, "g2 through the rebased g1");
        }
        // A parent with other content: refused, naming where.
        let other = write_file(
            dir.path(),
            "other.img",
            &write_full(&m2, opts(Codec::None, key)),
        );
        let oc = Chain::open(&other, key, &ChainOptions::default()).unwrap();
        let e = rebase(&c1, &oc, None, Vec::new()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ParentMismatch, "{e}");
        assert!(e.location().addr.is_some(), "{e}");
        // The chain verifies.
        let r = verify_chain_path(&p1, key, &ChainOptions::default(), &deep());
        assert!(r.is_intact(), "{:?} {:?}", r.fatal, r.problems);
        assert_eq!(r.parents_checked, 1);
    }
}

/// A recompress of a child (a transcode) keeps it a child of the same
/// parent: its in-parent extents stay, and it reads through the parent.
#[test]
fn a_recompressed_child_is_still_a_child() {
    let p = pair(None);
    let chain = reopen(&p, None).unwrap();
    let o = options_from(chain.image())
        .unwrap()
        .codec(Codec::None)
        .workers(0);
    let (bytes, stats) = transcode(chain.image(), Vec::new(), o, &|_| {}).unwrap();
    assert!(stats.in_parent_pages > 0);
    let img = Image::from_bytes(bytes, None).unwrap();
    assert_eq!(img.parent(), chain.image().parent());
    let parent = Image::open(&p.parent).unwrap();
    let c = Chain::from_links(img, vec![parent]).unwrap();
    assert_reads(&c, &p.m1, "recompressed child");
}

/// `resolve` and `segments` say which link holds each address.
#[test]
fn resolve_names_the_link() {
    let p = pair(None);
    let c = reopen(&p, None).unwrap();
    let ex = c.image().extents().unwrap().to_vec();
    for e in &ex {
        let r = c.resolve(e.addr).unwrap();
        match e.kind {
            ExtentKind::InParent => {
                assert_eq!(r.link, 1);
                assert_ne!(r.extent.unwrap().kind, ExtentKind::InParent);
            }
            _ => assert_eq!((r.link, r.extent), (0, Some(*e))),
        }
    }
    let (start, end) = (0x60_0000, 0x60_0000 + 32 * PS as u64);
    let segs = c.segments(start, end).unwrap();
    assert_eq!(segs.first().unwrap().start, start);
    assert_eq!(segs.last().unwrap().end, end);
    assert!(segs.windows(2).all(|w| w[0].end == w[1].start));
    assert!(segs.iter().any(|s| s.link == 1) && segs.iter().any(|s| s.link == 0));
    assert!(segs.iter().all(|s| s.kind != SegmentKind::ParentMissing));
}

/// A child's in-parent range over pages its parent did not capture (a child
/// forged against a parent with a region recorded without data) reads as
/// not captured, naming the link, and the chain's verify reports it.
#[test]
fn in_parent_pages_the_parent_lacks_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let m0 = base(8, 4);
    let pp = write_file(
        dir.path(),
        "p.img",
        &write_full(&m0, opts(Codec::None, None)),
    );
    let pc = Chain::open(&pp, None, &ChainOptions::default()).unwrap();
    // The child claims the guard region ([vvar], no data in the parent) as
    // the parent's pages.
    let o = opts(Codec::None, None)
        .parent_of(pc.image())
        .unwrap()
        .parent_hint("p.img");
    let mut w = Writer::new(Vec::new(), o).unwrap();
    for (info, data) in &m0 {
        match data {
            Some(d) => w.add_region_against(info.clone(), d, &pc).unwrap(),
            None => {
                w.begin_region(info.clone()).unwrap();
                w.push_in_parent(info.len).unwrap();
                w.end_region().unwrap();
            }
        }
    }
    let cp = write_file(dir.path(), "c.img", &w.finish().unwrap().0);
    let c = Chain::open(&cp, None, &ChainOptions::default()).unwrap();
    let mut page = vec![0u8; PS];
    let e = c.read_at(0x7ff0_0000_0000, &mut page).unwrap_err();
    assert_eq!(
        (e.kind(), e.location().link),
        (ErrorKind::NotCaptured, Some(1)),
        "{e}"
    );
    let r = verify_chain_path(&cp, None, &ChainOptions::default(), &deep());
    assert_eq!(r.status(), Status::Damaged);
    assert!(
        r.problems
            .iter()
            .any(|q| q.kind == ErrorKind::NotCaptured && q.location.addr == Some(0x7ff0_0000_0000)),
        "{:?}",
        r.problems
    );
    // The child alone verifies (its own bytes are fine).
    assert!(verify_path(&cp, None, &deep()).is_intact());
    // A range past the end of the address space: its first byte is not
    // captured, which is what a read says first (as Image::read_at does).
    for e in [
        c.read_at(u64::MAX - 2, &mut page[..8]).unwrap_err(),
        c.image().read_at(u64::MAX - 2, &mut page[..8]).unwrap_err(),
    ] {
        assert_eq!(e.kind(), ErrorKind::NotCaptured, "{e}");
    }
}

/// Appends a header record (type, value) to the header page of `bytes`,
/// fixing `meta_len` and the header checksum (the image stays valid: a
/// plain image's index does not cover the header).
fn add_header_record(bytes: &mut [u8], ty: u16, value: &[u8]) {
    let meta_len = u32::from_le_bytes(bytes[0x58..0x5c].try_into().unwrap()) as usize;
    let at = 0x80 + meta_len;
    bytes[at..at + 2].copy_from_slice(&ty.to_le_bytes());
    bytes[at + 2..at + 4].copy_from_slice(&(value.len() as u16).to_le_bytes());
    bytes[at + 4..at + 4 + value.len()].copy_from_slice(value);
    let n = (meta_len + 4 + value.len()) as u32;
    bytes[0x58..0x5c].copy_from_slice(&n.to_le_bytes());
    memimg_tests::fix_header_checksum(bytes);
}

/// Header records 32 (parent) and 33 (parent hint) mean something only in
/// an image that sets `PARENT`: elsewhere they are records of unknown type,
/// ignored as a 1.0 reader ignores them, whatever they hold (so every image
/// a 1.0 reader accepted still reads). With `PARENT`, the record must be
/// there and well formed: 32 bytes, depth 1 to 64, reserved bytes zero; the
/// hint 1 to 1024 bytes of UTF-8.
#[test]
fn parent_records_are_read_only_with_the_parent_feature() {
    let plain = write_full(&base(4, 1), opts(Codec::None, None));
    let mut d = plain.clone();
    add_header_record(&mut d, 32, &[0xee; 7]);
    add_header_record(&mut d, 33, &[0xff, 0xfe]);
    let img = Image::from_bytes(d, None).unwrap();
    assert_eq!(
        (img.parent(), img.header().parent_hint.as_deref()),
        (None, None)
    );
    // PARENT without a record.
    let mut d = plain.clone();
    d[0x10] |= 1 << 3;
    memimg_tests::fix_header_checksum(&mut d);
    let e = Image::from_bytes(d, None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Malformed, "{e}");
    assert!(e.message().contains("no parent record"), "{e}");
    // PARENT with a record: depth, reserved bytes, length, hint.
    let record = |depth: u32, reserved: u8| {
        let mut v = vec![7u8; 16];
        v.extend_from_slice(&5u64.to_le_bytes());
        v.extend_from_slice(&depth.to_le_bytes());
        v.extend_from_slice(&[reserved, 0, 0, 0]);
        v
    };
    let with = |value: &[u8], hint: Option<&[u8]>| {
        let mut d = plain.clone();
        d[0x10] |= 1 << 3;
        add_header_record(&mut d, 32, value);
        if let Some(h) = hint {
            add_header_record(&mut d, 33, h);
        }
        Image::from_bytes(d, None)
    };
    let img = with(&record(64, 0), Some(b"../base.img")).unwrap();
    assert_eq!(img.depth(), 64);
    assert_eq!(img.header().parent_hint.as_deref(), Some("../base.img"));
    for (what, value, hint, kind) in [
        ("depth 65", record(65, 0), None, ErrorKind::Malformed),
        ("depth 0", record(0, 0), None, ErrorKind::Malformed),
        (
            "reserved bytes",
            record(1, 1),
            None,
            ErrorKind::NonZeroPadding,
        ),
        (
            "31 bytes",
            record(1, 0)[..31].to_vec(),
            None,
            ErrorKind::Malformed,
        ),
        (
            "an empty hint",
            record(1, 0),
            Some(&b""[..]),
            ErrorKind::Malformed,
        ),
        (
            "a hint not UTF-8",
            record(1, 0),
            Some(&[0xff, 0xfe][..]),
            ErrorKind::Malformed,
        ),
        (
            "a hint of 1025 bytes",
            record(1, 0),
            Some(&[b'a'; 1025][..]),
            ErrorKind::Malformed,
        ),
    ] {
        let e = with(&value, hint).unwrap_err();
        assert_eq!(e.kind(), kind, "{what}: {e}");
        assert!(e.location().offset.is_some(), "{what}: {e}");
    }
}

/// The parent record of `child`'s image naming `parent` (bytes of an open
/// image) at `depth`, as a header record value.
fn record_of(parent: &[u8], depth: u32) -> Vec<u8> {
    let p = Image::from_bytes(parent.to_vec(), None).unwrap();
    let mut v = p.header().image_id.to_vec();
    v.extend_from_slice(&p.trailer().index_checksum.to_le_bytes());
    v.extend_from_slice(&depth.to_le_bytes());
    v.extend_from_slice(&[0; 4]);
    v
}

/// `bytes` (a plain full image) made a child by hand: `PARENT` set, the
/// parent record and hint added, the header checksum fixed. A plain image's
/// index does not cover the header, so its index checksum stays: what a
/// hostile chain can forge without breaking a checksum.
fn forge_child(bytes: &[u8], record: &[u8], hint: &str) -> Vec<u8> {
    let mut d = bytes.to_vec();
    d[0x10] |= 1 << 3;
    add_header_record(&mut d, 32, record);
    add_header_record(&mut d, 33, hint.as_bytes());
    d
}

/// Hostile chains built by hand, with every checksum fixed: a depth claim
/// the parent does not bear out, an image that names itself as its parent,
/// and a cycle (an image whose grandparent is a forged copy of itself, with
/// its id and index checksum) each give a typed `ParentMismatch` naming the
/// link, from open and from verify; nothing loops, and at most the links
/// the first depth allows are opened.
#[test]
fn hostile_chains_give_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let a = write_full(&base(4, 11), opts(Codec::None, None));
    let b = write_full(&base(4, 12), opts(Codec::None, None));
    write_file(dir.path(), "a0.img", &a);
    write_file(dir.path(), "b0.img", &b);
    let check = |name: &str, link: u32, what: &str| {
        let path = dir.path().join(name);
        let e = Chain::open(&path, None, &ChainOptions::default()).unwrap_err();
        assert_eq!(
            (e.kind(), e.location().link),
            (ErrorKind::ParentMismatch, Some(link)),
            "{name}: {e}"
        );
        assert!(e.to_string().contains(what), "{name}: {e}");
        let r = verify_chain_path(&path, None, &ChainOptions::default(), &deep());
        assert!(
            r.problems
                .iter()
                .any(|q| q.kind == ErrorKind::ParentMismatch && q.location.link == Some(link)),
            "{name}: {:?} {:?}",
            r.fatal,
            r.problems
        );
    };
    // Depth 3 over a full image (which would need depth 1).
    write_file(
        dir.path(),
        "deep.img",
        &forge_child(&a, &record_of(&b, 3), "b0.img"),
    );
    check("deep.img", 1, "depth");
    // Its own parent: the id and index checksum match, the depth cannot.
    write_file(
        dir.path(),
        "self.img",
        &forge_child(&a, &record_of(&a, 1), "self.img"),
    );
    check("self.img", 1, "depth");
    // A cycle: x (image a, depth 2) → y (image b, depth 1) → a0.img (image
    // a again, full: same id and index checksum as x).
    write_file(
        dir.path(),
        "x.img",
        &forge_child(&a, &record_of(&b, 2), "y.img"),
    );
    write_file(
        dir.path(),
        "y.img",
        &forge_child(&b, &record_of(&a, 1), "a0.img"),
    );
    check("x.img", 2, "cycle");
}

/// A parent put together from bytes that are not a file (object storage,
/// say) with `Chain::push_parent_with`, as `Chain::open` opens a file
/// parent: checked against the child's record before a key is tried, so a
/// plain parent of an encrypted child opens without the key, an encrypted
/// one with it, and another image is a mismatch, never a wrong key.
#[test]
fn parents_pushed_from_bytes_are_checked_before_a_key_is_tried() {
    let mut rng = Rng::new(11);
    let key = Key::raw([7; 32]);
    let mem0 = base(40, 3);
    let (mem1, _) = change(&mem0, 5, &mut rng);
    for parent_key in [None, Some(&key)] {
        let parent = write_full(&mem0, opts(Codec::Zstd(1), parent_key));
        let pchain = Chain::single(Image::from_bytes(parent.clone(), parent_key).unwrap());
        let child = write_child(&mem1, &pchain, opts(Codec::None, Some(&key)), None);
        let mut chain = Chain::single(Image::from_bytes(child.clone(), Some(&key)).unwrap());
        chain
            .push_parent_with(Some(&key), |k| Image::from_bytes(parent.clone(), k))
            .unwrap_or_else(|e| panic!("parent key {:?}: {e}", parent_key.is_some()));
        assert_reads(&chain, &mem1, "pushed from bytes");
        // Another image where the parent should be: a mismatch naming
        // link 1, whatever its key.
        let other = write_full(&mem0, opts(Codec::Zstd(1), parent_key));
        let mut chain = Chain::single(Image::from_bytes(child, Some(&key)).unwrap());
        let e = chain
            .push_parent_with(Some(&key), |k| Image::from_bytes(other.clone(), k))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ParentMismatch, "{e}");
        assert!(e.to_string().contains("link 1"), "{e}");
        // A full image has no parent to push.
        let mut full = Chain::single(Image::from_bytes(parent.clone(), parent_key).unwrap());
        let e = full
            .push_parent_with(Some(&key), |k| Image::from_bytes(parent.clone(), k))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    }
}

/// A child laid out with its index first (a relayout's default for a plain
/// image: spec.md, *Index first*) reads through its parent, and stays laid
/// out so when it is rebased onto a flattened copy of that parent: the
/// rebase writes its index first again, with a new index record.
#[test]
fn an_index_first_child_reads_and_rebases() {
    let p = pair(None);
    let dir = p.child.parent().unwrap().to_path_buf();
    let child = Image::open(&p.child).unwrap();
    let n = child.chunk_locs().len() as u64;
    let prof = memimg::Profile {
        image_id: child.header().image_id,
        chunks: vec![n - 1],
    };
    let (opt, st) = memimg::relayout(&child, &prof, Vec::new()).unwrap();
    assert!(st.index_first);
    let po = write_file(&dir, "child-opt.img", &opt);
    let c = Chain::open(&po, None, &ChainOptions::default()).unwrap();
    assert!(c.image().header().index_first.is_some());
    assert_reads(&c, &p.m1, "index-first child");
    // Rebased onto a flattened copy of its parent.
    let pc = Chain::open(&p.parent, None, &ChainOptions::default()).unwrap();
    let o = options_from(pc.image()).unwrap().workers(0);
    let (flat, _) = flatten(&pc, Vec::new(), o, &|_| {}).unwrap();
    let pf = write_file(&dir, "parent-flat.img", &flat);
    let np = Chain::open(&pf, None, &ChainOptions::default()).unwrap();
    let (re, _) = rebase(&c, &np, Some("parent-flat.img"), Vec::new()).unwrap();
    let pr = write_file(&dir, "child-rebased.img", &re);
    let img = Image::open(&pr).unwrap();
    let rec = img.header().index_first.expect("still index first");
    assert_eq!(img.trailer().index_offset, PS as u64);
    assert_eq!(
        (rec.index_len, rec.index_checksum),
        (img.trailer().index_len, img.trailer().index_checksum)
    );
    assert_eq!(img.parent().unwrap().image_id, np.image().header().image_id);
    let r = verify_path(&pr, None, &deep());
    assert!(r.is_intact(), "{:?} {:?}", r.fatal, r.problems);
    let c = Chain::open(&pr, None, &ChainOptions::default()).unwrap();
    assert_reads(&c, &p.m1, "index-first child, rebased");
}
