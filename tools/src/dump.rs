//! `spate-ckpt dump`: the state entries of one operator in one checkpoint.
//!
//! Each key group's chain is read and decoded through [`spate::internals::inspect`] (the
//! base, then the deltas, as a restore loads them) with the decoder the
//! [`Registry`] holds for the type name the engine recorded. A type the registry
//! does not know is shown as its raw blocks (hex and a UTF-8 preview of the
//! first bytes). A block that does not read or decode is reported with
//! checkpoint, operator, state, key group and block, and the dump goes on.

use anyhow::{bail, Result};
use serde_json::{json, Value};
use spate::checkpoint::metadata::StateBlock;
use spate::checkpoint::CheckpointMetadata;
use spate::internals::inspect::{InspectError, KeyGroupChain, TIMERS_TABLE};

use crate::output::{human_bytes, items, print_table_or_none, with_header};
use crate::registry::{hex_string, Entry, Registry};
use crate::store::Checkpoint;

/// What `dump` prints.
pub struct DumpArgs {
    /// Operator name.
    pub operator: String,
    /// Only this state (table) of the operator.
    pub table: Option<String>,
    /// Only this key group.
    pub key_group: Option<u32>,
    /// Only entries whose key shows as this text.
    pub key: Option<String>,
    /// At most this many rows (entries or raw blocks) in all.
    pub limit: Option<usize>,
    /// Bytes of each raw block shown.
    pub raw_bytes: usize,
}

/// The tables of `operator` in `state`, timers last, each with its key groups
/// in order.
pub fn tables_of<'a>(
    state: &'a [StateBlock],
    operator: &str,
) -> Vec<(&'a str, Vec<&'a StateBlock>)> {
    let mut tables: std::collections::BTreeMap<(bool, &str), Vec<&StateBlock>> =
        std::collections::BTreeMap::new();
    for s in state.iter().filter(|s| s.operator == operator) {
        tables
            .entry((s.table == TIMERS_TABLE, s.table.as_str()))
            .or_default()
            .push(s);
    }
    tables
        .into_iter()
        .map(|((_, name), mut groups)| {
            groups.sort_by_key(|s| s.key_group);
            (name, groups)
        })
        .collect()
}

/// An inspection error as a JSON object.
pub fn error_json(e: &InspectError) -> Value {
    json!({
        "checkpoint": e.checkpoint,
        "operator": e.operator,
        "table": e.table,
        "key_group": e.key_group,
        "segment": e.handle.map(|h| h.segment.file_name()),
        "offset": e.handle.map(|h| h.offset),
        "error": e.to_string(),
    })
}

/// Whether a shown key matches the `--key` text: its compact JSON, or the
/// string itself; tuples may be written with parentheses.
pub fn key_matches(key: &Value, wanted: &str) -> bool {
    if let Value::String(s) = key {
        if s == wanted {
            return true;
        }
    }
    let normalise = |s: &str| -> String {
        s.chars()
            .filter(|c| !c.is_whitespace())
            .map(|c| match c {
                '(' => '[',
                ')' => ']',
                c => c,
            })
            .collect()
    };
    normalise(&key.to_string()) == normalise(wanted)
}

/// The first `n` bytes as text: printable ASCII and other valid UTF-8 as is,
/// anything else as `.`.
fn utf8_preview(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .map(|c| {
            if c == char::REPLACEMENT_CHARACTER || c.is_control() {
                '.'
            } else {
                c
            }
        })
        .collect()
}

/// Runs `dump`; returns whether every key group read and decoded.
pub fn dump(
    checkpoint: &Checkpoint,
    registry: &Registry,
    args: &DumpArgs,
    as_json: bool,
) -> Result<bool> {
    let m = &checkpoint.metadata;
    let tables = selected_tables(m, args)?;
    let mut tally = Tally {
        remaining: args.limit.unwrap_or(usize::MAX),
        ..Tally::default()
    };
    let table_docs: Vec<Value> = tables
        .iter()
        .map(|(name, groups)| dump_table(checkpoint, registry, args, name, groups, &mut tally))
        .collect();
    let Tally {
        matched,
        shown,
        truncated,
        errors,
        ..
    } = tally;
    if as_json {
        let doc = json!({
            "checkpoint": m.id,
            "retained": checkpoint.retained,
            "operator": args.operator,
            "tables": table_docs,
            "matched": matched,
            "shown": shown,
            "truncated": truncated,
            "errors": errors.iter().map(error_json).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print_dump(checkpoint, args, &table_docs);
        println!(
            "\n{shown} row(s) shown; {matched} entr{} matched{}",
            if matched == 1 { "y" } else { "ies" },
            if truncated { " (limited)" } else { "" }
        );
    }
    for e in &errors {
        eprintln!("error: {e}");
    }
    Ok(errors.is_empty())
}

/// The tables `args` selects (`--table`) of operator `--operator`, with their
/// key groups; an error when the operator has no state, the key group is out of
/// range or the table does not exist.
fn selected_tables<'a>(
    m: &'a CheckpointMetadata,
    args: &DumpArgs,
) -> Result<Vec<(&'a str, Vec<&'a StateBlock>)>> {
    if !m.state.iter().any(|s| s.operator == args.operator) {
        let mut names: Vec<&str> = m.state.iter().map(|s| s.operator.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        bail!(
            "checkpoint {} has no keyed state of operator `{}` (operators with state: {})",
            m.id,
            args.operator,
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        );
    }
    if let Some(g) = args.key_group {
        if g >= m.max_parallelism {
            bail!(
                "key group {g} is out of range: checkpoint {} has {} key groups",
                m.id,
                m.max_parallelism
            );
        }
    }
    let mut tables = tables_of(&m.state, &args.operator);
    if let Some(t) = &args.table {
        let names: Vec<&str> = tables.iter().map(|(n, _)| *n).collect();
        tables.retain(|(name, _)| name == t);
        if tables.is_empty() {
            bail!(
                "operator `{}` has no state `{t}` in checkpoint {} (states: {})",
                args.operator,
                m.id,
                names.join(", ")
            );
        }
    }
    Ok(tables)
}

/// What the dump has gathered over the tables so far.
#[derive(Default)]
struct Tally {
    /// Rows (entries or raw blocks) still to show (`--limit`).
    remaining: usize,
    /// Rows shown.
    shown: u64,
    /// Entries matched (shown or not).
    matched: u64,
    /// Whether rows were left out for `--limit`.
    truncated: bool,
    /// Key groups that did not read or decode.
    errors: Vec<InspectError>,
}

impl Tally {
    /// Takes one row from what `--limit` leaves; false (the output is then
    /// truncated) when nothing is left.
    fn take_row(&mut self) -> bool {
        if self.remaining == 0 {
            self.truncated = true;
            return false;
        }
        self.remaining -= 1;
        true
    }
}

/// One table of the operator as a JSON object: its selected key groups read
/// and decoded into `entries`, or shown as `raw` blocks when its type is
/// unknown.
fn dump_table(
    checkpoint: &Checkpoint,
    registry: &Registry,
    args: &DumpArgs,
    name: &str,
    groups: &[&StateBlock],
    tally: &mut Tally,
) -> Value {
    let groups: Vec<&StateBlock> = groups
        .iter()
        .copied()
        .filter(|s| args.key_group.is_none_or(|g| s.key_group == g))
        .collect();
    let type_name = groups
        .first()
        .map_or(String::new(), |s| s.type_name.clone());
    let decoder = registry.get(&type_name);
    let mut rows = Vec::new();
    let mut raw = Vec::new();
    let mut matched = 0u64;
    for s in &groups {
        let chain = match KeyGroupChain::read(checkpoint.reader, checkpoint.record, s) {
            Ok(c) => c,
            Err(e) => {
                tally.errors.push(e);
                continue;
            }
        };
        match decoder {
            Some(d) => match (d.decode)(&chain) {
                Ok(entries) => matched += push_entries(s, entries, args, tally, &mut rows),
                Err(e) => tally.errors.push(e),
            },
            None => {
                matched += s.entries;
                push_raw_blocks(s, &chain, args, tally, &mut raw);
            }
        }
    }
    tally.matched += matched;
    tally.shown += (rows.len() + raw.len()) as u64;
    json!({
        "table": name,
        "type_name": type_name,
        "decoded": decoder.is_some(),
        "key_groups": groups.len(),
        "matched": matched,
        "entries": rows,
        "raw": raw,
    })
}

/// Appends to `rows` the decoded entries of key group `s` that match `--key`,
/// as far as `--limit` allows; returns how many matched.
fn push_entries(
    s: &StateBlock,
    entries: Vec<Entry>,
    args: &DumpArgs,
    tally: &mut Tally,
    rows: &mut Vec<Value>,
) -> u64 {
    let mut matched = 0;
    for e in entries {
        if args.key.as_deref().is_some_and(|k| !key_matches(&e.key, k)) {
            continue;
        }
        matched += 1;
        if tally.take_row() {
            rows.push(json!({
                "key_group": s.key_group, "key": e.key, "value": e.value,
            }));
        }
    }
    matched
}

/// Appends to `raw` the blocks of key group `s`'s chain (hex and UTF-8 preview
/// of their first `--raw-bytes`), as far as `--limit` allows.
fn push_raw_blocks(
    s: &StateBlock,
    chain: &KeyGroupChain,
    args: &DumpArgs,
    tally: &mut Tally,
    raw: &mut Vec<Value>,
) {
    for part in &chain.parts {
        if !tally.take_row() {
            break;
        }
        let bytes = part.bytes.as_bytes();
        let head = &bytes[..bytes.len().min(args.raw_bytes)];
        raw.push(json!({
            "key_group": s.key_group,
            "checkpoint": part.checkpoint,
            "delta": part.delta,
            "segment": part.handle.segment.file_name(),
            "offset": part.handle.offset,
            "bytes": bytes.len(),
            "hex": hex_string(head),
            "utf8": utf8_preview(head),
            "truncated": head.len() < bytes.len(),
        }));
    }
}

/// A JSON value as text: a string without its quotes, anything else as JSON.
fn unquoted(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// Prints the tables of a dump: the decoded entries, or the raw blocks.
fn print_dump(checkpoint: &Checkpoint, args: &DumpArgs, tables: &[Value]) {
    println!(
        "checkpoint {}{}  operator {}",
        checkpoint.metadata.id,
        if checkpoint.retained {
            ""
        } else {
            " (discarded)"
        },
        args.operator
    );
    for t in tables {
        println!(
            "\nstate {}  type {}  key groups {}  entries {}{}",
            unquoted(&t["table"]),
            unquoted(&t["type_name"]),
            t["key_groups"],
            t["matched"],
            if t["decoded"] == true {
                ""
            } else {
                "  (type unknown to spate-ckpt: raw blocks)"
            }
        );
        if t["decoded"] == true {
            print_table_or_none(&entries_table(items(&t["entries"])));
        } else {
            print_table_or_none(&raw_blocks_table(items(&t["raw"])));
        }
    }
}

/// The table of decoded entries.
fn entries_table(entries: &[Value]) -> Vec<Vec<String>> {
    let mut rows = with_header(&["KEY GROUP", "KEY", "VALUE"]);
    for e in entries {
        rows.push(vec![
            e["key_group"].to_string(),
            e["key"].to_string(),
            e["value"].to_string(),
        ]);
    }
    rows
}

/// The table of raw blocks.
fn raw_blocks_table(raw: &[Value]) -> Vec<Vec<String>> {
    let mut rows = with_header(&[
        "KEY GROUP",
        "CHECKPOINT",
        "BLOCK",
        "OFFSET",
        "KIND",
        "BYTES",
        "HEX",
        "UTF-8",
    ]);
    for r in raw {
        rows.push(vec![
            r["key_group"].to_string(),
            r["checkpoint"].to_string(),
            unquoted(&r["segment"]),
            r["offset"].to_string(),
            if r["delta"] == true { "delta" } else { "base" }.into(),
            human_bytes(r["bytes"].as_u64().unwrap_or(0)),
            format!(
                "{}{}",
                unquoted(&r["hex"]),
                if r["truncated"] == true { "…" } else { "" }
            ),
            unquoted(&r["utf8"]),
        ]);
    }
    rows
}
