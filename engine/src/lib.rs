//! # Spate
//!
//! A thread-per-core stream processing engine: one pinned glommio reactor per
//! core, each running one subtask of every operator; records cross cores only
//! at `key_by` exchanges, in batches, through lock-free single-producer rings.
//! State is keyed, partitioned into key groups, and rkyv-archivable so that
//! checkpoints can snapshot each key group by itself.
//!
//! ```
//! use spate::{Job, JobConfig, WatermarkStrategy};
//! use spate::source::VecSource;
//! use spate::sink::Collector;
//! use std::sync::Arc;
//!
//! // (word, timestamp) pairs; count words per key.
//! let words: Arc<Vec<(String, u64)>> = Arc::new(
//!     ["a", "b", "a", "c", "a", "b"].iter().enumerate()
//!         .map(|(i, w)| (w.to_string(), i as u64)).collect());
//! let counts = Collector::new();
//! let out = counts.clone();
//! Job::new(JobConfig::with_parallelism(2)).run(move |df| {
//!     df.source("words", VecSource::new(words.clone()),
//!               WatermarkStrategy::monotonous(|w: &(String, u64)| w.1))
//!         .key_by(|w| w.0.clone())
//!         .process("count", |state| {
//!             let count = state.value_state::<u64>("count");
//!             move |w: (String, u64), ctx: &mut spate::KeyedContext<String, (String, u64)>| {
//!                 let n = count.update(ctx, || 0, |c| { *c += 1; *c });
//!                 ctx.emit((w.0, n));
//!                 Ok(())
//!             }
//!         })
//!         .sink("out", out.sink());
//! }).unwrap();
//! let mut finals = counts.take();
//! finals.sort();
//! assert!(finals.contains(&("a".to_string(), 3)));
//! ```
//!
//! The user API: [`Job`] and [`JobConfig`] run a job, [`Dataflow`] and
//! [`Stream`] declare it, [`state`] holds keyed state handles, [`window`]
//! event-time windows, [`source`] and [`sink`] the ways in and out
//! (including exactly-once files), [`embed`] the embedding service's
//! acknowledged ingress and committed egress, [`checkpoint`] and
//! [`restart`] the fault tolerance settings, [`time`] clocks and
//! watermarks, [`schema`] the self-description of state types that
//! checkpoints record (`#[derive(Schema)]` beside rkyv's derives).
//!
//! [`internals`] exposes, for the project's own tools, tests and benchmarks,
//! what is not a stable API: the deterministic simulator, checkpointed state
//! read back for inspection, key-group arithmetic. `ARCHITECTURE.md` maps
//! the modules behind all of it.

// The code `#[derive(Schema)]` generates names the engine `::spate`, also
// for the derives of the engine's own types (`window::WindowResult`).
extern crate self as spate;

mod archive;
pub mod checkpoint;
mod config;
mod data;
pub mod dataflow;
pub mod embed;
mod env;
mod error;
mod inspect;
mod job;
mod keygroup;
mod message;
mod metrics;
pub mod monitor;
mod net;
mod park;
pub mod restart;
mod ring;
mod rng;
mod runtime;
pub mod schema;
mod sim;
pub mod sink;
pub mod source;
pub mod state;
mod sync;
pub mod time;
mod watch;
pub mod window;
mod worker;

pub use checkpoint::coordinator::CheckpointSummary;
pub use checkpoint::{
    CheckpointConfig, CheckpointMode, CheckpointStats, CheckpointStatus, RestoreFrom,
};
pub use config::{
    ClusterConfig, JobConfig, DEFAULT_BUSY_LINGER, MAX_CHECKPOINT_TIME_MS, MIN_CLUSTER_SECRET,
};
pub use dataflow::{
    CoProcessFunction, ConnectedStreams, Data, Dataflow, ExchangeData, KeyedContext,
    KeyedProcessFunction, KeyedStream, Record, Stream, WatermarkContext,
};
pub use error::{
    CheckpointError, ConfigError, JobError, ProcessError, RestoreError, SinkError, SourceError,
};
pub use job::{Job, JobFailer, JobHandle, JobReport};
pub use keygroup::Key;
pub use monitor::MonitorConfig;
pub use net::NetworkReport;
pub use park::Notifier;
pub use restart::{RestartStats, RestartStrategy};
pub use schema::Schema;
/// `#[derive(Schema)]`: describes a struct's or enum's archived layout
/// (see [`schema`]); use it beside rkyv's `Archive` derive.
pub use spate_derive::Schema;
pub use state::{
    KeyGroup, KeyGroupState, KeyScope, ListState, MapState, StateData, StateRegistry, ValueState,
};
pub use time::{TimeDomain, Timestamp, WatermarkStrategy};
pub use worker::SubtaskReport;

/// Internals for the project's own tools (`spate-ckpt`), tests and
/// benchmarks: not a stable API, and not needed to write or run a job.
pub mod internals {
    /// The deterministic simulator: every subtask of a job on one thread,
    /// stepped in a seeded order with a virtual clock and simulated storage.
    pub mod sim {
        pub use crate::sim::{SimReport, Simulation, SplitMix64};
    }

    /// Checkpointed keyed state read back and decoded as a restore does.
    pub mod inspect {
        pub use crate::inspect::*;
    }

    /// The stable key hash and key-group arithmetic (Flink's
    /// `KeyGroupRangeAssignment`).
    pub mod keygroup {
        pub use crate::keygroup::*;
    }

    /// The single-producer single-consumer ring between cores.
    pub mod ring {
        pub use crate::ring::*;
    }
}
