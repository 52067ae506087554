//! `spate-ckpt list`: every checkpoint in the manifest, retained or recorded as
//! discarded, one row each; and [`summary`], the per-checkpoint JSON fields
//! that `show` extends.

use std::path::Path;

use anyhow::Result;
use serde_json::{json, Value};
use spate::checkpoint::CheckpointMetadata;
use spate_storage::CheckpointRecord;

use crate::output::{print_table, utc, with_header};
use crate::store::open;

/// The JSON fields of one checkpoint in `list` (and at the top of `show`): its
/// record's, and its metadata's (null, with `error` saying why, when the
/// metadata does not decode).
pub fn summary(
    record: &CheckpointRecord,
    retained: bool,
    metadata: &Result<CheckpointMetadata, spate::checkpoint::metadata::MetadataError>,
) -> Value {
    let base = json!({
        "id": record.id,
        "status": if retained { "completed" } else { "discarded" },
        "retained": retained,
        "timestamp_ms": record.timestamp_ms,
        "handles": record.handles.len(),
        "metadata_bytes": record.metadata.len(),
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
            "max_parallelism": null, "cause": null, "error": e.to_string(),
        }),
    };
    if let Value::Object(extra) = extra {
        obj.extend(extra);
    }
    Value::Object(obj)
}

/// Runs `list`.
pub fn list(dir: &Path, as_json: bool) -> Result<()> {
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
    print_list(&rows);
    Ok(())
}

/// Prints the [`summary`] of each checkpoint as a table row, and warns of those
/// whose metadata does not decode.
fn print_list(rows: &[Value]) {
    let mut table = with_header(&[
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
    ]);
    let s = crate::output::cell;
    let b = crate::output::bytes_cell;
    for r in rows {
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
    for r in rows {
        if let Some(e) = r["error"].as_str() {
            eprintln!("warning: checkpoint {}: {e}", r["id"]);
        }
    }
    if rows.is_empty() {
        println!("(no checkpoints)");
    }
}
