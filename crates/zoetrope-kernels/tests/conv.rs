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

#[test]
fn bf16_products_match_the_direct_sum_of_the_rounded_values() {
    use zoetrope_kernels::conv::{Part, Weight16};
    let round = |v: &[f32]| -> Vec<f32> {
        v.iter()
            .map(|&x| half::bf16::from_f32(x).to_f32())
            .collect()
    };
    // Channel counts off the tiles' 32, a depth over one 1024-deep slice (40·27 = 1080), a
    // width over one 128-column task, and a stride-2 case (the f32 path).
    let cases = [
        (40, 3, 9, 150, 37, [3, 3, 3], 1, 1),
        (5, 4, 7, 9, 6, [3, 3, 3], 1, 1),
        (16, 2, 5, 4, 3, [1, 1, 1], 1, 0),
        (3, 1, 9, 8, 5, [1, 3, 3], 2, 0),
    ];
    for (cin, t, h, w, cout, kernel, stride, pad) in cases {
        let s = Conv3d {
            batch: 1,
            cin,
            t,
            h,
            w,
            cout,
            kernel,
            time_stride: 1,
            stride,
            pad,
        };
        let k = cin * kernel.iter().product::<usize>();
        let x = rand_vec(cin * t * h * w, 4);
        let wt = rand_vec(cout * k, 5);
        let bias = rand_vec(cout, 6);
        // The reference sees the zero frame written out.
        let mut xz = vec![0f32; cin * (t + 1) * h * w];
        for ci in 0..cin {
            let (src, dst) = (ci * t * h * w, (ci * (t + 1) + 1) * h * w);
            xz[dst..dst + t * h * w].copy_from_slice(&x[src..src + t * h * w]);
        }
        let sz = Conv3d { t: t + 1, ..s };
        let (to, ho, wo) = sz.out_dims().unwrap();
        let n = cout * to * ho * wo;
        let mut want = vec![0f32; n];
        if stride == 1 && conv::bf16_conv_available() {
            conv::reference(&round(&xz), &round(&wt), Some(&bias), sz, &mut want);
        } else {
            conv::reference(&xz, &wt, Some(&bias), sz, &mut want);
        }
        let w16 = Weight16::pack(&wt, cout, cin, k / cin);
        let mut got = vec![f32::NAN; n];
        // A causal conv's input: a zero frame in front of the data.
        let s = Conv3d { t: t + 1, ..s };
        let parts = [
            Part {
                data: None,
                frames: 1,
            },
            Part {
                data: Some(&x[..]),
                frames: t,
            },
        ];
        conv::conv3d_parts_with(&parts, &wt, Some(&w16), Some(&bias), s, &mut got);
        let err = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - w).abs())
            .fold(0f32, f32::max);
        assert!(err < 2e-6 * (k as f32).sqrt(), "{s:?}: max error {err}");
    }
}
