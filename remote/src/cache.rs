//! A small cache of recently read pieces of one object, least recently used
//! first out.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

use bytes::Bytes;

/// Pieces of an object keyed by `K` (a block number, or an exact range),
/// holding at most `capacity` bytes.
pub(crate) struct BlockCache<K = u64> {
    capacity: usize,
    bytes: usize,
    tick: u64,
    blocks: HashMap<K, (Bytes, u64)>,
    by_age: BTreeMap<u64, K>,
}

impl<K: Hash + Eq + Copy> BlockCache<K> {
    pub(crate) fn new(capacity: usize) -> Self {
        BlockCache {
            capacity,
            bytes: 0,
            tick: 0,
            blocks: HashMap::new(),
            by_age: BTreeMap::new(),
        }
    }

    /// The block, marked as just used.
    pub(crate) fn get(&mut self, block: K) -> Option<Bytes> {
        self.tick += 1;
        let tick = self.tick;
        let (data, age) = self.blocks.get_mut(&block)?;
        self.by_age.remove(age);
        *age = tick;
        self.by_age.insert(tick, block);
        Some(data.clone())
    }

    /// Adds a block, evicting the least recently used ones beyond capacity.
    /// A cache of capacity 0 keeps nothing.
    pub(crate) fn insert(&mut self, block: K, data: Bytes) {
        if data.len() > self.capacity {
            return;
        }
        self.tick += 1;
        let tick = self.tick;
        self.bytes += data.len();
        if let Some((old, age)) = self.blocks.insert(block, (data, tick)) {
            self.bytes -= old.len();
            self.by_age.remove(&age);
        }
        self.by_age.insert(tick, block);
        while self.bytes > self.capacity {
            let Some((_, victim)) = self.by_age.pop_first() else {
                break;
            };
            if let Some((d, _)) = self.blocks.remove(&victim) {
                self.bytes -= d.len();
            }
        }
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used() {
        let mut c: BlockCache = BlockCache::new(3 * 4);
        for b in 0..3 {
            c.insert(b, Bytes::from(vec![u8::try_from(b).unwrap(); 4]));
        }
        assert!(c.get(0).is_some()); // 0 is now the most recent
        c.insert(3, Bytes::from(vec![3; 4]));
        assert!(c.get(1).is_none(), "1 was the least recently used");
        assert_eq!(c.get(0).unwrap()[0], 0);
        assert_eq!(c.get(2).unwrap()[0], 2);
        assert_eq!(c.get(3).unwrap()[0], 3);
        assert_eq!(c.bytes(), 12);
        // Replacing a block does not count it twice.
        c.insert(3, Bytes::from(vec![9; 4]));
        assert_eq!(c.bytes(), 12);
        // Too big for the cache: not kept, nothing evicted.
        c.insert(7, Bytes::from(vec![0; 13]));
        assert!(c.get(7).is_none());
        assert_eq!(c.bytes(), 12);
        let mut none: BlockCache = BlockCache::new(0);
        none.insert(0, Bytes::from_static(b"x"));
        assert!(none.get(0).is_none());
    }
}
