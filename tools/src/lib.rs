//! `spate-ckpt`: inspects a Spate checkpoint directory; as a library, the
//! same tool with a service's own displays of its types ([`run_with`]).
//!
//! Owns only presentation: it reads a store through
//! [`spate_storage::StoreReader`] (which never modifies anything), decodes the
//! engine's [`spate::checkpoint::CheckpointMetadata`], and decodes keyed state,
//! timers and in-flight records from the schemas the checkpoint recorded
//! ([`spate::schema`]): any job's state, field by field, with no knowledge of
//! the job's code ([`decode`], [`entries`]). It never writes to a store
//! except `gc --yes`, which deletes what [`spate_storage::gc`] allows
//! (conservative, so a job may be writing to the same directory). It decodes
//! as much as it can from a damaged store (a manifest with a corrupt tail
//! still lists the checkpoints before the damage; a checkpoint whose metadata
//! does not decode is still listed, with the error; a key group that does not
//! decode is reported and the others shown). It depends on the engine and the
//! storage crates only, never on a job's crate or the benchmarks.
//!
//! Commands: `list`, `show`, `dump`, `verify`, `diff`, `gc`. Each takes `--json`
//! for one stable JSON document (documented on each command and in
//! `docs/spate-ckpt.md`) and otherwise prints aligned tables.
//!
//! `cli.rs` holds the command line and sends each command to its module
//! (`list`, `show`, `dump`, `verify`, `diff`, `gc`); [`store`] opens a store
//! and finds a checkpoint, `output` prints tables, [`display`] holds custom
//! displays. The binary `spate-ckpt` is one call of [`run`].
//!
//! A service's own inspection binary, showing its `Money` type its own way:
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     spate_tools::run_with(spate_tools::Displays::new().with("Money", |m| {
//!         let cents = m.value["cents"].as_u64().unwrap_or(0);
//!         serde_json::json!(format!("{}.{:02}", cents / 100, cents % 100))
//!     }))
//! }
//! ```

mod cli;
mod cluster;
pub mod decode;
mod diff;
pub mod display;
mod dump;
pub mod entries;
mod gc;
mod list;
mod output;
mod show;
pub mod store;
mod verify;

use std::process::ExitCode;

pub use display::{Displays, Shown};

/// Runs `spate-ckpt` on the process's command line, every type shown by
/// default. Call it from `main` before starting threads (it restores the
/// default disposition of SIGPIPE, see `cli.rs`).
pub fn run() -> ExitCode {
    run_with(Displays::new())
}

/// Runs `spate-ckpt` on the process's command line, showing the named types
/// of `displays` their way. Call it from `main` before starting threads.
pub fn run_with(displays: Displays) -> ExitCode {
    cli::main(displays)
}
