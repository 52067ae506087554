//! Parking an idle subtask and waking it from another thread.
//!
//! A busy reactor polls its rings from its own loop and pays no syscall per
//! batch. When a step finds nothing to do, the subtask *parks*: it publishes
//! `parked = true`, re-checks its inputs, and only then waits. A producer that
//! pushes into one of its rings (or frees space in a ring it waits on) checks
//! the flag after publishing and wakes it. Both sides fence (SeqCst), so one of
//! them always sees the other's write: no wake-up is lost.
//!
//! The wake goes through the parked task's `Waker`; glommio turns a wake from
//! a foreign thread into an eventfd write to the sleeping reactor, so an idle
//! engine costs no CPU.

use crate::ring::handshake_fence;
use atomic_waker::AtomicWaker;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// The parking state of one subtask.
#[derive(Debug, Default)]
pub(crate) struct Parker {
    parked: AtomicBool,
    notified: AtomicBool,
    waker: AtomicWaker,
}

impl Parker {
    pub(crate) fn notifier(self: &Arc<Self>) -> Notifier {
        Notifier(self.clone())
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
