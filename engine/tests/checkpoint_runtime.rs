//! Checkpoints on the real runtime: glommio reactors, io_uring writes to the
//! store in a temporary directory, a failure after checkpoints completed, and
//! a restart that restores the latest one.

mod common;

use common::*;
use spate::internals::sim::SplitMix64;
use spate::source::SequenceSource;
use spate::window::{WindowAssigner, WindowResult};
use spate::{
    CheckpointConfig, CheckpointMode, Dataflow, Job, JobConfig, JobError, KeyedContext,
    RestartStrategy, WatermarkStrategy,
};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

const EVENTS: u64 = 30_000;

fn event(index: u64) -> Event {
    let mut rng = SplitMix64::new(index);
    Event {
        key: rng.below(40),
        ts: 1_000 + index / 4,
        value: rng.below(1_000),
    }
}

type Totals = Arc<Mutex<Vec<(u64, u64, u64)>>>;
type Windows = Arc<Mutex<Vec<WindowResult<u64, (u64, u64)>>>>;

/// Totals and windows over a paced source; `fail` makes a keyed operator
/// return an error (a task failure) on its next record, once.
fn job(df: &Dataflow, totals: &Totals, windows: &Windows, fail: &Arc<AtomicBool>, rate: f64) {
    let clock = df.clock();
    let start = clock.now_ms();
    let events = df.source(
        "events",
        SequenceSource::new(EVENTS, event).with_rate(rate, start, clock),
        WatermarkStrategy::monotonous(|e: &Event| e.ts),
    );
    let fail = fail.clone();
    let checked = events
        .key_by(|e: &Event| e.key)
        .process("tripwire", move |_| {
            move |e: Event, ctx: &mut KeyedContext<u64, Event>| {
                if fail.swap(false, Ordering::SeqCst) {
                    return Err("injected task failure".into());
                }
                ctx.emit(e);
                Ok(())
            }
        });
    let t = totals.clone();
    running_totals(&checked).for_each(move |r| t.lock().unwrap().push(r.value));
    let w = windows.clone();
    windowed(&checked, WindowAssigner::tumbling(100))
        .for_each(move |r| w.lock().unwrap().push(r.value));
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("spate-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn config(dir: &PathBuf, mode: CheckpointMode, incremental: bool) -> JobConfig {
    JobConfig {
        parallelism: 2,
        max_parallelism: 64,
        pin_cores: false,
        checkpoint: Some(CheckpointConfig {
            mode,
            incremental,
            max_delta_chain: 2,
            timeout_ms: 5_000,
            ..CheckpointConfig::new(dir, 30)
        }),
        ..JobConfig::default()
    }
}

fn fail_and_resume(mode: CheckpointMode, incremental: bool) {
    fail_and_resume_on(mode, incremental, 2, 2);
}

/// Fails a job on `from` subtasks after two checkpoints, then resumes it on
/// `to` subtasks (rescaling: key groups, in-flight records and source splits
/// move to their new owners).
fn fail_and_resume_on(mode: CheckpointMode, incremental: bool, from: usize, to: usize) {
    fail_and_resume_with(mode, incremental, from, to, 2, &|_| {}, &|_| {});
}

/// [`fail_and_resume_on`], failing after `fail_after` checkpoints, with the
/// checkpoint settings changed by `setup`; `inspect` looks at the state
/// directory at the end.
fn fail_and_resume_with(
    mode: CheckpointMode,
    incremental: bool,
    from: usize,
    to: usize,
    fail_after: u64,
    setup: &dyn Fn(&mut CheckpointConfig),
    inspect: &dyn Fn(&PathBuf),
) {
    let dir = temp_dir(&format!(
        "ckpt-{}-{incremental}-{from}-{to}-{fail_after}",
        mode.name()
    ));
    let config = |parallelism: usize| {
        let mut config = JobConfig {
            parallelism,
            ..config(&dir, mode, incremental)
        };
        if let Some(c) = config.checkpoint.as_mut() {
            setup(c);
        }
        config
    };
    let all: Vec<Event> = (0..EVENTS).map(event).collect();
    let totals: Totals = Default::default();
    let windows: Windows = Default::default();
    let fail = Arc::new(AtomicBool::new(false));

    let (t, w, f) = (totals.clone(), windows.clone(), fail.clone());
    let handle = Job::new(config(from))
        .start(move |df| job(df, &t, &w, &f, 20_000.0))
        .unwrap();
    // Fail the job once enough checkpoints are durable (or if it ends first).
    while handle.completed_checkpoints() < fail_after && handle.is_running() {
        std::thread::yield_now();
    }
    fail.store(true, Ordering::SeqCst);
    let first = handle.join();
    let failed_by_us =
        matches!(&first, Err(JobError::Operator { operator, .. }) if operator == "tripwire");
    assert!(failed_by_us || first.is_ok(), "{mode:?}: {first:?}");

    fail.store(false, Ordering::SeqCst);
    let (t, w, f) = (totals.clone(), windows.clone(), fail.clone());
    let second = Job::new(config(to))
        .run(move |df| job(df, &t, &w, &f, 1_000_000.0))
        .unwrap();
    if failed_by_us {
        assert!(
            second.restored_from.is_some(),
            "{mode:?}: restored from a checkpoint"
        );
    }
    let reference = reference_totals(&all);
    let got = finals(&totals.lock().unwrap());
    let reference_windows: BTreeSet<_> = reference_windows(&all, 100, 100).into_iter().collect();
    let got_windows: BTreeSet<_> = windows.lock().unwrap().iter().cloned().collect();
    if mode == CheckpointMode::AtLeastOnce {
        for (key, (count, _)) in &reference {
            assert!(got[key].0 >= *count, "{mode:?}: key {key}");
        }
    } else {
        assert_eq!(got, reference, "{mode:?}: totals");
        assert_eq!(got_windows, reference_windows, "{mode:?}: windows");
    }
    let checkpoints = second.checkpoints;
    assert!(
        checkpoints
            .iter()
            .all(|c| c.status == spate::CheckpointStatus::Completed),
        "{mode:?}: {checkpoints:?}"
    );
    inspect(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn aligned_job_resumes_after_a_task_failure() {
    fail_and_resume(CheckpointMode::Aligned, false);
}

#[test]
fn unaligned_job_resumes_after_a_task_failure() {
    fail_and_resume(CheckpointMode::Unaligned, false);
}

#[test]
fn aligned_with_timeout_job_resumes_after_a_task_failure() {
    fail_and_resume(CheckpointMode::AlignedWithTimeout { timeout_ms: 1 }, false);
}

#[test]
fn at_least_once_job_resumes_after_a_task_failure() {
    fail_and_resume(CheckpointMode::AtLeastOnce, false);
}

#[test]
fn incremental_aligned_job_resumes_after_a_task_failure() {
    fail_and_resume(CheckpointMode::Aligned, true);
}

/// Incremental and concurrent aligned checkpoints through the writer task
/// and the io_uring store: chains take up bases materialised in the
/// background, and a job failed after 20 checkpoints resumes exactly.
/// Archiving that waits for the writer, on the runtime: with a backlog
/// budget of one byte, a block handed to the writer stops archiving in the
/// background until the writer has copied it, and a write to a key group not
/// archived yet keeps the written key's value at the cut (copy-on-write per
/// entry). The job still resumes exactly, full and incremental.
#[test]
fn archiving_behind_the_writer_resumes_exactly_on_the_runtime() {
    for incremental in [false, true] {
        fail_and_resume_with(
            CheckpointMode::Aligned,
            incremental,
            2,
            2,
            6,
            &|c| c.archive_backlog_bytes = 1,
            &|_| {},
        );
    }
}

#[test]
fn background_bases_and_concurrent_checkpoints_on_the_runtime() {
    let setup = |c: &mut CheckpointConfig| {
        // Chains bounded by length only (a key group holds a key or two, so
        // its deltas weigh as much as its base), with checkpoints of slack
        // between the request of a background base and the bound.
        c.max_delta_chain = 8;
        c.max_delta_ratio = 100.0;
        c.max_concurrent = 2;
        c.retained = 1_000;
    };
    let inspect = |dir: &PathBuf| {
        use spate::checkpoint::CheckpointMetadata;
        let reader = spate_storage::StoreReader::open(dir).unwrap();
        let records = reader.checkpoints();
        let handles: std::collections::HashMap<u64, BTreeSet<_>> = records
            .iter()
            .map(|r| (r.id, r.handles.iter().copied().collect()))
            .collect();
        let taken_up = records
            .iter()
            .flat_map(|r| {
                let m = CheckpointMetadata::decode(&r.metadata).unwrap();
                m.state
                    .into_iter()
                    .map(|s| {
                        let base = s.chain[0].clone();
                        (m.id, base.checkpoint, r.handles[base.handle as usize])
                    })
                    .collect::<Vec<_>>()
            })
            .filter(|(id, cut, handle)| {
                cut < id && handles.get(cut).is_some_and(|h| !h.contains(handle))
            })
            .count();
        assert!(
            taken_up > 0,
            "chains took up bases written in the background"
        );
    };
    fail_and_resume_with(CheckpointMode::Aligned, true, 2, 2, 20, &setup, &inspect);
}

#[test]
fn incremental_unaligned_job_resumes_after_a_task_failure() {
    fail_and_resume(CheckpointMode::Unaligned, true);
}

#[test]
fn aligned_checkpoint_rescales_from_2_to_1() {
    fail_and_resume_on(CheckpointMode::Aligned, false, 2, 1);
}

#[test]
fn aligned_checkpoint_rescales_from_1_to_2() {
    fail_and_resume_on(CheckpointMode::Aligned, false, 1, 2);
}

#[test]
fn aligned_checkpoint_rescales_from_3_to_2() {
    fail_and_resume_on(CheckpointMode::Aligned, true, 3, 2);
}

#[test]
fn unaligned_checkpoint_rescales_from_2_to_1() {
    fail_and_resume_on(CheckpointMode::Unaligned, false, 2, 1);
}

#[test]
fn unaligned_checkpoint_rescales_from_1_to_2() {
    fail_and_resume_on(CheckpointMode::Unaligned, false, 1, 2);
}

#[test]
fn unaligned_checkpoint_rescales_from_3_to_2() {
    fail_and_resume_on(CheckpointMode::Unaligned, true, 3, 2);
}

#[test]
fn an_incompatible_job_is_refused() {
    let dir = temp_dir("ckpt-incompatible");
    let (t, w, f): (Totals, Windows, _) = (
        Default::default(),
        Default::default(),
        Arc::new(AtomicBool::new(false)),
    );
    let handle = Job::new(config(&dir, CheckpointMode::Aligned, false))
        .start(move |df| job(df, &t, &w, &f, 20_000.0))
        .unwrap();
    while handle.completed_checkpoints() < 1 && handle.is_running() {
        std::thread::yield_now();
    }
    handle.join().unwrap();
    // Another job (different operators) on the same directory.
    let result = Job::new(config(&dir, CheckpointMode::Aligned, false)).run(|df| {
        df.source(
            "numbers",
            SequenceSource::new(10, |i| i),
            WatermarkStrategy::none(),
        )
        .for_each(|_| {});
    });
    match result {
        Err(JobError::Restore(spate::RestoreError::IncompatibleJob {
            found, expected, ..
        })) => {
            assert_ne!(found, expected)
        }
        other => panic!("expected an incompatible-job error, got {other:?}"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_relative_state_directory_works() {
    let dir = PathBuf::from(format!("target/spate-relative-ckpt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (t, w, f): (Totals, Windows, _) = (
        Default::default(),
        Default::default(),
        Arc::new(AtomicBool::new(false)),
    );
    let handle = Job::new(config(&dir, CheckpointMode::Aligned, false))
        .start(move |df| job(df, &t, &w, &f, 20_000.0))
        .unwrap();
    while handle.completed_checkpoints() < 1 && handle.is_running() {
        std::thread::yield_now();
    }
    let report = handle.join().unwrap();
    assert!(
        report.checkpoint_summary.completed >= 1 && report.checkpoint_summary.failed == 0,
        "{:?}",
        report.checkpoints
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A task failure with a restart strategy: the supervisor restarts the job
/// from the latest checkpoint in the same `join`, and the results are those
/// of an uninterrupted run.
fn restart_after_a_task_failure(mode: CheckpointMode) {
    let dir = temp_dir(&format!("restart-{}", mode.name()));
    let all: Vec<Event> = (0..EVENTS).map(event).collect();
    let totals: Totals = Default::default();
    let windows: Windows = Default::default();
    let fail = Arc::new(AtomicBool::new(false));
    let mut config = config(&dir, mode, false);
    config.restart = RestartStrategy::FixedDelay {
        attempts: 2,
        delay: std::time::Duration::ZERO,
    };
    let (t, w, f) = (totals.clone(), windows.clone(), fail.clone());
    let handle = Job::new(config)
        .start(move |df| job(df, &t, &w, &f, 20_000.0))
        .unwrap();
    while handle.completed_checkpoints() < 2 && handle.is_running() {
        std::thread::yield_now();
    }
    fail.store(true, Ordering::SeqCst);
    let report = handle.join().expect("restarted and finished");
    if report.restarts.restarts == 0 {
        // The input ended before the tripwire was armed: nothing to check.
        assert!(fail.load(Ordering::SeqCst), "{mode:?}");
        return;
    }
    assert_eq!(report.restarts.restarts, 1, "{mode:?}");
    let cause = report.restarts.last_failure.clone().unwrap_or_default();
    assert!(cause.contains("injected task failure"), "{cause}");
    assert!(report.restarts.last_failure_ms.is_some());
    assert!(
        report.restored_from.is_some(),
        "{mode:?}: resumed from a checkpoint"
    );
    let reference = reference_totals(&all);
    assert_eq!(
        finals(&totals.lock().unwrap()),
        reference,
        "{mode:?}: totals"
    );
    let reference_windows: BTreeSet<_> = reference_windows(&all, 100, 100).into_iter().collect();
    let got_windows: BTreeSet<_> = windows.lock().unwrap().iter().cloned().collect();
    assert_eq!(got_windows, reference_windows, "{mode:?}: windows");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn aligned_job_restarts_itself_after_a_task_failure() {
    restart_after_a_task_failure(CheckpointMode::Aligned);
}

#[test]
fn unaligned_job_restarts_itself_after_a_task_failure() {
    restart_after_a_task_failure(CheckpointMode::Unaligned);
}

/// A job that fails on every run: the strategy's attempts are used up, then
/// the failure is returned, with the restart count in the handle.
#[test]
fn a_job_that_keeps_failing_gives_up_after_its_attempts() {
    let dir = temp_dir("restart-give-up");
    let mut config = config(&dir, CheckpointMode::Aligned, false);
    config.restart = RestartStrategy::FixedDelay {
        attempts: 3,
        delay: std::time::Duration::ZERO,
    };
    let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let r = runs.clone();
    let handle = Job::new(config)
        .start(move |df| {
            if df.subtask() == 0 {
                r.fetch_add(1, Ordering::SeqCst);
            }
            df.source(
                "numbers",
                SequenceSource::new(100, |i| i),
                WatermarkStrategy::none(),
            )
            .key_by(|n: &u64| *n)
            .process("always-fails", |_| {
                |_: u64, _: &mut KeyedContext<u64, u64>| Err("broken".into())
            })
            .for_each(|_: spate::Record<u64>| {});
        })
        .unwrap();
    let result = handle.join();
    match result {
        Err(JobError::Operator { operator, .. }) => assert_eq!(operator, "always-fails"),
        other => panic!("expected the operator's failure, got {other:?}"),
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        4,
        "the first run and 3 restarts"
    );
    std::fs::remove_dir_all(&dir).ok();
}

fn window_line(w: &WindowResult<u64, (u64, u64)>, out: &mut Vec<u8>) {
    use std::io::Write;
    let _ = write!(
        out,
        "{{\"key\":{},\"start\":{},\"end\":{},\"count\":{},\"sum\":{}}}",
        w.key, w.start, w.end, w.value.0, w.value.1
    );
}

/// Windows through a file sink, a task failure after two checkpoints, a
/// restart by the strategy: the committed files hold every window result
/// exactly once (or at least once in that mode), and nothing stays pending.
/// Where a failure is injected, once, after two checkpoints completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// A keyed operator returns an error.
    Task,
    /// The sink fails inside a checkpoint (its pre-commit at the barrier).
    PreCommit,
    /// The sink fails committing a completed checkpoint.
    Commit,
    /// A task failure, then the restarted run fails while restoring (its
    /// build panics), then the next restart succeeds.
    Restore,
}

/// One-shot failure switches, armed by the test.
#[derive(Default)]
struct Faults {
    task: AtomicBool,
    pre_commit: AtomicBool,
    commit: AtomicBool,
    restore: AtomicBool,
}

/// A sink that fails once where armed, and otherwise is `inner`.
struct Flaky<S> {
    inner: S,
    faults: Arc<Faults>,
}

impl<T, S: spate::sink::Sink<T>> spate::sink::Sink<T> for Flaky<S> {
    fn open(&mut self, context: &spate::sink::SinkContext) -> Result<(), spate::SinkError> {
        self.inner.open(context)
    }
    fn write(&mut self, batch: &mut Vec<spate::Record<T>>) -> Result<(), spate::SinkError> {
        self.inner.write(batch)
    }
    fn finish(&mut self) -> Result<(), spate::SinkError> {
        self.inner.finish()
    }
    fn is_transactional(&self) -> bool {
        self.inner.is_transactional()
    }
    fn pre_commit(&mut self, id: u64) -> Result<(), spate::SinkError> {
        if self.faults.pre_commit.swap(false, Ordering::SeqCst) {
            return Err(spate::SinkError::Other(
                "injected pre-commit failure".into(),
            ));
        }
        self.inner.pre_commit(id)
    }
    fn commit(&mut self, id: u64) -> Result<(), spate::SinkError> {
        if self.faults.commit.swap(false, Ordering::SeqCst) {
            return Err(spate::SinkError::Other("injected commit failure".into()));
        }
        self.inner.commit(id)
    }
}

fn file_sink_across_a_restart(mode: CheckpointMode, sink_mode: spate::sink::FileSinkMode) {
    file_sink_with_a_fault(mode, sink_mode, Fault::Task);
}

fn file_sink_with_a_fault(
    mode: CheckpointMode,
    sink_mode: spate::sink::FileSinkMode,
    fault: Fault,
) {
    use spate::sink::{FileSink, FileSinkMode};
    let name = format!("file-sink-{}-{sink_mode:?}-{fault:?}", mode.name());
    let dir = temp_dir(&name);
    let out = temp_dir(&format!("{name}-out"));
    let all: Vec<Event> = (0..EVENTS).map(event).collect();
    let faults = Arc::new(Faults::default());
    let mut config = config(&dir, mode, false);
    config.restart = RestartStrategy::FixedDelay {
        attempts: 2,
        delay: std::time::Duration::ZERO,
    };
    let (f, o) = (faults.clone(), out.clone());
    let handle = Job::new(config)
        .start(move |df| {
            if f.restore.swap(false, Ordering::SeqCst) {
                panic!("injected failure while restoring");
            }
            let clock = df.clock();
            let start = clock.now_ms();
            let fail = f.clone();
            let sink_faults = f.clone();
            let checked = df
                .source(
                    "events",
                    SequenceSource::new(EVENTS, event).with_rate(20_000.0, start, clock),
                    WatermarkStrategy::monotonous(|e: &Event| e.ts),
                )
                .key_by(|e: &Event| e.key)
                .process("tripwire", move |_| {
                    move |e: Event, ctx: &mut KeyedContext<u64, Event>| {
                        if fail.task.swap(false, Ordering::SeqCst) {
                            return Err("injected task failure".into());
                        }
                        ctx.emit(e);
                        Ok(())
                    }
                });
            windowed(&checked, WindowAssigner::tumbling(100)).sink(
                "files",
                Flaky {
                    inner: FileSink::new(&o, sink_mode, window_line),
                    faults: sink_faults,
                },
            );
        })
        .unwrap();
    while handle.completed_checkpoints() < 2 && handle.is_running() {
        std::thread::yield_now();
    }
    let armed = match fault {
        Fault::Task => &faults.task,
        Fault::PreCommit => &faults.pre_commit,
        Fault::Commit => &faults.commit,
        Fault::Restore => {
            faults.restore.store(true, Ordering::SeqCst);
            &faults.task
        }
    };
    armed.store(true, Ordering::SeqCst);
    let report = handle.join().expect("restarted and finished");
    // The fault fired (and was restarted from) unless the input ended first.
    let fired = !armed.load(Ordering::SeqCst);
    let expected_restarts = match fault {
        Fault::Restore if fired => 2,
        _ => u32::from(fired),
    };
    assert_eq!(report.restarts.restarts, expected_restarts, "{name}");
    if fired {
        let cause = report.restarts.last_failure.clone().unwrap_or_default();
        let expected_cause = match fault {
            Fault::Task => "injected task failure",
            Fault::PreCommit => "injected pre-commit failure",
            Fault::Commit => "injected commit failure",
            Fault::Restore => "injected failure while restoring",
        };
        assert!(cause.contains(expected_cause), "{name}: {cause}");
    }
    let mut expected: Vec<String> = reference_windows(&all, 100, 100)
        .iter()
        .map(|w| {
            let mut line = Vec::new();
            window_line(w, &mut line);
            String::from_utf8(line).unwrap()
        })
        .collect();
    expected.sort();
    let got = committed_lines(&out);
    match sink_mode {
        FileSinkMode::ExactlyOnce => {
            assert_eq!(got.len(), expected.len(), "{name}: {report:?}");
            assert_eq!(got, expected, "{name}");
            let pending: Vec<_> = std::fs::read_dir(out.join(".pending")).unwrap().collect();
            assert!(pending.is_empty(), "{name}: left pending: {pending:?}");
        }
        FileSinkMode::AtLeastOnce => {
            let got: BTreeSet<_> = got.into_iter().collect();
            for line in &expected {
                assert!(got.contains(line), "{name}: lost {line}");
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn exactly_once_file_sink_aligned() {
    file_sink_across_a_restart(
        CheckpointMode::Aligned,
        spate::sink::FileSinkMode::ExactlyOnce,
    );
}

#[test]
fn exactly_once_file_sink_unaligned() {
    file_sink_across_a_restart(
        CheckpointMode::Unaligned,
        spate::sink::FileSinkMode::ExactlyOnce,
    );
}

#[test]
fn at_least_once_file_sink_loses_nothing() {
    file_sink_across_a_restart(
        CheckpointMode::Aligned,
        spate::sink::FileSinkMode::AtLeastOnce,
    );
}

#[test]
fn a_sink_failure_inside_a_checkpoint_restarts_and_commits_exactly_once() {
    file_sink_with_a_fault(
        CheckpointMode::Aligned,
        spate::sink::FileSinkMode::ExactlyOnce,
        Fault::PreCommit,
    );
}

#[test]
fn a_failure_while_committing_the_sink_restarts_and_commits_exactly_once() {
    file_sink_with_a_fault(
        CheckpointMode::Unaligned,
        spate::sink::FileSinkMode::ExactlyOnce,
        Fault::Commit,
    );
}

#[test]
fn a_failure_during_restore_is_restarted_again() {
    file_sink_with_a_fault(
        CheckpointMode::Aligned,
        spate::sink::FileSinkMode::ExactlyOnce,
        Fault::Restore,
    );
}

#[test]
fn an_exactly_once_sink_is_refused_with_at_least_once_checkpoints() {
    use spate::sink::{FileSink, FileSinkMode};
    let dir = temp_dir("at-least-once-refused");
    let out = temp_dir("at-least-once-refused-out");
    let o = out.clone();
    let error = Job::new(config(&dir, CheckpointMode::AtLeastOnce, false))
        .run(move |df| {
            df.source(
                "events",
                SequenceSource::new(100, event),
                WatermarkStrategy::monotonous(|e: &Event| e.ts),
            )
            .sink(
                "files",
                FileSink::new(&o, FileSinkMode::ExactlyOnce, |e: &Event, line| {
                    line.extend_from_slice(e.key.to_string().as_bytes())
                }),
            );
        })
        .unwrap_err();
    assert!(
        matches!(&error, JobError::Config(spate::ConfigError::Conflict(m)) if m.contains("at-least-once")),
        "{error}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn two_jobs_of_one_process_cannot_share_a_state_directory() {
    let dir = temp_dir("two-jobs-one-dir");
    let first = Job::new(config(&dir, CheckpointMode::Aligned, false))
        .start(|df| {
            df.source(
                "events",
                SequenceSource::new(u64::MAX, event),
                WatermarkStrategy::monotonous(|e: &Event| e.ts),
            )
            .sink("discard", spate::sink::DiscardSink::new());
        })
        .unwrap();
    let second = Job::new(config(&dir, CheckpointMode::Aligned, false)).start(|df| {
        df.source(
            "events",
            SequenceSource::new(10, event),
            WatermarkStrategy::monotonous(|e: &Event| e.ts),
        )
        .sink("discard", spate::sink::DiscardSink::new());
    });
    let Err(error) = second else {
        panic!("a second job started on a directory in use")
    };
    assert!(matches!(error, JobError::StateDirectory(_)), "{error}");
    first.stop();
    first.join().unwrap();
    // Free again once the first job ended.
    Job::new(config(&dir, CheckpointMode::Aligned, false))
        .run(|df| {
            df.source(
                "events",
                SequenceSource::new(10, event),
                WatermarkStrategy::monotonous(|e: &Event| e.ts),
            )
            .sink("discard", spate::sink::DiscardSink::new());
        })
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_fresh_start_on_a_used_remote_prefix_restores_its_own_blocks_later() {
    // Run A leaves its checkpoints under a remote prefix (one subtask: its
    // segments hold other bytes than two subtasks' at the same offsets).
    // Run B starts fresh on the same prefix from an empty directory and
    // fails after two checkpoints; run C restores B's latest from the
    // remote tier alone. B's new store must number its segments above A's:
    // otherwise its uploads reference A's extents for its own blocks, and
    // C reads A's bytes.
    let dir = temp_dir("fresh-on-used-remote");
    let tier = temp_dir("fresh-on-used-remote-tier");
    let url = format!("file://{}", tier.display());
    let config = |parallelism: usize, restore: spate::RestoreFrom| {
        let mut config = JobConfig {
            parallelism,
            ..config(&dir, CheckpointMode::Aligned, true)
        };
        if let Some(c) = config.checkpoint.as_mut() {
            c.remote = Some(url.clone());
            c.restore = restore;
        }
        config
    };
    let all: Vec<Event> = (0..EVENTS).map(event).collect();
    let run_a: (Totals, Windows) = Default::default();
    let (t, w) = run_a.clone();
    let never = Arc::new(AtomicBool::new(false));
    let a = Job::new(config(1, spate::RestoreFrom::Nothing))
        .run(move |df| job(df, &t, &w, &never, 20_000.0))
        .unwrap();
    assert!(
        a.checkpoint_summary.completed > 0,
        "run A took no checkpoint"
    );
    std::fs::remove_dir_all(&dir).unwrap();

    let totals: Totals = Default::default();
    let windows: Windows = Default::default();
    let fail = Arc::new(AtomicBool::new(false));
    let (t, w, f) = (totals.clone(), windows.clone(), fail.clone());
    let handle = Job::new(config(2, spate::RestoreFrom::Nothing))
        .start(move |df| job(df, &t, &w, &f, 20_000.0))
        .unwrap();
    while handle.completed_checkpoints() < 2 && handle.is_running() {
        std::thread::yield_now();
    }
    fail.store(true, Ordering::SeqCst);
    let b = handle.join();
    assert!(
        matches!(&b, Err(JobError::Operator { operator, .. }) if operator == "tripwire"),
        "run B: {b:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();

    fail.store(false, Ordering::SeqCst);
    let (t, w, f) = (totals.clone(), windows.clone(), fail.clone());
    let c = Job::new(config(2, spate::RestoreFrom::Latest))
        .run(move |df| job(df, &t, &w, &f, 1_000_000.0))
        .unwrap();
    assert!(c.restored_from.is_some(), "run C restored nothing");
    assert_eq!(finals(&totals.lock().unwrap()), reference_totals(&all));
    let got_windows: BTreeSet<_> = windows.lock().unwrap().iter().cloned().collect();
    let reference: BTreeSet<_> = reference_windows(&all, 100, 100).into_iter().collect();
    assert_eq!(got_windows, reference);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&tier);
}
