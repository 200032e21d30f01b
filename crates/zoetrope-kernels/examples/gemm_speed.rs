//! GFLOP/s of the f32 GEMM at given shapes: `cargo run --release -p zoetrope-kernels --example
//! gemm_speed -- M N K [runs]`.
use std::time::Instant;
use zoetrope_kernels::gemm::{self, Beta, Mat, PackedF32};

fn median(mut t: Vec<f64>) -> f64 {
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    t[t.len() / 2]
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("M N K [runs]"))
        .collect();
    let (m, n, k) = (args[0], args[1], args[2]);
    let runs = args.get(3).copied().unwrap_or(10);
    let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.25).collect();
    let b: Vec<f32> = (0..n * k).map(|i| (i % 5) as f32 * 0.125).collect();
    let mut c = vec![0f32; m * n];
    let packed = PackedF32::pack(Mat::transposed(&b, k), k, n);
    let mut time = |f: &mut dyn FnMut(&mut [f32])| {
        f(&mut c);
        median(
            (0..runs)
                .map(|_| {
                    let t = Instant::now();
                    f(&mut c);
                    t.elapsed().as_secs_f64()
                })
                .collect(),
        )
    };
    let t_pack = time(&mut |c| {
        gemm::sgemm(
            m,
            n,
            k,
            Mat::rows(&a, k),
            Mat::transposed(&b, k),
            c,
            n,
            Beta::Overwrite,
            None,
        )
    });
    let t_pre = time(&mut |c| {
        gemm::sgemm_with(
            m,
            n,
            k,
            Mat::rows(&a, k),
            &packed,
            c,
            n,
            Beta::Overwrite,
            None,
        )
    });
    for (what, t) in [
        ("B packed per call", t_pack),
        ("B prepacked (as a linear layer)", t_pre),
    ] {
        println!(
            "{m}x{n}x{k}, {what}: {:.3} ms, {:.1} GFLOP/s ({})",
            t * 1e3,
            2.0 * (m * n * k) as f64 / t / 1e9,
            zoetrope_kernels::cpu::describe()
        );
    }
}
