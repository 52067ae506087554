//! `spate-bench` as a library: the Nexmark workload (event model, generator, JSON
//! lines, reference query answers), the queries written on Spate's public API,
//! and the harness pieces the `spate-bench` binary and the tests use.
//!
//! This crate depends on the engine's public API only, and nothing depends on it.
//! [`nexmark`] never spawns threads or touches the file system itself: callers
//! hand it writers and slices. [`queries`] only declares dataflows. [`source`]
//! and [`sink`] are the benchmark's source and sink; [`run`] runs a query on the
//! glommio runtime; [`report`] writes the report files. [`checkpoints`]
//! configures the engine's checkpoints and summarises their statistics,
//! [`resume`] decides whether a run resumes an unfinished one, and
//! [`checkpoint_bench`] is the checkpoint benchmark (`spate-bench checkpoints`);
//! [`recovery_bench`] measures how fast a job with large state is back after a
//! restart (`spate-bench recovery`); [`embed_bench`] the round trip of an
//! embedding service, immediate against exactly once (`spate-bench embed`);
//! [`cli`] is the command line.

pub mod checkpoint_bench;
pub mod checkpoints;
pub mod cli;
pub mod cluster;
pub mod embed_bench;
pub mod kafka;
pub mod nexmark;
pub mod queries;
pub mod recovery_bench;
pub mod remote_bench;
pub mod remote_run;
pub mod report;
pub mod resume;
pub mod run;
pub mod sink;
pub mod source;
