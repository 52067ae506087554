//! `spate-ckpt diff`: what changed in the keyed state between two checkpoints,
//! per operator, state and key group: entries added, removed and changed, and
//! bytes.
//!
//! A key group whose chain is the same blocks in both checkpoints (an
//! incremental checkpoint reusing it) is unchanged without decoding anything.
//! Otherwise both chains are decoded ([`crate::dump`]'s registry) and compared
//! entry by entry on their shown values; timers are compared as sets. A type the
//! registry does not know is compared only by its metadata (entries, bytes).

use std::collections::{BTreeMap, HashSet};

use anyhow::Result;
use serde_json::{json, Value};
use spate::checkpoint::metadata::StateBlock;
use spate::inspect::{InspectError, KeyGroupChain};
use spate_storage::BlockHandle;

use crate::dump::error_json;
use crate::registry::Registry;
use crate::{human_bytes, print_table, Checkpoint};

/// Entries added, removed, changed and unchanged (`Option<Counts>`: `None`
/// when the entries were not compared).
#[derive(Clone, Copy, Default)]
struct Counts {
    added: u64,
    removed: u64,
    changed: u64,
    unchanged: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.added += o.added;
        self.removed += o.removed;
        self.changed += o.changed;
        self.unchanged += o.unchanged;
    }
    fn differs(&self) -> bool {
        self.added + self.removed + self.changed > 0
    }
}

/// Chain bytes in A and in B, and bytes of B's blocks not in A.
#[derive(Clone, Copy, Default)]
struct Bytes {
    a: u64,
    b: u64,
    new: u64,
}

impl Bytes {
    fn add(&mut self, o: &Bytes) {
        self.a += o.a;
        self.b += o.b;
        self.new += o.new;
    }
}

/// The blocks of a chain as handles (`None` for an index out of range).
fn handles(c: &Checkpoint, s: &StateBlock) -> Vec<(Option<BlockHandle>, bool)> {
    s.chain
        .iter()
        .map(|l| (c.record.handles.get(l.handle as usize).copied(), l.delta))
        .collect()
}

/// Shown entries of one side: key text -> value (tables), or the set of
/// `[key, value]` texts (timers, whose value is `Null`).
fn entries(
    c: &Checkpoint,
    registry: &Registry,
    s: Option<&StateBlock>,
) -> Result<Option<BTreeMap<String, Value>>, InspectError> {
    let Some(s) = s else {
        return Ok(Some(BTreeMap::new()));
    };
    let Some(decoder) = registry.get(&s.type_name) else {
        return Ok(None);
    };
    let chain = KeyGroupChain::read(c.reader, c.record, s)?;
    let decoded = (decoder.decode)(&chain)?;
    Ok(Some(
        decoded
            .into_iter()
            .map(|e| {
                if decoder.timers {
                    (json!([e.key, e.value]).to_string(), Value::Null)
                } else {
                    (e.key.to_string(), e.value)
                }
            })
            .collect(),
    ))
}

fn compare(a: &BTreeMap<String, Value>, b: &BTreeMap<String, Value>) -> Counts {
    let mut counts = Counts::default();
    for (k, va) in a {
        match b.get(k) {
            None => counts.removed += 1,
            Some(vb) if vb == va => counts.unchanged += 1,
            Some(_) => counts.changed += 1,
        }
    }
    counts.added = b.keys().filter(|k| !a.contains_key(*k)).count() as u64;
    counts
}

fn counts_json(c: Option<&Counts>) -> Value {
    match c {
        Some(c) => json!({
            "added": c.added, "removed": c.removed, "changed": c.changed, "unchanged": c.unchanged,
        }),
        None => json!({"added": null, "removed": null, "changed": null, "unchanged": null}),
    }
}

fn merge(mut base: Value, extra: Value) -> Value {
    if let (Value::Object(b), Value::Object(e)) = (&mut base, extra) {
        b.extend(e);
    }
    base
}

fn bytes_json(b: &Bytes) -> Value {
    json!({"bytes_a": b.a, "bytes_b": b.b, "new_bytes": b.new})
}

/// Runs `diff`; returns whether every key group read and decoded.
pub fn diff(a: &Checkpoint, b: &Checkpoint, registry: &Registry, as_json: bool) -> Result<bool> {
    type Side<'a> = (Option<&'a StateBlock>, Option<&'a StateBlock>);
    let mut pairs: BTreeMap<(&str, &str, u32), Side> = BTreeMap::new();
    for s in &a.metadata.state {
        pairs
            .entry((&s.operator, &s.table, s.key_group))
            .or_default()
            .0 = Some(s);
    }
    for s in &b.metadata.state {
        pairs
            .entry((&s.operator, &s.table, s.key_group))
            .or_default()
            .1 = Some(s);
    }
    let mut errors = Vec::new();
    // Per operator and table: sums over its key groups, and their rows.
    struct Table {
        type_name: String,
        compared: bool,
        counts: Counts,
        bytes: Bytes,
        groups: Vec<Value>,
        differing: u64,
        compared_groups: u64,
    }
    let mut tables: BTreeMap<&str, BTreeMap<&str, Table>> = BTreeMap::new();
    for (&(operator, table, key_group), &(sa, sb)) in &pairs {
        let ha = sa.map(|s| handles(a, s)).unwrap_or_default();
        let hb = sb.map(|s| handles(b, s)).unwrap_or_default();
        let in_a: HashSet<BlockHandle> = ha.iter().filter_map(|h| h.0).collect();
        let bytes = Bytes {
            a: sa.map_or(0, StateBlock::bytes),
            b: sb.map_or(0, StateBlock::bytes),
            new: sb.map_or(0, |s| {
                s.chain
                    .iter()
                    .zip(&hb)
                    .filter(|(_, h)| h.0.is_none_or(|h| !in_a.contains(&h)))
                    .map(|(l, _)| l.bytes)
                    .sum()
            }),
        };
        let same_blocks =
            sa.is_some() && sb.is_some() && ha == hb && ha.iter().all(|h| h.0.is_some());
        let counts = if same_blocks {
            Some(Counts {
                unchanged: sb.map_or(0, |s| s.entries),
                ..Counts::default()
            })
        } else {
            match (entries(a, registry, sa), entries(b, registry, sb)) {
                (Ok(Some(ea)), Ok(Some(eb))) => Some(compare(&ea, &eb)),
                (ra, rb) => {
                    errors.extend(ra.err());
                    errors.extend(rb.err());
                    None
                }
            }
        };
        let type_name = sb.or(sa).map_or(String::new(), |s| s.type_name.clone());
        let t = tables
            .entry(operator)
            .or_default()
            .entry(table)
            .or_insert_with(|| Table {
                type_name: type_name.clone(),
                compared: true,
                counts: Counts::default(),
                bytes: Bytes::default(),
                groups: Vec::new(),
                differing: 0,
                compared_groups: 0,
            });
        t.bytes.add(&bytes);
        match &counts {
            Some(c) => {
                t.counts.add(c);
                t.compared_groups += 1;
            }
            None => t.compared = false,
        }
        let differs = counts.as_ref().is_none_or(Counts::differs) && !same_blocks;
        if differs {
            t.differing += 1;
        }
        t.groups.push(merge(
            merge(
                json!({
                    "key_group": key_group,
                    "entries_a": sa.map(|s| s.entries),
                    "entries_b": sb.map(|s| s.entries),
                    "same_blocks": same_blocks,
                    "compared": counts.is_some(),
                }),
                counts_json(counts.as_ref()),
            ),
            bytes_json(&bytes),
        ));
    }
    let mut total_counts = Counts::default();
    let mut total_bytes = Bytes::default();
    let operators: Vec<Value> = tables
        .iter()
        .map(|(op, ts)| {
            let mut counts = Counts::default();
            let mut bytes = Bytes::default();
            let tables: Vec<Value> = ts
                .iter()
                .map(|(name, t)| {
                    counts.add(&t.counts);
                    bytes.add(&t.bytes);
                    merge(
                        merge(
                            json!({
                                "table": name,
                                "type_name": t.type_name,
                                "compared": t.compared,
                                "differing_key_groups": t.differing,
                                "key_groups": t.groups,
                            }),
                            counts_json((t.compared_groups > 0).then_some(&t.counts)),
                        ),
                        bytes_json(&t.bytes),
                    )
                })
                .collect();
            total_counts.add(&counts);
            total_bytes.add(&bytes);
            merge(
                merge(
                    json!({"operator": op, "tables": tables}),
                    counts_json(Some(&counts)),
                ),
                bytes_json(&bytes),
            )
        })
        .collect();
    let doc = json!({
        "a": a.metadata.id,
        "b": b.metadata.id,
        "operators": operators,
        "totals": merge(counts_json(Some(&total_counts)), bytes_json(&total_bytes)),
        "errors": errors.iter().map(error_json).collect::<Vec<_>>(),
    });
    if as_json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print_diff(&doc);
    }
    for e in &errors {
        eprintln!("error: {e}");
    }
    Ok(errors.is_empty())
}

fn print_diff(doc: &Value) {
    let n = |v: &Value| v.as_u64().map_or("-".to_string(), |n| n.to_string());
    let b = |v: &Value| v.as_u64().map_or("-".to_string(), human_bytes);
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    println!("diff checkpoint {} -> {}", doc["a"], doc["b"]);
    let empty = Vec::new();
    let operators = doc["operators"].as_array().unwrap_or(&empty);
    if operators.is_empty() {
        println!("(no keyed state in either checkpoint)");
        return;
    }
    println!();
    let mut rows = vec![[
        "OPERATOR",
        "STATE",
        "KEY GROUPS",
        "DIFFERING",
        "ADDED",
        "REMOVED",
        "CHANGED",
        "UNCHANGED",
        "BYTES A",
        "BYTES B",
        "NEW BYTES",
        "TYPE",
    ]
    .map(String::from)
    .to_vec()];
    let mut differing = vec![[
        "OPERATOR",
        "STATE",
        "KEY GROUP",
        "ENTRIES A",
        "ENTRIES B",
        "ADDED",
        "REMOVED",
        "CHANGED",
        "BYTES A",
        "BYTES B",
        "NEW BYTES",
    ]
    .map(String::from)
    .to_vec()];
    for op in operators {
        for t in op["tables"].as_array().unwrap_or(&empty) {
            let groups = t["key_groups"].as_array().unwrap_or(&empty);
            let compared = t["compared"] == true;
            // Partly compared (some key groups of an unknown type): a lower bound.
            let count = |k: &str| match &t[k] {
                Value::Null => "-".to_string(),
                v if compared => n(v),
                v => format!("{}+?", n(v)),
            };
            rows.push(vec![
                s(&op["operator"]),
                s(&t["table"]),
                groups.len().to_string(),
                n(&t["differing_key_groups"]),
                count("added"),
                count("removed"),
                count("changed"),
                count("unchanged"),
                b(&t["bytes_a"]),
                b(&t["bytes_b"]),
                b(&t["new_bytes"]),
                s(&t["type_name"]),
            ]);
            for g in groups {
                let differs = g["same_blocks"] != true
                    && (g["compared"] != true
                        || ["added", "removed", "changed"]
                            .iter()
                            .any(|k| g[*k].as_u64().unwrap_or(0) > 0));
                if differs {
                    differing.push(vec![
                        s(&op["operator"]),
                        s(&t["table"]),
                        n(&g["key_group"]),
                        n(&g["entries_a"]),
                        n(&g["entries_b"]),
                        n(&g["added"]),
                        n(&g["removed"]),
                        n(&g["changed"]),
                        b(&g["bytes_a"]),
                        b(&g["bytes_b"]),
                        b(&g["new_bytes"]),
                    ]);
                }
            }
        }
    }
    print_table(&rows);
    let t = &doc["totals"];
    println!(
        "\ntotal: {} added, {} removed, {} changed, {} unchanged; {} -> {} ({} new)",
        n(&t["added"]),
        n(&t["removed"]),
        n(&t["changed"]),
        n(&t["unchanged"]),
        b(&t["bytes_a"]),
        b(&t["bytes_b"]),
        b(&t["new_bytes"]),
    );
    println!("\nkey groups that differ");
    if differing.len() == 1 {
        println!("(none)");
    } else {
        print_table(&differing);
    }
}
