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
//! Crate map (see `ARCHITECTURE.md`): [`ring`] (the SPSC ring), [`keygroup`]
//! (stable hash and key-group ranges), [`state`] (keyed state), [`dataflow`]
//! (the API and operators), [`window`], [`source`], [`sink`], [`sim`] (the
//! deterministic simulator), [`inspect`] (checkpointed state read back for
//! tools); the glommio runtime is [`Job`].

mod archive;
pub mod checkpoint;
mod config;
mod data;
pub mod dataflow;
mod env;
mod error;
pub mod inspect;
mod job;
pub mod keygroup;
mod park;
pub mod restart;
pub mod ring;
mod runtime;
pub mod sim;
pub mod sink;
pub mod source;
pub mod state;
mod sync;
pub mod time;
pub mod window;
mod worker;

pub use checkpoint::coordinator::CheckpointSummary;
pub use checkpoint::{
    CheckpointConfig, CheckpointMode, CheckpointStats, CheckpointStatus, RestoreFrom,
};
pub use config::{JobConfig, MAX_CHECKPOINT_TIME_MS};
pub use dataflow::{
    CoProcessFunction, ConnectedStreams, Data, Dataflow, ExchangeData, KeyedContext,
    KeyedProcessFunction, KeyedStream, Record, Stream,
};
pub use error::{
    CheckpointError, ConfigError, JobError, ProcessError, RestoreError, SinkError, SourceError,
};
pub use job::{Job, JobHandle, JobReport};
pub use keygroup::Key;
pub use park::Notifier;
pub use restart::{RestartStats, RestartStrategy};
pub use state::{KeyScope, ListState, MapState, StateData, StateRegistry, ValueState};
pub use time::{TimeDomain, Timestamp, WatermarkStrategy};
pub use worker::SubtaskReport;
