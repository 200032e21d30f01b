//! GFLOP/s of the f32 GEMM at given shapes: `cargo run --release -p zoetrope-kernels --example
//! gemm_speed -- M N K [runs] [--cold]`.
use std::time::Instant;
use zoetrope_kernels::gemm::{self, Beta, Mat, PackedF32};

fn median(mut t: Vec<f64>) -> f64 {
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    t[t.len() / 2]
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .map(|a| a.parse().expect("M N K [runs] [--cold]"))
        .collect();
    let (m, n, k) = (args[0], args[1], args[2]);
    let runs = args.get(3).copied().unwrap_or(10);
    let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.25).collect();
    let b: Vec<f32> = (0..n * k).map(|i| (i % 5) as f32 * 0.125).collect();
    let mut c = vec![0f32; m * n];
    // Weights used once per forward (a transformer's) come from memory, not cache: with
    // `--cold` the prepacked run cycles through copies of B that together exceed 1 GiB.
    let cold = std::env::args().any(|a| a == "--cold");
    let copies = if cold {
        (1usize << 30).div_ceil(4 * n * k).max(2)
    } else {
        1
    };
    let packs: Vec<PackedF32> = (0..copies)
        .map(|_| PackedF32::pack(Mat::transposed(&b, k), k, n))
        .collect();
    let mut next = 0;
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
    let fresh = std::env::args().any(|a| a == "--fresh");
    let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.01).collect();
    let bias = std::env::args().any(|a| a == "--bias").then_some(&bias[..]);
    let t_pre = time(&mut |c| {
        next += 1;
        let mut own = if fresh { vec![0f32; m * n] } else { Vec::new() };
        let c = if fresh { &mut own[..] } else { c };
        gemm::sgemm_with(
            m,
            n,
            k,
            Mat::rows(&a, k),
            &packs[next % copies],
            c,
            n,
            Beta::Overwrite,
            bias,
        )
    });
    let pre = if cold {
        "B prepacked, cold (another copy each call)"
    } else {
        "B prepacked (as a linear layer)"
    };
    for (what, t) in [("B packed per call", t_pack), (pre, t_pre)] {
        println!(
            "{m}x{n}x{k}, {what}: {:.3} ms, {:.1} GFLOP/s ({})",
            t * 1e3,
            2.0 * (m * n * k) as f64 / t / 1e9,
            zoetrope_kernels::cpu::describe()
        );
    }
}
