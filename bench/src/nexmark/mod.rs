//! The Nexmark benchmark workload: the event model ([`model`]), a deterministic,
//! partitionable generator ([`generator`]), JSON-lines output ([`json`]), the result
//! rows of the queries ([`rows`]) and a plain sequential reference implementation of
//! the queries ([`reference`](mod@reference)) that the engine's answers are checked against.
//!
//! Nothing here uses the engine: the engine-side queries live with the benchmark
//! harness, and must produce the [`rows`] types so their output can be compared.

pub mod generator;
pub mod json;
pub mod model;
pub mod reference;
mod rng;
pub mod rows;

pub use generator::{Generator, GeneratorConfig, Sampling};
pub use model::{Auction, Bid, Event, EventKind, Origin, Person};
