//! Softmax and log_softmax on the GPU (`kernels/softmax.cu`). The input is made contiguous
//! (a copy only when it is strided) and seen as `[outer, n, inner]` around `dim`: rows of the
//! last dim go one per warp (`n <= 1024`) or one per block, other dims one thread per column.

use super::kernel_io::{contiguous, ll};
use super::storage::float_suffix;
use super::{kernel_args, CudaStorage, LaunchConfig};
use crate::backend::softmax::{SoftmaxBackend, SoftmaxKind};
use crate::backend::BackendStorage;
use crate::tensor::Layout;
use crate::{Error, Result};

const FILE: &str = "softmax.cu";
/// Longest row a single warp takes.
const WARP_ROW_MAX: usize = 1024;

/// `(outer, n, inner)` around `dim`.
fn split_at_dim(dims: &[usize], dim: usize) -> (usize, usize, usize) {
    (
        dims[..dim].iter().product(),
        dims[dim],
        dims[dim + 1..].iter().product(),
    )
}

fn check_dim(kind: SoftmaxKind, layout: &Layout, dim: usize) -> Result<()> {
    if dim < layout.dims().len() {
        Ok(())
    } else {
        Err(Error::DimOutOfRange {
            op: kind.name(),
            dim: dim as isize,
            shape: layout.shape().clone(),
        })
    }
}

/// The kernel (`fwd` or `bwd`) and launch shape for `[outer, n, inner]`, and whether it takes
/// `(rows, n)` (row kernels) or `(outer, n, inner)` (column kernel).
fn plan(
    pass: &str,
    sfx: &str,
    outer: usize,
    n: usize,
    inner: usize,
) -> (String, LaunchConfig, bool) {
    let cfg = |blocks: usize, threads: u32| LaunchConfig {
        grid: (blocks as u32, 1, 1),
        block: (threads, 1, 1),
        shared_mem_bytes: 0,
    };
    if inner == 1 && n <= WARP_ROW_MAX {
        (
            format!("softmax_{pass}_warp_{sfx}"),
            cfg(outer.div_ceil(4), 128),
            true,
        )
    } else if inner == 1 {
        (format!("softmax_{pass}_block_{sfx}"), cfg(outer, 256), true)
    } else {
        (
            format!("softmax_{pass}_cols_{sfx}"),
            cfg((outer * inner).div_ceil(256), 256),
            false,
        )
    }
}

impl SoftmaxBackend for CudaStorage {
    fn softmax(&self, kind: SoftmaxKind, layout: &Layout, dim: usize) -> Result<Self> {
        check_dim(kind, layout, dim)?;
        let sfx = float_suffix(kind.name(), self.dtype())?;
        let (outer, n, inner) = split_at_dim(layout.dims(), dim);
        let dev = self.dev();
        let y = CudaStorage::alloc(dev, layout.elem_count(), self.dtype())?;
        if y.len == 0 {
            return Ok(y);
        }
        let x = contiguous(kind.name(), self, layout)?;
        let log = (kind == SoftmaxKind::LogSoftmax) as i64;
        let (name, cfg, rows) = plan("fwd", sfx, outer, n, inner);
        let args = if rows {
            kernel_args![x.ptr, y.ptr(), ll(outer), ll(n), log]
        } else {
            kernel_args![x.ptr, y.ptr(), ll(outer), ll(n), ll(inner), log]
        };
        dev.launch(FILE, &name, cfg, args)?;
        Ok(y)
    }

    fn softmax_backward(
        &self,
        kind: SoftmaxKind,
        y_layout: &Layout,
        dy: &Self,
        dy_layout: &Layout,
        dim: usize,
    ) -> Result<Self> {
        check_dim(kind, y_layout, dim)?;
        if y_layout.shape() != dy_layout.shape() {
            return Err(Error::ShapeMismatch {
                op: kind.name(),
                lhs: y_layout.shape().clone(),
                rhs: dy_layout.shape().clone(),
            });
        }
        crate::backend::same_dtype(kind.name(), self.dtype(), dy.dtype())?;
        let sfx = float_suffix(kind.name(), self.dtype())?;
        let (outer, n, inner) = split_at_dim(y_layout.dims(), dim);
        let dev = self.dev();
        let dx = CudaStorage::alloc(dev, y_layout.elem_count(), self.dtype())?;
        if dx.len == 0 {
            return Ok(dx);
        }
        let y = contiguous(kind.name(), self, y_layout)?;
        let g = contiguous(kind.name(), dy, dy_layout)?;
        let log = (kind == SoftmaxKind::LogSoftmax) as i64;
        let (name, cfg, rows) = plan("bwd", sfx, outer, n, inner);
        let args = if rows {
            kernel_args![y.ptr, g.ptr, dx.ptr(), ll(outer), ll(n), log]
        } else {
            kernel_args![y.ptr, g.ptr, dx.ptr(), ll(outer), ll(n), ll(inner), log]
        };
        dev.launch(FILE, &name, cfg, args)?;
        Ok(dx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_plans_cover_every_row_and_column() {
        let (name, cfg, rows) = plan("fwd", "f32", 9, 1024, 1);
        assert_eq!(
            (name.as_str(), cfg.grid.0, cfg.block.0, rows),
            ("softmax_fwd_warp_f32", 3, 128, true)
        );
        let (name, cfg, rows) = plan("bwd", "f64", 5, 1025, 1);
        assert_eq!(
            (name.as_str(), cfg.grid.0, cfg.block.0, rows),
            ("softmax_bwd_block_f64", 5, 256, true)
        );
        let (name, cfg, rows) = plan("fwd", "f32", 3, 7, 100);
        assert_eq!(
            (name.as_str(), cfg.grid.0, cfg.block.0, rows),
            ("softmax_fwd_cols_f32", 2, 256, false)
        );
    }
}
