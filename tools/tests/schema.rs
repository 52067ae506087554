//! The stock `spate-ckpt` reads a job's own types from the checkpoint alone:
//! a job with user-defined struct and enum state (strings, a nested struct,
//! options, vectors, a map, an enum with data) and a user-defined record on
//! its exchange checkpoints — full, incremental, unaligned with records in
//! flight — and `dump --json` must show every entry with its field names and
//! exactly the values the job wrote; `diff` must name the changed fields.
//!
//! The tool is built without these types (it depends on no job's crate): it
//! decodes them from the schemas the engine recorded. The jobs run in the
//! engine's seeded simulator; their store is written to a temporary
//! directory for the real binary. What each checkpoint holds is computed from
//! the source offsets it recorded (`common::Numbers` stripes record indices
//! over subtasks).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use spate::internals::sim::Simulation;
use spate::state::FxHashMap;
use spate::{CheckpointConfig, CheckpointMode, JobConfig, KeyedContext, WatermarkStrategy};
use spate_storage::SimIo;

mod common;
use common::Numbers;

/// Users (keys). Even, so every record of a user comes from one source
/// subtask, in order.
const USERS: u64 = 12;
const CITIES: [&str; 3] = ["Oslo", "Lima", "Kyoto"];

/// The record on the exchange.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, spate::Schema, Clone, Debug)]
struct Click {
    user: u64,
    page: String,
    at: u64,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, spate::Schema, Clone, Debug)]
struct Address {
    city: String,
    zip: u32,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, spate::Schema, Clone, Debug)]
enum Status {
    Active { since: u64 },
    Idle(u32),
    Closed,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, spate::Schema, Clone, Debug)]
struct Session {
    user: String,
    clicks: u64,
    address: Address,
    referrer: Option<String>,
    pages: Vec<String>,
    per_page: FxHashMap<String, u64>,
    status: Status,
    last_seen: u64,
}

fn click(i: u64) -> Click {
    Click {
        user: i % USERS,
        page: format!("p{}", i % 5),
        at: i,
    }
}

fn click_json(i: u64) -> Value {
    json!({ "user": i % USERS, "page": format!("p{}", i % 5), "at": i })
}

fn address(user: u64) -> Address {
    Address {
        city: CITIES[(user % 3) as usize].into(),
        zip: 1000 + user as u32,
    }
}

/// The session of `user` once it saw the records `clicks` (in order).
fn session_json(user: u64, clicks: &[u64]) -> Value {
    let n = clicks.len() as u64;
    let mut per_page: BTreeMap<String, u64> = BTreeMap::new();
    for i in clicks {
        *per_page.entry(format!("p{}", i % 5)).or_default() += 1;
    }
    let status = match n % 3 {
        0 => json!("Closed"),
        1 => json!({ "Active": { "since": clicks[0] } }),
        _ => json!({ "Idle": n }),
    };
    json!({
        "user": format!("user-{user}@example.org"),
        "clicks": n,
        "address": { "city": CITIES[(user % 3) as usize], "zip": 1000 + user },
        "referrer": if user % 2 == 0 { json!(format!("ref-{user}")) } else { Value::Null },
        "pages": per_page.keys().collect::<Vec<_>>(),
        "per_page": per_page,
        "status": status,
        "last_seen": clicks.last(),
    })
}

/// The job: clicks keyed by user; a value state `sessions` of `Session`, a
/// map state `page_views` (page → count), a list state `first_visit` (the
/// user's address, added once).
fn job(df: &spate::Dataflow, end: u64) {
    let clock = df.clock();
    let start = clock.now_ms();
    df.source(
        "numbers",
        Numbers::paced(2_000.0, start, clock).until(end),
        WatermarkStrategy::monotonous(|i: &u64| *i),
    )
    .map(click)
    .key_by(|c: &Click| c.user)
    .process("track", |state| {
        let sessions = state.value_state::<Session>("sessions");
        let views = state.map_state::<String, u64>("page_views");
        let visits = state.list_state::<Address>("first_visit");
        move |c: Click, ctx: &mut KeyedContext<u64, u64>| {
            let user = c.user;
            let mut s = sessions.get(ctx).unwrap_or_else(|| {
                visits.add(ctx, address(user));
                Session {
                    user: format!("user-{user}@example.org"),
                    clicks: 0,
                    address: address(user),
                    referrer: (user % 2 == 0).then(|| format!("ref-{user}")),
                    pages: Vec::new(),
                    per_page: FxHashMap::default(),
                    status: Status::Closed,
                    last_seen: 0,
                }
            });
            s.clicks += 1;
            *s.per_page.entry(c.page.clone()).or_default() += 1;
            if !s.pages.contains(&c.page) {
                s.pages.push(c.page.clone());
                s.pages.sort();
            }
            s.status = match s.clicks % 3 {
                0 => Status::Closed,
                1 => Status::Active {
                    since: first_click(user, s.clicks, c.at),
                },
                _ => Status::Idle(s.clicks as u32),
            };
            s.last_seen = c.at;
            views.update(ctx, c.page, || 0, |v| *v += 1);
            sessions.set(ctx, s);
            ctx.emit(user);
            Ok(())
        }
    })
    .for_each(|_| {});
}

/// The index of `user`'s first record, given its `n`-th is `at` (a user's
/// records are `user`, `user + USERS`, …, and arrive in order: they all come
/// from one source subtask over one channel).
fn first_click(user: u64, n: u64, at: u64) -> u64 {
    let first = at - (n - 1) * USERS;
    debug_assert_eq!(first % USERS, user);
    first
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("spate-ckpt-schema-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the job in the simulator until `checkpoints` completed, into `dir`.
fn run(dir: &Path, mode: CheckpointMode, incremental: bool, slow: bool, checkpoints: u64) {
    let config = JobConfig {
        parallelism: 2,
        max_parallelism: 8,
        batch_size: 4,
        ring_capacity: 2,
        pin_cores: false,
        checkpoint: Some(CheckpointConfig {
            mode,
            incremental,
            max_delta_chain: 8,
            max_delta_ratio: 100.0,
            retained: 100,
            timeout_ms: 60_000,
            ..CheckpointConfig::new("unused", 40)
        }),
        ..JobConfig::default()
    };
    let io = SimIo::new();
    let mut sim = Simulation::new(config, 7)
        .keep_buffers()
        .storage(io.clone())
        .crash_after_checkpoints(checkpoints);
    if slow {
        sim = sim.slow_subtask(1, 3);
    }
    sim.run(|df| job(df, 100_000)).unwrap();
    for name in io.file_names() {
        std::fs::write(dir.join(&name), io.file_bytes(&name).unwrap()).unwrap();
    }
}

fn tool(args: &[&str]) -> (Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_spate-ckpt"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let value = if args.contains(&"--json") {
        serde_json::from_str(&text).unwrap()
    } else {
        Value::Null
    };
    (value, text)
}

fn json_of(args: &[&str]) -> Value {
    tool(args).0
}

/// Per user, its records before checkpoint `id`'s cut (from its source
/// offsets), in order.
fn clicks_before(d: &str, id: u64) -> BTreeMap<u64, Vec<u64>> {
    let show = json_of(&["show", d, &id.to_string(), "--json"]);
    let mut out: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for s in show["sources"].as_array().unwrap() {
        let subtask = s["subtask"].as_u64().unwrap();
        for j in 0..s["offset"].as_u64().unwrap() {
            let i = subtask + 2 * j;
            out.entry(i % USERS).or_default().push(i);
        }
    }
    for v in out.values_mut() {
        v.sort_unstable();
    }
    out
}

/// The entries of `table` in `dump --json`, by key.
fn entries(doc: &Value, table: &str) -> BTreeMap<u64, Value> {
    let t = doc["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == table)
        .unwrap_or_else(|| panic!("no table {table} in {doc}"));
    assert_eq!(t["decoded"], true, "{t}");
    t["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["key"].as_u64().unwrap(), e["value"].clone()))
        .collect()
}

/// Checks checkpoint `id`'s dump against what the job wrote, given the
/// records the state holds per user (`in_state`).
fn check_dump(d: &str, id: u64, in_state: &BTreeMap<u64, Vec<u64>>) -> Value {
    let doc = json_of(&["dump", d, &id.to_string(), "--operator", "track", "--json"]);
    assert_eq!(doc["errors"], json!([]), "{doc}");
    let sessions = entries(&doc, "sessions");
    let expected: BTreeMap<u64, Value> = in_state
        .iter()
        .filter(|(_, c)| !c.is_empty())
        .map(|(&u, c)| (u, session_json(u, c)))
        .collect();
    assert!(!expected.is_empty(), "checkpoint {id} holds sessions");
    assert_eq!(sessions, expected, "checkpoint {id}: sessions");
    let views: BTreeMap<u64, Value> = in_state
        .iter()
        .filter(|(_, c)| !c.is_empty())
        .map(|(&u, c)| (u, session_json(u, c)["per_page"].clone()))
        .collect();
    assert_eq!(
        entries(&doc, "page_views"),
        views,
        "checkpoint {id}: page_views"
    );
    let visits: BTreeMap<u64, Value> = in_state
        .iter()
        .filter(|(_, c)| !c.is_empty())
        .map(|(&u, _)| {
            let a = address(u);
            (u, json!([{ "city": a.city, "zip": a.zip }]))
        })
        .collect();
    assert_eq!(
        entries(&doc, "first_visit"),
        visits,
        "checkpoint {id}: first_visit"
    );
    let types: Vec<&Value> = doc["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["type_name"])
        .collect();
    assert!(types.contains(&&json!("(u64, Session)")), "{types:?}");
    assert!(
        types.contains(&&json!("(u64, HashMap<String, u64>)")),
        "{types:?}"
    );
    assert!(types.contains(&&json!("(u64, Vec<Address>)")), "{types:?}");
    doc
}

fn completed(d: &str) -> Vec<u64> {
    json_of(&["list", d, "--json"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "completed")
        .map(|c| c["id"].as_u64().unwrap())
        .collect()
}

#[test]
fn a_full_checkpoint_of_user_types_dumps_field_by_field() {
    let dir = temp_dir("full");
    run(&dir, CheckpointMode::Aligned, false, false, 3);
    let d = dir.to_str().unwrap();
    for id in completed(d) {
        let doc = check_dump(d, id, &clicks_before(d, id));
        assert_eq!(doc["in_flight"], json!([]), "aligned: nothing in flight");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_incremental_checkpoint_dumps_and_diff_names_the_changed_fields() {
    let dir = temp_dir("incremental");
    run(&dir, CheckpointMode::Aligned, true, false, 4);
    let d = dir.to_str().unwrap();
    let ids = completed(d);
    assert!(ids.len() >= 3, "{ids:?}");
    let last = *ids.last().unwrap();
    let show = json_of(&["show", d, &last.to_string(), "--json"]);
    assert_eq!(show["incremental"], true, "{show}");
    let track = show["operators"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["operator"] == "track")
        .unwrap();
    let sessions = track["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "sessions")
        .unwrap();
    assert!(
        sessions["delta_bytes"].as_u64().unwrap() > 0
            && sessions["max_chain_len"].as_u64().unwrap() > 1,
        "chains with deltas: {sessions}"
    );
    for &id in &ids {
        check_dump(d, id, &clicks_before(d, id));
    }

    // diff of the last two: every changed session names its changed fields,
    // with the values of both checkpoints.
    let (a, b) = (ids[ids.len() - 2], last);
    let (before, after) = (clicks_before(d, a), clicks_before(d, b));
    let doc = json_of(&[
        "diff",
        d,
        &a.to_string(),
        &b.to_string(),
        "--entries",
        "1000",
        "--json",
    ]);
    assert_eq!(doc["errors"], json!([]), "{doc}");
    assert_eq!(doc["entries_truncated"], false);
    let mut changed = 0;
    for e in doc["entries"].as_array().unwrap() {
        if e["table"] != "sessions" {
            continue;
        }
        let user = e["key"].as_u64().unwrap();
        let (va, vb) = (
            session_json(user, &before[&user]),
            session_json(user, &after[&user]),
        );
        assert_eq!(e["change"], "changed", "{e}");
        assert_eq!((&e["a"], &e["b"]), (&va, &vb), "{e}");
        let fields: BTreeMap<&str, (&Value, &Value)> = e["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| (f["field"].as_str().unwrap(), (&f["a"], &f["b"])))
            .collect();
        assert_eq!(fields["clicks"], (&va["clicks"], &vb["clicks"]), "{e}");
        assert_eq!(
            fields["last_seen"],
            (&va["last_seen"], &vb["last_seen"]),
            "{e}"
        );
        assert!(
            !fields.contains_key("user") && !fields.contains_key("address.city"),
            "{e}"
        );
        changed += 1;
    }
    let expected_changed = after
        .iter()
        .filter(|(u, c)| {
            before
                .get(*u)
                .is_some_and(|p| p.len() != c.len() && !p.is_empty())
        })
        .count();
    assert!(changed > 0);
    assert_eq!(changed, expected_changed);

    // The human output shows the same: a row per changed field.
    let (_, text) = tool(&["diff", d, &a.to_string(), &b.to_string()]);
    let row = text
        .lines()
        .find(|l| l.starts_with("track") && l.contains(" sessions ") && l.contains(" clicks "))
        .unwrap_or_else(|| panic!("a changed clicks field in:\n{text}"));
    assert!(row.contains("changed"), "{row}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn in_flight_records_of_an_unaligned_checkpoint_dump_field_by_field() {
    let dir = temp_dir("unaligned");
    run(&dir, CheckpointMode::Unaligned, false, true, 5);
    let d = dir.to_str().unwrap();
    let mut with_records = 0;
    for id in completed(d) {
        let all = clicks_before(d, id);
        let doc = json_of(&["dump", d, &id.to_string(), "--operator", "track", "--json"]);
        assert_eq!(doc["errors"], json!([]), "{doc}");
        // Records in flight: each is the click the source emitted at its
        // timestamp, decoded field by field.
        let mut in_flight: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for b in doc["in_flight"].as_array().unwrap() {
            assert_eq!(b["type_name"], "Click", "{b}");
            let records = b["entries"].as_array().unwrap();
            assert_eq!(records.len() as u64, b["records"].as_u64().unwrap(), "{b}");
            for r in records {
                let i = r["timestamp"].as_u64().unwrap();
                assert_eq!(r["value"], click_json(i), "{r}");
                in_flight.entry(i % USERS).or_default().push(i);
            }
        }
        with_records += usize::from(!in_flight.is_empty());
        eprintln!(
            "checkpoint {id}: {} records in flight, {} before the cut",
            in_flight.values().map(Vec::len).sum::<usize>(),
            all.values().map(Vec::len).sum::<usize>()
        );
        // Exactly once: the state holds the records before the cut that are
        // not in flight, and the dump shows exactly those.
        let in_state: BTreeMap<u64, Vec<u64>> = all
            .iter()
            .map(|(&u, c)| {
                let f = in_flight.get(&u).cloned().unwrap_or_default();
                (u, c.iter().copied().filter(|i| !f.contains(i)).collect())
            })
            .collect();
        check_dump(d, id, &in_state);
    }
    assert!(
        with_records > 0,
        "some checkpoint persisted records in flight"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
