//! A test source whose offsets mean one thing whatever the engine's built-in
//! sources do: subtask `s` of `p` emits `s, s + p, s + 2p, …`, and its offset
//! counts the records it emitted, so record `s + j·p` is before offset `o`
//! exactly when `j < o`. The tests compute each checkpoint's state from that.

use std::sync::Arc;

use spate::source::{Source, SourceContext, SourcePoll};
use spate::time::Clock;
use spate::SourceError;

/// The record indices, striped over the source's subtasks, optionally paced.
pub struct Numbers {
    next: u64,
    stride: u64,
    end: u64,
    pace: Option<(f64, u64, Arc<dyn Clock>)>,
}

impl Numbers {
    /// As fast as the job takes them.
    pub fn unpaced() -> Self {
        Self {
            next: 0,
            stride: 1,
            end: u64::MAX,
            pace: None,
        }
    }

    /// Only the records below `end`.
    pub fn until(self, end: u64) -> Self {
        Self { end, ..self }
    }

    /// `rate` records per second over all subtasks, record `i` due at
    /// `start_ms + i / rate` on `clock`.
    pub fn paced(rate: f64, start_ms: u64, clock: Arc<dyn Clock>) -> Self {
        Self {
            pace: Some((rate, start_ms, clock)),
            ..Self::unpaced()
        }
    }
}

impl Source<u64> for Numbers {
    fn open(&mut self, context: &SourceContext) -> Result<(), SourceError> {
        // A seek (to a restored offset) comes before the open.
        self.stride = context.parallelism as u64;
        self.next = self.next * self.stride + context.subtask as u64;
        Ok(())
    }

    fn poll(&mut self, out: &mut Vec<u64>, max: usize) -> Result<SourcePoll, SourceError> {
        let now = self.pace.as_ref().map(|(_, _, clock)| clock.now_ms());
        for _ in 0..max {
            if self.next >= self.end {
                return Ok(SourcePoll::Finished);
            }
            if let (Some(now), Some((rate, start_ms, _))) = (now, &self.pace) {
                let due = start_ms + (self.next as f64 * 1000.0 / rate) as u64;
                if due > now {
                    return Ok(SourcePoll::PendingUntilUs(due * 1000));
                }
            }
            out.push(self.next);
            self.next += self.stride;
        }
        Ok(SourcePoll::Ready)
    }

    fn offset(&self) -> u64 {
        self.next / self.stride.max(1)
    }

    fn seek(&mut self, offset: u64) -> Result<(), SourceError> {
        let subtask = self.next % self.stride.max(1);
        self.next = offset * self.stride.max(1) + subtask;
        Ok(())
    }
}
