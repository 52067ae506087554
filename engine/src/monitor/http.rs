//! The monitor's server loop and routes, on the `spate-monitor` thread.
//!
//! One thread serves every request in turn and takes a sample of the job's
//! figures every second between requests (`tiny_http` parses requests on
//! threads of its own). Every route answers `GET` (and `HEAD`); the one
//! action, `POST /api/checkpoints`, needs the configured bearer token and is
//! refused when none is configured. Every response forbids scripts, styles
//! and connections from anywhere but the monitor itself (Content Security
//! Policy), sniffing and caching.

use super::sampler::{Sample, Sampler};
use super::{api, prometheus, MonitorConfig};
use crate::watch::Supervision;
use std::io::Cursor;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tiny_http::{Header, Method, Request, Response};

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
    job: Arc<Supervision>,
    sampler: Sampler,
}

type Reply = Response<Cursor<Vec<u8>>>;

impl Service {
    pub(super) fn new(config: MonitorConfig, job: Arc<Supervision>) -> Self {
        Self {
            config,
            job,
            sampler: Sampler::default(),
        }
    }

    /// Serves until `stop` is set (and the server unblocked).
    pub(super) fn serve(mut self, server: &tiny_http::Server, stop: &AtomicBool) {
        let mut next_sample = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            if Instant::now() >= next_sample {
                self.sample();
                next_sample = Instant::now() + SAMPLE_EVERY;
            }
            let wait = next_sample.saturating_duration_since(Instant::now());
            match server.recv_timeout(wait) {
                Ok(Some(request)) => self.handle(request),
                Ok(None) => {}
                Err(_) => break, // unblocked by the monitor's drop
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

    fn handle(&mut self, request: Request) {
        let path = request.url().split('?').next().unwrap_or("").to_string();
        let reply = match request.method() {
            Method::Get | Method::Head => self.get(&path),
            Method::Post if path == "/api/checkpoints" => self.trigger(&request),
            _ => text(405, "the monitor is read-only: GET or HEAD\n")
                .with_header(header("Allow", "GET, HEAD")),
        };
        let reply = SECURITY_HEADERS
            .iter()
            .fold(reply, |r, (name, value)| r.with_header(header(name, value)));
        // A client that went away is no concern of the job's.
        let _ = request.respond(reply);
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
            .headers()
            .iter()
            .find(|h| h.field.equiv("Authorization"))
            .and_then(|h| h.value.as_str().strip_prefix("Bearer "));
        if !given.is_some_and(|g| same(g.as_bytes(), token.as_bytes())) {
            return text(401, "a valid bearer token is needed\n")
                .with_header(header("WWW-Authenticate", "Bearer"));
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
            self.config.address.to_string(),
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

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("static header is valid")
}

fn body(text: &str, content_type: &str) -> Reply {
    Response::from_data(text.as_bytes().to_vec()).with_header(header("Content-Type", content_type))
}

fn text(status: u16, text: &str) -> Reply {
    body(text, "text/plain; charset=utf-8").with_status_code(status)
}

fn json<T: serde::Serialize>(value: &T) -> Reply {
    match serde_json::to_vec(value) {
        Ok(bytes) => {
            Response::from_data(bytes).with_header(header("Content-Type", "application/json"))
        }
        Err(e) => text(500, &format!("cannot encode: {e}\n")),
    }
}
