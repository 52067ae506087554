//! The monitor's server loop and routes, on the `spate-monitor` thread.
//!
//! One thread accepts and serves every connection in turn (one request
//! each, read and written by `server.rs` within its limits and timeouts)
//! and takes a sample of the job's figures every second between requests.
//! Every route answers `GET` (and `HEAD`); the one
//! action, `POST /api/checkpoints`, needs the configured bearer token and is
//! refused when none is configured. Every response forbids scripts, styles
//! and connections from anywhere but the monitor itself (Content Security
//! Policy), sniffing and caching.

use super::sampler::{Sample, Sampler};
use super::server::{self, Listener, Reply, Request};
use super::{api, prometheus, MonitorConfig};
use crate::watch::Supervision;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const INDEX_HTML: &str = include_str!("assets/index.html");
const MONITOR_JS: &str = include_str!("assets/monitor.js");
const MONITOR_CSS: &str = include_str!("assets/monitor.css");

/// What every response carries: nothing from elsewhere, nothing cached.
const SECURITY_HEADERS: &[(&str, &str)] = &[
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
];

/// Time between two samples of the job's figures.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// The monitor's state on its thread.
pub(super) struct Service {
    config: MonitorConfig,
    /// Where the server listens (the port chosen, if the config said 0).
    address: SocketAddr,
    job: Arc<Supervision>,
    sampler: Sampler,
}

impl Service {
    pub(super) fn new(config: MonitorConfig, address: SocketAddr, job: Arc<Supervision>) -> Self {
        Self {
            config,
            address,
            job,
            sampler: Sampler::default(),
        }
    }

    /// Serves until `stop` is set; sees it within one connection's
    /// timeouts, or [`server::POLL_EVERY`] when idle.
    pub(super) fn serve(mut self, listener: &Listener, stop: &AtomicBool) {
        let mut next_sample = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            if Instant::now() >= next_sample {
                self.sample();
                next_sample = Instant::now() + SAMPLE_EVERY;
            }
            if let Some(stream) = listener.accept() {
                server::serve(stream, |request| self.handle(request));
            }
        }
    }

    fn sample(&mut self) {
        let now = self.current();
        self.sampler.add(now);
    }

    /// The figures now (counters and gauges are served fresh; rates and
    /// series come from the samples).
    fn current(&self) -> Sample {
        Sample {
            at_ms: self.now_ms(),
            figures: self.job.metrics.snapshot(),
        }
    }

    fn handle(&mut self, request: &Request) -> Reply {
        let path = request.path.as_str();
        let reply = match request.method.as_str() {
            "GET" | "HEAD" => self.get(path),
            "POST" if path == "/api/checkpoints" => self.trigger(request),
            _ => text(405, "the monitor is read-only: GET or HEAD\n")
                .with_header("Allow", "GET, HEAD"),
        };
        SECURITY_HEADERS
            .iter()
            .fold(reply, |r, (name, value)| r.with_header(name, value))
    }

    fn get(&mut self, path: &str) -> Reply {
        match path {
            "/" | "/index.html" => body(INDEX_HTML, "text/html; charset=utf-8"),
            "/assets/monitor.js" => body(MONITOR_JS, "text/javascript; charset=utf-8"),
            "/assets/monitor.css" => body(MONITOR_CSS, "text/css; charset=utf-8"),
            "/metrics" => {
                let view = self.job.view();
                let now = self.current();
                let text = prometheus::encode(
                    &self.config.job_name,
                    &view,
                    (&now, &self.sampler),
                    self.store(),
                );
                body(&text, prometheus::CONTENT_TYPE)
            }
            "/api/job" => json(&self.job_document()),
            "/api/checkpoints" => json(&api::checkpoints(&self.job.view())),
            "/api/checkpoints/config" => match api::checkpoint_config(&self.job) {
                Some(config) => json(&config),
                None => text(404, "the job does not checkpoint\n"),
            },
            "/api/operators" => json(&api::operators(&self.current(), &self.sampler)),
            "/api/overview" => {
                let view = self.job.view();
                json(&api::Overview {
                    job: self.job_document(),
                    checkpoints: api::checkpoints(&view),
                    operators: api::operators(&self.current(), &self.sampler),
                })
            }
            _ => match path.strip_prefix("/api/checkpoints/details/") {
                Some(id) => self.details(id),
                None => text(404, "no such page\n"),
            },
        }
    }

    /// `/api/checkpoints/details/:id`: the newest run's checkpoint of that id.
    fn details(&self, id: &str) -> Reply {
        let Ok(id) = id.parse::<u64>() else {
            return text(400, "a checkpoint id is a number\n");
        };
        let view = self.job.view();
        match view.history.iter().rev().find(|c| c.stats.id == id) {
            Some(c) => json(&api::checkpoint(c)),
            None => text(404, "no such checkpoint in the history\n"),
        }
    }

    /// `POST /api/checkpoints`: triggers a checkpoint, with the token only.
    fn trigger(&self, request: &Request) -> Reply {
        let Some(token) = &self.config.action_token else {
            return text(
                403,
                "actions are disabled: the monitor has no action token\n",
            );
        };
        let given = request
            .header("Authorization")
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| same(g.as_bytes(), token.as_bytes())) {
            return text(401, "a valid bearer token is needed\n")
                .with_header("WWW-Authenticate", "Bearer");
        }
        if self.job.config.checkpoint.is_none() {
            return text(409, "the job does not checkpoint\n");
        }
        self.job.env().request_checkpoint();
        text(202, "checkpoint requested\n")
    }

    fn job_document(&self) -> api::Job {
        let view = self.job.view();
        api::job(
            &self.job,
            &view,
            &self.config.job_name,
            self.address.to_string(),
        )
    }

    fn now_ms(&self) -> u64 {
        self.job.env().clock.now_ms()
    }

    /// Bytes of the state directory's files and its segment files (a
    /// listing, read on this thread; never the store's own structures).
    fn store(&self) -> (u64, u64) {
        let Some(c) = &self.job.config.checkpoint else {
            return (0, 0);
        };
        let Ok(entries) = std::fs::read_dir(&c.dir) else {
            return (0, 0);
        };
        let (mut bytes, mut segments) = (0, 0);
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            bytes += meta.len();
            if entry.file_name().to_string_lossy().ends_with(".spseg") {
                segments += 1;
            }
        }
        (bytes, segments)
    }
}

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

fn body(text: &str, content_type: &str) -> Reply {
    Reply::new(200, content_type, text.as_bytes().to_vec())
}

fn text(status: u16, text: &str) -> Reply {
    Reply::new(
        status,
        "text/plain; charset=utf-8",
        text.as_bytes().to_vec(),
    )
}

fn json<T: serde::Serialize>(value: &T) -> Reply {
    match serde_json::to_vec(value) {
        Ok(bytes) => Reply::new(200, "application/json", bytes),
        Err(e) => text(500, &format!("cannot encode: {e}\n")),
    }
}
