//! What `dump` and `diff` show of a checkpoint's blocks, decoded from the
//! recorded schemas alone ([`crate::decode`]): a key group's keyed state
//! (its base, then its deltas applied as a restore applies them: deleted
//! keys removed, then upserts), its timers, and the records an unaligned
//! checkpoint persisted in flight.
//!
//! The block layouts are the engine's (`docs/storage-format.md` §6.4): a base
//! archives `Vec<(K, V)>`, a delta `(Vec<(K, V)>, Vec<K>)`, a timers block
//! `Vec<(u64, u8, K)>`, an in-flight block `Vec<(u64, T)>`; the schema's
//! roots name those types, and a root of another shape is an error.

use serde_json::{json, Value};
use spate::checkpoint::metadata::InFlightBlock;
use spate::checkpoint::CheckpointMetadata;
use spate::internals::inspect::{read_block, InspectError, KeyGroupChain};
use spate::schema::{BlockSchema, Roots, Shape};
use spate_storage::BlockHandle;
use std::collections::BTreeMap;

use crate::decode::{compare_values, DecodeError, Decoder};
use crate::display::Displays;
use crate::store::Checkpoint;

/// One decoded entry: a key and its value (a timer's key, and its time and
/// domain).
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// The key.
    pub key: Value,
    /// The value.
    pub value: Value,
}

/// A block that does not read or decode, named by checkpoint, operator,
/// state (or in-flight input), key group and block.
#[derive(Debug, Clone)]
pub struct BlockError {
    /// The checkpoint.
    pub checkpoint: u64,
    /// The operator.
    pub operator: String,
    /// The state (`__timers` for timers, `__in_flight` for in-flight records).
    pub table: String,
    /// The key group (none for in-flight records).
    pub key_group: Option<u32>,
    /// The block concerned, when one is.
    pub handle: Option<BlockHandle>,
    /// What went wrong.
    pub error: String,
}

impl std::fmt::Display for BlockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "checkpoint {}, operator `{}`, state `{}`",
            self.checkpoint, self.operator, self.table
        )?;
        if let Some(g) = self.key_group {
            write!(f, ", key group {g}")?;
        }
        if let Some(h) = &self.handle {
            write!(
                f,
                ", block {} offset {} ({} bytes)",
                h.segment.file_name(),
                h.offset,
                h.len
            )?;
        }
        write!(f, ": {}", self.error)
    }
}

impl From<InspectError> for BlockError {
    fn from(e: InspectError) -> Self {
        // The engine's message already names everything; keep only its cause.
        let error = e.kind.to_string();
        BlockError {
            checkpoint: e.checkpoint,
            operator: e.operator,
            table: e.table,
            key_group: Some(e.key_group),
            handle: e.handle,
            error,
        }
    }
}

impl BlockError {
    /// As a JSON object (`dump`'s and `diff`'s `errors`).
    pub fn json(&self) -> Value {
        json!({
            "checkpoint": self.checkpoint,
            "operator": self.operator,
            "table": self.table,
            "key_group": self.key_group,
            "segment": self.handle.map(|h| h.segment.file_name()),
            "offset": self.handle.map(|h| h.offset),
            "error": self.to_string(),
        })
    }
}

/// The name `pseudo-table` of in-flight records in errors and `--table`.
pub const IN_FLIGHT_TABLE: &str = "__in_flight";

fn wrong_root(what: &str) -> DecodeError {
    DecodeError {
        offset: 0,
        what: format!("the block's root is not {what}"),
    }
}

/// The elements of the sequence of tuples at the root of `archive`: per
/// element, the position of each of its `arity` fields and their types.
fn root_tuples(
    d: &Decoder,
    root: u32,
    arity: usize,
) -> Result<Vec<Vec<(usize, u32)>>, DecodeError> {
    let def = d.def(root)?;
    let Shape::Seq { element } = def.shape else {
        return Err(wrong_root("a sequence"));
    };
    tuples_at(d, d.root(root)?, root, element, arity)
}

/// The tuples of the sequence of type `seq` at `pos`.
fn tuples_at(
    d: &Decoder,
    pos: usize,
    seq: u32,
    element: u32,
    arity: usize,
) -> Result<Vec<Vec<(usize, u32)>>, DecodeError> {
    let Shape::Tuple { fields } = &d.def(element)?.shape else {
        return Err(wrong_root("a sequence of tuples"));
    };
    if fields.len() != arity {
        return Err(wrong_root(&format!("a sequence of {arity}-tuples")));
    }
    let size = d.def(element)?.size as usize;
    let (start, len) = d.seq(pos, d.def(seq)?, element)?;
    Ok((0..len)
        .map(|i| {
            let at = start + i * size;
            fields
                .iter()
                .map(|f| (at + f.offset as usize, f.ty))
                .collect()
        })
        .collect())
}

/// A key's identity (its default JSON text) with its shown value.
fn key_of(
    d: &Decoder,
    pos: usize,
    ty: u32,
    displays: &Displays,
) -> Result<(String, Value), DecodeError> {
    let plain = d.plain_value(pos, ty)?;
    let shown = if displays.is_empty() {
        plain.clone()
    } else {
        d.value(pos, ty)?
    };
    Ok((plain.to_string(), shown))
}

/// A key group's keyed state (`Roots::Keyed`) or timers (`Roots::Timers`),
/// sorted by key (then time).
pub fn key_group_entries(
    chain: &KeyGroupChain,
    displays: &Displays,
) -> Result<Vec<Entry>, BlockError> {
    let Some(schema) = &chain.schema else {
        return Err(chain_error(
            chain,
            None,
            "the metadata names no schema for it".into(),
        ));
    };
    let mut map: BTreeMap<String, (Value, Value)> = BTreeMap::new();
    let mut timers = Vec::new();
    for part in &chain.parts {
        let d = Decoder::new(schema, part.bytes.as_bytes(), displays);
        let applied = match schema.roots {
            Roots::Keyed { base, .. } if !part.delta => {
                map.clear();
                root_tuples(&d, base, 2).and_then(|e| upsert(&d, e, &mut map, displays))
            }
            Roots::Keyed { delta, .. } => apply_delta(&d, delta, &mut map, displays),
            Roots::Timers { block, .. } => push_timers(&d, block, &mut timers),
            Roots::InFlight { .. } => Err(wrong_root("keyed state")),
        };
        applied.map_err(|e| chain_error(chain, Some(part.handle), e.to_string()))?;
    }
    if matches!(schema.roots, Roots::Timers { .. }) {
        timers.sort_by(|a: &Entry, b: &Entry| {
            compare_values(&a.key, &b.key)
                .then_with(|| compare_values(&a.value["timestamp"], &b.value["timestamp"]))
        });
        return Ok(timers);
    }
    let mut entries: Vec<Entry> = map
        .into_values()
        .map(|(key, value)| Entry { key, value })
        .collect();
    entries.sort_by(|a, b| compare_values(&a.key, &b.key));
    Ok(entries)
}

fn chain_error(chain: &KeyGroupChain, handle: Option<BlockHandle>, error: String) -> BlockError {
    BlockError {
        checkpoint: chain.checkpoint,
        operator: chain.operator.clone(),
        table: chain.table.clone(),
        key_group: Some(chain.key_group),
        handle,
        error,
    }
}

/// Inserts `(key, value)` entries, replacing equal keys.
fn upsert(
    d: &Decoder,
    entries: Vec<Vec<(usize, u32)>>,
    map: &mut BTreeMap<String, (Value, Value)>,
    displays: &Displays,
) -> Result<(), DecodeError> {
    for e in entries {
        let (identity, key) = key_of(d, e[0].0, e[0].1, displays)?;
        let value = d.value(e[1].0, e[1].1)?;
        map.insert(identity, (key, value));
    }
    Ok(())
}

/// A delta `(Vec<(K, V)>, Vec<K>)`: the deleted keys go, then the upserts
/// are applied (the restore's order).
fn apply_delta(
    d: &Decoder,
    delta: u32,
    map: &mut BTreeMap<String, (Value, Value)>,
    displays: &Displays,
) -> Result<(), DecodeError> {
    let Shape::Tuple { fields } = &d.def(delta)?.shape else {
        return Err(wrong_root("a delta (upserts, deletes)"));
    };
    let [upserts, deletes] = &fields[..] else {
        return Err(wrong_root("a delta (upserts, deletes)"));
    };
    let at = d.root(delta)?;
    let (Shape::Seq { element: entry }, Shape::Seq { element: key }) =
        (&d.def(upserts.ty)?.shape, &d.def(deletes.ty)?.shape)
    else {
        return Err(wrong_root("a delta of two sequences"));
    };
    let key_size = d.def(*key)?.size as usize;
    let (start, len) = d.seq(at + deletes.offset as usize, d.def(deletes.ty)?, *key)?;
    for i in 0..len {
        let (identity, _) = key_of(d, start + i * key_size, *key, displays)?;
        map.remove(&identity);
    }
    let entries = tuples_at(d, at + upserts.offset as usize, upserts.ty, *entry, 2)?;
    upsert(d, entries, map, displays)
}

/// A timers block `Vec<(u64, u8, K)>`.
fn push_timers(d: &Decoder, block: u32, out: &mut Vec<Entry>) -> Result<(), DecodeError> {
    for t in root_tuples(d, block, 3)? {
        let timestamp = d.value(t[0].0, t[0].1)?;
        let domain = match d.plain_value(t[1].0, t[1].1)?.as_u64() {
            Some(0) => "event",
            _ => "processing",
        };
        out.push(Entry {
            key: d.value(t[2].0, t[2].1)?,
            value: json!({ "timestamp": timestamp, "domain": domain }),
        });
    }
    Ok(())
}

/// One in-flight block's records, read and decoded: `(timestamp, value)`.
pub fn in_flight_records(
    checkpoint: &Checkpoint,
    block: &InFlightBlock,
    displays: &Displays,
) -> Result<Vec<(Value, Value)>, BlockError> {
    let error = |handle, error: String| BlockError {
        checkpoint: checkpoint.metadata.id,
        operator: block.operator.clone(),
        table: IN_FLIGHT_TABLE.to_string(),
        key_group: None,
        handle,
        error: format!(
            "input {} from subtask {} to {}: {error}",
            block.input, block.from, block.to
        ),
    };
    let schema = schema_of(&checkpoint.metadata, block.schema)
        .ok_or_else(|| error(None, "the metadata names no schema for it".into()))?;
    let (handle, bytes) = read_block(checkpoint.reader, checkpoint.record, block.handle)
        .map_err(|(h, kind)| error(h, kind.to_string()))?;
    let Roots::InFlight { block: root, .. } = schema.roots else {
        return Err(error(
            Some(handle),
            "its schema is not one of in-flight records".into(),
        ));
    };
    let d = Decoder::new(schema, bytes.as_bytes(), displays);
    let records = root_tuples(&d, root, 2).and_then(|records| {
        records
            .into_iter()
            .map(|r| Ok((d.value(r[0].0, r[0].1)?, d.value(r[1].0, r[1].1)?)))
            .collect::<Result<Vec<_>, DecodeError>>()
    });
    records.map_err(|e| error(Some(handle), e.to_string()))
}

/// Schema `index` of `metadata`.
pub fn schema_of(metadata: &CheckpointMetadata, index: u32) -> Option<&BlockSchema> {
    metadata.schema(index)
}

/// The name shown for the type of a state or in-flight block's schema.
pub fn type_name(metadata: &CheckpointMetadata, index: u32) -> String {
    schema_of(metadata, index).map_or_else(
        || format!("<schema {index} missing>"),
        BlockSchema::entry_name,
    )
}
