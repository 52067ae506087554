//! The small I/O interface the store is written against, and its real backend.
//!
//! [`Io`] is a flat directory of files with O_DIRECT semantics: every write is a
//! whole number of [`PAGE_SIZE`](crate::format::PAGE_SIZE) pages at a page-aligned
//! offset, from a buffer the backend allocated ([`Io::alloc_buffer`]). Nothing is
//! durable until [`IoFile::sync_data`] (file contents) or [`Io::sync_dir`] (which
//! names exist) returns `Ok`. The store relies on exactly these guarantees and no
//! others, so the simulated backend ([`crate::sim::SimIo`]) models exactly them.
//!
//! [`GlommioIo`] is the real backend: glommio `DmaFile`s (io_uring, O_DIRECT) and
//! `fdatasync`. Its futures must run inside a glommio `LocalExecutor`; they never
//! block the reactor, except [`Io::list`] (one `readdir`, used only when a store
//! opens) which is documented as such.
//!
//! This module knows nothing about blocks, segments or manifests.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A write buffer owned by a backend (for glommio: 4 KiB aligned DMA memory).
pub trait IoBuffer: AsRef<[u8]> + AsMut<[u8]> {
    /// Shrinks the buffer to its first `len` bytes (`len` ≤ current length).
    fn truncate(&mut self, len: usize);
}

/// An open, writable file of an [`Io`] backend.
// The futures are reactor-local on purpose (a glommio file is !Send), so the missing
// `Send` bound that this lint warns about is the intended contract.
#[allow(async_fn_in_trait)]
pub trait IoFile: 'static {
    /// Buffer type accepted by [`IoFile::write_at`].
    type Buffer: IoBuffer + 'static;

    /// Writes the whole buffer at `offset`; both must be page multiples. Returns the
    /// number of bytes written, which may be short (the caller treats that as an error).
    async fn write_at(&self, buf: Self::Buffer, offset: u64) -> io::Result<usize>;
    /// `fdatasync`: every write that completed before the call is durable when it returns `Ok`.
    async fn sync_data(&self) -> io::Result<()>;
    /// Renames the file within the directory. Durable only after [`Io::sync_dir`].
    async fn rename(&self, new_name: &str) -> io::Result<()>;
    /// Closes the file.
    async fn close(self) -> io::Result<()>;
}

/// A directory entry returned by [`Io::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// File name (no directory part).
    pub name: String,
    /// File length in bytes.
    pub len: u64,
}

/// A flat directory of files with O_DIRECT write semantics. Cloning is cheap and
/// clones refer to the same directory.
#[allow(async_fn_in_trait)]
pub trait Io: Clone + 'static {
    /// Write buffer type.
    type Buffer: IoBuffer + 'static;
    /// Open file type.
    type File: IoFile<Buffer = Self::Buffer>;

    /// Allocates a write buffer of `len` bytes (a non-zero page multiple). Its
    /// contents are unspecified: the writer overwrites every byte it writes out.
    fn alloc_buffer(&self, len: usize) -> Self::Buffer;
    /// Creates a new, empty file for writing; fails if `name` exists.
    async fn create(&self, name: &str) -> io::Result<Self::File>;
    /// Reads a whole file.
    async fn read(&self, name: &str) -> io::Result<Vec<u8>>;
    /// Reads `len` bytes at `offset` (fewer at end of file).
    async fn read_at(&self, name: &str, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// Lists the directory.
    async fn list(&self) -> io::Result<Vec<DirEntry>>;
    /// Removes a file. Durable only after [`Io::sync_dir`].
    async fn remove(&self, name: &str) -> io::Result<()>;
    /// Makes the current set of names (creations, renames, removals) durable.
    async fn sync_dir(&self) -> io::Result<()>;
    /// Lets operations that futures have queued (polled once, still pending) reach
    /// the device now rather than at the caller's next wait, so that they overlap
    /// with the caller's work. Never waits for them to complete.
    async fn start_queued(&self);
}

impl IoBuffer for glommio::io::DmaBuffer {
    fn truncate(&mut self, len: usize) {
        self.trim_to_size(len);
    }
}

/// Real backend: glommio DMA files in one directory. `Send + Sync + Clone`, so it
/// can be handed to every reactor; its futures must run inside a glommio executor.
#[derive(Debug, Clone)]
pub struct GlommioIo {
    dir: Arc<PathBuf>,
}

impl GlommioIo {
    /// A backend over `dir`, which must exist.
    pub fn new(dir: impl Into<PathBuf>) -> GlommioIo {
        // Absolute, so that operations glommio runs relative to other
        // directories (renames, directory syncs) name the same files.
        let dir = dir.into();
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        GlommioIo { dir: Arc::new(dir) }
    }
    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    fn path(&self, name: &str) -> PathBuf {
        debug_assert!(!name.contains('/'), "flat directory");
        self.dir.join(name)
    }
}

fn to_io(e: glommio::GlommioError<()>) -> io::Error {
    match e {
        glommio::GlommioError::IoError(e) => e,
        glommio::GlommioError::EnhancedIoError { source, .. } => source,
        other => io::Error::other(other.to_string()),
    }
}

/// An open file of [`GlommioIo`].
#[derive(Debug)]
pub struct GlommioFile {
    file: glommio::io::DmaFile,
    dir: Arc<PathBuf>,
}

impl IoFile for GlommioFile {
    type Buffer = glommio::io::DmaBuffer;

    async fn write_at(&self, buf: Self::Buffer, offset: u64) -> io::Result<usize> {
        self.file.write_at(buf, offset).await.map_err(to_io)
    }
    async fn sync_data(&self) -> io::Result<()> {
        self.file.fdatasync().await.map_err(to_io)
    }
    async fn rename(&self, new_name: &str) -> io::Result<()> {
        self.file
            .rename(self.dir.join(new_name))
            .await
            .map_err(to_io)
    }
    async fn close(self) -> io::Result<()> {
        self.file.close().await.map_err(to_io)
    }
}

impl Io for GlommioIo {
    type Buffer = glommio::io::DmaBuffer;
    type File = GlommioFile;

    fn alloc_buffer(&self, len: usize) -> Self::Buffer {
        assert!(
            len > 0 && len % crate::format::PAGE_SIZE == 0,
            "DMA buffers are whole pages"
        );
        // The reactor's registered buffer arena (`io_memory`, 10 MiB by default):
        // its pages stay resident, so a buffer reused after a write completes costs
        // no page faults (fresh memory for every buffer made a writer fault on every
        // page it wrote), and io_uring writes it without pinning pages. A segment
        // writer using `write_behind` keeps only a few buffers alive; when the arena
        // is exhausted glommio falls back to the global allocator. Must be called
        // on a glommio reactor, and the buffer dropped on the same one (the writer
        // and the store are reactor-local).
        // Not zeroed: every byte that reaches the disk is written by the segment
        // writer (payload by the caller, header and padding by `seal_block`, page
        // tail by `seal_chunk`), and zeroing would be one more pass over memory.
        glommio::allocate_dma_buffer(len)
    }

    async fn create(&self, name: &str) -> io::Result<Self::File> {
        let file = glommio::io::OpenOptions::new()
            .write(true)
            .create_new(true)
            .dma_open(self.path(name))
            .await
            .map_err(to_io)?;
        Ok(GlommioFile {
            file,
            dir: self.dir.clone(),
        })
    }

    async fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        let file = glommio::io::DmaFile::open(self.path(name))
            .await
            .map_err(to_io)?;
        let len = file.file_size().await.map_err(to_io)?;
        let len = usize::try_from(len).map_err(io::Error::other)?;
        let out = if len == 0 {
            Vec::new()
        } else {
            file.read_at(0, len).await.map_err(to_io)?.to_vec()
        };
        file.close().await.map_err(to_io)?;
        Ok(out)
    }

    async fn read_at(&self, name: &str, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let file = glommio::io::DmaFile::open(self.path(name))
            .await
            .map_err(to_io)?;
        let out = if len == 0 {
            Vec::new()
        } else {
            file.read_at(offset, len).await.map_err(to_io)?.to_vec()
        };
        file.close().await.map_err(to_io)?;
        Ok(out)
    }

    /// Blocking `readdir` + `stat` (glommio has no async directory listing); called
    /// only when a store opens.
    async fn list(&self) -> io::Result<Vec<DirEntry>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&*self.dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if !meta.is_file() {
                continue;
            }
            if let Some(name) = entry.file_name().to_str() {
                out.push(DirEntry {
                    name: name.to_owned(),
                    len: meta.len(),
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        glommio::io::remove(self.path(name)).await.map_err(to_io)
    }

    /// glommio hands queued requests to io_uring only when the reactor runs, which a
    /// busy task does not let happen until it waits for something: one 1 µs timer is
    /// one trip through the reactor (other runnable tasks may run first).
    async fn start_queued(&self) {
        glommio::timer::sleep(std::time::Duration::from_micros(1)).await;
    }

    async fn sync_dir(&self) -> io::Result<()> {
        let dir = glommio::io::Directory::open(&*self.dir)
            .await
            .map_err(to_io)?;
        dir.sync().await.map_err(to_io)?;
        dir.close().await.map_err(to_io)
    }
}
