fn main() {
    for kc in [64, 128, 256, 512] {
        println!(
            "kc {kc}: {:.1} GFLOP/s",
            zoetrope_kernels::gemm::micro_kernel_gflops(kc, 2_000_000 / kc * 20).unwrap_or(0.0)
        );
    }
}
