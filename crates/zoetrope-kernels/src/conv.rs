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
use crate::gemm_bf16::{KSTEP, TILE, TILE_ELEMS};

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
    conv3d_parts_with(parts, weight, None, bias, s, out)
}

/// [`conv3d_parts`], with bf16 products when `w16` (the same weight packed by
/// [`Weight16::pack`]) is given and the CPU has AMX or AVX-512 BF16: inputs and weights rounded
/// to bf16, products accumulated in f32, output f32. Stride-2 convolutions and CPUs with neither
/// take the f32 path.
pub fn conv3d_parts_with(
    parts: &[Part],
    weight: &[f32],
    w16: Option<&Weight16>,
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
    let w16 = w16.filter(|_| bf16_conv_available());
    if let Some(w) = w16 {
        assert!(
            w.cout == s.cout && w.cin == s.cin && w.taps == kt * kh * kw,
            "conv3d: bf16 weight {w:?} does not fit {s:?}"
        );
    }
    // On AMX, C's rows are padded to the tiles' 32 and its row stride to 32 columns.
    let (crows, ldc) = match w16 {
        Some(w) => (w.mpanels * TILE, grid.div_ceil(2 * TILE) * 2 * TILE),
        None => (s.cout, grid),
    };
    // The weight packed once for all frames (the f32 path).
    let apack = w16.is_none().then(|| gemm::PackedA::pack(a, s.cout, k));
    with_scratch(|[xbuf, cbuf, vbuf]: &mut [AlignedBuf; 3]| {
        // Padded input plus `kw` zeros so the last run of the last tap stays in bounds.
        let xlen = s.cin * s.t * hp * wp;
        let xpad = xbuf.slice_mut::<f32>(xlen + kw);
        xpad[xlen..].fill(0.0);
        let cbuf = cbuf.slice_mut::<f32>(crows * ldc);
        // For AMX: each channel pair's row of positions, plus room for the widest tile read.
        let ilen = s.t * hp * wp + ldc - grid + kw + 2 * TILE;
        let pairs = w16.map_or(0, |w| w.cchunks * TILE);
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
            let inter = w16.map(|_| {
                let v = vbuf.slice_mut::<u16>(2 * pairs * ilen);
                interleave_channels(xpad, s.cin, s.t * hp * wp, ilen, pairs, v);
                Interleaved {
                    data: &*v,
                    len: ilen,
                }
            });
            let offsets: Vec<usize> = (0..kt * kh * kw)
                .map(|tap| {
                    let (dt, r) = (tap / (kh * kw), tap % (kh * kw));
                    dt * hp * wp + (r / kw) * wp + r % kw
                })
                .collect();
            for t in 0..to {
                fill_bias(&mut cbuf[..s.cout * ldc], ldc, bias);
                let src = Runs {
                    x: xpad,
                    frame0: t * s.time_stride,
                    t: s.t,
                    plane: hp * wp,
                    wp,
                    taps: [kt, kh, kw],
                };
                match (w16, &inter) {
                    (Some(w), Some(x)) => {
                        let frame = t * s.time_stride * hp * wp;
                        direct(w, x, frame, &offsets, grid, cbuf, ldc)
                    }
                    _ => gemm::sgemm_packed_a(
                        grid,
                        apack.as_ref().expect("packed for the f32 path"),
                        &src,
                        cbuf,
                        ldc,
                        Beta::Accumulate,
                        None,
                    ),
                }
                // Crop the padded-width rows into the output frame.
                let ob = &mut out[b * s.cout * to * plane_out..(b + 1) * s.cout * to * plane_out];
                ob.par_chunks_mut(to * plane_out)
                    .zip(cbuf.par_chunks(ldc))
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

/// Whether [`conv3d_parts_with`] can take bf16 products here: on AMX tiles, or with AVX-512
/// BF16's `vdpbf16ps` (both round with AVX512-BF16).
pub fn bf16_conv_available() -> bool {
    crate::cpu::features().avx512bf16
}

/// A convolution weight `[Cout, Cin, kt, kh, kw]` rounded to bf16 and packed once into AMX A
/// tiles for the direct convolution: 16-row panels (an even number, zero rows past `cout`), each
/// a run of 32-deep tiles over the depth ordered (tap, channel): step `tap·C/32 + c` holds input
/// channels `32c..32c+32` (zero past `cin`) of kernel tap `tap`.
pub struct Weight16 {
    cout: usize,
    cin: usize,
    taps: usize,
    /// 32-channel chunks per tap.
    cchunks: usize,
    mpanels: usize,
    tiles: AlignedBuf,
}

impl std::fmt::Debug for Weight16 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Weight16 {{ cout: {}, cin: {}, taps: {} }}",
            self.cout, self.cin, self.taps
        )
    }
}

impl Weight16 {
    /// Packs `weight [cout, cin, taps]` (taps = kt·kh·kw, the layout of a conv3d weight).
    pub fn pack(weight: &[f32], cout: usize, cin: usize, taps: usize) -> Self {
        assert_eq!(weight.len(), cout * cin * taps, "Weight16: weight size");
        let cchunks = cin.div_ceil(KSTEP);
        let steps = taps * cchunks;
        let mpanels = cout.div_ceil(2 * TILE) * 2;
        let len = mpanels * steps * TILE_ELEMS;
        let mut tiles = AlignedBuf::with_len::<u16>(len);
        let t = tiles.slice_mut::<u16>(len);
        t.par_chunks_mut((steps * TILE_ELEMS).max(1))
            .enumerate()
            .for_each(|(q, panel)| {
                for (st, tile) in panel.chunks_exact_mut(TILE_ELEMS).enumerate() {
                    let (tap, c) = (st / cchunks, st % cchunks);
                    for (r, row) in tile.chunks_exact_mut(KSTEP).enumerate() {
                        let co = q * TILE + r;
                        for (e, v) in row.iter_mut().enumerate() {
                            let ci = c * KSTEP + e;
                            *v = if co < cout && ci < cin {
                                half::bf16::from_f32(weight[(co * cin + ci) * taps + tap]).to_bits()
                            } else {
                                0
                            };
                        }
                    }
                }
            });
        Self {
            cout,
            cin,
            taps,
            cchunks,
            mpanels,
            tiles,
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.mpanels * self.taps * self.cchunks * TILE_ELEMS * 2
    }
}

/// The padded input of one batch item in AMX B-tile order: channel pairs interleaved,
/// `[C/2][positions][2]` bf16, each pair's row `len` positions (frames × padded plane, plus zeros
/// past the end so every tile read stays inside).
struct Interleaved<'a> {
    data: &'a [u16],
    len: usize,
}

/// Builds [`Interleaved`] from the f32 padded input `[cin][positions]` (rows `src_len` long)
/// into `dst`, channels padded with zeros to `2·pairs`.
fn interleave_channels(
    x: &[f32],
    cin: usize,
    src_len: usize,
    len: usize,
    pairs: usize,
    dst: &mut [u16],
) {
    dst.par_chunks_mut(2 * len)
        .enumerate()
        .take(pairs)
        .for_each(|(cp, out)| {
            let row = |ci: usize| (ci < cin).then(|| &x[ci * src_len..(ci + 1) * src_len]);
            let (r0, r1) = (row(2 * cp), row(2 * cp + 1));
            let mut p = 0;
            while p < len {
                let n = 16.min(len - p);
                let end = (p + n).min(src_len);
                let (a, b) = if p < src_len {
                    (r0.map(|r| &r[p..end]), r1.map(|r| &r[p..end]))
                } else {
                    (None, None)
                };
                interleave_pair(a, b, &mut out[2 * p..2 * p + 2 * n]);
                p += n;
            }
        });
}

/// Columns of C per AMX task (two 32-column tile pairs).
const NB16: usize = 64;

/// Per step of the direct convolution (tap-major, then 32-channel chunk), where its B rows start
/// (u16 index, before the column): 16 channel pairs from pair 16·chunk, shifted by the tap. Checks
/// that every read stays inside the interleaved input and every write inside C.
fn step_starts(
    w: &Weight16,
    x: &Interleaved,
    frame: usize,
    offsets: &[usize],
    n: usize,
    c: &[f32],
    ldc: usize,
) -> Vec<usize> {
    assert!(ldc >= n && ldc.is_multiple_of(2 * TILE) && c.len() >= w.mpanels * TILE * ldc);
    assert_eq!(offsets.len(), w.taps, "conv3d: one offset per tap");
    // The farthest row read ends at position frame + max offset + ldc of a pair's row.
    let reach = frame + offsets.iter().max().copied().unwrap_or(0) + ldc;
    assert!(
        reach <= x.len && x.data.len() >= 2 * w.cchunks * TILE * x.len,
        "conv3d: interleaved input too short"
    );
    (0..w.taps * w.cchunks)
        .map(|st| {
            let (tap, cc) = (st / w.cchunks, st % w.cchunks);
            2 * (cc * TILE * x.len + frame + offsets[tap])
        })
        .collect()
}

/// One output frame of the direct convolution on AMX: `C[cout × n] += W ⊛ x` with B tiles read
/// straight from the interleaved input at each tap's offset (no im2col packing at all). `frame`
/// is the first input position of the frame; `offsets[tap]` the tap's shift `dt·plane + dy·wp +
/// dx`. C is f32 with row stride `ldc` (a multiple of 32, ≥ n) and `w.mpanels·16` rows.
fn amx_direct(
    w: &Weight16,
    x: &Interleaved,
    frame: usize,
    offsets: &[usize],
    n: usize,
    c: &mut [f32],
    ldc: usize,
) {
    use crate::gemm_bf16::amx;
    let starts = step_starts(w, x, frame, offsets, n, c, ldc);
    let steps = starts.len();
    let cptr = SharedF32(c.as_mut_ptr());
    let atiles = w.tiles.slice::<u16>(w.mpanels * steps * TILE_ELEMS);
    let blocks = n.div_ceil(NB16);
    (0..blocks).into_par_iter().for_each(|jb| {
        let j0 = jb * NB16;
        let bpairs = NB16.min(n - j0).div_ceil(2 * TILE);
        // SAFETY: AMX is available (checked by the caller). A's tiles lie inside its panels; B's
        // rows (16 channel pairs `x.len` apart, 64 bytes each) inside the interleaved input
        // (checked above); C's tiles inside `c`'s padded rows × columns [j0, j0 + 32·bpairs) ≤
        // ldc, which this task alone writes.
        unsafe {
            amx::with_tiles(|| {
                for ip in 0..w.mpanels / 2 {
                    for jp in 0..bpairs {
                        let j = j0 + jp * 2 * TILE;
                        amx::block_gather_b(
                            atiles.as_ptr().add(2 * ip * steps * TILE_ELEMS),
                            steps * TILE_ELEMS,
                            x.data.as_ptr().add(2 * j),
                            &starts,
                            4 * x.len,
                            cptr.at(2 * ip * TILE * ldc + j),
                            ldc * 4,
                        );
                    }
                }
            })
        };
    });
}

/// The direct bf16 convolution of one output frame: on AMX tiles where the CPU has them,
/// otherwise with `vdpbf16ps`.
fn direct(
    w: &Weight16,
    x: &Interleaved,
    frame: usize,
    offsets: &[usize],
    n: usize,
    c: &mut [f32],
    ldc: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if !crate::gemm_bf16::amx_available() {
        return dot_direct(w, x, frame, offsets, n, c, ldc);
    }
    amx_direct(w, x, frame, offsets, n, c, ldc)
}

/// [`amx_direct`] without AMX, on AVX-512 BF16 (`vdpbf16ps`): the same packed weight, the same
/// interleaved input read in place at each tap's offset, C in 8 × 32 blocks (16 zmm
/// accumulators). An A tile row holds a weight row's 32 channels of one step, so a channel pair
/// is one broadcast; a B tile row (one channel pair, 16 positions) is one zmm load.
#[cfg(target_arch = "x86_64")]
fn dot_direct(
    w: &Weight16,
    x: &Interleaved,
    frame: usize,
    offsets: &[usize],
    n: usize,
    c: &mut [f32],
    ldc: usize,
) {
    let starts = step_starts(w, x, frame, offsets, n, c, ldc);
    let steps = starts.len();
    let cptr = SharedF32(c.as_mut_ptr());
    let atiles = w.tiles.slice::<u16>(w.mpanels * steps * TILE_ELEMS);
    // Rows are only as many as the weight has (in blocks of 8), not the AMX padding.
    let rowblocks = w.cout.div_ceil(dot::ROWS);
    let blocks = n.div_ceil(NB16);
    (0..blocks).into_par_iter().for_each(|jb| {
        let j0 = jb * NB16;
        let cblocks = NB16.min(n - j0).div_ceil(2 * TILE);
        for rb in 0..rowblocks {
            let (panel, half) = (rb / 2, rb % 2);
            for cb in 0..cblocks {
                let j = j0 + cb * 2 * TILE;
                // SAFETY: AVX-512 BF16 is available (checked by the caller); A's rows lie in
                // their panel's tiles, B's reads inside the interleaved input (checked above),
                // and C's block inside `c`'s padded rows × columns [j, j + 32) ≤ ldc, which this
                // task alone writes.
                unsafe {
                    dot::block(
                        atiles
                            .as_ptr()
                            .add(panel * steps * TILE_ELEMS + half * dot::ROWS * KSTEP),
                        x.data.as_ptr().add(2 * j),
                        &starts,
                        2 * x.len,
                        cptr.at((rb * dot::ROWS) * ldc + j),
                        ldc,
                    );
                }
            }
        }
    });
}

#[cfg(target_arch = "x86_64")]
mod dot {
    use std::arch::x86_64::*;

    use super::{KSTEP, TILE, TILE_ELEMS};

    /// Rows of C per block: half of a weight panel.
    pub const ROWS: usize = 8;

    /// `C[8 × 32] += A · B` over every step: A's rows are 32 u16 apart inside a step's tile
    /// (steps `TILE_ELEMS` apart), B's channel-pair rows `b_stride` u16 apart from each start.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn block(
        a: *const u16,
        b: *const u16,
        starts: &[usize],
        b_stride: usize,
        c: *mut f32,
        ldc: usize,
    ) {
        let mut lo = [_mm512_setzero_ps(); ROWS];
        let mut hi = [_mm512_setzero_ps(); ROWS];
        for (st, &off) in starts.iter().enumerate() {
            let a = a.add(st * TILE_ELEMS) as *const u32;
            let b = b.add(off);
            for pp in 0..KSTEP / 2 {
                let row = b.add(pp * b_stride);
                let v0: __m512bh = std::mem::transmute(_mm512_loadu_si512(row as *const __m512i));
                let v1: __m512bh =
                    std::mem::transmute(_mm512_loadu_si512(row.add(2 * TILE) as *const __m512i));
                for r in 0..ROWS {
                    let av: __m512bh =
                        std::mem::transmute(_mm512_set1_epi32(*a.add(r * KSTEP / 2 + pp) as i32));
                    lo[r] = _mm512_dpbf16_ps(lo[r], av, v0);
                    hi[r] = _mm512_dpbf16_ps(hi[r], av, v1);
                }
            }
        }
        for r in 0..ROWS {
            let crow = c.add(r * ldc);
            _mm512_storeu_ps(crow, _mm512_add_ps(_mm512_loadu_ps(crow), lo[r]));
            _mm512_storeu_ps(
                crow.add(TILE),
                _mm512_add_ps(_mm512_loadu_ps(crow.add(TILE)), hi[r]),
            );
        }
    }
}

#[derive(Clone, Copy)]
struct SharedF32(*mut f32);
// SAFETY: the AMX tasks write disjoint column blocks of C.
unsafe impl Send for SharedF32 {}
unsafe impl Sync for SharedF32 {}

impl SharedF32 {
    fn at(&self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// `row[2i] = bf16(r0[i])`, `row[2i + 1] = bf16(r1[i])` for `i < row.len()/2 ≤ 16` (a missing
/// row, or values past a run's end, are zero).
fn interleave_pair(r0: Option<&[f32]>, r1: Option<&[f32]>, row: &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::features().avx512bf16 {
        // SAFETY: AVX512-BF16 is available; runs hold at most 16 values and `row` 32.
        return unsafe { avx512::interleave_pair(r0, r1, row) };
    }
    row.fill(0);
    for (e, r) in [r0, r1].into_iter().enumerate() {
        if let Some(r) = r {
            for (i, &v) in r.iter().enumerate() {
                row[2 * i + e] = half::bf16::from_f32(v).to_bits();
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// Lane `i` of the result takes lane `i/2` of r0 (even `i`) or of r1 (odd `i`).
    const IDX: [i16; 32] = {
        let mut idx = [0i16; 32];
        let mut i = 0;
        while i < 32 {
            idx[i] = (i / 2 + 16 * (i % 2)) as i16;
            i += 1;
        }
        idx
    };

    #[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
    pub unsafe fn interleave_pair(r0: Option<&[f32]>, r1: Option<&[f32]>, row: &mut [u16]) {
        let load = |r: Option<&[f32]>| match r {
            Some(r) => _mm512_maskz_loadu_ps(((1u32 << r.len()) - 1) as u16, r.as_ptr()),
            None => _mm512_setzero_ps(),
        };
        let (a, b) = (load(r0), load(r1));
        // Lanes 0..16 hold r0, 16..32 hold r1.
        let both: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(b, a));
        let out = _mm512_permutexvar_epi16(_mm512_loadu_si512(IDX.as_ptr() as *const _), both);
        let mask: __mmask32 = if row.len() >= 32 {
            u32::MAX
        } else {
            (1u32 << row.len()) - 1
        };
        _mm512_mask_storeu_epi16(row.as_mut_ptr() as *mut i16, mask, out);
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
