//! Process-wide settings for training on the CPU.
//!
//! Training allocates and frees a few buffers of megabytes per layer and
//! step (activations, their gradients, candle's gradient store), and hands
//! short bursts of work to candle's worker pool between its own kernels.
//! Two defaults of the surrounding runtime fit that pattern badly:
//!
//! - glibc's allocator serves blocks above its mmap threshold (128 KiB,
//!   rising to at most 32 MiB as blocks are freed) with fresh `mmap`s, and
//!   hands freed memory at the top of the heap back to the kernel above
//!   its trim threshold. Every step then page-faults its activations in
//!   again, the kernel zeroes those pages, and each `munmap` shoots down
//!   TLB entries on the other cores: 15 % of a training step of the default
//!   CNN on two cores, measured with `perf`. [`configure_process`] raises
//!   both thresholds, so freed blocks stay in the heap for the next step.
//!   The price is that memory freed after training stays with the process
//!   (at most what one step of the largest model used) until it exits.
//! - candle runs its element-wise operations (the gradient sums of its
//!   backward pass, optimiser arithmetic) on a worker pool of its own, whose
//!   idle workers spin 25,000 times before they sleep. Training already
//!   keeps every core busy with this crate's kernels and with the parts of
//!   a batch it trains side by side (`train`); candle's pool only adds
//!   threads that wait on each other and spin on the same cores.
//!   [`configure_process`] gives the pool no workers of its own
//!   (`CANDLE_NUM_THREADS=1`: each caller does its element-wise work
//!   itself) unless the variable is set, and shortens the spin
//!   ([`CANDLE_SPIN_LIMIT`]) of a pool that is kept. Element-wise results do
//!   not depend on how the work is split. Training of the default
//!   CNN ran 3 % faster on two idle cores (10 % less CPU per image on a
//!   busy machine), DP-SGD 8-14 %.
//!
//! Both are settings of the process, not of a library: a program that
//! trains (`primiad`, the benchmarks) calls [`configure_process`] first
//! thing in `main`.

/// How long candle's idle worker threads spin before they sleep, unless
/// `CANDLE_BARRIER_POOL_SPIN_LIMIT` is already set. Candle's default
/// (25,000 spins) suits a machine with cores to spare; a daemon shares its
/// cores with networking, and a simulation runs several hospitals' training
/// at once, where spinning workers take the CPU from the threads that have
/// work (about a quarter of the wall time of `primiad simulate` on two
/// cores).
pub const CANDLE_SPIN_LIMIT: &str = "200";

/// Blocks up to this size come from the heap rather than their own `mmap`
/// (glibc only; its own ceiling for the threshold is 32 MiB on 64-bit).
const MMAP_THRESHOLD: i32 = 32 << 20;

/// Free memory at the top of the heap beyond this is returned to the kernel.
const TRIM_THRESHOLD: i32 = 1 << 30;

/// Applies the settings of the module documentation to this process.
///
/// # Safety
///
/// Call it at the start of `main`, before any thread is started: it may
/// set an environment variable, which must not race with a read of the
/// environment in another thread.
pub unsafe fn configure_process() {
    for (name, value) in [
        ("CANDLE_NUM_THREADS", "1"),
        ("CANDLE_BARRIER_POOL_SPIN_LIMIT", CANDLE_SPIN_LIMIT),
    ] {
        if std::env::var_os(name).is_none() {
            // SAFETY: the caller guarantees that no other thread runs yet.
            unsafe { std::env::set_var(name, value) };
        }
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it takes the
    // allocator's own lock and is safe to call at any time. A value it
    // rejects (returning 0) leaves the default in place, which is harmless.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}
