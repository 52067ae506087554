//! [`JobEnv`]: the state every subtask of a running job shares (exchange
//! rings, parkers, stop and failure flags, the coordinator's rings, the
//! checkpoint restored), and the glommio-free helpers around it: loading the
//! checkpoint to restore, building a written snapshot's acknowledgement.
//!
//! Used by the step logic (`worker.rs`, `dataflow/`), the real runtime and
//! the simulator alike, so it must not name glommio (a test checks it).

use crate::checkpoint::coordinator::{Ack, Coordinator, CoordinatorShared};
use crate::checkpoint::restore::RestoreState;
use crate::checkpoint::subtask::LocalSnapshot;
use crate::checkpoint::Control;
use crate::dataflow::mesh::ExchangeRegistry;
use crate::metrics::MetricsRegistry;
use crate::park::Parker;
use crate::ring::{ring, Consumer, Producer};
use crate::time::Clock;
use crate::{JobConfig, JobError};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Capacity of the coordinator's control and acknowledgement rings.
const CONTROL_CAPACITY: usize = 64;

/// State shared by every subtask of a running job.
pub(crate) struct JobEnv {
    pub config: JobConfig,
    pub exchanges: ExchangeRegistry,
    pub parkers: Vec<Arc<Parker>>,
    pub stop: Arc<AtomicBool>,
    pub failed: AtomicBool,
    pub error: Mutex<Option<JobError>>,
    pub clock: Arc<dyn Clock>,
    pub restore: Option<Arc<RestoreState>>,
    controls: Mutex<Vec<Option<Consumer<Control>>>>,
    acks: Mutex<Vec<Option<Producer<Ack>>>>,
    pub coordinator_parker: Arc<Parker>,
    pub coordinator: Arc<CoordinatorShared>,
    /// The job's live figures (shared by every run of the job).
    pub metrics: Arc<MetricsRegistry>,
    pub fingerprint: OnceLock<u64>,
    /// Unique per run (a restart is a new run); names a run's sink files.
    pub run_id: u64,
    /// Subtasks whose input all ended and that wait for a final checkpoint.
    drained: AtomicUsize,
    /// Per checkpoint: subtasks that had drained when its barrier reached
    /// them. A checkpoint is final once every subtask had.
    final_votes: Mutex<std::collections::BTreeMap<u64, usize>>,
    pub done: AtomicUsize,
    /// In a cluster job that checkpoints: this process's coordinator task
    /// has ended (it told the leader), so its link writers may say bye.
    pub coordinator_ended: AtomicBool,
    /// When the job started (restore duration is measured from here).
    pub started: Instant,
    /// Longest time a subtask took, from the start, to have its state restored.
    pub restore_us: AtomicU64,
    /// Key groups a step archives in the background; 0: as many as fit in
    /// a time budget (the simulator sets a count, so a seed reproduces).
    pub archive_groups_per_step: AtomicUsize,
    /// The remote checkpoint tier, if the job has one.
    pub remote: OnceLock<Arc<crate::checkpoint::remote::JobRemote>>,
    /// The data plane to the other processes, in a cluster job.
    pub net: Option<Arc<crate::net::Network>>,
}

/// The coordinator's ends of the control and acknowledgement rings.
pub(crate) struct CoordinatorEnds {
    pub control: Vec<Producer<Control>>,
    pub acks: Vec<Consumer<Ack>>,
}

impl JobEnv {
    pub(crate) fn new(
        config: JobConfig,
        clock: Arc<dyn Clock>,
        restore: Option<Arc<RestoreState>>,
        stop: Arc<AtomicBool>,
        metrics: Arc<MetricsRegistry>,
        net: Option<Arc<crate::net::Network>>,
        sim_links: Option<Arc<dyn crate::net::ChannelHost>>,
    ) -> (Arc<Self>, CoordinatorEnds) {
        let p = config.parallelism;
        let first = config.first_subtask();
        // Indexed by global subtask: this process's own parkers, and for a
        // subtask of another process the parker of the link writer to it.
        let parkers: Vec<Arc<Parker>> = (0..config.total_parallelism())
            .map(|s| match net.as_ref().and_then(|n| n.peer_of(s)) {
                Some(peer) => peer.parker.clone(),
                None => Arc::new(Parker::default()),
            })
            .collect();
        debug_assert!(first + p <= parkers.len());
        let (control_tx, control_rx): (Vec<_>, Vec<_>) =
            (0..p).map(|_| ring(CONTROL_CAPACITY)).unzip();
        let (ack_tx, ack_rx): (Vec<_>, Vec<_>) = (0..p).map(|_| ring(CONTROL_CAPACITY)).unzip();
        let env = Arc::new(Self {
            exchanges: ExchangeRegistry::new(
                config.total_parallelism(),
                config.ring_capacity,
                net.clone()
                    .map(|n| n as Arc<dyn crate::net::ChannelHost>)
                    .or(sim_links),
                parkers.clone(),
            ),
            parkers,
            net,
            stop,
            failed: AtomicBool::new(false),
            error: Mutex::new(None),
            clock,
            restore,
            controls: Mutex::new(control_rx.into_iter().map(Some).collect()),
            acks: Mutex::new(ack_tx.into_iter().map(Some).collect()),
            coordinator_parker: Arc::new(Parker::default()),
            coordinator: Arc::new(CoordinatorShared::new(p)),
            metrics,
            started: Instant::now(),
            restore_us: AtomicU64::new(0),
            archive_groups_per_step: AtomicUsize::new(0),
            remote: OnceLock::new(),
            fingerprint: OnceLock::new(),
            run_id: run_id(),
            drained: AtomicUsize::new(0),
            final_votes: Mutex::new(std::collections::BTreeMap::new()),
            done: AtomicUsize::new(0),
            coordinator_ended: AtomicBool::new(false),
            config,
        });
        (
            env,
            CoordinatorEnds {
                control: control_tx,
                acks: ack_rx,
            },
        )
    }

    /// A subtask finished building (and restoring) its graph.
    pub(crate) fn built(&self) {
        if self.restore.is_some() {
            self.restore_us
                .fetch_max(self.started.elapsed().as_micros() as u64, Ordering::SeqCst);
        }
    }

    pub(crate) fn restore_duration(&self) -> Option<Duration> {
        self.restore
            .as_ref()
            .map(|_| Duration::from_micros(self.restore_us.load(Ordering::SeqCst)))
    }

    /// The index among this process's subtasks of `subtask` (global): what
    /// the process's coordinator, rings and store number it by.
    pub(crate) fn local_index(&self, subtask: usize) -> usize {
        let first = self.config.first_subtask();
        debug_assert!(
            (first..first + self.config.parallelism).contains(&subtask),
            "subtask {subtask} runs in this process"
        );
        subtask - first
    }

    /// The control ring of `subtask` (global), when the job checkpoints.
    pub(crate) fn take_control(&self, subtask: usize) -> Option<Consumer<Control>> {
        self.config.checkpoint.as_ref()?;
        let local = self.local_index(subtask);
        self.controls.lock().ok()?.get_mut(local)?.take()
    }

    /// The acknowledgement ring of `subtask` (global).
    pub(crate) fn take_ack(&self, subtask: usize) -> Option<Producer<Ack>> {
        let local = self.local_index(subtask);
        self.acks.lock().ok()?.get_mut(local)?.take()
    }

    /// Records the first failure and wakes every subtask so all of them stop.
    pub(crate) fn fail(&self, error: JobError) {
        if let Ok(mut slot) = self.error.lock() {
            if slot.is_none() {
                *slot = Some(error);
            }
        }
        self.failed.store(true, Ordering::SeqCst);
        self.wake_all();
    }

    /// A subtask's input all ended and it waits for a final checkpoint;
    /// the last one to get there asks for it.
    pub(crate) fn drained(&self) {
        if self.drained.fetch_add(1, Ordering::SeqCst) + 1 == self.config.parallelism {
            self.request_checkpoint();
        }
    }

    /// A drained subtask handled checkpoint `id`'s barrier: its output is
    /// all before it.
    pub(crate) fn vote_final(&self, id: u64) {
        if let Ok(mut votes) = self.final_votes.lock() {
            *votes.entry(id).or_insert(0) += 1;
        }
    }

    /// Whether checkpoint `id` covers every subtask's whole output: each had
    /// drained when the barrier reached it. Asked once `id` completed, when
    /// every subtask has handled its barrier, so all subtasks get the same
    /// answer.
    pub(crate) fn is_final(&self, id: u64) -> bool {
        self.final_votes
            .lock()
            .map(|v| v.get(&id).copied().unwrap_or(0) == self.config.parallelism)
            .unwrap_or(false)
    }

    /// How many of this process's subtasks had drained when checkpoint
    /// `id`'s barrier reached them (a part's report to the leader).
    pub(crate) fn final_votes(&self, id: u64) -> u32 {
        self.final_votes
            .lock()
            .map(|v| v.get(&id).copied().unwrap_or(0) as u32)
            .unwrap_or(0)
    }

    /// In a cluster job: the leader decided whether checkpoint `id` is
    /// final for the whole job (every process's subtasks had drained).
    /// Replaces this process's own count; set before the subtasks hear of
    /// the completion, which is when they ask [`is_final`](Self::is_final).
    pub(crate) fn set_final(&self, id: u64, is_final: bool) {
        if let Ok(mut votes) = self.final_votes.lock() {
            votes.insert(id, if is_final { self.config.parallelism } else { 0 });
        }
    }

    /// Asks the coordinator for a checkpoint as soon as none is in progress.
    pub(crate) fn request_checkpoint(&self) {
        self.coordinator
            .manual_trigger
            .store(true, Ordering::SeqCst);
        self.coordinator_parker.notifier().notify();
    }

    pub(crate) fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    pub(crate) fn wake_all(&self) {
        for parker in &self.parkers {
            parker.notifier().notify();
        }
        self.coordinator_parker.notifier().notify();
    }

    pub(crate) fn take_error(&self) -> Option<JobError> {
        self.error.lock().ok().and_then(|mut e| e.take())
    }

    pub(crate) fn coordinator_for(
        &self,
        ends: CoordinatorEnds,
        first_id: u64,
    ) -> Option<Coordinator> {
        let mut config = self.config.checkpoint.clone()?;
        if self.config.cluster.is_some() {
            // The leader counts failures across the cluster (`global.rs`).
            config.tolerable_failures = u32::MAX - 1;
        }
        let mut coordinator = Coordinator::new(
            config,
            self.config.parallelism,
            self.config.max_parallelism,
            self.fingerprint.get().copied().unwrap_or(0),
            first_id,
            ends.control,
            ends.acks,
            // This process's own subtasks' parkers.
            self.parkers[self.config.first_subtask()..][..self.config.parallelism]
                .iter()
                .map(|p| p.notifier())
                .collect(),
            self.coordinator.clone(),
        );
        if self.config.cluster.is_some() {
            coordinator.set_external();
        }
        if let Some(restore) = &self.restore {
            coordinator.restored(restore.metadata.id);
        }
        Some(coordinator)
    }
}

impl crate::net::RunState for JobEnv {
    fn failed(&self) -> bool {
        JobEnv::failed(self)
    }
    fn fail(&self, error: JobError) {
        JobEnv::fail(self, error)
    }
    fn error_text(&self) -> Option<String> {
        self.error
            .lock()
            .ok()
            .and_then(|e| e.as_ref().map(|e| e.to_string()))
    }
    fn local_done(&self) -> bool {
        self.done.load(Ordering::SeqCst) == self.config.parallelism
            && (self.config.checkpoint.is_none() || self.coordinator_ended.load(Ordering::SeqCst))
    }
}

/// A run identifier unlikely to repeat: the start time and the process id.
fn run_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    static RUNS: AtomicU64 = AtomicU64::new(0);
    nanos ^ (u64::from(std::process::id()) << 40) ^ RUNS.fetch_add(1, Ordering::Relaxed)
}

/// Loads the checkpoint to restore, if the job checkpoints and one exists.
/// With the job's remote tier, if it has one, only remotely committed
/// checkpoints are restored, and an empty directory is filled from the remote
/// tier while the job runs.
pub(crate) fn load_restore_with(
    config: &JobConfig,
    remote: Option<&crate::checkpoint::remote::JobRemote>,
) -> Result<Option<Arc<RestoreState>>, JobError> {
    let Some(checkpoint) = &config.checkpoint else {
        return Ok(None);
    };
    if let Some(cluster) = &config.cluster {
        let restored = RestoreState::load_cluster(
            checkpoint,
            cluster.process,
            cluster.commit_point.as_ref(),
            remote,
        )?;
        if let Some(remote) = remote {
            crate::checkpoint::remote::prepare_part(
                remote,
                restored.as_ref().map(|r| r.metadata.id),
            )?;
        }
        return check_restored(restored, config);
    }
    let prepared = match remote {
        Some(remote) => crate::checkpoint::remote::prepare_restore(checkpoint, remote)?,
        None => Default::default(),
    };
    check_restored(
        RestoreState::load_dir(checkpoint, prepared.allowed.as_ref(), prepared.fill)?,
        config,
    )
}

/// Reports a restored checkpoint's warnings and refuses a changed max parallelism.
pub(crate) fn check_restored(
    restored: Option<RestoreState>,
    config: &JobConfig,
) -> Result<Option<Arc<RestoreState>>, JobError> {
    if let Some(r) = &restored {
        for warning in &r.warnings {
            eprintln!("spate: {warning}");
        }
        if r.metadata.max_parallelism != config.max_parallelism {
            return Err(crate::RestoreError::MaxParallelismChanged {
                id: r.metadata.id,
                checkpoint: r.metadata.max_parallelism,
                job: config.max_parallelism,
            }
            .into());
        }
    }
    Ok(restored.map(Arc::new))
}

/// Builds the acknowledgement of a written snapshot.
pub(crate) fn ack_for(
    snapshot: LocalSnapshot,
    subtask: usize,
    handles: Vec<spate_storage::BlockHandle>,
    written: Result<(), String>,
    checkpoints: &std::cell::RefCell<crate::checkpoint::subtask::SubtaskCheckpoints>,
) -> Ack {
    let async_us = snapshot.ready_at.elapsed().as_micros() as u64;
    match written {
        Ok(()) => {
            checkpoints
                .borrow_mut()
                .written(snapshot.barrier.id, snapshot.chains(&handles));
            let mut stats = snapshot.stats;
            stats.async_us = async_us;
            Ack::Done {
                barrier: snapshot.barrier,
                subtask,
                handles,
                blocks: snapshot.blocks.into_iter().map(|b| b.desc).collect(),
                reused: snapshot.reused,
                sources: snapshot.sources,
                stats,
            }
        }
        Err(reason) => Ack::Failed {
            id: snapshot.barrier.id,
            subtask,
            // Crosses to the coordinator as text: its statistics keep it.
            reason,
        },
    }
}
