//! The SPSC ring through its public API (the loom model is in `loom_ring.rs`).

use spate::internals::ring::{channel, ring, Notice};

#[test]
fn fifo_and_full() {
    let (mut tx, mut rx) = ring::<u32>(4);
    for i in 0..4 {
        tx.try_push(i).unwrap();
    }
    assert_eq!(tx.try_push(9), Err(9), "a full ring gives the value back");
    assert_eq!(rx.pop(), Some(0));
    tx.try_push(4).unwrap();
    let got: Vec<_> = std::iter::from_fn(|| rx.pop()).collect();
    assert_eq!(got, vec![1, 2, 3, 4]);
    assert_eq!(rx.pop(), None);
}

#[test]
fn peek_range_does_not_consume() {
    let (mut tx, mut rx) = ring::<String>(8);
    for i in 0..6 {
        tx.try_push(format!("m{i}")).unwrap();
    }
    assert_eq!(rx.pop().as_deref(), Some("m0"));
    let mut seen = Vec::new();
    let n = rx.peek_until(4, |pos, m| seen.push((pos, m.clone())));
    assert_eq!(n, 3);
    assert_eq!(
        seen,
        vec![(1, "m1".into()), (2, "m2".into()), (3, "m3".into())]
    );
    assert!(rx.peek(0).is_none(), "consumed positions cannot be peeked");
    assert!(rx.peek(6).is_none(), "unwritten positions cannot be peeked");
    assert_eq!(rx.pop().as_deref(), Some("m1"), "peeking consumed nothing");
    assert_eq!(rx.read_position(), 2);
}

#[test]
fn drops_unread_messages() {
    let marker = std::sync::Arc::new(());
    let (mut tx, rx) = ring(4);
    tx.try_push(marker.clone()).unwrap();
    tx.try_push(marker.clone()).unwrap();
    drop(tx);
    assert!(rx.is_closed());
    drop(rx);
    assert_eq!(std::sync::Arc::strong_count(&marker), 1);
}

#[test]
fn barrier_notice_overtakes_backlog() {
    let (mut tx, mut rx) = channel::<u64>(8);
    for i in 0..5 {
        tx.data.try_push(i).unwrap();
    }
    // In-band marker at the producer's position, out-of-band notice carrying it.
    let position = tx.data.position();
    tx.data.try_push(u64::MAX).unwrap();
    tx.notices
        .try_push(Notice {
            checkpoint_id: 7,
            position,
        })
        .unwrap();
    // The consumer learns of the barrier before reading the backlog, and can
    // read the in-flight records before it without consuming them.
    let notice = rx.notices.pop().unwrap();
    assert_eq!(
        notice,
        Notice {
            checkpoint_id: 7,
            position: 5
        }
    );
    let mut in_flight = Vec::new();
    rx.data
        .peek_until(notice.position, |_, v| in_flight.push(*v));
    assert_eq!(in_flight, vec![0, 1, 2, 3, 4]);
    assert_eq!(rx.data.peek(notice.position), Some(&u64::MAX));
}

#[test]
fn cross_thread_order() {
    let (mut tx, mut rx) = ring::<u64>(64);
    let n = 200_000u64;
    let producer = std::thread::spawn(move || {
        let mut i = 0;
        while i < n {
            if tx.try_push(i).is_ok() {
                i += 1;
            } else {
                std::hint::spin_loop();
            }
        }
    });
    let mut expect = 0;
    while expect < n {
        if let Some(v) = rx.pop() {
            assert_eq!(v, expect);
            expect += 1;
        } else {
            std::hint::spin_loop();
        }
    }
    producer.join().unwrap();
}
