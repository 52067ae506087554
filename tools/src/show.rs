//! `spate-ckpt show`: the statistics and layout of one checkpoint: what `list`
//! shows of it, its subtasks, its keyed state summed per operator and table,
//! its in-flight data, its source offsets and, with `--key-groups`, every key
//! group.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::Result;
use serde_json::{json, Value};
use spate::checkpoint::metadata::StateBlock;
use spate::checkpoint::CheckpointMetadata;

use crate::list::summary;
use crate::output::{human_bytes, print_table, print_table_or_none, utc, with_header};
use crate::store::{open, Checkpoint};

/// The keyed state of one operator: the key groups it has state in, and
/// statistics per table.
#[derive(Default)]
struct OperatorStats<'a> {
    key_groups: BTreeSet<u32>,
    tables: BTreeMap<&'a str, TableStats>,
}

/// The keyed state of one table, summed over its key groups.
#[derive(Default)]
struct TableStats {
    type_name: String,
    key_groups: u64,
    entries: u64,
    bytes: u64,
    base_bytes: u64,
    max_chain_len: usize,
}

/// Bytes of the chain's base blocks (not deltas).
fn base_bytes(s: &StateBlock) -> u64 {
    s.chain.iter().filter(|b| !b.delta).map(|b| b.bytes).sum()
}

/// Runs `show`.
pub fn show(dir: &Path, id: u64, key_groups: bool, as_json: bool) -> Result<()> {
    let reader = open(dir)?;
    let checkpoint = Checkpoint::find(&reader, id)?;
    let m = &checkpoint.metadata;
    let operators = operator_stats(m);
    let mut state: Vec<&StateBlock> = m.state.iter().collect();
    state.sort_by(|a, b| {
        (&a.operator, &a.table, a.key_group).cmp(&(&b.operator, &b.table, b.key_group))
    });
    if as_json {
        let doc = show_json(&checkpoint, &operators, key_groups.then_some(&state[..]));
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    print_overview(&checkpoint);
    print_layout(m, key_groups);
    Ok(())
}

/// The sections of `show` after the overview: subtasks, keyed state per
/// operator, in-flight data, source offsets and, with `key_groups`, every
/// key group.
pub(crate) fn print_layout(m: &CheckpointMetadata, key_groups: bool) {
    let operators = operator_stats(m);
    let mut state: Vec<&StateBlock> = m.state.iter().collect();
    state.sort_by(|a, b| {
        (&a.operator, &a.table, a.key_group).cmp(&(&b.operator, &b.table, b.key_group))
    });
    print_subtasks(m);
    print_state(&operators);
    print_in_flight(m);
    print_sources(m);
    if key_groups {
        print_key_groups(&state);
    }
}

/// The keyed state of `m` per operator.
fn operator_stats(m: &CheckpointMetadata) -> BTreeMap<&str, OperatorStats<'_>> {
    let mut operators: BTreeMap<&str, OperatorStats> = BTreeMap::new();
    for s in &m.state {
        let op = operators.entry(&s.operator).or_default();
        op.key_groups.insert(s.key_group);
        let t = op.tables.entry(&s.table).or_default();
        if t.type_name.is_empty() {
            t.type_name = crate::entries::type_name(m, s.schema);
        }
        t.key_groups += 1;
        t.entries += s.entries;
        t.bytes += s.bytes();
        t.base_bytes += base_bytes(s);
        t.max_chain_len = t.max_chain_len.max(s.chain.len());
    }
    operators
}

/// Per operator its keyed state as JSON: summed, and per table.
fn operators_json(operators: &BTreeMap<&str, OperatorStats>) -> Vec<Value> {
    operators
        .iter()
        .map(|(op, o)| {
            json!({
                "operator": op,
                "key_groups": o.key_groups.len(),
                "entries": o.tables.values().map(|t| t.entries).sum::<u64>(),
                "bytes": o.tables.values().map(|t| t.bytes).sum::<u64>(),
                "tables": o.tables.iter().map(|(name, t)| json!({
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
        .collect()
}

/// `show`'s JSON document; `key_groups` (sorted) only with `--key-groups`.
fn show_json(
    checkpoint: &Checkpoint,
    operators: &BTreeMap<&str, OperatorStats>,
    key_groups: Option<&[&StateBlock]>,
) -> Value {
    let m = &checkpoint.metadata;
    let mut doc = summary(checkpoint.record, checkpoint.retained, &Ok(m.clone()));
    let operators = operators_json(operators);
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
                "type_name": crate::entries::type_name(m, b.schema),
            })
        })
        .collect();
    let sources: Vec<Value> = m
        .sources
        .iter()
        .map(|s| json!({"source": s.source, "subtask": s.subtask, "offset": s.offset, "split": s.split}))
        .collect();
    if let Value::Object(obj) = &mut doc {
        obj.insert("schemas".into(), json!(m.schemas.len()));
        obj.insert("schema_bytes".into(), json!(schema_bytes(m)));
        obj.insert("subtasks".into(), Value::Array(subtasks));
        obj.insert("operators".into(), Value::Array(operators));
        obj.insert("in_flight".into(), Value::Array(in_flight));
        obj.insert("sources".into(), Value::Array(sources));
        if let Some(state) = key_groups {
            let rows = state
                .iter()
                .map(|s| {
                    json!({
                        "operator": s.operator, "table": s.table, "key_group": s.key_group,
                        "entries": s.entries, "bytes": s.bytes(), "base_bytes": base_bytes(s),
                        "chain_len": s.chain.len(),
                    })
                })
                .collect();
            obj.insert("key_groups".into(), Value::Array(rows));
        }
    }
    doc
}

/// The two lines about the checkpoint as a whole.
fn print_overview(checkpoint: &Checkpoint) {
    let (record, m) = (checkpoint.record, &checkpoint.metadata);
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
    println!(
        "metadata {}  schemas {} ({})",
        human_bytes(record.metadata.len() as u64),
        m.schemas.len(),
        human_bytes(schema_bytes(m) as u64)
    );
}

/// Bytes the schemas take in the metadata: its archive with them less its
/// archive without them.
fn schema_bytes(m: &CheckpointMetadata) -> usize {
    let mut without = m.clone();
    without.schemas.clear();
    m.encode().len().saturating_sub(without.encode().len())
}

/// Per subtask: its checkpoint times and bytes.
fn print_subtasks(m: &CheckpointMetadata) {
    println!("\nsubtasks");
    let mut t = with_header(&[
        "SUBTASK",
        "SYNC µs",
        "ASYNC µs",
        "ALIGN µs",
        "STATE",
        "DELTA",
        "IN-FLIGHT",
        "UNALIGNED",
    ]);
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
}

/// Per operator and table: its keyed state summed over its key groups.
fn print_state(operators: &BTreeMap<&str, OperatorStats>) {
    println!("\nstate");
    if operators.is_empty() {
        println!("(no keyed state)");
        return;
    }
    let mut t = with_header(&[
        "OPERATOR",
        "TABLE",
        "KEY GROUPS",
        "ENTRIES",
        "BYTES",
        "BASE",
        "DELTA",
        "MAX CHAIN",
        "TYPE",
    ]);
    for (op, o) in operators {
        for (name, s) in &o.tables {
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
    print_table(&t);
}

/// The in-flight data stored with the checkpoint, per channel.
fn print_in_flight(m: &CheckpointMetadata) {
    println!("\nin-flight");
    let mut t = with_header(&["OPERATOR", "INPUT", "FROM", "TO", "RECORDS", "BYTES"]);
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
    print_table_or_none(&t);
}

/// The source offsets (per subtask or split).
fn print_sources(m: &CheckpointMetadata) {
    println!("\nsource offsets");
    let mut t = with_header(&["SOURCE", "SUBTASK/SPLIT", "OFFSET"]);
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
    print_table_or_none(&t);
}

/// Per key group (`--key-groups`): its entries, bytes and chain.
fn print_key_groups(state: &[&StateBlock]) {
    println!("\nkey groups");
    let mut t = with_header(&[
        "OPERATOR",
        "TABLE",
        "KEY GROUP",
        "ENTRIES",
        "BYTES",
        "BASE",
        "CHAIN",
    ]);
    for s in state {
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
