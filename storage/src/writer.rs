//! Per-writer append-only segment files, and the registry that keeps garbage
//! collection away from segments still in use.
//!
//! A [`SegmentWriter`] belongs to one writer id (usually one core) and one reactor:
//! [`SegmentWriter::append`] frames a block into 4 KiB aligned DMA buffers
//! synchronously (no I/O), [`SegmentWriter::write_behind`] (optional, between
//! appends) starts writing the buffers already full while the caller serialises the
//! next blocks, and keeps at most [`MAX_WRITES_IN_FLIGHT`] of them in flight, so a
//! writer's memory is a few buffers rather than a whole checkpoint;
//! [`SegmentWriter::flush`] writes what is still pending, waits for every write and
//! `fdatasync`s; after it returns `Ok`, every handle returned before is durable.
//! A flush never rewrites a page written by an earlier flush: the next block starts
//! on the next page boundary (at most one page of padding per flush), so a torn
//! write can never damage a block that was already durable.
//!
//! The [`Registry`] is shared (behind a mutex, never held across an await) by the
//! store and all writers, on any thread. It records which segments exist, which are
//! still being appended to (*active*), how many bytes of each are durable, and which
//! flushed blocks no commit has referenced yet (*unresolved*). The store deletes a
//! segment only if it is not active, has no unresolved block and is referenced by
//! no retained checkpoint.
//!
//! This module owns segment files while they are written; it knows nothing about
//! checkpoints or what blocks contain.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;

use crate::error::WriteError;
use crate::format::{
    self, align_up, block_footprint, BlockHandle, BlockKind, SegmentId, HEADER_LEN, PAGE_SIZE,
};
use crate::io::{Io, IoBuffer, IoFile};

/// Writer id reserved for the store's compaction.
pub const COMPACTION_WRITER_ID: u16 = u16::MAX;

/// Most buffer writes [`SegmentWriter::write_behind`] leaves in flight before it
/// waits for the oldest: enough to keep the device busy while the caller fills the
/// next buffer, few enough that the buffers stay warm in the allocator (a writer
/// that held a whole checkpoint paid a fresh-page fault on every page of it).
pub const MAX_WRITES_IN_FLIGHT: usize = 4;

/// What the registry knows about one segment.
#[derive(Debug, Clone, Default)]
pub(crate) struct SegmentState {
    /// A writer may still append to it.
    pub active: bool,
    /// The file exists (it is created lazily at the first flush).
    pub file_created: bool,
    /// Bytes known durable (whole pages).
    pub durable_len: u64,
    /// Offsets of flushed blocks that no commit has referenced and nobody aborted.
    pub unresolved: HashSet<u64>,
}

/// Shared bookkeeping of segments and writers.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    pub next_seq: HashMap<u16, u64>,
    pub claimed: HashSet<u16>,
    pub segments: BTreeMap<SegmentId, SegmentState>,
}

pub(crate) type SharedRegistry = Arc<Mutex<Registry>>;

impl Registry {
    /// Declares flushed blocks dead without a commit: their segments can be
    /// collected once nothing else holds them.
    pub(crate) fn abort(&mut self, handles: &[BlockHandle]) {
        for h in handles {
            if let Some(s) = self.segments.get_mut(&h.segment) {
                s.unresolved.remove(&h.offset);
            }
        }
    }
}

pub(crate) fn lock(reg: &SharedRegistry) -> MutexGuard<'_, Registry> {
    reg.lock().unwrap_or_else(|p| p.into_inner())
}

impl Registry {
    /// Starts a new active segment for `writer_id`.
    fn start_segment(&mut self, writer_id: u16) -> SegmentId {
        let seq = self.next_seq.entry(writer_id).or_insert(0);
        let id = SegmentId::new(writer_id, *seq);
        *seq += 1;
        let prev = self.segments.insert(
            id,
            SegmentState {
                active: true,
                ..SegmentState::default()
            },
        );
        assert!(prev.is_none(), "segment id {id} reused");
        id
    }

    /// The segment stops being active; forgotten entirely if its file was never created.
    fn retire(&mut self, id: SegmentId) {
        if let Some(s) = self.segments.get_mut(&id) {
            if s.file_created {
                s.active = false;
            } else {
                self.segments.remove(&id);
            }
        }
    }
}

/// Everything needed to build a [`SegmentWriter`] on another reactor: `Send` when
/// the [`Io`] is (as [`GlommioIo`](crate::GlommioIo) is). Holds the writer id's claim.
#[derive(Debug)]
pub struct WriterSlot<I: Io> {
    io: I,
    registry: SharedRegistry,
    writer_id: u16,
    segment_size_bytes: u64,
    buffer_bytes: usize,
    // Some until converted into a writer, which then owns the claim.
    claim: Option<WriterClaim>,
}

#[derive(Debug)]
struct WriterClaim {
    registry: SharedRegistry,
    writer_id: u16,
}

impl Drop for WriterClaim {
    fn drop(&mut self) {
        lock(&self.registry).claimed.remove(&self.writer_id);
    }
}

impl<I: Io> WriterSlot<I> {
    pub(crate) fn new(
        io: I,
        registry: SharedRegistry,
        writer_id: u16,
        segment_size_bytes: u64,
        buffer_bytes: usize,
    ) -> Self {
        let fresh = lock(&registry).claimed.insert(writer_id);
        assert!(fresh, "segment writer {writer_id} is already in use");
        let claim = Some(WriterClaim {
            registry: registry.clone(),
            writer_id,
        });
        WriterSlot {
            io,
            registry,
            writer_id,
            segment_size_bytes,
            buffer_bytes,
            claim,
        }
    }

    /// Builds the writer; call this on the reactor that will use it.
    pub fn into_writer(mut self) -> SegmentWriter<I> {
        SegmentWriter {
            io: self.io.clone(),
            registry: self.registry.clone(),
            writer_id: self.writer_id,
            segment_size_bytes: self.segment_size_bytes,
            buffer_bytes: self.buffer_bytes,
            current: None,
            chunk: None,
            pending: Vec::new(),
            in_flight: Vec::new(),
            unsynced: Unsynced::default(),
            write_error: None,
            rolled: Vec::new(),
            unflushed: Vec::new(),
            files: Vec::new(),
            _claim: self.claim.take().expect("slot converted once"),
        }
    }
}

struct Current {
    id: SegmentId,
    /// Offset of the next block in the segment file.
    pos: u64,
}

/// One buffer write started and not yet reaped.
struct WriteDone {
    segment: SegmentId,
    offset: u64,
    expected: usize,
    result: io::Result<usize>,
}

type WriteFuture = Pin<Box<dyn Future<Output = WriteDone>>>;

/// What the writes started since the last successful flush touched.
#[derive(Default)]
struct Unsynced {
    /// Segments written to, in first-write order (each is `fdatasync`ed by the flush).
    segments: Vec<SegmentId>,
    /// End of the bytes written per segment.
    ends: HashMap<SegmentId, u64>,
    /// A segment file was created (the flush syncs the directory).
    created_file: bool,
}

struct Chunk<B> {
    segment: SegmentId,
    /// File offset of `buf[0]` (page aligned).
    base: u64,
    buf: B,
    fill: usize,
}

/// Appends framed blocks to this writer's segment files. Reactor-local (`!Send`
/// with [`GlommioIo`](crate::GlommioIo)); see the module docs for the protocol.
pub struct SegmentWriter<I: Io> {
    io: I,
    registry: SharedRegistry,
    writer_id: u16,
    segment_size_bytes: u64,
    buffer_bytes: usize,
    current: Option<Current>,
    chunk: Option<Chunk<I::Buffer>>,
    /// Full chunks not yet handed to the I/O backend, in file order.
    pending: Vec<Chunk<I::Buffer>>,
    /// Writes started and not yet reaped, oldest first.
    in_flight: Vec<WriteFuture>,
    unsynced: Unsynced,
    /// First failure of a write started since the last flush; the next flush fails.
    write_error: Option<WriteError>,
    /// Segments rolled away from since the last flush (sealed by the next flush).
    rolled: Vec<SegmentId>,
    unflushed: Vec<BlockHandle>,
    /// Open segment files (shared with the writes in flight to them).
    files: Vec<(SegmentId, Rc<I::File>)>,
    _claim: WriterClaim,
}

impl<I: Io> std::fmt::Debug for SegmentWriter<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentWriter")
            .field("writer_id", &self.writer_id)
            .field("segment", &self.current.as_ref().map(|c| c.id))
            .field("unflushed_blocks", &self.unflushed.len())
            .finish()
    }
}

impl<I: Io> SegmentWriter<I> {
    /// This writer's id.
    pub fn writer_id(&self) -> u16 {
        self.writer_id
    }

    /// Number of blocks appended since the last successful flush.
    pub fn unflushed_blocks(&self) -> usize {
        self.unflushed.len()
    }

    /// Declares flushed blocks of this writer dead without committing them
    /// (blocks written ahead of a checkpoint that will never reference them),
    /// as [`Store::abort_blocks`](crate::Store::abort_blocks) does.
    pub fn abort_blocks(&self, handles: &[BlockHandle]) {
        lock(&self.registry).abort(handles);
    }

    /// Buffers a copy of `payload` as one block; durable after the next [`flush`](Self::flush).
    ///
    /// # Panics
    /// If the payload is larger than [`MAX_PAYLOAD_LEN`](crate::format::MAX_PAYLOAD_LEN)
    /// or `kind` is `BlockKind(0)`.
    pub fn append(&mut self, kind: BlockKind, payload: &[u8]) -> BlockHandle {
        self.append_with(kind, payload.len(), |buf| buf.copy_from_slice(payload))
    }

    /// Buffers one block of `len` bytes that `fill` serialises directly into the
    /// aligned write buffer (no copy). The slice handed to `fill` is exactly `len`
    /// bytes long, 16-byte aligned relative to the start of the file, and of
    /// unspecified contents: `fill` must write every byte of it.
    ///
    /// # Panics
    /// As [`append`](Self::append).
    pub fn append_with(
        &mut self,
        kind: BlockKind,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> BlockHandle {
        assert!(
            len <= format::MAX_PAYLOAD_LEN,
            "block payload of {len} bytes is too large"
        );
        assert!(kind.0 != 0, "block kind 0 is reserved");
        let len32 = len as u32;
        let footprint = block_footprint(len32);
        let needs_roll = match &self.current {
            None => true,
            Some(c) => c.pos > 0 && c.pos + footprint > self.segment_size_bytes,
        };
        if needs_roll {
            self.roll();
        }
        let cur = self.current.as_mut().expect("a current segment after roll");
        let chunk_fits = self
            .chunk
            .as_ref()
            .is_some_and(|c| c.buf.as_ref().len() - c.fill >= footprint as usize);
        if !chunk_fits {
            // Start a new chunk; carry the partial last page of the old one over so the
            // file stays contiguous without padding.
            let (base, carry) = match &self.chunk {
                Some(c) => {
                    let floor = c.fill & !(PAGE_SIZE - 1);
                    (c.base + floor as u64, c.fill - floor)
                }
                None => (cur.pos, 0),
            };
            debug_assert_eq!(base % PAGE_SIZE as u64, 0);
            let cap = self
                .buffer_bytes
                .max(align_up((carry as u64) + footprint, PAGE_SIZE as u64) as usize);
            let mut buf = self.io.alloc_buffer(cap);
            if let Some(mut old) = self.chunk.take() {
                let floor = old.fill - carry;
                buf.as_mut()[..carry].copy_from_slice(&old.buf.as_ref()[floor..old.fill]);
                if floor > 0 {
                    old.buf.truncate(floor);
                    old.fill = floor;
                    self.pending.push(old);
                }
            }
            self.chunk = Some(Chunk {
                segment: cur.id,
                base,
                buf,
                fill: carry,
            });
        }
        let chunk = self.chunk.as_mut().expect("chunk present");
        debug_assert_eq!(chunk.base + chunk.fill as u64, cur.pos);
        debug_assert_eq!(chunk.segment, cur.id);
        let block = &mut chunk.buf.as_mut()[chunk.fill..chunk.fill + footprint as usize];
        fill(&mut block[HEADER_LEN..HEADER_LEN + len]);
        format::seal_block(block, cur.id, kind, len32);
        let handle = BlockHandle {
            segment: cur.id,
            offset: cur.pos,
            len: len32,
            kind,
        };
        // Pair assertion: the framed block checks out before it is ever written
        // (payload CRC rechecked only in debug builds: it doubles the CRC cost).
        debug_assert!(format::check_block(
            &chunk.buf.as_ref()[..chunk.fill + footprint as usize],
            &BlockHandle {
                offset: chunk.fill as u64,
                ..handle
            },
            true
        )
        .is_ok());
        chunk.fill += footprint as usize;
        cur.pos += footprint;
        self.unflushed.push(handle);
        handle
    }

    fn roll(&mut self) {
        self.seal_chunk();
        if let Some(old) = self.current.take() {
            self.rolled.push(old.id);
        }
        let id = lock(&self.registry).start_segment(self.writer_id);
        self.current = Some(Current { id, pos: 0 });
    }

    /// Moves the open chunk to `pending`, padded to a whole page; the next block starts
    /// on the next page.
    fn seal_chunk(&mut self) {
        if let Some(mut c) = self.chunk.take() {
            let len = align_up(c.fill as u64, PAGE_SIZE as u64) as usize;
            c.buf.as_mut()[c.fill..len].fill(0);
            c.buf.truncate(len);
            if let Some(cur) = self.current.as_mut().filter(|cur| cur.id == c.segment) {
                cur.pos = c.base + len as u64;
            }
            c.fill = len;
            self.pending.push(c);
        }
    }

    /// Starts writing every buffer filled so far without waiting for the writes, then
    /// waits while more than [`MAX_WRITES_IN_FLIGHT`] are in flight.
    ///
    /// Optional: [`flush`](Self::flush) alone writes everything. Calling this between
    /// appends overlaps the caller's serialisation (and the block CRCs) with the
    /// device, and bounds the writer's buffers to a few instead of everything appended
    /// since the last flush. Durability is unchanged: nothing is durable, and no
    /// handle may be committed, before the next flush returns `Ok`. A failed write is
    /// reported by that flush (with the same consequences as a failed flush); until
    /// then the buffers appended after it are dropped instead of written.
    pub async fn write_behind(&mut self) {
        let started = !self.pending.is_empty();
        self.start_writes().await;
        self.reap(MAX_WRITES_IN_FLIGHT).await;
        if started {
            self.io.start_queued().await;
        }
    }

    /// Writes every pending block and makes it durable (`fdatasync`, and a directory
    /// sync if a segment file was created). On `Ok`, every handle returned so far is
    /// durable. On `Err`, the handles returned since the last successful flush are
    /// invalid (never commit them) and the writer moves on to a new segment.
    pub async fn flush(&mut self) -> Result<(), WriteError> {
        self.seal_chunk();
        if self.pending.is_empty()
            && self.in_flight.is_empty()
            && self.unsynced.segments.is_empty()
            && self.write_error.is_none()
        {
            return Ok(());
        }
        match self.write_and_sync().await {
            Ok(()) => Ok(()),
            Err(e) => {
                self.abandon();
                Err(e)
            }
        }
    }

    /// Hands every pending chunk to the backend: creates the segment files they need
    /// (all creations first, then the writes), starts one write per chunk and polls
    /// it once (io_uring: queued for submission). A failure is kept in `write_error`.
    async fn start_writes(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        if self.write_error.is_some() {
            // The flush will fail anyway; do not write, free the buffers.
            self.pending.clear();
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        for chunk in &pending {
            let seg = chunk.segment;
            if self.files.iter().any(|(s, _)| *s == seg) {
                continue;
            }
            match self.io.create(&seg.file_name()).await {
                Ok(file) => {
                    if let Some(s) = lock(&self.registry).segments.get_mut(&seg) {
                        s.file_created = true;
                    }
                    self.files.push((seg, Rc::new(file)));
                    self.unsynced.created_file = true;
                }
                Err(source) => {
                    self.write_error = Some(WriteError::Io {
                        op: "create",
                        segment: seg,
                        offset: 0,
                        source,
                    });
                    return;
                }
            }
        }
        for chunk in pending {
            let segment = chunk.segment;
            let file = Rc::clone(
                &self
                    .files
                    .iter()
                    .find(|(s, _)| *s == segment)
                    .expect("file opened above")
                    .1,
            );
            let expected = chunk.buf.as_ref().len();
            debug_assert_eq!(expected, chunk.fill);
            debug_assert_eq!(expected % PAGE_SIZE, 0);
            debug_assert_eq!(chunk.base % PAGE_SIZE as u64, 0);
            let offset = chunk.base;
            let end = self.unsynced.ends.entry(segment).or_insert(0);
            *end = (*end).max(offset + expected as u64);
            if !self.unsynced.segments.contains(&segment) {
                self.unsynced.segments.push(segment);
            }
            self.in_flight.push(Box::pin(async move {
                let result = file.write_at(chunk.buf, offset).await;
                WriteDone {
                    segment,
                    offset,
                    expected,
                    result,
                }
            }));
        }
    }

    /// Polls every write in flight (which also starts the new ones), reaps those
    /// done, and waits until at most `max_left` remain.
    async fn reap(&mut self, max_left: usize) {
        std::future::poll_fn(|cx| {
            let mut i = 0;
            while i < self.in_flight.len() {
                match self.in_flight[i].as_mut().poll(cx) {
                    Poll::Ready(done) => {
                        // Keep the order of the rest (oldest first).
                        drop(self.in_flight.remove(i));
                        if self.write_error.is_none() {
                            self.write_error = check_write(done).err();
                        }
                    }
                    Poll::Pending => i += 1,
                }
            }
            if self.in_flight.len() <= max_left {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }

    async fn write_and_sync(&mut self) -> Result<(), WriteError> {
        // Issue every remaining write at once (io_uring keeps them all in flight),
        // wait for all of them, then sync.
        self.start_writes().await;
        self.reap(0).await;
        if let Some(e) = self.write_error.take() {
            return Err(e);
        }
        let unsynced = std::mem::take(&mut self.unsynced);
        for seg in &unsynced.segments {
            let file = &self
                .files
                .iter()
                .find(|(s, _)| s == seg)
                .expect("written file is open")
                .1;
            file.sync_data().await.map_err(|source| WriteError::Io {
                op: "fdatasync",
                segment: *seg,
                offset: 0,
                source,
            })?;
        }
        if unsynced.created_file {
            self.io.sync_dir().await.map_err(WriteError::SyncDir)?;
        }
        // Durable: publish to the registry.
        {
            let mut reg = lock(&self.registry);
            for h in self.unflushed.drain(..) {
                if let Some(s) = reg.segments.get_mut(&h.segment) {
                    s.unresolved.insert(h.offset);
                }
            }
            for (seg, end) in &unsynced.ends {
                if let Some(s) = reg.segments.get_mut(seg) {
                    s.durable_len = s.durable_len.max(*end);
                }
            }
            for seg in &self.rolled {
                reg.retire(*seg);
            }
        }
        // Close sealed segments' files (no write is in flight any more).
        let rolled = std::mem::take(&mut self.rolled);
        let mut keep = Vec::new();
        for (seg, file) in std::mem::take(&mut self.files) {
            if rolled.contains(&seg) {
                // Already durable; a close error cannot lose data.
                if let Ok(file) = Rc::try_unwrap(file) {
                    let _ = file.close().await;
                }
            } else {
                keep.push((seg, file));
            }
        }
        self.files = keep;
        Ok(())
    }

    /// After a failed flush: drop unwritten data and the current segment (its tail is
    /// in an unknown state); earlier durable blocks in it stay valid.
    fn abandon(&mut self) {
        self.pending.clear();
        // Empty unless the flush itself was interrupted; dropping a glommio write
        // leaves the operation (and its buffer) with the reactor until it completes.
        self.in_flight.clear();
        self.unsynced = Unsynced::default();
        self.write_error = None;
        self.chunk = None;
        self.unflushed.clear();
        let mut reg = lock(&self.registry);
        for seg in self.rolled.drain(..) {
            reg.retire(seg);
        }
        if let Some(cur) = self.current.take() {
            reg.retire(cur.id);
        }
        drop(reg);
        self.files.clear();
    }
}

impl<I: Io> Drop for SegmentWriter<I> {
    fn drop(&mut self) {
        let mut reg = lock(&self.registry);
        for seg in self.rolled.drain(..) {
            reg.retire(seg);
        }
        if let Some(cur) = self.current.take() {
            reg.retire(cur.id);
        }
    }
}

/// The outcome of one buffer write: an error unless all of it was written.
fn check_write(done: WriteDone) -> Result<(), WriteError> {
    let WriteDone {
        segment,
        offset,
        expected,
        result,
    } = done;
    let written = result.map_err(|source| WriteError::Io {
        op: "write",
        segment,
        offset,
        source,
    })?;
    if written != expected {
        return Err(WriteError::ShortWrite {
            segment,
            offset,
            expected,
            written,
        });
    }
    Ok(())
}
