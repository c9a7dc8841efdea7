//! Skipping the kernel rows that read only padding, output row by output row.
//!
//! Output row `oy` reads input row `oy*sh + ky*dh - ph` through kernel row `ky`; near the
//! top and bottom of a map some `ky` land in the padding, and the implicit GEMM's packed
//! column block holds zeros there. On the maps of deep layers that is much of the work: a
//! 3x3 kernel with padding 1 on a 4x4 map reads padding through 1 of its 3 rows in half of
//! the output rows, so 1/6 of the products multiply zeros (2x2 maps: 1/3).
//! ```text
//! live(oy) = { ky : 0 <= oy*sh + ky*dh - ph < H }   (one run lo..=hi: grows with ky)
//! ```
//! The forward then orders its GEMM columns by output row, then image, then column
//! (`ColumnOrder::ByRow` in `pack.rs`): an output row across the batch fills whole 32-column
//! panels when `N * OW` is a multiple of 32 (ResNet-18's and the U-Net's small maps at batch 8
//! and 16), so the panels of the first and last rows share their live kernel rows, and the
//! in-place micro-kernel runs only the depths `k = (ci, ky, kx)` with `ky` live for some
//! column of the panel ([`depth_runs`]). A skipped depth's B row is zero in every column of the panel, so
//! each sum is the same chain of FMAs minus terms `fma(w, 0, s) = s`: the same bits as
//! without skipping (and as the direct forward, which computes them all). Panels that mix
//! rows take the union of their live rows; the order of the columns changes no sum. It pays
//! only with many rows of weights and many dead pairs ([`applies`]): the row-ordered runs hop
//! between images in the packing and the stores.

use super::pack::PixelRun;
use crate::backend::conv::Conv2dGeom;

/// Fewest output channels per group (the GEMM's rows) for which the forward orders its
/// columns by row and skips dead kernel rows. Every panel then packs and stores runs that
/// hop between images; with many rows of weights the skipped products outweigh that (128-512
/// channels on 2x2 to 14x14 maps: 1.03-1.30x, docs/PERF.md, session 18), with the demo
/// U-Net's 16 and 32 channels they did not (0.88-0.96x).
const MIN_COUT_G: usize = 64;

/// Whether the forward `g` skips dead kernel rows, on micro-kernels that take depth runs:
/// many channels, and at least 1/12 of the (output row, kernel row) pairs dead, as on maps
/// of 8 rows and fewer with a 3x3 kernel and padding 1 (on larger maps the row-ordered
/// columns' costs were not repaid: 0.91-0.96x at ResNet-18's stride-2 entries, 1/24 dead).
pub(super) fn applies(g: &Conv2dGeom, takes_depth_runs: bool) -> bool {
    if !takes_depth_runs || g.padding.0 == 0 || g.cout_g() < MIN_COUT_G {
        return false;
    }
    let live: usize = (0..g.oh)
        .map(|oy| live_rows(g, oy).map_or(0, |(lo, hi)| hi - lo + 1))
        .sum();
    let dead = g.oh * g.kh - live;
    12 * dead >= g.oh * g.kh
}

/// The live kernel rows `lo..=hi` of output row `oy`, if any.
pub(super) fn live_rows(g: &Conv2dGeom, oy: usize) -> Option<(usize, usize)> {
    let live = |ky: usize| {
        let at = oy * g.stride.0 + ky * g.dilation.0;
        at >= g.padding.0 && at - g.padding.0 < g.h
    };
    let lo = (0..g.kh).find(|&ky| live(ky))?;
    let hi = (lo..g.kh).take_while(|&ky| live(ky)).last()?;
    Some((lo, hi))
}

/// The live kernel rows of each `split`-wide panel of `runs` (the union over its runs; `None`
/// where no column of the panel reads a real row), into `panels` (cleared first).
pub(super) fn panel_rows(
    g: &Conv2dGeom,
    runs: &[PixelRun],
    split: usize,
    panels: &mut Vec<Option<(usize, usize)>>,
) {
    panels.clear();
    for run in runs {
        let q = run.at / split;
        if panels.len() <= q {
            panels.resize(q + 1, None);
        }
        if let Some((lo, hi)) = live_rows(g, run.oy) {
            let p = &mut panels[q];
            *p = Some(p.map_or((lo, hi), |(a, b)| (a.min(lo), b.max(hi))));
        }
    }
}

/// The runs of depths `d0..d1` (relative to `pc`) of the depth block `pc..pc+kc` whose
/// kernel row is in `rows`, merged where they touch, into `out` (cleared first). Depth `k`
/// of the GEMM is `(ci, ky, kx)`, `k = (ci*KH + ky)*KW + kx`.
pub(super) fn depth_runs(
    g: &Conv2dGeom,
    rows: Option<(usize, usize)>,
    (pc, kc): (usize, usize),
    out: &mut Vec<(usize, usize)>,
) {
    out.clear();
    let Some((lo, hi)) = rows else {
        return;
    };
    let khw = g.kh * g.kw;
    for ci in pc / khw..(pc + kc).div_ceil(khw) {
        let a = (ci * khw + lo * g.kw).max(pc);
        let b = (ci * khw + (hi + 1) * g.kw).min(pc + kc);
        if a >= b {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.1 == a - pc => last.1 = b - pc,
            _ => out.push((a - pc, b - pc)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::conv::pack::{pixel_runs_in, ColumnOrder};

    fn geom(n: usize, h: usize, kh: usize, s: usize, p: usize, d: usize) -> Conv2dGeom {
        let oh = (h + 2 * p - d * (kh - 1) - 1) / s + 1;
        Conv2dGeom {
            n,
            c_in: 5,
            h,
            w: 3,
            c_out: 4,
            kh,
            kw: 2,
            stride: (s, 1),
            padding: (p, 0),
            dilation: (d, 1),
            groups: 1,
            oh,
            ow: 2,
        }
    }

    /// The depth runs are exactly the depths whose kernel row some column of the panel reads
    /// a real row through, for every block split.
    #[test]
    fn depth_runs_are_the_live_depths() {
        for g in [
            geom(2, 4, 3, 1, 1, 1),
            geom(1, 5, 3, 2, 2, 1),
            geom(3, 6, 3, 1, 2, 2),
            geom(1, 1, 3, 1, 1, 1),
        ] {
            let k = g.c_in * g.kh * g.kw;
            for oy in 0..g.oh {
                let rows = live_rows(&g, oy);
                for ky in 0..g.kh {
                    let at = (oy * g.stride.0 + ky * g.dilation.0) as isize - g.padding.0 as isize;
                    let live = at >= 0 && at < g.h as isize;
                    assert_eq!(
                        live,
                        rows.is_some_and(|(lo, hi)| (lo..=hi).contains(&ky)),
                        "{g:?} oy {oy} ky {ky}"
                    );
                }
                for kc in [1, 4, 7, k] {
                    for pc in (0..k).step_by(kc) {
                        let kc = kc.min(k - pc);
                        let mut runs = Vec::new();
                        depth_runs(&g, rows, (pc, kc), &mut runs);
                        let want: Vec<bool> = (pc..pc + kc)
                            .map(|kk| {
                                let ky = (kk % (g.kh * g.kw)) / g.kw;
                                rows.is_some_and(|(lo, hi)| (lo..=hi).contains(&ky))
                            })
                            .collect();
                        let got: Vec<bool> = (0..kc)
                            .map(|d| runs.iter().any(|r| (r.0..r.1).contains(&d)))
                            .collect();
                        assert_eq!(got, want, "{g:?} oy {oy} block {pc}+{kc}");
                        assert!(
                            runs.windows(2).all(|w| w[0].1 < w[1].0),
                            "runs merged and ordered"
                        );
                    }
                }
            }
        }
    }

    /// Columns by row cover every (image, pixel) once, in (row, image, column) order.
    #[test]
    fn runs_by_row_cover_every_pixel_once() {
        let g = geom(3, 6, 3, 1, 1, 1);
        let cols = g.n * g.oh * g.ow;
        let mut runs = Vec::new();
        pixel_runs_in(ColumnOrder::ByRow, &g, 0, cols, 4, &mut runs);
        let mut seen = Vec::new();
        for r in &runs {
            assert!(r.at / 4 == (r.at + r.len - 1) / 4, "a run crosses a panel");
            for i in 0..r.len {
                seen.push((r.oy, r.n, r.ox + i));
            }
        }
        let want: Vec<_> = (0..g.oh)
            .flat_map(|oy| (0..g.n).flat_map(move |n| (0..g.ow).map(move |ox| (oy, n, ox))))
            .collect();
        assert_eq!(seen, want);
    }
}
