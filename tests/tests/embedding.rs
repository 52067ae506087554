//! Exactly once for a service that embeds the engine: numbered records go in
//! through an acknowledged ingress, counts per key come out through a
//! committed egress, and the job fails at seeded moments (operator errors
//! restarted by the supervisor, in this process) or is killed with SIGKILL
//! (a child process hosting job and service, resumed from its checkpoints).
//! The results must equal an uninterrupted run's: every record counted once.

use spate::checkpoint::{CheckpointConfig, CheckpointMode};
use spate::embed::{egress_committed, ingress, ReplayIngress};
use spate::{Job, JobConfig, RestartStrategy, WatermarkStrategy};
use spate_tests::embed::{check_exactly_once, counting_job, summary, Faults, Row};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("embedding-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the counting job in this process with a replay buffer in front and
/// a committed egress behind; returns the rows the service received and
/// the number of restarts.
fn run_in_process(
    dir: &Path,
    mode: CheckpointMode,
    n: u64,
    faults: Option<Arc<Faults>>,
) -> (Vec<Row>, u32) {
    let config = JobConfig {
        parallelism: 2,
        max_parallelism: 64,
        pin_cores: false,
        checkpoint: Some(CheckpointConfig {
            mode,
            ..CheckpointConfig::new(dir, 20)
        }),
        restart: RestartStrategy::FixedDelay {
            attempts: 10,
            delay: std::time::Duration::ZERO,
        },
        ..JobConfig::default()
    };
    let (input, sources) = ingress::<u64>(2, 1024);
    let (sinks, receiver) = egress_committed::<Row>(2, 64);
    let job = Job::new(config)
        .start(move |df| counting_job(df, &sources, &sinks, faults.as_ref()))
        .unwrap();
    let reader = std::thread::spawn(move || receiver.map(|r| r.value).collect::<Vec<_>>());
    let (mut replay, from) = ReplayIngress::new(input, 20_000).unwrap();
    assert_eq!(from, 0, "a fresh job starts at position 0");
    for id in 0..n {
        assert_eq!(replay.push(id).unwrap(), id);
    }
    replay.finish().unwrap();
    let report = job.join().unwrap();
    (reader.join().unwrap(), report.restarts.restarts)
}

fn restarts_replay_ingress_and_roll_back_egress(mode: CheckpointMode, seed: u64) {
    let n = 120_000;
    let (reference, restarts) = run_in_process(&scratch(&format!("ref-{seed}")), mode, n, None);
    assert_eq!(restarts, 0);
    check_exactly_once(&reference, n).unwrap();

    let faults = Faults::seeded(seed, n, 3);
    let dir = scratch(&format!("faults-{seed}"));
    let (rows, restarts) = run_in_process(&dir, mode, n, Some(faults.clone()));
    assert_eq!(faults.remaining(), 0, "every failure point was reached");
    // Two failures may fall into one run (its other subtask fails while
    // the run is being torn down): one restart covers both.
    assert!((1..=3).contains(&restarts), "{restarts} restarts");
    if let Err(problem) = check_exactly_once(&rows, n) {
        panic!("{mode:?}, seed {seed}: {problem}");
    }
    assert_eq!(summary(&rows), summary(&reference), "{mode:?}, seed {seed}");
}

#[test]
fn aligned_restarts_replay_ingress_and_roll_back_egress() {
    restarts_replay_ingress_and_roll_back_egress(CheckpointMode::Aligned, 1);
}

#[test]
fn unaligned_restarts_replay_ingress_and_roll_back_egress() {
    restarts_replay_ingress_and_roll_back_egress(CheckpointMode::Unaligned, 2);
}

/// `embed-service` on `state` writing `results`.
fn service(state: &Path, results: &Path, n: u64, mode: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_embed-service"));
    cmd.arg(state)
        .arg(results)
        // Each epoch takes the service 5 ms to make durable: a checkpoint
        // that completed before the service held its epoch would be seen.
        .args([n.to_string(), "60000".into(), mode.into(), "5".into()])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    cmd
}

/// Rows of a results file (only `r` lines; the file is the service's own).
fn rows(results: &Path) -> Vec<Row> {
    let text = std::fs::read_to_string(results).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.strip_prefix("r "))
        .map(|l| {
            let f: Vec<u64> = l.split(' ').map(|x| x.parse().unwrap()).collect();
            (f[1], f[2], f[3])
        })
        .collect()
}

/// The newest completed checkpoint in `state` (0: none).
fn latest_checkpoint(state: &Path) -> u64 {
    spate_storage::StoreReader::open(state)
        .ok()
        .and_then(|r| r.latest().map(|l| l.id))
        .unwrap_or(0)
}

/// Waits until `more` further checkpoints of the child have completed, then
/// kills it with SIGKILL at once (the moment at which a checkpoint could
/// cover output the service does not hold yet); returns false if it
/// finished first.
fn kill_after_checkpoints(mut child: Child, state: &Path, more: u64) -> bool {
    let target = latest_checkpoint(state) + more;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "the service failed: {status}");
            return false;
        }
        if latest_checkpoint(state) >= target {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

fn kill_9_of_the_service_process(mode: &str, seed: u64) {
    let n = 60_000;
    let dir = scratch(&format!("kill-{mode}"));
    let reference = dir.join("reference.txt");
    let status = service(&dir.join("reference-state"), &reference, n, mode)
        .status()
        .unwrap();
    assert!(status.success());
    let reference = rows(&reference);
    check_exactly_once(&reference, n).unwrap();

    let (state, results) = (dir.join("state"), dir.join("results.txt"));
    let mut rng = spate::internals::sim::SplitMix64::new(seed);
    let mut kills = 0;
    for _ in 0..4 {
        let child = service(&state, &results, n, mode).spawn().unwrap();
        kills += u32::from(kill_after_checkpoints(child, &state, 2 + rng.below(6)));
    }
    assert!(kills >= 2, "the service finished before it could be killed");
    let status = service(&state, &results, n, mode).status().unwrap();
    assert!(status.success(), "the resumed service finishes");
    let got = rows(&results);
    if let Err(problem) = check_exactly_once(&got, n) {
        panic!("{mode}, after {kills} kills: {problem}");
    }
    assert_eq!(summary(&got), summary(&reference), "{mode}");
}

#[test]
fn kill_9_of_an_aligned_service_loses_and_duplicates_nothing() {
    kill_9_of_the_service_process("aligned", 3);
}

#[test]
fn kill_9_of_an_unaligned_service_loses_and_duplicates_nothing() {
    kill_9_of_the_service_process("unaligned", 4);
}

/// A job without keyed state: the sink's input has ended when the final
/// checkpoint is triggered, so the sink pre-commits at the trigger. Its
/// part must wait for the acknowledgement there too, or the last epoch is
/// committed before the receiver sealed it and never released.
#[test]
fn a_stateless_job_commits_its_last_epoch() {
    let dir = scratch("stateless");
    let config = JobConfig {
        parallelism: 2,
        max_parallelism: 64,
        pin_cores: false,
        checkpoint: Some(CheckpointConfig::new(&dir, 20)),
        ..JobConfig::default()
    };
    let (input, sources) = ingress::<u64>(2, 1024);
    let (sinks, receiver) = egress_committed::<u64>(2, 64);
    let job = Job::new(config)
        .start(move |df| {
            df.source("in", sources.take(df.subtask()), WatermarkStrategy::none())
                .map(|x: u64| x * 2)
                .sink("out", sinks.take(df.subtask()));
        })
        .unwrap();
    let reader = std::thread::spawn(move || receiver.map(|r| r.value).collect::<Vec<_>>());
    let (mut replay, _) = ReplayIngress::new(input, 100_000).unwrap();
    for x in 0..10_000u64 {
        replay.push(x).unwrap();
    }
    replay.finish().unwrap();
    job.join().unwrap();
    let mut got = reader.join().unwrap();
    got.sort_unstable();
    assert_eq!(got, (0..10_000u64).map(|x| x * 2).collect::<Vec<_>>());
}

/// A committed egress needs checkpoints: the job fails naming why, and the
/// receiver ends instead of waiting for a run that never opens.
#[test]
fn a_committed_egress_without_checkpoints_fails_the_job_and_ends_the_receiver() {
    let config = JobConfig {
        parallelism: 1,
        pin_cores: false,
        ..JobConfig::default()
    };
    let (_input, sources) = ingress::<u64>(1, 16);
    let (sinks, mut receiver) = egress_committed::<u64>(1, 4);
    let result = Job::new(config)
        .start(move |df| {
            df.source("in", sources.take(df.subtask()), WatermarkStrategy::none())
                .sink("out", sinks.take(df.subtask()));
        })
        .and_then(|job| job.join());
    let error = result.expect_err("refused").to_string();
    assert!(error.contains("commits with checkpoints"), "{error}");
    assert_eq!(receiver.recv(), None);
}
