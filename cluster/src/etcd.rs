//! The real [`Coordination`] backend: etcd v3 through its JSON gRPC gateway
//! (`POST /v3/kv/range` and friends) over plain HTTP/1.1 on a
//! [`std::net::TcpStream`].
//!
//! Owns the HTTP framing (one connection per request, `Connection: close`;
//! `Content-Length` or chunked replies) and the JSON mapping (keys and values
//! base64, 64-bit integers as decimal strings, fields at their default value
//! omitted). Must not be called on a glommio reactor: every call blocks for
//! up to the request timeout.
//!
//! Only `http://` endpoints: TLS to etcd (and etcd's authentication) is not
//! supported yet.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};

use crate::kv::{
    CompareOp, CompareTarget, CoordError, Coordination, KeyRange, KeyValue, Lease, LeaseId,
    RangeResponse, Revision, Txn, TxnOp, TxnOpResponse, TxnResponse,
};

/// The largest reply accepted, in bytes (a bound against a misbehaving
/// peer; coordination replies are a few kilobytes).
const MAX_REPLY_BYTES: usize = 16 << 20;

/// An endpoint that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// Not `http://host:port`.
    #[error("etcd endpoint {endpoint:?}: expected http://host:port ({detail})")]
    Invalid {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong.
        detail: String,
    },
}

/// A blocking etcd v3 client over the JSON gateway.
#[derive(Clone, Debug)]
pub struct EtcdClient {
    /// `host:port`, for the `Host` header and messages.
    host: String,
    /// Where to connect.
    addr: SocketAddr,
    /// Bound on connecting, and on each read and write of a request.
    timeout: Duration,
}

impl EtcdClient {
    /// A client of the etcd at `endpoint` (`http://127.0.0.1:2379`; a
    /// trailing `/` is fine; `etcd://` is accepted as a synonym of
    /// `http://`). Each request is bounded by `timeout` (connect, and each
    /// read and write).
    pub fn new(endpoint: &str, timeout: Duration) -> Result<Self, EndpointError> {
        let invalid = |detail: &str| EndpointError::Invalid {
            endpoint: endpoint.to_string(),
            detail: detail.to_string(),
        };
        let rest = endpoint
            .strip_prefix("http://")
            .or_else(|| endpoint.strip_prefix("etcd://"))
            .ok_or_else(|| invalid("only plain http:// is supported"))?;
        let host = rest.trim_end_matches('/');
        if host.is_empty() || host.contains('/') {
            return Err(invalid("no path allowed after host:port"));
        }
        let addr = host
            .to_socket_addrs()
            .map_err(|e| invalid(&e.to_string()))?
            .next()
            .ok_or_else(|| invalid("resolves to no address"))?;
        Ok(EtcdClient {
            host: host.to_string(),
            addr,
            timeout,
        })
    }

    /// The endpoint's `host:port`.
    pub fn host(&self) -> &str {
        &self.host
    }

    fn unavailable(&self, operation: &'static str, source: std::io::Error) -> CoordError {
        CoordError::Unavailable {
            endpoint: self.host.clone(),
            operation,
            source,
        }
    }

    fn malformed(&self, operation: &'static str, detail: impl Into<String>) -> CoordError {
        CoordError::Malformed {
            endpoint: self.host.clone(),
            operation,
            detail: detail.into(),
        }
    }

    /// POSTs `body` to `path`; returns the HTTP status and the reply's JSON.
    fn call(
        &self,
        operation: &'static str,
        path: &str,
        body: &Value,
    ) -> Result<(u16, Value), CoordError> {
        let body = body.to_string();
        let io = |e| self.unavailable(operation, e);
        let mut stream = TcpStream::connect_timeout(&self.addr, self.timeout).map_err(io)?;
        stream.set_read_timeout(Some(self.timeout)).map_err(io)?;
        stream.set_write_timeout(Some(self.timeout)).map_err(io)?;
        let _ = stream.set_nodelay(true);
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.host,
            body.len()
        );
        stream.write_all(request.as_bytes()).map_err(io)?;
        let mut reader = BufReader::new(stream);
        let (status, bytes) = read_reply(&mut reader).map_err(|e| match e {
            ReplyError::Io(e) => self.unavailable(operation, e),
            ReplyError::Malformed(d) => self.malformed(operation, d),
        })?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
            self.malformed(
                operation,
                format!("HTTP {status}, body not JSON ({e}): {}", preview(&bytes)),
            )
        })?;
        Ok((status, value))
    }

    /// POSTs and turns an error reply into [`CoordError::Server`].
    fn call_ok(
        &self,
        operation: &'static str,
        path: &str,
        body: &Value,
    ) -> Result<Value, CoordError> {
        let (status, value) = self.call(operation, path, body)?;
        if status == 200 && value.get("error").is_none() {
            return Ok(value);
        }
        Err(self.server_error(operation, status, &value))
    }

    fn server_error(&self, operation: &'static str, status: u16, value: &Value) -> CoordError {
        let code = value.get("code").and_then(Value::as_i64).unwrap_or(-1);
        let message = value
            .get("message")
            .or_else(|| value.get("error"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("HTTP {status}: {value}"));
        CoordError::Server {
            endpoint: self.host.clone(),
            operation,
            code,
            message,
        }
    }

    fn revision(&self, operation: &'static str, reply: &Value) -> Result<Revision, CoordError> {
        int_field(reply.get("header").unwrap_or(&Value::Null), "revision")
            .map_err(|d| self.malformed(operation, d))
    }

    fn kvs(&self, operation: &'static str, reply: &Value) -> Result<Vec<KeyValue>, CoordError> {
        let Some(list) = reply.get("kvs") else {
            return Ok(Vec::new());
        };
        let list = list
            .as_array()
            .ok_or_else(|| self.malformed(operation, "kvs is not an array"))?;
        list.iter()
            .map(|kv| parse_kv(kv).map_err(|d| self.malformed(operation, d)))
            .collect()
    }
}

fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

fn range_json(range: &KeyRange) -> Value {
    let mut v = json!({ "key": b64(range.start()) });
    if let Some(end) = range.end() {
        v["range_end"] = Value::String(b64(&end));
    }
    v
}

fn put_json(key: &[u8], value: &[u8], lease: Option<LeaseId>) -> Value {
    let mut v = json!({ "key": b64(key), "value": b64(value) });
    if let Some(lease) = lease {
        v["lease"] = Value::String(lease.0.to_string());
    }
    v
}

fn txn_json(txn: &Txn) -> Value {
    let compare: Vec<Value> = txn
        .compare
        .iter()
        .map(|c| {
            let result = match c.op {
                CompareOp::Equal => "EQUAL",
                CompareOp::NotEqual => "NOT_EQUAL",
                CompareOp::Greater => "GREATER",
                CompareOp::Less => "LESS",
            };
            let mut v = json!({ "key": b64(&c.key), "result": result });
            match &c.target {
                CompareTarget::CreateRevision(r) => {
                    v["target"] = json!("CREATE");
                    v["create_revision"] = json!(r.to_string());
                }
                CompareTarget::ModRevision(r) => {
                    v["target"] = json!("MOD");
                    v["mod_revision"] = json!(r.to_string());
                }
                CompareTarget::Version(n) => {
                    v["target"] = json!("VERSION");
                    v["version"] = json!(n.to_string());
                }
                CompareTarget::Value(bytes) => {
                    v["target"] = json!("VALUE");
                    v["value"] = json!(b64(bytes));
                }
            }
            v
        })
        .collect();
    let ops = |ops: &[TxnOp]| -> Vec<Value> {
        ops.iter()
            .map(|op| match op {
                TxnOp::Put { key, value, lease } => {
                    json!({ "request_put": put_json(key, value, *lease) })
                }
                TxnOp::Get(range) => json!({ "request_range": range_json(range) }),
                TxnOp::Delete(range) => json!({ "request_delete_range": range_json(range) }),
            })
            .collect()
    };
    json!({ "compare": compare, "success": ops(&txn.success), "failure": ops(&txn.failure) })
}

/// A 64-bit integer field: the gateway writes them as decimal strings and
/// omits them at 0.
fn int_field(v: &Value, name: &str) -> Result<i64, String> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::String(s)) => s
            .parse()
            .map_err(|_| format!("{name} is not an integer: {s:?}")),
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| format!("{name} is not a 64-bit integer: {n}")),
        Some(other) => Err(format!("{name} is not an integer: {other}")),
    }
}

fn bytes_field(v: &Value, name: &str) -> Result<Vec<u8>, String> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => B64
            .decode(s)
            .map_err(|e| format!("{name} is not base64 ({e})")),
        Some(other) => Err(format!("{name} is not a string: {other}")),
    }
}

fn parse_kv(v: &Value) -> Result<KeyValue, String> {
    Ok(KeyValue {
        key: bytes_field(v, "key")?,
        value: bytes_field(v, "value")?,
        create_revision: int_field(v, "create_revision")?,
        mod_revision: int_field(v, "mod_revision")?,
        version: int_field(v, "version")?,
        lease: int_field(v, "lease")?,
    })
}

fn preview(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]);
    s.into_owned()
}

enum ReplyError {
    Io(std::io::Error),
    Malformed(String),
}

impl From<std::io::Error> for ReplyError {
    fn from(e: std::io::Error) -> Self {
        ReplyError::Io(e)
    }
}

fn read_line(r: &mut impl BufRead) -> Result<String, ReplyError> {
    let mut line = Vec::new();
    r.by_ref()
        .take(8192)
        .read_until(b'\n', &mut line)
        .map_err(ReplyError::Io)?;
    if !line.ends_with(b"\n") {
        return Err(ReplyError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "reply ended inside a line",
        )));
    }
    String::from_utf8(line)
        .map(|s| s.trim_end().to_string())
        .map_err(|_| ReplyError::Malformed("header line is not UTF-8".into()))
}

/// Reads an HTTP/1.1 reply: status, headers, and a body framed by
/// `Content-Length`, chunked encoding, or the connection's end.
fn read_reply(r: &mut impl BufRead) -> Result<(u16, Vec<u8>), ReplyError> {
    let status_line = read_line(r)?;
    let status: u16 = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| {
            ReplyError::Malformed(format!("not an HTTP status line: {status_line:?}"))
        })?;
    let mut content_length = None;
    let mut chunked = false;
    loop {
        let line = read_line(r)?;
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(ReplyError::Malformed(format!("bad header line {line:?}")));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value
                .parse()
                .map_err(|_| ReplyError::Malformed(format!("bad Content-Length {value:?}")))?;
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let line = read_line(r)?;
            let size_hex = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_hex, 16)
                .map_err(|_| ReplyError::Malformed(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                // Trailers, if any, end with an empty line; the connection
                // closes after them, so they need not be read.
                break;
            }
            if body.len() + size > MAX_REPLY_BYTES {
                return Err(ReplyError::Malformed("reply too large".into()));
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])?;
            let crlf = read_line(r)?;
            if !crlf.is_empty() {
                return Err(ReplyError::Malformed("chunk not followed by CRLF".into()));
            }
        }
    } else if let Some(n) = content_length {
        if n > MAX_REPLY_BYTES {
            return Err(ReplyError::Malformed("reply too large".into()));
        }
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    } else {
        r.take(MAX_REPLY_BYTES as u64 + 1).read_to_end(&mut body)?;
        if body.len() > MAX_REPLY_BYTES {
            return Err(ReplyError::Malformed("reply too large".into()));
        }
    }
    Ok((status, body))
}

impl Coordination for EtcdClient {
    fn range(&self, range: &KeyRange) -> Result<RangeResponse, CoordError> {
        const OP: &str = "range";
        let reply = self.call_ok(OP, "/v3/kv/range", &range_json(range))?;
        Ok(RangeResponse {
            revision: self.revision(OP, &reply)?,
            kvs: self.kvs(OP, &reply)?,
        })
    }

    fn put(
        &self,
        key: &[u8],
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> Result<Revision, CoordError> {
        const OP: &str = "put";
        let reply = self.call(OP, "/v3/kv/put", &put_json(key, value, lease))?;
        match reply {
            (200, v) if v.get("error").is_none() => self.revision(OP, &v),
            (status, v) => Err(self.lease_or_server_error(OP, status, &v, lease)),
        }
    }

    fn txn(&self, txn: &Txn) -> Result<TxnResponse, CoordError> {
        const OP: &str = "txn";
        let lease = txn
            .success
            .iter()
            .chain(&txn.failure)
            .find_map(|op| match op {
                TxnOp::Put { lease, .. } => *lease,
                _ => None,
            });
        let (status, reply) = self.call(OP, "/v3/kv/txn", &txn_json(txn))?;
        if status != 200 || reply.get("error").is_some() {
            return Err(self.lease_or_server_error(OP, status, &reply, lease));
        }
        let succeeded = reply
            .get("succeeded")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let branch = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        let empty = Vec::new();
        let responses = match reply.get("responses") {
            None => &empty,
            Some(Value::Array(list)) => list,
            Some(_) => return Err(self.malformed(OP, "responses is not an array")),
        };
        if responses.len() != branch.len() {
            return Err(self.malformed(
                OP,
                format!(
                    "{} responses for {} operations",
                    responses.len(),
                    branch.len()
                ),
            ));
        }
        let responses = branch
            .iter()
            .zip(responses)
            .map(|(op, r)| {
                Ok(match op {
                    TxnOp::Put { .. } => TxnOpResponse::Put,
                    TxnOp::Get(_) => TxnOpResponse::Get(
                        self.kvs(OP, r.get("response_range").unwrap_or(&Value::Null))?,
                    ),
                    TxnOp::Delete(_) => TxnOpResponse::Delete(
                        int_field(
                            r.get("response_delete_range").unwrap_or(&Value::Null),
                            "deleted",
                        )
                        .map_err(|d| self.malformed(OP, d))? as u64,
                    ),
                })
            })
            .collect::<Result<_, CoordError>>()?;
        Ok(TxnResponse {
            succeeded,
            revision: self.revision(OP, &reply)?,
            responses,
        })
    }

    fn delete(&self, range: &KeyRange) -> Result<u64, CoordError> {
        const OP: &str = "deleterange";
        let reply = self.call_ok(OP, "/v3/kv/deleterange", &range_json(range))?;
        let deleted = int_field(&reply, "deleted").map_err(|d| self.malformed(OP, d))?;
        Ok(deleted.max(0) as u64)
    }

    fn lease_grant(&self, ttl_s: i64) -> Result<Lease, CoordError> {
        const OP: &str = "lease grant";
        let reply = self.call_ok(OP, "/v3/lease/grant", &json!({ "TTL": ttl_s.to_string() }))?;
        let id = int_field(&reply, "ID").map_err(|d| self.malformed(OP, d))?;
        let granted = int_field(&reply, "TTL").map_err(|d| self.malformed(OP, d))?;
        if id == 0 {
            return Err(self.malformed(OP, "lease id 0"));
        }
        Ok(Lease {
            id: LeaseId(id),
            ttl_s: granted,
        })
    }

    fn lease_keepalive(&self, lease: LeaseId) -> Result<i64, CoordError> {
        const OP: &str = "lease keepalive";
        // A streaming call: one request in, one `{"result": ...}` out, then
        // the request body ends and so does the stream.
        let reply = self.call_ok(
            OP,
            "/v3/lease/keepalive",
            &json!({ "ID": lease.0.to_string() }),
        )?;
        let result = reply.get("result").unwrap_or(&reply);
        let ttl_s = int_field(result, "TTL").map_err(|d| self.malformed(OP, d))?;
        if ttl_s <= 0 {
            return Err(CoordError::LeaseNotFound { lease });
        }
        Ok(ttl_s)
    }

    fn lease_revoke(&self, lease: LeaseId) -> Result<(), CoordError> {
        const OP: &str = "lease revoke";
        let (status, reply) = self.call(
            OP,
            "/v3/lease/revoke",
            &json!({ "ID": lease.0.to_string() }),
        )?;
        if status == 200 && reply.get("error").is_none() {
            return Ok(());
        }
        Err(self.lease_or_server_error(OP, status, &reply, Some(lease)))
    }
}

impl EtcdClient {
    /// gRPC NOT_FOUND (5) with etcd's "requested lease not found" is a lease
    /// that expired or was revoked; anything else is a server error.
    fn lease_or_server_error(
        &self,
        operation: &'static str,
        status: u16,
        reply: &Value,
        lease: Option<LeaseId>,
    ) -> CoordError {
        let err = self.server_error(operation, status, reply);
        match (&err, lease) {
            (
                CoordError::Server {
                    code: 5, message, ..
                },
                Some(lease),
            ) if message.contains("lease not found") => CoordError::LeaseNotFound { lease },
            _ => err,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_chunked_and_sized_replies() {
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\nGrpc-Trailer: x\r\n\r\n";
        let (status, body) = read_reply(&mut &chunked[..]).ok().unwrap();
        assert_eq!((status, body.as_slice()), (200, &b"{\"a\":1}"[..]));
        let sized = b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}";
        let (status, body) = read_reply(&mut &sized[..]).ok().unwrap();
        assert_eq!((status, body.as_slice()), (404, &b"{}"[..]));
    }

    #[test]
    fn garbage_replies_are_errors_not_panics() {
        for bad in [
            &b"SSH-2.0-x\r\n"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1",
        ] {
            assert!(read_reply(&mut &bad[..]).is_err());
        }
    }

    #[test]
    fn integers_come_as_strings_or_numbers_and_default_to_zero() {
        let v = json!({ "a": "12", "b": 7, "c": "x" });
        assert_eq!(int_field(&v, "a"), Ok(12));
        assert_eq!(int_field(&v, "b"), Ok(7));
        assert_eq!(int_field(&v, "missing"), Ok(0));
        assert!(int_field(&v, "c").is_err());
    }

    #[test]
    fn endpoints_must_be_plain_http() {
        assert!(EtcdClient::new("https://127.0.0.1:2379", Duration::from_secs(1)).is_err());
        assert!(EtcdClient::new("http://127.0.0.1:2379/v3", Duration::from_secs(1)).is_err());
        let c = EtcdClient::new("etcd://127.0.0.1:2379/", Duration::from_secs(1)).unwrap();
        assert_eq!(c.host(), "127.0.0.1:2379");
    }
}
