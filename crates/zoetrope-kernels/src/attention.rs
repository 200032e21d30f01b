//! Scaled dot-product attention without a mask, flash-style: `softmax(q·kᵀ·scale)·v` over blocks
//! of keys with a running (online) softmax, so no score matrix larger than one `BQ × BK` block
//! ever exists, whatever the sequence lengths.
//!
//! For every (batch, head) the keys (transposed) and values are packed once into the GEMM's
//! panels; then blocks of `BQ` query rows run in parallel, each walking the keys in blocks of
//! `BK`: `S = Q·Kᵀ` (GEMM), per row `m' = max(m, max S)`, `P = exp(S·scale − m')`,
//! `l = l·e^(m−m') + ΣP`, `O = O·e^(m−m') + P·V` (GEMM), and finally `O / l`. This is the
//! algorithm of FlashAttention (Dao et al. 2022), in f32 throughout.
//!
//! Tensors are read through strides, so the `[B, L, H·d]` layout that a linear layer writes is
//! used as it is (no transposes to `[B, H, L, d]` and back).

use rayon::prelude::*;

use crate::buf::{with_scratch, AlignedBuf};
use crate::gemm::{self, Beta, Mat, PackedF32};
use crate::rows;

/// Query rows per task.
const BQ: usize = 64;
/// Keys per block (a multiple of the GEMM's panel width).
const BK: usize = 256;

/// A strided `[batch, tokens, heads, head_dim]` view: element `(b, i, h, e)` is
/// `data[b·batch + i·token + h·head + e]`.
#[derive(Clone, Copy, Debug)]
pub struct Heads<'a> {
    pub data: &'a [f32],
    pub batch: usize,
    pub token: usize,
    pub head: usize,
}

impl<'a> Heads<'a> {
    /// The `[B, L, H·d]` layout (tokens of width `heads·head_dim`, heads side by side).
    pub fn tokens_major(data: &'a [f32], tokens: usize, heads: usize, head_dim: usize) -> Self {
        Self {
            data,
            batch: tokens * heads * head_dim,
            token: heads * head_dim,
            head: head_dim,
        }
    }

    fn check(&self, what: &str, b: usize, l: usize, h: usize, d: usize) {
        if b * l * h * d == 0 {
            return;
        }
        let last = (b - 1) * self.batch + (l - 1) * self.token + (h - 1) * self.head + d - 1;
        assert!(
            last < self.data.len(),
            "attention: {what} [{b}, {l}, {h}, {d}] needs {} elements, has {}",
            last + 1,
            self.data.len()
        );
    }
}

/// Sizes of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub batch: usize,
    pub heads: usize,
    pub q_len: usize,
    pub kv_len: usize,
    pub head_dim: usize,
}

#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: tasks write disjoint query rows of the output.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    fn at(&self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// `out[b, i, h, :] = Σ_j softmax_j(scale · q[b,i,h,:]·k[b,j,h,:]) · v[b,j,h,:]`, written in the
/// `[B, Lq, H·d]` layout (row stride `heads·head_dim`).
pub fn attention(q: Heads, k: Heads, v: Heads, out: &mut [f32], s: Shape, scale: f32) {
    let Shape {
        batch,
        heads,
        q_len,
        kv_len,
        head_dim: d,
    } = s;
    q.check("q", batch, q_len, heads, d);
    k.check("k", batch, kv_len, heads, d);
    v.check("v", batch, kv_len, heads, d);
    assert!(
        scale > 0.0,
        "attention: scale must be positive, got {scale}"
    );
    let width = heads * d;
    assert!(
        out.len() >= batch * q_len * width,
        "attention: output holds {} of {} elements",
        out.len(),
        batch * q_len * width
    );
    if batch * q_len * heads * d == 0 {
        return;
    }
    if kv_len == 0 {
        out[..batch * q_len * width].fill(0.0);
        return;
    }
    let optr = SharedMut(out.as_mut_ptr());
    for b in 0..batch {
        for h in 0..heads {
            // Kᵀ as B of `Q·Kᵀ` (d × kv_len) and V as B of `P·V` (kv_len × d), packed once.
            let kb = &k.data[b * k.batch + h * k.head..];
            let vb = &v.data[b * v.batch + h * v.head..];
            let kt = PackedF32::pack(Mat::transposed(kb, k.token), d, kv_len);
            let vp = PackedF32::pack(Mat::rows(vb, v.token), kv_len, d);
            let qb = &q.data[b * q.batch + h * q.head..];
            let blocks = q_len.div_ceil(BQ);
            let task = |blk: usize| {
                let i0 = blk * BQ;
                let rows = BQ.min(q_len - i0);
                let qm = Mat::rows(&qb[i0 * q.token..], q.token);
                with_scratch(|[sbuf, obuf, stats]: &mut [AlignedBuf; 3]| {
                    let scores = sbuf.slice_mut::<f32>(rows * BK);
                    let acc = obuf.slice_mut::<f32>(rows * d);
                    let st = stats.slice_mut::<f32>(2 * rows);
                    let (mx, sum) = st.split_at_mut(rows);
                    mx.fill(f32::NEG_INFINITY);
                    sum.fill(0.0);
                    acc.fill(0.0);
                    let mut j0 = 0;
                    while j0 < kv_len {
                        let bk = BK.min(kv_len - j0);
                        gemm::gemm_packed_serial(
                            rows,
                            qm,
                            &kt,
                            0..d,
                            j0..j0 + bk,
                            scores,
                            BK,
                            Beta::Overwrite,
                        );
                        for r in 0..rows {
                            let row = &mut scores[r * BK..r * BK + bk];
                            let (m_new, total) = rows::exp_shifted(row, scale, mx[r]);
                            let alpha = rows::exp(mx[r] - m_new);
                            sum[r] = sum[r] * alpha + total;
                            mx[r] = m_new;
                            if alpha != 1.0 {
                                rows::scale(&mut acc[r * d..(r + 1) * d], alpha);
                            }
                        }
                        gemm::gemm_packed_serial(
                            rows,
                            Mat::rows(scores, BK),
                            &vp,
                            j0..j0 + bk,
                            0..d,
                            acc,
                            d,
                            Beta::Accumulate,
                        );
                        j0 += bk;
                    }
                    for r in 0..rows {
                        let inv = 1.0 / sum[r];
                        let src = &acc[r * d..(r + 1) * d];
                        // SAFETY: row (b, i0 + r), head h of the output: inside `out` (checked
                        // above) and written by this task only.
                        let dst = unsafe {
                            std::slice::from_raw_parts_mut(
                                optr.at((b * q_len + i0 + r) * width + h * d),
                                d,
                            )
                        };
                        for (o, &x) in dst.iter_mut().zip(src) {
                            *o = x * inv;
                        }
                    }
                })
            };
            if blocks > 1 {
                (0..blocks).into_par_iter().for_each(task);
            } else {
                task(0);
            }
        }
    }
}

/// The plain definition in f64 (for tests): full scores, softmax, weighted sum.
pub fn reference(q: Heads, k: Heads, v: Heads, out: &mut [f32], s: Shape, scale: f32) {
    let d = s.head_dim;
    let width = s.heads * d;
    for b in 0..s.batch {
        for h in 0..s.heads {
            for i in 0..s.q_len {
                let qi = b * q.batch + i * q.token + h * q.head;
                let scores: Vec<f64> = (0..s.kv_len)
                    .map(|j| {
                        let kj = b * k.batch + j * k.token + h * k.head;
                        (0..d)
                            .map(|e| q.data[qi + e] as f64 * k.data[kj + e] as f64)
                            .sum::<f64>()
                            * scale as f64
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let p: Vec<f64> = scores.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = p.iter().sum();
                for e in 0..d {
                    let mut acc = 0f64;
                    for (j, pj) in p.iter().enumerate() {
                        acc += pj * v.data[b * v.batch + j * v.token + h * v.head + e] as f64;
                    }
                    out[(b * s.q_len + i) * width + h * d + e] = (acc / z) as f32;
                }
            }
        }
    }
}

/// [`attention`] for bf16 `q`, `k`, `v` on AMX tiles (f32 output, `[B, Lq, H·d]`): per (batch,
/// head) the keys (transposed) and values are packed once into tiles; each block of 64 query
/// rows computes its scores against all keys (`64 × Lk` f32, bounded by the block, not by
/// `Lq·Lk`), a two-pass softmax in f32, the probabilities rounded to bf16 (as fused bf16
/// attention kernels do) and `P·V` accumulated in f32. Without AMX the inputs are widened and
/// [`attention`] runs.
pub fn attention_bf16(q: Heads16, k: Heads16, v: Heads16, out: &mut [f32], s: Shape, scale: f32) {
    use crate::gemm_bf16::{self, Activation, PackedB};
    use half::bf16;
    let Shape {
        batch,
        heads,
        q_len,
        kv_len,
        head_dim: d,
    } = s;
    let width = heads * d;
    assert!(
        scale > 0.0,
        "attention: scale must be positive, got {scale}"
    );
    assert!(
        out.len() >= batch * q_len * width,
        "attention: output too short"
    );
    for (name, t, l) in [("q", &q, q_len), ("k", &k, kv_len), ("v", &v, kv_len)] {
        if batch * l * heads * d > 0 {
            let last = (batch - 1) * t.batch + (l - 1) * t.token + (heads - 1) * t.head + d - 1;
            assert!(last < t.data.len(), "attention: {name} too short");
        }
    }
    if batch * q_len * heads * d == 0 {
        return;
    }
    if !gemm_bf16::amx_available() || kv_len == 0 {
        let widen = |t: &Heads16| -> Vec<f32> { t.data.iter().map(|x| x.to_f32()).collect() };
        let (qf, kf, vf) = (widen(&q), widen(&k), widen(&v));
        let qh = Heads {
            data: &qf,
            batch: q.batch,
            token: q.token,
            head: q.head,
        };
        let kh = Heads {
            data: &kf,
            batch: k.batch,
            token: k.token,
            head: k.head,
        };
        let vh = Heads {
            data: &vf,
            batch: v.batch,
            token: v.token,
            head: v.head,
        };
        return attention(qh, kh, vh, out, s, scale);
    }
    let optr = SharedMut(out.as_mut_ptr());
    for b in 0..batch {
        for h in 0..heads {
            let kb = &k.data[b * k.batch + h * k.head..];
            let vb = &v.data[b * v.batch + h * v.head..];
            let kt = PackedB::pack(d, kv_len, kb, 1, k.token);
            let vp = PackedB::pack(kv_len, d, vb, v.token, 1);
            let qb = &q.data[b * q.batch + h * q.head..];
            let blocks = q_len.div_ceil(BQ);
            let task = |blk: usize| {
                let i0 = blk * BQ;
                let rows = BQ.min(q_len - i0);
                with_scratch(|[sbuf, pbuf, obuf]: &mut [AlignedBuf; 3]| {
                    let scores = sbuf.slice_mut::<f32>(rows * kv_len);
                    gemm_bf16::gemm_serial(
                        rows,
                        &qb[i0 * q.token..],
                        q.token,
                        &kt,
                        scores,
                        kv_len,
                        None,
                        Activation::None,
                    );
                    let probs = pbuf.slice_mut::<u16>(rows * kv_len);
                    let mut sums = [0f32; BQ];
                    for r in 0..rows {
                        let row = &mut scores[r * kv_len..(r + 1) * kv_len];
                        let (_, total) = rows::exp_shifted(row, scale, f32::NEG_INFINITY);
                        sums[r] = total;
                        for (p, &x) in probs[r * kv_len..(r + 1) * kv_len]
                            .iter_mut()
                            .zip(row.iter())
                        {
                            *p = bf16::from_f32(x).to_bits();
                        }
                    }
                    // SAFETY: u16 and bf16 have the same layout.
                    let probs: &[bf16] = unsafe {
                        std::slice::from_raw_parts(probs.as_ptr() as *const bf16, probs.len())
                    };
                    let acc = obuf.slice_mut::<f32>(rows * d);
                    gemm_bf16::gemm_serial(
                        rows,
                        probs,
                        kv_len,
                        &vp,
                        acc,
                        d,
                        None,
                        Activation::None,
                    );
                    for r in 0..rows {
                        let inv = 1.0 / sums[r];
                        // SAFETY: row (b, i0 + r), head h: inside `out` and written by this task
                        // only.
                        let dst = unsafe {
                            std::slice::from_raw_parts_mut(
                                optr.at((b * q_len + i0 + r) * width + h * d),
                                d,
                            )
                        };
                        for (o, &x) in dst.iter_mut().zip(&acc[r * d..(r + 1) * d]) {
                            *o = x * inv;
                        }
                    }
                })
            };
            if blocks > 1 {
                (0..blocks).into_par_iter().for_each(task);
            } else {
                task(0);
            }
        }
    }
}

/// [`Heads`] over bf16 data.
#[derive(Clone, Copy, Debug)]
pub struct Heads16<'a> {
    pub data: &'a [half::bf16],
    pub batch: usize,
    pub token: usize,
    pub head: usize,
}

impl<'a> Heads16<'a> {
    /// The `[B, L, H·d]` layout.
    pub fn tokens_major(
        data: &'a [half::bf16],
        tokens: usize,
        heads: usize,
        head_dim: usize,
    ) -> Self {
        Self {
            data,
            batch: tokens * heads * head_dim,
            token: heads * head_dim,
            head: head_dim,
        }
    }
}
