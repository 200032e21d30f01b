use rand::{Rng, SeedableRng};
use zoetrope_kernels::gemm::{self, Beta, Mat};

fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect()
}

fn check(m: usize, n: usize, k: usize, b_transposed: bool, beta: Beta, with_bias: bool) {
    let a = rand_vec(m * k, 1);
    let b = rand_vec(k * n, 2);
    let bias = rand_vec(n, 3);
    let ldc = n + 3;
    let c0 = rand_vec(m * ldc, 4);
    let bm = if b_transposed {
        Mat::transposed(&b, k)
    } else {
        Mat::rows(&b, n)
    };
    let bias = with_bias.then_some(bias.as_slice());
    let mut want = c0.clone();
    gemm::reference(m, n, k, Mat::rows(&a, k), bm, &mut want, ldc, beta, bias);
    for serial in [false, true] {
        let mut got = c0.clone();
        let f = if serial {
            gemm::sgemm_serial
        } else {
            gemm::sgemm
        };
        f(m, n, k, Mat::rows(&a, k), bm, &mut got, ldc, beta, bias);
        let tol = 1e-5 * (k as f32).sqrt() + 1e-6;
        for i in 0..m {
            for j in 0..ldc {
                let (g, w) = (got[i * ldc + j], want[i * ldc + j]);
                if j >= n {
                    assert_eq!(
                        g,
                        c0[i * ldc + j],
                        "padding column {j} of row {i} was written"
                    );
                } else {
                    assert!(
                        (g - w).abs() <= tol,
                        "{m}x{n}x{k} bt={b_transposed} {beta:?} bias={} serial={serial}: \
                         C[{i}][{j}] = {g}, want {w}",
                        bias.is_some()
                    );
                }
            }
        }
    }
}

#[test]
fn matches_reference_on_edge_and_block_sizes() {
    for &(m, n, k) in &[
        (1, 1, 1),
        (14, 32, 7),
        (15, 33, 257),
        (113, 257, 300),
        (3, 700, 64),
        (200, 40, 513),
        (30, 2100, 300),
        (29, 65, 0),
    ] {
        for bt in [false, true] {
            check(m, n, k, bt, Beta::Overwrite, false);
            check(m, n, k, bt, Beta::Accumulate, true);
        }
        check(m, n, k, false, Beta::Overwrite, true);
    }
}

#[test]
fn strided_a_is_read_through_its_strides() {
    // A given as the transpose of a row-major [k, m] buffer.
    let (m, n, k) = (37, 45, 70);
    let at = rand_vec(k * m, 5);
    let b = rand_vec(k * n, 6);
    let a = Mat {
        data: &at,
        rs: 1,
        cs: m,
    };
    let mut want = vec![0.0; m * n];
    gemm::reference(
        m,
        n,
        k,
        a,
        Mat::rows(&b, n),
        &mut want,
        n,
        Beta::Overwrite,
        None,
    );
    let mut got = vec![0.0; m * n];
    gemm::sgemm(
        m,
        n,
        k,
        a,
        Mat::rows(&b, n),
        &mut got,
        n,
        Beta::Overwrite,
        None,
    );
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-4, "{g} vs {w}");
    }
}

#[test]
#[should_panic(expected = "needs")]
fn too_short_an_input_is_refused() {
    let a = vec![0.0; 10];
    let b = vec![0.0; 100];
    let mut c = vec![0.0; 100];
    gemm::sgemm(
        10,
        10,
        10,
        Mat::rows(&a, 10),
        Mat::rows(&b, 10),
        &mut c,
        10,
        Beta::Overwrite,
        None,
    );
}

#[test]
fn prepacked_b_gives_the_same_product() {
    use zoetrope_kernels::gemm::PackedF32;
    for &(m, n, k) in &[(5, 40, 30), (130, 1100, 300), (20, 33, 600), (801, 70, 40)] {
        let a = rand_vec(m * k, 7);
        let w = rand_vec(n * k, 8); // [n, k]
        let bias = rand_vec(n, 9);
        let packed = PackedF32::pack(Mat::transposed(&w, k), k, n);
        assert_eq!(packed.get(k - 1, n - 1), w[(n - 1) * k + k - 1]);
        let mut want = vec![0f32; m * n];
        gemm::sgemm(
            m,
            n,
            k,
            Mat::rows(&a, k),
            Mat::transposed(&w, k),
            &mut want,
            n,
            Beta::Overwrite,
            Some(&bias),
        );
        let mut got = vec![0f32; m * n];
        gemm::sgemm_with(
            m,
            n,
            k,
            Mat::rows(&a, k),
            &packed,
            &mut got,
            n,
            Beta::Overwrite,
            Some(&bias),
        );
        assert_eq!(got, want, "{m}x{n}x{k}");
        // Accumulating into C, without a bias.
        let c0 = rand_vec(m * n, 10);
        let (mut want, mut got) = (c0.clone(), c0);
        gemm::sgemm(
            m,
            n,
            k,
            Mat::rows(&a, k),
            Mat::transposed(&w, k),
            &mut want,
            n,
            Beta::Accumulate,
            None,
        );
        gemm::sgemm_with(
            m,
            n,
            k,
            Mat::rows(&a, k),
            &packed,
            &mut got,
            n,
            Beta::Accumulate,
            None,
        );
        assert_eq!(got, want, "{m}x{n}x{k}, accumulating");
    }
}
