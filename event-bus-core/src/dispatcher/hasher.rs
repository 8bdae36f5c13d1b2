//! The topic index of the subscription table: topic text -> value, looked up once per
//! published event.
//!
//! The index's keys are the application's own subscription topics; published topics
//! only look them up. An attacker choosing published topics can therefore not fill the
//! table with colliding keys, so a keyed (DoS-resistant) hash buys nothing here and
//! would cost more than the rest of the lookup.
//!
//! The map hashes a topic eight bytes at a time (most topics are 8 to 16 bytes: two
//! overlapping word reads and one multiplication) and compares a candidate key the same
//! way, instead of `str`'s byte-at-a-time `Hash` with its terminator byte and a call to
//! `memcmp`. Up to eight keys are kept in a list searched by hash (a bus usually has few
//! distinct subscription topics); beyond that a std map keyed by the hash, in which the
//! rare keys that share a hash sit side by side.

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
};

/// Up to this many keys live in a list searched by hash (a few instructions per key);
/// more move to the hash map.
const SMALL: usize = 8;

/// Topic text -> `V`, for exact topics and literal prefixes.
pub(crate) struct TopicMap<V> {
    /// Keys with their hash, while there are at most [`SMALL`] (then `by_hash` is empty).
    small: Vec<(u64, Box<str>, V)>,
    by_hash: HashMap<u64, Vec<(Box<str>, V)>, PassThroughBuild>,
}

/// Builds [`PassThrough`] hashers.
type PassThroughBuild = BuildHasherDefault<PassThrough>;

impl<V> Default for TopicMap<V> {
    fn default() -> Self {
        Self {
            small: Vec::new(),
            by_hash: HashMap::default(),
        }
    }
}

impl<V> TopicMap<V> {
    /// The value of `topic`.
    #[inline]
    pub(crate) fn get(&self, topic: &str) -> Option<&V> {
        let hash = topic_hash(topic.as_bytes());
        if self.by_hash.is_empty() {
            return self
                .small
                .iter()
                .find(|(h, key, _)| *h == hash && same(key.as_bytes(), topic.as_bytes()))
                .map(|(_, _, value)| value);
        }
        self.get_large(hash, topic)
    }

    /// [`get`](Self::get) past [`SMALL`] keys; apart, so that the list search stays a
    /// small function.
    #[inline(never)]
    fn get_large(&self, hash: u64, topic: &str) -> Option<&V> {
        let keys = self.by_hash.get(&hash)?;
        keys.iter()
            .find(|(key, _)| same(key.as_bytes(), topic.as_bytes()))
            .map(|(_, value)| value)
    }

    /// The value of `topic`, mutable.
    pub(crate) fn get_mut(&mut self, topic: &str) -> Option<&mut V> {
        let hash = topic_hash(topic.as_bytes());
        if self.by_hash.is_empty() {
            return self
                .small
                .iter_mut()
                .find(|(h, key, _)| *h == hash && same(key.as_bytes(), topic.as_bytes()))
                .map(|(_, _, value)| value);
        }
        let keys = self.by_hash.get_mut(&hash)?;
        keys.iter_mut()
            .find(|(key, _)| same(key.as_bytes(), topic.as_bytes()))
            .map(|(_, value)| value)
    }

    /// The value of `topic`, inserted with `V::default()` if absent.
    pub(crate) fn get_or_default(&mut self, topic: &str) -> &mut V
    where
        V: Default,
    {
        let hash = topic_hash(topic.as_bytes());
        if self.by_hash.is_empty() {
            let found = self
                .small
                .iter()
                .position(|(h, key, _)| *h == hash && same(key.as_bytes(), topic.as_bytes()));
            if let Some(at) = found {
                return &mut self.small[at].2;
            }
            if self.small.len() < SMALL {
                self.small.push((hash, topic.into(), V::default()));
                let last = self.small.len() - 1;
                return &mut self.small[last].2;
            }
            for (h, key, value) in self.small.drain(..) {
                self.by_hash.entry(h).or_default().push((key, value));
            }
        }
        let keys = self.by_hash.entry(hash).or_default();
        let at = match keys
            .iter()
            .position(|(key, _)| same(key.as_bytes(), topic.as_bytes()))
        {
            Some(at) => at,
            None => {
                keys.push((topic.into(), V::default()));
                keys.len() - 1
            }
        };
        &mut keys[at].1
    }

    /// Removes `topic` and its value.
    pub(crate) fn remove(&mut self, topic: &str) -> Option<V> {
        let hash = topic_hash(topic.as_bytes());
        if self.by_hash.is_empty() {
            let at = self
                .small
                .iter()
                .position(|(h, key, _)| *h == hash && same(key.as_bytes(), topic.as_bytes()))?;
            return Some(self.small.swap_remove(at).2);
        }
        let keys = self.by_hash.get_mut(&hash)?;
        let at = keys
            .iter()
            .position(|(key, _)| same(key.as_bytes(), topic.as_bytes()))?;
        let (_, value) = keys.swap_remove(at);
        if keys.is_empty() {
            self.by_hash.remove(&hash);
        }
        Some(value)
    }

    pub(crate) fn clear(&mut self) {
        self.small.clear();
        self.by_hash.clear();
    }
}

const K0: u64 = 0x9E37_79B9_7F4A_7C15;
const K1: u64 = 0xD6E8_FEB8_6659_FD93;

/// Multiplies and folds the 128-bit product: a fast, well-mixed combination.
#[inline]
fn fold(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    (product as u64) ^ ((product >> 64) as u64)
}

/// The first eight bytes of `s` (at least eight long) as a word.
#[inline]
fn head(s: &[u8]) -> u64 {
    s.first_chunk::<8>().map_or(0, |w| u64::from_le_bytes(*w))
}

/// The last eight bytes of `s` (at least eight long) as a word.
#[inline]
fn tail(s: &[u8]) -> u64 {
    s.last_chunk::<8>().map_or(0, |w| u64::from_le_bytes(*w))
}

/// The topic's hash, a word at a time (the last word overlapping the one before).
#[inline]
pub(crate) fn topic_hash(s: &[u8]) -> u64 {
    let len = s.len() as u64;
    let (a, b) = if s.len() >= 8 {
        let mut a = head(s);
        let mut rest = &s[8..];
        while rest.len() > 8 {
            a = fold(a ^ K0, head(rest) ^ K1);
            rest = &rest[8..];
        }
        (a, tail(s))
    } else if s.len() >= 4 {
        let word = |w: &[u8; 4]| u64::from(u32::from_le_bytes(*w));
        let a = s.first_chunk::<4>().map_or(0, word);
        let b = s.last_chunk::<4>().map_or(0, word);
        (a, b)
    } else {
        // 0 to 3 bytes: first, middle and last byte (the same byte when short).
        let byte = |i: usize| s.get(i).map_or(0, |&b| u64::from(b));
        (
            byte(0) | byte(s.len() / 2) << 8,
            byte(s.len().wrapping_sub(1)),
        )
    };
    fold(a ^ K0 ^ len, b ^ K1)
}

/// Whether two topics are equal, comparing words where they are 8 to 16 bytes long.
#[inline]
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    if (8..=16).contains(&a.len()) {
        head(a) == head(b) && tail(a) == tail(b)
    } else {
        a == b
    }
}

/// A hasher for keys that are already hashes (`u64`): passes them through.
#[derive(Default)]
pub(crate) struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used by `u64` keys; kept correct for any other key anyway.
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_key_and_nothing_else() {
        let mut map = TopicMap::<usize>::default();
        let keys: Vec<String> = (0..38)
            .map(|n| "abcdefghijklmnopqrstuvwxyz:0123456789"[..n].to_owned())
            .chain((0..200).map(|n| format!("orders:{n}")))
            .collect();
        for (i, key) in keys.iter().enumerate() {
            *map.get_or_default(key) = i;
        }
        for (i, key) in keys.iter().enumerate() {
            assert_eq!(map.get(key), Some(&i), "{key:?}");
        }
        assert_eq!(map.get("orders:200"), None);
        assert_eq!(map.get("abcdefghijklmnopqrstuvwxyz:0123456789x"), None);
        assert_eq!(map.remove("orders:7"), Some(45));
        assert_eq!(map.get("orders:7"), None);
        assert_eq!(map.get("orders:8"), Some(&46));
        *map.get_mut("orders:8").unwrap() = 1;
        assert_eq!(map.get("orders:8"), Some(&1));
    }

    #[test]
    fn small_map_finds_inserts_and_removes() {
        let mut map = TopicMap::<usize>::default();
        for (i, key) in ["a", "orders:eu", "orders:us", "x:y:z:w:v:u:t:s:r"]
            .iter()
            .enumerate()
        {
            *map.get_or_default(key) = i;
        }
        assert!(map.by_hash.is_empty());
        assert_eq!(map.get("orders:us"), Some(&2));
        assert_eq!(map.get("orders:u"), None);
        assert_eq!(map.remove("orders:eu"), Some(1));
        assert_eq!(map.get("orders:eu"), None);
        *map.get_mut("a").unwrap() += 10;
        assert_eq!(map.get("a"), Some(&10));
        assert_eq!(map.get("x:y:z:w:v:u:t:s:r"), Some(&3));
    }

    #[test]
    fn keys_sharing_a_hash_stay_apart() {
        // Put a foreign key into the slot of "orders:eu": lookups still compare text.
        let mut map = TopicMap::<u8>::default();
        for n in 0..=SMALL {
            *map.get_or_default(&format!("other:{n}")) = 0;
        }
        assert!(map.small.is_empty());
        *map.get_or_default("orders:eu") = 1;
        let slot = topic_hash(b"orders:eu");
        map.by_hash
            .get_mut(&slot)
            .unwrap()
            .insert(0, ("orders:us".into(), 2));
        assert_eq!(map.get("orders:eu"), Some(&1));
        assert_eq!(map.remove("orders:eu"), Some(1));
        assert_eq!(map.get("orders:eu"), None);
        assert_eq!(map.by_hash[&slot].len(), 1);
        assert!(!same(b"orders:eu", b"orders:us"));
        assert!(!same(b"orders:eu:1", b"orders:eu:2"));
        assert!(!same(b"abc", b"abd"));
    }

    #[test]
    fn hash_depends_on_every_byte() {
        for len in 1..40 {
            let base = vec![b'x'; len];
            let h = topic_hash(&base);
            for i in 0..len {
                let mut other = base.clone();
                other[i] = b'y';
                assert_ne!(topic_hash(&other), h, "len {len}, byte {i}");
            }
            assert_ne!(topic_hash(&base[..len - 1]), h);
        }
    }
}
