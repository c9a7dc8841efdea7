//! The forward convolution computed directly, with the output channels in the vector lanes:
//! no im2col panel is packed at all (f32 on AVX-512; the stride-1 input gradient, a forward
//! convolution of `dy`, takes it too, its flipped weights packed straight from `W`).
//!
//! ```text
//! out[n, co, oy, ox] = sum_{kk = (ci, ky, kx)} W[co, kk] * xpad[n, ci, oy*sh + ky*dh, ox*sw + kx*dw]
//! ```
//! A register tile is 32 output channels (two 16-lane vectors) x `PW <= 14` pixels: 28
//! accumulators. Per tap `kk` it loads the 32 weights `W[co0..co0+32, kk]` (packed once per
//! call, tap-major: `wpk[block][kk][32]`) and broadcasts the `PW` inputs the tap reads, which
//! lie `sw` apart in the padded input ([`PaddedInput`]): 2 vector loads and `PW` broadcasts
//! for `2 PW` FMAs. The implicit GEMM instead copies every (tap, pixel) into a panel first (9
//! copies of the input for a 3x3 kernel), then reads the panel; here the input is read where
//! it lies, and so are the weights: the taps are taken in pieces of [`SUB_TAPS`] (16 KB of
//! packed weights, which stay in L1 beside the inputs the tiles read), each piece running over
//! every tile of a task before the next. The pieces cut the GEMM's depth blocks of [`KC`]
//! taps: a tile's FMA chains pass from piece to piece through a buffer of their own, and each
//! block's sums are added to a channel-last buffer (`[pixel][32]`). A task
//! (image, block of 32 channels, band of output rows) finally transposes that buffer into its
//! NCHW planes, 16 x 16 at a time in registers. How a band is cut into tiles: [`TileLayout`]
//! (blocks of up to 4 output rows, so that a row of 16 makes tiles of 3 x 4 pixels); the top
//! and bottom rows of a padded map are blocks of one row whose tiles skip the kernel rows that
//! read only padding ([`EdgeRows`]).
//!
//! Sums: every output element is `(blk_0 + blk_1) + ...` over depth blocks of [`KC`] taps,
//! each block one chain of FMAs from zero in tap order: exactly the implicit GEMM's sums, so
//! the same bits whichever path the dispatch takes (it looks at the batch size: pictures
//! sampled one by one or in a batch stay identical), and tiles, pieces, bands and threads never
//! change them. Traffic: the input is read once per block of 32 output
//! channels (from L2), the weights once per task; the output written once.
//!
//! It computes stride 1 or 2 along the row, any kernel, padding, dilation, row stride and
//! groups ([`supports`]). The dispatch gives it the shapes where it beats the implicit GEMM
//! ([`applies`]): at least [`MIN_COUT`] output channels per group (fewer leave lanes idle),
//! rows at least [`MIN_WIDTH`] wide (shorter tiles no longer hide the FMA latency) and at
//! least [`MIN_PIXELS`] output pixels in the batch ([`MIN_PIXELS_FEW_COUT`] with up to 128
//! channels), or [`PIXELS_PER_COUT`] per output channel if that is fewer (each weight is
//! transposed into `wpk` once per call; with few pixels to use it on, that costs more than the
//! tiles gain, unless the channels are few). On this project's 2-core AVX-512 machines it
//! runs the U-Net's and ResNet-18's 3x3 layers on maps of 16 px and more 1.1-1.4x faster than
//! the implicit GEMM (docs/PERF.md, session 12), and 8x8 maps at batch 16 with 64-128
//! channels 1.04-1.15x faster (session 25).

use super::super::aligned::AlignedVec;
use super::super::matmul::Isa;
use super::super::Float;
use super::dead_rows::live_rows;
use super::pack::{vectorized, PaddedInput};
use super::KC;
use crate::backend::conv::Conv2dGeom;
use rayon::prelude::*;

/// Output channels per register tile (two AVX-512 vectors).
pub(super) const LANES: usize = 32;
/// Most pixels per register tile: 2 x 14 accumulators, 2 weight vectors and 1 broadcast, 31 of
/// the 32 registers (12 pixels, 24 accumulators, were 1-2% slower on 64x64 maps: the tap
/// loop's loads and bookkeeping spread over fewer FMAs; docs/PERF.md, session 22).
const MAX_PW: usize = 14;
/// Fewest output channels per group (the weights of a block beyond them are zero lanes).
pub(super) const MIN_COUT: usize = 32;
/// Narrowest output rows.
pub(super) const MIN_WIDTH: usize = 8;
/// Narrowest output rows at stride 1.
pub(super) const MIN_WIDTH_STRIDE1: usize = 8;
/// Fewest output pixels in the batch: each weight is packed once per call and used `N * P`
/// times, and below this the packing (a transpose of all the weights) costs more than the
/// tiles gain (ResNet-18's 7x7 maps at batch 2: 98 pixels, 1.6x slower than the GEMM).
pub(super) const MIN_PIXELS: usize = 1536;
/// Fewest output pixels with at most [`FEW_COUT`] output channels per group: since the tiles
/// stopped computing the padded width's columns (session 25), 8x8 maps at batch 16 (1024
/// pixels) run 1.04-1.15x faster here than in the implicit GEMM with 64 and 128 channels
/// (ResNet-18 at 32 and 64 px, forward and input gradient); with 256 channels on 512 pixels
/// the GEMM stayed 1.1x faster (docs/PERF.md, session 25).
const MIN_PIXELS_FEW_COUT: usize = 1024;
/// See [`MIN_PIXELS_FEW_COUT`].
const FEW_COUT: usize = 128;
/// Fewer pixels will do with few output channels: from `PIXELS_PER_COUT * C_out/G` on. The
/// implicit GEMM packs every (tap, pixel) of the input for only `C_out/G` rows of weights,
/// and the direct path's packing (the weights) shrinks with them: at 32 channels on 8x8 maps,
/// batch 16 (1024 pixels), direct was 1.19-1.33x faster (docs/PERF.md, session 16); at 128
/// channels on the same maps 0.69x, at 32 channels and 512 pixels 0.96-1.01.
const PIXELS_PER_COUT: usize = 32;
/// Most taps per piece of a depth block ([`pieces`]): 16 KB of packed weights. On 64x64 maps
/// with 64 channels, pieces of 256 (the whole block), 128, 72, 64 and 48 taps took 11.4,
/// 9.9, 10.2, 10.1 and 10.5 ms (docs/PERF.md, session 22).
const SUB_TAPS: usize = 128;
/// Pixels per task, about: the channel-last buffer is `PIXELS_PER_TASK * 128` bytes.
const PIXELS_PER_TASK: usize = 256;

/// A float type with a direct forward convolution (f32 on AVX-512; none for f64).
pub(in crate::backend::cpu) trait DirectConv: Float {
    /// The forward convolution of `x` (`[N, C_in, H, W]`) by `w` (`[C_out, C_in/G, KH, KW]`)
    /// if the direct path is the faster one for this shape and instruction set ([`applies`]).
    fn direct_forward(x: &[Self], w: &[Self], g: &Conv2dGeom, isa: Isa) -> Option<Vec<Self>>;
    /// The stride-1 input gradient of a convolution by `w` (`[C_out, C_in/G, KH, KW]`), the
    /// forward convolution of `dy` under the transposed geometry `tg` by the flipped,
    /// transposed weights, if the direct path takes `tg`: those weights are packed straight
    /// from `w`, so no flipped copy of `w` is made first.
    fn direct_forward_flipped(
        dy: &[Self],
        w: &[Self],
        tg: &Conv2dGeom,
        isa: Isa,
    ) -> Option<Vec<Self>>;
    /// The same wherever the direct path can compute `tg` at all (for tests).
    #[cfg(test)]
    fn direct_forward_flipped_anyway(
        dy: &[Self],
        w: &[Self],
        tg: &Conv2dGeom,
        isa: Isa,
    ) -> Option<Vec<Self>>;
    /// Whether [`DirectConv::direct_forward`] takes this shape (so the caller can prepare
    /// the weights for whichever path runs).
    fn direct_forward_applies(g: &Conv2dGeom, isa: Isa) -> bool;
    /// The same wherever the direct path can compute the shape at all ([`supports`]), fast or
    /// not: for tests, which check it on small odd shapes the dispatch leaves to the GEMM.
    #[cfg(test)]
    fn direct_forward_anyway(x: &[Self], w: &[Self], g: &Conv2dGeom, isa: Isa)
        -> Option<Vec<Self>>;
    /// The weight gradient of the convolution of `x` with output gradient `dy`, computed
    /// directly (`weight_grad_direct.rs`) if that is the faster path here.
    fn direct_backward_weight(
        x: &[Self],
        dy: &[Self],
        g: &Conv2dGeom,
        isa: Isa,
    ) -> Option<Vec<Self>>;
    /// The same wherever it can compute the shape at all (for tests).
    #[cfg(test)]
    fn direct_backward_weight_anyway(
        x: &[Self],
        dy: &[Self],
        g: &Conv2dGeom,
        isa: Isa,
    ) -> Option<Vec<Self>>;
}

impl DirectConv for f64 {
    fn direct_forward(_: &[f64], _: &[f64], _: &Conv2dGeom, _: Isa) -> Option<Vec<f64>> {
        None
    }
    fn direct_forward_flipped(_: &[f64], _: &[f64], _: &Conv2dGeom, _: Isa) -> Option<Vec<f64>> {
        None
    }
    #[cfg(test)]
    fn direct_forward_flipped_anyway(
        _: &[f64],
        _: &[f64],
        _: &Conv2dGeom,
        _: Isa,
    ) -> Option<Vec<f64>> {
        None
    }
    fn direct_forward_applies(_: &Conv2dGeom, _: Isa) -> bool {
        false
    }
    #[cfg(test)]
    fn direct_forward_anyway(_: &[f64], _: &[f64], _: &Conv2dGeom, _: Isa) -> Option<Vec<f64>> {
        None
    }
    fn direct_backward_weight(_: &[f64], _: &[f64], _: &Conv2dGeom, _: Isa) -> Option<Vec<f64>> {
        None
    }
    #[cfg(test)]
    fn direct_backward_weight_anyway(
        _: &[f64],
        _: &[f64],
        _: &Conv2dGeom,
        _: Isa,
    ) -> Option<Vec<f64>> {
        None
    }
}

impl DirectConv for f32 {
    fn direct_forward(x: &[f32], w: &[f32], g: &Conv2dGeom, isa: Isa) -> Option<Vec<f32>> {
        applies(g, isa).then(|| forward(x, w, g, isa))
    }
    fn direct_forward_flipped(
        dy: &[f32],
        w: &[f32],
        tg: &Conv2dGeom,
        isa: Isa,
    ) -> Option<Vec<f32>> {
        applies(tg, isa).then(|| forward_by(dy, Weights::Flipped(w), tg, isa))
    }
    #[cfg(test)]
    fn direct_forward_flipped_anyway(
        dy: &[f32],
        w: &[f32],
        tg: &Conv2dGeom,
        isa: Isa,
    ) -> Option<Vec<f32>> {
        supports(tg, isa).then(|| forward_by(dy, Weights::Flipped(w), tg, isa))
    }
    fn direct_forward_applies(g: &Conv2dGeom, isa: Isa) -> bool {
        applies(g, isa)
    }
    #[cfg(test)]
    fn direct_forward_anyway(x: &[f32], w: &[f32], g: &Conv2dGeom, isa: Isa) -> Option<Vec<f32>> {
        supports(g, isa).then(|| forward(x, w, g, isa))
    }
    fn direct_backward_weight(x: &[f32], dy: &[f32], g: &Conv2dGeom, isa: Isa) -> Option<Vec<f32>> {
        use super::weight_grad_direct as wgd;
        wgd::applies(g, isa).then(|| wgd::backward_weight(x, dy, g, isa))
    }
    #[cfg(test)]
    fn direct_backward_weight_anyway(
        x: &[f32],
        dy: &[f32],
        g: &Conv2dGeom,
        isa: Isa,
    ) -> Option<Vec<f32>> {
        use super::weight_grad_direct as wgd;
        wgd::supports(g, isa).then(|| wgd::backward_weight(x, dy, g, isa))
    }
}

/// Whether [`forward`] can compute this shape on this instruction set.
fn supports(g: &Conv2dGeom, isa: Isa) -> bool {
    isa == Isa::Avx512 && matches!(g.stride.1, 1 | 2) && g.n * g.p() * g.k() * g.c_out > 0
}

/// Whether [`forward`] is the faster path for this shape (thresholds measured against the
/// implicit GEMM, docs/PERF.md, session 12).
fn applies(g: &Conv2dGeom, isa: Isa) -> bool {
    let min_width = if g.stride == (1, 1) {
        MIN_WIDTH_STRIDE1
    } else {
        MIN_WIDTH
    };
    let min_pixels = if g.cout_g() <= FEW_COUT {
        MIN_PIXELS_FEW_COUT
    } else {
        MIN_PIXELS
    };
    let min_pixels = min_pixels.min(PIXELS_PER_COUT * g.cout_g());
    supports(g, isa) && g.cout_g() >= MIN_COUT && g.ow >= min_width && g.n * g.p() >= min_pixels
}

/// The 32-channel blocks of every group: `(group, first channel in the group, channels)`.
pub(super) fn channel_blocks(g: &Conv2dGeom) -> Vec<(usize, usize, usize)> {
    let cout_g = g.cout_g();
    (0..g.groups)
        .flat_map(|gi| {
            (0..cout_g)
                .step_by(LANES)
                .map(move |c0| (gi, c0, LANES.min(cout_g - c0)))
        })
        .collect()
}

/// Where [`forward_by`] takes its weights from.
#[derive(Clone, Copy)]
enum Weights<'a> {
    /// The convolution's own, `[C_out, C_in/G, KH, KW]`.
    Plain(&'a [f32]),
    /// The flipped, transposed weights of the stride-1 input gradient whose forward
    /// convolution this is (`g` the transposed geometry), from the gradient's own `W`:
    /// `W'[gi*C_in/G + ci, co, t] = W[gi*C_out/G + co, ci, KHW-1-t]` in the gradient's terms.
    Flipped(&'a [f32]),
}

/// `wpk[b][kk][l] = W[co0_b + l, kk]` (0 past the block's channels): each block's taps
/// tap-major, 32 channels each. Tasks of about 64 taps of one block (8 KB written, in L1
/// while its pieces are scattered into it; the whole of a block at once wrote every element
/// to another line of an L2-sized buffer, and took as long as the convolution on 8x8 maps):
/// - [`Weights::Plain`]: per channel `l` of the block, its row piece is one contiguous read;
/// - [`Weights::Flipped`]: tasks of whole output channels `co` of `w`, each channel's
///   `32 x KHW` weights one contiguous read and its `KHW` taps of 32 one contiguous write
///   (flipping into a copy of `W'` first, then packing that, was two passes over `W` and a
///   zeroed buffer as large).
fn pack_weights(w: Weights, g: &Conv2dGeom, blocks: &[(usize, usize, usize)]) -> AlignedVec<f32> {
    let (k, khw) = (g.k(), g.kh * g.kw);
    let mut wpk = AlignedVec::zeroed(blocks.len() * k * LANES);
    const TAPS: usize = 64;
    let task_taps = match w {
        Weights::Plain(_) => TAPS,
        Weights::Flipped(_) => TAPS.div_ceil(khw) * khw,
    };
    wpk.par_chunks_mut(k * LANES)
        .zip(blocks)
        .for_each(|(block, &(gi, c0, nch))| {
            block
                .par_chunks_mut(task_taps * LANES)
                .enumerate()
                .for_each(|(q, dst)| match w {
                    Weights::Plain(w) => {
                        let taps = dst.len() / LANES;
                        for l in 0..nch {
                            let row = &w[(gi * g.cout_g() + c0 + l) * k + q * TAPS..][..taps];
                            for (i, &v) in row.iter().enumerate() {
                                dst[i * LANES + l] = v;
                            }
                        }
                    }
                    Weights::Flipped(w) => {
                        // `g` is the transposed geometry: its output channels are `w`'s
                        // input channels.
                        let (cin_w, cout_w) = (g.cout_g(), g.cin_g());
                        for (i, taps) in dst.chunks_exact_mut(khw * LANES).enumerate() {
                            let co = q * (task_taps / khw) + i;
                            let src = &w[((gi * cout_w + co) * cin_w + c0) * khw..][..nch * khw];
                            for (t, row) in taps.chunks_exact_mut(LANES).enumerate() {
                                for (l, v) in row[..nch].iter_mut().enumerate() {
                                    *v = src[l * khw + khw - 1 - t];
                                }
                            }
                        }
                    }
                })
        });
    wpk
}

/// The pixel widths one output row is cut into: as few tiles as `max` pixels each allow,
/// their widths as equal as possible (32 by 14 -> 11 + 11 + 10).
fn row_tiles(ow: usize, max: usize) -> Vec<usize> {
    let tiles = ow.div_ceil(max);
    (0..tiles)
        .map(|i| ow / tiles + usize::from(i < ow % tiles))
        .collect()
}

/// The direct forward convolution (see the module docs). `isa` must be [`Isa::Avx512`].
pub(super) fn forward(x: &[f32], w: &[f32], g: &Conv2dGeom, isa: Isa) -> Vec<f32> {
    forward_by(x, Weights::Plain(w), g, isa)
}

/// [`forward`] with the weights taken from `w` ([`Weights`]).
fn forward_by(x: &[f32], w: Weights, g: &Conv2dGeom, isa: Isa) -> Vec<f32> {
    assert!(supports(g, isa));
    let (p, k) = (g.p(), g.k());
    let blocks = channel_blocks(g);
    let wpk = pack_weights(w, g, &blocks);
    let xp = PaddedInput::new(x, g, isa);
    let (hp, wp) = (xp.h, xp.w);
    let (dh, dw) = g.dilation;
    let khw = g.kh * g.kw;
    // Offset of tap kk = (ci, ky, kx) from where a pixel reads at tap (0, 0, 0).
    let taps: Vec<usize> = (0..k)
        .map(|kk| {
            let (ci, ky, kx) = (kk / khw, (kk % khw) / g.kw, kk % g.kw);
            ci * hp * wp + ky * dh * wp + kx * dw
        })
        .collect();
    // Increasing (a tap's kx*dw < the padded width, its ky*dh < the padded height), so a
    // tile's last tap reads furthest.
    assert!(taps.windows(2).all(|t| t[0] < t[1]));
    let layout = TileLayout::of(g, wp);
    let edges = EdgeRows::of(g);
    // Bands of output rows: about PIXELS_PER_TASK pixels, fewer if that leaves threads idle.
    let threads = rayon::current_num_threads().max(1);
    let mut band = PIXELS_PER_TASK.div_ceil(g.ow).clamp(1, g.oh);
    while band > 1 && g.n * blocks.len() * g.oh.div_ceil(band) < 4 * threads {
        band = band.div_ceil(2);
    }
    let bands = g.oh.div_ceil(band);
    let total = g.n * g.c_out * p;
    let mut out: Vec<f32> = Vec::with_capacity(total);
    let sink = super::DisjointWrites::new(&mut out.spare_capacity_mut()[..total]);
    let xdata: &[f32] = &xp.data;
    let sw = g.stride.1;
    (0..g.n * blocks.len() * bands)
        .into_par_iter()
        .for_each_init(
            || {
                (
                    AlignedVec::zeroed(band * g.ow * LANES),
                    AlignedVec::zeroed(band * g.ow * LANES),
                    Vec::new(),
                    Vec::new(),
                )
            },
            |(acc, chains, tiles, trans), t| {
                let (n, b, bi) = (
                    t / (blocks.len() * bands),
                    (t / bands) % blocks.len(),
                    t % bands,
                );
                let (gi, c0, nch) = blocks[b];
                let (oy0, rows) = (bi * band, band.min(g.oh - bi * band));
                let acc = &mut acc[..rows * g.ow * LANES];
                let chains = &mut chains[..rows * g.ow * LANES];
                // Where the band's first pixel reads at tap (0, 0, 0).
                let origin = (n * g.c_in + gi * g.cin_g()) * hp * wp + oy0 * g.stride.0 * wp;
                layout.tiles(oy0, rows, &edges, tiles);
                for (k0, s0, sc) in pieces(k, SUB_TAPS) {
                    let kc = KC.min(k - k0);
                    let task = Chunk {
                        taps: &taps[k0 + s0..][..sc],
                        weights: &wpk[(b * k + k0 + s0) * LANES..][..sc * LANES],
                        start: if s0 == 0 { Start::Zero } else { Start::Chain },
                        end: if s0 + sc < kc {
                            End::Chain
                        } else if k0 == 0 {
                            End::Store
                        } else {
                            End::Add
                        },
                        live: None,
                    };
                    for tile in tiles.iter() {
                        let at = origin + tile.x;
                        // The last input this tile reads: its last pixel at the last tap.
                        let last = at
                            + (tile.rows - 1) * layout.row_step
                            + (tile.pixels - 1) * sw
                            + task.taps[sc - 1];
                        assert!(last < xdata.len());
                        let (first, end) = (tile.acc, tile.acc + (tile.rows - 1) * g.ow);
                        let range = first * LANES..(end + tile.pixels) * LANES;
                        let (dst, chain) = (&mut acc[range.clone()], &mut chains[range]);
                        let shape = TileShape {
                            rows: tile.rows,
                            pixels: tile.pixels,
                            sw,
                            row_step: layout.row_step,
                            pitch: g.ow,
                        };
                        let task = match tile.edge {
                            Some(c) => Chunk {
                                live: Some((edges.piece(c, k0 + s0, sc), k0 + s0)),
                                ..task
                            },
                            None => task,
                        };
                        // SAFETY: the CPU has AVX-512F (`applies`); every input read is at
                        // `at + r*row_step + p*sw + taps[i]` <= `last` (the taps increase), in
                        // bounds (checked above); `dst` and `chain` hold the tile's sums, its
                        // last row's last pixel's 32 the last.
                        unsafe { task.tile(isa, shape, &xdata[at..], dst, chain) };
                    }
                }
                // The band's sums, channel-last, into the NCHW output planes: transposed
                // 16 x 16 at a time, then each channel's band copied out.
                let span = rows * g.ow;
                let stride = span.next_multiple_of(16);
                trans.resize(LANES * stride, 0.0);
                // SAFETY: the CPU has AVX-512F; `acc` holds `span` pixels' 32 sums and
                // `trans` 32 rows of `stride >= span`.
                unsafe { transpose_band(&acc[..span * LANES], trans, stride) };
                let trans = &*trans;
                vectorized(
                    isa,
                    #[inline(always)]
                    || {
                        for l in 0..nch {
                            let co = gi * g.cout_g() + c0 + l;
                            let plane = (n * g.c_out + co) * p + oy0 * g.ow;
                            // SAFETY: each task writes its own band of its own channels'
                            // planes (whole rows: one run).
                            unsafe { sink.write(plane, &trans[l * stride..][..span]) };
                        }
                    },
                );
            },
        );
    // SAFETY: the tasks cover every (image, channel, band of rows) and write all of it.
    unsafe { out.set_len(total) };
    out
}

/// One register tile of a band: `rows x pixels` output pixels, its first pixel's input offset
/// from the band's origin (at tap (0, 0, 0)) and its first sum's index in the band's buffer;
/// pixel `(r, p)` of the tile reads `r * row_step + p * SW` further and sums `r * OW + p`
/// further.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tile {
    x: usize,
    acc: usize,
    rows: usize,
    pixels: usize,
    /// The [`EdgeRows`] class of the tile's row (one row), if it skips taps.
    edge: Option<usize>,
}

/// How a band's output pixels are cut into register tiles: blocks of `R` output rows, each
/// cut into tiles of `R x H <= MAX_PW` pixels ([`row_tiles`]), `R` the row count that gives
/// the fewest tiles per pixel ([`rows_per_tile`]). The buffer's rows are `OW` apart: every
/// pixel a tile computes is an output pixel. (Until session 25, at stride 1, the band was read
/// as one run over the padded width, with tiles of 14 across row ends: the `Wp - OW` columns
/// past each row's end were computed and thrown away, 11% of the FMAs on 16x16 maps.)
struct TileLayout {
    /// Input offset from one output row to the next.
    row_step: usize,
    ow: usize,
    /// Stride along the row.
    sw: usize,
    /// Output rows per tile (the last block of a band may have fewer).
    rows_per_tile: usize,
}

/// The output rows per register tile for rows `ow` wide: the `R <= 4` whose `R x H` tiles
/// ([`row_tiles`] of `ow` with `H <= MAX_PW / R`) hold the most pixels on average, the
/// smallest such `R` (16 -> 3 rows of 4 + 4 + 4 + 4, 32 -> 2 rows of 7 + 7 + 6 + 6 + 6,
/// 14, 28 and 56 -> 1).
fn rows_per_tile(ow: usize) -> usize {
    // Pixels per tile R * ow / tiles, compared as fractions by cross-multiplying.
    let tiles = |r: usize| ow.div_ceil(MAX_PW / r);
    (1..=4)
        .reduce(|best, r| {
            if r * ow * tiles(best) > best * ow * tiles(r) {
                r
            } else {
                best
            }
        })
        .unwrap_or(1)
}

impl TileLayout {
    fn of(g: &Conv2dGeom, wp: usize) -> Self {
        TileLayout {
            row_step: g.stride.0 * wp,
            ow: g.ow,
            sw: g.stride.1,
            rows_per_tile: rows_per_tile(g.ow),
        }
    }

    /// The tiles of a band of `rows` output rows from `oy0`, into `out` (cleared first). An
    /// edge row (`edges`) is a block of its own, whose tiles skip its dead taps.
    fn tiles(&self, oy0: usize, rows: usize, edges: &EdgeRows, out: &mut Vec<Tile>) {
        out.clear();
        let mut r0 = 0;
        while r0 < rows {
            let edge = edges.class[oy0 + r0];
            let tr = if edge.is_some() {
                1
            } else {
                (r0..rows.min(r0 + self.rows_per_tile))
                    .take_while(|&r| edges.class[oy0 + r].is_none())
                    .count()
            };
            let mut ox = 0;
            for pixels in row_tiles(self.ow, MAX_PW / tr) {
                out.push(Tile {
                    x: r0 * self.row_step + ox * self.sw,
                    acc: r0 * self.ow + ox,
                    rows: tr,
                    pixels,
                    edge,
                });
                ox += pixels;
            }
            r0 += tr;
        }
    }
}

/// The output rows that read padding through whole kernel rows (the top and bottom rows of a
/// padded map: with a 3x3 kernel and padding 1, kernel row 0 for output row 0), and per class
/// of them the taps that read real rows. A tile of such a row runs only those: the others
/// multiply zeros for every pixel of the tile, and skipping them leaves every sum the same
/// chain of FMAs minus terms `fma(0, w, s) = s` (finite weights), the same bits, as the
/// implicit GEMM's dead rows (`dead_rows.rs`). On 16x16 maps that is 4% of the products.
struct EdgeRows {
    /// Per output row, the index of its class in `live`, or `None` for a row that reads a
    /// real row through every kernel row.
    class: Vec<Option<usize>>,
    /// Per class, the taps `kk = (ci, ky, kx)` whose kernel row `ky` reads a real row,
    /// increasing.
    live: Vec<Vec<u32>>,
}

impl EdgeRows {
    fn of(g: &Conv2dGeom) -> Self {
        let (khw, full) = (g.kh * g.kw, Some((0, g.kh - 1)));
        let mut keys = Vec::new();
        let mut live = Vec::new();
        let class = (0..g.oh)
            .map(|oy| {
                let rows = live_rows(g, oy);
                if rows == full {
                    return None;
                }
                Some(keys.iter().position(|&r| r == rows).unwrap_or_else(|| {
                    keys.push(rows);
                    live.push(
                        (0..g.k())
                            .filter(|kk| {
                                rows.is_some_and(|(lo, hi)| (lo..=hi).contains(&(kk % khw / g.kw)))
                            })
                            .map(|kk| u32::try_from(kk).expect("a kernel of 2^32 taps"))
                            .collect(),
                    );
                    keys.len() - 1
                }))
            })
            .collect();
        EdgeRows { class, live }
    }

    /// The live taps of class `c` among the taps `first..first + len`.
    fn piece(&self, c: usize, first: usize, len: usize) -> &[u32] {
        let live = &self.live[c];
        let a = live.partition_point(|&kk| (kk as usize) < first);
        let b = live.partition_point(|&kk| (kk as usize) < first + len);
        &live[a..b]
    }
}

/// The pieces of taps a task's tiles run through, in order: `(k0, s0, len)`, the taps
/// `k0 + s0..k0 + s0 + len` of the depth block starting at `k0` ([`KC`] taps), cut into
/// pieces of at most `sub` taps (the block's 32 KB of weights and the inputs its tiles read
/// did not fit in L1 together: 5-15% slower at 56x56 and 64x64 with 64 and 128 channels).
fn pieces(k: usize, sub: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    (0..k).step_by(KC).flat_map(move |k0| {
        let kc = KC.min(k - k0);
        (0..kc)
            .step_by(sub)
            .map(move |s0| (k0, s0, sub.min(kc - s0)))
    })
}

/// Where a piece's chains of FMAs start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Start {
    /// From zero: the piece opens a depth block.
    Zero,
    /// From the chains the block's previous piece stored: the same FMAs in the same order as
    /// one unbroken chain, so the same bits.
    Chain,
}

/// What a piece does with its chains at its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// Stores them for the block's next piece.
    Chain,
    /// Stores them as the sums (the first depth block ends).
    Store,
    /// Adds them to the earlier blocks' sums (a later depth block ends).
    Add,
}

/// One piece of taps of one task: their offsets, their packed weights (`[kk][32]`), how its
/// chains start and end, and for a tile of an edge row the taps it runs.
#[derive(Clone, Copy)]
struct Chunk<'a> {
    taps: &'a [usize],
    weights: &'a [f32],
    start: Start,
    end: End,
    /// `(live, first)`: run only the taps `live` (indices into the whole depth, increasing,
    /// in `first..first + taps.len()`), the others reading padding for every pixel of the
    /// tile ([`EdgeRows`]); `None`: every tap.
    live: Option<(&'a [u32], usize)>,
}

impl Chunk<'_> {
    /// The chains `c[(r*pitch + p)*32 + l] = (start) + sum_i weights[i*32 + l] * x[r*row_step
    /// + p*sw + taps[i]]` for the tile's pixels `(r, p)`, one FMA per tap in tap order,
    /// starting from zero or from `chain`, and ending in `chain` or in `acc` (stored or added;
    /// see [`End`]).
    ///
    /// # Safety
    /// The CPU has AVX-512F; `x[r*row_step + p*sw + taps[i]]` is in bounds for every pixel and
    /// every `i`; `acc` and `chain` hold `((rows-1)*pitch + pixels) * 32` values; `rows x
    /// pixels` is one of the shapes [`rows_per_tile`] and [`row_tiles`] give (`rows <= 4`,
    /// `rows * pixels <= MAX_PW`), `sw` 1 or 2.
    #[inline]
    unsafe fn tile(
        &self,
        isa: Isa,
        shape: TileShape,
        x: &[f32],
        acc: &mut [f32],
        chain: &mut [f32],
    ) {
        let TileShape {
            rows,
            pixels,
            sw,
            row_step,
            pitch,
        } = shape;
        let len = ((rows - 1) * pitch + pixels) * LANES;
        debug_assert!(isa == Isa::Avx512 && acc.len() >= len && chain.len() >= len);
        assert_eq!(self.weights.len(), self.taps.len() * LANES);
        let (x, acc, chain) = (x.as_ptr(), acc.as_mut_ptr(), chain.as_mut_ptr());
        let strides = (row_step, pitch);
        macro_rules! shapes {
            ($(($r:literal, $($w:literal)*))*) => {
                match (rows, pixels, sw) {
                    $($(
                        ($r, $w, 1) => tile_avx512::<$r, $w, 1>(self, x, strides, acc, chain),
                        ($r, $w, 2) => tile_avx512::<$r, $w, 2>(self, x, strides, acc, chain),
                    )*)*
                    _ => unreachable!("tiles are 1-4 rows of at most 14 pixels, stride 1 or 2"),
                }
            };
        }
        // SAFETY: forwarded (see above).
        unsafe {
            shapes!(
                (1, 1 2 3 4 5 6 7 8 9 10 11 12 13 14)
                (2, 1 2 3 4 5 6 7)
                (3, 1 2 3 4)
                (4, 1 2 3)
            )
        }
    }
}

/// A register tile's shape: `rows x pixels` output pixels, `sw` apart along a row in the input
/// and `row_step` from row to row; the rows' sums `pitch` pixels apart.
#[derive(Clone, Copy, Debug)]
struct TileShape {
    rows: usize,
    pixels: usize,
    sw: usize,
    row_step: usize,
    pitch: usize,
}

/// The `32 x (R x PW)` register tile of [`Chunk::tile`] with the input stride `SW`;
/// `(row_step, pitch)` as in [`TileShape`].
///
/// # Safety
/// See [`Chunk::tile`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512<const R: usize, const PW: usize, const SW: usize>(
    c: &Chunk,
    x: *const f32,
    (row_step, pitch): (usize, usize),
    acc: *mut f32,
    chain: *mut f32,
) {
    use std::arch::x86_64::*;
    // Sum `(r, p)`'s first lane, in `acc` and `chain`.
    let at = |r: usize, p: usize| (r * pitch + p) * LANES;
    // SAFETY: the bounds are the caller's (see `Chunk::tile`).
    unsafe {
        let mut lo = [[_mm512_setzero_ps(); PW]; R];
        let mut hi = [[_mm512_setzero_ps(); PW]; R];
        if c.start == Start::Chain {
            for r in 0..R {
                for p in 0..PW {
                    lo[r][p] = _mm512_loadu_ps(chain.add(at(r, p)));
                    hi[r][p] = _mm512_loadu_ps(chain.add(at(r, p) + 16));
                }
            }
        }
        // One tap per step, its offset loaded from the table: written as loops over
        // (ci, ky, kx), LLVM reused the broadcasts of neighbouring kx across steps and spilled
        // the accumulators (the tile ran at 60% of this speed).
        let w = c.weights.as_ptr();
        // Tap `i` of the piece (`i < taps.len()`, so its 32 weights are in `weights`).
        macro_rules! tap {
            ($i:expr, $off:expr) => {{
                let (i, off): (usize, usize) = ($i, $off);
                let w0 = _mm512_loadu_ps(w.add(i * LANES));
                let w1 = _mm512_loadu_ps(w.add(i * LANES + 16));
                for r in 0..R {
                    let xi = x.add(off + r * row_step);
                    for p in 0..PW {
                        let v = _mm512_set1_ps(*xi.add(p * SW));
                        lo[r][p] = _mm512_fmadd_ps(v, w0, lo[r][p]);
                        hi[r][p] = _mm512_fmadd_ps(v, w1, hi[r][p]);
                    }
                }
            }};
        }
        match c.live {
            None => {
                for (i, &off) in c.taps.iter().enumerate() {
                    tap!(i, off);
                }
            }
            Some((live, first)) => {
                for &kk in live {
                    let i = kk as usize - first;
                    tap!(i, c.taps[i]);
                }
            }
        }
        // A block's sums, from zero, added to the earlier blocks' (the GEMM's order).
        let to = if c.end == End::Chain { chain } else { acc };
        for r in 0..R {
            for p in 0..PW {
                let (a0, a1) = (to.add(at(r, p)), to.add(at(r, p) + 16));
                if c.end == End::Add {
                    _mm512_storeu_ps(a0, _mm512_add_ps(_mm512_loadu_ps(a0), lo[r][p]));
                    _mm512_storeu_ps(a1, _mm512_add_ps(_mm512_loadu_ps(a1), hi[r][p]));
                } else {
                    _mm512_storeu_ps(a0, lo[r][p]);
                    _mm512_storeu_ps(a1, hi[r][p]);
                }
            }
        }
    }
}

/// Without x86-64 there is no AVX-512 ([`applies`] is false everywhere).
#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile_avx512<const R: usize, const PW: usize, const SW: usize>(
    _: &Chunk,
    _: *const f32,
    _: (usize, usize),
    _: *mut f32,
    _: *mut f32,
) {
    unreachable!("AVX-512 tiles on a CPU without AVX-512")
}

/// `t[l*stride + q] = acc[q*32 + l]` for the `span = acc.len() / 32` pixels of a band and
/// its 32 channels, by 16 x 16 blocks in registers (a scalar loop cost a fifth of the
/// convolution at a 7x7 stem's 147 taps); pixels past `span` in the last block are zeros.
///
/// # Safety
/// The CPU has AVX-512F; `t.len() >= 32 * stride`, `stride >= span` a multiple of 16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn transpose_band(acc: &[f32], t: &mut [f32], stride: usize) {
    use std::arch::x86_64::*;
    let span = acc.len() / LANES;
    assert!(stride >= span && stride.is_multiple_of(16) && t.len() >= LANES * stride);
    // SAFETY: loads read rows q < span of `acc`, stores write rows < 32 of `t` at columns
    // below `stride` (asserted above).
    unsafe {
        for q0 in (0..span).step_by(16) {
            for half in 0..2 {
                let mut r = [_mm512_setzero_ps(); 16];
                for (i, row) in r.iter_mut().enumerate().take(span - q0) {
                    *row = _mm512_loadu_ps(acc.as_ptr().add((q0 + i) * LANES + 16 * half));
                }
                let cols = transpose_16x16(r);
                for (c, col) in cols.iter().enumerate() {
                    _mm512_storeu_ps(t.as_mut_ptr().add((16 * half + c) * stride + q0), *col);
                }
            }
        }
    }
}

/// Without x86-64 there is no AVX-512 ([`applies`] is false everywhere).
#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn transpose_band(_: &[f32], _: &mut [f32], _: usize) {
    unreachable!("AVX-512 transposes on a CPU without AVX-512")
}

/// The 16 x 16 transpose of `r` (rows in, columns out): pairs of rows interleaved by 32-bit,
/// then 64-bit elements (each 128-bit lane then holds 4 rows of one column), then the 128-bit
/// lanes gathered across rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) fn transpose_16x16(
    r: [std::arch::x86_64::__m512; 16],
) -> [std::arch::x86_64::__m512; 16] {
    use std::arch::x86_64::*;
    let mut a = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        a[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        a[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // b[4j + m], 128-bit lane L: column 4L + m of rows 4j..4j+4.
    let mut b = [_mm512_setzero_ps(); 16];
    for j in 0..4 {
        let pd = |v: __m512| _mm512_castps_pd(v);
        let (a0, a1, a2, a3) = (
            pd(a[4 * j]),
            pd(a[4 * j + 1]),
            pd(a[4 * j + 2]),
            pd(a[4 * j + 3]),
        );
        b[4 * j] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, a2));
        b[4 * j + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, a2));
        b[4 * j + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, a3));
        b[4 * j + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, a3));
    }
    let mut out = [_mm512_setzero_ps(); 16];
    for m in 0..4 {
        // Lanes (0, 2) and (1, 3) of rows 0..8 and 8..16.
        let c0 = _mm512_shuffle_f32x4::<0x88>(b[m], b[4 + m]);
        let c1 = _mm512_shuffle_f32x4::<0xdd>(b[m], b[4 + m]);
        let c2 = _mm512_shuffle_f32x4::<0x88>(b[8 + m], b[12 + m]);
        let c3 = _mm512_shuffle_f32x4::<0xdd>(b[8 + m], b[12 + m]);
        out[m] = _mm512_shuffle_f32x4::<0x88>(c0, c2);
        out[8 + m] = _mm512_shuffle_f32x4::<0xdd>(c0, c2);
        out[4 + m] = _mm512_shuffle_f32x4::<0x88>(c1, c3);
        out[12 + m] = _mm512_shuffle_f32x4::<0xdd>(c1, c3);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_the_depth_in_order_inside_its_blocks() {
        for k in [1, 9, 127, 128, 129, 256, 257, 360, 576, 1170] {
            let mut next = 0;
            for (k0, s0, len) in pieces(k, SUB_TAPS) {
                assert_eq!(k0 + s0, next, "k {k}");
                assert!(k0.is_multiple_of(KC) && (1..=SUB_TAPS).contains(&len));
                assert!(s0 + len <= KC, "k {k}: a piece crosses a depth block");
                next += len;
            }
            assert_eq!(next, k);
        }
        let cut: Vec<_> = pieces(360, SUB_TAPS).collect();
        assert_eq!(cut, vec![(0, 0, 128), (0, 128, 128), (256, 0, 104)]);
    }

    #[test]
    fn row_tiles_cover_the_row_evenly() {
        assert_eq!(row_tiles(32, MAX_PW), vec![11, 11, 10]);
        assert_eq!(row_tiles(16, MAX_PW), vec![8, 8]);
        assert_eq!(row_tiles(12, MAX_PW), vec![12]);
        assert_eq!(row_tiles(56, MAX_PW), vec![14, 14, 14, 14]);
        assert_eq!(row_tiles(14, MAX_PW), vec![14]);
        assert_eq!(row_tiles(15, MAX_PW), vec![8, 7]);
        assert_eq!(row_tiles(16, 4), vec![4, 4, 4, 4]);
        assert_eq!(row_tiles(32, 7), vec![7, 7, 6, 6, 6]);
        for max in 1..=MAX_PW {
            for ow in 1..200 {
                let t = row_tiles(ow, max);
                assert_eq!(t.iter().sum::<usize>(), ow);
                assert!(t.iter().all(|&w| (1..=max).contains(&w)));
                assert!(t.iter().max().unwrap() - t.iter().min().unwrap() <= 1);
            }
        }
    }

    #[test]
    fn rows_per_tile_takes_the_fullest_tiles() {
        let cases = [
            (16, 3),
            (32, 2),
            (8, 3),
            (14, 1),
            (28, 1),
            (56, 1),
            (64, 1),
            (7, 2),
        ];
        for (ow, rows) in cases {
            assert_eq!(rows_per_tile(ow), rows, "ow {ow}");
        }
    }

    /// A band's tiles cover each of its output pixels once, every tile a shape
    /// [`Chunk::tile`] has, reading where that pixel reads and summing where it is stored;
    /// edge rows are tiles of one row that carry their class.
    #[test]
    fn tiles_cover_each_pixel_once() {
        for (ow, stride, wp) in [(16, 1, 18), (32, 1, 34), (8, 2, 18), (7, 1, 9), (1, 1, 3)] {
            let layout = TileLayout {
                row_step: stride * wp,
                ow,
                sw: stride,
                rows_per_tile: rows_per_tile(ow),
            };
            for rows in 1..=9 {
                for edged in [false, true] {
                    // Edge rows 0 and 5 (class 0) and 6 (class 1) of rows 0..12.
                    let mut class = vec![None; 12];
                    if edged {
                        (class[0], class[5], class[6]) = (Some(0), Some(0), Some(1));
                    }
                    let edges = EdgeRows {
                        class,
                        live: vec![Vec::new(), Vec::new()],
                    };
                    for oy0 in [0, 2] {
                        let mut tiles = Vec::new();
                        layout.tiles(oy0, rows, &edges, &mut tiles);
                        let mut seen = vec![0; rows * ow];
                        for t in &tiles {
                            assert!((1..=4).contains(&t.rows) && t.rows * t.pixels <= MAX_PW);
                            assert!(t.pixels <= MAX_PW / t.rows);
                            for r in 0..t.rows {
                                for p in 0..t.pixels {
                                    let q = t.acc + r * ow + p;
                                    let (oy, ox) = (q / ow, q % ow);
                                    let at = oy * stride * wp + ox * stride;
                                    assert_eq!(t.x + r * layout.row_step + p * stride, at);
                                    assert_eq!(t.edge, edges.class[oy0 + oy]);
                                    seen[q] += 1;
                                }
                            }
                            assert!(t.edge.is_none() || t.rows == 1);
                        }
                        assert!(
                            seen.iter().all(|&s| s == 1),
                            "ow {ow} rows {rows}: {seen:?}"
                        );
                    }
                }
            }
        }
    }

    /// The edge rows are the output rows that read padding through a whole kernel row, and
    /// their classes' taps are exactly those reading real rows, whatever the piece.
    #[test]
    fn edge_rows_run_exactly_the_live_taps() {
        let geom = |h: usize, kh: usize, s: usize, p: usize, d: usize| {
            let oh = (h + 2 * p - d * (kh - 1) - 1) / s + 1;
            Conv2dGeom {
                n: 1,
                c_in: 3,
                h,
                w: 4,
                c_out: 32,
                kh,
                kw: 2,
                stride: (s, 1),
                padding: (p, 0),
                dilation: (d, 1),
                groups: 1,
                oh,
                ow: 3,
            }
        };
        for g in [
            geom(16, 3, 1, 1, 1),
            geom(5, 7, 2, 3, 1),
            geom(6, 3, 1, 2, 2),
            geom(1, 3, 1, 1, 1),
        ] {
            let edges = EdgeRows::of(&g);
            let k = g.k();
            for oy in 0..g.oh {
                let reads = |kk: usize| {
                    let ky = kk % (g.kh * g.kw) / g.kw;
                    let at = (oy * g.stride.0 + ky * g.dilation.0) as isize - g.padding.0 as isize;
                    at >= 0 && at < g.h as isize
                };
                let all_live = (0..k).all(reads);
                assert_eq!(edges.class[oy].is_none(), all_live, "{g:?} oy {oy}");
                let Some(c) = edges.class[oy] else { continue };
                for len in [1, 4, k] {
                    for first in (0..k).step_by(len) {
                        let len = len.min(k - first);
                        let got: Vec<usize> = edges
                            .piece(c, first, len)
                            .iter()
                            .map(|&t| t as usize)
                            .collect();
                        let want: Vec<usize> =
                            (first..first + len).filter(|&kk| reads(kk)).collect();
                        assert_eq!(got, want, "{g:?} oy {oy} piece {first}+{len}");
                    }
                }
            }
        }
    }
}
