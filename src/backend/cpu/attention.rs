//! CPU flash-style attention (math in `backend/attention.rs`).
//!
//! Approach: q, k, v (and dO) are gathered once into contiguous `[B·H, T, D]` buffers when
//! they are strided views (e.g. a `permute` of a `[B, T, H, D]` projection); masks are read in
//! place through their broadcast strides, a row at a time. Work is cut into tiles of `BQ`
//! query rows by `BK` keys (64, or 16/32 when there are no more keys than that: a short text's
//! keys are not padded to 64 score columns; the forward takes 128 from 128 keys on when
//! there is no causal mask, `fwd_key_block`). For each tile the key block is transposed
//! once into `D x BK` (and, in the backward, the value block into `Dv x BK`), so the scores
//! `S = (scale·Q)·Kᵀ` (and `dP = dO·Vᵀ`) are computed `RB` rows at a time with `BK`-wide
//! vector FMAs whose `RB` rows share every load of the transposed block: no per-key dot
//! product, however small the head. `P·V` (and `dS·K`, `Pᵀ·dO`, `dSᵀ·Q`) are axpys over
//! contiguous rows, register-blocked over 4 rows (or keys) and a chunk of columns. For f32 on AVX-512 all five products run on
//! the register tile of `attention_tile.rs`, `4 x 64`, `8 x 32` or `16 x 16` (16 accumulators
//! whatever the width), written with
//! intrinsics, whose sums are bit for bit those of the portable loops here (which serve f64,
//! AVX2, the baseline and the last `w mod 16` columns). Every product term is one fused
//! multiply-add (`Float::fused_mul_add`): a hardware FMA under `vectorized` on AVX2 and
//! AVX-512, and libm's `fmaf`/`fma` on the baseline instruction set (slower there, same bits).
//!
//! Forward: one Rayon task per (batch·head, query block) walks the key blocks, folding each
//! `BQ x BK` tile into its rows' online softmax; scratch is one tile and the `BQ x Dv`
//! accumulator. Backward (tiles of `BQ_BWD` = 32 queries): each tile recomputes `P = exp(S - lse)` and `dS`; when there are at
//! least as many batch·heads as threads, one task per batch·head takes dQ, dK and dV from a
//! single pass over its tiles; otherwise two race-free passes (FlashAttention-2's split: one
//! task per (batch·head, query block) for dQ, one per (batch·head, key block) for dK and dV)
//! recompute the tiles twice. Both orders add dQ over key blocks and dK, dV over query rows in
//! ascending order, so the result is bitwise the same for any thread count.
//! Cost per tile: `2·BQ·BK·(D + Dv)` FLOPs forward, 2.5x that backward; traffic: the q rows
//! once per task, k and v once per (task, key block) from L2.

use super::aligned::AlignedVec;
#[cfg(target_arch = "x86_64")]
use super::attention_tile::{tile_avx512, TileArgs};
use super::elementwise::{assume_init, written_vec};
use super::lanes::{dot, map_reduce, sum};
use super::matmul::transpose_panel;
use super::simd::vectorized;
#[cfg(target_arch = "x86_64")]
use super::simd::{isa, Isa};
use super::{contiguous_cow, CpuStorage, Float};
use crate::backend::attention::{AttentionBackend, AttnMask, AttnParams, AttnShape};
use crate::backend::BackendStorage;
use crate::tensor::{DType, Layout, WithDType};
use crate::{Error, Result};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Query rows per forward tile.
const BQ: usize = 16;
/// Query rows per backward tile: deeper than the forward's, because `dV += Pᵀ·dO` and
/// `dK += dSᵀ·Q` sum over the tile's rows, and each register tile of theirs loads and stores
/// its accumulators once per tile. The sums run over the rows in ascending order whatever the
/// tile height, so the bits do not depend on it.
const BQ_BWD: usize = 32;
/// Keys per tile (`BK`, a const parameter of the kernels): the width of a score row, four
/// 16-lane AVX-512 vectors of f32; shorter key sequences take a narrower tile
/// ([`key_block`]), so a 12-token text is not padded to 64 columns of scores.
const BK_MAX: usize = 64;

/// The key tile width for `tk` keys: 16, 32 or 64 (a function of the shape alone, so the
/// summation order does not depend on anything else).
fn key_block(tk: usize) -> usize {
    match tk {
        0..=16 => 16,
        17..=32 => 32,
        _ => BK_MAX,
    }
}

/// The forward's wide key tile (two 64-wide halves on the AVX-512 register tile).
const BK_FWD_WIDE: usize = 2 * BK_MAX;

/// The forward's key tile width: [`key_block`], widened to [`BK_FWD_WIDE`] from that many
/// keys on when there is no causal mask. The online softmax's per-row work per tile (a
/// horizontal maximum and sum, the rescale of the accumulator) then folds twice as many keys:
/// 6-10% on the bench's non-causal forwards at head dimensions 32 and 64 (docs/PERF.md,
/// session 19). Causal forwards keep 64: the masked half of each diagonal tile costs it back,
/// and 256 keys were slower than 128 everywhere. A function of the shape and the mask kind
/// alone, so the summation order depends on nothing else.
fn fwd_key_block(tk: usize, causal: bool) -> usize {
    if tk >= BK_FWD_WIDE && !causal {
        BK_FWD_WIDE
    } else {
        key_block(tk)
    }
}
/// Query rows that share each load of a transposed key or value block.
const RB: usize = 4;

#[derive(Clone, Copy)]
struct Dims {
    h: usize,
    tq: usize,
    tk: usize,
    d: usize,
    dv: usize,
    bh: usize,
}

impl Dims {
    /// The sizes, after checking the layouts fit together ([`AttnShape::of`]).
    fn of(ql: &Layout, vl: &Layout, kl: &Layout, masks: &[AttnMask<CpuStorage>]) -> Result<Dims> {
        let s = AttnShape::of(OP, ql, kl, vl, masks)?;
        Ok(Dims {
            h: s.h,
            tq: s.tq,
            tk: s.tk,
            d: s.d,
            dv: s.dv,
            bh: s.b * s.h,
        })
    }
}

/// Masks resolved to byte slices and strides, plus the causal flag.
struct Masks<'a> {
    list: Vec<(&'a [u8], [usize; 4], usize, bool)>,
    causal: bool,
    h: usize,
}

impl Masks<'_> {
    /// Sets `s[jj] = -inf` for the keys `kb + jj` (`jj < nb`) that row `i` of batch·head `bhi`
    /// may not attend to, and for the tile's padding columns `nb..BK`.
    #[inline(always)]
    fn apply<T: Float, const BK: usize>(
        &self,
        bhi: usize,
        i: usize,
        kb: usize,
        nb: usize,
        s: &mut [T],
    ) {
        s[nb..BK].fill(T::NEG_INFINITY);
        if self.causal {
            let first_hidden = (i + 1).saturating_sub(kb).min(nb);
            s[first_hidden..nb].fill(T::NEG_INFINITY);
        }
        let (b, h) = (bhi / self.h, bhi % self.h);
        for &(data, st, off, attend_if_set) in &self.list {
            let row = off + b * st[0] + h * st[1] + i * st[2] + kb * st[3];
            if st[3] == 1 {
                // Keys side by side (a key padding mask, a dense mask): a select over two
                // slices, which vectorizes, instead of a strided byte load per key.
                let hidden = |m: u8| (m != 0) != attend_if_set;
                for (sj, &m) in s[..nb].iter_mut().zip(&data[row..row + nb]) {
                    *sj = if hidden(m) { T::NEG_INFINITY } else { *sj };
                }
                continue;
            }
            for (jj, sj) in s[..nb].iter_mut().enumerate() {
                if (data[row + jj * st[3]] != 0) != attend_if_set {
                    *sj = T::NEG_INFINITY;
                }
            }
        }
    }
}

fn masks_of<'a>(m: &'a [AttnMask<CpuStorage>], causal: bool, h: usize) -> Result<Masks<'a>> {
    let list = m
        .iter()
        .map(|m| {
            let s = m.layout.strides();
            Ok((
                m.storage
                    .as_slice::<u8>("scaled_dot_product_attention mask")?,
                [s[0], s[1], s[2], s[3]],
                m.layout.offset(),
                m.attend_if_set,
            ))
        })
        .collect::<Result<_>>()?;
    Ok(Masks { list, causal, h })
}

/// `x` (`[BH, T, w]`) transposed key block by key block: `[BH, ceil(T/BK), w, BK]`, so
/// block `kb` of batch·head `bhi` is the `w x BK` matrix at [`block_at`]; the columns past
/// `T` in the last block are zero, so the score loops always run the full tile width. Done
/// once per call (one pass over `x`), not once per task.
fn blocked_transpose<T: Float, const BK: usize>(x: &[T], bh: usize, t: usize, w: usize) -> Vec<T> {
    let nkb = t.div_ceil(BK);
    let n = bh * nkb * w * BK;
    if n == 0 {
        return Vec::new();
    }
    let transpose_heads = |xt: &mut [MaybeUninit<T>]| {
        xt.par_chunks_mut(nkb * w * BK)
            .enumerate()
            .for_each(|(bhi, xt)| {
                for (blk, dst) in xt.chunks_exact_mut(w * BK).enumerate() {
                    let keys = BK.min(t - blk * BK);
                    let dst = if keys < BK {
                        // The last block's columns past `t` are zero.
                        init_zero(dst)
                    } else {
                        // SAFETY: the transpose below writes all `w x BK` elements of a whole
                        // block before anything reads them.
                        unsafe { assume_init(dst) }
                    };
                    // dst[c * BK + jj] = x[bhi, blk * BK + jj, c]: the GEMM's block
                    // transposes (element by element, this was 9% of a T = 128 forward).
                    transpose_panel(x, (bhi * t + blk * BK) * w, w, keys, w, dst, BK);
                }
            });
    };
    // SAFETY: every block is zeroed or wholly written by the transposes above.
    unsafe { written_vec(n, transpose_heads) }
}

/// Zeroes `x` and returns it as initialised.
#[inline(always)]
fn init_zero<T: Float>(x: &mut [MaybeUninit<T>]) -> &mut [T] {
    for v in x.iter_mut() {
        v.write(T::ZERO);
    }
    // SAFETY: every element was just written.
    unsafe { assume_init(x) }
}

/// The `w x BK` block of key block starting at `kb` in a [`blocked_transpose`].
#[inline(always)]
fn block_at<T, const BK: usize>(xt: &[T], bhi: usize, t: usize, w: usize, kb: usize) -> &[T] {
    let blk = bhi * t.div_ceil(BK) + kb / BK;
    &xt[blk * w * BK..(blk + 1) * w * BK]
}

/// `s[r * BK + jj] = Σ_c a[r * w + c] · xt[c * BK + jj]` for `R` rows of `a`: `R x BK`
/// accumulators, each element of `xt` loaded once for the `R` rows.
#[inline(always)]
fn rows_times_block<T: Float, const R: usize, const BK: usize>(
    a: &[T],
    w: usize,
    xt: &[T],
    s: &mut [T],
) {
    let mut acc = [[T::ZERO; BK]; R];
    for c in 0..w {
        let xr = &xt[c * BK..(c + 1) * BK];
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let av = a[r * w + c];
            for (y, &xv) in acc_r.iter_mut().zip(xr) {
                *y = av.fused_mul_add(xv, *y);
            }
        }
    }
    for (r, acc_r) in acc.iter().enumerate() {
        s[r * BK..(r + 1) * BK].copy_from_slice(acc_r);
    }
}

/// `s = a · xtᵀ` for the `nr` rows of `a` (`[nr, w]`): a tile of scores `[nr, BK]`.
#[inline(always)]
fn tile_product<T: Float, const BK: usize>(a: &[T], nr: usize, w: usize, xt: &[T], s: &mut [T]) {
    #[cfg(target_arch = "x86_64")]
    if let Some(fast) = F32Avx512::of::<T>() {
        let t = TileArgs {
            depth: w,
            a: fast.slice(a),
            a_rs: w,
            a_ks: 1,
            b: fast.slice(xt),
            b_ks: BK,
            y_rs: BK,
            accumulate: false,
        };
        return fast.rows_by::<BK>(nr, &t, fast.slice_mut(s));
    }
    let mut r = 0;
    while r + RB <= nr {
        rows_times_block::<T, RB, BK>(&a[r * w..], w, xt, &mut s[r * BK..]);
        r += RB;
    }
    while r < nr {
        rows_times_block::<T, 1, BK>(&a[r * w..], w, xt, &mut s[r * BK..]);
        r += 1;
    }
}

/// Proof that `T` is f32 and the CPU runs AVX-512 ([`simd::isa`]): the products then go
/// through the register tile of `attention_tile.rs` (same bits as the portable loops).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct F32Avx512(());

#[cfg(target_arch = "x86_64")]
impl F32Avx512 {
    #[inline(always)]
    fn of<T: Float>() -> Option<Self> {
        let f32 = std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>();
        (f32 && isa() == Isa::Avx512).then_some(F32Avx512(()))
    }

    #[inline(always)]
    fn slice<T: Float>(self, x: &[T]) -> &[f32] {
        assert_eq!(std::mem::size_of::<T>(), 4);
        // SAFETY: `of` checked that `T` is f32.
        unsafe { std::slice::from_raw_parts(x.as_ptr().cast(), x.len()) }
    }

    #[inline(always)]
    fn slice_mut<T: Float>(self, x: &mut [T]) -> &mut [f32] {
        assert_eq!(std::mem::size_of::<T>(), 4);
        // SAFETY: `of` checked that `T` is f32.
        unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr().cast(), x.len()) }
    }

    /// The tile `t` (16·W/16 columns wide) for `nr` rows, `RB` at a time, then one at a time.
    #[inline(always)]
    fn rows_by<const W: usize>(self, nr: usize, t: &TileArgs, y: &mut [f32]) {
        match W {
            16 => self.rows::<1>(nr, t, y),
            32 => self.rows::<2>(nr, t, y),
            64 => self.rows::<4>(nr, t, y),
            // Two 64-wide halves (the forward's wide key tile, [`fwd_key_block`]).
            128 => {
                for h in 0..2 {
                    let th = TileArgs {
                        b: &t.b[64 * h..],
                        ..*t
                    };
                    self.rows::<4>(nr, &th, &mut y[64 * h..]);
                }
            }
            _ => unreachable!("tile widths are 16, 32, 64 or 128"),
        }
    }

    /// The tile `t` for `nr` rows: `16 / V` rows at a time (16 accumulators whatever the
    /// width, so a 32-wide product, a head dimension of 32, runs 16 FMAs per step of `k`
    /// rather than 8 beside the same loads and loop), then `RB`, then one.
    #[inline(always)]
    fn rows<const V: usize>(self, nr: usize, t: &TileArgs, y: &mut [f32]) {
        match V {
            1 => self.rows_by_height::<16, V>(nr, t, y),
            2 => self.rows_by_height::<8, V>(nr, t, y),
            _ => self.rows_by_height::<RB, V>(nr, t, y),
        }
    }

    #[inline(always)]
    fn rows_by_height<const R: usize, const V: usize>(
        self,
        nr: usize,
        t: &TileArgs,
        y: &mut [f32],
    ) {
        let mut r = 0;
        while r < nr {
            let tr = TileArgs {
                a: &t.a[r * t.a_rs..],
                ..*t
            };
            let yr = &mut y[r * t.y_rs..];
            // SAFETY: `of` checked that the CPU has AVX-512.
            unsafe {
                if r + R <= nr {
                    tile_avx512::<R, V>(&tr, yr);
                    r += R;
                } else if r + RB <= nr {
                    tile_avx512::<RB, V>(&tr, yr);
                    r += RB;
                } else {
                    tile_avx512::<1, V>(&tr, yr);
                    r += 1;
                }
            }
        }
    }

    /// `t` over the columns `0..w` in chunks of 64, 32 and 16 (`t.b` and `y` start at column
    /// 0); returns where the columns it left (fewer than 16) begin.
    #[inline(always)]
    fn columns(self, nr: usize, w: usize, t: &TileArgs, y: &mut [f32]) -> usize {
        let mut c0 = 0;
        while w - c0 >= 16 {
            let tc = TileArgs {
                b: &t.b[c0..],
                ..*t
            };
            let yc = &mut y[c0..];
            if w - c0 >= 64 {
                self.rows::<4>(nr, &tc, yc);
                c0 += 64;
            } else if w - c0 >= 32 {
                self.rows::<2>(nr, &tc, yc);
                c0 += 32;
            } else {
                self.rows::<1>(nr, &tc, yc);
                c0 += 16;
            }
        }
        c0
    }
}

/// `y[r][c0..c0 + N] += Σ_jj p[r * BK + jj] · x[jj][c0..c0 + N]` for `R` rows: `R x N`
/// accumulators in registers, each chunk of `x` loaded once for the `R` rows (and `R · N /
/// lanes` independent FMA chains). `jj` ascending.
#[inline(always)]
fn rows_chunk<T: Float, const R: usize, const N: usize, const BK: usize>(
    p: &[T],
    nb: usize,
    x: &[T],
    w: usize,
    c0: usize,
    y: &mut [T],
) {
    let nb = nb.min(BK);
    // Row slices of exactly `nb` probabilities: the loop below indexes them without checks.
    let p_rows: [&[T]; R] = std::array::from_fn(|r| &p[r * BK..r * BK + nb]);
    let mut acc = [[T::ZERO; N]; R];
    for (r, a) in acc.iter_mut().enumerate() {
        a.copy_from_slice(&y[r * w + c0..r * w + c0 + N]);
    }
    for jj in 0..nb {
        let xs: &[T; N] = x[jj * w + c0..jj * w + c0 + N]
            .try_into()
            .expect("N values");
        for (a, p_r) in acc.iter_mut().zip(&p_rows) {
            let pj = p_r[jj];
            for (av, &xv) in a.iter_mut().zip(xs) {
                *av = pj.fused_mul_add(xv, *av);
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        y[r * w + c0..r * w + c0 + N].copy_from_slice(a);
    }
}

/// `y[jj0 + q][c0..c0 + N] += Σ_r p[r * BK + jj0 + q] · x[r][c0..c0 + N]` for `R` keys `q`
/// (the transposed product), `r` ascending.
#[inline(always)]
fn keys_chunk<T: Float, const R: usize, const N: usize, const BK: usize>(
    p: &[T],
    nr: usize,
    jj0: usize,
    x: &[T],
    w: usize,
    c0: usize,
    y: &mut [T],
) {
    let mut acc = [[T::ZERO; N]; R];
    for (q, a) in acc.iter_mut().enumerate() {
        let row = (jj0 + q) * w + c0;
        a.copy_from_slice(&y[row..row + N]);
    }
    for (r, p_r) in p.chunks_exact(BK).take(nr).enumerate() {
        let xs: &[T; N] = x[r * w + c0..r * w + c0 + N].try_into().expect("N values");
        let p_q: &[T; R] = p_r[jj0..jj0 + R].try_into().expect("R values");
        for (a, &pj) in acc.iter_mut().zip(p_q) {
            for (av, &xv) in a.iter_mut().zip(xs) {
                *av = pj.fused_mul_add(xv, *av);
            }
        }
    }
    for (q, a) in acc.iter().enumerate() {
        let row = (jj0 + q) * w + c0;
        y[row..row + N].copy_from_slice(a);
    }
}

/// Calls `$call` (which names a `const $n`) over the columns `$start..$w` of a row in
/// chunks of N = 16, then 8, 4 and 1 for the tail, so every chunk has a fixed width.
macro_rules! by_chunks {
    ($start:expr, $w:expr, |$c0:ident, $n:ident| $call:expr) => {{
        let w = $w;
        let mut $c0 = $start;
        while $c0 < w {
            let left = w - $c0;
            if left >= 16 {
                const $n: usize = 16;
                $call;
                $c0 += 16;
            } else if left >= 8 {
                const $n: usize = 8;
                $call;
                $c0 += 8;
            } else if left >= 4 {
                const $n: usize = 4;
                $call;
                $c0 += 4;
            } else {
                const $n: usize = 1;
                $call;
                $c0 += 1;
            }
        }
    }};
}

/// `y[r] += Σ_jj p[r * BK + jj] · x[jj]` for `nr` rows and `nb` rows of `x` (width `w`),
/// `jj` ascending, `RB` rows at a time.
#[inline(always)]
fn tile_times_rows<T: Float, const BK: usize>(
    p: &[T],
    nr: usize,
    nb: usize,
    x: &[T],
    w: usize,
    y: &mut [T],
) {
    let mut start = 0;
    #[cfg(target_arch = "x86_64")]
    if let Some(fast) = F32Avx512::of::<T>() {
        let t = TileArgs {
            depth: nb,
            a: fast.slice(p),
            a_rs: BK,
            a_ks: 1,
            b: fast.slice(x),
            b_ks: w,
            y_rs: w,
            accumulate: true,
        };
        start = fast.columns(nr, w, &t, fast.slice_mut(y));
    }
    let mut r = 0;
    while r + RB <= nr {
        let (pr, yr) = (&p[r * BK..], &mut y[r * w..]);
        by_chunks!(start, w, |c0, N| rows_chunk::<T, RB, N, BK>(
            pr, nb, x, w, c0, yr
        ));
        r += RB;
    }
    while r < nr {
        let (pr, yr) = (&p[r * BK..], &mut y[r * w..]);
        by_chunks!(start, w, |c0, N| rows_chunk::<T, 1, N, BK>(
            pr, nb, x, w, c0, yr
        ));
        r += 1;
    }
}

/// `y[jj] += Σ_r p[r * BK + jj] · x[r]` (the transposed product) for `nb` keys, `r`
/// ascending, `RB` keys at a time.
#[inline(always)]
fn tile_t_times_rows<T: Float, const BK: usize>(
    p: &[T],
    nr: usize,
    nb: usize,
    x: &[T],
    w: usize,
    y: &mut [T],
) {
    let mut start = 0;
    #[cfg(target_arch = "x86_64")]
    if let Some(fast) = F32Avx512::of::<T>() {
        // Rows of the tile are keys here: A(jj, r) = p[r * BK + jj].
        let t = TileArgs {
            depth: nr,
            a: fast.slice(p),
            a_rs: 1,
            a_ks: BK,
            b: fast.slice(x),
            b_ks: w,
            y_rs: w,
            accumulate: true,
        };
        start = fast.columns(nb, w, &t, fast.slice_mut(y));
    }
    let mut jj = 0;
    while jj + RB <= nb {
        by_chunks!(start, w, |c0, N| keys_chunk::<T, RB, N, BK>(
            p, nr, jj, x, w, c0, y
        ));
        jj += RB;
    }
    while jj < nb {
        by_chunks!(start, w, |c0, N| keys_chunk::<T, 1, N, BK>(
            p, nr, jj, x, w, c0, y
        ));
        jj += 1;
    }
}

/// One forward task's scratch: the scaled query rows, the score tile, the running maximum
/// and sum per row (allocated once per Rayon job, not once per tile).
struct FwdScratch<T> {
    qs: AlignedVec<T>,
    s: AlignedVec<T>,
    m: Vec<T>,
    l: Vec<T>,
    /// Each row's maximum over the current key block, then its running maximum after it.
    mnew: Vec<T>,
}

impl<T: Float> FwdScratch<T> {
    fn new<const BK: usize>(d: usize) -> Self {
        FwdScratch {
            qs: AlignedVec::zeroed(BQ * d),
            s: AlignedVec::zeroed(BQ * BK),
            m: vec![T::ZERO; BQ],
            l: vec![T::ZERO; BQ],
            mnew: vec![T::ZERO; BQ],
        }
    }
}

fn fwd<T: Float, const BK: usize>(
    q: &[T],
    k: &[T],
    v: &[T],
    dm: Dims,
    mk: &Masks,
    p: AttnParams,
) -> (Vec<T>, Vec<T>) {
    let (tq, tk, d, dv) = (dm.tq, dm.tk, dm.d, dm.dv);
    let kt_all = blocked_transpose::<T, BK>(k, dm.bh, tk, d);
    let n_out = dm.bh * tq * dv;
    let mut lse = vec![T::NEG_INFINITY; dm.bh * tq];
    if n_out == 0 || lse.is_empty() {
        return (vec![T::ZERO; n_out], lse);
    }
    // One task per (batch·head, query block), each zeroing its rows of `o` (in its own cache,
    // not one serial `memset` of all of `o` up front) and writing them and `lse` in place.
    let tasks = |o: &mut [MaybeUninit<T>]| {
        o.par_chunks_mut(tq * dv)
            .zip(lse.par_chunks_mut(tq))
            .enumerate()
            .for_each(|(bhi, (o_bh, lse_bh))| {
                o_bh.par_chunks_mut(BQ * dv)
                    .zip(lse_bh.par_chunks_mut(BQ))
                    .enumerate()
                    .for_each_init(
                        || FwdScratch::new::<BK>(d),
                        |sc, (qb, (acc, lse_r))| {
                            let acc = init_zero(acc);
                            vectorized(
                                #[inline(always)]
                                || {
                                    let args = (q, &kt_all[..], v, dm, mk, p);
                                    fwd_tile::<T, BK>(args, bhi, qb * BQ, acc, lse_r, sc)
                                },
                            )
                        },
                    )
            });
    };
    // SAFETY: the chunks cover `o`, and each task zeroes its chunk before anything else.
    let o = unsafe { written_vec(n_out, tasks) };
    (o, lse)
}

/// The output rows `i0..i0 + nr` (`nr = lse.len()`) of batch·head `bhi`: `acc` `[nr, Dv]`
/// (zero on entry) and their log-sum-exp, the key blocks folded into an online softmax.
#[inline(always)]
fn fwd_tile<T: Float, const BK: usize>(
    (q, kt_all, v, dm, mk, p): (&[T], &[T], &[T], Dims, &Masks, AttnParams),
    bhi: usize,
    i0: usize,
    acc: &mut [T],
    lse: &mut [T],
    sc: &mut FwdScratch<T>,
) {
    let (tq, tk, d, dv) = (dm.tq, dm.tk, dm.d, dm.dv);
    let scale = T::from_f64(p.scale);
    let nr = lse.len();
    let i1 = i0 + nr;
    let (qo, vo) = (bhi * tq * d, bhi * tk * dv);
    let qs = &mut sc.qs[..nr * d];
    for (x, &qv) in qs.iter_mut().zip(&q[qo + i0 * d..qo + i1 * d]) {
        *x = qv * scale;
    }
    let (m, l, s) = (&mut sc.m[..nr], &mut sc.l[..nr], &mut sc.s[..]);
    m.fill(T::NEG_INFINITY);
    l.fill(T::ZERO);
    for kb in (0..tk).step_by(BK) {
        if p.causal && kb >= i1 {
            break;
        }
        let nb = BK.min(tk - kb);
        let kt = block_at::<T, BK>(kt_all, bhi, tk, d, kb);
        tile_product::<T, BK>(qs, nr, d, kt, s);
        // The online softmax in phases, each a loop over the tile's rows: every row's step is
        // a short chain of dependent vector operations (a lane fold, then its horizontal
        // reduction), so one row after another left the pipes waiting on latency (a third
        // of the forward's time at BK = 64); rows side by side overlap. Per row the
        // arithmetic is exactly what it was.
        let mnew = &mut sc.mnew[..nr];
        for (r, s_r) in s.chunks_exact_mut(BK).take(nr).enumerate() {
            // Whole rows of `BK` (a constant, so the loops below unroll): the columns past
            // the `nb` keys are -inf after `apply`, so they change neither the maximum nor
            // the sum (their p is exactly 0).
            let s_r: &mut [T; BK] = s_r.try_into().expect("BK scores");
            mk.apply::<T, BK>(bhi, i0 + r, kb, nb, s_r);
            // `>` rather than `max`: one instruction per lane, and a NaN score is skipped
            // all the same (the comparison is false).
            mnew[r] = map_reduce(
                s_r,
                T::NEG_INFINITY,
                |v| v,
                |a, v| if v > a { v } else { a },
            );
        }
        // Rows with an unmasked key in this block.
        let mut live = [false; BQ];
        for r in 0..nr {
            let mloc = mnew[r];
            if mloc == T::NEG_INFINITY {
                // Every key of this block is masked for this row: its p are 0, and its m, l
                // and accumulator stay as they were.
                s[r * BK..(r + 1) * BK].fill(T::ZERO);
                continue;
            }
            live[r] = true;
            mnew[r] = m[r].max(mloc);
            // Rescale what earlier key blocks summed; nothing to rescale on the row's first
            // block (l and acc are 0, and exp(-inf) would only multiply them by 0): with one
            // key block, no scalar exp per row. (Also nothing when the maximum did not move:
            // the factor would be exp(0) = 1 exactly.)
            if m[r] != T::NEG_INFINITY && mnew[r] != m[r] {
                let corr = (m[r] - mnew[r]).exp();
                l[r] *= corr;
                acc[r * dv..(r + 1) * dv]
                    .iter_mut()
                    .for_each(|a| *a *= corr);
            }
        }
        for (r, s_r) in s.chunks_exact_mut(BK).take(nr).enumerate() {
            if !live[r] {
                continue;
            }
            // p = exp(s - m); masked scores are -inf, so their p is exactly 0.
            let mr = mnew[r];
            for x in s_r.iter_mut() {
                *x = (*x - mr).exp_fused();
            }
        }
        for (r, s_r) in s.chunks_exact(BK).take(nr).enumerate() {
            if live[r] {
                l[r] += sum(s_r);
                m[r] = mnew[r];
            }
        }
        tile_times_rows::<T, BK>(s, nr, nb, &v[vo + kb * dv..], dv, acc);
    }
    for r in 0..nr {
        let acc_r = &mut acc[r * dv..(r + 1) * dv];
        if l[r] > T::ZERO {
            let inv = T::ONE / l[r];
            acc_r.iter_mut().for_each(|a| *a *= inv);
            lse[r] = m[r] + l[r].ln();
        } else {
            acc_r.fill(T::ZERO);
            lse[r] = T::NEG_INFINITY;
        }
    }
}

/// Everything the backward tiles read.
struct Bwd<'a, T> {
    q: &'a [T],
    k: &'a [T],
    lse: &'a [T],
    dout: &'a [T],
    /// k and v as [`blocked_transpose`]s.
    kt: Vec<T>,
    vt: Vec<T>,
    /// `D_i = dO_i · O_i`, one per query row.
    big_d: Vec<T>,
    dm: Dims,
    mk: &'a Masks<'a>,
    p: AttnParams,
}

/// One task's scratch for a backward tile.
struct TileScratch<T> {
    qs: AlignedVec<T>,
    /// `P`, then used in place.
    pm: AlignedVec<T>,
    /// `dP`, then `dS·scale` in place.
    ds: AlignedVec<T>,
}

impl<T: Float> TileScratch<T> {
    fn new<const BK: usize>(dm: Dims) -> Self {
        TileScratch {
            qs: AlignedVec::zeroed(BQ_BWD * dm.d),
            pm: AlignedVec::zeroed(BQ_BWD * BK),
            ds: AlignedVec::zeroed(BQ_BWD * BK),
        }
    }
}

impl<T: Float> Bwd<'_, T> {
    /// Whether the tile of rows `i0..i1` and keys from `kb` is entirely above the causal
    /// diagonal (nothing to do).
    fn hidden(&self, i1: usize, kb: usize) -> bool {
        self.p.causal && kb >= i1
    }

    /// Fills `sc.pm` with `P` and `sc.ds` with `dS·scale` for rows `i0..i0 + nr` and keys
    /// `kb..kb + nb` of batch·head `bhi`.
    #[inline(always)]
    fn tile<const BK: usize>(
        &self,
        bhi: usize,
        i0: usize,
        nr: usize,
        kb: usize,
        nb: usize,
        sc: &mut TileScratch<T>,
    ) {
        let Dims { tq, tk, d, dv, .. } = self.dm;
        let scale = T::from_f64(self.p.scale);
        let (qo, row0) = (bhi * tq * d, bhi * tq + i0);
        for (x, &qv) in sc
            .qs
            .iter_mut()
            .zip(&self.q[qo + i0 * d..qo + (i0 + nr) * d])
        {
            *x = qv * scale;
        }
        let kt = block_at::<T, BK>(&self.kt, bhi, tk, d, kb);
        tile_product::<T, BK>(&sc.qs, nr, d, kt, &mut sc.pm);
        tile_product::<T, BK>(
            &self.dout[row0 * dv..(row0 + nr) * dv],
            nr,
            dv,
            block_at::<T, BK>(&self.vt, bhi, tk, dv, kb),
            &mut sc.ds,
        );
        for r in 0..nr {
            let (p_r, ds_r) = (
                &mut sc.pm[r * BK..(r + 1) * BK],
                &mut sc.ds[r * BK..(r + 1) * BK],
            );
            let l = self.lse[row0 + r];
            if l == T::NEG_INFINITY {
                p_r.fill(T::ZERO);
                ds_r.fill(T::ZERO);
                continue;
            }
            self.mk.apply::<T, BK>(bhi, i0 + r, kb, nb, p_r);
            let dd = self.big_d[row0 + r];
            // Whole rows of `BK` (a constant, so the loop unrolls): the columns past the `nb`
            // keys are -inf after `apply` (p = 0, dS = 0), and the products never read them.
            let (p_r, ds_r): (&mut [T; BK], &mut [T; BK]) = (
                p_r.try_into().expect("BK scores"),
                ds_r.try_into().expect("BK scores"),
            );
            for (pv, dsv) in p_r.iter_mut().zip(ds_r.iter_mut()) {
                *pv = (*pv - l).exp_fused();
                *dsv = *pv * (*dsv - dd) * scale;
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn bwd<T: Float, const BK: usize>(
    q: &[T],
    k: &[T],
    v: &[T],
    o: &[T],
    lse: &[T],
    dout: &[T],
    dm: Dims,
    mk: &Masks,
    p: AttnParams,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let dv = dm.dv;
    let big_d: Vec<T> = (0..dm.bh * dm.tq)
        .into_par_iter()
        .map(|r| dot(&dout[r * dv..(r + 1) * dv], &o[r * dv..(r + 1) * dv]))
        .collect();
    let b = Bwd {
        q,
        k,
        lse,
        dout,
        kt: blocked_transpose::<T, BK>(k, dm.bh, dm.tk, dm.d),
        vt: blocked_transpose::<T, BK>(v, dm.bh, dm.tk, dm.dv),
        big_d,
        dm,
        mk,
        p,
    };
    if dm.bh >= rayon::current_num_threads() {
        bwd_one_pass::<T, BK>(&b)
    } else {
        bwd_two_pass::<T, BK>(&b)
    }
}

/// One task per batch·head: every tile once, dQ, dK and dV from it.
fn bwd_one_pass<T: Float, const BK: usize>(b: &Bwd<T>) -> (Vec<T>, Vec<T>, Vec<T>) {
    let Dims { tq, tk, d, dv, .. } = b.dm;
    let mut dq = vec![T::ZERO; b.dm.bh * tq * d];
    let mut dk = vec![T::ZERO; b.dm.bh * tk * d];
    let mut dvv = vec![T::ZERO; b.dm.bh * tk * dv];
    dq.par_chunks_mut(tq * d)
        .zip(dk.par_chunks_mut(tk * d))
        .zip(dvv.par_chunks_mut(tk * dv))
        .enumerate()
        .for_each_init(
            || TileScratch::new::<BK>(b.dm),
            |sc, (bhi, ((dq, dk), dvb))| {
                vectorized(
                    #[inline(always)]
                    || {
                        let (qo, row0) = (bhi * tq * d, bhi * tq);
                        for i0 in (0..tq).step_by(BQ_BWD) {
                            let nr = BQ_BWD.min(tq - i0);
                            for kb in (0..tk).step_by(BK) {
                                if b.hidden(i0 + nr, kb) {
                                    break;
                                }
                                let nb = BK.min(tk - kb);
                                b.tile::<BK>(bhi, i0, nr, kb, nb, sc);
                                let (kr, dvr) = (&b.k[(bhi * tk + kb) * d..], kb * dv);
                                tile_times_rows::<T, BK>(&sc.ds, nr, nb, kr, d, &mut dq[i0 * d..]);
                                let (qr, dor) = (&b.q[qo + i0 * d..], &b.dout[(row0 + i0) * dv..]);
                                tile_t_times_rows::<T, BK>(
                                    &sc.pm,
                                    nr,
                                    nb,
                                    dor,
                                    dv,
                                    &mut dvb[dvr..],
                                );
                                tile_t_times_rows::<T, BK>(
                                    &sc.ds,
                                    nr,
                                    nb,
                                    qr,
                                    d,
                                    &mut dk[kb * d..],
                                );
                            }
                        }
                    },
                )
            },
        );
    (dq, dk, dvv)
}

/// Fewer batch·heads than threads: dQ by (batch·head, query block) tasks, then dK and dV by
/// (batch·head, key block) tasks, each recomputing its tiles. Same sums in the same order as
/// [`bwd_one_pass`].
fn bwd_two_pass<T: Float, const BK: usize>(b: &Bwd<T>) -> (Vec<T>, Vec<T>, Vec<T>) {
    let Dims { tq, tk, d, dv, .. } = b.dm;
    let nqb = tq.div_ceil(BQ_BWD);
    let dq_blocks: Vec<Vec<T>> = (0..b.dm.bh * nqb)
        .into_par_iter()
        .map(|task| {
            vectorized(
                #[inline(always)]
                || {
                    let (bhi, i0) = (task / nqb, (task % nqb) * BQ_BWD);
                    let nr = BQ_BWD.min(tq - i0);
                    let mut sc = TileScratch::new::<BK>(b.dm);
                    let mut dq = vec![T::ZERO; nr * d];
                    for kb in (0..tk).step_by(BK) {
                        if b.hidden(i0 + nr, kb) {
                            break;
                        }
                        let nb = BK.min(tk - kb);
                        b.tile::<BK>(bhi, i0, nr, kb, nb, &mut sc);
                        let kr = &b.k[(bhi * tk + kb) * d..];
                        tile_times_rows::<T, BK>(&sc.ds, nr, nb, kr, d, &mut dq);
                    }
                    dq
                },
            )
        })
        .collect();
    let nkb = tk.div_ceil(BK);
    let dkv_blocks: Vec<(Vec<T>, Vec<T>)> = (0..b.dm.bh * nkb)
        .into_par_iter()
        .map(|task| {
            vectorized(
                #[inline(always)]
                || {
                    let (bhi, kb) = (task / nkb, (task % nkb) * BK);
                    let nb = BK.min(tk - kb);
                    let mut sc = TileScratch::new::<BK>(b.dm);
                    let mut dk = vec![T::ZERO; nb * d];
                    let mut dvb = vec![T::ZERO; nb * dv];
                    let (qo, row0) = (bhi * tq * d, bhi * tq);
                    for i0 in (0..tq).step_by(BQ_BWD) {
                        let nr = BQ_BWD.min(tq - i0);
                        if b.hidden(i0 + nr, kb) {
                            continue;
                        }
                        b.tile::<BK>(bhi, i0, nr, kb, nb, &mut sc);
                        let (qr, dor) = (&b.q[qo + i0 * d..], &b.dout[(row0 + i0) * dv..]);
                        tile_t_times_rows::<T, BK>(&sc.pm, nr, nb, dor, dv, &mut dvb);
                        tile_t_times_rows::<T, BK>(&sc.ds, nr, nb, qr, d, &mut dk);
                    }
                    (dk, dvb)
                },
            )
        })
        .collect();
    let dq = dq_blocks.concat();
    let mut dk = vec![T::ZERO; b.dm.bh * tk * d];
    let mut dvv = vec![T::ZERO; b.dm.bh * tk * dv];
    for (task, (a, c)) in dkv_blocks.into_iter().enumerate() {
        let (bhi, kb) = (task / nkb, (task % nkb) * BK);
        let row = bhi * tk + kb;
        dk[row * d..row * d + a.len()].copy_from_slice(&a);
        dvv[row * dv..row * dv + c.len()].copy_from_slice(&c);
    }
    (dq, dk, dvv)
}

const OP: &str = "scaled_dot_product_attention";

macro_rules! dispatch {
    ($dtype:expr, $body:ident) => {
        match $dtype {
            DType::F32 => $body!(f32),
            DType::F64 => $body!(f64),
            d => {
                return Err(Error::UnsupportedDType {
                    op: OP,
                    dtype: d,
                    expected: "f32 or f64",
                })
            }
        }
    };
}

/// The operand as contiguous `[B, H, T, D]` values: borrowed when it already is, else gathered.
fn view<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<std::borrow::Cow<'a, [T]>> {
    let src = s.as_slice::<T>(OP)?;
    if l.contiguous_range().is_none() && l.dims().len() == 4 && l.strides()[3] == 1 {
        return Ok(std::borrow::Cow::Owned(gather_heads(src, l)));
    }
    Ok(contiguous_cow(src, l))
}

/// A `[B, H, T, D]` view whose rows of `D` are contiguous (a `permute` of a `[B, T, H, D]`
/// projection, or of the packed q/k/v) copied to contiguous memory: one task per batch·head,
/// rows of the usual head widths copied as fixed-size arrays. The generic strided gather
/// makes one `memcpy` call per row, which for heads of 4 values costs more than the copy.
fn gather_heads<T: WithDType>(src: &[T], l: &Layout) -> Vec<T> {
    let (d, st, off) = (l.dims(), l.strides(), l.offset());
    let (h, t, w) = (d[1], d[2], d[3]);
    let mut out = vec![T::zeroed(); l.elem_count()];
    if out.is_empty() {
        return out;
    }
    out.par_chunks_mut(t * w)
        .enumerate()
        .for_each(|(bhi, dst)| {
            let base = off + (bhi / h) * st[0] + (bhi % h) * st[1];
            match w {
                4 => copy_rows::<T, 4>(src, base, st[2], dst),
                8 => copy_rows::<T, 8>(src, base, st[2], dst),
                16 => copy_rows::<T, 16>(src, base, st[2], dst),
                32 => copy_rows::<T, 32>(src, base, st[2], dst),
                _ => {
                    for (i, row) in dst.chunks_exact_mut(w).enumerate() {
                        let o = base + i * st[2];
                        row.copy_from_slice(&src[o..o + w]);
                    }
                }
            }
        });
    out
}

/// `dst`'s rows of `W` values from `src[base + i * stride..]`.
#[inline(always)]
fn copy_rows<T: Copy, const W: usize>(src: &[T], base: usize, stride: usize, dst: &mut [T]) {
    for (i, row) in dst.chunks_exact_mut(W).enumerate() {
        let o = base + i * stride;
        let from: &[T; W] = src[o..o + W].try_into().expect("W values");
        let to: &mut [T; W] = row.try_into().expect("W values");
        *to = *from;
    }
}

impl AttentionBackend for CpuStorage {
    fn attention_fwd(
        &self,
        q_layout: &Layout,
        k: &Self,
        k_layout: &Layout,
        v: &Self,
        v_layout: &Layout,
        masks: &[AttnMask<Self>],
        p: AttnParams,
    ) -> Result<(Self, Self)> {
        let dm = Dims::of(q_layout, v_layout, k_layout, masks)?;
        let mk = masks_of(masks, p.causal, dm.h)?;
        macro_rules! run {
            ($t:ty) => {{
                let (q, k, v) = (
                    view::<$t>(self, q_layout)?,
                    view::<$t>(k, k_layout)?,
                    view::<$t>(v, v_layout)?,
                );
                let (o, lse) = match fwd_key_block(dm.tk, p.causal) {
                    16 => fwd::<$t, 16>(&q, &k, &v, dm, &mk, p),
                    32 => fwd::<$t, 32>(&q, &k, &v, dm, &mk, p),
                    BK_MAX => fwd::<$t, BK_MAX>(&q, &k, &v, dm, &mk, p),
                    _ => fwd::<$t, BK_FWD_WIDE>(&q, &k, &v, dm, &mk, p),
                };
                (CpuStorage::from_vec(o), CpuStorage::from_vec(lse))
            }};
        }
        Ok(dispatch!(self.dtype(), run))
    }

    fn attention_bwd(
        &self,
        q_layout: &Layout,
        k: &Self,
        k_layout: &Layout,
        v: &Self,
        v_layout: &Layout,
        out: &Self,
        lse: &Self,
        d_out: &Self,
        d_out_layout: &Layout,
        masks: &[AttnMask<Self>],
        p: AttnParams,
    ) -> Result<(Self, Self, Self)> {
        let dm = Dims::of(q_layout, v_layout, k_layout, masks)?;
        let mk = masks_of(masks, p.causal, dm.h)?;
        macro_rules! run {
            ($t:ty) => {{
                let (q, k, v) = (
                    view::<$t>(self, q_layout)?,
                    view::<$t>(k, k_layout)?,
                    view::<$t>(v, v_layout)?,
                );
                let g = view::<$t>(d_out, d_out_layout)?;
                let (o, lse) = (out.as_slice::<$t>(OP)?, lse.as_slice::<$t>(OP)?);
                if o.len() != dm.bh * dm.tq * dm.dv || lse.len() != dm.bh * dm.tq {
                    return Err(Error::msg(format!(
                        "{OP}: saved output/lse do not match q and v"
                    )));
                }
                let (dq, dk, dv) = match key_block(dm.tk) {
                    16 => bwd::<$t, 16>(&q, &k, &v, o, lse, &g, dm, &mk, p),
                    32 => bwd::<$t, 32>(&q, &k, &v, o, lse, &g, dm, &mk, p),
                    _ => bwd::<$t, BK_MAX>(&q, &k, &v, o, lse, &g, dm, &mk, p),
                };
                (
                    CpuStorage::from_vec(dq),
                    CpuStorage::from_vec(dk),
                    CpuStorage::from_vec(dv),
                )
            }};
        }
        Ok(dispatch!(self.dtype(), run))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-head gather equals the generic strided gather, for the head widths it copies
    /// as arrays and for others, from a `[B, T, H, D]` projection permuted to `[B, H, T, D]`
    /// with an offset (as a narrowed packed q/k/v is).
    #[test]
    fn gather_heads_matches_the_strided_gather() {
        for w in [1, 3, 4, 8, 16, 32] {
            let (b, t, h) = (2, 5, 3);
            let src: Vec<f32> = (0..7 + b * t * 2 * h * w).map(|i| i as f32).collect();
            // [B, T, 2H, D] with the second half of the heads taken, permuted to [B, H, T, D].
            let l = Layout::new(
                crate::tensor::Shape::from(vec![b, h, t, w]),
                vec![t * 2 * h * w, w, 2 * h * w, 1],
                7 + h * w,
            );
            assert!(l.contiguous_range().is_none());
            assert_eq!(
                gather_heads(&src, &l),
                super::super::gather_strided(&src, &l),
                "w {w}"
            );
        }
    }

    /// A mask whose keys are side by side (the select path) hides the same scores as the
    /// same mask read at a key stride of 2 (the strided path).
    #[test]
    fn contiguous_and_strided_masks_hide_the_same_keys() {
        const BK: usize = 16;
        let (tk, nb) = (13, 13);
        let bits: Vec<u8> = (0..tk).map(|j| u8::from(j % 3 == 1)).collect();
        let spread: Vec<u8> = bits.iter().flat_map(|&m| [m, 7]).collect();
        for attend_if_set in [false, true] {
            let run = |data: &[u8], key_stride: usize| {
                let mk = Masks {
                    list: vec![(data, [0, 0, 0, key_stride], 0, attend_if_set)],
                    causal: false,
                    h: 1,
                };
                let mut s: Vec<f32> = (0..BK).map(|j| j as f32).collect();
                mk.apply::<f32, BK>(0, 0, 0, nb, &mut s);
                s
            };
            let (a, b) = (run(&bits, 1), run(&spread, 2));
            assert_eq!(a, b);
            assert_eq!(
                a.iter().filter(|x| x.is_finite()).count(),
                if attend_if_set { 4 } else { 9 }
            );
        }
    }

    /// The one-pass and two-pass backwards give bitwise the same gradients (the same sums in
    /// the same order), with a key padding mask, a causal mask, a fully masked batch, and
    /// sizes that leave partial query and key tiles.
    #[test]
    fn one_pass_and_two_pass_backwards_agree_bitwise() {
        passes_agree::<16>();
        passes_agree::<32>();
        passes_agree::<BK_MAX>();
    }

    /// The two backwards at key tile width `BK` (83 keys: several tiles at every width).
    fn passes_agree<const BK: usize>() {
        let (b, h, tq, tk, d, dv) = (2, 3, 37, 83, 5, 7);
        let dm = Dims {
            h,
            tq,
            tk,
            d,
            dv,
            bh: b * h,
        };
        let val = |i: usize, f: f64| (i as f64 * f).sin() * 0.8;
        let q: Vec<f64> = (0..b * h * tq * d).map(|i| val(i, 0.37)).collect();
        let k: Vec<f64> = (0..b * h * tk * d).map(|i| val(i, 0.91)).collect();
        let v: Vec<f64> = (0..b * h * tk * dv).map(|i| val(i, 0.53)).collect();
        let g: Vec<f64> = (0..b * h * tq * dv).map(|i| val(i, 0.29)).collect();
        // Batch 0 pads its last 3 keys; batch 1 pads every key (all rows fully masked).
        let pad: Vec<u8> = (0..b * tk).map(|i| u8::from(i >= tk - 3)).collect();
        for causal in [false, true] {
            let mk = Masks {
                list: vec![(&pad[..], [tk, 0, 0, 1], 0, false)],
                causal,
                h,
            };
            let p = AttnParams { scale: 0.5, causal };
            let (o, lse) = fwd::<f64, BK>(&q, &k, &v, dm, &mk, p);
            assert!(o[tq * dv * h..].iter().all(|&x| x == 0.0), "masked batch");
            let big_d = (0..b * h * tq)
                .map(|r| dot(&g[r * dv..(r + 1) * dv], &o[r * dv..(r + 1) * dv]))
                .collect();
            let bw = Bwd {
                q: &q,
                k: &k,
                lse: &lse,
                dout: &g,
                kt: blocked_transpose::<f64, BK>(&k, dm.bh, tk, d),
                vt: blocked_transpose::<f64, BK>(&v, dm.bh, tk, dv),
                big_d,
                dm,
                mk: &mk,
                p,
            };
            let one = bwd_one_pass::<f64, BK>(&bw);
            let two = bwd_two_pass::<f64, BK>(&bw);
            assert!(one.0.iter().any(|&x| x != 0.0), "dq all zero");
            assert_eq!(one, two, "causal {causal}");
        }
    }
}
