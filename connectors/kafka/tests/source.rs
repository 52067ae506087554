//! The Kafka source against the real broker: start offsets, restore and
//! rescale from checkpoints, and poison records under each policy.

mod common;

use spate::sink::{FileSink, FileSinkMode, Sink};
use spate::{CheckpointConfig, Job, JobConfig, JobError, SinkError, WatermarkStrategy};
use spate_kafka::client::{OutRecord, ProducerFactory, RdProducerFactory};
use spate_kafka::{KafkaRecord, KafkaSource, KafkaSourceConfig, PoisonPolicy, StartOffset, StopAt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Writes `values` to `partition`, one record per batch (tansu 0.6.0 answers
/// ListOffsets with the last batch's base offset + 1, right only for
/// single-record batches), with timestamps if given.
fn produce(
    brokers: &str,
    topic: &str,
    partition: i32,
    values: &[String],
    timestamps: Option<&[i64]>,
) {
    let mut f = RdProducerFactory::new(common::properties(brokers).with("batch.num.messages", "1"));
    let mut p = f.producer(topic, None).unwrap();
    for (i, v) in values.iter().enumerate() {
        p.send(&OutRecord {
            partition: Some(partition),
            key: None,
            payload: v.clone().into_bytes(),
            timestamp_ms: timestamps.map(|t| t[i]),
        })
        .unwrap();
    }
    p.flush().unwrap();
}

/// `topic:partition:offset:value`: unique per record, so duplicates and
/// wrong offsets both show.
fn describe(r: &KafkaRecord<'_>) -> Result<String, String> {
    let v = std::str::from_utf8(r.payload.unwrap_or_default()).map_err(|e| e.to_string())?;
    if v.starts_with("bad") {
        return Err(format!("not a value: {v:?}"));
    }
    Ok(format!("{}:{}:{}:{v}", r.topic, r.partition, r.offset))
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("kafka-source-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A sink that publishes what it receives at once (for unbounded jobs the
/// test watches).
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<String>>>);

impl Sink<String> for Seen {
    fn write(&mut self, batch: &mut Vec<spate::Record<String>>) -> Result<(), SinkError> {
        self.0
            .lock()
            .unwrap()
            .extend(batch.drain(..).map(|r| r.value));
        Ok(())
    }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs an unbounded job from `start` into a [`Seen`] sink on a topic of one
/// partition holding `end` records; returns its handle once the source's
/// position on that partition, committed to the group by a completed
/// checkpoint, is `end` (it read everything there was from its start, and
/// the sink, chained to it, saw it before that checkpoint's barrier), and
/// the sink.
fn start_unbounded(
    brokers: &str,
    topic: &str,
    group: &str,
    start: StartOffset,
    end: i64,
    dir: &Path,
) -> (spate::JobHandle, Seen) {
    let mut source = KafkaSourceConfig::new(common::properties(brokers), &[topic], group);
    source.start = start;
    let seen = Seen::default();
    let sink = seen.clone();
    let mut config = JobConfig::with_parallelism(1);
    config.pin_cores = false;
    config.checkpoint = Some(CheckpointConfig::new(dir.join("state"), 20));
    let handle = Job::new(config)
        .start(move |df| {
            df.source(
                "kafka",
                KafkaSource::new(source.clone(), Arc::new(describe)),
                WatermarkStrategy::none(),
            )
            .sink("seen", sink.clone());
        })
        .unwrap();
    // The positions go to the consumer group when a checkpoint completes:
    // once the partition's is its end, everything before it was read.
    let consumer =
        spate_kafka::client::RdConsumer::new(&common::properties(brokers), group).unwrap();
    let mut consumer: Box<dyn spate_kafka::client::KafkaConsumer> = Box::new(consumer);
    wait_until("the source's position on the group reaches the end", || {
        handle.completed_checkpoints() >= 2
            && consumer
                .resolve(topic, 0, StartOffset::GroupOffsets)
                .is_ok_and(|o| o == end)
    });
    (handle, seen)
}

#[test]
fn starts_from_earliest_latest_and_a_timestamp() {
    let Some(brokers) = common::brokers() else {
        return;
    };
    let topic = common::topic("start");
    common::create(&brokers, &topic, 1);
    let old: Vec<String> = (0..5).map(|i| format!("old{i}")).collect();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // Old records an hour apart in the past: the timestamp start is between
    // the 2nd and the 3rd.
    let stamps: Vec<i64> = (0..5).map(|i| now_ms - (5 - i) * 3_600_000).collect();
    produce(&brokers, &topic, 0, &old, Some(&stamps));
    let new: Vec<String> = (0..3).map(|i| format!("new{i}")).collect();
    let mut results = Vec::new();
    for (name, start) in [
        ("earliest", StartOffset::Earliest),
        ("latest", StartOffset::Latest),
        ("timestamp", StartOffset::Timestamp(stamps[2] - 1)),
    ] {
        let dir = scratch(name);
        // A group of each run's own: a group an earlier run left at the
        // end would satisfy start_unbounded's wait before this run read
        // anything.
        let group = format!("{topic}-{name}-group");
        let (handle, seen) =
            start_unbounded(&brokers, &topic, &group, start, old.len() as i64, &dir);
        let before = seen.0.lock().unwrap().len();
        results.push((name, before));
        handle.stop();
        handle.join().unwrap();
    }
    // Then records produced while a latest-started job runs reach it.
    let dir = scratch("latest-new");
    let (handle, seen) = start_unbounded(
        &brokers,
        &topic,
        &format!("{topic}-latest-new-group"),
        StartOffset::Latest,
        old.len() as i64,
        &dir,
    );
    produce(&brokers, &topic, 0, &new, None);
    wait_until("the new records arrive", || {
        seen.0.lock().unwrap().len() >= new.len()
    });
    handle.stop();
    handle.join().unwrap();
    let got: Vec<String> = seen
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|v| v.rsplit(':').next().unwrap().to_string())
        .collect();
    assert_eq!(got, new, "latest: only what came after the start");
    assert_eq!(
        results,
        vec![("earliest", 5), ("latest", 0), ("timestamp", 3)],
        "records read from each start before anything new was produced"
    );
}

/// Runs the bounded job reading `topic` into the exactly-once file sink in
/// `out`, with checkpoints in `state`; with `stop_after`, stops it (a final
/// checkpoint) once that many rows are committed.
fn bounded_run(
    brokers: &str,
    topic: &str,
    parallelism: usize,
    state: &Path,
    out: &Path,
    stop_after: Option<u64>,
    records_per_s: u64,
) {
    let mut source =
        KafkaSourceConfig::new(common::properties(brokers), &[topic], format!("{topic}-g"));
    source.stop = StopAt::Latest;
    let started = Instant::now();
    let read = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // Throttled on the Kafka thread so that the stop falls mid-way.
    let deserialize = Arc::new(move |r: &KafkaRecord<'_>| {
        let n = read.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(wait) =
            Duration::from_secs_f64(n as f64 / records_per_s as f64).checked_sub(started.elapsed())
        {
            std::thread::sleep(wait);
        }
        describe(r)
    });
    let mut config = JobConfig::with_parallelism(parallelism);
    config.pin_cores = false;
    config.checkpoint = Some(CheckpointConfig::new(state, 20));
    let out_dir = out.to_path_buf();
    let out = out.to_path_buf();
    let handle = Job::new(config)
        .start(move |df| {
            df.source(
                "kafka",
                KafkaSource::new(source.clone(), deserialize.clone()),
                WatermarkStrategy::none(),
            )
            .sink(
                "files",
                FileSink::new(
                    out.clone(),
                    FileSinkMode::ExactlyOnce,
                    |v: &String, line: &mut Vec<u8>| line.extend_from_slice(v.as_bytes()),
                ),
            );
        })
        .unwrap();
    if let Some(rows) = stop_after {
        wait_until("rows are committed", || {
            committed_lines(&out_dir).len() as u64 >= rows || !handle.is_running()
        });
        handle.stop();
    }
    handle.join().unwrap();
}

fn committed_lines(out: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    let Ok(entries) = std::fs::read_dir(out) else {
        return lines; // not created yet
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            lines.extend(
                std::fs::read_to_string(&path)
                    .unwrap()
                    .lines()
                    .map(str::to_string),
            );
        }
    }
    lines.sort();
    lines
}

/// A job stopped mid-way and restored (on `first` then `second` subtasks)
/// commits exactly the rows of an uninterrupted run: the second run resumed
/// every partition at its checkpointed offset, wherever it moved.
fn restore_case(name: &str, first: usize, second: usize) {
    let Some(brokers) = common::brokers() else {
        return;
    };
    let topic = common::topic(name);
    common::create(&brokers, &topic, 4);
    for p in 0..4 {
        let values: Vec<String> = (0..300).map(|i| format!("v{p}-{i}")).collect();
        produce(&brokers, &topic, p, &values, None);
    }
    let dir = scratch(name);
    bounded_run(
        &brokers,
        &topic,
        first,
        &dir.join("state"),
        &dir.join("out"),
        Some(200),
        2_000,
    );
    let partial = committed_lines(&dir.join("out")).len();
    bounded_run(
        &brokers,
        &topic,
        second,
        &dir.join("state"),
        &dir.join("out"),
        None,
        1_000_000,
    );
    bounded_run(
        &brokers,
        &topic,
        2,
        &dir.join("ref-state"),
        &dir.join("ref"),
        None,
        1_000_000,
    );
    let got = committed_lines(&dir.join("out"));
    let expected = committed_lines(&dir.join("ref"));
    assert_eq!(expected.len(), 1200);
    assert!(
        partial > 0 && partial < 1200,
        "the first run stopped mid-way ({partial} rows)"
    );
    if got != expected {
        let extra = got.iter().filter(|r| !expected.contains(r)).count();
        let missing = expected.iter().filter(|r| !got.contains(r)).count();
        panic!(
            "{name}: {} rows, the uninterrupted run {}: {missing} missing, {extra} unexpected, \
             {} duplicated",
            got.len(),
            expected.len(),
            got.len() + missing - extra - expected.len()
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn restore_resumes_at_the_checkpointed_offsets() {
    restore_case("restore", 2, 2);
}

#[test]
fn rescale_two_to_one_moves_partitions() {
    restore_case("rescale-2-1", 2, 1);
}

#[test]
fn rescale_one_to_two_moves_partitions() {
    restore_case("rescale-1-2", 1, 2);
}

/// Runs a bounded job over `1, 2, bad, 3` under `policy`.
fn poison_run(
    brokers: &str,
    topic: &str,
    policy: PoisonPolicy,
) -> (Result<Vec<String>, JobError>, u64) {
    let mut source =
        KafkaSourceConfig::new(common::properties(brokers), &[topic], format!("{topic}-g"));
    source.stop = StopAt::Latest;
    source.poison = policy;
    let skipped = source.skipped.clone();
    let collector = spate::sink::Collector::new();
    let sink = collector.clone();
    let mut config = JobConfig::with_parallelism(1);
    config.pin_cores = false;
    let result = Job::new(config).run(move |df| {
        df.source(
            "kafka",
            KafkaSource::new(source.clone(), Arc::new(describe)),
            WatermarkStrategy::none(),
        )
        .sink("collect", sink.sink());
    });
    let values = result.map(|_| {
        let mut v: Vec<String> = collector
            .take()
            .iter()
            .map(|v: &String| v.rsplit(':').next().unwrap().to_string())
            .collect();
        v.sort();
        v
    });
    (values, skipped.load(std::sync::atomic::Ordering::Relaxed))
}

#[test]
fn poison_records_fail_skip_or_go_to_the_dead_letter_topic() {
    let Some(brokers) = common::brokers() else {
        return;
    };
    let topic = common::topic("poison");
    common::create(&brokers, &topic, 1);
    let values: Vec<String> = ["1", "2", "bad-x", "3"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    produce(&brokers, &topic, 0, &values, None);
    let ok = vec!["1".to_string(), "2".into(), "3".into()];

    let (failed, _) = poison_run(&brokers, &topic, PoisonPolicy::Fail);
    let message = failed
        .expect_err("a poison record fails the job")
        .to_string();
    assert!(
        message.contains(&format!("topic {topic} partition 0 offset 2"))
            && message.contains("bad-x"),
        "the error names topic, partition and offset: {message}"
    );

    let (skipped_values, skipped) = poison_run(&brokers, &topic, PoisonPolicy::Skip);
    assert_eq!((skipped_values.unwrap(), skipped), (ok.clone(), 1));

    let dlq = format!("{topic}-dlq");
    common::create(&brokers, &dlq, 1);
    let (dl_values, dead) = poison_run(&brokers, &topic, PoisonPolicy::DeadLetter(dlq.clone()));
    assert_eq!((dl_values.unwrap(), dead), (ok, 1));
    let letters: Vec<String> = common::committed(&brokers, &dlq, 1)[0]
        .iter()
        .map(|r| String::from_utf8(r.value.clone().unwrap()).unwrap())
        .collect();
    assert_eq!(letters, vec!["bad-x"]);
}

/// Per-partition watermarks with idleness: partition 1 of the topic stays
/// empty, and the window over partition 0's records still closes while
/// the job runs (without idleness the empty partition holds the subtask's
/// watermark back and the window waits for the end of input).
#[test]
fn an_idle_partition_does_not_stall_a_window() {
    let Some(brokers) = common::brokers() else {
        return;
    };
    let topic = common::topic("idle");
    common::create(&brokers, &topic, 2);
    let base = 1_700_000_000_000i64; // a window boundary (multiple of 1 s)
    let stamps: Vec<i64> = [0, 300, 600, 1_200, 2_500]
        .iter()
        .map(|d| base + d)
        .collect();
    let values: Vec<String> = stamps.iter().map(|t| t.to_string()).collect();
    produce(&brokers, &topic, 0, &values, Some(&stamps));
    let mut source = KafkaSourceConfig::new(
        common::properties(&brokers),
        &[&topic],
        format!("{topic}-g"),
    );
    source.watermarks = Some(spate_kafka::source::PartitionWatermarks {
        out_of_orderness_ms: 0,
        idle_timeout_ms: 200,
        event_time: None,
    });
    let windows: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
    let seen = windows.clone();
    let mut config = JobConfig::with_parallelism(1);
    config.pin_cores = false;
    let handle = Job::new(config)
        .start(move |df| {
            let seen = seen.clone();
            df.source(
                "kafka",
                KafkaSource::new(
                    source.clone(),
                    Arc::new(|r: &KafkaRecord<'_>| {
                        let v = std::str::from_utf8(r.payload.unwrap_or_default())
                            .map_err(|e| e.to_string())?;
                        v.parse::<u64>().map_err(|e| e.to_string())
                    }),
                ),
                WatermarkStrategy::bounded_out_of_orderness(0, |t: &u64| *t),
            )
            .key_by(|_: &u64| 0u64)
            .window(spate::window::WindowAssigner::tumbling(1_000))
            .aggregate(
                "count",
                spate::window::Aggregate::new(
                    || 0u64,
                    |c: &mut u64, _: &u64| *c += 1,
                    |c: &u64| *c,
                ),
            )
            .sink("windows", WindowSink(seen));
        })
        .unwrap();
    wait_until("the first window closes while the job runs", || {
        !windows.lock().unwrap().is_empty()
    });
    assert!(
        handle.is_running(),
        "closed by the watermark, not by the end of input"
    );
    handle.stop();
    handle.join().unwrap();
    let got = windows.lock().unwrap().clone();
    assert_eq!(
        got[0],
        (base as u64, 3),
        "the first window: its three records"
    );
}

struct WindowSink(Arc<Mutex<Vec<(u64, u64)>>>);

impl Sink<spate::window::WindowResult<u64, u64>> for WindowSink {
    fn write(
        &mut self,
        batch: &mut Vec<spate::Record<spate::window::WindowResult<u64, u64>>>,
    ) -> Result<(), SinkError> {
        self.0
            .lock()
            .unwrap()
            .extend(batch.drain(..).map(|r| (r.value.start, r.value.value)));
        Ok(())
    }
}

/// Partitions that appear while the job runs (here: a second topic of the
/// list, created after the start; the broker under test cannot add
/// partitions to a topic) are found by the periodic discovery and read from
/// their start.
#[test]
fn new_partitions_are_picked_up_while_running() {
    let Some(brokers) = common::brokers() else {
        return;
    };
    let topic = common::topic("discovery");
    let later = format!("{topic}-later");
    common::create(&brokers, &topic, 1);
    produce(&brokers, &topic, 0, &["a".to_string()], None);
    let mut source = KafkaSourceConfig::new(
        common::properties(&brokers),
        &[&topic, &later],
        format!("{topic}-g"),
    );
    source.discovery_interval_ms = 100;
    let seen = Seen::default();
    let sink = seen.clone();
    let mut config = JobConfig::with_parallelism(1);
    config.pin_cores = false;
    let handle = Job::new(config)
        .start(move |df| {
            df.source(
                "kafka",
                KafkaSource::new(source.clone(), Arc::new(describe)),
                WatermarkStrategy::none(),
            )
            .sink("seen", sink.clone());
        })
        .unwrap();
    wait_until("the first record arrives", || {
        seen.0.lock().unwrap().len() == 1
    });
    common::create(&brokers, &later, 1);
    produce(&brokers, &later, 0, &["b".to_string()], None);
    wait_until("the new partition's record arrives", || {
        seen.0.lock().unwrap().len() == 2
    });
    handle.stop();
    handle.join().unwrap();
    let got = seen.0.lock().unwrap().clone();
    assert_eq!(got[1], format!("{later}:0:0:b"));
}

/// A job without a checkpoint started from the group's offsets reads what
/// an earlier job of the group had not read: the earlier job's positions
/// reached the group when its checkpoints completed.
#[test]
fn starts_from_the_group_offsets() {
    let Some(brokers) = common::brokers() else {
        return;
    };
    let topic = common::topic("group");
    common::create(&brokers, &topic, 1);
    let first: Vec<String> = (0..5).map(|i| format!("first{i}")).collect();
    produce(&brokers, &topic, 0, &first, None);
    let dir = scratch("group");
    // The first job runs until its checkpoints committed all five records'
    // positions to its group (start_unbounded waits for that).
    let group = format!("{topic}-group");
    let (handle, seen) = start_unbounded(
        &brokers,
        &topic,
        &group,
        StartOffset::Earliest,
        first.len() as i64,
        &dir.join("a"),
    );
    handle.stop();
    handle.join().unwrap();
    assert_eq!(seen.0.lock().unwrap().len(), 5);
    let second: Vec<String> = (0..3).map(|i| format!("second{i}")).collect();
    produce(&brokers, &topic, 0, &second, None);
    // A fresh state directory: no checkpoint, so the group's offsets decide.
    let mut source = KafkaSourceConfig::new(common::properties(&brokers), &[&topic], &group);
    source.stop = StopAt::Latest;
    source.start = StartOffset::GroupOffsets;
    let collector = spate::sink::Collector::new();
    let sink = collector.clone();
    let mut config = JobConfig::with_parallelism(1);
    config.pin_cores = false;
    Job::new(config)
        .run(move |df| {
            df.source(
                "kafka",
                KafkaSource::new(source.clone(), Arc::new(describe)),
                WatermarkStrategy::none(),
            )
            .sink("collect", sink.sink());
        })
        .unwrap();
    let values: Vec<String> = collector
        .take()
        .iter()
        .map(|v: &String| v.rsplit(':').next().unwrap().to_string())
        .collect();
    assert_eq!(values, second);
}
