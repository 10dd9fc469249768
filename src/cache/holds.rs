//! What the cache has, in which order it was used, and what is held against eviction:
//! bookkeeping only (no files, no locks), so that it can be tested on its own.

use std::collections::{BTreeMap, HashMap};

use crate::key::BlobKey;

#[derive(Debug)]
struct Entry {
    len: u64,
    tick: u64,
}

/// The cached blobs with their lengths and use order, and the holds on keys.
///
/// A key is held while it has leases ([`CachedBlob`](super::CachedBlob)s) or pins
/// ([`BlobCache::acquire`](super::BlobCache::acquire)); holds are counted per key whether or not
/// the blob is present.
#[derive(Default)]
pub(super) struct Holds {
    entries: HashMap<BlobKey, Entry>,
    /// Use order: tick -> key.
    lru: BTreeMap<u64, BlobKey>,
    /// Outstanding leases plus pins per key.
    held: HashMap<BlobKey, usize>,
    /// The pins among `held`, so that an extra release cannot end a lease.
    pins: HashMap<BlobKey, usize>,
    tick: u64,
    bytes: u64,
}

impl Holds {
    /// The blob's length, if it is present.
    pub(super) fn len_of(&self, key: &BlobKey) -> Option<u64> {
        self.entries.get(key).map(|e| e.len)
    }

    /// Whether the blob is present.
    pub(super) fn contains(&self, key: &BlobKey) -> bool {
        self.entries.contains_key(key)
    }

    /// Blobs present.
    pub(super) fn count(&self) -> usize {
        self.entries.len()
    }

    /// Bytes present.
    pub(super) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Present keys, least recently used first.
    pub(super) fn keys(&self) -> impl Iterator<Item = &BlobKey> {
        self.lru.values()
    }

    /// Present keys that nothing holds, least recently used first: the eviction order.
    pub(super) fn unheld(&self) -> Vec<BlobKey> {
        self.lru
            .values()
            .filter(|k| !self.held.contains_key(k))
            .copied()
            .collect()
    }

    /// Marks the blob as used now.
    pub(super) fn touch(&mut self, key: &BlobKey) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(e) = self.entries.get_mut(key) {
            self.lru.remove(&e.tick);
            e.tick = tick;
            self.lru.insert(tick, *key);
        }
    }

    /// Adds (or replaces) the blob as the most recently used.
    pub(super) fn insert(&mut self, key: BlobKey, len: u64) {
        self.remove(&key);
        self.tick += 1;
        self.entries.insert(
            key,
            Entry {
                len,
                tick: self.tick,
            },
        );
        self.lru.insert(self.tick, key);
        self.bytes += len;
    }

    /// Forgets the blob (its holds stay); false when it was not present.
    pub(super) fn remove(&mut self, key: &BlobKey) -> bool {
        match self.entries.remove(key) {
            Some(e) => {
                self.lru.remove(&e.tick);
                self.bytes -= e.len;
                true
            }
            None => false,
        }
    }

    /// Takes one hold (a lease).
    pub(super) fn hold(&mut self, key: BlobKey) {
        *self.held.entry(key).or_insert(0) += 1;
    }

    /// Turns one hold already taken into a pin, which only [`unpin`](Self::unpin) ends.
    pub(super) fn pin_held(&mut self, key: BlobKey) {
        *self.pins.entry(key).or_insert(0) += 1;
    }

    /// Ends one pin (and so one hold); false when the key has no pin to end.
    pub(super) fn unpin(&mut self, key: &BlobKey) -> bool {
        match self.pins.get_mut(key) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                self.pins.remove(key);
            }
            None => return false,
        }
        self.unhold(key)
    }

    /// Ends one hold; true when the key is no longer held.
    pub(super) fn unhold(&mut self, key: &BlobKey) -> bool {
        match self.held.get_mut(key) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                self.held.remove(key);
                true
            }
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(b: &[u8]) -> BlobKey {
        BlobKey::of(b)
    }

    #[test]
    fn use_order_and_sizes() {
        let mut h = Holds::default();
        h.insert(k(b"a"), 1);
        h.insert(k(b"b"), 2);
        h.insert(k(b"c"), 3);
        h.touch(&k(b"a"));
        assert_eq!(
            h.keys().copied().collect::<Vec<_>>(),
            [k(b"b"), k(b"c"), k(b"a")]
        );
        assert_eq!((h.count(), h.bytes()), (3, 6));
        // Re-inserting replaces the length and counts as a use.
        h.insert(k(b"b"), 5);
        assert_eq!(
            h.keys().copied().collect::<Vec<_>>(),
            [k(b"c"), k(b"a"), k(b"b")]
        );
        assert_eq!((h.len_of(&k(b"b")), h.bytes()), (Some(5), 9));
        assert!(h.remove(&k(b"c")));
        assert!(!h.remove(&k(b"c")));
        assert!(!h.contains(&k(b"c")));
        assert_eq!((h.count(), h.bytes()), (2, 6));
        // Touching a missing key changes nothing.
        h.touch(&k(b"c"));
        assert_eq!(h.keys().copied().collect::<Vec<_>>(), [k(b"a"), k(b"b")]);
    }

    #[test]
    fn held_keys_are_not_eviction_candidates() {
        let mut h = Holds::default();
        for b in [b"a", b"b", b"c"] {
            h.insert(k(b), 1);
        }
        h.hold(k(b"a"));
        h.hold(k(b"a"));
        h.hold(k(b"c"));
        assert_eq!(h.unheld(), [k(b"b")]);
        assert!(!h.unhold(&k(b"a")));
        assert!(h.unhold(&k(b"a")));
        assert_eq!(h.unheld(), [k(b"a"), k(b"b")]);
        // A key without holds counts as unheld.
        assert!(h.unhold(&k(b"zzz")));
    }

    #[test]
    fn an_extra_unpin_does_not_end_a_lease() {
        let mut h = Holds::default();
        h.insert(k(b"a"), 1);
        h.hold(k(b"a")); // a lease
        h.hold(k(b"a"));
        h.pin_held(k(b"a")); // a pin
        assert!(!h.unpin(&k(b"a")));
        assert!(!h.unpin(&k(b"a")), "no pin left: nothing ends");
        assert!(h.unheld().is_empty(), "the lease still holds");
        assert!(h.unhold(&k(b"a")));
        assert_eq!(h.unheld(), [k(b"a")]);
    }
}
