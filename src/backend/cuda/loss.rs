//! Fused cross-entropy on the GPU (`kernels/loss.cu`). The forward runs one row kernel (lse and
//! each row's loss term, f64), then one block that sums the terms in a fixed order and counts
//! the kept rows; the primitive must return that count and report an out-of-range target as an
//! error, so three i64 (count, bad targets, the first bad target) come back to the host: the
//! one synchronization of this op. The backward is one element-wise kernel.

use super::kernel_io::{contiguous, ll};
use super::storage::float_suffix;
use super::{kernel_args, launch_1d, CudaStorage, LaunchConfig};
use crate::backend::loss::{CrossEntropyParams, LossBackend};
use crate::backend::BackendStorage;
use crate::tensor::{DType, Layout};
use crate::{Error, Result};

const FILE: &str = "loss.cu";
const OP: &str = "cross_entropy";
/// Widest row one warp takes.
const WARP_ROW_MAX: usize = 1024;

fn check_args(
    logits: &Layout,
    targets: &CudaStorage,
    t_layout: &Layout,
    p: CrossEntropyParams,
) -> Result<()> {
    if logits.elem_count() != p.n * p.c {
        return Err(Error::shape(
            OP,
            format!("expected [{}, {}] logits", p.n, p.c),
            &[logits.shape()],
        ));
    }
    if t_layout.elem_count() != p.n {
        return Err(Error::shape(
            OP,
            format!("expected {} targets", p.n),
            &[t_layout.shape()],
        ));
    }
    crate::backend::same_dtype(OP, targets.dtype(), DType::I64)
}

/// `(has_ignore, ignore_index)` as kernel arguments.
fn ignore_args(p: CrossEntropyParams) -> (i64, i64) {
    match p.ignore_index {
        Some(i) => (1, i),
        None => (0, 0),
    }
}

impl LossBackend for CudaStorage {
    fn cross_entropy_fwd(
        &self,
        logits_layout: &Layout,
        targets: &Self,
        targets_layout: &Layout,
        p: CrossEntropyParams,
    ) -> Result<(Self, Self, usize)> {
        check_args(logits_layout, targets, targets_layout, p)?;
        let sfx = float_suffix(OP, self.dtype())?;
        let dev = self.dev();
        let x = contiguous(OP, self, logits_layout)?;
        let t = contiguous(OP, targets, targets_layout)?;
        let lse = CudaStorage::alloc(dev, p.n, self.dtype())?;
        let row_loss = CudaStorage::alloc(dev, p.n, DType::F64)?;
        let loss = CudaStorage::alloc(dev, 1, self.dtype())?;
        let stats = CudaStorage::alloc(dev, 3, DType::I64)?;
        let (has_ignore, ignore) = ignore_args(p);
        let (name, cfg) = if p.c <= WARP_ROW_MAX {
            (
                format!("cross_entropy_rows_warp_{sfx}"),
                (p.n.div_ceil(4), 128),
            )
        } else {
            (format!("cross_entropy_rows_block_{sfx}"), (p.n, 256))
        };
        let rows_cfg = LaunchConfig {
            grid: (cfg.0 as u32, 1, 1),
            block: (cfg.1, 1, 1),
            shared_mem_bytes: 0,
        };
        let args = kernel_args![
            x.ptr,
            t.ptr,
            lse.ptr(),
            row_loss.ptr(),
            ll(p.n),
            ll(p.c),
            ignore,
            has_ignore,
            p.label_smoothing
        ];
        dev.launch(FILE, &name, rows_cfg, args)?;
        let one_block = LaunchConfig {
            grid: (1, 1, 1),
            block: (1024, 1, 1),
            shared_mem_bytes: 0,
        };
        let args = kernel_args![
            t.ptr,
            row_loss.ptr(),
            loss.ptr(),
            stats.ptr(),
            ll(p.n),
            ll(p.c),
            ignore,
            has_ignore
        ];
        dev.launch(
            FILE,
            &format!("cross_entropy_reduce_{sfx}"),
            one_block,
            args,
        )?;
        let mut host = [0i64; 3];
        dev.copy_to_host(bytemuck::cast_slice_mut(&mut host), stats.ptr())?;
        let [count, bad, first_bad] = host;
        if bad > 0 {
            return Err(Error::IndexOutOfRange {
                op: OP,
                index: first_bad,
                size: p.c,
            });
        }
        Ok((loss, lse, count as usize))
    }

    fn cross_entropy_bwd(
        &self,
        logits_layout: &Layout,
        targets: &Self,
        targets_layout: &Layout,
        lse: &Self,
        grad: &Self,
        grad_layout: &Layout,
        count: usize,
        p: CrossEntropyParams,
    ) -> Result<Self> {
        check_args(logits_layout, targets, targets_layout, p)?;
        let sfx = float_suffix(OP, self.dtype())?;
        crate::backend::same_dtype(OP, self.dtype(), grad.dtype())?;
        crate::backend::same_dtype(OP, self.dtype(), lse.dtype())?;
        if lse.len != p.n {
            return Err(Error::msg(format!(
                "{OP}: {} saved lse values for {} rows",
                lse.len, p.n
            )));
        }
        if grad_layout.elem_count() != 1 {
            return Err(Error::shape(
                OP,
                "the loss gradient must be one element",
                &[grad_layout.shape()],
            ));
        }
        grad.check_view(OP, grad_layout)?;
        let dev = self.dev();
        let dx = CudaStorage::alloc(dev, p.n * p.c, self.dtype())?;
        if dx.len == 0 {
            return Ok(dx);
        }
        let x = contiguous(OP, self, logits_layout)?;
        let t = contiguous(OP, targets, targets_layout)?;
        let (has_ignore, ignore) = ignore_args(p);
        let args = kernel_args![
            x.ptr,
            t.ptr,
            lse.ptr(),
            grad.ptr_at(grad_layout.offset()),
            dx.ptr(),
            ll(p.n),
            ll(p.c),
            ignore,
            has_ignore,
            p.label_smoothing,
            ll(count)
        ];
        dev.launch(
            FILE,
            &format!("cross_entropy_bwd_{sfx}"),
            launch_1d(dx.len, 256),
            args,
        )?;
        Ok(dx)
    }
}
