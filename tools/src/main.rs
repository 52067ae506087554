//! `spate-ckpt`: inspects a Spate checkpoint directory (see the library,
//! `spate_tools`, and `docs/spate-ckpt.md`).

fn main() -> std::process::ExitCode {
    spate_tools::run()
}
