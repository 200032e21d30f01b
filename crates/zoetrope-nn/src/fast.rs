//! Inference layers on zoetrope's own CPU kernels ([`zoetrope_kernels`]), with candle's ops as
//! the path everywhere else (CUDA, dtypes the kernels don't take, or with the kernels switched
//! off by `ZOETROPE_COMPOSITE_OPS=1` / [`crate::fused::set_enabled`]).
//!
//! - [`Linear`]: f32 weights through the packed AVX-512 GEMM (bias added in the GEMM's
//!   epilogue); bf16 weights packed once at load into AMX tiles and the original dropped (no
//!   extra memory), the product accumulated in f32 with the bias added before the single
//!   rounding of the output (as torch's bf16 `addmm`).
//! - [`attention`]: flash attention on `[B, L, H·d]` tensors, no head transposes, no score
//!   matrix.
//! - [`layer_norm_modulate`], [`layer_norm_affine`], [`add_gated`], [`rope_interleaved`]: one
//!   pass each over the rows instead of five to eight candle ops.
//!
//! None of these has a backward: they serve sampling. Training keeps [`crate::fused`].

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Module, Result, Shape, Tensor,
};
use candle_nn::VarBuilder;
use half::bf16;
use rayon::prelude::*;
use zoetrope_kernels::attention::{self as flash, Heads};
use zoetrope_kernels::conv::Weight16;
use zoetrope_kernels::gemm::{self, Beta, Mat, PackedF32};
use zoetrope_kernels::gemm_bf16::{self, Activation, PackedB};
use zoetrope_kernels::rows;

/// Whether the kernels serve `t`: on the CPU, not switched off, and not part of a graph that
/// needs gradients (these kernels have no backward).
fn kernels_on(t: &Tensor) -> bool {
    t.device().is_cpu() && crate::fused::enabled() && !t.track_op()
}

/// A contiguous tensor's elements as a slice of `T`.
fn slice<'a, T: candle_core::WithDType>(
    op: &str,
    s: &'a CpuStorage,
    l: &Layout,
) -> Result<&'a [T]> {
    let data = s.as_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// `y = x·Wᵀ + b` for `x [..., in]`, `W [out, in]`. See the module docs for the paths.
#[derive(Debug, Clone)]
pub struct Linear {
    /// `[out, in]`; `None` once packed for AMX (the packed copy replaces it).
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    bias_f32: Option<Arc<Vec<f32>>>,
    packed: Option<Arc<PackedB>>,
    /// f32 weights on the CPU, packed once into the GEMM's panels (replacing `weight`).
    packed_f32: Option<Arc<PackedF32>>,
    in_dim: usize,
    out_dim: usize,
    dtype: DType,
}

/// `candle_nn::linear`'s contract (weight `[out, in]` and bias `[out]` under `vb`) on
/// [`Linear`].
pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let w = vb.get((out_dim, in_dim), "weight")?;
    let b = vb.get(out_dim, "bias")?;
    Linear::new(w, Some(b))
}

/// [`linear`] without a bias.
pub fn linear_no_bias(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let w = vb.get((out_dim, in_dim), "weight")?;
    Linear::new(w, None)
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let (out_dim, in_dim) = weight.dims2()?;
        let dtype = weight.dtype();
        let bias_f32 = match &bias {
            Some(b) if weight.device().is_cpu() => Some(Arc::new(
                b.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
            )),
            _ => None,
        };
        let mut layer = Self {
            weight: Some(weight),
            bias,
            bias_f32,
            packed: None,
            packed_f32: None,
            in_dim,
            out_dim,
            dtype,
        };
        let w = layer.weight.as_ref().expect("just set");
        if dtype == DType::BF16 && w.device().is_cpu() && !w.track_op() {
            // Packed for AMX tiles; CPUs without AMX read the same tiles through the f32 GEMM,
            // so bf16 weights keep their memory and every CPU rounds the output once.
            let data = w.contiguous()?.flatten_all()?.to_vec1::<bf16>()?;
            layer.packed = Some(Arc::new(PackedB::pack(in_dim, out_dim, &data, 1, in_dim)));
            layer.weight = None;
        } else if dtype == DType::F32 && w.device().is_cpu() && !w.track_op() {
            let data = w.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
            let packed = PackedF32::pack(Mat::transposed(&data, in_dim), in_dim, out_dim);
            layer.packed_f32 = Some(Arc::new(packed));
            layer.weight = None;
        }
        Ok(layer)
    }

    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    /// The weight `[out, in]` (rebuilt from the packed copy when the layer holds only that).
    pub fn weight(&self) -> Result<Tensor> {
        if let (None, Some(p)) = (&self.weight, &self.packed_f32) {
            let (k, n) = (self.in_dim, self.out_dim);
            let data: Vec<f32> = (0..n * k).map(|idx| p.get(idx % k, idx / k)).collect();
            return Tensor::from_vec(data, (n, k), &candle_core::Device::Cpu);
        }
        match (&self.weight, &self.packed) {
            (Some(w), _) => Ok(w.clone()),
            (None, Some(p)) => {
                let eye = Tensor::eye(self.in_dim, DType::BF16, &candle_core::Device::Cpu)?;
                // Rows of I·Wᵀ are the columns of Wᵀ: [in, out]; transpose back.
                let mut out = vec![bf16::ZERO; self.in_dim * self.out_dim];
                let eye = eye.flatten_all()?.to_vec1::<bf16>()?;
                gemm_bf16::gemm(
                    self.in_dim,
                    &eye,
                    self.in_dim,
                    p,
                    &mut out,
                    self.out_dim,
                    None,
                    Activation::None,
                );
                Tensor::from_vec(out, (self.in_dim, self.out_dim), &candle_core::Device::Cpu)?
                    .t()?
                    .contiguous()
            }
            (None, None) => unreachable!("a Linear holds its weight in one form"),
        }
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

impl Linear {
    /// `gelu_tanh(x·Wᵀ + b)`. With AMX the GELU runs in the GEMM's epilogue on the rounded bf16
    /// output (what two bf16 ops compute, without the second pass over memory).
    pub fn forward_gelu(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, Activation::GeluTanh)
    }

    fn run(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        let gelu = |y: Tensor| -> Result<Tensor> {
            match act {
                Activation::None => Ok(y),
                Activation::GeluTanh if y.dtype() == DType::F32 => crate::fused::gelu_tanh(&y),
                Activation::GeluTanh => y.gelu(),
            }
        };
        let last = x.dims().last().copied().unwrap_or(0);
        if last != self.in_dim {
            candle_core::bail!(
                "linear: input {:?} does not end in the layer's {} inputs",
                x.dims(),
                self.in_dim
            );
        }
        if let Some(packed) = &self.packed {
            if x.device().is_cpu() && !x.track_op() && matches!(x.dtype(), DType::BF16 | DType::F32)
            {
                let op = LinearAmx {
                    packed,
                    bias: self.bias_f32.as_deref().map(|v| v.as_slice()),
                    act,
                };
                return x.contiguous()?.apply_op1_no_bwd(&op);
            }
        }
        if let Some(packed) = &self.packed_f32 {
            if kernels_on(x) && x.dtype() == DType::F32 {
                let op = LinearPackedF32 {
                    packed,
                    bias: self.bias_f32.as_deref().map(|v| v.as_slice()),
                };
                return gelu(x.contiguous()?.apply_op1_no_bwd(&op)?);
            }
        }
        let w = match &self.weight {
            Some(w) => w.clone(),
            None => self.weight()?,
        };
        // An f32 input to a bf16 layer (attention's output) is rounded first, as the packed
        // path rounds it.
        let x = &x.to_dtype(self.dtype)?;
        if kernels_on(x) && x.dtype() == DType::F32 && self.dtype == DType::F32 {
            let op = LinearF32 {
                bias: self.bias_f32.as_deref().map(|v| v.as_slice()),
            };
            return gelu(x.contiguous()?.apply_op2_no_bwd(&w, &op)?);
        }
        // candle_nn::Linear's computation.
        let y = match *x.dims() {
            [b1, b2, _, _] => x.matmul(&w.broadcast_left((b1, b2))?.t()?)?,
            [bsize, _, _] => x.matmul(&w.broadcast_left(bsize)?.t()?)?,
            _ => x.matmul(&w.t()?)?,
        };
        gelu(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, Activation::None)
    }
}

fn out_shape(x: &Layout, out_dim: usize) -> Shape {
    let mut dims = x.dims().to_vec();
    *dims.last_mut().expect("rank >= 1") = out_dim;
    Shape::from(dims)
}

struct LinearF32<'a> {
    bias: Option<&'a [f32]>,
}

impl CustomOp2 for LinearF32<'_> {
    fn name(&self) -> &'static str {
        "zoetrope-linear-f32"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice::<f32>("linear", xs, xl)?;
        let (out_dim, in_dim) = wl.shape().dims2()?;
        let w: &[f32] = match wl.contiguous_offsets() {
            Some((a, b)) => &ws.as_slice::<f32>()?[a..b],
            None => candle_core::bail!("linear: weight must be contiguous"),
        };
        let m = x.len() / in_dim.max(1);
        let mut y = output(m * out_dim);
        gemm::sgemm(
            m,
            out_dim,
            in_dim,
            Mat::rows(x, in_dim),
            Mat::transposed(w, in_dim),
            &mut y,
            out_dim,
            Beta::Overwrite,
            self.bias,
        );
        Ok((CpuStorage::F32(y), out_shape(xl, out_dim)))
    }
}

struct LinearPackedF32<'a> {
    packed: &'a PackedF32,
    bias: Option<&'a [f32]>,
}

impl CustomOp1 for LinearPackedF32<'_> {
    fn name(&self) -> &'static str {
        "zoetrope-linear-f32-packed"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice::<f32>("linear", s, l)?;
        let (k, n) = (self.packed.k(), self.packed.n());
        let m = x.len() / k.max(1);
        let mut y = output(m * n);
        gemm::sgemm_with(
            m,
            n,
            k,
            Mat::rows(x, k),
            self.packed,
            &mut y,
            n,
            Beta::Overwrite,
            self.bias,
        );
        Ok((CpuStorage::F32(y), out_shape(l, n)))
    }
}

struct LinearAmx<'a> {
    packed: &'a PackedB,
    bias: Option<&'a [f32]>,
    act: Activation,
}

impl CustomOp1 for LinearAmx<'_> {
    fn name(&self) -> &'static str {
        "zoetrope-linear-bf16"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (k, n) = (self.packed.k(), self.packed.n());
        let m = l.shape().elem_count() / k.max(1);
        let mut y = output(m * n);
        match s {
            CpuStorage::BF16(_) => {
                let x = slice::<bf16>("linear", s, l)?;
                gemm_bf16::gemm(m, x, k, self.packed, &mut y, n, self.bias, self.act);
            }
            CpuStorage::F32(_) => {
                let x = slice::<f32>("linear", s, l)?;
                gemm_bf16::gemm(m, x, k, self.packed, &mut y, n, self.bias, self.act);
            }
            _ => candle_core::bail!("linear: bf16 layer got a {:?} input", s.dtype()),
        }
        Ok((CpuStorage::BF16(y), out_shape(l, n)))
    }
}

/// Unmasked scaled dot-product attention, `softmax(q·kᵀ/√d)·v` per head, for `q [B, Lq, H·d]`,
/// `k, v [B, Lk, H·d]`; returns `[B, Lq, H·d]` in f32. bf16 inputs run on AMX tiles
/// ([`zoetrope_kernels::attention::attention_bf16`]), f32 on the flash kernel. Off the kernels' path it is the plain
/// composite in f32 (heads transposed, full score matrix).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, lq, width) = q.dims3()?;
    let (bk, lk, wk) = k.dims3()?;
    if bk != b || wk != width || v.dims() != k.dims() || heads == 0 || width % heads != 0 {
        candle_core::bail!(
            "attention: q {:?}, k {:?}, v {:?} do not fit {heads} heads",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    let all_bf16 = [q, k, v].iter().all(|t| t.dtype() == DType::BF16);
    if kernels_on(q) && all_bf16 && gemm_bf16::amx_available() {
        return q.contiguous()?.apply_op3_no_bwd(
            &k.contiguous()?,
            &v.contiguous()?,
            &Flash { heads },
        );
    }
    let q = q.to_dtype(DType::F32)?.contiguous()?;
    let k = k.to_dtype(DType::F32)?.contiguous()?;
    let v = v.to_dtype(DType::F32)?.contiguous()?;
    if kernels_on(&q) {
        return q.apply_op3_no_bwd(&k, &v, &Flash { heads });
    }
    let d = width / heads;
    let split = |t: &Tensor, l: usize| t.reshape((b, l, heads, d))?.transpose(1, 2)?.contiguous();
    let (qh, kh, vh) = (split(&q, lq)?, split(&k, lk)?, split(&v, lk)?);
    let scores = (qh.matmul(&kh.t()?)? * (1.0 / (d as f64).sqrt()))?;
    candle_nn::ops::softmax_last_dim(&scores)?
        .matmul(&vh)?
        .transpose(1, 2)?
        .reshape((b, lq, width))
}

struct Flash {
    heads: usize,
}

impl CustomOp3 for Flash {
    fn name(&self) -> &'static str {
        "zoetrope-flash-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, lq, width) = ql.shape().dims3()?;
        let lk = kl.shape().dims3()?.1;
        let d = width / self.heads;
        let mut out = output(b * lq * width);
        let shape = flash::Shape {
            batch: b,
            heads: self.heads,
            q_len: lq,
            kv_len: lk,
            head_dim: d,
        };
        if let CpuStorage::BF16(_) = qs {
            let q = slice::<bf16>("attention", qs, ql)?;
            let k = slice::<bf16>("attention", ks, kl)?;
            let v = slice::<bf16>("attention", vs, vl)?;
            flash::attention_bf16(
                flash::Heads16::tokens_major(q, lq, self.heads, d),
                flash::Heads16::tokens_major(k, lk, self.heads, d),
                flash::Heads16::tokens_major(v, lk, self.heads, d),
                &mut out,
                shape,
                1.0 / (d as f32).sqrt(),
            );
            return Ok((CpuStorage::F32(out), ql.shape().clone()));
        }
        let q = slice::<f32>("attention", qs, ql)?;
        let k = slice::<f32>("attention", ks, kl)?;
        let v = slice::<f32>("attention", vs, vl)?;
        flash::attention(
            Heads::tokens_major(q, lq, self.heads, d),
            Heads::tokens_major(k, lk, self.heads, d),
            Heads::tokens_major(v, lk, self.heads, d),
            &mut out,
            shape,
            1.0 / (d as f32).sqrt(),
        );
        Ok((CpuStorage::F32(out), ql.shape().clone()))
    }
}

/// An output buffer of `n` values that the kernel filling it writes in full before anything
/// reads it. Zeroing it first (what `vec![0; n]` costs for reused memory) was ~6% of a bf16
/// transformer step; candle's CPU backend allocates its own outputs this way (`alloc_uninit`).
// The same contract as candle's `CpuDevice::alloc_uninit`, which candle's own ops use for
// their outputs; clippy flags the pattern in general, so it is allowed here, for plain numbers.
#[allow(clippy::uninit_vec)]
fn output<T: Copy>(n: usize) -> Vec<T> {
    let mut v = Vec::with_capacity(n);
    // SAFETY: T is f32 or bf16 (plain numbers), and every caller overwrites all `n` elements
    // before the vector is read or handed to candle.
    unsafe { v.set_len(n) };
    v
}

/// Rows of `x [B, L, D]` (f32 or bf16) as f32, handed to `f(batch, token, row_in, row_out)` in
/// parallel; the result has `x`'s dtype (rounded once from f32).
fn map_rows(
    op: &str,
    s: &CpuStorage,
    l: &Layout,
    f: impl Fn(usize, usize, &[f32], &mut [f32]) + Sync,
) -> Result<(CpuStorage, Shape)> {
    let dims = l.dims();
    let (d, per_batch) = match *dims {
        [_, l_, d] => (d, l_.max(1)),
        _ => candle_core::bail!("{op}: input must be [B, L, D], got {dims:?}"),
    };
    match s {
        CpuStorage::F32(_) => {
            let x = slice::<f32>(op, s, l)?;
            let mut out = output(x.len());
            out.par_chunks_mut(d)
                .zip(x.par_chunks(d))
                .enumerate()
                .for_each(|(r, (o, xr))| f(r / per_batch, r % per_batch, xr, o));
            Ok((CpuStorage::F32(out), l.shape().clone()))
        }
        CpuStorage::BF16(_) => {
            let x = slice::<bf16>(op, s, l)?;
            let mut out = output(x.len());
            out.par_chunks_mut(d)
                .zip(x.par_chunks(d))
                .enumerate()
                .for_each_init(
                    || (vec![0f32; d], vec![0f32; d]),
                    |(xf, of), (r, (o, xr))| {
                        rows::widen_bf16_bits(bf16_bits(xr), xf);
                        f(r / per_batch, r % per_batch, xf, of);
                        rows::narrow_bf16_bits(of, bf16_bits_mut(o));
                    },
                );
            Ok((CpuStorage::BF16(out), l.shape().clone()))
        }
        _ => candle_core::bail!("{op}: f32 or bf16 input expected, got {:?}", s.dtype()),
    }
}

fn bf16_bits(x: &[bf16]) -> &[u16] {
    // SAFETY: bf16 is a transparent u16.
    unsafe { std::slice::from_raw_parts(x.as_ptr() as *const u16, x.len()) }
}

fn bf16_bits_mut(x: &mut [bf16]) -> &mut [u16] {
    // SAFETY: bf16 is a transparent u16.
    unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr() as *mut u16, x.len()) }
}

/// Per-batch rows `[B or 1, 1, D]` of an f32 table, as `B` (or 1) slices.
fn table_rows<'a>(op: &str, s: &'a CpuStorage, l: &Layout, d: usize) -> Result<&'a [f32]> {
    let t = slice::<f32>(op, s, l)?;
    if t.len() % d != 0 {
        candle_core::bail!("{op}: modulation {:?} does not have rows of {d}", l.dims());
    }
    Ok(t)
}

fn row_of(t: &[f32], b: usize, d: usize) -> &[f32] {
    let n = t.len() / d;
    let b = if n == 1 { 0 } else { b };
    &t[b * d..(b + 1) * d]
}

fn check_modulation(x: &Tensor, t: &Tensor, what: &str) -> Result<()> {
    let (b, _, d) = x.dims3()?;
    let ok = matches!(*t.dims(), [tb, 1, td] if td == d && (tb == b || tb == 1));
    if !ok || t.dtype() != DType::F32 {
        candle_core::bail!(
            "{what}: {:?} must be f32 [B or 1, 1, {d}] for x {:?}",
            t.dims(),
            x.dims()
        );
    }
    Ok(())
}

/// adaLN: `LayerNorm(x)·(1 + scale) + shift` in f32, the result in `x`'s dtype; `x [B, L, D]`
/// (f32 or bf16), `scale`, `shift` f32 `[B or 1, 1, D]`.
pub fn layer_norm_modulate(x: &Tensor, scale: &Tensor, shift: &Tensor, eps: f64) -> Result<Tensor> {
    check_modulation(x, scale, "layer_norm_modulate")?;
    check_modulation(x, shift, "layer_norm_modulate")?;
    if kernels_on(x) && matches!(x.dtype(), DType::F32 | DType::BF16) {
        return x.contiguous()?.apply_op3_no_bwd(
            &scale.contiguous()?,
            &shift.contiguous()?,
            &LnModulate { eps: eps as f32 },
        );
    }
    let dtype = x.dtype();
    composite_layer_norm(x, eps)?
        .broadcast_mul(&(scale + 1.0)?)?
        .broadcast_add(shift)?
        .to_dtype(dtype)
}

/// LayerNorm without affine parameters in f32 (two-pass, as torch's `layer_norm`).
fn composite_layer_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    let mean = x.mean_keepdim(candle_core::D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(candle_core::D::Minus1)?;
    xc.broadcast_mul(&(var + eps)?.sqrt()?.recip()?)
}

struct LnModulate {
    eps: f32,
}

impl CustomOp3 for LnModulate {
    fn name(&self) -> &'static str {
        "zoetrope-layer-norm-modulate"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ss: &CpuStorage,
        sl: &Layout,
        hs: &CpuStorage,
        hl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = *xl.dims().last().expect("rank 3");
        let scale = table_rows("layer_norm_modulate", ss, sl, d)?;
        let shift = table_rows("layer_norm_modulate", hs, hl, d)?;
        map_rows("layer_norm_modulate", xs, xl, |b, _, x, out| {
            rows::layer_norm_modulate(x, self.eps, row_of(scale, b, d), row_of(shift, b, d), out)
        })
    }
}

/// `LayerNorm(x)·weight + bias` in f32 with `weight`, `bias` f32 `[D]`; result in `x`'s dtype.
pub fn layer_norm_affine(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let d = x.dims3()?.2;
    if weight.dims() != [d]
        || bias.dims() != [d]
        || weight.dtype() != DType::F32
        || bias.dtype() != DType::F32
    {
        candle_core::bail!("layer_norm_affine: weight and bias must be f32 [{d}]");
    }
    if kernels_on(x) && matches!(x.dtype(), DType::F32 | DType::BF16) {
        return x
            .contiguous()?
            .apply_op3_no_bwd(weight, bias, &LnAffine { eps: eps as f32 });
    }
    let dtype = x.dtype();
    composite_layer_norm(x, eps)?
        .broadcast_mul(weight)?
        .broadcast_add(bias)?
        .to_dtype(dtype)
}

struct LnAffine {
    eps: f32,
}

impl CustomOp3 for LnAffine {
    fn name(&self) -> &'static str {
        "zoetrope-layer-norm-affine"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let w = slice::<f32>("layer_norm_affine", ws, wl)?;
        let b = slice::<f32>("layer_norm_affine", bs, bl)?;
        map_rows("layer_norm_affine", xs, xl, |_, _, x, out| {
            rows::layer_norm_affine(x, self.eps, w, b, out)
        })
    }
}

/// Gated residual `(x + y·gate)` in f32, the result in `x`'s dtype: `x, y [B, L, D]` (same
/// dtype), `gate` f32 `[B or 1, 1, D]`.
pub fn add_gated(x: &Tensor, y: &Tensor, gate: &Tensor) -> Result<Tensor> {
    check_modulation(x, gate, "add_gated")?;
    if x.dims() != y.dims() || x.dtype() != y.dtype() {
        candle_core::bail!("add_gated: x {:?} and y {:?} differ", x.dims(), y.dims());
    }
    if kernels_on(x) && matches!(x.dtype(), DType::F32 | DType::BF16) {
        return x
            .contiguous()?
            .apply_op3_no_bwd(&y.contiguous()?, &gate.contiguous()?, &AddGated);
    }
    let dtype = x.dtype();
    x.to_dtype(DType::F32)?
        .add(&y.to_dtype(DType::F32)?.broadcast_mul(gate)?)?
        .to_dtype(dtype)
}

/// Residual `x + y` of two `[B, L, D]` tensors of one dtype, summed in f32 and rounded once
/// (torch's bf16 `add`).
pub fn add(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    if x.dims() != y.dims() || x.dtype() != y.dtype() {
        candle_core::bail!("add: x {:?} and y {:?} differ", x.dims(), y.dims());
    }
    if kernels_on(x) && matches!(x.dtype(), DType::F32 | DType::BF16) && x.rank() == 3 {
        return x.contiguous()?.apply_op2_no_bwd(&y.contiguous()?, &AddRows);
    }
    x + y
}

/// `x + y·gate` row by row, `gate` per batch (`None`: 1).
fn add_rows(
    op: &str,
    xs: &CpuStorage,
    xl: &Layout,
    ys: &CpuStorage,
    yl: &Layout,
    gate: Option<&[f32]>,
) -> Result<(CpuStorage, Shape)> {
    let d = *xl.dims().last().expect("rank 3");
    let per_batch = xl.dims()[1].max(1);
    let add_row = |r: usize, o: &mut [f32], y: &[f32]| match gate {
        Some(g) => rows::add_gated(o, y, row_of(g, r / per_batch, d)),
        None => o.iter_mut().zip(y).for_each(|(a, b)| *a += b),
    };
    match ys {
        CpuStorage::F32(_) => {
            let x = slice::<f32>(op, xs, xl)?;
            let y = slice::<f32>(op, ys, yl)?;
            let mut out = x.to_vec();
            out.par_chunks_mut(d)
                .zip(y.par_chunks(d))
                .enumerate()
                .for_each(|(r, (o, yr))| add_row(r, o, yr));
            Ok((CpuStorage::F32(out), xl.shape().clone()))
        }
        CpuStorage::BF16(_) => {
            let x = slice::<bf16>(op, xs, xl)?;
            let y = slice::<bf16>(op, ys, yl)?;
            let mut out = output(x.len());
            out.par_chunks_mut(d)
                .zip(x.par_chunks(d).zip(y.par_chunks(d)))
                .enumerate()
                .for_each_init(
                    || (vec![0f32; d], vec![0f32; d]),
                    |(xf, yf), (r, (o, (xr, yr)))| {
                        rows::widen_bf16_bits(bf16_bits(xr), xf);
                        rows::widen_bf16_bits(bf16_bits(yr), yf);
                        add_row(r, xf, yf);
                        rows::narrow_bf16_bits(xf, bf16_bits_mut(o));
                    },
                );
            Ok((CpuStorage::BF16(out), xl.shape().clone()))
        }
        _ => candle_core::bail!("{op}: f32 or bf16 expected"),
    }
}

struct AddGated;

impl CustomOp3 for AddGated {
    fn name(&self) -> &'static str {
        "zoetrope-add-gated"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ys: &CpuStorage,
        yl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = *xl.dims().last().expect("rank 3");
        let gate = table_rows("add_gated", gs, gl, d)?;
        add_rows("add_gated", xs, xl, ys, yl, Some(gate))
    }
}

struct AddRows;

impl CustomOp2 for AddRows {
    fn name(&self) -> &'static str {
        "zoetrope-add"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ys: &CpuStorage,
        yl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        add_rows("add", xs, xl, ys, yl, None)
    }
}

/// RMS norm over the last dimension with an f32 `weight [D]`: `x·w/√(mean(x²) + eps)` in f32,
/// the result in `x`'s dtype (f32 or bf16 `[B, L, D]`; rounded once).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let d = x.dims3()?.2;
    if weight.dims() != [d] || weight.dtype() != DType::F32 {
        candle_core::bail!(
            "rms_norm: weight must be f32 [{d}], got {:?}",
            weight.dims()
        );
    }
    if kernels_on(x) && matches!(x.dtype(), DType::F32 | DType::BF16) {
        return x
            .contiguous()?
            .apply_op2_no_bwd(&weight.contiguous()?, &RmsNormRows { eps: eps as f32 });
    }
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let r = (x.sqr()?.mean_keepdim(candle_core::D::Minus1)? + eps)?
        .sqrt()?
        .recip()?;
    x.broadcast_mul(&r)?.broadcast_mul(weight)?.to_dtype(dtype)
}

struct RmsNormRows {
    eps: f32,
}

impl CustomOp2 for RmsNormRows {
    fn name(&self) -> &'static str {
        "zoetrope-rms-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let w = slice::<f32>("rms_norm", ws, wl)?;
        map_rows("rms_norm", xs, xl, |_, _, x, out| {
            rows::rms_norm(x, self.eps, w, out)
        })
    }
}

/// Interleaved rotary embedding on `x [B, L, H·d]` (pairs `(x[2i], x[2i+1])` of every head
/// rotated by the angle of `cos/sin [L, d/2]`), computed in f32; the result in `x`'s dtype on
/// the kernels' path (f32 or bf16), in f32 otherwise.
pub fn rope_interleaved(x: &Tensor, cos: &Tensor, sin: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, l, width) = x.dims3()?;
    let d = width / heads.max(1);
    if heads == 0
        || width % heads != 0
        || !d.is_multiple_of(2)
        || cos.dims() != [l, d / 2]
        || sin.dims() != [l, d / 2]
    {
        candle_core::bail!(
            "rope: x {:?} with {heads} heads does not fit cos {:?}",
            x.dims(),
            cos.dims()
        );
    }
    if kernels_on(x) && matches!(x.dtype(), DType::F32 | DType::BF16) {
        return x.contiguous()?.apply_op3_no_bwd(
            &cos.contiguous()?,
            &sin.contiguous()?,
            &Rope { heads },
        );
    }
    let x = x.to_dtype(DType::F32)?;
    let xh = x.reshape((b, l, heads, d))?.transpose(1, 2)?.contiguous()?;
    candle_nn::rotary_emb::rope_i(&xh, cos, sin)?
        .transpose(1, 2)?
        .reshape((b, l, width))
}

struct Rope {
    heads: usize,
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "zoetrope-rope-interleaved"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        cs: &CpuStorage,
        cl: &Layout,
        ss: &CpuStorage,
        sl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, _, width) = xl.shape().dims3()?;
        let half = width / self.heads / 2;
        let cos = slice::<f32>("rope", cs, cl)?;
        let sin = slice::<f32>("rope", ss, sl)?;
        map_rows("rope", xs, xl, |_, t, xr, o| {
            let (c, s) = (
                &cos[t * half..(t + 1) * half],
                &sin[t * half..(t + 1) * half],
            );
            for (oh, xh) in o.chunks_exact_mut(2 * half).zip(xr.chunks_exact(2 * half)) {
                for i in 0..half {
                    let (x0, x1) = (xh[2 * i], xh[2 * i + 1]);
                    oh[2 * i] = x0 * c[i] - x1 * s[i];
                    oh[2 * i + 1] = x0 * s[i] + x1 * c[i];
                }
            }
        })
    }
}

/// 3D convolution, valid in time and zero-padded by `pad` in space: `x [B, Cin, T, H, W]`,
/// `weight [Cout, Cin, kt, kh, kw]`, `bias [Cout]` → `[B, Cout, T', H', W']`, on the implicit-GEMM
/// kernel for f32 on the CPU (no im2col buffer), candle's `conv2d` per folded tap otherwise
/// (through [`crate::conv3d::CausalConv3d`], which calls this).
pub fn conv3d_kernel_supported(x: &Tensor, weight: &Tensor) -> bool {
    kernels_on(x) && !weight.track_op() && x.dtype() == DType::F32 && weight.dtype() == DType::F32
}

/// The kernel path of a valid-in-time 3D convolution; see [`conv3d_kernel_supported`].
pub fn conv3d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    time_stride: usize,
    stride: usize,
    pad: usize,
    w16: Option<&Weight16>,
) -> Result<Tensor> {
    conv3d_causal(0, None, x, weight, bias, time_stride, stride, pad, w16)
}

/// [`conv3d`] of `[zero_frames zeros | front | x]` along time, without building that
/// concatenation (`front`: the frames a causal conv carries over from the previous chunk).
#[allow(clippy::too_many_arguments)]
pub fn conv3d_causal(
    zero_frames: usize,
    front: Option<&Tensor>,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    time_stride: usize,
    stride: usize,
    pad: usize,
    w16: Option<&Weight16>,
) -> Result<Tensor> {
    use zoetrope_kernels::conv::{Conv3d, Part};
    let (b, cin, t, h, w) = x.dims5()?;
    let (cout, wcin, kt, kh, kw) = weight.dims5()?;
    if cin != wcin {
        candle_core::bail!("conv3d: input has {cin} channels, weight expects {wcin}");
    }
    let front_t = match front {
        Some(f) => {
            let (fb, fc, ft, fh, fw) = f.dims5()?;
            if (fb, fc, fh, fw) != (b, cin, h, w) {
                candle_core::bail!(
                    "conv3d: cached frames {:?} do not fit input {:?}",
                    f.dims(),
                    x.dims()
                );
            }
            ft
        }
        None => 0,
    };
    let shape = Conv3d {
        batch: b,
        cin,
        t: zero_frames + front_t + t,
        h,
        w,
        cout,
        kernel: [kt, kh, kw],
        time_stride,
        stride,
        pad,
    };
    let Some((to, ho, wo)) = shape.out_dims() else {
        candle_core::bail!(
            "conv3d: input {:?} (with {} frames in front, pad {pad}) is smaller than the kernel \
             {kt}x{kh}x{kw}",
            x.dims(),
            zero_frames + front_t
        );
    };
    let bias = match bias {
        Some(b) => Some(b.to_dtype(DType::F32)?.to_vec1::<f32>()?),
        None => None,
    };
    let x = x.contiguous()?.to_dtype(DType::F32)?;
    let weight = weight.contiguous()?;
    let front = front.map(|f| f.contiguous()).transpose()?;
    let mut out = vec![0f32; b * cout * to * ho * wo];
    with_f32(&x, |xs| {
        with_f32(&weight, |ws| {
            let mut run = |fs: Option<&[f32]>| {
                let mut parts = vec![Part {
                    data: None,
                    frames: zero_frames,
                }];
                if let Some(fs) = fs {
                    parts.push(Part {
                        data: Some(fs),
                        frames: front_t,
                    });
                }
                parts.push(Part {
                    data: Some(xs),
                    frames: t,
                });
                zoetrope_kernels::conv::conv3d_parts_with(
                    &parts,
                    ws,
                    w16,
                    bias.as_deref(),
                    shape,
                    &mut out,
                );
                Ok(())
            };
            match &front {
                Some(f) => with_f32(f, |fs| run(Some(fs))),
                None => run(None),
            }
        })
    })?;
    Tensor::from_vec(out, (b, cout, to, ho, wo), x.device())
}

/// Runs `f` on a contiguous f32 CPU tensor's elements.
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(cpu) => f(slice::<f32>("conv3d", cpu, layout)?),
        _ => candle_core::bail!("conv3d kernel: the tensor is not on the CPU"),
    }
}

/// `conv.forward(x)` for `x [N, C, H, W]`, on the convolution kernel when it serves (groups
/// and dilation 1), else candle's.
pub fn conv2d(x: &Tensor, conv: &candle_nn::Conv2d) -> Result<Tensor> {
    conv2d_with(x, conv, None)
}

fn conv2d_with(x: &Tensor, conv: &candle_nn::Conv2d, w16: Option<&Weight16>) -> Result<Tensor> {
    let cfg = conv.config();
    if !conv3d_kernel_supported(x, conv.weight()) || cfg.groups != 1 || cfg.dilation != 1 {
        return conv.forward(x);
    }
    let (n, c, h, w) = x.dims4()?;
    let (cout, cin, kh, kw) = conv.weight().dims4()?;
    let y = conv3d(
        &x.reshape((n, c, 1, h, w))?,
        &conv.weight().reshape((cout, cin, 1, kh, kw))?,
        conv.bias(),
        1,
        cfg.stride,
        cfg.padding,
        w16,
    )?;
    let (_, _, _, ho, wo) = y.dims5()?;
    y.reshape((n, cout, ho, wo))
}

/// A convolution weight packed for bf16 products ([`Weight16`]: AMX tiles, or `vdpbf16ps`), or
/// `None` where they do not apply (neither instruction set, a weight that is not f32 on the CPU
/// or that needs gradients).
pub fn pack_conv_bf16(weight: &Tensor) -> Result<Option<Arc<Weight16>>> {
    if !zoetrope_kernels::conv::bf16_conv_available()
        || !weight.device().is_cpu()
        || weight.dtype() != DType::F32
        || weight.track_op()
        || weight.rank() < 2
    {
        return Ok(None);
    }
    let (cout, cin) = (weight.dim(0)?, weight.dim(1)?);
    let data = weight.flatten_all()?.to_vec1::<f32>()?;
    let taps = data.len() / (cout * cin).max(1);
    Ok(Some(Arc::new(Weight16::pack(&data, cout, cin, taps))))
}

/// Layers whose convolutions can take bf16 products (inputs and weights rounded to bf16,
/// f32 sums and activations) on AMX or AVX-512 BF16: the speed of bf16 with f32 everywhere else.
pub trait Bf16Products {
    fn set_bf16_products(&mut self, on: bool) -> Result<()>;
}

/// A 2D convolution (`candle_nn::Conv2d`) on zoetrope's kernel, optionally with bf16 products.
#[derive(Debug, Clone)]
pub struct Conv2d {
    conv: candle_nn::Conv2d,
    w16: Option<Arc<Weight16>>,
}

impl Conv2d {
    pub fn new(conv: candle_nn::Conv2d) -> Self {
        Self { conv, w16: None }
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        conv2d_with(x, &self.conv, self.w16.as_deref())
    }
}

impl Bf16Products for Conv2d {
    fn set_bf16_products(&mut self, on: bool) -> Result<()> {
        self.w16 = if on {
            pack_conv_bf16(self.conv.weight())?
        } else {
            None
        };
        Ok(())
    }
}

/// Wan's VAE norm (`WanRMS_norm`): every position's channel vector L2-normalised, `x /
/// max(‖x‖₂, 1e-12) · scale · gamma (+ bias)`, optionally followed by SiLU, for `x [B, C, ...]`
/// (f32) with `gamma`, `bias` `[C]` f32. One pass over the channels per position block instead
/// of candle's strided channel reduction and five elementwise passes.
pub fn channel_l2_norm(
    x: &Tensor,
    gamma: &Tensor,
    bias: Option<&Tensor>,
    scale: f64,
    silu: bool,
) -> Result<Option<Tensor>> {
    if !kernels_on(x) || x.dtype() != DType::F32 || x.rank() < 2 {
        return Ok(None);
    }
    let c = x.dim(1)?;
    let gamma = gamma
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let bias = match bias {
        Some(b) => Some(b.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?),
        None => None,
    };
    if gamma.len() != c || bias.as_ref().is_some_and(|b| b.len() != c) {
        candle_core::bail!(
            "channel norm: gamma/bias do not have {c} channels for {:?}",
            x.dims()
        );
    }
    let op = ChannelNorm {
        gamma,
        bias,
        scale: scale as f32,
        silu,
    };
    Ok(Some(x.contiguous()?.apply_op1_no_bwd(&op)?))
}

struct ChannelNorm {
    gamma: Vec<f32>,
    bias: Option<Vec<f32>>,
    scale: f32,
    silu: bool,
}

impl CustomOp1 for ChannelNorm {
    fn name(&self) -> &'static str {
        "zoetrope-channel-l2-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice::<f32>("channel norm", s, l)?;
        let dims = l.dims();
        let c = dims[1];
        let positions: usize = dims[2..].iter().product();
        let mut out = vec![0f32; x.len()];
        // Work units: one batch item × a run of positions, every channel.
        const RUN: usize = 1024;
        let runs = positions.div_ceil(RUN);
        let optr = SendPtr(out.as_mut_ptr());
        (0..dims[0] * runs).into_par_iter().for_each(|u| {
            let (b, r) = (u / runs, u % runs);
            let p0 = r * RUN;
            let n = RUN.min(positions - p0);
            let base = b * c * positions + p0;
            let mut inv = [0f32; RUN];
            for ch in 0..c {
                let row = &x[base + ch * positions..base + ch * positions + n];
                for (a, &v) in inv.iter_mut().zip(row) {
                    *a += v * v;
                }
            }
            for a in inv[..n].iter_mut() {
                *a = a.sqrt().max(1e-12);
            }
            for ch in 0..c {
                let row = &x[base + ch * positions..base + ch * positions + n];
                let (g, bv) = (self.gamma[ch], self.bias.as_ref().map_or(0.0, |b| b[ch]));
                // SAFETY: unit (b, r) writes only its own positions of every channel.
                let dst =
                    unsafe { std::slice::from_raw_parts_mut(optr.at(base + ch * positions), n) };
                for ((o, &v), &nrm) in dst.iter_mut().zip(row).zip(&inv[..n]) {
                    *o = v / nrm * self.scale * g + bv;
                }
                if self.silu {
                    rows::silu_in_place(dst);
                }
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: the units that share it write disjoint elements.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    fn at(&self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}
