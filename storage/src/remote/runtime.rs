//! [`RemoteRuntime`]: the process's one tokio runtime for the remote tier, on
//! threads of its own (`spate-remote-*`), never on a glommio reactor.
//!
//! The object-store client is tokio-based; a reactor must neither block on it nor
//! poll its futures. A reactor hands a request over with [`RemoteRuntime::submit`]
//! and gets a [`Completion`]; the runtime thread stores the result and then calls
//! the waker the reactor supplied (in the engine: the coordinator's notifier, which
//! unparks the reactor thread and wakes the waiting task), so the reactor waits
//! without spinning or polling on a timer. Threads that may block (job start,
//! tools, tests) use [`RemoteRuntime::block_on`].
//!
//! Owns the runtime and nothing else.

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};

/// The tokio runtime of the remote tier.
#[derive(Debug)]
pub struct RemoteRuntime {
    rt: tokio::runtime::Runtime,
}

/// The result of a submitted request, filled by the runtime.
#[derive(Debug)]
pub struct Completion<T> {
    slot: Arc<Mutex<Option<T>>>,
}

impl<T> Completion<T> {
    /// The result, once (`None` while the request runs, and after it was taken).
    pub fn take(&self) -> Option<T> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

static GLOBAL: OnceLock<Result<RemoteRuntime, String>> = OnceLock::new();

impl RemoteRuntime {
    /// The process-wide runtime (two worker threads), started on first use.
    pub fn global() -> Result<&'static RemoteRuntime, String> {
        GLOBAL
            .get_or_init(|| {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("spate-remote")
                    .enable_all()
                    .build()
                    .map(|rt| RemoteRuntime { rt })
                    .map_err(|e| format!("cannot start the remote tier's runtime: {e}"))
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Runs `fut` on the runtime; when it finishes, stores its output in the
    /// returned [`Completion`] and then calls `wake` (from a runtime thread).
    pub fn submit<F, W>(&self, fut: F, wake: W) -> Completion<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
        W: FnOnce() + Send + 'static,
    {
        let slot = Arc::new(Mutex::new(None));
        let filled = slot.clone();
        self.rt.spawn(async move {
            let out = fut.await;
            *filled.lock().unwrap_or_else(|p| p.into_inner()) = Some(out);
            wake();
        });
        Completion { slot }
    }

    /// Runs `fut` on the runtime and blocks the calling thread until it is done.
    /// Never call this on a glommio reactor.
    pub fn block_on<F>(&self, fut: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv()
            .expect("the remote runtime never drops a spawned request")
    }
}
