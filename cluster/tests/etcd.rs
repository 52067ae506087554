//! The coordination layer against a real etcd on 127.0.0.1: membership
//! through leases, election, the fenced checkpoint pointer and assignment.
//!
//! The endpoint comes from `SPATE_ETCD_ENDPOINT` (`.ci/run` starts etcd and
//! sets it); `SPATE_SKIP_ETCD_TESTS=1` skips these tests. Every test works
//! under a job name of its own, so runs against a long-lived etcd do not
//! interfere. Waits are on conditions with deadlines, never fixed sleeps.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use spate_cluster::{
    campaign, current_leader, join, leave, members, read_assignment, read_pointer, AssignedProcess,
    AssignmentError, Campaign, Coordination, EtcdClient, JobKeys, KeepAlive, Leadership, LeaseLost,
    MemberInfo, PointerError,
};

/// How long a condition may take (lease expiry with a 1 s TTL that etcd may
/// raise to 2 s, plus its expiry sweep).
const DEADLINE: Duration = Duration::from_secs(15);

/// The test etcd, or `None` when etcd tests are skipped. Panics with
/// instructions when neither is configured.
fn etcd() -> Option<Arc<EtcdClient>> {
    if std::env::var("SPATE_SKIP_ETCD_TESTS").is_ok_and(|v| v == "1") {
        eprintln!("skipped: etcd tests (SPATE_SKIP_ETCD_TESTS=1)");
        return None;
    }
    let Ok(endpoint) = std::env::var("SPATE_ETCD_ENDPOINT") else {
        panic!(
            "the cluster coordination tests need etcd: `apt-get install etcd-server`, start \
             `etcd --data-dir /tmp/spate-etcd --listen-client-urls http://127.0.0.1:2379 \
             --advertise-client-urls http://127.0.0.1:2379` and set \
             SPATE_ETCD_ENDPOINT=http://127.0.0.1:2379 (.ci/run does both), or set \
             SPATE_SKIP_ETCD_TESTS=1 to skip them"
        );
    };
    let client = EtcdClient::new(&endpoint, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("SPATE_ETCD_ENDPOINT: {e}"));
    if let Err(e) = client.range(&spate_cluster::KeyRange::Key(b"/spate/".to_vec())) {
        panic!(
            "SPATE_ETCD_ENDPOINT={endpoint}: {e}; is etcd running? \
             (set SPATE_SKIP_ETCD_TESTS=1 to skip the etcd tests)"
        );
    }
    Some(Arc::new(client))
}

/// A job name no other test or run uses.
fn job(test: &str) -> JobKeys {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    JobKeys::new(&format!("test-{test}-{}-{nanos}", std::process::id())).unwrap()
}

/// Polls `cond` until it holds; panics with `what` at the deadline.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::park_timeout(Duration::from_millis(20));
    }
}

fn info(process_id: u32) -> MemberInfo {
    MemberInfo {
        process_id,
        address: format!("127.0.0.1:{}", 7000 + process_id),
        cores: 2,
    }
}

fn member_ids(c: &EtcdClient, keys: &JobKeys) -> Vec<u32> {
    members(c, keys)
        .unwrap()
        .into_iter()
        .map(|m| m.info.process_id)
        .collect()
}

fn elected(
    c: &EtcdClient,
    keys: &JobKeys,
    process_id: u32,
    lease: spate_cluster::LeaseId,
) -> Leadership {
    match campaign(c, keys, process_id, lease).unwrap() {
        Campaign::Elected(l) => l,
        Campaign::Follower(f) => panic!("process {process_id} not elected: {f:?} leads"),
    }
}

#[test]
fn etcd_behaves_like_the_simulated_store() {
    let Some(c) = etcd() else { return };
    let keys = job("conformance");
    common::conformance(&*c, std::str::from_utf8(keys.prefix()).unwrap());
}

#[test]
fn members_appear_and_disappear_with_their_lease() {
    let Some(c) = etcd() else { return };
    let keys = job("members");
    // Process 1 renews its lease on a keepalive thread; process 2, granted
    // later with the same TTL, does not.
    let l1 = c.lease_grant(1).unwrap();
    let lost1 = Arc::new(AtomicBool::new(false));
    let hook = lost1.clone();
    let keepalive = KeepAlive::start(
        c.clone(),
        l1,
        Box::new(move |_| hook.store(true, Ordering::SeqCst)),
    )
    .unwrap();
    join(&*c, &keys, &info(1), l1.id).unwrap();
    let l2 = c.lease_grant(1).unwrap();
    join(&*c, &keys, &info(2), l2.id).unwrap();
    assert_eq!(member_ids(&c, &keys), vec![1, 2]);
    // Joining again with the same lease is idempotent (a lost reply's
    // retry); with another lease, refused while the holder lives.
    join(&*c, &keys, &info(2), l2.id).unwrap();
    let other = c.lease_grant(30).unwrap();
    assert!(matches!(
        join(&*c, &keys, &info(2), other.id),
        Err(spate_cluster::JoinError::IdTaken { process_id: 2, .. })
    ));

    // Process 2 stops renewing: it disappears; process 1, whose lease is as
    // old, stays because it renews.
    wait_until("process 2's lease expires", || {
        member_ids(&c, &keys) == vec![1]
    });
    assert!(keepalive.is_alive());
    assert!(!lost1.load(Ordering::SeqCst));
    // Its id is free again.
    join(&*c, &keys, &info(2), other.id).unwrap();
    assert_eq!(member_ids(&c, &keys), vec![1, 2]);
    leave(&*c, other.id).unwrap();

    // Process 1 stops renewing (its keepalive thread ends): gone too.
    drop(keepalive);
    wait_until("process 1's lease expires", || {
        member_ids(&c, &keys).is_empty()
    });
    assert!(!lost1.load(Ordering::SeqCst), "a stop is not a loss");
}

#[test]
fn keepalive_reports_a_revoked_lease() {
    let Some(c) = etcd() else { return };
    let lease = c.lease_grant(2).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let keepalive =
        KeepAlive::start(c.clone(), lease, Box::new(move |why| tx.send(why).unwrap())).unwrap();
    assert!(keepalive.is_alive());
    c.lease_revoke(lease.id).unwrap();
    assert_eq!(keepalive.wait_lost(DEADLINE), Some(LeaseLost::Expired));
    assert_eq!(rx.recv_timeout(DEADLINE), Ok(LeaseLost::Expired));
    assert!(!keepalive.is_alive());
}

#[test]
fn a_second_candidate_leads_after_the_first_lease_is_revoked_or_expires() {
    let Some(c) = etcd() else { return };
    let keys = job("election");
    let l1 = c.lease_grant(30).unwrap();
    let l2 = c.lease_grant(1).unwrap();
    let l3 = c.lease_grant(1).unwrap();
    let _k3 = KeepAlive::start(c.clone(), l3, Box::new(|_| {})).unwrap();

    let first = elected(&c, &keys, 1, l1.id);
    match campaign(&*c, &keys, 2, l2.id).unwrap() {
        Campaign::Follower(f) => {
            assert_eq!((f.record.process_id, f.term), (1, first.term));
        }
        Campaign::Elected(_) => panic!("two leaders"),
    }
    // Campaigning again with the same lease finds its own key (a lost
    // reply's retry): same term.
    assert_eq!(elected(&c, &keys, 1, l1.id), first);

    // Revoked: process 2 takes over with a later term.
    c.lease_revoke(l1.id).unwrap();
    assert_eq!(current_leader(&*c, &keys).unwrap(), None);
    let second = elected(&c, &keys, 2, l2.id);
    assert!(second.term > first.term);
    assert!(!first.is_current(&*c, &keys).unwrap());
    assert!(second.is_current(&*c, &keys).unwrap());

    // Process 2 does not renew: process 3 (renewing) takes over when its
    // lease expires.
    let mut third = None;
    wait_until("process 3 is elected", || {
        match campaign(&*c, &keys, 3, l3.id).unwrap() {
            Campaign::Elected(l) => {
                third = Some(l);
                true
            }
            Campaign::Follower(f) => {
                assert_eq!(f.term, second.term);
                false
            }
        }
    });
    assert!(third.unwrap().term > second.term);
}

#[test]
fn a_deposed_leader_cannot_move_the_pointer_or_the_assignment() {
    let Some(c) = etcd() else { return };
    let keys = job("fencing");
    let l1 = c.lease_grant(30).unwrap();
    let l2 = c.lease_grant(30).unwrap();
    let old = elected(&c, &keys, 1, l1.id);
    old.advance_pointer(&*c, &keys, 1, "global/1").unwrap();
    let a = old
        .write_assignment(
            &*c,
            &keys,
            vec![AssignedProcess {
                process_id: 1,
                cores: 2,
            }],
            None,
        )
        .unwrap();
    assert_eq!(a.generation, 1);

    // Process 1's lease ends (as if it expired during a partition);
    // process 2 is elected.
    c.lease_revoke(l1.id).unwrap();
    let new = elected(&c, &keys, 2, l2.id);

    // The old leader still holds its Leadership: every write is refused.
    match old.advance_pointer(&*c, &keys, 2, "global/2-old") {
        Err(PointerError::Deposed { term, current }) => {
            assert_eq!(term, old.term);
            assert_eq!(current.map(|c| c.term), Some(new.term));
        }
        other => panic!("deposed leader moved the pointer: {other:?}"),
    }
    assert!(matches!(
        old.write_assignment(&*c, &keys, vec![], Some(1)),
        Err(AssignmentError::Deposed { .. })
    ));
    let (pointer, _) = read_pointer(&*c, &keys).unwrap().unwrap();
    assert_eq!((pointer.checkpoint_id, pointer.term), (1, old.term));

    // The new leader moves both.
    new.advance_pointer(&*c, &keys, 2, "global/2").unwrap();
    let a = new
        .write_assignment(
            &*c,
            &keys,
            vec![AssignedProcess {
                process_id: 2,
                cores: 2,
            }],
            Some(2),
        )
        .unwrap();
    assert_eq!((a.generation, a.term), (2, new.term));
    assert_eq!(read_assignment(&*c, &keys).unwrap().unwrap().0, a);

    // Process 1 comes back with a new lease and is elected after process 2
    // resigns: its old term stays fenced off.
    assert!(new.resign(&*c, &keys).unwrap());
    let l1b = c.lease_grant(30).unwrap();
    let back = elected(&c, &keys, 1, l1b.id);
    assert!(back.term > new.term);
    assert!(matches!(
        old.advance_pointer(&*c, &keys, 3, "global/3-old"),
        Err(PointerError::Deposed { .. })
    ));
    back.advance_pointer(&*c, &keys, 3, "global/3").unwrap();
    for l in [l2.id, l1b.id] {
        leave(&*c, l).unwrap();
    }
}

#[test]
fn the_pointer_never_moves_backwards() {
    let Some(c) = etcd() else { return };
    let keys = job("pointer");
    let l1 = c.lease_grant(30).unwrap();
    let leader = elected(&c, &keys, 1, l1.id);
    assert_eq!(read_pointer(&*c, &keys).unwrap(), None);
    leader.advance_pointer(&*c, &keys, 5, "global/5").unwrap();
    // The same move again (a retry after a lost reply) is a success and
    // writes nothing.
    let (_, rev) = read_pointer(&*c, &keys).unwrap().unwrap();
    assert_eq!(
        leader.advance_pointer(&*c, &keys, 5, "global/5").unwrap(),
        rev
    );
    for (id, record) in [(3, "global/3"), (5, "global/5-other")] {
        match leader.advance_pointer(&*c, &keys, id, record) {
            Err(PointerError::Backwards {
                current: 5,
                proposed,
            }) => assert_eq!(proposed, id),
            other => panic!("pointer moved from 5 to {id}: {other:?}"),
        }
    }
    // A later leader cannot move it back either.
    c.lease_revoke(l1.id).unwrap();
    let l2 = c.lease_grant(30).unwrap();
    let next = elected(&c, &keys, 2, l2.id);
    assert!(matches!(
        next.advance_pointer(&*c, &keys, 4, "global/4"),
        Err(PointerError::Backwards {
            current: 5,
            proposed: 4
        })
    ));
    next.advance_pointer(&*c, &keys, 6, "global/6").unwrap();
    let (pointer, _) = read_pointer(&*c, &keys).unwrap().unwrap();
    assert_eq!(
        (pointer.checkpoint_id, pointer.term, pointer.record.as_str()),
        (6, next.term, "global/6")
    );
    leave(&*c, l2.id).unwrap();
}
