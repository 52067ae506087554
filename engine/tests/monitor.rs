//! The monitor of a running job (`JobConfig::monitor`): `/metrics` parses as
//! Prometheus text and its counters move, `/api/checkpoints` agrees with
//! `JobHandle::checkpoint_stats`, a failed checkpoint and a restart show up
//! (with secrets masked), and only reads are allowed without a token.

mod common;

use common::http::{get, raw_status, request};
use common::Event;
use spate::sink::Sink;
use spate::source::SequenceSource;
use spate::{
    CheckpointConfig, Dataflow, Job, JobConfig, JobHandle, KeyedContext, MonitorConfig,
    RestartStrategy, WatermarkStrategy,
};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Events per second over all subtasks.
const RATE: f64 = 20_000.0;
const TOKEN: &str = "test-token-0123456789";

/// Switches the test flips while the job runs.
#[derive(Default)]
struct Switches {
    /// The sink's pre-commit does not finish: checkpoints time out.
    hold: AtomicBool,
    /// The keyed operator fails on its next record (a task failure).
    fail: AtomicBool,
}

/// Discards records; its pre-commit finishes only while not held.
struct Holding(Arc<Switches>);

impl<T> Sink<T> for Holding {
    fn write(&mut self, batch: &mut Vec<spate::Record<T>>) -> Result<(), spate::SinkError> {
        batch.clear();
        Ok(())
    }
    fn is_pre_committed(&mut self, _checkpoint_id: u64) -> bool {
        !self.0.hold.load(Ordering::SeqCst)
    }
}

/// A paced source (event time follows processing time), a keyed count and
/// a sink, for as long as the test lets it run.
fn job(df: &Dataflow, switches: &Arc<Switches>) {
    let clock = df.clock();
    let start = clock.now_ms();
    let event = move |i: u64| Event {
        key: i % 50,
        ts: start + (i as f64 * 1000.0 / RATE) as u64,
        value: i,
    };
    let fail = switches.clone();
    df.source(
        "events",
        SequenceSource::new(100_000_000, event).with_rate(RATE, start, clock),
        WatermarkStrategy::monotonous(|e: &Event| e.ts),
    )
    .key_by(|e: &Event| e.key)
    .process("count", move |state| {
        let count = state.value_state::<u64>("count");
        move |e: Event, ctx: &mut KeyedContext<u64, (u64, u64)>| {
            if fail.fail.swap(false, Ordering::SeqCst) {
                return Err(
                    "injected task failure: password=hunter2 at postgres://app:pw@db/x".into(),
                );
            }
            let n = count.update(
                ctx,
                || 0,
                |c| {
                    *c += 1;
                    *c
                },
            );
            ctx.emit((e.key, n));
            Ok(())
        }
    })
    .sink("out", Holding(switches.clone()));
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("spate-monitor-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn start(name: &str, monitor: MonitorConfig) -> (JobHandle, Arc<Switches>, SocketAddr, PathBuf) {
    start_with(name, monitor, |_| {})
}

/// [`start`], with the checkpoint configuration changed by `tune`.
fn start_with(
    name: &str,
    monitor: MonitorConfig,
    tune: impl FnOnce(&mut CheckpointConfig),
) -> (JobHandle, Arc<Switches>, SocketAddr, PathBuf) {
    let dir = temp_dir(name);
    let mut checkpoint = CheckpointConfig {
        timeout_ms: 400,
        tolerable_failures: 1_000,
        ..CheckpointConfig::new(&dir, 100)
    };
    tune(&mut checkpoint);
    let config = JobConfig {
        parallelism: 2,
        max_parallelism: 32,
        pin_cores: false,
        checkpoint: Some(checkpoint),
        restart: RestartStrategy::FixedDelay {
            attempts: 3,
            delay: Duration::ZERO,
        },
        monitor: Some(monitor),
        ..JobConfig::default()
    };
    let switches = Arc::new(Switches::default());
    let s = switches.clone();
    let handle = Job::new(config).start(move |df| job(df, &s)).unwrap();
    let addr = handle.monitor_address().expect("the monitor listens");
    assert!(addr.ip().is_loopback(), "{addr}");
    (handle, switches, addr, dir)
}

/// Polls `check` until it holds, failing after a generous deadline.
fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn finish(handle: JobHandle, dir: PathBuf) {
    handle.stop();
    handle.join().expect("the job ends cleanly after stop");
    let _ = std::fs::remove_dir_all(dir);
}

fn scrape(addr: SocketAddr) -> prometheus_parse::Scrape {
    let reply = get(addr, "/metrics");
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .header("content-type")
            .unwrap_or("")
            .starts_with("text/plain; version=0.0.4"),
        "{:?}",
        reply.header("content-type")
    );
    infinite_buckets_hold_the_count(&reply.body);
    let lines = reply.body.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("the exposition parses as Prometheus text")
}

/// Every histogram has an `le="+Inf"` bucket, equal to its `_count`.
fn infinite_buckets_hold_the_count(text: &str) {
    let value_of = |line: &str| line.rsplit(' ').next().unwrap().to_string();
    let histograms: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" histogram"))
        .collect();
    assert!(!histograms.is_empty(), "histograms are exposed");
    for name in histograms {
        let infs: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&format!("{name}_bucket{{")) && l.contains("le=\"+Inf\""))
            .collect();
        assert!(!infs.is_empty(), "{name} has a +Inf bucket");
        for inf in infs {
            let labels = inf[name.len() + "_bucket".len()..]
                .split(' ')
                .next()
                .unwrap()
                .replace(",le=\"+Inf\"", "")
                .replace("le=\"+Inf\"", "")
                .replace("{}", "");
            let count = format!("{name}_count{labels} ");
            let count = text
                .lines()
                .find(|l| l.starts_with(&count))
                .unwrap_or_else(|| panic!("{count} for {inf}"));
            assert_eq!(value_of(inf), value_of(count), "{inf} against {count}");
        }
    }
}

/// The value of `name` whose labels include `labels`.
fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(h) => h.last().map_or(0.0, |b| b.count),
            prometheus_parse::Value::Summary(_) => f64::NAN,
        })
}

fn json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let reply = get(addr, path);
    assert_eq!(reply.status, 200, "{path}: {}", reply.body);
    serde_json::from_str(&reply.body).expect("the API answers JSON")
}

#[test]
fn metrics_parse_as_prometheus_text_and_counters_move() {
    let (handle, _switches, addr, dir) = start("metrics", MonitorConfig::local(0));
    wait_for("two checkpoints", || handle.completed_checkpoints() >= 2);
    let first = scrape(addr);
    let records = |s: &prometheus_parse::Scrape| {
        value(
            s,
            "spate_operator_records_out_total",
            &[("operator", "events"), ("subtask", "0")],
        )
    };
    let before = records(&first).expect("records out of the source on subtask 0");
    for name in [
        "spate_checkpoints_completed_total",
        "spate_checkpoints_failed_total",
        "spate_checkpoints_in_progress",
        "spate_checkpoint_duration_seconds",
        "spate_checkpoint_sync_pause_seconds",
        "spate_checkpoint_alignment_seconds",
        "spate_checkpoint_size_bytes",
        "spate_operator_records_in_total",
        "spate_exchange_backpressured_seconds_total",
        "spate_exchange_ring_batches",
        "spate_operator_timers_pending",
        "spate_job_restarts_total",
        "spate_store_segments",
    ] {
        assert!(
            first.samples.iter().any(|s| s.metric == name),
            "{name} is exposed"
        );
    }
    assert_eq!(
        value(
            &first,
            "spate_job_status",
            &[("status", "RUNNING"), ("spate_job", "spate")]
        ),
        Some(1.0)
    );
    // Not `job`: Prometheus's own target label would rename it.
    assert!(first
        .samples
        .iter()
        .all(|s| s.labels.get("job").is_none() && s.labels.get("spate_job") == Some("spate")));
    assert!(value(&first, "spate_checkpoints_completed_total", &[]).unwrap() >= 2.0);
    assert!(value(&first, "spate_checkpoint_duration_seconds", &[]).unwrap() >= 2.0);
    wait_for("the source's counter to move", || {
        records(&scrape(addr)).is_some_and(|after| after > before)
    });
    wait_for("a rate and a watermark lag", || {
        let s = scrape(addr);
        value(
            &s,
            "spate_operator_records_out_per_second",
            &[("operator", "events")],
        )
        .is_some_and(|r| r > 0.0)
            && value(
                &s,
                "spate_operator_watermark_lag_seconds",
                &[("operator", "count")],
            )
            .is_some()
    });
    finish(handle, dir);
}

/// A checkpoint writer that falls behind shows: with a backlog budget of one
/// byte, writes to key groups not archived yet keep their values per entry,
/// and the metrics and the API count them.
#[test]
fn values_kept_at_the_cut_are_counted_when_the_writer_is_behind() {
    let (handle, _switches, addr, dir) = start_with("kept", MonitorConfig::local(0), |c| {
        c.archive_backlog_bytes = 1;
    });
    let kept = |subtask: &str| {
        value(
            &scrape(addr),
            "spate_keyed_state_values_kept_at_cut_total",
            &[("operator", "count"), ("subtask", subtask)],
        )
    };
    wait_for("values kept at a cut", || {
        kept("0").is_some_and(|v| v > 0.0) || kept("1").is_some_and(|v| v > 0.0)
    });
    let operators = json(addr, "/api/operators");
    let in_api: u64 = operators["operators"]
        .as_array()
        .expect("operators")
        .iter()
        .filter(|o| o["name"] == "count")
        .map(|o| o["values_kept_at_cut"].as_u64().expect("a count"))
        .sum();
    assert!(in_api > 0, "{operators}");
    finish(handle, dir);
}

#[test]
fn the_api_agrees_with_the_handles_checkpoint_stats() {
    let (handle, _switches, addr, dir) = start("api", MonitorConfig::local(0));
    wait_for("three checkpoints", || handle.completed_checkpoints() >= 3);
    let stats = handle.checkpoint_stats();
    let api = json(addr, "/api/checkpoints");
    let history = api["history"].as_array().expect("a history");
    for s in &stats {
        let c = history
            .iter()
            .find(|c| c["id"] == s.id)
            .unwrap_or_else(|| panic!("checkpoint {} is in the API's history", s.id));
        assert_eq!(c["end_to_end_duration_ms"], s.duration_ms, "{}", s.id);
        assert_eq!(c["state_size_bytes"], s.state_bytes, "{}", s.id);
        assert_eq!(c["in_flight_size_bytes"], s.in_flight_bytes, "{}", s.id);
        assert_eq!(c["trigger_timestamp_ms"], s.trigger_ms, "{}", s.id);
        assert_eq!(c["checkpoint_type"], s.mode, "{}", s.id);
        let subtasks = c["subtasks"].as_array().unwrap();
        assert_eq!(subtasks.len(), s.subtasks.len(), "{}", s.id);
        for (a, b) in subtasks.iter().zip(&s.subtasks) {
            assert_eq!(a["subtask"], b.subtask);
            assert_eq!(a["sync_pause_us"], b.sync_us);
            assert_eq!(a["async_duration_us"], b.async_us);
            assert_eq!(a["alignment_duration_us"], b.alignment_us);
            assert_eq!(a["state_size_bytes"], b.state_bytes);
        }
        let details = json(addr, &format!("/api/checkpoints/details/{}", s.id));
        assert_eq!(details["id"], s.id);
    }
    let counts = &api["counts"];
    assert!(counts["completed"].as_u64().unwrap() >= stats.len() as u64 - 1);
    assert_eq!(counts["failed"], 0);
    let config = json(addr, "/api/checkpoints/config");
    assert_eq!(config["interval_ms"], 100);
    assert_eq!(config["mode"], "aligned");
    let job = json(addr, "/api/job");
    assert_eq!(job["status"], "RUNNING");
    assert_eq!(job["parallelism"], 2);
    let operators = json(addr, "/api/operators");
    let names: Vec<&str> = operators["operators"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["name"].as_str())
        .collect();
    for name in ["events", "count", "out"] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    finish(handle, dir);
}

#[test]
fn a_failed_checkpoint_and_a_restart_show_up_with_secrets_masked() {
    let monitor = MonitorConfig::local(0).with_job_name("restarting");
    let (handle, switches, addr, dir) = start("failures", monitor);
    wait_for("two checkpoints", || handle.completed_checkpoints() >= 2);
    switches.hold.store(true, Ordering::SeqCst);
    wait_for("a failed checkpoint", || handle.failed_checkpoints() >= 1);
    switches.hold.store(false, Ordering::SeqCst);
    switches.fail.store(true, Ordering::SeqCst);
    wait_for("a restart", || handle.restart_stats().restarts >= 1);
    wait_for("a checkpoint after the restart", || {
        json(addr, "/api/job")["attempt"] == 1 && handle.completed_checkpoints() >= 1
    });
    let api = json(addr, "/api/checkpoints");
    assert!(
        api["counts"]["failed"].as_u64().unwrap() >= 1,
        "{}",
        api["counts"]
    );
    let failed = &api["latest"]["failed"];
    assert_eq!(failed["status"], "FAILED");
    assert!(
        failed["failure_message"]
            .as_str()
            .unwrap()
            .contains("timed out")
            || failed["failure_message"]
                .as_str()
                .unwrap()
                .contains("timeout"),
        "{failed}"
    );
    assert!(api["counts"]["restored"].as_u64().unwrap() >= 1);
    assert!(api["latest"]["restored"]["id"].as_u64().unwrap() >= 2);
    assert!(api["rates"]["mean_restore_duration_ms"].is_number());
    let attempts: Vec<u64> = api["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["attempt"].as_u64().unwrap())
        .collect();
    assert!(
        attempts.contains(&0) && attempts.contains(&1),
        "{attempts:?}"
    );
    let job = json(addr, "/api/job");
    assert_eq!(job["restarts"]["count"], 1);
    let failure = job["restarts"]["last_failure"].as_str().unwrap();
    assert!(failure.contains("injected task failure"), "{failure}");
    assert!(
        failure.contains("password=***") && failure.contains("postgres://***@db"),
        "{failure}"
    );
    let s = scrape(addr);
    assert_eq!(
        value(
            &s,
            "spate_job_restarts_total",
            &[("spate_job", "restarting")]
        ),
        Some(1.0)
    );
    assert!(value(&s, "spate_checkpoints_failed_total", &[]).unwrap() >= 1.0);
    assert!(value(&s, "spate_restores_total", &[]).unwrap() >= 1.0);
    assert!(value(&s, "spate_restore_duration_seconds", &[]).is_some());
    for path in ["/metrics", "/api/job", "/api/checkpoints", "/api/overview"] {
        let body = get(addr, path).body;
        assert!(
            !body.contains("hunter2") && !body.contains("app:pw"),
            "{path} shows a secret"
        );
    }
    finish(handle, dir);
}

#[test]
fn the_monitor_is_read_only_without_a_token_and_serves_nothing_from_elsewhere() {
    let (handle, _switches, addr, dir) = start("readonly", MonitorConfig::local(0));
    let page = get(addr, "/");
    assert_eq!(page.status, 200);
    let csp = page.header("content-security-policy").expect("a CSP");
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(!page.body.contains("http://") && !page.body.contains("https://"));
    assert_eq!(get(addr, "/assets/monitor.js").status, 200);
    assert_eq!(request(addr, "POST", "/api/checkpoints", &[]).status, 403);
    assert_eq!(request(addr, "DELETE", "/api/job", &[]).status, 405);
    assert_eq!(get(addr, "/nothing").status, 404);
    finish(handle, dir);

    let (handle, _switches, addr, dir) =
        start("token", MonitorConfig::local(0).with_action_token(TOKEN));
    wait_for("a checkpoint", || handle.completed_checkpoints() >= 1);
    assert_eq!(request(addr, "POST", "/api/checkpoints", &[]).status, 401);
    let wrong = [("Authorization", "Bearer not-the-token-at-all")];
    assert_eq!(
        request(addr, "POST", "/api/checkpoints", &wrong).status,
        401
    );
    let bearer = format!("Bearer {TOKEN}");
    let right = [("Authorization", bearer.as_str())];
    assert_eq!(
        request(addr, "POST", "/api/checkpoints", &right).status,
        202
    );
    for path in ["/api/job", "/api/overview", "/metrics"] {
        assert!(
            !get(addr, path).body.contains(TOKEN),
            "{path} shows the token"
        );
    }
    assert!(!format!("{:?}", MonitorConfig::local(0).with_action_token(TOKEN)).contains(TOKEN));
    finish(handle, dir);
}

#[test]
fn bad_clients_get_errors_and_neither_stop_the_server_nor_outlive_the_job() {
    let (handle, _switches, addr, dir) = start("limits", MonitorConfig::local(0));
    let ok = |what: &str| assert_eq!(get(addr, "/api/job").status, 200, "after {what}");
    let shown = json(addr, "/api/job")["config"]["monitor_address"].clone();
    assert_eq!(shown, addr.to_string(), "the bound address, not port 0");

    // Headers past the limit, with and without line ends: 431.
    let mut big = b"GET /metrics HTTP/1.1\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 16 * 1024));
    assert_eq!(raw_status(addr, &big), Some(431), "no line end");
    big.extend_from_slice(b"\r\n\r\n");
    assert_eq!(raw_status(addr, &big), Some(431), "a long header");
    ok("an oversized header");

    // A huge announced body that never comes: refused at once, unread.
    for method in ["POST /api/checkpoints", "GET /api/job"] {
        let at = Instant::now();
        let head = format!("{method} HTTP/1.1\r\nContent-Length: 1000000000000\r\n\r\n");
        assert_eq!(raw_status(addr, head.as_bytes()), Some(413), "{method}");
        assert!(
            at.elapsed() < Duration::from_secs(2),
            "{method}: {:?}",
            at.elapsed()
        );
    }
    ok("a huge Content-Length");
    assert_eq!(
        raw_status(
            addr,
            b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        ),
        Some(501)
    );
    assert_eq!(raw_status(addr, b"\xff\xfe\r\n\r\n"), Some(400));

    // A client that connects and says nothing delays others by the read
    // timeout at most.
    let silent = std::net::TcpStream::connect(addr).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let at = Instant::now();
    ok("a silent client");
    assert!(at.elapsed() < Duration::from_secs(8), "{:?}", at.elapsed());

    // Joining ends the server promptly, even with a silent client, and
    // frees the port.
    let silent_again = std::net::TcpStream::connect(addr).unwrap();
    handle.stop();
    let at = Instant::now();
    handle.join().expect("the job ends cleanly after stop");
    assert!(at.elapsed() < Duration::from_secs(30), "{:?}", at.elapsed());
    std::net::TcpListener::bind(addr).expect("the port is free after join");
    drop((silent, silent_again));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_port_in_use_fails_the_start_and_leaves_no_job_running() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = temp_dir("taken");
    let config = |monitor: MonitorConfig| JobConfig {
        parallelism: 2,
        max_parallelism: 32,
        pin_cores: false,
        checkpoint: Some(CheckpointConfig::new(&dir, 50)),
        monitor: Some(monitor),
        ..JobConfig::default()
    };
    let switches = Arc::new(Switches::default());
    let s = switches.clone();
    let error = Job::new(config(MonitorConfig::new(addr)))
        .start(move |df| job(df, &s))
        .err()
        .expect("the start fails on a port in use");
    assert!(error.to_string().contains(&addr.to_string()), "{error}");
    // A run left behind would checkpoint every 50 ms into the directory.
    std::thread::sleep(Duration::from_millis(500));
    let written = std::fs::read_dir(&dir).map_or(0, |d| {
        d.flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".spseg"))
            .count()
    });
    assert_eq!(
        written, 0,
        "a run of the failed start is still checkpointing"
    );

    let s = switches.clone();
    let handle = Job::new(config(MonitorConfig::local(0)))
        .start(move |df| job(df, &s))
        .expect("a start on a free port, same state directory");
    finish(handle, dir);
}
