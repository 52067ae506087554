//! spate: placeholder
