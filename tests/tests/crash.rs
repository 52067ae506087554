//! The kill -9 crash harness.
//!
//! Each scenario runs a Nexmark query as a child process (`crash-job`, which
//! is the `spate-bench` command line) with checkpoints in a state directory
//! and the exactly-once file sink in an output directory, kills it with
//! SIGKILL at seeded random moments, starts it again on the same directories
//! (it resumes from its latest checkpoint) until a run finishes, and compares
//! the committed output, record for record, with that of an uninterrupted run
//! with the same event times (`--base-time-ms`): nothing lost, nothing twice,
//! nothing left pending.
//!
//! One scenario alternates the core count between runs (2, 1, 3): every
//! restart there rescales the job. Two damage the newest checkpoint after
//! every kill (in turn: a flipped block, a cut manifest record, a zeroed
//! manifest page, a deleted segment), so the resume falls back to an older
//! checkpoint and must roll back the output committed for the damaged one.
//!
//! One scenario checkpoints to the remote tier as well (the S3 test server,
//! `SPATE_S3_ENDPOINT`; `SPATE_SKIP_S3_TESTS=1` skips it), with at least 10
//! kills, and wipes the local state directory after every other kill: those
//! runs resume from the remote tier on an empty directory, and the core count
//! changes too (a rescale from a remote checkpoint).
//!
//! It found one real bug: the manifest reader took a batch ending one 16-byte
//! step before a page boundary for damage (see `format::padding_at`), so a
//! resumed run fell back to an older checkpoint and committed duplicates.
//!
//! `SPATE_CRASH_KILLS=N` sets the kills per scenario (default 4, 24 in all);
//! `SPATE_CRASH_ONLY=text` runs the scenarios whose name contains it;
//! `SPATE_CRASH_SEED=S` the seed (default: from the clock; printed either way).

use spate::internals::sim::SplitMix64;
use spate_tests::{committed, damage_newest, diff_rows, Damage};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Scenario {
    name: &'static str,
    query: &'static str,
    mode: &'static str,
    incremental: bool,
    /// Cores of successive runs (cycled): more than one value rescales the
    /// job at restarts.
    cores: &'static [u32],
    /// Damage the newest checkpoint after each kill.
    damage: bool,
    /// Checkpoint to the remote tier (the S3 test server) too, and wipe the
    /// local state directory after every other kill: those resumes restore
    /// from the remote tier onto an empty directory.
    remote: bool,
}

/// Open-loop rate of every scenario, events/s.
const RATE: u64 = 40_000;

/// A kill comes this long after a (re)start, at most (plus 50 ms).
const KILL_WITHIN_MS: u64 = 350;

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "q3-aligned-rescaled-2-1-3",
        query: "q3",
        mode: "aligned",
        incremental: false,
        cores: &[2, 1, 3],
        damage: false,
        remote: false,
    },
    Scenario {
        name: "q1-aligned-damaged",
        query: "q1",
        mode: "aligned",
        incremental: false,
        cores: &[2],
        damage: true,
        remote: false,
    },
    Scenario {
        name: "q3-unaligned",
        query: "q3",
        mode: "unaligned",
        incremental: false,
        cores: &[2],
        damage: false,
        remote: false,
    },
    Scenario {
        name: "q5-aligned-timeout-incremental",
        query: "q5",
        mode: "aligned-timeout",
        incremental: true,
        cores: &[2],
        damage: false,
        remote: false,
    },
    Scenario {
        name: "q7-aligned-incremental-damaged",
        query: "q7",
        mode: "aligned",
        incremental: true,
        cores: &[2],
        damage: true,
        remote: false,
    },
    Scenario {
        name: "q8-unaligned-incremental",
        query: "q8",
        mode: "unaligned",
        incremental: true,
        cores: &[2],
        damage: false,
        remote: false,
    },
    Scenario {
        name: "q3-remote-incremental-wiped-rescaled-2-1-3",
        query: "q3",
        mode: "aligned",
        incremental: true,
        cores: &[2, 1, 3],
        damage: false,
        remote: true,
    },
];

/// Kills of the remote scenario at least (the issue asks for ten in CI).
const REMOTE_MIN_KILLS: u32 = 10;

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("crash-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    dir
}

#[allow(clippy::too_many_arguments)]
fn job(
    s: &Scenario,
    cores: u32,
    events: u64,
    base_time_ms: u64,
    dir: &Path,
    state: &str,
    output: &str,
    remote: Option<&str>,
) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_crash-job"));
    cmd.args(["nexmark", "--query", s.query])
        .args(["--cores", &cores.to_string()])
        .args(["--events", &events.to_string()])
        .args(["--rate", &RATE.to_string()])
        .args(["--base-time-ms", &base_time_ms.to_string()])
        .args(["--checkpoint-interval-ms", "40"])
        .args(["--checkpoint-mode", s.mode])
        .arg("--state-dir")
        .arg(dir.join(state))
        .arg("--output")
        .arg(dir.join(output))
        .arg("--report")
        .arg(dir.join("report"))
        .stdout(Stdio::null());
    if s.mode == "aligned-timeout" {
        cmd.args(["--alignment-timeout-ms", "2"]);
    }
    if s.incremental {
        cmd.arg("--incremental");
    }
    if let Some(url) = remote {
        cmd.arg("--remote").arg(url);
        cmd.envs(spate_tests::s3::TEST_CREDENTIALS);
    }
    cmd
}

fn run_to_end(mut cmd: Command, what: &str) {
    let out = cmd
        .stderr(Stdio::piped())
        .output()
        .expect("spawning crash-job");
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `s` with `kills` kills; returns how many kills it made.
fn crash_and_compare(s: &Scenario, kills: u32, rng: &mut SplitMix64, remote: Option<&str>) -> u32 {
    let dir = scratch(s.name);
    let base_time_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 200;
    // Enough events that the schedule (open loop, fixed event times) outlasts
    // all the kills: each run gets 50..400 ms, then the last one finishes.
    let events = RATE * (u64::from(kills) * (50 + KILL_WITHIN_MS) + 1_500) / 1_000;
    let mut killed = 0;
    let mut runs = 0;
    loop {
        runs += 1;
        let cores = s.cores[(runs as usize - 1) % s.cores.len()];
        // Each run's stderr stays in logs/ (what it restored, warnings).
        let log_path = dir.join(format!("logs/run-{runs}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut child = job(s, cores, events, base_time_ms, &dir, "state", "out", remote)
            .stderr(log)
            .spawn()
            .expect("spawning crash-job");
        if killed < kills {
            let at = Instant::now() + Duration::from_millis(50 + rng.below(KILL_WITHIN_MS));
            // Polling the child until the kill moment: the moment is the
            // test's input (a seeded random time), not a synchronisation.
            let finished = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break Some(status);
                }
                if Instant::now() >= at {
                    break None;
                }
                std::thread::sleep(Duration::from_millis(2));
            };
            match finished {
                None => {
                    child.kill().expect("SIGKILL");
                    child.wait().unwrap();
                    killed += 1;
                    if remote.is_some() && killed % 2 == 0 {
                        // The machine is gone: resume on an empty directory.
                        std::fs::remove_dir_all(dir.join("state")).unwrap();
                        eprintln!(
                            "crash harness: {}: kill {killed}: state directory wiped",
                            s.name
                        );
                    }
                    if s.damage {
                        // The kill's damage, or the next kind that applies
                        // (a stateless query's checkpoints have no blocks).
                        let first = killed as usize;
                        let damaged = (first..first + Damage::ALL.len()).find_map(|k| {
                            damage_newest(&dir.join("state"), Damage::ALL[k % Damage::ALL.len()])
                        });
                        if let Some((id, what)) = damaged {
                            eprintln!("crash harness: {}: checkpoint {id}: {what}", s.name);
                        }
                    }
                    continue;
                }
                Some(status) => {
                    assert!(
                        status.success(),
                        "{}: run {runs}: {status}\n{}",
                        s.name,
                        std::fs::read_to_string(&log_path).unwrap_or_default()
                    );
                    // Finished before the kill: start the next round afresh.
                    break;
                }
            }
        }
        let status = child.wait().unwrap();
        assert!(
            status.success(),
            "{}: final run: {status}\n{}",
            s.name,
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        break;
    }
    run_to_end(
        job(
            s,
            2,
            events,
            base_time_ms,
            &dir,
            "reference-state",
            "reference",
            None,
        ),
        "uninterrupted run",
    );
    let got = committed(&dir.join("out"));
    let expected = committed(&dir.join("reference"));
    assert!(!expected.is_empty(), "{}: the query produced rows", s.name);
    if let Some(diff) = diff_rows(&got, &expected) {
        panic!(
            "{}: {diff} after {killed} kills; runs' logs in {}",
            s.name,
            dir.join("logs").display()
        );
    }
    // Runs that restored from the remote tier onto an empty directory.
    let remote_restores = (1..=runs)
        .filter(|r| {
            std::fs::read_to_string(dir.join(format!("logs/run-{r}.log")))
                .is_ok_and(|log| log.contains("spate: restored checkpoint"))
        })
        .count();
    std::fs::remove_dir_all(&dir).unwrap();
    eprintln!(
        "crash harness: {}: {killed} kills, {runs} runs ({remote_restores} restored from the remote tier), {} rows identical",
        s.name,
        got.len()
    );
    killed
}

#[test]
fn killed_jobs_commit_exactly_the_uninterrupted_output() {
    let kills: u32 = std::env::var("SPATE_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let seed: u64 = std::env::var("SPATE_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("crash harness: seed {seed} (SPATE_CRASH_SEED={seed} reproduces the kill times)");
    let mut rng = SplitMix64::new(seed);
    let mut total = 0;
    let only = std::env::var("SPATE_CRASH_ONLY").ok();
    let mut scenarios = 0;
    for scenario in SCENARIOS {
        if only.as_deref().is_some_and(|o| !scenario.name.contains(o)) {
            continue;
        }
        let remote = if scenario.remote {
            let Some(endpoint) = spate_tests::s3::endpoint() else {
                continue;
            };
            Some(spate_tests::s3::url(
                &endpoint,
                &format!("crash-{}-{seed}", scenario.name),
            ))
        } else {
            None
        };
        let scenario_kills = if scenario.remote {
            kills.max(REMOTE_MIN_KILLS)
        } else {
            kills
        };
        scenarios += 1;
        let made = crash_and_compare(scenario, scenario_kills, &mut rng, remote.as_deref());
        if scenario.remote {
            assert!(
                made >= scenario_kills / 2,
                "most kill moments of the remote scenario fell inside a run ({made} kills)"
            );
        }
        total += made;
    }
    eprintln!("crash harness: {total} kills in all, seed {seed}");
    assert!(
        total >= kills * scenarios / 2,
        "most kill moments fell inside a run ({total} kills)"
    );
}
