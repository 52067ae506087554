//! The keepalive thread: renews a process's lease on a thread of its own
//! (the etcd client blocks; never on a glommio reactor) and reports when the
//! lease is lost.
//!
//! Owns the thread and the process's local view of its lease: alive until
//! `valid_until`, measured from when the last successful renewal was *sent*
//! (etcd restarts the lease's clock only when it receives it, so the local
//! deadline never outlives etcd's). Past that deadline without a renewal the
//! lease counts as lost even if etcd cannot be reached to say so. Safety
//! does not depend on this view (every leader write is fenced in etcd); it
//! makes a cut-off process stop early instead of failing its writes.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::kv::{CoordError, Coordination, Lease};

/// Why a lease is lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseLost {
    /// etcd says the lease is gone (expired or revoked).
    Expired,
    /// No renewal succeeded before the local deadline (etcd unreachable).
    Unrenewed,
    /// The keepalive was stopped.
    Stopped,
}

/// The local view of the lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseState {
    /// Renewed; valid at least until `valid_until`.
    Alive {
        /// The local deadline.
        valid_until: Instant,
    },
    /// Lost.
    Lost(LeaseLost),
}

type Shared = Arc<(Mutex<LeaseState>, Condvar)>;

/// Renews one lease every third of its TTL on a thread of its own until
/// stopped (on drop) or the lease is lost.
pub struct KeepAlive {
    shared: Shared,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl KeepAlive {
    /// Starts renewing `lease`, granted just now. `on_lost` runs once, on
    /// the keepalive thread, when the lease is lost (not when stopped): the
    /// hook through which a reactor will be woken.
    pub fn start(
        coord: Arc<dyn Coordination>,
        lease: Lease,
        on_lost: Box<dyn FnOnce(LeaseLost) + Send>,
    ) -> std::io::Result<Self> {
        let ttl = Duration::from_secs(lease.ttl_s.max(1) as u64);
        let shared: Shared = Arc::new((
            Mutex::new(LeaseState::Alive {
                valid_until: Instant::now() + ttl,
            }),
            Condvar::new(),
        ));
        let (stop, stopped) = mpsc::channel::<()>();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("spate-etcd-lease-{}", lease.id))
            .spawn(move || {
                let lost = renew(&*coord, lease, ttl, &thread_shared, &stopped);
                set(&thread_shared, LeaseState::Lost(lost));
                if lost != LeaseLost::Stopped {
                    on_lost(lost);
                }
            })?;
        Ok(KeepAlive {
            shared,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The lease as this process sees it now.
    pub fn state(&self) -> LeaseState {
        match *lock(&self.shared) {
            LeaseState::Alive { valid_until } if Instant::now() >= valid_until => {
                LeaseState::Lost(LeaseLost::Unrenewed)
            }
            s => s,
        }
    }

    /// Whether the lease is alive as this process sees it.
    pub fn is_alive(&self) -> bool {
        matches!(self.state(), LeaseState::Alive { .. })
    }

    /// Waits until the lease is lost or `timeout` passes; returns why it
    /// was lost, if it was.
    pub fn wait_lost(&self, timeout: Duration) -> Option<LeaseLost> {
        let deadline = Instant::now() + timeout;
        let (lock_, cv) = &*self.shared;
        let mut state = lock_.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let LeaseState::Lost(why) = *state {
                return Some(why);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            state = cv
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, LeaseState> {
    shared.0.lock().unwrap_or_else(|p| p.into_inner())
}

fn set(shared: &Shared, state: LeaseState) {
    *lock(shared) = state;
    shared.1.notify_all();
}

/// The thread's loop; returns why it ended.
fn renew(
    coord: &dyn Coordination,
    lease: Lease,
    ttl: Duration,
    shared: &Shared,
    stopped: &mpsc::Receiver<()>,
) -> LeaseLost {
    let period = (ttl / 3).max(Duration::from_millis(50));
    let mut valid_until = Instant::now() + ttl;
    loop {
        // The period's wait is the stop channel's: dropping the handle ends
        // it at once.
        let wait = period.min(valid_until.saturating_duration_since(Instant::now()));
        match stopped.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return LeaseLost::Stopped,
        }
        let sent = Instant::now();
        match coord.lease_keepalive(lease.id) {
            Ok(ttl_s) => {
                valid_until = sent + Duration::from_secs(ttl_s.max(1) as u64);
                set(shared, LeaseState::Alive { valid_until });
            }
            Err(CoordError::LeaseNotFound { .. }) => return LeaseLost::Expired,
            Err(_) if Instant::now() >= valid_until => return LeaseLost::Unrenewed,
            // Transient: try again next period, while the lease lasts.
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{KeyRange, LeaseId, RangeResponse, Revision, Txn, TxnResponse};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    /// A store whose keepalives succeed while `up` and count themselves;
    /// everything else is unused.
    struct Fake {
        up: AtomicBool,
        renewals: AtomicU64,
    }

    impl Coordination for Fake {
        fn range(&self, _: &KeyRange) -> Result<RangeResponse, CoordError> {
            unreachable!()
        }
        fn put(&self, _: &[u8], _: &[u8], _: Option<LeaseId>) -> Result<Revision, CoordError> {
            unreachable!()
        }
        fn txn(&self, _: &Txn) -> Result<TxnResponse, CoordError> {
            unreachable!()
        }
        fn delete(&self, _: &KeyRange) -> Result<u64, CoordError> {
            unreachable!()
        }
        fn lease_grant(&self, _: i64) -> Result<Lease, CoordError> {
            unreachable!()
        }
        fn lease_keepalive(&self, _: LeaseId) -> Result<i64, CoordError> {
            if !self.up.load(Ordering::SeqCst) {
                return Err(CoordError::Unavailable {
                    endpoint: "fake".into(),
                    operation: "lease keepalive",
                    source: std::io::ErrorKind::ConnectionRefused.into(),
                });
            }
            self.renewals.fetch_add(1, Ordering::SeqCst);
            Ok(1)
        }
        fn lease_revoke(&self, _: LeaseId) -> Result<(), CoordError> {
            unreachable!()
        }
    }

    #[test]
    fn an_unreachable_store_loses_the_lease_at_the_local_deadline() {
        let fake = Arc::new(Fake {
            up: AtomicBool::new(true),
            renewals: AtomicU64::new(0),
        });
        let lease = Lease {
            id: LeaseId(7),
            ttl_s: 1,
        };
        let (tx, rx) = mpsc::channel();
        let keepalive = KeepAlive::start(
            fake.clone(),
            lease,
            Box::new(move |why| tx.send(why).unwrap()),
        )
        .unwrap();
        // Renewed while the store answers (several times within its TTL)...
        let deadline = Instant::now() + Duration::from_secs(10);
        while fake.renewals.load(Ordering::SeqCst) < 4 {
            assert!(Instant::now() < deadline, "no renewals");
            assert!(keepalive.is_alive());
            std::thread::park_timeout(Duration::from_millis(10));
        }
        // ... lost once it stops answering for a TTL.
        fake.up.store(false, Ordering::SeqCst);
        assert_eq!(
            keepalive.wait_lost(Duration::from_secs(10)),
            Some(LeaseLost::Unrenewed)
        );
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(10)),
            Ok(LeaseLost::Unrenewed)
        );
        assert!(!keepalive.is_alive());
    }

    #[test]
    fn dropping_the_keepalive_stops_its_thread_without_a_loss() {
        let fake = Arc::new(Fake {
            up: AtomicBool::new(true),
            renewals: AtomicU64::new(0),
        });
        let lease = Lease {
            id: LeaseId(8),
            ttl_s: 30,
        };
        let lost = Arc::new(AtomicBool::new(false));
        let hook = lost.clone();
        let keepalive = KeepAlive::start(
            fake,
            lease,
            Box::new(move |_| hook.store(true, Ordering::SeqCst)),
        )
        .unwrap();
        // The drop ends the thread's wait (its period is 10 s) and joins it.
        drop(keepalive);
        assert!(!lost.load(Ordering::SeqCst), "a stop is not a loss");
    }
}
