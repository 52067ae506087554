//! Bounded lock-free single-producer single-consumer ring: the only channel
//! between cores.
//!
//! Owns: slot storage, the two monotonically increasing positions (`head`,
//! written only by the consumer, and `tail`, written only by the producer),
//! and the out-of-band barrier notices. Must not know about records, barriers
//! or operators beyond carrying them: the exchange layer gives them meaning.
//!
//! Positions are sequence numbers, not slot indices: message `p` lives in slot
//! `p & mask` and the ring holds positions `head..tail`. A position names a
//! message for ever, which is what checkpoints need: a barrier sent when the
//! producer's tail was `P` sits *at* `P`, and the consumer may [`peek`] any
//! message in `head..P` without consuming it (it owns that range: the producer
//! never overwrites a slot the consumer has not released).
//!
//! [`channel`] pairs the data ring with a small ring of [`Notice`]s, the
//! out-of-band path: a barrier announced there (carrying its in-band position)
//! overtakes every message queued before it.
//!
//! [`peek`]: Consumer::peek

use crate::sync::{fence, Arc, AtomicBool, AtomicU64, Ordering, UnsafeCell};
use std::mem::MaybeUninit;

/// Keeps the producer's and the consumer's positions on separate cache lines.
#[repr(align(128))]
struct CachePadded<T>(T);

struct Shared<T> {
    slots: Box<[UnsafeCell<MaybeUninit<T>>]>,
    mask: u64,
    /// Next position to read. Written by the consumer only.
    head: CachePadded<AtomicU64>,
    /// Next position to write. Written by the producer only.
    tail: CachePadded<AtomicU64>,
    /// Set (Release) when the producer is dropped: nothing follows `tail`.
    closed: AtomicBool,
}

// SAFETY: the ring hands each `T` from exactly one producer thread to exactly
// one consumer thread; `T: Send` is all that needs. Slot access is disjoint:
// the producer only writes slots in `tail..head+cap`, the consumer only reads
// slots in `head..tail`, and the Release/Acquire pairs on `head` and `tail`
// order those accesses.
unsafe impl<T: Send> Send for Shared<T> {}
// SAFETY: as above; `Shared` is only reached through one `Producer` and one
// `Consumer`, each `!Sync` by itself, so no two threads touch one side at once.
unsafe impl<T: Send> Sync for Shared<T> {}

impl<T> Drop for Shared<T> {
    fn drop(&mut self) {
        let head = self.head.0.load(Ordering::Relaxed);
        let tail = self.tail.0.load(Ordering::Relaxed);
        for pos in head..tail {
            let slot = &self.slots[(pos & self.mask) as usize];
            // SAFETY: `&mut self` means both endpoints are gone; every slot in
            // `head..tail` was written by the producer and not yet read.
            slot.with_mut(|p| unsafe { (*p).assume_init_drop() });
        }
    }
}

/// Creates a ring of `capacity` messages (rounded up to a power of two, at
/// least 2) and returns its two endpoints.
pub fn ring<T: Send>(capacity: usize) -> (Producer<T>, Consumer<T>) {
    let capacity = capacity.max(2).next_power_of_two();
    let slots = (0..capacity)
        .map(|_| UnsafeCell::new(MaybeUninit::uninit()))
        .collect::<Vec<_>>()
        .into_boxed_slice();
    let shared = Arc::new(Shared {
        slots,
        mask: capacity as u64 - 1,
        head: CachePadded(AtomicU64::new(0)),
        tail: CachePadded(AtomicU64::new(0)),
        closed: AtomicBool::new(false),
    });
    (
        Producer {
            shared: shared.clone(),
            tail: 0,
            cached_head: 0,
            capacity: capacity as u64,
        },
        Consumer {
            shared,
            head: 0,
            cached_tail: 0,
        },
    )
}

/// The writing end of a ring. `Send`, not `Clone`: exactly one producer.
pub struct Producer<T> {
    shared: Arc<Shared<T>>,
    /// Local copy of `shared.tail` (only we write it).
    tail: u64,
    /// Last `head` we loaded; refreshed only when the ring looks full.
    cached_head: u64,
    capacity: u64,
}

impl<T: Send> Producer<T> {
    /// Appends `value` at position [`position`](Self::position), or gives it
    /// back if the ring is full.
    pub fn try_push(&mut self, value: T) -> Result<(), T> {
        if self.tail - self.cached_head == self.capacity {
            self.cached_head = self.shared.head.0.load(Ordering::Acquire);
            if self.tail - self.cached_head == self.capacity {
                return Err(value);
            }
        }
        let slot = &self.shared.slots[(self.tail & self.shared.mask) as usize];
        // SAFETY: `tail - head < capacity`, so the slot at `tail` is not in the
        // consumer's range `head..tail`; the Acquire load of `head` above (or an
        // earlier one) ordered the consumer's last read of it before this write.
        slot.with_mut(|p| unsafe { (*p).write(value) });
        self.tail += 1;
        self.shared.tail.0.store(self.tail, Ordering::Release);
        Ok(())
    }

    /// The position the next pushed message will get.
    pub fn position(&self) -> u64 {
        self.tail
    }

    /// Free slots as far as the producer knows (refreshes its view of the
    /// consumer's position).
    pub fn free_slots(&mut self) -> u64 {
        self.cached_head = self.shared.head.0.load(Ordering::Acquire);
        self.capacity - (self.tail - self.cached_head)
    }

    /// Capacity in messages.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }
}

impl<T: Send + 'static> Producer<T> {
    /// A read-only view of how full the ring is, for a monitor on any
    /// thread (it keeps the ring's storage alive while it lives).
    pub fn occupancy(&self) -> Occupancy {
        let shared = self.shared.clone();
        Occupancy(Box::new(move || {
            // `head` first: it never passes `tail`, which only grows.
            let head = shared.head.0.load(Ordering::Acquire);
            let tail = shared.tail.0.load(Ordering::Acquire);
            tail.saturating_sub(head)
        }))
    }
}

/// How many messages a ring holds, read from outside its two endpoints
/// (neither of which it slows down: two loads, no writes).
pub struct Occupancy(Box<dyn Fn() -> u64 + Send + Sync>);

impl Occupancy {
    /// Messages written and not yet consumed.
    pub fn messages(&self) -> u64 {
        (self.0)()
    }
}

impl<T> Drop for Producer<T> {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
    }
}

/// The reading end of a ring. `Send`, not `Clone`: exactly one consumer.
pub struct Consumer<T> {
    shared: Arc<Shared<T>>,
    /// Local copy of `shared.head` (only we write it).
    head: u64,
    /// Last `tail` we loaded; refreshed only when the ring looks empty.
    cached_tail: u64,
}

impl<T: Send> Consumer<T> {
    /// Takes the message at the read position, if one is there.
    pub fn pop(&mut self) -> Option<T> {
        if self.head == self.cached_tail {
            self.cached_tail = self.shared.tail.0.load(Ordering::Acquire);
            if self.head == self.cached_tail {
                return None;
            }
        }
        let slot = &self.shared.slots[(self.head & self.shared.mask) as usize];
        // SAFETY: `head < tail` (Acquire-loaded), so the producer wrote this
        // slot and published it; we take the value out exactly once and then
        // release the slot by advancing `head`.
        let value = slot.with(|p| unsafe { (*p).assume_init_read() });
        self.head += 1;
        self.shared.head.0.store(self.head, Ordering::Release);
        Some(value)
    }

    /// Borrows the message at `position` without consuming it, if it has been
    /// written and not yet consumed (`read_position() <= position < tail`).
    ///
    /// This is how an unaligned checkpoint reads its in-flight records: the
    /// range between the read position and a barrier's position belongs to the
    /// consumer, so the producer cannot overwrite it while it is borrowed.
    pub fn peek(&mut self, position: u64) -> Option<&T> {
        if position < self.head {
            return None;
        }
        if position >= self.cached_tail {
            self.cached_tail = self.shared.tail.0.load(Ordering::Acquire);
            if position >= self.cached_tail {
                return None;
            }
        }
        let slot = &self.shared.slots[(position & self.shared.mask) as usize];
        // SAFETY: `head <= position < tail`: the slot was written and published
        // (Acquire load of `tail`) and is not released until `head` passes it,
        // which needs `&mut self` (`pop`), so the borrow cannot outlive it.
        Some(slot.with(|p| unsafe { (*p).assume_init_ref() }))
    }

    /// Visits, without consuming, every written message with a position in
    /// `read_position()..until`; returns how many were visited.
    pub fn peek_until(&mut self, until: u64, mut visit: impl FnMut(u64, &T)) -> u64 {
        let start = self.head;
        let mut pos = start;
        while pos < until {
            match self.peek(pos) {
                Some(message) => visit(pos, message),
                None => break,
            }
            pos += 1;
        }
        pos - start
    }

    /// The position of the next message [`pop`](Self::pop) returns.
    pub fn read_position(&self) -> u64 {
        self.head
    }

    /// Whether a message is waiting (refreshes the view of the producer).
    pub fn has_message(&mut self) -> bool {
        if self.head == self.cached_tail {
            self.cached_tail = self.shared.tail.0.load(Ordering::Acquire);
        }
        self.head != self.cached_tail
    }

    /// Whether the producer is gone. Once this returns true, every message it
    /// pushed is visible to [`pop`](Self::pop).
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Whether the producer end is full from the consumer's point of view
    /// (used to decide whether a producer waiting for space needs a wake-up).
    pub fn is_full(&mut self) -> bool {
        self.cached_tail = self.shared.tail.0.load(Ordering::Acquire);
        self.cached_tail - self.head == self.shared.mask + 1
    }
}

/// An out-of-band barrier announcement: checkpoint `checkpoint_id`'s barrier
/// sits in the data ring at `position`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Notice {
    /// The checkpoint whose barrier was sent.
    pub checkpoint_id: u64,
    /// The data-ring position of the barrier's in-band marker.
    pub position: u64,
}

/// Capacity of the out-of-band notice ring: at most this many checkpoints can
/// be announced and not yet read (more than the coordinator ever has pending).
pub const NOTICE_CAPACITY: usize = 16;

/// The producer end of a [`channel`]: data ring plus notice ring.
pub struct ChannelSender<T> {
    /// In-band messages.
    pub data: Producer<T>,
    /// Out-of-band barrier notices.
    pub notices: Producer<Notice>,
}

/// The consumer end of a [`channel`].
pub struct ChannelReceiver<T> {
    /// In-band messages.
    pub data: Consumer<T>,
    /// Out-of-band barrier notices.
    pub notices: Consumer<Notice>,
}

/// Creates a channel: a data ring of `capacity` messages with its
/// out-of-band notice ring.
pub fn channel<T: Send>(capacity: usize) -> (ChannelSender<T>, ChannelReceiver<T>) {
    let (data_tx, data_rx) = ring(capacity);
    let (notice_tx, notice_rx) = ring(NOTICE_CAPACITY);
    (
        ChannelSender {
            data: data_tx,
            notices: notice_tx,
        },
        ChannelReceiver {
            data: data_rx,
            notices: notice_rx,
        },
    )
}

/// A full memory barrier, for the park/notify handshake: a consumer publishes
/// "I am parked" then re-checks its rings; a producer publishes a message then
/// checks "is it parked". With a SeqCst fence on both sides one of them sees
/// the other's write, so no wake-up is lost.
pub fn handshake_fence() {
    fence(Ordering::SeqCst);
}
