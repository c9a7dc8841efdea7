//! CPU matmul: a packed, cache-blocked GEMM (the BLIS / Goto design) for
//! `C[b] = A[b] @ B[b]`, `A: [M, K]`, `B: [K, N]`, any strides (transposed and broadcast
//! operands are packed straight from their layouts, never copied first).
//!
//! Loop nest, per batch and per block of `MC` rows (one Rayon task each; when there are fewer
//! row blocks than threads, per block of columns instead):
//! ```text
//! for jc in 0..N step NC:            // B block columns
//!   for pc in 0..K step KC:          // reduction block
//!     pack B[pc.., jc..] into NR-wide column panels   (KC x NC: 512 KiB of f32, L2-sized)
//!     pack A[ic.., pc..] into MR-tall row panels      (MC x KC: at most 96 KiB of f32)
//!     for each (MR x NR) tile: micro-kernel, KC rank-1 updates into MR*NR register accumulators,
//!                              then C_tile += acc
//! ```
//! Micro-kernels (the [`Micro`] trait), chosen at run time with `is_x86_feature_detected!`:
//! - f32 on AVX-512: 12 x 32 written with intrinsics (24 zmm accumulators; two loads of B and
//!   12 broadcasts of A per 24 FMAs). LLVM does not keep a `[[f32; 32]; 12]` array in registers
//!   (it compiled to scalar code, ~3 GFLOP/s), hence the intrinsics.
//! - everything else: plain Rust over fixed-size arrays (`[[T; NR]; MR]`), which LLVM turns into
//!   vector FMAs when inlined into a `#[target_feature]` function: f32 AVX2 6x16; f64 AVX2 4x8,
//!   AVX-512 8x16; portable 4x8 (mul + add, no FMA call), each checked in the disassembly.
//!
//! When M < 4 the packing is skipped and B's rows stream straight into C's.
//!
//! Determinism: each C element is `((0 + blk_0) + blk_1) + ...` over fixed `KC` blocks, each
//! block summed in order of k, whatever the thread count or `MC` split.
//! Cost: `2*M*N*K` FLOPs; A is read `ceil(N/NC)` times, B `ceil(M/MC)` times (packing), C
//! read and written `ceil(K/KC)` times.

use super::{CpuData, CpuStorage, Float};
use crate::backend::matmul::MatmulBackend;
use crate::tensor::Layout;
use crate::{Error, Result};
use rayon::prelude::*;

/// Reduction block (A panel and B panel depth).
const KC: usize = 256;
/// Columns of B packed at once.
const NC: usize = 512;
/// Largest row block per task.
const MC_MAX: usize = 96;
/// Column-split granularity when there are too few rows to go around the threads.
const NC_SPLIT_MIN: usize = 64;

/// One strided operand: element `(i, j)` of batch `b` is at `off + b*sb + i*s0 + j*s1`.
#[derive(Clone, Copy)]
struct Operand {
    off: usize,
    sb: usize,
    s0: usize,
    s1: usize,
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
    for q in 0..mc.div_ceil(MR) {
        let panel = &mut buf[q * kc * MR..(q + 1) * kc * MR];
        let rows = MR.min(mc - q * MR);
        if rows < MR {
            panel.fill(T::ZERO);
        }
        for r in 0..rows {
            let row = base + (q * MR + r) * sm;
            for kk in 0..kc {
                panel[kk * MR + r] = a[row + kk * sk];
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
    for q in 0..nc.div_ceil(NR) {
        let panel = &mut buf[q * kc * NR..(q + 1) * kc * NR];
        let cols = NR.min(nc - q * NR);
        if cols < NR {
            panel.fill(T::ZERO);
        }
        if sn == 1 {
            for kk in 0..kc {
                let src = base + kk * sk + q * NR;
                panel[kk * NR..kk * NR + cols].copy_from_slice(&b[src..src + cols]);
            }
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

/// A register-tile micro-kernel: `C[0..mr, 0..nr] += sum_kk a[kk] (x) b[kk]` over packed
/// `MR`-row and `NR`-column panels of depth `kc`; `c` rows are `ldc` apart.
trait Micro<T> {
    /// # Safety
    /// The CPU must have the instruction set the implementation is compiled for.
    unsafe fn tile(kc: usize, a: &[T], b: &[T], c: &mut [T], ldc: usize, mr: usize, nr: usize);
}

/// The portable micro-kernel over fixed-size arrays, which LLVM vectorizes for the target
/// features of the function it is inlined into (`FMA`: fused multiply-adds, only under `fma`).
struct ArrayMicro<const MR: usize, const NR: usize, const FMA: bool>;

impl<T: Float, const MR: usize, const NR: usize, const FMA: bool> Micro<T>
    for ArrayMicro<MR, NR, FMA>
{
    #[inline(always)]
    unsafe fn tile(kc: usize, a: &[T], b: &[T], c: &mut [T], ldc: usize, mr: usize, nr: usize) {
        micro::<T, MR, NR, FMA>(kc, a, b, c, ldc, mr, nr)
    }
}

/// `C[0..mr, 0..nr] += sum_kk a[kk] (x) b[kk]` over packed panels; `c` rows `ldc` apart.
#[inline(always)]
fn micro<T: Float, const MR: usize, const NR: usize, const FMA: bool>(
    kc: usize,
    a: &[T],
    b: &[T],
    c: &mut [T],
    ldc: usize,
    mr: usize,
    nr: usize,
) {
    let mut acc = [[T::ZERO; NR]; MR];
    let (a, _) = a[..kc * MR].as_chunks::<MR>();
    let (b, _) = b[..kc * NR].as_chunks::<NR>();
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
    for (r, accr) in acc.iter().enumerate().take(mr) {
        let row = &mut c[r * ldc..r * ldc + nr];
        for (o, &v) in row.iter_mut().zip(accr) {
            *o += v;
        }
    }
}

/// One task: rows `i0..i0+mc` of batch `bi`, all of N, into `c` (`mc x n`, contiguous).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn row_block<T: Float, const MR: usize, const NR: usize, const FMA: bool, K: Micro<T>>(
    a: &[T],
    oa: Operand,
    b: &[T],
    ob: Operand,
    bi: usize,
    i0: usize,
    k: usize,
    n: usize,
    c: &mut [T],
) {
    let mc = c.len() / n;
    if i0 == 0 && mc < 4 && ob.s1 == 1 {
        // Fewer than 4 rows in all (a matrix-vector product, say): packing would cost more
        // than it saves, so stream B's rows straight into C's (`c[i, :] += a[i, kk] * B[kk, :]`).
        // The test depends only on M, never on the thread count, so results stay deterministic.
        let (abase, bbase) = (oa.off + bi * oa.sb, ob.off + bi * ob.sb);
        for (i, crow) in c.chunks_mut(n).enumerate() {
            for kk in 0..k {
                let av = a[abase + i * oa.s0 + kk * oa.s1];
                let brow = &b[bbase + kk * ob.s0..bbase + kk * ob.s0 + n];
                for (o, &bv) in crow.iter_mut().zip(brow) {
                    *o = if FMA {
                        av.fused_mul_add(bv, *o)
                    } else {
                        *o + av * bv
                    };
                }
            }
        }
        return;
    }
    let kc_max = KC.min(k);
    let mut apack = vec![T::ZERO; mc.div_ceil(MR) * MR * kc_max];
    let mut bpack = vec![T::ZERO; NC.min(n).div_ceil(NR) * NR * kc_max];
    for jc in (0..n).step_by(NC) {
        let nc = NC.min(n - jc);
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            pack_b::<T, NR>(
                b,
                ob.off + bi * ob.sb + pc * ob.s0 + jc * ob.s1,
                ob.s0,
                ob.s1,
                kc,
                nc,
                &mut bpack,
            );
            pack_a::<T, MR>(
                a,
                oa.off + bi * oa.sb + i0 * oa.s0 + pc * oa.s1,
                oa.s0,
                oa.s1,
                mc,
                kc,
                &mut apack,
            );
            for jq in 0..nc.div_ceil(NR) {
                let bp = &bpack[jq * kc * NR..(jq + 1) * kc * NR];
                let nr = NR.min(nc - jq * NR);
                for iq in 0..mc.div_ceil(MR) {
                    let ap = &apack[iq * kc * MR..(iq + 1) * kc * MR];
                    let mr = MR.min(mc - iq * MR);
                    let cstart = iq * MR * n + jc + jq * NR;
                    // SAFETY: `K` was chosen for an instruction set this CPU has (see tiles_fn!).
                    unsafe { K::tile(kc, ap, bp, &mut c[cstart..], n, mr, nr) };
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
fn row_block_avx512<T: Float, const MR: usize, const NR: usize>(
    a: &[T],
    oa: Operand,
    b: &[T],
    ob: Operand,
    bi: usize,
    i0: usize,
    k: usize,
    n: usize,
    c: &mut [T],
) {
    row_block::<T, MR, NR, true, ArrayMicro<MR, NR, true>>(a, oa, b, ob, bi, i0, k, n, c)
}

/// The f32 AVX-512 path: 12 x 32 tiles by [`Avx512F32`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
fn row_block_avx512_f32(
    a: &[f32],
    oa: Operand,
    b: &[f32],
    ob: Operand,
    bi: usize,
    i0: usize,
    k: usize,
    n: usize,
    c: &mut [f32],
) {
    row_block::<f32, 12, 32, true, Avx512F32>(a, oa, b, ob, bi, i0, k, n, c)
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
        a: &[f32],
        b: &[f32],
        c: &mut [f32],
        ldc: usize,
        mr: usize,
        nr: usize,
    ) {
        micro_avx512_f32_12x32(kc, a, b, c, ldc, mr, nr)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn micro_avx512_f32_12x32(
    kc: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    ldc: usize,
    mr: usize,
    nr: usize,
) {
    use std::arch::x86_64::*;
    const MR: usize = 12;
    const NR: usize = 32;
    assert!(a.len() >= kc * MR && b.len() >= kc * NR && mr <= MR && nr <= NR);
    assert!(mr == 0 || c.len() >= (mr - 1) * ldc + nr);
    let mut lo = [_mm512_setzero_ps(); MR];
    let mut hi = [_mm512_setzero_ps(); MR];
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    for kk in 0..kc {
        // SAFETY: kk < kc, and the asserts above bound every offset read here.
        unsafe {
            let b0 = _mm512_loadu_ps(bp.add(kk * NR));
            let b1 = _mm512_loadu_ps(bp.add(kk * NR + 16));
            for r in 0..MR {
                let x = _mm512_set1_ps(*ap.add(kk * MR + r));
                lo[r] = _mm512_fmadd_ps(x, b0, lo[r]);
                hi[r] = _mm512_fmadd_ps(x, b1, hi[r]);
            }
        }
    }
    // C += acc, masked to the `nr` valid columns (and `mr` valid rows).
    let m0: __mmask16 = if nr >= 16 { 0xffff } else { (1u16 << nr) - 1 };
    let m1: __mmask16 = if nr >= 32 {
        0xffff
    } else if nr > 16 {
        (1u16 << (nr - 16)) - 1
    } else {
        0
    };
    let cp = c.as_mut_ptr();
    for r in 0..mr {
        // SAFETY: row r < mr starts at r*ldc and the masks cover at most nr columns, inside c.
        unsafe {
            let row = cp.add(r * ldc);
            let c0 = _mm512_maskz_loadu_ps(m0, row);
            _mm512_mask_storeu_ps(row, m0, _mm512_add_ps(c0, lo[r]));
            if m1 != 0 {
                let c1 = _mm512_maskz_loadu_ps(m1, row.add(16));
                _mm512_mask_storeu_ps(row.add(16), m1, _mm512_add_ps(c1, hi[r]));
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
fn row_block_avx2<T: Float, const MR: usize, const NR: usize>(
    a: &[T],
    oa: Operand,
    b: &[T],
    ob: Operand,
    bi: usize,
    i0: usize,
    k: usize,
    n: usize,
    c: &mut [T],
) {
    row_block::<T, MR, NR, true, ArrayMicro<MR, NR, true>>(a, oa, b, ob, bi, i0, k, n, c)
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

/// A dtype's task entry: `(isa, a, a_op, b, b_op, batch, first_row, k, n, c_rows)`.
type TilesFn<T> = fn(Isa, &[T], Operand, &[T], Operand, usize, usize, usize, usize, &mut [T]);

/// The GEMM for one dtype, given its register-tile shapes per instruction set.
#[allow(clippy::too_many_arguments)]
fn gemm<T: Float>(
    a: &[T],
    la: &Layout,
    b: &[T],
    lb: &Layout,
    tiles: TilesFn<T>,
    isa: Isa,
) -> Vec<T> {
    let (bsz, m, k) = (la.dims()[0], la.dims()[1], la.dims()[2]);
    let n = lb.dims()[2];
    let mut out = vec![T::ZERO; bsz * m * n];
    if out.is_empty() || k == 0 {
        return out;
    }
    let op = |l: &Layout| Operand {
        off: l.offset(),
        sb: l.strides()[0],
        s0: l.strides()[1],
        s1: l.strides()[2],
    };
    let (oa, ob) = (op(la), op(lb));
    // Row blocks: at most MC_MAX rows, small enough to give every thread a few tasks.
    let tasks_wanted = 4 * rayon::current_num_threads();
    let per_batch = tasks_wanted.div_ceil(bsz).max(1);
    let mc = m.div_ceil(per_batch).div_ceil(24).clamp(1, MC_MAX / 24) * 24;
    let row_tasks = bsz * m.div_ceil(mc);
    if row_tasks < rayon::current_num_threads() && n >= 2 * NC_SPLIT_MIN {
        // Few rows (a matrix-vector product, say): split the columns instead. Each task
        // computes an `m x width` tile into its own buffer (small, since m is small), then
        // the tiles are copied into place.
        let width = n
            .div_ceil(tasks_wanted.div_ceil(bsz))
            .max(NC_SPLIT_MIN)
            .div_ceil(NC_SPLIT_MIN)
            * NC_SPLIT_MIN;
        let per = n.div_ceil(width);
        let tiles_out: Vec<Vec<T>> = (0..bsz * per)
            .into_par_iter()
            .map(|t| {
                let (bi, j0) = (t / per, (t % per) * width);
                let w = width.min(n - j0);
                let obj = Operand {
                    off: ob.off + j0 * ob.s1,
                    ..ob
                };
                let mut c = vec![T::ZERO; m * w];
                tiles(isa, a, oa, b, obj, bi, 0, k, w, &mut c);
                c
            })
            .collect();
        for (t, tile) in tiles_out.iter().enumerate() {
            let (bi, j0) = (t / per, (t % per) * width);
            let w = width.min(n - j0);
            for i in 0..m {
                let dst = (bi * m + i) * n + j0;
                out[dst..dst + w].copy_from_slice(&tile[i * w..(i + 1) * w]);
            }
        }
        return out;
    }
    out.par_chunks_mut(m * n).enumerate().for_each(|(bi, cb)| {
        cb.par_chunks_mut(mc * n)
            .enumerate()
            .for_each(|(blk, c)| tiles(isa, a, oa, b, ob, bi, blk * mc, k, n, c));
    });
    out
}

macro_rules! tiles_fn {
    ($name:ident, $t:ty, $mr2:expr, $nr2:expr, $avx512:expr) => {
        #[allow(clippy::too_many_arguments)]
        fn $name(
            isa: Isa,
            a: &[$t],
            oa: Operand,
            b: &[$t],
            ob: Operand,
            bi: usize,
            i0: usize,
            k: usize,
            n: usize,
            c: &mut [$t],
        ) {
            match isa {
                // SAFETY: `isa` comes from `detect_isa`, which checked these CPU features.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => unsafe { $avx512(a, oa, b, ob, bi, i0, k, n, c) },
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => unsafe {
                    row_block_avx2::<$t, $mr2, $nr2>(a, oa, b, ob, bi, i0, k, n, c)
                },
                _ => row_block::<$t, 4, 8, false, ArrayMicro<4, 8, false>>(
                    a, oa, b, ob, bi, i0, k, n, c,
                ),
            }
        }
    };
}
tiles_fn!(tiles_f32, f32, 6, 16, row_block_avx512_f32);
tiles_fn!(tiles_f64, f64, 4, 8, row_block_avx512::<f64, 8, 16>);

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
}

type MicroFn<T> = unsafe fn(usize, &[T], &[T], &mut [T], usize, usize, usize);

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
    micro::<T, MR, NR, false>(kc, a, b, c, ldc, mr, nr)
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
    micro::<T, MR, NR, true>(kc, a, b, c, ldc, mr, nr)
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
    micro::<T, MR, NR, true>(kc, a, b, c, ldc, mr, nr)
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
    micro_avx512_f32_12x32(kc, a, b, c, ldc, mr, nr)
}

/// The dtypes with a packed GEMM: their micro-kernels and their whole GEMM, per instruction set.
pub(super) trait PackedFloat: Float {
    /// The micro-kernel the GEMM uses for this dtype on `isa` (the same tile shapes).
    fn micro_kernel(isa: Isa) -> MicroKernel<Self>;
    /// The batched GEMM `[B, M, K] @ [B, K, N]` on strided operands (see [`gemm`]).
    fn gemm(a: &[Self], la: &Layout, b: &[Self], lb: &Layout, isa: Isa) -> Vec<Self>;
}

macro_rules! packed_float {
    ($t:ty, $tiles:ident, $avx512:expr, $mr512:expr, $nr512:expr, $mr2:expr, $nr2:expr) => {
        impl PackedFloat for $t {
            fn micro_kernel(isa: Isa) -> MicroKernel<$t> {
                let (mr, nr, tile): (usize, usize, MicroFn<$t>) = match isa {
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx512 => ($mr512, $nr512, $avx512),
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx2 => ($mr2, $nr2, micro_avx2::<$t, $mr2, $nr2>),
                    _ => (4, 8, micro_portable::<$t, 4, 8>),
                };
                MicroKernel { mr, nr, tile }
            }
            fn gemm(a: &[$t], la: &Layout, b: &[$t], lb: &Layout, isa: Isa) -> Vec<$t> {
                gemm(a, la, b, lb, $tiles, isa)
            }
        }
    };
}
packed_float!(f32, tiles_f32, micro_avx512_f32, 12, 32, 6, 16);
packed_float!(f64, tiles_f64, micro_avx512::<f64, 8, 16>, 8, 16, 4, 8);

impl MatmulBackend for CpuStorage {
    fn matmul(&self, lhs_layout: &Layout, rhs: &Self, rhs_layout: &Layout) -> Result<Self> {
        let (da, db) = (lhs_layout.dims(), rhs_layout.dims());
        if da.len() != 3 || db.len() != 3 || da[0] != db[0] || da[2] != db[1] {
            return Err(Error::ShapeMismatch {
                op: "matmul",
                lhs: lhs_layout.shape().clone(),
                rhs: rhs_layout.shape().clone(),
            });
        }
        let data = match (self.data(), rhs.data()) {
            (CpuData::F32(a), CpuData::F32(b)) => {
                CpuData::F32(gemm(a, lhs_layout, b, rhs_layout, tiles_f32, detect_isa()))
            }
            (CpuData::F64(a), CpuData::F64(b)) => {
                CpuData::F64(gemm(a, lhs_layout, b, rhs_layout, tiles_f64, detect_isa()))
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
                    gemm(&av, &la, &bv, &lb, tiles_f64, isa),
                    want,
                    "{isa:?} f64 {m}x{k}x{n}"
                );
                let got = gemm(&a32, &la, &b32, &lb, tiles_f32, isa);
                let got: Vec<f64> = got.iter().map(|&v| v as f64).collect();
                assert_eq!(got, want, "{isa:?} f32 {m}x{k}x{n}");
            }
        }
    }
}
