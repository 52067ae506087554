//! Loom model of the SPSC ring: the production `ring.rs`, compiled against
//! loom's atomics and cells (through this file's `sync` module), explored over
//! every interleaving loom allows, with small capacities.

#[allow(dead_code, unreachable_pub, missing_docs)]
#[path = "../src/ring.rs"]
mod ring;

/// The names `ring.rs` imports from `crate::sync`, backed by loom.
mod sync {
    pub(crate) use loom::cell::UnsafeCell;
    pub(crate) use loom::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
    pub(crate) use loom::sync::Arc;
}

use loom::thread;

fn push_retrying(tx: &mut ring::Producer<u32>, mut v: u32) {
    loop {
        match tx.try_push(v) {
            Ok(()) => return,
            Err(back) => {
                v = back;
                thread::yield_now();
            }
        }
    }
}

#[test]
fn messages_arrive_once_and_in_order_through_a_full_ring() {
    loom::model(|| {
        let (mut tx, mut rx) = ring::ring::<u32>(2);
        let producer = thread::spawn(move || {
            for i in 0..3 {
                push_retrying(&mut tx, i);
            }
        });
        let mut got = Vec::new();
        while got.len() < 3 {
            match rx.pop() {
                Some(v) => got.push(v),
                None => thread::yield_now(),
            }
        }
        producer.join().unwrap();
        assert_eq!(got, vec![0, 1, 2]);
        assert_eq!(rx.pop(), None);
    });
}

#[test]
fn peeked_messages_are_not_overwritten() {
    loom::model(|| {
        let (mut tx, mut rx) = ring::ring::<u32>(2);
        tx.try_push(10).unwrap();
        tx.try_push(11).unwrap();
        // The ring is full until the consumer pops: this push may only
        // succeed after the pop, and must never clobber a peeked slot.
        let producer = thread::spawn(move || push_retrying(&mut tx, 12));
        let mut peeked = Vec::new();
        rx.peek_until(2, |_, v| peeked.push(*v));
        assert_eq!(peeked, vec![10, 11]);
        assert_eq!(rx.pop(), Some(10));
        let mut rest = Vec::new();
        while rest.len() < 2 {
            match rx.pop() {
                Some(v) => rest.push(v),
                None => thread::yield_now(),
            }
        }
        producer.join().unwrap();
        assert_eq!(rest, vec![11, 12]);
    });
}

#[test]
fn close_publishes_everything_pushed_before() {
    loom::model(|| {
        let (mut tx, mut rx) = ring::ring::<u32>(2);
        let producer = thread::spawn(move || {
            tx.try_push(1).unwrap();
            drop(tx);
        });
        let mut got = Vec::new();
        loop {
            if let Some(v) = rx.pop() {
                got.push(v);
            } else if rx.is_closed() {
                // Closed is set after the last push: a pop now must see it.
                if let Some(v) = rx.pop() {
                    got.push(v);
                }
                break;
            } else {
                thread::yield_now();
            }
        }
        producer.join().unwrap();
        assert_eq!(got, vec![1]);
    });
}
