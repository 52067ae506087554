//! The entries `diff` lists: added, removed, or changed with the fields that
//! differ. Values are compared as shown (JSON): a field is a path into the
//! value (`clicks`, `address.city`, `items[2]`, `` (empty) for a value that
//! is not a struct), and a change of enum variant is one field, the variant
//! or the whole value.

use serde_json::{json, Value};

use crate::output::{items, print_table_or_none, with_header};

/// One entry that differs.
pub(super) struct Change {
    change: &'static str,
    key: Value,
    a: Value,
    b: Value,
    /// For a changed entry: (field, value in A, value in B).
    fields: Vec<(String, Value, Value)>,
}

impl Change {
    pub(super) fn added(key: &Value, b: &Value) -> Self {
        Self::new("added", key, Value::Null, b.clone())
    }

    pub(super) fn removed(key: &Value, a: &Value) -> Self {
        Self::new("removed", key, a.clone(), Value::Null)
    }

    pub(super) fn changed(key: &Value, a: &Value, b: &Value) -> Self {
        let mut change = Self::new("changed", key, a.clone(), b.clone());
        field_changes(String::new(), a, b, &mut change.fields);
        change
    }

    fn new(change: &'static str, key: &Value, a: Value, b: Value) -> Self {
        Self {
            change,
            key: key.clone(),
            a,
            b,
            fields: Vec::new(),
        }
    }
}

/// The paths where `a` and `b` differ: into objects by field name, into
/// arrays of equal length by index; elsewhere the value as a whole.
fn field_changes(path: String, a: &Value, b: &Value, out: &mut Vec<(String, Value, Value)>) {
    if a == b {
        return;
    }
    let join = |name: &str| {
        if path.is_empty() {
            name.to_string()
        } else {
            format!("{path}.{name}")
        }
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) if x.len() == y.len() && x.keys().eq(y.keys()) => {
            for (k, va) in x {
                field_changes(join(k), va, &y[k], out);
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                field_changes(format!("{path}[{i}]"), va, vb, out);
            }
        }
        _ => out.push((path, a.clone(), b.clone())),
    }
}

/// The entries listed so far, at most `max`.
pub(super) struct Listed {
    max: usize,
    rows: Vec<Value>,
    truncated: bool,
}

impl Listed {
    pub(super) fn new(max: usize) -> Self {
        Self {
            max,
            rows: Vec::new(),
            truncated: false,
        }
    }

    /// Lists nothing (timers: compared as sets, counted only).
    pub(super) fn none() -> Self {
        Self::new(0)
    }

    /// Lists `c` of `(operator, table, key group)` if there is room.
    pub(super) fn push(&mut self, (operator, table, key_group): (&str, &str, u32), c: Change) {
        if self.rows.len() >= self.max {
            self.truncated = self.max > 0;
            return;
        }
        self.rows.push(json!({
            "operator": operator,
            "table": table,
            "key_group": key_group,
            "key": c.key,
            "change": c.change,
            "a": c.a,
            "b": c.b,
            "fields": c.fields.into_iter().map(|(field, a, b)| json!({
                "field": field, "a": a, "b": b,
            })).collect::<Vec<_>>(),
        }));
    }

    pub(super) fn json(&self) -> Value {
        Value::Array(self.rows.clone())
    }

    pub(super) fn truncated(&self) -> bool {
        self.truncated
    }
}

/// Prints the listed entries of `diff`'s document: one row per changed
/// field, or per entry added or removed.
pub(super) fn print(doc: &Value) {
    let listed = items(&doc["entries"]);
    if listed.is_empty() && doc["entries_truncated"] != true {
        return;
    }
    println!(
        "\nentries that differ{}",
        if doc["entries_truncated"] == true {
            format!(" (the first {}; --entries for more)", listed.len())
        } else {
            String::new()
        }
    );
    let mut rows = with_header(&[
        "OPERATOR",
        "STATE",
        "KEY GROUP",
        "KEY",
        "CHANGE",
        "FIELD",
        "A",
        "B",
    ]);
    let text = |v: &Value| {
        if v.is_null() {
            "-".to_string()
        } else {
            v.to_string()
        }
    };
    for e in listed {
        let cells = |field: String, a: &Value, b: &Value| {
            vec![
                e["operator"].as_str().unwrap_or_default().to_string(),
                e["table"].as_str().unwrap_or_default().to_string(),
                e["key_group"].to_string(),
                e["key"].to_string(),
                e["change"].as_str().unwrap_or_default().to_string(),
                field,
                text(a),
                text(b),
            ]
        };
        let fields = items(&e["fields"]);
        if fields.is_empty() {
            rows.push(cells(String::new(), &e["a"], &e["b"]));
        }
        for f in fields {
            let name = f["field"].as_str().unwrap_or_default();
            let name = if name.is_empty() { "(value)" } else { name };
            rows.push(cells(name.to_string(), &f["a"], &f["b"]));
        }
    }
    print_table_or_none(&rows);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_fields_are_named_by_path() {
        let a = json!({"user": "ann", "clicks": 3, "address": {"city": "Oslo", "zip": 1}, "tags": ["a", "b"]});
        let b = json!({"user": "ann", "clicks": 5, "address": {"city": "Bergen", "zip": 1}, "tags": ["a", "c"]});
        let c = Change::changed(&json!(1), &a, &b);
        let fields: Vec<&str> = c.fields.iter().map(|f| f.0.as_str()).collect();
        assert_eq!(fields, vec!["address.city", "clicks", "tags[1]"]);
        let c = Change::changed(&json!(1), &json!(4), &json!(5));
        assert_eq!(c.fields, vec![(String::new(), json!(4), json!(5))]);
        // Another enum variant: the value as a whole.
        let c = Change::changed(
            &json!(1),
            &json!({"Active": {"since": 1}}),
            &json!("Closed"),
        );
        assert_eq!(c.fields.len(), 1);
    }

    #[test]
    fn listing_stops_at_its_bound() {
        let mut l = Listed::new(1);
        l.push(("op", "t", 0), Change::added(&json!(1), &json!(2)));
        l.push(("op", "t", 0), Change::added(&json!(2), &json!(2)));
        assert_eq!(items(&l.json()).len(), 1);
        assert!(l.truncated());
        let mut none = Listed::none();
        none.push(("op", "t", 0), Change::added(&json!(1), &json!(2)));
        assert!(!none.truncated());
    }
}
