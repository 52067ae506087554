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
