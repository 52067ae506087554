//! Self-describing state: the archived layout of every type a checkpoint
//! holds, recorded in the checkpoint's metadata so that a tool can decode
//! any job's state, field by field, without the job's code, and so that a
//! restore can tell a changed state type from the one that was written.
//!
//! A [`TypeDef`] describes a type's *archived* (rkyv) form: its size, its
//! alignment and its [`Shape`] (integer, string, sequence, option, struct
//! with named fields at byte offsets, enum with named variants, hash map, …);
//! the types it contains are described by index into the same list, so a
//! [`BlockSchema`] (one list of types and the roots a block archives) is
//! self-contained and may be recursive. [`Schema`] is the trait a state type
//! implements to describe itself: built in for the primitives and the
//! standard containers (`impls.rs`), derived for structs and enums with
//! `#[derive(Schema)]` (crate `spate-derive`, re-exported as
//! [`crate::Schema`]). Every figure is computed by the compiler (sizes and
//! alignments with `size_of`/`align_of`, struct offsets with `offset_of!`),
//! and nothing depends on `std::any::type_name`, so a schema is stable across
//! compiler versions for as long as the layout itself is.
//!
//! Owns the schema types, their construction and the compatibility check of
//! a restore (`compare.rs`). Must not decode bytes: reading archives from
//! the schema alone is the inspection tool's job (`spate-ckpt`), and the
//! engine itself restores through the typed rkyv code. The encoding is
//! specified in `docs/storage-format.md` §6.

use rkyv::{Archive, Deserialize, Serialize};
use std::any::TypeId;
use std::collections::HashMap;

mod compare;
mod impls;

pub use compare::Incompatibility;

/// Used by the code `#[derive(Schema)]` generates; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use rkyv::with::ArchiveWith;
    pub use rkyv::Archive;
}

/// A type that can describe its archived layout: every key and value type
/// of keyed state, every timer key and every record type that crosses an
/// exchange (unaligned checkpoints persist records in flight). Implemented
/// for the primitives and the standard containers; derive it for your own
/// structs and enums with `#[derive(spate::Schema)]` next to rkyv's derives.
pub trait Schema: 'static {
    /// Describes `Self`'s archived form; the types it contains are added to
    /// `b` (with [`SchemaBuilder::add`]) and named by their index.
    fn describe(b: &mut SchemaBuilder) -> TypeDef;
}

/// One type's archived form.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct TypeDef {
    /// Size of the archived value in bytes (`size_of` of the archived type).
    pub size: u32,
    /// Its alignment in bytes.
    pub align: u32,
    /// What it is.
    pub shape: Shape,
}

impl TypeDef {
    /// A type whose archived form is `A`.
    pub fn of<A>(shape: Shape) -> Self {
        Self {
            size: std::mem::size_of::<A>() as u32,
            align: std::mem::align_of::<A>() as u32,
            shape,
        }
    }
}

pub use enums::{Roots, Shape};

/// The schema's enums. rkyv's derive gives an enum a resolver enum whose
/// variant fields carry no documentation; it stays in this module (not
/// reachable from outside the crate), where `missing_docs` is allowed.
mod enums {
    #![allow(missing_docs)]
    use super::{Field, Variant};
    use rkyv::{Archive, Deserialize, Serialize};

    /// What an archived value is, and where its parts are. Integers and floats
    /// are as wide as the type's size, in the byte order [`BlockSchema::little_endian`]
    /// records; a relative pointer is a signed 32-bit offset from the pointer's
    /// own position; lengths are unsigned 32-bit (rkyv's defaults).
    #[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
    pub enum Shape {
        /// `()` and other zero-sized values.
        Unit,
        /// One byte, 0 or 1.
        Bool,
        /// An unsigned integer.
        UInt,
        /// A signed integer (two's complement).
        SInt,
        /// An IEEE 754 float.
        Float,
        /// A Unicode scalar value as a 32-bit unsigned integer.
        Char,
        /// rkyv's string: 8 bytes, inline (up to 8 bytes of UTF-8, padded with
        /// `0xff`) or out of line (a length with the bits `10` in its top two
        /// bits of the first byte, then a relative pointer); see
        /// `docs/storage-format.md` §6.3.
        String,
        /// A sequence (`Vec<T>`, `Box<[T]>`): a relative pointer to `len`
        /// consecutive elements, then `len`.
        Seq {
            /// The element type.
            element: u32,
        },
        /// A box of one value: a relative pointer to it.
        Box {
            /// The boxed type.
            target: u32,
        },
        /// A fixed-size array, elements consecutive.
        Array {
            /// The element type.
            element: u32,
            /// Number of elements.
            len: u32,
        },
        /// An option: a tag byte (0 none, 1 some), the value at `offset`.
        Option {
            /// The type of the value.
            some: u32,
            /// Where the value starts.
            offset: u32,
        },
        /// A tuple: fields named `0`, `1`, ….
        Tuple {
            /// The fields.
            fields: Vec<Field>,
        },
        /// A struct (`tuple`: with positional fields named `0`, `1`, …).
        Struct {
            /// Its Rust name, without a path (informative: a rename is compatible).
            name: String,
            /// Whether its fields are positional.
            tuple: bool,
            /// The fields, in declaration order.
            fields: Vec<Field>,
        },
        /// An enum: a tag byte at offset 0, then the fields of the variant with
        /// that tag.
        Enum {
            /// Its Rust name, without a path (informative).
            name: String,
            /// The variants, in declaration order.
            variants: Vec<Variant>,
        },
        /// rkyv's hash map (a swiss table): a relative pointer to the control
        /// bytes, the length and the capacity; entries (`key` then `value` at
        /// `value_offset`, `entry_size` bytes each) lie before the control bytes,
        /// entry `i` at `control - (i + 1) · entry_size`; control byte `i` has its
        /// top bit clear when entry `i` is present. A hash set is a map whose
        /// value is `()`.
        Map {
            /// The key type.
            key: u32,
            /// The value type.
            value: u32,
            /// Bytes per entry.
            entry_size: u32,
            /// Where the value starts in an entry.
            value_offset: u32,
        },
        /// A type the schema does not describe (shown as its bytes).
        Opaque {
            /// A name for it.
            name: String,
        },
    }

    /// What the blocks of a [`BlockSchema`] archive, by index into its types.
    #[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
    pub enum Roots {
        /// Keyed state: a base block archives `Vec<(K, V)>`, a delta
        /// `(Vec<(K, V)>, Vec<K>)` (upserts, then deleted keys).
        Keyed {
            /// `K`.
            key: u32,
            /// `V`.
            value: u32,
            /// `Vec<(K, V)>`.
            base: u32,
            /// `(Vec<(K, V)>, Vec<K>)`.
            delta: u32,
        },
        /// An operator's timers of one key group: `Vec<(u64, u8, K)>` (time,
        /// domain: 0 event time, 1 processing time, key).
        Timers {
            /// `K`.
            key: u32,
            /// `Vec<(u64, u8, K)>`.
            block: u32,
        },
        /// Records in flight on one channel: `Vec<(u64, T)>` (timestamp, record).
        InFlight {
            /// `T`.
            record: u32,
            /// `Vec<(u64, T)>`.
            block: u32,
        },
    }
}

/// A field of a struct, tuple or enum variant.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// Its name (`0`, `1`, … for positional fields).
    pub name: String,
    /// Its type, by index.
    pub ty: u32,
    /// Its byte offset in the archived struct (or variant, tag included).
    pub offset: u32,
}

impl Field {
    /// A field named `name` of type `ty` at byte `offset`.
    pub fn new(name: &str, ty: u32, offset: usize) -> Self {
        Self {
            name: name.to_string(),
            ty,
            offset: offset as u32,
        }
    }
}

/// A variant of an enum.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Variant {
    /// Its name.
    pub name: String,
    /// The tag byte that selects it.
    pub tag: u8,
    /// Whether its fields are positional (`V(a, b)`, or a unit variant).
    pub tuple: bool,
    /// Its fields, offsets counted from the start of the enum.
    pub fields: Vec<Field>,
}

/// Collects the types of one schema, each once: [`add`](Self::add) gives a
/// type's index, describing it on first use (a type that contains itself gets
/// its index before its description is complete, so recursion terminates).
#[derive(Default)]
pub struct SchemaBuilder {
    types: Vec<TypeDef>,
    seen: HashMap<TypeId, u32>,
}

impl SchemaBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// The index of `T`'s description, adding it if it is new.
    pub fn add<T: Schema>(&mut self) -> u32 {
        if let Some(&index) = self.seen.get(&TypeId::of::<T>()) {
            return index;
        }
        let index = self.push(TypeDef::of::<()>(Shape::Unit));
        self.seen.insert(TypeId::of::<T>(), index);
        let def = T::describe(self);
        self.types[index as usize] = def;
        index
    }

    /// The index of `T`'s description, for a field whose archived form is
    /// `A` (`#[schema(as = T)]`). Panics when `T`'s archived size or
    /// alignment is not `A`'s: the description would misplace everything
    /// after it (a programmer error, found when the job is built).
    pub fn add_as<T: Schema, A>(&mut self) -> u32 {
        let index = self.add::<T>();
        let def = &self.types[index as usize];
        assert!(
            def.size as usize == std::mem::size_of::<A>()
                && def.align as usize == std::mem::align_of::<A>(),
            "#[schema(as = ..)]: the archived form of the type described has {} bytes aligned to {}, the field's {} aligned to {}",
            def.size,
            def.align,
            std::mem::size_of::<A>(),
            std::mem::align_of::<A>()
        );
        index
    }

    /// The index of an opaque type whose archived form is `A`: shown as its
    /// bytes.
    pub fn opaque<A>(&mut self, name: &str) -> u32 {
        self.push(TypeDef::of::<A>(Shape::Opaque {
            name: name.to_string(),
        }))
    }

    /// Adds a description as it is and gives its index.
    pub fn push(&mut self, def: TypeDef) -> u32 {
        self.types.push(def);
        self.types.len() as u32 - 1
    }

    /// The description of type `index` so far.
    pub fn get(&self, index: u32) -> &TypeDef {
        &self.types[index as usize]
    }

    /// The name of type `index` as described so far.
    pub fn type_name(&self, index: u32) -> String {
        type_name(&self.types, index)
    }

    /// A variant of a `#[repr(u8)]` enum whose fields have types `fields`
    /// (name, index): Rust lays each variant out as a `#[repr(C)]` struct
    /// that begins with the tag byte, so each field starts at the end of the
    /// one before, rounded up to its alignment. This is how rkyv's archived
    /// enums (and `ArchivedOption`, `ArchivedResult`) are laid out.
    pub fn variant(&self, name: &str, tag: u8, tuple: bool, fields: Vec<(&str, u32)>) -> Variant {
        let mut offset = 1u32;
        let fields = fields
            .into_iter()
            .map(|(field, ty)| {
                let def = self.get(ty);
                offset = offset.next_multiple_of(def.align.max(1));
                let placed = Field {
                    name: field.to_string(),
                    ty,
                    offset,
                };
                offset += def.size;
                placed
            })
            .collect();
        Variant {
            name: name.to_string(),
            tag,
            tuple,
            fields,
        }
    }

    fn finish(self) -> Vec<TypeDef> {
        self.types
    }
}

/// The schema of one kind of block: the types it archives and its roots.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BlockSchema {
    /// Whether multi-byte integers and floats are little-endian (rkyv's
    /// default; its `big_endian` feature makes them big-endian).
    pub little_endian: bool,
    /// Every type the roots refer to, by index.
    pub types: Vec<TypeDef>,
    /// What the blocks hold.
    pub roots: Roots,
}

/// Whether rkyv archives multi-byte values little-endian in this build
/// (its byte order is a feature of the `rkyv` crate, chosen by the build).
fn little_endian() -> bool {
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&1u16).expect("a u16 archives");
    bytes.first() == Some(&1)
}

impl BlockSchema {
    fn build(roots: impl FnOnce(&mut SchemaBuilder) -> Roots) -> Self {
        let mut b = SchemaBuilder::new();
        let roots = roots(&mut b);
        Self {
            little_endian: little_endian(),
            types: b.finish(),
            roots,
        }
    }

    /// Keyed state of values `V` per key `K`.
    pub fn keyed<K: Schema + Archive, V: Schema + Archive>() -> Self {
        Self::build(|b| Roots::Keyed {
            key: b.add::<K>(),
            value: b.add::<V>(),
            base: b.add::<Vec<(K, V)>>(),
            delta: b.add::<(Vec<(K, V)>, Vec<K>)>(),
        })
    }

    /// The timers of an operator keyed by `K`.
    pub fn timers<K: Schema + Archive>() -> Self {
        Self::build(|b| Roots::Timers {
            key: b.add::<K>(),
            block: b.add::<Vec<(u64, u8, K)>>(),
        })
    }

    /// Records of type `T` in flight.
    pub fn in_flight<T: Schema + Archive>() -> Self {
        Self::build(|b| Roots::InFlight {
            record: b.add::<T>(),
            block: b.add::<Vec<(u64, T)>>(),
        })
    }

    /// Type `index`, if the schema has it.
    pub fn get(&self, index: u32) -> Option<&TypeDef> {
        self.types.get(index as usize)
    }

    /// A short Rust-like name of type `index` (`u64`, `Vec<String>`,
    /// `(u64, Session)`, `HashMap<u64, u64>`); `?` for an index out of range.
    pub fn type_name(&self, index: u32) -> String {
        type_name(&self.types, index)
    }

    /// The name of what a block holds: `(K, V)` for keyed state, the block's
    /// type for timers (`Vec<(u64, u8, K)>`), the record's type for in-flight
    /// records.
    pub fn entry_name(&self) -> String {
        match self.roots {
            Roots::Keyed { key, value, .. } => {
                format!("({}, {})", self.type_name(key), self.type_name(value))
            }
            Roots::Timers { block, .. } => self.type_name(block),
            Roots::InFlight { record, .. } => self.type_name(record),
        }
    }

    /// Whether a checkpoint's blocks of schema `self` can be restored by a
    /// job whose schema is `job`: the same archived layout, field and
    /// variant names (type names may change). On failure: the first place
    /// that differs.
    pub fn check_restorable_by(&self, job: &BlockSchema) -> Result<(), Incompatibility> {
        compare::check(self, job)
    }
}

/// A short Rust-like name of type `index` of `types`.
pub(crate) fn type_name(types: &[TypeDef], index: u32) -> String {
    let mut out = String::new();
    write_name(types, index, 0, &mut out);
    out
}

fn write_name(types: &[TypeDef], index: u32, depth: usize, out: &mut String) {
    let Some(def) = types.get(index as usize).filter(|_| depth < 16) else {
        out.push('?');
        return;
    };
    let list = |out: &mut String, items: &mut dyn Iterator<Item = u32>| {
        for (i, ty) in items.enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            write_name(types, ty, depth + 1, out);
        }
    };
    match &def.shape {
        Shape::Unit => out.push_str("()"),
        Shape::Bool => out.push_str("bool"),
        Shape::UInt => out.push_str(&format!("u{}", def.size * 8)),
        Shape::SInt => out.push_str(&format!("i{}", def.size * 8)),
        Shape::Float => out.push_str(&format!("f{}", def.size * 8)),
        Shape::Char => out.push_str("char"),
        Shape::String => out.push_str("String"),
        Shape::Seq { element } => {
            out.push_str("Vec<");
            write_name(types, *element, depth + 1, out);
            out.push('>');
        }
        Shape::Box { target } => {
            out.push_str("Box<");
            write_name(types, *target, depth + 1, out);
            out.push('>');
        }
        Shape::Array { element, len } => {
            out.push('[');
            write_name(types, *element, depth + 1, out);
            out.push_str(&format!("; {len}]"));
        }
        Shape::Option { some, .. } => {
            out.push_str("Option<");
            write_name(types, *some, depth + 1, out);
            out.push('>');
        }
        Shape::Tuple { fields } => {
            out.push('(');
            list(out, &mut fields.iter().map(|f| f.ty));
            if fields.len() == 1 {
                out.push(',');
            }
            out.push(')');
        }
        Shape::Struct { name, .. } | Shape::Enum { name, .. } | Shape::Opaque { name } => {
            out.push_str(name);
        }
        Shape::Map { key, value, .. } => {
            if matches!(
                types.get(*value as usize).map(|d| &d.shape),
                Some(Shape::Unit)
            ) {
                out.push_str("HashSet<");
                write_name(types, *key, depth + 1, out);
            } else {
                out.push_str("HashMap<");
                list(out, &mut [*key, *value].into_iter());
            }
            out.push('>');
        }
    }
}
