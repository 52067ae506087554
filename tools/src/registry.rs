//! The decoders of `dump` and `diff`: a registry from the type name the engine
//! recorded for a table ([`spate::internals::inspect::table_type_name`], or
//! [`spate::internals::inspect::timers_type_name`] for timers) to a function that decodes
//! one key group's chain through [`spate::internals::inspect`] and shows its entries as JSON
//! values.
//!
//! Owns only which types are known and how they are shown ([`Show`]): the
//! archive layout and the chain logic stay in the engine. Known: integers,
//! floats, `bool`, strings, byte vectors, options, vectors, arrays, tuples and
//! hash maps of those in common combinations; the engine's window records
//! (map state of accumulators per window end, [`WindowResult`]) and timers; the
//! Nexmark records and the state types of `spate-bench`'s queries. Anything
//! else is shown as bytes by the caller. A type name is matched exactly, so a
//! registry only knows the tables of jobs built with the same compiler.

use std::borrow::Cow;
use std::collections::HashMap;

use serde_json::{json, Value};
use spate::internals::inspect::{
    table_type_name, timers_type_name, InspectError, KeyGroupChain, Timer,
};
use spate::state::FxHashMap;
use spate::time::TimeDomain;
use spate::window::WindowResult;
use spate::{Key, StateData};
use spate_bench::checkpoint_bench::Payload;
use spate_bench::nexmark::rows::{Q1Row, Q2Row, Q3Row, Q4Row, Q5Row, Q7Row, Q8Row};
use spate_bench::nexmark::{Auction, Bid, Event, EventKind, Person};

/// How a decoded key or value is shown: a JSON value (the human output prints it
/// compactly).
pub trait Show {
    /// This value as JSON.
    fn show(&self) -> Value;

    /// A sequence of these values (byte vectors override it: they show as hex).
    fn show_slice(items: &[Self]) -> Value
    where
        Self: Sized,
    {
        Value::Array(items.iter().map(Show::show).collect())
    }
}

macro_rules! show_number {
    ($($t:ty),*) => {$(
        impl Show for $t {
            fn show(&self) -> Value {
                json!(self)
            }
        }
    )*};
}
show_number!(u16, u32, u64, usize, i8, i16, i32, i64, isize, f32, f64, bool);

impl Show for u8 {
    fn show(&self) -> Value {
        json!(self)
    }
    fn show_slice(items: &[u8]) -> Value {
        Value::String(hex_string(items))
    }
}

impl Show for u128 {
    fn show(&self) -> Value {
        u64::try_from(*self).map_or_else(|_| Value::String(self.to_string()), |v| json!(v))
    }
}

impl Show for i128 {
    fn show(&self) -> Value {
        i64::try_from(*self).map_or_else(|_| Value::String(self.to_string()), |v| json!(v))
    }
}

impl Show for () {
    fn show(&self) -> Value {
        Value::Null
    }
}

impl Show for String {
    fn show(&self) -> Value {
        Value::String(self.clone())
    }
}

impl Show for Cow<'static, str> {
    fn show(&self) -> Value {
        Value::String(self.to_string())
    }
}

impl<T: Show> Show for Vec<T> {
    fn show(&self) -> Value {
        T::show_slice(self)
    }
}

impl<T: Show, const N: usize> Show for [T; N] {
    fn show(&self) -> Value {
        T::show_slice(self)
    }
}

impl<T: Show> Show for Option<T> {
    fn show(&self) -> Value {
        self.as_ref().map_or(Value::Null, Show::show)
    }
}

impl<A: Show, B: Show> Show for (A, B) {
    fn show(&self) -> Value {
        json!([self.0.show(), self.1.show()])
    }
}

impl<A: Show, B: Show, C: Show> Show for (A, B, C) {
    fn show(&self) -> Value {
        json!([self.0.show(), self.1.show(), self.2.show()])
    }
}

impl<A: Show, B: Show, C: Show, D: Show> Show for (A, B, C, D) {
    fn show(&self) -> Value {
        json!([self.0.show(), self.1.show(), self.2.show(), self.3.show()])
    }
}

/// A map shows as a JSON object (sorted by key): string keys as they are, other
/// keys as their compact JSON text.
impl<K: Show, V: Show, S> Show for HashMap<K, V, S> {
    fn show(&self) -> Value {
        let object: serde_json::Map<String, Value> = self
            .iter()
            .map(|(k, v)| {
                let key = match k.show() {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                (key, v.show())
            })
            .collect();
        Value::Object(object)
    }
}

impl<K: Show, R: Show> Show for WindowResult<K, R> {
    fn show(&self) -> Value {
        json!({
            "key": self.key.show(),
            "start": self.start,
            "end": self.end,
            "value": self.value.show(),
        })
    }
}

/// The Nexmark records and rows serialise with serde, field by field.
macro_rules! show_serde {
    ($($t:ty),*) => {$(
        impl Show for $t {
            fn show(&self) -> Value {
                serde_json::to_value(self).unwrap_or_else(|e| Value::String(format!("<{e}>")))
            }
        }
    )*};
}
show_serde!(
    Person, Auction, Bid, Event, EventKind, Q1Row, Q2Row, Q3Row, Q4Row, Q5Row, Q7Row, Q8Row
);

/// `0x` and lower-case hex digits.
pub fn hex_string(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 + 2 * bytes.len());
    s.push_str("0x");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// One decoded entry: a key and its value (a timer's key, and its time and
/// domain).
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// The key.
    pub key: Value,
    /// The value.
    pub value: Value,
}

/// Decodes a key group's chain into shown entries, sorted by key.
pub type DecodeFn = fn(&KeyGroupChain) -> Result<Vec<Entry>, InspectError>;

/// A registered decoder.
#[derive(Clone, Copy)]
pub struct Decoder {
    /// The function.
    pub decode: DecodeFn,
    /// Timers: a key may have several entries (compared as a set by `diff`).
    pub timers: bool,
}

/// Decoders by recorded type name.
pub struct Registry {
    decoders: HashMap<&'static str, Decoder>,
}

/// Registers `table::<K, V>()` for every key type of the first list and every
/// value type of the second.
macro_rules! tables {
    ($registry:ident; [$($k:ty),* $(,)?] x $values:tt) => {
        $( tables!(@key $registry; $k; $values); )*
    };
    (@key $registry:ident; $k:ty; [$($v:ty),* $(,)?]) => {
        $( $registry.table::<$k, $v>(); )*
    };
}

impl Registry {
    /// Every type `spate-ckpt` knows (see the module doc).
    pub fn builtin() -> Self {
        let mut r = Registry {
            decoders: HashMap::new(),
        };
        tables!(r; [u64, u32, i64, i32, String, Vec<u8>, (u64, u64)] x [
            u64, u32, i64, i32, u8, bool, f64, String, Vec<u8>,
            (u64, u64), (u64, u64, u64), (String, u64), (u64, String),
            Vec<u64>, Vec<String>, Option<u64>,
            // Window state: accumulators per window end (map state).
            FxHashMap<u64, u64>, FxHashMap<u64, (u64, u64)>, FxHashMap<u64, f64>,
        ]);
        for register in [
            Registry::timers::<u64>,
            Registry::timers::<u32>,
            Registry::timers::<i64>,
            Registry::timers::<i32>,
            Registry::timers::<String>,
            Registry::timers::<Vec<u8>>,
            Registry::timers::<(u64, u64)>,
        ] {
            register(&mut r);
        }
        r.table::<u64, WindowResult<u64, u64>>();
        r.table::<String, WindowResult<String, u64>>();
        // spate-bench: the Nexmark records, kept per id or per name...
        tables!(r; [u64, String] x [
            Person, Auction, Bid, Event, EventKind,
            Vec<Person>, Vec<Auction>, Vec<Bid>, Vec<Event>,
        ]);
        tables!(r; [u64] x [Q1Row, Q2Row, Q3Row, Q4Row, Q5Row, Q7Row, Q8Row]);
        // ...and the state of its queries (q3 to q8) and checkpoint benchmark.
        r.table::<u64, (String, String, String)>();
        r.table::<u64, (u64, u64, u64, Option<u64>)>();
        r.table::<u64, Vec<(u64, u64)>>();
        r.table::<u64, (u64, Vec<u64>)>();
        r.table::<u64, (u64, Vec<(u64, u64, u64)>)>();
        r.table::<u64, FxHashMap<u64, (u64, Vec<(u64, u64, u64)>)>>();
        r.table::<(u64, u64), (Option<String>, bool)>();
        r.table::<u64, Payload>();
        r
    }

    /// Registers keyed state of values `V` per key `K`.
    pub fn table<K: Key + Show, V: StateData + Show>(&mut self) {
        self.decoders.insert(
            table_type_name::<K, V>(),
            Decoder {
                decode: |chain| {
                    Ok(chain
                        .decode::<K, V>()?
                        .iter()
                        .map(|(k, v)| Entry {
                            key: k.show(),
                            value: v.show(),
                        })
                        .collect())
                },
                timers: false,
            },
        );
    }

    /// Registers the timers of operators keyed by `K`.
    pub fn timers<K: Key + Show>(&mut self) {
        self.decoders.insert(
            timers_type_name::<K>(),
            Decoder {
                decode: |chain| {
                    Ok(chain
                        .decode_timers::<K>()?
                        .iter()
                        .map(|t: &Timer<K>| Entry {
                            key: t.key.show(),
                            value: json!({
                                "timestamp": t.timestamp,
                                "domain": match t.domain {
                                    TimeDomain::EventTime => "event",
                                    TimeDomain::ProcessingTime => "processing",
                                },
                            }),
                        })
                        .collect())
                },
                timers: true,
            },
        );
    }

    /// The decoder of a recorded type name.
    pub fn get(&self, type_name: &str) -> Option<Decoder> {
        self.decoders.get(type_name).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_values() {
        assert_eq!(vec![0xabu8, 1].show(), json!("0xab01"));
        assert_eq!((1u64, "a".to_string()).show(), json!([1, "a"]));
        assert_eq!(Some(3u32).show(), json!(3));
        assert_eq!(u128::MAX.show(), json!(u128::MAX.to_string()));
        let mut m: FxHashMap<u64, u64> = FxHashMap::default();
        m.insert(10, 1);
        m.insert(9, 2);
        assert_eq!(m.show(), json!({"10": 1, "9": 2}));
    }

    #[test]
    fn knows_the_engine_and_bench_types() {
        let r = Registry::builtin();
        assert!(r.get(table_type_name::<u64, u64>()).is_some());
        assert!(r
            .get(table_type_name::<String, FxHashMap<u64, u64>>())
            .is_some());
        assert!(r.get(table_type_name::<u64, Bid>()).is_some());
        assert!(r.get(timers_type_name::<u64>()).unwrap().timers);
        assert!(r.get("(u64, my_crate::Unknown)").is_none());
    }
}
