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

#[test]
fn parts_are_the_concatenated_input() {
    use zoetrope_kernels::conv::Part;
    let s = Conv3d {
        batch: 2,
        cin: 3,
        t: 6,
        h: 5,
        w: 7,
        cout: 4,
        kernel: [3, 3, 3],
        time_stride: 1,
        stride: 1,
        pad: 1,
    };
    let hw = s.h * s.w;
    let cache = rand_vec(s.batch * s.cin * 2 * hw, 7);
    let chunk = rand_vec(s.batch * s.cin * 3 * hw, 8);
    let w = rand_vec(s.cout * s.cin * 27, 9);
    // [1 zero frame | 2 cached | 3 new] as one tensor.
    let mut x = vec![0f32; s.batch * s.cin * s.t * hw];
    for bc in 0..s.batch * s.cin {
        let dst = &mut x[bc * s.t * hw..(bc + 1) * s.t * hw];
        dst[hw..3 * hw].copy_from_slice(&cache[bc * 2 * hw..(bc + 1) * 2 * hw]);
        dst[3 * hw..].copy_from_slice(&chunk[bc * 3 * hw..(bc + 1) * 3 * hw]);
    }
    let (to, ho, wo) = s.out_dims().unwrap();
    let mut want = vec![0f32; s.batch * s.cout * to * ho * wo];
    conv::conv3d(&x, &w, None, s, &mut want);
    let parts = [
        Part {
            data: None,
            frames: 1,
        },
        Part {
            data: Some(&cache),
            frames: 2,
        },
        Part {
            data: Some(&chunk),
            frames: 3,
        },
    ];
    let mut got = vec![f32::NAN; want.len()];
    conv::conv3d_parts(&parts, &w, None, s, &mut got);
    assert_eq!(got, want);
    // The same through the gather path (stride 2).
    let s2 = Conv3d { stride: 2, ..s };
    let (to, ho, wo) = s2.out_dims().unwrap();
    let mut want = vec![0f32; s.batch * s.cout * to * ho * wo];
    conv::conv3d(&x, &w, None, s2, &mut want);
    let mut got = vec![f32::NAN; want.len()];
    conv::conv3d_parts(&parts, &w, None, s2, &mut got);
    assert_eq!(got, want);
}
