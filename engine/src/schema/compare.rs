//! Whether a job can restore blocks written with a recorded schema.
//!
//! The engine restores through rkyv's typed code, which reads the archived
//! layout in place: it can only read bytes laid out exactly as the job's
//! types lay them out. So a recorded type and the job's type are compatible
//! when they have the same shape, size and alignment, the same field and
//! variant names in the same order at the same offsets, the same tags, and
//! compatible parts. Names of types (a struct's or enum's Rust name) may
//! change: they do not affect the layout. Anything else, adding an optional
//! field included, is a change of layout that this engine cannot restore
//! (`docs/checkpoints.md`, "State evolution").

use super::{BlockSchema, Field, Roots, Shape, TypeDef};
use std::collections::HashSet;

/// Where a recorded schema and a job's schema differ.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("at `{path}`: {reason}")]
#[non_exhaustive]
pub struct Incompatibility {
    /// The field that differs, from the block's root: `key`, `value`,
    /// `record`, then `.field`, `.0` (tuple fields), `[]` (elements), `?`
    /// (an option's value), `::Variant` (an enum's variant).
    pub path: String,
    /// How it differs (the checkpoint's side first, then the job's).
    pub reason: String,
}

/// Checks every root of `recorded` against the same root of `job`.
pub(super) fn check(recorded: &BlockSchema, job: &BlockSchema) -> Result<(), Incompatibility> {
    let mut walk = Walk {
        recorded,
        job,
        seen: HashSet::new(),
    };
    if recorded.little_endian != job.little_endian {
        return Err(walk.differ(
            "block",
            "the checkpoint and the job archive with different byte orders".into(),
        ));
    }
    let pairs: Vec<(&str, u32, u32)> = match (&recorded.roots, &job.roots) {
        (
            Roots::Keyed {
                key,
                value,
                base,
                delta,
            },
            Roots::Keyed {
                key: k,
                value: v,
                base: b,
                delta: d,
            },
        ) => vec![
            ("key", *key, *k),
            ("value", *value, *v),
            ("base block", *base, *b),
            ("delta block", *delta, *d),
        ],
        (Roots::Timers { key, block }, Roots::Timers { key: k, block: b }) => {
            vec![("key", *key, *k), ("timers block", *block, *b)]
        }
        (
            Roots::InFlight { record, block },
            Roots::InFlight {
                record: r,
                block: b,
            },
        ) => {
            vec![("record", *record, *r), ("in-flight block", *block, *b)]
        }
        _ => return Err(walk.differ("block", "the checkpoint holds another kind of state".into())),
    };
    for (path, r, j) in pairs {
        walk.types(path.to_string(), r, j)?;
    }
    Ok(())
}

struct Walk<'a> {
    recorded: &'a BlockSchema,
    job: &'a BlockSchema,
    /// Pairs already compared (or being compared: recursive types).
    seen: HashSet<(u32, u32)>,
}

impl Walk<'_> {
    fn differ(&self, path: &str, reason: String) -> Incompatibility {
        Incompatibility {
            path: path.to_string(),
            reason,
        }
    }

    /// `recorded`'s type `r` against `job`'s type `j`, at `path`.
    fn types(&mut self, path: String, r: u32, j: u32) -> Result<(), Incompatibility> {
        if !self.seen.insert((r, j)) {
            return Ok(());
        }
        let (Some(rd), Some(jd)) = (self.recorded.get(r), self.job.get(j)) else {
            return Err(self.differ(&path, "the checkpoint's schema is damaged".into()));
        };
        let (rn, jn) = (self.recorded.type_name(r), self.job.type_name(j));
        if std::mem::discriminant(&rd.shape) != std::mem::discriminant(&jd.shape) {
            return Err(self.differ(&path, format!("the checkpoint has `{rn}`, the job `{jn}`")));
        }
        let size_differs = (rd.size, rd.align) != (jd.size, jd.align);
        let size_error = || {
            Incompatibility {
            path: path.clone(),
            reason: format!(
                "the checkpoint has `{rn}` of {} bytes aligned to {}, the job `{jn}` of {} aligned to {}",
                rd.size, rd.align, jd.size, jd.align
            ),
        }
        };
        // Fields first: an added or changed field is named even when it
        // changes the size of the type that holds it.
        let composite = matches!(
            rd.shape,
            Shape::Struct { .. } | Shape::Tuple { .. } | Shape::Enum { .. }
        );
        if size_differs && !composite {
            return Err(size_error());
        }
        self.shapes(path.clone(), rd, jd, (&rn, &jn))?;
        if size_differs {
            return Err(size_error());
        }
        Ok(())
    }

    /// Two types of the same kind, size and alignment.
    fn shapes(
        &mut self,
        path: String,
        rd: &TypeDef,
        jd: &TypeDef,
        (rn, jn): (&str, &str),
    ) -> Result<(), Incompatibility> {
        match (&rd.shape, &jd.shape) {
            (Shape::Seq { element: r }, Shape::Seq { element: j })
            | (Shape::Box { target: r }, Shape::Box { target: j }) => {
                self.types(format!("{path}[]"), *r, *j)
            }
            (Shape::Array { element: r, len }, Shape::Array { element: j, len: l }) => {
                if len != l {
                    return Err(
                        self.differ(&path, format!("the checkpoint has `{rn}`, the job `{jn}`"))
                    );
                }
                self.types(format!("{path}[]"), *r, *j)
            }
            (Shape::Option { some: r, offset }, Shape::Option { some: j, offset: o }) => {
                if offset != o {
                    return Err(
                        self.differ(&path, format!("the checkpoint has `{rn}`, the job `{jn}`"))
                    );
                }
                self.types(format!("{path}?"), *r, *j)
            }
            (Shape::Tuple { fields: r }, Shape::Tuple { fields: j }) => self.fields(&path, r, j),
            (
                Shape::Struct {
                    tuple, fields: r, ..
                },
                Shape::Struct {
                    tuple: t,
                    fields: j,
                    ..
                },
            ) => {
                if tuple != t {
                    return Err(self.differ(
                        &path,
                        format!("`{rn}` has positional fields on one side only"),
                    ));
                }
                self.fields(&path, r, j)
            }
            (Shape::Enum { variants: r, .. }, Shape::Enum { variants: j, .. }) => {
                self.variants(&path, r, j)
            }
            (
                Shape::Map {
                    key,
                    value,
                    entry_size,
                    value_offset,
                },
                Shape::Map {
                    key: k,
                    value: v,
                    entry_size: es,
                    value_offset: vo,
                },
            ) => {
                if (entry_size, value_offset) != (es, vo) {
                    return Err(
                        self.differ(&path, format!("the checkpoint has `{rn}`, the job `{jn}`"))
                    );
                }
                self.types(format!("{path}{{key}}"), *key, *k)?;
                self.types(format!("{path}{{value}}"), *value, *v)
            }
            (Shape::Opaque { name }, Shape::Opaque { name: n }) if name != n => {
                Err(self.differ(&path, format!("the checkpoint has `{name}`, the job `{n}`")))
            }
            (Shape::UInt, Shape::UInt)
            | (Shape::SInt, Shape::SInt)
            | (Shape::Float, Shape::Float)
            | (Shape::Bool, Shape::Bool)
            | (Shape::Char, Shape::Char)
            | (Shape::Unit, Shape::Unit)
            | (Shape::String, Shape::String)
            | (Shape::Opaque { .. }, Shape::Opaque { .. }) => Ok(()),
            _ => unreachable!("kinds compared by the caller"),
        }
    }

    fn fields(&mut self, path: &str, r: &[Field], j: &[Field]) -> Result<(), Incompatibility> {
        for (i, rf) in r.iter().enumerate() {
            let Some(jf) = j.get(i) else {
                return Err(self.differ(
                    &format!("{path}.{}", rf.name),
                    "the field is in the checkpoint, not in the job".into(),
                ));
            };
            let at = format!("{path}.{}", rf.name);
            if rf.name != jf.name {
                return Err(self.differ(
                    &at,
                    format!(
                        "field {i} is `{}` in the checkpoint, `{}` in the job",
                        rf.name, jf.name
                    ),
                ));
            }
            if rf.offset != jf.offset {
                return Err(self.differ(
                    &at,
                    format!(
                        "the field is at byte {} in the checkpoint, {} in the job",
                        rf.offset, jf.offset
                    ),
                ));
            }
            self.types(at, rf.ty, jf.ty)?;
        }
        if let Some(extra) = j.get(r.len()) {
            return Err(self.differ(
                &format!("{path}.{}", extra.name),
                "the field is in the job, not in the checkpoint (adding a field changes the archived layout)".into(),
            ));
        }
        Ok(())
    }

    fn variants(
        &mut self,
        path: &str,
        r: &[super::Variant],
        j: &[super::Variant],
    ) -> Result<(), Incompatibility> {
        for (i, rv) in r.iter().enumerate() {
            let at = format!("{path}::{}", rv.name);
            let Some(jv) = j.get(i) else {
                return Err(self.differ(
                    &at,
                    "the variant is in the checkpoint, not in the job".into(),
                ));
            };
            if (&rv.name, rv.tag, rv.tuple) != (&jv.name, jv.tag, jv.tuple) {
                return Err(self.differ(
                    &at,
                    format!(
                        "variant {i} is `{}` (tag {}) in the checkpoint, `{}` (tag {}) in the job",
                        rv.name, rv.tag, jv.name, jv.tag
                    ),
                ));
            }
            self.fields(&at, &rv.fields, &jv.fields)?;
        }
        if let Some(extra) = j.get(r.len()) {
            return Err(self.differ(
                &format!("{path}::{}", extra.name),
                "the variant is in the job, not in the checkpoint".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::schema::BlockSchema;

    #[test]
    fn equal_layouts_are_compatible_and_changes_are_named() {
        let a = BlockSchema::keyed::<u64, (String, Vec<u32>)>();
        assert_eq!(a.check_restorable_by(&a.clone()), Ok(()));
        let b = BlockSchema::keyed::<u64, (String, Vec<u64>)>();
        let e = a.check_restorable_by(&b).unwrap_err();
        assert_eq!(e.path, "value.1[]");
        assert!(
            e.reason.contains("`u32`") && e.reason.contains("`u64`"),
            "{e}"
        );
        let c = BlockSchema::keyed::<u32, (String, Vec<u32>)>();
        assert_eq!(a.check_restorable_by(&c).unwrap_err().path, "key");
        let e = a
            .check_restorable_by(&BlockSchema::timers::<u64>())
            .unwrap_err();
        assert_eq!(e.path, "block");
        let d = BlockSchema::keyed::<u64, (String, Vec<u32>, u8)>();
        let e = a.check_restorable_by(&d).unwrap_err();
        assert_eq!(e.path, "value.2");
        assert!(
            e.reason.contains("in the job, not in the checkpoint"),
            "{e}"
        );
        let o = BlockSchema::keyed::<u64, Option<(String, Vec<u32>)>>();
        assert_eq!(a.check_restorable_by(&o).unwrap_err().path, "value");
    }
}
