//! 3D convolution (valid in time, zero-padded in space) as one implicit GEMM per output frame:
//! `out[co, (y, x)] = bias[co] + Σ_{ci,dt,dy,dx} W[co, (ci,dt,dy,dx)] · in[ci, t·st+dt, y·s+dy, x·s+dx]`.
//!
//! The weight `[Cout, Cin·kt·kh·kw]` is A as stored. B, the im2col matrix, is never built: the
//! GEMM packs its panels straight from the input. With spatial stride 1 the input is first
//! zero-padded in space, and the output is computed on the padded width (`W + 2·pad` columns per
//! row, the extra ones dropped at the end): then every row of B — one `(ci, dt, dy, dx)` tap — is
//! a contiguous run of the padded input, and packing is a copy of runs. Other strides gather
//! element by element.

use rayon::prelude::*;

use crate::buf::{with_scratch, AlignedBuf};
use crate::gemm::{self, Beta, Mat, PackB, NR};

/// Sizes of one convolution. `t` is the input length *after* any causal padding (the
/// convolution is valid in time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv3d {
    pub batch: usize,
    pub cin: usize,
    pub t: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub kernel: [usize; 3],
    pub time_stride: usize,
    pub stride: usize,
    pub pad: usize,
}

impl Conv3d {
    /// `(T', H', W')`, or `None` when the kernel does not fit.
    pub fn out_dims(&self) -> Option<(usize, usize, usize)> {
        let [kt, kh, kw] = self.kernel;
        let (hp, wp) = (self.h + 2 * self.pad, self.w + 2 * self.pad);
        if self.t < kt || hp < kh || wp < kw || self.time_stride == 0 || self.stride == 0 {
            return None;
        }
        Some((
            (self.t - kt) / self.time_stride + 1,
            (hp - kh) / self.stride + 1,
            (wp - kw) / self.stride + 1,
        ))
    }

    fn k(&self) -> usize {
        self.cin * self.kernel.iter().product::<usize>()
    }
}

/// Consecutive stretches of input frames: `data` is `[B, Cin, frames, H, W]`, or `None` for
/// zero frames. A causal conv's input is `[zeros | cached frames | chunk]` without ever being
/// concatenated.
#[derive(Clone, Copy, Debug)]
pub struct Part<'a> {
    pub data: Option<&'a [f32]>,
    pub frames: usize,
}

/// Runs the convolution: `x [B, Cin, T, H, W]`, `weight [Cout, Cin, kt, kh, kw]` (both
/// contiguous), `out [B, Cout, T', H', W']`.
pub fn conv3d(x: &[f32], weight: &[f32], bias: Option<&[f32]>, s: Conv3d, out: &mut [f32]) {
    let parts = [Part {
        data: Some(x),
        frames: s.t,
    }];
    conv3d_parts(&parts, weight, bias, s, out)
}

/// [`conv3d`] over the frames of `parts` in order (their frame counts add up to `s.t`).
pub fn conv3d_parts(
    parts: &[Part],
    weight: &[f32],
    bias: Option<&[f32]>,
    s: Conv3d,
    out: &mut [f32],
) {
    let (to, ho, wo) = s
        .out_dims()
        .unwrap_or_else(|| panic!("conv3d: kernel {:?} does not fit input {s:?}", s.kernel));
    let [kt, kh, kw] = s.kernel;
    let k = s.k();
    assert_eq!(
        parts.iter().map(|p| p.frames).sum::<usize>(),
        s.t,
        "conv3d: parts' frames"
    );
    for p in parts {
        if let Some(d) = p.data {
            assert_eq!(
                d.len(),
                s.batch * s.cin * p.frames * s.h * s.w,
                "conv3d: input part size"
            );
        }
    }
    assert_eq!(weight.len(), s.cout * k, "conv3d: weight size");
    assert_eq!(
        out.len(),
        s.batch * s.cout * to * ho * wo,
        "conv3d: output size"
    );
    if let Some(b) = bias {
        assert_eq!(b.len(), s.cout, "conv3d: bias size");
    }
    let plane_out = ho * wo;
    let a = Mat::rows(weight, k);
    // Frame `tt` of channel `ci` of batch item `b`: its source plane, or None for zeros.
    let source = |b: usize, ci: usize, mut tt: usize| -> Option<&[f32]> {
        for p in parts {
            if tt < p.frames {
                let hw = s.h * s.w;
                return p.data.map(|d| {
                    &d[((b * s.cin + ci) * p.frames + tt) * hw
                        ..((b * s.cin + ci) * p.frames + tt + 1) * hw]
                });
            }
            tt -= p.frames;
        }
        unreachable!("frame index checked against s.t")
    };
    if s.stride != 1 {
        // Gather path: one contiguous copy of the input, then element-wise packing.
        let hw = s.h * s.w;
        let mut x = vec![0f32; s.batch * s.cin * s.t * hw];
        for (idx, plane) in x.chunks_mut(hw).enumerate() {
            let (bc, tt) = (idx / s.t, idx % s.t);
            if let Some(src) = source(bc / s.cin, bc % s.cin, tt) {
                plane.copy_from_slice(src);
            }
        }
        return gather_conv(&x, a, bias, s, out, (to, ho, wo));
    }
    let (hp, wp) = (s.h + 2 * s.pad, s.w + 2 * s.pad);
    let grid = ho * wp;
    with_scratch(|[xbuf, cbuf]: &mut [AlignedBuf; 2]| {
        // Padded input plus `kw` zeros so the last run of the last tap stays in bounds.
        let xlen = s.cin * s.t * hp * wp;
        let xpad = xbuf.slice_mut::<f32>(xlen + kw);
        xpad[xlen..].fill(0.0);
        let cbuf = cbuf.slice_mut::<f32>(s.cout * grid);
        for b in 0..s.batch {
            xpad[..xlen]
                .par_chunks_mut(hp * wp)
                .enumerate()
                .for_each(|(idx, dst)| {
                    let (ci, tt) = (idx / s.t, idx % s.t);
                    match source(b, ci, tt) {
                        None => dst.fill(0.0),
                        Some(src) => {
                            dst[..s.pad * wp].fill(0.0);
                            dst[(s.pad + s.h) * wp..].fill(0.0);
                            for y in 0..s.h {
                                let row = &mut dst[(y + s.pad) * wp..(y + s.pad + 1) * wp];
                                row[..s.pad].fill(0.0);
                                row[s.pad..s.pad + s.w]
                                    .copy_from_slice(&src[y * s.w..(y + 1) * s.w]);
                                row[s.pad + s.w..].fill(0.0);
                            }
                        }
                    }
                });
            let xpad: &[f32] = xpad;
            for t in 0..to {
                fill_bias(cbuf, grid, bias);
                let src = Runs {
                    x: xpad,
                    frame0: t * s.time_stride,
                    t: s.t,
                    plane: hp * wp,
                    wp,
                    taps: [kt, kh, kw],
                };
                gemm::sgemm_with(s.cout, grid, k, a, &src, cbuf, grid, Beta::Accumulate, None);
                // Crop the padded-width rows into the output frame.
                let ob = &mut out[b * s.cout * to * plane_out..(b + 1) * s.cout * to * plane_out];
                ob.par_chunks_mut(to * plane_out)
                    .zip(cbuf.par_chunks(grid))
                    .for_each(|(oc, cc)| {
                        let dst = &mut oc[t * plane_out..(t + 1) * plane_out];
                        for y in 0..ho {
                            dst[y * wo..(y + 1) * wo].copy_from_slice(&cc[y * wp..y * wp + wo]);
                        }
                    });
            }
        }
    });
}

fn gather_conv(
    x: &[f32],
    a: Mat,
    bias: Option<&[f32]>,
    s: Conv3d,
    out: &mut [f32],
    (to, ho, wo): (usize, usize, usize),
) {
    let k = s.k();
    let plane_out = ho * wo;
    let frame_in = s.cin * s.t * s.h * s.w;
    let mut cbuf = vec![0f32; s.cout * plane_out];
    for b in 0..s.batch {
        let xb = &x[b * frame_in..(b + 1) * frame_in];
        for t in 0..to {
            fill_bias(&mut cbuf, plane_out, bias);
            let src = Gather {
                x: xb,
                frame0: t * s.time_stride,
                s,
                wo,
            };
            gemm::sgemm_with(
                s.cout,
                plane_out,
                k,
                a,
                &src,
                &mut cbuf,
                plane_out,
                Beta::Accumulate,
                None,
            );
            let ob = &mut out[b * s.cout * to * plane_out..(b + 1) * s.cout * to * plane_out];
            for (co, cc) in cbuf.chunks(plane_out).enumerate() {
                ob[(co * to + t) * plane_out..(co * to + t + 1) * plane_out].copy_from_slice(cc);
            }
        }
    }
}

fn fill_bias(c: &mut [f32], row: usize, bias: Option<&[f32]>) {
    match bias {
        Some(b) => c.chunks_mut(row).zip(b).for_each(|(r, &v)| r.fill(v)),
        None => c.fill(0.0),
    }
}

/// im2col rows as contiguous runs of the spatially padded input (stride 1).
struct Runs<'a> {
    x: &'a [f32],
    frame0: usize,
    t: usize,
    plane: usize,
    wp: usize,
    taps: [usize; 3],
}

impl PackB for Runs<'_> {
    fn check(&self, _k: usize, _n: usize) {}

    fn pack(&self, p0: usize, kc: usize, j: usize, cols: usize, panel: &mut [f32]) {
        let [kt, kh, kw] = self.taps;
        for p in 0..kc {
            let kk = p0 + p;
            let (ci, r) = (kk / (kt * kh * kw), kk % (kt * kh * kw));
            let (dt, r) = (r / (kh * kw), r % (kh * kw));
            let (dy, dx) = (r / kw, r % kw);
            let start = (ci * self.t + self.frame0 + dt) * self.plane + dy * self.wp + dx + j;
            let dst = &mut panel[p * NR..(p + 1) * NR];
            dst[..cols].copy_from_slice(&self.x[start..start + cols]);
            dst[cols..].fill(0.0);
        }
    }
}

/// im2col rows gathered element by element (any stride), zero outside the input.
struct Gather<'a> {
    x: &'a [f32],
    frame0: usize,
    s: Conv3d,
    wo: usize,
}

impl PackB for Gather<'_> {
    fn check(&self, _k: usize, _n: usize) {}

    fn pack(&self, p0: usize, kc: usize, j: usize, cols: usize, panel: &mut [f32]) {
        let [kt, kh, kw] = self.s.kernel;
        let (h, w, st, pad) = (
            self.s.h as isize,
            self.s.w as isize,
            self.s.stride,
            self.s.pad,
        );
        for p in 0..kc {
            let kk = p0 + p;
            let (ci, r) = (kk / (kt * kh * kw), kk % (kt * kh * kw));
            let (dt, r) = (r / (kh * kw), r % (kh * kw));
            let (dy, dx) = (r / kw, r % kw);
            let base = (ci * self.s.t + self.frame0 + dt) * self.s.h * self.s.w;
            let dst = &mut panel[p * NR..(p + 1) * NR];
            for (c, o) in dst.iter_mut().enumerate() {
                *o = if c < cols {
                    let jj = j + c;
                    let yi = (jj / self.wo * st + dy) as isize - pad as isize;
                    let xi = (jj % self.wo * st + dx) as isize - pad as isize;
                    if (0..h).contains(&yi) && (0..w).contains(&xi) {
                        self.x[base + (yi * w + xi) as usize]
                    } else {
                        0.0
                    }
                } else {
                    0.0
                };
            }
        }
    }
}

/// The plain definition, in f64 (for tests).
pub fn reference(x: &[f32], weight: &[f32], bias: Option<&[f32]>, s: Conv3d, out: &mut [f32]) {
    let (to, ho, wo) = s.out_dims().expect("kernel fits");
    let [kt, kh, kw] = s.kernel;
    for b in 0..s.batch {
        for co in 0..s.cout {
            for t in 0..to {
                for y in 0..ho {
                    for xo in 0..wo {
                        let mut acc = bias.map_or(0.0, |b| b[co] as f64);
                        for ci in 0..s.cin {
                            for dt in 0..kt {
                                for dy in 0..kh {
                                    for dx in 0..kw {
                                        let yi = (y * s.stride + dy) as isize - s.pad as isize;
                                        let xi = (xo * s.stride + dx) as isize - s.pad as isize;
                                        if yi < 0
                                            || xi < 0
                                            || yi >= s.h as isize
                                            || xi >= s.w as isize
                                        {
                                            continue;
                                        }
                                        let ti = t * s.time_stride + dt;
                                        let xv = x[(((b * s.cin + ci) * s.t + ti) * s.h
                                            + yi as usize)
                                            * s.w
                                            + xi as usize];
                                        let wv = weight
                                            [(((co * s.cin + ci) * kt + dt) * kh + dy) * kw + dx];
                                        acc += xv as f64 * wv as f64;
                                    }
                                }
                            }
                        }
                        out[(((b * s.cout + co) * to + t) * ho + y) * wo + xo] = acc as f32;
                    }
                }
            }
        }
    }
}
