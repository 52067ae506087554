//! Exactly once under the faults that are not a plain kill -9: a restore
//! that falls back past a damaged newest checkpoint, two processes on one
//! state directory, a lost manifest, a completed run started again, and
//! at-least-once checkpoints asked for exactly-once output.
//!
//! Each test runs the `spate-bench` command line (`crash-job`) as a child
//! process with the exactly-once file sink and compares the committed rows,
//! row for row, with an uninterrupted run's (same event times through
//! `--base-time-ms`). Kills wait for events, never for time: a run is killed
//! once its store holds enough checkpoints and the output of the newest one
//! is committed, so the damage that follows always hits committed output.

use spate_tests::{checkpoint_count, committed, damage_newest, diff_rows, Damage};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// Open-loop rate, events/s: with 40 ms checkpoints a run takes dozens.
const RATE: u64 = 40_000;
/// Events of every run: about 1.5 s of schedule.
const EVENTS: u64 = 60_000;

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("exactly-once-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn base_time_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 200
}

/// `spate-bench nexmark` (q3, a join with keyed state: its checkpoints have
/// blocks; aligned, 40 ms checkpoints) on `state` and
/// `output` below `dir`.
fn job(dir: &Path, base_time_ms: u64, state: &str, output: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_crash-job"));
    cmd.args(["nexmark", "--query", "q3", "--cores", "2"])
        .args(["--events", &EVENTS.to_string()])
        .args(["--rate", &RATE.to_string()])
        .args(["--base-time-ms", &base_time_ms.to_string()])
        .args(["--checkpoint-interval-ms", "40"])
        .arg("--state-dir")
        .arg(dir.join(state))
        .arg("--output")
        .arg(dir.join(output))
        .arg("--report")
        .arg(dir.join(format!("report-{state}")))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

fn output_of(mut cmd: Command) -> Output {
    cmd.output().expect("spawning crash-job")
}

fn run_ok(cmd: Command, what: &str) -> String {
    let out = output_of(cmd);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{what}: {}\n{stderr}", out.status);
    stderr
}

fn run_fails(cmd: Command, what: &str) -> String {
    let out = output_of(cmd);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "{what} should have been refused\n{stderr}"
    );
    stderr
}

/// The uninterrupted run's committed rows. Taken after the runs it is
/// compared with: their open-loop schedule must lie ahead of them (a run
/// behind its schedule catches up as fast as it can, too fast to be killed
/// between checkpoints), and the rows depend only on the event times.
fn reference(dir: &Path, base_time_ms: u64, tag: &str) -> Vec<String> {
    let (state, output) = (format!("reference-state-{tag}"), format!("reference-{tag}"));
    run_ok(job(dir, base_time_ms, &state, &output), "uninterrupted run");
    let rows = committed(&dir.join(output));
    assert!(!rows.is_empty(), "q3 produced rows");
    rows
}

/// The newest checkpoint whose part files are committed in `output`.
fn newest_committed_part(output: &Path) -> Option<u64> {
    std::fs::read_dir(output)
        .ok()?
        .filter_map(|e| {
            let name = e.ok()?.file_name().to_string_lossy().into_owned();
            name.strip_prefix("part-")?.split('-').next()?.parse().ok()
        })
        .max()
}

/// The newest checkpoint of the store in `state`.
fn newest_checkpoint(state: &Path) -> Option<u64> {
    spate_storage::StoreReader::open(state)
        .ok()
        .and_then(|r| r.latest().map(|c| c.id))
}

/// Waits (polling the child's files; the events are the input) until the
/// store holds at least `checkpoints` checkpoints, the newest after `after`,
/// and the output of the newest is committed, then kills the child. Returns
/// false if it finished first.
fn kill_after_commits(
    child: &mut Child,
    state: &Path,
    output: &Path,
    checkpoints: usize,
    after: Option<u64>,
) -> bool {
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        let newest = newest_checkpoint(state);
        if checkpoint_count(state) >= checkpoints
            && newest > after
            && newest_committed_part(output) == newest
        {
            child.kill().expect("SIGKILL");
            child.wait().unwrap();
            return true;
        }
        std::thread::yield_now();
    }
}

fn files_in(dir: &Path) -> usize {
    walk(dir).len()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

#[test]
fn a_restore_that_falls_back_rolls_back_the_newer_output() {
    let dir = scratch("fallback");
    for damage in Damage::ALL {
        let base = base_time_ms();
        let name = format!("{damage:?}");
        let (state, output) = (format!("state-{name}"), format!("out-{name}"));
        // A resumed run writes new segments: killed once more after its
        // first own checkpoint, the newest checkpoint has a segment of its
        // own to delete.
        let kills = if damage == Damage::DeleteSegment {
            2
        } else {
            1
        };
        let mut after = None;
        let mut clean_kills = 0;
        while clean_kills < kills {
            let mut child = job(&dir, base, &state, &output)
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let (s, o) = (dir.join(&state), dir.join(&output));
            let killed = kill_after_commits(&mut child, &s, &o, 3, after);
            assert!(killed, "{name}: the run outlived its checkpoints");
            after = newest_checkpoint(&s);
            // A checkpoint may complete between the check and the kill, its
            // output not committed yet: damaging that one would leave no
            // committed output to roll back. Run (and kill) again then.
            if newest_committed_part(&o) == after {
                clean_kills += 1;
            }
        }
        let (newest, what) = damage_newest(&dir.join(&state), damage)
            .unwrap_or_else(|| panic!("{name}: nothing to damage"));
        if damage == Damage::DeleteSegment {
            assert!(what.starts_with("deleted"), "{name}: {what}");
        }
        let stderr = run_ok(job(&dir, base, &state, &output), &name);
        let expected = reference(&dir, base, &name);
        let got = committed(&dir.join(&output));
        if let Some(diff) = diff_rows(&got, &expected) {
            panic!("{name} ({what}, checkpoint {newest}): {diff}\n{stderr}");
        }
        let rolled_back = files_in(&dir.join(&output).join(spate::sink::ROLLED_BACK_DIR));
        assert!(
            rolled_back > 0,
            "{name}: the newest checkpoint's committed output was rolled back\n{stderr}"
        );
        // The fallback is told in sentences, not as a Rust value.
        assert!(
            stderr.contains("damaged") || stderr.contains("restoring checkpoint"),
            "{name}: {stderr}"
        );
        assert!(!stderr.contains("Some("), "{name}: {stderr}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_second_process_cannot_write_a_locked_state_directory() {
    let dir = scratch("lock");
    let base = base_time_ms();
    let mut first = job(&dir, base, "state", "out")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = first.id();
    // The first is writing once its store holds a checkpoint.
    while checkpoint_count(&dir.join("state")) == 0 {
        assert!(
            first.try_wait().unwrap().is_none(),
            "the first run ended early"
        );
        std::thread::yield_now();
    }
    let stderr = run_fails(
        job(&dir, base, "state", "second-out"),
        "a second run on the state directory",
    );
    assert!(
        stderr.contains("in use by another process") && stderr.contains(&pid.to_string()),
        "{stderr}"
    );
    assert!(first.wait().unwrap().success());
    let expected = reference(&dir, base, "lock");
    if let Some(diff) = diff_rows(&committed(&dir.join("out")), &expected) {
        panic!("the first run: {diff}");
    }
    // The refused run wrote nothing.
    assert_eq!(files_in(&dir.join("second-out")), 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_lost_manifest_is_damage_and_fresh_starts_over_explicitly() {
    let dir = scratch("manifest");
    let base = base_time_ms();
    let state = dir.join("state");
    let mut child = job(&dir, base, "state", "out")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(kill_after_commits(
        &mut child,
        &state,
        &dir.join("out"),
        2,
        None
    ));
    let segments_before = walk(&state)
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "spseg"))
        .count();
    for manifest in walk(&state) {
        let name = manifest.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("MANIFEST-") {
            std::fs::remove_file(&manifest).unwrap();
        }
    }
    let stderr = run_fails(job(&dir, base, "state", "out"), "a resume without manifest");
    assert!(stderr.contains("no MANIFEST"), "{stderr}");
    assert!(stderr.contains("--fresh"), "{stderr}");
    let segments_after = walk(&state)
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "spseg"))
        .count();
    assert_eq!(segments_after, segments_before, "the segments were kept");
    // `--fresh` starts over: the earlier output is moved aside, the new
    // run commits everything once.
    let mut fresh = job(&dir, base, "state", "out");
    fresh.arg("--fresh");
    run_ok(fresh, "a fresh start");
    let expected = reference(&dir, base, "manifest");
    if let Some(diff) = diff_rows(&committed(&dir.join("out")), &expected) {
        panic!("after --fresh: {diff}");
    }
    assert!(files_in(&dir.join("out").join(spate::sink::ROLLED_BACK_DIR)) > 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_completed_run_is_not_appended_to() {
    let dir = scratch("rerun");
    let base = base_time_ms();
    let expected = reference(&dir, base, "rerun");
    run_ok(job(&dir, base, "state", "out"), "the first run");
    let stderr = run_fails(
        job(&dir, base, "state", "out"),
        "a rerun of a completed run",
    );
    assert!(
        stderr.contains("completed run") && stderr.contains("--fresh"),
        "{stderr}"
    );
    if let Some(diff) = diff_rows(&committed(&dir.join("out")), &expected) {
        panic!("after the refused rerun: {diff}");
    }
    let mut fresh = job(&dir, base, "state", "out");
    fresh.arg("--fresh");
    run_ok(fresh, "a rerun with --fresh");
    if let Some(diff) = diff_rows(&committed(&dir.join("out")), &expected) {
        panic!("after --fresh: {diff}");
    }
    let moved: Vec<String> = walk(&dir.join("out").join(spate::sink::ROLLED_BACK_DIR))
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        moved.len(),
        expected.len(),
        "the first copy was moved aside whole"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn at_least_once_checkpoints_cannot_give_exactly_once_output() {
    let dir = scratch("at-least-once");
    let base = base_time_ms();
    let mut cmd = job(&dir, base, "state", "out");
    cmd.args(["--checkpoint-mode", "at-least-once"]);
    let stderr = run_fails(cmd, "--checkpoint-mode at-least-once with --output");
    assert!(stderr.contains("--at-least-once-output"), "{stderr}");
    assert!(!dir.join("state").exists(), "refused before any write");
    assert!(!dir.join("out").exists(), "no row committed");
    let mut cmd = job(&dir, base, "state", "out");
    cmd.args([
        "--checkpoint-mode",
        "at-least-once",
        "--at-least-once-output",
    ]);
    let stderr = run_ok(cmd, "explicitly at-least-once output");
    assert!(stderr.contains("warning"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}
