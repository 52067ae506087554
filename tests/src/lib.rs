//! spate-tests: shared helpers for the end-to-end tests.
