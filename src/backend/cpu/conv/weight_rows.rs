//! The A operand of the convolution's implicit GEMM: each group's weight matrix
//! `W_g [C_out/G, K]`, row-major (`K = C_in/G * KH * KW` contiguous per output channel).
//!
//! Where the micro-kernel has in-place row tiles (`MicroKernel::tile_rows_in_place`: f32 on
//! AVX-512, 12- and 8-row tiles), the weights are read where they lie: no copy per call. At
//! ResNet-18's deep layers that copy was a fifth of the forward (`512 x 4608` weights, 9.4 MB,
//! rewritten into panels for every call, then read once per column block), and on small maps
//! the GEMM itself is short beside it. Rows are cut into tiles whose heights add up to the
//! rows exactly, so no arithmetic is spent on padding rows: 64 channels are 4 tiles of 12 and
//! 2 of 8 (64 rows), where 12-row panels compute 72. The few rows no such tiling covers (fewer
//! than 4, or fewer than 8 in all) go through one zero-padded packed panel per depth block.
//!
//! Otherwise (f64, AVX2, portable) the weights are packed once per call into the micro-kernel's
//! `mr`-row panels (`pack_row_panels`), as before. The flipped, transposed weights of a
//! stride-1 input gradient are read in place from `W` too where the micro-kernel has tiles
//! for that and the kernel is 3x3 ([`WeightRows::flipped_in_place`]: 9 depths per output
//! channel at fixed offsets from one address); otherwise they are packed
//! ([`WeightRows::flipped`]) on every instruction set, from 128 input channels on where
//! in-place tiles exist: they must be copied anyway, and packing them is that one copy.
//!
//! All of them sum every element the same way (one chain of FMAs per depth block, added to the
//! previous blocks' sum), so the choice, the tiling and the task split never change a bit.

use super::super::matmul::MicroKernel;
use super::super::Float;
use super::pack::pack_row_panels;
use super::{multiply_block, MC};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// The weights of every group, ready for the micro-kernel.
pub(super) enum WeightRows<'a, T> {
    /// Read in place: `w[(gi*m + r)*k + kk]`.
    InPlace { w: &'a [T], m: usize, k: usize },
    /// The flipped, transposed 3x3 weights of a stride-1 input gradient read in place (see
    /// [`WeightRows::flipped_in_place`]): row `ci` of group `gi`, depth `co*9 + t`, is
    /// `w[((gi*cout_g + co)*cin_g + ci)*9 + 8 - t]`.
    FlippedInPlace {
        w: &'a [T],
        cin_g: usize,
        cout_g: usize,
    },
    /// Packed into `mr`-row panels, `mpan` per group (see `pack_row_panels`).
    Packed {
        wpack: Vec<T>,
        mpan: usize,
        k: usize,
    },
}

/// How `nrows` rows are cut into in-place tiles: `tall` tiles of `heights[0]` rows, then
/// `short` tiles of the last height, covering `cover` rows; the rest is packed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RowTiling {
    tall: usize,
    short: usize,
    cover: usize,
}

impl RowTiling {
    /// The tiling that covers the most rows exactly, with the most tall tiles among those.
    fn new(nrows: usize, heights: &[usize]) -> Self {
        let (ht, hs) = (heights[0], heights[heights.len() - 1]);
        for cover in (0..=nrows).rev() {
            for tall in (0..=cover / ht).rev() {
                if (cover - tall * ht).is_multiple_of(hs) {
                    let short = (cover - tall * ht) / hs;
                    return RowTiling { tall, short, cover };
                }
            }
        }
        unreachable!("cover = 0 is always tiled")
    }

    /// `(first row, height)` of each tile, in order.
    fn tiles(self, heights: &[usize]) -> impl Iterator<Item = (usize, usize)> {
        let (ht, hs) = (heights[0], heights[heights.len() - 1]);
        let tall = (0..self.tall).map(move |i| (i * ht, ht));
        let short = (0..self.short).map(move |i| (self.tall * ht + i * hs, hs));
        tall.chain(short)
    }
}

impl<'a, T: Float> WeightRows<'a, T> {
    /// `w` holds `groups` matrices `[m, k]` one after another (`[C_out, C_in/G, KH, KW]`).
    pub fn new(w: &'a [T], groups: usize, m: usize, k: usize, kern: &MicroKernel<T>) -> Self {
        if kern.in_place_rows.is_empty() {
            let wpack = pack_row_panels(w, 0, (m * k, k, 1), groups, m, k, kern.mr);
            WeightRows::Packed {
                wpack,
                mpan: m.div_ceil(kern.mr),
                k,
            }
        } else {
            WeightRows::InPlace { w, m, k }
        }
    }

    /// The flipped, transposed weights of a stride-1 input gradient (the forward
    /// convolution of `dy` by `W'`, see `conv2d_bwd_input`), packed into `mr`-row panels:
    /// row `ci` of group `gi`, depth `co*KHW + t`, is `W[gi*C_out/G + co, ci, KHW-1-t]`.
    /// `w` is `[C_out, C_in/G, KH, KW]`, `(cin_g, cout_g, khw)` its per-group sizes.
    pub fn flipped(
        w: &[T],
        groups: usize,
        (cin_g, cout_g, khw): (usize, usize, usize),
        kern: &MicroKernel<T>,
    ) -> Self {
        let (mr, k) = (kern.mr, cout_g * khw);
        let mpan = cin_g.div_ceil(mr);
        let len = groups * mpan * k * mr;
        let mut wpack = Vec::with_capacity(len);
        // Per panel and output channel, W[co, ci0..ci0+mr, :] is one contiguous read of
        // `mr*KHW` weights and its `KHW` panel depths one contiguous write.
        wpack.spare_capacity_mut()[..len]
            .par_chunks_mut(k * mr)
            .enumerate()
            .for_each(|(pi, panel)| {
                let (gi, q) = (pi / mpan, pi % mpan);
                let live = mr.min(cin_g - q * mr);
                for (co, depths) in panel.chunks_exact_mut(khw * mr).enumerate() {
                    let src = &w[((gi * cout_g + co) * cin_g + q * mr) * khw..][..live * khw];
                    match (khw, mr, live == mr) {
                        (9, 12, true) => flip_block::<T, 9, 12>(src, depths),
                        _ => {
                            for (t, row) in depths.chunks_exact_mut(mr).enumerate() {
                                for (r, v) in row.iter_mut().enumerate() {
                                    let x = if r < live {
                                        src[r * khw + khw - 1 - t]
                                    } else {
                                        T::ZERO
                                    };
                                    *v = MaybeUninit::new(x);
                                }
                            }
                        }
                    }
                }
            });
        // SAFETY: the panels cover all `len` elements and every one was written above.
        unsafe { wpack.set_len(len) };
        WeightRows::Packed { wpack, mpan, k }
    }

    /// The same rows as [`WeightRows::flipped`], read where they lie in `W`, where the
    /// micro-kernel has tiles for that ([`MicroKernel::takes_flipped_rows`]) and the kernel is
    /// 3x3; `None` otherwise. The same values as the packed panels (each sum the same chain of
    /// FMAs), without copying `W` on every call: the copy was a fifth of ResNet-18's 512-channel
    /// input gradient at 224 px (docs/PERF.md, session 27).
    pub fn flipped_in_place(
        w: &'a [T],
        (cin_g, cout_g, khw): (usize, usize, usize),
        kern: &MicroKernel<T>,
    ) -> Option<Self> {
        (khw == 9 && kern.takes_flipped_rows()).then_some(WeightRows::FlippedInPlace {
            w,
            cin_g,
            cout_g,
        })
    }

    /// `c[r*ncols + j] = (0 if first else c[r*ncols + j]) + sum_{kk < kc} W_g[r0 + r, pc + kk]
    /// * B[kk, j]` for `r < nrows`, `j < ncols`, with B the packed block `bpack` (`nr`-wide
    /// panels of depth `kc`). `r0` is a multiple of `kern.mr` (the tile plan's row blocks).
    ///
    /// `panel_depths[jq]`, where given, lists the depth runs of panel `jq` outside which its
    /// rows of B are zero (`conv/dead_rows.rs`): the tiles skip the rest, for the same sums.
    #[allow(clippy::too_many_arguments)]
    pub fn multiply(
        &self,
        kern: &MicroKernel<T>,
        (gi, r0, nrows): (usize, usize, usize),
        (pc, kc): (usize, usize),
        bpack: &[T],
        c: &mut [T],
        ncols: usize,
        first: bool,
        scratch: &mut Vec<T>,
        panel_depths: &[Vec<(usize, usize)>],
    ) {
        match *self {
            WeightRows::Packed { ref wpack, mpan, k } => {
                if first {
                    c[..nrows * ncols].fill(T::ZERO);
                }
                let mr = kern.mr;
                let panel0 = gi * mpan + r0 / mr;
                let a_panel = |q: usize| &wpack[((panel0 + q) * k + pc) * mr..][..kc * mr];
                if panel_depths.is_empty() || !kern.takes_depth_runs() {
                    multiply_block(kern, kc, a_panel, bpack, c, nrows, ncols);
                    return;
                }
                // `multiply_block`'s loops, each panel over its own depth runs.
                let nr = kern.nr;
                let mc = (MC / mr).max(1) * mr;
                for ic in (0..nrows).step_by(mc) {
                    let rows = mc.min(nrows - ic);
                    for (jq, depths) in panel_depths.iter().enumerate() {
                        let bp = &bpack[jq * kc * nr..(jq + 1) * kc * nr];
                        let w = nr.min(ncols - jq * nr);
                        for iq in 0..rows.div_ceil(mr) {
                            let r = ic + iq * mr;
                            let h = mr.min(nrows - r);
                            let ct = &mut c[r * ncols + jq * nr..];
                            kern.tile_depths(depths, a_panel(r / mr), bp, ct, ncols, h, w);
                        }
                    }
                }
            }
            WeightRows::InPlace { .. } | WeightRows::FlippedInPlace { .. } => {
                let (mr, nr) = (kern.mr, kern.nr);
                let heights = kern.in_place_rows;
                let tiling = RowTiling::new(nrows, heights);
                let rest = nrows - tiling.cover;
                if rest > 0 {
                    // The rows no tiling covers: one panel, zero past the last row.
                    assert!(rest <= mr);
                    scratch.clear();
                    scratch.resize(kc * mr, T::ZERO);
                    for r in 0..rest {
                        let row = r0 + tiling.cover + r;
                        for kk in 0..kc {
                            scratch[kk * mr + r] = self.at(gi, row, pc + kk);
                        }
                    }
                    if first {
                        c[tiling.cover * ncols..nrows * ncols].fill(T::ZERO);
                    }
                }
                // Blocks of about MC rows of W (in L2), each against every B panel (in L1).
                let mut tiles = tiling.tiles(heights).peekable();
                while tiles.peek().is_some() {
                    let start = tiles.peek().map_or(0, |t| t.0);
                    let block: Vec<(usize, usize)> =
                        std::iter::from_fn(|| tiles.next_if(|&(r, h)| r + h - start <= MC.max(h)))
                            .collect();
                    for jq in 0..ncols.div_ceil(nr) {
                        let bp = &bpack[jq * kc * nr..(jq + 1) * kc * nr];
                        let cols = nr.min(ncols - jq * nr);
                        let all = [(0, kc)];
                        let depths = panel_depths.get(jq).map_or(&all[..], |d| &d[..]);
                        for &(r, h) in &block {
                            let ct = &mut c[r * ncols + jq * nr..];
                            match *self {
                                WeightRows::FlippedInPlace { w, cin_g, cout_g } => {
                                    let a = &w[(gi * cout_g * cin_g + r0 + r) * 9..];
                                    let a = (a, cin_g * 9);
                                    kern.tile_rows_flipped(
                                        depths, h, pc, a, bp, ct, ncols, cols, first,
                                    );
                                }
                                WeightRows::InPlace { w, m, k } => {
                                    let a = (&w[(gi * m + r0 + r) * k + pc..], k);
                                    kern.tile_rows_in_place(
                                        depths, h, a, bp, ct, ncols, cols, first,
                                    );
                                }
                                WeightRows::Packed { .. } => unreachable!("matched above"),
                            }
                        }
                    }
                }
                if rest > 0 {
                    // The packed panel over the same depth runs as the tiles: B's rows outside
                    // them need not hold zeros.
                    for jq in 0..ncols.div_ceil(nr) {
                        let bp = &bpack[jq * kc * nr..(jq + 1) * kc * nr];
                        let cols = nr.min(ncols - jq * nr);
                        let ct = &mut c[tiling.cover * ncols + jq * nr..];
                        match panel_depths.get(jq) {
                            Some(d) if kern.takes_depth_runs() => {
                                kern.tile_depths(d, scratch, bp, ct, ncols, rest, cols)
                            }
                            _ => kern.tile(kc, scratch, bp, ct, ncols, rest, cols),
                        }
                    }
                }
            }
        }
    }

    /// Row `row` of group `gi` at depth `d` of the weights read in place.
    fn at(&self, gi: usize, row: usize, d: usize) -> T {
        match *self {
            WeightRows::InPlace { w, m, k } => w[(gi * m + row) * k + d],
            WeightRows::FlippedInPlace { w, cin_g, cout_g } => {
                let (co, t) = (d / 9, d % 9);
                w[((gi * cout_g + co) * cin_g + row) * 9 + 8 - t]
            }
            WeightRows::Packed { .. } => unreachable!("packed weights are read by panels"),
        }
    }
}

/// `dst[t*MR + r] = src[r*KHW + KHW-1-t]`: one output channel's `MR x KHW` weights, flipped
/// and transposed into `KHW` panel depths (sizes fixed, so the copy unrolls to plain moves).
#[inline(always)]
fn flip_block<T: Copy, const KHW: usize, const MR: usize>(src: &[T], dst: &mut [MaybeUninit<T>]) {
    let src: &[T] = &src[..MR * KHW];
    let dst: &mut [MaybeUninit<T>] = &mut dst[..MR * KHW];
    for t in 0..KHW {
        for r in 0..MR {
            dst[t * MR + r] = MaybeUninit::new(src[r * KHW + KHW - 1 - t]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::matmul::{detect_isa_uncached, Isa, PackedFloat};
    use super::*;

    /// `WeightRows::flipped` holds exactly `pack_row_panels` of the flipped, transposed
    /// weights, for a 3x3 kernel (the unrolled copy; full and partial panels) and a 2x3 one,
    /// with groups.
    #[test]
    fn flipped_rows_are_the_panels_of_the_flipped_weights() {
        let kern = f32::micro_kernel(detect_isa_uncached());
        for (groups, cin_g, cout_g, khw) in [(2, 29, 5, 9), (1, 24, 3, 9), (3, 7, 4, 6)] {
            let w: Vec<f32> = (0..groups * cout_g * cin_g * khw)
                .map(|i| i as f32)
                .collect();
            // W'[gi][ci][co][t] = W[gi*cout_g + co][ci][khw - 1 - t]
            let mut wt = vec![0.0; w.len()];
            for gi in 0..groups {
                for ci in 0..cin_g {
                    for co in 0..cout_g {
                        for t in 0..khw {
                            wt[((gi * cin_g + ci) * cout_g + co) * khw + t] =
                                w[((gi * cout_g + co) * cin_g + ci) * khw + khw - 1 - t];
                        }
                    }
                }
            }
            let k = cout_g * khw;
            let want = pack_row_panels(&wt, 0, (cin_g * k, k, 1), groups, cin_g, k, kern.mr);
            match WeightRows::flipped(&w, groups, (cin_g, cout_g, khw), &kern) {
                WeightRows::Packed {
                    wpack,
                    mpan,
                    k: got_k,
                } => {
                    assert_eq!((mpan, got_k), (cin_g.div_ceil(kern.mr), k));
                    assert!(wpack == want, "{groups} x {cin_g} x {cout_g} x {khw}");
                }
                _ => panic!("flipped weights are packed"),
            }
        }
    }

    /// Both forms of the weights against a plain triple loop, on every instruction set here:
    /// tiled and packed rest rows, a row block that starts past row 0, two depth blocks (the
    /// second not a whole number of the kernels' four-depth trips), a last panel under 16
    /// columns, and a `c` full of NaN before the first depth block (its old values must be
    /// ignored, not added to).
    #[test]
    fn in_place_and_packed_rows_match_a_plain_product() {
        let mut isas = vec![Isa::Portable, detect_isa_uncached()];
        isas.dedup();
        let (groups, m, k, ncols) = (2, 70, 302, 41);
        let val = |i: usize| ((i * 7919) % 201) as f32 / 100.0 - 1.0;
        let w: Vec<f32> = (0..groups * m * k).map(val).collect();
        let b: Vec<f32> = (0..k * ncols).map(|i| val(i + 13)).collect();
        for isa in isas {
            let kern = f32::micro_kernel(isa);
            let nr = kern.nr;
            let forms = [
                WeightRows::new(&w, groups, m, k, &kern),
                WeightRows::Packed {
                    wpack: pack_row_panels(&w, 0, (m * k, k, 1), groups, m, k, kern.mr),
                    mpan: m.div_ceil(kern.mr),
                    k,
                },
            ];
            for weights in &forms {
                for (gi, r0, nrows) in [(0, 0, 5), (1, 0, 11), (0, 12, 20), (1, 24, 46), (0, 0, 70)]
                {
                    let mut c = vec![f32::NAN; nrows * ncols];
                    let mut scratch = Vec::new();
                    for pc in (0..k).step_by(256) {
                        let kc = 256.min(k - pc);
                        let mut bpack = vec![0.0; kc * ncols.div_ceil(nr) * nr];
                        for kk in 0..kc {
                            for j in 0..ncols {
                                bpack[((j / nr) * kc + kk) * nr + j % nr] =
                                    b[(pc + kk) * ncols + j];
                            }
                        }
                        let rows = (gi, r0, nrows);
                        let s = &mut scratch;
                        weights.multiply(
                            &kern,
                            rows,
                            (pc, kc),
                            &bpack,
                            &mut c,
                            ncols,
                            pc == 0,
                            s,
                            &[],
                        );
                    }
                    for r in 0..nrows {
                        for j in 0..ncols {
                            let want: f64 = (0..k)
                                .map(|kk| {
                                    let wv = w[(gi * m + r0 + r) * k + kk] as f64;
                                    wv * b[kk * ncols + j] as f64
                                })
                                .sum();
                            let got = c[r * ncols + j] as f64;
                            assert!(
                                (got - want).abs() < 1e-3,
                                "{isa:?} rows {rows:?} ({r}, {j}): {got} vs {want}",
                                rows = (gi, r0, nrows)
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn row_tiles_cover_the_rows_exactly_where_they_can() {
        let h = &[12, 8];
        let cut = |n: usize| {
            let t = RowTiling::new(n, h);
            let tiles: Vec<_> = t.tiles(h).collect();
            // Tiles are consecutive from row 0 and end at `cover`.
            let mut at = 0;
            for &(r, ht) in &tiles {
                assert_eq!(r, at);
                at += ht;
            }
            assert_eq!(at, t.cover);
            (t.tall, t.short, n - t.cover)
        };
        assert_eq!(cut(64), (4, 2, 0));
        assert_eq!(cut(128), (10, 1, 0));
        assert_eq!(cut(256), (20, 2, 0));
        assert_eq!(cut(512), (42, 1, 0));
        assert_eq!(cut(36), (3, 0, 0));
        assert_eq!(cut(8), (0, 1, 0));
        assert_eq!(cut(13), (1, 0, 1));
        assert_eq!(cut(11), (0, 1, 3));
        assert_eq!(cut(7), (0, 0, 7));
        assert_eq!(cut(4), (0, 0, 4));
        assert_eq!(cut(0), (0, 0, 0));
        for n in 8..200 {
            assert!(cut(n).2 < 4, "{n} rows");
        }
    }
}
