//! Watching a running job: an HTTP server on a thread of its own that
//! serves the job's figures as Prometheus metrics (`/metrics`), as JSON
//! shaped like Flink's checkpoint REST API (`/api/...`), and as a live page
//! (`/`, its script and style compiled into the binary).
//!
//! Switched on by [`JobConfig::monitor`](crate::JobConfig::monitor); off by
//! default. The server is started by [`Job::start`](crate::Job::start) and
//! lives as long as the job's handle, across the supervisor's restarts (it
//! reads the job's [`Supervision`], which follows the current run).
//!
//! Owns the server thread (`spate-monitor`), a small HTTP/1.1 server with
//! fixed limits and timeouts (`server.rs`), the HTTP routes and their
//! security rules (`http.rs`), the once-a-second samples that rates and the
//! page's charts come from (`sampler.rs`), the Prometheus exposition
//! (`prometheus.rs`, with the `prometheus-client` crate) and the JSON
//! documents (`api.rs`, documented field by field in `docs/monitoring.md`).
//! Must never run on a reactor and never be named by the step logic: the
//! data path only publishes into [`crate::metrics`] cells, which this
//! module reads. Every endpoint is read-only unless an action token is set.

mod api;
mod http;
mod prometheus;
mod redact;
mod sampler;
mod server;

use crate::watch::Supervision;
use crate::{ConfigError, JobError};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The monitor of a job (see the module documentation): where it listens,
/// what it calls the job, and whether it accepts actions.
#[derive(Clone, PartialEq, Eq)]
pub struct MonitorConfig {
    /// Address to listen on. [`MonitorConfig::local`] gives 127.0.0.1 (the
    /// default; another interface only when an address says so). Port 0
    /// lets the system choose ([`JobHandle::monitor_address`] tells which).
    ///
    /// [`JobHandle::monitor_address`]: crate::JobHandle::monitor_address
    pub address: SocketAddr,
    /// The job's name: the `spate_job` label of every metric, and the page's title.
    pub job_name: String,
    /// Allows actions on the job (`POST /api/checkpoints` triggers a
    /// checkpoint) for requests that carry `Authorization: Bearer <token>`.
    /// `None` (the default): every endpoint is read-only. Never shown by the
    /// monitor, nor by `Debug`.
    pub action_token: Option<String>,
}

impl MonitorConfig {
    /// Listens on `address`, read-only, for a job named `spate`.
    pub fn new(address: SocketAddr) -> Self {
        Self {
            address,
            job_name: "spate".into(),
            action_token: None,
        }
    }

    /// Listens on 127.0.0.1:`port` (0: a port the system chooses).
    pub fn local(port: u16) -> Self {
        Self::new(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
    }

    /// Names the job.
    pub fn with_job_name(mut self, name: impl Into<String>) -> Self {
        self.job_name = name.into();
        self
    }

    /// Accepts actions from requests carrying this bearer token.
    pub fn with_action_token(mut self, token: impl Into<String>) -> Self {
        self.action_token = Some(token.into());
        self
    }

    /// Checks the settings, naming the first bad one.
    pub(crate) fn validate(&self) -> Result<(), JobError> {
        let name_ok = !self.job_name.is_empty()
            && self
                .job_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !name_ok {
            return Err(ConfigError::invalid(
                "monitor job_name",
                format!(
                    "must be non-empty ASCII letters, digits, '-', '_' or '.', not {:?}",
                    self.job_name
                ),
            )
            .into());
        }
        if self.action_token.as_ref().is_some_and(|t| t.len() < 16) {
            return Err(ConfigError::invalid(
                "monitor action_token",
                "must be at least 16 characters",
            )
            .into());
        }
        Ok(())
    }
}

impl std::fmt::Debug for MonitorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonitorConfig")
            .field("address", &self.address)
            .field("job_name", &self.job_name)
            .field(
                "action_token",
                &self.action_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// A monitor that listens but does not serve yet: bound before the job's
/// first run starts, so that a port in use fails `Job::start` before any
/// reactor runs.
pub(crate) struct Listening {
    config: MonitorConfig,
    listener: server::Listener,
    address: SocketAddr,
}

impl Listening {
    /// Checks the settings and listens on the configured address.
    pub(crate) fn bind(config: &MonitorConfig) -> Result<Self, JobError> {
        config.validate()?;
        let cannot = |e: std::io::Error| {
            JobError::from(ConfigError::invalid(
                "monitor address",
                format!("cannot listen on {}: {e}", config.address),
            ))
        };
        let listener = server::Listener::bind(config.address).map_err(cannot)?;
        let address = listener.local_addr().map_err(cannot)?;
        Ok(Self {
            config: config.clone(),
            listener,
            address,
        })
    }

    /// Serves `job` from a new thread.
    pub(crate) fn serve(self, job: Arc<Supervision>) -> Result<Monitor, JobError> {
        let stop = Arc::new(AtomicBool::new(false));
        let service = http::Service::new(self.config, self.address, job);
        let listener = self.listener;
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("spate-monitor".into())
                .spawn(move || service.serve(&listener, &stop))
                .map_err(|e| JobError::Runtime(format!("cannot start the monitor: {e}")))?
        };
        Ok(Monitor {
            address: self.address,
            stop,
            thread: Some(thread),
        })
    }
}

/// The running monitor: its server thread, stopped and joined on drop
/// (within one connection's timeouts: the thread polls its stop flag).
pub(crate) struct Monitor {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Monitor {
    pub(crate) fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
