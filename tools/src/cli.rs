//! The command line of `spate-ckpt` (clap): which command runs, with which
//! arguments, and the exit status. Each command's work is in its module.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::display::Displays;
use crate::store::{open, Checkpoint};
use crate::{cluster, diff, dump, gc, list, show, verify};

#[derive(Parser)]
#[command(
    name = "spate-ckpt",
    about = "Inspect Spate checkpoints (read-only, except `gc --yes`)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Every checkpoint in the manifest.
    ///
    /// The retained ones, and those the manifest records as discarded by
    /// retention (until it is next rewritten: at every store open).
    ///
    /// JSON: an array of objects with `id`, `status` (`completed` or
    /// `discarded`), `retained`, `mode`, `incremental`, `timestamp_ms`,
    /// `trigger_ms`, `completed_ms`, `duration_ms`, `bytes`, `written_bytes`,
    /// `in_flight_bytes`, `fingerprint` (16 hex digits), `cores`,
    /// `max_parallelism`, `cause`, `handles`, and `error` (null, or why the
    /// metadata does not decode; the metadata fields are then null).
    List {
        /// The checkpoint directory.
        dir: PathBuf,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Statistics and layout of one checkpoint.
    ///
    /// JSON: the `list` fields plus `subtasks` (per subtask `sync_us`, `async_us`,
    /// `alignment_us`, `state_bytes`, `delta_bytes`, `in_flight_bytes`,
    /// `switched_to_unaligned`), `operators` (per operator `key_groups`, `entries`,
    /// `bytes`, `tables` with `table`, `type_name`, `key_groups`, `entries`,
    /// `bytes`, `base_bytes`, `delta_bytes`, `max_chain_len`), `in_flight`
    /// (`operator`, `input`, `from`, `to`, `records`, `bytes`), `sources`
    /// (`source`, `subtask`, `offset`, `split`: `subtask` names a split), and with `--key-groups` `key_groups`
    /// (`operator`, `table`, `key_group`, `entries`, `bytes`, `base_bytes`,
    /// `chain_len`).
    Show {
        /// The checkpoint directory.
        dir: PathBuf,
        /// Checkpoint id.
        id: u64,
        /// Also print the per-key-group table.
        #[arg(long)]
        key_groups: bool,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// The state entries of one operator, and the records in flight into it.
    ///
    /// Every key group's chain (base, then deltas) decoded as a restore would
    /// load it, from the schema the checkpoint recorded: any job's types, field
    /// by field. With `--raw`, raw blocks (hex and UTF-8 preview) instead. The
    /// records an unaligned checkpoint persisted in flight follow (not with
    /// `--key`, `--key-group`, or a `--table` other than `__in_flight`).
    /// Exit status 1 when a key group does not read or decode (the others are
    /// still shown).
    ///
    /// JSON: `{ "checkpoint", "retained", "operator", "tables": [{ "table",
    /// "type_name", "decoded", "key_groups", "matched", "entries": [{
    /// "key_group", "key", "value" }], "raw": [{ "key_group", "checkpoint",
    /// "delta", "segment", "offset", "bytes", "hex", "utf8", "truncated" }] }],
    /// "in_flight": [{ "input", "from", "to", "type_name", "records", "bytes",
    /// "entries": [{ "timestamp", "value" }] }], "matched", "shown",
    /// "truncated", "errors": [{ "checkpoint", "operator", "table",
    /// "key_group", "segment", "offset", "error" }] }`.
    Dump {
        /// The checkpoint directory.
        dir: PathBuf,
        /// Checkpoint id.
        id: u64,
        /// The operator (its name in the job).
        #[arg(long)]
        operator: String,
        /// Only this state of the operator (`__timers` for its timers).
        #[arg(long)]
        table: Option<String>,
        /// Only this key group.
        #[arg(long)]
        key_group: Option<u32>,
        /// Only entries with this key, as shown (`17`, `abc`, `(1, 2)`, `0x0a0b`).
        #[arg(long)]
        key: Option<String>,
        /// At most this many rows (entries or raw blocks).
        #[arg(long)]
        limit: Option<usize>,
        /// Bytes shown of each raw block.
        #[arg(long, default_value_t = 64)]
        raw_bytes: usize,
        /// Show every table's raw blocks instead of its decoded entries.
        #[arg(long)]
        raw: bool,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Checks checkpoints and segments; exit status 1 on any problem.
    ///
    /// Checks every block CRC and handle of the checkpoints (all, or `ID`), that
    /// their metadata decodes and names valid handles and schemas, and (without `ID`) scans
    /// every segment file. Exit status 1 when anything is wrong (segment files
    /// without a manifest too); 2 when `DIR` does not exist or holds no store
    /// (no manifest, no segment files). Problems are printed grouped: one line
    /// per checkpoint, file and kind of problem, with the count of blocks and
    /// the first offset.
    ///
    /// JSON: `{ "ok": bool, "checkpoints": [ids checked], "segments": [names
    /// scanned], "groups": [{ "checkpoint", "file", "problem": kind, "count",
    /// "blocks": count or null, "first_offset", "first_error" }], "problems":
    /// [{ "checkpoint": id or null, "file": segment or manifest file or null,
    /// "offset": offset or null, "error": text }] }`, printed also when there
    /// is no store to verify. On a cluster job's directory or tier: `{ "ok",
    /// "checkpoints": [global ids], "problems": [{ "checkpoint", "error" }]
    /// (records and parts that do not read or merge), "stores": [one document
    /// as above per part store, with its "dir"; `{ "ok": false, "error",
    /// "dir" }` for one that cannot be opened] }`.
    Verify {
        /// The checkpoint directory.
        dir: PathBuf,
        /// Only this checkpoint.
        id: Option<u64>,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// What changed in the keyed state from checkpoint `A` to checkpoint `B`.
    ///
    /// Per operator, state and key group: entries added, removed, changed and
    /// unchanged, and bytes; then the first `--entries` entries that differ,
    /// a changed one with the fields that differ. Exit status 1 when a key
    /// group does not read or decode.
    ///
    /// JSON: `{ "a", "b", "operators": [{ "operator", counts, bytes, "tables":
    /// [{ "table", "type_name", "compared", "differing_key_groups", counts,
    /// bytes, "key_groups": [{ "key_group", "entries_a", "entries_b",
    /// "same_blocks", "compared", counts, bytes }] }] }], "totals": { counts,
    /// bytes }, "entries": [{ "operator", "table", "key_group", "key",
    /// "change", "a", "b", "fields": [{ "field", "a", "b" }] }],
    /// "entries_truncated", "errors": [as dump] }`, where counts are `added`,
    /// `removed`, `changed`, `unchanged` (null for a key group that was not
    /// compared) and bytes are `bytes_a`, `bytes_b`, `new_bytes` (blocks of B
    /// not in A).
    Diff {
        /// The checkpoint directory.
        dir: PathBuf,
        /// The older checkpoint.
        a: u64,
        /// The newer checkpoint.
        b: u64,
        /// At most this many entries that differ are listed (timers are
        /// only counted).
        #[arg(long, default_value_t = 20)]
        entries: usize,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// What garbage collection may delete; deletes it with `--yes`.
    ///
    /// Segments no retained checkpoint references and that no running job can
    /// still be writing or committing
    /// (see `spate_storage::gc`), older manifest generations and stale temporary
    /// files. A dry run unless `--yes`.
    ///
    /// JSON: `{ "dry_run": bool, "manifest": file or null, "segments": [{ "file",
    /// "bytes", "live_bytes", "blocks", "delete": bool, "reason" }], "manifests":
    /// [{ "file", "bytes", "delete", "reason" }], "orphan_cleanup_skipped": bool,
    /// "reclaimable_bytes", "deleted": [files], "failed": [{ "file", "error" }]
    /// }`.
    Gc {
        /// The checkpoint directory, or a remote tier's URL.
        dir: PathBuf,
        /// Delete the files (otherwise only list them).
        #[arg(long)]
        yes: bool,
        /// Remote tier only: checkpoints kept (at least the job's `retained`,
        /// or a running job may reference what this deletes).
        #[arg(long, default_value_t = 3)]
        retain: usize,
        /// Remote tier only: unreferenced objects younger than this are kept
        /// (an upload in progress may reference them; at least twice the
        /// job's checkpoint timeout).
        #[arg(long, default_value_t = 900_000)]
        grace_ms: u64,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
}

/// Parses the command line and runs the command; named types show through
/// `displays`.
pub fn main(displays: Displays) -> ExitCode {
    default_sigpipe();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::List { dir, json } if cluster::is_cluster(&dir) => {
            cluster::list(&dir, json).map(|()| true)
        }
        Command::List { dir, json } => list::list(&dir, json).map(|()| true),
        Command::Show {
            dir,
            id,
            key_groups,
            json,
        } if cluster::is_cluster(&dir) => cluster::show(&dir, id, key_groups, json).map(|()| true),
        Command::Show {
            dir,
            id,
            key_groups,
            json,
        } => show::show(&dir, id, key_groups, json).map(|()| true),
        Command::Verify { dir, id, json } if cluster::is_cluster(&dir) => {
            cluster::verify(&dir, id, json)
        }
        Command::Dump { dir, .. } | Command::Diff { dir, .. } | Command::Gc { dir, .. }
            if cluster::is_cluster(&dir) =>
        {
            Err(anyhow::anyhow!(
                "{} is a cluster job's checkpoint directory: run this command on one part's \
                 store, {}/process-<p> (`spate-ckpt show {}` lists the parts)",
                dir.display(),
                dir.display(),
                dir.display()
            ))
        }
        Command::Dump {
            dir,
            id,
            operator,
            table,
            key_group,
            key,
            limit,
            raw_bytes,
            raw,
            json,
        } => open(&dir).and_then(|reader| {
            let checkpoint = Checkpoint::find(&reader, id)?;
            let args = dump::DumpArgs {
                operator,
                table,
                key_group,
                key,
                limit,
                raw_bytes,
                raw,
            };
            dump::dump(&checkpoint, &displays, &args, json)
        }),
        Command::Verify { dir, id, json } => verify::verify(&dir, id, json),
        Command::Diff {
            dir,
            a,
            b,
            entries,
            json,
        } => open(&dir).and_then(|reader| {
            let a = Checkpoint::find(&reader, a)?;
            let b = Checkpoint::find(&reader, b)?;
            diff::diff(&a, &b, &displays, entries, json)
        }),
        Command::Gc {
            dir,
            yes,
            json,
            retain,
            grace_ms,
        } => match dir.to_str().filter(|s| spate_storage::remote::is_url(s)) {
            Some(url) => gc::remote_gc(url, yes, json, retain, grace_ms),
            None => gc::gc(&dir, yes, json),
        },
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("spate-ckpt: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Restores the default disposition of SIGPIPE, which the Rust runtime
/// ignores: a write to a closed pipe (`spate-ckpt show DIR 2 | head -3`) then
/// ends the process quietly, as it does any Unix filter, instead of making
/// `println!` panic with "failed printing to stdout". Covers every command and
/// every line, JSON or not (`gc --yes` prints only once its deletions are
/// done).
#[cfg(unix)]
fn default_sigpipe() {
    // `run_with` is documented to be called first thing in `main`, before
    // any other thread starts.
    // SAFETY: SIG_DFL is a valid SIGPIPE disposition and no thread races it.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(not(unix))]
fn default_sigpipe() {}
