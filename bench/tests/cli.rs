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
                "nexmark", "--query", "q1", "--events", "30000", "--rate", "30000", "--cores", "2",
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
                "nexmark", "--query", "q2", "--events", "40000", "--rate", "0", "--cores", "2",
                "--seed", "5", "--report",
            ])
            .arg(dir.join("report"))
            .arg("--output")
            .arg(&output),
    );
    let mut rows: Vec<Q2Row> = Vec::new();
    for entry in std::fs::read_dir(&output).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
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
