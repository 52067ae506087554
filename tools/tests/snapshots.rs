//! Snapshot tests of `spate-ckpt`'s human output on a fixed small store.
//!
//! The store is built deterministically: a job run by the engine's seeded
//! simulator (virtual clock, fixed step order) into a simulated store, whose
//! files are then written to a temporary directory. Volatile fields (wall-clock
//! timestamps, durations, the measured µs of each subtask, the manifest's size)
//! are masked before comparing with `tests/snapshots/*.txt`;
//! `SPATE_UPDATE_SNAPSHOTS=1` rewrites those files instead.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use rkyv::{Archive, Deserialize, Serialize};
use spate::sim::Simulation;
use spate::window::{Count, WindowAssigner};
use spate::{CheckpointConfig, CheckpointMode, JobConfig, KeyedContext, WatermarkStrategy};
use spate_storage::SimIo;

mod common;
use common::Numbers;

/// A state type `spate-ckpt` does not know: dumped as raw blocks.
#[derive(Archive, Serialize, Deserialize, Clone, Debug)]
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
            "w1",
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
