//! Restart strategies: what a job does when a run fails (Flink's
//! `restart-strategy`).
//!
//! A failure (an operator error or panic, a source or sink error, storage
//! I/O, too many failed checkpoints) stops every reactor of the run. The
//! [`RestartTracker`] then decides, from the failure times alone, whether and
//! after which delay the job runs again; the runtime restarts it from the
//! latest completed checkpoint ([`crate::RestoreFrom::Latest`]), which
//! replays sources from their offsets and persisted in-flight records before
//! new data. Without checkpointing a restart begins again from the start.
//!
//! The tracker is a pure function of the times it is given (no clock, no
//! sleeping), so its timing and limits are tested exactly; jitter comes from
//! a seeded generator.

use std::collections::VecDeque;
use std::time::Duration;

/// When and how often a failed job runs again.
#[derive(Clone, Debug, PartialEq, Default)]
pub enum RestartStrategy {
    /// A failure ends the job (the default).
    #[default]
    None,
    /// Up to `attempts` restarts, each after `delay`.
    FixedDelay {
        /// Restarts allowed over the job's life.
        attempts: u32,
        /// Wait before each restart.
        delay: Duration,
    },
    /// Restarts without limit, the delay growing from `initial` by
    /// `multiplier` per failure up to `max`; a run that lasted `reset_after`
    /// without failing starts the sequence again at `initial`. Each delay is
    /// spread by up to ±`jitter` (a fraction, 0.0..=1.0) of itself.
    ExponentialDelay {
        /// The first delay.
        initial: Duration,
        /// The largest delay.
        max: Duration,
        /// Growth per consecutive failure (at least 1.0).
        multiplier: f64,
        /// A run this long without a failure resets the delay.
        reset_after: Duration,
        /// Random spread of each delay, as a fraction of it.
        jitter: f64,
    },
    /// Restarts after `delay` unless more than `max_failures` failures
    /// happened within the last `interval`.
    FailureRate {
        /// Failures tolerated per interval.
        max_failures: u32,
        /// The sliding window failures are counted in.
        interval: Duration,
        /// Wait before each restart.
        delay: Duration,
    },
}

impl RestartStrategy {
    /// Checks the parameters, naming the first bad one.
    pub fn validate(&self) -> Result<(), crate::ConfigError> {
        let invalid = |reason: String| Err(crate::ConfigError::invalid("restart strategy", reason));
        match self {
            Self::ExponentialDelay {
                initial,
                max,
                multiplier,
                jitter,
                ..
            } => {
                if initial > max {
                    return invalid(format!(
                        "exponential delay: initial {initial:?} exceeds max {max:?}"
                    ));
                }
                if !(*multiplier >= 1.0 && multiplier.is_finite()) {
                    return invalid(format!(
                        "exponential delay: multiplier must be a finite number >= 1.0, got {multiplier}"
                    ));
                }
                if !(0.0..=1.0).contains(jitter) {
                    return invalid(format!(
                        "exponential delay: jitter must be in 0.0..=1.0, got {jitter}"
                    ));
                }
                Ok(())
            }
            Self::FailureRate { interval, .. } if interval.is_zero() => {
                invalid("failure rate: interval must be positive".into())
            }
            _ => Ok(()),
        }
    }
}

/// Decides about restarts from the times of failures and restarts.
#[derive(Clone, Debug)]
pub struct RestartTracker {
    strategy: RestartStrategy,
    restarts: u32,
    /// Failure times (ms) inside the failure-rate window.
    recent: VecDeque<u64>,
    /// The exponential strategy's next delay.
    next_delay: Option<Duration>,
    /// When the last restart happened (ms), for the exponential reset.
    last_restart_ms: Option<u64>,
    rng: u64,
}

impl RestartTracker {
    /// A tracker for `strategy`; `seed` drives the jitter.
    pub fn new(strategy: RestartStrategy, seed: u64) -> Self {
        Self {
            strategy,
            restarts: 0,
            recent: VecDeque::new(),
            next_delay: None,
            last_restart_ms: None,
            rng: seed | 1,
        }
    }

    /// Restarts granted so far.
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// A run failed at `now_ms`: the delay before the next run, or `None`
    /// when the strategy gives up. A granted restart is counted as happening
    /// at `now_ms` plus the delay.
    pub fn on_failure(&mut self, now_ms: u64) -> Option<Duration> {
        let delay = match &self.strategy {
            RestartStrategy::None => None,
            RestartStrategy::FixedDelay { attempts, delay } => {
                (self.restarts < *attempts).then_some(*delay)
            }
            RestartStrategy::ExponentialDelay {
                initial,
                max,
                multiplier,
                reset_after,
                jitter,
            } => {
                let quiet = self
                    .last_restart_ms
                    .is_some_and(|at| now_ms.saturating_sub(at) >= reset_after.as_millis() as u64);
                let base = match self.next_delay {
                    Some(next) if !quiet => next,
                    _ => *initial,
                };
                self.next_delay = Some(base.mul_f64(*multiplier).min(*max));
                let spread = base.as_secs_f64() * jitter * (self.unit() * 2.0 - 1.0);
                Some(Duration::from_secs_f64(
                    (base.as_secs_f64() + spread).max(0.0),
                ))
            }
            RestartStrategy::FailureRate {
                max_failures,
                interval,
                delay,
            } => {
                let window = interval.as_millis() as u64;
                self.recent.push_back(now_ms);
                while self
                    .recent
                    .front()
                    .is_some_and(|&t| now_ms.saturating_sub(t) >= window)
                {
                    self.recent.pop_front();
                }
                (self.recent.len() as u64 <= *max_failures as u64).then_some(*delay)
            }
        };
        if let Some(d) = delay {
            self.restarts += 1;
            self.last_restart_ms = Some(now_ms + d.as_millis() as u64);
        }
        delay
    }

    /// A uniform number in [0, 1) (xorshift64*).
    fn unit(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let x = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Restarts of a job so far, as the API reports them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestartStats {
    /// Runs started after a failure.
    pub restarts: u32,
    /// The last failure, as text.
    pub last_failure: Option<String>,
    /// When it happened (processing time, epoch ms).
    pub last_failure_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn none_never_restarts() {
        let mut t = RestartTracker::new(RestartStrategy::None, 1);
        assert_eq!(t.on_failure(0), None);
        assert_eq!(t.restarts(), 0);
    }

    #[test]
    fn fixed_delay_allows_exactly_its_attempts() {
        let mut t = RestartTracker::new(
            RestartStrategy::FixedDelay {
                attempts: 3,
                delay: 250 * MS,
            },
            1,
        );
        for i in 0..3 {
            assert_eq!(t.on_failure(i * 10_000), Some(250 * MS), "attempt {i}");
        }
        assert_eq!(t.on_failure(100_000), None);
        assert_eq!(t.restarts(), 3);
    }

    #[test]
    fn exponential_delay_grows_caps_and_resets_after_a_quiet_run() {
        let mut t = RestartTracker::new(
            RestartStrategy::ExponentialDelay {
                initial: 100 * MS,
                max: 700 * MS,
                multiplier: 2.0,
                reset_after: Duration::from_secs(10),
                jitter: 0.0,
            },
            1,
        );
        // Failures right after each restart: 100, 200, 400, 700 (capped), 700.
        let mut now = 0;
        for expected in [100, 200, 400, 700, 700] {
            let d = t.on_failure(now).expect("unlimited");
            assert_eq!(d, expected * MS);
            now += d.as_millis() as u64 + 1;
        }
        // A run of 10 s after the last restart resets to the initial delay.
        assert_eq!(t.on_failure(now + 10_000), Some(100 * MS));
        assert_eq!(t.on_failure(now + 10_200), Some(200 * MS));
    }

    #[test]
    fn exponential_jitter_stays_within_its_fraction_and_is_seeded() {
        let strategy = RestartStrategy::ExponentialDelay {
            initial: 1000 * MS,
            max: 1000 * MS,
            multiplier: 1.0,
            reset_after: Duration::from_secs(3600),
            jitter: 0.25,
        };
        let mut a = RestartTracker::new(strategy.clone(), 7);
        let mut b = RestartTracker::new(strategy, 7);
        let mut distinct = std::collections::BTreeSet::new();
        for i in 0..200 {
            let d = a.on_failure(i).expect("unlimited");
            assert_eq!(Some(d), b.on_failure(i), "same seed, same delays");
            assert!(d >= 750 * MS && d <= 1250 * MS, "{d:?}");
            distinct.insert(d.as_millis());
        }
        assert!(distinct.len() > 50, "jitter spreads the delays");
    }

    #[test]
    fn failure_rate_counts_failures_in_a_sliding_window() {
        let mut t = RestartTracker::new(
            RestartStrategy::FailureRate {
                max_failures: 2,
                interval: Duration::from_secs(60),
                delay: 5 * MS,
            },
            1,
        );
        assert_eq!(t.on_failure(0), Some(5 * MS));
        assert_eq!(t.on_failure(30_000), Some(5 * MS));
        // The first failure left the window at 60 s: two in the window again.
        assert_eq!(t.on_failure(61_000), Some(5 * MS));
        // Three within 60 s (30 s, 61 s, 62 s): give up.
        assert_eq!(t.on_failure(62_000), None);
    }

    #[test]
    fn bad_parameters_are_named() {
        let bad = RestartStrategy::ExponentialDelay {
            initial: 2 * MS,
            max: MS,
            multiplier: 2.0,
            reset_after: MS,
            jitter: 0.0,
        };
        assert!(bad.validate().unwrap_err().to_string().contains("initial"));
        let bad = RestartStrategy::ExponentialDelay {
            initial: MS,
            max: MS,
            multiplier: 0.5,
            reset_after: MS,
            jitter: 0.0,
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("multiplier"));
    }
}
