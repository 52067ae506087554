//! Resuming a benchmark that did not finish: the run's identity in
//! `<state-dir>/spate-bench-run.json` and the decision to resume or start fresh.
//!
//! A checkpointing `spate-bench nexmark` run writes its [`RunIdentity`] with
//! `completed: false` before the job starts and sets `completed: true` when the
//! run has finished. Starting again on the same state directory:
//! - no identity, a completed run without `--output`, or `--fresh`: start
//!   fresh (the engine's [`RestoreFrom::Nothing`]; existing checkpoints stay
//!   until retention drops them, and the exactly-once sink moves the output
//!   committed earlier in `--output` aside), with a new generator base time;
//! - a completed run with the same `--output`: an error (its output is final;
//!   `--fresh` runs it again, never appending a second copy);
//! - an unfinished run (crashed or killed) with the same query, events, seed and
//!   rate: resume. The stored generator `base_time_ms` is reused, so event `i`
//!   has the same timestamp as in the first run, and the engine restores the
//!   latest intact checkpoint of that run ([`RestoreFrom::LatestFrom`] the
//!   first id after `checkpoint_before`, so a restore never falls back into
//!   an older run's checkpoints) — if the unfinished run took one;
//!   otherwise it restarts from the first event with the same base time;
//! - a store whose manifest is gone while its segments remain: an error
//!   (damage, not a fresh start; `--fresh` discards them);
//! - an unfinished run with another query, events, seed or rate: an error naming
//!   the field (pass `--fresh` to discard it). A different core count resumes
//!   (rescaling): keyed state and in-flight records move by key group, the
//!   source's splits to their new owners.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use spate::RestoreFrom;

/// The identity file's name in the state directory.
pub const RUN_FILE: &str = "spate-bench-run.json";

/// What identifies a benchmark run, and whether it finished.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunIdentity {
    /// Query name.
    pub query: String,
    /// Events over all cores.
    pub events: u64,
    /// Generator seed.
    pub seed: u64,
    /// Open-loop rate (`null`: closed loop).
    pub rate_events_per_s: Option<u64>,
    /// Cores (= parallelism).
    pub cores: usize,
    /// The generator's event time of event 0 (epoch ms), kept across resumes.
    pub base_time_ms: u64,
    /// Checkpoint interval of the latest start.
    pub checkpoint_interval_ms: u64,
    /// Checkpoint mode of the latest start.
    pub checkpoint_mode: String,
    /// Alignment timeout of the latest start (`aligned-timeout` only).
    pub alignment_timeout_ms: Option<u64>,
    /// Incremental checkpoints at the latest start.
    pub incremental: bool,
    /// The newest checkpoint id in the store when the run first started: the
    /// run's own checkpoints have larger ids.
    pub checkpoint_before: Option<u64>,
    /// Whether the run finished.
    pub completed: bool,
    /// Where the run commits its rows (`--output`), if anywhere.
    #[serde(default)]
    pub output: Option<PathBuf>,
}

/// How a run starts.
#[derive(Clone, Debug, PartialEq)]
pub struct StartPlan {
    /// The identity to write (with `completed: false`) before the job starts.
    pub identity: RunIdentity,
    /// What the engine restores.
    pub restore: RestoreFrom,
    /// Whether this continues an unfinished run (same base time).
    pub resuming: bool,
}

/// The identity file of `state_dir`.
pub fn run_file(state_dir: &Path) -> PathBuf {
    state_dir.join(RUN_FILE)
}

/// Reads the identity in `state_dir`, if any.
///
/// # Errors
/// A file that exists but cannot be read or parsed.
pub fn read_identity(state_dir: &Path) -> Result<Option<RunIdentity>, String> {
    let path = run_file(state_dir);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            format!(
                "cannot parse {}: {e} (pass --fresh to start over)",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Writes `identity` into `state_dir` (created if missing), atomically
/// (temporary file, fsync, rename).
///
/// # Errors
/// If the file cannot be written.
pub fn write_identity(state_dir: &Path, identity: &RunIdentity) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(state_dir)?;
    let json = serde_json::to_string_pretty(identity).map_err(std::io::Error::other)?;
    let tmp = state_dir.join(format!("{RUN_FILE}.tmp"));
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(json.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, run_file(state_dir))
}

/// The newest checkpoint id in the store of `state_dir`, if it has one.
///
/// # Errors
/// A store that cannot be read, or whose manifest is gone while its
/// segments remain (unless `fresh`: then they count as no checkpoint).
pub fn latest_checkpoint(state_dir: &Path, fresh: bool) -> Result<Option<u64>, String> {
    if !state_dir.is_dir() {
        return Ok(None);
    }
    let reader = spate_storage::StoreReader::open(state_dir).map_err(|e| {
        format!(
            "cannot read the checkpoints in {}: {e}",
            state_dir.display()
        )
    })?;
    match reader.segments_without_manifest() {
        Some(segments) if !fresh => Err(format!(
            "{} holds {segments} checkpoint segment file(s) but no MANIFEST-* file: its \
             checkpoints are lost or the manifest was removed; restore the manifest, or pass \
             --fresh to start over (the segments are deleted and committed output moved aside)",
            state_dir.display()
        )),
        _ => Ok(reader.latest().map(|c| c.id)),
    }
}

/// Decides how a run with identity `wanted` starts on `state_dir`.
/// `wanted.base_time_ms` is the base time of a fresh start; its
/// `checkpoint_before` and `completed` are ignored.
///
/// # Errors
/// An unfinished run of another query, events, seed or rate, a completed
/// run with the same output, a store whose manifest is gone (each without
/// `fresh`), or an unreadable identity file or store. Another core count
/// resumes: keyed state, in-flight records and the source's splits rescale.
/// `remote_latest` is the newest checkpoint of the run's remote tier, if it
/// has one (a resume on an empty state directory restores from there).
pub fn plan(
    state_dir: &Path,
    wanted: &RunIdentity,
    fresh: bool,
    remote_latest: Option<u64>,
) -> Result<StartPlan, String> {
    // With remote checkpoints, segments without a manifest are what a
    // download from the remote tier that was interrupted left: the next
    // restore removes them and downloads again.
    let latest = latest_checkpoint(state_dir, fresh || remote_latest.is_some())?.max(remote_latest);
    let fresh_plan = || StartPlan {
        identity: RunIdentity {
            checkpoint_before: latest,
            completed: false,
            ..wanted.clone()
        },
        restore: RestoreFrom::Nothing,
        resuming: false,
    };
    if fresh {
        return Ok(fresh_plan());
    }
    let previous = match read_identity(state_dir)? {
        Some(p) if !p.completed => p,
        Some(p) if p.output.is_some() && p.output == wanted.output => {
            return Err(format!(
                "{} holds a completed run that committed its rows to {}: they are final; \
                 pass --fresh to run again (the committed files are then moved to {}/{}/)",
                state_dir.display(),
                wanted.output.as_deref().unwrap_or(Path::new("")).display(),
                wanted.output.as_deref().unwrap_or(Path::new("")).display(),
                spate::sink::ROLLED_BACK_DIR,
            ))
        }
        _ => return Ok(fresh_plan()),
    };
    let differs = |field: &str, was: String, now: String| {
        Err(format!(
            "{} holds an unfinished run with {field} {was}, this run has {field} {now}: \
             rerun with the same settings to resume it, or pass --fresh to start over",
            state_dir.display()
        ))
    };
    let rate = |r: Option<u64>| r.map_or("0 (closed loop)".to_string(), |r| r.to_string());
    if previous.query != wanted.query {
        return differs("--query", previous.query, wanted.query.clone());
    }
    if previous.events != wanted.events {
        return differs(
            "--events",
            previous.events.to_string(),
            wanted.events.to_string(),
        );
    }
    if previous.seed != wanted.seed {
        return differs("--seed", previous.seed.to_string(), wanted.seed.to_string());
    }
    if previous.rate_events_per_s != wanted.rate_events_per_s {
        return differs(
            "--rate",
            rate(previous.rate_events_per_s),
            rate(wanted.rate_events_per_s),
        );
    }
    let own_checkpoint = match (latest, previous.checkpoint_before) {
        (Some(latest), Some(before)) => latest > before,
        (Some(_), None) => true,
        (None, _) => false,
    };
    Ok(StartPlan {
        identity: RunIdentity {
            base_time_ms: previous.base_time_ms,
            checkpoint_before: previous.checkpoint_before,
            completed: false,
            ..wanted.clone()
        },
        restore: if own_checkpoint {
            RestoreFrom::LatestFrom(previous.checkpoint_before.map_or(1, |before| before + 1))
        } else {
            RestoreFrom::Nothing
        },
        resuming: true,
    })
}
