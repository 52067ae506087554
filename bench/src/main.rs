//! `spate-bench`: Nexmark benchmarks for Spate with HDR latency reports. See
//! [`spate_bench::cli`] for the commands.

fn main() -> anyhow::Result<()> {
    spate_bench::cli::main()
}
