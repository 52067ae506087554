//! spate-ckpt
fn main() {}
