//! The crash tests' child process: exactly the `spate-bench` command line
//! ([`spate_bench::cli::main`]), built in this package so that its tests can
//! start it (`CARGO_BIN_EXE_crash-job`) and kill it.

fn main() {
    if let Err(error) = spate_bench::cli::main() {
        eprintln!("crash-job: {error:#}");
        std::process::exit(1);
    }
}
