//! The transaction protocol against the real broker: a transaction a
//! producer left open is committed by another connection with the recorded
//! producer id and epoch (what a restore does), and fencing aborts one.
//! Checked by reading the partition's batches and markers.

mod common;

use spate_kafka::client::{OutRecord, ProducerFactory, RdProducerFactory};

fn leave_open(
    brokers: &str,
    topic: &str,
    id: &str,
    values: &[&str],
) -> spate_kafka::client::ProducerIdentity {
    let mut f = RdProducerFactory::new(common::properties(brokers));
    let mut p = f.producer(topic, Some(id)).unwrap();
    let identity = p.init_transactions().unwrap();
    p.begin().unwrap();
    for v in values {
        p.send(&OutRecord {
            partition: Some(0),
            payload: v.as_bytes().to_vec(),
            ..OutRecord::default()
        })
        .unwrap();
    }
    p.flush().unwrap();
    // A crashed process: the producer never ends its transaction (its
    // threads are leaked with it, as a killed process's would be gone).
    std::mem::forget(p);
    identity
}

#[test]
fn a_transaction_left_open_is_committed_or_aborted_by_a_later_process() {
    let Some(brokers) = common::brokers() else {
        return;
    };
    let topic = common::topic("protocol");
    common::create(&brokers, &topic, 1);
    let id_commit = format!("{topic}-commit");
    let id_abort = format!("{topic}-abort");
    let identity = leave_open(&brokers, &topic, &id_commit, &["a", "b"]);
    leave_open(&brokers, &topic, &id_abort, &["x"]);
    let values = |brokers: &str| -> Vec<String> {
        common::committed(brokers, &topic, 1)[0]
            .iter()
            .map(|r| String::from_utf8(r.value.clone().unwrap()).unwrap())
            .collect()
    };
    assert!(
        values(&brokers).is_empty(),
        "open transactions are invisible"
    );
    let mut f = RdProducerFactory::new(common::properties(&brokers));
    let mut control = f.control().unwrap();
    control.commit_left_open(&id_commit, identity).unwrap();
    control.fence(&id_abort).unwrap();
    assert_eq!(values(&brokers), vec!["a", "b"]);
    let all = common::all_records(&brokers, &topic, 1);
    assert_eq!(
        all[0].len(),
        3,
        "the aborted record is in the log, not committed"
    );
    // A second commit with the same (now stale) identity after the id was
    // re-initialised is refused: the restore's rule never commits twice.
    control.fence(&id_commit).unwrap();
    assert!(control.commit_left_open(&id_commit, identity).is_err());
}
