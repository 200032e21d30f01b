//! GFLOP/s of the AMX bf16 GEMM: `cargo run --release -p zoetrope-kernels --example
//! gemm_bf16_speed -- M N K [runs]` (weight `[N, K]` packed once, bf16 activations in and out).
use half::bf16;
use std::time::Instant;
use zoetrope_kernels::gemm_bf16::{self, Activation, PackedB};

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let (m, n, k) = (args[0], args[1], args[2]);
    let runs = args.get(3).copied().unwrap_or(10);
    let a = vec![bf16::from_f32(0.5); m * k];
    let w = vec![bf16::from_f32(0.25); n * k];
    let packed = PackedB::pack(k, n, &w, 1, k);
    let mut c = vec![bf16::ZERO; m * n];
    let mut times = Vec::new();
    for _ in 0..runs + 1 {
        let t = Instant::now();
        gemm_bf16::gemm(m, &a, k, &packed, &mut c, n, None, Activation::None);
        times.push(t.elapsed().as_secs_f64());
    }
    times.remove(0);
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let med = times[times.len() / 2];
    println!(
        "bf16 {m}x{n}x{k}: {:.3} ms, {:.1} GFLOP/s (amx: {})",
        med * 1e3,
        2.0 * (m * n * k) as f64 / med / 1e9,
        gemm_bf16::amx_available()
    );
}
