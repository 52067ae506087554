//! `spate-ckpt verify`: checks checkpoints (metadata, handles, every block's
//! CRC) and, without an id, scans every segment file; the problems found are
//! reported grouped by checkpoint, file and kind of problem.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::Result;
use serde_json::json;
use spate::checkpoint::CheckpointMetadata;
use spate_storage::StoreReader;

use crate::output::{print_table, with_header};
use crate::store::{open_store, warn_manifest_damage};

/// One problem `verify` found.
struct Problem {
    checkpoint: Option<u64>,
    /// The segment or manifest file it is in.
    file: Option<String>,
    offset: Option<u64>,
    /// What is wrong, without what differs from block to block (offsets,
    /// checksums): problems are grouped by checkpoint, file and kind.
    kind: String,
    /// Whether it is about one block (a group then counts blocks).
    block: bool,
    /// The whole message.
    error: String,
}

impl Problem {
    /// A problem not about one block: its kind is its message.
    fn general(
        checkpoint: Option<u64>,
        file: Option<String>,
        offset: Option<u64>,
        error: String,
    ) -> Problem {
        Problem {
            checkpoint,
            file,
            offset,
            kind: error.clone(),
            block: false,
            error,
        }
    }
}

/// The kind of a format error: its message without the values (checksums,
/// lengths) that differ from block to block.
fn format_kind(e: &spate_storage::FormatError) -> String {
    use spate_storage::FormatError as F;
    let kind = match e {
        F::Truncated { .. } => "truncated block",
        F::BadMagic { .. } => "bad block magic",
        F::HeaderCrc { .. } => "block header CRC mismatch",
        F::PayloadCrc { .. } => "block payload CRC mismatch",
        F::Misaligned { .. } => "misaligned block",
        F::HandleMismatch { .. } => "block header does not match its handle",
        _ => return e.to_string(),
    };
    kind.to_string()
}

/// A read error: of the block `handle` names (of `checkpoint`), or else of a
/// whole file.
fn read_problem(
    checkpoint: Option<u64>,
    handle: Option<&spate_storage::BlockHandle>,
    e: &spate_storage::ReadError,
) -> Problem {
    use spate_storage::ReadError;
    let (file, offset, kind) = match e {
        ReadError::Corrupt {
            segment,
            offset,
            source,
        } => (
            Some(segment.file_name()),
            Some(*offset),
            format_kind(source),
        ),
        ReadError::MissingSegment { name, .. } => {
            (Some(name.clone()), None, "segment file is missing".into())
        }
        ReadError::Io { name, source } if !name.is_empty() => (
            Some(name.clone()),
            None,
            format!("reading failed: {source}"),
        ),
        _ => (None, None, e.to_string()),
    };
    Problem {
        checkpoint,
        file: file.or_else(|| handle.map(|h| h.segment.file_name())),
        offset: offset.or(handle.map(|h| h.offset)),
        kind,
        block: handle.is_some(),
        error: e.to_string(),
    }
}

/// Problems of the same checkpoint, file and kind.
struct Group<'a> {
    /// The one at the lowest offset (or the first found).
    first: &'a Problem,
    count: usize,
}

/// `problems` grouped by checkpoint, file and kind, in the order first found.
fn group_problems(problems: &[Problem]) -> Vec<Group<'_>> {
    let mut index: BTreeMap<(Option<u64>, Option<&str>, &str), usize> = BTreeMap::new();
    let mut groups: Vec<Group> = Vec::new();
    for p in problems {
        let key = (p.checkpoint, p.file.as_deref(), p.kind.as_str());
        match index.get(&key) {
            Some(&i) => {
                let g = &mut groups[i];
                g.count += 1;
                if let (Some(o), Some(first)) = (p.offset, g.first.offset) {
                    if o < first {
                        g.first = p;
                    }
                }
            }
            None => {
                index.insert(key, groups.len());
                groups.push(Group { first: p, count: 1 });
            }
        }
    }
    groups
}

/// Whether `dir` holds a store to verify: `Err` when it holds neither a
/// manifest nor segments; a problem when it holds segments but no manifest.
fn store_problem(dir: &Path, reader: &StoreReader, segments: usize) -> Result<Option<Problem>> {
    if reader.manifest_file().is_some() {
        return Ok(None);
    }
    anyhow::ensure!(
        segments > 0,
        "{} holds no checkpoint store (no MANIFEST-* file, no segment files)",
        dir.display()
    );
    Ok(Some(Problem::general(
        None,
        None,
        None,
        format!(
            "no MANIFEST-* file beside {segments} segment file(s): the manifest is missing, \
             so the checkpoints they held cannot be restored"
        ),
    )))
}

/// Checks that checkpoint `id`'s metadata decodes, names only handles its
/// record has and schemas it holds, and carries its id, and reads every
/// block it references.
fn verify_checkpoint(reader: &StoreReader, id: u64, problems: &mut Vec<Problem>) -> Result<()> {
    let record = reader.checkpoint(id)?;
    match CheckpointMetadata::decode(&record.metadata) {
        Err(e) => problems.push(Problem::general(Some(id), None, None, e.to_string())),
        Ok(m) => {
            let n = record.handles.len();
            let bad = m
                .state
                .iter()
                .flat_map(|s| s.chain.iter().map(|b| b.handle))
                .chain(m.in_flight.iter().map(|b| b.handle))
                .filter(|&h| h as usize >= n);
            for h in bad {
                problems.push(Problem {
                    kind: format!("metadata names handles the record does not have ({n})"),
                    block: true,
                    ..Problem::general(
                        Some(id),
                        None,
                        None,
                        format!("metadata names handle {h}; the record has {n}"),
                    )
                });
            }
            let schemas = m.schemas.len();
            let missing: std::collections::BTreeSet<u32> = m
                .state
                .iter()
                .map(|s| s.schema)
                .chain(m.in_flight.iter().map(|b| b.schema))
                .filter(|&i| i as usize >= schemas)
                .collect();
            for i in missing {
                let e = format!("metadata names schema {i}; it holds {schemas}");
                problems.push(Problem::general(Some(id), None, None, e));
            }
            if m.id != id {
                let e = format!("metadata says checkpoint {}", m.id);
                problems.push(Problem::general(Some(id), None, None, e));
            }
        }
    }
    for h in &record.handles {
        if let Err(e) = reader.block(h) {
            problems.push(read_problem(Some(id), Some(h), &e));
        }
    }
    Ok(())
}

/// Scans every segment file; returns their names.
fn scan_segments(
    reader: &StoreReader,
    mut segments: Vec<spate_storage::SegmentId>,
    problems: &mut Vec<Problem>,
) -> Vec<String> {
    segments.sort();
    // Blocks already reported through a checkpoint's handle.
    let reported: BTreeSet<(String, u64)> = problems
        .iter()
        .filter_map(|p| Some((p.file.clone()?, p.offset?)))
        .collect();
    let mut scanned = Vec::new();
    for segment in segments {
        let file = segment.file_name();
        scanned.push(file.clone());
        let scan = match reader.verify_segment(segment) {
            Ok(scan) => scan,
            Err(e) => {
                problems.push(read_problem(None, None, &e));
                continue;
            }
        };
        for (offset, e) in scan.problems {
            if reported.contains(&(file.clone(), offset)) {
                continue;
            }
            problems.push(Problem {
                checkpoint: None,
                file: Some(file.clone()),
                offset: Some(offset),
                kind: format_kind(&e),
                block: true,
                error: e.to_string(),
            });
        }
    }
    scanned
}

/// Runs `verify`; returns whether it found no problem.
pub fn verify(dir: &Path, id: Option<u64>, as_json: bool) -> Result<bool> {
    let checked = match check(dir, id) {
        Ok(checked) => checked,
        Err(e) => {
            // Nothing to verify: still one document with the reason.
            if as_json {
                let p = Problem::general(None, None, None, format!("{e:#}"));
                print_verify(&[], &[], &[p], true)?;
            }
            return Err(e);
        }
    };
    print_verify(&checked.ids, &checked.scanned, &checked.problems, as_json)?;
    Ok(checked.problems.is_empty())
}

/// What [`check`] found in one store.
pub(crate) struct Checked {
    ids: Vec<u64>,
    scanned: Vec<String>,
    problems: Vec<Problem>,
}

impl Checked {
    /// Whether every block read back.
    pub(crate) fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// The JSON document `verify --json` prints for it.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        report_json(&self.ids, &self.scanned, &self.problems)
    }
}

/// Verifies the store at `dir` (checkpoint `id`, or all and every segment
/// file); `Err` when there is no store to verify.
pub(crate) fn check(dir: &Path, id: Option<u64>) -> Result<Checked> {
    let reader = open_store(dir)?;
    let segments: Vec<_> = reader.segments()?.into_iter().map(|(s, _)| s).collect();
    let problem = store_problem(dir, &reader, segments.len())?;
    warn_manifest_damage(&reader);
    let mut problems: Vec<Problem> = problem.into_iter().collect();
    if let Some(d) = reader.manifest_damage() {
        problems.push(Problem::general(
            None,
            Some(d.file.clone()),
            Some(d.offset),
            format!(
                "manifest damaged: {} ({} bytes ignored)",
                d.error, d.dropped_bytes
            ),
        ));
    }
    let ids: Vec<u64> = match id {
        // Without a manifest there is no checkpoint to look up.
        Some(_) if reader.manifest_file().is_none() => Vec::new(),
        Some(id) => vec![reader.checkpoint(id)?.id],
        None => reader.checkpoints().iter().map(|c| c.id).collect(),
    };
    for &id in &ids {
        verify_checkpoint(&reader, id, &mut problems)?;
    }
    // A remote tier holds only the referenced blocks of a segment (the rest
    // reads as zeros): its segments are not scanned, its checkpoints' blocks
    // are all verified above.
    let remote = dir.to_str().is_some_and(spate_storage::remote::is_url);
    let scanned = match id {
        None if !remote => scan_segments(&reader, segments, &mut problems),
        _ => Vec::new(),
    };
    Ok(Checked {
        ids,
        scanned,
        problems,
    })
}

/// `verify --json`'s document.
fn report_json(ids: &[u64], scanned: &[String], problems: &[Problem]) -> serde_json::Value {
    let groups = group_problems(problems);
    json!({
        "ok": problems.is_empty(),
        "checkpoints": ids,
        "segments": scanned,
        "groups": groups.iter().map(|g| json!({
            "checkpoint": g.first.checkpoint, "file": g.first.file,
            "problem": g.first.kind, "count": g.count,
            "blocks": if g.first.block { Some(g.count) } else { None },
            "first_offset": g.first.offset, "first_error": g.first.error,
        })).collect::<Vec<_>>(),
        "problems": problems.iter().map(|p| json!({
            "checkpoint": p.checkpoint, "file": p.file,
            "offset": p.offset, "error": p.error,
        })).collect::<Vec<_>>(),
    })
}

/// Prints `verify`'s report: problems grouped by checkpoint, file and kind.
fn print_verify(
    ids: &[u64],
    scanned: &[String],
    problems: &[Problem],
    as_json: bool,
) -> Result<()> {
    if as_json {
        let doc = report_json(ids, scanned, problems);
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    let groups = group_problems(problems);
    println!(
        "checked {} checkpoint(s), {} segment file(s)",
        ids.len(),
        scanned.len()
    );
    if problems.is_empty() {
        println!("ok");
        return Ok(());
    }
    let dash = |o: Option<String>| o.unwrap_or_else(|| "-".into());
    let mut t = with_header(&["CHECKPOINT", "FILE", "FIRST OFFSET", "BLOCKS", "PROBLEM"]);
    for g in &groups {
        let p = g.first;
        t.push(vec![
            dash(p.checkpoint.map(|c| c.to_string())),
            dash(p.file.clone()),
            dash(p.offset.map(|o| o.to_string())),
            dash(p.block.then(|| g.count.to_string())),
            // One: the whole message; more: what they have in common.
            if g.count == 1 { &p.error } else { &p.kind }.clone(),
        ]);
    }
    print_table(&t);
    println!("{} problem(s)", problems.len());
    Ok(())
}
