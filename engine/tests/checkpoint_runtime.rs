//! Checkpoints on the real runtime: glommio reactors, io_uring writes to the
//! store in a temporary directory, a failure after checkpoints completed, and
//! a restart that restores the latest one.

mod common;

use common::*;
use spate::sim::SplitMix64;
use spate::source::SequenceSource;
use spate::window::{WindowAssigner, WindowResult};
use spate::{
    CheckpointConfig, CheckpointMode, Dataflow, Job, JobConfig, JobError, KeyedContext,
    WatermarkStrategy,
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
/// return an error (a task failure) on its next record.
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
                if fail.load(Ordering::SeqCst) {
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
    let dir = temp_dir(&format!("ckpt-{}-{incremental}", mode.name()));
    let all: Vec<Event> = (0..EVENTS).map(event).collect();
    let totals: Totals = Default::default();
    let windows: Windows = Default::default();
    let fail = Arc::new(AtomicBool::new(false));

    let (t, w, f) = (totals.clone(), windows.clone(), fail.clone());
    let handle = Job::new(config(&dir, mode, incremental))
        .start(move |df| job(df, &t, &w, &f, 20_000.0))
        .unwrap();
    // Fail the job once two checkpoints are durable (or if it ends first).
    while handle.completed_checkpoints() < 2 && handle.is_running() {
        std::thread::yield_now();
    }
    fail.store(true, Ordering::SeqCst);
    let first = handle.join();
    let failed_by_us =
        matches!(&first, Err(JobError::Operator { operator, .. }) if operator == "tripwire");
    assert!(failed_by_us || first.is_ok(), "{mode:?}: {first:?}");

    fail.store(false, Ordering::SeqCst);
    let (t, w, f) = (totals.clone(), windows.clone(), fail.clone());
    let second = Job::new(config(&dir, mode, incremental))
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

#[test]
fn incremental_unaligned_job_resumes_after_a_task_failure() {
    fail_and_resume(CheckpointMode::Unaligned, true);
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
        Err(JobError::Restore(message)) => {
            assert!(message.contains("incompatible job"), "{message}")
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
