//! CPU matmul: a packed, cache-blocked GEMM (the BLIS / Goto design) for
//! `C[b] = A[b] @ B[b]`, `A: [M, K]`, `B: [K, N]`, any strides (transposed and broadcast
//! operands are packed straight from their layouts, never copied first).
//!
//! Work split: C is cut into `batch x row part x column part` blocks, one Rayon task each,
//! chosen once per call from the shape and the thread count ([`Split`]): whole matrices when
//! there are enough batches, else as few parts as give every thread the same work, cut along M
//! or N, whichever packs less (cutting M packs B once more per part, cutting N packs A once more
//! per `NC` block). Every task packs its own panels and runs the loop nest below on its block,
//! so there is no synchronisation inside a call; problems under [`SERIAL_FLOPS`] run on the
//! calling thread. Loop nest per block (the BLIS order, with C row-major):
//! ```text
//! for ic in rows step MC:              // A block, reused over all of the block's columns
//!   for pc in 0..K step KC:            // reduction block
//!     pack A[ic.., pc..] into MR-tall row panels      (MC x KC: <= 1 MiB of f32, L2/L3)
//!     for jc in cols step NC:          // B block
//!       pack B[pc.., jc..] into NR-wide column panels (KC x NC: 512 KiB of f32, L2)
//!       for each MR-row A panel        (MR x KC: 12 KiB, stays in L1 ...)
//!         for each NR-col B panel      (... while the B panels stream from L2)
//!           micro-kernel: KC rank-1 updates into MR*NR register accumulators, then
//!           C_tile = acc (first K block) or C_tile += acc
//! ```
//! When the block has more row blocks than column blocks (a tall product), the two outer
//! loops swap (`for jc { for pc { pack B; for ic { pack A; ... } } }`), so that B is packed
//! once per depth block rather than once per row block.
//! Micro-kernels (the [`Micro`] trait), chosen at run time with `is_x86_feature_detected!`:
//! - f32 on AVX-512: 12 x 32 written with intrinsics (24 zmm accumulators; two loads of B and
//!   12 broadcasts of A per 24 FMAs). LLVM does not keep a `[[f32; 32]; 12]` array in registers
//!   (it compiled to scalar code, ~3 GFLOP/s), hence the intrinsics. The B panel streams from
//!   L2, so the kernel asks for it 16 depths (2 KiB) ahead: +3-8% on one thread, which the
//!   hardware prefetcher alone did not give.
//! - everything else: plain Rust over fixed-size arrays (`[[T; NR]; MR]`), which LLVM turns into
//!   vector FMAs when inlined into a `#[target_feature]` function: f32 AVX2 6x16; f64 AVX2 4x8,
//!   AVX-512 8x16; portable 4x8 (mul + add, no FMA call), each checked in the disassembly.
//!
//! When M < 4 the packing is skipped and B's rows stream straight into C's. So it is, with the
//! f32 AVX-512 kernel, for blocks of C at most 64 columns wide (`DIRECT_MAX`) in one K block
//! with B's rows contiguous and `K x N <= 64 x 64` (batched attention-sized products,
//! tall-skinny ones): 12- or 8-row tiles read A and B in place ([`Micro::tile_direct`]), the
//! last partial row panel overlapping the one before.
//!
//! Determinism: each C element is `(blk_0 + blk_1) + ...` over fixed `KC` blocks, each block
//! summed in order of k by one chain of FMAs from zero, whatever the thread count or the split
//! (the split decides which task computes an element; the path it takes, packed, unpacked or
//! M < 4, may follow the block's size, but all three sum alike, and a tested split's bits match).
//! Cost: `2*M*N*K` FLOPs; per task, one operand is packed once and the other
//! `min(ceil(cols/NC), ceil(rows/MC))` times (once each for most shapes); C is written
//! `ceil(K/KC)` times and read one time less.
//! An operand whose panel rows lie along its memory rows (B row-major, A transposed: the
//! weight gradient's `dY^T X`) is packed depth by depth, reading each source row in order
//! ([`pack_by_depth`]); panel by panel it was a cache miss per depth, and the weight
//! gradient's product ran at 112 GFLOP/s on one thread where the others ran at 140-155.

use super::aligned::AlignedVec;
use super::{contiguous_cow, CpuData, CpuStorage, Float};
use crate::backend::matmul::MatmulBackend;
use crate::tensor::Layout;
use crate::{Error, Result};
use rayon::prelude::*;

/// Reduction block (A panel and B panel depth).
const KC: usize = 256;
/// Bytes of B packed at once (`KC x NC`: half the 1 MiB L2, 512 columns of f32).
const NC_BYTES: usize = 512 * 1024;
/// Most bytes of A packed at once (`MC x KC`: 1024 rows of f32). Each `MR x KC` panel of it
/// is read once per B block (then reused from L1), so the block may live in L3.
const MC_BYTES: usize = 1024 * 1024;
/// Blocks of C at most `DIRECT_MAX` wide with K <= KC and `K x DIRECT_MAX` at most
/// `DIRECT_MAX^2` are multiplied unpacked when the micro-kernel can (the f32 AVX-512 one):
/// packing A and B cost as much as 32^3's arithmetic, and A's packing 20% of 65536x64x64's.
const DIRECT_MAX: usize = 64;
/// Below this many FLOPs a call runs on the calling thread: waking the pool costs more.
const SERIAL_FLOPS: usize = 1 << 21;

/// One strided operand: element `(i, j)` of batch `b` is at `off + b*sb + i*s0 + j*s1`.
#[derive(Clone, Copy)]
struct Operand {
    off: usize,
    sb: usize,
    s0: usize,
    s1: usize,
}

/// The problem: `bsz` products `[m, k] @ [k, n]` into a contiguous `[bsz, m, n]` output.
#[derive(Clone, Copy)]
struct Dims {
    bsz: usize,
    m: usize,
    n: usize,
    k: usize,
}

/// The rectangle of C one task computes: batch `bi`, rows `i0..i1`, columns `j0..j1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Block {
    bi: usize,
    i0: usize,
    i1: usize,
    j0: usize,
    j1: usize,
}

/// The output buffer, written by tasks through a raw pointer, each task to its own [`Block`]
/// (blocks never overlap); nothing reads or references the buffer while they run. With a
/// `bias` (`n` elements), `bias[j]` is added to every element of column `j` once its sum
/// over K is complete, tile by tile while the tile is still in L1: the same values as adding
/// it afterwards, without another pass over C (a Linear layer's `x @ W^T + b`).
#[derive(Clone, Copy)]
struct Out<T> {
    c: *mut T,
    bias: Option<*const T>,
}
// SAFETY: tasks write disjoint elements (their blocks), and `T: Send` values cross threads.
unsafe impl<T: Send> Send for Out<T> {}
unsafe impl<T: Send> Sync for Out<T> {}

/// A thread's packing buffers, kept between calls (see [`ScratchPool`]).
struct Scratch<T> {
    apack: AlignedVec<T>,
    bpack: AlignedVec<T>,
}

impl<T: Float> Scratch<T> {
    fn new() -> Self {
        Scratch {
            apack: AlignedVec::new(),
            bpack: AlignedVec::new(),
        }
    }
    /// Both buffers at least these lengths (contents unspecified; packing writes all it reads).
    fn reserve(&mut self, a: usize, b: usize) {
        self.apack.reserve(a);
        self.bpack.reserve(b);
    }
}

/// Dtypes with a per-thread [`Scratch`]: allocating (and page-faulting) the packing buffers
/// on every call cost as much as the arithmetic at 256^3.
trait ScratchPool: Float {
    /// Runs `f` with this thread's scratch (a fresh one if it is already in use: a nested
    /// call on the same thread, while Rayon waits inside an outer one).
    fn with_scratch<R>(f: impl FnOnce(&mut Scratch<Self>) -> R) -> R;
}

macro_rules! scratch_pool {
    ($t:ty) => {
        impl ScratchPool for $t {
            fn with_scratch<R>(f: impl FnOnce(&mut Scratch<$t>) -> R) -> R {
                thread_local! {
                    static POOL: std::cell::Cell<Option<Scratch<$t>>> =
                        const { std::cell::Cell::new(None) };
                }
                let mut s = POOL.with(|p| p.take()).unwrap_or_else(Scratch::new);
                let r = f(&mut s);
                POOL.with(|p| p.set(Some(s)));
                r
            }
        }
    };
}
scratch_pool!(f32);
scratch_pool!(f64);

/// `MR`-row blocks of A per `MC` block, and `NR`-column blocks of B per `NC` block, for `T`.
fn block_sizes<T, const MR: usize, const NR: usize>() -> (usize, usize) {
    let size = std::mem::size_of::<T>();
    let mc = (MC_BYTES / (size * KC) / MR).max(1) * MR;
    let nc = (NC_BYTES / (size * KC) / NR).max(1) * NR;
    (mc, nc)
}

/// Packs rows `i0..i0+mc` x cols `p0..p0+kc` of A into `MR`-row panels: panel `q`,
/// depth `kk`, row `r` at `buf[(q*kc + kk)*MR + r]`; rows past `mc` are zero.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn pack_a<T: Float, const MR: usize>(
    a: &[T],
    base: usize,
    sm: usize,
    sk: usize,
    mc: usize,
    kc: usize,
    buf: &mut [T],
) {
    if sm == 1 {
        // A stored transposed: each depth's rows are contiguous.
        return pack_by_depth::<T, MR>(a, base, sk, mc, kc, buf);
    }
    for q in 0..mc.div_ceil(MR) {
        let panel = &mut buf[q * kc * MR..(q + 1) * kc * MR];
        let rows = MR.min(mc - q * MR);
        if rows < MR {
            panel.fill(T::ZERO);
        }
        if sk == 1 {
            transpose_panel(a, base + q * MR * sm, sm, rows, kc, panel, MR);
        } else {
            for r in 0..rows {
                let row = base + (q * MR + r) * sm;
                for kk in 0..kc {
                    panel[kk * MR + r] = a[row + kk * sk];
                }
            }
        }
    }
}

/// Packs rows `p0..p0+kc` x cols `j0..j0+nc` of B into `NR`-col panels: panel `q`, depth
/// `kk`, col `j` at `buf[(q*kc + kk)*NR + j]`; cols past `nc` are zero.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn pack_b<T: Float, const NR: usize>(
    b: &[T],
    base: usize,
    sk: usize,
    sn: usize,
    kc: usize,
    nc: usize,
    buf: &mut [T],
) {
    if sn == 1 {
        return pack_by_depth::<T, NR>(b, base, sk, nc, kc, buf);
    }
    for q in 0..nc.div_ceil(NR) {
        let panel = &mut buf[q * kc * NR..(q + 1) * kc * NR];
        let cols = NR.min(nc - q * NR);
        if cols < NR {
            panel.fill(T::ZERO);
        }
        if sk == 1 {
            // B stored transposed (a Linear layer's weight): each column is contiguous.
            transpose_panel(b, base + q * NR * sn, sn, cols, kc, panel, NR);
        } else {
            for j in 0..cols {
                let col = base + (q * NR + j) * sn;
                for kk in 0..kc {
                    panel[kk * NR + j] = b[col + kk * sk];
                }
            }
        }
    }
}

/// Packs `kc` source rows of `len` contiguous elements (row `kk` at `base + kk*stride`) into
/// `W`-wide panels: element `j` of row `kk` to `buf[(j/W*kc + kk)*W + j%W]`; a last partial
/// panel's columns past `len` are zero. Row by row, so the source is read in order: panel
/// by panel it was read `W` elements per row at a stride, a cache miss per depth. A full
/// run is copied as a fixed-size array (a few vector moves; a copy of run-time length was a
/// `memmove` call per run, 5% of the char transformer's training step).
#[inline(always)]
fn pack_by_depth<T: Float, const W: usize>(
    src: &[T],
    base: usize,
    stride: usize,
    len: usize,
    kc: usize,
    buf: &mut [T],
) {
    let (full, rest) = (len / W, len % W);
    if rest != 0 {
        buf[full * kc * W..(full + 1) * kc * W].fill(T::ZERO);
    }
    for kk in 0..kc {
        let row = &src[base + kk * stride..base + kk * stride + len];
        for q in 0..full {
            let run: &[T; W] = row[q * W..(q + 1) * W].try_into().expect("W elements");
            let to = (q * kc + kk) * W;
            let out: &mut [T; W] = (&mut buf[to..to + W]).try_into().expect("W elements");
            *out = *run;
        }
        if rest != 0 {
            let to = (full * kc + kk) * W;
            buf[to..to + rest].copy_from_slice(&row[full * W..]);
        }
    }
}

/// `dst[kk*w + r] = src[base + r*stride + kk]` for `r < rows`, `kk < kc`: `rows` contiguous
/// runs of `src` written across a panel `w` wide (packing A stored by rows, or B stored by
/// columns). f32 goes through 4 x 4 SSE transposes (x86-64's baseline), 3-4x faster than the
/// element loop, which is what packing cost next to the small products' arithmetic.
#[inline(always)]
pub(super) fn transpose_panel<T: Float>(
    src: &[T],
    base: usize,
    stride: usize,
    rows: usize,
    kc: usize,
    dst: &mut [T],
    w: usize,
) {
    if rows == 0 || kc == 0 {
        return;
    }
    assert!(base + (rows - 1) * stride + kc <= src.len() && (kc - 1) * w + rows <= dst.len());
    let (r4, k4) = (rows / 4 * 4, kc / 4 * 4);
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() {
        use std::arch::x86_64::*;
        let (sp, dp) = (src.as_ptr().cast::<f32>(), dst.as_mut_ptr().cast::<f32>());
        for r in (0..r4).step_by(4) {
            for kk in (0..k4).step_by(4) {
                // SAFETY: T is f32; rows r..r+4 < rows and depths kk..kk+4 <= kc lie inside
                // both slices (asserted above). SSE is part of the x86-64 baseline.
                unsafe {
                    let p = sp.add(base + r * stride + kk);
                    let x0 = _mm_loadu_ps(p);
                    let x1 = _mm_loadu_ps(p.add(stride));
                    let x2 = _mm_loadu_ps(p.add(2 * stride));
                    let x3 = _mm_loadu_ps(p.add(3 * stride));
                    let t0 = _mm_unpacklo_ps(x0, x1); // a0 b0 a1 b1
                    let t1 = _mm_unpacklo_ps(x2, x3); // c0 d0 c1 d1
                    let t2 = _mm_unpackhi_ps(x0, x1); // a2 b2 a3 b3
                    let t3 = _mm_unpackhi_ps(x2, x3); // c2 d2 c3 d3
                    let q = dp.add(kk * w + r);
                    _mm_storeu_ps(q, _mm_movelh_ps(t0, t1));
                    _mm_storeu_ps(q.add(w), _mm_movehl_ps(t1, t0));
                    _mm_storeu_ps(q.add(2 * w), _mm_movelh_ps(t2, t3));
                    _mm_storeu_ps(q.add(3 * w), _mm_movehl_ps(t3, t2));
                }
            }
        }
        for r in 0..r4 {
            for kk in k4..kc {
                dst[kk * w + r] = src[base + r * stride + kk];
            }
        }
        for r in r4..rows {
            for kk in 0..kc {
                dst[kk * w + r] = src[base + r * stride + kk];
            }
        }
        return;
    }
    let _ = (r4, k4);
    for r in 0..rows {
        let row = &src[base + r * stride..base + r * stride + kc];
        for (kk, &v) in row.iter().enumerate() {
            dst[kk * w + r] = v;
        }
    }
}

/// A register-tile micro-kernel over packed `MR`-row and `NR`-column panels of depth `kc`:
/// `C[0..mr, 0..nr] = acc` when `overwrite`, else `C[0..mr, 0..nr] += acc`, with
/// `acc = sum_kk a[kk] (x) b[kk]`; `c` rows are `ldc` apart.
trait Micro<T> {
    /// # Safety
    /// The CPU must have the instruction set the implementation is compiled for; `a` holds
    /// `kc*MR` and `b` `kc*NR` readable elements; `c[r*ldc + j]` for `r < mr`, `j < nr` is
    /// writable (and initialised unless `overwrite`) and touched by no other thread.
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile(
        kc: usize,
        a: *const T,
        b: *const T,
        c: *mut T,
        ldc: usize,
        mr: usize,
        nr: usize,
        overwrite: bool,
    );

    /// The tile heights [`Micro::tile_direct`] takes (none: it does not exist).
    const DIRECT_ROWS: &'static [usize] = &[];

    /// Like [`Micro::tile`] for a tile of `rows` ([`Micro::DIRECT_ROWS`]) full rows read in
    /// place, unpacked: A's element `(r, kk)` at `a[r*a_rs + kk*a_cs]`, B's `(kk, j)` at
    /// `b[kk*b_rs + j]`, only `j < nr` read. For small products, where packing cost as much as
    /// the arithmetic.
    ///
    /// # Safety
    /// As [`Micro::tile`], with those elements readable; only when `DIRECT`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile_direct(
        _kc: usize,
        _rows: usize,
        _a: (*const T, usize, usize),
        _b: (*const T, usize),
        _c: *mut T,
        _ldc: usize,
        _nr: usize,
        _overwrite: bool,
    ) {
        unreachable!("no direct micro-kernel")
    }
}

/// The portable micro-kernel over fixed-size arrays, which LLVM vectorizes for the target
/// features of the function it is inlined into (`FMA`: fused multiply-adds, only under `fma`).
struct ArrayMicro<const MR: usize, const NR: usize, const FMA: bool>;

impl<T: Float, const MR: usize, const NR: usize, const FMA: bool> Micro<T>
    for ArrayMicro<MR, NR, FMA>
{
    #[inline(always)]
    unsafe fn tile(
        kc: usize,
        a: *const T,
        b: *const T,
        c: *mut T,
        ldc: usize,
        mr: usize,
        nr: usize,
        overwrite: bool,
    ) {
        // SAFETY: the caller guarantees the panel lengths (see `Micro::tile`).
        let (a, b) = unsafe {
            (
                std::slice::from_raw_parts(a, kc * MR),
                std::slice::from_raw_parts(b, kc * NR),
            )
        };
        let acc = micro::<T, MR, NR, FMA>(a, b);
        for (r, accr) in acc.iter().enumerate().take(mr) {
            for (j, &v) in accr.iter().enumerate().take(nr) {
                // SAFETY: r < mr and j < nr: inside the caller's tile.
                unsafe {
                    let o = c.add(r * ldc + j);
                    *o = if overwrite { v } else { *o + v };
                }
            }
        }
    }
}

/// `sum_kk a[kk] (x) b[kk]` over packed panels of depth `a.len() / MR`.
#[inline(always)]
fn micro<T: Float, const MR: usize, const NR: usize, const FMA: bool>(
    a: &[T],
    b: &[T],
) -> [[T; NR]; MR] {
    let mut acc = [[T::ZERO; NR]; MR];
    let (a, _) = a.as_chunks::<MR>();
    let (b, _) = b.as_chunks::<NR>();
    for (av, bv) in a.iter().zip(b) {
        for r in 0..MR {
            let x = av[r];
            for j in 0..NR {
                acc[r][j] = if FMA {
                    x.fused_mul_add(bv[j], acc[r][j])
                } else {
                    acc[r][j] + x * bv[j]
                };
            }
        }
    }
    acc
}

/// One task: the block `blk` of C, written through `out` (`[bsz, m, n]`, contiguous).
///
/// # Safety
/// `K` must suit this CPU, `out` must hold `bsz*m*n` elements, and no other thread may touch
/// `blk`'s elements while this runs.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn run_block<T: Float, const MR: usize, const NR: usize, const FMA: bool, K: Micro<T>>(
    a: &[T],
    oa: Operand,
    b: &[T],
    ob: Operand,
    d: Dims,
    blk: Block,
    out: Out<T>,
    s: &mut Scratch<T>,
) {
    let (n, k) = (d.n, d.k);
    // SAFETY: the batch's `m*n` elements lie inside `out` (caller's contract).
    let c0 = unsafe { out.c.add(blk.bi * d.m * n) };
    // SAFETY: the bias holds `n` elements (see `gemm_with`).
    let bias = out
        .bias
        .map(|p| unsafe { std::slice::from_raw_parts(p, n) });
    let (abase, bbase) = (oa.off + blk.bi * oa.sb, ob.off + blk.bi * ob.sb);
    if d.m < 4 && ob.s1 == 1 {
        // Fewer than 4 rows in all (a matrix-vector product, say): packing would cost more
        // than it saves, so stream B's rows straight into C's (`c[i, :] += a[i, kk] * B[kk, :]`).
        // The test depends only on M, never on the split, so results stay deterministic.
        let w = blk.j1 - blk.j0;
        for i in blk.i0..blk.i1 {
            // SAFETY: row i, columns j0..j1 of this batch: the caller's block.
            let crow = unsafe { std::slice::from_raw_parts_mut(c0.add(i * n + blk.j0), w) };
            crow.fill(T::ZERO);
            for kk in 0..k {
                let av = a[abase + i * oa.s0 + kk * oa.s1];
                let brow = bbase + kk * ob.s0 + blk.j0;
                for (o, &bv) in crow.iter_mut().zip(&b[brow..brow + w]) {
                    *o = if FMA {
                        av.fused_mul_add(bv, *o)
                    } else {
                        *o + av * bv
                    };
                }
            }
            if let Some(bias) = bias {
                add_row(crow, &bias[blk.j0..blk.j1]);
            }
        }
        return;
    }
    let (mc_max, nc_max) = block_sizes::<T, MR, NR>();
    let (rows, cols) = (blk.i1 - blk.i0, blk.j1 - blk.j0);
    let kc_max = KC.min(k);
    s.reserve(
        mc_max.min(rows).div_ceil(MR) * MR * kc_max,
        nc_max.min(cols).div_ceil(NR) * NR * kc_max,
    );
    // Equal row blocks (in whole panels), not a full one and a sliver.
    let mc_max = rows.div_ceil(rows.div_ceil(mc_max)).div_ceil(MR) * MR;
    let direct = K::DIRECT_ROWS.iter().copied().filter(|&h| rows >= h);
    // The tile height that computes the fewest rows (the first, 12, on a tie).
    let tall = direct.min_by_key(|&h| rows.div_ceil(h) * h);
    // Unpacked when each A panel serves at most two tiles and all of B's block fits in L1.
    let unpacked = k <= KC && ob.s1 == 1 && cols <= DIRECT_MAX && k * cols <= DIRECT_MAX.pow(2);
    if let Some(h) = tall.filter(|_| unpacked) {
        // A narrow product in one K block: no packing at all. A last partial row panel is
        // computed as the full panel ending at the last row, overlapping the one before: its
        // shared rows come out bit for bit the same and are simply written twice.
        let starts = (0..rows / h * h)
            .step_by(h)
            .chain((rows % h != 0).then_some(rows - h));
        for i in starts {
            let ap = a[abase + (blk.i0 + i) * oa.s0..].as_ptr();
            for j in (0..cols).step_by(NR) {
                let bp = b[bbase + blk.j0 + j..].as_ptr();
                let nr = NR.min(cols - j);
                // SAFETY: rows blk.i0+i..+h (<= i1) of A over k depths and columns < j1 of B
                // are inside the operands (`gemm_with` checked that both layouts' last
                // elements are); the tile is this block's.
                unsafe {
                    let ct = c0.add((blk.i0 + i) * n + blk.j0 + j);
                    K::tile_direct(k, h, (ap, oa.s0, oa.s1), (bp, ob.s0), ct, n, nr, true);
                    if let Some(bias) = bias {
                        add_to_tile(ct, n, h, &bias[blk.j0 + j..blk.j0 + j + nr]);
                    }
                }
            }
        }
        return;
    }
    // The packed panels against each other: the `mc x nc` block of C at (ic, jc), depths
    // pc..pc + kc. A's block must be in `s.apack` and B's in `s.bpack`.
    let multiply = |s: &Scratch<T>, (ic, mc): (usize, usize), (jc, nc): (usize, usize), pc, kc| {
        for iq in 0..mc.div_ceil(MR) {
            let ap = s.apack[iq * kc * MR..].as_ptr();
            let mr = MR.min(mc - iq * MR);
            for jq in 0..nc.div_ceil(NR) {
                let bp = s.bpack[jq * kc * NR..].as_ptr();
                let nr = NR.min(nc - jq * NR);
                // SAFETY: the panels hold kc*MR and kc*NR elements; the tile's rows
                // ic+iq*MR.. (< i1) and columns jc+jq*NR.. (< j1) are this block's.
                unsafe {
                    let ct = c0.add((ic + iq * MR) * n + jc + jq * NR);
                    K::tile(kc, ap, bp, ct, n, mr, nr, pc == 0);
                    if let Some(bias) = bias.filter(|_| pc + kc == k) {
                        let j = jc + jq * NR;
                        add_to_tile(ct, n, mr, &bias[j..j + nr]);
                    }
                }
            }
        }
    };
    let pack_a_block = |s: &mut Scratch<T>, (ic, mc): (usize, usize), pc, kc| {
        let base = abase + ic * oa.s0 + pc * oa.s1;
        pack_a::<T, MR>(a, base, oa.s0, oa.s1, mc, kc, &mut s.apack);
    };
    let pack_b_block = |s: &mut Scratch<T>, (jc, nc): (usize, usize), pc, kc| {
        let base = bbase + pc * ob.s0 + jc * ob.s1;
        pack_b::<T, NR>(b, base, ob.s0, ob.s1, kc, nc, &mut s.bpack);
    };
    let row_blocks = (blk.i0..blk.i1)
        .step_by(mc_max)
        .map(|ic| (ic, mc_max.min(blk.i1 - ic)));
    let col_blocks = (blk.j0..blk.j1)
        .step_by(nc_max)
        .map(|jc| (jc, nc_max.min(blk.j1 - jc)));
    // Each order packs one operand once per depth block and the other once per block of
    // the first: A outside packs B once per row block, B outside packs A once per column
    // block. The one that repacks less runs: a tall product in one column block (a Linear
    // layer's `[4096, 256] x [256, 1024]` on two threads) packed its transposed weight five
    // times per task with A outside (2-4% of that product's time, docs/PERF.md, session 19).
    // Every C element still sums its depth blocks in ascending order from zero: same bits.
    if cols.div_ceil(nc_max) < rows.div_ceil(mc_max) {
        for jcb in col_blocks {
            for pc in (0..k).step_by(KC) {
                let kc = KC.min(k - pc);
                pack_b_block(s, jcb, pc, kc);
                for icb in row_blocks.clone() {
                    pack_a_block(s, icb, pc, kc);
                    multiply(s, icb, jcb, pc, kc);
                }
            }
        }
    } else {
        for icb in row_blocks {
            for pc in (0..k).step_by(KC) {
                let kc = KC.min(k - pc);
                pack_a_block(s, icb, pc, kc);
                for jcb in col_blocks.clone() {
                    pack_b_block(s, jcb, pc, kc);
                    multiply(s, icb, jcb, pc, kc);
                }
            }
        }
    }
}

/// `row[j] += bias[j]`.
#[inline(always)]
fn add_row<T: Float>(row: &mut [T], bias: &[T]) {
    for (o, &b) in row.iter_mut().zip(bias) {
        *o += b;
    }
}

/// Adds `bias` (`cols` long) to each of the `rows` rows of the tile at `c` (row stride `ldc`).
///
/// # Safety
/// The tile's elements must be valid and this task's own.
#[inline(always)]
unsafe fn add_to_tile<T: Float>(c: *mut T, ldc: usize, rows: usize, bias: &[T]) {
    for r in 0..rows {
        // SAFETY: row r of the caller's tile, `bias.len()` columns.
        add_row(
            unsafe { std::slice::from_raw_parts_mut(c.add(r * ldc), bias.len()) },
            bias,
        );
    }
}

/// How a call cuts C into tasks: every batch into `pm` row parts times `pn` column parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Split {
    /// Rows per part (a multiple of the tile height, except the last part).
    rows: usize,
    /// Columns per part (a multiple of the tile width, except the last part).
    cols: usize,
    pm: usize,
    pn: usize,
}

impl Split {
    /// The split for `threads` threads with `mr x nr` tiles and `mc`/`nc` packing blocks.
    fn choose(d: Dims, threads: usize, (mr, nr): (usize, usize), (mc, nc): (usize, usize)) -> Self {
        let whole = Split {
            rows: d.m,
            cols: d.n,
            pm: 1,
            pn: 1,
        };
        let flops = 2 * d.bsz * d.m * d.n * d.k;
        if threads <= 1 || flops < SERIAL_FLOPS || d.bsz >= 4 * threads {
            return whole;
        }
        // Parts per matrix so that the tasks share out evenly among the threads.
        let parts = threads / gcd(d.bsz, threads);
        let mut best = (usize::MAX, whole);
        for pm in (1..=parts).filter(|&p| parts.is_multiple_of(p)) {
            let Some(split) = Split::new(d, pm, parts / pm, (mr, nr)) else {
                continue; // an empty part: a thread would idle
            };
            let (rows, cols) = (split.rows, split.cols);
            // The largest task's cost, in element copies: about 16 multiply-adds per copy.
            let packs = rows * d.k * cols.div_ceil(nc) + d.k * cols * rows.div_ceil(mc);
            let cost = rows * cols * d.k / 16 + packs;
            if cost < best.0 {
                best = (cost, split);
            }
        }
        best.1
    }

    /// `pm x pn` parts of whole `mr x nr` tiles, or `None` if one would be empty.
    fn new(d: Dims, pm: usize, pn: usize, (mr, nr): (usize, usize)) -> Option<Self> {
        let rows = d.m.div_ceil(pm).div_ceil(mr) * mr;
        let cols = d.n.div_ceil(pn).div_ceil(nr) * nr;
        (rows * (pm - 1) < d.m && cols * (pn - 1) < d.n).then_some(Split { rows, cols, pm, pn })
    }

    /// Blocks in all.
    fn count(self, d: Dims) -> usize {
        d.bsz * self.pm * self.pn
    }

    /// Block `t` of C, in order: batch, row part, column part.
    fn block(self, d: Dims, t: usize) -> Block {
        let per = self.pm * self.pn;
        let (bi, p) = (t / per, t % per);
        let (i0, j0) = ((p / self.pn) * self.rows, (p % self.pn) * self.cols);
        Block {
            bi,
            i0,
            i1: (i0 + self.rows).min(d.m),
            j0,
            j1: (j0 + self.cols).min(d.n),
        }
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Runs `block` over every block of `split` (in parallel unless it is a single block) and
/// returns the filled output.
fn run_split<T: ScratchPool>(
    d: Dims,
    split: Split,
    threads: usize,
    bias: Option<&[T]>,
    block: impl Fn(Block, Out<T>, &mut Scratch<T>) + Sync,
) -> Vec<T> {
    let len = d.bsz * d.m * d.n;
    let mut out: Vec<T> = Vec::with_capacity(len);
    let ptr = Out {
        c: out.as_mut_ptr(),
        bias: bias.map(|b| b.as_ptr()),
    };
    let flops = 2 * len * d.k;
    if threads <= 1 || flops < SERIAL_FLOPS {
        T::with_scratch(|s| {
            for t in 0..split.count(d) {
                block(split.block(d, t), ptr, s);
            }
        });
    } else {
        (0..split.count(d))
            .into_par_iter()
            .for_each(|t| T::with_scratch(|s| block(split.block(d, t), ptr, s)));
    }
    // SAFETY: the blocks tile C exactly (rows 0..m and columns 0..n of every batch), and every
    // block wrote each of its elements (the first K block overwrites, see `run_block`).
    unsafe { out.set_len(len) };
    out
}

/// A dtype's task entry: `(isa, a, a_op, b, b_op, dims, block, out, scratch)`, which runs
/// [`run_block`] with the micro-kernel of `isa`.
type BlockFn<T> =
    unsafe fn(Isa, &[T], Operand, &[T], Operand, Dims, Block, Out<T>, &mut Scratch<T>);

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn block_avx512<T: Float, const MR: usize, const NR: usize>(
    a: &[T],
    oa: Operand,
    b: &[T],
    ob: Operand,
    d: Dims,
    blk: Block,
    out: Out<T>,
    s: &mut Scratch<T>,
) {
    // SAFETY: forwarded contract (see `run_block`).
    unsafe { run_block::<T, MR, NR, true, ArrayMicro<MR, NR, true>>(a, oa, b, ob, d, blk, out, s) }
}

/// The f32 AVX-512 path: 12 x 32 tiles by [`Avx512F32`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn block_avx512_f32(
    a: &[f32],
    oa: Operand,
    b: &[f32],
    ob: Operand,
    d: Dims,
    blk: Block,
    out: Out<f32>,
    s: &mut Scratch<f32>,
) {
    // SAFETY: forwarded contract (see `run_block`).
    unsafe { run_block::<f32, 12, 32, true, Avx512F32>(a, oa, b, ob, d, blk, out, s) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn block_avx2<T: Float, const MR: usize, const NR: usize>(
    a: &[T],
    oa: Operand,
    b: &[T],
    ob: Operand,
    d: Dims,
    blk: Block,
    out: Out<T>,
    s: &mut Scratch<T>,
) {
    // SAFETY: forwarded contract (see `run_block`).
    unsafe { run_block::<T, MR, NR, true, ArrayMicro<MR, NR, true>>(a, oa, b, ob, d, blk, out, s) }
}

/// f32 AVX-512 micro-kernel, 12 x 32: 24 zmm accumulators; per step of k, two 16-lane loads
/// of B and 12 broadcasts of A feed 24 FMAs (vs 13 loads per 12 FMAs for a 12 x 16 tile), so
/// the FMA pipes rather than the load ports set the pace. Written with intrinsics because
/// LLVM does not keep a `[[f32; 32]; 12]` array in registers.
#[cfg(target_arch = "x86_64")]
struct Avx512F32;

#[cfg(target_arch = "x86_64")]
impl Micro<f32> for Avx512F32 {
    #[inline(always)]
    unsafe fn tile(
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        mr: usize,
        nr: usize,
        overwrite: bool,
    ) {
        // SAFETY: forwarded contract (see `Micro::tile`).
        unsafe { micro_avx512_f32_12x32(kc, a, b, c, ldc, mr, nr, overwrite) }
    }

    /// 8-row tiles fit products of 8k rows (32 = 3 x 12 would waste a ninth).
    const DIRECT_ROWS: &'static [usize] = &[12, 8];

    #[inline(always)]
    unsafe fn tile_direct(
        kc: usize,
        rows: usize,
        a: (*const f32, usize, usize),
        b: (*const f32, usize),
        c: *mut f32,
        ldc: usize,
        nr: usize,
        overwrite: bool,
    ) {
        // SAFETY: forwarded contract (see `Micro::tile_direct`).
        unsafe {
            match rows {
                12 => micro_avx512_f32_direct::<12>(&[(0, kc)], a, b, c, ldc, 12, nr, overwrite),
                8 => micro_avx512_f32_direct::<8>(&[(0, kc)], a, b, c, ldc, 8, nr, overwrite),
                _ => unreachable!("direct tiles are 12 or 8 rows"),
            }
        }
    }
}

/// `$depth!(kk)` for `kk` in each run `d0..d1` of `$runs` (in order), four depths per trip:
/// the loop of the kernels that read
/// A in place (`micro_avx512_f32_direct*`). Their rows of A are `a_rs` apart, so each depth's
/// broadcasts need addresses of their own; four depths per trip share them (as displacements)
/// and the loop's counter and branch. Each sum still runs in order of k. The convolution's
/// forward, whose weights these kernels read in place, ran 6-12% faster with it
/// (`conv_passes`, two threads, ResNet-18 and U-Net layers of 256-512 channels). The packed
/// 12 x 32 kernel was measured too: +12-16% in isolation on panels in L1/L2, nothing in whole
/// products (there the panels' arrival, not the loop, sets the pace), so it stays as it is.
#[cfg(target_arch = "x86_64")]
macro_rules! four_depths_per_trip {
    ($runs:expr, $depth:ident) => {{
        for &(d0, d1) in $runs {
            let whole = d0 + (d1 - d0) / 4 * 4;
            for k4 in (d0..whole).step_by(4) {
                $depth!(k4);
                $depth!(k4 + 1);
                $depth!(k4 + 2);
                $depth!(k4 + 3);
            }
            for kk in whole..d1 {
                $depth!(kk);
            }
        }
    }};
}

/// The `12 x 32` accumulators, as `(columns 0..16, columns 16..32)` per row.
#[cfg(target_arch = "x86_64")]
type Acc12x32 = (
    [std::arch::x86_64::__m512; 12],
    [std::arch::x86_64::__m512; 12],
);

/// # Safety
/// See [`Micro::tile`] (with `MR = 12`, `NR = 32`); the CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn micro_avx512_f32_12x32(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    mr: usize,
    nr: usize,
    overwrite: bool,
) {
    use std::arch::x86_64::*;
    const MR: usize = 12;
    const NR: usize = 32;
    /// Depths of B asked for ahead of their use (two cache lines each).
    const PF: usize = 16;
    debug_assert!(mr <= MR && nr <= NR);
    // SAFETY: every pointer below stays inside the panels (kk < kc) or the caller's C tile
    // (rows r < mr, columns < nr under the masks); prefetches never fault, and their
    // addresses, which run past the panel's end, are formed with `wrapping_add`.
    unsafe {
        // Ask for the C tile now, so that it is in L1 when the accumulators are added to it.
        if !overwrite {
            for r in 0..mr {
                _mm_prefetch::<_MM_HINT_T0>(c.add(r * ldc).cast());
                _mm_prefetch::<_MM_HINT_T0>(c.add(r * ldc + nr - 1).cast());
            }
        }
        let mut lo = [_mm512_setzero_ps(); MR];
        let mut hi = [_mm512_setzero_ps(); MR];
        for kk in 0..kc {
            _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add((kk + PF) * NR).cast());
            _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add((kk + PF) * NR + 16).cast());
            let b0 = _mm512_loadu_ps(b.add(kk * NR));
            let b1 = _mm512_loadu_ps(b.add(kk * NR + 16));
            for r in 0..MR {
                let x = _mm512_set1_ps(*a.add(kk * MR + r));
                lo[r] = _mm512_fmadd_ps(x, b0, lo[r]);
                hi[r] = _mm512_fmadd_ps(x, b1, hi[r]);
            }
        }
        store_12x32((lo, hi), c, ldc, mr, nr, overwrite);
    }
}

/// [`micro_avx512_f32_12x32`] on operands read in place (see [`Micro::tile_direct`]), `R`
/// (12 or 8) rows of A at `a_rs` apart, B's rows `b_rs` apart, loaded under masks past `nr`
/// columns.
///
/// # Safety
/// See [`Micro::tile_direct`]; the CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn micro_avx512_f32_direct<const R: usize>(
    depths: &[(usize, usize)],
    (a, a_rs, a_cs): (*const f32, usize, usize),
    (b, b_rs): (*const f32, usize),
    c: *mut f32,
    ldc: usize,
    rows: usize,
    nr: usize,
    overwrite: bool,
) {
    use std::arch::x86_64::*;
    let (m0, m1) = column_masks(nr);
    // SAFETY: rows r < R of A, depths kk < kc and B's columns under the masks are readable
    // (the caller's contract); masked-off lanes are never read.
    unsafe {
        let mut lo = [_mm512_setzero_ps(); 12];
        let mut hi = [_mm512_setzero_ps(); 12];
        // One depth: two loads of B, R broadcasts of A (R rows `a_rs` apart), 2R FMAs.
        macro_rules! depth {
            ($kk:expr) => {{
                let kk = $kk;
                let bk = b.add(kk * b_rs);
                let b0 = _mm512_maskz_loadu_ps(m0, bk);
                let b1 = _mm512_maskz_loadu_ps(m1, bk.add(16));
                let ak = a.add(kk * a_cs);
                for r in 0..R {
                    let x = _mm512_set1_ps(*ak.add(r * a_rs));
                    lo[r] = _mm512_fmadd_ps(x, b0, lo[r]);
                    hi[r] = _mm512_fmadd_ps(x, b1, hi[r]);
                }
            }};
        }
        // One run (a whole depth block): a one-element array, so the loop over runs
        // unrolls away and the depth loop compiles as it would alone.
        if let &[run] = depths {
            four_depths_per_trip!(&[run], depth);
        } else {
            four_depths_per_trip!(depths, depth);
        }
        store_12x32((lo, hi), c, ldc, rows, nr, overwrite);
    }
}

/// Load/store masks for the `nr` valid columns of a 32-wide tile's two halves.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn column_masks(nr: usize) -> (u16, u16) {
    let m0 = if nr >= 16 { 0xffff } else { (1u16 << nr) - 1 };
    let m1 = if nr >= 32 {
        0xffff
    } else if nr > 16 {
        (1u16 << (nr - 16)) - 1
    } else {
        0
    };
    (m0, m1)
}

/// `C = acc` (`overwrite`) or `C += acc` on the `mr x nr` valid part of a 12 x 32 tile.
///
/// # Safety
/// `c[r*ldc + j]`, `r < mr`, `j < nr`, writable (and initialised unless `overwrite`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn store_12x32(
    (lo, hi): Acc12x32,
    c: *mut f32,
    ldc: usize,
    mr: usize,
    nr: usize,
    overwrite: bool,
) {
    use std::arch::x86_64::*;
    const MR: usize = 12;
    const NR: usize = 32;
    // SAFETY: rows r < mr and the columns under the masks are the caller's tile.
    unsafe {
        if mr == MR && nr == NR {
            for r in 0..MR {
                let row = c.add(r * ldc);
                if overwrite {
                    _mm512_storeu_ps(row, lo[r]);
                    _mm512_storeu_ps(row.add(16), hi[r]);
                } else {
                    _mm512_storeu_ps(row, _mm512_add_ps(_mm512_loadu_ps(row), lo[r]));
                    let row1 = row.add(16);
                    _mm512_storeu_ps(row1, _mm512_add_ps(_mm512_loadu_ps(row1), hi[r]));
                }
            }
            return;
        }
        // An edge tile: masked to the `nr` valid columns and the `mr` valid rows.
        let (m0, m1) = column_masks(nr);
        for r in 0..MR {
            if r < mr {
                let row = c.add(r * ldc);
                let (mut v0, mut v1) = (lo[r], hi[r]);
                if !overwrite {
                    v0 = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, row), v0);
                    v1 = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, row.add(16)), v1);
                }
                _mm512_mask_storeu_ps(row, m0, v0);
                _mm512_mask_storeu_ps(row.add(16), m1, v1);
            }
        }
    }
}

/// The instruction set a micro-kernel is compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Isa {
    Avx512,
    Avx2,
    Portable,
}

/// The best instruction set this CPU has for the micro-kernel (detected once).
pub(super) fn detect_isa() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(detect_isa_uncached)
}

pub(super) fn detect_isa_uncached() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
        {
            return Isa::Avx512;
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Isa::Avx2;
        }
    }
    Isa::Portable
}

/// A dtype's `((MR, NR), (MC, NC))` per instruction set.
type SizesFn = fn(Isa) -> ((usize, usize), (usize, usize));

/// The GEMM for one dtype: its task entry and its `(MR, NR)` tile and `(MC, NC)` block sizes
/// on `isa`, which must come from [`detect_isa`] (or name a subset of this CPU's features).
#[allow(clippy::too_many_arguments)]
fn gemm<T: ScratchPool>(
    a: &[T],
    la: &Layout,
    b: &[T],
    lb: &Layout,
    bias: Option<&[T]>,
    block: BlockFn<T>,
    sizes: SizesFn,
    isa: Isa,
) -> Vec<T> {
    gemm_with(a, la, b, lb, bias, block, sizes, isa, None)
}

/// [`gemm`], with the split into `(row parts, column parts)` per matrix forced (for tests).
/// `bias` (`n` elements, if any) is added to every row of every product.
#[allow(clippy::too_many_arguments)]
fn gemm_with<T: ScratchPool>(
    a: &[T],
    la: &Layout,
    b: &[T],
    lb: &Layout,
    bias: Option<&[T]>,
    block: BlockFn<T>,
    sizes: SizesFn,
    isa: Isa,
    parts: Option<(usize, usize)>,
) -> Vec<T> {
    let d = Dims {
        bsz: la.dims()[0],
        m: la.dims()[1],
        n: lb.dims()[2],
        k: la.dims()[2],
    };
    assert!(bias.is_none_or(|b| b.len() == d.n), "gemm: bias length");
    if d.bsz * d.m * d.n == 0 || d.k == 0 {
        let mut c = vec![T::ZERO; d.bsz * d.m * d.n];
        if let Some(bias) = bias {
            c.chunks_exact_mut(d.n).for_each(|row| add_row(row, bias));
        }
        return c;
    }
    let op = |l: &Layout| Operand {
        off: l.offset(),
        sb: l.strides()[0],
        s0: l.strides()[1],
        s1: l.strides()[2],
    };
    let (oa, ob) = (op(la), op(lb));
    // Every element either layout addresses lies inside its buffer (the unpacked path reads
    // them through raw pointers).
    let last = |o: Operand, rows: usize, cols: usize| {
        o.off + (d.bsz - 1) * o.sb + (rows - 1) * o.s0 + (cols - 1) * o.s1
    };
    assert!(last(oa, d.m, d.k) < a.len() && last(ob, d.k, d.n) < b.len());
    let threads = rayon::current_num_threads();
    let (tile, blocks) = sizes(isa);
    let split = match parts {
        Some((pm, pn)) => Split::new(d, pm, pn, tile).expect("a split without empty parts"),
        None => Split::choose(d, threads, tile, blocks),
    };
    run_split(d, split, threads, bias, |blk, out, s| {
        // SAFETY: `isa` suits this CPU (see above), `out` holds the whole output, and the
        // split's blocks are disjoint.
        unsafe { block(isa, a, oa, b, ob, d, blk, out, s) }
    })
}

macro_rules! block_fn {
    ($name:ident, $sizes:ident, $t:ty, $mr512:expr, $nr512:expr, $mr2:expr, $nr2:expr, $avx512:expr) => {
        /// # Safety
        /// See [`run_block`]; `isa` must suit this CPU.
        #[allow(clippy::too_many_arguments)]
        unsafe fn $name(
            isa: Isa,
            a: &[$t],
            oa: Operand,
            b: &[$t],
            ob: Operand,
            d: Dims,
            blk: Block,
            out: Out<$t>,
            s: &mut Scratch<$t>,
        ) {
            // SAFETY: forwarded contract; `isa` was checked by `detect_isa`.
            unsafe {
                match isa {
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx512 => $avx512(a, oa, b, ob, d, blk, out, s),
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx2 => block_avx2::<$t, $mr2, $nr2>(a, oa, b, ob, d, blk, out, s),
                    _ => run_block::<$t, 4, 8, false, ArrayMicro<4, 8, false>>(
                        a, oa, b, ob, d, blk, out, s,
                    ),
                }
            }
        }

        /// `((MR, NR), (MC, NC))` of the kernel `isa` runs for this dtype.
        fn $sizes(isa: Isa) -> ((usize, usize), (usize, usize)) {
            match isa {
                Isa::Avx512 => (($mr512, $nr512), block_sizes::<$t, $mr512, $nr512>()),
                Isa::Avx2 => (($mr2, $nr2), block_sizes::<$t, $mr2, $nr2>()),
                Isa::Portable => ((4, 8), block_sizes::<$t, 4, 8>()),
            }
        }
    };
}
block_fn!(block_f32, sizes_f32, f32, 12, 32, 6, 16, block_avx512_f32);
block_fn!(
    block_f64,
    sizes_f64,
    f64,
    8,
    16,
    4,
    8,
    block_avx512::<f64, 8, 16>
);

/// One of the GEMM's register-tile micro-kernels as a plain function, for callers that pack
/// their own panels (the convolution's implicit GEMM packs straight from NCHW images).
/// Panels use the GEMM's layout: A `a[kk*mr + r]`, B `b[kk*nr + j]`, `kk < kc`.
#[derive(Clone, Copy)]
pub(super) struct MicroKernel<T> {
    /// Rows of the register tile (height of an A panel).
    pub mr: usize,
    /// Columns of the register tile (width of a B panel).
    pub nr: usize,
    tile: MicroFn<T>,
    /// Heights of the tiles [`MicroKernel::tile_rows_in_place`] takes, tallest first (empty:
    /// this kernel has none, and A must be packed).
    pub in_place_rows: &'static [usize],
    rows_in_place: Option<RowsInPlaceFn<T>>,
    rows_flipped: Option<RowsFlippedFn<T>>,
    panel_depths: Option<PanelDepthsFn<T>>,
}

type MicroFn<T> = unsafe fn(usize, &[T], &[T], &mut [T], usize, usize, usize);
type PanelDepthsFn<T> = unsafe fn(&[(usize, usize)], &[T], &[T], &mut [T], usize, usize, usize);
type RowsInPlaceFn<T> =
    unsafe fn(&[(usize, usize)], usize, &[T], usize, &[T], &mut [T], usize, usize, bool);
type RowsFlippedFn<T> =
    unsafe fn(&[(usize, usize)], usize, usize, (&[T], usize), &[T], &mut [T], usize, usize, bool);

impl<T> MicroKernel<T> {
    /// `c[r*ldc + j] += sum_{kk < kc} a[kk*mr + r] * b[kk*nr + j]` for `r < rows`, `j < cols`.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub fn tile(
        &self,
        kc: usize,
        a: &[T],
        b: &[T],
        c: &mut [T],
        ldc: usize,
        rows: usize,
        cols: usize,
    ) {
        assert!(a.len() >= kc * self.mr && b.len() >= kc * self.nr);
        assert!(rows <= self.mr && cols <= self.nr);
        assert!(rows == 0 || c.len() >= (rows - 1) * ldc + cols);
        // SAFETY: `tile` was picked by `PackedFloat::micro_kernel` for an instruction set this
        // CPU has (the `Isa` comes from `detect_isa`), and the bounds were checked above.
        unsafe { (self.tile)(kc, a, b, c, ldc, rows, cols) }
    }

    /// Whether [`MicroKernel::tile_depths`] and the depth runs of
    /// [`MicroKernel::tile_rows_in_place`] exist for this dtype and instruction set (f32 on
    /// AVX-512).
    pub fn takes_depth_runs(&self) -> bool {
        self.panel_depths.is_some() && self.rows_in_place.is_some()
    }

    /// `c[r*ldc + j] += acc` as [`MicroKernel::tile`] computes it, over the depths in the
    /// runs `depths` alone (see [`MicroKernel::tile_rows_in_place`]): the same sums as `tile`
    /// where B's other rows are zero.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub fn tile_depths(
        &self,
        depths: &[(usize, usize)],
        a: &[T],
        b: &[T],
        c: &mut [T],
        ldc: usize,
        rows: usize,
        cols: usize,
    ) {
        let f = self.panel_depths.expect("no depth runs for this kernel");
        let end = depth_runs_end(depths);
        assert!(a.len() >= end * self.mr && b.len() >= end * self.nr);
        assert!(rows <= self.mr && cols <= self.nr);
        assert!(rows == 0 || c.len() >= (rows - 1) * ldc + cols);
        // SAFETY: `f` was picked with `tile` for an instruction set this CPU has, and the
        // bounds were checked above.
        unsafe { f(depths, a, b, c, ldc, rows, cols) }
    }

    /// `c[r*ldc + j] = acc` (`overwrite`) or `+= acc`, `acc = sum_{kk} a[r*a_rs + kk] *
    /// b[kk*nr + j]` over the depths `kk` in the runs `depths` (increasing, each `d0..d1`; one
    /// run `0..kc` for a whole depth block), for `r < rows` (one of
    /// [`MicroKernel::in_place_rows`]), `j < cols`: A's rows read in place (each contiguous in
    /// depth), B a packed panel. Sums exactly as [`MicroKernel::tile`] does, without packing
    /// A: for operands such as a convolution's weights, packed afresh on every call. Depths
    /// left out of the runs are skipped: where B's rows there are zeros (a convolution's
    /// padding), the same sums to the bit, `fma(a, 0, s) = s`, for fewer FMAs; no runs at all
    /// give `acc = 0`.
    #[allow(clippy::too_many_arguments)]
    pub fn tile_rows_in_place(
        &self,
        depths: &[(usize, usize)],
        rows: usize,
        (a, a_rs): (&[T], usize),
        b: &[T],
        c: &mut [T],
        ldc: usize,
        cols: usize,
        overwrite: bool,
    ) {
        let f = self.rows_in_place.expect("no in-place row tiles");
        let end = depth_runs_end(depths);
        assert!(self.in_place_rows.contains(&rows));
        assert!(a.len() >= (rows - 1) * a_rs + end && b.len() >= end * self.nr);
        assert!(cols <= self.nr && c.len() >= (rows - 1) * ldc + cols);
        // SAFETY: `f` was picked with `tile` for an instruction set this CPU has, and the
        // bounds were checked above.
        unsafe { f(depths, rows, a, a_rs, b, c, ldc, cols, overwrite) }
    }

    /// Whether [`MicroKernel::tile_rows_flipped`] exists for this dtype and instruction set
    /// (f32 on AVX-512, with the in-place row tiles).
    pub fn takes_flipped_rows(&self) -> bool {
        self.rows_flipped.is_some()
    }

    /// [`MicroKernel::tile_rows_in_place`] with A the flipped, transposed weights of a 3x3
    /// convolution read where they lie in `W [C_out, C_in, 3, 3]` (a stride-1 input gradient
    /// is the forward convolution of `dy` by them): row `r` (an input channel), depth
    /// `d = co*9 + t` (an output channel and a tap) is `a[co*a_cs + r*9 + 8 - t]`, with
    /// `a_cs = C_in * 9`. The depths are those of the B block, `k0` its first depth's
    /// (`d = k0 + kk` for B's row `kk`). Sums exactly as [`MicroKernel::tile`] does on the
    /// packed panels of those weights (`WeightRows::flipped`), so the same values, without
    /// that copy of `W` (9.4 MB per call at 512 channels).
    #[allow(clippy::too_many_arguments)]
    pub fn tile_rows_flipped(
        &self,
        depths: &[(usize, usize)],
        rows: usize,
        k0: usize,
        (a, a_cs): (&[T], usize),
        b: &[T],
        c: &mut [T],
        ldc: usize,
        cols: usize,
        overwrite: bool,
    ) {
        let f = self.rows_flipped.expect("no flipped row tiles");
        let end = depth_runs_end(depths);
        assert!(self.in_place_rows.contains(&rows));
        assert!(end == 0 || a.len() >= (k0 + end - 1) / 9 * a_cs + rows * 9);
        assert!(b.len() >= end * self.nr);
        assert!(cols <= self.nr && c.len() >= (rows - 1) * ldc + cols);
        // SAFETY: `f` was picked with `tile` for an instruction set this CPU has, and the
        // bounds were checked above: the largest offset read is `co*a_cs + (rows-1)*9 + 8`
        // for the last depth's `co`.
        unsafe { f(depths, rows, k0, (a, a_cs), b, c, ldc, cols, overwrite) }
    }
}

/// The end of the last depth run, once the runs are checked to be increasing and disjoint.
fn depth_runs_end(depths: &[(usize, usize)]) -> usize {
    assert!(depths.iter().all(|&(d0, d1)| d0 <= d1));
    assert!(depths.windows(2).all(|w| w[0].1 <= w[1].0));
    depths.last().map_or(0, |d| d.1)
}

/// # Safety
/// The CPU must have AVX-512F; `rows` is 12 or 8 and the bounds of
/// [`MicroKernel::tile_rows_in_place`] hold.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_in_place_avx512_f32(
    depths: &[(usize, usize)],
    rows: usize,
    a: &[f32],
    a_rs: usize,
    b: &[f32],
    c: &mut [f32],
    ldc: usize,
    nr: usize,
    overwrite: bool,
) {
    let (a, b, c) = ((a.as_ptr(), a_rs, 1), (b.as_ptr(), 32), c.as_mut_ptr());
    // SAFETY: forwarded contract (checked by `MicroKernel::tile_rows_in_place`).
    unsafe {
        match (rows, nr <= 16) {
            (12, false) => micro_avx512_f32_direct::<12>(depths, a, b, c, ldc, 12, nr, overwrite),
            (8, false) => micro_avx512_f32_direct::<8>(depths, a, b, c, ldc, 8, nr, overwrite),
            (12, true) => micro_avx512_f32_direct_16::<12>(depths, a, b, c, ldc, 12, nr, overwrite),
            (8, true) => micro_avx512_f32_direct_16::<8>(depths, a, b, c, ldc, 8, nr, overwrite),
            _ => unreachable!("in-place row tiles are 12 or 8 rows"),
        }
    }
}

/// # Safety
/// The CPU must have AVX-512F; `rows` is 12 or 8 and the bounds of
/// [`MicroKernel::tile_rows_flipped`] hold.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_flipped_avx512_f32(
    depths: &[(usize, usize)],
    rows: usize,
    k0: usize,
    (a, a_cs): (&[f32], usize),
    b: &[f32],
    c: &mut [f32],
    ldc: usize,
    nr: usize,
    overwrite: bool,
) {
    let (a, b, c) = ((a.as_ptr(), a_cs), b.as_ptr(), c.as_mut_ptr());
    // SAFETY: forwarded contract (checked by `MicroKernel::tile_rows_flipped`).
    unsafe {
        match (rows, nr <= 16) {
            (12, false) => {
                micro_avx512_f32_flipped::<12, 2>(depths, k0, a, b, c, ldc, nr, overwrite)
            }
            (8, false) => micro_avx512_f32_flipped::<8, 2>(depths, k0, a, b, c, ldc, nr, overwrite),
            (12, true) => {
                micro_avx512_f32_flipped::<12, 1>(depths, k0, a, b, c, ldc, nr, overwrite)
            }
            (8, true) => micro_avx512_f32_flipped::<8, 1>(depths, k0, a, b, c, ldc, nr, overwrite),
            _ => unreachable!("in-place row tiles are 12 or 8 rows"),
        }
    }
}

/// The `R x 32` (`V = 2`) or `R x 16` (`V = 1`) tile of [`MicroKernel::tile_rows_flipped`]:
/// per depth two (one) loads of B and `R` broadcasts of A, one output channel's 9 taps at a
/// time. The 9 taps of a channel share one address, `a + co*a_cs + 8`: tap `t` of row `r`
/// lies `r*9 - t` from it and its B row `t*32` past the channel's first, all displacements
/// fixed at compile time (the A of the packed panels is rewritten per call instead; a
/// division per depth, tried in session 26, spilled the accumulators). Runs that start or end
/// inside a channel take its taps one by one. Each sum is one chain of FMAs in depth order,
/// as in the other kernels.
///
/// # Safety
/// See [`MicroKernel::tile_rows_flipped`]; the CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn micro_avx512_f32_flipped<const R: usize, const V: usize>(
    depths: &[(usize, usize)],
    k0: usize,
    (a, a_cs): (*const f32, usize),
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    nr: usize,
    overwrite: bool,
) {
    use std::arch::x86_64::*;
    const TAPS: usize = 9;
    const NR: usize = 32;
    let (m0, m1) = column_masks(nr);
    // SAFETY: rows r < R of A at the depths of the runs, B's rows kk < end of the runs under
    // the masks: the caller's contract; masked-off lanes are never read.
    unsafe {
        let mut lo = [_mm512_setzero_ps(); 12];
        let mut hi = [_mm512_setzero_ps(); 12];
        // One depth: tap `t` of the output channel whose B rows start at `bk` and whose
        // weights start at `base - 8` (`a + co*a_cs`): tap `t` of row `r` is `base + r*9 - t`.
        macro_rules! depth {
            ($base:expr, $bk:expr, $t:expr) => {{
                let (base, bk, t): (*const f32, *const f32, usize) = ($base, $bk, $t);
                let brow = bk.wrapping_add(t * NR);
                let b0 = _mm512_maskz_loadu_ps(m0, brow);
                let b1 = if V == 2 {
                    _mm512_maskz_loadu_ps(m1, brow.add(16))
                } else {
                    _mm512_setzero_ps()
                };
                for r in 0..R {
                    let x = _mm512_set1_ps(*base.add(r * TAPS).sub(t));
                    lo[r] = _mm512_fmadd_ps(x, b0, lo[r]);
                    if V == 2 {
                        hi[r] = _mm512_fmadd_ps(x, b1, hi[r]);
                    }
                }
            }};
        }
        for &(d0, d1) in depths {
            let mut kk = d0;
            while kk < d1 {
                let (co, t0) = ((k0 + kk) / TAPS, (k0 + kk) % TAPS);
                let t1 = TAPS.min(t0 + (d1 - kk));
                let base = a.add(co * a_cs + TAPS - 1);
                // B's row of the channel's tap 0 (before the block's start when the block
                // opens inside the channel: only its taps from t0 are read).
                let bk = b.wrapping_add(kk * NR).wrapping_sub(t0 * NR);
                if t0 == 0 && t1 == TAPS {
                    depth!(base, bk, 0);
                    depth!(base, bk, 1);
                    depth!(base, bk, 2);
                    depth!(base, bk, 3);
                    depth!(base, bk, 4);
                    depth!(base, bk, 5);
                    depth!(base, bk, 6);
                    depth!(base, bk, 7);
                    depth!(base, bk, 8);
                } else {
                    for t in t0..t1 {
                        depth!(base, bk, t);
                    }
                }
                kk += t1 - t0;
            }
        }
        store_12x32((lo, hi), c, ldc, R, nr, overwrite);
    }
}

/// `c += acc` over the depth runs of a packed `12 x 32` panel pair (A `a[kk*12 + r]`, B
/// `b[kk*32 + j]`): the in-place kernels with A's rows 1 apart and its depths 12 apart, which
/// sum exactly as [`micro_avx512_f32_12x32`] does.
///
/// # Safety
/// The CPU must have AVX-512F; the bounds of [`MicroKernel::tile_depths`] hold.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn panel_depths_avx512_f32(
    depths: &[(usize, usize)],
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    ldc: usize,
    rows: usize,
    nr: usize,
) {
    let (a, b, c) = ((a.as_ptr(), 1, 12), (b.as_ptr(), 32), c.as_mut_ptr());
    // SAFETY: forwarded contract (checked by `MicroKernel::tile_depths`); rows past `rows`
    // are read from the panel (zero padding) but never stored.
    unsafe {
        if nr <= 16 {
            micro_avx512_f32_direct_16::<12>(depths, a, b, c, ldc, rows, nr, false)
        } else {
            micro_avx512_f32_direct::<12>(depths, a, b, c, ldc, rows, nr, false)
        }
    }
}

/// [`micro_avx512_f32_direct`] for at most 16 columns: one accumulator per row, half the
/// FMAs, for the last panel of a product whose width is not a multiple of 32 (ResNet-18's
/// 7x7 maps at batch 2: 98 columns, 3 panels and 2 columns) or one only 16 wide. Each sum is
/// the same chain of FMAs as in the 32-wide tile, so the results are the same bits.
///
/// # Safety
/// See [`Micro::tile_direct`] with `nr <= 16`; the CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn micro_avx512_f32_direct_16<const R: usize>(
    depths: &[(usize, usize)],
    (a, a_rs, a_cs): (*const f32, usize, usize),
    (b, b_rs): (*const f32, usize),
    c: *mut f32,
    ldc: usize,
    rows: usize,
    nr: usize,
    overwrite: bool,
) {
    use std::arch::x86_64::*;
    debug_assert!(nr <= 16);
    let (m0, _) = column_masks(nr);
    // SAFETY: rows r < R of A, depths kk < kc and B's columns under the mask are readable
    // (the caller's contract); masked-off lanes are never read or written.
    unsafe {
        let mut lo = [_mm512_setzero_ps(); 12];
        macro_rules! depth {
            ($kk:expr) => {{
                let kk = $kk;
                let b0 = _mm512_maskz_loadu_ps(m0, b.add(kk * b_rs));
                let ak = a.add(kk * a_cs);
                for (r, acc) in lo.iter_mut().enumerate().take(R) {
                    *acc = _mm512_fmadd_ps(_mm512_set1_ps(*ak.add(r * a_rs)), b0, *acc);
                }
            }};
        }
        // One run (a whole depth block): a one-element array, so the loop over runs
        // unrolls away and the depth loop compiles as it would alone.
        if let &[run] = depths {
            four_depths_per_trip!(&[run], depth);
        } else {
            four_depths_per_trip!(depths, depth);
        }
        store_12x32((lo, [_mm512_setzero_ps(); 12]), c, ldc, rows, nr, overwrite);
    }
}

/// # Safety
/// Only the CPU features of the `#[target_feature]` functions it wraps are assumed.
unsafe fn micro_portable<T: Float, const MR: usize, const NR: usize>(
    kc: usize,
    a: &[T],
    b: &[T],
    c: &mut [T],
    ldc: usize,
    mr: usize,
    nr: usize,
) {
    let (a, b, c) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
    // SAFETY: `MicroKernel::tile` checked the bounds; the features are the caller's promise.
    unsafe { <ArrayMicro<MR, NR, false> as Micro<T>>::tile(kc, a, b, c, ldc, mr, nr, false) }
}

/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn micro_avx2<T: Float, const MR: usize, const NR: usize>(
    kc: usize,
    a: &[T],
    b: &[T],
    c: &mut [T],
    ldc: usize,
    mr: usize,
    nr: usize,
) {
    let (a, b, c) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
    // SAFETY: `MicroKernel::tile` checked the bounds; the features are the caller's promise.
    unsafe { <ArrayMicro<MR, NR, true> as Micro<T>>::tile(kc, a, b, c, ldc, mr, nr, false) }
}

/// # Safety
/// The CPU must have AVX-512F, AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn micro_avx512<T: Float, const MR: usize, const NR: usize>(
    kc: usize,
    a: &[T],
    b: &[T],
    c: &mut [T],
    ldc: usize,
    mr: usize,
    nr: usize,
) {
    let (a, b, c) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
    // SAFETY: `MicroKernel::tile` checked the bounds; the features are the caller's promise.
    unsafe { <ArrayMicro<MR, NR, true> as Micro<T>>::tile(kc, a, b, c, ldc, mr, nr, false) }
}

/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn micro_avx512_f32(
    kc: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    ldc: usize,
    mr: usize,
    nr: usize,
) {
    let (a, b, c) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
    // SAFETY: `MicroKernel::tile` checked the bounds; the features are the caller's promise.
    unsafe { micro_avx512_f32_12x32(kc, a, b, c, ldc, mr, nr, false) }
}

/// The dtypes with a packed GEMM: their micro-kernels and their whole GEMM, per instruction set.
pub(super) trait PackedFloat: Float {
    /// The micro-kernel the GEMM uses for this dtype on `isa` (the same tile shapes).
    fn micro_kernel(isa: Isa) -> MicroKernel<Self>;
    /// The batched GEMM `[B, M, K] @ [B, K, N]` on strided operands, plus `bias` (`[N]`) on
    /// every row if given (see [`gemm`]).
    fn gemm(
        a: &[Self],
        la: &Layout,
        b: &[Self],
        lb: &Layout,
        bias: Option<&[Self]>,
        isa: Isa,
    ) -> Vec<Self>;
}

macro_rules! packed_float {
    ($t:ty, $block:ident, $sizes:ident, $avx512:expr, $mr512:expr, $nr512:expr, $mr2:expr, $nr2:expr, $in_place:expr, $flipped:expr, $panel_depths:expr) => {
        impl PackedFloat for $t {
            fn micro_kernel(isa: Isa) -> MicroKernel<$t> {
                let (mr, nr, tile): (usize, usize, MicroFn<$t>) = match isa {
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx512 => ($mr512, $nr512, $avx512),
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx2 => ($mr2, $nr2, micro_avx2::<$t, $mr2, $nr2>),
                    _ => (4, 8, micro_portable::<$t, 4, 8>),
                };
                let in_place: Option<(&'static [usize], RowsInPlaceFn<$t>)> = match isa {
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx512 => $in_place,
                    _ => None,
                };
                let rows_flipped: Option<RowsFlippedFn<$t>> = match isa {
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx512 => $flipped,
                    _ => None,
                };
                let panel_depths: Option<PanelDepthsFn<$t>> = match isa {
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx512 => $panel_depths,
                    _ => None,
                };
                MicroKernel {
                    mr,
                    nr,
                    tile,
                    in_place_rows: in_place.map_or(&[], |(rows, _)| rows),
                    rows_in_place: in_place.map(|(_, f)| f),
                    rows_flipped,
                    panel_depths,
                }
            }
            fn gemm(
                a: &[$t],
                la: &Layout,
                b: &[$t],
                lb: &Layout,
                bias: Option<&[$t]>,
                isa: Isa,
            ) -> Vec<$t> {
                gemm(a, la, b, lb, bias, $block, $sizes, isa)
            }
        }
    };
}
packed_float!(
    f32,
    block_f32,
    sizes_f32,
    micro_avx512_f32,
    12,
    32,
    6,
    16,
    Some((Avx512F32::DIRECT_ROWS, rows_in_place_avx512_f32)),
    Some(rows_flipped_avx512_f32),
    Some(panel_depths_avx512_f32)
);
packed_float!(
    f64,
    block_f64,
    sizes_f64,
    micro_avx512::<f64, 8, 16>,
    8,
    16,
    4,
    8,
    None,
    None,
    None
);

impl MatmulBackend for CpuStorage {
    fn matmul(
        &self,
        lhs_layout: &Layout,
        rhs: &Self,
        rhs_layout: &Layout,
        bias: Option<(&Self, &Layout)>,
    ) -> Result<Self> {
        let (da, db) = (lhs_layout.dims(), rhs_layout.dims());
        if da.len() != 3 || db.len() != 3 || da[0] != db[0] || da[2] != db[1] {
            return Err(Error::ShapeMismatch {
                op: "matmul",
                lhs: lhs_layout.shape().clone(),
                rhs: rhs_layout.shape().clone(),
            });
        }
        /// The bias as a dense slice of `T` (gathered if strided).
        fn dense<'a, T: crate::tensor::WithDType + Send + Sync>(
            bias: Option<(&'a CpuStorage, &Layout)>,
        ) -> Result<Option<std::borrow::Cow<'a, [T]>>> {
            bias.map(|(b, l)| Ok(contiguous_cow(b.as_slice::<T>("matmul")?, l)))
                .transpose()
        }
        let data = match (self.data(), rhs.data()) {
            (CpuData::F32(a), CpuData::F32(b)) => {
                let bias = dense::<f32>(bias)?;
                CpuData::F32(f32::gemm(
                    a,
                    lhs_layout,
                    b,
                    rhs_layout,
                    bias.as_deref(),
                    detect_isa(),
                ))
            }
            (CpuData::F64(a), CpuData::F64(b)) => {
                let bias = dense::<f64>(bias)?;
                CpuData::F64(f64::gemm(
                    a,
                    lhs_layout,
                    b,
                    rhs_layout,
                    bias.as_deref(),
                    detect_isa(),
                ))
            }
            (d, _) => {
                return Err(Error::UnsupportedDType {
                    op: "matmul",
                    dtype: d.dtype_of(),
                    expected: "f32 or f64",
                })
            }
        };
        Ok(CpuStorage::new(data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Shape;

    /// Every micro-kernel this CPU can run (not only the one `detect_isa` picks) against a
    /// naive loop, on odd sizes with a transposed left operand.
    #[test]
    fn every_isa_matches_naive() {
        let mut isas = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                isas.push(Isa::Avx2);
            }
            if detect_isa_uncached() == Isa::Avx512 {
                isas.push(Isa::Avx512);
            }
        }
        for &(m, k, n) in &[
            (1, 1, 1),
            (7, 33, 65),
            (65, 300, 33),
            (129, 7, 129),
            (3, 5, 1000),
            // 50 = 32 + 18 columns: a partial second half of the 12 x 32 AVX-512 tile.
            (13, 9, 50),
        ] {
            // a stored transposed: [K, M] memory read as [1, M, K] with strides (0, 1, M).
            let av: Vec<f64> = (0..m * k)
                .map(|i| ((i * 7919) % 23) as f64 - 11.0)
                .collect();
            let bv: Vec<f64> = (0..k * n)
                .map(|i| ((i * 104729) % 19) as f64 - 9.0)
                .collect();
            let la = Layout::new(Shape::new(vec![1, m, k]), vec![0, 1, m], 0);
            let lb = Layout::contiguous([1, k, n]);
            let mut want = vec![0.0; m * n];
            for i in 0..m {
                for j in 0..n {
                    want[i * n + j] = (0..k).map(|p| av[p * m + i] * bv[p * n + j]).sum();
                }
            }
            let (a32, b32): (Vec<f32>, Vec<f32>) = (
                av.iter().map(|&v| v as f32).collect(),
                bv.iter().map(|&v| v as f32).collect(),
            );
            for &isa in &isas {
                // Small integers: exact in both precisions.
                assert_eq!(
                    f64::gemm(&av, &la, &bv, &lb, None, isa),
                    want,
                    "{isa:?} f64 {m}x{k}x{n}"
                );
                let got = f32::gemm(&a32, &la, &b32, &lb, None, isa);
                let got: Vec<f64> = got.iter().map(|&v| v as f64).collect();
                assert_eq!(got, want, "{isa:?} f32 {m}x{k}x{n}");
            }
        }
    }

    /// The instruction sets this CPU can run, the portable one first.
    fn isas() -> Vec<Isa> {
        let mut isas = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                isas.push(Isa::Avx2);
            }
            if detect_isa_uncached() == Isa::Avx512 {
                isas.push(Isa::Avx512);
            }
        }
        isas
    }

    /// An operand's storage and layout: `[bsz, rows, cols]` read from memory that holds it
    /// transposed (`[bsz, cols, rows]`) or not, shared by every batch (`broadcast`) or not,
    /// after an offset of 3 elements; values are reproducible non-integers in [-1, 1).
    fn operand(
        bsz: usize,
        rows: usize,
        cols: usize,
        transposed: bool,
        broadcast: bool,
        seed: usize,
    ) -> (Vec<f64>, Layout) {
        let stored = if broadcast { 1 } else { bsz };
        let data = (0..3 + stored * rows * cols)
            .map(|i| (((i + seed) * 2654435761) % 1000) as f64 / 500.0 - 1.0 + 1.0 / 1024.0)
            .collect();
        let sb = if broadcast { 0 } else { rows * cols };
        let (s0, s1) = if transposed { (1, rows) } else { (cols, 1) };
        let layout = Layout::new(Shape::new(vec![bsz, rows, cols]), vec![sb, s0, s1], 3);
        (data, layout)
    }

    fn naive(a: &[f64], la: &Layout, b: &[f64], lb: &Layout) -> Vec<f64> {
        let (bsz, m, k, n) = (la.dims()[0], la.dims()[1], la.dims()[2], lb.dims()[2]);
        let at = |l: &Layout, bi: usize, i: usize, j: usize| {
            l.offset() + bi * l.strides()[0] + i * l.strides()[1] + j * l.strides()[2]
        };
        let mut out = vec![0.0; bsz * m * n];
        for bi in 0..bsz {
            for i in 0..m {
                for j in 0..n {
                    out[(bi * m + i) * n + j] = (0..k)
                        .map(|p| a[at(la, bi, i, p)] * b[at(lb, bi, p, j)])
                        .sum();
                }
            }
        }
        out
    }

    /// Every instruction set, every way of cutting C into tasks, and every operand layout
    /// (transposed A or B, a broadcast B, batches) on odd shapes that cross the tile, `KC`,
    /// `MC` and `NC` edges and take the M < 4 and the unpacked (12- and 8-row, overlapping)
    /// paths: close to an f64 reference, and bit for bit
    /// the same whatever the split (the determinism the module promises).
    #[test]
    fn every_split_layout_and_isa_matches_naive() {
        // (batch, m, k, n)
        let shapes = [
            (1, 1, 1, 1),
            (1, 13, 37, 300),
            (1, 97, 513, 33),
            (3, 2, 5, 70),
            (2, 50, 300, 70),
            (5, 31, 64, 33),
            (4, 32, 20, 40),
            (2, 24, 30, 64),
            (2, 9, 16, 31),
            (1, 200, 64, 64),
            (1, 150, 65, 60),
            // Packed whole, unpacked when cut in two column parts: the same bits either way.
            (1, 50, 40, 100),
            (1, 1100, 3, 40),
            (1, 5, 7, 1100),
        ];
        let splits = [(1, 1), (2, 1), (1, 2), (3, 2)];
        for (si, &(bsz, m, k, n)) in shapes.iter().enumerate() {
            for (at, bt, bb) in [
                (false, false, false),
                (true, false, false),
                (false, true, false),
                (true, true, bsz > 1),
            ] {
                let (av, la) = operand(bsz, m, k, at, false, 7 * si);
                let (bv, lb) = operand(bsz, k, n, bt, bb, 7 * si + 3);
                let want = naive(&av, &la, &bv, &lb);
                let (a32, b32): (Vec<f32>, Vec<f32>) = (
                    av.iter().map(|&v| v as f32).collect(),
                    bv.iter().map(|&v| v as f32).collect(),
                );
                let what = format!("{bsz}x{m}x{k}x{n} a_t={at} b_t={bt} b_bcast={bb}");
                for isa in isas() {
                    let (mut first64, mut first32) = (None, None);
                    for (pm, pn) in splits {
                        let tile32 = sizes_f32(isa).0;
                        let tile64 = sizes_f64(isa).0;
                        let d = Dims { bsz, m, n, k };
                        if Split::new(d, pm, pn, tile32).is_none()
                            || Split::new(d, pm, pn, tile64).is_none()
                        {
                            continue;
                        }
                        let parts = Some((pm, pn));
                        let g64 =
                            gemm_with(&av, &la, &bv, &lb, None, block_f64, sizes_f64, isa, parts);
                        let g32 =
                            gemm_with(&a32, &la, &b32, &lb, None, block_f32, sizes_f32, isa, parts);
                        for (i, &w) in want.iter().enumerate() {
                            let tol = 1.0 + w.abs();
                            assert!((g64[i] - w).abs() <= 1e-12 * tol, "{isa:?} f64 {what}");
                            let e = (g32[i] as f64 - w).abs();
                            assert!(e <= 1e-5 * (k as f64).sqrt() * tol, "{isa:?} f32 {what}");
                        }
                        let split = format!("{isa:?} {what} split {pm}x{pn}");
                        assert_eq!(first64.get_or_insert_with(|| g64.clone()), &g64, "{split}");
                        assert_eq!(first32.get_or_insert_with(|| g32.clone()), &g32, "{split}");
                    }
                }
            }
        }
    }

    /// The split follows the packing costs: M is cut for tall products, N for wide ones,
    /// whole matrices go to tasks when there are enough of them, and small products stay on
    /// one thread.
    #[test]
    fn split_choice() {
        let tile = (12, 32);
        let blocks = (1024, 512);
        let d = |bsz, m, n, k| Dims { bsz, m, n, k };
        let parts = |d, t| {
            let s = Split::choose(d, t, tile, blocks);
            (s.pm, s.pn)
        };
        assert_eq!(parts(d(1, 65536, 64, 64), 2), (2, 1));
        assert_eq!(parts(d(1, 8, 4096, 512), 2), (1, 2));
        assert_eq!(parts(d(512, 32, 32, 32), 2), (1, 1));
        assert_eq!(parts(d(3, 256, 256, 256), 2), (2, 1));
        assert_eq!(parts(d(1, 16, 16, 16), 2), (1, 1));
        assert_eq!(parts(d(1, 2048, 2048, 2048), 1), (1, 1));
        let s = Split::choose(d(3, 256, 256, 256), 2, tile, blocks);
        assert_eq!((s.rows, s.count(d(3, 256, 256, 256))), (132, 6));
    }
}
