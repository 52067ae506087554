//! The Kafka protocol requests the exactly-once sink sends itself when a job
//! is restored: `FindCoordinator` (API key 10, version 1, key type 1: the
//! coordinator of a transactional id), `EndTxn` (API key 26, version 1) and
//! `InitProducerId` (API key 22, version 3); and `Fetch` (API key 1,
//! version 4), with which tests read what transactions left in a partition,
//! markers included.
//!
//! librdkafka cannot take over a transaction another producer left open,
//! but the coordinator does not care who sends `EndTxn`: it checks the
//! transactional id, the producer id and the epoch. So a restore that finds
//! a transaction pre-committed for a checkpoint it includes commits it here,
//! with the producer id and epoch the sink recorded at pre-commit (see the
//! section "Kafka transactions" of docs/checkpoints.md). `InitProducerId` on
//! a transactional id bumps its epoch, which aborts the transaction left
//! open under it and fences any zombie producer still using it.
//!
//! Only plaintext connections: a cluster that requires TLS or SASL gets
//! [`ProtocolError::Unsupported`] (the sink refuses to start rather than
//! leave a pre-committed transaction undecided). Every response is parsed
//! with bounds checks: bytes from the network never panic.
//!
//! Owns: the wire encoding of these requests. Must not touch: librdkafka.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// An error of a protocol exchange.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The connection failed.
    #[error("{what} with {address}: {error}")]
    Io {
        /// The exchange.
        what: &'static str,
        /// The broker.
        address: String,
        /// The underlying error.
        error: std::io::Error,
    },
    /// The broker's answer was malformed.
    #[error("malformed {what} response from {address}: {reason}")]
    Malformed {
        /// The exchange.
        what: &'static str,
        /// The broker.
        address: String,
        /// What was wrong.
        reason: String,
    },
    /// The broker answered with a Kafka error code.
    #[error(
        "{what} for transactional id {transactional_id:?} failed: Kafka error {code} ({name})"
    )]
    Kafka {
        /// The exchange.
        what: &'static str,
        /// The transactional id.
        transactional_id: String,
        /// The Kafka error code.
        code: i16,
        /// Its name, when known.
        name: &'static str,
    },
    /// The cluster needs a connection this client does not implement.
    #[error("{0}")]
    Unsupported(String),
}

/// The name of a Kafka error code this module acts on.
pub fn error_name(code: i16) -> &'static str {
    match code {
        0 => "NONE",
        14 => "COORDINATOR_LOAD_IN_PROGRESS",
        15 => "COORDINATOR_NOT_AVAILABLE",
        16 => "NOT_COORDINATOR",
        47 => "INVALID_PRODUCER_EPOCH",
        48 => "INVALID_TXN_STATE",
        49 => "INVALID_PRODUCER_ID_MAPPING",
        51 => "CONCURRENT_TRANSACTIONS",
        53 => "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
        90 => "PRODUCER_FENCED",
        _ => "see the Kafka protocol's error codes",
    }
}

/// Whether retrying the same request later may succeed.
pub fn is_retriable(code: i16) -> bool {
    matches!(code, 14 | 15 | 16 | 51)
}

const CLIENT_ID: &str = "spate-kafka";
const TIMEOUT: Duration = Duration::from_secs(10);

/// Appends a Kafka `STRING` (int16 length, bytes).
fn put_string(out: &mut Vec<u8>, s: &str) {
    let len = i16::try_from(s.len()).expect("Kafka strings are below 32 KiB");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A bounds-checked reader over a response body.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(format!(
                "{n} bytes wanted at byte {} of {}",
                self.at,
                self.bytes.len()
            ));
        };
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn i16(&mut self) -> Result<i16, String> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self) -> Result<i32, String> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i64(&mut self) -> Result<i64, String> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }
    /// A `NULLABLE_STRING` (`None` for length -1).
    fn string(&mut self) -> Result<Option<String>, String> {
        let len = self.i16()?;
        if len < 0 {
            return Ok(None);
        }
        let b = self.take(len as usize)?;
        Ok(Some(String::from_utf8_lossy(b).into_owned()))
    }
}

/// One connection to one broker.
pub struct Connection {
    stream: TcpStream,
    address: String,
    correlation: i32,
}

impl Connection {
    /// Connects to `address` (`host:port`).
    pub fn connect(address: &str) -> Result<Self, ProtocolError> {
        let io = |error| ProtocolError::Io {
            what: "connecting",
            address: address.to_string(),
            error,
        };
        let addr = address
            .to_socket_addrs()
            .map_err(io)?
            .next()
            .ok_or_else(|| {
                io(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no address",
                ))
            })?;
        let stream = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(io)?;
        stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
        stream.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
        let _ = stream.set_nodelay(true);
        Ok(Self {
            stream,
            address: address.to_string(),
            correlation: 0,
        })
    }

    /// Sends one request (header v1, or v2 for a `flexible` version) and
    /// returns the response body after the response header (v0, or v1).
    fn exchange(
        &mut self,
        what: &'static str,
        api_key: i16,
        api_version: i16,
        flexible: bool,
        body: &[u8],
    ) -> Result<Vec<u8>, ProtocolError> {
        self.correlation = self.correlation.wrapping_add(1);
        let mut request = Vec::with_capacity(64 + body.len());
        request.extend_from_slice(&[0; 4]);
        request.extend_from_slice(&api_key.to_be_bytes());
        request.extend_from_slice(&api_version.to_be_bytes());
        request.extend_from_slice(&self.correlation.to_be_bytes());
        put_string(&mut request, CLIENT_ID);
        if flexible {
            request.push(0); // no tagged fields
        }
        request.extend_from_slice(body);
        let size = (request.len() - 4) as i32;
        request[..4].copy_from_slice(&size.to_be_bytes());
        let io = |error| ProtocolError::Io {
            what,
            address: self.address.clone(),
            error,
        };
        self.stream.write_all(&request).map_err(io)?;
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size).map_err(io)?;
        let size = i32::from_be_bytes(size);
        let malformed = |reason: String| ProtocolError::Malformed {
            what,
            address: self.address.clone(),
            reason,
        };
        if !(4..=1 << 20).contains(&size) {
            return Err(malformed(format!("response size {size}")));
        }
        let mut response = vec![0u8; size as usize];
        self.stream.read_exact(&mut response).map_err(io)?;
        let correlation = i32::from_be_bytes([response[0], response[1], response[2], response[3]]);
        if correlation != self.correlation {
            return Err(malformed(format!(
                "correlation id {correlation}, expected {}",
                self.correlation
            )));
        }
        // The flexible response header's tagged fields: none expected.
        let header = if flexible { 5 } else { 4 };
        if response.len() < header || (flexible && response[4] != 0) {
            return Err(malformed("response header".into()));
        }
        response.drain(..header);
        Ok(response)
    }

    fn malformed(&self, what: &'static str, reason: String) -> ProtocolError {
        ProtocolError::Malformed {
            what,
            address: self.address.clone(),
            reason,
        }
    }

    /// `FindCoordinator` v1 for a transactional id: the coordinator's
    /// `host:port`, or the Kafka error code.
    pub fn find_transaction_coordinator(
        &mut self,
        transactional_id: &str,
    ) -> Result<Result<String, i16>, ProtocolError> {
        const WHAT: &str = "FindCoordinator";
        let mut body = Vec::new();
        put_string(&mut body, transactional_id);
        body.push(1); // key type: transaction
        let response = self.exchange(WHAT, 10, 1, false, &body)?;
        let mut r = Reader {
            bytes: &response,
            at: 0,
        };
        let parsed = (|| {
            let _throttle_ms = r.i32()?;
            let code = r.i16()?;
            let _message = r.string()?;
            let _node = r.i32()?;
            let host = r.string()?.unwrap_or_default();
            let port = r.i32()?;
            Ok::<_, String>((code, host, port))
        })();
        let (code, host, port) = parsed.map_err(|e| self.malformed(WHAT, e))?;
        Ok(if code == 0 {
            Ok(format!("{host}:{port}"))
        } else {
            Err(code)
        })
    }

    /// `EndTxn` v1: commits (or aborts) the transaction that producer
    /// `producer_id` at `producer_epoch` has open under `transactional_id`.
    /// Returns the Kafka error code (0: done).
    pub fn end_transaction(
        &mut self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
    ) -> Result<i16, ProtocolError> {
        const WHAT: &str = "EndTxn";
        let mut body = Vec::new();
        put_string(&mut body, transactional_id);
        body.extend_from_slice(&producer_id.to_be_bytes());
        body.extend_from_slice(&producer_epoch.to_be_bytes());
        body.push(u8::from(commit));
        let response = self.exchange(WHAT, 26, 1, false, &body)?;
        let mut r = Reader {
            bytes: &response,
            at: 0,
        };
        let parsed = (|| {
            let _throttle_ms = r.i32()?;
            r.i16()
        })();
        parsed.map_err(|e| self.malformed(WHAT, e))
    }

    /// `InitProducerId` v3 for `transactional_id` (no producer id or epoch
    /// of its own): bumps the id's epoch, which aborts a transaction left
    /// open under it and fences older producers. Returns the Kafka error
    /// code, or the new (producer id, epoch).
    pub fn init_producer_id(
        &mut self,
        transactional_id: &str,
        transaction_timeout_ms: i32,
    ) -> Result<Result<(i64, i16), i16>, ProtocolError> {
        const WHAT: &str = "InitProducerId";
        let mut body = Vec::new();
        // COMPACT_NULLABLE_STRING: unsigned varint of length + 1.
        let mut len = transactional_id.len() as u64 + 1;
        loop {
            let b = (len & 0x7f) as u8;
            len >>= 7;
            if len == 0 {
                body.push(b);
                break;
            }
            body.push(b | 0x80);
        }
        body.extend_from_slice(transactional_id.as_bytes());
        body.extend_from_slice(&transaction_timeout_ms.to_be_bytes());
        body.extend_from_slice(&(-1i64).to_be_bytes()); // producer id: none
        body.extend_from_slice(&(-1i16).to_be_bytes()); // epoch: none
        body.push(0); // no tagged fields
        let response = self.exchange(WHAT, 22, 3, true, &body)?;
        let mut r = Reader {
            bytes: &response,
            at: 0,
        };
        let parsed = (|| {
            let _throttle_ms = r.i32()?;
            let code = r.i16()?;
            let id = r.i64()?;
            let epoch = r.i16()?;
            Ok::<_, String>((code, id, epoch))
        })();
        let (code, id, epoch) = parsed.map_err(|e| self.malformed(WHAT, e))?;
        Ok(if code == 0 {
            Ok((id, epoch))
        } else {
            Err(code)
        })
    }
}

/// A record read by [`Connection::fetch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchedRecord {
    /// Its offset.
    pub offset: i64,
    /// Its key.
    pub key: Option<Vec<u8>>,
    /// Its value.
    pub value: Option<Vec<u8>>,
}

/// What one `Fetch` returned for a partition, batch by batch.
#[derive(Clone, Debug, Default)]
pub struct FetchedBatches {
    /// Per batch in log order: (producer id, transactional, control,
    /// records). A control batch's single record has the marker type
    /// (0: abort, 1: commit) in `offset`'s place: see [`committed_records`].
    pub batches: Vec<FetchedBatch>,
    /// The partition's high watermark.
    pub high_watermark: i64,
}

/// One record batch.
#[derive(Clone, Debug)]
pub struct FetchedBatch {
    /// The producer id.
    pub producer_id: i64,
    /// Whether it was written in a transaction.
    pub transactional: bool,
    /// For a control batch: `Some(true)` for a commit marker,
    /// `Some(false)` for an abort marker.
    pub control: Option<bool>,
    /// The data records.
    pub records: Vec<FetchedRecord>,
    /// The offset after the batch.
    pub next_offset: i64,
}

fn varint(r: &mut Reader<'_>) -> Result<i64, String> {
    let mut value: u64 = 0;
    for shift in (0..70).step_by(7) {
        let b = r.take(1)?[0];
        value |= u64::from(b & 0x7f) << shift.min(63);
        if b & 0x80 == 0 {
            // Zig-zag.
            return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
    }
    Err("varint longer than 10 bytes".into())
}

fn parse_batches(bytes: &[u8], out: &mut Vec<FetchedBatch>) -> Result<(), String> {
    let mut r = Reader { bytes, at: 0 };
    // A fetch may end with a partial batch: stop at the first one that
    // does not fit.
    while bytes.len() - r.at >= 12 {
        let base_offset = r.i64()?;
        let length = r.i32()?;
        if length < 49 || bytes.len() - r.at < length as usize {
            break;
        }
        let body = r.take(length as usize)?;
        let mut b = Reader { bytes: body, at: 0 };
        let _leader_epoch = b.i32()?;
        let magic = b.take(1)?[0];
        if magic != 2 {
            return Err(format!(
                "record batch magic {magic} at offset {base_offset}"
            ));
        }
        let _crc = b.i32()?;
        let attributes = b.i16()?;
        if attributes & 0x7 != 0 {
            return Err(format!(
                "compressed batch at offset {base_offset} (not supported here)"
            ));
        }
        let last_delta = b.i32()?;
        let _base_ts = b.i64()?;
        let _max_ts = b.i64()?;
        let producer_id = b.i64()?;
        let _epoch = b.i16()?;
        let _sequence = b.i32()?;
        let count = b.i32()?;
        let transactional = attributes & 0x10 != 0;
        let is_control = attributes & 0x20 != 0;
        let mut records = Vec::new();
        let mut control = None;
        for _ in 0..count.max(0) {
            let _len = varint(&mut b)?;
            let _attrs = b.take(1)?;
            let _ts_delta = varint(&mut b)?;
            let offset_delta = varint(&mut b)?;
            let key_len = varint(&mut b)?;
            let key = if key_len < 0 {
                None
            } else {
                Some(b.take(key_len as usize)?.to_vec())
            };
            let value_len = varint(&mut b)?;
            let value = if value_len < 0 {
                None
            } else {
                Some(b.take(value_len as usize)?.to_vec())
            };
            let headers = varint(&mut b)?;
            for _ in 0..headers.max(0) {
                let k = varint(&mut b)?;
                b.take(k.max(0) as usize)?;
                let v = varint(&mut b)?;
                b.take(v.max(0) as usize)?;
            }
            if is_control {
                let k = key.as_deref().unwrap_or(&[]);
                if k.len() >= 4 {
                    control = Some(i16::from_be_bytes([k[2], k[3]]) == 1);
                }
            } else {
                records.push(FetchedRecord {
                    offset: base_offset + offset_delta,
                    key,
                    value,
                });
            }
        }
        out.push(FetchedBatch {
            producer_id,
            transactional,
            control: if is_control {
                Some(control.unwrap_or(false))
            } else {
                None
            },
            records,
            next_offset: base_offset + i64::from(last_delta) + 1,
        });
    }
    Ok(())
}

/// The records a `read_committed` reader must see, computed from the
/// batches themselves: non-transactional records, and transactional ones
/// whose producer's next control marker in the partition is a commit
/// (records of a transaction without a marker yet are not visible).
pub fn committed_records(batches: &[FetchedBatch]) -> Vec<FetchedRecord> {
    let mut out = Vec::new();
    // Per producer: records of its open transaction.
    let mut open: std::collections::HashMap<i64, Vec<FetchedRecord>> = Default::default();
    for batch in batches {
        match batch.control {
            Some(commit) => {
                let records = open.remove(&batch.producer_id).unwrap_or_default();
                if commit {
                    out.extend(records);
                }
            }
            None if batch.transactional => open
                .entry(batch.producer_id)
                .or_default()
                .extend(batch.records.iter().cloned()),
            None => out.extend(batch.records.iter().cloned()),
        }
    }
    out.sort_by_key(|r| r.offset);
    out
}

impl Connection {
    /// `Fetch` v4 (read uncommitted, so control batches come too) of one
    /// partition from `offset`: the raw batches.
    pub fn fetch(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Result<FetchedBatches, ProtocolError> {
        const WHAT: &str = "Fetch";
        let mut body = Vec::new();
        body.extend_from_slice(&(-1i32).to_be_bytes()); // replica id
        body.extend_from_slice(&100i32.to_be_bytes()); // max wait ms
        body.extend_from_slice(&1i32.to_be_bytes()); // min bytes
        body.extend_from_slice(&(8i32 << 20).to_be_bytes()); // max bytes
        body.push(0); // read uncommitted
        body.extend_from_slice(&1i32.to_be_bytes());
        put_string(&mut body, topic);
        body.extend_from_slice(&1i32.to_be_bytes());
        body.extend_from_slice(&partition.to_be_bytes());
        body.extend_from_slice(&offset.to_be_bytes());
        body.extend_from_slice(&(8i32 << 20).to_be_bytes());
        let response = self.exchange(WHAT, 1, 4, false, &body)?;
        let mut r = Reader {
            bytes: &response,
            at: 0,
        };
        let parsed = (|| {
            let mut out = FetchedBatches::default();
            let _throttle = r.i32()?;
            let topics = r.i32()?;
            for _ in 0..topics.max(0) {
                let _name = r.string()?;
                let partitions = r.i32()?;
                for _ in 0..partitions.max(0) {
                    let _index = r.i32()?;
                    let code = r.i16()?;
                    if code != 0 {
                        return Err(format!("partition error {code} ({})", error_name(code)));
                    }
                    out.high_watermark = r.i64()?;
                    let _lso = r.i64()?;
                    let aborted = r.i32()?;
                    for _ in 0..aborted.max(0) {
                        r.i64()?;
                        r.i64()?;
                    }
                    let len = r.i32()?;
                    if len > 0 {
                        let bytes = r.take(len as usize)?;
                        parse_batches(bytes, &mut out.batches)?;
                    }
                }
            }
            Ok::<_, String>(out)
        })();
        parsed.map_err(|e| self.malformed(WHAT, e))
    }

    /// Every batch of a partition up to its high watermark.
    pub fn fetch_all(
        &mut self,
        topic: &str,
        partition: i32,
    ) -> Result<Vec<FetchedBatch>, ProtocolError> {
        let mut all = Vec::new();
        let mut offset = 0;
        loop {
            let got = self.fetch(topic, partition, offset)?;
            let before = offset;
            for b in got.batches {
                if b.next_offset > offset {
                    offset = b.next_offset;
                    all.push(b);
                }
            }
            if offset >= got.high_watermark || offset == before {
                return Ok(all);
            }
        }
    }
}

/// Connects to the transaction coordinator of `transactional_id` through
/// any of the bootstrap `brokers` (comma-separated `host:port`), retrying
/// while the coordinator loads, for at most `attempts` rounds.
pub fn coordinator(
    brokers: &str,
    transactional_id: &str,
    attempts: u32,
) -> Result<Connection, ProtocolError> {
    let mut last = None;
    for attempt in 0..attempts.max(1) {
        for broker in brokers.split(',').map(str::trim).filter(|b| !b.is_empty()) {
            let broker = broker
                .strip_prefix("PLAINTEXT://")
                .or_else(|| broker.strip_prefix("tcp://"))
                .unwrap_or(broker);
            let mut bootstrap = match Connection::connect(broker) {
                Ok(c) => c,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            match bootstrap.find_transaction_coordinator(transactional_id)? {
                Ok(address) => return Connection::connect(&address),
                Err(code) => {
                    last = Some(ProtocolError::Kafka {
                        what: "FindCoordinator",
                        transactional_id: transactional_id.to_string(),
                        code,
                        name: error_name(code),
                    });
                    if !is_retriable(code) {
                        return Err(last.expect("set above"));
                    }
                }
            }
        }
        // Backing off between rounds while a coordinator loads (this runs on
        // the sink's own Kafka thread, never on a reactor).
        std::thread::sleep(Duration::from_millis(100 << attempt.min(4)));
    }
    Err(last.unwrap_or_else(|| {
        ProtocolError::Unsupported(format!("no bootstrap broker in {brokers:?}"))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Truncated or garbage responses are errors, never panics.
    #[test]
    fn reader_checks_bounds() {
        let bytes = [0u8, 0, 0, 1, 0, 5, b'a'];
        let mut r = Reader {
            bytes: &bytes,
            at: 0,
        };
        assert_eq!(r.i32().unwrap(), 1);
        assert!(r.string().is_err(), "string longer than the body");
        let mut r = Reader {
            bytes: &[0xff, 0xff],
            at: 0,
        };
        assert_eq!(r.string().unwrap(), None);
        assert!(r.i64().is_err());
    }
}
