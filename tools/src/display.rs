//! Custom displays: how a service shows its own named types in `dump` and
//! `diff`, instead of the default field-by-field JSON. Registered by the
//! type's name as its schema records it (the Rust name of the struct or
//! enum, without a path) and handed to [`crate::run_with`].
//!
//! ```no_run
//! use serde_json::json;
//! use spate_tools::Displays;
//!
//! fn main() -> std::process::ExitCode {
//!     let displays = Displays::new()
//!         // Money { cents: u64 } as "12.34".
//!         .with("Money", |m| {
//!             let cents = m.value["cents"].as_u64().unwrap_or(0);
//!             json!(format!("{}.{:02}", cents / 100, cents % 100))
//!         });
//!     spate_tools::run_with(displays)
//! }
//! ```

use serde_json::Value;
use std::collections::HashMap;

/// A value of a named type, as a custom display receives it.
pub struct Shown<'a> {
    /// The type's name in the schema.
    pub type_name: &'a str,
    /// The value as shown by default (fields by name, variants by name;
    /// opaque types as `{"opaque", "hex"}`), nested displays applied.
    pub value: &'a Value,
    /// The value's archived bytes in place (its inline part: what a pointer
    /// inside points to is elsewhere in the block).
    pub bytes: &'a [u8],
}

/// A custom display.
pub type Display = Box<dyn Fn(&Shown) -> Value + Send + Sync>;

/// Custom displays by type name (empty: every type shows by default).
#[derive(Default)]
pub struct Displays {
    by_name: HashMap<String, Display>,
}

impl Displays {
    /// No custom display.
    pub fn new() -> Self {
        Self::default()
    }

    /// Shows values of the type named `type_name` as `display` returns them.
    pub fn with(
        mut self,
        type_name: &str,
        display: impl Fn(&Shown) -> Value + Send + Sync + 'static,
    ) -> Self {
        self.by_name
            .insert(type_name.to_string(), Box::new(display));
        self
    }

    /// The display of `type_name`, if one is registered.
    pub fn get(&self, type_name: &str) -> Option<&Display> {
        self.by_name.get(type_name)
    }

    /// Whether no display is registered.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}
