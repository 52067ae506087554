//! The embedding service's way in and out of a running job, exactly once.
//!
//! **Ingress** ([`ingress`]): a service thread pushes records through an
//! [`IngressHandle`]; every record gets a *position* (per ingress, from 0,
//! one more per record). Position `p` belongs to split `p mod S` (`S` the
//! job's max parallelism), and splits are owned by source subtasks in ranges
//! like key groups, so checkpoints record, per split, the next position it
//! expects, and a restore on any parallelism resumes every split where its
//! checkpoint left it. This is the role Kafka's partition offsets play for a
//! Kafka source, with the service's own buffer or log as the partition:
//!
//! - [`IngressHandle::durable`]: every position below it is covered by a
//!   completed checkpoint (its effects are in the state and, with a
//!   committed egress, in committed output). A restore never needs it again:
//!   the service may forget it (Kafka: the consumer group's committed offset).
//! - After a restore (a restart by the supervisor, or a new process resuming
//!   a checkpoint), the next push returns [`PushError::Rewind`] with the
//!   position to push from again, in the same order. Sources drop what their
//!   split already consumed, so the replay is exact; a record pushed out of
//!   order or skipped fails the job, naming the positions.
//! - [`ReplayIngress`] keeps the records that are not yet durable in memory
//!   and replays them itself, bounded by a capacity (a push waits, without
//!   spinning, while the buffer is full: backpressure until a checkpoint
//!   completes). Services that keep their own log use the handle directly.
//! - End of input is a position too ([`IngressHandle::close`]): the job
//!   finishes once every split has consumed everything below it, so a run
//!   restarted after the close still replays up to it.
//!
//! **Egress** ([`egress`], [`egress_epochs`], [`egress_committed`]): sink
//! subtasks hand batches to one service thread through a ring each.
//!
//! - *Immediate* ([`egress`]): records as soon as the sink has them. After a
//!   restore the service may see some again (at least once). Lowest latency.
//! - *Epochs* ([`egress_epochs`], an [`EpochReceiver`]): the same records at
//!   once, plus where each checkpoint's epoch ends. [`Delivery::Sealed`]`(n)`
//!   follows every record of checkpoint `n`'s epoch (the records since the
//!   previous seal, from every subtask: the receiver aligns the subtasks'
//!   rings on the seal the way operators align barriers). The service makes
//!   them durable on its side, then calls [`EpochReceiver::acknowledge`]:
//!   checkpoint `n` completes only after that, so a completed checkpoint
//!   never covers output the service could still lose. [`Delivery::Committed`]
//!   says a checkpoint completed (its epoch and all before it are final);
//!   [`Delivery::Restored`] that a run restored checkpoint `r`: epochs up to
//!   `r` are final, everything after it is void and comes again. Flink's
//!   two-phase commit with the service as the transaction's store.
//! - *Committed* ([`egress_committed`], a [`CommittedReceiver`]): epochs
//!   kept in the receiver and released only when their checkpoint completes,
//!   so the service sees each result exactly once without any logic of its
//!   own, across restarts of the same process. The cost is latency: on
//!   average half a checkpoint interval plus the checkpoint's duration.
//!
//! Every ring is created per run when the run's sources and sinks open, so
//! nothing of a failed run leaks into the next; service threads wait by
//! parking, never by spinning (they share the cores with the reactors).
//!
//! Push and receive on different threads when the egress is epochs or
//! committed: a full [`ReplayIngress`] waits for a checkpoint, and a
//! checkpoint waits for the receiver's acknowledgement. A restore that falls
//! back past a damaged newest checkpoint to an older one (`docs/checkpoints.md`
//! §8.1) is the one case these helpers cannot hide: [`ReplayIngress`] no
//! longer holds what the older checkpoint needs and says so
//! ([`ReplayError::CannotReplay`]), and a [`CommittedReceiver`] has already
//! released epochs the older checkpoint does not cover (they come again). A
//! service with its own log and an [`EpochReceiver`] handles it by pushing
//! from the rewind and truncating to [`Delivery::Restored`].
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use spate::checkpoint::CheckpointConfig;
//! use spate::embed::{egress_committed, ingress, ReplayIngress};
//! use spate::{Job, JobConfig, KeyedContext, RestartStrategy, WatermarkStrategy};
//!
//! let dir = std::env::temp_dir().join(format!("spate-embed-{}", std::process::id()));
//! let config = JobConfig {
//!     parallelism: 2,
//!     checkpoint: Some(CheckpointConfig::new(&dir, 100)),
//!     restart: RestartStrategy::FixedDelay { attempts: 3, delay: std::time::Duration::ZERO },
//!     ..JobConfig::default()
//! };
//! let (input, sources) = ingress::<u64>(2, 1024);
//! let (sinks, results) = egress_committed::<(u64, u64)>(2, 64);
//! let job = Job::new(config).start(move |df| {
//!     df.source("requests", sources.take(df.subtask()), WatermarkStrategy::none())
//!         .key_by(|x: &u64| x % 10)
//!         .process("count", |state| {
//!             let count = state.value_state::<u64>("count");
//!             move |x: u64, ctx: &mut KeyedContext<u64, (u64, u64)>| {
//!                 let n = count.update(ctx, || 0, |c| { *c += 1; *c });
//!                 ctx.emit((x % 10, n));
//!                 Ok(())
//!             }
//!         })
//!         .sink("results", sinks.take(df.subtask()));
//! })?;
//! // Each result once, when the checkpoint that covers it has completed.
//! let reader = std::thread::spawn(move || results.map(|r| r.value).collect::<Vec<_>>());
//! // Each record pushed once: kept until a checkpoint covers it, replayed
//! // by itself after a restart.
//! let (mut input, _) = ReplayIngress::new(input, 100_000)?;
//! for x in 0..1_000 {
//!     input.push(x)?;
//! }
//! input.finish()?; // ends the input; returns once all of it is durable
//! job.join()?;
//! assert_eq!(reader.join().unwrap().len(), 1_000);
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(())
//! # }
//! ```

mod egress;
mod ingress;
mod replay;

pub use egress::{
    egress, egress_committed, egress_epochs, CommittedReceiver, Delivery, EgressReceiver,
    EgressSink, EgressSinks, EpochReceiver,
};
pub use ingress::{ingress, IngressHandle, IngressSource, IngressSources, Position, PushError};
pub use replay::{ReplayError, ReplayIngress};

/// How long a waiting service thread sleeps at most before it re-checks its
/// condition by itself (a safety net: the changes it waits for wake it).
const RECHECK: std::time::Duration = std::time::Duration::from_millis(20);
