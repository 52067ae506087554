//! The benchmark's source: the Nexmark [`Generator`] as a replayable
//! [`Source`] of [`Event`]s, partitioned over the source subtasks.
//!
//! Subtask `s` of `p` generates the event indices `i ≡ s (mod p)` below the run's
//! event count, in increasing order, so each subtask's timestamps never decrease
//! (use [`watermarks`]). The offset is the index of the next event the subtask
//! would emit; [`Source::seek`] repositions the generator in O(1).
//!
//! **Open loop.** With a rate, the generator's `events_per_second` is the rate and
//! its `base_time_ms` the run's start on the job's clock, so event `i`'s event time
//! `base + round(i · 1000 / rate)` *is* its scheduled emission time, and the source
//! does not emit it before that time. When the engine falls behind, the schedule
//! does not slip: the latency measured from an event's timestamp includes the time
//! it waited to be read (no coordinated omission). Without a rate (closed loop)
//! events are emitted as fast as the engine takes them and their timestamps follow
//! the generator's configured event-time rate only.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use spate::source::{Source, SourceContext, SourcePoll};
use spate::time::Clock;
use spate::{SourceError, WatermarkStrategy};

use crate::nexmark::{Event, Generator, GeneratorConfig};

/// A partition of the Nexmark event stream, optionally paced (open loop).
pub struct NexmarkSource {
    generator: Generator,
    events: u64,
    pace: Option<Arc<dyn Clock>>,
    emitted: Option<Arc<AtomicU64>>,
}

impl NexmarkSource {
    /// Events `0..events` of `Generator::new(config, seed)`, as fast as the engine
    /// reads them (closed loop).
    pub fn new(config: GeneratorConfig, seed: u64, events: u64) -> Self {
        Self {
            generator: Generator::new(config, seed),
            events,
            pace: None,
            emitted: None,
        }
    }

    /// Open loop: event `i` is not emitted before processing time
    /// `config.timestamp_ms(i)` on `clock`. Configure the generator with
    /// `events_per_second` = the target rate and `base_time_ms` = the start.
    pub fn paced(mut self, clock: Arc<dyn Clock>) -> Self {
        self.pace = Some(clock);
        self
    }

    /// Adds the number of events emitted to `counter` (for a progress display).
    pub fn counting(mut self, counter: Arc<AtomicU64>) -> Self {
        self.emitted = Some(counter);
        self
    }
}

/// The watermark strategy for [`NexmarkSource`]: monotonous event timestamps.
pub fn watermarks() -> WatermarkStrategy<Event> {
    WatermarkStrategy::monotonous(Event::timestamp_ms)
}

impl Source<Event> for NexmarkSource {
    fn open(&mut self, context: &SourceContext) -> Result<(), SourceError> {
        // Keeps the position (a seek before open), moved to this partition.
        self.generator = self
            .generator
            .clone()
            .with_partition(context.subtask as u64, context.parallelism as u64);
        Ok(())
    }

    fn poll(&mut self, out: &mut Vec<Event>, max: usize) -> Result<SourcePoll, SourceError> {
        let now_ms = self.pace.as_ref().map(|clock| clock.now_ms());
        let before = out.len();
        let mut result = SourcePoll::Ready;
        for _ in 0..max {
            let index = self.generator.next_index();
            if index >= self.events {
                result = SourcePoll::Finished;
                break;
            }
            if let Some(now_ms) = now_ms {
                let due_ms = self.generator.timestamp_ms(index);
                if due_ms > now_ms {
                    result = SourcePoll::PendingUntil(due_ms);
                    break;
                }
            }
            out.push(self.generator.next_event());
        }
        if let Some(counter) = &self.emitted {
            counter.fetch_add((out.len() - before) as u64, Ordering::Relaxed);
        }
        Ok(result)
    }

    fn offset(&self) -> u64 {
        self.generator.next_index()
    }

    fn seek(&mut self, offset: u64) -> Result<(), SourceError> {
        self.generator.seek(offset);
        Ok(())
    }
}
