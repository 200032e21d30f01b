//! The allocator settings of the `zoetrope` binary, shared with the training benchmarks so they
//! measure what training runs with. The binary and the examples each install mimalloc as their
//! global allocator; this only sets its options.

/// mimalloc's `mi_option_purge_delay` (its `mi_option_e` enum, the same in v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory mapped instead of handing it back to the OS after a delay: candle frees
/// and reallocates buffers of the same sizes every step, and a fifth of a DiT training step went
/// to the kernel zeroing the pages faulted back in. `MIMALLOC_PURGE_DELAY` still overrides.
/// Call it first thing in `main`. Without mimalloc as the global allocator it changes nothing.
pub fn keep_freed_memory() {
    // SAFETY: sets an option's default before it is first read; no memory is touched.
    unsafe { libmimalloc_sys::mi_option_set_default(MI_OPTION_PURGE_DELAY, -1) };
}
