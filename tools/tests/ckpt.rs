//! `spate-ckpt` against real stores: jobs run on the engine's runtime (aligned,
//! unaligned under backpressure, incremental) write checkpoints into temporary
//! directories, then the tool's JSON is checked against what the jobs wrote: ids,
//! key groups, in-flight bytes, and every state entry, computed from the source
//! offsets each checkpoint recorded (the test source, [`common::Numbers`],
//! stripes record indices over subtasks, so the records before a checkpoint's
//! offsets are known exactly). A
//! corrupt segment or manifest byte must make `verify` fail and name the place;
//! `gc --yes` runs while a job writes to the same directory.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};
use spate::internals::keygroup::key_group_for;
use spate::{
    CheckpointConfig, CheckpointMode, CheckpointStatus, Job, JobConfig, JobHandle, KeyedContext,
    RestoreFrom, WatermarkStrategy,
};
use spate_storage::StoreReader;

mod common;
use common::Numbers;

const KEYS: u64 = 40;
const MAX_PARALLELISM: u32 = 16;
/// Subtasks of every job here (the source's stride).
const PARALLELISM: u64 = 2;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("spate-ckpt-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Counts per key over `0..events` (key `i % KEYS`), checkpointing every 20 ms;
/// stops once two checkpoints completed (every key is seen long before).
fn run_job(dir: &Path) {
    run_job_with(dir, None);
}

/// [`run_job`] with a remote tier.
fn run_job_with(dir: &Path, remote: Option<String>) {
    let config = JobConfig {
        parallelism: 2,
        max_parallelism: MAX_PARALLELISM,
        pin_cores: false,
        checkpoint: Some(CheckpointConfig {
            mode: CheckpointMode::Aligned,
            timeout_ms: 5_000,
            remote,
            ..CheckpointConfig::new(dir, 20)
        }),
        ..JobConfig::default()
    };
    let handle = Job::new(config)
        .start(|df| count_numbers(df, u64::MAX))
        .unwrap();
    while handle.completed_checkpoints() < 2 && handle.is_running() {
        std::thread::yield_now();
    }
    handle.stop();
    handle.join().unwrap();
}

/// The counting job of the checks below.
#[derive(Clone, Copy)]
struct Counting {
    mode: CheckpointMode,
    incremental: bool,
    /// The key of record `i`.
    key: fn(u64) -> u64,
    /// A key's count is cleared when it reaches this (0: never), so the state
    /// holds `count % clear_at` and keys come and go.
    clear_at: u64,
    /// Records per second over all subtasks (`None`: as fast as possible).
    rate: Option<f64>,
    /// Busy work per record in the keyed operator (a slow operator).
    spins: u32,
    /// Periodic checkpoints (0: manual triggers only).
    interval_ms: u64,
    ring_capacity: usize,
    batch_size: usize,
}

impl Counting {
    fn new(mode: CheckpointMode, key: fn(u64) -> u64) -> Self {
        Self {
            mode,
            incremental: false,
            key,
            clear_at: 0,
            rate: Some(20_000.0),
            spins: 0,
            interval_ms: 0,
            ring_capacity: 64,
            batch_size: 64,
        }
    }

    fn config(&self, dir: &Path) -> JobConfig {
        JobConfig {
            parallelism: PARALLELISM as usize,
            max_parallelism: MAX_PARALLELISM,
            pin_cores: false,
            ring_capacity: self.ring_capacity,
            batch_size: self.batch_size,
            checkpoint: Some(CheckpointConfig {
                mode: self.mode,
                incremental: self.incremental,
                timeout_ms: 20_000,
                retained: 1_000,
                restore: RestoreFrom::Nothing,
                ..CheckpointConfig::new(dir, self.interval_ms)
            }),
            ..JobConfig::default()
        }
    }

    /// Starts the job; `processed` counts the records the keyed operator handled.
    fn start(&self, dir: &Path, processed: &Arc<AtomicU64>) -> JobHandle {
        let job = *self;
        let processed = processed.clone();
        Job::new(self.config(dir))
            .start(move |df| {
                let clock = df.clock();
                let start = clock.now_ms();
                let source = match job.rate {
                    Some(rate) => Numbers::paced(rate, start, clock),
                    None => Numbers::unpaced(),
                };
                let processed = processed.clone();
                df.source("numbers", source, WatermarkStrategy::none())
                    .key_by(move |i: &u64| (job.key)(*i))
                    .process("counts", move |state| {
                        let counts = state.value_state::<u64>("count");
                        move |i: u64, ctx: &mut KeyedContext<u64, u64>| {
                            let n = counts.update(
                                ctx,
                                || 0,
                                |c| {
                                    *c += 1;
                                    *c
                                },
                            );
                            if n == job.clear_at {
                                counts.clear(ctx);
                            }
                            let mut x = i;
                            for _ in 0..job.spins {
                                x = std::hint::black_box(x.rotate_left(7) ^ 0x9e37_79b9);
                            }
                            ctx.emit(x);
                            Ok(())
                        }
                    })
                    .for_each(move |_| {
                        processed.fetch_add(1, Ordering::Relaxed);
                    });
            })
            .unwrap()
    }

    /// The state of `counts` when the sources were at `sources` (the `sources`
    /// of `show --json`): per key, its count (modulo `clear_at`), absent at 0.
    fn expected(&self, sources: &Value) -> BTreeMap<u64, u64> {
        let mut n: BTreeMap<u64, u64> = BTreeMap::new();
        for s in sources.as_array().unwrap() {
            assert_eq!(s["source"], "numbers");
            let subtask = s["subtask"].as_u64().unwrap();
            for j in 0..s["offset"].as_u64().unwrap() {
                *n.entry((self.key)(subtask + j * PARALLELISM)).or_default() += 1;
            }
        }
        n.into_iter()
            .map(|(k, c)| {
                (
                    k,
                    if self.clear_at > 0 {
                        c % self.clear_at
                    } else {
                        c
                    },
                )
            })
            .filter(|&(_, v)| v > 0)
            .collect()
    }
}

/// Waits (without sleeping) until `done` holds; fails if the job stopped first.
fn wait_until(handle: &JobHandle, what: &str, done: impl Fn() -> bool) {
    while !done() {
        assert!(handle.is_running(), "the job stopped before {what}");
        if handle.failed_checkpoints() > 0 {
            let failed: Vec<String> = handle
                .checkpoint_stats()
                .iter()
                .filter_map(|s| match &s.status {
                    spate::checkpoint::CheckpointStatus::Failed(r) => {
                        Some(format!("checkpoint {}: {r}", s.id))
                    }
                    _ => None,
                })
                .collect();
            panic!("a checkpoint failed before {what}: {failed:?}");
        }
        std::thread::yield_now();
    }
}

/// Triggers a checkpoint once `processed` reached `after` records and waits for it.
fn checkpoint_after(handle: &JobHandle, processed: &AtomicU64, after: u64) {
    wait_until(handle, "enough records", || {
        processed.load(Ordering::Relaxed) >= after
    });
    let completed = handle.completed_checkpoints();
    handle.trigger_checkpoint();
    wait_until(handle, "the checkpoint completed", || {
        handle.completed_checkpoints() > completed
    });
}

fn completed_ids(handle: &JobHandle) -> Vec<u64> {
    handle
        .checkpoint_stats()
        .iter()
        .filter(|s| s.status == CheckpointStatus::Completed)
        .map(|s| s.id)
        .collect()
}

fn tool(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spate-ckpt"))
        .args(args)
        .output()
        .unwrap()
}

fn json(args: &[&str]) -> Value {
    let out = tool(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn list_show_verify_on_a_real_store_then_a_corrupt_segment() {
    let dir = temp_dir("real");
    run_job(&dir);
    let d = dir.to_str().unwrap();

    let reader = StoreReader::open(&dir).unwrap();
    let ids: Vec<u64> = reader.checkpoints().iter().map(|c| c.id).collect();
    assert!(!ids.is_empty(), "the job completed a checkpoint");

    // list
    let list = json(&["list", d, "--json"]);
    let rows = list.as_array().unwrap();
    let listed: Vec<u64> = rows.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    assert_eq!(listed, ids);
    for r in rows {
        for key in [
            "id",
            "status",
            "mode",
            "incremental",
            "timestamp_ms",
            "duration_ms",
            "bytes",
            "in_flight_bytes",
            "cores",
            "max_parallelism",
        ] {
            assert!(!r[key].is_null(), "{key} in {r}");
        }
        assert_eq!(r["status"], "completed");
        assert_eq!(r["mode"], "aligned");
        assert_eq!(r["cores"], 2);
        assert_eq!(r["max_parallelism"], MAX_PARALLELISM);
        assert!(r["bytes"].as_u64().unwrap() > 0);
    }
    let human = tool(&["list", d]);
    assert!(human.status.success());
    let text = String::from_utf8_lossy(&human.stdout);
    eprintln!("{text}");
    assert!(text.contains("FINGERPRINT"));

    // show the latest
    let latest = *ids.last().unwrap();
    let show = json(&["show", d, &latest.to_string(), "--json", "--key-groups"]);
    assert_eq!(show["id"], latest);
    assert_eq!(show["subtasks"].as_array().unwrap().len(), 2);
    let ops = show["operators"].as_array().unwrap();
    let counts = ops.iter().find(|o| o["operator"] == "counts").unwrap();
    let kgs = counts["key_groups"].as_u64().unwrap();
    assert!(kgs >= 1 && kgs <= u64::from(MAX_PARALLELISM), "{counts}");
    assert_eq!(counts["entries"], KEYS, "{counts}");
    let rows = show["key_groups"].as_array().unwrap();
    let counted: Vec<&Value> = rows.iter().filter(|r| r["operator"] == "counts").collect();
    let distinct: BTreeSet<u64> = counted
        .iter()
        .map(|r| r["key_group"].as_u64().unwrap())
        .collect();
    assert_eq!(distinct.len() as u64, kgs);
    let sum: u64 = counted.iter().map(|r| r["entries"].as_u64().unwrap()).sum();
    assert_eq!(sum, KEYS);
    assert!(!show["sources"].as_array().unwrap().is_empty());
    let human = tool(&["show", d, &latest.to_string(), "--key-groups"]);
    assert!(human.status.success());
    let text = String::from_utf8_lossy(&human.stdout);
    eprintln!("{text}");
    assert!(text.contains("counts"));

    // verify intact
    let v = tool(&["verify", d]);
    assert!(
        v.status.success(),
        "{}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    assert_eq!(json(&["verify", d, "--json"])["ok"], true);
    let unknown = tool(&["show", d, "999999"]);
    assert!(!unknown.status.success());

    // Flip a byte inside the largest block of the latest checkpoint (past the
    // segment's first 64 bytes).
    let record = reader.checkpoint(latest).unwrap();
    let h = *record
        .handles
        .iter()
        .filter(|h| h.offset + 32 + u64::from(h.len) / 2 >= 64)
        .max_by_key(|h| h.len)
        .expect("a block past byte 64");
    let name = h.segment.file_name();
    let files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("seg-") && n.ends_with(".spseg"))
        .collect();
    assert!(files.contains(&name), "{name} in {files:?}");
    let path = dir.join(&name);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = (h.offset + 32 + u64::from(h.len) / 2) as usize;
    bytes[at] ^= 0x5a;
    std::fs::write(&path, &bytes).unwrap();
    drop(reader);

    let v = tool(&["verify", d]);
    assert_eq!(v.status.code(), Some(1));
    let text = String::from_utf8_lossy(&v.stdout);
    eprintln!("{text}");
    assert!(text.contains(&name), "{text}");
    let vj: Value = serde_json::from_slice(&tool(&["verify", d, "--json"]).stdout).unwrap();
    assert_eq!(vj["ok"], false);
    assert!(vj["problems"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["file"] == name.as_str() && p["offset"] == h.offset));
    let v1 = tool(&["verify", d, &latest.to_string()]);
    assert_eq!(v1.status.code(), Some(1));

    // gc is a dry run: nothing referenced is to be deleted, nothing is deleted.
    let before = std::fs::read_dir(&dir).unwrap().count();
    let g = json(&["gc", d, "--json"]);
    assert!(g["segments"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["file"] == name.as_str() && s["delete"] == false));
    let out = tool(&["gc", d]);
    assert!(out.status.success());
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), before);

    // list still works.
    let list = json(&["list", d, "--json"]);
    assert_eq!(list.as_array().unwrap().len(), ids.len());

    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_corrupt_manifest_record_is_reported_and_earlier_checkpoints_still_list() {
    let dir = temp_dir("manifest");
    run_job(&dir);
    let d = dir.to_str().unwrap();
    let reader = StoreReader::open(&dir).unwrap();
    let ids: Vec<u64> = reader.checkpoints().iter().map(|c| c.id).collect();
    assert!(ids.len() >= 2, "{ids:?}");
    let manifest = reader.manifest_file().unwrap().to_owned();
    drop(reader);

    // Corrupt the record that completed the latest checkpoint.
    let path = dir.join(&manifest);
    let mut bytes = std::fs::read(&path).unwrap();
    let scan = spate_storage::format::decode_manifest(&bytes);
    let latest = *ids.last().unwrap();
    let (_, &offset) = scan
        .records
        .iter()
        .zip(&scan.record_offsets)
        .rfind(|(r, _)| {
            matches!(r, spate_storage::ManifestRecord::CheckpointCompleted(c) if c.id == latest)
        })
        .unwrap();
    bytes[offset as usize + 20] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();

    let out = tool(&["list", d, "--json"]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&manifest), "{stderr}");
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed: Vec<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    assert!(!listed.is_empty());
    assert!(!listed.contains(&latest));
    assert!(listed.iter().all(|id| ids.contains(id)));

    let v = tool(&["verify", d]);
    assert_eq!(v.status.code(), Some(1));
    let text = String::from_utf8_lossy(&v.stdout);
    eprintln!("{text}");
    assert!(text.contains(&manifest), "{text}");
    assert!(text.contains(&offset.to_string()), "{text}");

    std::fs::remove_dir_all(&dir).unwrap();
}

fn show(d: &str, id: u64) -> Value {
    json(&["show", d, &id.to_string(), "--json", "--key-groups"])
}

/// The `counts` entries of checkpoint `id`, through `dump --json`.
fn dumped(d: &str, id: u64) -> BTreeMap<u64, u64> {
    let doc = json(&[
        "dump",
        d,
        &id.to_string(),
        "--operator",
        "counts",
        "--table",
        "count",
        "--json",
    ]);
    assert_eq!(doc["errors"], json!([]), "{doc}");
    assert_eq!(doc["truncated"], false);
    let table = &doc["tables"][0];
    assert_eq!(table["decoded"], true, "{table}");
    assert_eq!(table["type_name"], "(u64, u64)");
    let entries: BTreeMap<u64, u64> = table["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let key = e["key"].as_u64().unwrap();
            assert_eq!(
                e["key_group"].as_u64().unwrap(),
                u64::from(key_group_for(&key, MAX_PARALLELISM)),
                "{e}"
            );
            (key, e["value"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(doc["matched"].as_u64().unwrap(), entries.len() as u64);
    entries
}

/// Added, removed, changed, unchanged from `a` to `b`.
fn expected_diff(a: &BTreeMap<u64, u64>, b: &BTreeMap<u64, u64>) -> [u64; 4] {
    let mut d = [0; 4];
    for (k, va) in a {
        match b.get(k) {
            None => d[1] += 1,
            Some(vb) if vb == va => d[3] += 1,
            Some(_) => d[2] += 1,
        }
    }
    d[0] = b.keys().filter(|k| !a.contains_key(*k)).count() as u64;
    d
}

fn in_key_group(m: &BTreeMap<u64, u64>, group: u64) -> BTreeMap<u64, u64> {
    m.iter()
        .filter(|(k, _)| u64::from(key_group_for(*k, MAX_PARALLELISM)) == group)
        .map(|(k, v)| (*k, *v))
        .collect()
}

/// `diff A B --json` against the states the job must have written.
fn check_diff(d: &str, a: u64, b: u64, state_a: &BTreeMap<u64, u64>, state_b: &BTreeMap<u64, u64>) {
    let doc = json(&["diff", d, &a.to_string(), &b.to_string(), "--json"]);
    assert_eq!(doc["errors"], json!([]), "{doc}");
    let counts = |v: &Value| -> [u64; 4] {
        ["added", "removed", "changed", "unchanged"].map(|k| v[k].as_u64().unwrap())
    };
    let op = doc["operators"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["operator"] == "counts")
        .unwrap();
    assert_eq!(counts(op), expected_diff(state_a, state_b), "diff {a} {b}");
    let table = op["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "count")
        .unwrap();
    for g in table["key_groups"].as_array().unwrap() {
        let group = g["key_group"].as_u64().unwrap();
        let (ga, gb) = (in_key_group(state_a, group), in_key_group(state_b, group));
        assert_eq!(counts(g), expected_diff(&ga, &gb), "diff {a} {b}: {g}");
        assert_eq!(g["entries_a"].as_u64().unwrap_or(0), ga.len() as u64, "{g}");
        assert_eq!(g["entries_b"].as_u64().unwrap_or(0), gb.len() as u64, "{g}");
        if g["same_blocks"] == true {
            assert_eq!(g["new_bytes"], 0, "{g}");
        }
    }
}

#[test]
fn aligned_job_state_is_dumped_and_diffed_exactly() {
    const ALIGNED_KEYS: u64 = 64;
    let all_groups: BTreeSet<u16> = (0..ALIGNED_KEYS)
        .map(|k| key_group_for(&k, MAX_PARALLELISM))
        .collect();
    assert_eq!(
        all_groups.len() as u32,
        MAX_PARALLELISM,
        "keys cover every key group"
    );
    let dir = temp_dir("aligned");
    let d = dir.to_str().unwrap();
    let job = Counting::new(CheckpointMode::Aligned, |i| i % ALIGNED_KEYS);
    let processed = Arc::new(AtomicU64::new(0));
    let handle = job.start(&dir, &processed);
    // Every key is seen before the first checkpoint; more records before the second.
    checkpoint_after(&handle, &processed, 1_000);
    checkpoint_after(&handle, &processed, 3_000);
    let ids = completed_ids(&handle);
    handle.stop();
    handle.join().unwrap();
    assert_eq!(ids, vec![1, 2]);

    let list = json(&["list", d, "--json"]);
    let listed: Vec<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    assert_eq!(listed, ids);
    for r in list.as_array().unwrap() {
        assert_eq!(r["status"], "completed");
        assert_eq!(r["retained"], true);
        assert_eq!(r["mode"], "aligned");
        assert_eq!(r["incremental"], false);
        assert_eq!(r["cause"], "manual");
        assert_eq!(r["in_flight_bytes"], 0);
        assert_eq!(r["max_parallelism"], MAX_PARALLELISM);
    }

    let mut states = Vec::new();
    for &id in &ids {
        let s = show(d, id);
        let expected = job.expected(&s["sources"]);
        assert_eq!(expected.len() as u64, ALIGNED_KEYS, "every key was seen");
        let counts = s["operators"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["operator"] == "counts")
            .unwrap();
        assert_eq!(counts["key_groups"], MAX_PARALLELISM, "{counts}");
        assert_eq!(counts["entries"], ALIGNED_KEYS, "{counts}");
        let got = dumped(d, id);
        assert_eq!(
            got.len() as u64,
            ALIGNED_KEYS,
            "dump: one entry per distinct key"
        );
        assert_eq!(got, expected, "checkpoint {id}: every count");
        states.push(got);
    }
    check_diff(d, 1, 2, &states[0], &states[1]);

    // Filters: one key group, one key, a limit.
    let group = u64::from(key_group_for(&17u64, MAX_PARALLELISM));
    let doc = json(&[
        "dump",
        d,
        "2",
        "--operator",
        "counts",
        "--key-group",
        &group.to_string(),
        "--json",
    ]);
    let rows = doc["tables"][0]["entries"].as_array().unwrap();
    assert_eq!(rows.len(), in_key_group(&states[1], group).len());
    assert!(rows.iter().all(|r| r["key_group"] == group));
    let doc = json(&[
        "dump",
        d,
        "2",
        "--operator",
        "counts",
        "--key",
        "17",
        "--json",
    ]);
    assert_eq!(doc["matched"], 1);
    assert_eq!(doc["tables"][0]["entries"][0]["value"], states[1][&17]);
    let doc = json(&[
        "dump",
        d,
        "2",
        "--operator",
        "counts",
        "--limit",
        "5",
        "--json",
    ]);
    assert_eq!(doc["shown"], 5);
    assert_eq!(doc["truncated"], true);
    assert_eq!(doc["matched"], ALIGNED_KEYS);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unaligned_job_under_backpressure_carries_in_flight_records() {
    let dir = temp_dir("unaligned");
    let d = dir.to_str().unwrap();
    // An unthrottled source in front of a slow operator and small rings: the
    // rings stay full, so barriers overtake records.
    let job = Counting {
        rate: None,
        spins: 2_000,
        interval_ms: 10,
        ring_capacity: 4,
        batch_size: 16,
        ..Counting::new(CheckpointMode::Unaligned, |i| i % 64)
    };
    let processed = Arc::new(AtomicU64::new(0));
    let handle = job.start(&dir, &processed);
    let with_in_flight = || {
        handle
            .checkpoint_stats()
            .iter()
            .any(|s| s.status == CheckpointStatus::Completed && s.in_flight_bytes > 0)
    };
    wait_until(
        &handle,
        "an unaligned checkpoint with in-flight records",
        || handle.completed_checkpoints() >= 2 && with_in_flight(),
    );
    handle.stop();
    let report = handle.join().unwrap();
    let stats: BTreeMap<u64, u64> = report
        .checkpoints
        .iter()
        .filter(|s| s.status == CheckpointStatus::Completed)
        .map(|s| (s.id, s.in_flight_bytes))
        .collect();

    let list = json(&["list", d, "--json"]);
    let rows = list.as_array().unwrap();
    let listed: BTreeMap<u64, u64> = rows
        .iter()
        .map(|r| {
            (
                r["id"].as_u64().unwrap(),
                r["in_flight_bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed, stats,
        "ids and in-flight bytes as the job reported them"
    );
    assert!(rows.iter().all(|r| r["mode"] == "unaligned"));
    let (&id, _) = listed.iter().find(|(_, &b)| b > 0).unwrap();

    let s = show(d, id);
    let in_flight = s["in_flight"].as_array().unwrap();
    assert!(!in_flight.is_empty());
    let bytes: u64 = in_flight.iter().map(|b| b["bytes"].as_u64().unwrap()).sum();
    assert_eq!(bytes, listed[&id]);
    assert!(in_flight.iter().all(|b| b["operator"] == "counts"));
    // Exactly-once cut: every record before the offsets is counted in the state
    // or persisted in flight, never both.
    let in_flight_records: u64 = in_flight
        .iter()
        .map(|b| b["records"].as_u64().unwrap())
        .sum();
    let before_cut: u64 = s["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["offset"].as_u64().unwrap())
        .sum();
    let state = dumped(d, id);
    let counted: u64 = state.values().sum();
    assert_eq!(counted + in_flight_records, before_cut, "checkpoint {id}");
    let counts = s["operators"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["operator"] == "counts")
        .unwrap();
    // An early checkpoint may not have seen a key of every key group yet.
    let key_groups: BTreeSet<u16> = state
        .keys()
        .map(|k| key_group_for(k, MAX_PARALLELISM))
        .collect();
    assert_eq!(counts["key_groups"], key_groups.len(), "{counts}");
    assert_eq!(counts["entries"].as_u64().unwrap(), state.len() as u64);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Mostly 16 hot keys, and every tenth record one of 112 cold keys.
fn skewed(i: u64) -> u64 {
    if i % 10 == 0 {
        16 + (i / 10) % 112
    } else {
        i % 16
    }
}

#[test]
fn incremental_job_chains_decode_and_diff_exactly() {
    let dir = temp_dir("incremental");
    let d = dir.to_str().unwrap();
    let job = Counting {
        incremental: true,
        clear_at: 25,
        ..Counting::new(CheckpointMode::Aligned, skewed)
    };
    let processed = Arc::new(AtomicU64::new(0));
    let handle = job.start(&dir, &processed);
    for n in 1..=4 {
        checkpoint_after(&handle, &processed, n * 1_500);
    }
    let ids = completed_ids(&handle);
    handle.stop();
    handle.join().unwrap();
    assert_eq!(ids, vec![1, 2, 3, 4]);

    let list = json(&["list", d, "--json"]);
    let rows = list.as_array().unwrap();
    assert_eq!(rows.len(), 4);
    assert_eq!(
        rows[0]["incremental"], false,
        "the first checkpoint has no base"
    );
    // The second builds on the first's bases (later ones may materialise again).
    assert_eq!(rows[1]["incremental"], true, "{list}");
    for r in rows {
        // Incremental: some chain holds blocks of earlier checkpoints.
        let reuses = r["written_bytes"].as_u64() < r["bytes"].as_u64();
        assert_eq!(r["incremental"], reuses, "{r}");
    }
    let mut states = Vec::new();
    let mut deltas = 0;
    for &id in &ids {
        let s = show(d, id);
        let got = dumped(d, id);
        assert_eq!(got, job.expected(&s["sources"]), "checkpoint {id}");
        deltas += s["key_groups"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|g| g["chain_len"].as_u64().unwrap() > 1)
            .count();
        states.push(got);
    }
    assert!(deltas > 0, "some key group is a base and deltas");
    for (i, pair) in ids.windows(2).enumerate() {
        check_diff(d, pair[0], pair[1], &states[i], &states[i + 1]);
    }
    check_diff(d, 1, 4, &states[0], &states[3]);
    assert_eq!(tool(&["verify", d]).status.code(), Some(0));
    std::fs::remove_dir_all(&dir).unwrap();
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
fn gc_yes_while_a_job_writes_deletes_only_garbage() {
    let dir = temp_dir("gc-live");
    let d = dir.to_str().unwrap();
    let job = Counting {
        interval_ms: 5,
        ..Counting::new(CheckpointMode::Aligned, |i| i % 64)
    };
    let processed = Arc::new(AtomicU64::new(0));
    let mut config = job.config(&dir);
    if let Some(c) = &mut config.checkpoint {
        c.retained = 2;
    }
    let handle = {
        let processed = processed.clone();
        Job::new(config.clone())
            .start(move |df| {
                let clock = df.clock();
                let start = clock.now_ms();
                let processed = processed.clone();
                df.source(
                    "numbers",
                    Numbers::paced(20_000.0, start, clock),
                    WatermarkStrategy::none(),
                )
                .key_by(|i: &u64| i % 64)
                .process("counts", |state| {
                    let counts = state.value_state::<u64>("count");
                    move |i: u64, ctx: &mut KeyedContext<u64, u64>| {
                        counts.update(ctx, || 0, |c| *c += 1);
                        ctx.emit(i);
                        Ok(())
                    }
                })
                .for_each(move |_| {
                    processed.fetch_add(1, Ordering::Relaxed);
                });
            })
            .unwrap()
    };
    wait_until(&handle, "a checkpoint", || {
        handle.completed_checkpoints() >= 1
    });
    // Garbage a crashed run could have left: two old segments of a writer this
    // job does not have; the older one may go, the newer is kept (it could be a
    // running writer's).
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    for name in ["seg-0009-000000000000.spseg", "seg-0009-000000000001.spseg"] {
        std::fs::write(dir.join(name), vec![0u8; 4096]).unwrap();
        set_mtime(&dir.join(name), old);
    }
    let mut deleted = BTreeSet::new();
    for _ in 0..10 {
        let completed = handle.completed_checkpoints();
        let doc = json(&["gc", d, "--yes", "--json"]);
        assert_eq!(doc["dry_run"], false);
        assert_eq!(doc["failed"], json!([]));
        for f in doc["deleted"].as_array().unwrap() {
            deleted.insert(f.as_str().unwrap().to_owned());
        }
        wait_until(&handle, "the next checkpoint", || {
            handle.completed_checkpoints() > completed
        });
    }
    handle.stop();
    handle.join().unwrap();
    assert_eq!(
        deleted,
        BTreeSet::from(["seg-0009-000000000000.spseg".to_owned()]),
        "only the old orphan"
    );
    assert!(dir.join("seg-0009-000000000001.spseg").exists());
    let v = tool(&["verify", d]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    // The job restores from what is left.
    if let Some(c) = &mut config.checkpoint {
        c.restore = RestoreFrom::Latest;
    }
    let latest = StoreReader::open(&dir).unwrap().latest().unwrap().id;
    let handle = Job::new(config)
        .start(|df| {
            df.source(
                "numbers",
                Numbers::unpaced().until(0),
                WatermarkStrategy::none(),
            )
            .key_by(|i: &u64| i % 64)
            .process("counts", |state| {
                let counts = state.value_state::<u64>("count");
                move |i: u64, ctx: &mut KeyedContext<u64, u64>| {
                    counts.update(ctx, || 0, |c| *c += 1);
                    ctx.emit(i);
                    Ok(())
                }
            })
            .for_each(|_| {});
        })
        .unwrap();
    let report = handle.join().unwrap();
    assert_eq!(report.restored_from, Some(latest));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A job checkpointing to a `file://` remote tier as well: every command reads
/// the tier by its URL and sees what the local store holds (the same ids, the
/// same checkpoint shown), `verify` passes, and `gc` runs as a dry run.
#[test]
fn every_command_reads_a_remote_tier_by_url() {
    let dir = temp_dir("remote-local");
    let tier = temp_dir("remote-tier");
    let url = format!("file://{}", tier.display());
    run_job_with(&dir, Some(url.clone()));
    let d = dir.to_str().unwrap();
    let ids = |doc: &Value| -> Vec<u64> {
        doc.as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_u64().unwrap())
            .collect()
    };
    let local = json(&["list", d, "--json"]);
    let remote = json(&["list", &url, "--json"]);
    assert!(ids(&local).len() >= 2, "{local}");
    // Each local checkpoint completed only once committed remotely; both keep 3.
    assert_eq!(ids(&remote), ids(&local));
    let newest = ids(&local).last().unwrap().to_string();
    assert_eq!(
        json(&["show", &url, &newest, "--json"]),
        json(&["show", d, &newest, "--json"])
    );
    let verified = json(&["verify", &url, "--json"]);
    assert_eq!(verified["ok"], json!(true), "{verified}");
    let gc = tool(&["gc", &url]);
    assert!(
        gc.status.success(),
        "{}",
        String::from_utf8_lossy(&gc.stderr)
    );
    let bad = tool(&["list", "gs://bucket"]);
    assert!(!bad.status.success());
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&tier).unwrap();
}

/// Two jobs of this test process form a cluster of two processes (one
/// subtask each, joined by TCP on 127.0.0.1) that checkpoints into `root`:
/// each process's part in `root/process-<p>`, the global records in
/// `root/cluster`, or with `remote` in that remote tier. Runs until the
/// input (10 000 numbers) ends.
fn run_cluster(root: &Path, remote: Option<&str>) {
    let listeners: Vec<std::net::TcpListener> = (0..2)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let peers: Vec<std::net::SocketAddr> =
        listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    drop(listeners);
    // Each on a thread of its own: a process's start waits for its peers.
    let threads: Vec<std::thread::JoinHandle<()>> = (0..2)
        .map(|process| {
            let (root, peers) = (root.to_path_buf(), peers.clone());
            let remote = remote.map(str::to_owned);
            std::thread::spawn(move || run_cluster_process(&root, remote, process, peers))
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}

/// One process of [`run_cluster`], to its end.
fn run_cluster_process(
    root: &Path,
    remote: Option<String>,
    process: usize,
    peers: Vec<std::net::SocketAddr>,
) {
    let config = JobConfig {
        parallelism: 1,
        max_parallelism: MAX_PARALLELISM,
        pin_cores: false,
        checkpoint: Some(CheckpointConfig {
            remote,
            ..CheckpointConfig::new(root, 20)
        }),
        cluster: Some(spate::ClusterConfig {
            process,
            processes: 2,
            peers,
            job: "ckpt-cluster-test".into(),
            secret: b"a-secret-for-the-ckpt-cluster-test".to_vec(),
            connect_timeout: Duration::from_secs(30),
            busy_linger: spate::DEFAULT_BUSY_LINGER,
            commit_point: None,
        }),
        ..JobConfig::default()
    };
    Job::new(config)
        .run(|df| count_numbers(df, 10_000))
        .unwrap();
}

/// Counts per key (`i % KEYS`) the numbers below `end`, paced at 20 000/s.
fn count_numbers(df: &spate::Dataflow, end: u64) {
    let clock = df.clock();
    let start = clock.now_ms();
    df.source(
        "numbers",
        Numbers::paced(20_000.0, start, clock).until(end),
        WatermarkStrategy::monotonous(|i: &u64| *i),
    )
    .key_by(|i: &u64| i % KEYS)
    .process("counts", |state| {
        let counts = state.value_state::<u64>("count");
        move |i: u64, ctx: &mut KeyedContext<u64, u64>| {
            let n = counts.update(
                ctx,
                || 0,
                |c| {
                    *c += 1;
                    *c
                },
            );
            ctx.emit(i % KEYS + n);
            Ok(())
        }
    })
    .for_each(|_| {});
}

#[test]
fn a_cluster_jobs_directory_lists_shows_and_verifies_its_global_checkpoints() {
    let root = temp_dir("cluster");
    run_cluster(&root, None);
    check_cluster(root.to_str().unwrap(), &root.join("process-1"));
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_cluster_jobs_remote_tier_lists_shows_and_verifies_its_global_checkpoints() {
    // The records and parts in a remote tier (`file://`): the local
    // directory holds no record, the URL is read as the job's whole.
    let (root, tier) = (temp_dir("cluster-local"), temp_dir("cluster-tier"));
    let url = format!("file://{}", tier.display());
    run_cluster(&root, Some(&url));
    assert!(!root.join("cluster").exists());
    check_cluster(&url, &tier.join("process-1"));
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_dir_all(&tier);
}

/// `list`, `show`, `verify` and `dump` of the cluster job at `root_s` (a
/// directory or a remote tier's URL), then again once `part_1`, process
/// 1's store or prefix, is gone.
fn check_cluster(root_s: &str, part_1: &Path) {
    let listed = json(&["list", root_s, "--json"]);
    let rows = listed.as_array().unwrap();
    assert!(!rows.is_empty(), "no global checkpoint: {listed}");
    for row in rows {
        assert_eq!(row["processes"], 2, "{row}");
        assert_eq!(row["cores"], 2, "{row}");
        assert!(row["error"].is_null(), "{row}");
        let parts = row["parts"].as_array().unwrap();
        assert_eq!(parts.len(), 2, "{row}");
        assert!(parts.iter().all(|p| p["error"].is_null()), "{row}");
    }
    let newest = rows.last().unwrap()["id"].as_u64().unwrap().to_string();
    // The record and both parts, then the layout of the parts merged.
    let shown = tool(&["show", root_s, &newest, "--key-groups"]);
    assert!(
        shown.status.success(),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(text.contains("2 processes × 1 cores"), "{text}");
    assert!(text.contains("process-1"), "{text}");
    assert!(text.contains("counts"), "the merged keyed state: {text}");
    let verified = tool(&["verify", root_s]);
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stdout)
    );
    let doc = json(&["verify", root_s, "--json"]);
    assert_eq!(doc["ok"], true, "{doc}");
    assert_eq!(doc["checkpoints"].as_array().unwrap().len(), rows.len());
    let stores = doc["stores"].as_array().unwrap();
    assert_eq!(stores.len(), 2, "{doc}");
    assert!(stores
        .iter()
        .all(|s| s["ok"] == true && s["dir"].is_string()));
    // Commands that read blocks name the part to run them on.
    let dumped = tool(&["dump", root_s, &newest, "--operator", "counts"]);
    assert!(!dumped.status.success());
    assert!(
        String::from_utf8_lossy(&dumped.stderr).contains("process-<p>"),
        "{}",
        String::from_utf8_lossy(&dumped.stderr)
    );
    // A part gone: listed as unreadable, and verify fails.
    std::fs::remove_dir_all(part_1).unwrap();
    let listed = json(&["list", root_s, "--json"]);
    let row = listed.as_array().unwrap().last().unwrap().clone();
    assert!(row["parts"][1]["error"].is_string(), "{row}");
    assert!(!tool(&["verify", root_s]).status.success());
    let failed = tool(&["verify", root_s, "--json"]);
    assert!(!failed.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&failed.stdout).unwrap();
    assert_eq!(doc["ok"], false, "{doc}");
    assert!(
        doc["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["error"].as_str().unwrap().contains("process 1")),
        "{doc}"
    );
}
