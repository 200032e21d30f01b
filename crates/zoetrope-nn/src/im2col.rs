//! Spacetime im2col as a candle custom op with its own backward (col2im), for training 3D
//! convolutions on CPU.
//!
//! Input is channels-last and already padded, `[B, T, H, W, C]`; output is the patch matrix
//! `[B, T', H', W', kt·kh·kw·C]` whose last axis holds, tap by tap in `(t, y, x)` order, the `C`
//! channels each tap reads. A 3D convolution is then one matrix product with the weight as
//! `[kt·kh·kw·C, Cout]`. The gather and its adjoint (a scatter-add) are plain row copies, so a
//! training step is dominated by matrix products instead of candle's CPU `conv_transpose2d`
//! (which computes `conv2d`'s input gradient with a direct loop).

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

/// Kernel sizes and strides of an [`im2col`] (padding is applied beforehand).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Im2ColSpec {
    pub kernel: [usize; 3],
    pub stride: [usize; 3],
}

impl Im2ColSpec {
    fn out_dims(&self, input: [usize; 3]) -> Result<[usize; 3]> {
        let mut out = [0; 3];
        for a in 0..3 {
            if input[a] < self.kernel[a] || self.stride[a] == 0 {
                candle_core::bail!(
                    "im2col: input {input:?} is smaller than the kernel {:?}",
                    self.kernel
                );
            }
            out[a] = (input[a] - self.kernel[a]) / self.stride[a] + 1;
        }
        Ok(out)
    }

    fn taps(&self) -> usize {
        self.kernel.iter().product()
    }
}

/// Visits every (patch row, tap, input row) triple: `f(col_offset, input_offset)` with offsets
/// in elements, each naming a run of `c` channels.
fn for_each_tap(
    spec: &Im2ColSpec,
    b: usize,
    input: [usize; 3],
    out: [usize; 3],
    c: usize,
    mut f: impl FnMut(usize, usize),
) {
    let [tp, hp, wp] = input;
    let [to, ho, wo] = out;
    let [kt, kh, kw] = spec.kernel;
    let [st, sh, sw] = spec.stride;
    let k = spec.taps() * c;
    let mut row = 0;
    for bi in 0..b {
        for t in 0..to {
            for y in 0..ho {
                for x in 0..wo {
                    let mut col = row * k;
                    for dt in 0..kt {
                        for dy in 0..kh {
                            let base = ((bi * tp + t * st + dt) * hp + y * sh + dy) * wp + x * sw;
                            for dx in 0..kw {
                                f(col, (base + dx) * c);
                                col += c;
                            }
                        }
                    }
                    row += 1;
                }
            }
        }
    }
}

struct Im2Col(Im2ColSpec);

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "im2col3d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, tp, hp, wp, c) = layout.shape().dims5()?;
        let out = self.0.out_dims([tp, hp, wp])?;
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("im2col: input must be contiguous");
        };
        let k = self.0.taps() * c;
        let rows = b * out[0] * out[1] * out[2];
        let shape = Shape::from_dims(&[b, out[0], out[1], out[2], k]);
        macro_rules! gather {
            ($v:expr, $variant:ident) => {{
                let src = &$v[start..end];
                let mut dst = vec![Default::default(); rows * k];
                for_each_tap(&self.0, b, [tp, hp, wp], out, c, |d, s| {
                    dst[d..d + c].copy_from_slice(&src[s..s + c]);
                });
                Ok((CpuStorage::$variant(dst), shape))
            }};
        }
        match storage {
            CpuStorage::F32(v) => gather!(v, F32),
            CpuStorage::F64(v) => gather!(v, F64),
            CpuStorage::BF16(v) => gather!(v, BF16),
            CpuStorage::F16(v) => gather!(v, F16),
            _ => candle_core::bail!("im2col: only float tensors are supported"),
        }
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (_, tp, hp, wp, _) = arg.dims5()?;
        let g = grad_res.contiguous()?;
        let g = if matches!(g.dtype(), DType::F32 | DType::F64) {
            g
        } else {
            g.to_dtype(DType::F32)?
        };
        let grad = g.apply_op1_no_bwd(&Col2Im {
            spec: self.0,
            input: [tp, hp, wp],
        })?;
        Ok(Some(grad.to_dtype(arg.dtype())?))
    }
}

/// The adjoint of [`Im2Col`]: sums each patch-matrix entry back into the input cell it came from.
struct Col2Im {
    spec: Im2ColSpec,
    input: [usize; 3],
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "col2im3d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, to, ho, wo, k) = layout.shape().dims5()?;
        let out = self.spec.out_dims(self.input)?;
        if out != [to, ho, wo] || k % self.spec.taps() != 0 {
            candle_core::bail!("col2im: patch matrix {:?} does not fit", layout.dims());
        }
        let c = k / self.spec.taps();
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("col2im: input must be contiguous");
        };
        let [tp, hp, wp] = self.input;
        let shape = Shape::from_dims(&[b, tp, hp, wp, c]);
        macro_rules! scatter {
            ($v:expr, $variant:ident) => {{
                let src = &$v[start..end];
                let mut dst = vec![Default::default(); b * tp * hp * wp * c];
                for_each_tap(&self.spec, b, self.input, out, c, |d, s| {
                    for (o, i) in dst[s..s + c].iter_mut().zip(&src[d..d + c]) {
                        *o += *i;
                    }
                });
                Ok((CpuStorage::$variant(dst), shape))
            }};
        }
        match storage {
            CpuStorage::F32(v) => scatter!(v, F32),
            CpuStorage::F64(v) => scatter!(v, F64),
            _ => candle_core::bail!("col2im: only f32 and f64 gradients are supported"),
        }
    }
}

/// The patch matrix `[B, T', H', W', kt·kh·kw·C]` of a padded channels-last input
/// `[B, T, H, W, C]`, differentiable (CPU only).
pub fn im2col(x: &Tensor, spec: Im2ColSpec) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Im2Col(spec))
}
