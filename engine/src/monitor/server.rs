//! A small HTTP/1.1 server on `std::net`, for the monitor's thread only.
//!
//! Owns the listening socket and the wire format: reading one request from
//! an accepted connection within fixed limits and writing one response,
//! then closing (`Connection: close`, no keep-alive). Knows nothing of the
//! routes (`http.rs`). One connection at a time: a slow client can delay
//! other clients by at most [`READ_TIMEOUT`] plus [`WRITE_TIMEOUT`] (plus
//! [`LINGER`] after a refusal), never the job. Never panics on what a
//! client sends.
//!
//! Limits: the request line and headers together at most [`MAX_HEAD_BYTES`]
//! (431 beyond), a body at most [`MAX_BODY_BYTES`] (413, without reading
//! it), no `Transfer-Encoding` (501). Methods other than GET, HEAD and POST
//! are left to the routes.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// The request line and the headers, with their line ends, at most.
pub(super) const MAX_HEAD_BYTES: usize = 8 * 1024;
/// A request's body at most (only `POST /api/checkpoints` takes one, empty).
pub(super) const MAX_BODY_BYTES: usize = 4 * 1024;
/// Time a client has to send its whole request.
pub(super) const READ_TIMEOUT: Duration = Duration::from_secs(3);
/// Time a client has to take the whole response.
pub(super) const WRITE_TIMEOUT: Duration = Duration::from_secs(3);
/// At most this long spent reading what a refused client still sends.
const LINGER: Duration = Duration::from_millis(500);
/// How often the idle server looks for a connection (and for its stop flag).
pub(super) const POLL_EVERY: Duration = Duration::from_millis(20);

/// A parsed request.
pub(super) struct Request {
    /// `GET`, `HEAD`, `POST`, ... as sent.
    pub(super) method: String,
    /// The target without its query.
    pub(super) path: String,
    headers: Vec<(String, String)>,
}

impl Request {
    /// The first header of that name (case-insensitive), trimmed.
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A response: status, headers (`Content-Length` and `Connection` are
/// added when written), body.
pub(super) struct Reply {
    pub(super) status: u16,
    pub(super) headers: Vec<(&'static str, String)>,
    pub(super) body: Vec<u8>,
}

impl Reply {
    pub(super) fn new(status: u16, content_type: &str, body: Vec<u8>) -> Self {
        Self {
            status,
            headers: vec![("Content-Type", content_type.to_string())],
            body,
        }
    }

    pub(super) fn with_header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_string()));
        self
    }
}

/// The listening socket, polled (nonblocking) so that the serving thread
/// sees its stop flag within [`POLL_EVERY`].
pub(super) struct Listener {
    socket: TcpListener,
}

impl Listener {
    pub(super) fn bind(address: SocketAddr) -> std::io::Result<Self> {
        let socket = TcpListener::bind(address)?;
        socket.set_nonblocking(true)?;
        Ok(Self { socket })
    }

    pub(super) fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// A new connection, or `None` after waiting up to [`POLL_EVERY`] for
    /// one. An error of accept (too many open files, a connection reset
    /// before it was taken) is reported and the server carries on.
    pub(super) fn accept(&self) -> Option<TcpStream> {
        match self.socket.accept() {
            Ok((stream, _)) => Some(stream),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(POLL_EVERY);
                None
            }
            Err(e) => {
                eprintln!("spate: monitor: accept failed: {e}");
                std::thread::sleep(POLL_EVERY);
                None
            }
        }
    }
}

/// Why no request could be read.
enum Refusal {
    /// Answer with this status and close.
    Status(u16, &'static str),
    /// The client went away or was too slow: close without a word.
    Gone,
}

/// Serves one connection: reads a request, answers it with `route` (or an
/// error of the limits), closes. Bounded in time by the two timeouts.
pub(super) fn serve(stream: TcpStream, route: impl FnOnce(&Request) -> Reply) {
    let mut stream = stream;
    if stream.set_nonblocking(false).is_err() {
        return;
    }
    let (reply, head_only, refused) = match read_request(&mut stream) {
        Ok(request) => (route(&request), request.method == "HEAD", false),
        Err(Refusal::Status(status, why)) => (
            Reply::new(status, "text/plain; charset=utf-8", why.as_bytes().to_vec()),
            false,
            true,
        ),
        Err(Refusal::Gone) => return,
    };
    // A client that went away or stopped reading is no concern of the job's.
    let _ = write_reply(&mut stream, &reply, head_only);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    if refused {
        linger(&mut stream);
    }
}

/// After a refusal the client may still be sending what was not read;
/// closing now would reset the connection and could lose the reply. Reads
/// (and drops) a bounded amount for a short while, until the client closes.
fn linger(stream: &mut TcpStream) {
    let deadline = Instant::now() + LINGER;
    let mut chunk = [0u8; 4096];
    let mut left = 64 * 1024usize;
    while left > 0 {
        match read_by(stream, &mut chunk, deadline) {
            Ok(n) => left = left.saturating_sub(n),
            Err(_) => break,
        }
    }
}

/// Reads the head (and a body, which it discards) within the limits.
fn read_request(stream: &mut TcpStream) -> Result<Request, Refusal> {
    let deadline = Instant::now() + READ_TIMEOUT;
    let mut buffer = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(end) = find(&buffer, b"\r\n\r\n") {
            break end;
        }
        if buffer.len() >= MAX_HEAD_BYTES {
            return Err(Refusal::Status(431, "request header fields too large\n"));
        }
        let mut chunk = [0u8; 1024];
        let room = (MAX_HEAD_BYTES + 4 - buffer.len()).min(chunk.len());
        let n = read_by(stream, &mut chunk[..room], deadline)?;
        buffer.extend_from_slice(&chunk[..n]);
    };
    if head_end > MAX_HEAD_BYTES {
        return Err(Refusal::Status(431, "request header fields too large\n"));
    }
    let request = parse_head(&buffer[..head_end])?;
    if request.header("Transfer-Encoding").is_some() {
        return Err(Refusal::Status(501, "no transfer encoding is accepted\n"));
    }
    let length = match request.header("Content-Length") {
        None => 0,
        Some(v) => v
            .parse::<u64>()
            .map_err(|_| Refusal::Status(400, "a bad Content-Length\n"))?,
    };
    if length > MAX_BODY_BYTES as u64 {
        return Err(Refusal::Status(413, "the request body is too large\n"));
    }
    // The body is not used by any route; read it so the reply is not
    // answered by a reset.
    let mut left = (length as usize).saturating_sub(buffer.len() - head_end - 4);
    let mut chunk = [0u8; 1024];
    while left > 0 {
        let n = read_by(stream, &mut chunk[..left.min(1024)], deadline)?;
        left -= n;
    }
    Ok(request)
}

/// One read that ends by `deadline`; a closed connection or the deadline
/// is [`Refusal::Gone`].
fn read_by(stream: &mut TcpStream, into: &mut [u8], deadline: Instant) -> Result<usize, Refusal> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
        return Err(Refusal::Gone);
    }
    match stream.read(into) {
        Ok(0) | Err(_) => Err(Refusal::Gone),
        Ok(n) => Ok(n),
    }
}

/// The request line and headers (without the blank line).
fn parse_head(head: &[u8]) -> Result<Request, Refusal> {
    const BAD: Refusal = Refusal::Status(400, "a malformed request\n");
    let head = std::str::from_utf8(head).map_err(|_| BAD)?;
    let mut lines = head.split("\r\n");
    let mut parts = lines.next().ok_or(BAD)?.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(BAD);
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() || !target.starts_with('/') {
        return Err(BAD);
    }
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line.split_once(':').ok_or(BAD)?;
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(BAD);
        }
        headers.push((name.to_string(), value.trim().to_string()));
    }
    let path = target.split('?').next().unwrap_or("").to_string();
    Ok(Request {
        method: method.to_string(),
        path,
        headers,
    })
}

fn write_reply(stream: &mut TcpStream, reply: &Reply, head_only: bool) -> std::io::Result<()> {
    let deadline = Instant::now() + WRITE_TIMEOUT;
    let mut out = format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status));
    for (name, value) in &reply.headers {
        out += &format!("{name}: {value}\r\n");
    }
    out += &format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        reply.body.len()
    );
    let mut bytes = out.into_bytes();
    if !head_only {
        bytes.extend_from_slice(&reply.body);
    }
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ErrorKind::TimedOut.into());
        }
        stream.set_write_timeout(Some(left))?;
        match stream.write(rest)? {
            0 => return Err(ErrorKind::WriteZero.into()),
            n => rest = &rest[n..],
        }
    }
    stream.flush()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse_or_are_refused() {
        let r = parse_head(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAuthorization:  Bearer t ")
            .ok()
            .unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/metrics"));
        assert_eq!(r.header("authorization"), Some("Bearer t"));
        for bad in [
            &b"GET /"[..],
            b"GET / HTTP/1.1 x",
            b"GET x HTTP/1.1",
            b"GET / FTP/1.0",
            b"GET / HTTP/1.1\r\nno colon",
            b"GET / HTTP/1.1\r\nbad name: v",
            b"\xff / HTTP/1.1",
        ] {
            assert!(parse_head(bad).is_err(), "{bad:?}");
        }
    }
}
