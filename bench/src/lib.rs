//! `spate-bench` as a library: the Nexmark workload (event model, generator, JSON
//! lines, reference query answers) that the `spate-bench` binary and the tests use.
//!
//! This crate depends on the engine's public API only, and nothing depends on it.
//! The library part never spawns threads or touches the file system itself: callers
//! hand it writers and slices.

pub mod nexmark;
