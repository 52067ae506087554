//! The building blocks of the human (non-JSON) output: aligned tables, and how
//! byte counts and times are shown in them.

use serde_json::Value;

/// A table of one row, its header (the first row [`print_table`] takes).
pub fn with_header(names: &[&str]) -> Vec<Vec<String>> {
    vec![names.iter().map(|name| name.to_string()).collect()]
}

/// Aligned table: the first row is the header; numeric-looking cells right-aligned.
pub fn print_table(rows: &[Vec<String>]) {
    let Some(first) = rows.first() else { return };
    let mut widths = vec![0; first.len()];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let numeric = cell == "-"
                || !cell.is_empty()
                    && cell.chars().all(|c| {
                        c.is_ascii_digit()
                            || matches!(
                                c,
                                '.' | ' ' | 'K' | 'M' | 'G' | 'T' | 'i' | 'B' | 'm' | 's' | '-'
                            )
                    })
                    && cell
                        .trim_start_matches('-')
                        .chars()
                        .next()
                        .is_some_and(|c| c.is_ascii_digit());
            if numeric {
                line.push_str(&format!("{cell:>w$}"));
            } else {
                line.push_str(&format!("{cell:<w$}"));
            }
        }
        println!("{}", line.trim_end());
    }
}

/// Prints `rows` as a table, or `(none)` when they are only the header.
pub fn print_table_or_none(rows: &[Vec<String>]) {
    if rows.len() > 1 {
        print_table(rows);
    } else {
        println!("(none)");
    }
}

/// The elements of a JSON array (none for anything else).
pub fn items(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

/// Bytes in B, KiB, MiB, GiB or TiB with one decimal.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `timestamp_ms` as UTC `YYYY-MM-DD HH:MM:SS.mmm`.
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms % 1000
    )
}

/// `0x` and lower-case hex digits.
pub fn hex_string(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 + 2 * bytes.len());
    s.push_str("0x");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// A JSON value as a table cell: a string as is, null as `-`.
pub fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        v => v.to_string(),
    }
}

/// A JSON byte count as a table cell (`-` when null).
pub fn bytes_cell(v: &Value) -> String {
    v.as_u64().map_or("-".into(), human_bytes)
}
