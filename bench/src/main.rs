//! spate-bench
fn main() {}
