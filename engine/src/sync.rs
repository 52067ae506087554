//! The synchronisation primitives the ring is written against.
//!
//! In the engine these are the standard library's. The loom model test
//! (`engine/tests/loom_ring.rs`) compiles `ring.rs` a second time against a
//! `sync` module of its own that re-exports loom's types with the same names,
//! so the very same ring code is model-checked without a cfg flag leaking into
//! dependencies.

pub(crate) use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
pub(crate) use std::sync::Arc;

/// An `UnsafeCell` with loom's closure-based API, so `ring.rs` reads the same
/// under loom and in production.
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

impl<T> UnsafeCell<T> {
    pub(crate) fn new(value: T) -> Self {
        Self(std::cell::UnsafeCell::new(value))
    }

    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}
