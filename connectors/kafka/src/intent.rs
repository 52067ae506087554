//! The exactly-once sink's transaction log: one small file per
//! transactional id saying which checkpoint its latest transaction belongs
//! to, the producer id and epoch that hold it open, and whether it was
//! committed. Written (synced, renamed into place, directory synced) before
//! the sink acknowledges its part of a checkpoint, so a completed checkpoint
//! always has its transactions' identities on disk; read on restore.
//!
//! Format (`<dir>/<transactional id>.txn`, one line of text):
//! `spate-kafka-txn v1 subtask=S checkpoint=N producer_id=P epoch=E state=pre-committed|committed|aborted`.
//!
//! Owns: the files in the directory. Must not touch: Kafka.

use crate::client::ProducerIdentity;
use std::path::{Path, PathBuf};

/// The state of a transaction in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnState {
    /// Flushed, not yet committed.
    PreCommitted,
    /// Committed.
    Committed,
    /// Aborted by a restore that did not include its checkpoint.
    Aborted,
}

/// One transactional id's latest transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Intent {
    /// The transactional id.
    pub transactional_id: String,
    /// The sink subtask that wrote it.
    pub subtask: usize,
    /// The checkpoint whose barrier closed the transaction.
    pub checkpoint: u64,
    /// The producer holding it.
    pub identity: ProducerIdentity,
    /// Whether it was committed.
    pub state: TxnState,
}

/// An error of the transaction log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IntentError {
    /// File system failure.
    #[error("Kafka sink transaction log {path}: {error}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// A file that does not parse.
    #[error("Kafka sink transaction log {path}: malformed ({reason})")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The log directory.
#[derive(Clone, Debug)]
pub struct IntentLog {
    dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IntentError + '_ {
    move |error| IntentError::Io {
        path: path.to_path_buf(),
        error,
    }
}

impl IntentLog {
    /// The log in `dir` (created if missing).
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, IntentError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        Ok(Self { dir })
    }

    /// Records `intent` durably (replacing the id's earlier one).
    pub fn write(&self, intent: &Intent) -> Result<(), IntentError> {
        use std::io::Write;
        let state = match intent.state {
            TxnState::PreCommitted => "pre-committed",
            TxnState::Committed => "committed",
            TxnState::Aborted => "aborted",
        };
        let line = format!(
            "spate-kafka-txn v1 subtask={} checkpoint={} producer_id={} epoch={} state={state}\n",
            intent.subtask, intent.checkpoint, intent.identity.producer_id, intent.identity.epoch
        );
        let path = self.dir.join(format!("{}.txn", intent.transactional_id));
        let tmp = self
            .dir
            .join(format!("{}.txn.tmp", intent.transactional_id));
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(line.as_bytes()).map_err(io(&tmp))?;
        f.sync_data().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))
    }

    /// Whether `transactional_id` has a record.
    pub fn contains(&self, transactional_id: &str) -> bool {
        self.dir.join(format!("{transactional_id}.txn")).exists()
    }

    /// Every recorded transaction, in transactional-id order.
    pub fn read_all(&self) -> Result<Vec<Intent>, IntentError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let entry = entry.map_err(io(&self.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".txn") else {
                continue;
            };
            let path = entry.path();
            let text = std::fs::read_to_string(&path).map_err(io(&path))?;
            out.push(parse(id, &text).map_err(|reason| IntentError::Malformed {
                path: path.clone(),
                reason,
            })?);
        }
        out.sort_by(|a, b| a.transactional_id.cmp(&b.transactional_id));
        Ok(out)
    }
}

fn parse(id: &str, text: &str) -> Result<Intent, String> {
    let mut fields = text.split_whitespace();
    if fields.next() != Some("spate-kafka-txn") || fields.next() != Some("v1") {
        return Err("not a v1 transaction record".into());
    }
    let mut get = |name: &str| -> Result<String, String> {
        let f = fields.next().ok_or_else(|| format!("{name} missing"))?;
        f.strip_prefix(name)
            .and_then(|r| r.strip_prefix('='))
            .map(str::to_string)
            .ok_or_else(|| format!("{name} expected, found {f:?}"))
    };
    let num = |v: String, name: &str| -> Result<i64, String> {
        v.parse::<i64>().map_err(|_| format!("{name} {v:?}"))
    };
    let subtask = num(get("subtask")?, "subtask")?;
    let checkpoint = {
        let v = get("checkpoint")?;
        v.parse::<u64>().map_err(|_| format!("checkpoint {v:?}"))?
    };
    let producer_id = num(get("producer_id")?, "producer_id")?;
    let epoch = num(get("epoch")?, "epoch")?;
    let state = match get("state")?.as_str() {
        "pre-committed" => TxnState::PreCommitted,
        "committed" => TxnState::Committed,
        "aborted" => TxnState::Aborted,
        other => return Err(format!("state {other:?}")),
    };
    Ok(Intent {
        transactional_id: id.to_string(),
        subtask: usize::try_from(subtask).map_err(|_| "subtask".to_string())?,
        checkpoint,
        identity: ProducerIdentity {
            producer_id,
            epoch: i16::try_from(epoch).map_err(|_| "epoch".to_string())?,
        },
        state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let dir = std::env::temp_dir().join(format!("spate-kafka-intent-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let log = IntentLog::open(&dir).unwrap();
        let intent = Intent {
            transactional_id: "job-0-1".into(),
            subtask: 0,
            checkpoint: 7,
            identity: ProducerIdentity {
                producer_id: 42,
                epoch: 3,
            },
            state: TxnState::PreCommitted,
        };
        log.write(&intent).unwrap();
        assert_eq!(log.read_all().unwrap(), vec![intent.clone()]);
        // The end-of-input transaction of a job without checkpoints.
        let last = Intent {
            checkpoint: u64::MAX - 1,
            state: TxnState::Committed,
            ..intent
        };
        log.write(&last).unwrap();
        assert_eq!(log.read_all().unwrap(), vec![last]);
        std::fs::write(dir.join("x.txn"), "spate-kafka-txn v1 subtask=zz").unwrap();
        assert!(matches!(log.read_all(), Err(IntentError::Malformed { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
