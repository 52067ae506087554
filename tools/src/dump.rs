//! `spate-ckpt dump`: the state entries of one operator in one checkpoint.
//!
//! Each key group's chain is read and decoded through [`spate::inspect`] (the
//! base, then the deltas, as a restore loads them) with the decoder the
//! [`Registry`] holds for the type name the engine recorded. A type the registry
//! does not know is shown as its raw blocks (hex and a UTF-8 preview of the
//! first bytes). A block that does not read or decode is reported with
//! checkpoint, operator, state, key group and block, and the dump goes on.

use anyhow::{bail, Result};
use serde_json::{json, Value};
use spate::checkpoint::metadata::StateBlock;
use spate::inspect::{InspectError, KeyGroupChain, TIMERS_TABLE};

use crate::registry::{hex_string, Registry};
use crate::{human_bytes, print_table, Checkpoint};

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
    let mut remaining = args.limit.unwrap_or(usize::MAX);
    let (mut matched_all, mut shown_all) = (0u64, 0u64);
    let mut truncated = false;
    let mut errors: Vec<InspectError> = Vec::new();
    let mut table_docs = Vec::new();
    for (name, groups) in &tables {
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
                    errors.push(e);
                    continue;
                }
            };
            match decoder {
                Some(d) => match (d.decode)(&chain) {
                    Ok(entries) => {
                        for e in entries {
                            if args.key.as_deref().is_some_and(|k| !key_matches(&e.key, k)) {
                                continue;
                            }
                            matched += 1;
                            if remaining == 0 {
                                truncated = true;
                                continue;
                            }
                            remaining -= 1;
                            rows.push(json!({
                                "key_group": s.key_group, "key": e.key, "value": e.value,
                            }));
                        }
                    }
                    Err(e) => errors.push(e),
                },
                None => {
                    matched += s.entries;
                    for part in &chain.parts {
                        if remaining == 0 {
                            truncated = true;
                            break;
                        }
                        remaining -= 1;
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
            }
        }
        matched_all += matched;
        shown_all += (rows.len() + raw.len()) as u64;
        table_docs.push(json!({
            "table": name,
            "type_name": type_name,
            "decoded": decoder.is_some(),
            "key_groups": groups.len(),
            "matched": matched,
            "entries": rows,
            "raw": raw,
        }));
    }
    if as_json {
        let doc = json!({
            "checkpoint": m.id,
            "retained": checkpoint.retained,
            "operator": args.operator,
            "tables": table_docs,
            "matched": matched_all,
            "shown": shown_all,
            "truncated": truncated,
            "errors": errors.iter().map(error_json).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print_dump(checkpoint, args, &table_docs);
        println!(
            "\n{shown_all} row(s) shown; {matched_all} entr{} matched{}",
            if matched_all == 1 { "y" } else { "ies" },
            if truncated { " (limited)" } else { "" }
        );
    }
    for e in &errors {
        eprintln!("error: {e}");
    }
    Ok(errors.is_empty())
}

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
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    for t in tables {
        println!(
            "\nstate {}  type {}  key groups {}  entries {}{}",
            text(&t["table"]),
            text(&t["type_name"]),
            t["key_groups"],
            t["matched"],
            if t["decoded"] == true {
                ""
            } else {
                "  (type unknown to spate-ckpt: raw blocks)"
            }
        );
        if t["decoded"] == true {
            let entries = t["entries"].as_array().map_or(&[][..], |v| v);
            if entries.is_empty() {
                println!("(none)");
                continue;
            }
            let mut rows = vec![["KEY GROUP", "KEY", "VALUE"].map(String::from).to_vec()];
            for e in entries {
                rows.push(vec![
                    e["key_group"].to_string(),
                    e["key"].to_string(),
                    e["value"].to_string(),
                ]);
            }
            print_table(&rows);
        } else {
            let raw = t["raw"].as_array().map_or(&[][..], |v| v);
            if raw.is_empty() {
                println!("(none)");
                continue;
            }
            let mut rows = vec![[
                "KEY GROUP",
                "CHECKPOINT",
                "BLOCK",
                "OFFSET",
                "KIND",
                "BYTES",
                "HEX",
                "UTF-8",
            ]
            .map(String::from)
            .to_vec()];
            for r in raw {
                rows.push(vec![
                    r["key_group"].to_string(),
                    r["checkpoint"].to_string(),
                    text(&r["segment"]),
                    r["offset"].to_string(),
                    if r["delta"] == true { "delta" } else { "base" }.into(),
                    human_bytes(r["bytes"].as_u64().unwrap_or(0)),
                    format!(
                        "{}{}",
                        text(&r["hex"]),
                        if r["truncated"] == true { "…" } else { "" }
                    ),
                    text(&r["utf8"]),
                ]);
            }
            print_table(&rows);
        }
    }
}
