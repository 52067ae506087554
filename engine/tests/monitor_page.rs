//! The monitor's live page in a real browser: headless Chromium loads the
//! page of a running job; the timeline must show at least the checkpoints
//! completed before the page was loaded, the page must report no script
//! error (its `window.onerror` writes `data-script-error` into the DOM, and
//! Chromium's console log must hold no uncaught error), and a screenshot is
//! kept at `target/monitor-screenshot.png` (a CI artifact).
//!
//! Chromium is `/usr/bin/chromium` (Debian's package, installed by
//! `.ci/run`) or `$SPATE_CHROMIUM`. Without it the test fails, unless
//! `SPATE_SKIP_BROWSER_TEST=1` says to skip it.

mod common;

use common::http::get;
use common::Event;
use spate::sink::Sink;
use spate::source::SequenceSource;
use spate::{CheckpointConfig, Job, JobConfig, KeyedContext, MonitorConfig, WatermarkStrategy};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const RATE: f64 = 20_000.0;

/// Discards records; its pre-commit does not finish while held (so that a
/// checkpoint times out and the timeline marks a failure).
struct Holding(Arc<AtomicBool>);

impl<T> Sink<T> for Holding {
    fn write(&mut self, batch: &mut Vec<spate::Record<T>>) -> Result<(), spate::SinkError> {
        batch.clear();
        Ok(())
    }
    fn is_pre_committed(&mut self, _checkpoint_id: u64) -> bool {
        !self.0.load(Ordering::SeqCst)
    }
}

fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("SPATE_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    path.exists().then_some(path)
}

/// What a Chromium run printed, and how it ended.
struct Output {
    stdout: String,
    stderr: String,
    status: std::process::ExitStatus,
}

impl Output {
    /// For failure messages: the exit status and what Chromium logged.
    fn describe(&self) -> String {
        format!(
            "chromium exited with {}; stderr:\n{}",
            self.status, self.stderr
        )
    }
}

/// Reads a pipe to its end on a thread of its own (a big DOM dump would
/// otherwise fill the pipe and block Chromium while it is polled).
fn drain(pipe: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut pipe = pipe;
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Runs Chromium headless on `url` with `args`.
fn run_chromium(chromium: &Path, profile: &Path, args: &[String], url: &str) -> Output {
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1366,768",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let status = child.wait().expect("wait for the killed chromium");
            let stderr = stderr.join().unwrap_or_default();
            panic!("chromium did not finish within 90 s ({status}); stderr:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
        status,
    }
}

fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An attribute's value in the dumped DOM (`name="value"`).
fn attribute<'a>(dom: &'a str, name: &str) -> Option<&'a str> {
    let at = dom.find(&format!(" {name}=\""))? + name.len() + 3;
    dom[at..].split('"').next()
}

#[test]
fn the_live_page_shows_the_checkpoints_in_a_real_browser() {
    let Some(chromium) = chromium() else {
        if std::env::var("SPATE_SKIP_BROWSER_TEST").is_ok_and(|v| v == "1") {
            eprintln!("skipped: no chromium (SPATE_SKIP_BROWSER_TEST=1)");
            return;
        }
        panic!(
            "this test needs Chromium at /usr/bin/chromium (apt-get install chromium, as .ci/run \
             does) or at $SPATE_CHROMIUM; set SPATE_SKIP_BROWSER_TEST=1 to skip it"
        );
    };
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target/tmp is in target/")
        .to_path_buf();
    let work =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("monitor-page-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let hold = Arc::new(AtomicBool::new(false));
    let config = JobConfig {
        parallelism: 2,
        max_parallelism: 32,
        pin_cores: false,
        checkpoint: Some(CheckpointConfig {
            timeout_ms: 300,
            tolerable_failures: 100,
            ..CheckpointConfig::new(work.join("state"), 150)
        }),
        monitor: Some(MonitorConfig::local(0).with_job_name("page-test")),
        ..JobConfig::default()
    };
    let h = hold.clone();
    let handle = Job::new(config)
        .start(move |df| {
            let clock = df.clock();
            let start = clock.now_ms();
            let event = move |i: u64| Event {
                key: i % 100,
                ts: start + (i as f64 * 1000.0 / RATE) as u64,
                value: i,
            };
            df.source(
                "events",
                SequenceSource::new(100_000_000, event).with_rate(RATE, start, clock),
                WatermarkStrategy::monotonous(|e: &Event| e.ts),
            )
            .key_by(|e: &Event| e.key)
            .process("count", |state| {
                let count = state.value_state::<u64>("count");
                move |e: Event, ctx: &mut KeyedContext<u64, (u64, u64)>| {
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
            .sink("out", Holding(h.clone()));
        })
        .unwrap();
    let addr: SocketAddr = handle.monitor_address().unwrap();
    wait_for("two checkpoints", || handle.completed_checkpoints() >= 2);
    hold.store(true, Ordering::SeqCst);
    wait_for("a failed checkpoint", || handle.failed_checkpoints() >= 1);
    hold.store(false, Ordering::SeqCst);
    wait_for("throughput samples", || {
        let body = get(addr, "/api/operators").body;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["series"]["throughput"]["events"]
            .as_array()
            .is_some_and(|points| points.len() >= 2)
            && handle.completed_checkpoints() >= 4
    });
    let completed_before = handle.completed_checkpoints();
    let url = format!("http://{addr}/");
    let budget = "--virtual-time-budget=3000".to_string();

    let run = run_chromium(
        &chromium,
        &work.join("profile-dom"),
        &[budget.clone(), "--dump-dom".into()],
        &url,
    );
    assert!(run.status.success(), "{}", run.describe());
    let dom = run.stdout.as_str();
    assert!(
        attribute(dom, "data-script-error").is_none() && !dom.contains("Page error:"),
        "the page reports a script error: {:?}",
        attribute(dom, "data-script-error")
    );
    for line in run.stderr.lines().filter(|l| l.contains("CONSOLE")) {
        assert!(
            !line.contains("Uncaught"),
            "a script error in the console: {line}"
        );
    }
    assert_eq!(
        attribute(dom, "data-state"),
        Some("live"),
        "the page loaded the job's figures:\n{dom}\n{}",
        run.describe()
    );
    let shown: u64 = attribute(dom, "data-completed")
        .and_then(|n| n.parse().ok())
        .expect("the timeline says how many completed checkpoints it shows");
    let bars = dom.matches("data-status=\"COMPLETED\"").count() as u64;
    assert!(
        shown >= completed_before && bars >= completed_before,
        "the timeline shows {shown} ({bars} bars), {completed_before} had completed before the page loaded"
    );
    assert!(
        dom.contains("data-status=\"FAILED\""),
        "the failed checkpoint is marked"
    );

    let screenshot = target.join("monitor-screenshot.png");
    let _ = std::fs::remove_file(&screenshot);
    let shot = format!("--screenshot={}", screenshot.display());
    let run = run_chromium(&chromium, &work.join("profile-shot"), &[budget, shot], &url);
    let png = std::fs::read(&screenshot)
        .unwrap_or_else(|e| panic!("no screenshot ({e}): {}", run.describe()));
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );

    handle.stop();
    handle.join().unwrap();
    let _ = std::fs::remove_dir_all(&work);
}
