//! CPU reductions: sum, max, min, argmax and argmin over any set of dims of a strided view.
//!
//! The view is first simplified: size-1 dims are dropped, and the kept dims (one output element
//! each) and the reduced dims are each merged where they step through memory as one. Then one
//! of three loops runs:
//! - **rows**, when the innermost reduced run has stride 1 (`sum(-1)`, a mean over a feature
//!   dim): each output folds contiguous runs with [`lanes`] accumulators, so the loop
//!   vectorizes;
//! - **columns**, when the innermost kept run has stride 1 (a bias gradient `[B*T, C] -> [C]`,
//!   a sum over the batch): whole input rows are added into an output row with vector adds
//!   over contiguous memory, instead of a strided walk per output element. The reduced rows
//!   are cut into fixed blocks of [`ROWS_PER_BLOCK`] whose partial results are then combined in
//!   block order, so a long reduction runs in parallel;
//! - otherwise an offset table per output element (any layout; argmax and argmin always).
//!
//! Every loop combines in an order fixed by the shape alone, so results do not depend on the
//! thread count. NaN propagates through max and min.

use super::simd::vectorized;
use super::{lanes, CpuData, CpuStorage, Float};
use crate::backend::reduce::{ReduceBackend, ReduceOp};
use crate::tensor::{Layout, Shape};
use crate::{Error, Result};
use rayon::prelude::*;

/// Reduced rows per partial result in the column loop.
const ROWS_PER_BLOCK: usize = 128;
/// Output columns per task in the column loop (16 KiB of f32: the accumulator stays in L1).
const COLS_PER_TASK: usize = 4096;
/// Input elements a task should cover before Rayon splits further.
const ELEMS_PER_TASK: usize = 1 << 15;

/// One merged axis of the view.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Axis {
    size: usize,
    stride: usize,
}

/// `dims` of `layout` (in order) without size-1 dims, neighbours merged where the outer one's
/// stride is the inner one's stride times its size.
fn merged_axes(layout: &Layout, dims: impl Iterator<Item = usize>) -> Vec<Axis> {
    let mut out: Vec<Axis> = Vec::new();
    for d in dims {
        let (size, stride) = (layout.dims()[d], layout.strides()[d]);
        if size == 1 {
            continue;
        }
        match out.last_mut() {
            Some(prev) if prev.stride == stride * size => {
                prev.size *= size;
                prev.stride = stride;
            }
            _ => out.push(Axis { size, stride }),
        }
    }
    out
}

/// Offsets of every element spanned by `axes`, row-major.
fn axis_offsets(axes: &[Axis]) -> Vec<usize> {
    let mut offsets = vec![0usize];
    for a in axes {
        offsets = offsets
            .iter()
            .flat_map(|&o| (0..a.size).map(move |i| o + i * a.stride))
            .collect();
    }
    offsets
}

/// Offsets (relative to the view's start) of all elements of the sub-view spanned by `dims`.
fn sub_offsets(layout: &Layout, dims: &[usize]) -> Vec<usize> {
    let shape = Shape::new(dims.iter().map(|&d| layout.dims()[d]).collect());
    let strides = dims.iter().map(|&d| layout.strides()[d]).collect();
    Layout::new(shape, strides, 0).offsets()
}

/// The fold of a value reduction: its identity and how two partial results combine. One type
/// per op, so that each loop is compiled for its op: with the op a run-time value, its `match`
/// sat inside the element loop, which LLVM left scalar (the op reloaded and branched on per
/// element; a bias gradient's column sums ran at ~5 GB/s).
trait Fold: Copy + Send + Sync {
    fn init<T: Float>(self) -> T;
    fn combine<T: Float>(self, acc: T, v: T) -> T;
}

#[derive(Clone, Copy)]
struct SumFold;
#[derive(Clone, Copy)]
struct MaxFold;
#[derive(Clone, Copy)]
struct MinFold;

impl Fold for SumFold {
    #[inline(always)]
    fn init<T: Float>(self) -> T {
        T::ZERO
    }
    #[inline(always)]
    fn combine<T: Float>(self, acc: T, v: T) -> T {
        acc + v
    }
}

impl Fold for MaxFold {
    #[inline(always)]
    fn init<T: Float>(self) -> T {
        T::NEG_INFINITY
    }
    #[inline(always)]
    fn combine<T: Float>(self, acc: T, v: T) -> T {
        if v > acc || v.is_nan() {
            v
        } else {
            acc
        }
    }
}

impl Fold for MinFold {
    #[inline(always)]
    fn init<T: Float>(self) -> T {
        T::INFINITY
    }
    #[inline(always)]
    fn combine<T: Float>(self, acc: T, v: T) -> T {
        if v < acc || v.is_nan() {
            v
        } else {
            acc
        }
    }
}

/// Which loop a (merged) view takes; see the module docs.
#[derive(Debug, PartialEq)]
enum Path {
    Rows,
    Columns,
    Gather,
}

fn path(kept: &[Axis], reduced: &[Axis]) -> Path {
    match (kept.last(), reduced.last()) {
        (_, Some(r)) if r.stride == 1 => Path::Rows,
        (Some(k), Some(_)) if k.stride == 1 => Path::Columns,
        _ => Path::Gather,
    }
}

fn reduce_typed<T: Float>(x: &[T], layout: &Layout, dims: &[usize], op: ReduceOp) -> CpuData
where
    Vec<T>: IntoCpuData,
{
    let rank = layout.dims().len();
    let kept_dims: Vec<usize> = (0..rank).filter(|d| !dims.contains(d)).collect();
    if !layout.dims().contains(&0) {
        let fast = match op {
            ReduceOp::Sum => reduce_merged(x, layout, &kept_dims, dims, SumFold),
            ReduceOp::Max => reduce_merged(x, layout, &kept_dims, dims, MaxFold),
            ReduceOp::Min => reduce_merged(x, layout, &kept_dims, dims, MinFold),
            _ => None,
        };
        if let Some(out) = fast {
            return out.into_cpu_data();
        }
    }
    reduce_gather(x, layout, &kept_dims, dims, op)
}

/// The rows or columns loop of a value reduction, or `None` when the merged view takes
/// neither (then the offset-table loop runs).
fn reduce_merged<T: Float, F: Fold>(
    x: &[T],
    layout: &Layout,
    kept_dims: &[usize],
    dims: &[usize],
    fold: F,
) -> Option<Vec<T>> {
    let kept = merged_axes(layout, kept_dims.iter().copied());
    let reduced = merged_axes(layout, dims.iter().copied());
    let x = &x[layout.offset()..];
    match path(&kept, &reduced) {
        Path::Rows => {
            let (run, outer) = reduced.split_last().expect("rows have a reduced axis");
            Some(reduce_rows(
                x,
                &axis_offsets(&kept),
                &axis_offsets(outer),
                run.size,
                fold,
            ))
        }
        Path::Columns => {
            let (width, outer) = kept.split_last().expect("columns have a kept axis");
            Some(reduce_columns(
                x,
                &axis_offsets(outer),
                width.size,
                &axis_offsets(&reduced),
                fold,
            ))
        }
        Path::Gather => None,
    }
}

/// `out[i] = fold over o in outer, j < run of x[kept[i] + o + j]`: contiguous runs.
fn reduce_rows<T: Float, F: Fold>(
    x: &[T],
    kept: &[usize],
    outer: &[usize],
    run: usize,
    f: F,
) -> Vec<T> {
    let per_output = outer.len() * run;
    kept.par_iter()
        .with_min_len((ELEMS_PER_TASK / per_output).max(1))
        .map(|&k| {
            vectorized(
                #[inline(always)]
                || {
                    let mut acc = f.init();
                    for &o in outer {
                        let row = &x[k + o..k + o + run];
                        let v = lanes::map_reduce(row, f.init(), |v| v, |a, b| f.combine(a, b));
                        acc = f.combine(acc, v);
                    }
                    acc
                },
            )
        })
        .collect()
}

/// `out[i * width + j] = fold over r in rows of x[outer[i] + r + j]`: whole rows added into an
/// accumulator row, in blocks of [`ROWS_PER_BLOCK`] rows whose partials combine in order.
fn reduce_columns<T: Float, F: Fold>(
    x: &[T],
    outer: &[usize],
    width: usize,
    rows: &[usize],
    f: F,
) -> Vec<T> {
    let chunk = width.min(COLS_PER_TASK);
    let blocks = rows.len().div_ceil(ROWS_PER_BLOCK);
    let out_len = outer.len() * width;
    // Folds block `b` of the rows into `acc`, the columns `j0..` of output row `i`.
    let fold_block = |i: usize, j0: usize, b: usize, acc: &mut [T]| {
        let start = outer[i] + j0;
        let rows = &rows[b * ROWS_PER_BLOCK..((b + 1) * ROWS_PER_BLOCK).min(rows.len())];
        fold_slices_into(acc, rows.iter().map(|&r| start + r), x, f)
    };
    let mut out = vec![T::ZERO; out_len];
    if blocks == 1 {
        column_tasks(&mut out, width, chunk).for_each(|(i, j0, acc)| fold_block(i, j0, 0, acc));
        return out;
    }
    // partials[b * out_len..][..out_len]: block b's result for every output.
    let mut partials = vec![T::ZERO; blocks * out_len];
    partials
        .par_chunks_mut(out_len)
        .enumerate()
        .for_each(|(b, part)| {
            column_tasks(part, width, chunk).for_each(|(i, j0, acc)| fold_block(i, j0, b, acc))
        });
    column_tasks(&mut out, width, chunk).for_each(|(i, j0, acc)| {
        let at = i * width + j0;
        fold_slices_into(acc, (0..blocks).map(|b| b * out_len + at), &partials, f)
    });
    out
}

/// `acc[j] = fold over s in starts (in order) of src[s + j]`: the first slice copied, the rest
/// combined in, element by element (vector adds, or max/min, over contiguous memory).
#[inline(always)]
fn fold_slices_into<T: Float, F: Fold>(
    acc: &mut [T],
    mut starts: impl Iterator<Item = usize>,
    src: &[T],
    f: F,
) {
    let n = acc.len();
    let first = starts.next().expect("at least one slice to fold");
    vectorized(
        #[inline(always)]
        || {
            acc.copy_from_slice(&src[first..first + n]);
            for s in starts {
                for (a, &v) in acc.iter_mut().zip(&src[s..s + n]) {
                    *a = f.combine(*a, v);
                }
            }
        },
    )
}

/// `buf` (rows of `width`) cut into tasks of at most `chunk` columns: `(row, first column,
/// slice)`.
fn column_tasks<T: Send>(
    buf: &mut [T],
    width: usize,
    chunk: usize,
) -> impl ParallelIterator<Item = (usize, usize, &mut [T])> {
    buf.par_chunks_mut(width)
        .enumerate()
        .flat_map(move |(i, row)| {
            row.par_chunks_mut(chunk)
                .enumerate()
                .map(move |(c, acc)| (i, c * chunk, acc))
        })
}

/// The general loop: an offset table of the reduced elements, walked per output element.
fn reduce_gather<T: Float>(
    x: &[T],
    layout: &Layout,
    kept: &[usize],
    dims: &[usize],
    op: ReduceOp,
) -> CpuData
where
    Vec<T>: IntoCpuData,
{
    let kept_offsets = sub_offsets(layout, kept);
    let red_offsets = sub_offsets(layout, dims);
    let base = layout.offset();
    if let ReduceOp::ArgMax | ReduceOp::ArgMin = op {
        let max = op == ReduceOp::ArgMax;
        let out: Vec<i64> = kept_offsets
            .par_iter()
            .with_min_len(64)
            .map(|&k| {
                let p = &x[base + k..];
                let mut best = 0usize;
                for (i, &r) in red_offsets.iter().enumerate() {
                    let (v, b) = (p[r], p[red_offsets[best]]);
                    if (max && v > b) || (!max && v < b) {
                        best = i;
                    }
                }
                best as i64
            })
            .collect();
        return CpuData::I64(out);
    }
    let out: Vec<T> = match op {
        ReduceOp::Sum => gather_fold(x, base, &kept_offsets, &red_offsets, SumFold),
        ReduceOp::Max => gather_fold(x, base, &kept_offsets, &red_offsets, MaxFold),
        ReduceOp::Min => gather_fold(x, base, &kept_offsets, &red_offsets, MinFold),
        ReduceOp::ArgMax | ReduceOp::ArgMin => unreachable!("the index reductions returned above"),
    };
    out.into_cpu_data()
}

/// `out[i] = fold over r of x[base + kept[i] + r]`, the offset-table loop.
fn gather_fold<T: Float, F: Fold>(
    x: &[T],
    base: usize,
    kept: &[usize],
    reduced: &[usize],
    f: F,
) -> Vec<T> {
    kept.par_iter()
        .with_min_len(64)
        .map(|&k| {
            let p = &x[base + k..];
            reduced
                .iter()
                .fold(f.init(), |acc, &r| f.combine(acc, p[r]))
        })
        .collect()
}

pub(crate) trait IntoCpuData {
    fn into_cpu_data(self) -> CpuData;
}
impl IntoCpuData for Vec<f32> {
    fn into_cpu_data(self) -> CpuData {
        CpuData::F32(self)
    }
}
impl IntoCpuData for Vec<f64> {
    fn into_cpu_data(self) -> CpuData {
        CpuData::F64(self)
    }
}

impl ReduceBackend for CpuStorage {
    fn reduce(&self, op: ReduceOp, layout: &Layout, dims: &[usize]) -> Result<Self> {
        let data = match self.data() {
            CpuData::F32(x) => reduce_typed(x, layout, dims, op),
            CpuData::F64(x) => reduce_typed(x, layout, dims, op),
            d => {
                return Err(Error::UnsupportedDType {
                    op: op.name(),
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

    /// The reference: for each kept multi-index (row-major), fold the reduced elements in
    /// f64, NaN propagating.
    fn reference(x: &[f64], layout: &Layout, dims: &[usize], op: ReduceOp) -> Vec<f64> {
        let rank = layout.dims().len();
        let kept: Vec<usize> = (0..rank).filter(|d| !dims.contains(d)).collect();
        let base = layout.offset();
        sub_offsets(layout, &kept)
            .iter()
            .map(|&k| {
                let vals = sub_offsets(layout, dims)
                    .into_iter()
                    .map(|r| x[base + k + r]);
                match op {
                    ReduceOp::Sum => vals.sum(),
                    ReduceOp::Max => vals.fold(f64::NEG_INFINITY, |m, v| {
                        if v.is_nan() || m.is_nan() {
                            f64::NAN
                        } else {
                            m.max(v)
                        }
                    }),
                    _ => vals.fold(f64::INFINITY, |m, v| {
                        if v.is_nan() || m.is_nan() {
                            f64::NAN
                        } else {
                            m.min(v)
                        }
                    }),
                }
            })
            .collect()
    }

    fn data(n: usize) -> Vec<f64> {
        (0..n)
            .map(|i| ((i as f64 * 0.7311).sin() * 3.0).round() / 4.0 + 0.01 * i as f64)
            .collect()
    }

    /// (layout, reduced dims, expected path) over a buffer of 200_000 elements.
    fn cases() -> Vec<(Layout, Vec<usize>, Path)> {
        let c = |dims: &[usize]| Layout::contiguous(Shape::new(dims.to_vec()));
        vec![
            // Bias gradient: [B*T, C] over the rows; many row blocks.
            (c(&[1000, 24]), vec![0], Path::Columns),
            (c(&[4, 300, 24]), vec![0, 1], Path::Columns),
            // Sum over the middle dim: columns with several outer rows.
            (c(&[3, 7, 130]), vec![1], Path::Columns),
            // Wider rows than one task's chunk.
            (c(&[3, 5000]), vec![0], Path::Columns),
            // Feature dim: contiguous runs.
            (c(&[37, 129]), vec![1], Path::Rows),
            (c(&[5, 6, 33]), vec![0, 2], Path::Rows),
            (c(&[6, 5, 7]), vec![0, 1, 2], Path::Rows),
            // NCHW over N, H, W (a batch-norm statistic): runs of H*W, outer N.
            (c(&[4, 3, 5, 6]), vec![0, 2, 3], Path::Rows),
            // Size-1 dims are dropped before choosing.
            (c(&[1, 40, 1, 9]), vec![1, 2], Path::Columns),
            // A transposed view ([20, 50], strides [1, 20]).
            (c(&[50, 20]).transpose(0, 1), vec![0], Path::Rows),
            (c(&[50, 20]).transpose(0, 1), vec![1], Path::Columns),
            // An offset view (narrow), with a gap between rows.
            (
                c(&[30, 40]).narrow(1, 3, 30).unwrap(),
                vec![0],
                Path::Columns,
            ),
            (c(&[30, 40]).narrow(1, 3, 30).unwrap(), vec![1], Path::Rows),
            // A broadcast input (stride 0 on the reduced dim).
            (
                Layout::new(Shape::new(vec![64, 17]), vec![0, 1], 5),
                vec![0],
                Path::Columns,
            ),
            // Nothing contiguous on either side: the gather loop.
            (
                Layout::new(Shape::new(vec![6, 9]), vec![2, 12], 1),
                vec![0],
                Path::Gather,
            ),
        ]
    }

    #[test]
    fn every_loop_matches_the_reference() {
        let x = data(200_000);
        for (layout, dims, want) in cases() {
            let rank = layout.dims().len();
            let kept: Vec<usize> = (0..rank).filter(|d| !dims.contains(d)).collect();
            let got_path = path(
                &merged_axes(&layout, kept.iter().copied()),
                &merged_axes(&layout, dims.iter().copied()),
            );
            assert_eq!(got_path, want, "{:?} over {dims:?}", layout.dims());
            for op in [ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min] {
                let want = reference(&x, &layout, &dims, op);
                let CpuData::F64(got) = reduce_typed(&x, &layout, &dims, op) else {
                    panic!("f64 in, f64 out")
                };
                assert_eq!(got.len(), want.len());
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() <= 1e-9 * w.abs().max(1.0),
                        "{op:?} {:?} over {dims:?}, output {i}: {g} vs {w}",
                        layout.dims()
                    );
                }
            }
        }
    }

    #[test]
    fn nan_propagates_through_max_and_min() {
        for (layout, dims, _) in cases() {
            let mut x = data(200_000);
            // Poison one element the view reads: the last one of the first output.
            let last = sub_offsets(&layout, &dims).into_iter().max().unwrap();
            x[layout.offset() + last] = f64::NAN;
            for op in [ReduceOp::Max, ReduceOp::Min, ReduceOp::Sum] {
                let CpuData::F64(got) = reduce_typed(&x, &layout, &dims, op) else {
                    panic!("f64 in, f64 out")
                };
                assert!(got[0].is_nan(), "{op:?} {:?} over {dims:?}", layout.dims());
            }
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let x: Vec<f32> = data(200_000).iter().map(|&v| v as f32).collect();
        let run = |threads: usize| -> Vec<Vec<u32>> {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                cases()
                    .iter()
                    .map(
                        |(layout, dims, _)| match reduce_typed(&x, layout, dims, ReduceOp::Sum) {
                            CpuData::F32(v) => v.iter().map(|f| f.to_bits()).collect(),
                            _ => panic!("f32 in, f32 out"),
                        },
                    )
                    .collect()
            })
        };
        assert_eq!(run(1), run(3));
    }
}
