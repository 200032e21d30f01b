use rand::{Rng, SeedableRng};
use zoetrope_kernels::attention::{self, Heads, Shape};
use zoetrope_kernels::rows;

fn rand_vec(n: usize, seed: u64, amp: f32) -> Vec<f32> {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| r.random_range(-amp..amp)).collect()
}

#[test]
fn flash_attention_matches_the_full_softmax() {
    // Query and key lengths around the block sizes (64 queries; 252 keys in f32, 256 in bf16),
    // batch and heads > 1, scores large enough that the running maximum changes between key blocks.
    for &(b, h, lq, lk, d) in &[
        (1, 1, 1, 1, 8),
        (2, 3, 70, 300, 16),
        (1, 2, 129, 513, 128),
        (1, 1, 5, 700, 32),
    ] {
        let w = h * d;
        let q = rand_vec(b * lq * w, 1, 3.0);
        let k = rand_vec(b * lk * w, 2, 3.0);
        let v = rand_vec(b * lk * w, 3, 1.0);
        let s = Shape {
            batch: b,
            heads: h,
            q_len: lq,
            kv_len: lk,
            head_dim: d,
        };
        let scale = 1.0 / (d as f32).sqrt();
        let (qh, kh, vh) = (
            Heads::tokens_major(&q, lq, h, d),
            Heads::tokens_major(&k, lk, h, d),
            Heads::tokens_major(&v, lk, h, d),
        );
        let mut want = vec![0f32; b * lq * w];
        attention::reference(qh, kh, vh, &mut want, s, scale);
        let mut got = vec![f32::NAN; b * lq * w];
        attention::attention(qh, kh, vh, &mut got, s, scale);
        let err = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - w).abs())
            .fold(0f32, f32::max);
        assert!(err < 2e-6, "[{b},{h},{lq},{lk},{d}]: max error {err}");
    }
}

#[test]
fn heads_major_layout_is_read_through_strides() {
    // [B, H, L, d] inputs (heads outermost).
    let (b, h, lq, lk, d) = (1, 2, 40, 50, 16);
    let q = rand_vec(b * h * lq * d, 4, 2.0);
    let k = rand_vec(b * h * lk * d, 5, 2.0);
    let v = rand_vec(b * h * lk * d, 6, 1.0);
    fn view(data: &[f32], h: usize, l: usize, d: usize) -> Heads<'_> {
        Heads {
            data,
            batch: h * l * d,
            token: d,
            head: l * d,
        }
    }
    let s = Shape {
        batch: b,
        heads: h,
        q_len: lq,
        kv_len: lk,
        head_dim: d,
    };
    let mut want = vec![0f32; b * lq * h * d];
    attention::reference(
        view(&q, h, lq, d),
        view(&k, h, lk, d),
        view(&v, h, lk, d),
        &mut want,
        s,
        0.3,
    );
    let mut got = vec![0f32; b * lq * h * d];
    attention::attention(
        view(&q, h, lq, d),
        view(&k, h, lk, d),
        view(&v, h, lk, d),
        &mut got,
        s,
        0.3,
    );
    let err = got
        .iter()
        .zip(&want)
        .map(|(g, w)| (g - w).abs())
        .fold(0f32, f32::max);
    assert!(err < 2e-6, "max error {err}");
}

#[test]
fn vector_exp_is_within_two_ulp() {
    let mut xs: Vec<f32> = (0..20001).map(|i| -100.0 + i as f32 * 0.0094).collect();
    xs.extend([0.0, -0.0, 1e-8, -1e-8, 88.0, -87.0, -103.0, -1e9]);
    let mut got = xs.clone();
    rows::exp_in_place(&mut got);
    for (&x, &g) in xs.iter().zip(&got) {
        let w = (x as f64).exp();
        let ulp = (w as f32).abs() * f32::EPSILON;
        assert!(
            ((g as f64) - w).abs() <= 2.0 * ulp as f64 + 1e-37,
            "exp({x}) = {g}, want {w}"
        );
    }
}

#[test]
fn silu_matches_its_definition() {
    let xs: Vec<f32> = (0..4001).map(|i| -60.0 + i as f32 * 0.03).collect();
    let mut got = xs.clone();
    rows::silu_in_place(&mut got);
    for (&x, &g) in xs.iter().zip(&got) {
        let w = x as f64 / (1.0 + (-x as f64).exp());
        assert!(
            (g as f64 - w).abs() <= 4.0 * f32::EPSILON as f64 * w.abs().max(1e-30),
            "silu({x}) = {g}, want {w}"
        );
    }
}

#[test]
fn bf16_attention_matches_the_full_softmax_of_the_rounded_inputs() {
    use half::bf16;
    use zoetrope_kernels::attention::Heads16;
    for &(b, h, lq, lk, d) in &[
        (1, 2, 70, 300, 64),
        (2, 1, 5, 40, 32),
        (1, 3, 130, 777, 128),
        (2, 2, 33, 50, 16),
        (1, 1, 1, 1, 40),
    ] {
        let w = h * d;
        let round = |v: Vec<f32>| -> Vec<bf16> { v.into_iter().map(bf16::from_f32).collect() };
        let q = round(rand_vec(b * lq * w, 11, 2.0));
        let k = round(rand_vec(b * lk * w, 12, 2.0));
        let v = round(rand_vec(b * lk * w, 13, 1.0));
        let s = Shape {
            batch: b,
            heads: h,
            q_len: lq,
            kv_len: lk,
            head_dim: d,
        };
        let scale = 1.0 / (d as f32).sqrt();
        let wide = |x: &[bf16]| -> Vec<f32> { x.iter().map(|v| v.to_f32()).collect() };
        let (qf, kf, vf) = (wide(&q), wide(&k), wide(&v));
        let mut want = vec![0f32; b * lq * w];
        attention::reference(
            Heads::tokens_major(&qf, lq, h, d),
            Heads::tokens_major(&kf, lk, h, d),
            Heads::tokens_major(&vf, lk, h, d),
            &mut want,
            s,
            scale,
        );
        let mut got = vec![f32::NAN; b * lq * w];
        attention::attention_bf16(
            Heads16::tokens_major(&q, lq, h, d),
            Heads16::tokens_major(&k, lk, h, d),
            Heads16::tokens_major(&v, lk, h, d),
            &mut got,
            s,
            scale,
        );
        // The probabilities are rounded to bf16 (2^-9 relative) before P·V.
        let err = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - w).abs())
            .fold(0f32, f32::max);
        assert!(err < 1e-2, "[{b},{h},{lq},{lk},{d}]: max error {err}");
    }
}
