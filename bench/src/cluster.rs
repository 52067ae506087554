//! `spate-bench nexmark` as a cluster: the same query in several processes
//! joined by the engine's TCP data plane (`docs/cluster.md`).
//!
//! Two ways in:
//! - `--processes N` alone: a launcher. It picks N free ports on 127.0.0.1,
//!   a random secret and one event-time base, starts N copies of this
//!   command with `--process-id i`, each writing its own report into
//!   `<report>/process-i`, waits for them, and writes the usual report into
//!   `<report>`: events, rows and latency over all processes, and every
//!   process's own figures.
//! - `--process-id I --processes N --peers A0,A1,…`: one process of a
//!   cluster started by hand (one per machine); the secret comes from
//!   `SPATE_CLUSTER_SECRET`, and an open-loop run needs the same
//!   `--base-time-ms` everywhere.
//! - `--process-id I --processes N --cluster etcd://HOST:PORT`: the same,
//!   with the peer list found in etcd instead: the process publishes its
//!   `--listen` address under `/spate/<--cluster-job>/members/I`, bound to
//!   a lease it renews while it runs, and waits for all N ([`discover`]).
//!   The launcher passes `--cluster` on to its processes.

use crate::report::{write_latency, FailoverSummary, LatencySummary, ProcessSummary, Summary};
use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use spate::checkpoint::global::Records;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The environment variable that carries the cluster's shared secret.
pub const SECRET_VAR: &str = "SPATE_CLUSTER_SECRET";

/// How long a process waits for its peers at the start.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// Time the launcher leaves for its processes to start and connect before
/// the first event's scheduled time, ms.
const STARTUP_LEAD_MS: u64 = 1_500;

/// The engine's cluster settings of process `process`.
pub fn config(
    process: usize,
    processes: usize,
    peers: Vec<SocketAddr>,
    job: &str,
) -> anyhow::Result<spate::ClusterConfig> {
    let secret = std::env::var(SECRET_VAR).with_context(|| {
        format!("--process-id needs the cluster's shared secret in {SECRET_VAR}")
    })?;
    if peers.len() != processes {
        bail!(
            "--peers lists {} addresses for --processes {processes}",
            peers.len()
        );
    }
    Ok(spate::ClusterConfig {
        process,
        processes,
        peers,
        job: job.to_string(),
        secret: secret.into_bytes(),
        connect_timeout: CONNECT_TIMEOUT,
        busy_linger: spate::DEFAULT_BUSY_LINGER,
        commit_point: None,
    })
}

/// Time to live of a process's membership lease, s: a process that stops
/// renewing it is gone after this long.
pub const LEASE_TTL_S: i64 = 2;

/// How often a process reads the members to notice one that is gone, ms.
pub const WATCH_INTERVAL_MS: u64 = 250;

/// Joins the cluster through etcd at `url` as process `process` of
/// `processes` under job name `job`, publishing `listen` (port 0: a free
/// port is picked) and waiting for the others. Returns the engine's
/// settings, the membership (leave it at the end), and the hook that
/// hands the job's failer to the membership: if the lease is lost, the
/// job fails.
pub fn discover(
    url: &str,
    job: &str,
    generation: u32,
    process: usize,
    processes: usize,
    listen: SocketAddr,
    cores: usize,
) -> anyhow::Result<(
    spate::ClusterConfig,
    spate_cluster::Membership,
    crate::run::StartHook,
)> {
    use std::sync::{Arc, Mutex};
    let client = spate_cluster::EtcdClient::new(url, Duration::from_secs(5))
        .with_context(|| format!("--cluster {url}"))?;
    // The members of this run (generation) apart from earlier runs', whose
    // member keys outlive a killed process by its lease; the leader key
    // and the checkpoint pointer are the job's, across runs.
    let job_keys =
        spate_cluster::JobKeys::new(job).with_context(|| format!("--cluster-job {job}"))?;
    let run_job = generation_name(job, generation);
    let keys = spate_cluster::JobKeys::new(&run_job)
        .with_context(|| format!("--cluster-job {job} (generation {generation})"))?;
    let job = run_job.as_str();
    let listen = if listen.port() == 0 {
        // Bound and released: the port is published, then bound again by
        // the data plane.
        std::net::TcpListener::bind(listen)
            .and_then(|l| l.local_addr())
            .with_context(|| format!("--listen {listen}"))?
    } else {
        listen
    };
    // The job's failer, once it started; a lease lost before that is
    // remembered and fails the job as soon as it starts.
    let slot: Arc<Mutex<(Option<spate::JobFailer>, Option<String>)>> = Arc::default();
    let lost_slot = slot.clone();
    let on_lost = Box::new(move |why: spate_cluster::LeaseLost| {
        let reason = format!(
            "process {process}: its etcd membership lease was lost ({why:?}); the other \
             processes consider it gone"
        );
        eprintln!("spate-bench: {reason}");
        let mut s = lost_slot.lock().unwrap_or_else(|p| p.into_inner());
        match &s.0 {
            Some(failer) => failer.fail(spate::JobError::Network(reason)),
            None => s.1 = Some(reason),
        }
    });
    let mut membership = spate_cluster::discover(
        Arc::new(client),
        &keys,
        spate_cluster::MemberInfo {
            process_id: process as u32,
            address: listen.to_string(),
            cores: cores as u32,
        },
        processes as u32,
        LEASE_TTL_S,
        CONNECT_TIMEOUT,
        on_lost,
    )
    .with_context(|| format!("joining job `{job}` in etcd at {url} as process {process}"))?;
    let peers = membership
        .peers
        .iter()
        .map(|a| {
            a.parse()
                .with_context(|| format!("a member's address `{a}` in etcd"))
        })
        .collect::<anyhow::Result<Vec<SocketAddr>>>()?;
    // A peer whose lease expired (dead, hung, or cut off from etcd) fails
    // the job here too, even if its connections stay open.
    let watch_slot = slot.clone();
    membership
        .watch(
            Duration::from_millis(WATCH_INTERVAL_MS),
            Box::new(move |missing: Vec<u32>| {
                let reason = format!(
                    "process {process}: process(es) {missing:?} left the cluster in etcd (lease \
                     expired or revoked)"
                );
                eprintln!("spate-bench: {reason}");
                let mut s = watch_slot.lock().unwrap_or_else(|p| p.into_inner());
                match &s.0 {
                    Some(failer) => failer.fail(spate::JobError::Network(reason)),
                    None => s.1 = Some(reason),
                }
            }),
        )
        .context("starting the membership watcher")?;
    let hook = crate::run::StartHook(Arc::new(move |failer: spate::JobFailer| {
        eprintln!("spate-bench: process {process} started its job (every peer connected)");
        let mut s = slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(reason) = s.1.take() {
            failer.fail(spate::JobError::Network(reason));
        }
        s.0 = Some(failer);
    }));
    let mut cluster = config(process, processes, peers, job)?;
    cluster.commit_point = Some(Arc::new(EtcdPointer::new(
        url,
        job_keys,
        (process == 0).then(|| membership.lease()),
    )?));
    Ok((cluster, membership, hook))
}

/// The name a run (`generation`) of job `job` joins under: the job's own
/// for the first, then one per restart.
pub fn generation_name(job: &str, generation: u32) -> String {
    match generation {
        0 => job.to_string(),
        g => format!("{job}-restart-{g}"),
    }
}

/// The job's checkpoint pointer in etcd (`/spate/<job>/checkpoint`) as the
/// engine's commit point ([`spate_cluster::PointerCommit`], `docs/cluster.md`
/// §6): process 0 campaigns for the leader key with its membership lease and
/// moves the pointer with the fenced compare-and-swap; every process reads it
/// when it restores. This adds the waiting between attempts, in real time.
struct EtcdPointer {
    pointer: spate_cluster::PointerCommit<spate_cluster::EtcdClient>,
    url: String,
}

/// How long a pointer move is retried after etcd failed to answer before
/// its outcome is declared unknown (the run then fails and its restart
/// reads the pointer).
const MOVE_RETRY_FOR: Duration = Duration::from_secs(5);

impl EtcdPointer {
    fn new(
        url: &str,
        keys: spate_cluster::JobKeys,
        lease: Option<spate_cluster::LeaseId>,
    ) -> anyhow::Result<Self> {
        let client = spate_cluster::EtcdClient::new(url, Duration::from_secs(5))
            .with_context(|| format!("--cluster {url}"))?;
        Ok(Self {
            pointer: spate_cluster::PointerCommit::new(client, keys, lease),
            url: url.to_string(),
        })
    }

    /// This process's leadership, campaigning until elected (a previous
    /// leader's key goes with its lease: a cut-off earlier process 0 is
    /// fenced from then on) or the connect timeout.
    fn lead(&self) -> Result<(), String> {
        let deadline = std::time::Instant::now() + CONNECT_TIMEOUT;
        loop {
            let why = match self.pointer.lead() {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(c)) => format!(
                    "process {} still leads the job (term {}) after {CONNECT_TIMEOUT:?}",
                    c.record.process_id, c.term
                ),
                Err(e) => e,
            };
            if std::time::Instant::now() >= deadline {
                return Err(why);
            }
            // The poll interval of a wait with a deadline.
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl spate::checkpoint::global::CommitPoint for EtcdPointer {
    fn commit(
        &self,
        record: &spate::checkpoint::global::GlobalRecord,
    ) -> Result<(), spate::checkpoint::global::CommitError> {
        use spate::checkpoint::global::CommitError;
        use spate_cluster::{Attempt, MoveError};
        let mut move_ = spate_cluster::PointerMove::new(
            record.id,
            format!("cluster/checkpoint-{:020}", record.id),
        );
        let deadline = std::time::Instant::now() + MOVE_RETRY_FOR;
        let failed = loop {
            match move_.attempt(&self.pointer) {
                Attempt::Moved => return Ok(()),
                Attempt::Failed(e) => break e,
                Attempt::Retry(why) if std::time::Instant::now() >= deadline => {
                    break move_.give_up(why)
                }
                // Back off briefly: etcd's reply was lost or late.
                Attempt::Retry(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        Err(match failed {
            MoveError::Deposed(e) => CommitError::Deposed(e),
            MoveError::Unknown(e) => CommitError::Unknown(e),
        })
    }

    fn latest(&self) -> Result<Option<u64>, String> {
        if self.pointer.leads() {
            // Elected first: every earlier leader is fenced by then.
            self.lead()?;
        }
        self.pointer.latest()
    }

    fn describe(&self) -> String {
        format!(
            "{} {}",
            self.url,
            String::from_utf8_lossy(&self.pointer.keys().checkpoint_pointer())
        )
    }
}

/// A fresh random secret, hex.
fn random_secret() -> anyhow::Result<String> {
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .context("reading /dev/urandom for the cluster's secret")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// This command's arguments without the ones the launcher sets per process
/// (`--listen` too: its processes each take a free port).
fn passed_args() -> Vec<String> {
    let mut out = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let flag = arg.split('=').next().unwrap_or("");
        if matches!(
            flag,
            "--report"
                | "--base-time-ms"
                | "--processes"
                | "--cluster-job"
                | "--listen"
                | "--failover"
                | "--max-restarts"
                | "--kill-process"
                | "--kill-after-checkpoints"
                | "--cluster-generation"
                | "--cluster-restore-from"
        ) {
            if !arg.contains('=') {
                args.next();
            }
            continue;
        }
        out.push(arg);
    }
    out
}

/// What the launcher does when a process of a checkpointing cluster is lost.
#[derive(Clone, Debug)]
pub struct Failover {
    /// The job's checkpoint directory (every process's part, the global
    /// records).
    pub state_dir: std::path::PathBuf,
    /// The job's remote tier, if it has one: the global records are there.
    pub remote: Option<String>,
    /// Restart on one process fewer instead of as many.
    pub shrink: bool,
    /// Restarts before the launcher gives up.
    pub max_restarts: u32,
    /// Fault injection: (process, global checkpoint): SIGKILL the process
    /// once that checkpoint is complete.
    pub kill: Option<(usize, u64)>,
}

/// The newest global checkpoint among `records` (0: none, or unreadable).
fn newest_global(records: &Records) -> u64 {
    records
        .ids()
        .ok()
        .and_then(|ids| ids.last().copied())
        .unwrap_or(0)
}

/// How long the launcher lets the other processes of a run that lost one
/// take to fail on their own before it kills them: the data plane notices a
/// lost connection at once, and a failed run closes its sockets within 1 s;
/// a process that hangs (stopped, or stuck in the kernel) never exits.
const FAIL_GRACE: Duration = Duration::from_secs(5);

/// Starts `processes` copies of this `nexmark` command on this machine and
/// merges their reports into `report`. With checkpoints (`failover`), a run
/// that loses a process is restarted, every process from the latest global
/// checkpoint, on as many processes or one fewer.
pub fn launch(
    processes: usize,
    report: &Path,
    base_time_ms: Option<u64>,
    rate: Option<u64>,
    etcd: bool,
    job_prefix: &str,
    failover: Option<Failover>,
) -> anyhow::Result<Summary> {
    if processes < 2 {
        bail!("--processes must be at least 2 for a cluster");
    }
    let secret = random_secret()?;
    let now = spate::time::Clock::now_ms(&spate::time::SystemClock);
    let base = base_time_ms.unwrap_or(now + crate::run::OPEN_LOOP_LEAD_MS + STARTUP_LEAD_MS);
    let exe = std::env::current_exe().context("finding this executable")?;
    // A job name of this launch's own (`--cluster-job`, then random apart from the secret:
    // nothing of the secret goes into etcd or onto a command line): the
    // processes find each other under it in etcd, and the handshake
    // refuses processes of another job.
    let job = format!("{job_prefix}-{}", &random_secret()?[..12]);
    let mut n = processes;
    let mut restarts = 0u32;
    let mut kill = failover.as_ref().and_then(|f| f.kill);
    let mut killed: Option<(usize, u64, u64)> = None;
    let records = match &failover {
        Some(f) => {
            Some(Records::of_job(&f.state_dir, f.remote.as_deref()).map_err(anyhow::Error::msg)?)
        }
        None => None,
    };
    // A restart restores only checkpoints of this launch: ids above those
    // already there (the processes' leader takes ids above them too).
    let restore_from = records.as_ref().map_or(1, |r| newest_global(r) + 1);
    // How often the fault injection looks at the newest global checkpoint:
    // a remote listing is a request.
    let look_every = match records {
        Some(Records::Remote { .. }) => Duration::from_millis(50),
        _ => Duration::ZERO,
    };
    let children = loop {
        let listeners: Vec<std::net::TcpListener> = (0..n)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
            .collect::<Result<_, _>>()
            .context("finding free ports for the data plane")?;
        let peers: Vec<String> = listeners
            .iter()
            .map(|l| l.local_addr().map(|a| a.to_string()))
            .collect::<Result<_, _>>()?;
        drop(listeners);
        let run_dir = match restarts {
            0 => report.to_path_buf(),
            r => report.join(format!("restart-{r}")),
        };
        let mut children = Vec::new();
        for process in 0..n {
            let dir = run_dir.join(format!("process-{process}"));
            let mut command = Command::new(&exe);
            command
                .args(passed_args())
                .args(["--processes", &n.to_string()])
                .args(["--process-id", &process.to_string()]);
            // Each restart is a generation of its own: its processes find
            // each other under a name of its own in etcd (a lost process's
            // member key lives on until its lease expires), and the
            // handshake refuses a process of an earlier generation.
            command.args(["--cluster-job", &job]);
            command.args(["--cluster-generation", &restarts.to_string()]);
            if !etcd {
                command.args(["--peers", &peers.join(",")]);
            }
            if restarts > 0 {
                command.args(["--cluster-restore-from", &restore_from.to_string()]);
            }
            let child = command
                .args(["--base-time-ms", &base.to_string()])
                .arg("--report")
                .arg(&dir)
                .env(SECRET_VAR, &secret)
                .stdout(Stdio::null())
                .spawn()
                .with_context(|| format!("starting process {process}"))?;
            children.push((process, child, dir));
        }
        let mut statuses: Vec<Option<std::process::ExitStatus>> = vec![None; n];
        let mut first_failure: Option<std::time::Instant> = None;
        let mut looked: Option<std::time::Instant> = None;
        while statuses.iter().any(Option::is_none) {
            for (i, (_, child, _)) in children.iter_mut().enumerate() {
                if statuses[i].is_none() {
                    statuses[i] = child.try_wait()?;
                }
            }
            let look = looked.is_none_or(|t| t.elapsed() >= look_every);
            if let (Some((victim, after)), Some(records), true) = (kill, &records, look) {
                looked = Some(std::time::Instant::now());
                let newest = newest_global(records);
                if newest >= after && statuses[victim].is_none() {
                    children[victim].1.kill().context("killing the process")?;
                    let at = spate::time::Clock::now_ms(&spate::time::SystemClock);
                    eprintln!(
                        "spate-bench: killed process {victim} (SIGKILL) after global checkpoint {newest}"
                    );
                    killed = Some((victim, newest, at));
                    kill = None;
                }
            }
            if first_failure.is_none() && statuses.iter().flatten().any(|s| !s.success()) {
                first_failure = Some(std::time::Instant::now());
            }
            if first_failure.is_some_and(|t| t.elapsed() > FAIL_GRACE) {
                for (i, (_, child, _)) in children.iter_mut().enumerate() {
                    if statuses[i].is_none() {
                        let _ = child.kill();
                    }
                }
            }
            // The poll interval of a wait for child processes (and of the
            // fault injection's look at the newest global checkpoint).
            std::thread::sleep(Duration::from_millis(2));
        }
        let failed: Vec<String> = children
            .iter()
            .zip(&statuses)
            .filter(|(_, s)| s.is_some_and(|s| !s.success()))
            .map(|((process, _, _), s)| format!("process {process}: {}", s.expect("waited")))
            .collect();
        if failed.is_empty() {
            break children;
        }
        let Some(f) = &failover else {
            bail!(
                "the cluster failed ({}); see the processes' messages above",
                failed.join(", ")
            );
        };
        restarts += 1;
        if restarts > f.max_restarts {
            bail!(
                "the cluster failed ({}) after {} restart(s); see the processes' messages above",
                failed.join(", "),
                f.max_restarts
            );
        }
        if f.shrink && n > 1 {
            n -= 1;
        }
        eprintln!(
            "spate-bench: the cluster lost a process ({}); restart {restarts} on {n} process(es) from global checkpoint {}",
            failed.join(", "),
            records.as_ref().map_or(0, newest_global)
        );
    };
    let mut summaries = Vec::new();
    let mut latency = crate::sink::new_histogram();
    for (process, _, dir) in &children {
        let text = std::fs::read_to_string(dir.join("summary.json"))
            .with_context(|| format!("reading process {process}'s report in {}", dir.display()))?;
        let summary: Summary = serde_json::from_str(&text)
            .with_context(|| format!("process {process}'s summary.json"))?;
        if let Ok(raw) = std::fs::read_to_string(dir.join("latency-us.txt")) {
            merge_raw(&mut latency, &raw)
                .with_context(|| format!("process {process}'s latency-us.txt"))?;
        }
        summaries.push((*process, summary));
    }
    let mut merged = merge(&summaries, &latency, rate.is_some());
    if restarts > 0 {
        let first_event = summaries.iter().filter_map(|(_, s)| s.first_event_ms).min();
        merged.failover = Some(FailoverSummary {
            restarts,
            killed_process: killed.map(|k| k.0),
            killed_after_checkpoint: killed.map(|k| k.1),
            restored_from: summaries[0].1.resumed_from_checkpoint,
            processes_after: n,
            kill_to_first_event_ms: killed
                .zip(first_event)
                .map(|((_, _, at), first)| first.saturating_sub(at)),
        });
    }
    std::fs::create_dir_all(report)?;
    let json = serde_json::to_string_pretty(&merged)?;
    std::fs::write(report.join("summary.json"), json + "\n")?;
    std::fs::write(report.join("summary.txt"), merged.human())?;
    if rate.is_some() && !latency.is_empty() {
        write_latency(report, &merged, &latency)?;
    }
    Ok(merged)
}

fn merge_raw(h: &mut Histogram<u64>, raw: &str) -> anyhow::Result<()> {
    for line in raw.lines() {
        let (v, c) = line
            .split_once(' ')
            .context("a line is not `value count`")?;
        h.record_n(v.parse()?, c.parse()?)?;
    }
    Ok(())
}

/// The cluster's summary: totals over the processes, the slowest one's time.
fn merge(summaries: &[(usize, Summary)], latency: &Histogram<u64>, measured: bool) -> Summary {
    let first = &summaries[0].1;
    let events: u64 = summaries.iter().map(|(_, s)| s.events_processed).sum();
    let elapsed_s = summaries
        .iter()
        .map(|(_, s)| s.elapsed_s)
        .fold(0.0f64, f64::max);
    let cores: usize = summaries.iter().map(|(_, s)| s.cores).sum();
    let throughput = events as f64 / elapsed_s.max(1e-9);
    let mut merged = Summary {
        events_processed: events,
        cores,
        elapsed_s,
        throughput_events_per_s: throughput,
        throughput_events_per_s_per_core: throughput / cores.max(1) as f64,
        rows: summaries.iter().map(|(_, s)| s.rows).sum(),
        rows_before_origin: summaries.iter().map(|(_, s)| s.rows_before_origin).sum(),
        latency_us: LatencySummary::of(latency, measured),
        peak_rss_bytes: summaries.iter().filter_map(|(_, s)| s.peak_rss_bytes).max(),
        processes: Vec::new(),
        ..first.clone()
    };
    merged.processes = summaries
        .iter()
        .map(|(process, s)| ProcessSummary {
            process: *process,
            events_processed: s.events_processed,
            elapsed_s: s.elapsed_s,
            throughput_events_per_s: s.throughput_events_per_s,
            rows: s.rows,
            latency_us: s.latency_us.clone(),
            peak_rss_bytes: s.peak_rss_bytes,
            network_bytes_sent: s.processes.first().map_or(0, |p| p.network_bytes_sent),
            network_bytes_received: s.processes.first().map_or(0, |p| p.network_bytes_received),
        })
        .collect();
    merged
}
