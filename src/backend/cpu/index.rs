//! CPU index kernels.
//!
//! Indices are first read into checked `usize` positions (an out-of-range or negative index
//! is an error before anything is written). Then:
//!
//! * `index_select` views the input as `[outer, size, inner]` and copies `inner`-long rows,
//!   all output rows in parallel. Works for every dtype.
//! * `index_add` buckets the slice numbers `k` by destination index (a counting sort), so each
//!   destination row is owned by one task that adds its sources in ascending `k`: parallel,
//!   and the sum order (hence the result) does not depend on the thread count.
//! * `gather` computes, for every position of `ids`, the storage offset of the input element
//!   with the `dim` coordinate left at 0 (a layout with the input's strides, `ids`' shape and a
//!   zero stride along `dim`), then adds `ids[m] * stride[dim]`. Strided inputs are read in place.
//! * `scatter_add` uses the same offset trick on the contiguous output; destinations may
//!   collide, so it runs sequentially in row-major order of `ids` (deterministic).

use super::{contiguous_cow, gather_strided, CpuData, CpuStorage, Float};
use crate::backend::index::IndexBackend;
use crate::tensor::{Layout, Shape, WithDType};
use crate::{cpu_map_any, Error, Result};
use rayon::prelude::*;

/// Rows below this many elements are grouped into one Rayon task with their neighbours.
const MIN_ELEMS_PER_TASK: usize = 4096;

/// Reads an i64 or u32 index view into positions, each checked to be in `0..size`.
fn checked_indices(
    ids: &CpuStorage,
    layout: &Layout,
    size: usize,
    op: &'static str,
) -> Result<Vec<usize>> {
    let raw: Vec<i64> = match ids.data() {
        CpuData::I64(v) => gather_strided(v, layout),
        CpuData::U32(v) => contiguous_cow(v, layout)
            .iter()
            .map(|&i| i64::from(i))
            .collect(),
        d => {
            return Err(Error::UnsupportedDType {
                op,
                dtype: d.dtype_of(),
                expected: "i64 or u32 indices",
            })
        }
    };
    raw.into_iter()
        .map(|i| match usize::try_from(i) {
            Ok(p) if p < size => Ok(p),
            _ => Err(Error::IndexOutOfRange { op, index: i, size }),
        })
        .collect()
}

/// `(outer, size, inner)`: the products of the dims before `dim`, `dim` itself, and after it.
pub(crate) fn split_at_dim(dims: &[usize], dim: usize) -> (usize, usize, usize) {
    (
        dims[..dim].iter().product(),
        dims[dim],
        dims[dim + 1..].iter().product(),
    )
}

/// `dim` must name a dimension of `layout` (the op layer guarantees it; this guards direct calls).
pub(crate) fn check_dim(op: &'static str, layout: &Layout, dim: usize) -> Result<()> {
    if dim < layout.dims().len() {
        Ok(())
    } else {
        Err(Error::DimOutOfRange {
            op,
            dim: dim as isize,
            shape: layout.shape().clone(),
        })
    }
}

/// Rows per Rayon task so that each task moves at least [`MIN_ELEMS_PER_TASK`] elements.
fn rows_per_task(row_len: usize) -> usize {
    (MIN_ELEMS_PER_TASK / row_len.max(1)).max(1)
}

fn index_select_typed<T: WithDType>(x: &[T], layout: &Layout, ids: &[usize], dim: usize) -> Vec<T> {
    let (outer, size, inner) = split_at_dim(layout.dims(), dim);
    let x = contiguous_cow(x, layout);
    let n = ids.len();
    let mut out = vec![T::from_f64(0.0); outer * n * inner];
    if out.is_empty() {
        return out;
    }
    // Output row r is slice k = r % n of outer block o = r / n.
    out.par_chunks_mut(inner)
        .with_min_len(rows_per_task(inner))
        .enumerate()
        .for_each(|(r, row)| {
            let (o, k) = (r / n, r % n);
            let src = (o * size + ids[k]) * inner;
            row.copy_from_slice(&x[src..src + inner]);
        });
    out
}

fn index_add_typed<T: Float>(
    x: &[T],
    layout: &Layout,
    ids: &[usize],
    src: &[T],
    src_layout: &Layout,
    dim: usize,
) -> Vec<T> {
    let (_, size, inner) = split_at_dim(layout.dims(), dim);
    let mut out = gather_strided(x, layout);
    let src = contiguous_cow(src, src_layout);
    let n = ids.len();
    if out.is_empty() || n == 0 {
        return out;
    }
    // Counting sort of k by ids[k]: the sources of destination i are
    // order[start[i]..start[i + 1]], in ascending k.
    let mut start = vec![0usize; size + 1];
    for &i in ids {
        start[i + 1] += 1;
    }
    for i in 0..size {
        start[i + 1] += start[i];
    }
    let mut fill = start.clone();
    let mut order = vec![0usize; n];
    for (k, &i) in ids.iter().enumerate() {
        order[fill[i]] = k;
        fill[i] += 1;
    }
    // Destination row r is entry i = r % size of outer block o = r / size.
    out.par_chunks_mut(inner)
        .with_min_len(rows_per_task(inner))
        .enumerate()
        .for_each(|(r, row)| {
            let (o, i) = (r / size, r % size);
            for &k in &order[start[i]..start[i + 1]] {
                let s = (o * n + k) * inner;
                for (d, &v) in row.iter_mut().zip(&src[s..s + inner]) {
                    *d += v;
                }
            }
        });
    out
}

/// Storage offsets, for every position of `positions` (row-major), of the element with the
/// same coordinates in a view with `strides` and `offset`, except that the `dim` coordinate is 0.
fn offsets_without_dim(
    positions: &Shape,
    strides: &[usize],
    offset: usize,
    dim: usize,
) -> Vec<usize> {
    let mut strides = strides.to_vec();
    strides[dim] = 0;
    Layout::new(positions.clone(), strides, offset).offsets()
}

/// `ids` must have `layout`'s rank and fit inside it in every dim but `dim` (and, when
/// `src_dims` is given, inside `src` in every dim).
pub(crate) fn check_index_fits(
    op: &'static str,
    layout: &Layout,
    ids_layout: &Layout,
    src_dims: Option<&Shape>,
    dim: usize,
) -> Result<()> {
    let (x, ids) = (layout.dims(), ids_layout.dims());
    let fits_x =
        x.len() == ids.len() && dim < x.len() && (0..x.len()).all(|d| d == dim || ids[d] <= x[d]);
    let fits_src = src_dims
        .is_none_or(|s| s.rank() == ids.len() && ids.iter().zip(s.dims()).all(|(&i, &s)| i <= s));
    if fits_x && fits_src {
        return Ok(());
    }
    let mut shapes = vec![layout.shape(), ids_layout.shape()];
    shapes.extend(src_dims);
    Err(Error::shape(
        op,
        format!("index shape does not fit the input along dims other than {dim}"),
        &shapes,
    ))
}

fn gather_typed<T: WithDType>(
    x: &[T],
    layout: &Layout,
    ids_shape: &Shape,
    ids: &[usize],
    dim: usize,
) -> Vec<T> {
    let dim_stride = layout.strides()[dim];
    let base = offsets_without_dim(ids_shape, layout.strides(), layout.offset(), dim);
    base.par_iter()
        .with_min_len(MIN_ELEMS_PER_TASK)
        .zip(ids.par_iter())
        .map(|(&b, &i)| x[b + i * dim_stride])
        .collect()
}

fn scatter_add_typed<T: Float>(
    x: &[T],
    layout: &Layout,
    ids_shape: &Shape,
    ids: &[usize],
    src: &[T],
    src_layout: &Layout,
    dim: usize,
) -> Vec<T> {
    let mut out = gather_strided(x, layout);
    let out_strides = layout.shape().contiguous_strides();
    let dim_stride = out_strides[dim];
    let dst_base = offsets_without_dim(ids_shape, &out_strides, 0, dim);
    let src_at = Layout::new(
        ids_shape.clone(),
        src_layout.strides().to_vec(),
        src_layout.offset(),
    )
    .offsets();
    for ((&b, &i), &s) in dst_base.iter().zip(ids).zip(&src_at) {
        out[b + i * dim_stride] += src[s];
    }
    out
}

/// Runs a float kernel on matching f32/f64 operands; other dtypes are an error naming `op`.
macro_rules! float_pair {
    ($op:expr, $a:expr, $b:expr, |$x:ident, $y:ident| $body:expr) => {
        match ($a.data(), $b.data()) {
            (CpuData::F32($x), CpuData::F32($y)) => {
                let out = $body;
                CpuData::F32(out)
            }
            (CpuData::F64($x), CpuData::F64($y)) => {
                let out = $body;
                CpuData::F64(out)
            }
            (d, _) => {
                return Err(Error::UnsupportedDType {
                    op: $op,
                    dtype: d.dtype_of(),
                    expected: "f32 or f64",
                })
            }
        }
    };
}

impl IndexBackend for CpuStorage {
    fn index_select(
        &self,
        layout: &Layout,
        ids: &Self,
        ids_layout: &Layout,
        dim: usize,
    ) -> Result<Self> {
        check_dim("index_select", layout, dim)?;
        let ids = checked_indices(ids, ids_layout, layout.dims()[dim], "index_select")?;
        Ok(CpuStorage::new(cpu_map_any!(self.data(), |v| {
            index_select_typed(v, layout, &ids, dim)
        })))
    }

    fn index_add(
        &self,
        layout: &Layout,
        ids: &Self,
        ids_layout: &Layout,
        src: &Self,
        src_layout: &Layout,
        dim: usize,
    ) -> Result<Self> {
        check_dim("index_add", layout, dim)?;
        let ids = checked_indices(ids, ids_layout, layout.dims()[dim], "index_add")?;
        let mut expected = layout.dims().to_vec();
        expected[dim] = ids.len();
        if src_layout.dims() != expected {
            return Err(Error::shape(
                "index_add",
                format!("source must have shape {expected:?}"),
                &[layout.shape(), src_layout.shape()],
            ));
        }
        Ok(CpuStorage::new(float_pair!(
            "index_add",
            self,
            src,
            |x, s| { index_add_typed(x, layout, &ids, s, src_layout, dim) }
        )))
    }

    fn gather(&self, layout: &Layout, ids: &Self, ids_layout: &Layout, dim: usize) -> Result<Self> {
        check_index_fits("gather", layout, ids_layout, None, dim)?;
        let ids_shape = ids_layout.shape();
        let ids = checked_indices(ids, ids_layout, layout.dims()[dim], "gather")?;
        Ok(CpuStorage::new(cpu_map_any!(self.data(), |v| {
            gather_typed(v, layout, ids_shape, &ids, dim)
        })))
    }

    fn scatter_add(
        &self,
        layout: &Layout,
        ids: &Self,
        ids_layout: &Layout,
        src: &Self,
        src_layout: &Layout,
        dim: usize,
    ) -> Result<Self> {
        check_index_fits(
            "scatter_add",
            layout,
            ids_layout,
            Some(src_layout.shape()),
            dim,
        )?;
        let ids_shape = ids_layout.shape();
        let ids = checked_indices(ids, ids_layout, layout.dims()[dim], "scatter_add")?;
        Ok(CpuStorage::new(float_pair!(
            "scatter_add",
            self,
            src,
            |x, s| { scatter_add_typed(x, layout, ids_shape, &ids, s, src_layout, dim) }
        )))
    }
}
