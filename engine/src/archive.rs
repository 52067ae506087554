//! Archiving key groups without copying them first, into reused buffers.
//!
//! A key group is archived as `Vec<(K, V)>` (a base) or `(Vec<(K, V)>, Vec<K>)`
//! (a delta: upserts and deletes); restore reads exactly those types. Building
//! the `Vec` first would copy every entry once more before rkyv copies it
//! again, so [`Entries`] archives straight from references with the same
//! archived layout ([`EntryRef`] archives like `(K, V)`).
//!
//! Archiving runs on the reactor and is part of a checkpoint's synchronous
//! pause. A fresh output buffer of a few hundred KiB costs a page fault per
//! page on first write (measured: 66 faults per 256 KiB key group, a third of
//! its archiving time under load), so buffers come from a per-thread pool
//! ([`take_buffer`]) that the checkpoint writer refills once it has copied a
//! block into its I/O buffers ([`recycle`]). The pool holds at most
//! [`POOL_MAX_BYTES`] per reactor thread.

use crate::data::Bytes;
use rkyv::rancor::Fallible;
use rkyv::ser::{Allocator, Writer};
use rkyv::tuple::ArchivedTuple2;
use rkyv::vec::{ArchivedVec, VecResolver};
use rkyv::{Archive, Place, Serialize};
use std::cell::RefCell;

/// A `(key, value)` entry by reference; archives exactly like `(K, V)`.
pub(crate) struct EntryRef<'a, K, V>(pub &'a K, pub &'a V);

impl<K: Archive, V: Archive> Archive for EntryRef<'_, K, V> {
    type Archived = ArchivedTuple2<K::Archived, V::Archived>;
    type Resolver = (K::Resolver, V::Resolver);

    fn resolve(&self, resolver: Self::Resolver, out: Place<Self::Archived>) {
        // The raw pointer only projects to the two fields, as rkyv's own tuple
        // implementation does.
        // SAFETY: `out` is aligned and dereferenceable; each field pointer points into it.
        unsafe {
            let ptr = out.ptr();
            let key = Place::from_field_unchecked(out, core::ptr::addr_of_mut!((*ptr).0));
            self.0.resolve(resolver.0, key);
            let value = Place::from_field_unchecked(out, core::ptr::addr_of_mut!((*ptr).1));
            self.1.resolve(resolver.1, value);
        }
    }
}

impl<K, V, S> Serialize<S> for EntryRef<'_, K, V>
where
    K: Serialize<S>,
    V: Serialize<S>,
    S: Fallible + ?Sized,
{
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        Ok((self.0.serialize(serializer)?, self.1.serialize(serializer)?))
    }
}

/// How many entries ahead of the one archived [`prefetched`] asks for.
const PREFETCH_AHEAD: usize = 8;

/// The entries of `entries`, each asking the CPU to load the memory of the
/// entry [`PREFETCH_AHEAD`] places on while it is archived. A delta's changed
/// keys are scattered over the whole table, so each entry is a cache miss or
/// more (its value spans two or three lines); fetched ahead they overlap
/// instead of each stalling the copy in turn.
pub(crate) fn prefetched<'a, K, V>(
    entries: &'a [(&'a K, &'a V)],
) -> impl ExactSizeIterator<Item = EntryRef<'a, K, V>> + Clone + 'a {
    entries.iter().enumerate().map(move |(i, &(k, v))| {
        if let Some(&(_, ahead)) = entries.get(i + PREFETCH_AHEAD) {
            prefetch(ahead);
        }
        EntryRef(k, v)
    })
}

/// Asks the CPU to load the cache lines `value` lies in (at most four); a hint
/// with no effect on what the program computes.
#[inline(always)]
fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        const LINE: usize = 64;
        let start = value as *const T as usize;
        let end = start + std::mem::size_of::<T>().max(1);
        let mut line = start & !(LINE - 1);
        for _ in 0..4 {
            if line >= end {
                break;
            }
            // The address is only a hint to the CPU.
            // SAFETY: a prefetch never faults and reads nothing the program sees.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    line as *const i8,
                );
            }
            line += LINE;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// Entries given by an iterator of references; archives exactly like the
/// `Vec<(K, V)>` of those entries.
pub(crate) struct Entries<I>(pub I);

impl<'a, K, V, I> Archive for Entries<I>
where
    K: Archive + 'a,
    V: Archive + 'a,
    I: ExactSizeIterator<Item = EntryRef<'a, K, V>> + Clone,
{
    type Archived = ArchivedVec<ArchivedTuple2<K::Archived, V::Archived>>;
    type Resolver = VecResolver;

    fn resolve(&self, resolver: Self::Resolver, out: Place<Self::Archived>) {
        ArchivedVec::resolve_from_len(self.0.len(), resolver, out);
    }
}

impl<'a, K, V, I, S> Serialize<S> for Entries<I>
where
    K: Serialize<S> + 'a,
    V: Serialize<S> + 'a,
    I: ExactSizeIterator<Item = EntryRef<'a, K, V>> + Clone,
    S: Fallible + Allocator + Writer + ?Sized,
{
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        ArchivedVec::<ArchivedTuple2<K::Archived, V::Archived>>::serialize_from_iter::<
            EntryRef<'a, K, V>,
            I,
            S,
        >(self.0.clone(), serializer)
    }
}

/// Most bytes of spare buffers a reactor thread keeps: the default backlog
/// of archives a subtask may hand its writer ahead of it
/// ([`crate::CheckpointConfig::archive_backlog_bytes`]), since blocks are
/// written as they are archived and their buffers come back at that pace.
pub(crate) const POOL_MAX_BYTES: usize = 16 << 20;

#[derive(Default)]
struct Pool {
    buffers: Vec<Bytes>,
    bytes: usize,
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

/// `len` rounded up to a size class: 4 KiB at least, then four classes per
/// power of two (at most 25% slack).
fn size_class(len: usize) -> usize {
    let len = len.max(4096);
    let power = len.next_power_of_two();
    let quarter = power / 8; // classes between power/2 and power
    len.div_ceil(quarter) * quarter
}

/// An empty buffer with room for at least `capacity` bytes: a pooled one
/// when one is large enough (its pages are already mapped), else a new one.
/// Capacities are rounded up to a power of two, so that a buffer serves
/// every key group of about the same size (growing a buffer that is a little
/// short would move it to fresh pages, which is what the pool avoids).
pub(crate) fn take_buffer(capacity: usize) -> Bytes {
    let capacity = size_class(capacity);
    let pooled = POOL.with(|p| {
        let mut p = p.borrow_mut();
        // A buffer of this size class, else the smallest large enough one, so
        // that small archives do not take the buffers large ones need. A
        // linear scan: a few thousand buffers at most, a few µs, against
        // about 10 µs per page fault saved.
        let mut best: Option<usize> = None;
        for (i, buf) in p.buffers.iter().enumerate().rev() {
            let c = buf.capacity();
            if c < capacity {
                continue;
            }
            if c < capacity + capacity / 4 {
                best = Some(i);
                break;
            }
            if best.is_none_or(|b| c < p.buffers[b].capacity()) {
                best = Some(i);
            }
        }
        let found = best?;
        let buf = p.buffers.swap_remove(found);
        p.bytes -= buf.capacity();
        Some(buf)
    });
    match pooled {
        Some(mut buf) => {
            buf.clear();
            buf
        }
        None => Bytes::with_capacity(capacity),
    }
}

/// Gives a buffer back to this thread's pool (dropped if the pool is full).
pub(crate) fn recycle(buf: Bytes) {
    if buf.capacity() == 0 {
        return;
    }
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.bytes + buf.capacity() <= POOL_MAX_BYTES {
            p.bytes += buf.capacity();
            p.buffers.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::FxHashMap;

    #[test]
    fn entries_archive_like_a_vec_of_pairs() {
        let mut map: FxHashMap<u64, String> = FxHashMap::default();
        for k in 0..100u64 {
            map.insert(k * 31, format!("value {k}"));
        }
        let direct = rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(
            &Entries(map.iter().map(|(k, v)| EntryRef(k, v))),
            take_buffer(0),
        )
        .unwrap();
        let pairs: Vec<(u64, String)> = map.iter().map(|(k, v)| (*k, v.clone())).collect();
        let via_vec = rkyv::to_bytes::<rkyv::rancor::Error>(&pairs).unwrap();
        assert_eq!(direct.as_slice(), via_vec.as_slice());
        let back = rkyv::from_bytes::<Vec<(u64, String)>, rkyv::rancor::Error>(&direct).unwrap();
        assert_eq!(back, pairs);
    }

    #[test]
    fn size_classes_leave_at_most_a_quarter_of_slack() {
        for len in [1, 4096, 4097, 33_000, 262_144, 268_800, 1 << 20] {
            let class = size_class(len);
            assert!(class >= len, "{len}");
            assert!(
                class <= (len.max(4096) * 5).div_ceil(4) + 4096,
                "{len}: {class}"
            );
            assert_eq!(size_class(class), class, "a class is its own class");
        }
    }

    #[test]
    fn the_pool_reuses_buffers_up_to_its_bound() {
        let mut buf = take_buffer(1 << 16);
        let cap = buf.capacity();
        buf.extend_from_slice(&[1, 2, 3]);
        let ptr = buf.as_ptr();
        recycle(buf);
        let larger = take_buffer(cap + 1);
        assert_ne!(larger.as_ptr(), ptr, "too small: not taken");
        let again = take_buffer(16);
        assert_eq!(again.as_ptr(), ptr, "the pooled buffer comes back");
        assert!(again.is_empty() && again.capacity() >= cap);
        recycle(larger);
        assert!(take_buffer(cap + 1).capacity() > cap);
        recycle(Bytes::with_capacity(POOL_MAX_BYTES + 16));
        assert!(POOL.with(|p| p.borrow().bytes) <= POOL_MAX_BYTES);
    }
}
