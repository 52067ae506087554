//! The schema-driven decoder against rkyv itself: values of every shape a
//! schema describes are archived by rkyv and must decode, from the schema
//! alone, to exactly the JSON expected; custom displays apply by type name;
//! and damaged archives and damaged schemas (truncated, flipped bytes, random
//! bytes, random offsets and type indices) give errors, never a panic.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};

use rkyv::{Archive, Deserialize, Serialize};
use serde_json::{json, Value};
use spate::schema::{BlockSchema, Roots, Shape};
use spate_tools::decode::{DecodeError, Decoder};
use spate_tools::Displays;

#[derive(Archive, Serialize, Deserialize, spate::Schema)]
struct Inner {
    label: String,
    weight: f64,
}

#[derive(Archive, Serialize, Deserialize, spate::Schema)]
struct Pair(u16, String);

#[derive(Archive, Serialize, Deserialize, spate::Schema)]
struct Meters(u64);

#[derive(Archive, Serialize, Deserialize, spate::Schema)]
enum Kind {
    Unit,
    Newtype(u32),
    Tuple(u8, String),
    Struct { x: u64, y: Option<String> },
}

#[derive(Archive, Serialize, Deserialize, spate::Schema)]
#[repr(u8)]
enum Tagged {
    A = 3,
    B = 7,
}

#[derive(Archive, Serialize, Deserialize, spate::Schema)]
struct Everything {
    a: u8,
    b: u16,
    c: u32,
    d: u64,
    e: u128,
    f: i8,
    g: i16,
    h: i32,
    i: i64,
    j: i128,
    k: f32,
    l: f64,
    m: bool,
    n: char,
    o: (),
    short: String,
    long: String,
    bytes: Vec<u8>,
    words: Vec<String>,
    boxed: Box<u64>,
    slice: Box<[u16]>,
    array: [u32; 3],
    some: Option<String>,
    none: Option<u8>,
    ok: Result<u32, String>,
    err: Result<u32, String>,
    tuple: (u8, String, u64),
    map: HashMap<String, Vec<u32>>,
    set: HashSet<u64>,
    nested: Inner,
    kinds: Vec<Kind>,
    tagged: Vec<Tagged>,
    pair: Pair,
    meters: Meters,
    tree: BTreeMap<u64, u64>,
    usz: usize,
    isz: isize,
    #[rkyv(with = rkyv::with::AsOwned)]
    cow: Cow<'static, str>,
}

fn everything() -> Everything {
    let mut map = HashMap::new();
    for i in 0..40u32 {
        map.insert(format!("key-{i:02}"), vec![i, i * 2]);
    }
    Everything {
        a: 200,
        b: 60_000,
        c: 4_000_000_000,
        d: u64::MAX,
        e: u128::MAX,
        f: -100,
        g: -30_000,
        h: -2_000_000_000,
        i: i64::MIN,
        j: -(1i128 << 100),
        k: 1.5,
        l: -0.25,
        m: true,
        n: 'ß',
        o: (),
        short: "abc".into(),
        long: "a string longer than eight bytes".into(),
        bytes: vec![0x0a, 0x0b, 0xff],
        words: vec!["x".into(), "a longer word here".into()],
        boxed: Box::new(42),
        slice: vec![1, 2, 3].into_boxed_slice(),
        array: [7, 8, 9],
        some: Some("present".into()),
        none: None,
        ok: Ok(5),
        err: Err("failed for a long reason".into()),
        tuple: (1, "two".into(), 3),
        map,
        set: [5u64, 1, 3].into_iter().collect(),
        nested: Inner {
            label: "inner".into(),
            weight: 2.5,
        },
        kinds: vec![
            Kind::Unit,
            Kind::Newtype(9),
            Kind::Tuple(4, "four, out of line".into()),
            Kind::Struct {
                x: 11,
                y: Some("why".into()),
            },
        ],
        tagged: vec![Tagged::B, Tagged::A],
        pair: Pair(16, "sixteen".into()),
        meters: Meters(5),
        tree: [(1, 2)].into_iter().collect(),
        usz: 123,
        isz: -123,
        cow: Cow::Borrowed("borrowed, then owned"),
    }
}

fn expected() -> Value {
    let map: serde_json::Map<String, Value> = (0..40u32)
        .map(|i| (format!("key-{i:02}"), json!([i, i * 2])))
        .collect();
    json!({
        "a": 200, "b": 60000, "c": 4000000000u64, "d": u64::MAX,
        "e": u128::MAX.to_string(),
        "f": -100, "g": -30000, "h": -2000000000, "i": i64::MIN,
        "j": (-(1i128 << 100)).to_string(),
        "k": 1.5, "l": -0.25, "m": true, "n": "ß", "o": null,
        "short": "abc", "long": "a string longer than eight bytes",
        "bytes": "0x0a0bff",
        "words": ["x", "a longer word here"],
        "boxed": 42,
        "slice": [1, 2, 3],
        "array": [7, 8, 9],
        "some": "present", "none": null,
        "ok": {"Ok": 5}, "err": {"Err": "failed for a long reason"},
        "tuple": [1, "two", 3],
        "map": map,
        "set": [1, 3, 5],
        "nested": {"label": "inner", "weight": 2.5},
        "kinds": ["Unit", {"Newtype": 9}, {"Tuple": [4, "four, out of line"]},
                  {"Struct": {"x": 11, "y": "why"}}],
        "tagged": ["B", "A"],
        "pair": [16, "sixteen"],
        "meters": 5,
        "usz": 123, "isz": -123,
        "cow": "borrowed, then owned",
    })
}

/// The schema of `T` alone (an in-flight schema: its record type is `T`).
fn schema_of<T: spate::Schema + Archive>() -> (BlockSchema, u32) {
    let schema = BlockSchema::in_flight::<T>();
    let Roots::InFlight { record, .. } = schema.roots else {
        unreachable!()
    };
    (schema, record)
}

fn archive(value: &Everything) -> rkyv::util::AlignedVec {
    rkyv::to_bytes::<rkyv::rancor::Error>(value).unwrap()
}

fn decode(
    schema: &BlockSchema,
    ty: u32,
    bytes: &[u8],
    displays: &Displays,
) -> Result<Value, DecodeError> {
    let d = Decoder::new(schema, bytes, displays);
    d.value(d.root(ty)?, ty)
}

#[test]
fn every_shape_decodes_from_the_schema_alone() {
    let (schema, ty) = schema_of::<Everything>();
    let bytes = archive(&everything());
    let mut got = decode(&schema, ty, &bytes, &Displays::new()).unwrap();
    // The B-tree is opaque: shown as its inline bytes, named.
    let tree = got.as_object_mut().unwrap().remove("tree").unwrap();
    assert_eq!(tree["opaque"], "BTreeMap<u64, u64>", "{tree}");
    assert!(tree["hex"].as_str().unwrap().starts_with("0x"), "{tree}");
    assert_eq!(got, expected());
    assert_eq!(schema.type_name(ty), "Everything");
}

#[test]
fn custom_displays_apply_by_type_name_wherever_the_type_is() {
    let (schema, ty) = schema_of::<Everything>();
    let bytes = archive(&everything());
    let displays = Displays::new()
        .with("Inner", |s| {
            json!(format!(
                "{}@{}",
                s.value["label"].as_str().unwrap(),
                s.value["weight"]
            ))
        })
        .with("Kind", |s| json!(format!("kind {}", s.value)))
        .with("Meters", |s| {
            assert_eq!(s.bytes, &5u64.to_le_bytes());
            json!(format!("{} m", s.value))
        });
    let got = decode(&schema, ty, &bytes, &displays).unwrap();
    assert_eq!(got["nested"], "inner@2.5");
    assert_eq!(got["kinds"][0], "kind \"Unit\"");
    assert_eq!(got["kinds"][1], "kind {\"Newtype\":9}");
    assert_eq!(got["meters"], "5 m");
    // Plain values (what keys are compared on) ignore displays.
    let d = Decoder::new(&schema, &bytes, &displays);
    assert_eq!(d.plain_value(d.root(ty).unwrap(), ty).unwrap()["meters"], 5);
}

/// A tiny deterministic generator (xorshift).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[test]
fn damaged_archives_give_errors_never_a_panic() {
    let (schema, ty) = schema_of::<Everything>();
    let bytes = archive(&everything()).to_vec();
    let displays = Displays::new();
    let mut errors = 0;
    // Every truncation, from either end.
    for cut in 0..bytes.len() {
        errors += usize::from(decode(&schema, ty, &bytes[cut..], &displays).is_err());
        errors += usize::from(decode(&schema, ty, &bytes[..cut], &displays).is_err());
    }
    // Flipped bytes, one to four at a time.
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let mut damaged = bytes.clone();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(damaged.len() as u64) as usize;
            damaged[at] ^= 1 << rng.below(8);
        }
        errors += usize::from(decode(&schema, ty, &damaged, &displays).is_err());
    }
    // Random bytes of every length up to 512.
    for len in 0..512 {
        let random: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        errors += usize::from(decode(&schema, ty, &random, &displays).is_err());
    }
    assert!(errors > 1_000, "damage is reported: {errors} errors");
}

#[test]
fn damaged_schemas_give_errors_never_a_panic() {
    let (schema, ty) = schema_of::<Everything>();
    let bytes = archive(&everything()).to_vec();
    let displays = Displays::new();
    let types = schema.types.len() as u64;
    let mut rng = Rng(7);
    for _ in 0..5_000 {
        let mut s = schema.clone();
        for _ in 0..1 + rng.below(3) {
            let t = &mut s.types[rng.below(types) as usize];
            match rng.below(6) {
                0 => t.size = rng.below(64) as u32,
                1 => t.align = rng.below(16) as u32,
                _ => match &mut t.shape {
                    Shape::Struct { fields, .. } | Shape::Tuple { fields }
                        if !fields.is_empty() =>
                    {
                        let i = rng.below(fields.len() as u64) as usize;
                        if rng.below(2) == 0 {
                            fields[i].offset = rng.next() as u32;
                        } else {
                            // Possibly a cycle, possibly out of range.
                            fields[i].ty = rng.below(types + 2) as u32;
                        }
                    }
                    Shape::Seq { element } | Shape::Box { target: element } => {
                        *element = rng.below(types + 2) as u32;
                    }
                    Shape::Enum { variants, .. } if !variants.is_empty() => {
                        let i = rng.below(variants.len() as u64) as usize;
                        variants[i].tag = rng.next() as u8;
                    }
                    Shape::Map {
                        entry_size,
                        value_offset,
                        ..
                    } => {
                        *entry_size = rng.below(64) as u32;
                        *value_offset = rng.below(64) as u32;
                    }
                    shape => *shape = Shape::Unit,
                },
            }
        }
        let _ = decode(&s, ty, &bytes, &displays);
        let _ = decode(&s, rng.below(types + 2) as u32, &bytes, &displays);
        let _ = s.type_name(ty);
    }
}

/// A generic struct, a field archived through a wrapper (opaque unless
/// described), and the same wrapper described with `#[schema(as = ..)]`.
#[derive(Archive, Serialize, Deserialize, spate::Schema)]
struct Wrapped<T> {
    value: T,
    #[rkyv(with = rkyv::with::AsBox)]
    hidden: u64,
    #[rkyv(with = rkyv::with::AsBox)]
    #[schema(as = Box<u64>)]
    shown: u64,
}

#[test]
fn generic_types_and_wrapped_fields_are_described() {
    let value = Wrapped {
        value: vec![Pair(1, "one".into())],
        hidden: 7,
        shown: 9,
    };
    let (schema, ty) = schema_of::<Wrapped<Vec<Pair>>>();
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&value).unwrap();
    let got = decode(&schema, ty, &bytes, &Displays::new()).unwrap();
    assert_eq!(got["value"], json!([[1, "one"]]));
    assert_eq!(got["shown"], 9);
    assert_eq!(got["hidden"]["opaque"], "u64", "{got}");
    assert_eq!(schema.type_name(ty), "Wrapped");
}
