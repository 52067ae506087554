//! JSON-lines output of events and result rows: one JSON object per line, fields in
//! declaration order, so equal data gives equal bytes.
//!
//! Events carry a `"type"` tag as their first field:
//! `{"type":"bid","auction":1000,"bidder":1001,"price":1234,"channel":"Google",...}`.
//! The functions buffer internally and flush before returning; they never close or
//! sync the writer.

use std::io::{self, BufRead, BufWriter, Write};

use serde::Serialize;

use super::generator::{Generator, GeneratorConfig};
use super::model::Event;

/// Writes one event as a JSON object followed by `\n`.
pub fn write_event_jsonl<W: Write>(event: &Event, writer: &mut W) -> io::Result<()> {
    serde_json::to_writer(&mut *writer, event)?;
    writer.write_all(b"\n")
}

/// Writes events as JSON lines, in iteration order.
pub fn write_events_jsonl<'a, I, W>(events: I, writer: W) -> io::Result<()>
where
    I: IntoIterator<Item = &'a Event>,
    W: Write,
{
    write_rows_jsonl(events, writer)
}

/// Writes any serializable rows (events, query results) as JSON lines.
pub fn write_rows_jsonl<'a, T, I, W>(rows: I, writer: W) -> io::Result<()>
where
    T: Serialize + 'a,
    I: IntoIterator<Item = &'a T>,
    W: Write,
{
    let mut out = BufWriter::with_capacity(1 << 16, writer);
    for row in rows {
        serde_json::to_writer(&mut out, row)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// Reads events written by [`write_events_jsonl`]; blank lines are skipped.
///
/// # Errors
/// An `InvalidData` error naming the line number if a line is not an event.
pub fn read_events_jsonl<R: BufRead>(reader: R) -> io::Result<Vec<Event>> {
    let mut events = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let event = serde_json::from_str(&line).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!("line {}: {e}", i + 1))
        })?;
        events.push(event);
    }
    Ok(events)
}

/// Writes the first `n_events` events of the default-configured generator with
/// `seed` as JSON lines (what `spate-bench gen --events N --seed S` prints).
pub fn gen_jsonl(n_events: u64, seed: u64, out: impl Write) -> io::Result<()> {
    let mut generator = Generator::new(GeneratorConfig::default(), seed);
    let mut out = BufWriter::with_capacity(1 << 16, out);
    for _ in 0..n_events {
        write_event_jsonl(&generator.next_event(), &mut out)?;
    }
    out.flush()
}
