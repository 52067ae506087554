//! Checkpoints guarantee what their mode promises: a job restored from a
//! checkpoint, with sources replayed from its offsets, ends with the keyed
//! results of a run that never failed (exactly-once modes), or with every
//! record counted at least once (at-least-once). Seeded simulations cover
//! thousands of interleavings; runtime tests use the real store and rings.

mod common;

use common::*;
use spate::sim::{Simulation, SplitMix64};
use spate::window::{WindowAssigner, WindowResult};
use spate::{CheckpointConfig, CheckpointMode, Dataflow, JobConfig, RestoreFrom};
use spate_storage::SimIo;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

type Totals = Arc<Mutex<Vec<(u64, u64, u64)>>>;
type Windows = Arc<Mutex<Vec<WindowResult<u64, (u64, u64)>>>>;

/// The job under test: running totals and sliding windows per key, with
/// outputs recorded as they are emitted (a crash keeps what was emitted).
fn job(df: &Dataflow, data: &Arc<Vec<Event>>, totals: &Totals, windows: &Windows) {
    let events = event_source(df, data);
    let t = totals.clone();
    running_totals(&events).for_each(move |r| t.lock().unwrap().push(r.value));
    let w = windows.clone();
    windowed(&events, WindowAssigner::sliding(200, 50))
        .for_each(move |r| w.lock().unwrap().push(r.value));
}

fn config(parallelism: usize, mode: CheckpointMode, interval_ms: u64) -> JobConfig {
    JobConfig {
        parallelism,
        max_parallelism: 32,
        checkpoint: Some(CheckpointConfig {
            mode,
            ..CheckpointConfig::new("/unused-in-simulation", interval_ms)
        }),
        ..JobConfig::default()
    }
}

fn modes() -> [CheckpointMode; 4] {
    [
        CheckpointMode::Aligned,
        CheckpointMode::Unaligned,
        CheckpointMode::AlignedWithTimeout { timeout_ms: 3 },
        CheckpointMode::AtLeastOnce,
    ]
}

/// Final (count, sum) per key: the largest count emitted for it.
fn last_totals(emitted: &[(u64, u64, u64)]) -> BTreeMap<u64, (u64, u64)> {
    finals(emitted)
}

/// Runs `seed`: crash after `crash_after` checkpoints, restore from the
/// crash image, finish; checks the guarantee of `mode`.
fn crash_and_restore(seed: u64, mode: CheckpointMode, data: &Arc<Vec<Event>>) {
    let mut rng = SplitMix64::new(seed ^ 0xC0FFEE);
    let parallelism = 1 + rng.below(3) as usize;
    let crash_after = 1 + rng.below(3);
    let interval_ms = 5 + rng.below(40);
    let io = SimIo::new();
    let totals: Totals = Default::default();
    let windows: Windows = Default::default();
    let cfg = config(parallelism, mode, interval_ms);
    let (d, t, w) = (data.clone(), totals.clone(), windows.clone());
    let first = Simulation::new(cfg.clone(), seed)
        .storage(io.clone())
        .crash_after_checkpoints(crash_after)
        .run(move |df| job(df, &d, &t, &w))
        .unwrap_or_else(|e| panic!("seed {seed} {mode:?}: first run: {e}"));
    let completed = first
        .checkpoints
        .iter()
        .filter(|c| c.status == spate::CheckpointStatus::Completed)
        .count() as u64;
    // The input may end before `crash_after` checkpoints: then nothing to restore is fine.
    let image = io.crash_image();
    let (d, t, w) = (data.clone(), totals.clone(), windows.clone());
    let second = Simulation::new(cfg, seed.wrapping_add(1))
        .storage(image)
        .run(move |df| job(df, &d, &t, &w))
        .unwrap_or_else(|e| panic!("seed {seed} {mode:?}: restored run: {e}"));
    if completed > 0 {
        assert!(
            second.restored_from.is_some(),
            "seed {seed} {mode:?}: a completed checkpoint must be restored"
        );
    }
    let reference = reference_totals(data);
    let got = last_totals(&totals.lock().unwrap());
    let reference_windows: BTreeSet<_> = reference_windows(data, 200, 50).into_iter().collect();
    let got_windows: BTreeSet<_> = windows.lock().unwrap().iter().cloned().collect();
    if mode == CheckpointMode::AtLeastOnce {
        for (key, (count, _)) in &reference {
            let (got_count, _) = got.get(key).copied().unwrap_or_default();
            assert!(
                got_count >= *count,
                "seed {seed} {mode:?}: key {key} counted {got_count} < {count}"
            );
        }
    } else {
        assert_eq!(
            got, reference,
            "seed {seed} {mode:?} p={parallelism}: totals after restore"
        );
        assert_eq!(
            got_windows, reference_windows,
            "seed {seed} {mode:?} p={parallelism}: windows after restore"
        );
    }
}

#[test]
fn every_mode_survives_a_crash_under_many_seeds() {
    let data = Arc::new(events(21, 3_000, 25, 2));
    let seeds: u64 = std::env::var("SPATE_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(150);
    for seed in 0..seeds {
        for mode in modes() {
            crash_and_restore(seed, mode, &data);
        }
    }
}

#[test]
fn checkpoints_complete_and_record_statistics() {
    let data = Arc::new(events(3, 5_000, 50, 2));
    for mode in modes() {
        let (d, t, w): (_, Totals, Windows) =
            (data.clone(), Default::default(), Default::default());
        let report = Simulation::new(config(3, mode, 20), 7)
            .run(move |df| job(df, &d, &t, &w))
            .unwrap();
        let completed: Vec<_> = report
            .checkpoints
            .iter()
            .filter(|c| c.status == spate::CheckpointStatus::Completed)
            .collect();
        assert!(completed.len() >= 2, "{mode:?}: {:?}", report.checkpoints);
        for c in &completed {
            assert_eq!(c.subtasks.len(), 3, "{mode:?}: every subtask acknowledged");
            assert!(
                c.state_bytes > 0,
                "{mode:?}: keyed state was written: {c:?}"
            );
            assert_eq!(c.mode, mode.name());
        }
        let ids: Vec<u64> = completed.iter().map(|c| c.id).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    }
}

#[test]
fn restore_from_nothing_starts_fresh() {
    let data = Arc::new(events(4, 2_000, 10, 2));
    let io = SimIo::new();
    let (d, t, w): (_, Totals, Windows) = (data.clone(), Default::default(), Default::default());
    Simulation::new(config(2, CheckpointMode::Aligned, 10), 1)
        .storage(io.clone())
        .run(move |df| job(df, &d, &t, &w))
        .unwrap();
    let mut cfg = config(2, CheckpointMode::Aligned, 10);
    cfg.checkpoint.as_mut().unwrap().restore = RestoreFrom::Nothing;
    let totals: Totals = Default::default();
    let (d, t, w): (_, Totals, Windows) = (data.clone(), totals.clone(), Default::default());
    let report = Simulation::new(cfg, 2)
        .storage(io)
        .run(move |df| job(df, &d, &t, &w))
        .unwrap();
    assert_eq!(report.restored_from, None);
    assert_eq!(
        last_totals(&totals.lock().unwrap()),
        reference_totals(&data)
    );
}

/// A slow subtask behind full rings: unaligned checkpoints complete without
/// waiting for the backlog and persist it; aligned ones wait; aligned with a
/// timeout switches to unaligned and says so.
#[test]
fn under_backpressure_unaligned_overtakes_and_aligned_waits() {
    let data = Arc::new(events(9, 6_000, 64, 1));
    let run = |mode: CheckpointMode| {
        let mut cfg = config(2, mode, 10);
        cfg.ring_capacity = 2;
        cfg.batch_size = 16;
        let (d, t, w): (_, Totals, Windows) =
            (data.clone(), Default::default(), Default::default());
        let report = Simulation::new(cfg, 5)
            .keep_buffers()
            .slow_subtask(1, 8)
            .run(move |df| job(df, &d, &t, &w))
            .unwrap();
        let completed: Vec<_> = report
            .checkpoints
            .into_iter()
            .filter(|c| c.status == spate::CheckpointStatus::Completed)
            .collect();
        assert!(
            completed.len() >= 3,
            "{mode:?}: {} checkpoints",
            completed.len()
        );
        let mut durations: Vec<u64> = completed.iter().map(|c| c.duration_ms).collect();
        durations.sort_unstable();
        (durations[durations.len() / 2], completed)
    };
    let (aligned_p50, aligned) = run(CheckpointMode::Aligned);
    let (unaligned_p50, unaligned) = run(CheckpointMode::Unaligned);
    let (_, timeout) = run(CheckpointMode::AlignedWithTimeout { timeout_ms: 2 });
    eprintln!(
        "p50 checkpoint duration (virtual ms): aligned {aligned_p50}, unaligned {unaligned_p50}"
    );
    assert!(
        unaligned_p50 < aligned_p50,
        "unaligned p50 {unaligned_p50} ms must beat aligned p50 {aligned_p50} ms (virtual time)"
    );
    assert!(
        aligned.iter().all(|c| c.in_flight_bytes == 0),
        "aligned stores no in-flight data"
    );
    assert!(
        unaligned.iter().any(|c| c.in_flight_bytes > 0),
        "unaligned checkpoints persist the backlog"
    );
    assert!(
        timeout
            .iter()
            .any(|c| c.subtasks.iter().any(|s| s.switched_to_unaligned)),
        "aligned-with-timeout switched and recorded it"
    );
}
