//! `spate-ckpt gc`: what garbage collection may delete (segments no retained
//! checkpoint references and no job may still write, older manifest
//! generations, stale temporary files), and with `--yes` deleting it. The
//! decisions are [`spate_storage::gc`]'s; this module only runs and presents
//! them.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use spate_storage::gc::{self, GcPlan, GcReport, KeepReason};

use crate::output::{human_bytes, print_table, with_header};
use crate::store::open;

/// Runs `gc`; returns whether every deletion succeeded.
pub fn gc(dir: &Path, yes: bool, as_json: bool) -> Result<bool> {
    let _ = open(dir)?;
    let (plan, report) = if yes {
        gc::collect(dir).with_context(|| format!("collecting garbage in {}", dir.display()))?
    } else {
        let plan = gc::plan(dir).with_context(|| format!("planning gc in {}", dir.display()))?;
        (plan, GcReport::default())
    };
    if as_json {
        let doc = gc_json(&plan, &report, yes);
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print_gc(&plan, &report, yes);
    }
    Ok(report.failed.is_empty())
}

/// Runs `gc` on a remote tier: retention (the newest `retain` records) and
/// the objects no retained record references, older than `grace_ms`;
/// abandoned multipart uploads. A dry run unless `yes`.
pub fn remote_gc(
    url: &str,
    yes: bool,
    as_json: bool,
    retain: usize,
    grace_ms: u64,
) -> Result<bool> {
    anyhow::ensure!(retain >= 1, "--retain must be at least 1");
    let shown = spate_storage::remote::RemoteUrl::parse(url)
        .map(|u| u.to_string())
        .map_err(anyhow::Error::msg)?;
    let tier = spate_storage::remote::connect(
        url,
        spate_storage::remote::TierOptions {
            retained_checkpoints: retain,
            gc_grace_ms: grace_ms,
            ..Default::default()
        },
    )
    .map_err(anyhow::Error::msg)?;
    let rt = spate_storage::remote::RemoteRuntime::global().map_err(anyhow::Error::msg)?;
    let now_ms = spate_storage::remote::tier::now_ms();
    let report = rt
        .block_on(async move { tier.gc(None, now_ms, grace_ms, yes).await })
        .with_context(|| format!("collecting garbage in {shown}"))?;
    if as_json {
        let doc = json!({
            "dry_run": !yes,
            "remote": shown,
            "records_deleted": report.records_deleted,
            "extents_deleted": report.extents_deleted,
            "uploads_aborted": report.uploads_aborted,
            "reclaimable_bytes": report.bytes_freed,
            "kept_young": report.kept_young,
            "failed": report.warnings,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        let verb = if yes { "deleted" } else { "would delete" };
        println!(
            "{shown}: {verb} {} checkpoint record(s) {:?}, {} extent(s) ({}), {} abandoned multipart upload(s); {} unreferenced object(s) kept as younger than {grace_ms} ms",
            report.records_deleted.len(),
            report.records_deleted,
            report.extents_deleted.len(),
            human_bytes(report.bytes_freed),
            report.uploads_aborted.len(),
            report.kept_young,
        );
        for w in &report.warnings {
            eprintln!("warning: {w}");
        }
        if !yes {
            println!("dry run: nothing was deleted (--yes deletes)");
        }
    }
    Ok(report.warnings.is_empty())
}

/// Why a file is kept (its reason's id and description), or `deleted` (both)
/// when it is not.
fn reason(keep: Option<KeepReason>, deleted: &str) -> (String, String) {
    match keep {
        Some(k) => (k.id().to_string(), k.describe().to_string()),
        None => (deleted.to_string(), deleted.to_string()),
    }
}

/// `gc`'s JSON document.
fn gc_json(plan: &GcPlan, report: &GcReport, yes: bool) -> Value {
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
    json!({
        "dry_run": !yes,
        "manifest": plan.manifest_file,
        "segments": seg_rows,
        "manifests": manifest_rows,
        "orphan_cleanup_skipped": plan.orphan_cleanup_skipped,
        "reclaimable_bytes": plan.reclaimable_bytes(),
        "deleted": report.deleted,
        "failed": failed,
    })
}

/// Prints every file with what `gc` does with it and why, then what it deleted
/// (with `--yes`, failures on stderr) or could delete.
fn print_gc(plan: &GcPlan, report: &GcReport, yes: bool) {
    let mut t = with_header(&["FILE", "BYTES", "LIVE", "BLOCKS", "ACTION", "WHY"]);
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
            "dry run: {} reclaimable in {} file(s); nothing was deleted (--yes deletes)",
            human_bytes(plan.reclaimable_bytes()),
            plan.files_to_delete().len()
        );
    }
}
