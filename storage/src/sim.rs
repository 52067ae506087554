//! Simulated, in-memory, deterministic [`Io`] backend for tests.
//!
//! [`SimIo`] keeps, per file, the *live* bytes (what reads see) and the *durable*
//! bytes (what survives a crash: only what [`IoFile::sync_data`] covered), and per
//! directory the live and the durable set of names.
//!
//! Modelling choice for names: a creation, rename or removal becomes durable only
//! at the next [`Io::sync_dir`]. A file that was created and synced but whose
//! directory was not synced vanishes in a crash image (POSIX leaves this open, so
//! the store must not rely on it).
//!
//! It can inject faults ([`SimIo::fail_when`], [`SimIo::fail_nth`]: an errno such
//! as `EIO` or `ENOSPC`, or a short write), counts sync points, can crash right
//! before sync point `n` ([`SimIo::crash_before_sync`]) and produces crash images
//! ([`SimIo::crash_image`], [`SimIo::crash_image_torn`]: durable bytes plus a random
//! subset of the unsynced 512-byte sectors, to model torn writes).
//!
//! Every future completes on its first poll: drive it with [`block_on`].
//! This module knows nothing about blocks or manifests.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use crate::format::PAGE_SIZE;
use crate::io::{DirEntry, Io, IoBuffer, IoFile};

/// Runs a future that never waits (every [`SimIo`] future completes on its first poll).
///
/// # Panics
/// If the future returns `Pending` (it awaits something other than `SimIo`).
pub fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => {
            panic!("sim::block_on: future is pending; only SimIo futures may be awaited")
        }
    }
}

/// Kind of an operation, as seen by a fault predicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SimOpKind {
    /// [`Io::create`].
    Create,
    /// [`IoFile::write_at`].
    Write,
    /// [`IoFile::sync_data`].
    Sync,
    /// [`Io::sync_dir`].
    SyncDir,
    /// [`Io::read`] or [`Io::read_at`].
    Read,
    /// [`Io::list`].
    List,
    /// [`Io::remove`].
    Remove,
    /// [`IoFile::rename`].
    Rename,
}

/// One operation, as seen by a fault predicate.
#[derive(Debug, Clone)]
pub struct SimOp {
    /// 0-based index of the operation since the backend was created.
    pub index: u64,
    /// What it is.
    pub kind: SimOpKind,
    /// File name (empty for directory operations).
    pub name: String,
    /// Offset (writes and reads).
    pub offset: u64,
    /// Length (writes and reads).
    pub len: usize,
}

/// A fault to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimFault {
    /// Fail with this errno (for example `libc::EIO`, `libc::ENOSPC`); nothing happens.
    Errno(i32),
    /// Write only the first `n` bytes and report `n` (writes only; otherwise `EIO`).
    ShortWrite(usize),
}

type FaultFn = Box<dyn FnMut(&SimOp) -> Option<SimFault> + Send>;

#[derive(Default, Clone)]
struct Inode {
    live: Vec<u8>,
    durable: Vec<u8>,
}

#[derive(Default)]
struct State {
    inodes: HashMap<u64, Inode>,
    live_names: BTreeMap<String, u64>,
    durable_names: BTreeMap<String, u64>,
    next_inode: u64,
    ops: u64,
    syncs: u64,
    crash_before_sync: Option<u64>,
    crashed: bool,
    fault: Option<FaultFn>,
}

impl State {
    fn new_inode(&mut self, inode: Inode) -> u64 {
        let id = self.next_inode;
        self.next_inode += 1;
        self.inodes.insert(id, inode);
        id
    }

    /// Counts the operation, then applies a crash or an injected fault.
    fn begin(
        &mut self,
        kind: SimOpKind,
        name: &str,
        offset: u64,
        len: usize,
    ) -> Result<Option<SimFault>, io::Error> {
        let index = self.ops;
        self.ops += 1;
        if self.crashed {
            return Err(io::Error::other("simulated crash: backend is down"));
        }
        if matches!(kind, SimOpKind::Sync | SimOpKind::SyncDir)
            && self.crash_before_sync == Some(self.syncs)
        {
            self.crashed = true;
            return Err(io::Error::other("simulated crash before sync point"));
        }
        let op = SimOp {
            index,
            kind,
            name: name.to_owned(),
            offset,
            len,
        };
        match self.fault.as_mut().and_then(|f| f(&op)) {
            None => Ok(None),
            Some(SimFault::Errno(e)) => Err(io::Error::from_raw_os_error(e)),
            Some(SimFault::ShortWrite(n)) if kind == SimOpKind::Write => {
                Ok(Some(SimFault::ShortWrite(n)))
            }
            Some(SimFault::ShortWrite(_)) => Err(io::Error::from_raw_os_error(libc::EIO)),
        }
    }
}

/// Simulated backend; clones share the same state (`Arc<Mutex<_>>`, so it is also
/// `Send + Sync` and usable from several threads, deterministically per thread order).
#[derive(Clone, Default)]
pub struct SimIo {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for SimIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("SimIo")
            .field("files", &s.live_names.keys().collect::<Vec<_>>())
            .field("syncs", &s.syncs)
            .finish()
    }
}

impl SimIo {
    /// An empty directory.
    pub fn new() -> SimIo {
        SimIo::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Operations issued so far (including failed ones).
    pub fn op_count(&self) -> u64 {
        self.lock().ops
    }

    /// Successful sync points so far (file syncs and directory syncs).
    pub fn sync_count(&self) -> u64 {
        self.lock().syncs
    }

    /// Crash when sync point `n` (0-based, counting successful syncs) is attempted:
    /// that sync fails, nothing more becomes durable, and every later operation fails.
    pub fn crash_before_sync(&self, n: u64) {
        self.lock().crash_before_sync = Some(n);
    }

    /// Whether the simulated crash has happened.
    pub fn crashed(&self) -> bool {
        self.lock().crashed
    }

    /// Injects faults chosen by `f`, called for every operation (replaces any previous predicate).
    pub fn fail_when(&self, f: impl FnMut(&SimOp) -> Option<SimFault> + Send + 'static) {
        self.lock().fault = Some(Box::new(f));
    }

    /// Fails the operation with index `index` (see [`SimOp::index`]) with `fault`.
    pub fn fail_nth(&self, index: u64, fault: SimFault) {
        self.fail_when(move |op| (op.index == index).then_some(fault));
    }

    /// Removes the fault predicate.
    pub fn clear_faults(&self) {
        self.lock().fault = None;
    }

    /// The durable state as a fresh backend: what a restart after a crash now would see.
    pub fn crash_image(&self) -> SimIo {
        self.image(None)
    }

    /// Like [`SimIo::crash_image`], but each 512-byte sector written and not yet synced
    /// reaches the image with probability 1/2 (decided by `seed`): a torn write.
    pub fn crash_image_torn(&self, seed: u64) -> SimIo {
        self.image(Some(seed))
    }

    fn image(&self, torn_seed: Option<u64>) -> SimIo {
        const SECTOR: usize = 512;
        let s = self.lock();
        let mut rng = SplitMix64(torn_seed.unwrap_or(0));
        let mut out = State::default();
        for (name, ino) in &s.durable_names {
            let inode = &s.inodes[ino];
            let mut bytes = inode.durable.clone();
            if torn_seed.is_some() {
                let sectors = inode.live.len().div_ceil(SECTOR);
                for i in 0..sectors {
                    let r = i * SECTOR..((i + 1) * SECTOR).min(inode.live.len());
                    let differs = r.end > bytes.len() || bytes[r.clone()] != inode.live[r.clone()];
                    if differs && rng.next() & 1 == 1 {
                        if bytes.len() < r.end {
                            bytes.resize(r.end, 0);
                        }
                        bytes[r.clone()].copy_from_slice(&inode.live[r]);
                    }
                }
            }
            let id = out.new_inode(Inode {
                live: bytes.clone(),
                durable: bytes,
            });
            out.live_names.insert(name.clone(), id);
            out.durable_names.insert(name.clone(), id);
        }
        SimIo {
            state: Arc::new(Mutex::new(out)),
        }
    }

    /// Names of the live files, sorted.
    pub fn file_names(&self) -> Vec<String> {
        self.lock().live_names.keys().cloned().collect()
    }

    /// Live bytes of a file.
    pub fn file_bytes(&self, name: &str) -> Option<Vec<u8>> {
        let s = self.lock();
        s.live_names.get(name).map(|ino| s.inodes[ino].live.clone())
    }

    /// XORs `mask` into byte `offset` of a file, live and durable (bit rot). Returns
    /// false if there is no such file or byte.
    pub fn corrupt(&self, name: &str, offset: usize, mask: u8) -> bool {
        let mut s = self.lock();
        let Some(&ino) = s.live_names.get(name) else {
            return false;
        };
        let inode = s.inodes.get_mut(&ino).expect("named inode exists");
        let mut hit = false;
        for bytes in [&mut inode.live, &mut inode.durable] {
            if let Some(b) = bytes.get_mut(offset) {
                *b ^= mask;
                hit = true;
            }
        }
        hit
    }

    /// Replaces a file's live and durable contents (for tests building damaged stores).
    pub fn put_file(&self, name: &str, bytes: Vec<u8>) {
        let mut s = self.lock();
        let id = s.new_inode(Inode {
            live: bytes.clone(),
            durable: bytes,
        });
        s.live_names.insert(name.to_owned(), id);
        s.durable_names.insert(name.to_owned(), id);
    }

    pub(crate) fn list_sync(&self) -> Vec<DirEntry> {
        let s = self.lock();
        s.live_names
            .iter()
            .map(|(n, ino)| DirEntry {
                name: n.clone(),
                len: s.inodes[ino].live.len() as u64,
            })
            .collect()
    }
}

/// Small deterministic PRNG (SplitMix64), used for torn images.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Write buffer of [`SimIo`].
#[derive(Debug, Clone)]
pub struct SimBuffer(Vec<u8>);

impl AsRef<[u8]> for SimBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}
impl AsMut<[u8]> for SimBuffer {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}
impl IoBuffer for SimBuffer {
    fn truncate(&mut self, len: usize) {
        assert!(len <= self.0.len());
        self.0.truncate(len);
    }
}

/// Open file of [`SimIo`]: refers to the inode, so it keeps working after a rename or removal.
#[derive(Debug)]
pub struct SimFile {
    io: SimIo,
    inode: u64,
    name: String,
}

impl IoFile for SimFile {
    type Buffer = SimBuffer;

    async fn write_at(&self, buf: SimBuffer, offset: u64) -> io::Result<usize> {
        let mut s = self.io.lock();
        let fault = s.begin(SimOpKind::Write, &self.name, offset, buf.0.len())?;
        if offset % PAGE_SIZE as u64 != 0 || buf.0.len() % PAGE_SIZE != 0 || buf.0.is_empty() {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let n = match fault {
            Some(SimFault::ShortWrite(n)) => n.min(buf.0.len()),
            _ => buf.0.len(),
        };
        let inode = s.inodes.get_mut(&self.inode).expect("open inode exists");
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        if inode.live.len() < start + n {
            inode.live.resize(start + n, 0);
        }
        inode.live[start..start + n].copy_from_slice(&buf.0[..n]);
        Ok(n)
    }

    async fn sync_data(&self) -> io::Result<()> {
        let mut s = self.io.lock();
        s.begin(SimOpKind::Sync, &self.name, 0, 0)?;
        let inode = s.inodes.get_mut(&self.inode).expect("open inode exists");
        inode.durable = inode.live.clone();
        s.syncs += 1;
        Ok(())
    }

    async fn rename(&self, new_name: &str) -> io::Result<()> {
        let mut s = self.io.lock();
        s.begin(SimOpKind::Rename, &self.name, 0, 0)?;
        let old = s
            .live_names
            .iter()
            .find(|(_, &ino)| ino == self.inode)
            .map(|(n, _)| n.clone());
        let Some(old) = old else {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        };
        s.live_names.remove(&old);
        s.live_names.insert(new_name.to_owned(), self.inode);
        Ok(())
    }

    async fn close(self) -> io::Result<()> {
        Ok(())
    }
}

impl Io for SimIo {
    type Buffer = SimBuffer;
    type File = SimFile;

    fn alloc_buffer(&self, len: usize) -> SimBuffer {
        assert!(
            len > 0 && len % PAGE_SIZE == 0,
            "DMA buffers are whole pages"
        );
        SimBuffer(vec![0; len])
    }

    async fn create(&self, name: &str) -> io::Result<SimFile> {
        let mut s = self.lock();
        s.begin(SimOpKind::Create, name, 0, 0)?;
        if s.live_names.contains_key(name) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        let id = s.new_inode(Inode::default());
        s.live_names.insert(name.to_owned(), id);
        Ok(SimFile {
            io: self.clone(),
            inode: id,
            name: name.to_owned(),
        })
    }

    async fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        let mut s = self.lock();
        s.begin(SimOpKind::Read, name, 0, 0)?;
        let ino = *s.live_names.get(name).ok_or(io::ErrorKind::NotFound)?;
        Ok(s.inodes[&ino].live.clone())
    }

    async fn read_at(&self, name: &str, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut s = self.lock();
        s.begin(SimOpKind::Read, name, offset, len)?;
        let ino = *s.live_names.get(name).ok_or(io::ErrorKind::NotFound)?;
        let live = &s.inodes[&ino].live;
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(live.len());
        let end = start.saturating_add(len).min(live.len());
        Ok(live[start..end].to_vec())
    }

    async fn list(&self) -> io::Result<Vec<DirEntry>> {
        self.lock().begin(SimOpKind::List, "", 0, 0)?;
        Ok(self.list_sync())
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        let mut s = self.lock();
        s.begin(SimOpKind::Remove, name, 0, 0)?;
        s.live_names
            .remove(name)
            .map(|_| ())
            .ok_or(io::Error::from(io::ErrorKind::NotFound))
    }

    async fn sync_dir(&self) -> io::Result<()> {
        let mut s = self.lock();
        s.begin(SimOpKind::SyncDir, "", 0, 0)?;
        s.durable_names = s.live_names.clone();
        s.syncs += 1;
        Ok(())
    }

    /// Nothing to do: every operation completes when it is first polled.
    async fn start_queued(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_versus_durable() {
        let io = SimIo::new();
        block_on(async {
            let f = io.create("a").await.unwrap();
            let mut b = io.alloc_buffer(PAGE_SIZE);
            b.as_mut()[0] = 7;
            f.write_at(b, 0).await.unwrap();
            assert!(
                io.crash_image().file_names().is_empty(),
                "name not durable before dir sync"
            );
            io.sync_dir().await.unwrap();
            assert_eq!(io.crash_image().file_bytes("a").unwrap(), Vec::<u8>::new());
            f.sync_data().await.unwrap();
            assert_eq!(io.crash_image().file_bytes("a").unwrap()[0], 7);
            assert_eq!(io.sync_count(), 2);
            io.fail_nth(io.op_count(), SimFault::Errno(libc::ENOSPC));
            let err = f
                .write_at(io.alloc_buffer(PAGE_SIZE), 4096)
                .await
                .unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
            io.crash_before_sync(2);
            f.write_at(io.alloc_buffer(PAGE_SIZE), 4096).await.unwrap();
            assert!(f.sync_data().await.is_err());
            assert!(io.crashed());
            assert_eq!(io.crash_image().file_bytes("a").unwrap().len(), PAGE_SIZE);
        });
    }
}
