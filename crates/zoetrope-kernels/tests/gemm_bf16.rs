use half::bf16;
use rand::{Rng, SeedableRng};
use zoetrope_kernels::gemm_bf16::{self, Activation, PackedB};

fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect()
}

fn round(v: f32) -> f64 {
    bf16::from_f32(v).to_f64()
}

/// The exact product of the bf16-rounded inputs, in f64.
fn reference(m: usize, n: usize, k: usize, a: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f64> {
    let mut c = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = bias.map_or(0.0, |b| b[j] as f64);
            for p in 0..k {
                s += round(a[i * k + p]) * round(w[j * k + p]);
            }
            c[i * n + j] = s;
        }
    }
    c
}

#[test]
fn matches_the_product_of_rounded_inputs() {
    for &(m, n, k) in &[
        (1, 1, 1),
        (16, 16, 32),
        (33, 47, 70),
        (100, 200, 300),
        (5, 130, 1030),
        (64, 32, 0),
    ] {
        let a = rand_vec(m * k, 1);
        let w = rand_vec(n * k, 2); // [n, k], as a linear layer's weight
        let bias = rand_vec(n, 3);
        let packed = PackedB::pack(k, n, &w, 1, k.max(1));
        for with_bias in [false, true] {
            let b = with_bias.then_some(bias.as_slice());
            let want = reference(m, n, k, &a, &w, b);
            let ldc = n + 2;
            let mut got = vec![7f32; m * ldc];
            gemm_bf16::gemm(m, &a, k, &packed, &mut got, ldc, b, Activation::None);
            let tol = 1e-5 * (k as f64).sqrt() + 1e-6;
            for i in 0..m {
                for j in 0..n {
                    let (g, w) = (got[i * ldc + j] as f64, want[i * n + j]);
                    assert!(
                        (g - w).abs() <= tol,
                        "{m}x{n}x{k} bias={with_bias} C[{i}][{j}] = {g}, want {w}"
                    );
                }
                assert_eq!(
                    &got[i * ldc + n..i * ldc + ldc],
                    &[7.0, 7.0],
                    "padding written"
                );
            }
            // bf16 in, bf16 out: one rounding of the f32 sum.
            let a16: Vec<bf16> = a.iter().map(|&v| bf16::from_f32(v)).collect();
            let mut got16 = vec![bf16::ZERO; m * n];
            gemm_bf16::gemm(m, &a16, k, &packed, &mut got16, n, b, Activation::None);
            for (idx, (g, w)) in got16.iter().zip(&want).enumerate() {
                let w16 = bf16::from_f64(*w).to_f64();
                let ulp = w16.abs() * 2f64.powi(-7) + tol;
                assert!(
                    (g.to_f64() - w16).abs() <= ulp,
                    "bf16 out [{idx}]: {g} vs {w16}"
                );
            }
        }
    }
}

#[test]
fn gelu_epilogue_acts_on_the_rounded_output() {
    let (m, n, k) = (40, 70, 64);
    let a: Vec<bf16> = rand_vec(m * k, 4)
        .iter()
        .map(|&v| bf16::from_f32(2.0 * v))
        .collect();
    let w = rand_vec(n * k, 5);
    let bias = rand_vec(n, 6);
    let packed = PackedB::pack(k, n, &w, 1, k);
    let mut plain = vec![bf16::ZERO; m * n];
    gemm_bf16::gemm(
        m,
        &a,
        k,
        &packed,
        &mut plain,
        n,
        Some(&bias),
        Activation::None,
    );
    let mut fused = vec![bf16::ZERO; m * n];
    gemm_bf16::gemm(
        m,
        &a,
        k,
        &packed,
        &mut fused,
        n,
        Some(&bias),
        Activation::GeluTanh,
    );
    for (i, (&p, &f)) in plain.iter().zip(&fused).enumerate() {
        let want = bf16::from_f32(gemm_bf16::gelu_tanh(p.to_f32()));
        let diff = (f.to_f32() - want.to_f32()).abs();
        // tanh by the exp identity may differ from libm's in the last f32 bits: one bf16 ulp.
        assert!(
            diff <= want.to_f32().abs() / 128.0 + 1e-6,
            "[{i}] gelu({p}) = {f}, want {want}"
        );
    }
}

#[test]
fn bf16_conversions_round_to_nearest_even_like_half() {
    use zoetrope_kernels::rows;
    // Normal-range values of both signs, exact ties (the low 16 bits 0x8000) and their
    // neighbours, values that round up into the next binade, and lengths around 16.
    let mut src: Vec<f32> = (0..997)
        .map(|i| ((i as f32) * 0.731).sin() * 10f32.powi(i % 9 - 4))
        .collect();
    for base in [0x3f80_0000u32, 0xbf80_0000, 0x4049_0000, 0x3f7f_ffff] {
        for low in [0x7fffu32, 0x8000, 0x8001, 0x1_8000] {
            src.push(f32::from_bits(base + low));
        }
    }
    src.extend([0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, 65504.0, 1e30]);
    for len in [0, 1, 15, 16, 17, 33, src.len()] {
        let s = &src[..len];
        let mut bits = vec![0u16; len];
        rows::narrow_bf16_bits(s, &mut bits);
        for (i, (&b, &x)) in bits.iter().zip(s).enumerate() {
            assert_eq!(b, half::bf16::from_f32(x).to_bits(), "element {i}: {x:e}");
        }
        let mut back = vec![f32::NAN; len];
        rows::widen_bf16_bits(&bits, &mut back);
        for (&w, &b) in back.iter().zip(&bits) {
            assert_eq!(w.to_bits(), half::bf16::from_bits(b).to_f32().to_bits());
        }
    }
}
