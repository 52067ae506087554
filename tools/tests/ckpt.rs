//! `spate-ckpt` against a real store: a small keyed job writes checkpoints into a
//! temporary directory, then the tool's JSON is checked against what the job wrote,
//! and a corrupted segment byte must make `verify` fail and name the segment.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use spate::source::SequenceSource;
use spate::{CheckpointConfig, CheckpointMode, Job, JobConfig, KeyedContext, WatermarkStrategy};
use spate_storage::StoreReader;

const KEYS: u64 = 40;
const MAX_PARALLELISM: u32 = 16;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("spate-ckpt-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Counts per key over `0..events` (key `i % KEYS`), checkpointing every 20 ms;
/// stops once two checkpoints completed (every key is seen long before).
fn run_job(dir: &Path) {
    let config = JobConfig {
        parallelism: 2,
        max_parallelism: MAX_PARALLELISM,
        pin_cores: false,
        checkpoint: Some(CheckpointConfig {
            mode: CheckpointMode::Aligned,
            timeout_ms: 5_000,
            ..CheckpointConfig::new(dir, 20)
        }),
        ..JobConfig::default()
    };
    let handle = Job::new(config)
        .start(|df| {
            let clock = df.clock();
            let start = clock.now_ms();
            let events = df.source(
                "numbers",
                SequenceSource::new(1_000_000, |i| i).with_rate(20_000.0, start, clock),
                WatermarkStrategy::monotonous(|i: &u64| *i),
            );
            events
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
        })
        .unwrap();
    while handle.completed_checkpoints() < 2 && handle.is_running() {
        std::thread::yield_now();
    }
    handle.stop();
    handle.join().unwrap();
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
