//! End to end: the `spate-bench` binary runs a small benchmark and leaves a
//! valid report; `gen` writes events that parse back; `--output` writes the
//! query's rows; `compare` reads two reports.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::Command;

use spate_bench::nexmark::json::read_events_jsonl;
use spate_bench::nexmark::rows::Q2Row;
use spate_bench::nexmark::{reference, Generator, GeneratorConfig};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_spate-bench"))
}

/// A fresh directory under cargo's temporary directory for integration tests.
/// The S3 test server (`SPATE_S3_ENDPOINT`), shared with the tests crate.
#[path = "../../tests/src/s3.rs"]
#[allow(dead_code)]
mod s3;

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawning spate-bench");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Checks `latency.hgrm`: the header, rows of 4 numbers (the last, at
/// percentile 1, of 3, as HdrHistogram writes it), values and percentiles
/// nondecreasing, and the footer.
fn check_hgrm(text: &str) {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]
    );
    let rows: Vec<Vec<f64>> = lines
        .clone()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            l.split_whitespace()
                .map(|x| {
                    x.parse::<f64>()
                        .unwrap_or_else(|_| panic!("bad number in {l:?}"))
                })
                .collect()
        })
        .collect();
    assert!(rows.len() >= 2, "too few rows:\n{text}");
    let (last, body) = rows.split_last().unwrap();
    for row in body {
        assert_eq!(row.len(), 4, "row {row:?}");
    }
    assert!(last.len() == 3 || last.len() == 4, "last row {last:?}");
    assert_eq!(last[1], 1.0, "the last row is at percentile 1");
    for pair in rows.windows(2) {
        assert!(pair[0][0] <= pair[1][0], "values decrease: {pair:?}");
        assert!(pair[0][1] <= pair[1][1], "percentiles decrease: {pair:?}");
        assert!(pair[0][2] <= pair[1][2], "counts decrease: {pair:?}");
    }
    let footer: Vec<&str> = lines.filter(|l| l.starts_with("#[")).collect();
    assert_eq!(footer.len(), 3, "footer:\n{text}");
    assert!(footer[0].starts_with("#[Mean"));
    assert!(footer[1].starts_with("#[Max"));
    assert!(footer[2].starts_with("#[Buckets"));
}

#[test]
fn nexmark_writes_a_valid_report() {
    let dir = scratch("report");
    let report = dir.join("report");
    let stdout = run_ok(
        bin()
            .args([
                "nexmark",
                "--query",
                "q1",
                "--events",
                "30000",
                "--rate",
                "30000",
                "--cores",
                "2",
                "--checkpoint-interval-ms",
                "0",
                "--report",
            ])
            .arg(&report),
    );
    assert!(stdout.contains("throughput"), "{stdout}");

    let summary: serde_json::Value = serde_json::from_reader(BufReader::new(
        std::fs::File::open(report.join("summary.json")).unwrap(),
    ))
    .unwrap();
    for key in [
        "query",
        "events",
        "cores",
        "elapsed_s",
        "throughput_events_per_s",
        "latency_us",
        "checkpoints",
        "peak_rss_bytes",
        "resumed_from_checkpoint",
        "config",
        "machine",
    ] {
        assert!(summary.get(key).is_some(), "summary.json lacks `{key}`");
    }
    for key in ["p50", "p90", "p99", "p999", "p9999", "max"] {
        assert!(
            summary["latency_us"][key].is_u64(),
            "latency_us.{key} must be a number in an open-loop run: {}",
            summary["latency_us"]
        );
    }
    for key in [
        "count",
        "failed",
        "mode",
        "incremental",
        "duration_ms_p50",
        "duration_ms_p99",
        "sync_pause_us_p50",
        "sync_pause_us_p99",
        "sync_pause_us_max",
        "bytes_total",
        "in_flight_bytes_total",
    ] {
        assert!(
            summary["checkpoints"].get(key).is_some(),
            "checkpoints lacks `{key}`"
        );
    }
    assert_eq!(summary["query"], "q1");
    assert_eq!(summary["events"], 30_000);
    assert_eq!(summary["cores"], 2);
    assert_eq!(summary["checkpoints"]["count"], 0);
    assert!(summary["checkpoints"]["mode"].is_null());
    assert!(summary["resumed_from_checkpoint"].is_null());
    // q1 emits one row per bid: 46 of every 50 events.
    assert_eq!(summary["rows"], 30_000 / 50 * 46);
    assert!(summary["throughput_events_per_s"].as_f64().unwrap() > 0.0);
    assert!(summary["peak_rss_bytes"].as_u64().unwrap() > 0);

    check_hgrm(&std::fs::read_to_string(report.join("latency.hgrm")).unwrap());
    let svg = std::fs::read_to_string(report.join("latency.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") || svg.starts_with("<?xml"),
        "{}",
        &svg[..svg.len().min(100)]
    );
    assert!(!std::fs::read_to_string(report.join("summary.txt"))
        .unwrap()
        .is_empty());

    // compare reads two reports (here the same one twice: every ratio is 1).
    let table = run_ok(
        bin()
            .arg("compare")
            .arg(report.join("summary.json"))
            .arg(report.join("summary.json")),
    );
    assert!(table.contains("throughput_events_per_s"), "{table}");
    assert!(table.contains("1.000"), "{table}");
}

#[test]
fn gen_output_parses_back() {
    let dir = scratch("gen");
    let file = dir.join("events.jsonl");
    run_ok(
        bin()
            .args(["gen", "--events", "500", "--seed", "3", "--out"])
            .arg(&file),
    );
    let events = read_events_jsonl(BufReader::new(std::fs::File::open(&file).unwrap())).unwrap();
    let mut g = Generator::new(GeneratorConfig::default(), 3);
    let expected: Vec<_> = (0..500).map(|_| g.next_event()).collect();
    assert_eq!(events, expected);
}

#[test]
fn output_dir_holds_the_query_rows() {
    let dir = scratch("output");
    let output = dir.join("rows");
    run_ok(
        bin()
            .args([
                "nexmark",
                "--query",
                "q2",
                "--events",
                "40000",
                "--rate",
                "0",
                "--cores",
                "2",
                "--seed",
                "5",
                "--checkpoint-interval-ms",
                "0",
                "--report",
            ])
            .arg(dir.join("report"))
            .arg("--output")
            .arg(&output),
    );
    let mut rows: Vec<Q2Row> = Vec::new();
    for entry in std::fs::read_dir(&output).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name == ".pending" {
            let left = std::fs::read_dir(&path).unwrap().count();
            assert_eq!(left, 0, "nothing stays pending after a finished run");
            continue;
        }
        assert!(
            name.starts_with("part-") && name.ends_with(".jsonl"),
            "{name}"
        );
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            rows.push(serde_json::from_str(line).unwrap());
        }
    }
    rows.sort();
    let mut g = Generator::new(GeneratorConfig::default(), 5);
    let events: Vec<_> = (0..40_000).map(|_| g.next_event()).collect();
    assert_eq!(rows, reference::q2(&events));
    // Closed loop measures no latency: the report says so with nulls.
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report/summary.json")).unwrap())
            .unwrap();
    assert!(summary["latency_us"]["p50"].is_null());
    assert!(!dir.join("report/latency.hgrm").exists());
}

fn summary_json(report: &Path) -> serde_json::Value {
    serde_json::from_reader(BufReader::new(
        std::fs::File::open(report.join("summary.json")).unwrap(),
    ))
    .unwrap()
}

#[test]
fn checkpoints_are_taken_and_reported() {
    let dir = scratch("checkpoints");
    let report = dir.join("report");
    let stdout = run_ok(
        bin()
            .args([
                "nexmark",
                "--query",
                "q5",
                "--events",
                "60000",
                "--rate",
                "30000",
                "--cores",
                "2",
                "--checkpoint-interval-ms",
                "50",
                "--report",
            ])
            .arg(&report)
            .arg("--state-dir")
            .arg(dir.join("state")),
    );
    assert!(stdout.contains("checkpoints"), "{stdout}");
    let summary = summary_json(&report);
    let c = &summary["checkpoints"];
    assert!(c["count"].as_u64().unwrap() > 0, "{c}");
    assert_eq!(c["mode"], "aligned");
    assert_eq!(c["incremental"], false);
    for key in [
        "duration_ms_p50",
        "duration_ms_p99",
        "sync_pause_us_p50",
        "sync_pause_us_p99",
        "sync_pause_us_max",
        "async_us_p99",
        "alignment_us_p99",
        "bytes_total",
        "delta_bytes_total",
        "in_flight_bytes_total",
        "switched_to_unaligned",
    ] {
        assert!(
            c[key].is_number(),
            "checkpoints.{key} must be a number: {c}"
        );
    }
    // q5 keeps windows in keyed state: the checkpoints hold bytes.
    assert!(c["bytes_total"].as_u64().unwrap() > 0, "{c}");
    assert!(summary["resumed_from_checkpoint"].is_null());
    // The engine's coordinator triggered them (its interval), not the bench.
    let store = spate_storage::StoreReader::open(dir.join("state")).unwrap();
    assert!(!store.checkpoints().is_empty());
    for record in store.checkpoints() {
        let metadata = spate::checkpoint::CheckpointMetadata::decode(&record.metadata).unwrap();
        assert_eq!(metadata.cause, "interval", "checkpoint {}", metadata.id);
    }
    let svg = std::fs::read_to_string(report.join("checkpoints.svg")).unwrap();
    assert!(svg.starts_with("<svg") || svg.starts_with("<?xml"));
    // The run is marked completed: the same command starts fresh.
    let identity: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("state/spate-bench-run.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(identity["completed"], true);
}

#[test]
fn alignment_timeout_needs_the_aligned_timeout_mode() {
    let out = bin()
        .args([
            "nexmark",
            "--events",
            "1000",
            "--checkpoint-mode",
            "aligned",
            "--alignment-timeout-ms",
            "5",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "--alignment-timeout-ms 5 is only valid with --checkpoint-mode aligned-timeout"
        ),
        "{stderr}"
    );
    // Checkpoint flags are refused when checkpointing is off.
    let out = bin()
        .args([
            "nexmark",
            "--events",
            "1000",
            "--checkpoint-interval-ms",
            "0",
            "--incremental",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--incremental needs checkpoints"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The set of JSON lines of every `part-*.jsonl` in `dir`.
fn output_rows(dir: &Path) -> std::collections::BTreeSet<String> {
    let mut rows = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                // Every line is a whole row (a torn one was cut on resume).
                serde_json::from_str::<serde_json::Value>(line)
                    .unwrap_or_else(|e| panic!("{}: bad line {line:?}: {e}", path.display()));
                rows.insert(line.to_string());
            }
        }
    }
    rows
}

#[test]
fn a_killed_run_resumes_from_its_latest_checkpoint() {
    let dir = scratch("resume");
    let state = dir.join("state");
    let output = dir.join("rows");
    let (events, rate) = (120_000u64, 30_000u64);
    let command = || {
        let mut cmd = bin();
        cmd.args(["nexmark", "--query", "q5", "--cores", "2"])
            .args(["--events", &events.to_string(), "--rate", &rate.to_string()])
            .args(["--checkpoint-interval-ms", "100", "--incremental"])
            .arg("--state-dir")
            .arg(&state)
            .arg("--output")
            .arg(&output)
            .arg("--report")
            .arg(dir.join("report"));
        cmd
    };
    // The first run lasts about 4 s (events / rate); kill it once the store
    // holds a completed checkpoint.
    let mut child = command()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let checkpoints = spate_storage::StoreReader::open(&state)
            .map(|r| r.checkpoints().len())
            .unwrap_or(0);
        if checkpoints > 0 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the first run ended before its first checkpoint"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint within 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let identity = spate_bench::resume::read_identity(&state).unwrap().unwrap();
    assert!(!identity.completed, "killed before the end");

    // The same command resumes.
    run_ok(&mut command());
    let summary = summary_json(&dir.join("report"));
    assert!(
        summary["resumed_from_checkpoint"].is_u64(),
        "resumed_from_checkpoint: {}",
        summary["resumed_from_checkpoint"]
    );
    assert_eq!(
        summary["generator"]["base_time_ms"], identity.base_time_ms,
        "a resumed run keeps the first run's event times"
    );
    // Its throughput counts what it processed, not the whole run's events.
    let processed = summary["events_processed"].as_u64().unwrap();
    assert!(
        processed > 0 && processed < events,
        "a resumed run processed {processed} of {events} events"
    );
    let elapsed = summary["elapsed_s"].as_f64().unwrap();
    let throughput = summary["throughput_events_per_s"].as_f64().unwrap();
    assert!((throughput - processed as f64 / elapsed).abs() <= 1e-6 * throughput);
    // The sink is at-least-once until the exactly-once sink exists: rows after
    // the restored checkpoint may be written twice, so compare the sets.
    let config = spate_bench::run::generator_config(Some(rate), identity.base_time_ms);
    let mut g = Generator::new(config, 0);
    let input: Vec<_> = (0..events).map(|_| g.next_event()).collect();
    let expected: std::collections::BTreeSet<String> = reference::q5(&input)
        .iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .collect();
    let got = output_rows(&output);
    assert_eq!(got.len(), expected.len(), "distinct rows");
    assert_eq!(got, expected);

    // Completed now: a different run on the same state directory starts fresh,
    // while an unfinished run of another query is refused by name.
    let mut unfinished = spate_bench::resume::read_identity(&state).unwrap().unwrap();
    assert!(unfinished.completed);
    unfinished.completed = false;
    spate_bench::resume::write_identity(&state, &unfinished).unwrap();
    let out = bin()
        .args([
            "nexmark", "--query", "q7", "--cores", "2", "--events", "1000",
        ])
        .arg("--state-dir")
        .arg(&state)
        .arg("--report")
        .arg(dir.join("report-q7"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--query q5") && stderr.contains("--fresh"),
        "{stderr}"
    );
}

#[test]
fn checkpoint_benchmark_quick_run() {
    let dir = scratch("ckpt-bench");
    let report = dir.join("report");
    let stdout = run_ok(
        bin()
            .args(["checkpoints", "--quick", "--cores", "2"])
            .arg("--report")
            .arg(&report)
            .arg("--state-dir")
            .arg(dir.join("state")),
    );
    assert!(stdout.contains("incremental"), "{stdout}");
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(report.join("checkpoints-summary.json")).unwrap(),
    )
    .unwrap();
    let variants = summary["variants"].as_array().unwrap();
    let names: Vec<&str> = variants
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["none", "full", "incremental"]);
    assert_eq!(summary["keys"], (16u64 << 20) / 128);
    for v in variants {
        assert!(v["throughput_events_per_s"].as_f64().unwrap() > 0.0, "{v}");
        assert!(v["latency_us"]["p99"].is_u64(), "{v}");
    }
    assert!(variants[0]["checkpoints"]["mode"].is_null());
    for v in &variants[1..] {
        let c = &v["checkpoints"];
        assert!(c["count"].as_u64().unwrap() > 0, "{v}");
        assert!(c["sync_pause_us_p99"].is_u64(), "{v}");
        assert!(v["throughput_ratio_to_none"].as_f64().unwrap() > 0.0, "{v}");
        assert!(v["baseline_checkpoint"]["bytes"].as_u64().unwrap() >= 16 << 20);
    }
    assert_eq!(variants[2]["checkpoints"]["incremental"], true);
    assert!(
        variants[2]["checkpoints"]["delta_bytes_total"]
            .as_u64()
            .unwrap()
            > 0
    );
    // The variants' checkpoint directories are removed afterwards.
    assert!(!dir.join("state/checkpoints-full").exists());
}

/// Runs `spate-bench` with `args` on state and report directories in `dir`;
/// it must fail before writing anything, with `expected` in its message.
fn refused_before_any_write(dir: &Path, args: &[&str], expected: &str) {
    let state = dir.join("state");
    let out = bin()
        .args(args)
        .arg("--state-dir")
        .arg(&state)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(if stderr.contains("error: invalid value") {
            2
        } else {
            1
        }),
        "{args:?}: {stderr}"
    );
    assert!(stderr.contains(expected), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    assert!(!state.exists(), "{args:?} wrote into the state directory");
}

#[test]
fn bad_arguments_are_refused_before_any_work() {
    let dir = scratch("bad-arguments");
    let report_file = dir.join("a-file");
    std::fs::write(&report_file, "not a directory").unwrap();
    let report_file = report_file.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["nexmark", "--rate", "9007199254740993"], "--rate"),
        (
            &[
                "nexmark",
                "--checkpoint-interval-ms",
                "18446744073709551615",
            ],
            "--checkpoint-interval-ms",
        ),
        (
            &[
                "nexmark",
                "--checkpoint-mode",
                "aligned-timeout",
                "--alignment-timeout-ms",
                "18446744073709551615",
            ],
            "invalid value '18446744073709551615' for '--alignment-timeout-ms",
        ),
        (&["nexmark", "--cores", "0"], "--cores must be at least 1"),
        (
            &["nexmark", "--events", "1000", "--report", report_file],
            "is not a directory",
        ),
        (
            &["nexmark", "--events", "1000", "--output", report_file],
            "is not a directory",
        ),
        (&["checkpoints", "--rate", "9007199254740993"], "--rate"),
    ];
    for (args, expected) in cases {
        refused_before_any_write(&dir, args, expected);
    }
}

/// Every row of an output directory, sorted, duplicates kept.
fn all_rows(dir: &Path) -> Vec<String> {
    let mut rows = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            rows.extend(
                std::fs::read_to_string(&path)
                    .unwrap()
                    .lines()
                    .map(String::from),
            );
        }
    }
    rows.sort();
    rows
}

/// Runs `query` closed loop on 200 000 events without checkpoints, with
/// `extra` flags, its rows into `dir/rows-NAME` and its report into
/// `dir/report-NAME`; returns the rows, sorted.
fn closed_loop_rows(dir: &Path, query: &str, extra: &[&str], name: &str) -> Vec<String> {
    let mut cmd = bin();
    cmd.args([
        "nexmark", "--query", query, "--events", "200000", "--rate", "0",
    ])
    .args(["--checkpoint-interval-ms", "0"])
    .args(extra)
    .arg("--output")
    .arg(dir.join(format!("rows-{name}")))
    .arg("--report")
    .arg(dir.join(format!("report-{name}")));
    run_ok(&mut cmd);
    all_rows(&dir.join(format!("rows-{name}")))
}

#[test]
fn a_cluster_of_three_processes_writes_what_one_process_does() {
    // Three processes of one core each, joined by TCP, against one process
    // of three cores: the same subtasks, the same rows.
    // (q5 and q8 are deterministic; q3 and q4 emit running updates whose
    // order depends on how inputs interleave, even in one process.)
    for query in ["q5", "q8"] {
        let dir = scratch(&format!("cluster-{query}"));
        let one = closed_loop_rows(&dir, query, &["--cores", "3"], "one");
        let cluster = closed_loop_rows(
            &dir,
            query,
            &["--cores", "1", "--processes", "3"],
            "cluster",
        );
        assert!(!one.is_empty(), "{query}: no rows");
        assert_eq!(cluster.len(), one.len(), "{query}: row count");
        assert!(cluster == one, "{query}: the cluster's rows differ");
        let summary = summary_json(&dir.join("report-cluster"));
        let processes = summary["processes"].as_array().unwrap();
        assert_eq!(processes.len(), 3);
        assert_eq!(summary["events_processed"], 200_000);
        for p in processes {
            assert!(
                p["network_bytes_received"].as_u64().unwrap() > 0,
                "{query}: {p}"
            );
        }
    }
}

#[test]
fn a_cluster_refuses_what_it_cannot_recover() {
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "--checkpoint-interval-ms",
                "0",
                "--kill-process",
                "1",
                "--kill-after-checkpoints",
                "2",
            ],
            "--kill-process needs checkpoints",
        ),
        (
            &["--kill-process", "2", "--kill-after-checkpoints", "2"],
            "--kill-process names a process",
        ),
        (&["--failover", "elsewhere"], "--failover"),
    ];
    for (extra, expected) in cases {
        let out = bin()
            .args([
                "nexmark",
                "--query",
                "q1",
                "--events",
                "1000",
                "--processes",
                "2",
            ])
            .args(*extra)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{extra:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{extra:?}: {stderr}");
    }
}

/// Events of the failover runs, and their open-loop rate (a few seconds).
const FAILOVER_EVENTS: &str = "450000";
const FAILOVER_RATE: &str = "150000";

/// `query` open loop from `base` (epoch ms) with `extra` flags, its rows
/// into `dir/rows-NAME`; returns the rows, sorted, and the report.
fn open_loop_rows(
    dir: &Path,
    query: &str,
    base: u64,
    extra: &[&str],
    name: &str,
) -> (Vec<String>, serde_json::Value) {
    let mut cmd = bin();
    cmd.args(["nexmark", "--query", query, "--events", FAILOVER_EVENTS])
        .args(["--rate", FAILOVER_RATE, "--base-time-ms", &base.to_string()])
        .args(extra)
        .arg("--output")
        .arg(dir.join(format!("rows-{name}")))
        .arg("--report")
        .arg(dir.join(format!("report-{name}")))
        .envs(s3::TEST_CREDENTIALS);
    run_ok(&mut cmd);
    (
        all_rows(&dir.join(format!("rows-{name}"))),
        summary_json(&dir.join(format!("report-{name}"))),
    )
}

/// The global checkpoint after which a failover run kills its process: a
/// seeded moment while events flow (checkpoints every 100 ms, events from
/// about 1.5 s after the start for 3 s).
fn kill_moment(seed: u64) -> u64 {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 31;
    18 + x % 16
}

/// Three processes of one core, checkpointing every 100 ms, one of them
/// killed (SIGKILL) at a seeded moment by the launcher, which restarts the
/// whole cluster from the latest global checkpoint (as many processes, or
/// one fewer): the committed rows are those of one uninterrupted process of
/// three cores, each exactly once.
fn failover_case(query: &str, victim: usize, failover: &str, seed: u64) {
    let name = format!("failover-{query}-{victim}-{failover}-{seed}");
    failover_case_at(&name, query, victim, failover, kill_moment(seed), &[]);
}

/// [`failover_case`] killing after global checkpoint `after`, with more
/// flags for the cluster run, in scratch directory `name`.
fn failover_case_at(
    name: &str,
    query: &str,
    victim: usize,
    failover: &str,
    after: u64,
    more: &[&str],
) {
    let dir = scratch(name);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let base = now + 1_500;
    let state = dir.join("state");
    let (victim_s, after_s) = (victim.to_string(), after.to_string());
    let mut flags = vec![
        "--cores",
        "1",
        "--processes",
        "3",
        "--checkpoint-interval-ms",
        "100",
        "--state-dir",
        state.to_str().unwrap(),
        "--failover",
        failover,
        "--kill-process",
        &victim_s,
        "--kill-after-checkpoints",
        &after_s,
    ];
    flags.extend_from_slice(more);
    let (cluster, summary) = open_loop_rows(&dir, query, base, &flags, "cluster");

    // The same events (the same base time) in one process, after the
    // cluster (its events are then all due at once: it runs closed loop).
    let (one, _) = open_loop_rows(
        &dir,
        query,
        base,
        &["--cores", "3", "--checkpoint-interval-ms", "0"],
        "one",
    );
    let name = format!("{query}, process {victim} killed after checkpoint {after}, {failover}");
    assert!(!one.is_empty(), "{name}: no rows");
    assert_eq!(cluster.len(), one.len(), "{name}: row count");
    assert!(
        cluster == one,
        "{name}: the recovered cluster's rows differ"
    );
    let f = &summary["failover"];
    assert_eq!(f["killed_process"], victim as u64, "{name}: {f}");
    assert!(f["restarts"].as_u64().unwrap() >= 1, "{name}: {f}");
    // With etcd the pointer, moved after the record, is the commit point:
    // a leader killed between the two leaves the record behind it.
    let committed = if more.contains(&"--cluster") {
        after - 1
    } else {
        after
    };
    assert!(
        f["restored_from"].as_u64().unwrap() >= committed,
        "{name}: {f}"
    );
    let after_processes = if failover == "shrink" { 2 } else { 3 };
    assert_eq!(f["processes_after"], after_processes, "{name}: {f}");
    if more.contains(&"--remote") {
        assert!(
            !state.join("cluster").exists(),
            "{name}: global records in the state directory, not the remote tier"
        );
    }
    assert!(
        f["kill_to_first_event_ms"].as_u64().is_some(),
        "{name}: {f}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_killed_worker_is_replaced_and_the_rows_are_exactly_once() {
    failover_case("q8", 1, "replace", 1);
}

#[test]
fn a_killed_leader_is_replaced_and_the_rows_are_exactly_once() {
    failover_case("q5", 0, "replace", 2);
}

#[test]
fn a_cluster_found_through_etcd_fails_over_too() {
    // Each restart joins under a name of its own: the killed process's
    // member key outlives it by its lease. The leader (process 0, elected
    // in etcd) moves the job's checkpoint pointer with every global
    // checkpoint; the restart restored what it pointed to.
    let Some(etcd) = etcd_endpoint() else { return };
    clean_etcd(&etcd, "etcd-failover-test");
    // Killed early (about 45 checkpoints in all) so that the restarted job
    // still has checkpoints to complete, however loaded the machine.
    let after = 18;
    failover_case_at(
        "failover-etcd-worker",
        "q8",
        1,
        "replace",
        after,
        &["--cluster", &etcd, "--cluster-job", "etcd-failover-test"],
    );
    check_pointer_and_clean(&etcd, "etcd-failover-test", after);
}

#[test]
fn a_killed_leader_found_through_etcd_is_replaced_by_election() {
    // The new process 0 is elected once the killed one's leader key goes
    // with its lease; until then the job runs, and its first checkpoint
    // completes after the election.
    let Some(etcd) = etcd_endpoint() else { return };
    clean_etcd(&etcd, "etcd-leader-test");
    // Early, as above: the election waits out the killed leader's lease.
    let after = 18;
    failover_case_at(
        "failover-etcd-leader",
        "q5",
        0,
        "replace",
        after,
        &["--cluster", &etcd, "--cluster-job", "etcd-leader-test"],
    );
    check_pointer_and_clean(&etcd, "etcd-leader-test", after);
}

/// Removes the keys of every job named `<prefix>-…` (an earlier run of the
/// test may have left some).
fn clean_etcd(etcd: &str, prefix: &str) {
    use spate_cluster::Coordination;
    let client = spate_cluster::EtcdClient::new(etcd, std::time::Duration::from_secs(5)).unwrap();
    client
        .delete(&spate_cluster::KeyRange::Prefix(
            format!("/spate/{prefix}-").into_bytes(),
        ))
        .unwrap();
}

/// After a failover run through etcd under job names `<prefix>-…`: one
/// checkpoint pointer, moved past the kill after checkpoint `after`, and
/// no leader key (it left with its lease). Removes the run's keys.
fn check_pointer_and_clean(etcd: &str, prefix: &str, after: u64) {
    use spate_cluster::Coordination;
    let client = spate_cluster::EtcdClient::new(etcd, std::time::Duration::from_secs(5)).unwrap();
    let range = spate_cluster::KeyRange::Prefix(format!("/spate/{prefix}-").into_bytes());
    let kvs = client.range(&range).unwrap().kvs;
    let pointers: Vec<serde_json::Value> = kvs
        .iter()
        .filter(|kv| kv.key.ends_with(b"/checkpoint"))
        .map(|kv| serde_json::from_slice(&kv.value).unwrap())
        .collect();
    assert_eq!(pointers.len(), 1, "one job, one pointer: {pointers:?}");
    assert!(
        pointers[0]["checkpoint_id"].as_u64().unwrap() > after,
        "the pointer moved past the kill: {pointers:?}"
    );
    assert!(
        !kvs.iter().any(|kv| kv.key.ends_with(b"/leader")),
        "the leader left with its lease"
    );
    clean_etcd(etcd, prefix);
}

#[test]
fn a_cluster_with_its_checkpoints_in_s3_fails_over_from_there() {
    // Every process's parts and the global records in the S3 test server:
    // the leader is killed, and the job restarts on two processes, reading
    // the parts of the process gone (and each other's) from S3.
    let Some(endpoint) = s3::endpoint() else {
        return;
    };
    let prefix = format!(
        "cli-cluster-failover-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let url = s3::url(&endpoint, &prefix);
    // Uploads make a checkpoint take about twice the 100 ms interval (more
    // under load): 8 is about when events begin to flow, or later.
    failover_case_at("failover-s3", "q5", 0, "shrink", 8, &["--remote", &url]);
}

#[test]
fn without_a_replacement_the_cluster_rescales_and_the_rows_are_exactly_once() {
    failover_case("q8", 2, "shrink", 3);
    failover_case("q5", 0, "shrink", 4);
}

/// `SPATE_FAILOVER_SOAK=N`: N more failover runs, each at a seeded moment
/// (`SPATE_FAILOVER_SEED` to start from another seed), alternating the
/// query, the victim and the failover.
#[test]
fn failover_soak() {
    let Some(runs) = std::env::var("SPATE_FAILOVER_SOAK")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    let first: u64 = std::env::var("SPATE_FAILOVER_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    for seed in first..first + runs {
        let query = if seed % 2 == 0 { "q5" } else { "q8" };
        let failover = if seed % 3 == 0 { "shrink" } else { "replace" };
        failover_case(query, (seed % 3) as usize, failover, seed);
    }
}

/// etcd for the cluster tests that find their peers there: the endpoint
/// from `SPATE_ETCD_ENDPOINT` (`.ci/run` starts etcd and sets it); `None`
/// with `SPATE_SKIP_ETCD_TESTS=1`.
fn etcd_endpoint() -> Option<String> {
    if std::env::var("SPATE_SKIP_ETCD_TESTS").is_ok_and(|v| v == "1") {
        eprintln!("skipped: etcd tests (SPATE_SKIP_ETCD_TESTS=1)");
        return None;
    }
    Some(std::env::var("SPATE_ETCD_ENDPOINT").expect(
        "the etcd cluster tests need SPATE_ETCD_ENDPOINT=http://127.0.0.1:2379 with etcd \
         running (.ci/run starts it), or SPATE_SKIP_ETCD_TESTS=1",
    ))
}

#[test]
fn a_cluster_found_through_etcd_writes_what_one_process_does() {
    let Some(etcd) = etcd_endpoint() else { return };
    let dir = scratch("cluster-etcd");
    let one = closed_loop_rows(&dir, "q8", &["--cores", "2"], "one");
    let cluster = closed_loop_rows(
        &dir,
        "q8",
        &[
            "--cores",
            "1",
            "--processes",
            "2",
            "--cluster",
            &etcd,
            "--cluster-job",
            "etcd-rows-test",
        ],
        "cluster",
    );
    assert!(!one.is_empty());
    assert!(cluster == one, "the rows differ");
    // Every member left at the end: nothing of the run is left in etcd.
    use spate_cluster::Coordination;
    let client = spate_cluster::EtcdClient::new(&etcd, std::time::Duration::from_secs(5)).unwrap();
    let left = client
        .range(&spate_cluster::KeyRange::Prefix(
            b"/spate/etcd-rows-test-".to_vec(),
        ))
        .unwrap();
    assert!(left.kvs.is_empty(), "left in etcd: {:?}", left.kvs);
}

/// Two paced q5 processes (about a minute of input) finding each other in
/// etcd under `job`, their stderr read by threads. Returns the children,
/// the readers (each returns all of its process's stderr), and a channel
/// that gets one message per process once its stderr shows `marker`.
#[allow(clippy::type_complexity)]
fn etcd_pair(
    etcd: &str,
    name: &str,
    marker: &'static str,
) -> (
    String,
    Vec<std::process::Child>,
    Vec<std::thread::JoinHandle<String>>,
    std::sync::mpsc::Receiver<()>,
) {
    let job = format!("{name}-{}", std::process::id());
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 1_000;
    let dir = scratch(name);
    let (tx, rx) = std::sync::mpsc::channel();
    let mut children = Vec::new();
    let mut readers = Vec::new();
    for p in 0..2 {
        let mut child = bin()
            .args([
                "nexmark", "--query", "q5", "--events", "3000000", "--rate", "50000",
            ])
            .args([
                "--checkpoint-interval-ms",
                "0",
                "--cores",
                "1",
                "--processes",
                "2",
            ])
            .args(["--process-id", &p.to_string(), "--cluster", etcd])
            .args(["--cluster-job", &job, "--base-time-ms", &base.to_string()])
            .arg("--report")
            .arg(dir.join(format!("report-{p}")))
            .env("SPATE_CLUSTER_SECRET", "a-secret-for-the-etcd-tests")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            let mut all = String::new();
            for line in std::io::BufRead::lines(BufReader::new(stderr)).map_while(Result::ok) {
                if line.contains(marker) {
                    let _ = tx.send(());
                }
                all += &line;
                all += "\n";
            }
            all
        }));
        children.push(child);
    }
    for _ in 0..2 {
        rx.recv_timeout(std::time::Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("both processes print `{marker}`"));
    }
    (job, children, readers, rx)
}

#[test]
fn a_process_whose_etcd_lease_is_lost_fails_the_cluster() {
    use spate_cluster::Coordination;
    let Some(etcd) = etcd_endpoint() else { return };
    let client = spate_cluster::EtcdClient::new(&etcd, std::time::Duration::from_secs(5)).unwrap();
    // Once both found each other, etcd takes process 1's lease away (as it
    // would after process 1 stopped renewing it).
    let (job, mut children, readers, _rx) = etcd_pair(&etcd, "cluster-lease", "joined");
    let keys = spate_cluster::JobKeys::new(&job).unwrap();
    let lease = spate_cluster::members(&client, &keys)
        .unwrap()
        .iter()
        .find(|m| m.info.process_id == 1)
        .expect("process 1 is a member")
        .lease;
    client.lease_revoke(lease).unwrap();
    let statuses: Vec<_> = children.iter_mut().map(|c| c.wait().unwrap()).collect();
    for (p, (status, reader)) in statuses.iter().zip(readers).enumerate() {
        let stderr = reader.join().unwrap();
        assert!(!status.success(), "process {p} succeeded: {stderr}");
        // Process 1 fails naming its lost lease; process 0 either sees it
        // leave etcd or gets its abort, whichever comes first.
        assert!(
            stderr.contains("lease was lost") || stderr.contains("[1] left the cluster in etcd"),
            "process {p} does not name the lost lease: {stderr}"
        );
    }
}

#[test]
fn a_hung_process_is_noticed_through_etcd_and_fails_the_cluster() {
    // SIGSTOP once both run: the process's sockets stay open, so only its
    // lease, which it no longer renews, says it is gone.
    let Some(etcd) = etcd_endpoint() else { return };
    let (_, mut children, mut readers, _rx) = etcd_pair(&etcd, "cluster-hung", "started its job");
    let stopped = std::time::Instant::now();
    let status = Command::new("kill")
        .args(["-STOP", &children[1].id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let survivor = children[0].wait().unwrap();
    let noticed = stopped.elapsed();
    children[1].kill().unwrap();
    children[1].wait().unwrap();
    let stderr = readers.remove(0).join().unwrap();
    assert!(!survivor.success(), "process 0 succeeded: {stderr}");
    assert!(
        stderr.contains("[1] left the cluster in etcd"),
        "process 0 does not name process 1: {stderr}"
    );
    eprintln!("a hung process noticed after {noticed:?} (lease TTL 2 s)");
}
