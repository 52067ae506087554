//! The embedding tests' child process: a service that hosts the counting
//! job ([`spate_tests::embed::counting_job`]) and is exactly once across
//! kill -9 by following the ingress and egress contracts with a durable
//! results file of its own.
//!
//! Usage: `embed-service STATE_DIR RESULTS RECORDS RATE [MODE [DELAY_MS]]`: pushes
//! records `0..RECORDS` at about RATE per second (from where the restored
//! checkpoint needs them), checkpoints into STATE_DIR every 20 ms (MODE
//! `aligned` or `unaligned`), and keeps RESULTS as lines `r EPOCH ID KEY
//! COUNT` followed by `s EPOCH` once an epoch is sealed and synced. On a
//! restore of checkpoint `r` it drops everything after the line `s r`
//! (epochs the restored checkpoint does not cover): they come again.
//! DELAY_MS makes each epoch's write that much slower (a slow store).

use spate::checkpoint::{CheckpointConfig, CheckpointMode};
use spate::embed::{egress_epochs, ingress, Delivery, EpochReceiver, PushError};
use spate::{Job, JobConfig};
use spate_tests::embed::{counting_job, Row};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!(
            "usage: embed-service STATE_DIR RESULTS RECORDS RATE [aligned|unaligned [DELAY_MS]]"
        );
        std::process::exit(2);
    }
    let state = PathBuf::from(&args[1]);
    let results = PathBuf::from(&args[2]);
    let records: u64 = args[3].parse().expect("RECORDS is a number");
    let rate: u64 = args[4].parse().expect("RATE is a number");
    let mode = match args.get(5).map(String::as_str) {
        Some("unaligned") => CheckpointMode::Unaligned,
        _ => CheckpointMode::Aligned,
    };
    let delay = Duration::from_millis(args.get(6).map_or(0, |d| d.parse().expect("DELAY_MS")));
    let config = JobConfig {
        parallelism: 2,
        max_parallelism: 64,
        pin_cores: false,
        checkpoint: Some(CheckpointConfig {
            mode,
            ..CheckpointConfig::new(&state, 20)
        }),
        ..JobConfig::default()
    };
    let (mut input, sources) = ingress::<u64>(2, 1024);
    let (sinks, receiver) = egress_epochs::<Row>(2, 64);
    let job = Job::new(config)
        .start(move |df| counting_job(df, &sources, &sinks, None))
        .unwrap_or_else(|e| {
            eprintln!("embed-service: {e}");
            std::process::exit(1)
        });
    let writer = std::thread::spawn(move || keep_results(&results, receiver, delay));

    // The service's "log" is the numbering itself: record p is p.
    let started = Instant::now();
    let mut next = input.resume_position().expect("the job opened its sources");
    let first = next;
    loop {
        while next < records {
            // Paced: record p is due (p - first) / rate seconds in.
            let due = Duration::from_secs_f64((next - first) as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
            match input.push(next) {
                Ok(_) => next += 1,
                Err(PushError::Rewind { from, .. }) => next = from,
                Err(other) => panic!("push: {other:?}"),
            }
        }
        input.close();
        match input.wait_rewind() {
            Some(from) => next = from,
            None => break,
        }
    }
    if let Err(e) = job.join() {
        eprintln!("embed-service: {e}");
        std::process::exit(1);
    }
    writer.join().expect("results writer");
}

/// Follows the egress: records are kept in memory until their epoch is
/// sealed, then appended and synced before the acknowledgement.
fn keep_results(path: &Path, mut receiver: EpochReceiver<Row>, delay: Duration) {
    let mut open: Vec<Row> = Vec::new();
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("results file");
    while let Some(delivery) = receiver.recv() {
        match delivery {
            Delivery::Record(r) => open.push(r.value),
            Delivery::Sealed(epoch) => {
                let mut text = String::new();
                for (id, key, count) in open.drain(..) {
                    text.push_str(&format!("r {epoch} {id} {key} {count}\n"));
                }
                text.push_str(&format!("s {epoch}\n"));
                std::thread::sleep(delay);
                file.write_all(text.as_bytes()).expect("append results");
                file.sync_data().expect("sync results");
                receiver.acknowledge(epoch);
            }
            Delivery::Committed(_) => {}
            Delivery::Restored(restored) => {
                open.clear();
                file = truncate_after(path, restored);
            }
        }
    }
}

/// Keeps the lines up to `s r` (none for `None`), atomically.
fn truncate_after(path: &Path, restored: Option<u64>) -> File {
    let mut kept = String::new();
    if let Some(r) = restored {
        let seal = format!("s {r}");
        let lines = File::open(path)
            .map(BufReader::new)
            .into_iter()
            .flat_map(|f| f.lines());
        let mut found = false;
        for line in lines {
            let line = line.expect("read results");
            kept.push_str(&line);
            kept.push('\n');
            if line == seal {
                found = true;
                break;
            }
        }
        if !found {
            // A completed checkpoint covers output this service never held.
            eprintln!("embed-service: restored checkpoint {r} was never sealed here");
            std::process::exit(3);
        }
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, kept).expect("write results");
    File::open(&tmp)
        .and_then(|f| f.sync_all())
        .expect("sync results");
    std::fs::rename(&tmp, path).expect("replace results");
    OpenOptions::new()
        .append(true)
        .open(path)
        .expect("results file")
}
