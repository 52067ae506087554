//! `spate-bench`: Nexmark benchmarks for Spate with HDR latency reports.
//!
//! `spate-bench nexmark` runs a query and writes a report (see
//! [`spate_bench::report`]); `spate-bench gen` writes generated events as JSON
//! lines; `spate-bench compare` puts two reports side by side.

use std::fs::File;
use std::io::{BufReader, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use spate_bench::queries::Query;
use spate_bench::report::{compare, write_report, Summary};
use spate_bench::run::{run, RunConfig};

/// Default number of events of `spate-bench nexmark`: 20 s at the default rate,
/// so that q5's 10 s windows also close during the run, not only at its end.
const DEFAULT_EVENTS: u64 = 15_000_000;
/// Default open-loop rate, events/s: about half of what the default query (q5)
/// sustains open loop on the 2-core reference machine (about 1.5 M events/s).
const DEFAULT_RATE: &str = "750000";

#[derive(Parser, Debug)]
#[command(
    name = "spate-bench",
    version,
    about = "Nexmark benchmarks for the Spate stream processing engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs a Nexmark query and writes a report (summary.json, summary.txt,
    /// latency.hgrm, latency.svg).
    ///
    /// Latency is measured open loop: event i is scheduled at start + i/rate and
    /// its event time is that scheduled time; a result's latency is the time from
    /// the scheduled time of the event that made it possible to the sink (window
    /// results: from the window's end). Checkpoints are not implemented in the
    /// engine yet; the report's checkpoint figures are empty.
    Nexmark(NexmarkArgs),
    /// Writes generated Nexmark events as JSON lines (one event per line).
    Gen {
        /// Number of events.
        #[arg(long, default_value_t = 1000)]
        events: u64,
        /// Generator seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output file (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Prints the figures of two reports side by side with their ratios B/A.
    Compare {
        /// summary.json of report A.
        a: PathBuf,
        /// summary.json of report B.
        b: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
struct NexmarkArgs {
    /// Query: q0, q1, q2, q3, q4, q5, q7 or q8.
    #[arg(long, default_value = "q5")]
    query: Query,
    /// Number of events to generate (over all cores).
    #[arg(long, default_value_t = DEFAULT_EVENTS)]
    events: u64,
    /// Open-loop rate in events/s over all cores (also the generator's event-time
    /// rate). `--rate 0` runs closed loop (as fast as possible, no latency figures).
    #[arg(long, default_value = DEFAULT_RATE)]
    rate: u64,
    /// Cores to run on, one pinned reactor each (default: all available).
    #[arg(long)]
    cores: Option<usize>,
    /// Generator seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Report directory.
    #[arg(long, default_value = "spate-report")]
    report: PathBuf,
    /// Writes result rows as JSON lines to DIR/part-<core>.jsonl. Plain files,
    /// not transactional (no exactly-once sink yet): a failed run leaves partial
    /// files.
    #[arg(long, value_name = "DIR")]
    output: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Nexmark(args) => nexmark(args),
        Command::Gen { events, seed, out } => {
            match out {
                Some(path) => {
                    let file = File::create(&path)
                        .with_context(|| format!("creating {}", path.display()))?;
                    spate_bench::nexmark::json::gen_jsonl(events, seed, file)?;
                }
                None => {
                    spate_bench::nexmark::json::gen_jsonl(events, seed, std::io::stdout().lock())?
                }
            }
            Ok(())
        }
        Command::Compare { a, b } => {
            let read = |p: &PathBuf| -> anyhow::Result<serde_json::Value> {
                let file = File::open(p).with_context(|| format!("opening {}", p.display()))?;
                serde_json::from_reader(BufReader::new(file))
                    .with_context(|| format!("parsing {}", p.display()))
            };
            print!("{}", compare(&read(&a)?, &read(&b)?));
            Ok(())
        }
    }
}

fn nexmark(args: NexmarkArgs) -> anyhow::Result<()> {
    let cores = args
        .cores
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let config = RunConfig {
        query: args.query,
        events: args.events,
        rate_events_per_s: (args.rate > 0).then_some(args.rate),
        cores,
        seed: args.seed,
        output_dir: args.output,
        progress: true,
    };
    let outcome = run(&config).with_context(|| format!("running {}", config.query))?;
    let summary = Summary::new(&config, &outcome);
    write_report(&args.report, &summary, &outcome)
        .with_context(|| format!("writing the report to {}", args.report.display()))?;
    let mut stdout = std::io::stdout().lock();
    write!(stdout, "{}", summary.human())?;
    writeln!(stdout, "  report      {}", args.report.display())?;
    Ok(())
}
