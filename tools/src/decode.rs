//! Decoding archived values from their schema alone
//! ([`spate::schema::BlockSchema`], recorded in the checkpoint): no
//! knowledge of the job's types, no `type_name`, field by field.
//!
//! Owns the reading of rkyv's archived layout as the schema describes it
//! (`docs/storage-format.md` §6): integers and floats in the recorded byte
//! order, strings inline or out of line, relative pointers to sequences and
//! boxes, options, tuples, structs, enums by their tag, swiss-table hash maps.
//! Every offset and length read from the bytes is checked against the archive
//! before use, depth and total work are bounded, and anything wrong is a
//! [`DecodeError`] saying what and where: bytes from disk never make it
//! panic. A type the schema does not describe ([`Shape::Opaque`]) is shown as
//! its bytes; custom displays ([`Displays`]) replace how a named type shows.

use serde_json::{json, Map, Value};
use spate::schema::{BlockSchema, Field, Shape, TypeDef};
use std::cell::Cell;
use std::cmp::Ordering;

use crate::display::{Displays, Shown};

/// How deep values may nest (a bound for damaged, cyclic schemas too).
const MAX_DEPTH: usize = 64;
/// Values one root may decode to, at most (sharing through pointers could
/// otherwise make a small damaged archive decode to an enormous value).
const MAX_VALUES: u64 = 50_000_000;

/// An archive that does not decode with its schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at byte {offset} of the block: {what}")]
pub struct DecodeError {
    /// Where in the block.
    pub offset: usize,
    /// What is wrong.
    pub what: String,
}

fn fail<T>(offset: usize, what: impl Into<String>) -> Result<T, DecodeError> {
    Err(DecodeError {
        offset,
        what: what.into(),
    })
}

/// Reads one block's archive with one schema.
pub struct Decoder<'a> {
    schema: &'a BlockSchema,
    archive: &'a [u8],
    displays: &'a Displays,
    /// Values decoded so far (bounded by [`MAX_VALUES`]).
    values: Cell<u64>,
}

impl<'a> Decoder<'a> {
    /// A decoder of `archive` (one block's payload) described by `schema`;
    /// named types show through `displays`.
    pub fn new(schema: &'a BlockSchema, archive: &'a [u8], displays: &'a Displays) -> Self {
        Self {
            schema,
            archive,
            displays,
            values: Cell::new(0),
        }
    }

    /// Type `ty` of the schema.
    pub fn def(&self, ty: u32) -> Result<&'a TypeDef, DecodeError> {
        match self.schema.get(ty) {
            Some(d) => Ok(d),
            None => fail(0, format!("the schema has no type {ty}")),
        }
    }

    /// Where the archive's root of type `ty` is: at its end, as rkyv puts it.
    pub fn root(&self, ty: u32) -> Result<usize, DecodeError> {
        let size = self.def(ty)?.size as usize;
        match self.archive.len().checked_sub(size) {
            Some(pos) => Ok(pos),
            None => fail(
                0,
                format!("{} bytes cannot hold a root of {size}", self.archive.len()),
            ),
        }
    }

    /// `len` bytes at `pos`.
    fn bytes(&self, pos: usize, len: usize) -> Result<&'a [u8], DecodeError> {
        match pos.checked_add(len) {
            Some(end) if end <= self.archive.len() => Ok(&self.archive[pos..end]),
            _ => fail(
                pos,
                format!(
                    "{len} bytes past the end of the block ({} bytes)",
                    self.archive.len()
                ),
            ),
        }
    }

    /// An unsigned integer of `width` bytes at `pos`, in the schema's byte order.
    fn uint(&self, pos: usize, width: usize) -> Result<u128, DecodeError> {
        let b = self.bytes(pos, width)?;
        let mut v: u128 = 0;
        if self.schema.little_endian {
            for &byte in b.iter().rev() {
                v = (v << 8) | u128::from(byte);
            }
        } else {
            for &byte in b {
                v = (v << 8) | u128::from(byte);
            }
        }
        Ok(v)
    }

    /// A signed integer of `width` bytes at `pos`.
    fn sint(&self, pos: usize, width: usize) -> Result<i128, DecodeError> {
        let v = self.uint(pos, width)?;
        let bits = (width * 8) as u32;
        Ok(if bits == 0 {
            0
        } else if bits >= 128 {
            v as i128
        } else {
            ((v << (128 - bits)) as i128) >> (128 - bits)
        })
    }

    /// The target of the relative pointer (`width` bytes) at `pos`: an
    /// offset from the pointer's own position.
    fn rel_ptr(&self, pos: usize, width: usize) -> Result<usize, DecodeError> {
        self.rel_ptr_from(pos, pos, width)
    }

    /// The target of the offset (`width` bytes) at `at`, counted from `base`.
    fn rel_ptr_from(&self, base: usize, at: usize, width: usize) -> Result<usize, DecodeError> {
        let offset = self.sint(at, width)?;
        let target = base as i128 + offset;
        if target < 0 || target > self.archive.len() as i128 {
            return fail(
                at,
                format!("relative pointer {offset} leads outside the block"),
            );
        }
        Ok(target as usize)
    }

    /// A pointer width from a container's size (`parts` fields of one width).
    fn width(&self, pos: usize, def: &TypeDef, parts: u32) -> Result<usize, DecodeError> {
        let w = def.size / parts;
        if def.size % parts != 0 || !matches!(w, 2 | 4 | 8) {
            return fail(pos, format!("a container of {} bytes", def.size));
        }
        Ok(w as usize)
    }

    /// Counts one value against [`MAX_VALUES`].
    fn count(&self, pos: usize) -> Result<(), DecodeError> {
        let n = self.values.get() + 1;
        self.values.set(n);
        if n > MAX_VALUES {
            return fail(pos, "more values than a block can hold");
        }
        Ok(())
    }

    /// The value of type `ty` at `pos`, shown as JSON (displays applied).
    pub fn value(&self, pos: usize, ty: u32) -> Result<Value, DecodeError> {
        self.value_at(pos, ty, 0, true)
    }

    /// The value of type `ty` at `pos` as the tool shows it without custom
    /// displays (what keys are compared on).
    pub fn plain_value(&self, pos: usize, ty: u32) -> Result<Value, DecodeError> {
        self.value_at(pos, ty, 0, false)
    }

    fn value_at(
        &self,
        pos: usize,
        ty: u32,
        depth: usize,
        shown: bool,
    ) -> Result<Value, DecodeError> {
        if depth > MAX_DEPTH {
            return fail(pos, "values nest too deeply");
        }
        self.count(pos)?;
        let def = self.def(ty)?;
        let inline = self.bytes(pos, def.size as usize)?;
        let value = self.shape(pos, def, depth, shown)?;
        let name = match &def.shape {
            Shape::Struct { name, .. } | Shape::Enum { name, .. } | Shape::Opaque { name } => name,
            _ => return Ok(value),
        };
        match self.displays.get(name).filter(|_| shown) {
            Some(display) => Ok(display(&Shown {
                type_name: name,
                value: &value,
                bytes: inline,
            })),
            None => Ok(value),
        }
    }

    fn shape(
        &self,
        pos: usize,
        def: &TypeDef,
        depth: usize,
        shown: bool,
    ) -> Result<Value, DecodeError> {
        let size = def.size as usize;
        let next = depth + 1;
        match &def.shape {
            Shape::Unit => Ok(Value::Null),
            Shape::Bool => match self.bytes(pos, 1)?[0] {
                0 => Ok(json!(false)),
                1 => Ok(json!(true)),
                b => fail(pos, format!("bool byte {b}")),
            },
            Shape::UInt => self.unsigned(pos, size),
            Shape::SInt => self.signed(pos, size),
            Shape::Float => self.float(pos, size),
            Shape::Char => {
                let c = self.uint(pos, size)?;
                match u32::try_from(c).ok().and_then(char::from_u32) {
                    Some(c) => Ok(json!(c.to_string())),
                    None => fail(pos, format!("{c:#x} is not a char")),
                }
            }
            Shape::String => Ok(Value::String(self.string(pos, def)?)),
            Shape::Seq { element } => {
                let (start, len) = self.seq(pos, def, *element)?;
                self.elements(start, len, *element, next, shown)
            }
            Shape::Box { target } => {
                let w = self.width(pos, def, 1)?;
                let at = self.rel_ptr(pos, w)?;
                self.value_at(at, *target, next, shown)
            }
            Shape::Array { element, len } => {
                self.elements(pos, *len as usize, *element, next, shown)
            }
            Shape::Option { some, offset } => match self.bytes(pos, 1)?[0] {
                0 => Ok(Value::Null),
                1 => self.value_at(pos + *offset as usize, *some, next, shown),
                t => fail(pos, format!("option tag {t}")),
            },
            Shape::Tuple { fields } => Ok(Value::Array(
                fields
                    .iter()
                    .map(|f| self.value_at(pos + f.offset as usize, f.ty, next, shown))
                    .collect::<Result<_, _>>()?,
            )),
            Shape::Struct { tuple, fields, .. } => self.fields(pos, *tuple, fields, next, shown),
            Shape::Enum { variants, .. } => {
                let tag = self.bytes(pos, 1)?[0];
                let Some(v) = variants.iter().find(|v| v.tag == tag) else {
                    return fail(pos, format!("enum tag {tag} names no variant"));
                };
                if v.fields.is_empty() {
                    return Ok(Value::String(v.name.clone()));
                }
                let inner = self.fields(pos, v.tuple, &v.fields, next, shown)?;
                Ok(json!({ v.name.clone(): inner }))
            }
            Shape::Map {
                key,
                value,
                entry_size,
                value_offset,
            } => {
                let entries = self.map_entries(pos, def, *entry_size)?;
                self.map(entries, (*key, *value, *value_offset as usize), next, shown)
            }
            Shape::Opaque { name } => Ok(json!({
                "opaque": name,
                "hex": crate::output::hex_string(self.bytes(pos, size)?),
            })),
        }
    }

    fn unsigned(&self, pos: usize, size: usize) -> Result<Value, DecodeError> {
        if !matches!(size, 1 | 2 | 4 | 8 | 16) {
            return fail(pos, format!("an integer of {size} bytes"));
        }
        let v = self.uint(pos, size)?;
        Ok(u64::try_from(v).map_or_else(|_| json!(v.to_string()), |v| json!(v)))
    }

    fn signed(&self, pos: usize, size: usize) -> Result<Value, DecodeError> {
        if !matches!(size, 1 | 2 | 4 | 8 | 16) {
            return fail(pos, format!("an integer of {size} bytes"));
        }
        let v = self.sint(pos, size)?;
        Ok(i64::try_from(v).map_or_else(|_| json!(v.to_string()), |v| json!(v)))
    }

    fn float(&self, pos: usize, size: usize) -> Result<Value, DecodeError> {
        let v = match size {
            4 => f64::from(f32::from_bits(self.uint(pos, 4)? as u32)),
            8 => f64::from_bits(self.uint(pos, 8)? as u64),
            _ => return fail(pos, format!("a float of {size} bytes")),
        };
        Ok(serde_json::Number::from_f64(v).map_or_else(|| json!(v.to_string()), Value::Number))
    }

    /// rkyv's string: inline when the first byte's top bits are not `10`
    /// (the bytes up to the first `0xff`), otherwise a length (its bits `10`
    /// in the first byte's top bits) and a relative pointer.
    fn string(&self, pos: usize, def: &TypeDef) -> Result<String, DecodeError> {
        let w = self.width(pos, def, 2)?;
        let repr = self.bytes(pos, 2 * w)?;
        let bytes = if repr[0] & 0xc0 != 0x80 {
            let len = repr.iter().position(|&b| b == 0xff).unwrap_or(repr.len());
            &repr[..len]
        } else {
            let l = self.uint(pos, w)?;
            let len = if self.schema.little_endian {
                (l & 0x3f) | ((l & !0xff) >> 2)
            } else {
                l & ((1u128 << (w * 8 - 2)) - 1)
            };
            // The offset follows the length and counts from the string.
            let at = self.rel_ptr_from(pos, pos + w, w)?;
            self.bytes(at, len as usize)?
        };
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_string()),
            Err(e) => fail(pos, format!("a string that is not UTF-8 ({e})")),
        }
    }

    /// A sequence's first element and length, checked to lie in the block.
    pub fn seq(
        &self,
        pos: usize,
        def: &TypeDef,
        element: u32,
    ) -> Result<(usize, usize), DecodeError> {
        let w = self.width(pos, def, 2)?;
        let len = self.uint(pos + w, w)?;
        let size = self.def(element)?.size as u128;
        if len == 0 {
            return Ok((pos, 0));
        }
        let start = self.rel_ptr(pos, w)?;
        // Zero-sized elements take no bytes: a bound of their own.
        let bound = ((self.archive.len() - start) as u128)
            .checked_div(size)
            .unwrap_or(1 << 20);
        if len > bound {
            return fail(
                pos,
                format!("a sequence of {len} elements of {size} bytes past the end of the block"),
            );
        }
        Ok((start, len as usize))
    }

    fn elements(
        &self,
        start: usize,
        len: usize,
        element: u32,
        depth: usize,
        shown: bool,
    ) -> Result<Value, DecodeError> {
        let def = self.def(element)?;
        let size = def.size as usize;
        if matches!(def.shape, Shape::UInt) && size == 1 {
            // Bytes show as hex, as `--key 0x…` takes them.
            return Ok(json!(crate::output::hex_string(self.bytes(start, len)?)));
        }
        let mut out = Vec::with_capacity(len.min(1 << 16));
        for i in 0..len {
            out.push(self.value_at(start + i * size, element, depth, shown)?);
        }
        Ok(Value::Array(out))
    }

    /// Fields as an object (named) or an array (positional; one positional
    /// field shows as its value, as serde shows a newtype).
    fn fields(
        &self,
        pos: usize,
        tuple: bool,
        fields: &[Field],
        depth: usize,
        shown: bool,
    ) -> Result<Value, DecodeError> {
        if tuple {
            let mut values: Vec<Value> = fields
                .iter()
                .map(|f| self.value_at(pos + f.offset as usize, f.ty, depth, shown))
                .collect::<Result<_, _>>()?;
            return Ok(if values.len() == 1 {
                values.remove(0)
            } else {
                Value::Array(values)
            });
        }
        let mut object = Map::new();
        for f in fields {
            object.insert(
                f.name.clone(),
                self.value_at(pos + f.offset as usize, f.ty, depth, shown)?,
            );
        }
        Ok(Value::Object(object))
    }

    /// The positions of a swiss table's entries: control bytes at the
    /// pointer, entry `i` at `control - (i + 1) · entry_size` when control
    /// byte `i` has its top bit clear; as many as the length says.
    fn map_entries(
        &self,
        pos: usize,
        def: &TypeDef,
        entry_size: u32,
    ) -> Result<Vec<usize>, DecodeError> {
        let w = self.width(pos, def, 3)?;
        let len = self.uint(pos + w, w)?;
        let cap = self.uint(pos + 2 * w, w)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let control = self.rel_ptr(pos, w)?;
        if cap < len || cap > self.archive.len() as u128 {
            return fail(pos, format!("a hash map of {len} entries in {cap} buckets"));
        }
        let controls = self.bytes(control, cap as usize)?;
        let mut entries = Vec::with_capacity(len as usize);
        for (i, &c) in controls.iter().enumerate() {
            if c & 0x80 != 0 {
                continue;
            }
            let back = (i + 1).checked_mul(entry_size as usize);
            match back.and_then(|b| control.checked_sub(b)) {
                Some(at) => entries.push(at),
                None => return fail(control, format!("hash map entry {i} before the block")),
            }
        }
        if entries.len() as u128 != len {
            return fail(
                pos,
                format!("a hash map of {len} entries has {} present", entries.len()),
            );
        }
        Ok(entries)
    }

    /// A map as an object sorted by key (string keys as they are, others as
    /// their JSON text), a set (values `()`) as an array sorted by key.
    fn map(
        &self,
        entries: Vec<usize>,
        (key, value, value_offset): (u32, u32, usize),
        depth: usize,
        shown: bool,
    ) -> Result<Value, DecodeError> {
        let set = matches!(self.def(value)?.shape, Shape::Unit);
        let mut pairs = Vec::with_capacity(entries.len());
        for at in entries {
            let k = self.value_at(at, key, depth, shown)?;
            let v = if set {
                Value::Null
            } else {
                self.value_at(at + value_offset, value, depth, shown)?
            };
            pairs.push((k, v));
        }
        pairs.sort_by(|a, b| compare_values(&a.0, &b.0));
        if set {
            return Ok(Value::Array(pairs.into_iter().map(|(k, _)| k).collect()));
        }
        Ok(Value::Object(
            pairs
                .into_iter()
                .map(|(k, v)| {
                    (
                        match k {
                            Value::String(s) => s,
                            k => k.to_string(),
                        },
                        v,
                    )
                })
                .collect(),
        ))
    }
}

/// An order of shown values: numbers by value, strings by bytes, arrays
/// element by element, others by their JSON text; values of different kinds
/// by kind. Entries are sorted by key with it.
pub fn compare_values(a: &Value, b: &Value) -> Ordering {
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Number(_) => 2,
            Value::String(_) => 3,
            Value::Array(_) => 4,
            Value::Object(_) => 5,
        }
    }
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
                (Some(x), Some(y), _, _) => x.cmp(&y),
                (_, _, Some(x), Some(y)) => x.cmp(&y),
                _ => x
                    .as_f64()
                    .partial_cmp(&y.as_f64())
                    .unwrap_or(Ordering::Equal),
            }
        }
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Array(x), Value::Array(y)) => x
            .iter()
            .zip(y)
            .map(|(x, y)| compare_values(x, y))
            .find(|o| o.is_ne())
            .unwrap_or_else(|| x.len().cmp(&y.len())),
        _ => rank(a)
            .cmp(&rank(b))
            .then_with(|| a.to_string().cmp(&b.to_string())),
    }
}
