//! The data traits and small shared types every layer uses: what may flow
//! on a stream ([`Data`]), cross cores ([`ExchangeData`]) or live in keyed
//! state ([`StateData`]), a [`Record`] with its timestamp, the engine's hash
//! map ([`FxHashMap`]) and archive buffers ([`Bytes`]).
//!
//! A leaf: it imports nothing else of the crate but [`crate::time`] and
//! [`crate::schema`], so that
//! state, checkpoints and the dataflow can all depend on it without depending
//! on each other.

use crate::schema::Schema;
use crate::time::Timestamp;
use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor::Error as RkyvError;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;

/// Data that flows on a stream: cloned when a stream fans out.
pub trait Data: Clone + 'static {}
impl<T: Clone + 'static> Data for T {}

/// Data that may cross cores at a `key_by` exchange: sendable, and
/// archivable, since unaligned checkpoints persist records in flight.
pub trait ExchangeData: Data + Send + StateData {}
impl<T: Data + Send + StateData> ExchangeData for T {}

/// A record with its event timestamp (Flink's `StreamRecord`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record<T> {
    /// Event time in epoch milliseconds (0 when the job has no event time).
    pub ts: Timestamp,
    /// The payload.
    pub value: T,
}

/// Hash map with the engine's fixed hasher.
pub type FxHashMap<K, V> = HashMap<K, V, BuildHasherDefault<rustc_hash::FxHasher>>;

/// Slots of a hash table of capacity `capacity`: the power of two above
/// `capacity · 8/7` (it fills them to 7/8).
fn hash_slots(capacity: usize) -> usize {
    match capacity {
        0 => 0,
        c => (c * 8 / 7).next_power_of_two(),
    }
}

/// Bytes a hash map of `capacity` takes in memory: its slots, an entry and
/// a control byte each (not what entries point to).
pub(crate) fn hash_map_bytes<K, V>(capacity: usize) -> usize {
    hash_slots(capacity) * (std::mem::size_of::<(K, V)>() + 1)
}

/// Entries larger than this (key and value, in memory) make a key group's
/// map dense ([`StateMap`]).
const DENSE_ABOVE_BYTES: usize = 64;

/// The map of one key group of a keyed state table. Small entries live in a
/// hash table's slots (one probe per lookup). Larger ones live densely, in
/// insertion order (a removal moves the last entry into its place), behind
/// a hash index of their positions: a table whose slots run at 44–88 % load
/// would otherwise hold up to twice its entries' bytes, while the dense one
/// holds each entry once plus a hash and 10–20 bytes of index per key, at the
/// cost of a second memory access per lookup (about 10 % of W1 and 6 % of
/// q5 when their 24- and 40-byte entries were dense; they stay in slots).
/// The choice follows the entry size alone, so every table of a type
/// behaves alike.
#[derive(Clone, Debug)]
pub enum StateMap<K, V> {
    /// Entries in the hash table's slots.
    Slots(FxHashMap<K, V>),
    /// Entries stored densely behind an index.
    Dense(indexmap::IndexMap<K, V, BuildHasherDefault<rustc_hash::FxHasher>>),
}

impl<K, V> Default for StateMap<K, V> {
    fn default() -> Self {
        if std::mem::size_of::<(K, V)>() > DENSE_ABOVE_BYTES {
            StateMap::Dense(Default::default())
        } else {
            StateMap::Slots(Default::default())
        }
    }
}

impl<K: std::hash::Hash + Eq, V> StateMap<K, V> {
    /// Entries.
    pub fn len(&self) -> usize {
        match self {
            StateMap::Slots(m) => m.len(),
            StateMap::Dense(m) => m.len(),
        }
    }

    /// Whether it holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value under `key`.
    #[inline]
    pub fn get(&self, key: &K) -> Option<&V> {
        match self {
            StateMap::Slots(m) => m.get(key),
            StateMap::Dense(m) => m.get(key),
        }
    }

    /// The value under `key`, to change it.
    #[inline]
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        match self {
            StateMap::Slots(m) => m.get_mut(key),
            StateMap::Dense(m) => m.get_mut(key),
        }
    }

    /// The entry under `key`.
    pub fn get_key_value(&self, key: &K) -> Option<(&K, &V)> {
        match self {
            StateMap::Slots(m) => m.get_key_value(key),
            StateMap::Dense(m) => m.get_key_value(key),
        }
    }

    /// Whether `key` has a value.
    pub fn contains_key(&self, key: &K) -> bool {
        self.get(key).is_some()
    }

    /// Sets `key`'s value; returns the old one.
    #[inline]
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self {
            StateMap::Slots(m) => m.insert(key, value),
            StateMap::Dense(m) => m.insert(key, value),
        }
    }

    /// Removes `key`'s value and returns it.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        match self {
            StateMap::Slots(m) => m.remove(key),
            StateMap::Dense(m) => m.swap_remove(key),
        }
    }

    /// Removes every entry.
    pub fn clear(&mut self) {
        match self {
            StateMap::Slots(m) => m.clear(),
            StateMap::Dense(m) => m.clear(),
        }
    }

    /// Makes room for `additional` more entries.
    pub fn reserve(&mut self, additional: usize) {
        match self {
            StateMap::Slots(m) => m.reserve(additional),
            StateMap::Dense(m) => m.reserve(additional),
        }
    }

    /// Bytes it holds in memory: a hash table's slots (entry and control
    /// byte each; a resize writes entries all over the new slots), or the
    /// dense entries (entry and hash each; their spare capacity is never
    /// written, so not resident) and their index (position and control byte
    /// per slot); not what keys or values point to.
    pub fn memory_bytes(&self) -> usize {
        let entry = std::mem::size_of::<(K, V)>();
        match self {
            StateMap::Slots(m) => hash_map_bytes::<K, V>(m.capacity()),
            StateMap::Dense(m) => {
                m.len() * (entry + std::mem::size_of::<u64>())
                    + hash_slots(m.capacity()) * (std::mem::size_of::<usize>() + 1)
            }
        }
    }

    /// Every key, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.iter().map(|(k, _)| k)
    }

    /// Every entry, owned, in no particular order.
    pub fn into_entries(self) -> Vec<(K, V)> {
        match self {
            StateMap::Slots(m) => m.into_iter().collect(),
            StateMap::Dense(m) => m.into_iter().collect(),
        }
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> StateMapIter<'_, K, V> {
        match self {
            StateMap::Slots(m) => StateMapIter::Slots(m.iter()),
            StateMap::Dense(m) => StateMapIter::Dense(m.iter()),
        }
    }
}

impl<K: std::hash::Hash + Eq, V> Extend<(K, V)> for StateMap<K, V> {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, entries: I) {
        match self {
            StateMap::Slots(m) => m.extend(entries),
            StateMap::Dense(m) => m.extend(entries),
        }
    }
}

impl<'a, K: std::hash::Hash + Eq, V> IntoIterator for &'a StateMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = StateMapIter<'a, K, V>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// The entries of a [`StateMap`].
pub enum StateMapIter<'a, K, V> {
    /// Of a map with slots.
    Slots(std::collections::hash_map::Iter<'a, K, V>),
    /// Of a dense map.
    Dense(indexmap::map::Iter<'a, K, V>),
}

impl<K, V> Clone for StateMapIter<'_, K, V> {
    fn clone(&self) -> Self {
        match self {
            StateMapIter::Slots(i) => StateMapIter::Slots(i.clone()),
            StateMapIter::Dense(i) => StateMapIter::Dense(i.clone()),
        }
    }
}

impl<K, V> ExactSizeIterator for StateMapIter<'_, K, V> {}

impl<'a, K, V> Iterator for StateMapIter<'a, K, V> {
    type Item = (&'a K, &'a V);
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            StateMapIter::Slots(i) => i.next(),
            StateMapIter::Dense(i) => i.next(),
        }
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            StateMapIter::Slots(i) => i.size_hint(),
            StateMapIter::Dense(i) => i.size_hint(),
        }
    }
}

/// Hash set with the engine's fixed hasher.
pub type FxHashSet<T> = std::collections::HashSet<T, BuildHasherDefault<rustc_hash::FxHasher>>;

/// Bytes of an archive, aligned for reading it in place.
pub(crate) type Bytes = rkyv::util::AlignedVec<16>;

/// A value that can live in keyed state: cloneable and archivable with rkyv,
/// its archive checkable and deserializable, its archived layout described
/// ([`Schema`]: checkpoints record it). Implemented for every type that
/// derives rkyv's `Archive`, `Serialize` and `Deserialize` (with `bytecheck`)
/// and `spate::Schema`.
pub trait StateData:
    Clone
    + 'static
    + Schema
    + rkyv::Archive<
        Archived: for<'a> CheckBytes<HighValidator<'a, RkyvError>>
                      + rkyv::Deserialize<Self, HighDeserializer<RkyvError>>,
    >
    + for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, RkyvError>>
{
}

impl<T> StateData for T where
    T: Clone
        + 'static
        + Schema
        + rkyv::Archive<
            Archived: for<'a> CheckBytes<HighValidator<'a, RkyvError>>
                          + rkyv::Deserialize<T, HighDeserializer<RkyvError>>,
        >
        + for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, RkyvError>>
{
}
