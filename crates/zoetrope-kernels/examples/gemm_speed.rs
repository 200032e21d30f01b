//! GFLOP/s of the f32 GEMM at given shapes: `cargo run --release -p zoetrope-kernels --example
//! gemm_speed -- M N K [runs]`.
use std::time::Instant;
use zoetrope_kernels::gemm::{self, Beta, Mat};

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let (m, n, k) = (args[0], args[1], args[2]);
    let runs = args.get(3).copied().unwrap_or(10);
    let a = vec![0.5f32; m * k];
    let b = vec![0.25f32; n * k];
    let mut c = vec![0f32; m * n];
    let mut times = Vec::new();
    for _ in 0..runs + 1 {
        let t = Instant::now();
        gemm::sgemm(
            m,
            n,
            k,
            Mat::rows(&a, k),
            Mat::transposed(&b, k),
            &mut c,
            n,
            Beta::Overwrite,
            None,
        );
        times.push(t.elapsed().as_secs_f64());
    }
    times.remove(0);
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let med = times[times.len() / 2];
    println!(
        "{m}x{n}x{k}: {:.3} ms, {:.1} GFLOP/s ({})",
        med * 1e3,
        2.0 * (m * n * k) as f64 / med / 1e9,
        zoetrope_kernels::cpu::describe()
    );
}
