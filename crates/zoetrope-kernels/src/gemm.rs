//! f32 matrix products `C = A·B (+ C) (+ bias)`, packed and blocked (the Goto/BLIS scheme), with
//! an AVX-512 micro-kernel chosen at run time and a portable one otherwise.
//!
//! Blocking: the output is cut into `MC × NC` tiles, one rayon task each. A task walks the `k`
//! axis in `KC` slices; for each it copies ("packs") its `KC × NC` slice of B into `NR`-wide
//! column panels and its `MC × KC` slice of A into `MR`-tall row panels, so the micro-kernel
//! reads both with unit stride. The micro-kernel keeps an `MR × NR` block of C (14 × 32: 28 zmm
//! accumulators) in registers across the whole `KC` slice; a B panel (`KC × NR`, 32 KiB) stays in
//! L1 while the A panels stream from L2. Packing also absorbs any input strides, so transposed
//! operands (a linear layer's `[out, in]` weight) cost nothing extra.

use rayon::prelude::*;

use crate::buf::{with_scratch, AlignedBuf};
use crate::cpu;

/// Rows of C per micro-kernel call.
pub const MR: usize = 14;
/// Columns of C per micro-kernel call (two zmm registers).
pub const NR: usize = 32;
/// Depth of one packed slice: a `KC × NR` B panel is 32 KiB, within L1.
const KC: usize = 256;
/// Rows of one unit of work (8 A panels; a packed `MC × KC` block of A is 112 KiB, within L2).
const MC: usize = 8 * MR;
/// Columns of one packed block of B (`KC × NC` = 1 MiB, within L2, shared by all row blocks).
const NC: usize = 32 * NR;
/// Below this many multiply-adds a product runs on the calling thread.
const PARALLEL_MIN_FMAS: usize = 1 << 18;

/// A strided read-only matrix view: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Clone, Copy, Debug)]
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// A row-major matrix with row stride `ld`.
    pub fn rows(data: &'a [f32], ld: usize) -> Self {
        Self {
            data,
            rs: ld,
            cs: 1,
        }
    }

    /// The transpose of a row-major matrix with row stride `ld` (e.g. `Wᵀ` of a `[out, in]`
    /// weight): element `(i, j)` is `data[j * ld + i]`.
    pub fn transposed(data: &'a [f32], ld: usize) -> Self {
        Self {
            data,
            rs: 1,
            cs: ld,
        }
    }

    fn check(&self, what: &str, rows: usize, cols: usize) {
        if rows == 0 || cols == 0 {
            return;
        }
        let last = (rows - 1) * self.rs + (cols - 1) * self.cs;
        assert!(
            last < self.data.len(),
            "gemm: {what} view of {rows}x{cols} (strides {}, {}) needs {} elements, has {}",
            self.rs,
            self.cs,
            last + 1,
            self.data.len()
        );
    }

    #[inline(always)]
    fn at(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.rs + j * self.cs]
    }
}

/// What to do with the existing contents of C.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Beta {
    /// `C = A·B (+ bias)`.
    Overwrite,
    /// `C += A·B (+ bias)`.
    Accumulate,
}

/// `C[m×n] (=|+=) A[m×k]·B[k×n] (+ bias[n] on every row)`, C row-major with row stride `ldc`.
/// Runs on rayon's pool when the product is large enough.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: Mat,
    b: Mat,
    c: &mut [f32],
    ldc: usize,
    beta: Beta,
    bias: Option<&[f32]>,
) {
    run(m, n, k, a, &b, c, ldc, beta, bias, true)
}

/// [`sgemm`] on the calling thread only (for use inside other parallel kernels).
#[allow(clippy::too_many_arguments)]
pub fn sgemm_serial(
    m: usize,
    n: usize,
    k: usize,
    a: Mat,
    b: Mat,
    c: &mut [f32],
    ldc: usize,
    beta: Beta,
    bias: Option<&[f32]>,
) {
    run(m, n, k, a, &b, c, ldc, beta, bias, false)
}

/// A source of B that packs itself into the micro-kernel's panels: a strided matrix ([`Mat`]),
/// or a matrix that never exists in memory, such as a convolution's im2col columns gathered
/// straight from the input (implicit GEMM).
pub trait PackB: Sync {
    /// Panics unless B can serve a `k × n` product.
    fn check(&self, k: usize, n: usize);
    /// Writes `panel[p·NR + c] = B[p0 + p][j + c]` for `p < kc`, `c < cols ≤ NR`, zero for
    /// `cols ≤ c < NR`.
    fn pack(&self, p0: usize, kc: usize, j: usize, cols: usize, panel: &mut [f32]);

    /// B already in panel layout over its full depth `k`: `(data, k)` (see [`PackedF32`]).
    fn prepacked(&self) -> Option<(&[f32], usize)> {
        None
    }
}

impl PackB for Mat<'_> {
    fn check(&self, k: usize, n: usize) {
        Mat::check(self, "B", k, n)
    }

    fn pack(&self, p0: usize, kc: usize, j: usize, cols: usize, panel: &mut [f32]) {
        pack_b(*self, p0, kc, j, cols, panel)
    }
}

/// [`sgemm`] with B from any [`PackB`] source.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_with<B: PackB>(
    m: usize,
    n: usize,
    k: usize,
    a: Mat,
    b: &B,
    c: &mut [f32],
    ldc: usize,
    beta: Beta,
    bias: Option<&[f32]>,
) {
    run(m, n, k, a, b, c, ldc, beta, bias, true)
}

/// A raw pointer that tasks writing disjoint tiles of C may share.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: every task writes only its own tile of C (disjoint rows × columns).
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The pointer (a method, so closures capture the whole `Sync` wrapper).
    fn ptr(&self) -> *mut f32 {
        self.0
    }
}

#[allow(clippy::too_many_arguments)]
fn run<B: PackB>(
    m: usize,
    n: usize,
    k: usize,
    a: Mat,
    b: &B,
    c: &mut [f32],
    ldc: usize,
    beta: Beta,
    bias: Option<&[f32]>,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(ldc >= n, "gemm: ldc {ldc} < n {n}");
    assert!(
        c.len() >= (m - 1) * ldc + n,
        "gemm: C holds {} elements, {m}x{n} with ldc {ldc} needs {}",
        c.len(),
        (m - 1) * ldc + n
    );
    if let Some(bias) = bias {
        assert!(
            bias.len() >= n,
            "gemm: bias has {} of {n} values",
            bias.len()
        );
    }
    if k == 0 {
        for i in 0..m {
            let row = &mut c[i * ldc..i * ldc + n];
            if beta == Beta::Overwrite {
                row.fill(0.0);
            }
            if let Some(bias) = bias {
                row.iter_mut().zip(bias).for_each(|(c, b)| *c += b);
            }
        }
        return;
    }
    a.check("A", m, k);
    b.check(k, n);
    let avx512 = cpu::features().avx512f;
    let parallel = parallel && m * n * k >= PARALLEL_MIN_FMAS;
    let threads = if parallel {
        rayon::current_num_threads()
    } else {
        1
    };
    let cptr = SharedMut(c.as_mut_ptr());
    if let Some((bdata, kfull)) = b.prepacked() {
        return run_prepacked(
            m, n, k, a, bdata, kfull, cptr, ldc, beta, bias, threads, avx512,
        );
    }
    with_scratch(|[bbuf, abuf_all]: &mut [AlignedBuf; 2]| {
        // With more than one column block every row block would pack the same A again for
        // each: pack all of A once instead (block `bi`, slice `p0` at `bi·MC·k + rows·p0`).
        let prepacked = (n > NC).then(|| {
            let all = abuf_all.slice_mut::<f32>(m.div_ceil(MR) * MR * k);
            let pack_block = |(bi, chunk): (usize, &mut [f32])| {
                let (i0, mc) = (bi * MC, MC.min(m - bi * MC));
                let rows = mc.div_ceil(MR) * MR;
                let mut p0 = 0;
                while p0 < k {
                    let kc = KC.min(k - p0);
                    pack_a(a, i0, mc, p0, kc, &mut chunk[rows * p0..rows * (p0 + kc)]);
                    p0 += kc;
                }
            };
            if parallel {
                all.par_chunks_mut(MC * k).enumerate().for_each(pack_block);
            } else {
                all.chunks_mut(MC * k).enumerate().for_each(pack_block);
            }
            &*all
        });
        let mut j0 = 0;
        while j0 < n {
            let nc = NC.min(n - j0);
            let panels_n = nc.div_ceil(NR);
            let mut p0 = 0;
            while p0 < k {
                let kc = KC.min(k - p0);
                // B's KC × NC block is packed once and shared by every row block (or read
                // where it lies, when B comes packed).
                let (bpack, panel_stride): (&[f32], usize) = match b.prepacked() {
                    Some((data, kfull)) => (&data[((j0 / NR) * kfull + p0) * NR..], kfull * NR),
                    None => {
                        let bpack = bbuf.slice_mut::<f32>(panels_n * NR * kc);
                        if parallel {
                            bpack.par_chunks_exact_mut(NR * kc).enumerate().for_each(
                                |(q, panel)| {
                                    b.pack(p0, kc, j0 + q * NR, NR.min(nc - q * NR), panel)
                                },
                            );
                        } else {
                            for (q, panel) in bpack.chunks_exact_mut(NR * kc).enumerate() {
                                b.pack(p0, kc, j0 + q * NR, NR.min(nc - q * NR), panel);
                            }
                        }
                        (bpack, NR * kc)
                    }
                };
                let blocks_m = m.div_ceil(MC);
                // Enough work units for every thread: split the columns when rows are few.
                let groups_n = (4 * threads).div_ceil(blocks_m).clamp(1, panels_n);
                let per_group = panels_n.div_ceil(groups_n);
                let groups_n = panels_n.div_ceil(per_group);
                let step = Step {
                    p0,
                    kc,
                    panel_stride,
                    j0,
                    nc,
                    accumulate: p0 > 0 || beta == Beta::Accumulate,
                    bias: if p0 + kc == k { bias } else { None },
                };
                let unit = |u: usize| {
                    let (bi, g) = (u / groups_n, u % groups_n);
                    let i0 = bi * MC;
                    let mc = MC.min(m - i0);
                    let panels = g * per_group..((g + 1) * per_group).min(panels_n);
                    let pre = prepacked.map(|all| {
                        let rows = mc.div_ceil(MR) * MR;
                        &all[bi * MC * k + rows * p0..bi * MC * k + rows * (p0 + kc)]
                    });
                    with_scratch(|[abuf]: &mut [AlignedBuf; 1]| {
                        // SAFETY: the unit writes rows [i0, i0+mc) × its own column panels of
                        // C, inside C (checked above) and disjoint from every other unit's.
                        unsafe {
                            block(step, a, pre, i0, mc, bpack, panels, cptr, ldc, avx512, abuf)
                        }
                    })
                };
                let units = blocks_m * groups_n;
                if parallel && units > 1 {
                    (0..units).into_par_iter().for_each(unit);
                } else {
                    (0..units).for_each(unit);
                }
                p0 += kc;
            }
            j0 += nc;
        }
    });
}

/// `parts` near-equal consecutive ranges covering `0..total`.
fn split(total: usize, parts: usize, i: usize) -> std::ops::Range<usize> {
    let (q, r) = (total / parts, total % parts);
    let start = i * q + i.min(r);
    start..start + q + usize::from(i < r)
}

/// B already packed over its full depth (a linear layer's weight): one parallel pass. Each unit
/// owns a block of C (up to `MC` rows × `NC` columns) and runs the whole depth over it, `KC` at a
/// time, so C stays in L2 between slices and there is no barrier per slice. Within a slice each
/// B panel (`KC × NR`, L1) meets all of the unit's A panels (L2) in turn.
#[allow(clippy::too_many_arguments)]
fn run_prepacked(
    m: usize,
    n: usize,
    k: usize,
    a: Mat,
    bdata: &[f32],
    kfull: usize,
    c: SharedMut,
    ldc: usize,
    beta: Beta,
    bias: Option<&[f32]>,
    threads: usize,
    avx512: bool,
) {
    let (panels_m, panels_n) = (m.div_ceil(MR), n.div_ceil(NR));
    let mut row_blocks = panels_m.div_ceil(MC / MR);
    let mut col_blocks = panels_n.div_ceil(NC / NR);
    // Enough units for every thread (4 each, so uneven units even out): split the columns
    // further, then the rows.
    if row_blocks * col_blocks < 4 * threads {
        col_blocks = panels_n.min((4 * threads).div_ceil(row_blocks));
    }
    if row_blocks * col_blocks < 4 * threads {
        row_blocks = panels_m.min((4 * threads).div_ceil(col_blocks));
    }
    let unit = |u: usize| {
        let (rb, cb) = (u / col_blocks, u % col_blocks);
        let rp = split(panels_m, row_blocks, rb);
        let cp = split(panels_n, col_blocks, cb);
        let (i0, mc) = (rp.start * MR, (rp.end * MR).min(m) - rp.start * MR);
        with_scratch(|[abuf]: &mut [AlignedBuf; 1]| {
            let mut p0 = 0;
            while p0 < k {
                let kc = KC.min(k - p0);
                let apack = abuf.slice_mut::<f32>(rp.len() * MR * kc);
                pack_a(a, i0, mc, p0, kc, apack);
                let accumulate = p0 > 0 || beta == Beta::Accumulate;
                let last = p0 + kc == k;
                for jp in cp.clone() {
                    let jj = jp * NR;
                    let bp = bdata[(jp * kfull + p0) * NR..].as_ptr();
                    for (q, ap) in apack.chunks_exact(MR * kc).enumerate() {
                        let ii = i0 + q * MR;
                        let out = Out {
                            // SAFETY (of the pointer arithmetic): row ii, column jj lie inside
                            // C (checked by `run`).
                            c: unsafe { c.ptr().add(ii * ldc + jj) },
                            ldc,
                            mr: MR.min(m - ii),
                            nr: NR.min(n - jj),
                            accumulate,
                            bias: if last {
                                bias.map(|b| b[jj..].as_ptr())
                            } else {
                                None
                            },
                        };
                        // SAFETY: the A panel holds `kc` rows of MR, B's panel `kc` rows of NR
                        // from depth p0; the unit writes only its own rows × columns of C.
                        unsafe { micro(kc, ap.as_ptr(), bp, out, avx512) };
                    }
                }
                p0 += kc;
            }
        })
    };
    let units = row_blocks * col_blocks;
    if threads > 1 && units > 1 {
        (0..units).into_par_iter().for_each(unit);
    } else {
        (0..units).for_each(unit);
    }
}

/// One `KC` slice of the product over one column block of `NC`.
#[derive(Clone, Copy)]
struct Step<'a> {
    p0: usize,
    kc: usize,
    /// Elements between consecutive B panels in `bpack`.
    panel_stride: usize,
    j0: usize,
    nc: usize,
    accumulate: bool,
    bias: Option<&'a [f32]>,
}

/// Rows `[i0, i0+mc)` of C times the packed B panels `panels` of one step.
#[allow(clippy::too_many_arguments)]
unsafe fn block(
    s: Step,
    a: Mat,
    prepacked: Option<&[f32]>,
    i0: usize,
    mc: usize,
    bpack: &[f32],
    panels: std::ops::Range<usize>,
    c: SharedMut,
    ldc: usize,
    avx512: bool,
    abuf: &mut AlignedBuf,
) {
    let panels_m = mc.div_ceil(MR);
    let apack: &[f32] = match prepacked {
        Some(p) => p,
        None => {
            let buf = abuf.slice_mut::<f32>(panels_m * MR * s.kc);
            pack_a(a, i0, mc, s.p0, s.kc, buf);
            buf
        }
    };
    // A's panel (MR × KC, broadcast) stays in L1 while B's panels (vector loads) stream from L2.
    for ip in 0..panels_m {
        let ii = i0 + ip * MR;
        let ap = apack.as_ptr().add(ip * MR * s.kc);
        for jp in panels.clone() {
            let jj = s.j0 + jp * NR;
            let out = Out {
                c: c.0.add(ii * ldc + jj),
                ldc,
                mr: MR.min(i0 + mc - ii),
                nr: NR.min(s.j0 + s.nc - jj),
                accumulate: s.accumulate,
                bias: s.bias.map(|b| b.as_ptr().add(jj)),
            };
            micro(
                s.kc,
                ap,
                bpack.as_ptr().add(jp * s.panel_stride),
                out,
                avx512,
            );
        }
    }
}

/// For kernels that lay out their own panels (attention): `C[mr × nr] (+)= A-panel · B-panel`
/// over `kc` steps, `a` one packed `MR`-row panel (`[kc][MR]`), `b` one `NR`-column panel
/// (`[kc][NR]`), C row-major with row stride `ldc`; only its `mr ≤ MR` rows and `nr ≤ NR`
/// columns are written.
///
/// # Safety
/// `a` must hold `kc·MR` and `b` `kc·NR` readable floats; C's `mr × nr` block (rows `ldc`
/// apart) must be writable (and readable when `accumulate`).
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) unsafe fn micro_panel(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    mr: usize,
    nr: usize,
    accumulate: bool,
    avx512: bool,
) {
    let out = Out {
        c,
        ldc,
        mr,
        nr,
        accumulate,
        bias: None,
    };
    micro(kc, a, b, out, avx512)
}

/// [`pack_a`] for other kernels of the crate.
pub(crate) fn pack_a_panels(a: Mat, i0: usize, mc: usize, p0: usize, kc: usize, dst: &mut [f32]) {
    pack_a(a, i0, mc, p0, kc, dst)
}

/// [`pack_b`] for other kernels of the crate.
pub(crate) fn pack_b_panel(b: Mat, p0: usize, kc: usize, j: usize, cols: usize, panel: &mut [f32]) {
    pack_b(b, p0, kc, j, cols, panel)
}

/// Packs rows `[i0, i0+mc)`, depth `[p0, p0+kc)` of A into `MR`-row panels: panel `q` holds
/// `dst[(q·kc + p)·MR + r] = A[i0 + q·MR + r][p0 + p]`, zero past the last row.
fn pack_a(a: Mat, i0: usize, mc: usize, p0: usize, kc: usize, dst: &mut [f32]) {
    for (q, panel) in dst.chunks_exact_mut(MR * kc).enumerate() {
        let rows = MR.min(mc - q * MR);
        let base = (i0 + q * MR) * a.rs + p0 * a.cs;
        if rows < MR {
            panel.fill(0.0);
        }
        // Depth by depth: contiguous writes; the `rows` source lines stay in L1.
        for p in 0..kc {
            let out = &mut panel[p * MR..p * MR + rows];
            let src = base + p * a.cs;
            for (r, o) in out.iter_mut().enumerate() {
                *o = a.data[src + r * a.rs];
            }
        }
    }
}

/// Packs depth `[p0, p0+kc)` of the `cols ≤ NR` columns from `j` of B into one panel:
/// `panel[p·NR + c] = B[p0 + p][j + c]`, zero past the last column.
fn pack_b(b: Mat, p0: usize, kc: usize, j: usize, cols: usize, panel: &mut [f32]) {
    if b.cs == 1 {
        for p in 0..kc {
            let row = (p0 + p) * b.rs + j;
            let out = &mut panel[p * NR..(p + 1) * NR];
            out[..cols].copy_from_slice(&b.data[row..row + cols]);
            out[cols..].fill(0.0);
        }
        return;
    }
    if cols < NR {
        panel.fill(0.0);
    }
    // Row by row of the panel: the writes are contiguous and the `cols` source lines being
    // read stay in L1 across 16 consecutive `p`.
    let base = j * b.cs + p0 * b.rs;
    for p in 0..kc {
        let out = &mut panel[p * NR..p * NR + cols];
        let src = base + p * b.rs;
        for (cc, o) in out.iter_mut().enumerate() {
            *o = b.data[src + cc * b.cs];
        }
    }
}

/// Where a micro-kernel writes its `mr × nr` block (at most `MR × NR`).
#[derive(Clone, Copy)]
struct Out {
    c: *mut f32,
    ldc: usize,
    mr: usize,
    nr: usize,
    accumulate: bool,
    bias: Option<*const f32>,
}

#[inline]
unsafe fn micro(kc: usize, a: *const f32, b: *const f32, out: Out, avx512: bool) {
    if out.mr == MR && out.nr == NR {
        dispatch(kc, a, b, out, avx512);
        return;
    }
    // Edge block: compute the full block into a scratch tile, then copy its valid part.
    let mut tmp = [0f32; MR * NR];
    let full = Out {
        c: tmp.as_mut_ptr(),
        ldc: NR,
        mr: MR,
        nr: NR,
        accumulate: false,
        bias: None,
    };
    dispatch(kc, a, b, full, avx512);
    for r in 0..out.mr {
        let crow = out.c.add(r * out.ldc);
        for j in 0..out.nr {
            let mut v = tmp[r * NR + j];
            if let Some(bias) = out.bias {
                v += *bias.add(j);
            }
            if out.accumulate {
                v += *crow.add(j);
            }
            *crow.add(j) = v;
        }
    }
}

#[inline]
unsafe fn dispatch(kc: usize, a: *const f32, b: *const f32, out: Out, avx512: bool) {
    #[cfg(target_arch = "x86_64")]
    if avx512 {
        return micro_avx512(kc, a, b, out);
    }
    let _ = avx512;
    micro_portable(kc, a, b, out)
}

/// The full `MR × NR` block in portable Rust (the compiler vectorises the inner loop).
unsafe fn micro_portable(kc: usize, a: *const f32, b: *const f32, out: Out) {
    let mut acc = [[0f32; NR]; MR];
    for p in 0..kc {
        let brow = std::slice::from_raw_parts(b.add(p * NR), NR);
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let av = *a.add(p * MR + r);
            for (x, &bv) in acc_r.iter_mut().zip(brow) {
                *x += av * bv;
            }
        }
    }
    for (r, acc_r) in acc.iter().enumerate() {
        let crow = out.c.add(r * out.ldc);
        for (j, &v) in acc_r.iter().enumerate() {
            let mut v = v;
            if let Some(bias) = out.bias {
                v += *bias.add(j);
            }
            if out.accumulate {
                v += *crow.add(j);
            }
            *crow.add(j) = v;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn micro_avx512(kc: usize, a: *const f32, b: *const f32, out: Out) {
    use std::arch::x86_64::*;
    // C's rows are far apart (a full row of C each): ask for them now so the epilogue does not
    // wait on 2·MR cache misses.
    for r in 0..MR {
        let crow = out.c.add(r * out.ldc) as *const i8;
        _mm_prefetch::<_MM_HINT_T0>(crow);
        _mm_prefetch::<_MM_HINT_T0>(crow.add(64));
    }
    let mut lo = [_mm512_setzero_ps(); MR];
    let mut hi = [_mm512_setzero_ps(); MR];
    let (mut a, mut b) = (a, b);
    for _ in 0..kc {
        // The panels are read once, front to back: fetch ~8 iterations ahead.
        _mm_prefetch::<_MM_HINT_T0>(b.add(8 * NR) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(b.add(8 * NR + 16) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(a.add(8 * MR) as *const i8);
        let b0 = _mm512_loadu_ps(b);
        let b1 = _mm512_loadu_ps(b.add(16));
        for r in 0..MR {
            let av = _mm512_set1_ps(*a.add(r));
            lo[r] = _mm512_fmadd_ps(av, b0, lo[r]);
            hi[r] = _mm512_fmadd_ps(av, b1, hi[r]);
        }
        a = a.add(MR);
        b = b.add(NR);
    }
    let (bias0, bias1) = match out.bias {
        Some(p) => (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16))),
        None => (_mm512_setzero_ps(), _mm512_setzero_ps()),
    };
    for r in 0..MR {
        let crow = out.c.add(r * out.ldc);
        let mut v0 = _mm512_add_ps(lo[r], bias0);
        let mut v1 = _mm512_add_ps(hi[r], bias1);
        if out.accumulate {
            v0 = _mm512_add_ps(v0, _mm512_loadu_ps(crow));
            v1 = _mm512_add_ps(v1, _mm512_loadu_ps(crow.add(16)));
        }
        _mm512_storeu_ps(crow, v0);
        _mm512_storeu_ps(crow.add(16), v1);
    }
}

/// The plain triple loop, in f64, for tests and as the definition of the product.
#[allow(clippy::too_many_arguments)]
pub fn reference(
    m: usize,
    n: usize,
    k: usize,
    a: Mat,
    b: Mat,
    c: &mut [f32],
    ldc: usize,
    beta: Beta,
    bias: Option<&[f32]>,
) {
    for i in 0..m {
        for j in 0..n {
            let mut s = 0f64;
            for p in 0..k {
                s += a.at(i, p) as f64 * b.at(p, j) as f64;
            }
            if let Some(bias) = bias {
                s += bias[j] as f64;
            }
            if beta == Beta::Accumulate {
                s += c[i * ldc + j] as f64;
            }
            c[i * ldc + j] = s as f32;
        }
    }
}

/// GFLOP/s of the bare micro-kernel on cache-resident panels (`kc` deep, `reps` calls): the
/// ceiling that packing and blocking are measured against. `None` without AVX-512.
#[doc(hidden)]
pub fn micro_kernel_gflops(kc: usize, reps: usize) -> Option<f64> {
    if !cpu::features().avx512f {
        return None;
    }
    let a = vec![0.5f32; MR * kc];
    let b = vec![0.25f32; NR * kc];
    let mut c = vec![0f32; MR * NR];
    let t = std::time::Instant::now();
    for _ in 0..reps {
        let out = Out {
            c: c.as_mut_ptr(),
            ldc: NR,
            mr: MR,
            nr: NR,
            accumulate: true,
            bias: None,
        };
        // SAFETY: the panels and C hold exactly one full block.
        unsafe { dispatch(kc, a.as_ptr(), b.as_ptr(), out, true) };
    }
    std::hint::black_box(&c);
    Some((2 * MR * NR * kc * reps) as f64 / t.elapsed().as_secs_f64() / 1e9)
}

/// B `[k × n]` packed once into the micro-kernel's `NR`-column panels over its full depth
/// (`data[(q·k + p)·NR + c] = B[p][q·NR + c]`), so that many products with the same B (attention's
/// keys and values, used by every block of queries) skip the packing.
pub struct PackedF32 {
    k: usize,
    n: usize,
    data: AlignedBuf,
}

impl PackedF32 {
    pub fn pack(b: Mat, k: usize, n: usize) -> Self {
        b.check("B", k, n);
        let panels = n.div_ceil(NR);
        let mut data = AlignedBuf::with_len::<f32>(panels * NR * k);
        let out = data.slice_mut::<f32>(panels * NR * k);
        if k > 0 {
            for (q, panel) in out.chunks_exact_mut(NR * k).enumerate() {
                pack_b(b, 0, k, q * NR, NR.min(n - q * NR), panel);
            }
        }
        Self { k, n, data }
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
    }
}

/// On the calling thread: `C[m × |cols|] (=|+=) A[m × |depth|] · B[depth, cols]` with B packed,
/// `cols.start` a multiple of [`NR`]; A's column 0 is B's row `depth.start`, C's column 0 is B's
/// column `cols.start`.
#[allow(clippy::too_many_arguments)]
pub fn gemm_packed_serial(
    m: usize,
    a: Mat,
    b: &PackedF32,
    depth: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    c: &mut [f32],
    ldc: usize,
    beta: Beta,
) {
    assert!(
        depth.end <= b.k && cols.end <= b.n,
        "gemm_packed: range outside B"
    );
    assert!(
        cols.start.is_multiple_of(NR),
        "gemm_packed: columns must start on a panel"
    );
    let (kd, n) = (depth.len(), cols.len());
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        ldc >= n && c.len() >= (m - 1) * ldc + n,
        "gemm_packed: C too short"
    );
    if kd == 0 {
        if beta == Beta::Overwrite {
            (0..m).for_each(|i| c[i * ldc..i * ldc + n].fill(0.0));
        }
        return;
    }
    a.check("A", m, kd);
    let avx512 = cpu::features().avx512f;
    let bdata = b.data.slice::<f32>(b.n.div_ceil(NR) * NR * b.k);
    let panels_m = m.div_ceil(MR);
    with_scratch(|[abuf]: &mut [AlignedBuf; 1]| {
        let mut p0 = 0;
        while p0 < kd {
            let kc = KC.min(kd - p0);
            let apack = abuf.slice_mut::<f32>(panels_m * MR * kc);
            pack_a(a, 0, m, p0, kc, apack);
            let accumulate = p0 > 0 || beta == Beta::Accumulate;
            for ip in 0..panels_m {
                let ap = apack[ip * MR * kc..].as_ptr();
                for jp in cols.start / NR..cols.end.div_ceil(NR) {
                    let jj = jp * NR - cols.start;
                    let bp = bdata[(jp * b.k + depth.start + p0) * NR..].as_ptr();
                    let out = Out {
                        c: c[ip * MR * ldc + jj..].as_mut_ptr(),
                        ldc,
                        mr: MR.min(m - ip * MR),
                        nr: NR.min(n - jj),
                        accumulate,
                        bias: None,
                    };
                    // SAFETY: the A and B panels hold `kc` full rows; C's block lies inside
                    // the checked `m × n` region.
                    unsafe { micro(kc, ap, bp, out, avx512) };
                }
            }
            p0 += kc;
        }
    });
}

impl PackB for PackedF32 {
    fn check(&self, k: usize, n: usize) {
        assert!(
            k == self.k && n == self.n,
            "gemm: packed B is {}x{}, the product needs {k}x{n}",
            self.k,
            self.n
        );
    }

    fn pack(&self, p0: usize, kc: usize, j: usize, cols: usize, panel: &mut [f32]) {
        let data = self.data.slice::<f32>(self.n.div_ceil(NR) * NR * self.k);
        let src = &data[((j / NR) * self.k + p0) * NR..];
        panel[..kc * NR].copy_from_slice(&src[..kc * NR]);
        let _ = cols;
    }

    fn prepacked(&self) -> Option<(&[f32], usize)> {
        Some((
            self.data.slice::<f32>(self.n.div_ceil(NR) * NR * self.k),
            self.k,
        ))
    }
}

impl PackedF32 {
    /// Element `(p, j)` (for reading a packed weight back).
    pub fn get(&self, p: usize, j: usize) -> f32 {
        let data = self.data.slice::<f32>(self.n.div_ceil(NR) * NR * self.k);
        data[((j / NR) * self.k + p) * NR + j % NR]
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.n.div_ceil(NR) * NR * self.k * 4
    }
}

impl std::fmt::Debug for PackedF32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedF32 {{ k: {}, n: {} }}", self.k, self.n)
    }
}

/// A `[m × k]` packed once into the micro-kernel's `MR`-row panels, one run of panels per `KC`
/// slice of the depth (slice `p0` at `m_panels·MR·p0`, panel `q` of it at `+ q·MR·kc`): the
/// operand that a product with a huge, streamed B (a convolution's im2col columns) reuses.
pub struct PackedA {
    m: usize,
    k: usize,
    data: AlignedBuf,
}

impl PackedA {
    pub fn pack(a: Mat, m: usize, k: usize) -> Self {
        a.check("A", m, k);
        let rows = m.div_ceil(MR) * MR;
        let mut data = AlignedBuf::with_len::<f32>(rows * k);
        let out = data.slice_mut::<f32>(rows * k);
        let mut p0 = 0;
        while p0 < k {
            let kc = KC.min(k - p0);
            pack_a(a, 0, m, p0, kc, &mut out[rows * p0..rows * (p0 + kc)]);
            p0 += kc;
        }
        Self { m, k, data }
    }
}

/// `C (=|+=) A·B (+ bias)` with A packed ([`PackedA`]) and B packed as it is read: each unit of
/// work owns a block of C's columns (all rows) and runs the whole depth over it, packing its own
/// `KC × 256` slices of B, so a product with a very wide B has one parallel pass and no barrier
/// per slice; within a slice each B panel (L1) meets every A panel (L2) in turn.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_packed_a<B: PackB>(
    n: usize,
    a: &PackedA,
    b: &B,
    c: &mut [f32],
    ldc: usize,
    beta: Beta,
    bias: Option<&[f32]>,
) {
    let (m, k) = (a.m, a.k);
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        ldc >= n && c.len() >= (m - 1) * ldc + n,
        "gemm: C too short for {m}x{n}"
    );
    b.check(k, n);
    if let Some(bias) = bias {
        assert!(
            bias.len() >= n,
            "gemm: bias has {} of {n} values",
            bias.len()
        );
    }
    const COLS: usize = 8 * NR;
    let avx512 = cpu::features().avx512f;
    let rows = m.div_ceil(MR) * MR;
    let adata = a.data.slice::<f32>(rows * k);
    let cptr = SharedMut(c.as_mut_ptr());
    let unit = |u: usize| {
        let j0 = u * COLS;
        let nc = COLS.min(n - j0);
        let panels = nc.div_ceil(NR);
        with_scratch(|[bbuf]: &mut [AlignedBuf; 1]| {
            if k == 0 {
                for i in 0..m {
                    // SAFETY: row i, columns [j0, j0 + nc) of C, this unit's alone.
                    let row =
                        unsafe { std::slice::from_raw_parts_mut(cptr.ptr().add(i * ldc + j0), nc) };
                    if beta == Beta::Overwrite {
                        row.fill(0.0);
                    }
                    if let Some(bias) = bias {
                        row.iter_mut().zip(&bias[j0..]).for_each(|(c, b)| *c += b);
                    }
                }
                return;
            }
            let mut p0 = 0;
            while p0 < k {
                let kc = KC.min(k - p0);
                let bpack = bbuf.slice_mut::<f32>(panels * NR * kc);
                for (q, panel) in bpack.chunks_exact_mut(NR * kc).enumerate() {
                    b.pack(p0, kc, j0 + q * NR, NR.min(nc - q * NR), panel);
                }
                let aslice = &adata[rows * p0..rows * (p0 + kc)];
                let accumulate = p0 > 0 || beta == Beta::Accumulate;
                let last = p0 + kc == k;
                for (q, bp) in bpack.chunks_exact(NR * kc).enumerate() {
                    let jj = j0 + q * NR;
                    for (ip, ap) in aslice.chunks_exact(MR * kc).enumerate() {
                        let ii = ip * MR;
                        let out = Out {
                            c: cptr.ptr().wrapping_add(ii * ldc + jj),
                            ldc,
                            mr: MR.min(m - ii),
                            nr: NR.min(n - jj),
                            accumulate,
                            bias: if last {
                                bias.map(|b| b[jj..].as_ptr())
                            } else {
                                None
                            },
                        };
                        // SAFETY: both panels hold `kc` rows; the C block lies inside C (checked
                        // above) in this unit's columns.
                        unsafe { micro(kc, ap.as_ptr(), bp.as_ptr(), out, avx512) };
                    }
                }
                p0 += kc;
            }
        })
    };
    let units = n.div_ceil(COLS);
    if units > 1 && m * n * k >= PARALLEL_MIN_FMAS {
        (0..units).into_par_iter().for_each(unit);
    } else {
        (0..units).for_each(unit);
    }
}
