//! Parking an idle subtask and waking it from another thread.
//!
//! A busy reactor polls its rings from its own loop and pays no syscall per
//! batch. When a step finds nothing to do, the subtask *parks*: it publishes
//! `parked = true`, re-checks its inputs, and only then waits. A producer that
//! pushes into one of its rings (or frees space in a ring it waits on) checks
//! the flag after publishing and wakes it. Both sides fence (SeqCst), so one of
//! them always sees the other's write: no wake-up is lost.
//!
//! An idle reactor blocks its thread on the futex behind
//! [`std::thread::park_timeout`], and a notification unparks that thread
//! (the wake is one futex syscall, and only when the reactor is parked), so
//! an idle engine costs no CPU. The reactor does not sleep inside glommio:
//! glommio 0.9 sleeps in io_uring with a poll on its latency ring's fd, and on
//! this machine's kernel that poll sometimes never fired, leaving a reactor
//! asleep with due timers and pending wake-ups (see the invariants in
//! ARCHITECTURE.md). Tasks that wait as futures (the coordinator) are also woken
//! through their `Waker`.

use crate::ring::handshake_fence;
use atomic_waker::AtomicWaker;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::thread::Thread;
use std::time::Duration;

/// The parking state of one subtask.
#[derive(Debug, Default)]
pub(crate) struct Parker {
    parked: AtomicBool,
    notified: AtomicBool,
    waker: AtomicWaker,
    /// The reactor thread this parker's owner runs on.
    thread: OnceLock<Thread>,
}

impl Parker {
    pub(crate) fn notifier(self: &Arc<Self>) -> Notifier {
        Notifier(self.clone())
    }

    /// Binds the parker to the calling (reactor) thread: a notification
    /// unparks it.
    pub(crate) fn bind_thread(&self) {
        let _ = self.thread.set(std::thread::current());
    }

    /// Whether the owner was notified since it published that it parks.
    pub(crate) fn is_notified(&self) -> bool {
        self.notified.load(Ordering::Relaxed)
    }

    /// Blocks the reactor thread until notified or for at most `timeout`.
    /// Called between [`Parker::prepare_park`] and [`Parker::unpark`]. Any
    /// parker bound to this thread wakes it; a notification that came before
    /// the call makes it return at once (the thread's park token).
    pub(crate) fn block(&self, timeout: Duration) {
        if !self.notified.load(Ordering::SeqCst) {
            std::thread::park_timeout(timeout);
        }
    }

    /// Publishes that the subtask is about to park. The caller must re-check
    /// its inputs after this and before awaiting [`Parker::wait`].
    pub(crate) fn prepare_park(&self) {
        self.parked.store(true, Ordering::SeqCst);
        handshake_fence();
    }

    /// Clears the parked state after a wake-up or a re-check that found work.
    pub(crate) fn unpark(&self) {
        self.parked.store(false, Ordering::SeqCst);
        self.notified.store(false, Ordering::SeqCst);
    }

    /// Waits until notified.
    pub(crate) fn wait(&self) -> ParkFuture<'_> {
        ParkFuture(self)
    }

    fn notify(&self) {
        handshake_fence();
        if self.parked.load(Ordering::SeqCst) {
            self.notified.store(true, Ordering::SeqCst);
            self.waker.wake();
            if let Some(thread) = self.thread.get() {
                thread.unpark();
            }
        }
    }
}

pub(crate) struct ParkFuture<'a>(&'a Parker);

impl Future for ParkFuture<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.waker.register(cx.waker());
        if self.0.notified.load(Ordering::SeqCst) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// Wakes a parked subtask. Cheap when it is not parked (one fence and one
/// load), so producers call it after every push. `Send + Sync + Clone`:
/// sources that are fed from other threads (the ingress) hold one.
#[derive(Clone, Debug)]
pub struct Notifier(Arc<Parker>);

impl Notifier {
    /// Wakes the subtask if it is parked.
    pub fn notify(&self) {
        self.0.notify();
    }
}

/// Parks a thread of the embedding service (the ingress handle waiting for
/// ring space or durability, an egress receiver waiting for records) until a
/// reactor signals progress. The same handshake as [`Parker`]: the waiter
/// publishes `waiting`, re-checks its condition, then parks; a reactor
/// publishes its progress, fences, and unparks the waiter only if it waits.
/// So a service thread never spins, and a reactor pays one fence and one
/// load per signal when nobody waits.
#[derive(Debug, Default)]
pub(crate) struct ThreadWaiter {
    waiting: AtomicBool,
    thread: std::sync::Mutex<Option<Thread>>,
}

impl ThreadWaiter {
    /// Blocks the calling thread until `ready()` holds, re-checking it after
    /// every signal (and, as a safety net against a lost signal, every
    /// `recheck`). Returns the value `ready` produced.
    pub(crate) fn wait_for<R>(&self, recheck: Duration, mut ready: impl FnMut() -> Option<R>) -> R {
        loop {
            if let Some(r) = ready() {
                return r;
            }
            *self.thread.lock().expect("waiter lock") = Some(std::thread::current());
            self.waiting.store(true, Ordering::SeqCst);
            handshake_fence();
            if let Some(r) = ready() {
                self.waiting.store(false, Ordering::SeqCst);
                return r;
            }
            std::thread::park_timeout(recheck);
            self.waiting.store(false, Ordering::SeqCst);
        }
    }

    /// Wakes the waiting thread, if any (after the caller published progress).
    pub(crate) fn wake(&self) {
        handshake_fence();
        if self.waiting.load(Ordering::SeqCst) {
            if let Some(thread) = &*self.thread.lock().expect("waiter lock") {
                thread.unpark();
            }
        }
    }
}

/// Asks the kernel to end this thread's timed waits within 1 µs of their
/// deadline, instead of the default timer slack of 50 µs
/// (`PR_SET_TIMERSLACK`): a reactor whose source is due in 20 µs blocks for
/// 20 µs, not up to 70. Called by every reactor thread as it starts. Best
/// effort: where the kernel refuses, the default slack stays.
pub(crate) fn tighten_timer_slack() {
    const SLACK_NS: libc::c_ulong = 1_000;
    // PR_SET_TIMERSLACK reads one integer argument (the slack in
    // nanoseconds) and changes only the calling thread's timer slack.
    // SAFETY: no pointer is passed and no memory of this process is touched.
    let _ = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, SLACK_NS, 0, 0, 0) };
}
