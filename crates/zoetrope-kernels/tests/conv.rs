use rand::{Rng, SeedableRng};
use zoetrope_kernels::conv::{self, Conv3d};

fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect()
}

#[test]
fn implicit_gemm_matches_the_direct_sum() {
    let cases = [
        // 3x3x3 causal-style, 1x1x1, 3x1x1 (time conv), 2D 3x3 stride 2, stride 2 in time.
        Conv3d {
            batch: 2,
            cin: 5,
            t: 4,
            h: 7,
            w: 9,
            cout: 6,
            kernel: [3, 3, 3],
            time_stride: 1,
            stride: 1,
            pad: 1,
        },
        Conv3d {
            batch: 1,
            cin: 8,
            t: 2,
            h: 5,
            w: 4,
            cout: 3,
            kernel: [1, 1, 1],
            time_stride: 1,
            stride: 1,
            pad: 0,
        },
        Conv3d {
            batch: 1,
            cin: 4,
            t: 5,
            h: 3,
            w: 6,
            cout: 40,
            kernel: [3, 1, 1],
            time_stride: 2,
            stride: 1,
            pad: 0,
        },
        Conv3d {
            batch: 2,
            cin: 3,
            t: 1,
            h: 9,
            w: 8,
            cout: 5,
            kernel: [1, 3, 3],
            time_stride: 1,
            stride: 2,
            pad: 0,
        },
        Conv3d {
            batch: 1,
            cin: 20,
            t: 3,
            h: 17,
            w: 33,
            cout: 33,
            kernel: [3, 3, 3],
            time_stride: 1,
            stride: 1,
            pad: 1,
        },
    ];
    for s in cases {
        let [kt, kh, kw] = s.kernel;
        let x = rand_vec(s.batch * s.cin * s.t * s.h * s.w, 1);
        let w = rand_vec(s.cout * s.cin * kt * kh * kw, 2);
        let bias = rand_vec(s.cout, 3);
        let (to, ho, wo) = s.out_dims().unwrap();
        let n = s.batch * s.cout * to * ho * wo;
        for b in [None, Some(bias.as_slice())] {
            let mut want = vec![0f32; n];
            conv::reference(&x, &w, b, s, &mut want);
            let mut got = vec![f32::NAN; n];
            conv::conv3d(&x, &w, b, s, &mut got);
            let err = got
                .iter()
                .zip(&want)
                .map(|(g, w)| (g - w).abs())
                .fold(0f32, f32::max);
            let tol = 2e-6 * ((s.cin * kt * kh * kw) as f32).sqrt();
            assert!(err < tol, "{s:?} bias={}: max error {err}", b.is_some());
        }
    }
}
