//! `spate-bench`: Nexmark benchmarks for Spate with HDR latency reports. See
//! [`spate_bench::cli`] for the commands.

fn main() -> anyhow::Result<()> {
    fix_malloc_mmap_threshold();
    spate_bench::cli::main()
}

/// Keeps glibc's mmap threshold at its default of 128 KiB, as
/// `MALLOC_MMAP_THRESHOLD_=131072` in the environment would (an allocator
/// setting of this program, not of the engine: a service that embeds the
/// engine chooses its own).
///
/// glibc serves an allocation of at least the threshold from a mapping of its
/// own and unmaps it when it is freed, but the first such free raises the
/// threshold to that size (up to 32 MiB). What a checkpoint allocates and
/// frees in that range (archive buffers of a few hundred KiB, one per key
/// group) then comes from arenas that keep their freed pages, fragmented
/// among longer-lived allocations: with 1 GiB of state the incremental
/// checkpoint benchmark peaked 300–450 MiB higher (`bench/README.md`,
/// "Memory: glibc's moving mmap threshold"). A threshold set in the
/// environment is left as it is.
fn fix_malloc_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let set_by_user = [
            "MALLOC_MMAP_THRESHOLD_",
            "MALLOC_TRIM_THRESHOLD_",
            "MALLOC_TOP_PAD_",
            "MALLOC_MMAP_MAX_",
        ]
        .iter()
        .any(|name| std::env::var_os(name).is_some());
        if !set_by_user {
            // Called before this program starts a thread or allocates much.
            // SAFETY: only sets one parameter of glibc's allocator.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
            }
        }
    }
}
