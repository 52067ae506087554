//! A cluster job's checkpoint directory (`docs/cluster.md` §15): the
//! leader's global records under `cluster/`, each naming the parts, one
//! per process, in the stores `process-<p>/`. `list` shows the global
//! checkpoints, `show` one of them with its parts merged as a restore
//! merges them, `verify` every part store and that every global record's
//! parts read back. `dump`, `diff` and `gc` work on one part's store.
//! With the checkpoints in a remote tier (§15.9), the same over its URL:
//! records under `cluster/`, parts under `process-<p>/`.

use std::path::Path;

use anyhow::{bail, Result};
use serde_json::{json, Value};
use spate::internals::inspect::{cluster_checkpoint, cluster_records, ClusterCheckpoint};

use crate::output::{human_bytes, print_table, utc, with_header};

/// Whether `dir` is a cluster job's checkpoint directory.
pub fn is_cluster(dir: &Path) -> bool {
    spate::internals::inspect::is_cluster_dir(dir)
}

/// The global checkpoints' ids under `root` (a directory, or the URL of
/// the job's remote tier).
fn ids(root: &Path) -> Result<Vec<u64>> {
    let records = cluster_records(root).map_err(anyhow::Error::msg)?;
    records
        .ids()
        .map_err(|e| anyhow::anyhow!("{}: {e}", records.describe()))
}

/// One global checkpoint as JSON.
fn summary(c: &ClusterCheckpoint) -> Value {
    let r = &c.record;
    let parts: Vec<Value> = c
        .parts
        .iter()
        .map(|p| {
            json!({
                "process": p.process,
                "dir": p.dir.display().to_string(),
                "error": p.metadata.as_ref().err(),
            })
        })
        .collect();
    let merged = c.merged.as_ref().ok();
    json!({
        "id": r.id,
        "trigger_ms": r.trigger_ms,
        "completed_ms": r.completed_ms,
        "duration_ms": r.completed_ms.saturating_sub(r.trigger_ms),
        "processes": r.processes,
        "cores_per_process": r.parallelism,
        "cores": r.processes * r.parallelism,
        "mode": merged.map(|m| m.mode.clone()),
        "incremental": merged.map(|m| m.incremental),
        "bytes": merged.map(|m| m.bytes()),
        "written_bytes": merged.map(|m| m.written_bytes()),
        "in_flight_bytes": merged.map(|m| m.in_flight_bytes()),
        "max_parallelism": merged.map(|m| m.max_parallelism),
        "fingerprint": merged.map(|m| format!("{:016x}", m.fingerprint)),
        "parts": parts,
        "error": c.merged.as_ref().err(),
    })
}

/// Global checkpoint `id`, or one JSON row saying why its record is unreadable.
fn read(root: &Path, id: u64) -> std::result::Result<ClusterCheckpoint, Value> {
    cluster_checkpoint(root, id).map_err(|e| json!({ "id": id, "error": e }))
}

/// `list` of a cluster job's directory.
pub fn list(root: &Path, as_json: bool) -> Result<()> {
    let rows: Vec<Value> = ids(root)?
        .into_iter()
        .map(|id| match read(root, id) {
            Ok(c) => summary(&c),
            Err(row) => row,
        })
        .collect();
    if as_json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let mut table = with_header(&[
        "ID",
        "TIME (UTC)",
        "MODE",
        "PROCESSES",
        "CORES",
        "BYTES",
        "WRITTEN",
        "DURATION",
        "IN-FLIGHT",
        "PARTS",
    ]);
    let b = crate::output::bytes_cell;
    let s = crate::output::cell;
    for r in &rows {
        let parts = r["parts"].as_array();
        let ok = parts.map_or(0, |p| p.iter().filter(|p| p["error"].is_null()).count());
        table.push(vec![
            s(&r["id"]),
            r["trigger_ms"].as_u64().map_or("-".into(), utc),
            s(&r["mode"]),
            s(&r["processes"]),
            s(&r["cores"]),
            b(&r["bytes"]),
            b(&r["written_bytes"]),
            r["duration_ms"]
                .as_u64()
                .map_or("-".into(), |d| format!("{d} ms")),
            b(&r["in_flight_bytes"]),
            match parts {
                Some(p) => format!("{ok}/{} readable", p.len()),
                None => "-".into(),
            },
        ]);
    }
    print_table(&table);
    for r in &rows {
        if let Some(e) = r["error"].as_str() {
            eprintln!("warning: global checkpoint {}: {e}", r["id"]);
        }
    }
    Ok(())
}

/// `show` of one global checkpoint: its record and parts, then its layout
/// over the whole job.
pub fn show(root: &Path, id: u64, key_groups: bool, as_json: bool) -> Result<()> {
    let c = cluster_checkpoint(root, id).map_err(anyhow::Error::msg)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&summary(&c))?);
        return Ok(());
    }
    let r = &c.record;
    println!(
        "global checkpoint {}  {}  {} processes × {} cores  duration {} ms",
        r.id,
        utc(r.trigger_ms),
        r.processes,
        r.parallelism,
        r.completed_ms.saturating_sub(r.trigger_ms)
    );
    let mut parts = with_header(&["PROCESS", "STORE", "BYTES", "IN-FLIGHT", "STATUS"]);
    for p in &c.parts {
        parts.push(vec![
            p.process.to_string(),
            p.dir.display().to_string(),
            p.metadata
                .as_ref()
                .map_or("-".into(), |m| human_bytes(m.bytes())),
            p.metadata
                .as_ref()
                .map_or("-".into(), |m| human_bytes(m.in_flight_bytes())),
            match &p.metadata {
                Ok(_) => "readable".into(),
                Err(e) => e.clone(),
            },
        ]);
    }
    println!("\nparts");
    print_table(&parts);
    match &c.merged {
        Ok(m) => {
            crate::show::print_layout(m, key_groups);
            Ok(())
        }
        Err(e) => bail!("global checkpoint {id} cannot be shown whole: {e}"),
    }
}

/// `verify` of a cluster job's directory: every part store (all of its
/// checkpoints and segments), then every global record's parts.
pub fn verify(root: &Path, id: Option<u64>, as_json: bool) -> Result<bool> {
    let ids = match id {
        Some(id) => vec![id],
        None => ids(root)?,
    };
    // What is wrong with the global checkpoints themselves: (id, text).
    let mut global: Vec<(u64, String)> = Vec::new();
    let mut stores = std::collections::BTreeSet::new();
    for &id in &ids {
        match cluster_checkpoint(root, id) {
            Ok(c) => {
                for p in &c.parts {
                    stores.insert(p.dir.clone());
                    if let Err(e) = &p.metadata {
                        global.push((id, format!("the part of process {}: {e}", p.process)));
                    }
                }
                if let Err(e) = &c.merged {
                    global.push((id, format!("the parts do not merge: {e}")));
                }
            }
            Err(e) => global.push((id, e.to_string())),
        }
    }
    if as_json {
        let mut ok = global.is_empty();
        let stores: Vec<Value> = stores
            .iter()
            .map(|dir| {
                let mut doc = match crate::verify::check(dir, id) {
                    Ok(checked) => {
                        ok &= checked.ok();
                        checked.to_json()
                    }
                    Err(e) => {
                        ok = false;
                        json!({ "ok": false, "error": format!("{e:#}") })
                    }
                };
                doc["dir"] = json!(dir.display().to_string());
                doc
            })
            .collect();
        let doc = json!({
            "ok": ok,
            "checkpoints": ids,
            "problems": global
                .iter()
                .map(|(id, e)| json!({ "checkpoint": id, "error": e }))
                .collect::<Vec<_>>(),
            "stores": stores,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(ok);
    }
    for (id, e) in &global {
        println!("global checkpoint {id}: {e}");
    }
    let mut ok = global.is_empty();
    for dir in stores {
        println!("\n{}:", dir.display());
        ok &= crate::verify::verify(&dir, id, false)?;
    }
    if ok {
        println!(
            "\n{} global checkpoint(s): every part reads back",
            ids.len()
        );
    }
    Ok(ok)
}
