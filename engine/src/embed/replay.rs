//! A replay buffer in front of an ingress handle, for services that do not
//! keep a log of their own.

use super::ingress::{IngressHandle, Position, PushError};
use std::collections::VecDeque;

/// A push through a [`ReplayIngress`] failed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// The job has ended (or the input was closed).
    #[error("the job has ended")]
    Closed,
    /// A restore needs records the buffer no longer holds: the job fell back
    /// to a checkpoint older than one that had completed (a damaged newest
    /// checkpoint), or resumed from one beyond what was pushed.
    #[error(
        "a restore needs the records from position {from}, but the replay buffer holds \
         positions {oldest}..{next} only"
    )]
    CannotReplay {
        /// Where the job wants to resume.
        from: Position,
        /// The oldest position the buffer holds.
        oldest: Position,
        /// The next position to push.
        next: Position,
    },
}

/// Keeps every pushed record until a completed checkpoint covers it and
/// replays them into the job after a restore, so that the service only
/// pushes each record once. At most `capacity` records wait for a
/// checkpoint: a push waits (parked) while the buffer is full.
pub struct ReplayIngress<T> {
    handle: IngressHandle<T>,
    /// Records from position `base` on, up to the newest pushed.
    buffer: VecDeque<T>,
    base: Position,
    capacity: usize,
}

impl<T: Clone + Send + 'static> ReplayIngress<T> {
    /// Waits for the job's sources and starts the buffer where the job
    /// expects its next record (0 for a fresh job; after a resumed
    /// checkpoint, the position the service must push from, returned too).
    pub fn new(
        mut handle: IngressHandle<T>,
        capacity: usize,
    ) -> Result<(Self, Position), ReplayError> {
        assert!(capacity > 0, "a replay buffer holds at least one record");
        let base = handle.resume_position().ok_or(ReplayError::Closed)?;
        let ingress = Self {
            handle,
            buffer: VecDeque::new(),
            base,
            capacity,
        };
        Ok((ingress, base))
    }

    /// Pushes `value` (kept until it is durable); returns its position.
    pub fn push(&mut self, value: T) -> Result<Position, ReplayError> {
        loop {
            self.trim();
            if let Some(from) = self.handle.poll_rewind() {
                self.check_replayable(from)?;
                self.pump()?;
                continue;
            }
            if self.buffer.len() < self.capacity {
                break;
            }
            if self.handle.job_ended() {
                return Err(ReplayError::Closed);
            }
            // Full: wait for a checkpoint, a restore (replayed above) or the
            // end of the job.
            self.handle.wait_durable(self.base);
        }
        let position = self.end();
        self.buffer.push_back(value);
        self.pump()?;
        Ok(position)
    }

    /// Every position below it is durable.
    pub fn durable(&self) -> Position {
        self.handle.durable()
    }

    /// Records waiting for a checkpoint.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Ends the input and keeps replaying until everything pushed is durable
    /// (or the job has ended without checkpoints covering it).
    pub fn finish(mut self) -> Result<(), ReplayError> {
        self.pump()?;
        self.handle.close();
        let end = self.end();
        loop {
            let durable = self.handle.wait_durable(end.saturating_sub(1));
            if durable >= end {
                return Ok(());
            }
            match self.handle.poll_rewind() {
                Some(from) => {
                    self.check_replayable(from)?;
                    self.pump()?;
                }
                None if self.handle.job_ended() => return Ok(()),
                None => {}
            }
        }
    }

    /// The position after the newest pushed record.
    fn end(&self) -> Position {
        self.base + self.buffer.len() as u64
    }

    fn trim(&mut self) {
        let durable = self.handle.durable();
        while self.base < durable && !self.buffer.is_empty() {
            self.buffer.pop_front();
            self.base += 1;
        }
    }

    fn check_replayable(&self, from: Position) -> Result<(), ReplayError> {
        if from < self.base || from > self.end() {
            return Err(ReplayError::CannotReplay {
                from,
                oldest: self.base,
                next: self.end(),
            });
        }
        Ok(())
    }

    /// Pushes the buffered records the handle has not taken yet (all of
    /// them after a rewind), waiting for ring space.
    fn pump(&mut self) -> Result<(), ReplayError> {
        while self.handle.next_position() < self.end() {
            let next = self.handle.next_position();
            self.check_replayable(next)?;
            let value = self.buffer[(next - self.base) as usize].clone();
            match self.handle.push(value) {
                Ok(_) => {}
                Err(PushError::Rewind { from, .. }) => self.check_replayable(from)?,
                Err(PushError::Closed(_)) => return Err(ReplayError::Closed),
                Err(PushError::Full(_)) => unreachable!("push waits for space"),
            }
        }
        Ok(())
    }
}
