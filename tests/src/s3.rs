//! The local S3 test server (moto) that the remote-tier tests use: its
//! endpoint comes from `SPATE_S3_ENDPOINT` (for example
//! `http://127.0.0.1:5123`; `.ci/run` starts one). `SPATE_SKIP_S3_TESTS=1`
//! skips those tests; without either, they fail and say how to start one.
//!
//! A file of its own so that other crates' tests (`bench/tests/cli.rs`)
//! include it with `#[path]`: it uses nothing but `std`.

use std::io::{Read, Write};

/// The bucket the tests use (created if missing).
pub const BUCKET: &str = "spate-tests";

/// Credentials the test server accepts (it checks none); set on the
/// child processes and in this process's tier builders.
pub const TEST_CREDENTIALS: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "spate-test"),
    ("AWS_SECRET_ACCESS_KEY", "spate-test"),
    ("AWS_REGION", "us-east-1"),
];

/// The server's endpoint, or `None` when S3 tests are skipped. Panics
/// with instructions when neither is configured.
pub fn endpoint() -> Option<String> {
    if std::env::var("SPATE_SKIP_S3_TESTS").is_ok_and(|v| v == "1") {
        eprintln!("skipped: S3 tests (SPATE_SKIP_S3_TESTS=1)");
        return None;
    }
    let Ok(endpoint) = std::env::var("SPATE_S3_ENDPOINT") else {
        panic!(
            "the remote-tier tests need an S3 server: start one with \
             `pip install 'moto[server]' && moto_server -H 127.0.0.1 -p 5123` and set \
             SPATE_S3_ENDPOINT=http://127.0.0.1:5123 (.ci/run does both), or set \
             SPATE_SKIP_S3_TESTS=1 to skip them"
        );
    };
    create_bucket(&endpoint);
    Some(endpoint)
}

/// An `s3://` URL for `prefix` in the test bucket, on the test server.
pub fn url(endpoint: &str, prefix: &str) -> String {
    format!("s3://{BUCKET}/{prefix}?endpoint={endpoint}&allow_http=true")
}

/// The server's answer to `ListMultipartUploads` for keys under `prefix`
/// (XML; one plain HTTP request, the test server needs no signature).
pub fn multipart_uploads(endpoint: &str, prefix: &str) -> String {
    let host = endpoint
        .strip_prefix("http://")
        .unwrap_or(endpoint)
        .trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(
        s,
        "GET /{BUCKET}?uploads&prefix={prefix} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply
}

/// Creates the bucket with one plain HTTP request (the test server
/// needs no signature); an existing bucket is fine.
fn create_bucket(endpoint: &str) {
    let host = endpoint
        .strip_prefix("http://")
        .unwrap_or(endpoint)
        .trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(host).unwrap_or_else(|e| {
        panic!(
            "SPATE_S3_ENDPOINT={endpoint}: cannot connect ({e}); is moto_server running? \
             (set SPATE_SKIP_S3_TESTS=1 to skip the S3 tests)"
        )
    });
    write!(
        s,
        "PUT /{BUCKET} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    assert!(
        reply.starts_with("HTTP/1.1 200") || reply.contains("BucketAlreadyOwnedByYou"),
        "creating bucket {BUCKET} on {endpoint}: {}",
        reply.lines().next().unwrap_or("")
    );
}
