//! The fast inference layers against the plain candle ops they replace.
use candle_core::{DType, Device, Module, Tensor, D};
use zoetrope_nn::fast;
use zoetrope_nn::max_abs_diff;

fn randn(shape: &[usize], seed: u64) -> Tensor {
    let dev = Device::Cpu;
    let n: usize = shape.iter().product();
    // Deterministic values without a global RNG: a simple LCG mapped to [-1, 1).
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(v, shape, &dev).unwrap()
}

#[test]
fn linear_f32_matches_candle() {
    for (m, k, n) in [(1, 3, 5), (37, 70, 45), (400, 256, 300)] {
        let x = randn(&[2, m, k], 1);
        let w = randn(&[n, k], 2);
        let b = randn(&[n], 3);
        let want = candle_nn::Linear::new(w.clone(), Some(b.clone()))
            .forward(&x)
            .unwrap();
        let got = fast::Linear::new(w.clone(), Some(b.clone()))
            .unwrap()
            .forward(&x)
            .unwrap();
        assert_eq!(got.dims(), want.dims());
        let err = max_abs_diff(&got, &want).unwrap();
        assert!(err < 1e-5, "{m}x{k}x{n}: {err}");
        // Without bias, and from a non-contiguous input.
        let xt = randn(&[k, m], 4).t().unwrap();
        let want = candle_nn::Linear::new(w.clone(), None)
            .forward(&xt)
            .unwrap();
        let got = fast::Linear::new(w, None).unwrap().forward(&xt).unwrap();
        assert!(max_abs_diff(&got, &want).unwrap() < 1e-5);
    }
}

#[test]
fn linear_bf16_is_the_f32_product_of_the_rounded_values_rounded_once() {
    let (m, k, n) = (50, 96, 70);
    let x = randn(&[1, m, k], 5).to_dtype(DType::BF16).unwrap();
    let w = randn(&[n, k], 6).to_dtype(DType::BF16).unwrap();
    let b = randn(&[n], 7).to_dtype(DType::BF16).unwrap();
    let layer = fast::Linear::new(w.clone(), Some(b.clone())).unwrap();
    let got = layer.forward(&x).unwrap();
    assert_eq!(got.dtype(), DType::BF16);
    let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
    let want = f(&x)
        .matmul(&f(&w).t().unwrap().unsqueeze(0).unwrap())
        .unwrap()
        .broadcast_add(&f(&b))
        .unwrap();
    let want = want.to_dtype(DType::BF16).unwrap();
    // At most one bf16 ulp apart (f32 sums in another order can round the other way).
    let diff = (f(&got) - f(&want)).unwrap().abs().unwrap();
    let ulp = (f(&want).abs().unwrap() * (1.0 / 128.0)).unwrap();
    let over = diff
        .gt(&(ulp + 1e-6).unwrap())
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(over, 0.0, "elements more than one ulp off");
    // The weight can be read back exactly, packed or not.
    assert_eq!(
        max_abs_diff(&f(&layer.weight().unwrap()), &f(&w)).unwrap(),
        0.0
    );
}

#[test]
fn attention_matches_the_composite() {
    let (b, lq, lk, heads, d) = (2, 70, 300, 3, 16);
    let q = (randn(&[b, lq, heads * d], 8) * 3.0).unwrap();
    let k = (randn(&[b, lk, heads * d], 9) * 3.0).unwrap();
    let v = randn(&[b, lk, heads * d], 10);
    let got = fast::attention(&q, &k, &v, heads).unwrap();
    let split = |t: &Tensor, l: usize| {
        t.reshape((b, l, heads, d))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
    };
    let s = (split(&q, lq).matmul(&split(&k, lk).t().unwrap()).unwrap()
        * (1.0 / (d as f64).sqrt()))
    .unwrap();
    let want = candle_nn::ops::softmax_last_dim(&s)
        .unwrap()
        .matmul(&split(&v, lk))
        .unwrap();
    let want = want
        .transpose(1, 2)
        .unwrap()
        .reshape((b, lq, heads * d))
        .unwrap();
    let err = max_abs_diff(&got, &want).unwrap();
    assert!(err < 1e-5, "{err}");
    // bf16 inputs (AMX where the CPU has it): near the f32 result of the rounded inputs.
    let r = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
    let got16 = fast::attention(&r(&q), &r(&k), &r(&v), heads).unwrap();
    assert_eq!(got16.dtype(), DType::F32);
    let f = |t: &Tensor| r(t).to_dtype(DType::F32).unwrap();
    let want16 = fast::attention(&f(&q), &f(&k), &f(&v), heads).unwrap();
    let err = max_abs_diff(&got16, &want16).unwrap();
    assert!(err < 1e-2, "bf16: {err}");
}

fn layer_norm(x: &Tensor, eps: f64) -> Tensor {
    let mean = x.mean_keepdim(D::Minus1).unwrap();
    let xc = x.broadcast_sub(&mean).unwrap();
    let var = xc.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
    xc.broadcast_mul(&(var + eps).unwrap().sqrt().unwrap().recip().unwrap())
        .unwrap()
}

#[test]
fn norms_modulation_and_gates_match_the_composites() {
    let x = randn(&[2, 33, 40], 11).affine(4.0, 1.0).unwrap();
    let scale = randn(&[2, 1, 40], 12);
    let shift = randn(&[2, 1, 40], 13);
    let got = fast::layer_norm_modulate(&x, &scale, &shift, 1e-6).unwrap();
    let want = layer_norm(&x, 1e-6)
        .broadcast_mul(&(&scale + 1.0).unwrap())
        .unwrap()
        .broadcast_add(&shift)
        .unwrap();
    assert!(max_abs_diff(&got, &want).unwrap() < 2e-6);
    // One modulation row for the whole batch.
    let s1 = scale.narrow(0, 0, 1).unwrap();
    let got = fast::layer_norm_modulate(&x, &s1, &s1, 1e-6).unwrap();
    let want = layer_norm(&x, 1e-6)
        .broadcast_mul(&(&s1 + 1.0).unwrap())
        .unwrap()
        .broadcast_add(&s1)
        .unwrap();
    assert!(max_abs_diff(&got, &want).unwrap() < 2e-6);

    let w = randn(&[40], 14);
    let bias = randn(&[40], 15);
    let got = fast::layer_norm_affine(&x, &w, &bias, 1e-6).unwrap();
    let want = layer_norm(&x, 1e-6)
        .broadcast_mul(&w)
        .unwrap()
        .broadcast_add(&bias)
        .unwrap();
    assert!(max_abs_diff(&got, &want).unwrap() < 2e-6);

    let y = randn(&[2, 33, 40], 16);
    let got = fast::add_gated(&x, &y, &scale).unwrap();
    let want = (&x + y.broadcast_mul(&scale).unwrap()).unwrap();
    assert!(max_abs_diff(&got, &want).unwrap() < 1e-6);
    // bf16 in, bf16 out, computed in f32.
    let xb = x.to_dtype(DType::BF16).unwrap();
    let yb = y.to_dtype(DType::BF16).unwrap();
    let got = fast::add_gated(&xb, &yb, &scale).unwrap();
    assert_eq!(got.dtype(), DType::BF16);
    let want = (xb.to_dtype(DType::F32).unwrap()
        + yb.to_dtype(DType::F32)
            .unwrap()
            .broadcast_mul(&scale)
            .unwrap())
    .unwrap()
    .to_dtype(DType::BF16)
    .unwrap();
    assert_eq!(
        max_abs_diff(
            &got.to_dtype(DType::F32).unwrap(),
            &want.to_dtype(DType::F32).unwrap()
        )
        .unwrap(),
        0.0
    );
}

#[test]
fn rope_matches_candle_rope_i() {
    let (b, l, heads, d) = (2, 12, 3, 8);
    let x = randn(&[b, l, heads * d], 17);
    let cos = randn(&[l, d / 2], 18);
    let sin = randn(&[l, d / 2], 19);
    let got = fast::rope_interleaved(&x, &cos, &sin, heads).unwrap();
    let xh = x
        .reshape((b, l, heads, d))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap();
    let want = candle_nn::rotary_emb::rope_i(&xh, &cos, &sin)
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .reshape((b, l, heads * d))
        .unwrap();
    assert!(max_abs_diff(&got, &want).unwrap() < 1e-6);
    // bf16 rows: the f32 result rounded once.
    let xb = x.to_dtype(DType::BF16).unwrap();
    let got = fast::rope_interleaved(&xb, &cos, &sin, heads).unwrap();
    assert_eq!(got.dtype(), DType::BF16);
    let want = fast::rope_interleaved(&xb.to_dtype(DType::F32).unwrap(), &cos, &sin, heads)
        .unwrap()
        .to_dtype(DType::BF16)
        .unwrap();
    assert_eq!(bf16_diff(&got, &want), 0.0);
}

fn bf16_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_abs_diff(
        &a.to_dtype(DType::F32).unwrap(),
        &b.to_dtype(DType::F32).unwrap(),
    )
    .unwrap()
}

#[test]
fn rms_norm_and_residual_add_match_the_composites() {
    let x = randn(&[2, 33, 40], 30).affine(3.0, 0.5).unwrap();
    let w = randn(&[40], 31);
    let got = fast::rms_norm(&x, &w, 1e-6).unwrap();
    let ms = x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
    let want = x
        .broadcast_div(&(ms + 1e-6).unwrap().sqrt().unwrap())
        .unwrap()
        .broadcast_mul(&w)
        .unwrap();
    assert!(max_abs_diff(&got, &want).unwrap() < 2e-6);
    let xb = x.to_dtype(DType::BF16).unwrap();
    let got = fast::rms_norm(&xb, &w, 1e-6).unwrap();
    assert_eq!(got.dtype(), DType::BF16);
    let want = fast::rms_norm(&xb.to_dtype(DType::F32).unwrap(), &w, 1e-6)
        .unwrap()
        .to_dtype(DType::BF16)
        .unwrap();
    assert_eq!(bf16_diff(&got, &want), 0.0);
    assert!(fast::rms_norm(&x, &randn(&[39], 32), 1e-6).is_err());

    let y = randn(&[2, 33, 40], 33);
    let got = fast::add(&x, &y).unwrap();
    assert_eq!(max_abs_diff(&got, &(&x + &y).unwrap()).unwrap(), 0.0);
    let yb = y.to_dtype(DType::BF16).unwrap();
    let got = fast::add(&xb, &yb).unwrap();
    let want = (xb.to_dtype(DType::F32).unwrap() + yb.to_dtype(DType::F32).unwrap())
        .unwrap()
        .to_dtype(DType::BF16)
        .unwrap();
    assert_eq!(bf16_diff(&got, &want), 0.0);
    assert!(fast::add(&x, &xb).is_err());
}

#[test]
fn bad_shapes_are_errors() {
    let x = randn(&[1, 4, 8], 20);
    let l = fast::Linear::new(randn(&[3, 5], 21), None).unwrap();
    assert!(l.forward(&x).unwrap_err().to_string().contains("5 inputs"));
    assert!(fast::attention(&x, &x, &x, 3).is_err());
    assert!(
        fast::layer_norm_modulate(&x, &randn(&[1, 1, 7], 22), &randn(&[1, 1, 8], 23), 1e-6)
            .is_err()
    );
}
