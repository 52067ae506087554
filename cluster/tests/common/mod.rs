//! Helpers shared by the crate's tests: a scenario of raw key-value and
//! lease operations whose results must be the same on etcd and on the
//! simulated store (the simulation is only as good as its model). Other
//! tests may write to the same etcd meanwhile, so only revisions of this
//! scenario's own keys are compared, never the store's revision.

#![allow(dead_code)]

use spate_cluster::{Compare, CoordError, Coordination, KeyRange, Txn, TxnOp, TxnOpResponse};

/// Runs the scenario under `prefix` (which must hold no keys); panics on the
/// first difference from etcd's documented behaviour.
pub fn conformance(c: &dyn Coordination, prefix: &str) {
    let k = |s: &str| format!("{prefix}{s}").into_bytes();
    // Put: create and mod revisions, version.
    let r1 = c.put(&k("a"), b"1", None).unwrap();
    let r2 = c.put(&k("a"), b"2", None).unwrap();
    assert!(r2 > r1);
    let got = c.range(&KeyRange::Key(k("a"))).unwrap();
    assert_eq!(got.kvs.len(), 1);
    let kv = &got.kvs[0];
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (r1, r2, 2)
    );
    assert_eq!(kv.value, b"2");
    assert!(got.revision >= r2);

    // Create-if-absent: fails on an existing key and runs the failure branch.
    let t = c
        .txn(&Txn {
            compare: vec![Compare::absent(&k("a"))],
            success: vec![TxnOp::Put {
                key: k("a"),
                value: b"x".to_vec(),
                lease: None,
            }],
            failure: vec![TxnOp::Get(KeyRange::Key(k("a")))],
        })
        .unwrap();
    assert!(!t.succeeded);
    assert_eq!(t.kvs(0)[0].value, b"2");
    // ... and succeeds on an absent one at one new revision.
    let t = c
        .txn(&Txn {
            compare: vec![Compare::absent(&k("b")), Compare::modified_at(&k("a"), r2)],
            success: vec![
                TxnOp::Put {
                    key: k("b"),
                    value: b"b".to_vec(),
                    lease: None,
                },
                TxnOp::Put {
                    key: k("c"),
                    value: b"c".to_vec(),
                    lease: None,
                },
            ],
            failure: vec![],
        })
        .unwrap();
    assert!(t.succeeded);
    assert!(t.revision > r2);
    assert_eq!(t.responses, vec![TxnOpResponse::Put, TxnOpResponse::Put]);
    // Both puts of one transaction happen at its one revision.
    for key in [k("b"), k("c")] {
        let kv = &c.range(&KeyRange::Key(key)).unwrap().kvs[0];
        assert_eq!(
            (kv.create_revision, kv.mod_revision, kv.version),
            (t.revision, t.revision, 1)
        );
    }
    // A failed guard on the mod revision runs the failure branch.
    let t = c
        .txn(&Txn {
            compare: vec![Compare::modified_at(&k("a"), r1)],
            success: vec![TxnOp::Delete(KeyRange::Key(k("a")))],
            failure: vec![TxnOp::Delete(KeyRange::Key(k("absent")))],
        })
        .unwrap();
    assert!(!t.succeeded);
    assert_eq!(t.responses, vec![TxnOpResponse::Delete(0)]);
    // mod revision of an absent key compares as 0.
    let t = c
        .txn(&Txn {
            compare: vec![Compare::modified_at(&k("zz"), 0)],
            success: vec![TxnOp::Get(KeyRange::Prefix(k("")))],
            failure: vec![],
        })
        .unwrap();
    assert!(t.succeeded);
    let keys: Vec<_> = t.kvs(0).iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(keys, vec![k("a"), k("b"), k("c")]);

    // Leases: keys bound to a lease go with it.
    let lease = c.lease_grant(30).unwrap();
    assert!(lease.ttl_s >= 30);
    c.put(&k("l1"), b"", Some(lease.id)).unwrap();
    c.put(&k("l2"), b"", Some(lease.id)).unwrap();
    assert_eq!(
        c.range(&KeyRange::Key(k("l1"))).unwrap().kvs[0].lease,
        lease.id.0
    );
    assert!(c.lease_keepalive(lease.id).unwrap() >= 30);
    c.lease_revoke(lease.id).unwrap();
    assert!(c.range(&KeyRange::Key(k("l1"))).unwrap().kvs.is_empty());
    assert!(c.range(&KeyRange::Key(k("l2"))).unwrap().kvs.is_empty());
    assert!(matches!(
        c.lease_keepalive(lease.id),
        Err(CoordError::LeaseNotFound { .. })
    ));
    assert!(matches!(
        c.lease_revoke(lease.id),
        Err(CoordError::LeaseNotFound { .. })
    ));
    assert!(matches!(
        c.put(&k("l3"), b"", Some(lease.id)),
        Err(CoordError::LeaseNotFound { .. })
    ));
    // A key deleted and created again gets a new create revision.
    let before = c.range(&KeyRange::Key(k("b"))).unwrap().kvs[0].create_revision;
    assert_eq!(c.delete(&KeyRange::Key(k("b"))).unwrap(), 1);
    let again = c.put(&k("b"), b"b", None).unwrap();
    assert!(again > before);
    assert_eq!(
        c.range(&KeyRange::Key(k("b"))).unwrap().kvs[0].create_revision,
        again
    );
    // Prefix delete.
    assert_eq!(c.delete(&KeyRange::Prefix(k(""))).unwrap(), 3);
    assert!(c.range(&KeyRange::Prefix(k(""))).unwrap().kvs.is_empty());
}
