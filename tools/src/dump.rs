//! `spate-ckpt dump`: the state entries of one operator in one checkpoint,
//! and the records in flight into it.
//!
//! Each key group's chain is read through [`spate::internals::inspect`] and
//! decoded from the schema the checkpoint recorded ([`crate::entries`]: the
//! base, then the deltas, as a restore applies them). With `--raw` (or when
//! the metadata holds no schema for a table) its blocks are shown raw (hex
//! and a UTF-8 preview of the first bytes). A block that does not read or
//! decode is reported with checkpoint, operator, state, key group and block,
//! and the dump goes on.

use anyhow::{bail, Result};
use serde_json::{json, Value};
use spate::checkpoint::metadata::{InFlightBlock, StateBlock};
use spate::checkpoint::CheckpointMetadata;
use spate::internals::inspect::{KeyGroupChain, TIMERS_TABLE};

use crate::display::Displays;
use crate::entries::{
    in_flight_records, key_group_entries, type_name, BlockError, Entry, IN_FLIGHT_TABLE,
};
use crate::output::{hex_string, human_bytes, items, print_table_or_none, with_header};
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
    /// Show raw blocks instead of decoded entries.
    pub raw: bool,
}

impl DumpArgs {
    /// Whether the in-flight records are shown: they have no key group the
    /// tool could know (the job's key function decides), so not with
    /// `--key` or `--key-group`, and not when `--table` names a state.
    fn in_flight(&self) -> bool {
        self.key.is_none()
            && self.key_group.is_none()
            && self.table.as_deref().is_none_or(|t| t == IN_FLIGHT_TABLE)
    }
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

/// Runs `dump`; returns whether every key group and in-flight block read and
/// decoded.
pub fn dump(
    checkpoint: &Checkpoint,
    displays: &Displays,
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
        .map(|(name, groups)| dump_table(checkpoint, displays, args, name, groups, &mut tally))
        .collect();
    let in_flight: Vec<Value> = if args.in_flight() {
        in_flight_of(m, &args.operator)
            .into_iter()
            .map(|b| dump_in_flight(checkpoint, displays, b, &mut tally))
            .collect()
    } else {
        Vec::new()
    };
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
            "in_flight": in_flight,
            "matched": matched,
            "shown": shown,
            "truncated": truncated,
            "errors": errors.iter().map(BlockError::json).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print_dump(checkpoint, args, &table_docs);
        print_in_flight(&in_flight);
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

/// The in-flight blocks into `operator`, by input, sender and receiver.
fn in_flight_of<'a>(m: &'a CheckpointMetadata, operator: &str) -> Vec<&'a InFlightBlock> {
    let mut blocks: Vec<&InFlightBlock> = m
        .in_flight
        .iter()
        .filter(|b| b.operator == operator)
        .collect();
    blocks.sort_by_key(|b| (b.input, b.from, b.to, b.handle));
    blocks
}

/// The tables `args` selects (`--table`) of operator `--operator`, with their
/// key groups; an error when the operator has no state, the key group is out of
/// range or the table does not exist.
fn selected_tables<'a>(
    m: &'a CheckpointMetadata,
    args: &DumpArgs,
) -> Result<Vec<(&'a str, Vec<&'a StateBlock>)>> {
    let has_in_flight = m.in_flight.iter().any(|b| b.operator == args.operator);
    if !m.state.iter().any(|s| s.operator == args.operator) && !has_in_flight {
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
        let mut names: Vec<&str> = tables.iter().map(|(n, _)| *n).collect();
        tables.retain(|(name, _)| name == t);
        if has_in_flight {
            names.push(IN_FLIGHT_TABLE);
        }
        if tables.is_empty() && !(t == IN_FLIGHT_TABLE && has_in_flight) {
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
    /// Key groups and in-flight blocks that did not read or decode.
    errors: Vec<BlockError>,
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
/// and decoded into `entries`, or shown as `raw` blocks (`--raw`, or no
/// schema recorded for it).
fn dump_table(
    checkpoint: &Checkpoint,
    displays: &Displays,
    args: &DumpArgs,
    name: &str,
    groups: &[&StateBlock],
    tally: &mut Tally,
) -> Value {
    let m = &checkpoint.metadata;
    let groups: Vec<&StateBlock> = groups
        .iter()
        .copied()
        .filter(|s| args.key_group.is_none_or(|g| s.key_group == g))
        .collect();
    let schema = groups.first().map(|s| s.schema);
    let decoded = !args.raw && schema.is_some_and(|i| m.schema(i).is_some());
    let mut rows = Vec::new();
    let mut raw = Vec::new();
    let mut matched = 0u64;
    for s in &groups {
        let chain = match KeyGroupChain::read(checkpoint.reader, checkpoint.record, m, s) {
            Ok(c) => c,
            Err(e) => {
                tally.errors.push(e.into());
                continue;
            }
        };
        if decoded {
            match key_group_entries(&chain, displays) {
                Ok(entries) => matched += push_entries(s, entries, args, tally, &mut rows),
                Err(e) => tally.errors.push(e),
            }
        } else {
            matched += s.entries;
            push_raw_blocks(s, &chain, args, tally, &mut raw);
        }
    }
    tally.matched += matched;
    tally.shown += (rows.len() + raw.len()) as u64;
    json!({
        "table": name,
        "type_name": schema.map_or_else(String::new, |i| type_name(m, i)),
        "decoded": decoded,
        "key_groups": groups.len(),
        "matched": matched,
        "entries": rows,
        "raw": raw,
    })
}

/// The records of one in-flight block as a JSON object, as far as `--limit`
/// allows.
fn dump_in_flight(
    checkpoint: &Checkpoint,
    displays: &Displays,
    block: &InFlightBlock,
    tally: &mut Tally,
) -> Value {
    let m = &checkpoint.metadata;
    let record_type = type_name(m, block.schema);
    let mut rows = Vec::new();
    match in_flight_records(checkpoint, block, displays) {
        Ok(records) => {
            for (timestamp, value) in records {
                if !tally.take_row() {
                    break;
                }
                rows.push(json!({ "timestamp": timestamp, "value": value }));
            }
        }
        Err(e) => tally.errors.push(e),
    }
    tally.shown += rows.len() as u64;
    json!({
        "input": block.input,
        "from": block.from,
        "to": block.to,
        "type_name": record_type,
        "records": block.records,
        "bytes": block.bytes,
        "entries": rows,
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
                "  (raw blocks)"
            }
        );
        if t["decoded"] == true {
            print_table_or_none(&entries_table(items(&t["entries"])));
        } else {
            print_table_or_none(&raw_blocks_table(items(&t["raw"])));
        }
    }
}

/// Prints the in-flight records, per input.
fn print_in_flight(blocks: &[Value]) {
    let mut inputs: Vec<u64> = blocks.iter().filter_map(|b| b["input"].as_u64()).collect();
    inputs.dedup();
    for input in inputs {
        let of_input: Vec<&Value> = blocks.iter().filter(|b| b["input"] == input).collect();
        let records: u64 = of_input.iter().filter_map(|b| b["records"].as_u64()).sum();
        println!(
            "\nin-flight records into input {input}  type {}  blocks {}  records {records}",
            of_input
                .first()
                .map_or(String::new(), |b| unquoted(&b["type_name"])),
            of_input.len(),
        );
        let mut rows = with_header(&["FROM", "TO", "TIMESTAMP", "VALUE"]);
        for b in &of_input {
            for r in items(&b["entries"]) {
                rows.push(vec![
                    b["from"].to_string(),
                    b["to"].to_string(),
                    r["timestamp"].to_string(),
                    r["value"].to_string(),
                ]);
            }
        }
        print_table_or_none(&rows);
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
