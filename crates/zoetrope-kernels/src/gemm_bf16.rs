//! bf16 matrix products with f32 accumulation, `C = A·B (+ bias)`, on AMX tiles.
//!
//! B (a layer's weight) is packed once into AMX's pair-interleaved ("VNNI") tile layout,
//! [`PackedB`]; A (activations, f32 or bf16) is rounded to bf16 and packed into row tiles at each
//! call. The micro-kernel holds a 32 × 32 block of C in four f32 tiles and, per 32-deep step,
//! loads two A tiles and two B tiles and issues four `tdpbf16ps` (16·16·32 multiply-adds each).
//! Products of two bf16 values are exact in f32, so the only roundings are the inputs' to bf16
//! and the f32 accumulation: the same arithmetic as oneDNN's bf16 matmul that torch uses, and the
//! bias is added in f32 before the single rounding of the output.
//!
//! AMX instructions are written with `asm!` (their intrinsics are not stable Rust). Without AMX
//! but with AVX-512 BF16 (AMD Zen 4 and later, Intel Cooper Lake), the same packed B feeds a
//! `vdpbf16ps` micro-kernel instead ([`dot`]): a tile row pair of B is exactly its operand. With
//! neither (or with `ZOETROPE_ISA=avx512f`/`scalar`) the same function computes the same products
//! through the f32 GEMM, from the bf16-rounded inputs. All three give the same sums up to f32
//! summation order.

use half::bf16;
use rayon::prelude::*;

use crate::buf::{with_scratch, AlignedBuf};
use crate::cpu;
use crate::gemm::{self, Beta, Mat};

/// Rows (of A and C) and columns (of B and C) of one tile.
pub(crate) const TILE: usize = 16;
/// Depth of one tile step: 32 bf16 = one 64-byte tile row.
pub(crate) const KSTEP: usize = 32;
/// Elements (u16) of one packed tile.
pub(crate) const TILE_ELEMS: usize = TILE * KSTEP;
/// Columns of B one task keeps in L2 while it runs over many rows of A.
const NBLOCK: usize = 128;

/// Something that rounds to bf16: f32 (round to nearest even) or bf16 itself.
pub trait ToBf16: Copy + Send + Sync {
    fn bits(self) -> u16;
    fn to_f32(self) -> f32;

    /// `dst[i] = src[i].bits()` for a run (one row of a tile: at most 32 values).
    #[inline]
    fn bits_run(src: &[Self], dst: &mut [u16]) {
        dst.iter_mut().zip(src).for_each(|(d, s)| *d = s.bits());
    }
}

impl ToBf16 for f32 {
    #[inline(always)]
    fn bits(self) -> u16 {
        bf16::from_f32(self).to_bits()
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline]
    fn bits_run(src: &[Self], dst: &mut [u16]) {
        crate::rows::narrow_bf16_bits(src, dst)
    }
}

impl ToBf16 for bf16 {
    #[inline(always)]
    fn bits(self) -> u16 {
        self.to_bits()
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    #[inline]
    fn bits_run(src: &[Self], dst: &mut [u16]) {
        // SAFETY: bf16 is a transparent u16.
        let src: &[u16] =
            unsafe { std::slice::from_raw_parts(src.as_ptr() as *const u16, src.len()) };
        dst.copy_from_slice(src);
    }
}

/// What the epilogue applies to `A·B + bias` before the output is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    None,
    /// GELU with the tanh approximation, applied to the *rounded* output value and rounded again
    /// (what a framework computes when the linear layer and the GELU are two ops in bf16).
    GeluTanh,
}

/// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
#[inline]
pub fn gelu_tanh(x: f32) -> f32 {
    const S: f32 = 0.797_884_6; // √(2/π)
    0.5 * x * (1.0 + (S * (x + 0.044_715 * x * x * x)).tanh())
}

/// An output element: f32, or bf16 rounded once from the f32 sum.
pub trait FromF32: Copy + Send + Sync {
    fn from_f32(v: f32) -> Self;
    fn to_f32(self) -> f32;

    /// Writes `act(acc[j] + bias[j])` for every `j` to `dst[j]`.
    ///
    /// # Safety
    /// `dst` must be valid for `acc.len()` writes; `bias`, if given, at least as long as `acc`.
    #[inline]
    unsafe fn store_row(dst: *mut Self, acc: &[f32], bias: Option<&[f32]>, act: Activation) {
        for (j, &v) in acc.iter().enumerate() {
            let y = Self::from_f32(v + bias.map_or(0.0, |b| b[j]));
            *dst.add(j) = match act {
                Activation::None => y,
                Activation::GeluTanh => Self::from_f32(gelu_tanh(y.to_f32())),
            };
        }
    }
}

impl FromF32 for f32 {
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

impl FromF32 for bf16 {
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }

    #[inline]
    unsafe fn store_row(dst: *mut Self, acc: &[f32], bias: Option<&[f32]>, act: Activation) {
        #[cfg(target_arch = "x86_64")]
        if cpu::features().avx512bf16 {
            return avx512::store_bf16_row(dst as *mut u16, acc, bias, act == Activation::GeluTanh);
        }
        for (j, &v) in acc.iter().enumerate() {
            let y = bf16::from_f32(v + bias.map_or(0.0, |b| b[j]));
            *dst.add(j) = match act {
                Activation::None => y,
                Activation::GeluTanh => bf16::from_f32(gelu_tanh(y.to_f32())),
            };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// `rows::exp`'s polynomial is private to that module; tanh here is `1 − 2/(e^(2u) + 1)`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn tanh16(u: __m512) -> __m512 {
        let e = crate::rows::exp16(_mm512_add_ps(u, u));
        let one = _mm512_set1_ps(1.0);
        _mm512_sub_ps(
            one,
            _mm512_div_ps(_mm512_set1_ps(2.0), _mm512_add_ps(e, one)),
        )
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
    unsafe fn round16(v: __m512) -> __m256i {
        std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(v))
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn widen16(h: __m256i) -> __m512 {
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
    }

    #[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
    pub unsafe fn store_bf16_row(dst: *mut u16, acc: &[f32], bias: Option<&[f32]>, gelu: bool) {
        let n = acc.len();
        let mut j = 0;
        while j < n {
            let len = (n - j).min(16);
            let mask: __mmask16 = if len == 16 {
                0xffff
            } else {
                ((1u32 << len) - 1) as u16
            };
            let mut v = _mm512_maskz_loadu_ps(mask, acc.as_ptr().add(j));
            if let Some(b) = bias {
                v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, b.as_ptr().add(j)));
            }
            let mut h = round16(v);
            if gelu {
                let x = widen16(h);
                let x3 = _mm512_mul_ps(_mm512_mul_ps(x, x), x);
                let u = _mm512_mul_ps(
                    _mm512_set1_ps(0.797_884_6),
                    _mm512_fmadd_ps(_mm512_set1_ps(0.044_715), x3, x),
                );
                let g = _mm512_mul_ps(
                    _mm512_mul_ps(_mm512_set1_ps(0.5), x),
                    _mm512_add_ps(_mm512_set1_ps(1.0), tanh16(u)),
                );
                h = round16(g);
            }
            _mm256_mask_storeu_epi16(dst.add(j) as *mut i16, mask, h);
            j += 16;
        }
    }
}

/// B `[k × n]` rounded to bf16 and packed for the AMX micro-kernel: 16-column panels, each a
/// run of 32-deep tiles `[k/2 pairs][16 columns][2]`, k padded with zeros to a multiple of 32 and
/// n to a multiple of 32.
pub struct PackedB {
    k: usize,
    n: usize,
    kchunks: usize,
    panels: usize,
    data: AlignedBuf,
}

impl std::fmt::Debug for PackedB {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedB {{ k: {}, n: {} }}", self.k, self.n)
    }
}

impl PackedB {
    /// Packs B from any strided view: element `(p, j)` is `data[p * rs + j * cs]` (a `[n, k]`
    /// weight is `rs = 1, cs = k`).
    pub fn pack<T: ToBf16>(k: usize, n: usize, data: &[T], rs: usize, cs: usize) -> Self {
        if k > 0 && n > 0 {
            let last = (k - 1) * rs + (n - 1) * cs;
            assert!(
                last < data.len(),
                "PackedB: {k}x{n} view (strides {rs}, {cs}) needs {} elements, has {}",
                last + 1,
                data.len()
            );
        }
        let kchunks = k.div_ceil(KSTEP);
        let panels = n.div_ceil(2 * TILE) * 2;
        let len = panels * kchunks * TILE_ELEMS;
        let mut buf = AlignedBuf::with_len::<u16>(len);
        let out = buf.slice_mut::<u16>(len);
        out.par_chunks_mut((kchunks * TILE_ELEMS).max(1))
            .enumerate()
            .for_each(|(q, panel)| {
                for (c, tile) in panel.chunks_exact_mut(TILE_ELEMS).enumerate() {
                    for (pair, row) in tile.chunks_exact_mut(2 * TILE).enumerate() {
                        for col in 0..TILE {
                            let j = q * TILE + col;
                            for e in 0..2 {
                                let p = c * KSTEP + 2 * pair + e;
                                row[2 * col + e] = if j < n && p < k {
                                    data[p * rs + j * cs].bits()
                                } else {
                                    0
                                };
                            }
                        }
                    }
                }
            });
        Self {
            k,
            n,
            kchunks,
            panels,
            data: buf,
        }
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
    }

    /// 32-deep tile steps along k (k padded to a multiple of 32).
    pub(crate) fn kchunks(&self) -> usize {
        self.kchunks
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.panels * self.kchunks * TILE_ELEMS * 2
    }

    pub(crate) fn tiles(&self) -> &[u16] {
        self.data.slice(self.panels * self.kchunks * TILE_ELEMS)
    }

    /// Element `(p, j)` as f32 (for the fallback path).
    fn get(&self, p: usize, j: usize) -> f32 {
        let (q, col) = (j / TILE, j % TILE);
        let (c, r) = (p / KSTEP, p % KSTEP);
        let idx = (q * self.kchunks + c) * TILE_ELEMS + (r / 2) * 2 * TILE + 2 * col + r % 2;
        bf16::from_bits(self.tiles()[idx]).to_f32()
    }
}

/// The f32 GEMM reads a packed bf16 B straight from its tiles (bf16 is exact in f32), so the
/// fallback keeps the weight's bf16 memory and never widens the whole matrix.
impl gemm::PackB for PackedB {
    fn check(&self, k: usize, n: usize) {
        assert!(
            k == self.k && n == self.n,
            "gemm: packed bf16 B is {}x{}, the product needs {k}x{n}",
            self.k,
            self.n
        );
    }

    fn pack(&self, p0: usize, kc: usize, j: usize, cols: usize, panel: &mut [f32]) {
        let nr = gemm::NR;
        for p in 0..kc {
            let row = &mut panel[p * nr..(p + 1) * nr];
            for (c, v) in row.iter_mut().enumerate() {
                *v = if c < cols {
                    self.get(p0 + p, j + c)
                } else {
                    0.0
                };
            }
        }
    }
}

/// Whether [`gemm`] runs on AMX tiles here.
pub fn amx_available() -> bool {
    cpu::features().amx_bf16
}

/// `C[m × n] = A[m × k]·B (+ bias[n])` with A row-major (row stride `lda`), rounded to bf16, and
/// C row-major (row stride `ldc`), f32 or bf16.
#[allow(clippy::too_many_arguments)]
pub fn gemm<A: ToBf16, C: FromF32>(
    m: usize,
    a: &[A],
    lda: usize,
    b: &PackedB,
    c: &mut [C],
    ldc: usize,
    bias: Option<&[f32]>,
    act: Activation,
) {
    gemm_impl(m, a, lda, b, c, ldc, bias, act, true)
}

/// [`gemm`] on the calling thread only (for use inside other parallel kernels).
#[allow(clippy::too_many_arguments)]
pub fn gemm_serial<A: ToBf16, C: FromF32>(
    m: usize,
    a: &[A],
    lda: usize,
    b: &PackedB,
    c: &mut [C],
    ldc: usize,
    bias: Option<&[f32]>,
    act: Activation,
) {
    gemm_impl(m, a, lda, b, c, ldc, bias, act, false)
}

#[allow(clippy::too_many_arguments)]
fn gemm_impl<A: ToBf16, C: FromF32>(
    m: usize,
    a: &[A],
    lda: usize,
    b: &PackedB,
    c: &mut [C],
    ldc: usize,
    bias: Option<&[f32]>,
    act: Activation,
    parallel: bool,
) {
    let (k, n) = (b.k, b.n);
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        lda >= k && ldc >= n,
        "gemm_bf16: lda {lda} < k {k} or ldc {ldc} < n {n}"
    );
    assert!(
        a.len() >= (m - 1) * lda + k && c.len() >= (m - 1) * ldc + n,
        "gemm_bf16: A or C too short for {m}x{n}x{k}"
    );
    if let Some(bias) = bias {
        assert!(
            bias.len() >= n,
            "gemm_bf16: bias has {} of {n} values",
            bias.len()
        );
    }
    if !amx_available() {
        #[cfg(target_arch = "x86_64")]
        if cpu::features().avx512bf16 {
            return dot::gemm(m, a, lda, b, c, ldc, bias, act, parallel);
        }
        return fallback(m, a, lda, b, c, ldc, bias, act);
    }
    // Pack A into 16-row panels of 32-deep tiles, an even number of panels.
    let kchunks = b.kchunks;
    let mpanels = m.div_ceil(2 * TILE) * 2;
    let alen = mpanels * kchunks * TILE_ELEMS;
    with_scratch(|[abuf]: &mut [AlignedBuf; 1]| {
        let apack = abuf.slice_mut::<u16>(alen);
        run_packed(m, a, lda, b, c, ldc, bias, act, parallel, apack)
    })
}

/// The AMX body of [`gemm_impl`], with A's tile buffer (`alen` u16) given.
#[allow(clippy::too_many_arguments)]
fn run_packed<A: ToBf16, C: FromF32>(
    m: usize,
    a: &[A],
    lda: usize,
    b: &PackedB,
    c: &mut [C],
    ldc: usize,
    bias: Option<&[f32]>,
    act: Activation,
    parallel: bool,
    apack: &mut [u16],
) {
    let (k, n) = (b.k, b.n);
    let kchunks = b.kchunks;
    let mpanels = m.div_ceil(2 * TILE) * 2;
    let pack_panel = |(q, panel): (usize, &mut [u16])| {
        for r in 0..TILE {
            let i = q * TILE + r;
            for c in 0..kchunks {
                let row = &mut panel[c * TILE_ELEMS + r * KSTEP..c * TILE_ELEMS + (r + 1) * KSTEP];
                let p0 = c * KSTEP;
                let valid = if i < m {
                    KSTEP.min(k.saturating_sub(p0))
                } else {
                    0
                };
                if valid > 0 {
                    A::bits_run(&a[i * lda + p0..i * lda + p0 + valid], &mut row[..valid]);
                }
                row[valid..].fill(0);
            }
        }
    };
    for_each_panel(apack, kchunks * TILE_ELEMS, parallel, pack_panel);
    let apack: &[u16] = apack;
    let bpack = b.tiles();

    let mpairs = mpanels / 2;
    let cptr = SharedMut(c.as_mut_ptr());
    for_each_block(mpairs, b.panels / 2, n, parallel, |mp, np| {
        // SAFETY: AMX is available and permitted (checked above); the task writes only C's
        // rows of `mp` × columns of `np`, disjoint from every other task's.
        unsafe {
            amx::with_tiles(|| {
                for i in mp.clone() {
                    for j in np.clone() {
                        let mut acc = [0f32; 4 * TILE * TILE];
                        // C rows are 32 f32 = 128 bytes apart in `acc`.
                        amx::block_at(
                            apack.as_ptr().add(2 * i * kchunks * TILE_ELEMS),
                            kchunks * TILE_ELEMS,
                            bpack.as_ptr().add(2 * j * kchunks * TILE_ELEMS),
                            kchunks * TILE_ELEMS,
                            kchunks,
                            acc.as_mut_ptr(),
                            128,
                            false,
                        );
                        let (i0, j0) = (i * 2 * TILE, j * 2 * TILE);
                        store_rows(&acc, 2 * TILE, 2 * TILE, i0, j0, m, n, cptr, ldc, bias, act);
                    }
                }
            })
        }
    });
}

/// Runs `f((index, panel))` on every `len`-long panel of `buf`, on the pool or on this thread.
fn for_each_panel<T: Send>(
    buf: &mut [T],
    len: usize,
    parallel: bool,
    f: impl Fn((usize, &mut [T])) + Sync + Send,
) {
    if parallel {
        buf.par_chunks_mut(len.max(1)).enumerate().for_each(f);
    } else {
        buf.chunks_mut(len.max(1)).enumerate().for_each(f);
    }
}

/// Cuts C into tasks for the pool: `mrows` row units (panels) by `ncols` units of 32 columns
/// (pairs of 16-column B panels); a task takes `NBLOCK` columns (kept in L2 while it runs over
/// its rows) and a share of the rows, about four tasks per thread in all, and gets its ranges
/// of units.
fn for_each_block(
    mrows: usize,
    ncols: usize,
    n: usize,
    parallel: bool,
    task: impl Fn(std::ops::Range<usize>, std::ops::Range<usize>) + Sync,
) {
    let nblocks = n.div_ceil(NBLOCK).max(1);
    let cols_per_nblock = NBLOCK / (2 * TILE);
    let threads = if parallel {
        rayon::current_num_threads()
    } else {
        1
    };
    let mgroups = (4 * threads).div_ceil(nblocks).clamp(1, mrows.max(1));
    let rows_per_mgroup = mrows.div_ceil(mgroups).max(1);
    let mgroups = mrows.div_ceil(rows_per_mgroup);
    let run = |t: usize| {
        let (nb, mg) = (t / mgroups, t % mgroups);
        let np = nb * cols_per_nblock..((nb + 1) * cols_per_nblock).min(ncols);
        let mp = mg * rows_per_mgroup..((mg + 1) * rows_per_mgroup).min(mrows);
        task(mp, np)
    };
    if parallel {
        (0..nblocks * mgroups).into_par_iter().for_each(run);
    } else {
        (0..nblocks * mgroups).for_each(run);
    }
}

#[derive(Clone, Copy)]
struct SharedMut<C>(*mut C);
// SAFETY: tasks write disjoint blocks of C.
unsafe impl<C> Send for SharedMut<C> {}
unsafe impl<C> Sync for SharedMut<C> {}

/// Writes the valid part of a `rows_max` × `stride` f32 block (row stride `stride`) at `(i0, j0)`
/// of C.
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn store_rows<C: FromF32>(
    acc: &[f32],
    stride: usize,
    rows_max: usize,
    i0: usize,
    j0: usize,
    m: usize,
    n: usize,
    c: SharedMut<C>,
    ldc: usize,
    bias: Option<&[f32]>,
    act: Activation,
) {
    let rows = rows_max.min(m - i0);
    let cols = stride.min(n.saturating_sub(j0));
    let bias = bias.map(|b| &b[j0..j0 + cols]);
    for r in 0..rows {
        let crow = c.0.add((i0 + r) * ldc + j0);
        C::store_row(crow, &acc[r * stride..r * stride + cols], bias, act);
    }
}

/// The same products through the f32 GEMM (bf16 inputs are exact in f32).
#[allow(clippy::too_many_arguments)]
fn fallback<A: ToBf16, C: FromF32>(
    m: usize,
    a: &[A],
    lda: usize,
    b: &PackedB,
    c: &mut [C],
    ldc: usize,
    bias: Option<&[f32]>,
    act: Activation,
) {
    let (k, n) = (b.k, b.n);
    let af: Vec<f32> = (0..m * k)
        .map(|idx| bf16::from_bits(a[(idx / k) * lda + idx % k].bits()).to_f32())
        .collect();
    let mut cf = vec![0f32; m * n];
    gemm::sgemm_with(
        m,
        n,
        k,
        Mat::rows(&af, k),
        b,
        &mut cf,
        n,
        Beta::Overwrite,
        None,
    );
    for i in 0..m {
        // SAFETY: row i of C holds at least n elements (checked by `gemm`).
        unsafe {
            C::store_row(
                c[i * ldc..].as_mut_ptr(),
                &cf[i * n..(i + 1) * n],
                bias,
                act,
            )
        };
    }
}

/// The `vdpbf16ps` path: C in 14 × 32 blocks held in 28 zmm accumulators over the whole k.
///
/// A is packed per call into 14-row panels of bf16 pairs, `[k/2][14]` u32 (a pair `(a[i][2p],
/// a[i][2p+1])` is one broadcast operand); B is [`PackedB`] as it is: in a 16-column panel the
/// 32-deep tiles follow each other, so the panel is `[k/2][16 columns][2]`, one zmm per pair.
/// `vdpbf16ps` multiplies the two bf16 of each 32-bit lane and adds both products to the f32
/// lane, so a step of one pair is 14 broadcasts, 2 loads and 28 instructions of 32 multiply-adds.
#[cfg(target_arch = "x86_64")]
mod dot {
    use std::arch::x86_64::*;

    use super::{
        for_each_block, for_each_panel, store_rows, FromF32, PackedB, SharedMut, ToBf16, KSTEP,
        TILE, TILE_ELEMS,
    };
    use crate::buf::{with_scratch, AlignedBuf};
    use crate::gemm_bf16::Activation;

    /// Rows of C per micro-kernel call.
    const MR: usize = 14;
    /// Columns of C per call: two B panels.
    const NR: usize = 2 * TILE;

    #[allow(clippy::too_many_arguments)]
    pub(super) fn gemm<A: ToBf16, C: FromF32>(
        m: usize,
        a: &[A],
        lda: usize,
        b: &PackedB,
        c: &mut [C],
        ldc: usize,
        bias: Option<&[f32]>,
        act: Activation,
        parallel: bool,
    ) {
        let k = b.k;
        let n = b.n;
        // B's k is padded to whole tiles with zeros; A's pairs are padded the same way.
        let pairs = b.kchunks * KSTEP / 2;
        let mpanels = m.div_ceil(MR);
        let alen = mpanels * pairs * MR;
        with_scratch(|[abuf]: &mut [AlignedBuf; 1]| {
            let apack = abuf.slice_mut::<u32>(alen);
            let pack_panel = |(q, panel): (usize, &mut [u32])| {
                let mut row = vec![0u16; 2 * pairs];
                for r in 0..MR {
                    let i = q * MR + r;
                    if i < m {
                        A::bits_run(&a[i * lda..i * lda + k], &mut row[..k]);
                        row[k..].fill(0);
                    } else {
                        row.fill(0);
                    }
                    for p in 0..pairs {
                        panel[p * MR + r] =
                            u32::from(row[2 * p]) | (u32::from(row[2 * p + 1]) << 16);
                    }
                }
            };
            for_each_panel(apack, pairs * MR, parallel, pack_panel);
            let apack: &[u32] = apack;
            let bpack = b.tiles();
            let panel_len = b.kchunks * TILE_ELEMS;
            let cptr = SharedMut(c.as_mut_ptr());
            for_each_block(mpanels, b.panels / 2, n, parallel, |mp, np| {
                let mut acc = [0f32; MR * NR];
                for i in mp.clone() {
                    for j in np.clone() {
                        // SAFETY: AVX-512 BF16 is available (checked by the caller); the panels
                        // hold `pairs` steps each; the task writes only its own rows × columns.
                        unsafe {
                            micro(
                                pairs,
                                apack.as_ptr().add(i * pairs * MR),
                                bpack.as_ptr().add(2 * j * panel_len),
                                bpack.as_ptr().add((2 * j + 1) * panel_len),
                                &mut acc,
                            );
                            let (i0, j0) = (i * MR, j * NR);
                            store_rows(&acc, NR, MR, i0, j0, m, n, cptr, ldc, bias, act);
                        }
                    }
                }
            });
        })
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn micro(
        pairs: usize,
        a: *const u32,
        b0: *const u16,
        b1: *const u16,
        out: &mut [f32; MR * NR],
    ) {
        let mut lo = [_mm512_setzero_ps(); MR];
        let mut hi = [_mm512_setzero_ps(); MR];
        let (mut a, mut b0, mut b1) = (a, b0, b1);
        for _ in 0..pairs {
            _mm_prefetch::<_MM_HINT_T0>(b0.add(8 * 2 * TILE) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(b1.add(8 * 2 * TILE) as *const i8);
            let v0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b0 as *const __m512i));
            let v1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b1 as *const __m512i));
            for r in 0..MR {
                let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(r) as i32));
                lo[r] = _mm512_dpbf16_ps(lo[r], av, v0);
                hi[r] = _mm512_dpbf16_ps(hi[r], av, v1);
            }
            a = a.add(MR);
            b0 = b0.add(2 * TILE);
            b1 = b1.add(2 * TILE);
        }
        for r in 0..MR {
            _mm512_storeu_ps(out.as_mut_ptr().add(r * NR), lo[r]);
            _mm512_storeu_ps(out.as_mut_ptr().add(r * NR + TILE), hi[r]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod amx {
    use std::arch::asm;

    use super::{TILE, TILE_ELEMS};

    /// Tile configuration: palette 1, all eight tiles 16 rows × 64 bytes.
    #[repr(C, align(64))]
    struct Config([u8; 64]);

    /// Configures the tiles for this thread, runs `f`, releases them.
    pub unsafe fn with_tiles<R>(f: impl FnOnce() -> R) -> R {
        let mut cfg = Config([0; 64]);
        cfg.0[0] = 1;
        for t in 0..8 {
            cfg.0[16 + 2 * t] = 64; // bytes per row
            cfg.0[48 + t] = TILE as u8; // rows
        }
        asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
        let r = f();
        asm!("tilerelease", options(nostack, nomem));
        r
    }

    /// The four accumulator tiles of a 32 × 32 f32 block of C (rows `ldc` bytes apart):
    /// tmm0 = rows 0..16 × cols 0..16, tmm1 = cols 16..32, tmm2 / tmm3 the same for rows 16..32.
    #[inline(always)]
    unsafe fn quarters(c: *mut f32, ldc: usize) -> [*mut f32; 4] {
        let c1 = c.byte_add(TILE * ldc);
        [c, c.add(TILE), c1, c1.add(TILE)]
    }

    #[inline(always)]
    unsafe fn load_c(c: *mut f32, ldc: usize) {
        let [c00, c01, c10, c11] = quarters(c, ldc);
        asm!(
            "tileloadd tmm0, [{c00} + {s}*1]",
            "tileloadd tmm1, [{c01} + {s}*1]",
            "tileloadd tmm2, [{c10} + {s}*1]",
            "tileloadd tmm3, [{c11} + {s}*1]",
            c00 = in(reg) c00,
            c01 = in(reg) c01,
            c10 = in(reg) c10,
            c11 = in(reg) c11,
            s = in(reg) ldc,
            options(nostack, readonly)
        );
    }

    #[inline(always)]
    unsafe fn zero_c() {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        );
    }

    #[inline(always)]
    unsafe fn store_c(c: *mut f32, ldc: usize) {
        let [c00, c01, c10, c11] = quarters(c, ldc);
        asm!(
            "tilestored [{c00} + {s}*1], tmm0",
            "tilestored [{c01} + {s}*1], tmm1",
            "tilestored [{c10} + {s}*1], tmm2",
            "tilestored [{c11} + {s}*1], tmm3",
            c00 = in(reg) c00,
            c01 = in(reg) c01,
            c10 = in(reg) c10,
            c11 = in(reg) c11,
            s = in(reg) ldc,
            options(nostack)
        );
    }

    /// One 32-deep step: A tiles at `a0`, `a1` (rows 64 bytes apart), B tiles at `b0`, `b1`
    /// (rows `b_stride` bytes apart), four `tdpbf16ps` into tmm0..tmm3.
    #[inline(always)]
    unsafe fn step(
        a0: *const u16,
        a1: *const u16,
        b0: *const u16,
        b1: *const u16,
        b_stride: usize,
    ) {
        asm!(
            "tileloadd tmm4, [{a0} + {s}*1]",
            "tileloadd tmm6, [{b0} + {bs}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b1} + {bs}*1]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a1} + {s}*1]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            a0 = in(reg) a0,
            a1 = in(reg) a1,
            b0 = in(reg) b0,
            b1 = in(reg) b1,
            s = in(reg) 64usize,
            bs = in(reg) b_stride,
            options(nostack, readonly)
        );
    }

    /// `C[32 × 32] += A-pair · B` over one step per entry of `b_starts`: A's panels as in
    /// [`block_at`] (tiles consecutive, the second panel `a_panel` u16 on), B's two 16-column
    /// tiles at `b + b_starts[t]` and 32 u16 further, their rows `b_stride` bytes apart (tiles
    /// read in place from an interleaved input). C f32, rows `ldc` bytes apart, read first.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn block_gather_b(
        a: *const u16,
        a_panel: usize,
        b: *const u16,
        b_starts: &[usize],
        b_stride: usize,
        c: *mut f32,
        ldc: usize,
    ) {
        load_c(c, ldc);
        for (t, &off) in b_starts.iter().enumerate() {
            let a0 = a.add(t * TILE_ELEMS);
            let b0 = b.add(off);
            step(a0, a0.add(a_panel), b0, b0.add(2 * TILE), b_stride);
        }
        store_c(c, ldc);
    }

    /// `C[32 × 32] (+)= A-pair · B-pair` over `steps` 32-deep steps, C f32 row-major with rows
    /// `ldc` bytes apart, read first when `accumulate`. The A panels are `a_panel` u16 apart,
    /// the B panels `b_panel` apart (each panel a run of tiles, one per step).
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn block_at(
        a: *const u16,
        a_panel: usize,
        b: *const u16,
        b_panel: usize,
        steps: usize,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) {
        if accumulate {
            load_c(c, ldc);
        } else {
            zero_c();
        }
        for t in 0..steps {
            let (a0, b0) = (a.add(t * TILE_ELEMS), b.add(t * TILE_ELEMS));
            step(a0, a0.add(a_panel), b0, b0.add(b_panel), 64);
        }
        store_c(c, ldc);
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) mod amx {
    pub unsafe fn with_tiles<R>(_f: impl FnOnce() -> R) -> R {
        unreachable!("AMX is x86-64 only")
    }
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn block_gather_b(
        _a: *const u16,
        _a_panel: usize,
        _b: *const u16,
        _b_starts: &[usize],
        _b_stride: usize,
        _c: *mut f32,
        _ldc: usize,
    ) {
        unreachable!("AMX is x86-64 only")
    }
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn block_at(
        _a: *const u16,
        _a_panel: usize,
        _b: *const u16,
        _b_panel: usize,
        _steps: usize,
        _c: *mut f32,
        _ldc: usize,
        _accumulate: bool,
    ) {
        unreachable!("AMX is x86-64 only")
    }
}
