//! `spate-ckpt diff`: what changed in the keyed state between two checkpoints,
//! per operator, state and key group: entries added, removed and changed, and
//! bytes.
//!
//! A key group whose chain is the same blocks in both checkpoints (an
//! incremental checkpoint reusing it) is unchanged without decoding anything.
//! Otherwise both chains are decoded from their recorded schemas
//! ([`crate::entries`]) and compared entry by entry on their shown values;
//! timers are compared as sets. The first `--entries` entries that differ are
//! listed with their keys, and for a changed entry the fields that differ
//! (`clicks`, `address.city`) with both values. A key group that does not read
//! or decode is compared only by its metadata (entries, bytes).

use std::collections::{BTreeMap, HashSet};

use anyhow::Result;
use serde_json::{json, Value};
use spate::checkpoint::metadata::StateBlock;
use spate::internals::inspect::{KeyGroupChain, TIMERS_TABLE};
use spate_storage::BlockHandle;

use crate::decode::compare_values;
use crate::display::Displays;
use crate::entries::{key_group_entries, type_name, BlockError};
use crate::output::{human_bytes, items, print_table, print_table_or_none, with_header};
use crate::store::Checkpoint;

mod changes;

use changes::{Change, Listed};

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

/// Shown entries of one side: key text -> (key, value) (tables), or the set
/// of `[key, value]` texts (timers, whose value is `Null`). An empty map for
/// a key group without state on that side.
fn entries(
    c: &Checkpoint,
    displays: &Displays,
    s: Option<&StateBlock>,
) -> Result<BTreeMap<String, (Value, Value)>, BlockError> {
    let Some(s) = s else {
        return Ok(BTreeMap::new());
    };
    let chain = KeyGroupChain::read(c.reader, c.record, &c.metadata, s)?;
    let decoded = key_group_entries(&chain, displays)?;
    let timers = s.table == TIMERS_TABLE;
    Ok(decoded
        .into_iter()
        .map(|e| {
            if timers {
                (
                    json!([e.key, e.value]).to_string(),
                    (Value::Null, Value::Null),
                )
            } else {
                (e.key.to_string(), (e.key, e.value))
            }
        })
        .collect())
}

/// The entries of `m` in key order (as `dump` sorts them), not in the order
/// of their key texts.
fn sorted(m: &BTreeMap<String, (Value, Value)>) -> Vec<(&String, &Value, &Value)> {
    let mut v: Vec<(&String, &Value, &Value)> = m.iter().map(|(k, (key, v))| (k, key, v)).collect();
    v.sort_by(|x, y| compare_values(x.1, y.1));
    v
}

/// Counts the entries added, removed, changed and unchanged from `a` to `b`,
/// and lists those that differ in `listed` (as far as it takes them).
fn compare(
    a: &BTreeMap<String, (Value, Value)>,
    b: &BTreeMap<String, (Value, Value)>,
    listed: &mut Listed,
    at: (&str, &str, u32),
) -> Counts {
    let mut counts = Counts::default();
    for (k, key, va) in sorted(a) {
        match b.get(k) {
            None => {
                counts.removed += 1;
                listed.push(at, Change::removed(key, va));
            }
            Some((_, vb)) if vb == va => counts.unchanged += 1,
            Some((_, vb)) => {
                counts.changed += 1;
                listed.push(at, Change::changed(key, va, vb));
            }
        }
    }
    for (k, key, vb) in sorted(b) {
        if !a.contains_key(k) {
            counts.added += 1;
            listed.push(at, Change::added(key, vb));
        }
    }
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

/// A key group's state in A and in B (`None` where that checkpoint has none).
type Pair<'a> = (Option<&'a StateBlock>, Option<&'a StateBlock>);

/// Every key group with state in A or in B, by operator, table and key group.
fn pair_key_groups<'a>(
    a: &'a Checkpoint,
    b: &'a Checkpoint,
) -> BTreeMap<(&'a str, &'a str, u32), Pair<'a>> {
    let mut pairs: BTreeMap<(&str, &str, u32), Pair> = BTreeMap::new();
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
    pairs
}

/// One key group compared.
struct KeyGroupDiff {
    /// `None` when the entries were not compared (a chain that does not read
    /// or decode).
    counts: Option<Counts>,
    bytes: Bytes,
    /// The chain is the same blocks in both checkpoints.
    same_blocks: bool,
}

/// Compares one key group: by its blocks, and unless they are the same by its
/// entries; errors reading or decoding it go to `errors`.
fn diff_key_group(
    (a, b): (&Checkpoint, &Checkpoint),
    displays: &Displays,
    (sa, sb): Pair,
    listed: &mut Listed,
    errors: &mut Vec<BlockError>,
) -> KeyGroupDiff {
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
    let same_blocks = sa.is_some() && sb.is_some() && ha == hb && ha.iter().all(|h| h.0.is_some());
    let counts = if same_blocks {
        Some(Counts {
            unchanged: sb.map_or(0, |s| s.entries),
            ..Counts::default()
        })
    } else {
        match (entries(a, displays, sa), entries(b, displays, sb)) {
            (Ok(ea), Ok(eb)) => {
                let s = sa.or(sb).expect("a key group with state on one side");
                let timers = s.table == TIMERS_TABLE;
                let mut none = Listed::none();
                let listed = if timers { &mut none } else { listed };
                Some(compare(
                    &ea,
                    &eb,
                    listed,
                    (&s.operator, &s.table, s.key_group),
                ))
            }
            (ra, rb) => {
                errors.extend(ra.err());
                errors.extend(rb.err());
                None
            }
        }
    };
    KeyGroupDiff {
        counts,
        bytes,
        same_blocks,
    }
}

/// One table compared: its key groups' rows and their sums.
struct TableDiff {
    type_name: String,
    /// Every key group's entries were compared.
    compared: bool,
    counts: Counts,
    bytes: Bytes,
    groups: Vec<Value>,
    differing: u64,
    compared_groups: u64,
}

impl TableDiff {
    fn new(type_name: String) -> Self {
        TableDiff {
            type_name,
            compared: true,
            counts: Counts::default(),
            bytes: Bytes::default(),
            groups: Vec::new(),
            differing: 0,
            compared_groups: 0,
        }
    }

    /// Adds key group `key_group` (`d`, its comparison of `sa` and `sb`): its
    /// row and its sums.
    fn add(&mut self, key_group: u32, (sa, sb): Pair, d: &KeyGroupDiff) {
        self.bytes.add(&d.bytes);
        match &d.counts {
            Some(c) => {
                self.counts.add(c);
                self.compared_groups += 1;
            }
            None => self.compared = false,
        }
        if d.counts.as_ref().is_none_or(Counts::differs) && !d.same_blocks {
            self.differing += 1;
        }
        self.groups.push(merge(
            merge(
                json!({
                    "key_group": key_group,
                    "entries_a": sa.map(|s| s.entries),
                    "entries_b": sb.map(|s| s.entries),
                    "same_blocks": d.same_blocks,
                    "compared": d.counts.is_some(),
                }),
                counts_json(d.counts.as_ref()),
            ),
            bytes_json(&d.bytes),
        ));
    }

    /// This table, named `name`, as JSON.
    fn to_json(&self, name: &str) -> Value {
        merge(
            merge(
                json!({
                    "table": name,
                    "type_name": self.type_name,
                    "compared": self.compared,
                    "differing_key_groups": self.differing,
                    "key_groups": self.groups,
                }),
                counts_json((self.compared_groups > 0).then_some(&self.counts)),
            ),
            bytes_json(&self.bytes),
        )
    }
}

/// Per operator, its tables compared.
type Operators<'a> = BTreeMap<&'a str, BTreeMap<&'a str, TableDiff>>;

/// Runs `diff`; returns whether every key group read and decoded. At most
/// `entries` entries that differ are listed.
pub fn diff(
    a: &Checkpoint,
    b: &Checkpoint,
    displays: &Displays,
    entries: usize,
    as_json: bool,
) -> Result<bool> {
    let mut errors = Vec::new();
    let mut listed = Listed::new(entries);
    let mut tables: Operators = BTreeMap::new();
    for (&(operator, table, key_group), &pair) in &pair_key_groups(a, b) {
        let d = diff_key_group((a, b), displays, pair, &mut listed, &mut errors);
        let type_name = match (pair.1, pair.0) {
            (Some(s), _) => type_name(&b.metadata, s.schema),
            (None, Some(s)) => type_name(&a.metadata, s.schema),
            (None, None) => String::new(),
        };
        tables
            .entry(operator)
            .or_default()
            .entry(table)
            .or_insert_with(|| TableDiff::new(type_name))
            .add(key_group, pair, &d);
    }
    let (operators, total_counts, total_bytes) = operators_json(&tables);
    let doc = json!({
        "a": a.metadata.id,
        "b": b.metadata.id,
        "operators": operators,
        "totals": merge(counts_json(Some(&total_counts)), bytes_json(&total_bytes)),
        "entries": listed.json(),
        "entries_truncated": listed.truncated(),
        "errors": errors.iter().map(BlockError::json).collect::<Vec<_>>(),
    });
    if as_json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print_diff(&doc);
        changes::print(&doc);
    }
    for e in &errors {
        eprintln!("error: {e}");
    }
    Ok(errors.is_empty())
}

/// Every operator as JSON with its tables and their sums; and the sums over
/// all operators.
fn operators_json(tables: &Operators) -> (Vec<Value>, Counts, Bytes) {
    let mut total_counts = Counts::default();
    let mut total_bytes = Bytes::default();
    let operators = tables
        .iter()
        .map(|(op, ts)| {
            let mut counts = Counts::default();
            let mut bytes = Bytes::default();
            let tables: Vec<Value> = ts
                .iter()
                .map(|(name, t)| {
                    counts.add(&t.counts);
                    bytes.add(&t.bytes);
                    t.to_json(name)
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
    (operators, total_counts, total_bytes)
}

/// A count cell: the number, or `-` for null.
fn count_cell(v: &Value) -> String {
    v.as_u64().map_or("-".to_string(), |n| n.to_string())
}

/// A bytes cell: the bytes shown, or `-` for null.
fn bytes_cell(v: &Value) -> String {
    v.as_u64().map_or("-".to_string(), human_bytes)
}

/// A text cell: the string, or empty.
fn text_cell(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// Prints `diff`'s JSON document `doc` as tables: per table, then the key
/// groups that differ.
fn print_diff(doc: &Value) {
    println!("diff checkpoint {} -> {}", doc["a"], doc["b"]);
    let operators = items(&doc["operators"]);
    if operators.is_empty() {
        println!("(no keyed state in either checkpoint)");
        return;
    }
    println!();
    print_table(&table_rows(operators));
    let t = &doc["totals"];
    println!(
        "\ntotal: {} added, {} removed, {} changed, {} unchanged; {} -> {} ({} new)",
        count_cell(&t["added"]),
        count_cell(&t["removed"]),
        count_cell(&t["changed"]),
        count_cell(&t["unchanged"]),
        bytes_cell(&t["bytes_a"]),
        bytes_cell(&t["bytes_b"]),
        bytes_cell(&t["new_bytes"]),
    );
    println!("\nkey groups that differ");
    print_table_or_none(&differing_rows(operators));
}

/// One row per operator and table.
fn table_rows(operators: &[Value]) -> Vec<Vec<String>> {
    let mut rows = with_header(&[
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
    ]);
    for op in operators {
        for t in items(&op["tables"]) {
            let compared = t["compared"] == true;
            // Partly compared (some key groups of an unknown type): a lower bound.
            let count = |k: &str| match &t[k] {
                Value::Null => "-".to_string(),
                v if compared => count_cell(v),
                v => format!("{}+?", count_cell(v)),
            };
            rows.push(vec![
                text_cell(&op["operator"]),
                text_cell(&t["table"]),
                items(&t["key_groups"]).len().to_string(),
                count_cell(&t["differing_key_groups"]),
                count("added"),
                count("removed"),
                count("changed"),
                count("unchanged"),
                bytes_cell(&t["bytes_a"]),
                bytes_cell(&t["bytes_b"]),
                bytes_cell(&t["new_bytes"]),
                text_cell(&t["type_name"]),
            ]);
        }
    }
    rows
}

/// One row per key group that differs (not the same blocks, and entries
/// added, removed or changed or not compared).
fn differing_rows(operators: &[Value]) -> Vec<Vec<String>> {
    let mut rows = with_header(&[
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
    ]);
    for op in operators {
        for t in items(&op["tables"]) {
            for g in items(&t["key_groups"]) {
                let differs = g["same_blocks"] != true
                    && (g["compared"] != true
                        || ["added", "removed", "changed"]
                            .iter()
                            .any(|k| g[*k].as_u64().unwrap_or(0) > 0));
                if differs {
                    rows.push(vec![
                        text_cell(&op["operator"]),
                        text_cell(&t["table"]),
                        count_cell(&g["key_group"]),
                        count_cell(&g["entries_a"]),
                        count_cell(&g["entries_b"]),
                        count_cell(&g["added"]),
                        count_cell(&g["removed"]),
                        count_cell(&g["changed"]),
                        bytes_cell(&g["bytes_a"]),
                        bytes_cell(&g["bytes_b"]),
                        bytes_cell(&g["new_bytes"]),
                    ]);
                }
            }
        }
    }
    rows
}
