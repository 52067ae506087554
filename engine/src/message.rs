//! What travels through a channel between subtasks ([`Message`]), on a
//! ring between cores or over the data plane between processes. A leaf of
//! the dataflow and the network, so that both use it without importing
//! each other.

use crate::checkpoint::Barrier;
use crate::data::Record;
use crate::time::Timestamp;

/// What travels through an exchange ring.
pub(crate) enum Message<T> {
    /// A batch of records.
    Records(Vec<Record<T>>),
    /// The sender's watermark advanced.
    Watermark(Timestamp),
    /// A checkpoint barrier, in-band: everything before it belongs to the
    /// checkpoint's cut, everything after to the next.
    Barrier(Barrier),
    /// The sender's input ended; nothing follows.
    End,
}
