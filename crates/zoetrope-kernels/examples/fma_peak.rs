fn main() {
    for t in [1, 2] {
        println!(
            "{t} thread(s): {:.1} GFLOP/s",
            zoetrope_kernels::peak::fma_peak_gflops(t, 500).unwrap_or(0.0)
        );
    }
}
