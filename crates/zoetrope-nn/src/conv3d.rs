//! Causal 3D convolution composed from candle ops (candle has no `conv3d`).
//!
//! Layout is PyTorch's: input `[B, Cin, T, H, W]`, weight `[Cout, Cin, kt, kh, kw]`, output
//! `[B, Cout, T', H', W']`. Time is padded only *before* the first frame (zeros, or frames carried
//! over from the previous chunk), so output frame `t` never depends on input frames after `t`.
//!
//! How it is computed: the `kt` temporal taps are folded into the channel axis. For every output
//! frame the `kt` input frames it reads are stacked as `kt·Cin` channels, and one `conv2d` with the
//! weight rearranged to `[Cout, kt·Cin, kh, kw]` does the rest (one large GEMM). Two alternatives
//! are kept for comparison (`forward_sum_of_taps`: one `conv2d` per tap, summed;
//! `forward_stacked_outputs`: one `conv2d` of every frame with the taps stacked along output
//! channels, then shifted sums). On a shared 2-core CPU (`conv3d_speed` test, 3×3×3, f32) none won
//! everywhere: folded was best or tied for wide layers (C=192/384: 358/212 ms vs 379/220 and
//! 438/373 ms), stacked-outputs for narrow, large frames (C=32, 9×64×64: 148 ms vs folded 362,
//! sum 215). Folded is the default as the most even. Only differentiable candle ops are used
//! (`pad_with_zeros`, `narrow`, `cat`, `permute`, `conv2d`), so gradients flow to input, weight
//! and bias.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

/// Shape parameters of a [`CausalConv3d`] besides the kernel size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv3dConfig {
    /// Zero frames added before the first frame. `kt - 1` makes a "same-length" causal conv. Wan
    /// writes this as `2 * padding[0]` (its `(3,1,1)` stride-2 `time_conv` uses 0).
    pub time_pad: usize,
    /// Symmetric zero padding of height and width (PyTorch `padding[1]`, `padding[2]`; candle's
    /// `conv2d` takes one value for both, so they must be equal).
    pub spatial_pad: usize,
    /// Temporal stride.
    pub time_stride: usize,
    /// Spatial stride (same for height and width).
    pub spatial_stride: usize,
}

impl Conv3dConfig {
    /// A stride-1 causal conv with `kt - 1` zero frames in front and `spatial_pad` on each side.
    pub fn causal(kt: usize, spatial_pad: usize) -> Self {
        Self {
            time_pad: kt.saturating_sub(1),
            spatial_pad,
            time_stride: 1,
            spatial_stride: 1,
        }
    }
}

/// A causal 3D convolution `[B, Cin, T, H, W] -> [B, Cout, T', H', W']`.
#[derive(Debug, Clone)]
pub struct CausalConv3d {
    /// `[Cout, Cin, kt, kh, kw]` as stored.
    weight: Tensor,
    /// `[Cout]`.
    bias: Option<Tensor>,
    config: Conv3dConfig,
    kt: usize,
    /// The weight packed for bf16 products on AMX, when they are switched on.
    w16: Option<std::sync::Arc<zoetrope_kernels::conv::Weight16>>,
}

impl CausalConv3d {
    /// Wraps a weight `[Cout, Cin, kt, kh, kw]` and optional bias `[Cout]`.
    pub fn new(weight: Tensor, bias: Option<Tensor>, config: Conv3dConfig) -> Result<Self> {
        let (cout, _, kt, _, _) = weight.dims5()?;
        if let Some(b) = &bias {
            if b.dims() != [cout] {
                candle_core::bail!("conv3d bias has shape {:?}, expected [{cout}]", b.dims());
            }
        }
        if kt == 0 || config.time_stride == 0 || config.spatial_stride == 0 {
            candle_core::bail!("conv3d: kernel size and strides must be positive");
        }
        Ok(Self {
            weight,
            bias,
            config,
            kt,
            w16: None,
        })
    }

    /// The weight with taps folded into input channels, `[Cout, kt·Cin, kh, kw]`, matching the
    /// tap-major channel stacking of the input. Derived at each call rather than stored: a stored
    /// copy would double weight memory and, when `weight` is a trained `Var`, go stale after the
    /// first optimiser step.
    fn folded_weight(&self) -> Result<Tensor> {
        let (cout, cin, kt, kh, kw) = self.weight.dims5()?;
        self.weight
            .permute((0, 2, 1, 3, 4))?
            .contiguous()?
            .reshape((cout, kt * cin, kh, kw))
    }

    /// Loads `weight` (and `bias` when `with_bias`) from `vb` with the given sizes.
    pub fn load(
        vb: VarBuilder,
        cin: usize,
        cout: usize,
        kernel: (usize, usize, usize),
        config: Conv3dConfig,
        with_bias: bool,
    ) -> Result<Self> {
        let weight = vb.get((cout, cin, kernel.0, kernel.1, kernel.2), "weight")?;
        let bias = if with_bias {
            Some(vb.get(cout, "bias")?)
        } else {
            None
        };
        Self::new(weight, bias, config)
    }

    /// Whether the convolution runs with bf16 products on AMX.
    pub fn bf16_products(&self) -> bool {
        self.w16.is_some()
    }

    /// The weight `[Cout, Cin, kt, kh, kw]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias `[Cout]`, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The padding and strides.
    pub fn config(&self) -> Conv3dConfig {
        self.config
    }

    /// Convolves `x` with `time_pad` zero frames in front.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with_cache(x, None)
    }

    /// Convolves `x`, taking the frames in front from `cache` (the last input frames of the
    /// previous chunk, `[B, Cin, c, H, W]`) and zeros for the rest of `time_pad`.
    ///
    /// This is diffusers' `WanCausalConv3d.forward(x, cache_x)`: the cache is used only when
    /// `time_pad > 0`, and it replaces that many zero frames. A cache longer than `time_pad` is
    /// an error (PyTorch would crop with a negative pad; Wan never does that).
    pub fn forward_with_cache(&self, x: &Tensor, cache: Option<&Tensor>) -> Result<Tensor> {
        let (_, _, _, h, w) = x.dims5()?;
        if !self.weight.is_variable() && crate::fast::conv3d_kernel_supported(x, &self.weight) {
            // The kernel reads [zeros | cache | x] in place: no concatenated copy.
            let pad = self.config.time_pad;
            let front = cache.filter(|_| pad > 0);
            let ct = front.map(|c| c.dim(2)).transpose()?.unwrap_or(0);
            if ct > pad {
                candle_core::bail!(
                    "conv3d cache {:?} does not fit input {:?} with time_pad {pad}",
                    front.map(|c| c.dims().to_vec()),
                    x.dims()
                );
            }
            return crate::fast::conv3d_causal(
                pad - ct,
                front,
                x,
                &self.weight,
                self.bias.as_ref(),
                self.config.time_stride,
                self.config.spatial_stride,
                self.config.spatial_pad,
                self.w16.as_deref(),
            );
        }
        let mut x = x.clone();
        let mut pad = self.config.time_pad;
        if let Some(c) = cache.filter(|_| pad > 0) {
            let (_, _, ct, ch, cw) = c.dims5()?;
            if ct > pad || (ch, cw) != (h, w) {
                candle_core::bail!(
                    "conv3d cache {:?} does not fit input {:?} with time_pad {pad}",
                    c.dims(),
                    x.dims()
                );
            }
            x = Tensor::cat(&[c, &x], 2)?;
            pad -= ct;
        }
        if pad > 0 {
            x = x.pad_with_zeros(2, pad, 0)?;
        }
        self.forward_padded(&x)
    }

    /// Valid (unpadded in time) convolution of an already time-padded input. A weight that is a
    /// trainable `Var` takes the im2col path, whose backward pass is fast on CPU; inference takes
    /// zoetrope's implicit-GEMM kernel for f32 on the CPU ([`crate::fast::conv3d`]), the
    /// folded-taps `conv2d` otherwise.
    fn forward_padded(&self, x: &Tensor) -> Result<Tensor> {
        if self.weight.is_variable() && x.device().is_cpu() {
            return self.im2col_padded(x);
        }
        if crate::fast::conv3d_kernel_supported(x, &self.weight) {
            return crate::fast::conv3d(
                x,
                &self.weight,
                self.bias.as_ref(),
                self.config.time_stride,
                self.config.spatial_stride,
                self.config.spatial_pad,
                self.w16.as_deref(),
            );
        }
        let (b, cin, tp, h, w) = x.dims5()?;
        let (cout, wcin, kt, _, _) = self.weight.dims5()?;
        if cin != wcin {
            candle_core::bail!("conv3d: input has {cin} channels, weight expects {wcin}");
        }
        if tp < kt {
            candle_core::bail!(
                "conv3d: {tp} frames (after padding) is fewer than kernel depth {kt}"
            );
        }
        let st = self.config.time_stride;
        let t_out = (tp - kt) / st + 1;
        // [B, Cin, T, H, W] -> [B, T, Cin, H, W] so frames are contiguous blocks of channels.
        let xt = x.permute((0, 2, 1, 3, 4))?.contiguous()?;
        // For tap k the frames read are k, k+st, ..., k+(t_out-1)*st.
        let mut taps = Vec::with_capacity(self.kt);
        for k in 0..kt {
            let frames = if st == 1 {
                xt.narrow(1, k, t_out)?
            } else {
                let span = xt.narrow(1, k, (t_out - 1) * st + 1)?;
                // Pad to a multiple of st, view as [B, t_out, st, ...] and keep the first of each.
                let span = span.pad_with_zeros(1, 0, st - 1)?;
                span.reshape((b, t_out, st, cin, h, w))?
                    .narrow(2, 0, 1)?
                    .squeeze(2)?
            };
            taps.push(frames);
        }
        // [B, t_out, kt*Cin, H, W] with tap-major channels.
        let stacked = if kt == 1 {
            taps.pop().expect("one tap")
        } else {
            Tensor::cat(&taps, 2)?
        };
        let stacked = stacked.reshape((b * t_out, kt * cin, h, w))?;
        let y = stacked.conv2d(
            &self.folded_weight()?,
            self.config.spatial_pad,
            self.config.spatial_stride,
            1,
            1,
        )?;
        let (_, _, ho, wo) = y.dims4()?;
        let y = y
            .reshape((b, t_out, cout, ho, wo))?
            .permute((0, 2, 1, 3, 4))?;
        match &self.bias {
            Some(bias) => y.broadcast_add(&bias.reshape((1, cout, 1, 1, 1))?),
            None => Ok(y),
        }
    }

    /// The same convolution as one matrix product (im2col): the input goes channels-last, every
    /// `(kt, kh, kw)` tap is a shifted (and strided) view, the views are concatenated along
    /// channels into `[N·T'·H'·W', kt·kh·kw·Cin]` and multiplied by the weight as
    /// `[kt·kh·kw·Cin, Cout]`. Built from `narrow`, `cat`, `reshape` and `matmul` only, so its
    /// backward pass is also matrix products and copies: candle's CPU backward of `conv2d`
    /// computes the input gradient with a direct-loop `conv_transpose2d`, which made training
    /// steps about 10x the forward time. Memory is `kt·kh·kw` times the input for the columns.
    pub fn forward_im2col(&self, x: &Tensor) -> Result<Tensor> {
        let x = if self.config.time_pad > 0 {
            x.pad_with_zeros(2, self.config.time_pad, 0)?
        } else {
            x.clone()
        };
        self.im2col_padded(&x)
    }

    fn im2col_padded(&self, x: &Tensor) -> Result<Tensor> {
        let (b, cin, tp, h, w) = x.dims5()?;
        let (cout, wcin, kt, kh, kw) = self.weight.dims5()?;
        if cin != wcin {
            candle_core::bail!("conv3d: input has {cin} channels, weight expects {wcin}");
        }
        let (st, ss, sp) = (
            self.config.time_stride,
            self.config.spatial_stride,
            self.config.spatial_pad,
        );
        if tp < kt || h + 2 * sp < kh || w + 2 * sp < kw {
            candle_core::bail!(
                "conv3d: input {:?} (after padding) is smaller than the kernel {kt}x{kh}x{kw}",
                x.dims()
            );
        }
        let t_out = (tp - kt) / st + 1;
        let h_out = (h + 2 * sp - kh) / ss + 1;
        let w_out = (w + 2 * sp - kw) / ss + 1;
        // [B, T, H, W, Cin], spatially zero-padded, then the patch matrix.
        let mut xl = x.permute((0, 2, 3, 4, 1))?;
        if sp > 0 {
            xl = xl.pad_with_zeros(2, sp, sp)?.pad_with_zeros(3, sp, sp)?;
        }
        let cols = crate::im2col::im2col(
            &xl,
            crate::im2col::Im2ColSpec {
                kernel: [kt, kh, kw],
                stride: [st, ss, ss],
            },
        )?;
        let k = kt * kh * kw * cin;
        let m = b * t_out * h_out * w_out;
        // Weight as [K, Cout] with rows ordered (kt, kh, kw, cin) like the columns.
        let wm = self
            .weight
            .permute((2, 3, 4, 1, 0))?
            .contiguous()?
            .reshape((k, cout))?;
        let mut y = cols.reshape((m, k))?.matmul(&wm)?;
        if let Some(bias) = &self.bias {
            y = y.broadcast_add(&bias.reshape((1, cout))?)?;
        }
        y.reshape((b, t_out, h_out, w_out, cout))?
            .permute((0, 4, 1, 2, 3))
    }

    /// The same convolution with the taps stacked along *output* channels: one `conv2d` of every
    /// padded frame with `[kt·Cout, Cin, kh, kw]`, then output frame `t` sums tap `k`'s slice of
    /// frame `t·st + k`. Kept for the speed comparison.
    #[doc(hidden)]
    pub fn forward_stacked_outputs(&self, x: &Tensor) -> Result<Tensor> {
        let x = if self.config.time_pad > 0 {
            x.pad_with_zeros(2, self.config.time_pad, 0)?
        } else {
            x.clone()
        };
        let (b, cin, tp, h, w) = x.dims5()?;
        let (cout, _, kt, kh, kw) = self.weight.dims5()?;
        let st = self.config.time_stride;
        let t_out = (tp - kt) / st + 1;
        let xt = x
            .permute((0, 2, 1, 3, 4))?
            .contiguous()?
            .reshape((b * tp, cin, h, w))?;
        let wk = self
            .weight
            .permute((2, 0, 1, 3, 4))?
            .contiguous()?
            .reshape((kt * cout, cin, kh, kw))?;
        let y = xt.conv2d(
            &wk,
            self.config.spatial_pad,
            self.config.spatial_stride,
            1,
            1,
        )?;
        let (_, _, ho, wo) = y.dims4()?;
        let y = y.reshape((b, tp, kt * cout, ho, wo))?;
        let mut acc: Option<Tensor> = None;
        for k in 0..kt {
            let yk = y.narrow(2, k * cout, cout)?;
            let yk = if st == 1 {
                yk.narrow(1, k, t_out)?
            } else {
                let idx: Vec<u32> = (0..t_out).map(|t| (t * st + k) as u32).collect();
                yk.contiguous()?
                    .index_select(&Tensor::new(idx.as_slice(), x.device())?, 1)?
            };
            acc = Some(match acc {
                Some(a) => (a + yk)?,
                None => yk,
            });
        }
        let y = acc.expect("kt > 0").permute((0, 2, 1, 3, 4))?;
        match &self.bias {
            Some(bias) => y.broadcast_add(&bias.reshape((1, cout, 1, 1, 1))?),
            None => Ok(y),
        }
    }

    /// The same convolution as a sum of one `conv2d` per temporal tap. Kept for the speed
    /// comparison and as a second implementation to test against.
    #[doc(hidden)]
    pub fn forward_sum_of_taps(&self, x: &Tensor) -> Result<Tensor> {
        let x = if self.config.time_pad > 0 {
            x.pad_with_zeros(2, self.config.time_pad, 0)?
        } else {
            x.clone()
        };
        let (b, cin, tp, h, w) = x.dims5()?;
        let (cout, _, kt, _, _) = self.weight.dims5()?;
        let st = self.config.time_stride;
        let t_out = (tp - kt) / st + 1;
        let xt = x.permute((0, 2, 1, 3, 4))?.contiguous()?;
        let mut acc: Option<Tensor> = None;
        for k in 0..kt {
            let idx: Vec<u32> = (0..t_out).map(|t| (t * st + k) as u32).collect();
            let idx = Tensor::new(idx.as_slice(), x.device())?;
            let frames = xt.index_select(&idx, 1)?.reshape((b * t_out, cin, h, w))?;
            let wk = self.weight.narrow(2, k, 1)?.squeeze(2)?.contiguous()?;
            let y = frames.conv2d(
                &wk,
                self.config.spatial_pad,
                self.config.spatial_stride,
                1,
                1,
            )?;
            acc = Some(match acc {
                Some(a) => (a + y)?,
                None => y,
            });
        }
        let y = acc.expect("kt > 0");
        let (_, _, ho, wo) = y.dims4()?;
        let y = y
            .reshape((b, t_out, cout, ho, wo))?
            .permute((0, 2, 1, 3, 4))?;
        match &self.bias {
            Some(bias) => y.broadcast_add(&bias.reshape((1, cout, 1, 1, 1))?),
            None => Ok(y),
        }
    }
}

impl Module for CausalConv3d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        CausalConv3d::forward(self, x)
    }
}

/// A direct six-loop conv3d on f32 data, for tests: `x` `[B, Cin, T, H, W]` is zero-padded by
/// `time_pad` frames in front and `spatial_pad` on each spatial side.
#[doc(hidden)]
pub fn naive_conv3d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    config: Conv3dConfig,
) -> Result<Tensor> {
    let (b, cin, t, h, w) = x.dims5()?;
    let (cout, _, kt, kh, kw) = weight.dims5()?;
    let xv = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let wv = weight
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let bv = match bias {
        Some(bias) => bias.to_dtype(DType::F32)?.to_vec1::<f32>()?,
        None => vec![0.0; cout],
    };
    let (tp, sp) = (config.time_pad as isize, config.spatial_pad as isize);
    let (st, ss) = (config.time_stride, config.spatial_stride);
    let t_out = (t + config.time_pad - kt) / st + 1;
    let h_out = (h + 2 * config.spatial_pad - kh) / ss + 1;
    let w_out = (w + 2 * config.spatial_pad - kw) / ss + 1;
    let mut out = vec![0f32; b * cout * t_out * h_out * w_out];
    let at = |bi: usize, c: usize, ti: isize, yi: isize, xi: isize| -> f32 {
        if ti < 0 || yi < 0 || xi < 0 || ti >= t as isize || yi >= h as isize || xi >= w as isize {
            return 0.0;
        }
        xv[(((bi * cin + c) * t + ti as usize) * h + yi as usize) * w + xi as usize]
    };
    for bi in 0..b {
        for co in 0..cout {
            for to in 0..t_out {
                for yo in 0..h_out {
                    for xo in 0..w_out {
                        let mut s = bv[co] as f64;
                        for ci in 0..cin {
                            for dt in 0..kt {
                                for dy in 0..kh {
                                    for dx in 0..kw {
                                        let wi = (((co * cin + ci) * kt + dt) * kh + dy) * kw + dx;
                                        let v = at(
                                            bi,
                                            ci,
                                            (to * st + dt) as isize - tp,
                                            (yo * ss + dy) as isize - sp,
                                            (xo * ss + dx) as isize - sp,
                                        );
                                        s += (wv[wi] * v) as f64;
                                    }
                                }
                            }
                        }
                        out[(((bi * cout + co) * t_out + to) * h_out + yo) * w_out + xo] = s as f32;
                    }
                }
            }
        }
    }
    Tensor::from_vec(out, (b, cout, t_out, h_out, w_out), x.device())
}

impl crate::fast::Bf16Products for CausalConv3d {
    /// Inference with bf16 products (inputs and weight rounded to bf16, f32 sums) on AMX; a
    /// no-op where they do not apply (no AMX, a trainable or non-f32 weight).
    fn set_bf16_products(&mut self, on: bool) -> Result<()> {
        self.w16 = if on {
            crate::fast::pack_conv_bf16(&self.weight)?
        } else {
            None
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::max_abs_diff;
    use candle_core::{Device, Var};

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        // A small LCG so tests are deterministic without a rand dependency.
        let n: usize = shape.iter().product();
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
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn check(cin: usize, cout: usize, k: (usize, usize, usize), cfg: Conv3dConfig, t: usize) {
        let x = rand(&[2, cin, t, 7, 9], 1);
        let w = rand(&[cout, cin, k.0, k.1, k.2], 2);
        let b = rand(&[cout], 3);
        let conv = CausalConv3d::new(w.clone(), Some(b.clone()), cfg).unwrap();
        let want = naive_conv3d(&x, &w, Some(&b), cfg).unwrap();
        let got = conv.forward(&x).unwrap();
        assert_eq!(got.dims(), want.dims());
        let err = max_abs_diff(&got, &want).unwrap();
        assert!(err < 1e-5, "{k:?} {cfg:?}: max error {err}");
        let got2 = conv.forward_sum_of_taps(&x).unwrap();
        let err2 = max_abs_diff(&got2, &want).unwrap();
        assert!(err2 < 1e-5, "sum of taps {k:?} {cfg:?}: max error {err2}");
        let got4 = conv.forward_im2col(&x).unwrap();
        let err4 = max_abs_diff(&got4, &want).unwrap();
        assert!(err4 < 1e-5, "im2col {k:?} {cfg:?}: max error {err4}");
        let got3 = conv.forward_stacked_outputs(&x).unwrap();
        let err3 = max_abs_diff(&got3, &want).unwrap();
        assert!(
            err3 < 1e-5,
            "stacked outputs {k:?} {cfg:?}: max error {err3}"
        );
    }

    #[test]
    fn matches_naive_loop() {
        check(3, 5, (3, 3, 3), Conv3dConfig::causal(3, 1), 6);
        check(4, 2, (1, 1, 1), Conv3dConfig::causal(1, 0), 3);
        check(4, 6, (3, 1, 1), Conv3dConfig::causal(3, 0), 5);
        check(2, 3, (2, 3, 3), Conv3dConfig::causal(2, 0), 4);
        // Wan's downsample3d time_conv: no padding, temporal stride 2.
        let cfg = Conv3dConfig {
            time_pad: 0,
            spatial_pad: 0,
            time_stride: 2,
            spatial_stride: 1,
        };
        check(3, 3, (3, 1, 1), cfg, 5);
        check(3, 3, (3, 1, 1), cfg, 8);
        let cfg = Conv3dConfig {
            time_pad: 2,
            spatial_pad: 1,
            time_stride: 2,
            spatial_stride: 2,
        };
        check(3, 4, (3, 3, 3), cfg, 7);
    }

    #[test]
    fn causal() {
        let cfg = Conv3dConfig::causal(3, 1);
        let conv = CausalConv3d::new(rand(&[4, 3, 3, 3, 3], 5), Some(rand(&[4], 6)), cfg).unwrap();
        let x = rand(&[1, 3, 8, 6, 6], 7);
        let y = conv.forward(&x).unwrap();
        for k in 0..8 {
            // Replace frame k with other values.
            let mut parts = vec![];
            if k > 0 {
                parts.push(x.narrow(2, 0, k).unwrap());
            }
            parts.push(rand(&[1, 3, 1, 6, 6], 100 + k as u64));
            if k + 1 < 8 {
                parts.push(x.narrow(2, k + 1, 8 - k - 1).unwrap());
            }
            let x2 = Tensor::cat(&parts, 2).unwrap();
            let y2 = conv.forward(&x2).unwrap();
            if k > 0 {
                let d = max_abs_diff(&y.narrow(2, 0, k).unwrap(), &y2.narrow(2, 0, k).unwrap());
                assert_eq!(d.unwrap(), 0.0, "frame {k} changed earlier outputs");
            }
            let d = max_abs_diff(&y.narrow(2, k, 1).unwrap(), &y2.narrow(2, k, 1).unwrap());
            assert!(d.unwrap() > 0.0, "frame {k} does not reach output {k}");
        }
    }

    #[test]
    fn chunks_with_cache_equal_whole() {
        // Streaming chunks with the last kt-1 input frames as cache equals one pass.
        let cfg = Conv3dConfig::causal(3, 1);
        let conv = CausalConv3d::new(rand(&[4, 3, 3, 3, 3], 8), Some(rand(&[4], 9)), cfg).unwrap();
        let x = rand(&[1, 3, 9, 5, 7], 10);
        let whole = conv.forward(&x).unwrap();
        let mut outs = vec![];
        let mut cache: Option<Tensor> = None;
        for (start, len) in [(0, 1), (1, 4), (5, 4)] {
            let chunk = x.narrow(2, start, len).unwrap();
            outs.push(conv.forward_with_cache(&chunk, cache.as_ref()).unwrap());
            let keep = (start + len).min(2);
            cache = Some(x.narrow(2, start + len - keep, keep).unwrap());
        }
        let streamed = Tensor::cat(&outs, 2).unwrap();
        assert!(max_abs_diff(&whole, &streamed).unwrap() < 1e-6);
    }

    #[test]
    fn forward_follows_a_trained_weight() {
        // An optimiser updates a Var in place; the convolution must use the new values.
        let cfg = Conv3dConfig::causal(3, 1);
        let x = rand(&[1, 2, 4, 5, 5], 21);
        let w = Var::from_tensor(&rand(&[3, 2, 3, 3, 3], 22)).unwrap();
        let conv = CausalConv3d::new(w.as_tensor().clone(), None, cfg).unwrap();
        let before = conv.forward(&x).unwrap();
        let w2 = rand(&[3, 2, 3, 3, 3], 23);
        w.set(&w2).unwrap();
        let after = conv.forward(&x).unwrap();
        let want = naive_conv3d(&x, &w2, None, cfg).unwrap();
        assert!(max_abs_diff(&after, &want).unwrap() < 1e-5);
        assert!(max_abs_diff(&before, &after).unwrap() > 1e-2);
    }

    #[test]
    fn gradients_match_naive_finite_differences() {
        // d(sum(y * g))/dw for a linear op equals the conv of x with g; checked by comparing
        // the autograd gradient with a finite-difference estimate on a few weights.
        let cfg = Conv3dConfig::causal(3, 1);
        let x = Var::from_tensor(&rand(&[1, 2, 4, 5, 5], 11)).unwrap();
        let w = Var::from_tensor(&rand(&[3, 2, 3, 3, 3], 12)).unwrap();
        let b = Var::from_tensor(&rand(&[3], 13)).unwrap();
        let g = rand(&[1, 3, 4, 5, 5], 14);
        let conv =
            CausalConv3d::new(w.as_tensor().clone(), Some(b.as_tensor().clone()), cfg).unwrap();
        let loss = (conv.forward(x.as_tensor()).unwrap() * &g)
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let gw = grads.get(w.as_tensor()).expect("weight grad");
        let gx = grads.get(x.as_tensor()).expect("input grad");
        let gb = grads.get(b.as_tensor()).expect("bias grad");
        // The loss is linear in w, so a unit perturbation gives the exact gradient entry.
        let wv = w
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let gwv = gw.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let base = (naive_conv3d(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()), cfg).unwrap()
            * &g)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        for i in [0usize, 7, 31, 53, 100, 161] {
            let mut v = wv.clone();
            v[i] += 1.0;
            let w2 = Tensor::from_vec(v, w.dims(), &Device::Cpu).unwrap();
            let l2 = (naive_conv3d(x.as_tensor(), &w2, Some(b.as_tensor()), cfg).unwrap() * &g)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!((l2 - base - gwv[i]).abs() < 1e-3, "weight grad {i}");
        }
        let gsum = g.sum((0, 2, 3, 4)).unwrap();
        assert!(max_abs_diff(gb, &gsum).unwrap() < 1e-4);
        assert_eq!(gx.dims(), x.dims());
        // Causality of the input gradient: the last frame's gradient only comes from the last
        // output frame's tap 2 (the newest), so gradients w.r.t. frame 3 must ignore g[..3].
        let g_late = Tensor::cat(
            &[
                Tensor::zeros((1, 3, 3, 5, 5), DType::F32, &Device::Cpu).unwrap(),
                g.narrow(2, 3, 1).unwrap(),
            ],
            2,
        )
        .unwrap();
        let loss2 = (conv.forward(x.as_tensor()).unwrap() * &g_late)
            .unwrap()
            .sum_all()
            .unwrap();
        let gx2 = loss2.backward().unwrap();
        let gx2 = gx2.get(x.as_tensor()).unwrap();
        let d = max_abs_diff(&gx.narrow(2, 3, 1).unwrap(), &gx2.narrow(2, 3, 1).unwrap()).unwrap();
        assert!(d < 1e-5);
    }

    #[test]
    fn im2col_gradients_equal_conv2d_gradients() {
        let cfg = Conv3dConfig {
            time_pad: 2,
            spatial_pad: 1,
            time_stride: 2,
            spatial_stride: 2,
        };
        for cfg in [Conv3dConfig::causal(3, 1), cfg] {
            // Even sizes: candle's own conv2d backward fails on odd sizes with stride 2 (its
            // conv_transpose2d gives one column too few), which the im2col path does not.
            let x = Var::from_tensor(&rand(&[2, 3, 5, 6, 8], 31)).unwrap();
            let w = rand(&[4, 3, 3, 3, 3], 32);
            let b = rand(&[4], 33);
            let conv = CausalConv3d::new(w.clone(), Some(b.clone()), cfg).unwrap();
            let y = conv.forward(x.as_tensor()).unwrap();
            let g = rand(y.dims(), 34);
            let grads = |y: Tensor| {
                let gr = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
                gr.get(x.as_tensor()).unwrap().clone()
            };
            let want = grads(y);
            let got = grads(conv.forward_im2col(x.as_tensor()).unwrap());
            assert!(max_abs_diff(&got, &want).unwrap() < 1e-5, "{cfg:?}");
        }
    }

    /// Forward+backward of the conv2d and im2col paths:
    /// `cargo test --profile ci -p zoetrope-nn conv3d_train_speed -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn conv3d_train_speed() {
        for (c, t, hw) in [
            (32usize, 17usize, 32usize),
            (48, 9, 16),
            (64, 5, 8),
            (12, 17, 32),
        ] {
            let cfg = Conv3dConfig::causal(3, 1);
            let w = Var::from_tensor(&rand(&[c, c, 3, 3, 3], 1)).unwrap();
            let b = Var::from_tensor(&rand(&[c], 2)).unwrap();
            let conv =
                CausalConv3d::new(w.as_tensor().clone(), Some(b.as_tensor().clone()), cfg).unwrap();
            let x = Var::from_tensor(&rand(&[2, c, t, hw, hw], 3)).unwrap();
            let run = |im2col: bool| {
                let t0 = std::time::Instant::now();
                let y = if im2col {
                    conv.forward_im2col(x.as_tensor()).unwrap()
                } else {
                    // The folded conv2d path, as inference uses it.
                    let plain = CausalConv3d::new(
                        w.as_tensor().detach(),
                        Some(b.as_tensor().detach()),
                        cfg,
                    )
                    .unwrap();
                    plain.forward(x.as_tensor()).unwrap()
                };
                let f = t0.elapsed().as_secs_f64();
                let _ = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
                (f * 1e3, t0.elapsed().as_secs_f64() * 1e3)
            };
            let mut a = vec![];
            let mut bb = vec![];
            for _ in 0..3 {
                a.push(run(false));
                bb.push(run(true));
            }
            a.sort_by(|p, q| p.1.partial_cmp(&q.1).unwrap());
            bb.sort_by(|p, q| p.1.partial_cmp(&q.1).unwrap());
            println!(
                "C={c} T={t} {hw}x{hw} batch 2: conv2d fwd {:.1} ms fwd+bwd {:.1} ms; im2col fwd {:.1} ms fwd+bwd {:.1} ms",
                a[1].0, a[1].1, bb[1].0, bb[1].1
            );
        }
    }

    /// `cargo test --profile ci -p zoetrope-nn conv3d_speed -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn conv3d_speed() {
        for (c, t, hw) in [
            (96usize, 5usize, 64usize),
            (192, 5, 32),
            (384, 3, 16),
            (32, 9, 64),
        ] {
            let cfg = Conv3dConfig::causal(3, 1);
            let conv =
                CausalConv3d::new(rand(&[c, c, 3, 3, 3], 1), Some(rand(&[c], 2)), cfg).unwrap();
            let x = rand(&[1, c, t, hw, hw], 3);
            let _ = conv.forward(&x).unwrap();
            let n = 3;
            let t0 = std::time::Instant::now();
            for _ in 0..n {
                let _ = conv.forward(&x).unwrap();
            }
            let folded = t0.elapsed().as_secs_f64() / n as f64;
            let _ = conv.forward_sum_of_taps(&x).unwrap();
            let t0 = std::time::Instant::now();
            for _ in 0..n {
                let _ = conv.forward_sum_of_taps(&x).unwrap();
            }
            let summed = t0.elapsed().as_secs_f64() / n as f64;
            let _ = conv.forward_stacked_outputs(&x).unwrap();
            let t0 = std::time::Instant::now();
            for _ in 0..n {
                let _ = conv.forward_stacked_outputs(&x).unwrap();
            }
            let stacked = t0.elapsed().as_secs_f64() / n as f64;
            println!(
                "C={c} T={t} {hw}x{hw}: folded taps {:.1} ms, sum of taps {:.1} ms, stacked outputs {:.1} ms",
                folded * 1e3,
                summed * 1e3,
                stacked * 1e3
            );
        }
    }
}
