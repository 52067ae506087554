//! `spate-ckpt`: inspects a Spate checkpoint directory.
//!
//! Owns only presentation: it reads a store through
//! [`spate_storage::StoreReader`] (which never modifies anything), decodes the
//! engine's [`CheckpointMetadata`], and decodes keyed state through
//! [`spate::inspect`] with a registry of known types ([`registry`]). It never
//! writes to a store except `gc --yes`, which deletes what
//! [`spate_storage::gc`] allows (conservative, so a job may be writing to the
//! same directory). It decodes as much as it can from a damaged store (a manifest
//! with a corrupt tail still lists the checkpoints before the damage; a checkpoint
//! whose metadata does not decode is still listed, with the error; a key group
//! that does not decode is reported and the others shown).
//!
//! Commands: `list`, `show`, `dump`, `verify`, `diff`, `gc`. Each takes `--json`
//! for one stable JSON document (documented on each command and in
//! `docs/spate-ckpt.md`) and otherwise prints aligned tables.

mod diff;
mod dump;
mod registry;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use spate::checkpoint::metadata::StateBlock;
use spate::checkpoint::CheckpointMetadata;
use spate_storage::{CheckpointRecord, StoreReader};

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
    /// The state entries of one operator.
    ///
    /// Every key group's chain (base, then deltas) decoded as a restore would
    /// load it. Known types are shown as
    /// values, others as raw blocks (hex and UTF-8 preview) with their type name.
    /// Exit status 1 when a key group does not read or decode (the others are
    /// still shown).
    ///
    /// JSON: `{ "checkpoint", "retained", "operator", "tables": [{ "table",
    /// "type_name", "decoded", "key_groups", "matched", "entries": [{
    /// "key_group", "key", "value" }], "raw": [{ "key_group", "checkpoint",
    /// "delta", "segment", "offset", "bytes", "hex", "utf8", "truncated" }] }],
    /// "matched", "shown", "truncated", "errors": [{ "checkpoint", "operator",
    /// "table", "key_group", "segment", "offset", "error" }] }`.
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
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Checks checkpoints and segments; exit status 1 on any problem.
    ///
    /// Checks every block CRC and handle of the checkpoints (all, or `ID`), that
    /// their metadata decodes and names valid handles, and (without `ID`) scans
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
    /// is no store to verify.
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
    /// unchanged, and bytes. Exit status 1 when a key group does not read or
    /// decode.
    ///
    /// JSON: `{ "a", "b", "operators": [{ "operator", counts, bytes, "tables":
    /// [{ "table", "type_name", "compared", "differing_key_groups", counts,
    /// bytes, "key_groups": [{ "key_group", "entries_a", "entries_b",
    /// "same_blocks", "compared", counts, bytes }] }] }], "totals": { counts,
    /// bytes }, "errors": [as dump] }`, where counts are `added`, `removed`,
    /// `changed`, `unchanged` (null for a key group whose type is unknown) and
    /// bytes are `bytes_a`, `bytes_b`, `new_bytes` (blocks of B not in A).
    Diff {
        /// The checkpoint directory.
        dir: PathBuf,
        /// The older checkpoint.
        a: u64,
        /// The newer checkpoint.
        b: u64,
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
        /// The checkpoint directory.
        dir: PathBuf,
        /// Delete the files (otherwise only list them).
        #[arg(long)]
        yes: bool,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    default_sigpipe();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::List { dir, json } => list(&dir, json).map(|()| true),
        Command::Show {
            dir,
            id,
            key_groups,
            json,
        } => show(&dir, id, key_groups, json).map(|()| true),
        Command::Dump {
            dir,
            id,
            operator,
            table,
            key_group,
            key,
            limit,
            raw_bytes,
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
            };
            dump::dump(&checkpoint, &registry::Registry::builtin(), &args, json)
        }),
        Command::Verify { dir, id, json } => verify(&dir, id, json),
        Command::Diff { dir, a, b, json } => open(&dir).and_then(|reader| {
            let a = Checkpoint::find(&reader, a)?;
            let b = Checkpoint::find(&reader, b)?;
            diff::diff(&a, &b, &registry::Registry::builtin(), json)
        }),
        Command::Gc { dir, yes, json } => gc(&dir, yes, json),
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
    // SAFETY: first thing in `main`, before any other thread exists; SIG_DFL
    // is a valid disposition for SIGPIPE and installs no handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(not(unix))]
fn default_sigpipe() {}

/// Opens the store in `dir`, warning on stderr when it has no manifest or a
/// damaged one.
fn open(dir: &Path) -> Result<StoreReader> {
    let reader = open_store(dir)?;
    if reader.manifest_file().is_none() {
        eprintln!("warning: {} holds no manifest", dir.display());
    }
    warn_manifest_damage(&reader);
    Ok(reader)
}

/// Opens the store in `dir`, which must be a directory.
fn open_store(dir: &Path) -> Result<StoreReader> {
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            anyhow::bail!("{} does not exist", dir.display())
        }
        Err(e) => anyhow::bail!("cannot access {}: {e}", dir.display()),
        Ok(m) => anyhow::ensure!(m.is_dir(), "{} is not a directory", dir.display()),
    }
    StoreReader::open(dir).with_context(|| format!("opening store {}", dir.display()))
}

fn warn_manifest_damage(reader: &StoreReader) {
    if let Some(d) = reader.manifest_damage() {
        eprintln!(
            "warning: manifest {} is damaged at offset {}: {} ({} bytes ignored{})",
            d.file,
            d.offset,
            d.error,
            d.dropped_bytes,
            if d.later_valid_records {
                "; valid records follow the damage"
            } else {
                ""
            }
        );
    }
}

/// One checkpoint of a store, its metadata decoded.
pub struct Checkpoint<'a> {
    /// The store.
    pub reader: &'a StoreReader,
    /// Its manifest record.
    pub record: &'a CheckpointRecord,
    /// Its metadata.
    pub metadata: CheckpointMetadata,
    /// Retained (rather than recorded as discarded: its blocks may be gone).
    pub retained: bool,
}

impl<'a> Checkpoint<'a> {
    /// Checkpoint `id`: a retained one, or else one the manifest records as
    /// discarded.
    fn find(reader: &'a StoreReader, id: u64) -> Result<Self> {
        let (record, retained) = match reader.checkpoint(id) {
            Ok(r) => (r, true),
            Err(e) => match reader.discarded_checkpoints().iter().rfind(|c| c.id == id) {
                Some(r) => (r, false),
                None => return Err(e.into()),
            },
        };
        let metadata = CheckpointMetadata::decode(&record.metadata)
            .map_err(|e| anyhow::anyhow!("checkpoint {id}: {e}"))?;
        if !retained {
            eprintln!(
                "warning: checkpoint {id} was discarded by retention; its blocks may be deleted"
            );
        }
        Ok(Checkpoint {
            reader,
            record,
            metadata,
            retained,
        })
    }
}

/// Aligned table: the first row is the header; numeric-looking cells right-aligned.
pub fn print_table(rows: &[Vec<String>]) {
    let Some(first) = rows.first() else { return };
    let mut widths = vec![0; first.len()];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let numeric = cell == "-"
                || !cell.is_empty()
                    && cell.chars().all(|c| {
                        c.is_ascii_digit()
                            || matches!(
                                c,
                                '.' | ' ' | 'K' | 'M' | 'G' | 'T' | 'i' | 'B' | 'm' | 's' | '-'
                            )
                    })
                    && cell.chars().next().is_some_and(|c| c.is_ascii_digit());
            if numeric {
                line.push_str(&format!("{cell:>w$}"));
            } else {
                line.push_str(&format!("{cell:<w$}"));
            }
        }
        println!("{}", line.trim_end());
    }
}

/// Bytes in B, KiB, MiB, GiB or TiB with one decimal.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `timestamp_ms` as UTC `YYYY-MM-DD HH:MM:SS.mmm`.
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms % 1000
    )
}

fn summary(
    record: &CheckpointRecord,
    retained: bool,
    metadata: &Result<CheckpointMetadata, String>,
) -> Value {
    let base = json!({
        "id": record.id,
        "status": if retained { "completed" } else { "discarded" },
        "retained": retained,
        "timestamp_ms": record.timestamp_ms,
        "handles": record.handles.len(),
    });
    let Value::Object(mut obj) = base else {
        unreachable!()
    };
    let extra = match metadata {
        Ok(m) => json!({
            "mode": m.mode,
            "incremental": m.incremental,
            "trigger_ms": m.trigger_ms,
            "completed_ms": m.completed_ms,
            "duration_ms": m.completed_ms.saturating_sub(m.trigger_ms),
            "bytes": m.bytes(),
            "written_bytes": m.written_bytes(),
            "in_flight_bytes": m.in_flight_bytes(),
            "fingerprint": format!("{:016x}", m.fingerprint),
            "cores": m.parallelism,
            "max_parallelism": m.max_parallelism,
            "cause": m.cause,
            "error": null,
        }),
        Err(e) => json!({
            "mode": null, "incremental": null, "trigger_ms": null, "completed_ms": null,
            "duration_ms": null, "bytes": null, "written_bytes": null,
            "in_flight_bytes": null, "fingerprint": null, "cores": null,
            "max_parallelism": null, "cause": null, "error": e,
        }),
    };
    if let Value::Object(extra) = extra {
        obj.extend(extra);
    }
    Value::Object(obj)
}

fn list(dir: &Path, as_json: bool) -> Result<()> {
    let reader = open(dir)?;
    let mut records: Vec<(&CheckpointRecord, bool)> = reader
        .checkpoints()
        .iter()
        .map(|r| (r, true))
        .chain(reader.discarded_checkpoints().iter().map(|r| (r, false)))
        .collect();
    records.sort_by_key(|(r, retained)| (r.id, *retained));
    let rows: Vec<Value> = records
        .iter()
        .map(|(r, retained)| summary(r, *retained, &CheckpointMetadata::decode(&r.metadata)))
        .collect();
    if as_json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let mut table = vec![[
        "ID",
        "TIME (UTC)",
        "MODE",
        "INCR",
        "STATUS",
        "BYTES",
        "WRITTEN",
        "DURATION",
        "IN-FLIGHT",
        "FINGERPRINT",
        "CORES",
        "MAX-PAR",
    ]
    .map(String::from)
    .to_vec()];
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        v => v.to_string(),
    };
    let b = |v: &Value| v.as_u64().map_or("-".into(), human_bytes);
    for r in &rows {
        table.push(vec![
            s(&r["id"]),
            utc(r["timestamp_ms"].as_u64().unwrap_or(0)),
            s(&r["mode"]),
            match r["incremental"].as_bool() {
                Some(true) => "yes".into(),
                Some(false) => "no".into(),
                None => "-".into(),
            },
            s(&r["status"]),
            b(&r["bytes"]),
            b(&r["written_bytes"]),
            r["duration_ms"]
                .as_u64()
                .map_or("-".into(), |d| format!("{d} ms")),
            b(&r["in_flight_bytes"]),
            s(&r["fingerprint"]),
            s(&r["cores"]),
            s(&r["max_parallelism"]),
        ]);
    }
    print_table(&table);
    for r in &rows {
        if let Some(e) = r["error"].as_str() {
            eprintln!("warning: checkpoint {}: {e}", r["id"]);
        }
    }
    if rows.is_empty() {
        println!("(no checkpoints)");
    }
    Ok(())
}

#[derive(Default)]
struct TableStats {
    type_name: String,
    key_groups: u64,
    entries: u64,
    bytes: u64,
    base_bytes: u64,
    max_chain_len: usize,
}

fn base_bytes(s: &StateBlock) -> u64 {
    s.chain.iter().filter(|b| !b.delta).map(|b| b.bytes).sum()
}

fn show(dir: &Path, id: u64, key_groups: bool, as_json: bool) -> Result<()> {
    let reader = open(dir)?;
    let checkpoint = Checkpoint::find(&reader, id)?;
    let (record, m) = (checkpoint.record, &checkpoint.metadata);
    let mut doc = summary(record, checkpoint.retained, &Ok(m.clone()));

    // operator -> table -> stats; operator -> distinct key groups.
    let mut tables: BTreeMap<&str, BTreeMap<&str, TableStats>> = BTreeMap::new();
    let mut groups: BTreeMap<&str, std::collections::BTreeSet<u32>> = BTreeMap::new();
    for s in &m.state {
        let t = tables
            .entry(&s.operator)
            .or_default()
            .entry(&s.table)
            .or_default();
        t.type_name.clone_from(&s.type_name);
        t.key_groups += 1;
        t.entries += s.entries;
        t.bytes += s.bytes();
        t.base_bytes += base_bytes(s);
        t.max_chain_len = t.max_chain_len.max(s.chain.len());
        groups.entry(&s.operator).or_default().insert(s.key_group);
    }
    let operators: Vec<Value> = tables
        .iter()
        .map(|(op, ts)| {
            json!({
                "operator": op,
                "key_groups": groups[op].len(),
                "entries": ts.values().map(|t| t.entries).sum::<u64>(),
                "bytes": ts.values().map(|t| t.bytes).sum::<u64>(),
                "tables": ts.iter().map(|(name, t)| json!({
                    "table": name,
                    "type_name": t.type_name,
                    "key_groups": t.key_groups,
                    "entries": t.entries,
                    "bytes": t.bytes,
                    "base_bytes": t.base_bytes,
                    "delta_bytes": t.bytes - t.base_bytes,
                    "max_chain_len": t.max_chain_len,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let subtasks: Vec<Value> = m
        .subtasks
        .iter()
        .map(|s| {
            json!({
                "subtask": s.subtask,
                "sync_us": s.sync_us,
                "async_us": s.async_us,
                "alignment_us": s.alignment_us,
                "state_bytes": s.state_bytes,
                "delta_bytes": s.delta_bytes,
                "in_flight_bytes": s.in_flight_bytes,
                "switched_to_unaligned": s.switched_to_unaligned,
            })
        })
        .collect();
    let in_flight: Vec<Value> = m
        .in_flight
        .iter()
        .map(|b| {
            json!({
                "operator": b.operator, "input": b.input, "from": b.from, "to": b.to,
                "records": b.records, "bytes": b.bytes,
            })
        })
        .collect();
    let sources: Vec<Value> = m
        .sources
        .iter()
        .map(|s| json!({"source": s.source, "subtask": s.subtask, "offset": s.offset, "split": s.split}))
        .collect();
    let mut state: Vec<&StateBlock> = m.state.iter().collect();
    state.sort_by(|a, b| {
        (&a.operator, &a.table, a.key_group).cmp(&(&b.operator, &b.table, b.key_group))
    });
    let kg_rows: Vec<Value> = state
        .iter()
        .map(|s| {
            json!({
                "operator": s.operator, "table": s.table, "key_group": s.key_group,
                "entries": s.entries, "bytes": s.bytes(), "base_bytes": base_bytes(s),
                "chain_len": s.chain.len(),
            })
        })
        .collect();
    if let Value::Object(obj) = &mut doc {
        obj.insert("subtasks".into(), Value::Array(subtasks));
        obj.insert("operators".into(), Value::Array(operators));
        obj.insert("in_flight".into(), Value::Array(in_flight));
        obj.insert("sources".into(), Value::Array(sources));
        if key_groups {
            obj.insert("key_groups".into(), Value::Array(kg_rows.clone()));
        }
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }

    println!(
        "checkpoint {}{}  {}  mode {}  {}  cause {}",
        m.id,
        if checkpoint.retained {
            ""
        } else {
            " (discarded)"
        },
        utc(record.timestamp_ms),
        m.mode,
        if m.incremental { "incremental" } else { "full" },
        m.cause
    );
    println!(
        "duration {} ms  bytes {}  written {}  in-flight {}  cores {}  max parallelism {}  fingerprint {:016x}  blocks {}",
        m.completed_ms.saturating_sub(m.trigger_ms),
        human_bytes(m.bytes()),
        human_bytes(m.written_bytes()),
        human_bytes(m.in_flight_bytes()),
        m.parallelism,
        m.max_parallelism,
        m.fingerprint,
        record.handles.len()
    );

    println!("\nsubtasks");
    let mut t = vec![[
        "SUBTASK",
        "SYNC µs",
        "ASYNC µs",
        "ALIGN µs",
        "STATE",
        "DELTA",
        "IN-FLIGHT",
        "UNALIGNED",
    ]
    .map(String::from)
    .to_vec()];
    for s in &m.subtasks {
        t.push(vec![
            s.subtask.to_string(),
            s.sync_us.to_string(),
            s.async_us.to_string(),
            s.alignment_us.to_string(),
            human_bytes(s.state_bytes),
            human_bytes(s.delta_bytes),
            human_bytes(s.in_flight_bytes),
            if s.switched_to_unaligned { "yes" } else { "no" }.into(),
        ]);
    }
    print_table(&t);

    println!("\nstate");
    let mut t = vec![[
        "OPERATOR",
        "TABLE",
        "KEY GROUPS",
        "ENTRIES",
        "BYTES",
        "BASE",
        "DELTA",
        "MAX CHAIN",
        "TYPE",
    ]
    .map(String::from)
    .to_vec()];
    for (op, ts) in &tables {
        for (name, s) in ts {
            t.push(vec![
                op.to_string(),
                name.to_string(),
                s.key_groups.to_string(),
                s.entries.to_string(),
                human_bytes(s.bytes),
                human_bytes(s.base_bytes),
                human_bytes(s.bytes - s.base_bytes),
                s.max_chain_len.to_string(),
                s.type_name.clone(),
            ]);
        }
    }
    if tables.is_empty() {
        println!("(no keyed state)");
    } else {
        print_table(&t);
    }

    println!("\nin-flight");
    if m.in_flight.is_empty() {
        println!("(none)");
    } else {
        let mut t = vec![["OPERATOR", "INPUT", "FROM", "TO", "RECORDS", "BYTES"]
            .map(String::from)
            .to_vec()];
        for b in &m.in_flight {
            t.push(vec![
                b.operator.clone(),
                b.input.to_string(),
                b.from.to_string(),
                b.to.to_string(),
                b.records.to_string(),
                human_bytes(b.bytes),
            ]);
        }
        print_table(&t);
    }

    println!("\nsource offsets");
    if m.sources.is_empty() {
        println!("(none)");
    } else {
        let mut t = vec![["SOURCE", "SUBTASK/SPLIT", "OFFSET"]
            .map(String::from)
            .to_vec()];
        for s in &m.sources {
            t.push(vec![
                s.source.clone(),
                if s.split {
                    format!("split {}", s.subtask)
                } else {
                    s.subtask.to_string()
                },
                s.offset.to_string(),
            ]);
        }
        print_table(&t);
    }

    if key_groups {
        println!("\nkey groups");
        let mut t = vec![[
            "OPERATOR",
            "TABLE",
            "KEY GROUP",
            "ENTRIES",
            "BYTES",
            "BASE",
            "CHAIN",
        ]
        .map(String::from)
        .to_vec()];
        for s in &state {
            t.push(vec![
                s.operator.clone(),
                s.table.clone(),
                s.key_group.to_string(),
                s.entries.to_string(),
                human_bytes(s.bytes()),
                human_bytes(base_bytes(s)),
                s.chain.len().to_string(),
            ]);
        }
        print_table(&t);
    }
    Ok(())
}

/// One problem `verify` found.
struct Problem {
    checkpoint: Option<u64>,
    /// The segment or manifest file it is in.
    file: Option<String>,
    offset: Option<u64>,
    /// What is wrong, without what differs from block to block (offsets,
    /// checksums): problems are grouped by checkpoint, file and kind.
    kind: String,
    /// Whether it is about one block (a group then counts blocks).
    block: bool,
    /// The whole message.
    error: String,
}

impl Problem {
    /// A problem not about one block: its kind is its message.
    fn general(
        checkpoint: Option<u64>,
        file: Option<String>,
        offset: Option<u64>,
        error: String,
    ) -> Problem {
        Problem {
            checkpoint,
            file,
            offset,
            kind: error.clone(),
            block: false,
            error,
        }
    }
}

/// The kind of a format error: its message without the values (checksums,
/// lengths) that differ from block to block.
fn format_kind(e: &spate_storage::FormatError) -> String {
    use spate_storage::FormatError as F;
    let kind = match e {
        F::Truncated { .. } => "truncated block",
        F::BadMagic { .. } => "bad block magic",
        F::HeaderCrc { .. } => "block header CRC mismatch",
        F::PayloadCrc { .. } => "block payload CRC mismatch",
        F::Misaligned { .. } => "misaligned block",
        F::HandleMismatch { .. } => "block header does not match its handle",
        _ => return e.to_string(),
    };
    kind.to_string()
}

/// A read error: of the block `handle` names (of `checkpoint`), or else of a
/// whole file.
fn read_problem(
    checkpoint: Option<u64>,
    handle: Option<&spate_storage::BlockHandle>,
    e: &spate_storage::ReadError,
) -> Problem {
    use spate_storage::ReadError;
    let (file, offset, kind) = match e {
        ReadError::Corrupt {
            segment,
            offset,
            source,
        } => (
            Some(segment.file_name()),
            Some(*offset),
            format_kind(source),
        ),
        ReadError::MissingSegment { name, .. } => {
            (Some(name.clone()), None, "segment file is missing".into())
        }
        ReadError::Io { name, source } if !name.is_empty() => (
            Some(name.clone()),
            None,
            format!("reading failed: {source}"),
        ),
        _ => (None, None, e.to_string()),
    };
    Problem {
        checkpoint,
        file: file.or_else(|| handle.map(|h| h.segment.file_name())),
        offset: offset.or(handle.map(|h| h.offset)),
        kind,
        block: handle.is_some(),
        error: e.to_string(),
    }
}

/// Problems of the same checkpoint, file and kind.
struct Group<'a> {
    /// The one at the lowest offset (or the first found).
    first: &'a Problem,
    count: usize,
}

/// `problems` grouped by checkpoint, file and kind, in the order first found.
fn group_problems(problems: &[Problem]) -> Vec<Group<'_>> {
    let mut index: BTreeMap<(Option<u64>, Option<&str>, &str), usize> = BTreeMap::new();
    let mut groups: Vec<Group> = Vec::new();
    for p in problems {
        let key = (p.checkpoint, p.file.as_deref(), p.kind.as_str());
        match index.get(&key) {
            Some(&i) => {
                let g = &mut groups[i];
                g.count += 1;
                if let (Some(o), Some(first)) = (p.offset, g.first.offset) {
                    if o < first {
                        g.first = p;
                    }
                }
            }
            None => {
                index.insert(key, groups.len());
                groups.push(Group { first: p, count: 1 });
            }
        }
    }
    groups
}

/// Whether `dir` holds a store to verify: `Err` when it holds neither a
/// manifest nor segments; a problem when it holds segments but no manifest.
fn store_problem(dir: &Path, reader: &StoreReader, segments: usize) -> Result<Option<Problem>> {
    if reader.manifest_file().is_some() {
        return Ok(None);
    }
    anyhow::ensure!(
        segments > 0,
        "{} holds no checkpoint store (no MANIFEST-* file, no segment files)",
        dir.display()
    );
    Ok(Some(Problem::general(
        None,
        None,
        None,
        format!(
            "no MANIFEST-* file beside {segments} segment file(s): the manifest is missing, \
             so the checkpoints they held cannot be restored"
        ),
    )))
}

/// Checks that checkpoint `id`'s metadata decodes, names only handles its
/// record has and carries its id, and reads every block it references.
fn verify_checkpoint(reader: &StoreReader, id: u64, problems: &mut Vec<Problem>) -> Result<()> {
    let record = reader.checkpoint(id)?;
    match CheckpointMetadata::decode(&record.metadata) {
        Err(e) => problems.push(Problem::general(Some(id), None, None, e)),
        Ok(m) => {
            let n = record.handles.len();
            let bad = m
                .state
                .iter()
                .flat_map(|s| s.chain.iter().map(|b| b.handle))
                .chain(m.in_flight.iter().map(|b| b.handle))
                .filter(|&h| h as usize >= n);
            for h in bad {
                problems.push(Problem {
                    kind: format!("metadata names handles the record does not have ({n})"),
                    block: true,
                    ..Problem::general(
                        Some(id),
                        None,
                        None,
                        format!("metadata names handle {h}; the record has {n}"),
                    )
                });
            }
            if m.id != id {
                let e = format!("metadata says checkpoint {}", m.id);
                problems.push(Problem::general(Some(id), None, None, e));
            }
        }
    }
    for h in &record.handles {
        if let Err(e) = reader.block(h) {
            problems.push(read_problem(Some(id), Some(h), &e));
        }
    }
    Ok(())
}

/// Scans every segment file; returns their names.
fn scan_segments(
    reader: &StoreReader,
    mut segments: Vec<spate_storage::SegmentId>,
    problems: &mut Vec<Problem>,
) -> Vec<String> {
    segments.sort();
    // Blocks already reported through a checkpoint's handle.
    let reported: std::collections::BTreeSet<(String, u64)> = problems
        .iter()
        .filter_map(|p| Some((p.file.clone()?, p.offset?)))
        .collect();
    let mut scanned = Vec::new();
    for segment in segments {
        let file = segment.file_name();
        scanned.push(file.clone());
        let scan = match reader.verify_segment(segment) {
            Ok(scan) => scan,
            Err(e) => {
                problems.push(read_problem(None, None, &e));
                continue;
            }
        };
        for (offset, e) in scan.problems {
            if reported.contains(&(file.clone(), offset)) {
                continue;
            }
            problems.push(Problem {
                checkpoint: None,
                file: Some(file.clone()),
                offset: Some(offset),
                kind: format_kind(&e),
                block: true,
                error: e.to_string(),
            });
        }
    }
    scanned
}

fn verify(dir: &Path, id: Option<u64>, as_json: bool) -> Result<bool> {
    let opened = open_store(dir).and_then(|reader| {
        let segments: Vec<_> = reader.segments()?.into_iter().map(|(s, _)| s).collect();
        let problem = store_problem(dir, &reader, segments.len())?;
        Ok((reader, segments, problem))
    });
    let (reader, segments, problem) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            // Nothing to verify: still one document with the reason.
            if as_json {
                let p = Problem::general(None, None, None, format!("{e:#}"));
                print_verify(&[], &[], &[p], true)?;
            }
            return Err(e);
        }
    };
    warn_manifest_damage(&reader);
    let mut problems: Vec<Problem> = problem.into_iter().collect();
    if let Some(d) = reader.manifest_damage() {
        problems.push(Problem::general(
            None,
            Some(d.file.clone()),
            Some(d.offset),
            format!(
                "manifest damaged: {} ({} bytes ignored)",
                d.error, d.dropped_bytes
            ),
        ));
    }
    let ids: Vec<u64> = match id {
        // Without a manifest there is no checkpoint to look up.
        Some(_) if reader.manifest_file().is_none() => Vec::new(),
        Some(id) => vec![reader.checkpoint(id)?.id],
        None => reader.checkpoints().iter().map(|c| c.id).collect(),
    };
    for &id in &ids {
        verify_checkpoint(&reader, id, &mut problems)?;
    }
    let scanned = match id {
        None => scan_segments(&reader, segments, &mut problems),
        Some(_) => Vec::new(),
    };
    print_verify(&ids, &scanned, &problems, as_json)?;
    Ok(problems.is_empty())
}

/// Prints `verify`'s report: problems grouped by checkpoint, file and kind.
fn print_verify(
    ids: &[u64],
    scanned: &[String],
    problems: &[Problem],
    as_json: bool,
) -> Result<()> {
    let groups = group_problems(problems);
    if as_json {
        let doc = json!({
            "ok": problems.is_empty(),
            "checkpoints": ids,
            "segments": scanned,
            "groups": groups.iter().map(|g| json!({
                "checkpoint": g.first.checkpoint, "file": g.first.file,
                "problem": g.first.kind, "count": g.count,
                "blocks": if g.first.block { Some(g.count) } else { None },
                "first_offset": g.first.offset, "first_error": g.first.error,
            })).collect::<Vec<_>>(),
            "problems": problems.iter().map(|p| json!({
                "checkpoint": p.checkpoint, "file": p.file,
                "offset": p.offset, "error": p.error,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!(
        "checked {} checkpoint(s), {} segment file(s)",
        ids.len(),
        scanned.len()
    );
    if problems.is_empty() {
        println!("ok");
        return Ok(());
    }
    let dash = |o: Option<String>| o.unwrap_or_else(|| "-".into());
    let mut t = vec![["CHECKPOINT", "FILE", "FIRST OFFSET", "BLOCKS", "PROBLEM"]
        .map(String::from)
        .to_vec()];
    for g in &groups {
        let p = g.first;
        t.push(vec![
            dash(p.checkpoint.map(|c| c.to_string())),
            dash(p.file.clone()),
            dash(p.offset.map(|o| o.to_string())),
            dash(p.block.then(|| g.count.to_string())),
            // One: the whole message; more: what they have in common.
            if g.count == 1 { &p.error } else { &p.kind }.clone(),
        ]);
    }
    print_table(&t);
    println!("{} problem(s)", problems.len());
    Ok(())
}

fn gc(dir: &Path, yes: bool, as_json: bool) -> Result<bool> {
    use spate_storage::gc;
    let _ = open(dir)?;
    let (plan, report) = if yes {
        gc::collect(dir).with_context(|| format!("collecting garbage in {}", dir.display()))?
    } else {
        let plan = gc::plan(dir).with_context(|| format!("planning gc in {}", dir.display()))?;
        (plan, gc::GcReport::default())
    };
    let reason = |keep: Option<gc::KeepReason>, deleted: &str| -> (String, String) {
        match keep {
            Some(k) => (k.id().to_string(), k.describe().to_string()),
            None => (deleted.to_string(), deleted.to_string()),
        }
    };
    let seg_rows: Vec<Value> = plan
        .segments
        .iter()
        .map(|s| {
            let (id, _) = reason(s.keep, "unreferenced");
            json!({
                "file": s.segment.file_name(), "bytes": s.bytes, "live_bytes": s.live_bytes,
                "blocks": s.blocks, "delete": s.keep.is_none(), "reason": id,
            })
        })
        .collect();
    let manifest_rows: Vec<Value> = plan
        .manifests
        .iter()
        .map(|m| {
            let (id, _) = reason(m.keep, "stale");
            json!({"file": m.file, "bytes": m.bytes, "delete": m.keep.is_none(), "reason": id})
        })
        .collect();
    let failed: Vec<Value> = report
        .failed
        .iter()
        .map(|(file, e)| json!({"file": file, "error": e.to_string()}))
        .collect();
    if as_json {
        let doc = json!({
            "dry_run": !yes,
            "manifest": plan.manifest_file,
            "segments": seg_rows,
            "manifests": manifest_rows,
            "orphan_cleanup_skipped": plan.orphan_cleanup_skipped,
            "reclaimable_bytes": plan.reclaimable_bytes(),
            "deleted": report.deleted,
            "failed": failed,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(report.failed.is_empty());
    }
    let mut t = vec![["FILE", "BYTES", "LIVE", "BLOCKS", "ACTION", "WHY"]
        .map(String::from)
        .to_vec()];
    for s in &plan.segments {
        t.push(vec![
            s.segment.file_name(),
            human_bytes(s.bytes),
            human_bytes(s.live_bytes),
            s.blocks.to_string(),
            if s.keep.is_none() { "delete" } else { "keep" }.into(),
            reason(s.keep, "unreferenced").1,
        ]);
    }
    for m in &plan.manifests {
        t.push(vec![
            m.file.clone(),
            human_bytes(m.bytes),
            String::new(),
            String::new(),
            if m.keep.is_none() { "delete" } else { "keep" }.into(),
            reason(m.keep, "older generation or stale temporary").1,
        ]);
    }
    print_table(&t);
    if plan.orphan_cleanup_skipped {
        println!("orphan cleanup skipped: the manifest is damaged mid-log");
    }
    let files = plan.files_to_delete().len();
    if yes {
        let sizes: BTreeMap<String, u64> = plan
            .segments
            .iter()
            .map(|s| (s.segment.file_name(), s.bytes))
            .chain(plan.manifests.iter().map(|m| (m.file.clone(), m.bytes)))
            .collect();
        let deleted: u64 = report.deleted.iter().filter_map(|f| sizes.get(f)).sum();
        println!(
            "deleted {} file(s), {}",
            report.deleted.len(),
            human_bytes(deleted)
        );
        for (file, e) in &report.failed {
            eprintln!("error: could not delete {file}: {e}");
        }
    } else {
        println!(
            "dry run: {} reclaimable in {files} file(s); nothing was deleted (--yes deletes)",
            human_bytes(plan.reclaimable_bytes())
        );
    }
    Ok(report.failed.is_empty())
}
