//! The machine's measured FMA peak: independent AVX-512 FMA chains in registers, no memory
//! traffic. The yardstick the GEMM's GFLOP/s are quoted against.

use std::time::Instant;

/// f32 GFLOP/s of `threads` threads each running register-only FMAs for about `millis` ms
/// (counting a fused multiply-add as two operations). `None` without AVX-512.
pub fn fma_peak_gflops(threads: usize, millis: u64) -> Option<f64> {
    if !crate::cpu::features().avx512f {
        return None;
    }
    let iters = 2_000_000u64;
    // Calibrate the iteration count on one thread, then run all threads together.
    let t = Instant::now();
    // SAFETY: AVX-512F is available (checked above).
    std::hint::black_box(unsafe { fma_loop(iters / 10) });
    let per_iter = t.elapsed().as_secs_f64() / (iters / 10) as f64;
    let n = ((millis as f64 / 1e3) / per_iter).max(1e4) as u64;
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            // SAFETY: as above.
            s.spawn(|| std::hint::black_box(unsafe { fma_loop(n) }));
        }
    });
    let secs = t.elapsed().as_secs_f64();
    // 24 chains × 16 lanes × 2 flops per iteration, per thread.
    Some((threads as f64 * n as f64 * 24.0 * 16.0 * 2.0) / secs / 1e9)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_loop(n: u64) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_set1_ps(1.0); 24];
    let x = _mm512_set1_ps(0.999_999);
    let y = _mm512_set1_ps(1e-7);
    for _ in 0..n {
        for a in acc.iter_mut() {
            *a = _mm512_fmadd_ps(*a, x, y);
        }
    }
    let mut s = _mm512_setzero_ps();
    for a in acc {
        s = _mm512_add_ps(s, a);
    }
    _mm512_reduce_add_ps(s)
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn fma_loop(_n: u64) -> f32 {
    0.0
}
