//! Snapshot tests of `spate-ckpt`'s human output on a fixed small store.
//!
//! The store is built deterministically: a job run by the engine's seeded
//! simulator (virtual clock, fixed step order) into a simulated store, whose
//! files are then written to a temporary directory. Volatile fields (wall-clock
//! timestamps, durations, the measured µs of each subtask, the manifest's size)
//! are masked before comparing with `tests/snapshots/*.txt`;
//! `SPATE_UPDATE_SNAPSHOTS=1` rewrites those files instead.
//!
//! The same store serves the checks of how the tool ends when the reader of
//! its output goes away (a closed pipe), and of `verify` on what is not a
//! whole store: no store at all, segments without their manifest, a store
//! with a deleted segment file.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, SystemTime};

use rkyv::{Archive, Deserialize, Serialize};
use serde_json::Value;
use spate::internals::sim::Simulation;
use spate::window::{Count, WindowAssigner};
use spate::{CheckpointConfig, CheckpointMode, JobConfig, KeyedContext, WatermarkStrategy};
use spate_storage::{SimIo, StoreReader};

mod common;
use common::Numbers;

/// A state type of the test's own, which `spate-ckpt` decodes from the
/// schema the checkpoint recorded (`dump-raw` shows it decoded; `--raw`
/// shows its blocks).
#[derive(Archive, Serialize, Deserialize, spate::Schema, Clone, Debug)]
struct Reading {
    sensor: u32,
    celsius: i32,
    label: String,
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("spate-ckpt-snap-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Five checkpoints (unaligned, incremental, 3 retained) of a three-operator job
/// on 2 subtasks and 8 key groups, subtask 1 slowed down so that records are in
/// flight at the barriers.
fn build_store(dir: &Path) {
    let config = JobConfig {
        parallelism: 2,
        max_parallelism: 8,
        batch_size: 4,
        ring_capacity: 2,
        pin_cores: false,
        checkpoint: Some(CheckpointConfig {
            mode: CheckpointMode::Unaligned,
            incremental: true,
            max_delta_chain: 2,
            retained: 3,
            timeout_ms: 60_000,
            ..CheckpointConfig::new("unused", 40)
        }),
        ..JobConfig::default()
    };
    let io = SimIo::new();
    Simulation::new(config, 7)
        .keep_buffers()
        .storage(io.clone())
        .slow_subtask(1, 3)
        .crash_after_checkpoints(5)
        .run(|df| {
            let clock = df.clock();
            let start = clock.now_ms();
            let numbers = df.source(
                "numbers",
                Numbers::paced(2_000.0, start, clock).until(600),
                WatermarkStrategy::monotonous(|i: &u64| *i),
            );
            numbers
                .key_by(|i: &u64| i % 12)
                .process("counts", |state| {
                    let count = state.value_state::<u64>("count");
                    move |i: u64, ctx: &mut KeyedContext<u64, u64>| {
                        let n = count.update(
                            ctx,
                            || 0,
                            |c| {
                                *c += 1;
                                *c
                            },
                        );
                        if n == 9 {
                            count.clear(ctx);
                        }
                        ctx.emit(i);
                        Ok(())
                    }
                })
                .for_each(|_| {});
            numbers
                .map(|i: u64| (format!("w{}", i % 3), i))
                .key_by(|p: &(String, u64)| p.0.clone())
                .window(WindowAssigner::tumbling(100))
                .aggregate("windows", Count)
                .for_each(|_| {});
            numbers
                .key_by(|i: &u64| i % 4)
                .process("readings", |state| {
                    let last = state.value_state::<Reading>("last");
                    move |i: u64, ctx: &mut KeyedContext<u64, u64>| {
                        last.set(
                            ctx,
                            Reading {
                                sensor: (i % 4) as u32,
                                celsius: (i % 40) as i32 - 10,
                                label: format!("probe-{}", i % 4),
                            },
                        );
                        Ok(())
                    }
                })
                .for_each(|_| {});
        })
        .unwrap();
    for name in io.file_names() {
        std::fs::write(dir.join(&name), io.file_bytes(&name).unwrap()).unwrap();
    }
}

fn run(args: &[&str]) -> (String, String, Option<i32>) {
    let out = Command::new(env!("CARGO_BIN_EXE_spate-ckpt"))
        .args(args)
        .output()
        .unwrap();
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
        out.status.code(),
    )
}

/// Replaces every `YYYY-MM-DD HH:MM:SS.mmm` with a mask of the same width.
fn mask_times(line: &str) -> String {
    const SHAPE: &[u8] = b"dddd-dd-dd dd:dd:dd.ddd";
    const MASK: &str = "YYYY-MM-DD hh:mm:ss.mmm";
    let bytes = line.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < bytes.len() {
        let fits = bytes.len() - i >= SHAPE.len()
            && SHAPE.iter().zip(&bytes[i..]).all(|(s, b)| match s {
                b'd' => b.is_ascii_digit(),
                s => s == b,
            });
        if fits {
            out.push_str(MASK);
            i += SHAPE.len();
        } else {
            let c = line[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// Replaces every `N ms` by `# ms` with a single space before it (the
/// padding of a right-aligned column depends on the number of digits, and so
/// would the width of a masked number).
fn mask_durations(line: &str) -> String {
    let words: Vec<&str> = line.split(' ').collect();
    let mut masked: Vec<String> = Vec::with_capacity(words.len());
    for (i, w) in words.iter().enumerate() {
        let number = !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit());
        if number && words.get(i + 1) == Some(&"ms") {
            while masked.last().is_some_and(|m| m.is_empty()) {
                masked.pop();
            }
            masked.push("#".to_string());
        } else {
            masked.push(w.to_string());
        }
    }
    masked.join(" ")
}

/// The measured columns of `show`'s subtasks table, by header label.
const MEASURED: [&str; 3] = ["SYNC µs", "ASYNC µs", "ALIGN µs"];

/// Masks volatile fields: times, durations (to `# ms`), the
/// measured µs columns of the `subtasks` table of `show` (right-aligned under
/// their headers; each is replaced by `#` up to the header's width), and the
/// size of the current manifest in `gc`.
fn normalise(text: &str) -> String {
    let mut out = String::new();
    // Character ranges of the measured columns while inside the subtasks table.
    let mut measured: Option<Vec<(usize, usize)>> = None;
    for line in text.lines() {
        let mut chars: Vec<char> = mask_durations(&mask_times(line)).chars().collect();
        if line.starts_with("MANIFEST-") && line.ends_with("current manifest") {
            // Its size follows the engine's metadata layout, not the tool.
            let name = line.find(' ').unwrap_or(0);
            let keep = line.rfind("keep").unwrap_or(line.len());
            for c in chars.iter_mut().take(keep).skip(name) {
                if c.is_ascii_digit() || *c == '.' {
                    *c = '#';
                }
            }
        }
        if line.is_empty() {
            measured = None;
        } else if line.starts_with("SUBTASK ") {
            let header: Vec<char> = line.chars().collect();
            let ranges = MEASURED
                .iter()
                .filter_map(|label| {
                    let label: Vec<char> = label.chars().collect();
                    let at = header.windows(label.len()).position(|w| w == label)?;
                    // Right-aligned under the label; the cell may start two
                    // columns after the previous label.
                    Some((at, at + label.len()))
                })
                .collect();
            measured = Some(ranges);
        } else if let Some(ranges) = &measured {
            for &(from, to) in ranges {
                for c in chars.iter_mut().take(to).skip(from) {
                    *c = '#';
                }
            }
        }
        out.extend(chars);
        out.push('\n');
    }
    out
}

struct Snapshots {
    failures: Vec<String>,
    update: bool,
}

impl Snapshots {
    fn new() -> Self {
        Self {
            failures: Vec::new(),
            update: std::env::var_os("SPATE_UPDATE_SNAPSHOTS").is_some(),
        }
    }

    /// Compares `spate-ckpt ARGS` (stdout, then stderr and the exit status when
    /// not empty or 0) with `tests/snapshots/NAME.txt`.
    fn check(&mut self, name: &str, dir: &Path, args: &[&str]) {
        let mut full: Vec<&str> = vec![args[0], dir.to_str().unwrap()];
        full.extend(&args[1..]);
        let (stdout, stderr, code) = run(&full);
        let mut text = format!("$ spate-ckpt {} DIR {}\n", args[0], args[1..].join(" "));
        text.push_str(&stdout);
        if !stderr.is_empty() {
            text.push_str("--- stderr\n");
            text.push_str(&stderr.replace(dir.to_str().unwrap(), "DIR"));
        }
        if code != Some(0) {
            text.push_str(&format!("--- exit status {code:?}\n"));
        }
        let text = normalise(&text);
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/snapshots")
            .join(format!("{name}.txt"));
        if self.update {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &text).unwrap();
            return;
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_default();
        if expected != text {
            self.failures.push(format!(
                "snapshot {} differs:\n--- expected\n{expected}--- got\n{text}",
                path.display()
            ));
        }
    }

    fn finish(self) {
        assert!(
            self.failures.is_empty(),
            "{}\n(SPATE_UPDATE_SNAPSHOTS=1 rewrites the snapshots)",
            self.failures.join("\n")
        );
    }
}

fn set_mtime(path: &Path, at: SystemTime) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(at)
        .unwrap();
}

#[test]
fn human_output_of_every_command_on_a_fixed_store() {
    let dir = temp_dir("fixed");
    build_store(&dir);
    let mut s = Snapshots::new();
    s.check("list", &dir, &["list"]);
    s.check("show", &dir, &["show", "5", "--key-groups"]);
    s.check("show-discarded", &dir, &["show", "1"]);
    s.check("dump-counts", &dir, &["dump", "5", "--operator", "counts"]);
    s.check(
        "dump-windows",
        &dir,
        &["dump", "5", "--operator", "windows"],
    );
    s.check(
        "dump-filtered",
        &dir,
        &[
            "dump",
            "4",
            "--operator",
            "windows",
            "--key",
            "200",
            "--limit",
            "1",
        ],
    );
    s.check(
        "dump-key-group",
        &dir,
        &["dump", "5", "--operator", "counts", "--key-group", "3"],
    );
    s.check("dump-raw", &dir, &["dump", "5", "--operator", "readings"]);
    s.check(
        "dump-raw-blocks",
        &dir,
        &["dump", "5", "--operator", "readings", "--raw"],
    );
    s.check(
        "dump-unknown-operator",
        &dir,
        &["dump", "5", "--operator", "nope"],
    );
    s.check("diff", &dir, &["diff", "3", "5"]);
    s.check("diff-incremental", &dir, &["diff", "3", "4"]);
    s.check("verify", &dir, &["verify"]);

    // Garbage: older segments of writers 5 and 6 and stale manifest files, with
    // fixed modification times around the manifest's.
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let manifest = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .find(|n| n.starts_with("MANIFEST-"))
        .unwrap();
    for e in std::fs::read_dir(&dir).unwrap() {
        set_mtime(&e.unwrap().path(), t0);
    }
    set_mtime(&dir.join(&manifest), t0 + Duration::from_secs(100));
    let page = vec![0u8; 4096];
    for (name, at) in [
        ("seg-0005-000000000000.spseg", t0),
        ("seg-0005-000000000001.spseg", t0),
        ("seg-0006-000000000000.spseg", t0 + Duration::from_secs(200)),
        ("seg-0006-000000000001.spseg", t0),
        ("MANIFEST-0000000000000000", t0),
        ("MANIFEST-0000000000000001.tmp", t0),
        ("MANIFEST-00000000000000ff.tmp", t0),
    ] {
        std::fs::write(dir.join(name), &page).unwrap();
        set_mtime(&dir.join(name), at);
    }
    s.check("gc", &dir, &["gc"]);
    s.check("gc-yes", &dir, &["gc", "--yes"]);
    s.check("gc-after", &dir, &["gc"]);
    s.finish();
    std::fs::remove_dir_all(&dir).unwrap();
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_spate-ckpt"))
}

/// Whether the process ended well for a reader that went away: exit 0, or
/// killed by SIGPIPE (as any Unix filter). Not a panic (exit 101).
fn ended_quietly(status: ExitStatus, stderr: &str) -> bool {
    let by_sigpipe = status.signal() == Some(libc::SIGPIPE);
    (status.success() || by_sigpipe) && !stderr.contains("panicked") && !stderr.contains("error")
}

/// The commands that print, on the fixed store (retained checkpoints 3 to 5).
const PRINTING: [&[&str]; 7] = [
    &["list"],
    &["show", "5", "--key-groups"],
    &["dump", "5", "--operator", "counts"],
    &["dump", "5", "--operator", "readings"],
    &["verify"],
    &["diff", "3", "5"],
    &["gc"],
];

/// `spate-ckpt show DIR 2 | head -3` made it panic ("failed printing to
/// stdout", exit 101). Every command, with and without `--json`, writing into
/// a pipe whose read end is already closed (so the first write fails with
/// EPIPE, deterministically), and into one that is closed after a few bytes.
#[test]
fn every_command_ends_quietly_when_the_reader_of_its_output_goes_away() {
    let dir = temp_dir("epipe");
    build_store(&dir);
    let d = dir.to_str().unwrap();
    let mut failures = Vec::new();
    for args in PRINTING {
        for json in [false, true] {
            let mut args: Vec<&str> = args.to_vec();
            args.insert(1, d);
            if json {
                args.push("--json");
            }
            // A real pipe with no reader: the write end of `true`'s stdin,
            // once `true` has exited.
            let mut reader = Command::new("true").stdin(Stdio::piped()).spawn().unwrap();
            let write_end = reader.stdin.take().unwrap();
            reader.wait().unwrap();
            let out = bin()
                .args(&args)
                .stdout(Stdio::from(write_end))
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !ended_quietly(out.status, &stderr) {
                failures.push(format!(
                    "{args:?} into a closed pipe: {}\n{stderr}",
                    out.status
                ));
            }

            // As `| head -c 16`: read a few bytes, then close the pipe.
            let mut child = bin()
                .args(&args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let mut first = [0u8; 16];
            child.stdout.take().unwrap().read_exact(&mut first).unwrap();
            let out = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !ended_quietly(out.status, &stderr) {
                failures.push(format!("{args:?} | head -c 16: {}\n{stderr}", out.status));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    std::fs::remove_dir_all(&dir).unwrap();
}

fn verify(dir: &Path, id: Option<&str>) -> (String, String, Option<i32>, Value) {
    let d = dir.to_str().unwrap();
    let mut args = vec!["verify", d];
    args.extend(id);
    let (stdout, stderr, code) = run(&args);
    args.push("--json");
    let (json, _, json_code) = run(&args);
    assert_eq!(
        code, json_code,
        "{args:?}: the same exit status with --json"
    );
    let doc: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    (stdout, stderr, code, doc)
}

/// The problems of `verify --json` that contain `text`.
fn problems_with<'a>(doc: &'a Value, text: &str) -> Vec<&'a Value> {
    doc["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["error"].as_str().unwrap().contains(text))
        .collect()
}

/// `verify` said "ok", exit 0, where there is nothing to verify.
#[test]
fn verify_fails_on_a_directory_without_a_store() {
    const NO_STORE: &str = "holds no checkpoint store (no MANIFEST-* file, no segment files)";
    let empty = temp_dir("empty");
    let unrelated = temp_dir("unrelated");
    std::fs::write(unrelated.join("notes.txt"), "not a checkpoint").unwrap();
    std::fs::write(unrelated.join("MANIFEST.json"), "{}").unwrap();
    std::fs::write(unrelated.join("seg-1.spseg"), [0u8; 64]).unwrap();
    std::fs::create_dir(unrelated.join("sub")).unwrap();
    for dir in [&empty, &unrelated] {
        let (stdout, stderr, code, doc) = verify(dir, None);
        assert_eq!(code, Some(2), "{}: {stdout}{stderr}", dir.display());
        assert!(!stdout.contains("ok"), "{stdout}");
        assert!(
            stderr.contains(&format!("{} {NO_STORE}", dir.display())),
            "{stderr}"
        );
        assert_eq!(doc["ok"], false, "{doc}");
        assert_eq!(problems_with(&doc, NO_STORE).len(), 1, "{doc}");
        let (_, stderr, code, _) = verify(dir, Some("1"));
        assert_eq!(code, Some(2));
        assert!(stderr.contains(NO_STORE), "{stderr}");
    }

    let missing = empty.join("nope");
    let (stdout, stderr, code, doc) = verify(&missing, None);
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!("{} does not exist", missing.display())),
        "{stderr}"
    );
    assert_eq!(doc["ok"], false, "{doc}");
    assert_eq!(problems_with(&doc, "does not exist").len(), 1, "{doc}");
    std::fs::remove_dir_all(&empty).unwrap();
    std::fs::remove_dir_all(&unrelated).unwrap();
}

/// A store whose manifest was deleted while its segment files remain: its
/// checkpoints are lost, which `verify` reported as "ok".
#[test]
fn verify_fails_on_segments_without_their_manifest() {
    let dir = temp_dir("no-manifest");
    build_store(&dir);
    let mut segments = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if name.starts_with("MANIFEST-") {
            std::fs::remove_file(dir.join(&name)).unwrap();
        } else if name.ends_with(".spseg") {
            segments += 1;
        }
    }
    assert!(segments > 0);
    let lost = format!(
        "no MANIFEST-* file beside {segments} segment file(s): the manifest is missing, \
         so the checkpoints they held cannot be restored"
    );
    let (stdout, stderr, code, doc) = verify(&dir, None);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stdout.contains(&lost), "{stdout}");
    assert!(!stdout.lines().any(|l| l == "ok"), "{stdout}");
    assert_eq!(doc["ok"], false, "{doc}");
    assert_eq!(problems_with(&doc, &lost).len(), 1, "{doc}");
    assert_eq!(doc["segments"].as_array().unwrap().len(), segments);
    let (stdout, stderr, code, doc) = verify(&dir, Some("5"));
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stdout.contains(&lost), "{stdout}");
    assert_eq!(doc["ok"], false, "{doc}");

    let mut s = Snapshots::new();
    s.check("verify-no-manifest", &dir, &["verify"]);
    s.finish();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// With a segment file deleted, `verify` printed one line per block of it.
/// Now one line per checkpoint, file and kind of problem, with the count of
/// blocks and the first offset; the JSON keeps every problem and adds the
/// groups.
#[test]
fn verify_groups_the_blocks_of_a_missing_segment() {
    let dir = temp_dir("missing-segment");
    build_store(&dir);
    // The segment the retained checkpoints reference most.
    let reader = StoreReader::open(&dir).unwrap();
    let mut blocks: BTreeMap<String, BTreeMap<u64, Vec<u64>>> = BTreeMap::new();
    for c in reader.checkpoints() {
        for h in &c.handles {
            let offsets = blocks.entry(h.segment.file_name()).or_default();
            offsets.entry(c.id).or_default().push(h.offset);
        }
    }
    drop(reader);
    let (segment, per_checkpoint) = blocks
        .into_iter()
        .max_by_key(|(_, c)| c.values().map(Vec::len).sum::<usize>())
        .unwrap();
    assert!(
        per_checkpoint.values().any(|o| o.len() > 1),
        "a checkpoint has several blocks in {segment}"
    );
    std::fs::remove_file(dir.join(&segment)).unwrap();

    let (stdout, stderr, code, doc) = verify(&dir, None);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().filter(|l| l.contains(&segment)).collect();
    assert_eq!(
        lines.len(),
        per_checkpoint.len(),
        "one line per checkpoint:\n{stdout}"
    );
    for (line, (id, offsets)) in lines.iter().zip(&per_checkpoint) {
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells[0], id.to_string(), "{line}");
        assert_eq!(cells[1], segment, "{line}");
        let first = offsets.iter().min().unwrap().to_string();
        assert_eq!(cells[2], first, "first offset: {line}");
        assert_eq!(cells[3], offsets.len().to_string(), "blocks: {line}");
        assert!(line.contains("missing"), "{line}");
    }
    let total: usize = per_checkpoint.values().map(Vec::len).sum();
    assert!(stdout.contains(&format!("{total} problem(s)")), "{stdout}");

    assert_eq!(doc["ok"], false);
    assert_eq!(doc["problems"].as_array().unwrap().len(), total, "complete");
    let groups = doc["groups"].as_array().unwrap();
    assert_eq!(groups.len(), per_checkpoint.len(), "{doc:#}");
    for (g, (id, offsets)) in groups.iter().zip(&per_checkpoint) {
        assert_eq!(g["checkpoint"], *id, "{g}");
        assert_eq!(g["file"], segment.as_str(), "{g}");
        assert_eq!(g["problem"], "segment file is missing", "{g}");
        assert_eq!(g["count"], offsets.len(), "{g}");
        assert_eq!(g["blocks"], offsets.len(), "{g}");
        assert_eq!(g["first_offset"], *offsets.iter().min().unwrap(), "{g}");
    }

    let mut s = Snapshots::new();
    s.check("verify-missing-segment", &dir, &["verify"]);
    s.finish();
    std::fs::remove_dir_all(&dir).unwrap();
}
