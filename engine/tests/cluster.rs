//! A job spread over several processes on this machine, joined by the TCP
//! data plane: the same results as in one process, a peer that does not know
//! the secret refused and unable to inject anything, and a process that
//! fails or dies failing every process instead of leaving them waiting.
//!
//! Each process is a child: this test binary run again for the ignored test
//! `cluster_child`, told by environment variables which process it is and
//! where the others listen. A child writes what its subtasks emitted (or its
//! error) to a file the parent reads.

mod common;

use common::*;
use spate::checkpoint::global::CommitPoint;
use spate::sink::Collector;
use spate::window::{WindowAssigner, WindowResult};
use spate::{ClusterConfig, Job, JobConfig};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

const SECRET: &str = "a-test-secret-of-32-bytes-length";
const EVENTS: usize = 40_000;

fn data() -> Arc<Vec<Event>> {
    Arc::new(events(11, EVENTS, 500, 3))
}

/// The job every process runs: running totals per key, and sliding windows.
fn build(
    totals: &Collector<(u64, u64, u64)>,
    windows: &Collector<WindowResult<u64, (u64, u64)>>,
    fail_at: Option<u64>,
    hold: Option<(u64, PathBuf)>,
) -> impl Fn(&spate::Dataflow) + Send + Sync + 'static {
    let (t, w, d) = (totals.clone(), windows.clone(), data());
    move |df| {
        let events = event_source(df, &d);
        let events = match fail_at {
            // A process whose operator fails part-way through.
            Some(at) => events.map(move |e: Event| {
                if e.ts >= at {
                    panic!("injected failure at event time {at}");
                }
                e
            }),
            None => events,
        };
        let events = match hold.clone() {
            // A process that stops part-way through (until it is killed),
            // saying so in a file.
            Some((at, marker)) => events.map(move |e: Event| {
                if e.ts >= at {
                    std::fs::write(&marker, b"held").unwrap();
                    loop {
                        std::thread::park();
                    }
                }
                e
            }),
            None => events,
        };
        running_totals(&events).sink("totals-out", t.sink());
        windowed(&events, WindowAssigner::sliding(1_000, 250)).sink("windows-out", w.sink());
    }
}

/// Free ports for `n` processes (bound then released).
fn addresses(n: usize) -> Vec<SocketAddr> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners.iter().map(|l| l.local_addr().unwrap()).collect()
}

fn child_command(process: usize, peers: &[SocketAddr], secret: &str, out: &Path) -> Command {
    child_of("cluster_child", process, peers, secret, out)
}

/// This test binary run again for the ignored test `entry`, as process
/// `process` of a cluster listening on `peers`, writing to `out`.
fn child_of(
    entry: &str,
    process: usize,
    peers: &[SocketAddr],
    secret: &str,
    out: &Path,
) -> Command {
    let peers: Vec<String> = peers.iter().map(|a| a.to_string()).collect();
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            entry,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SPATE_TEST_PROCESS", process.to_string())
        .env("SPATE_TEST_PEERS", peers.join(","))
        .env("SPATE_TEST_SECRET", secret)
        .env("SPATE_TEST_OUT", out);
    command
}

fn spawn_child(
    process: usize,
    peers: &[SocketAddr],
    secret: &str,
    out: &Path,
    fail_at: Option<u64>,
) -> Child {
    let mut command = child_command(process, peers, secret, out);
    if let Some(at) = fail_at {
        command.env("SPATE_TEST_FAIL_AT", at.to_string());
    }
    command.spawn().unwrap()
}

/// Run by the parent as a child process; does nothing otherwise.
#[test]
#[ignore = "one process of a cluster, started by the other tests of this file"]
fn cluster_child() {
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
    let process: usize = var("SPATE_TEST_PROCESS").parse().unwrap();
    let peers: Vec<SocketAddr> = var("SPATE_TEST_PEERS")
        .split(',')
        .map(|a| a.parse().unwrap())
        .collect();
    let fail_at = std::env::var("SPATE_TEST_FAIL_AT")
        .ok()
        .map(|v| v.parse().unwrap());
    let hold = std::env::var("SPATE_TEST_HOLD_AT").ok().map(|v| {
        (
            v.parse().unwrap(),
            PathBuf::from(var("SPATE_TEST_OUT") + ".held"),
        )
    });
    let config = JobConfig {
        parallelism: 1,
        pin_cores: false,
        cluster: Some(ClusterConfig {
            process,
            processes: peers.len(),
            peers,
            job: "cluster-test".into(),
            secret: var("SPATE_TEST_SECRET").into_bytes(),
            connect_timeout: Duration::from_secs(30),
            busy_linger: spate::DEFAULT_BUSY_LINGER,
            commit_point: None,
        }),
        ..JobConfig::default()
    };
    let config = JobConfig {
        // Every process serves its own monitor (port 0: any free one).
        monitor: Some(spate::MonitorConfig::local(0)),
        ..config
    };
    let (totals, windows) = (Collector::new(), Collector::new());
    let mut out = String::new();
    let result = Job::new(config)
        .start(build(&totals, &windows, fail_at, hold))
        .and_then(|handle| {
            // The monitor serves until the handle is gone: read the
            // network figures once the job is over.
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while handle.is_running() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5)); // poll interval of a wait with a deadline
            }
            let metrics = common::http::get(handle.monitor_address().unwrap(), "/metrics").body;
            if let Some(line) = metrics
                .lines()
                .find(|l| l.starts_with("spate_network_received_bytes_total"))
            {
                out += &format!("metric {}\n", line.rsplit(' ').next().unwrap());
            }
            handle.join()
        });
    match result {
        Ok(report) => {
            let net = report.network.expect("a cluster job reports its network");
            out += &format!("refused {}\n", net.refused_connections);
            out += &format!("received {}\n", net.bytes_received);
            for (k, c, s) in totals.take() {
                out += &format!("t {k} {c} {s}\n");
            }
            for w in windows.take() {
                out += &format!(
                    "w {} {} {} {} {}\n",
                    w.key, w.start, w.end, w.value.0, w.value.1
                );
            }
        }
        Err(e) => out += &format!("error {e}\n"),
    }
    std::fs::write(var("SPATE_TEST_OUT"), out).unwrap();
}

/// What one process wrote.
#[derive(Default, Debug)]
struct Output {
    refused: u64,
    received: u64,
    /// `spate_network_received_bytes_total` from the process's monitor.
    metric: Option<u64>,
    totals: Vec<(u64, u64, u64)>,
    windows: Vec<(u64, u64, u64, u64, u64)>,
    error: Option<String>,
}

fn read_output(path: &Path) -> Output {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Output::default();
    for line in text.lines() {
        let (kind, rest) = line.split_once(' ').unwrap();
        let n: Vec<u64> = rest.split(' ').filter_map(|v| v.parse().ok()).collect();
        match kind {
            "refused" => out.refused = n[0],
            "received" => out.received = n[0],
            "metric" => out.metric = Some(n[0]),
            "t" => out.totals.push((n[0], n[1], n[2])),
            "w" => out.windows.push((n[0], n[1], n[2], n[3], n[4])),
            "error" => out.error = Some(rest.to_string()),
            other => panic!("unexpected line kind {other}"),
        }
    }
    out
}

fn dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("spate-cluster-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `processes` children to the end; returns what each wrote.
fn run_cluster(name: &str, processes: usize, fail: Option<(usize, u64)>) -> Vec<Output> {
    let dir = dir(name);
    let peers = addresses(processes);
    let mut children: Vec<(Child, PathBuf)> = (0..processes)
        .map(|p| {
            let out = dir.join(format!("out-{p}"));
            let fail_at = fail.filter(|(f, _)| *f == p).map(|(_, at)| at);
            (spawn_child(p, &peers, SECRET, &out, fail_at), out)
        })
        .collect();
    let outputs = children
        .iter_mut()
        .map(|(child, out)| {
            let status = child.wait().unwrap();
            assert!(status.success(), "child exited with {status}");
            read_output(out)
        })
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    outputs
}

/// The same job in this process alone, on as many subtasks.
/// Final totals per key, sorted window rows, and the number of updates.
type Results = (
    BTreeMap<u64, (u64, u64)>,
    Vec<(u64, u64, u64, u64, u64)>,
    usize,
);

fn one_process(parallelism: usize) -> Results {
    let (totals, windows) = (Collector::new(), Collector::new());
    Job::new(JobConfig {
        parallelism,
        pin_cores: false,
        ..JobConfig::default()
    })
    .run(build(&totals, &windows, None, None))
    .unwrap();
    let totals = totals.take();
    let mut windows: Vec<_> = windows
        .take()
        .into_iter()
        .map(|w| (w.key, w.start, w.end, w.value.0, w.value.1))
        .collect();
    windows.sort();
    (finals(&totals), windows, totals.len())
}

#[test]
fn three_processes_compute_what_one_process_does() {
    let outputs = run_cluster("three", 3, None);
    let mut totals = Vec::new();
    let mut windows = Vec::new();
    for (p, out) in outputs.iter().enumerate() {
        assert_eq!(out.error, None, "process {p} failed");
        assert!(
            out.received > 0,
            "process {p} received nothing over the network"
        );
        assert_eq!(out.refused, 0);
        totals.extend(out.totals.iter().copied());
        windows.extend(out.windows.iter().copied());
    }
    windows.sort();
    let (one_totals, one_windows, one_updates) = one_process(3);
    assert_eq!(totals.len(), one_updates, "one update per event");
    assert_eq!(finals(&totals), one_totals);
    assert_eq!(finals(&totals), reference_totals(&data()));
    assert_eq!(windows, one_windows);
    assert!(!windows.is_empty());
}

#[test]
fn a_failing_process_fails_every_process_naming_it() {
    let outputs = run_cluster("fail", 3, Some((2, 1_000 + EVENTS as u64)));
    let error = outputs[2].error.as_deref().expect("process 2 fails");
    assert!(error.contains("injected failure"), "{error}");
    for p in [0, 1] {
        let error = outputs[p]
            .error
            .as_deref()
            .unwrap_or_else(|| panic!("process {p} did not fail"));
        assert!(
            error.contains("process 2") && error.contains("injected failure"),
            "process {p}: {error}"
        );
    }
}

#[test]
fn a_killed_process_fails_the_others_instead_of_leaving_them_waiting() {
    let dir = dir("kill");
    let peers = addresses(2);
    let outs: Vec<PathBuf> = (0..2).map(|p| dir.join(format!("out-{p}"))).collect();
    // Process 1 would fail late; it is killed once it has connected instead.
    let mut survivor = spawn_child(0, &peers, SECRET, &outs[0], None);
    // Process 1 stops half-way through its input, with its connection up
    // and records crossing it; it is killed there (SIGKILL).
    let mut command = child_command(1, &peers, SECRET, &outs[1]);
    command.env("SPATE_TEST_HOLD_AT", (1_000 + EVENTS as u64).to_string());
    let mut victim = command.spawn().unwrap();
    let marker = PathBuf::from(format!("{}.held", outs[1].display()));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !marker.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "process 1 never got half-way"
        );
        std::thread::sleep(Duration::from_millis(10)); // poll interval of a wait with a deadline
    }
    victim.kill().unwrap();
    victim.wait().unwrap();
    assert!(survivor.wait().unwrap().success());
    let out = read_output(&outs[0]);
    let error = out.error.expect("the survivor fails");
    assert!(
        error.contains("from process 1") && error.contains("did the process die"),
        "{error}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Speaks the handshake's first frame by hand: the hello of `process`.
fn hello(process: u32, processes: u32) -> Vec<u8> {
    let mut body = vec![1u8]; // kind: hello
    body.extend_from_slice(b"SPATENET");
    body.extend_from_slice(&1u16.to_le_bytes());
    for v in [process, processes, 1] {
        body.extend_from_slice(&v.to_le_bytes());
    }
    body.extend_from_slice(&[0x42; 32]);
    let mut frame = (body.len() as u32).to_le_bytes().to_vec();
    frame.extend(body);
    frame
}

#[test]
fn a_peer_without_the_secret_is_refused_and_injects_nothing() {
    let dir = dir("intruder");
    let peers = addresses(2);
    let outs: Vec<PathBuf> = (0..2).map(|p| dir.join(format!("out-{p}"))).collect();
    let mut first = spawn_child(0, &peers, SECRET, &outs[0], None);
    // Posing as process 1 before it exists, with a proof made without the
    // secret, then sending a records frame, a barrier and credits anyway.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut intruder = loop {
        match TcpStream::connect(peers[0]) {
            Ok(s) => break s,
            Err(e) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "process 0 never listened: {e}"
                );
                // The poll interval of a wait with a deadline (process 0
                // listens once it started).
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    intruder
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    intruder.write_all(&hello(1, 2)).unwrap();
    let mut proof = (33u32).to_le_bytes().to_vec();
    proof.push(2); // kind: proof
    proof.extend_from_slice(&[0u8; 32]);
    let _ = intruder.write_all(&proof);
    for kind in [5u8, 7, 4] {
        let mut frame = (13u32 + 16).to_le_bytes().to_vec();
        frame.push(kind);
        frame.extend_from_slice(&[0u8; 12]); // channel 0: 1 → 0
        frame.extend_from_slice(&[7u8; 16]);
        let _ = intruder.write_all(&frame);
    }
    // The process answers the hello and its own proof, then closes.
    let mut rest = Vec::new();
    let _ = intruder.read_to_end(&mut rest);
    // The real process 1 joins; the job runs as if nothing happened.
    let mut second = spawn_child(1, &peers, SECRET, &outs[1], None);
    assert!(first.wait().unwrap().success());
    assert!(second.wait().unwrap().success());
    let (a, b) = (read_output(&outs[0]), read_output(&outs[1]));
    assert_eq!(a.error, None);
    assert_eq!(b.error, None);
    assert_eq!(a.refused, 1, "the intruder is counted");
    let mut totals = a.totals.clone();
    totals.extend(b.totals.iter().copied());
    assert_eq!(totals.len(), EVENTS, "nothing injected, nothing lost");
    assert_eq!(finals(&totals), reference_totals(&data()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_process_with_another_secret_cannot_join() {
    let dir = dir("secret");
    let peers = addresses(2);
    let outs: Vec<PathBuf> = (0..2).map(|p| dir.join(format!("out-{p}"))).collect();
    let mut a = spawn_child(0, &peers, SECRET, &outs[0], None);
    let mut b = spawn_child(
        1,
        &peers,
        "another-secret-of-32-bytes-len!!",
        &outs[1],
        None,
    );
    assert!(b.wait().unwrap().success());
    let out = read_output(&outs[1]);
    let error = out.error.expect("the process with the wrong secret fails");
    assert!(error.contains("handshake"), "{error}");
    // Process 0 never gets its peer: it gives up at the connect timeout.
    // (Killed here rather than waited for.)
    a.kill().unwrap();
    a.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------
// Checkpoints across processes: a process killed (SIGKILL) at a seeded
// moment, the whole job restarted from the latest global checkpoint on as
// many processes (a replacement) or on fewer (rescaled), and the committed
// output of an exactly-once file sink holds every record exactly once.

const CHECKPOINTED_EVENTS: u64 = 24_000;
/// Events per second over the whole job: the run lasts a few seconds, so a
/// kill lands while records and checkpoints are in flight.
const CHECKPOINTED_RATE: f64 = 8_000.0;

fn checkpointed_event(i: u64) -> Event {
    Event {
        key: (i * 7919) % 61,
        ts: 1_000 + i,
        value: i % 1_000,
    }
}

/// The line the sink writes for one running total.
fn total_line(t: &(u64, u64, u64), out: &mut Vec<u8>) {
    out.extend_from_slice(format!("{} {} {}", t.0, t.1, t.2).as_bytes());
}

/// Checks committed running totals against the input: one line per event
/// and key, with every count from 1 to the key's number of events exactly
/// once (a lost event leaves a count out, a replayed one adds a count or
/// repeats one), and the last count's sum the key's total. (Which sum goes
/// with which count depends on the order in which events of one key from
/// different source subtasks arrive, even in a run without faults.)
fn check_totals(name: &str, lines: &[String]) {
    let mut reference: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for i in 0..CHECKPOINTED_EVENTS {
        let e = checkpointed_event(i);
        let t = reference.entry(e.key).or_default();
        t.0 += 1;
        t.1 += e.value;
    }
    let mut got: BTreeMap<u64, BTreeMap<u64, Vec<u64>>> = BTreeMap::new();
    for line in lines {
        let v: Vec<u64> = line.split(' ').map(|f| f.parse().unwrap()).collect();
        got.entry(v[0])
            .or_default()
            .entry(v[1])
            .or_default()
            .push(v[2]);
    }
    assert_eq!(
        lines.len() as u64,
        CHECKPOINTED_EVENTS,
        "{name}: one line per event"
    );
    for (key, (count, sum)) in reference {
        let counts = got.remove(&key).unwrap_or_default();
        let seen: Vec<u64> = counts.keys().copied().collect();
        assert_eq!(
            seen,
            (1..=count).collect::<Vec<_>>(),
            "{name}: key {key}'s counts"
        );
        let repeated: Vec<_> = counts.iter().filter(|(_, s)| s.len() > 1).collect();
        assert!(
            repeated.is_empty(),
            "{name}: key {key} repeats counts {repeated:?}"
        );
        assert_eq!(counts[&count], vec![sum], "{name}: key {key}'s total");
    }
    assert!(
        got.is_empty(),
        "{name}: keys that are not in the input: {:?}",
        got.keys()
    );
}

/// Run by the parent as a child process; does nothing otherwise.
#[test]
#[ignore = "one process of a checkpointing cluster, started by the other tests of this file"]
fn cluster_checkpoint_child() {
    use spate::sink::{FileSink, FileSinkMode};
    use spate::source::SequenceSource;
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
    let peers: Vec<SocketAddr> = var("SPATE_TEST_PEERS")
        .split(',')
        .map(|a| a.parse().unwrap())
        .collect();
    // Backpressure across processes: the sources run unpaced, and every
    // running total costs process 1's subtask 40 µs, downstream of the
    // exchange. Process 0's own subtask stays fast, so its source keeps
    // filling the channel to process 1 (were both slow, each source would
    // wait on its own subtask and the channel between them could stay
    // short at every barrier).
    let process: usize = var("SPATE_TEST_PROCESS").parse().unwrap();
    let backpressure = std::env::var("SPATE_TEST_BACKPRESSURE").is_ok();
    let slow = backpressure && process == 1;
    // A task failure in process 1, once, at this event: every process
    // restarts in place (the job's restart strategy) from the latest
    // global checkpoint.
    let trip_at: Option<u64> = std::env::var("SPATE_TEST_TRIP_AT")
        .ok()
        .map(|v| v.parse().unwrap());
    let config = JobConfig {
        parallelism: 1,
        pin_cores: false,
        checkpoint: Some(spate::CheckpointConfig {
            // Incremental: a key group restored from another process's
            // store must be written afresh, not referenced.
            incremental: true,
            mode: if backpressure {
                spate::CheckpointMode::Unaligned
            } else {
                spate::CheckpointMode::Aligned
            },
            // Under backpressure, every checkpoint is kept: the test reads
            // what the early ones held in flight.
            retained: if backpressure { 1000 } else { 3 },
            // Parts and global records in the remote tier, if given.
            remote: std::env::var("SPATE_TEST_REMOTE").ok(),
            ..spate::CheckpointConfig::new(var("SPATE_TEST_CKPT"), 100)
        }),
        restart: match trip_at {
            Some(_) => spate::RestartStrategy::FixedDelay {
                attempts: 2,
                delay: Duration::from_millis(100),
            },
            None => spate::RestartStrategy::None,
        },
        cluster: Some(ClusterConfig {
            process,
            processes: peers.len(),
            peers,
            job: "cluster-checkpoint-test".into(),
            secret: var("SPATE_TEST_SECRET").into_bytes(),
            connect_timeout: Duration::from_secs(30),
            busy_linger: spate::DEFAULT_BUSY_LINGER,
            commit_point: None,
        }),
        ..JobConfig::default()
    };
    let sink_dir = PathBuf::from(var("SPATE_TEST_SINK"));
    let result = Job::new(config).run(move |df| {
        let clock = df.clock();
        let start = clock.now_ms();
        let source = SequenceSource::new(CHECKPOINTED_EVENTS, checkpointed_event);
        let source = match backpressure {
            true => source,
            false => source.with_rate(CHECKPOINTED_RATE, start, clock),
        };
        let events = df.source(
            "events",
            source,
            spate::WatermarkStrategy::monotonous(|e: &Event| e.ts),
        );
        let events = match trip_at {
            Some(at) => {
                static TRIPPED: std::sync::atomic::AtomicBool =
                    std::sync::atomic::AtomicBool::new(false);
                events
                    .key_by(|e: &Event| e.key)
                    .process("tripwire", move |_| {
                        move |e: Event, ctx: &mut spate::KeyedContext<u64, Event>| {
                            if process == 1
                                && e.ts >= 1_000 + at
                                && !TRIPPED.swap(true, std::sync::atomic::Ordering::SeqCst)
                            {
                                return Err("injected task failure".into());
                            }
                            ctx.emit(e);
                            Ok(())
                        }
                    })
            }
            None => events,
        };
        let totals = running_totals(&events);
        let totals = match slow {
            true => totals.map(|t| {
                let until = std::time::Instant::now() + Duration::from_micros(40);
                while std::time::Instant::now() < until {
                    std::hint::spin_loop();
                }
                t
            }),
            false => totals,
        };
        totals.sink(
            "files",
            FileSink::new(&sink_dir, FileSinkMode::ExactlyOnce, total_line),
        );
    });
    let out = match result {
        Ok(report) => format!(
            "restored {}\nrestarts {}\ncompleted {}\ninflight {}\n",
            report.restored_from.unwrap_or(0),
            report.restarts.restarts,
            report.checkpoint_summary.completed,
            report
                .checkpoints
                .iter()
                .filter(|c| c.status == spate::checkpoint::CheckpointStatus::Completed)
                .map(|c| c.in_flight_bytes)
                .sum::<u64>()
        ),
        Err(e) => format!("error {e}\n"),
    };
    std::fs::write(var("SPATE_TEST_OUT"), out).unwrap();
}

fn spawn_checkpoint_child(
    process: usize,
    peers: &[SocketAddr],
    root: &Path,
    sink: &Path,
    out: &Path,
) -> Child {
    checkpoint_child(process, peers, root, sink, out)
        .spawn()
        .unwrap()
}

fn checkpoint_child(
    process: usize,
    peers: &[SocketAddr],
    root: &Path,
    sink: &Path,
    out: &Path,
) -> Command {
    let mut command = child_of("cluster_checkpoint_child", process, peers, SECRET, out);
    command
        .env("SPATE_TEST_CKPT", root)
        .env("SPATE_TEST_SINK", sink)
        .stdout(std::process::Stdio::null());
    command
}

/// The newest global checkpoint record under `root` (0: none).
fn newest_record(root: &Path) -> u64 {
    std::fs::read_dir(root.join("cluster")).map_or(0, |d| {
        d.flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_prefix("checkpoint-")?.parse().ok()
            })
            .max()
            .unwrap_or(0)
    })
}

/// What a checkpointing child wrote: (restored id, completed count) or its error.
fn checkpoint_output(path: &Path) -> Result<(u64, u64), String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if let Some(error) = text.strip_prefix("error ") {
        return Err(error.trim().to_string());
    }
    let value = |key: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {text}"))
            .trim()
            .parse()
            .unwrap()
    };
    Ok((value("restored "), value("completed ")))
}

/// Where the processes of a test's runs keep their checkpoints.
#[derive(Clone, Copy, PartialEq)]
enum Layout {
    /// One directory every process shares (`state/`): part stores and
    /// global records.
    Shared,
    /// A remote tier (`file://…/remote`) for parts and records, and a
    /// local directory per process (`machine-<p>/`), as on machines of
    /// their own.
    Remote,
}

impl Layout {
    /// Process `p`'s checkpoint directory.
    fn root(self, dir: &Path, p: usize) -> PathBuf {
        match self {
            Layout::Shared => dir.join("state"),
            Layout::Remote => dir.join(format!("machine-{p}")),
        }
    }

    /// The directory whose `cluster/` holds the global records.
    fn records_root(self, dir: &Path) -> PathBuf {
        match self {
            Layout::Shared => dir.join("state"),
            Layout::Remote => dir.join("remote"),
        }
    }
}

/// One run of the job in `processes` processes; with `kill = (victim,
/// after)`, process `victim` is killed (SIGKILL) once `after` more global
/// checkpoints completed in this run, and every other process must fail.
/// Returns the checkpoint each process restored (for a run that ends).
fn checkpointed_run(
    name: &str,
    dir: &Path,
    layout: Layout,
    run: usize,
    processes: usize,
    kill: Option<(usize, u64)>,
) -> Vec<u64> {
    let (records, sink) = (layout.records_root(dir), dir.join("out"));
    let before = newest_record(&records);
    let peers = addresses(processes);
    let outs: Vec<PathBuf> = (0..processes)
        .map(|p| dir.join(format!("run-{run}-{p}")))
        .collect();
    let remote = format!("file://{}", dir.join("remote").display());
    let mut children: Vec<Child> = (0..processes)
        .map(|p| {
            let mut command = checkpoint_child(p, &peers, &layout.root(dir, p), &sink, &outs[p]);
            if layout == Layout::Remote {
                command.env("SPATE_TEST_REMOTE", &remote);
            }
            command.spawn().unwrap()
        })
        .collect();
    if let Some((victim, after)) = kill {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while newest_record(&records) < before + after {
            assert!(
                std::time::Instant::now() < deadline,
                "{name}: run {run}: {after} global checkpoints never completed"
            );
            // The poll interval of a wait with a deadline.
            std::thread::sleep(Duration::from_millis(2));
        }
        children[victim].kill().unwrap();
    }
    let mut restored = Vec::new();
    for (p, child) in children.iter_mut().enumerate() {
        let status = child.wait().unwrap();
        if kill.is_some_and(|(victim, _)| victim == p) {
            continue;
        }
        assert!(
            status.success(),
            "{name}: run {run}: process {p} exited with {status}"
        );
        match (checkpoint_output(&outs[p]), kill) {
            (Err(error), Some(_)) => {
                assert!(
                    error.contains("process"),
                    "{name}: run {run}: process {p}: {error}"
                )
            }
            (Ok((from, completed)), None) => {
                assert!(
                    completed > 0,
                    "{name}: run {run}: process {p} completed no checkpoint"
                );
                restored.push(from);
            }
            (outcome, _) => panic!("{name}: run {run}: process {p}: {outcome:?}"),
        }
    }
    restored
}

/// One run of [`kill_and_recover_in`]: its processes, whom to kill when,
/// and the processes whose local directory is lost before it starts (a
/// replacement machine; `Layout::Remote` only).
struct Run {
    processes: usize,
    kill: Option<(usize, u64)>,
    wiped: &'static [usize],
    /// Processes whose local segments are overwritten before the run (a
    /// damaged local copy; `Layout::Remote` only).
    damaged: &'static [usize],
}

/// Runs the job as `runs` say (processes, and whom to kill when), the last
/// one to its end: the committed output holds every event's update exactly
/// once, and the last run restored one global checkpoint everywhere.
fn kill_and_recover(name: &str, runs: &[(usize, Option<(usize, u64)>)]) {
    let runs: Vec<Run> = runs
        .iter()
        .map(|&(processes, kill)| Run {
            processes,
            kill,
            wiped: &[],
            damaged: &[],
        })
        .collect();
    kill_and_recover_in(name, Layout::Shared, &runs);
}

fn kill_and_recover_in(name: &str, layout: Layout, runs: &[Run]) {
    let dir = dir(name);
    for (run, r) in runs.iter().enumerate() {
        for &p in r.wiped {
            let _ = std::fs::remove_dir_all(layout.root(&dir, p));
        }
        for &p in r.damaged {
            let store = layout.root(&dir, p).join(format!("process-{p}"));
            let mut damaged = 0;
            for entry in std::fs::read_dir(&store).unwrap().flatten() {
                if entry.path().extension().is_some_and(|e| e == "spseg") {
                    let len = entry.metadata().unwrap().len() as usize;
                    std::fs::write(entry.path(), vec![0xAA; len]).unwrap();
                    damaged += 1;
                }
            }
            assert!(damaged > 0, "{name}: no segment in {}", store.display());
        }
        let restored = checkpointed_run(name, &dir, layout, run, r.processes, r.kill);
        if r.kill.is_none() {
            assert!(
                restored.iter().all(|&r| r > 0 && r == restored[0]),
                "{name}: every process restores the same global checkpoint: {restored:?}"
            );
        }
    }
    let sink = dir.join("out");
    check_totals(name, &committed_lines(&sink));
    let pending: Vec<_> = std::fs::read_dir(sink.join(".pending")).unwrap().collect();
    assert!(pending.is_empty(), "{name}: left pending: {pending:?}");
    if layout == Layout::Remote {
        // The records and parts are in the remote tier, none on a machine.
        let records = newest_record(&layout.records_root(&dir));
        assert!(records > 0, "{name}: no global record in the remote tier");
        for p in 0..3 {
            assert!(
                !layout.root(&dir, p).join("cluster").exists(),
                "{name}: a global record on machine {p}"
            );
        }
        let record = std::fs::read(
            dir.join("remote/cluster")
                .join(format!("checkpoint-{records:020}")),
        )
        .unwrap();
        let record = spate::checkpoint::global::GlobalRecord::decode(&record).unwrap();
        for p in record.parts {
            let parts = dir.join(format!("remote/process-{p}/checkpoints"));
            assert!(
                std::fs::read_dir(&parts).is_ok_and(|mut d| d.next().is_some()),
                "{name}: no part in {}",
                parts.display()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_uninterrupted_checkpointing_cluster_commits_every_total_once() {
    let dir = dir("checkpointed");
    let (root, sink) = (dir.join("state"), dir.join("out"));
    let peers = addresses(3);
    let outs: Vec<PathBuf> = (0..3).map(|p| dir.join(format!("out-{p}"))).collect();
    let mut children: Vec<Child> = (0..3)
        .map(|p| spawn_checkpoint_child(p, &peers, &root, &sink, &outs[p]))
        .collect();
    for (p, child) in children.iter_mut().enumerate() {
        assert!(child.wait().unwrap().success());
        let (restored, completed) = checkpoint_output(&outs[p]).unwrap();
        assert_eq!(restored, 0);
        assert!(completed >= 2, "process {p}: {completed} checkpoints");
    }
    // The leader's records, each naming every process's part.
    let ids: Vec<u64> = std::fs::read_dir(root.join("cluster"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.strip_prefix("checkpoint-")
                .map(|id| id.parse().unwrap())
        })
        .collect();
    assert_eq!(
        ids.len(),
        3,
        "the default retention keeps 3 records: {ids:?}"
    );
    for id in ids {
        let bytes =
            std::fs::read(root.join("cluster").join(format!("checkpoint-{id:020}"))).unwrap();
        let record = spate::checkpoint::global::GlobalRecord::decode(&bytes).unwrap();
        assert_eq!((record.id, record.parts.clone()), (id, vec![0, 1, 2]));
    }
    check_totals("checkpointed", &committed_lines(&sink));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unaligned_checkpoints_complete_under_backpressure_across_processes() {
    // Process 1's subtask is slow: its input ring fills, its credits run
    // out, and process 0's sender stops at its own ring. Unaligned
    // barriers overtake the records buffered on that path, and the parts
    // persist them.
    let dir = dir("backpressure");
    let (root, sink) = (dir.join("state"), dir.join("out"));
    let peers = addresses(2);
    let outs: Vec<PathBuf> = (0..2).map(|p| dir.join(format!("out-{p}"))).collect();
    let mut children: Vec<Child> = (0..2)
        .map(|p| {
            checkpoint_child(p, &peers, &root, &sink, &outs[p])
                .env("SPATE_TEST_BACKPRESSURE", "1")
                .spawn()
                .unwrap()
        })
        .collect();
    let mut in_flight = 0;
    for (p, child) in children.iter_mut().enumerate() {
        assert!(child.wait().unwrap().success());
        let text = std::fs::read_to_string(&outs[p]).unwrap();
        let value = |key: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap_or_else(|| panic!("process {p}: no {key} in {text}"))
                .trim()
                .parse()
                .unwrap()
        };
        assert!(value("completed ") >= 2, "process {p}: {text}");
        in_flight += value("inflight ");
    }
    assert!(in_flight > 0, "no checkpoint held records in flight");
    // Some of them on the network path: sent by process 0's subtask to
    // process 1's, as the parts recorded them.
    let mut crossing = 0;
    for p in 0..2 {
        let reader = spate_storage::StoreReader::open(root.join(format!("process-{p}"))).unwrap();
        for record in reader.checkpoints() {
            let metadata = spate::checkpoint::CheckpointMetadata::decode(&record.metadata).unwrap();
            crossing += metadata
                .in_flight
                .iter()
                .filter(|b| b.from != b.to)
                .map(|b| b.bytes)
                .sum::<u64>();
        }
    }
    assert!(
        crossing > 0,
        "no records in flight between the processes were persisted"
    );
    check_totals("backpressure", &committed_lines(&sink));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn killed_workers_are_replaced_and_the_output_is_exactly_once() {
    kill_and_recover(
        "kill-workers",
        &[(3, Some((1, 3))), (3, Some((2, 2))), (3, None)],
    );
}

#[test]
fn a_killed_leader_is_replaced_and_the_output_is_exactly_once() {
    kill_and_recover(
        "kill-leader",
        &[(3, Some((0, 2))), (3, Some((0, 4))), (3, None)],
    );
}

#[test]
fn without_a_replacement_the_job_rescales_onto_the_survivors() {
    // Killed, restarted on the two others; killed again, restarted on the
    // one left; then back on three (a key group restored from another
    // process's store is written afresh into its new owner's).
    kill_and_recover(
        "kill-rescale",
        &[
            (3, Some((2, 4))),
            (2, Some((1, 3))),
            (1, Some((0, 2))),
            (3, None),
        ],
    );
}

#[test]
fn a_task_failure_restarts_every_process_in_place_and_the_output_is_exactly_once() {
    // Process 1's tripwire fails once, half way: every process's run fails
    // (the failing one tells the others), and each process's restart
    // strategy starts a new run in place, no process exiting: they connect
    // again under the restart's generation and restore the latest global
    // checkpoint.
    let dir = dir("restart-in-place");
    let (root, sink) = (dir.join("state"), dir.join("out"));
    let peers = addresses(3);
    let outs: Vec<PathBuf> = (0..3).map(|p| dir.join(format!("out-{p}"))).collect();
    let mut children: Vec<Child> = (0..3)
        .map(|p| {
            checkpoint_child(p, &peers, &root, &sink, &outs[p])
                .env("SPATE_TEST_TRIP_AT", (CHECKPOINTED_EVENTS / 2).to_string())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut restored = Vec::new();
    for (p, child) in children.iter_mut().enumerate() {
        assert!(child.wait().unwrap().success(), "process {p}");
        let (from, completed) =
            checkpoint_output(&outs[p]).unwrap_or_else(|e| panic!("process {p} failed: {e}"));
        let text = std::fs::read_to_string(&outs[p]).unwrap();
        assert!(
            text.contains("restarts 1\n"),
            "process {p} restarted once in place: {text}"
        );
        assert!(completed > 0, "process {p}: {text}");
        restored.push(from);
    }
    assert!(
        restored.iter().all(|&r| r > 0 && r == restored[0]),
        "every process restored the same global checkpoint: {restored:?}"
    );
    check_totals("restart-in-place", &committed_lines(&sink));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn with_a_remote_tier_lost_machines_restore_from_object_storage() {
    // Each process on a "machine" of its own: its local directory is lost
    // with it, and a replacement restores every part, its own included,
    // from the remote tier. Then the job shrinks onto two fresh machines,
    // and grows back onto three, one of them with an old local store.
    kill_and_recover_in(
        "remote",
        Layout::Remote,
        &[
            Run {
                processes: 3,
                kill: Some((1, 3)),
                wiped: &[],
                damaged: &[],
            },
            Run {
                processes: 3,
                kill: Some((0, 2)),
                wiped: &[1],
                damaged: &[],
            },
            Run {
                processes: 2,
                kill: Some((1, 3)),
                wiped: &[0, 1],
                damaged: &[],
            },
            Run {
                processes: 3,
                kill: None,
                wiped: &[],
                damaged: &[],
            },
        ],
    );
}

#[test]
fn a_damaged_local_part_is_read_from_the_remote_tier_and_every_process_restores_the_same() {
    // Process 1's local copy of its parts is damaged before the restart:
    // its own part is read from the remote tier instead. Every process
    // restores the checkpoint the leader chose (without the fallback,
    // process 1 cannot and the run fails; without the leader's choice, it
    // would restore an older one than the others and the output would
    // repeat or lose updates).
    kill_and_recover_in(
        "remote-damaged",
        Layout::Remote,
        &[
            Run {
                processes: 3,
                kill: Some((2, 3)),
                wiped: &[],
                damaged: &[],
            },
            Run {
                processes: 3,
                kill: None,
                wiped: &[],
                damaged: &[1],
            },
        ],
    );
}

/// A commit point kept in memory (what etcd's checkpoint pointer is in
/// `spate-bench`): it takes commits up to `accept_up_to` and refuses later
/// ones, as etcd refuses a deposed leader's.
struct MemoryCommitPoint {
    latest: std::sync::Mutex<Option<u64>>,
    accept_up_to: u64,
    /// Takes this checkpoint's commit but answers as a lost reply would.
    lose_reply_of: Option<u64>,
}

impl spate::checkpoint::global::CommitPoint for MemoryCommitPoint {
    fn commit(
        &self,
        record: &spate::checkpoint::global::GlobalRecord,
    ) -> Result<(), spate::checkpoint::global::CommitError> {
        if record.id > self.accept_up_to {
            return Err(spate::checkpoint::global::CommitError::NotCommitted(
                "deposed".into(),
            ));
        }
        *self.latest.lock().unwrap() = Some(record.id);
        if self.lose_reply_of == Some(record.id) {
            return Err(spate::checkpoint::global::CommitError::Unknown(
                "reply lost".into(),
            ));
        }
        Ok(())
    }
    fn latest(&self) -> Result<Option<u64>, String> {
        Ok(*self.latest.lock().unwrap())
    }
    fn describe(&self) -> String {
        "memory".into()
    }
}

/// Two processes of a cluster as two jobs of this test process (each on a
/// thread: a process's start waits for its peers), checkpointing into
/// `root` every 20 ms with `commit_point`; returns each one's report.
fn in_process_cluster(
    root: &Path,
    commit_point: Arc<MemoryCommitPoint>,
    restore: spate::RestoreFrom,
) -> Vec<spate::JobReport> {
    in_process_cluster_ends(root, commit_point, restore)
        .into_iter()
        .map(|r| r.unwrap())
        .collect()
}

/// [`in_process_cluster`], with how each process ended.
fn in_process_cluster_ends(
    root: &Path,
    commit_point: Arc<MemoryCommitPoint>,
    restore: spate::RestoreFrom,
) -> Vec<Result<spate::JobReport, spate::JobError>> {
    let peers = addresses(2);
    let threads: Vec<_> = (0..2)
        .map(|process| {
            let (root, peers, commit_point) =
                (root.to_path_buf(), peers.clone(), commit_point.clone());
            let restore = restore.clone();
            std::thread::spawn(move || {
                let config = JobConfig {
                    parallelism: 1,
                    pin_cores: false,
                    checkpoint: Some(spate::CheckpointConfig {
                        tolerable_failures: 1_000,
                        restore,
                        ..spate::CheckpointConfig::new(&root, 20)
                    }),
                    cluster: Some(ClusterConfig {
                        process,
                        processes: 2,
                        peers,
                        job: "commit-point-test".into(),
                        secret: SECRET.as_bytes().to_vec(),
                        connect_timeout: Duration::from_secs(30),
                        busy_linger: spate::DEFAULT_BUSY_LINGER,
                        commit_point: Some(commit_point),
                    }),
                    ..JobConfig::default()
                };
                Job::new(config).run(|df| {
                    use spate::source::SequenceSource;
                    let clock = df.clock();
                    let start = clock.now_ms();
                    let events = df.source(
                        "events",
                        SequenceSource::new(6_000, checkpointed_event)
                            .with_rate(20_000.0, start, clock),
                        spate::WatermarkStrategy::monotonous(|e: &Event| e.ts),
                    );
                    running_totals(&events).for_each(|_| {});
                })
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

#[test]
fn the_commit_point_decides_which_global_checkpoints_are_complete() {
    let dir = dir("commit-point");
    let root = dir.join("state");
    // Commits after checkpoint 3 are refused: those checkpoints fail, and
    // their records do not stay in the directory.
    let point = Arc::new(MemoryCommitPoint {
        latest: std::sync::Mutex::new(None),
        accept_up_to: 3,
        lose_reply_of: None,
    });
    let reports = in_process_cluster(&root, point.clone(), spate::RestoreFrom::Latest);
    assert_eq!(point.latest().unwrap(), Some(3));
    assert!(
        reports.iter().all(|r| r.checkpoint_summary.completed == 3),
        "only the checkpoints the commit point took are complete"
    );
    assert!(
        newest_record(&root) <= 3,
        "a refused record was left behind"
    );
    // A leader that died between its record and the commit point leaves
    // a record (and parts) the commit point never took: a restore takes the
    // commit point's checkpoint instead, and that record goes.
    let root = dir.join("state-2");
    let point = Arc::new(MemoryCommitPoint {
        latest: std::sync::Mutex::new(None),
        accept_up_to: u64::MAX,
        lose_reply_of: None,
    });
    in_process_cluster(&root, point.clone(), spate::RestoreFrom::Latest);
    let last = point.latest().unwrap().unwrap();
    assert!(last >= 2 && newest_record(&root) == last);
    let point = Arc::new(MemoryCommitPoint {
        latest: std::sync::Mutex::new(Some(last - 1)),
        accept_up_to: u64::MAX,
        lose_reply_of: None,
    });
    let reports = in_process_cluster(&root, point.clone(), spate::RestoreFrom::Latest);
    for r in &reports {
        assert_eq!(
            r.restored_from,
            Some(last - 1),
            "restored the commit point's checkpoint"
        );
        assert!(r.checkpoint_summary.completed > 0);
    }
    // New checkpoints go on above every record and the commit point.
    assert!(point.latest().unwrap().unwrap() > last);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_commit_whose_outcome_is_unknown_stops_the_run_and_keeps_the_checkpoint() {
    let dir = dir("commit-point-unknown");
    let root = dir.join("state");
    // Checkpoint 3's commit takes effect but its reply is lost: the leader
    // cannot know, so the run stops with the record and every part kept
    // (discarding them would leave the commit point naming a checkpoint
    // that is gone, and no restart could restore).
    let point = Arc::new(MemoryCommitPoint {
        latest: std::sync::Mutex::new(None),
        accept_up_to: u64::MAX,
        lose_reply_of: Some(3),
    });
    let ends = in_process_cluster_ends(&root, point.clone(), spate::RestoreFrom::Latest);
    let Err(leader) = &ends[0] else {
        panic!("the run goes on past a commit whose outcome is unknown")
    };
    assert!(
        leader
            .to_string()
            .contains("global checkpoint 3 at the commit point"),
        "{leader}"
    );
    assert!(ends[1].is_err(), "the other process stops with it");
    assert_eq!(point.latest().unwrap(), Some(3));
    assert_eq!(newest_record(&root), 3, "the record is kept");
    // The restart reads the commit point and restores checkpoint 3.
    let reports = in_process_cluster(&root, point.clone(), spate::RestoreFrom::Latest);
    for r in &reports {
        assert_eq!(r.restored_from, Some(3));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
