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
/// condition by itself (a safety net: every change also wakes it).
const RECHECK: std::time::Duration = std::time::Duration::from_millis(20);
