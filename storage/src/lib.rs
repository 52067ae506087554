//! spate-storage: placeholder
