//! CPU reductions. The view is split into kept dims (one output element each) and reduced
//! dims (walked per output element); outputs are computed in parallel, each in a fixed order,
//! so results do not depend on the thread count.

use super::{CpuData, CpuStorage, Float};
use crate::backend::reduce::{ReduceBackend, ReduceOp};
use crate::tensor::{Layout, Shape};
use crate::{Error, Result};
use rayon::prelude::*;

/// Offsets (relative to the view's start) of all elements of the sub-view spanned by `dims`.
fn sub_offsets(layout: &Layout, dims: &[usize]) -> Vec<usize> {
    let shape = Shape::new(dims.iter().map(|&d| layout.dims()[d]).collect());
    let strides = dims.iter().map(|&d| layout.strides()[d]).collect();
    Layout::new(shape, strides, 0).offsets()
}

fn reduce_typed<T: Float>(x: &[T], layout: &Layout, dims: &[usize], op: ReduceOp) -> CpuData
where
    Vec<T>: IntoCpuData,
{
    let rank = layout.dims().len();
    let kept: Vec<usize> = (0..rank).filter(|d| !dims.contains(d)).collect();
    let kept_offsets = sub_offsets(layout, &kept);
    let red_offsets = sub_offsets(layout, dims);
    let base = layout.offset();
    match op {
        ReduceOp::Sum | ReduceOp::Max | ReduceOp::Min => {
            let out: Vec<T> = kept_offsets
                .par_iter()
                .with_min_len(64)
                .map(|&k| {
                    let p = &x[base + k..];
                    match op {
                        ReduceOp::Sum => red_offsets.iter().map(|&r| p[r]).sum(),
                        ReduceOp::Max => red_offsets.iter().fold(T::NEG_INFINITY, |m, &r| {
                            if p[r] > m || p[r].is_nan() {
                                p[r]
                            } else {
                                m
                            }
                        }),
                        _ => red_offsets.iter().fold(T::INFINITY, |m, &r| {
                            if p[r] < m || p[r].is_nan() {
                                p[r]
                            } else {
                                m
                            }
                        }),
                    }
                })
                .collect();
            out.into_cpu_data()
        }
        ReduceOp::ArgMax | ReduceOp::ArgMin => {
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
            CpuData::I64(out)
        }
    }
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
