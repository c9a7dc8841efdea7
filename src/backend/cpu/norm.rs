//! CPU normalization kernels (math in `backend/norm.rs`).
//!
//! Approach: strided inputs are gathered once into contiguous `[N, C, S]` buffers
//! (`contiguous_cow`, free for contiguous views). Group statistics (layer norm is one group
//! with `S = 1`) are computed per row of `(C/G)·S` contiguous elements; batch statistics one
//! channel per task, over its `N` contiguous runs of `S` elements. Statistics are accumulated
//! in f64 with a two-pass (mean, then centred squares) variance, so f32 inputs lose nothing to
//! cancellation; the f64 sums go through `lanes::sum_by` (independent partial sums) so they
//! vectorize. The output passes run in `T` over plain slices: `y = (x - mean)·(rstd·w) + b`
//! with the scale hoisted per channel (or, when `S = 1`, zipped with the weight row), and an
//! absent weight/bias replaced by a ones/zeros vector up front rather than tested per element.
//! The group kernels run per task inside `simd::vectorized` (AVX-512 or AVX2 where the CPU has
//! them; the same bits on every instruction set, `tests/simd.rs`), and write their outputs
//! into uninitialised memory (`written_vec`), never zeroed first.
//! Memory traffic, from DRAM: the forward reads x once and writes y once (the statistics
//! passes re-read a row from L1); the group backward reads x and dy once and writes dx once
//! (its per-row passes after the first re-read the row from L1). Outputs larger than the
//! last-level cache are written row by row through a scratch row and streaming stores
//! (`stream.rs`), so their lines are not read from memory first. The weight/bias partial
//! sums are produced per fixed run of rows and summed in a fixed order afterwards, so results
//! do not depend on the thread count.

use super::elementwise::{assume_init, written_vec};
use super::lanes::sum_by_wide;
use super::simd::vectorized;
use super::stream::{self, write_chunked, RowScratch};
use super::{contiguous_cow, CpuStorage, Float};
use crate::backend::norm::{NormBackend, NormDims, Param};
use crate::backend::BackendStorage;
use crate::tensor::{DType, Layout, WithDType};
use crate::{Error, Result};
use rayon::prelude::*;
use std::borrow::Cow;
use std::mem::MaybeUninit;

fn view<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout, op: &'static str) -> Result<Cow<'a, [T]>> {
    Ok(contiguous_cow(s.as_slice::<T>(op)?, l))
}
fn param<'a, T: WithDType>(
    p: Param<'a, CpuStorage>,
    op: &'static str,
) -> Result<Option<Cow<'a, [T]>>> {
    p.map(|(s, l)| view::<T>(s, l, op)).transpose()
}
fn contiguous<'a, T: WithDType>(s: &'a CpuStorage, op: &'static str) -> Result<&'a [T]> {
    s.as_slice::<T>(op)
}

/// Runs `$body` with `T` bound to f32 or f64 according to `$dtype`.
macro_rules! dispatch {
    ($op:expr, $dtype:expr, $body:ident) => {
        match $dtype {
            DType::F32 => $body!(f32),
            DType::F64 => $body!(f64),
            d => {
                return Err(Error::UnsupportedDType {
                    op: $op,
                    dtype: d,
                    expected: "f32 or f64",
                })
            }
        }
    };
}

/// Mean and biased variance over `runs` (one statistic set split into contiguous slices),
/// two-pass in f64: the mean, then the centred squares. Plain `for` loops, not
/// `map(..).sum()`: `Iterator::sum` is not always inlined, and out of line it is compiled
/// for the baseline instruction set, not the caller's [`vectorized`] one.
#[inline(always)]
fn mean_var<'a, T: Float>(runs: impl Iterator<Item = &'a [T]> + Clone) -> (f64, f64) {
    let (mut n, mut sum) = (0usize, 0.0f64);
    for r in runs.clone() {
        n += r.len();
        sum += sum_by_wide(r, r, |v, _| v.to_f64());
    }
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mean = sum / n as f64;
    let mut squares = 0.0f64;
    for r in runs {
        squares += sum_by_wide(r, r, |v, _| {
            let c = v.to_f64() - mean;
            c * c
        });
    }
    (mean, squares / n as f64)
}

/// The weight, or ones when there is none (one multiply per element is cheaper than an
/// `Option` test inside every inner loop, and `x * 1` is exact).
fn or_fill<'a, T: Float>(p: Option<&'a [T]>, c: usize, fill: T, buf: &'a mut Vec<T>) -> &'a [T] {
    match p {
        Some(p) => p,
        None => {
            *buf = vec![fill; c];
            buf
        }
    }
}

/// `y = (x - mu) * (rs * w[c]) + b[c]` over `cg` channels of `s` contiguous elements each,
/// in `T`, writing every element of `y`. With `s == 1` (layer norm) the channel varies per
/// element, so that case gets its own flat loop; otherwise scale and shift are hoisted per
/// channel.
#[inline(always)]
fn affine_rows<T: Float>(
    x: &[T],
    y: &mut [MaybeUninit<T>],
    s: usize,
    mu: T,
    rs: T,
    w: &[T],
    b: &[T],
) {
    if s == 1 {
        for (((y, &x), &w), &b) in y.iter_mut().zip(x).zip(w).zip(b) {
            *y = MaybeUninit::new((x - mu) * (rs * w) + b);
        }
        return;
    }
    for (((y, x), &w), &b) in y.chunks_exact_mut(s).zip(x.chunks_exact(s)).zip(w).zip(b) {
        let scale = rs * w;
        for (y, &x) in y.iter_mut().zip(x) {
            *y = MaybeUninit::new((x - mu) * scale + b);
        }
    }
}

type Three<T> = (Vec<T>, Vec<T>, Vec<T>);

/// Guards the primitive against inconsistent arguments (the op layer validates user input;
/// this keeps a direct caller of the primitive from panicking on an index).
fn check_args(
    op: &'static str,
    x: &Layout,
    d: NormDims,
    groups: usize,
    params: &[Param<CpuStorage>],
) -> Result<()> {
    let bad_groups = groups == 0 || !d.c.is_multiple_of(groups);
    let bad_x = x.elem_count() != d.n * d.c * d.s;
    let bad_p = params.iter().flatten().any(|(_, l)| l.elem_count() != d.c);
    if bad_groups || bad_x || bad_p {
        return Err(Error::shape(
            op,
            format!("inconsistent arguments: {d:?}, {groups} groups"),
            &[x.shape()],
        ));
    }
    Ok(())
}

fn group_fwd<T: Float>(
    x: &[T],
    d: NormDims,
    groups: usize,
    w: Option<&[T]>,
    b: Option<&[T]>,
    eps: f64,
) -> Three<T> {
    let cg = d.c / groups;
    let m = cg * d.s;
    let rows = d.n * groups;
    let mut mean = vec![T::ZERO; rows];
    let mut rstd = vec![T::ZERO; rows];
    if m == 0 {
        return (vec![T::ZERO; x.len()], mean, rstd);
    }
    let (mut wbuf, mut bbuf) = (Vec::new(), Vec::new());
    let w = or_fill(w, d.c, T::ONE, &mut wbuf);
    let b = or_fill(b, d.c, T::ZERO, &mut bbuf);
    let stream = stream::streams(std::mem::size_of_val(x));
    // SAFETY: `x.len() == rows * m` (`check_args`), so the `rows` chunks of `m` cover `y`, and
    // `affine_rows` writes each whole (into `yr` or into the scratch row streamed to it).
    let y = unsafe {
        written_vec(x.len(), |y| {
            y.par_chunks_mut(m)
                .zip(x.par_chunks(m))
                .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
                .enumerate()
                .with_min_len((PAR_ROW_ELEMS / m).max(1))
                .for_each_init(RowScratch::default, |scratch, (r, ((yr, xr), (mu, rs)))| {
                    vectorized(
                        #[inline(always)]
                        || {
                            let (mf, var) = mean_var(std::iter::once(xr));
                            *mu = T::from_f64(mf);
                            *rs = T::from_f64(1.0 / (var + eps).sqrt());
                            let c0 = (r % groups) * cg;
                            let (wg, bg) = (&w[c0..c0 + cg], &b[c0..c0 + cg]);
                            let (mu, rs) = (*mu, *rs);
                            if d.s == 1 {
                                // Layer norm: elementwise along the row, so streamed line by
                                // line as it is computed (`stream::write_chunked`).
                                let next = stream::next_row(x, r, m);
                                write_chunked(
                                    yr,
                                    stream,
                                    #[inline(always)]
                                    |off, y| {
                                        if let Some(v) = next.get(off) {
                                            stream::prefetch(v);
                                        }
                                        let end = off + y.len();
                                        let (x, w, b) =
                                            (&xr[off..end], &wg[off..end], &bg[off..end]);
                                        affine_rows(x, y, 1, mu, rs, w, b)
                                    },
                                );
                            } else {
                                scratch.write_row(
                                    yr,
                                    stream,
                                    #[inline(always)]
                                    |yr| affine_rows(xr, yr, d.s, mu, rs, wg, bg),
                                );
                            }
                        },
                    )
                })
        })
    };
    (y, mean, rstd)
}

/// Statistic rows per task of the group backward. Fixed (not derived from the thread count)
/// so the order of the weight/bias partial sums, hence the result, is too.
const BWD_ROWS_PER_TASK: usize = 64;

/// Elements per piece of the layer-norm backward's first pass, which prefetches the matching
/// piece of the next row (16 lines of `x` and 16 of `dy` for f32).
const BWD_PIECE: usize = 256;

/// Elements below which consecutive rows share one Rayon task.
const PAR_ROW_ELEMS: usize = 4096;

/// One statistic row's saved state and its weight/bias slices for the group backward.
struct BwdRow<'a, T> {
    x: &'a [T],
    dy: &'a [T],
    /// The weight of the row's channels.
    w: &'a [T],
    mu: T,
    rs: T,
}

/// The backward of one layer-norm row (`S = 1`: element `i` is channel `i`):
/// `dx = rs (g w - mean(g w) - xhat mean(g w xhat))` with `xhat = (x - mu) rs`, and the
/// partials `pw[i] += g xhat`, `pb[i] += g` in `T` (over one task's rows; the caller adds the
/// tasks' partials in f64). `gw` is scratch for `g w`.
///
/// The row is read from memory once, by the first pass; the others re-read it from L1:
/// 1. the partials and `gw = g w`, in `T`, one flat loop (16 lanes with AVX-512), in pieces of
///    [`BWD_PIECE`] elements, each first prefetching the matching lines of the next row's `x`
///    and `dy` (`next`; empty for the last row), so the next row's reads from memory overlap
///    this row's arithmetic;
/// 2. the row sums `sum g w` and `sum g w x` in f64 (`sum_by_wide`; products of two f32 are
///    exact in f64, so `sum g w xhat = rs (sum g w x - mu sum g w)` loses nothing to the
///    subtraction that f32 `xhat` would not);
/// 3. `dx`, streamed line by line past the last-level cache (`stream`, `write_chunked`).
///
/// Passes 1 and 2 used to be one loop with the f64 lane accumulators inside it; LLVM kept those
/// 16 accumulators on the stack (a load and a store per add) and ran the f32 work at 8 lanes;
/// LayerNorm forward+backward is 5-10% faster for it with the rows in L2 and 4-9% from
/// memory (docs/PERF.md, session 21).
/// Prefetching in pass 3 instead was slower: its loop is too short to hide the requests.
#[inline(always)]
fn layer_row_bwd<T: Float>(
    row: BwdRow<T>,
    next: (&[T], &[T]),
    dx: &mut [MaybeUninit<T>],
    stream: bool,
    gw: &mut [T],
    pw: &mut [T],
    pb: &mut [T],
) {
    let m = row.x.len();
    let (x, g, w) = (&row.x[..m], &row.dy[..m], &row.w[..m]);
    let (gw, pw, pb, dx) = (&mut gw[..m], &mut pw[..m], &mut pb[..m], &mut dx[..m]);
    let (mu, rs) = (row.mu, row.rs);
    let pieces = pw
        .chunks_mut(BWD_PIECE)
        .zip(pb.chunks_mut(BWD_PIECE))
        .zip(gw.chunks_mut(BWD_PIECE))
        .zip(x.chunks(BWD_PIECE).zip(g.chunks(BWD_PIECE)))
        .zip(w.chunks(BWD_PIECE));
    for (c, ((((pw, pb), gw), (x, g)), w)) in pieces.enumerate() {
        for next in [next.0, next.1] {
            stream::prefetch_piece(next, c, BWD_PIECE);
        }
        let (pw, pb, gw) = (pw.iter_mut(), pb.iter_mut(), gw.iter_mut());
        for ((((pw, pb), gw), (&x, &g)), &w) in pw.zip(pb).zip(gw).zip(x.iter().zip(g)).zip(w) {
            *pw += g * ((x - mu) * rs);
            *pb += g;
            *gw = g * w;
        }
    }
    let sum_gw = sum_by_wide(gw, gw, |v, _| v.to_f64());
    let sum_gwx = sum_by_wide(gw, x, |v, x| v.to_f64() * x.to_f64());
    let a = sum_gw / m as f64;
    let bb = rs.to_f64() * (sum_gwx - mu.to_f64() * sum_gw) / m as f64;
    let (a, bb) = (T::from_f64(a), T::from_f64(bb));
    write_chunked(
        dx,
        stream,
        #[inline(always)]
        |off, dx| {
            let end = off + dx.len();
            for ((o, &x), &gw) in dx.iter_mut().zip(&x[off..end]).zip(&gw[off..end]) {
                let xh = (x - mu) * rs;
                *o = MaybeUninit::new(rs * (gw - a - xh * bb));
            }
        },
    );
}

/// The backward of one group-norm row: `cg` channels of `s` contiguous elements, the same
/// formulas as [`layer_row_bwd`] with the weight constant along each channel, so the row sums
/// are `sum_c w[c] (channel sums)`.
#[inline(always)]
fn group_row_bwd<T: Float>(
    row: BwdRow<T>,
    s: usize,
    dx: &mut [MaybeUninit<T>],
    pw: &mut [f64],
    pb: &mut [f64],
) {
    let (mu, rs) = (row.mu, row.rs);
    let xhat = |x: T| ((x - mu) * rs).to_f64();
    let (mut sum_gw, mut sum_gwx) = (0.0f64, 0.0f64);
    let channels = row.dy.chunks_exact(s).zip(row.x.chunks_exact(s)).zip(row.w);
    for (((g, xc), &wv), (pw, pb)) in channels.zip(pw.iter_mut().zip(pb.iter_mut())) {
        let sg = sum_by_wide(g, g, |g, _| g.to_f64());
        let sgx = sum_by_wide(g, xc, |g, x| g.to_f64() * xhat(x));
        *pw += sgx;
        *pb += sg;
        sum_gw += wv.to_f64() * sg;
        sum_gwx += wv.to_f64() * sgx;
    }
    let m = row.x.len() as f64;
    let (a, bb) = (T::from_f64(sum_gw / m), T::from_f64(sum_gwx / m));
    let channels = row.dy.chunks_exact(s).zip(row.x.chunks_exact(s)).zip(row.w);
    for (dxc, ((g, xc), &wv)) in dx.chunks_exact_mut(s).zip(channels) {
        for ((o, &gv), &xv) in dxc.iter_mut().zip(g).zip(xc) {
            let xh = (xv - mu) * rs;
            *o = MaybeUninit::new(rs * (gv * wv - a - xh * bb));
        }
    }
}

/// What every task of [`group_bwd`] reads: the input, the output gradient, the saved
/// statistics (one per row of `cg * s` elements), the weight (ones when there is none), and
/// whether `dx` is streamed.
struct BwdInputs<'a, T> {
    x: &'a [T],
    dy: &'a [T],
    mean: &'a [T],
    rstd: &'a [T],
    w: &'a [T],
    cg: usize,
    s: usize,
    groups: usize,
    stream: bool,
}

/// One task of [`group_bwd`]: the statistic rows from `r0` on, one per row of `dxt`, and the
/// task's partial sums for dw and db over all channels (`pw`, `pb`, in f64, zeroed by the
/// caller). Layer norm (`s == 1`) sums its partials in `T` (one add per element over the
/// task's rows) and turns them into f64 once at the end.
#[inline(always)]
fn bwd_task<T: Float>(
    inp: &BwdInputs<T>,
    r0: usize,
    dxt: &mut [MaybeUninit<T>],
    pw: &mut [f64],
    pb: &mut [f64],
) {
    let (cg, s) = (inp.cg, inp.s);
    let m = cg * s;
    let layer = s == 1;
    let n_layer = if layer { pw.len() } else { 0 };
    let (mut lw, mut lb) = (vec![T::ZERO; n_layer], vec![T::ZERO; n_layer]);
    let mut gw = vec![T::ZERO; if layer { m } else { 0 }];
    let mut scratch = RowScratch::default();
    for (k, dxr) in dxt.chunks_exact_mut(m).enumerate() {
        let r = r0 + k;
        let c0 = (r % inp.groups) * cg;
        let row = BwdRow {
            x: &inp.x[r * m..(r + 1) * m],
            dy: &inp.dy[r * m..(r + 1) * m],
            w: &inp.w[c0..c0 + cg],
            mu: inp.mean[r],
            rs: inp.rstd[r],
        };
        if layer {
            let (lw, lb) = (&mut lw[c0..c0 + cg], &mut lb[c0..c0 + cg]);
            let next = (
                stream::next_row(inp.x, r, m),
                stream::next_row(inp.dy, r, m),
            );
            layer_row_bwd(row, next, dxr, inp.stream, &mut gw, lw, lb);
        } else {
            let (pw, pb) = (&mut pw[c0..c0 + cg], &mut pb[c0..c0 + cg]);
            scratch.write_row(
                dxr,
                inp.stream,
                #[inline(always)]
                |dxr| group_row_bwd(row, s, dxr, pw, pb),
            );
        }
    }
    for (p, l) in pw.iter_mut().zip(&lw).chain(pb.iter_mut().zip(&lb)) {
        *p = l.to_f64();
    }
}

#[allow(clippy::too_many_arguments)]
fn group_bwd<T: Float>(
    x: &[T],
    dy: &[T],
    mean: &[T],
    rstd: &[T],
    d: NormDims,
    groups: usize,
    w: Option<&[T]>,
) -> Three<T> {
    let (cg, s) = (d.c / groups, d.s);
    let m = cg * s;
    let cast = |v: Vec<f64>| v.into_iter().map(T::from_f64).collect();
    if m == 0 {
        return (
            vec![T::ZERO; x.len()],
            cast(vec![0.0; d.c]),
            cast(vec![0.0; d.c]),
        );
    }
    let mut wbuf = Vec::new();
    let w = or_fill(w, d.c, T::ONE, &mut wbuf);
    let rows_per_task = BWD_ROWS_PER_TASK;
    let stream = stream::streams(std::mem::size_of_val(x));
    // Per task (a fixed run of statistic rows): dx, and partial sums for dw and db over all
    // channels, accumulated in f64, each task's in its own slice of one buffer
    // (`[task][dw, db][channel]`), which the tasks initialise themselves. Kept as a `Vec` per
    // task, the partials (16 KiB a task for 1024 channels, 8 MiB for a 128 MiB input in tasks
    // of 64 rows) could go back to the system when the call ended (glibc trims its heaps) and
    // be faulted in afresh by the next, page by page: 3 ms of a 15 ms backward in a probe
    // process (docs/PERF.md, session 24). One buffer of this size comes back from the
    // caching allocator without faults.
    let tasks = x.len().div_ceil(m * rows_per_task);
    let inputs = BwdInputs {
        x,
        dy,
        mean,
        rstd,
        w,
        cg,
        s,
        groups,
        stream,
    };
    let mut dx = Vec::new();
    // SAFETY: `x.len()` is a whole number of rows of `m` (`check_args`), so the tasks' chunks
    // cover dx in whole rows, and `layer_row_bwd` / `group_row_bwd` write each row whole; the
    // dx chunks and the partials' chunks are both `tasks` many, and each task writes the
    // whole of its partials' chunk before reading it.
    let partials = unsafe {
        written_vec(tasks * 2 * d.c, |parts| {
            dx = written_vec(x.len(), |dx| {
                dx.par_chunks_mut(m * rows_per_task)
                    .zip(parts.par_chunks_mut(2 * d.c))
                    .enumerate()
                    .for_each(|(t, (dxt, part))| {
                        part.fill(MaybeUninit::new(0.0));
                        // SAFETY: every element was written just above.
                        let part = assume_init(part);
                        let (pw, pb) = part.split_at_mut(d.c);
                        let r0 = t * rows_per_task;
                        vectorized(
                            #[inline(always)]
                            || bwd_task(&inputs, r0, dxt, pw, pb),
                        );
                    });
            });
        })
    };
    let (mut dw, mut db) = (vec![0.0f64; d.c], vec![0.0f64; d.c]);
    for part in partials.chunks_exact(2 * d.c) {
        let (pw, pb) = part.split_at(d.c);
        dw.iter_mut().zip(pw).for_each(|(o, &p)| *o += p);
        db.iter_mut().zip(pb).for_each(|(o, &p)| *o += p);
    }
    (dx, cast(dw), cast(db))
}

/// The `N` contiguous runs of `S` elements that make up channel `ch` of an `[N, C, S]` buffer.
fn channel_runs<T>(x: &[T], d: NormDims, ch: usize) -> impl Iterator<Item = &[T]> + Clone {
    let (c, s) = (d.c, d.s);
    (0..d.n).map(move |ni| &x[(ni * c + ch) * s..(ni * c + ch + 1) * s])
}

fn batch_fwd<T: Float>(
    x: &[T],
    d: NormDims,
    running: Option<(&[T], &[T])>,
    w: Option<&[T]>,
    b: Option<&[T]>,
    eps: f64,
) -> Three<T> {
    let (c, s) = (d.c, d.s);
    let stats: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ch| match running {
            Some((rm, rv)) => (rm[ch].to_f64(), 1.0 / (rv[ch].to_f64() + eps).sqrt()),
            None => {
                let (mu, var) = mean_var(channel_runs(x, d, ch));
                (mu, 1.0 / (var + eps).sqrt())
            }
        })
        .collect();
    let mean: Vec<T> = stats.iter().map(|p| T::from_f64(p.0)).collect();
    let rstd: Vec<T> = stats.iter().map(|p| T::from_f64(p.1)).collect();
    let (mut wbuf, mut bbuf) = (Vec::new(), Vec::new());
    let w = or_fill(w, c, T::ONE, &mut wbuf);
    let b = or_fill(b, c, T::ZERO, &mut bbuf);
    let mut y = vec![T::ZERO; x.len()];
    if s > 0 {
        // One `[C, S]` sample per item: each channel is a contiguous run of `S` elements.
        y.par_chunks_mut(c * s)
            .zip(x.par_chunks(c * s))
            .with_min_len((PAR_ROW_ELEMS / (c * s)).max(1))
            .for_each(|(ys, xs)| {
                for (ch, (yr, xr)) in ys.chunks_exact_mut(s).zip(xs.chunks_exact(s)).enumerate() {
                    let scale = rstd[ch] * w[ch];
                    let (mu, bc) = (mean[ch], b[ch]);
                    for (y, &x) in yr.iter_mut().zip(xr) {
                        *y = (x - mu) * scale + bc;
                    }
                }
            });
    }
    (y, mean, rstd)
}

#[allow(clippy::too_many_arguments)]
fn batch_bwd<T: Float>(
    x: &[T],
    dy: &[T],
    mean: &[T],
    rstd: &[T],
    d: NormDims,
    w: Option<&[T]>,
    batch_stats: bool,
) -> Three<T> {
    let (n, c, s) = (d.n, d.c, d.s);
    let m = n * s;
    // Per channel: (sum dy, sum dy * xhat), in f64.
    let sums: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let (mu, rs) = (mean[ch], rstd[ch]);
            channel_runs(x, d, ch).zip(channel_runs(dy, d, ch)).fold(
                (0.0, 0.0),
                |(sg, sgx), (xr, gr)| {
                    (
                        sg + sum_by_wide(gr, gr, |g, _| g.to_f64()),
                        sgx + sum_by_wide(gr, xr, |g, x| g.to_f64() * ((x - mu) * rs).to_f64()),
                    )
                },
            )
        })
        .collect();
    let mut wbuf = Vec::new();
    let w = or_fill(w, c, T::ONE, &mut wbuf);
    // Per channel: dx = k * (dy - a - (x - mu) * rs * bb) with k = w * rs.
    let coef: Vec<(T, T, T)> = sums
        .iter()
        .enumerate()
        .map(|(ch, &(sg, sgx))| {
            let (a, bb) = if batch_stats {
                (sg / m as f64, sgx / m as f64)
            } else {
                (0.0, 0.0)
            };
            (w[ch] * rstd[ch], T::from_f64(a), T::from_f64(bb))
        })
        .collect();
    let mut dx = vec![T::ZERO; x.len()];
    if s > 0 {
        dx.par_chunks_mut(c * s)
            .zip(x.par_chunks(c * s).zip(dy.par_chunks(c * s)))
            .with_min_len((PAR_ROW_ELEMS / (c * s)).max(1))
            .for_each(|(dxs, (xs, gs))| {
                let runs = dxs
                    .chunks_exact_mut(s)
                    .zip(xs.chunks_exact(s).zip(gs.chunks_exact(s)));
                for (ch, (dxr, (xr, gr))) in runs.enumerate() {
                    let (k, a, bb) = coef[ch];
                    let (mu, rsb) = (mean[ch], rstd[ch] * bb);
                    for ((o, &xv), &g) in dxr.iter_mut().zip(xr).zip(gr) {
                        *o = k * (g - a - (xv - mu) * rsb);
                    }
                }
            });
    }
    let dw = sums.iter().map(|p| T::from_f64(p.1)).collect();
    let db = sums.iter().map(|p| T::from_f64(p.0)).collect();
    (dx, dw, db)
}

fn store<T: WithDType>(t: (Vec<T>, Vec<T>, Vec<T>)) -> (CpuStorage, CpuStorage, CpuStorage) {
    (
        CpuStorage::from_vec(t.0),
        CpuStorage::from_vec(t.1),
        CpuStorage::from_vec(t.2),
    )
}

impl NormBackend for CpuStorage {
    fn group_norm_fwd(
        &self,
        x_layout: &Layout,
        dims: NormDims,
        groups: usize,
        weight: Param<Self>,
        bias: Param<Self>,
        eps: f64,
    ) -> Result<(Self, Self, Self)> {
        const OP: &str = "group_norm";
        check_args(OP, x_layout, dims, groups, &[weight, bias])?;
        macro_rules! run {
            ($t:ty) => {{
                let x = view::<$t>(self, x_layout, OP)?;
                let (w, b) = (param::<$t>(weight, OP)?, param::<$t>(bias, OP)?);
                store(group_fwd(&x, dims, groups, w.as_deref(), b.as_deref(), eps))
            }};
        }
        Ok(dispatch!(OP, self.dtype(), run))
    }

    fn group_norm_bwd(
        &self,
        x_layout: &Layout,
        dy: &Self,
        dy_layout: &Layout,
        mean: &Self,
        rstd: &Self,
        dims: NormDims,
        groups: usize,
        weight: Param<Self>,
    ) -> Result<(Self, Self, Self)> {
        const OP: &str = "group_norm_backward";
        check_args(OP, x_layout, dims, groups, &[weight])?;
        check_args(OP, dy_layout, dims, groups, &[])?;
        macro_rules! run {
            ($t:ty) => {{
                let x = view::<$t>(self, x_layout, OP)?;
                let g = view::<$t>(dy, dy_layout, OP)?;
                let (mu, rs) = (contiguous::<$t>(mean, OP)?, contiguous::<$t>(rstd, OP)?);
                let w = param::<$t>(weight, OP)?;
                if mu.len() != dims.n * groups || rs.len() != mu.len() {
                    return Err(Error::msg(format!("{OP}: saved statistics do not match")));
                }
                store(group_bwd(&x, &g, mu, rs, dims, groups, w.as_deref()))
            }};
        }
        Ok(dispatch!(OP, self.dtype(), run))
    }

    fn batch_norm_fwd(
        &self,
        x_layout: &Layout,
        dims: NormDims,
        running: Option<(Param<Self>, Param<Self>)>,
        weight: Param<Self>,
        bias: Param<Self>,
        eps: f64,
    ) -> Result<(Self, Self, Self)> {
        const OP: &str = "batch_norm";
        let (rm, rv) = running.unwrap_or((None, None));
        check_args(OP, x_layout, dims, 1, &[weight, bias, rm, rv])?;
        macro_rules! run {
            ($t:ty) => {{
                let x = view::<$t>(self, x_layout, OP)?;
                let (w, b) = (param::<$t>(weight, OP)?, param::<$t>(bias, OP)?);
                let run =
                    match running {
                        Some((m, v)) => {
                            let (m, v) = (param::<$t>(m, OP)?, param::<$t>(v, OP)?);
                            match (m, v) {
                                (Some(m), Some(v)) => Some((m, v)),
                                _ => return Err(Error::msg(
                                    "batch_norm: eval mode needs both running_mean and running_var",
                                )),
                            }
                        }
                        None => None,
                    };
                let run_ref = run.as_ref().map(|(m, v)| (&m[..], &v[..]));
                store(batch_fwd(
                    &x,
                    dims,
                    run_ref,
                    w.as_deref(),
                    b.as_deref(),
                    eps,
                ))
            }};
        }
        Ok(dispatch!(OP, self.dtype(), run))
    }

    fn batch_norm_bwd(
        &self,
        x_layout: &Layout,
        dy: &Self,
        dy_layout: &Layout,
        mean: &Self,
        rstd: &Self,
        dims: NormDims,
        weight: Param<Self>,
        batch_stats: bool,
    ) -> Result<(Self, Self, Self)> {
        const OP: &str = "batch_norm_backward";
        check_args(OP, x_layout, dims, 1, &[weight])?;
        check_args(OP, dy_layout, dims, 1, &[])?;
        macro_rules! run {
            ($t:ty) => {{
                let x = view::<$t>(self, x_layout, OP)?;
                let g = view::<$t>(dy, dy_layout, OP)?;
                let (mu, rs) = (contiguous::<$t>(mean, OP)?, contiguous::<$t>(rstd, OP)?);
                let w = param::<$t>(weight, OP)?;
                if mu.len() != dims.c || rs.len() != dims.c {
                    return Err(Error::msg(format!("{OP}: saved statistics do not match")));
                }
                store(batch_bwd(&x, &g, mu, rs, dims, w.as_deref(), batch_stats))
            }};
        }
        Ok(dispatch!(OP, self.dtype(), run))
    }

    fn batch_norm_update_running(
        &mut self,
        layout: &Layout,
        stat: &Self,
        momentum: f64,
        unbiased_var_from_rstd: bool,
        eps: f64,
        count: usize,
    ) -> Result<()> {
        const OP: &str = "batch_norm running stats";
        let offsets = layout.offsets();
        macro_rules! run {
            ($t:ty) => {{
                let src = contiguous::<$t>(stat, OP)?;
                if src.len() != offsets.len() {
                    return Err(Error::msg(format!(
                        "{OP}: {} statistics for a running buffer of {} elements",
                        src.len(),
                        offsets.len()
                    )));
                }
                let dst = self.as_mut_slice::<$t>(OP)?;
                let bessel = count as f64 / (count.max(2) - 1) as f64;
                for (&o, &v) in offsets.iter().zip(src) {
                    let v = WithDType::to_f64(v);
                    let stat = if unbiased_var_from_rstd {
                        (1.0 / (v * v) - eps) * bessel
                    } else {
                        v
                    };
                    let old = WithDType::to_f64(dst[o]);
                    dst[o] = <$t as WithDType>::from_f64((1.0 - momentum) * old + momentum * stat);
                }
            }};
        }
        dispatch!(OP, self.dtype(), run);
        Ok(())
    }
}
