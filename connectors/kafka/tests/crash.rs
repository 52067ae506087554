//! The Kafka exactly-once kill -9 harness.
//!
//! Runs `kafka-count-job` (Kafka → keyed count → Kafka, transactions
//! committed with the checkpoints) as a child process on a preloaded input
//! topic, and stops it again and again: by SIGKILL at seeded random moments,
//! and by its own abort right after a checkpoint completed and before its
//! transactions were committed (`--crash-before-commit`, the case where the
//! restore must commit the transactions the dead process left open). Runs
//! alternate between 2 and 1 subtasks, so restores also rescale the source
//! (partitions move) and the sink (subtask 0 takes over subtask 1's
//! transactions). Then it runs the job uninterrupted into a second topic,
//! and compares the output topics' committed records: nothing lost, nothing
//! twice.
//!
//! What is committed is read from the partitions' batches and transaction
//! markers themselves (`Fetch`, read uncommitted, with the markers applied
//! by the test: `common::committed`), because tansu 0.6.0 returns no
//! aborted-transaction list and a `read_committed` librdkafka consumer
//! would also see aborted records.
//!
//! `SPATE_KAFKA_CRASH_KILLS=N` sets the number of kills (default 12, half
//! of them before a commit); `SPATE_KAFKA_CRASH_SEED=S` the seed (default:
//! from the clock; printed either way).

mod common;

use spate::internals::sim::SplitMix64;
use spate_kafka::client::{OutRecord, ProducerFactory, RdProducerFactory};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 4;
const KEYS: u64 = 50;
/// Input records per second per process (the child's throttle) while
/// crashes are due; the last run and the reference run are not throttled.
const RATE: u64 = 5_000;

fn load(brokers: &str, topic: &str, records: u64) {
    common::create(brokers, topic, PARTITIONS);
    let mut f = RdProducerFactory::new(common::properties(brokers));
    let mut p = f.producer(topic, None).unwrap();
    for i in 0..records {
        p.send(&OutRecord {
            partition: Some((i % PARTITIONS as u64) as i32),
            key: None,
            payload: format!("{},{i}", i * 7 % KEYS).into_bytes(),
            timestamp_ms: None,
        })
        .unwrap();
    }
    p.flush().unwrap();
}

fn job(
    brokers: &str,
    input: &str,
    output: &str,
    state: &Path,
    parallelism: u32,
    records_per_s: u64,
    end_offset: u64,
) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kafka-count-job"));
    cmd.args(["--brokers", brokers, "--input", input, "--output", output])
        .arg("--state-dir")
        .arg(state)
        .args(["--parallelism", &parallelism.to_string()])
        .args(["--interval-ms", "40"])
        .args(["--records-per-s", &records_per_s.to_string()])
        // Each partition holds records / PARTITIONS: the end offset is
        // given (tansu 0.6.0 answers ListOffsets(latest) with the last
        // batch's base offset + 1).
        .args(["--end-offset", &end_offset.to_string()])
        .stdout(Stdio::null());
    cmd
}

fn scratch() -> PathBuf {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("kafka-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    dir
}

fn sorted_values(brokers: &str, topic: &str) -> Vec<String> {
    let mut v: Vec<String> = common::committed(brokers, topic, PARTITIONS)
        .into_iter()
        .flatten()
        .map(|r| String::from_utf8(r.value.unwrap_or_default()).unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn killed_kafka_jobs_commit_exactly_the_uninterrupted_output() {
    let Some(brokers) = common::brokers() else {
        return;
    };
    let kills: u32 = std::env::var("SPATE_KAFKA_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let seed: u64 = std::env::var("SPATE_KAFKA_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("kafka crash harness: seed {seed} (SPATE_KAFKA_CRASH_SEED={seed} reproduces the kill choices)");
    let mut rng = SplitMix64::new(seed);
    let dir = scratch();
    let input = common::topic("crash-in");
    let output = common::topic("crash-out");
    let reference = common::topic("crash-reference");
    // Enough input that the crashes fall inside runs: a run gets up to
    // about 1.5 s at RATE records/s before its crash.
    let records = RATE * (u64::from(kills) + 6);
    let end_offset = records / PARTITIONS as u64;
    load(&brokers, &input, records);
    common::create(&brokers, &output, PARTITIONS);
    common::create(&brokers, &reference, PARTITIONS);

    let (mut killed, mut aborted_before_commit, mut runs) = (0u32, 0u32, 0u32);
    loop {
        runs += 1;
        assert!(runs < kills * 4 + 10, "no end after {runs} runs");
        let parallelism = if runs % 2 == 1 { 2 } else { 1 };
        let log_path = dir.join(format!("logs/run-{runs}.log"));
        let crashes = killed + aborted_before_commit;
        let rate = if crashes < kills { RATE } else { 0 };
        let mut cmd = job(
            &brokers,
            &input,
            &output,
            &dir.join("state"),
            parallelism,
            rate,
            end_offset,
        );
        // Even crashes: the child aborts itself when a checkpoint completed,
        // before committing (at its 10th..25th commit call: one per sink
        // subtask and checkpoint, past the first checkpoints, which come
        // before any record); odd ones: SIGKILL at a random moment.
        let hook = crashes < kills && crashes % 2 == 0;
        if hook {
            cmd.args(["--crash-before-commit", &(10 + rng.below(16)).to_string()]);
        }
        let mut child = cmd
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .expect("spawning kafka-count-job");
        let status = if crashes < kills && !hook {
            let at = Instant::now() + Duration::from_millis(100 + rng.below(400));
            // Polling the child until the kill moment: the moment is the
            // test's input (a seeded random time), not a synchronisation.
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break Some(status);
                }
                if Instant::now() >= at {
                    child.kill().expect("SIGKILL");
                    child.wait().unwrap();
                    killed += 1;
                    break None;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        } else {
            Some(child.wait().unwrap())
        };
        let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
        match status {
            None => continue,
            Some(s) if s.success() => {
                if crashes >= kills {
                    break;
                }
                // Finished before its crash: the input is used up, so the
                // remaining crashes cannot happen; the test says so below.
                break;
            }
            Some(_) if hook && log().contains("aborting before its commit") => {
                aborted_before_commit += 1;
            }
            Some(s) => panic!("run {runs}: {s}\n{}", log()),
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_kafka-count-job"))
        .args([
            "--brokers",
            &brokers,
            "--input",
            &input,
            "--output",
            &reference,
        ])
        .arg("--state-dir")
        .arg(dir.join("reference-state"))
        .args(["--parallelism", "2"])
        .args(["--end-offset", &end_offset.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "uninterrupted run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = sorted_values(&brokers, &output);
    let expected = sorted_values(&brokers, &reference);
    assert_eq!(
        expected.len() as u64,
        records,
        "one count update per input record"
    );
    if got != expected {
        let missing = expected.iter().filter(|v| !got.contains(v)).count();
        panic!(
            "committed output differs from the uninterrupted run's: {} records vs {} ({missing} \
             missing); logs in {}",
            got.len(),
            expected.len(),
            dir.join("logs").display()
        );
    }
    eprintln!(
        "kafka crash harness: {killed} SIGKILLs, {aborted_before_commit} aborts between checkpoint \
         completion and commit, {runs} runs, {} records identical",
        got.len()
    );
    assert!(
        killed + aborted_before_commit >= kills.min(10),
        "at least 10 crashes happened ({killed} + {aborted_before_commit})"
    );
    if std::env::var("SPATE_KAFKA_CRASH_KEEP").is_err() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
