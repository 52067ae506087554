//! Sources: the replayable-source contract and the built-in sources.
//!
//! A [`Source`] subtask reads its share of the input in batches, reports an
//! offset after every batch, and can seek back to an offset: checkpoints store
//! offsets and recovery seeks to them. Built-ins: [`IterSource`] (any iterator,
//! re-created to seek), [`VecSource`] (a shared vector, striped over
//! subtasks), [`SequenceSource`] (a function of the event index, optionally
//! rate-limited: the benchmark's generator shape), [`FileLineSource`] (a text
//! file split by byte ranges, one record per line) and
//! the embedding service's ingress (in `embed`: records pushed by other
//! threads of the service).
//!
//! A source never blocks its reactor: when it has nothing, it returns
//! [`SourcePoll::Pending`] (and wakes the subtask through its [`Notifier`]) or
//! [`SourcePoll::PendingUntilUs`] a processing time.

use crate::park::Notifier;
use crate::SourceError;
use std::sync::Arc;

/// What a source subtask knows about itself.
#[derive(Clone, Debug)]
pub struct SourceContext {
    /// This subtask's index.
    pub subtask: usize,
    /// Number of source subtasks.
    pub parallelism: usize,
    /// Wakes this subtask when it is parked (for sources fed by other threads).
    pub notifier: Notifier,
    /// Number of splits a split source divides its input into: the job's
    /// max parallelism, so it never changes across restores.
    pub split_count: u32,
    /// The splits this subtask owns (contiguous, like key groups).
    pub splits: std::ops::Range<u32>,
    /// Unique per run of the job (a restart is a new run).
    pub run: u64,
    /// The checkpoint this run restored, if any (its positions are handed to
    /// [`Source::seek`] or [`Source::seek_splits`] after `open`).
    pub restored_checkpoint: Option<u64>,
}

/// The result of one [`Source::poll`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourcePoll {
    /// Poll again at once.
    Ready,
    /// Nothing now: the source will call its [`Notifier`] when it has more,
    /// and [`Source::is_ready`] tells whether it has.
    Pending,
    /// Nothing until the given processing time, epoch microseconds on the
    /// job's clock ([`Clock::now_us`](crate::time::Clock::now_us)): the
    /// subtask parks until then (or until notified) with the resolution of
    /// the thread's timer, tens of microseconds.
    PendingUntilUs(u64),
    /// The input is exhausted; `poll` is not called again.
    Finished,
}

/// A replayable source subtask.
pub trait Source<T>: 'static {
    /// Called once on the subtask before the first poll.
    fn open(&mut self, context: &SourceContext) -> Result<(), SourceError> {
        let _ = context;
        Ok(())
    }

    /// Appends at most `max` records to `out`.
    fn poll(&mut self, out: &mut Vec<T>, max: usize) -> Result<SourcePoll, SourceError>;

    /// [`poll`](Self::poll) into the engine's records (event time 0; the
    /// engine sets it in place afterwards). The engine calls this one, with
    /// `scratch` an empty vector. The default polls into `scratch` and moves
    /// every value once more into `out`; a source whose records are large
    /// overrides it to build each record in place.
    fn poll_records(
        &mut self,
        out: &mut Vec<crate::Record<T>>,
        max: usize,
        scratch: &mut Vec<T>,
    ) -> Result<SourcePoll, SourceError> {
        let poll = self.poll(scratch, max)?;
        out.extend(
            scratch
                .drain(..)
                .map(|value| crate::Record { ts: 0, value }),
        );
        Ok(poll)
    }

    /// After `Pending`: whether a poll would now produce (checked before the
    /// subtask parks, so it must not miss a record that arrived meanwhile).
    fn is_ready(&mut self) -> bool {
        false
    }

    /// The position after the last record returned: seeking to it resumes
    /// right after that record.
    fn offset(&self) -> u64;

    /// Repositions the source so that the next record is the one that
    /// followed `offset`.
    fn seek(&mut self, offset: u64) -> Result<(), SourceError>;

    /// A split source (Flink's FLIP-27 splits) divides its input into
    /// `context.split_count` splits and reads the ones in `context.splits`;
    /// it returns each owned split's position here. Checkpoints record them
    /// per split, so a restore on any parallelism hands every split's
    /// position to its new owner ([`Source::seek_splits`]). `None` (the
    /// default): one position, [`Source::offset`], restorable on the same
    /// parallelism only.
    fn split_offsets(&self) -> Option<Vec<(u32, u64)>> {
        None
    }

    /// Repositions the owned splits (pairs of split and position; a split
    /// not listed starts at its beginning).
    fn seek_splits(&mut self, offsets: &[(u32, u64)]) -> Result<(), SourceError> {
        let _ = offsets;
        Err(SourceError::Other(
            "this source has no splits and cannot be restored on another parallelism".into(),
        ))
    }

    /// A source that tracks event time itself (per split, with idleness)
    /// returns the subtask's watermark here; it is asked after every poll
    /// and replaces the [`WatermarkStrategy`](crate::WatermarkStrategy)'s
    /// watermarks (the strategy still stamps the records). A value at or
    /// below the last one is ignored, so it never moves back. To advance
    /// it without records (a split turning idle), the source returns
    /// [`SourcePoll::PendingUntilUs`] the moment it changes. The default:
    /// `None`, the strategy's watermarks.
    fn watermark(&mut self) -> Option<crate::Timestamp> {
        None
    }

    /// Checkpoint `checkpoint_id` is complete (Flink's
    /// `notifyCheckpointComplete`): `positions` are what this subtask
    /// recorded in it, pairs of split and position (for a source without
    /// splits, one pair of subtask and [`Source::offset`]). Everything
    /// before them is now durable: a restore never replays it. Sources that
    /// tell a producer what it may forget (the embedding service's ingress,
    /// a broker's committed offsets) act here; the default does nothing.
    /// Not called for a checkpoint that was aborted; a later completion
    /// covers it.
    fn checkpoint_complete(
        &mut self,
        checkpoint_id: u64,
        positions: &[(u32, u64)],
    ) -> Result<(), SourceError> {
        let _ = (checkpoint_id, positions);
        Ok(())
    }
}

/// The read position of a split source over an indexed input (record `i`
/// belongs to split `i mod split_count`): yields the owned splits' indices in
/// increasing order, so that timestamps rising with the index stay monotone
/// per subtask, and keeps each split's position for checkpoints. After a
/// restore, splits may stand at different positions; indices a split already
/// emitted are skipped.
#[derive(Clone, Debug)]
pub struct SplitCursor {
    split_count: u64,
    first: u64,
    /// Per owned split: the next index it emits (≡ split mod split_count).
    next: Vec<u64>,
    /// The next candidate index.
    candidate: u64,
}

impl SplitCursor {
    /// Every owned split at its start.
    pub fn new(context: &SourceContext) -> Self {
        let split_count = u64::from(context.split_count.max(1));
        let first = u64::from(context.splits.start);
        let next: Vec<u64> = context.splits.clone().map(u64::from).collect();
        Self {
            split_count,
            first,
            candidate: next.first().copied().unwrap_or(u64::MAX),
            next,
        }
    }

    /// The smallest index not yet emitted by an owned split (`u64::MAX` if
    /// the subtask owns none).
    pub fn peek(&mut self) -> u64 {
        loop {
            let c = self.candidate;
            if c == u64::MAX {
                return c;
            }
            let k = c % self.split_count;
            let owned = k >= self.first && ((k - self.first) as usize) < self.next.len();
            if !owned {
                // The first owned split of this round, or of the next one.
                let round = c / self.split_count + u64::from(k >= self.first);
                self.candidate = round * self.split_count + self.first;
            } else if c < self.next[(k - self.first) as usize] {
                self.candidate = c + 1; // emitted before a restore
            } else {
                return c;
            }
        }
    }

    /// Marks the index [`peek`](Self::peek) returned as emitted (call it
    /// right after `peek`, which left the cursor on that index).
    pub fn advance(&mut self) {
        let c = self.candidate;
        if c == u64::MAX {
            return;
        }
        debug_assert_eq!(c, self.peek(), "advance follows peek");
        let k = (c % self.split_count - self.first) as usize;
        self.next[k] = c + self.split_count;
        self.candidate = c + 1;
    }

    /// Every owned split's position.
    pub fn offsets(&self) -> Vec<(u32, u64)> {
        self.next
            .iter()
            .enumerate()
            .map(|(i, &n)| ((self.first + i as u64) as u32, n))
            .collect()
    }

    /// Sets the positions of the listed owned splits (others stay).
    pub fn seek(&mut self, offsets: &[(u32, u64)]) {
        for &(split, position) in offsets {
            let split = u64::from(split);
            if split >= self.first && ((split - self.first) as usize) < self.next.len() {
                self.next[(split - self.first) as usize] = position;
            }
        }
        self.candidate = self.next.iter().copied().min().unwrap_or(u64::MAX);
    }
}

/// A source over an iterator that a factory can re-create; seeking re-creates
/// it and skips `offset` records.
pub struct IterSource<F, I> {
    factory: F,
    iter: I,
    offset: u64,
}

impl<T, I: Iterator<Item = T>, F: FnMut() -> I> IterSource<F, I> {
    /// A source reading `factory()`.
    pub fn new(mut factory: F) -> Self {
        let iter = factory();
        Self {
            factory,
            iter,
            offset: 0,
        }
    }
}

impl<T, I: Iterator<Item = T> + 'static, F: FnMut() -> I + 'static> Source<T> for IterSource<F, I> {
    fn poll(&mut self, out: &mut Vec<T>, max: usize) -> Result<SourcePoll, SourceError> {
        let before = out.len();
        out.extend(self.iter.by_ref().take(max));
        let n = out.len() - before;
        self.offset += n as u64;
        Ok(if n < max {
            SourcePoll::Finished
        } else {
            SourcePoll::Ready
        })
    }

    fn offset(&self) -> u64 {
        self.offset
    }

    fn seek(&mut self, offset: u64) -> Result<(), SourceError> {
        self.iter = (self.factory)();
        if offset > 0 && self.iter.nth(offset as usize - 1).is_none() {
            return Err(SourceError::Seek {
                offset,
                reason: "the iterator is shorter than the offset".into(),
            });
        }
        self.offset = offset;
        Ok(())
    }
}

/// A source over a shared vector: subtask `i` of `p` reads elements
/// `i, i + p, i + 2p, …`. The offset counts the subtask's elements read.
pub struct VecSource<T> {
    data: Arc<Vec<T>>,
    next: usize,
    stride: usize,
    offset: u64,
}

impl<T: Clone + 'static> VecSource<T> {
    /// A source over `data`, striped over the source's subtasks.
    pub fn new(data: Arc<Vec<T>>) -> Self {
        Self {
            data,
            next: 0,
            stride: 1,
            offset: 0,
        }
    }
}

impl<T: Clone + 'static> Source<T> for VecSource<T> {
    fn open(&mut self, context: &SourceContext) -> Result<(), SourceError> {
        self.stride = context.parallelism;
        self.next = context.subtask + self.offset as usize * self.stride;
        Ok(())
    }

    fn poll(&mut self, out: &mut Vec<T>, max: usize) -> Result<SourcePoll, SourceError> {
        for _ in 0..max {
            match self.data.get(self.next) {
                Some(v) => out.push(v.clone()),
                None => return Ok(SourcePoll::Finished),
            }
            self.next += self.stride;
            self.offset += 1;
        }
        Ok(SourcePoll::Ready)
    }

    fn offset(&self) -> u64 {
        self.offset
    }

    fn seek(&mut self, offset: u64) -> Result<(), SourceError> {
        let subtask = self.next % self.stride.max(1);
        self.offset = offset;
        self.next = subtask + offset as usize * self.stride;
        Ok(())
    }
}

/// A source generating event `i` as `generate(i)` for `i` in `0..events`;
/// subtask `s` of `p` generates the indices `s, s + p, …`. With a rate, event
/// `i` is not emitted before `start + i / rate` (open loop: the schedule does
/// not slip when the engine is slow, so latency measured from the scheduled
/// time includes queueing, avoiding coordinated omission).
pub struct SequenceSource<F> {
    generate: F,
    events: u64,
    cursor: Option<SplitCursor>,
    rate_per_s: Option<f64>,
    start_ms: u64,
    clock: Arc<dyn crate::time::Clock>,
}

impl<T, F: FnMut(u64) -> T + 'static> SequenceSource<F> {
    /// Events `0..events`, as fast as the engine takes them.
    pub fn new(events: u64, generate: F) -> Self {
        Self {
            generate,
            events,
            cursor: None,
            rate_per_s: None,
            start_ms: 0,
            clock: Arc::new(crate::time::SystemClock),
        }
    }

    /// Emits at `events_per_s` in total over all subtasks, starting at
    /// `start_ms` on `clock`.
    pub fn with_rate(
        mut self,
        events_per_s: f64,
        start_ms: u64,
        clock: Arc<dyn crate::time::Clock>,
    ) -> Self {
        self.rate_per_s = Some(events_per_s);
        self.start_ms = start_ms;
        self.clock = clock;
        self
    }

    /// The scheduled emission time of event `index` (epoch ms), if rate-limited.
    pub fn scheduled_ms(&self, index: u64) -> Option<u64> {
        self.rate_per_s
            .map(|rate| self.start_ms + (index as f64 * 1000.0 / rate) as u64)
    }
}

/// A split source: event `i` belongs to split `i mod split_count`.
impl<T, F: FnMut(u64) -> T + 'static> Source<T> for SequenceSource<F> {
    fn open(&mut self, context: &SourceContext) -> Result<(), SourceError> {
        self.cursor = Some(SplitCursor::new(context));
        Ok(())
    }

    fn poll(&mut self, out: &mut Vec<T>, max: usize) -> Result<SourcePoll, SourceError> {
        let now_us = self.rate_per_s.map(|_| self.clock.now_us());
        let Some(cursor) = self.cursor.as_mut() else {
            return Err(SourceError::Other("polled before open".into()));
        };
        for _ in 0..max {
            let next = cursor.peek();
            if next >= self.events {
                return Ok(SourcePoll::Finished);
            }
            if let (Some(now_us), Some(rate)) = (now_us, self.rate_per_s) {
                let due_us = self.start_ms * 1000 + (next as f64 * 1_000_000.0 / rate) as u64;
                if due_us > now_us {
                    return Ok(SourcePoll::PendingUntilUs(due_us));
                }
            }
            out.push((self.generate)(next));
            cursor.advance();
        }
        Ok(SourcePoll::Ready)
    }

    fn offset(&self) -> u64 {
        self.cursor.as_ref().map_or(0, |c| c.candidate)
    }

    fn seek(&mut self, offset: u64) -> Result<(), SourceError> {
        let _ = offset;
        Err(SourceError::Other(
            "a sequence source restores per split".into(),
        ))
    }

    fn split_offsets(&self) -> Option<Vec<(u32, u64)>> {
        self.cursor.as_ref().map(SplitCursor::offsets)
    }

    fn seek_splits(&mut self, offsets: &[(u32, u64)]) -> Result<(), SourceError> {
        match self.cursor.as_mut() {
            Some(cursor) => {
                cursor.seek(offsets);
                Ok(())
            }
            None => Err(SourceError::Other("seek before open".into())),
        }
    }
}

/// A line-oriented text file, split over subtasks by byte ranges (a line
/// belongs to the subtask whose range holds its first byte). Each line is
/// parsed by `parse`; a line it rejects fails the job with the file, line
/// start offset and the parser's reason. The offset is a byte offset.
pub struct FileLineSource<F> {
    path: std::path::PathBuf,
    parse: F,
    map: Option<memmap2::Mmap>,
    pos: usize,
    end: usize,
    seek_to: Option<u64>,
}

impl<T, F: FnMut(&str) -> Result<T, String> + 'static> FileLineSource<F> {
    /// Reads `path`, parsing each line with `parse`.
    pub fn new(path: impl Into<std::path::PathBuf>, parse: F) -> Self {
        Self {
            path: path.into(),
            parse,
            map: None,
            pos: 0,
            end: 0,
            seek_to: None,
        }
    }

    fn io_error(&self, error: std::io::Error) -> SourceError {
        SourceError::Io {
            path: self.path.display().to_string(),
            error,
        }
    }
}

impl<T, F: FnMut(&str) -> Result<T, String> + 'static> Source<T> for FileLineSource<F> {
    fn open(&mut self, context: &SourceContext) -> Result<(), SourceError> {
        let file = std::fs::File::open(&self.path).map_err(|e| self.io_error(e))?;
        let len = file.metadata().map_err(|e| self.io_error(e))?.len() as usize;
        let map = if len == 0 {
            None
        } else {
            // SAFETY: the file is opened read-only and the mapping is only read;
            // the source documents that the input file must not be truncated
            // while the job reads it (as any mmap-based reader must).
            Some(unsafe { memmap2::Mmap::map(&file) }.map_err(|e| self.io_error(e))?)
        };
        let bytes: &[u8] = map.as_deref().unwrap_or(&[]);
        let p = context.parallelism;
        let s = context.subtask;
        // A line belongs to the subtask whose range holds its first byte.
        let line_start_at_or_after = |at: usize| -> usize {
            if at == 0 {
                return 0;
            }
            match bytes[at - 1..].iter().position(|&b| b == b'\n') {
                Some(i) => at + i,
                None => bytes.len(),
            }
        };
        self.pos = line_start_at_or_after(len * s / p);
        self.end = line_start_at_or_after(len * (s + 1) / p);
        self.map = map;
        if let Some(offset) = self.seek_to.take() {
            self.seek(offset)?;
        }
        Ok(())
    }

    fn poll(&mut self, out: &mut Vec<T>, max: usize) -> Result<SourcePoll, SourceError> {
        let Some(map) = &self.map else {
            return Ok(SourcePoll::Finished);
        };
        for _ in 0..max {
            if self.pos >= self.end {
                return Ok(SourcePoll::Finished);
            }
            let rest = &map[self.pos..];
            let line_len = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            let mut line = &rest[..line_len];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            let start = self.pos;
            self.pos += line_len + 1;
            if line.is_empty() {
                continue;
            }
            let text = std::str::from_utf8(line).map_err(|e| SourceError::Malformed {
                location: format!("{} at byte {start}", self.path.display()),
                reason: e.to_string(),
            })?;
            let value = (self.parse)(text).map_err(|reason| SourceError::Malformed {
                location: format!("{} at byte {start}", self.path.display()),
                reason,
            })?;
            out.push(value);
        }
        Ok(SourcePoll::Ready)
    }

    fn offset(&self) -> u64 {
        self.pos.min(self.end) as u64
    }

    fn seek(&mut self, offset: u64) -> Result<(), SourceError> {
        if self.map.is_none() && self.end == 0 {
            self.seek_to = Some(offset);
            return Ok(());
        }
        self.pos = offset as usize;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keygroup::key_group_range;
    use crate::park::Parker;

    fn context(split_count: u32, parallelism: usize, subtask: usize) -> SourceContext {
        let range = key_group_range(split_count, parallelism as u32, subtask as u32);
        SourceContext {
            subtask,
            parallelism,
            notifier: Arc::new(Parker::default()).notifier(),
            split_count,
            splits: u32::from(range.start)..u32::from(range.end),
            run: 1,
            restored_checkpoint: None,
        }
    }

    /// Runs `p` cursors for seeded random lengths, restores their split
    /// positions on `q` cursors and runs those to `n`: every index below `n`
    /// comes out exactly once, and each cursor's indices increase.
    #[test]
    fn split_positions_survive_any_rescale() {
        let n = 2_000u64;
        let mut rng = crate::sim::SplitMix64::new(7);
        for split_count in [1u32, 7, 64] {
            for p in 1..=4usize.min(split_count as usize) {
                for q in 1..=4usize.min(split_count as usize) {
                    let mut seen = vec![0u32; n as usize];
                    let mut offsets = Vec::new();
                    for s in 0..p {
                        let mut c = SplitCursor::new(&context(split_count, p, s));
                        for _ in 0..rng.below(n / p as u64 + 1) {
                            let i = c.peek();
                            if i >= n {
                                break;
                            }
                            seen[i as usize] += 1;
                            c.advance();
                        }
                        offsets.extend(c.offsets());
                    }
                    for s in 0..q {
                        let ctx = context(split_count, q, s);
                        let mut c = SplitCursor::new(&ctx);
                        let owned: Vec<_> = offsets
                            .iter()
                            .copied()
                            .filter(|(k, _)| ctx.splits.contains(k))
                            .collect();
                        c.seek(&owned);
                        let mut last = None;
                        loop {
                            let i = c.peek();
                            if i >= n {
                                break;
                            }
                            assert!(last.is_none_or(|l| i > l), "increasing");
                            last = Some(i);
                            seen[i as usize] += 1;
                            c.advance();
                        }
                    }
                    for (i, &count) in seen.iter().enumerate() {
                        assert_eq!(count, 1, "index {i}: {split_count} splits, {p} -> {q}");
                    }
                }
            }
        }
    }
}
