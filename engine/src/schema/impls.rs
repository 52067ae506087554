//! [`Schema`] for the primitives and the standard containers, each describing
//! the archived type rkyv gives it (`rkyv::Archived<T>`), with sizes,
//! alignments and offsets computed by the compiler. Offsets inside rkyv's
//! `#[repr(u8)]` enums (`ArchivedOption`, `ArchivedResult`) follow the layout
//! Rust defines for primitive representations ([`SchemaBuilder::variant`]);
//! the tests below archive values and check those offsets against the bytes.

use super::{Field, Schema, SchemaBuilder, Shape, TypeDef};
use rkyv::collections::util::Entry;
use rkyv::tuple::*;
use rkyv::Archived;
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::marker::PhantomData;

macro_rules! primitive {
    ($shape:ident: $($t:ty),*) => {$(
        impl Schema for $t {
            fn describe(_: &mut SchemaBuilder) -> TypeDef {
                TypeDef::of::<Archived<$t>>(Shape::$shape)
            }
        }
    )*};
}
primitive!(UInt: u8, u16, u32, u64, u128, usize);
primitive!(SInt: i8, i16, i32, i64, i128, isize);
primitive!(Float: f32, f64);
primitive!(Bool: bool);
primitive!(Char: char);
primitive!(Unit: ());
primitive!(String: String);

impl<T: 'static> Schema for PhantomData<T> {
    fn describe(_: &mut SchemaBuilder) -> TypeDef {
        TypeDef::of::<PhantomData<T>>(Shape::Unit)
    }
}

/// `Cow<str>` is archived as a `String` through `#[rkyv(with = AsOwned)]`
/// (it has no `Archive` of its own).
impl Schema for Cow<'static, str> {
    fn describe(b: &mut SchemaBuilder) -> TypeDef {
        String::describe(b)
    }
}

/// `Cow<[T]>` is archived as a `Vec<T>` through `#[rkyv(with = AsOwned)]`.
impl<T: Schema + rkyv::Archive + Clone> Schema for Cow<'static, [T]> {
    fn describe(b: &mut SchemaBuilder) -> TypeDef {
        Vec::<T>::describe(b)
    }
}

impl<T: Schema + rkyv::Archive> Schema for Vec<T> {
    fn describe(b: &mut SchemaBuilder) -> TypeDef {
        let element = b.add::<T>();
        TypeDef::of::<rkyv::vec::ArchivedVec<T::Archived>>(Shape::Seq { element })
    }
}

impl<T: Schema + rkyv::Archive> Schema for Box<[T]> {
    fn describe(b: &mut SchemaBuilder) -> TypeDef {
        // A relative pointer with the slice's length: the layout of a vector.
        let element = b.add::<T>();
        TypeDef::of::<rkyv::boxed::ArchivedBox<[T::Archived]>>(Shape::Seq { element })
    }
}

impl<T: Schema + rkyv::Archive> Schema for Box<T> {
    fn describe(b: &mut SchemaBuilder) -> TypeDef {
        let target = b.add::<T>();
        TypeDef::of::<rkyv::boxed::ArchivedBox<T::Archived>>(Shape::Box { target })
    }
}

impl<T: Schema + rkyv::Archive, const N: usize> Schema for [T; N] {
    fn describe(b: &mut SchemaBuilder) -> TypeDef {
        let element = b.add::<T>();
        TypeDef::of::<[T::Archived; N]>(Shape::Array {
            element,
            len: N as u32,
        })
    }
}

impl<T: Schema + rkyv::Archive> Schema for Option<T> {
    fn describe(b: &mut SchemaBuilder) -> TypeDef {
        let some = b.add::<T>();
        let offset = b.variant("Some", 1, true, vec![("0", some)]).fields[0].offset;
        TypeDef::of::<rkyv::option::ArchivedOption<T::Archived>>(Shape::Option { some, offset })
    }
}

impl<T: Schema + rkyv::Archive, E: Schema + rkyv::Archive> Schema for Result<T, E> {
    fn describe(b: &mut SchemaBuilder) -> TypeDef {
        let ok = b.add::<T>();
        let err = b.add::<E>();
        let variants = vec![
            b.variant("Ok", 0, true, vec![("0", ok)]),
            b.variant("Err", 1, true, vec![("0", err)]),
        ];
        TypeDef::of::<rkyv::result::ArchivedResult<T::Archived, E::Archived>>(Shape::Enum {
            name: "Result".into(),
            variants,
        })
    }
}

impl<K, V, S> Schema for HashMap<K, V, S>
where
    K: Schema + rkyv::Archive,
    V: Schema + rkyv::Archive,
    S: 'static,
{
    fn describe(b: &mut SchemaBuilder) -> TypeDef {
        let key = b.add::<K>();
        let value = b.add::<V>();
        TypeDef::of::<rkyv::collections::swiss_table::ArchivedHashMap<K::Archived, V::Archived>>(
            Shape::Map {
                key,
                value,
                entry_size: std::mem::size_of::<Entry<K::Archived, V::Archived>>() as u32,
                value_offset: std::mem::offset_of!(Entry<K::Archived, V::Archived>, value) as u32,
            },
        )
    }
}

impl<K: Schema + rkyv::Archive, S: 'static> Schema for HashSet<K, S> {
    fn describe(b: &mut SchemaBuilder) -> TypeDef {
        // rkyv archives a set as a map to `()`.
        let key = b.add::<K>();
        let value = b.add::<()>();
        TypeDef::of::<rkyv::collections::swiss_table::ArchivedHashSet<K::Archived>>(Shape::Map {
            key,
            value,
            entry_size: std::mem::size_of::<Entry<K::Archived, ()>>() as u32,
            value_offset: std::mem::offset_of!(Entry<K::Archived, ()>, value) as u32,
        })
    }
}

/// B-tree maps are not described (rkyv's archived B-tree is not decoded):
/// shown as bytes, restored only into the same type.
impl<K: Schema + rkyv::Archive, V: Schema + rkyv::Archive> Schema for BTreeMap<K, V> {
    fn describe(b: &mut SchemaBuilder) -> TypeDef {
        let (key, value) = (b.add::<K>(), b.add::<V>());
        let name = format!("BTreeMap<{}, {}>", b.type_name(key), b.type_name(value));
        TypeDef::of::<rkyv::collections::btree_map::ArchivedBTreeMap<K::Archived, V::Archived>>(
            Shape::Opaque { name },
        )
    }
}

/// See [`BTreeMap`]'s.
impl<K: Schema + rkyv::Archive> Schema for BTreeSet<K> {
    fn describe(b: &mut SchemaBuilder) -> TypeDef {
        let key = b.add::<K>();
        let name = format!("BTreeSet<{}>", b.type_name(key));
        TypeDef::of::<rkyv::collections::btree_set::ArchivedBTreeSet<K::Archived>>(Shape::Opaque {
            name,
        })
    }
}

macro_rules! tuple {
    ($archived:ty: $($t:ident $i:tt),+) => {
        impl<$($t: Schema + rkyv::Archive),+> Schema for ($($t,)+) {
            fn describe(b: &mut SchemaBuilder) -> TypeDef {
                let fields = vec![$(
                    Field::new(stringify!($i), b.add::<$t>(), std::mem::offset_of!($archived, $i)),
                )+];
                TypeDef::of::<$archived>(Shape::Tuple { fields })
            }
        }
    };
}
tuple!(ArchivedTuple1<A::Archived>: A 0);
tuple!(ArchivedTuple2<A::Archived, B::Archived>: A 0, B 1);
tuple!(ArchivedTuple3<A::Archived, B::Archived, C::Archived>: A 0, B 1, C 2);
tuple!(ArchivedTuple4<A::Archived, B::Archived, C::Archived, D::Archived>: A 0, B 1, C 2, D 3);
tuple!(ArchivedTuple5<A::Archived, B::Archived, C::Archived, D::Archived, E::Archived>: A 0, B 1, C 2, D 3, E 4);
tuple!(ArchivedTuple6<A::Archived, B::Archived, C::Archived, D::Archived, E::Archived, F::Archived>: A 0, B 1, C 2, D 3, E 4, F 5);
tuple!(ArchivedTuple7<A::Archived, B::Archived, C::Archived, D::Archived, E::Archived, F::Archived, G::Archived>: A 0, B 1, C 2, D 3, E 4, F 5, G 6);
tuple!(ArchivedTuple8<A::Archived, B::Archived, C::Archived, D::Archived, E::Archived, F::Archived, G::Archived, H::Archived>: A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7);
tuple!(ArchivedTuple9<A::Archived, B::Archived, C::Archived, D::Archived, E::Archived, F::Archived, G::Archived, H::Archived, I::Archived>: A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8);
tuple!(ArchivedTuple10<A::Archived, B::Archived, C::Archived, D::Archived, E::Archived, F::Archived, G::Archived, H::Archived, I::Archived, J::Archived>: A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9);
tuple!(ArchivedTuple11<A::Archived, B::Archived, C::Archived, D::Archived, E::Archived, F::Archived, G::Archived, H::Archived, I::Archived, J::Archived, K::Archived>: A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10);
tuple!(ArchivedTuple12<A::Archived, B::Archived, C::Archived, D::Archived, E::Archived, F::Archived, G::Archived, H::Archived, I::Archived, J::Archived, K::Archived, L::Archived>: A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10, L 11);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::BlockSchema;

    fn schema_of<T: Schema>() -> (Vec<TypeDef>, u32) {
        let mut b = SchemaBuilder::new();
        let root = b.add::<T>();
        (b.types, root)
    }

    /// The archive of `value` alone; its root is at the end.
    fn archive<T>(value: &T) -> Vec<u8>
    where
        T: for<'a> rkyv::Serialize<
            rkyv::api::high::HighSerializer<
                rkyv::util::AlignedVec,
                rkyv::ser::allocator::ArenaHandle<'a>,
                rkyv::rancor::Error,
            >,
        >,
    {
        rkyv::to_bytes::<rkyv::rancor::Error>(value)
            .unwrap()
            .to_vec()
    }

    #[test]
    fn option_payload_offsets_match_the_archive() {
        // Some(u64): tag 1, then the value at its recorded offset.
        let (types, root) = schema_of::<Option<u64>>();
        let Shape::Option { offset, .. } = types[root as usize].shape else {
            panic!("{:?}", types[root as usize]);
        };
        let bytes = archive(&Some(0x0102_0304_0506_0708u64));
        let at = bytes.len() - types[root as usize].size as usize;
        assert_eq!(bytes[at], 1);
        let o = at + offset as usize;
        assert_eq!(&bytes[o..o + 8], &0x0102_0304_0506_0708u64.to_le_bytes());
        // Some(u8) right after the tag.
        let (types, root) = schema_of::<Option<u8>>();
        assert!(matches!(
            types[root as usize].shape,
            Shape::Option { offset: 1, .. }
        ));
        let bytes = archive(&None::<u8>);
        assert_eq!(bytes[bytes.len() - 2], 0);
    }

    #[test]
    fn result_variant_offsets_match_the_archive() {
        let (types, root) = schema_of::<Result<u32, u8>>();
        let Shape::Enum { variants, .. } = &types[root as usize].shape else {
            panic!();
        };
        let bytes = archive(&Ok::<u32, u8>(7));
        let at = bytes.len() - types[root as usize].size as usize;
        assert_eq!(bytes[at], variants[0].tag);
        let o = at + variants[0].fields[0].offset as usize;
        assert_eq!(&bytes[o..o + 4], &7u32.to_le_bytes());
    }

    #[test]
    fn tuples_and_maps_are_described_from_rkyv_types() {
        let (types, root) = schema_of::<(u8, u64, String)>();
        let Shape::Tuple { fields } = &types[root as usize].shape else {
            panic!();
        };
        assert_eq!(
            fields.iter().map(|f| f.offset).collect::<Vec<_>>(),
            vec![0, 8, 16]
        );
        assert_eq!(types[root as usize].size, 24);
        let schema = BlockSchema::keyed::<u64, crate::data::FxHashMap<u64, (u64, u64)>>();
        assert_eq!(schema.entry_name(), "(u64, HashMap<u64, (u64, u64)>)");
        assert_eq!(
            BlockSchema::timers::<String>().entry_name(),
            "Vec<(u64, u8, String)>"
        );
        assert_eq!(
            BlockSchema::keyed::<u64, BTreeMap<u64, String>>().entry_name(),
            "(u64, BTreeMap<u64, String>)"
        );
        assert!(BlockSchema::keyed::<u64, u64>().little_endian);
    }
}
