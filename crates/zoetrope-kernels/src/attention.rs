//! Scaled dot-product attention without a mask, flash-style: `softmax(q·kᵀ·scale)·v` over blocks
//! of keys with a running (online) softmax, so no score matrix larger than one block ever
//! exists, whatever the sequence lengths. This is the algorithm of FlashAttention (Dao et al.
//! 2022).
//!
//! f32 ([`attention`]) works on the transposed problem so that nothing is packed inside the key
//! loop: per (batch, head) K is packed once as the GEMM's A panels (14 keys each) and Vᵀ as A
//! panels of 14 head dimensions; per task of 64 queries Qᵀ is packed once as two B panels. For
//! every block of 252 keys the micro-kernel writes `Sᵀ = K·Qᵀ` straight into B-panel layout
//! (`[key][32 queries]`), the online softmax runs down its columns (16 queries per vector),
//! and `Oᵀ += Vᵀ·P` takes that block as its B operand unchanged. bf16 ([`attention_bf16`]) does
//! the same on AMX tiles.
//!
//! Tensors are read through strides, so the `[B, L, H·d]` layout that a linear layer writes is
//! used as it is (no transposes to `[B, H, L, d]` and back). A few heads are packed at a time, in
//! parallel, and their tasks share one parallel loop.

use rayon::prelude::*;

use crate::buf::{with_scratch, AlignedBuf};
use crate::gemm::{self, Mat, MR, NR};
use crate::rows;

/// Query rows per task (two of the GEMM's column panels).
const BQ: usize = 2 * NR;
/// Keys per block of the f32 kernel (18 of the GEMM's row panels).
const BKF: usize = 18 * MR;

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
    let avx512 = crate::cpu::features().avx512f;
    let dpanels = d.div_ceil(MR);
    let kblocks = kv_len.div_ceil(BKF);
    let qblocks = q_len.div_ceil(BQ);
    let threads = rayon::current_num_threads().max(1);
    let total = batch * heads;
    let group = (4 * threads).div_ceil(qblocks).max(threads).min(total);
    let mut g0 = 0;
    while g0 < total {
        let ids = g0..(g0 + group).min(total);
        // Per head: K as A panels of 14 keys (`[panel][d][14]`), and Vᵀ as A panels of 14 head
        // dimensions, one run of panels per key block.
        let packs: Vec<(AlignedBuf, AlignedBuf)> = ids
            .clone()
            .into_par_iter()
            .map(|bh| {
                let (b, h) = (bh / heads, bh % heads);
                let kb = &k.data[b * k.batch + h * k.head..];
                let vb = &v.data[b * v.batch + h * v.head..];
                let klen = kv_len.div_ceil(MR) * MR * d;
                let mut ka = AlignedBuf::with_len::<f32>(klen);
                gemm::pack_a_panels(Mat::rows(kb, k.token), 0, kv_len, 0, d, ka.slice_mut(klen));
                let vstride = dpanels * MR * BKF;
                let mut va = AlignedBuf::with_len::<f32>(kblocks * vstride);
                let vall = va.slice_mut::<f32>(kblocks * vstride);
                for kbi in 0..kblocks {
                    let (j0, bk) = (kbi * BKF, BKF.min(kv_len - kbi * BKF));
                    let dst = &mut vall[kbi * vstride..kbi * vstride + dpanels * MR * bk];
                    gemm::pack_a_panels(Mat::transposed(vb, v.token), 0, d, j0, bk, dst);
                }
                (ka, va)
            })
            .collect();
        let task = |t: usize| {
            let (gi, blk) = (t / qblocks, t % qblocks);
            let (b, h) = ((g0 + gi) / heads, (g0 + gi) % heads);
            let ka = packs[gi].0.slice::<f32>(kv_len.div_ceil(MR) * MR * d);
            let va = packs[gi].1.slice::<f32>(kblocks * dpanels * MR * BKF);
            let i0 = blk * BQ;
            let rows = BQ.min(q_len - i0);
            let npan = rows.div_ceil(NR);
            let qb = &q.data[b * q.batch + h * q.head + i0 * q.token..];
            with_scratch(|[qbuf, sbuf, obuf]: &mut [AlignedBuf; 3]| {
                // Qᵀ as B panels of 32 queries: `[panel][d][32]`.
                let qt = qbuf.slice_mut::<f32>(npan * d * NR);
                for (jp, panel) in qt.chunks_exact_mut(d * NR).enumerate() {
                    let cols = NR.min(rows - jp * NR);
                    gemm::pack_b_panel(Mat::transposed(qb, q.token), 0, d, jp * NR, cols, panel);
                }
                // Sᵀ = K·Qᵀ of one key block, in B-panel layout `[panel][key][32]`: after the
                // softmax it is P's B operand as it stands.
                let st = sbuf.slice_mut::<f32>(npan * BKF * NR);
                // Oᵀ `[d (padded to panels)][64 queries]`.
                let ot = obuf.slice_mut::<f32>(dpanels * MR * BQ);
                ot.fill(0.0);
                let mut mx = [f32::NEG_INFINITY; BQ];
                let mut sum = [0f32; BQ];
                let mut alpha = [0f32; NR];
                for kbi in 0..kblocks {
                    let (j0, bk) = (kbi * BKF, BKF.min(kv_len - kbi * BKF));
                    for kp in 0..bk.div_ceil(MR) {
                        let a = ka[(j0 / MR + kp) * MR * d..].as_ptr();
                        let mr = MR.min(bk - kp * MR);
                        for jp in 0..npan {
                            // SAFETY: K's panel holds d·MR floats, Qᵀ's d·NR; the Sᵀ block is
                            // rows kp·MR.. of panel jp, inside `st`.
                            unsafe {
                                gemm::micro_panel(
                                    d,
                                    a,
                                    qt[jp * d * NR..].as_ptr(),
                                    st[(jp * BKF + kp * MR) * NR..].as_mut_ptr(),
                                    NR,
                                    mr,
                                    NR,
                                    false,
                                    avx512,
                                )
                            };
                        }
                    }
                    for jp in 0..npan {
                        let panel = &mut st[jp * BKF * NR..(jp * BKF + bk) * NR];
                        let cols = jp * NR..(jp + 1) * NR;
                        rows::softmax_columns(
                            panel,
                            NR,
                            scale,
                            &mut mx[cols.clone()],
                            &mut sum[cols],
                            &mut alpha,
                        );
                        if kbi > 0 {
                            for e in 0..d {
                                let row = &mut ot[e * BQ + jp * NR..e * BQ + (jp + 1) * NR];
                                row.iter_mut().zip(&alpha).for_each(|(o, a)| *o *= a);
                            }
                        }
                    }
                    let vblk = &va[kbi * dpanels * MR * BKF..];
                    for ip in 0..dpanels {
                        let a = vblk[ip * MR * bk..].as_ptr();
                        let mr = MR.min(d - ip * MR);
                        for jp in 0..npan {
                            // SAFETY: Vᵀ's panel holds bk·MR floats, P's bk·NR; the Oᵀ block is
                            // rows ip·MR.. × columns jp·NR.. of `ot`.
                            unsafe {
                                gemm::micro_panel(
                                    bk,
                                    a,
                                    st[jp * BKF * NR..].as_ptr(),
                                    ot[ip * MR * BQ + jp * NR..].as_mut_ptr(),
                                    BQ,
                                    mr,
                                    NR,
                                    true,
                                    avx512,
                                )
                            };
                        }
                    }
                }
                for r in 0..rows {
                    let inv = 1.0 / sum[r];
                    // SAFETY: row (b, i0 + r), head h of the output: inside `out` (checked
                    // above) and written by this task only.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(
                            optr.at((b * q_len + i0 + r) * width + h * d),
                            d,
                        )
                    };
                    for (e, o) in dst.iter_mut().enumerate() {
                        *o = ot[e * BQ + r] * inv;
                    }
                }
            })
        };
        (0..ids.len() * qblocks).into_par_iter().for_each(task);
        g0 = ids.end;
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

/// [`attention`] for bf16 `q`, `k`, `v` on AMX tiles (f32 output, `[B, Lq, H·d]`): the same
/// flash algorithm over blocks of 256 keys, `Q·Kᵀ` and `P·V` on tiles with f32 accumulation, the
/// online softmax in f32 and the probabilities rounded to bf16 before `P·V` (as fused bf16
/// attention kernels do). Without AMX and AVX512-BF16 the inputs are widened and [`attention`]
/// runs.
pub fn attention_bf16(q: Heads16, k: Heads16, v: Heads16, out: &mut [f32], s: Shape, scale: f32) {
    use crate::gemm_bf16;
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
    let fused = gemm_bf16::amx_available() && crate::cpu::features().avx512bf16;
    if !fused || kv_len == 0 || cfg!(not(target_arch = "x86_64")) {
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
    #[cfg(target_arch = "x86_64")]
    attention_amx(q, k, v, out, s, scale);
}

/// Keys per block of the AMX kernel's online softmax (a multiple of 32).
const BK16: usize = 256;
/// Query rows per task of the AMX kernel (two 32-row pairs of tiles).
const BQ16: usize = 64;

/// The AMX body of [`attention_bf16`]. Per task (one head, 64 query rows) Q is packed into tiles
/// once; per block of 256 keys `S = Q·Kᵀ` goes from the accumulator tiles straight into a
/// `64 × 256` f32 buffer, one AVX-512 pass per row does the online-softmax step and writes the
/// probabilities, rounded to bf16, directly in the tile layout of `P`, and `O += P·V` runs with
/// O's tiles loaded from and stored back to a `64 × d` f32 buffer (rescaled in place when a row's
/// maximum grows). K and V are packed for a few heads at a time, in parallel, and the tasks of
/// those heads share one parallel loop.
#[cfg(target_arch = "x86_64")]
fn attention_amx(q: Heads16, k: Heads16, v: Heads16, out: &mut [f32], s: Shape, scale: f32) {
    use crate::gemm_bf16::{amx, PackedB, KSTEP, TILE, TILE_ELEMS};
    let Shape {
        batch,
        heads,
        q_len,
        kv_len,
        head_dim: d,
    } = s;
    let width = heads * d;
    let dchunks = d.div_ceil(KSTEP);
    let dpad = dchunks * KSTEP;
    let bk_chunks = BK16 / KSTEP;
    let qblocks = q_len.div_ceil(BQ16);
    let threads = rayon::current_num_threads().max(1);
    let total = batch * heads;
    let group = (4 * threads).div_ceil(qblocks).max(threads).min(total);
    let optr = SharedMut(out.as_mut_ptr());
    let mut g0 = 0;
    while g0 < total {
        let ids = g0..(g0 + group).min(total);
        let packs: Vec<(PackedB, PackedB)> = ids
            .clone()
            .into_par_iter()
            .map(|bh| {
                let (b, h) = (bh / heads, bh % heads);
                let kb = &k.data[b * k.batch + h * k.head..];
                let vb = &v.data[b * v.batch + h * v.head..];
                (
                    PackedB::pack(d, kv_len, kb, 1, k.token),
                    PackedB::pack(kv_len, d, vb, v.token, 1),
                )
            })
            .collect();
        let task = |t: usize| {
            let (gi, blk) = (t / qblocks, t % qblocks);
            let (b, h) = ((g0 + gi) / heads, (g0 + gi) % heads);
            let (kt, vp) = &packs[gi];
            let (ktiles, vtiles, vchunks) = (kt.tiles(), vp.tiles(), vp.kchunks());
            let i0 = blk * BQ16;
            let rows = BQ16.min(q_len - i0);
            let pairs = rows.div_ceil(2 * TILE);
            let qb = &q.data[b * q.batch + h * q.head..];
            with_scratch(|[qbuf, sbuf, pbuf, obuf]: &mut [AlignedBuf; 4]| {
                // Q in A-tile layout: [16-row panel][d step][16 rows][32].
                let qt = qbuf.slice_mut::<u16>(2 * pairs * dchunks * TILE_ELEMS);
                for (panel, tiles) in qt.chunks_exact_mut(dchunks * TILE_ELEMS).enumerate() {
                    for r in 0..TILE {
                        let i = panel * TILE + r;
                        for c in 0..dchunks {
                            let dst = &mut tiles[c * TILE_ELEMS + r * KSTEP..][..KSTEP];
                            let valid = if i < rows {
                                KSTEP.min(d - c * KSTEP)
                            } else {
                                0
                            };
                            if valid > 0 {
                                let at = (i0 + i) * q.token + c * KSTEP;
                                <half::bf16 as crate::gemm_bf16::ToBf16>::bits_run(
                                    &qb[at..at + valid],
                                    &mut dst[..valid],
                                );
                            }
                            dst[valid..].fill(0);
                        }
                    }
                }
                let sc = sbuf.slice_mut::<f32>(2 * pairs * TILE * BK16);
                let pt = pbuf.slice_mut::<u16>(2 * pairs * bk_chunks * TILE_ELEMS);
                pt.fill(0);
                let o = obuf.slice_mut::<f32>(2 * pairs * TILE * dpad);
                o.fill(0.0);
                let mut mx = [f32::NEG_INFINITY; BQ16];
                let mut sum = [0f32; BQ16];
                // SAFETY: AMX and AVX512-BF16 are available (checked by the caller); every tile
                // pointer stays inside its packed buffer: Q and P hold `2·pairs` panels, K's
                // panels cover the keys padded to 32, V's the columns padded to 32 and its steps
                // the keys padded to 32; S and O hold `2·pairs·16` rows of their widths.
                unsafe {
                    amx::with_tiles(|| {
                        let mut j0 = 0;
                        while j0 < kv_len {
                            let bk = BK16.min(kv_len - j0);
                            let steps = bk.div_ceil(KSTEP);
                            for ip in 0..pairs {
                                for jp in 0..steps {
                                    amx::block_at(
                                        qt.as_ptr().add(2 * ip * dchunks * TILE_ELEMS),
                                        dchunks * TILE_ELEMS,
                                        ktiles
                                            .as_ptr()
                                            .add((j0 / TILE + 2 * jp) * dchunks * TILE_ELEMS),
                                        dchunks * TILE_ELEMS,
                                        dchunks,
                                        sc.as_mut_ptr().add(ip * 2 * TILE * BK16 + jp * KSTEP),
                                        BK16 * 4,
                                        false,
                                    );
                                }
                            }
                            for r in 0..rows {
                                let dst = pt
                                    .as_mut_ptr()
                                    .add((r / TILE) * bk_chunks * TILE_ELEMS + (r % TILE) * KSTEP);
                                let (m_new, part) = softmax_to_tiles(
                                    &sc[r * BK16..r * BK16 + bk],
                                    scale,
                                    mx[r],
                                    dst,
                                    steps,
                                );
                                let alpha = rows::exp(mx[r] - m_new);
                                sum[r] = sum[r] * alpha + part;
                                mx[r] = m_new;
                                if alpha != 1.0 {
                                    rows::scale(&mut o[r * dpad..(r + 1) * dpad], alpha);
                                }
                            }
                            for ip in 0..pairs {
                                for jp in 0..dchunks {
                                    amx::block_at(
                                        pt.as_ptr().add(2 * ip * bk_chunks * TILE_ELEMS),
                                        bk_chunks * TILE_ELEMS,
                                        vtiles
                                            .as_ptr()
                                            .add((2 * jp * vchunks + j0 / KSTEP) * TILE_ELEMS),
                                        vchunks * TILE_ELEMS,
                                        steps,
                                        o.as_mut_ptr().add(ip * 2 * TILE * dpad + jp * KSTEP),
                                        dpad * 4,
                                        true,
                                    );
                                }
                            }
                            j0 += bk;
                        }
                    })
                };
                for r in 0..rows {
                    let inv = 1.0 / sum[r];
                    // SAFETY: row (b, i0 + r), head h: inside `out` and written by this task only.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(
                            optr.at((b * q_len + i0 + r) * width + h * d),
                            d,
                        )
                    };
                    for (y, &x) in dst.iter_mut().zip(&o[r * dpad..r * dpad + d]) {
                        *y = x * inv;
                    }
                }
            })
        };
        (0..ids.len() * qblocks).into_par_iter().for_each(task);
        g0 = ids.end;
    }
}

/// One online-softmax step on a row of raw scores (as [`rows::exp_shifted`]) that writes the
/// probabilities rounded to bf16 into `steps` consecutive A tiles' rows (`dst` the row in the
/// first tile; 32 values per tile, zero past the row's end). Returns `(m, Σ p)`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
unsafe fn softmax_to_tiles(
    row: &[f32],
    scale: f32,
    m_old: f32,
    dst: *mut u16,
    steps: usize,
) -> (f32, f32) {
    use crate::gemm_bf16::TILE_ELEMS;
    use std::arch::x86_64::*;
    let n = row.len();
    let ptr = row.as_ptr();
    let mask = |j: usize| -> __mmask16 {
        let len = n.saturating_sub(j).min(16);
        ((1u32 << len) - 1) as u16
    };
    let mut vmax = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut j = 0;
    while j < n {
        vmax = _mm512_mask_max_ps(
            vmax,
            mask(j),
            vmax,
            _mm512_maskz_loadu_ps(mask(j), ptr.add(j)),
        );
        j += 16;
    }
    let m = m_old.max(_mm512_reduce_max_ps(vmax) * scale);
    let (vs, vm) = (_mm512_set1_ps(scale), _mm512_set1_ps(m));
    let mut vsum = _mm512_setzero_ps();
    for c in 0..steps {
        let mut half = [_mm512_setzero_ps(); 2];
        for (hh, e) in half.iter_mut().enumerate() {
            let j = c * 32 + hh * 16;
            let mk = mask(j);
            if mk != 0 {
                let x = _mm512_maskz_loadu_ps(mk, ptr.add(j));
                *e = _mm512_maskz_mov_ps(mk, crate::rows::exp16(_mm512_fmsub_ps(x, vs, vm)));
                vsum = _mm512_add_ps(vsum, *e);
            }
        }
        let p: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(half[1], half[0]));
        _mm512_storeu_si512(dst.add(c * TILE_ELEMS) as *mut _, p);
    }
    (m, _mm512_reduce_add_ps(vsum))
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
