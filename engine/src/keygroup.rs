//! Key groups: the unit of state ownership, checkpointing and rescaling.
//!
//! `key_group = stable_hash(key) % max_parallelism`, and key groups are
//! assigned to subtasks in contiguous ranges exactly as Flink's
//! `KeyGroupRangeAssignment` does. The hash is part of the on-disk contract
//! (it decides where state lives), so it is fixed here and must never change:
//!
//! ```text
//! h = 0x9E37_79B9_7F4A_7C15
//! for each 8-byte little-endian word w of the key bytes (last word zero-padded):
//!     h = fmix64(h ^ w)
//! h = fmix64(h ^ len_in_bytes)
//! fmix64(x): x ^= x >> 33; x *= 0xff51afd7ed558ccd; x ^= x >> 33;
//!            x *= 0xc4ceb9fe1a85ec53; x ^= x >> 33
//! ```
//!
//! Integers hash their little-endian bytes (so a `u32` and a `u64` of the same
//! value hash differently: the length is part of the hash), strings their UTF-8
//! bytes, tuples the concatenation of their fields' encodings.

use std::hash::Hash;

/// Largest supported `max_parallelism` (as in Flink: 2^15).
pub const MAX_MAX_PARALLELISM: u32 = 32_768;
/// Default `max_parallelism`.
pub const DEFAULT_MAX_PARALLELISM: u32 = 128;

const SEED: u64 = 0x9E37_79B9_7F4A_7C15;

/// MurmurHash3's 64-bit finaliser.
#[inline]
pub const fn fmix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x
}

/// The fixed, documented hash of a key's bytes (see the module docs).
#[derive(Clone, Debug)]
pub struct StableHasher {
    state: u64,
    pending: [u8; 8],
    pending_len: usize,
    len: u64,
}

impl Default for StableHasher {
    fn default() -> Self {
        Self {
            state: SEED,
            pending: [0; 8],
            pending_len: 0,
            len: 0,
        }
    }
}

impl StableHasher {
    /// Feeds bytes.
    pub fn write(&mut self, mut bytes: &[u8]) {
        self.len += bytes.len() as u64;
        if self.pending_len > 0 {
            let take = (8 - self.pending_len).min(bytes.len());
            self.pending[self.pending_len..self.pending_len + take].copy_from_slice(&bytes[..take]);
            self.pending_len += take;
            bytes = &bytes[take..];
            if self.pending_len < 8 {
                return;
            }
            self.state = fmix64(self.state ^ u64::from_le_bytes(self.pending));
            self.pending_len = 0;
        }
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            let w = u64::from_le_bytes(word.try_into().expect("chunks_exact(8)"));
            self.state = fmix64(self.state ^ w);
        }
        let rest = words.remainder();
        self.pending[..rest.len()].copy_from_slice(rest);
        self.pending_len = rest.len();
    }

    /// Feeds one `u64` as 8 little-endian bytes (the fast path for integer keys).
    #[inline]
    pub fn write_u64(&mut self, value: u64) {
        if self.pending_len == 0 {
            self.len += 8;
            self.state = fmix64(self.state ^ value);
        } else {
            self.write(&value.to_le_bytes());
        }
    }

    /// The hash of everything fed so far.
    pub fn finish(&self) -> u64 {
        let mut state = self.state;
        if self.pending_len > 0 {
            let mut word = [0u8; 8];
            word[..self.pending_len].copy_from_slice(&self.pending[..self.pending_len]);
            state = fmix64(state ^ u64::from_le_bytes(word));
        }
        fmix64(state ^ self.len)
    }
}

/// A type usable as a key of `key_by`: hashed with the stable hash, compared,
/// and stored in keyed state.
pub trait Key: Clone + Eq + Hash + Ord + crate::data::StateData {
    /// Feeds the key's canonical bytes to the stable hasher.
    fn stable_hash_into(&self, hasher: &mut StableHasher);

    /// The stable hash of the key.
    #[inline]
    fn stable_hash(&self) -> u64 {
        let mut hasher = StableHasher::default();
        self.stable_hash_into(&mut hasher);
        hasher.finish()
    }
}

macro_rules! int_key {
    ($($t:ty),*) => {$(
        impl Key for $t {
            #[inline]
            fn stable_hash_into(&self, hasher: &mut StableHasher) {
                hasher.write(&self.to_le_bytes());
            }
        }
    )*};
}
int_key!(u8, u16, u32, i8, i16, i32, i128, u128);

impl Key for u64 {
    #[inline]
    fn stable_hash_into(&self, hasher: &mut StableHasher) {
        hasher.write_u64(*self);
    }
}

impl Key for i64 {
    #[inline]
    fn stable_hash_into(&self, hasher: &mut StableHasher) {
        hasher.write_u64(*self as u64);
    }
}

impl Key for String {
    fn stable_hash_into(&self, hasher: &mut StableHasher) {
        hasher.write(self.as_bytes());
    }
}

impl Key for Vec<u8> {
    fn stable_hash_into(&self, hasher: &mut StableHasher) {
        hasher.write(self);
    }
}

impl Key for bool {
    fn stable_hash_into(&self, hasher: &mut StableHasher) {
        hasher.write(&[*self as u8]);
    }
}

impl Key for () {
    fn stable_hash_into(&self, _hasher: &mut StableHasher) {}
}

impl<A: Key, B: Key> Key for (A, B) {
    fn stable_hash_into(&self, hasher: &mut StableHasher) {
        self.0.stable_hash_into(hasher);
        self.1.stable_hash_into(hasher);
    }
}

impl<A: Key, B: Key, C: Key> Key for (A, B, C) {
    fn stable_hash_into(&self, hasher: &mut StableHasher) {
        self.0.stable_hash_into(hasher);
        self.1.stable_hash_into(hasher);
        self.2.stable_hash_into(hasher);
    }
}

/// Key group of a key for a given `max_parallelism`: its stable hash modulo
/// `max_parallelism`. Every record pays this twice (routing at the sender,
/// the key group's state at the receiver), so a power of two (the default,
/// and the usual choice) takes a mask instead of a 64-bit division; the
/// result is the same.
#[inline]
pub fn key_group_for<K: Key>(key: &K, max_parallelism: u32) -> u16 {
    let hash = key.stable_hash();
    let group = if max_parallelism.is_power_of_two() {
        hash & (u64::from(max_parallelism) - 1)
    } else {
        hash % u64::from(max_parallelism)
    };
    group as u16
}

/// A contiguous, half-open range of key groups `start..end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeyGroupRange {
    /// First key group of the range.
    pub start: u16,
    /// One past the last key group.
    pub end: u16,
}

impl KeyGroupRange {
    /// Number of key groups in the range.
    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }

    /// Whether the range holds no key group.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Whether `key_group` is in the range.
    pub fn contains(&self, key_group: u16) -> bool {
        self.start <= key_group && key_group < self.end
    }

    /// Iterates the key groups of the range.
    pub fn iter(&self) -> impl Iterator<Item = u16> {
        self.start..self.end
    }
}

/// The key-group range owned by subtask `index` of `parallelism`
/// (Flink's `computeKeyGroupRangeForOperatorIndex`).
pub fn key_group_range(max_parallelism: u32, parallelism: u32, index: u32) -> KeyGroupRange {
    assert!(parallelism >= 1 && parallelism <= max_parallelism);
    assert!(index < parallelism);
    let max = max_parallelism as u64;
    let p = parallelism as u64;
    let i = index as u64;
    let start = (i * max).div_ceil(p);
    let end = ((i + 1) * max - 1) / p + 1;
    KeyGroupRange {
        start: start as u16,
        end: end as u16,
    }
}

/// The subtask that owns `key_group` (Flink's
/// `computeOperatorIndexForKeyGroup`).
#[inline]
pub fn subtask_for_key_group(max_parallelism: u32, parallelism: u32, key_group: u16) -> u32 {
    (key_group as u64 * parallelism as u64 / max_parallelism as u64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_fixed() {
        // These values are part of the checkpoint format (an independent
        // Python transcription of the module docs gives the same); if this fails,
        // key groups moved and old checkpoints restore state to the wrong keys.
        assert_eq!(42u64.stable_hash(), 0xdfd5_fcec_fa05_2230);
        assert_eq!("auction".to_string().stable_hash(), 0x7327_c23a_6377_8039);
    }

    #[test]
    fn key_group_is_the_hash_modulo_max_parallelism() {
        for max in [1u32, 2, 7, 128, 1000, 1024, 4096, 32_768] {
            for key in (0..2_000u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)) {
                let expected = (key.stable_hash() % u64::from(max)) as u16;
                assert_eq!(key_group_for(&key, max), expected, "key {key} max {max}");
            }
        }
    }

    #[test]
    fn split_writes_equal_one_write() {
        let bytes: Vec<u8> = (0..37).collect();
        let mut one = StableHasher::default();
        one.write(&bytes);
        for split in 0..bytes.len() {
            let mut two = StableHasher::default();
            two.write(&bytes[..split]);
            two.write(&bytes[split..]);
            assert_eq!(one.finish(), two.finish(), "split at {split}");
        }
    }

    #[test]
    fn ranges_partition_and_agree_with_owner() {
        for max in [1u32, 7, 128, 1000, 32_768] {
            for p in 1..=max.min(9) {
                let mut next = 0u16;
                for i in 0..p {
                    let r = key_group_range(max, p, i);
                    assert_eq!(r.start, next, "max={max} p={p} i={i}");
                    for kg in r.iter() {
                        assert_eq!(subtask_for_key_group(max, p, kg), i);
                    }
                    next = r.end;
                }
                assert_eq!(next as u32, max);
            }
        }
    }
}
