//! The data plane between the processes of a cluster job: one TCP
//! connection per pair of processes, authenticated by the job's shared
//! secret ([`auth`]), carrying every channel of every exchange between them
//! as frames ([`wire`]) under credit-based flow control ([`channel`]).
//!
//! Threads, not reactors: each connection has a reader and a writer thread
//! of its own (`spate-net-r{peer}`, `spate-net-w{peer}`) with blocking
//! std sockets, and the listener a thread (`spate-net-listen`). Subtasks
//! never touch a socket: a channel to another process is an ordinary ring
//! whose far end a link thread drains or fills, so the exchange code, its
//! barriers and backpressure are the same as between cores. The writer
//! parks on the parker the job's environment gives every subtask of its
//! peer, so a subtask that sends to (or frees room for) a remote subtask
//! wakes it as it would wake a local one.
//!
//! Connections: process `j` connects to every process `i < j` and accepts
//! from every `k > j`, retrying until [`crate::ClusterConfig::connect_timeout`].
//! A connection that fails the handshake, names a process that is not
//! expected, or arrives once the cluster is complete is refused, logged and
//! counted ([`NetStats::refused`]).
//!
//! Failure: a process whose job fails sends [`Frame::Abort`] to every peer,
//! whose jobs then fail naming it; a connection that closes before its
//! peer's [`Frame::Bye`] fails the job. Spec: `docs/cluster.md` §6–§8.

pub(crate) mod auth;
pub(crate) mod channel;
pub(crate) mod sim;
pub(crate) mod wire;

use crate::park::Parker;
use crate::{ClusterConfig, JobError};
use auth::{Identity, Role};
use channel::{Inbound, Outbound};
use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use wire::{ChannelId, Frame};

/// A write at least this large means the link is busy: the writer then
/// waits [`crate::ClusterConfig::busy_linger`] before its next round.
const BUSY_WRITE_BYTES: usize = 16 << 10;

/// What went wrong on the data plane.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NetError {
    #[error("channel {channel:?}: cannot encode records: {reason}")]
    Encode { channel: ChannelId, reason: String },
    #[error("channel {channel:?}: records that do not decode: {reason}")]
    Decode { channel: ChannelId, reason: String },
    #[error("protocol violation{}: {what}", channel.map(|c| format!(" on channel {c:?}")).unwrap_or_default())]
    Protocol {
        channel: Option<ChannelId>,
        what: String,
    },
}

/// What the link threads need of the job's run (the job environment
/// implements it; a trait, so that the network does not import it).
pub(crate) trait RunState: Send + Sync {
    /// The run failed.
    fn failed(&self) -> bool;
    /// Fails the run (the first failure wins).
    fn fail(&self, error: JobError);
    /// The run's error, to tell the peers.
    fn error_text(&self) -> Option<String>;
    /// Every reactor of this process is done.
    fn local_done(&self) -> bool;
}

/// Live figures of the data plane (reported in [`crate::JobReport`]).
#[derive(Debug, Default)]
pub(crate) struct NetStats {
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub frames_sent: AtomicU64,
    pub frames_received: AtomicU64,
    /// Connections refused: a failed handshake, an unexpected process, or
    /// any connection once the cluster was complete.
    pub refused: AtomicU64,
}

/// The data plane's figures for one run of a cluster job.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkReport {
    /// Bytes written to peers (frames, headers included).
    pub bytes_sent: u64,
    /// Bytes read from peers.
    pub bytes_received: u64,
    /// Frames written.
    pub frames_sent: u64,
    /// Frames read.
    pub frames_received: u64,
    /// Connections refused (a wrong secret, an unexpected peer, or anything
    /// once every peer was connected).
    pub refused_connections: u64,
}

impl NetStats {
    fn report(&self) -> NetworkReport {
        NetworkReport {
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
            frames_sent: self.frames_sent.load(Ordering::Relaxed),
            frames_received: self.frames_received.load(Ordering::Relaxed),
            refused_connections: self.refused.load(Ordering::Relaxed),
        }
    }
}

/// Where the channel from one subtask to another runs, as the exchange
/// registry asks it of a [`ChannelHost`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// Both subtasks are here and share a process: a plain ring.
    Ring,
    /// The sender is here, the receiver in another process.
    Out,
    /// The receiver is here, the sender in another process.
    In,
    /// Both ends are here but in different (simulated) processes: the
    /// channel crosses a link whose two ends this host owns.
    Across,
    /// Neither subtask is here.
    Elsewhere,
}

/// What carries channels between processes: the real data plane
/// ([`Network`]) or the simulator's links ([`sim::SimNet`]). The exchange
/// registry asks it where a channel runs and hands it the far ends.
pub(crate) trait ChannelHost: Send + Sync {
    fn route(&self, from: usize, to: usize) -> Route;
    /// The sending end of a channel whose receiver is in another process.
    fn add_outbound(&self, channel: ChannelId, end: Box<dyn Outbound>);
    /// The receiving end of a channel whose sender is in another process.
    fn add_inbound(&self, channel: ChannelId, end: Box<dyn Inbound>);
}

impl ChannelHost for Network {
    fn route(&self, from: usize, to: usize) -> Route {
        match (self.peer_of(from).is_none(), self.peer_of(to).is_none()) {
            (true, true) => Route::Ring,
            (true, false) => Route::Out,
            (false, true) => Route::In,
            (false, false) => Route::Elsewhere,
        }
    }
    fn add_outbound(&self, channel: ChannelId, end: Box<dyn Outbound>) {
        Network::add_outbound(self, channel, end)
    }
    fn add_inbound(&self, channel: ChannelId, end: Box<dyn Inbound>) {
        Network::add_inbound(self, channel, end)
    }
}

/// The channels one connection carries.
#[derive(Default)]
struct Channels {
    outbound: BTreeMap<ChannelId, Arc<Mutex<Box<dyn Outbound>>>>,
    inbound: BTreeMap<ChannelId, Arc<Mutex<Box<dyn Inbound>>>>,
    /// Credits granted for a channel this process has not built yet.
    early_credits: BTreeMap<ChannelId, u32>,
}

/// One other process of the cluster and the connection to it.
pub(crate) struct Peer {
    process: usize,
    addr: SocketAddr,
    /// The writer thread parks here; every subtask of this peer shares it.
    pub(crate) parker: Arc<Parker>,
    channels: Mutex<Channels>,
    stream: TcpStream,
    /// The peer said it is done: a close that follows is clean.
    bye: AtomicBool,
    /// Checkpoint coordination messages to send to the peer, in order.
    coord_out: Mutex<VecDeque<Vec<u8>>>,
}

/// The data plane of one run of a cluster job.
pub(crate) struct Network {
    me: Identity,
    /// Subtasks per process.
    parallelism: usize,
    /// [`crate::ClusterConfig::busy_linger`].
    busy_linger: Duration,
    peers: Vec<Option<Arc<Peer>>>,
    stats: Arc<NetStats>,
    listen_addr: SocketAddr,
    closing: Arc<AtomicBool>,
    listener: Mutex<Option<JoinHandle<()>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Checkpoint coordination messages received (sending process, bytes),
    /// in order per sender.
    coord_in: Mutex<VecDeque<(usize, Vec<u8>)>>,
    /// Wakes the coordinator task when a coordination message arrives.
    coord_notifier: Mutex<Option<crate::park::Notifier>>,
}

/// Coordination messages waiting to be taken at most: the leader sends a
/// few per checkpoint, so more means the coordinator stopped reading.
const MAX_COORD_WAITING: usize = 4096;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic on a link thread fails the job; the data is still consistent
    // enough to shut down.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Network {
    /// Listens, connects to every peer and authenticates each; returns once
    /// the cluster is complete, or with an error naming the peer that is
    /// missing or refused.
    pub(crate) fn connect(
        cluster: &ClusterConfig,
        parallelism: usize,
    ) -> Result<Arc<Self>, JobError> {
        let me = Identity {
            process: cluster.process as u32,
            processes: cluster.processes as u32,
            parallelism: parallelism as u32,
        };
        let net_error = |what: String| JobError::Network(what);
        let listen_addr = cluster.peers[cluster.process];
        let listener = TcpListener::bind(listen_addr).map_err(|e| {
            net_error(format!(
                "process {} cannot listen on {listen_addr} for the data plane: {e}",
                cluster.process
            ))
        })?;
        let listen_addr = listener.local_addr().unwrap_or(listen_addr);
        let stats = Arc::new(NetStats::default());
        let closing = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + cluster.connect_timeout;
        let (accepted_tx, accepted_rx) = mpsc::channel::<(usize, TcpStream)>();
        let complete = Arc::new(AtomicBool::new(false));
        let listener = {
            let secret = cluster.secret.clone();
            let job = cluster.job.clone().into_bytes();
            let stats = stats.clone();
            let closing = closing.clone();
            let complete = complete.clone();
            std::thread::Builder::new()
                .name("spate-net-listen".into())
                .spawn(move || {
                    listen(
                        listener,
                        secret,
                        job,
                        me,
                        stats,
                        closing,
                        complete,
                        accepted_tx,
                    )
                })
                .map_err(|e| net_error(format!("cannot start the listener thread: {e}")))?
        };
        let network = |peers: Vec<Option<Arc<Peer>>>, listener| {
            Arc::new(Self {
                me,
                parallelism,
                busy_linger: cluster.busy_linger,
                peers,
                stats: stats.clone(),
                listen_addr,
                closing: closing.clone(),
                listener: Mutex::new(Some(listener)),
                threads: Mutex::new(Vec::new()),
                coord_in: Mutex::new(VecDeque::new()),
                coord_notifier: Mutex::new(None),
            })
        };
        let mut streams: Vec<Option<(TcpStream, SocketAddr)>> =
            (0..cluster.processes).map(|_| None).collect();
        let result = (|| {
            for (process, addr) in cluster.peers.iter().enumerate().take(cluster.process) {
                let stream = connect_to(
                    process,
                    *addr,
                    &cluster.secret,
                    cluster.job.as_bytes(),
                    me,
                    deadline,
                )?;
                streams[process] = Some((stream, *addr));
            }
            let mut expected = cluster.processes - cluster.process - 1;
            while expected > 0 {
                let left = deadline.saturating_duration_since(Instant::now());
                match accepted_rx.recv_timeout(left) {
                    Ok((process, stream)) => {
                        // An authenticated peer: is it one that connects here?
                        if process <= cluster.process
                            || process >= cluster.processes
                            || streams[process].is_some()
                        {
                            let from = stream
                                .peer_addr()
                                .map_or_else(|_| "?".into(), |a| a.to_string());
                            refuse(
                                &stats,
                                me,
                                &from,
                                &format!("it claims to be process {process}, which does not connect here"),
                            );
                            continue;
                        }
                        streams[process] = Some((stream, cluster.peers[process]));
                        expected -= 1;
                    }
                    Err(_) => {
                        let missing: Vec<usize> = (cluster.process + 1..cluster.processes)
                            .filter(|p| streams[*p].is_none())
                            .collect();
                        return Err(net_error(format!(
                            "process(es) {missing:?} did not connect to process {} at {listen_addr} within {:?}",
                            cluster.process, cluster.connect_timeout
                        )));
                    }
                }
            }
            complete.store(true, Ordering::SeqCst);
            Ok(())
        })();
        let peers = streams
            .into_iter()
            .enumerate()
            .map(|(process, s)| {
                s.map(|(stream, addr)| {
                    let _ = stream.set_nodelay(true);
                    keepalive(&stream);
                    Arc::new(Peer {
                        process,
                        addr,
                        parker: Arc::new(Parker::default()),
                        channels: Mutex::new(Channels::default()),
                        stream,
                        bye: AtomicBool::new(false),
                        coord_out: Mutex::new(VecDeque::new()),
                    })
                })
            })
            .collect();
        let net = network(peers, listener);
        if let Err(e) = result {
            net.close_listener();
            return Err(e);
        }
        Ok(net)
    }

    /// This process's index.
    pub(crate) fn process(&self) -> usize {
        self.me.process as usize
    }

    /// Sends a checkpoint coordination message to process `to` (to this
    /// process itself: straight into its own inbox), after every message
    /// sent to it before.
    pub(crate) fn send_coord(&self, to: usize, message: Vec<u8>) {
        if to == self.process() {
            lock(&self.coord_in).push_back((to, message));
            if let Some(n) = &*lock(&self.coord_notifier) {
                n.notify();
            }
            return;
        }
        if let Some(peer) = self.peers.get(to).and_then(Option::as_ref) {
            lock(&peer.coord_out).push_back(message);
            peer.parker.notifier().notify();
        }
    }

    /// The coordination messages received since the last call, in order.
    pub(crate) fn take_coord(&self) -> Vec<(usize, Vec<u8>)> {
        lock(&self.coord_in).drain(..).collect()
    }

    /// Whether a coordination message is waiting.
    pub(crate) fn has_coord(&self) -> bool {
        !lock(&self.coord_in).is_empty()
    }

    /// Who to wake when a coordination message arrives.
    pub(crate) fn set_coord_notifier(&self, notifier: crate::park::Notifier) {
        *lock(&self.coord_notifier) = Some(notifier);
    }

    /// Whether `subtask` (global) runs in this process.
    fn is_local(&self, subtask: usize) -> bool {
        subtask / self.parallelism == self.me.process as usize
    }

    /// The peer that runs `subtask` (global), if another process does.
    pub(crate) fn peer_of(&self, subtask: usize) -> Option<&Arc<Peer>> {
        if self.is_local(subtask) {
            return None;
        }
        self.peers.get(subtask / self.parallelism)?.as_ref()
    }

    /// The figures so far (the monitor reads them while the job runs).
    pub(crate) fn report(&self) -> NetworkReport {
        self.stats.report()
    }

    /// Wakes every link writer (the last reactor finishing: time to say
    /// bye).
    pub(crate) fn wake_writers(&self) {
        for peer in self.peers.iter().flatten() {
            peer.parker.notifier().notify();
        }
    }

    /// Registers the sending end of a channel to a remote subtask.
    pub(crate) fn add_outbound(&self, channel: ChannelId, mut end: Box<dyn Outbound>) {
        let Some(peer) = self.peer_of(channel.to as usize) else {
            return;
        };
        let mut channels = lock(&peer.channels);
        if let Some(credits) = channels.early_credits.remove(&channel) {
            end.add_credits(credits);
        }
        channels.outbound.insert(channel, Arc::new(Mutex::new(end)));
        drop(channels);
        peer.parker.notifier().notify();
    }

    /// Registers the receiving end of a channel from a remote subtask; the
    /// writer then opens it (grants its first credits).
    pub(crate) fn add_inbound(&self, channel: ChannelId, end: Box<dyn Inbound>) {
        let Some(peer) = self.peer_of(channel.from as usize) else {
            return;
        };
        lock(&peer.channels)
            .inbound
            .insert(channel, Arc::new(Mutex::new(end)));
        peer.parker.notifier().notify();
    }

    /// Starts the reader and writer threads of every connection.
    pub(crate) fn start(self: &Arc<Self>, env: &Arc<dyn RunState>) -> Result<(), JobError> {
        let mut threads = lock(&self.threads);
        for peer in self.peers.iter().flatten() {
            for writer in [false, true] {
                let process = peer.process;
                let (net, peer, env) = (self.clone(), peer.clone(), env.clone());
                let name = format!("spate-net-{}{process}", if writer { "w" } else { "r" });
                let spawned = std::thread::Builder::new().name(name).spawn(move || {
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        if writer {
                            net.write_loop(&peer, &*env)
                        } else {
                            net.read_loop(&peer, &*env)
                        }
                    }));
                    match result {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => env.fail(e),
                        Err(panic) => env.fail(JobError::Network(format!(
                            "the link thread to process {process} panicked: {}",
                            crate::error::panic_message(&*panic)
                        ))),
                    }
                    if writer || env.failed() {
                        // Also ends the reader of a connection that failed.
                        let how = if env.failed() {
                            Shutdown::Both
                        } else {
                            Shutdown::Write
                        };
                        let _ = peer.stream.shutdown(how);
                    }
                });
                match spawned {
                    Ok(t) => threads.push(t),
                    Err(e) => {
                        return Err(JobError::Network(format!(
                            "cannot start a link thread for process {process}: {e}"
                        )))
                    }
                }
            }
        }
        Ok(())
    }

    /// Waits for every link thread (they end once every peer said bye, or
    /// the job failed), then stops the listener. Returns the figures.
    /// `failed`: the run failed; the writers get a moment to send their
    /// `Abort`, then every socket is shut, which ends a thread blocked on
    /// a peer that stopped reading or vanished.
    pub(crate) fn join(&self, failed: bool) -> NetworkReport {
        let threads = std::mem::take(&mut *lock(&self.threads));
        if failed {
            let grace = Instant::now() + Duration::from_secs(1);
            while Instant::now() < grace && !threads.iter().all(|t| t.is_finished()) {
                // The poll interval of a bounded wait on shutdown.
                std::thread::sleep(Duration::from_millis(5));
            }
            for peer in self.peers.iter().flatten() {
                let _ = peer.stream.shutdown(Shutdown::Both);
            }
        }
        for t in threads {
            let _ = t.join();
        }
        self.close_listener();
        self.stats.report()
    }

    /// The leader, before the link threads start: tells every process which
    /// global checkpoint the run restores (0: none), the first frame on
    /// each connection (`docs/cluster.md` §15.5).
    pub(crate) fn send_restore(&self, id: u64) -> Result<(), JobError> {
        let mut message = Vec::new();
        crate::checkpoint::global::CoordMsg::Restore { id }.encode(&mut message);
        let mut out = Vec::new();
        Frame::Coord { message }.encode(&mut out);
        for peer in self.peers.iter().flatten() {
            (&peer.stream).write_all(&out).map_err(|e| {
                JobError::Network(format!(
                    "process {}: telling process {} at {} what to restore: {e}",
                    self.me.process, peer.process, peer.addr
                ))
            })?;
        }
        Ok(())
    }

    /// A process other than the leader, before the link threads start:
    /// waits for the leader's restore decision (the first frame from it;
    /// unbuffered, so nothing after it is read here). Returns the global
    /// checkpoint to restore (0: none).
    pub(crate) fn receive_restore(&self) -> Result<u64, JobError> {
        let Some(leader) = self.peers.first().and_then(Option::as_ref) else {
            return Err(JobError::Network(
                "the leader's restore decision: process 0 is not a peer".into(),
            ));
        };
        let from = |what: String| {
            JobError::Network(format!(
                "process {}: from process 0 at {}: {what}",
                self.me.process, leader.addr
            ))
        };
        let frame = Frame::read_limited(&mut &leader.stream, 1 << 20)
            .map_err(|e| from(format!("no restore decision ({e}): did the process die?")))?;
        match frame {
            Frame::Coord { message } => {
                match crate::checkpoint::global::CoordMsg::decode(&message) {
                    Ok(crate::checkpoint::global::CoordMsg::Restore { id }) => Ok(id),
                    Ok(other) => Err(from(format!(
                        "{other:?} where the restore decision was due"
                    ))),
                    Err(e) => Err(from(format!("a malformed restore decision: {e}"))),
                }
            }
            Frame::Abort { reason } => Err(from(format!("the process failed: {reason}"))),
            other => Err(from(format!(
                "another frame (channel {:?}) where the restore decision was due",
                other.channel()
            ))),
        }
    }

    /// Ends a run that fails after connecting and before its link threads
    /// started (its restore failed): tells every peer why, in an `Abort`,
    /// and closes the connections and the listener.
    pub(crate) fn abort_unstarted(&self, reason: &str) {
        let mut out = Vec::new();
        Frame::Abort {
            reason: format!("process {}: {reason}", self.me.process),
        }
        .encode(&mut out);
        for peer in self.peers.iter().flatten() {
            let _ = (&peer.stream).write_all(&out);
            let _ = peer.stream.shutdown(Shutdown::Both);
        }
        self.close_listener();
    }

    fn close_listener(&self) {
        self.closing.store(true, Ordering::SeqCst);
        // Wakes the blocking accept.
        let _ = TcpStream::connect_timeout(&self.listen_addr, Duration::from_secs(1));
        if let Some(t) = lock(&self.listener).take() {
            let _ = t.join();
        }
    }

    /// Writes what the peer's channels have to send; parks when nothing.
    fn write_loop(&self, peer: &Peer, env: &dyn RunState) -> Result<(), JobError> {
        peer.parker.bind_thread();
        let mut stream = &peer.stream;
        let mut buf = Vec::with_capacity(64 << 10);
        let io_error = |e: std::io::Error| {
            JobError::Network(format!(
                "process {}: writing to process {} at {}: {e}",
                self.me.process, peer.process, peer.addr
            ))
        };
        loop {
            let mut frames = self.fill(peer, &mut buf)?;
            if frames == 0 {
                if env.failed() {
                    let reason = env.error_text().unwrap_or_else(|| "failed".into());
                    let mut out = Vec::new();
                    Frame::Abort { reason }.encode(&mut out);
                    let _ = stream.write_all(&out);
                    let _ = peer.stream.shutdown(Shutdown::Both);
                    return Ok(());
                }
                // A stopped job ends its sources, so its ends drain too:
                // bye only follows the last end.
                if env.local_done() && self.all_sent(peer) {
                    Frame::Bye.encode(&mut buf);
                    stream.write_all(&buf).map_err(io_error)?;
                    self.stats.frames_sent.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .bytes_sent
                        .fetch_add(buf.len() as u64, Ordering::Relaxed);
                    return Ok(());
                }
                peer.parker.prepare_park();
                frames = self.fill(peer, &mut buf)?;
                if frames == 0 && !env.failed() {
                    peer.parker.block(Duration::from_millis(100));
                }
                peer.parker.unpark();
            }
            if !buf.is_empty() {
                stream.write_all(&buf).map_err(io_error)?;
                self.stats
                    .frames_sent
                    .fetch_add(frames as u64, Ordering::Relaxed);
                self.stats
                    .bytes_sent
                    .fetch_add(buf.len() as u64, Ordering::Relaxed);
                let written = buf.len();
                buf.clear();
                // Busy: let the next round's batches gather (fewer, larger
                // writes; fewer wake-ups of this thread and the peer's
                // reader). A batch that finds the link idle leaves at once.
                if written >= BUSY_WRITE_BYTES && !self.busy_linger.is_zero() {
                    std::thread::sleep(self.busy_linger);
                }
            }
        }
    }

    /// Every outbound channel to `peer` sent its end, and every
    /// coordination message went out.
    fn all_sent(&self, peer: &Peer) -> bool {
        lock(&peer.coord_out).is_empty()
            && lock(&peer.channels)
                .outbound
                .values()
                .all(|c| lock(c).ended())
    }

    /// One round of the writer: credits for inbound channels, then notices
    /// and data of outbound ones, into `buf`. Returns the frames added.
    fn fill(&self, peer: &Peer, buf: &mut Vec<u8>) -> Result<usize, JobError> {
        let (inbound, outbound): (Vec<_>, Vec<_>) = {
            let c = lock(&peer.channels);
            (
                c.inbound.values().cloned().collect(),
                c.outbound.values().cloned().collect(),
            )
        };
        let mut frames = 0;
        for message in lock(&peer.coord_out).drain(..) {
            Frame::Coord { message }.encode(buf);
            frames += 1;
        }
        for end in inbound {
            if let Some(frame) = lock(&end).grant() {
                frame.encode(buf);
                frames += 1;
            }
        }
        for end in outbound {
            frames += lock(&end)
                .fill(buf)
                .map_err(|e| JobError::Network(e.to_string()))?;
            if buf.len() >= 256 << 10 {
                break;
            }
        }
        Ok(frames)
    }

    /// Reads frames from the peer until it says bye and closes, or the job
    /// fails.
    fn read_loop(&self, peer: &Peer, env: &dyn RunState) -> Result<(), JobError> {
        let mut stream = std::io::BufReader::with_capacity(256 << 10, &peer.stream);
        let from = |what: String| {
            JobError::Network(format!(
                "process {}: from process {} at {}: {what}",
                self.me.process, peer.process, peer.addr
            ))
        };
        let mut spare = None;
        loop {
            let frame = match Frame::read_reusing(&mut stream, wire::MAX_FRAME, &mut spare) {
                Ok(frame) => frame,
                Err(e) => {
                    if peer.bye.load(Ordering::SeqCst) || env.failed() {
                        return Ok(());
                    }
                    return Err(from(format!(
                        "the connection failed before the peer finished ({e}): did the process die?"
                    )));
                }
            };
            self.stats.frames_received.fetch_add(1, Ordering::Relaxed);
            self.stats
                .bytes_received
                .fetch_add(frame_size(&frame), Ordering::Relaxed);
            match frame {
                Frame::Open { channel, credits } | Frame::Credit { channel, credits } => {
                    self.check_channel(peer, channel, false)
                        .map_err(|e| from(e.to_string()))?;
                    let mut c = lock(&peer.channels);
                    match c.outbound.get(&channel) {
                        Some(end) => lock(end).add_credits(credits),
                        None => {
                            let early = c.early_credits.entry(channel).or_insert(0);
                            *early = early.saturating_add(credits);
                        }
                    }
                    drop(c);
                    peer.parker.notifier().notify();
                }
                Frame::Abort { reason } => {
                    return Err(from(format!("the process failed: {reason}")));
                }
                Frame::Bye => {
                    peer.bye.store(true, Ordering::SeqCst);
                    let unfinished = lock(&peer.channels)
                        .inbound
                        .values()
                        .filter(|c| !lock(c).ended())
                        .count();
                    if unfinished > 0 {
                        return Err(from(format!(
                            "the process stopped with {unfinished} stream(s) to this process unfinished"
                        )));
                    }
                }
                Frame::Coord { message } => {
                    // Only the leader (process 0) and the parts talk.
                    if self.me.process != 0 && peer.process != 0 {
                        return Err(from(
                            "a checkpoint coordination message between two processes that are not the leader".into(),
                        ));
                    }
                    let mut inbox = lock(&self.coord_in);
                    if inbox.len() >= MAX_COORD_WAITING {
                        return Err(from(format!(
                            "more than {MAX_COORD_WAITING} checkpoint coordination messages waiting"
                        )));
                    }
                    inbox.push_back((peer.process, message));
                    drop(inbox);
                    if let Some(n) = &*lock(&self.coord_notifier) {
                        n.notify();
                    }
                }
                Frame::Hello { .. } | Frame::Proof { .. } => {
                    return Err(from("a handshake frame after the handshake".into()));
                }
                data => {
                    let channel = data.channel().expect("data frames name a channel");
                    self.check_channel(peer, channel, true)
                        .map_err(|e| from(e.to_string()))?;
                    let end = lock(&peer.channels).inbound.get(&channel).cloned();
                    let Some(end) = end else {
                        return Err(from(format!(
                            "data for channel {channel:?}, which this process never opened"
                        )));
                    };
                    lock(&end).deliver(&data).map_err(|e| from(e.to_string()))?;
                    if let Frame::Records { archive, .. } = data {
                        spare = Some(archive);
                    }
                }
            }
        }
    }

    /// A frame from `peer` about `channel` must name one of the peer's
    /// subtasks and one of this process's, the right way round.
    fn check_channel(
        &self,
        peer: &Peer,
        channel: ChannelId,
        inbound: bool,
    ) -> Result<(), NetError> {
        let (theirs, ours) = if inbound {
            (channel.from, channel.to)
        } else {
            (channel.to, channel.from)
        };
        let p = self.parallelism as u32;
        if theirs / p != peer.process as u32 || ours / p != self.me.process {
            return Err(NetError::Protocol {
                channel: Some(channel),
                what: "a channel between subtasks this connection does not join".into(),
            });
        }
        Ok(())
    }
}

/// TCP keepalive on a data-plane socket: a peer whose machine vanished
/// without closing (no FIN, no RST) is noticed within about 8 s of
/// silence, and the reader's error fails the job.
fn keepalive(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let fd = stream.as_raw_fd();
    for (level, name, value) in [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 5),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 1),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3),
    ] {
        let value: libc::c_int = value;
        // The socket is open (owned by `stream`) and the option value
        // lives across the call.
        // SAFETY: a valid fd, a pointer to a c_int and its size.
        unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

fn frame_size(frame: &Frame) -> u64 {
    match frame {
        Frame::Records { archive, .. } => 17 + archive.len() as u64,
        Frame::Coord { message } => 5 + message.len() as u64,
        _ => 17,
    }
}

/// Connects to process `process` at `addr` (retrying while it is not up
/// yet) and authenticates.
fn connect_to(
    process: usize,
    addr: SocketAddr,
    secret: &[u8],
    job: &[u8],
    me: Identity,
    deadline: Instant,
) -> Result<TcpStream, JobError> {
    let mut last_error = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(JobError::Network(format!(
                "process {} could not reach process {process} at {addr}: {last_error}",
                me.process
            )));
        }
        match TcpStream::connect_timeout(&addr, left.min(Duration::from_secs(1))) {
            Ok(mut stream) => {
                let _ = stream.set_read_timeout(Some(left.max(Duration::from_secs(1))));
                let peer = auth::handshake(&mut stream, secret, job, Role::Connector, me).map_err(
                    |e| {
                        JobError::Network(format!(
                            "process {} at {addr} refused or failed the handshake: {e}",
                            process
                        ))
                    },
                )?;
                if peer.process as usize != process {
                    return Err(JobError::Network(format!(
                        "{addr} answered as process {}, not {process}: check the peer list",
                        peer.process
                    )));
                }
                let _ = stream.set_read_timeout(None);
                return Ok(stream);
            }
            Err(e) => {
                last_error = e.to_string();
                // Not listening yet: try again shortly.
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// The listener thread: hands each connection to a handshake thread of
/// its own (at most [`MAX_HANDSHAKES`] at once, each bounded by a 10 s
/// deadline), so that a slow or silent stranger delays no one; refuses (and
/// counts) everything once the cluster is complete, until the run closes.
/// The process that waits in [`Network::connect`] checks who an
/// authenticated peer claims to be.
#[allow(clippy::too_many_arguments)]
fn listen(
    listener: TcpListener,
    secret: Vec<u8>,
    job: Vec<u8>,
    me: Identity,
    stats: Arc<NetStats>,
    closing: Arc<AtomicBool>,
    complete: Arc<AtomicBool>,
    accepted: mpsc::Sender<(usize, TcpStream)>,
) {
    let secret: Arc<[u8]> = secret.into();
    let job: Arc<[u8]> = job.into();
    let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for incoming in listener.incoming() {
        if closing.load(Ordering::SeqCst) {
            return;
        }
        let Ok(mut stream) = incoming else {
            continue;
        };
        let from = stream
            .peer_addr()
            .map_or_else(|_| "?".into(), |a| a.to_string());
        if complete.load(Ordering::SeqCst) {
            refuse(&stats, me, &from, "every peer is connected already");
            continue;
        }
        if running.load(Ordering::SeqCst) >= MAX_HANDSHAKES {
            refuse(&stats, me, &from, "too many handshakes in progress");
            continue;
        }
        running.fetch_add(1, Ordering::SeqCst);
        let (secret, job, stats, accepted, count) = (
            secret.clone(),
            job.clone(),
            stats.clone(),
            accepted.clone(),
            running.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name("spate-net-auth".into())
            .spawn(move || {
                let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
                let result = auth::handshake(
                    &mut Deadline(&mut stream, deadline),
                    &secret,
                    &job,
                    Role::Acceptor,
                    me,
                );
                match result {
                    Ok(peer) => {
                        let _ = stream.set_read_timeout(None);
                        let _ = stream.set_write_timeout(None);
                        let _ = accepted.send((peer.process as usize, stream));
                    }
                    Err(e) => refuse(&stats, me, &from, &e.to_string()),
                }
                count.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            running.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Handshakes in progress at once; more connections are refused.
const MAX_HANDSHAKES: usize = 16;
/// The longest a handshake may take, all of it.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn refuse(stats: &NetStats, me: Identity, from: &str, why: &str) {
    stats.refused.fetch_add(1, Ordering::Relaxed);
    eprintln!(
        "spate: process {} refused a data-plane connection from {from}: {why}",
        me.process
    );
}

/// A stream whose reads and writes share one deadline (a peer that drips
/// bytes cannot stretch the handshake past it).
struct Deadline<'a>(&'a mut TcpStream, Instant);

impl Deadline<'_> {
    fn arm(&mut self, write: bool) -> std::io::Result<()> {
        let left = self.1.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the handshake took too long",
            ));
        }
        if write {
            self.0.set_write_timeout(Some(left))
        } else {
            self.0.set_read_timeout(Some(left))
        }
    }
}

impl std::io::Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.arm(false)?;
        self.0.read(buf)
    }
}

impl std::io::Write for Deadline<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.arm(true)?;
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}
