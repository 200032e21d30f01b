//! Fused CPU kernels, with their own backward, for the row-wise and elementwise ops of a
//! transformer training step: tanh-GELU, softmax over the last dim, LayerNorm without affine
//! parameters, RMSNorm with a weight, and interleaved rotary embeddings.
//!
//! candle's own fused kernels (`candle_nn::ops::{layer_norm, rms_norm, softmax_last_dim}`,
//! `candle_nn::rotary_emb::rope_i`) have no backward, so training has to spell these ops out of
//! generic tensor ops: a LayerNorm is a `mean_keepdim`, a broadcast subtraction, a square, a
//! second mean, a square root and a division, each a full pass over memory with its own
//! allocation, and the backward doubles that again. `Tensor::gelu`'s backward is about ten such
//! passes (with `powf`). Here each forward and each backward is one pass over its rows, so the
//! data is read while it is still in cache.
//!
//! Each public function takes any tensor: f32 tensors on the CPU run the fused kernel (made
//! contiguous first), everything else (other dtypes, CUDA) runs the same composite expression as
//! before, from [`composite`], so nothing depends on the kernel being available. The kernels
//! compute the same functions as the composites up to float rounding (tanh and exp are
//! evaluated by the approximations [`tanh_approx`] and [`exp_approx`], within a few ulp).
//!
//! Setting `ZOETROPE_COMPOSITE_OPS=1` (read once) or calling [`set_enabled`] switches the fused
//! kernels off, so a benchmark can compare both paths in one process.

use std::sync::atomic::{AtomicU8, Ordering};

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, D,
};
use rayon::prelude::*;

/// Environment variable that switches the fused kernels off when set to anything but `0` or the
/// empty string.
pub const COMPOSITE_ENV: &str = "ZOETROPE_COMPOSITE_OPS";

/// 0: not read yet, 1: fused, 2: composite.
static MODE: AtomicU8 = AtomicU8::new(0);

/// Whether the fused kernels are on: [`set_enabled`]'s last word, else the environment
/// ([`COMPOSITE_ENV`]), read once.
pub fn enabled() -> bool {
    match MODE.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let off = std::env::var(COMPOSITE_ENV).is_ok_and(|v| !v.is_empty() && v != "0");
            MODE.store(if off { 2 } else { 1 }, Ordering::Relaxed);
            !off
        }
    }
}

/// Switches the fused kernels on or off for the whole process (for side-by-side benchmarks).
pub fn set_enabled(on: bool) {
    MODE.store(if on { 1 } else { 2 }, Ordering::Relaxed);
}

/// Whether the fused kernels serve `x`: f32 on the CPU, and not switched off.
pub fn supports(x: &Tensor) -> bool {
    x.dtype() == DType::F32 && x.device().is_cpu() && enabled()
}

// ---------------------------------------------------------------------------------------------
// Public ops
// ---------------------------------------------------------------------------------------------

/// GELU with the tanh approximation, `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`: the function
/// of candle's `Tensor::gelu`.
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    if !supports(x) {
        return composite::gelu_tanh(x);
    }
    x.contiguous()?.apply_op1(GeluTanh)
}

/// Softmax over the last dim.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if !supports(x) {
        return composite::softmax_last_dim(x);
    }
    x.contiguous()?.apply_op1(SoftmaxLastDim)
}

/// LayerNorm over the last dim without affine parameters: `(x − mean) / √(var + eps)` with the
/// biased variance.
pub fn layer_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    if !supports(x) {
        return composite::layer_norm(x, eps);
    }
    x.contiguous()?.apply_op1(LayerNorm { eps: eps as f32 })
}

/// RMSNorm over the last dim, `x / √(mean(x²) + eps) · weight`, with gradients for `x` and
/// `weight` (`weight` has the size of the last dim).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if !supports(x) || !supports(weight) {
        return composite::rms_norm(x, weight, eps);
    }
    let d = x.dim(D::Minus1)?;
    if weight.dims() != [d] {
        candle_core::bail!("rms_norm: weight {:?} for rows of {d}", weight.dims());
    }
    x.contiguous()?
        .apply_op2(&weight.contiguous()?, RmsNorm { eps: eps as f32 })
}

/// Rotary embedding of interleaved pairs, as `candle_nn::rotary_emb::rope_i`: `x [B, H, N, D]`,
/// `cos, sin [N', D/2]` with `N' ≥ N` (the first `N` rows are used). Pair `k` of token `n` is
/// rotated by the angle whose cosine and sine are `cos[n, k]`, `sin[n, k]`. The tables are
/// treated as constants: no gradient flows into them.
pub fn rope_i(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if !supports(x) || !supports(cos) || !supports(sin) {
        return composite::rope_i(x, cos, sin);
    }
    let (_, _, n, d) = x.dims4()?;
    let (nc, hc) = cos.dims2()?;
    if d % 2 != 0 || hc * 2 != d || nc < n || sin.dims() != cos.dims() {
        candle_core::bail!(
            "rope_i: x {:?} does not fit cos {:?} / sin {:?}",
            x.dims(),
            cos.dims(),
            sin.dims()
        );
    }
    let (cos, sin) = (
        cos.narrow(0, 0, n)?.contiguous()?,
        sin.narrow(0, 0, n)?.contiguous()?,
    );
    x.contiguous()?
        .apply_op3(&cos, &sin, RopeI { inverse: false })
}

/// `a + b` with `b` broadcast to `a`'s shape (`a.broadcast_add(b)` where only `b` is smaller),
/// e.g. a bias `[D]` or an adaLN shift `[B, 1, D]` added to `[B, N, D]`. When `b` takes part in
/// training (it tracks its op), one fused pass adds it, and the backward sums the gradient back
/// onto `b` in one vectorised pass on the thread pool. candle's backward of a broadcast is a
/// sum over the broadcast dims that runs one element at a time, on one thread, with two integer
/// divisions each, and took a sixth of a DiT training step. Otherwise this is candle's
/// `broadcast_add`.
pub fn broadcast_add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    broadcast_binary(a, b, BroadcastOp::Add)
}

/// `a · b` with `b` broadcast to `a`'s shape; see [`broadcast_add`].
pub fn broadcast_mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    broadcast_binary(a, b, BroadcastOp::Mul)
}

/// [`broadcast_add`] or [`broadcast_mul`]: the fused op when `b` needs a gradient
/// ([`training_broadcast`]), else candle's.
fn broadcast_binary(a: &Tensor, b: &Tensor, op: BroadcastOp) -> Result<Tensor> {
    match (training_broadcast(a, b), op) {
        (Some(plan), _) => a
            .contiguous()?
            .apply_op2(&b.contiguous()?, Broadcast { plan, op }),
        (None, BroadcastOp::Add) => a.broadcast_add(b),
        (None, BroadcastOp::Mul) => a.broadcast_mul(b),
    }
}

/// A `candle_nn::Linear` over the last dim of `x`: the same matrix product, then its bias added
/// by [`broadcast_add`] (what `candle_nn::Linear` does with candle's `broadcast_add`).
pub fn linear(x: &Tensor, layer: &candle_nn::Linear) -> Result<Tensor> {
    use candle_core::Module;
    let y = candle_nn::Linear::new(layer.weight().clone(), None).forward(x)?;
    match layer.bias() {
        Some(bias) => broadcast_add(&y, bias),
        None => Ok(y),
    }
}

/// The plan of a fused [`broadcast_add`] / [`broadcast_mul`]: both run the fused kernels, `b`
/// needs a gradient, and it broadcasts to `a`'s shape without being that shape.
fn training_broadcast(a: &Tensor, b: &Tensor) -> Option<BroadcastPlan> {
    if !(supports(a) && supports(b) && b.track_op()) || a.dims() == b.dims() {
        return None;
    }
    BroadcastPlan::new(b.dims(), a.dims())
}

/// The same functions written with generic candle ops: the fallback where no kernel runs and
/// the reference the tests compare the kernels with.
pub mod composite {
    use candle_core::{DType, Result, Tensor, D};

    /// candle's `Tensor::gelu`.
    pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
        x.gelu()
    }

    /// `exp(x − max) / Σ exp(x − max)` over the last dim.
    pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::softmax(x, D::Minus1)
    }

    /// LayerNorm over the last dim without affine parameters, in f32.
    pub fn layer_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
        let dtype = x.dtype();
        let x = x.to_dtype(DType::F32)?;
        let xc = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        xc.broadcast_div(&(var + eps)?.sqrt()?)?.to_dtype(dtype)
    }

    /// RMSNorm over the last dim (statistics in f32), times `weight`.
    pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
        let dtype = x.dtype();
        let x = x.to_dtype(DType::F32)?;
        let r = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
        x.broadcast_mul(&r)?.to_dtype(dtype)?.broadcast_mul(weight)
    }

    /// `candle_nn::rotary_emb::rope_i_slow`.
    pub fn rope_i(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        candle_nn::rotary_emb::rope_i_slow(&x.contiguous()?, cos, sin)
    }
}

// ---------------------------------------------------------------------------------------------
// Fast tanh and exp
// ---------------------------------------------------------------------------------------------

/// `tanh` is saturated beyond this: `1 − tanh(9) ≈ 3·10⁻⁸` is below half an f32 ulp of 1.
const TANH_CLAMP: f32 = 9.0;
/// `tanh(x) ≈ x·P(x²)/Q(x²)` on `[−9, 9]`: a rational fit made for this module (linearised
/// least squares iterated towards minimax, Lawson's weights), max error 6·10⁻⁸ in exact
/// arithmetic and about 4·10⁻⁷ evaluated in f32 (see the test against f64 `tanh`).
const TANH_P: [f32; 6] = [
    0.9999997,
    0.12910154,
    0.0029114436,
    9.190235e-6,
    -1.2576974e-8,
    1.7801987e-11,
];
const TANH_Q: [f32; 4] = [1.0, 0.46243384, 0.023723872, 0.00022686631];

/// `tanh(x)` within about 4·10⁻⁷ absolute (clamped to `[−1, 1]`), with no branches or calls, so
/// loops over it vectorise (libm's `tanhf` does neither).
#[inline(always)]
pub fn tanh_approx(x: f32) -> f32 {
    let x = x.clamp(-TANH_CLAMP, TANH_CLAMP);
    let s = x * x;
    let p = TANH_P[0]
        + s * (TANH_P[1] + s * (TANH_P[2] + s * (TANH_P[3] + s * (TANH_P[4] + s * TANH_P[5]))));
    let q = TANH_Q[0] + s * (TANH_Q[1] + s * (TANH_Q[2] + s * TANH_Q[3]));
    (x * p / q).clamp(-1.0, 1.0)
}

/// `exp(x)` within 2 ulp for `x ≤ 88`; `0` below `−87` (instead of a subnormal). Range reduction
/// `x = n·ln 2 + r` with `|r| ≤ ln2/2` (ln 2 split in two so `n·ln2_hi` is exact), a degree-7
/// Taylor polynomial for `e^r` (truncation error below 10⁻⁸ relative) and `2ⁿ` built from its
/// exponent bits. Branch-free, so it vectorises; the softmax's exponentials dominate its cost.
#[inline(always)]
pub fn exp_approx(x: f32) -> f32 {
    // ln 2 with its low 12 mantissa bits cleared, so `n·LN2_HI` is exact, and the rest.
    const LN2_HI: f32 = 0.69311523; // exactly 0.693115234375
    const LN2_LO: f32 = 3.1946183e-5;
    // Adding 1.5·2²³ rounds to the nearest integer (ties to even) without a call to `roundf`
    // (the baseline x86-64 target has no instruction for it), and leaves `n` in the low
    // mantissa bits of the sum, from which `2ⁿ` is built without a float-to-int conversion
    // (Rust's saturating `as` keeps loops from vectorising well).
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(-87.0, 88.0);
    let shifted = xc * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // `shifted`'s bits are `0x4B40_0000 + n`, whose low 9 bits are `n mod 512`: adding the
    // exponent bias and shifting into the exponent field gives `2ⁿ` for `n ∈ [−126, 127]`.
    let scale = f32::from_bits(shifted.to_bits().wrapping_add(127) << 23);
    if x < -87.0 {
        0.0
    } else {
        p * scale
    }
}

// ---------------------------------------------------------------------------------------------
// Kernel plumbing
// ---------------------------------------------------------------------------------------------

/// Defines a kernel function whose body is compiled twice: for the baseline target and for
/// AVX2 + FMA, picked at run time. The default x86-64 target assumes only SSE2 (4 lanes), and
/// the elementwise loops here run twice as wide with AVX2.
macro_rules! simd_kernel {
    ($(#[$m:meta])* fn $name:ident($($a:ident: $t:ty),* $(,)?) $(-> $r:ty)? $body:block) => {
        $(#[$m])*
        fn $name($($a: $t),*) $(-> $r)? {
            #[inline(always)]
            fn body($($a: $t),*) $(-> $r)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($a: $t),*) $(-> $r)? {
                    body($($a),*)
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the running CPU has the features `avx2` is compiled for.
                    return unsafe { avx2($($a),*) };
                }
            }
            body($($a),*)
        }
    };
}

/// Ops below this many elements run on the calling thread: waking the pool's workers costs more
/// than it saves.
const PAR_MIN_ELEMS: usize = 1 << 15;

/// Runs `f(first_row, block)` over blocks of whole rows of `dst` (rows `width` long) and returns
/// each block's result in order (none for an empty `dst`); big ops on rayon's global pool. That
/// pool already exists for candle's matrix products (gemm), so no threads are added. candle's
/// own elementwise pool (`candle_core::utils::barrier_pool`) measured far worse here on a
/// loaded machine: its barrier waits for every worker, parked ones included, where rayon's idle
/// workers simply don't take part. A few blocks per thread, so a core that the rest of the
/// machine keeps busy does not hold the others up.
fn row_blocks<R: Send>(
    dst: &mut [f32],
    width: usize,
    f: impl Fn(usize, &mut [f32]) -> R + Sync + Send,
) -> Vec<R> {
    if dst.is_empty() {
        return Vec::new();
    }
    let rows = dst.len().checked_div(width).unwrap_or(0);
    let threads = rayon::current_num_threads();
    if threads <= 1 || dst.len() < PAR_MIN_ELEMS || rows < 2 {
        return vec![f(0, dst)];
    }
    let min_rows = (PAR_MIN_ELEMS / 4).div_ceil(width);
    let block_rows = rows.div_ceil(4 * threads).max(min_rows);
    dst.par_chunks_mut(block_rows * width)
        .enumerate()
        .map(|(i, block)| f(i * block_rows, block))
        .collect()
}

/// Width of the rows a flat elementwise op is cut into for [`row_blocks`].
const ELEMENTWISE_ROW: usize = 1024;

/// The contiguous f32 data of one input.
fn f32_data<'a>(op: &str, storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = storage else {
        candle_core::bail!(
            "{op}: the fused kernel takes f32, got {:?}",
            storage.dtype()
        );
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{op}: the fused kernel takes contiguous inputs");
    };
    Ok(&v[start..end])
}

/// Last-dim length of a layout (rows of a row-wise op).
fn row_width(op: &str, layout: &Layout) -> Result<usize> {
    match layout.dims().last() {
        Some(&d) if d > 0 => Ok(d),
        _ => candle_core::bail!("{op}: needs a non-empty last dim, got {:?}", layout.dims()),
    }
}

fn same_shape(op: &str, a: &Layout, b: &Layout) -> Result<()> {
    if a.dims() != b.dims() {
        candle_core::bail!("{op}: shapes {:?} and {:?} differ", a.dims(), b.dims());
    }
    Ok(())
}

/// What every kernel's op does around it: reads `inputs` (contiguous f32, all of the first one's
/// shape), allocates an output of their size and runs `kernel(rows of each input, rows of the
/// output)` over [`row_blocks`] of `width`-long rows. Returns the output and each block's result.
fn map_rows<const N: usize, R: Send>(
    op: &str,
    inputs: [(&CpuStorage, &Layout); N],
    width: usize,
    kernel: impl Fn([&[f32]; N], &mut [f32]) -> R + Sync,
) -> Result<(Vec<f32>, Vec<R>)> {
    let mut data: [&[f32]; N] = [&[]; N];
    for (data, (storage, layout)) in data.iter_mut().zip(inputs) {
        same_shape(op, inputs[0].1, layout)?;
        *data = f32_data(op, storage, layout)?;
    }
    let mut out = vec![0f32; data[0].len()];
    let results = row_blocks(&mut out, width, |row, out| {
        let rows = row * width..row * width + out.len();
        kernel(data.map(|d| &d[rows.clone()]), out)
    });
    Ok((out, results))
}

/// [`map_rows`] for an op whose output has the shape of its first input.
fn rows_op<const N: usize>(
    op: &str,
    inputs: [(&CpuStorage, &Layout); N],
    width: usize,
    kernel: impl Fn([&[f32]; N], &mut [f32]) + Sync,
) -> Result<(CpuStorage, Shape)> {
    let (out, _) = map_rows(op, inputs, width, kernel)?;
    Ok((CpuStorage::F32(out), inputs[0].1.shape().clone()))
}

/// `dx` of an op whose backward reads one tensor of its forward (`saved`: its input or its
/// output) and the upstream gradient `dy`: `kernel(saved rows, dy rows, dx rows)` over blocks
/// of whole `width`-long rows.
fn backward(
    name: &'static str,
    saved: &Tensor,
    dy: &Tensor,
    width: usize,
    kernel: impl Fn(&[f32], &[f32], &mut [f32]) + Sync,
) -> Result<Option<Tensor>> {
    let op = Backward {
        name,
        width,
        kernel,
    };
    Ok(Some(saved.apply_op2_no_bwd(&dy.contiguous()?, &op)?))
}

/// `(saved, dy) → dx`, the op [`backward`] runs.
struct Backward<K> {
    name: &'static str,
    width: usize,
    kernel: K,
}

impl<K: Fn(&[f32], &[f32], &mut [f32]) + Sync> CustomOp2 for Backward<K> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        rows_op(
            self.name,
            [(s1, l1), (s2, l2)],
            self.width,
            |[saved, dy], dx| (self.kernel)(saved, dy, dx),
        )
    }
}

/// Sum of a slice with eight accumulators: vectorises (a single running sum cannot be
/// reordered by the compiler) and rounds less than a sequential sum.
#[inline(always)]
fn sum(v: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = v.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Largest element, with eight running maxima (see [`sum`]); `−∞` for an empty slice.
#[inline(always)]
fn max(v: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = v.chunks_exact(8);
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = a.max(x);
        }
    }
    acc.iter().fold(tail, |m, &x| m.max(x))
}

/// `Σ a·b` with eight accumulators (see [`sum`]).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `Σ (v − c)²` with eight accumulators (see [`sum`]).
#[inline(always)]
fn centered_sq_sum(v: &[f32], c: f32) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = v.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|x| (x - c) * (x - c)).sum();
    for ch in chunks {
        for (a, x) in acc.iter_mut().zip(ch) {
            *a += (x - c) * (x - c);
        }
    }
    acc.iter().sum::<f32>() + tail
}

// ---------------------------------------------------------------------------------------------
// GELU (tanh approximation)
// ---------------------------------------------------------------------------------------------

const SQRT_2_OVER_PI: f32 = 0.7978846;
const GELU_CUBIC: f32 = 0.044_715;

simd_kernel! {
    fn gelu_fwd_kernel(x: &[f32], y: &mut [f32]) {
        for (y, &v) in y.iter_mut().zip(x) {
            let t = tanh_approx(SQRT_2_OVER_PI * v * (1.0 + GELU_CUBIC * v * v));
            *y = 0.5 * v * (1.0 + t);
        }
    }
}

simd_kernel! {
    /// `dx = dy · d/dx gelu(x)`, with `d/dx = ½(1 + t) + ½·x·(1 − t²)·√(2/π)·(1 + 3·0.044715·x²)`.
    fn gelu_bwd_kernel(x: &[f32], dy: &[f32], dx: &mut [f32]) {
        for ((dx, &v), &g) in dx.iter_mut().zip(x).zip(dy) {
            let v2 = v * v;
            let t = tanh_approx(SQRT_2_OVER_PI * v * (1.0 + GELU_CUBIC * v2));
            let du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_CUBIC * v2);
            *dx = g * (0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * du);
        }
    }
}

/// `x → y` of [`gelu_tanh`]; elementwise, so its rows are pieces of the flat data.
struct GeluTanh;

impl CustomOp1 for GeluTanh {
    fn name(&self) -> &'static str {
        "fused-gelu-tanh"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        rows_op(
            self.name(),
            [(storage, layout)],
            ELEMENTWISE_ROW,
            |[x], y| gelu_fwd_kernel(x, y),
        )
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        backward(
            "fused-gelu-tanh-backward",
            x,
            dy,
            ELEMENTWISE_ROW,
            gelu_bwd_kernel,
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Softmax over the last dim
// ---------------------------------------------------------------------------------------------

simd_kernel! {
    fn softmax_fwd_kernel(x: &[f32], y: &mut [f32], width: usize) {
        for (x, y) in x.chunks_exact(width).zip(y.chunks_exact_mut(width)) {
            let max = max(x);
            for (y, &v) in y.iter_mut().zip(x) {
                *y = exp_approx(v - max);
            }
            let inv = 1.0 / sum(y);
            for y in y.iter_mut() {
                *y *= inv;
            }
        }
    }
}

simd_kernel! {
    /// `dx = y·(dy − Σ dy·y)` row by row.
    fn softmax_bwd_kernel(y: &[f32], dy: &[f32], dx: &mut [f32], width: usize) {
        let rows = y.chunks_exact(width).zip(dy.chunks_exact(width));
        for ((y, dy), dx) in rows.zip(dx.chunks_exact_mut(width)) {
            let s = dot(y, dy);
            for ((dx, &y), &g) in dx.iter_mut().zip(y).zip(dy) {
                *dx = y * (g - s);
            }
        }
    }
}

/// `x → y` of [`softmax_last_dim`].
struct SoftmaxLastDim;

impl CustomOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "fused-softmax-last-dim"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let w = row_width(self.name(), layout)?;
        rows_op(self.name(), [(storage, layout)], w, |[x], y| {
            softmax_fwd_kernel(x, y, w)
        })
    }

    /// The output is all the backward needs.
    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let w = y.dim(D::Minus1)?;
        backward("fused-softmax-last-dim-backward", y, dy, w, |y, dy, dx| {
            softmax_bwd_kernel(y, dy, dx, w)
        })
    }
}

// ---------------------------------------------------------------------------------------------
// LayerNorm without affine parameters
// ---------------------------------------------------------------------------------------------

/// Mean and `1/√(var + eps)` of a row; the variance from the centred values (two passes over a
/// row in cache), as the composite computes it, not `E[x²] − mean²`, which cancels badly when
/// the mean is large against the spread.
#[inline(always)]
fn mean_rstd(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = sum(x) / n;
    let var = centered_sq_sum(x, mean) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

simd_kernel! {
    fn layer_norm_fwd_kernel(x: &[f32], y: &mut [f32], width: usize, eps: f32) {
        for (x, y) in x.chunks_exact(width).zip(y.chunks_exact_mut(width)) {
            let (mean, rstd) = mean_rstd(x, eps);
            for (y, &v) in y.iter_mut().zip(x) {
                *y = (v - mean) * rstd;
            }
        }
    }
}

simd_kernel! {
    /// With `x̂ = (x − mean)·rstd`: `dx = rstd·(dy − mean(dy) − x̂·mean(dy·x̂))`. The statistics
    /// are recomputed from `x` (cheaper than storing them: the row is read anyway).
    fn layer_norm_bwd_kernel(x: &[f32], dy: &[f32], dx: &mut [f32], width: usize, eps: f32) {
        let n = width as f32;
        let rows = x.chunks_exact(width).zip(dy.chunks_exact(width));
        for ((x, dy), dx) in rows.zip(dx.chunks_exact_mut(width)) {
            let (mean, rstd) = mean_rstd(x, eps);
            let mean_dy = sum(dy) / n;
            // Σ dy·x̂ = rstd·(Σ dy·x − mean·Σ dy).
            let mean_dy_xhat = rstd * (dot(dy, x) / n - mean * mean_dy);
            for ((dx, &v), &g) in dx.iter_mut().zip(x).zip(dy) {
                let xhat = (v - mean) * rstd;
                *dx = rstd * (g - mean_dy - xhat * mean_dy_xhat);
            }
        }
    }
}

/// `x → y` of [`layer_norm`].
struct LayerNorm {
    eps: f32,
}

impl CustomOp1 for LayerNorm {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let w = row_width(self.name(), layout)?;
        rows_op(self.name(), [(storage, layout)], w, |[x], y| {
            layer_norm_fwd_kernel(x, y, w, self.eps)
        })
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let w = x.dim(D::Minus1)?;
        backward("fused-layer-norm-backward", x, dy, w, |x, dy, dx| {
            layer_norm_bwd_kernel(x, dy, dx, w, self.eps)
        })
    }
}

// ---------------------------------------------------------------------------------------------
// RMSNorm with a weight
// ---------------------------------------------------------------------------------------------

#[inline(always)]
fn rms_rstd(x: &[f32], eps: f32) -> f32 {
    1.0 / (dot(x, x) / x.len() as f32 + eps).sqrt()
}

simd_kernel! {
    fn rms_norm_fwd_kernel(x: &[f32], weight: &[f32], y: &mut [f32], eps: f32) {
        let width = weight.len();
        for (x, y) in x.chunks_exact(width).zip(y.chunks_exact_mut(width)) {
            let r = rms_rstd(x, eps);
            for ((y, &v), &w) in y.iter_mut().zip(x).zip(weight) {
                *y = (v * r) * w;
            }
        }
    }
}

simd_kernel! {
    /// With `r = 1/√(mean(x²) + eps)`: `dx = r·(w·dy − x·r²·mean(w·dy·x))`, and this block's
    /// share of `dw = Σ_rows dy·x·r` added into `dw`.
    fn rms_norm_bwd_kernel(
        x: &[f32],
        weight: &[f32],
        dy: &[f32],
        dx: &mut [f32],
        dw: &mut [f32],
        eps: f32,
    ) {
        let width = weight.len();
        let n = width as f32;
        let rows = x.chunks_exact(width).zip(dy.chunks_exact(width));
        for ((x, dy), dx) in rows.zip(dx.chunks_exact_mut(width)) {
            let r = rms_rstd(x, eps);
            for ((dx, &g), &w) in dx.iter_mut().zip(dy).zip(weight) {
                *dx = g * w;
            }
            let c = r * r * dot(dx, x) / n;
            for (((dx, &v), &g), dw) in dx.iter_mut().zip(x).zip(dy).zip(dw.iter_mut()) {
                *dx = r * (*dx - v * c);
                *dw += g * v * r;
            }
        }
    }
}

/// The data of RMSNorm's weight and the width of the rows of `x` it scales.
fn rms_weight<'a>(
    op: &str,
    x: &Layout,
    storage: &'a CpuStorage,
    layout: &Layout,
) -> Result<(&'a [f32], usize)> {
    let weight = f32_data(op, storage, layout)?;
    let w = row_width(op, x)?;
    if weight.len() != w {
        candle_core::bail!("{op}: weight of {} for rows of {w}", weight.len());
    }
    Ok((weight, w))
}

/// `(x, weight) → y` of [`rms_norm`].
struct RmsNorm {
    eps: f32,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (weight, w) = rms_weight(self.name(), l1, s2, l2)?;
        rows_op(self.name(), [(s1, l1)], w, |[x], y| {
            rms_norm_fwd_kernel(x, weight, y, self.eps)
        })
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let packed = x.apply_op3_no_bwd(
            weight,
            &dy.contiguous()?,
            &RmsNormBackward { eps: self.eps },
        )?;
        let (n, d) = (x.elem_count(), weight.elem_count());
        let dx = packed.narrow(0, 0, n)?.reshape(x.shape())?;
        let dw = packed.narrow(0, n, d)?.reshape(weight.shape())?;
        Ok((Some(dx), Some(dw)))
    }
}

/// `(x, weight, dy) → [dx (flattened), dw]` of [`RmsNorm`], packed into one buffer so both come
/// out of a single pass over `x` and `dy`.
struct RmsNormBackward {
    eps: f32,
}

impl CustomOp3 for RmsNormBackward {
    fn name(&self) -> &'static str {
        "fused-rms-norm-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (weight, w) = rms_weight(self.name(), l1, s2, l2)?;
        // Each block adds its rows' share of `dw` into a partial of its own, summed here.
        let (mut out, partials) = map_rows(self.name(), [(s1, l1), (s3, l3)], w, |[x, dy], dx| {
            let mut dw = vec![0f32; w];
            rms_norm_bwd_kernel(x, weight, dy, dx, &mut dw, self.eps);
            dw
        })?;
        out.reserve_exact(w);
        let start = out.len();
        out.resize(start + w, 0.0);
        add_partials(&mut out[start..], partials);
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from_dims(&[len])))
    }
}

// ---------------------------------------------------------------------------------------------
// Interleaved rotary embedding
// ---------------------------------------------------------------------------------------------

simd_kernel! {
    /// Rotates the pairs `(x[2k], x[2k+1])` of one `[N, D]` head block by `(cos[k], ±sin[k])`
    /// (tables flattened to `[N·D/2]`); `inverse` rotates the other way, the backward.
    fn rope_i_kernel(x: &[f32], cos: &[f32], sin: &[f32], y: &mut [f32], inverse: bool) {
        let pairs = x.chunks_exact(2).zip(y.chunks_exact_mut(2));
        if inverse {
            for ((x, y), (&c, &s)) in pairs.zip(cos.iter().zip(sin)) {
                y[0] = x[0] * c + x[1] * s;
                y[1] = x[1] * c - x[0] * s;
            }
        } else {
            for ((x, y), (&c, &s)) in pairs.zip(cos.iter().zip(sin)) {
                y[0] = x[0] * c - x[1] * s;
                y[1] = x[0] * s + x[1] * c;
            }
        }
    }
}

/// `(x, cos, sin) → y` of [`rope_i`]; `inverse` rotates by the negated angle (the transpose of
/// the rotation), which is its backward.
struct RopeI {
    inverse: bool,
}

impl CustomOp3 for RopeI {
    fn name(&self) -> &'static str {
        if self.inverse {
            "fused-rope-i-backward"
        } else {
            "fused-rope-i"
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let cos = f32_data(op, s2, l2)?;
        let sin = f32_data(op, s3, l3)?;
        let (_, _, n, d) = l1.shape().dims4()?;
        let block = n * d;
        if cos.len() != block / 2 || sin.len() != block / 2 {
            candle_core::bail!("{op}: tables of {} for heads of {n}×{d}", cos.len());
        }
        // The tables cover one head's `[N, D]` block: rows are whole heads.
        rows_op(op, [(s1, l1)], block, |[x], y| {
            for (x, y) in x.chunks_exact(block).zip(y.chunks_exact_mut(block)) {
                rope_i_kernel(x, cos, sin, y, self.inverse);
            }
        })
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let inverse = RopeI {
            inverse: !self.inverse,
        };
        let dx = dy.contiguous()?.apply_op3_no_bwd(cos, sin, &inverse)?;
        Ok((Some(dx), None, None))
    }
}

// ---------------------------------------------------------------------------------------------
// Broadcasting, with a one-pass sum as its backward
// ---------------------------------------------------------------------------------------------

/// How a contiguous source is broadcast to a destination shape: the destination is cut into
/// runs of its last `tail` elements; each run copies `tail` contiguous source elements (`fill`
/// false) or repeats one (`fill` true), from the source offset given by the run's index over
/// the leading dims, each `(size, source stride)` (stride 0 where the dim is broadcast).
#[derive(Debug, Clone, PartialEq)]
struct BroadcastPlan {
    src_len: usize,
    dst_len: usize,
    lead: Vec<(usize, usize)>,
    tail: usize,
    fill: bool,
}

impl BroadcastPlan {
    /// The plan from `src` to `dst`, or `None` when `src` does not broadcast to `dst` (candle's
    /// rule: dims matched from the right, each equal or 1 in `src`) or either is empty.
    fn new(src: &[usize], dst: &[usize]) -> Option<Self> {
        let rank = dst.len();
        if src.len() > rank || dst.contains(&0) || src.contains(&0) {
            return None;
        }
        let mut padded = vec![1; rank - src.len()];
        padded.extend_from_slice(src);
        if padded.iter().zip(dst).any(|(&s, &d)| s != d && s != 1) {
            return None;
        }
        let mut strides = vec![1; rank];
        for i in (0..rank.saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * padded[i + 1];
        }
        let broadcast = |i: usize| padded[i] == 1 && dst[i] != 1;
        // The tail: the trailing dims that are all copied or all broadcast (size-1 dims join
        // either kind).
        let mut fill = None;
        let mut split = rank;
        while split > 0 {
            let i = split - 1;
            if dst[i] != 1 {
                match fill {
                    None => fill = Some(broadcast(i)),
                    Some(f) if f != broadcast(i) => break,
                    _ => {}
                }
            }
            split -= 1;
        }
        let tail = dst[split..].iter().product();
        let lead = (0..split)
            .map(|i| (dst[i], if broadcast(i) { 0 } else { strides[i] }))
            .collect();
        Some(Self {
            src_len: padded.iter().product(),
            dst_len: dst.iter().product(),
            lead,
            tail,
            fill: fill.unwrap_or(false),
        })
    }

    /// Source offset of destination run `run`.
    #[inline(always)]
    fn src_offset(&self, mut run: usize) -> usize {
        let mut offset = 0;
        for &(size, stride) in self.lead.iter().rev() {
            offset += (run % size) * stride;
            run /= size;
        }
        offset
    }
}

simd_kernel! {
    /// `acc += v`, elementwise.
    fn add_assign_kernel(acc: &mut [f32], v: &[f32]) {
        for (a, x) in acc.iter_mut().zip(v) {
            *a += x;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BroadcastOp {
    Add,
    Mul,
}

/// `(a, b) → a ∘ b` of [`broadcast_add`] / [`broadcast_mul`], `b` broadcast by the plan.
struct Broadcast {
    plan: BroadcastPlan,
    op: BroadcastOp,
}

/// The contiguous f32 data of `a` (the destination's shape) and `b` (the plan's source).
fn broadcast_inputs<'a>(
    op: &str,
    plan: &BroadcastPlan,
    a: (&'a CpuStorage, &Layout),
    b: (&'a CpuStorage, &Layout),
) -> Result<(&'a [f32], &'a [f32])> {
    let (a, b) = (f32_data(op, a.0, a.1)?, f32_data(op, b.0, b.1)?);
    if a.len() != plan.dst_len || b.len() != plan.src_len {
        candle_core::bail!("{op}: {} and {} elements for {plan:?}", a.len(), b.len());
    }
    Ok((a, b))
}

impl CustomOp2 for Broadcast {
    fn name(&self) -> &'static str {
        match self.op {
            BroadcastOp::Add => "fused-broadcast-add",
            BroadcastOp::Mul => "fused-broadcast-mul",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let plan = &self.plan;
        let (a, b) = broadcast_inputs(self.name(), plan, (s1, l1), (s2, l2))?;
        let tail = plan.tail;
        let mut out = vec![0f32; a.len()];
        row_blocks(&mut out, tail, |first, block| {
            for (i, run) in block.chunks_exact_mut(tail).enumerate() {
                let r = first + i;
                let (a, o) = (&a[r * tail..(r + 1) * tail], plan.src_offset(r));
                match (self.op, plan.fill) {
                    (BroadcastOp::Add, false) => add_kernel(a, &b[o..o + tail], run),
                    (BroadcastOp::Mul, false) => mul_kernel(a, &b[o..o + tail], run),
                    (BroadcastOp::Add, true) => add_scalar_kernel(a, b[o], run),
                    (BroadcastOp::Mul, true) => mul_scalar_kernel(a, b[o], run),
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let plan = self.plan.clone();
        let dy = dy.contiguous()?;
        match self.op {
            BroadcastOp::Add => {
                let db = dy.apply_op1_no_bwd(&BroadcastSum { plan })?;
                Ok((Some(dy), Some(db.reshape(b.shape())?)))
            }
            BroadcastOp::Mul => {
                let packed = a.apply_op3_no_bwd(b, &dy, &BroadcastMulBackward { plan })?;
                let n = a.elem_count();
                let da = packed.narrow(0, 0, n)?.reshape(a.shape())?;
                let db = packed.narrow(0, n, b.elem_count())?.reshape(b.shape())?;
                Ok((Some(da), Some(db)))
            }
        }
    }
}

simd_kernel! {
    fn add_kernel(a: &[f32], b: &[f32], y: &mut [f32]) {
        for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
            *y = a + b;
        }
    }
}

simd_kernel! {
    fn mul_kernel(a: &[f32], b: &[f32], y: &mut [f32]) {
        for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
            *y = a * b;
        }
    }
}

simd_kernel! {
    fn add_scalar_kernel(a: &[f32], b: f32, y: &mut [f32]) {
        for (y, &a) in y.iter_mut().zip(a) {
            *y = a + b;
        }
    }
}

simd_kernel! {
    fn mul_scalar_kernel(a: &[f32], b: f32, y: &mut [f32]) {
        for (y, &a) in y.iter_mut().zip(a) {
            *y = a * b;
        }
    }
}

simd_kernel! {
    /// `acc += a·b`, elementwise.
    fn mul_acc_kernel(acc: &mut [f32], a: &[f32], b: &[f32]) {
        for ((acc, &a), &b) in acc.iter_mut().zip(a).zip(b) {
            *acc += a * b;
        }
    }
}

/// Adds per-block partials (in block order, so the result does not depend on scheduling) into
/// `dst`.
fn add_partials(dst: &mut [f32], partials: Vec<Vec<f32>>) {
    for p in partials {
        add_assign_kernel(dst, &p);
    }
}

/// `dy → db` of a broadcast add: each destination run added back into the source elements it
/// came from. Blocks of runs sum into partials of their own (the source is the smaller side).
struct BroadcastSum {
    plan: BroadcastPlan,
}

impl CustomOp1 for BroadcastSum {
    fn name(&self) -> &'static str {
        "fused-broadcast-sum"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let plan = &self.plan;
        let dy = f32_data(self.name(), storage, layout)?;
        if dy.len() != plan.dst_len {
            candle_core::bail!("{}: {} elements for {plan:?}", self.name(), dy.len());
        }
        let tail = plan.tail;
        let runs = dy.len() / tail;
        let sum_runs = |range: std::ops::Range<usize>| {
            let mut acc = vec![0f32; plan.src_len];
            for r in range {
                let (run, o) = (&dy[r * tail..(r + 1) * tail], plan.src_offset(r));
                if plan.fill {
                    acc[o] += sum(run);
                } else {
                    add_assign_kernel(&mut acc[o..o + tail], run);
                }
            }
            acc
        };
        // Partials cost `src_len` each: at most a quarter of `dy` in all.
        let threads = rayon::current_num_threads();
        let blocks = if threads <= 1 || dy.len() < PAR_MIN_ELEMS {
            1
        } else {
            (4 * threads)
                .min(dy.len() / (4 * plan.src_len))
                .clamp(1, runs)
        };
        let per = runs.div_ceil(blocks);
        let mut partials: Vec<Vec<f32>> = (0..blocks)
            .into_par_iter()
            .map(|b| sum_runs(b * per..((b + 1) * per).min(runs)))
            .collect();
        let mut db = partials.remove(0);
        add_partials(&mut db, partials);
        Ok((CpuStorage::F32(db), Shape::from_dims(&[plan.src_len])))
    }
}

/// `(a, b, dy) → [da (flattened), db]` of a broadcast multiply, `da = dy·b` and `db` the sum of
/// `dy·a` over the broadcast dims, packed into one buffer so both come out of one pass.
struct BroadcastMulBackward {
    plan: BroadcastPlan,
}

impl CustomOp3 for BroadcastMulBackward {
    fn name(&self) -> &'static str {
        "fused-broadcast-mul-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let plan = &self.plan;
        let (a, b) = broadcast_inputs(self.name(), plan, (s1, l1), (s2, l2))?;
        same_shape(self.name(), l1, l3)?;
        let dy = f32_data(self.name(), s3, l3)?;
        let (tail, n) = (plan.tail, a.len());
        let mut out = vec![0f32; n + plan.src_len];
        let (da, db) = out.split_at_mut(n);
        let partials = row_blocks(da, tail, |first, block| {
            let mut acc = vec![0f32; plan.src_len];
            for (i, da) in block.chunks_exact_mut(tail).enumerate() {
                let r = first + i;
                let rows = r * tail..(r + 1) * tail;
                let (a, dy, o) = (&a[rows.clone()], &dy[rows], plan.src_offset(r));
                if plan.fill {
                    mul_scalar_kernel(dy, b[o], da);
                    acc[o] += dot(dy, a);
                } else {
                    mul_kernel(dy, &b[o..o + tail], da);
                    mul_acc_kernel(&mut acc[o..o + tail], dy, a);
                }
            }
            acc
        });
        add_partials(db, partials);
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from_dims(&[len])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::max_abs;
    use candle_core::{Device, Var, D};

    /// Deterministic values in `[−scale, scale)` (a 64-bit LCG), so failures reproduce.
    fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }

    fn tensor(dims: &[usize], seed: u64, scale: f32) -> Tensor {
        let n = dims.iter().product();
        Tensor::from_vec(values(n, seed, scale), dims, &Device::Cpu).unwrap()
    }

    /// `|a − b|` relative to the larger of `max |b|` and 1 (or to `max |b|` alone when `rel`).
    fn rel_diff(a: &Tensor, b: &Tensor, rel: bool) -> f32 {
        let d = crate::max_abs_diff(a, b).unwrap();
        let m = max_abs(b).unwrap();
        d / if rel { m.max(1e-12) } else { m.max(1.0) }
    }

    /// Inputs of every test, as (tensor, whether the op sees it transposed in dims 1 and 2): a
    /// few shapes (an odd last dim for the loops' remainders, one big enough to run on the
    /// thread pool) and a strided view (`[2, last, 6]` seen as `[2, 6, last]`).
    fn inputs(last: usize, scale: f32) -> Vec<(Tensor, bool)> {
        vec![
            (tensor(&[2, 3, last], 1, scale), false),
            (tensor(&[3, 5, last + 3], 2, scale), false),
            (tensor(&[4, 3, 2, last], 3, scale), false),
            (tensor(&[1, 70_000 / last + 1, last], 4, scale), false),
            (tensor(&[2, last, 6], 5, scale), true),
        ]
    }

    fn view(x: &Tensor, transposed: bool) -> Tensor {
        if transposed {
            x.transpose(1, 2).unwrap()
        } else {
            x.clone()
        }
    }

    /// The output of `f` and the gradient of `Σ f(x)·r` (a fixed random `r`, so every output
    /// gets its own upstream gradient) for each listed input, `x` seen through [`view`].
    fn run(
        x: &Tensor,
        transposed: bool,
        params: &[&Tensor],
        f: &dyn Fn(&Tensor, &[Tensor]) -> Result<Tensor>,
    ) -> (Tensor, Vec<Tensor>) {
        let v = Var::from_tensor(x).unwrap();
        let p: Vec<Var> = params
            .iter()
            .map(|p| Var::from_tensor(p).unwrap())
            .collect();
        let pt: Vec<Tensor> = p.iter().map(|p| p.as_tensor().clone()).collect();
        let y = f(&view(v.as_tensor(), transposed), &pt).unwrap();
        let r = tensor(y.dims(), 99, 1.0);
        let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let mut grads = vec![g.get(v.as_tensor()).unwrap().clone()];
        grads.extend(p.iter().map(|p| g.get(p.as_tensor()).unwrap().clone()));
        (y, grads)
    }

    /// Compares forward and gradients of `fused` and `composite`: forward within 1e-5 of the
    /// output's scale, each gradient within 1e-4 of its own largest entry.
    fn check(
        name: &str,
        (x, transposed): (&Tensor, bool),
        params: &[&Tensor],
        fused: &dyn Fn(&Tensor, &[Tensor]) -> Result<Tensor>,
        composite: &dyn Fn(&Tensor, &[Tensor]) -> Result<Tensor>,
    ) {
        assert!(
            enabled(),
            "the fused kernels are switched off ({COMPOSITE_ENV})"
        );
        let (y1, g1) = run(x, transposed, params, fused);
        let (y2, g2) = run(x, transposed, params, composite);
        let dims = view(x, transposed).dims().to_vec();
        let fwd = rel_diff(&y1, &y2, false);
        let bwd: Vec<f32> = g1
            .iter()
            .zip(&g2)
            .map(|(a, b)| rel_diff(a, b, true))
            .collect();
        println!("{name} {dims:?}: forward {fwd:.2e}, gradients {bwd:?}");
        assert!(fwd < 1e-5, "{name} {dims:?}: forward differs by {fwd}");
        for (i, bwd) in bwd.into_iter().enumerate() {
            assert!(bwd < 1e-4, "{name} {dims:?}: gradient {i} differs by {bwd}");
        }
    }

    /// The largest `error(x)` over `xs`, and its `x`.
    fn worst(xs: impl Iterator<Item = f32>, error: impl Fn(f32) -> f64) -> (f64, f32) {
        xs.map(|x| (error(x), x))
            .fold((0.0, 0.0), |w, e| if e.0 > w.0 { e } else { w })
    }

    #[test]
    fn tanh_approx_is_within_a_micro_of_tanh() {
        let xs = (-2_000_000..=2_000_000).map(|i| i as f32 * 1e-5);
        let (err, at) = worst(xs, |x| (tanh_approx(x) as f64 - (x as f64).tanh()).abs());
        for x in [
            30.0f32,
            -30.0,
            1e30,
            -1e30,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ] {
            assert_eq!(tanh_approx(x), x.signum());
        }
        println!("tanh_approx: max error {err:.2e} at {at}");
        assert!(err < 1e-6, "tanh_approx is off by {err} at {at}");
    }

    #[test]
    fn exp_approx_is_within_a_few_ulp_of_exp() {
        let xs = (-870_000..=880_000).map(|i| i as f32 * 1e-4);
        let (err, at) = worst(xs, |x| {
            let exact = (x as f64).exp();
            ((exp_approx(x) as f64 - exact) / exact).abs()
        });
        println!("exp_approx: max relative error {err:.2e} at {at}");
        assert!(err < 3e-7, "exp_approx is off by {err} (relative) at {at}");
        assert_eq!(exp_approx(-1e4), 0.0);
        assert_eq!(exp_approx(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_approx(0.0), 1.0);
    }

    #[test]
    fn gelu_matches_candle() {
        for (x, t) in inputs(37, 4.0) {
            check("gelu", (&x, t), &[], &|x, _| gelu_tanh(x), &|x, _| {
                composite::gelu_tanh(x)
            });
        }
        // The tails: far below zero GELU is 0 (up to tanh's error), far above it is x.
        let x = Tensor::new(&[-12f32, -6.0, 6.0, 12.0], &Device::Cpu).unwrap();
        let y: Vec<f32> = gelu_tanh(&x).unwrap().to_vec1().unwrap();
        assert!(y[0].abs() < 1e-5 && y[1].abs() < 1e-5, "{y:?}");
        assert!(
            (y[2] - 6.0).abs() < 1e-5 && (y[3] - 12.0).abs() < 1e-5,
            "{y:?}"
        );
    }

    #[test]
    fn softmax_matches_candle() {
        for (x, t) in inputs(29, 8.0) {
            check(
                "softmax",
                (&x, t),
                &[],
                &|x, _| softmax_last_dim(x),
                &|x, _| composite::softmax_last_dim(x),
            );
        }
        // Masked keys (a large negative bias) get exactly zero weight.
        let x = Tensor::new(&[[0.5f32, -1e4, 1.5, -1e4]], &Device::Cpu).unwrap();
        let y: Vec<Vec<f32>> = softmax_last_dim(&x).unwrap().to_vec2().unwrap();
        assert_eq!((y[0][1], y[0][3]), (0.0, 0.0));
        assert!((y[0][0] + y[0][2] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn layer_norm_matches_candle() {
        for (x, t) in inputs(48, 3.0) {
            // An offset mean, so the centring matters.
            let x = (x + 2.5).unwrap();
            check(
                "layer_norm",
                (&x, t),
                &[],
                &|x, _| layer_norm(x, 1e-6),
                &|x, _| composite::layer_norm(x, 1e-6),
            );
        }
    }

    #[test]
    fn rms_norm_matches_candle_including_the_weight_gradient() {
        for (i, (x, t)) in inputs(24, 2.0).into_iter().enumerate() {
            let d = view(&x, t).dim(D::Minus1).unwrap();
            let w = (tensor(&[d], 50 + i as u64, 0.5) + 1.0).unwrap();
            check(
                "rms_norm",
                (&x, t),
                &[&w],
                &|x, p| rms_norm(x, &p[0], 1e-6),
                &|x, p| composite::rms_norm(x, &p[0], 1e-6),
            );
        }
    }

    #[test]
    fn rope_matches_candle() {
        let (n, d) = (5, 8);
        // Tables with one row more than the tokens: the first n rows are used.
        let angles: Vec<f32> = values((n + 1) * d / 2, 11, 3.0);
        let cos = Tensor::from_vec(
            angles.iter().map(|a| a.cos()).collect::<Vec<_>>(),
            (n + 1, d / 2),
            &Device::Cpu,
        )
        .unwrap();
        let sin = Tensor::from_vec(
            angles.iter().map(|a| a.sin()).collect::<Vec<_>>(),
            (n + 1, d / 2),
            &Device::Cpu,
        )
        .unwrap();
        let big = 70_000 / (n * d) + 1;
        for (x, t) in [
            (tensor(&[2, 3, n, d], 21, 2.0), false),
            (tensor(&[1, big, n, d], 22, 2.0), false),
            // [B, N, H, D] seen as [B, H, N, D], as attention's heads are.
            (tensor(&[2, n, 3, d], 23, 2.0), true),
        ] {
            check(
                "rope_i",
                (&x, t),
                &[],
                &|x, _| rope_i(x, &cos, &sin),
                &|x, _| {
                    let n = x.dim(2)?;
                    composite::rope_i(x, &cos.narrow(0, 0, n)?, &sin.narrow(0, 0, n)?)
                },
            );
        }
        assert!(rope_i(&tensor(&[1, 1, n + 2, d], 1, 1.0), &cos, &sin).is_err());
    }

    #[test]
    fn broadcast_plans_cut_runs_at_the_last_change_of_kind() {
        let p = BroadcastPlan::new(&[4], &[2, 3, 4]).unwrap();
        assert_eq!(
            (p.lead.clone(), p.tail, p.fill),
            (vec![(2, 0), (3, 0)], 4, false)
        );
        let p = BroadcastPlan::new(&[2, 1, 4], &[2, 3, 4]).unwrap();
        assert_eq!(
            (p.lead.clone(), p.tail, p.fill),
            (vec![(2, 4), (3, 0)], 4, false)
        );
        let p = BroadcastPlan::new(&[2, 3, 1], &[2, 3, 4]).unwrap();
        assert_eq!(
            (p.lead.clone(), p.tail, p.fill),
            (vec![(2, 3), (3, 1)], 4, true)
        );
        // Size-1 dims join the tail, whichever its kind.
        let p = BroadcastPlan::new(&[2, 1, 1, 4], &[2, 3, 1, 4]).unwrap();
        assert_eq!(
            (p.lead.clone(), p.tail, p.fill),
            (vec![(2, 4), (3, 0)], 4, false)
        );
        assert_eq!(p.src_offset(4), 4);
        assert!(BroadcastPlan::new(&[3], &[2, 4]).is_none());
        assert!(BroadcastPlan::new(&[2, 2, 4], &[2, 4]).is_none());
        assert!(BroadcastPlan::new(&[0], &[2, 0]).is_none());
    }

    #[test]
    fn broadcast_add_and_mul_match_candle_including_the_broadcast_operand_gradient() {
        // (a's dims, b's dims): biases, adaLN's [B, 1, D], a trailing broadcast, a middle one,
        // and one big enough for the thread pool (forward and backward).
        let cases: [(&[usize], &[usize]); 6] = [
            (&[2, 3, 5], &[5]),
            (&[2, 3, 5], &[2, 1, 5]),
            (&[2, 3, 5], &[2, 3, 1]),
            (&[4, 3, 2, 5], &[4, 1, 2, 5]),
            (&[16, 144, 64], &[16, 1, 64]),
            (&[300, 256], &[256]),
        ];
        for (i, (a_dims, b_dims)) in cases.into_iter().enumerate() {
            let a = tensor(a_dims, 60 + i as u64, 2.0);
            let b = tensor(b_dims, 70 + i as u64, 1.5);
            check(
                "broadcast_add",
                (&a, false),
                &[&b],
                &|a, p| broadcast_add(a, &p[0]),
                &|a, p| a.broadcast_add(&p[0]),
            );
            check(
                "broadcast_mul",
                (&a, false),
                &[&b],
                &|a, p| broadcast_mul(a, &p[0]),
                &|a, p| a.broadcast_mul(&p[0]),
            );
        }
        // A strided `a` and a `b` that is not a variable (no backward through it).
        let a = tensor(&[2, 5, 3], 80, 2.0);
        let b = tensor(&[2, 1, 5], 81, 1.0);
        check(
            "broadcast_add (strided)",
            (&a, true),
            &[],
            &|a, _| broadcast_add(a, &b),
            &|a, _| a.broadcast_add(&b),
        );
    }

    #[test]
    fn linear_matches_candle_nn() {
        use candle_core::Module;
        for (i, dims) in [[2usize, 3, 8], [4, 150, 8]].into_iter().enumerate() {
            let x = tensor(&dims, 90 + i as u64, 1.0);
            let w = tensor(&[6, 8], 95 + i as u64, 0.5);
            let b = tensor(&[6], 97 + i as u64, 0.5);
            check(
                "linear",
                (&x, false),
                &[&w, &b],
                &|x, p| linear(x, &candle_nn::Linear::new(p[0].clone(), Some(p[1].clone()))),
                &|x, p| candle_nn::Linear::new(p[0].clone(), Some(p[1].clone())).forward(x),
            );
        }
    }

    #[test]
    fn other_dtypes_fall_back_to_the_composite() {
        let x = tensor(&[2, 3, 16], 31, 2.0).to_dtype(DType::F64).unwrap();
        let a = gelu_tanh(&x).unwrap();
        assert_eq!(a.dtype(), DType::F64);
        assert!(crate::max_abs_diff(&a, &x.gelu().unwrap()).unwrap() == 0.0);
        let s = softmax_last_dim(&x).unwrap();
        let sums: Vec<Vec<f64>> = s.sum(D::Minus1).unwrap().to_vec2().unwrap();
        assert!(sums.iter().flatten().all(|v| (v - 1.0).abs() < 1e-12));
    }
}
