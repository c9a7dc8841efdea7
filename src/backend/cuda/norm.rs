//! Group, layer and batch normalization on the GPU (`kernels/norm.cu`; the math is in
//! `backend/norm.rs`). x and dy are made contiguous `[N, C, S]` (a copy only for strided
//! views); weight, bias and running statistics are read through their rank-1 stride.
//!
//! - group statistics: one block per (sample, group) row computes mean, rstd and y; the
//!   backward runs one block per row for dx, then the per-channel sums below for dw, db.
//! - channel statistics: one block per channel for mean/rstd, element-wise y.
//! - per-channel sums Σ dy·xhat and Σ dy (dw, db, and batch norm's dx terms): column partials
//!   over row slices (grid.y splits, enough blocks to fill the GPU), then one block per channel
//!   adds them in a fixed order, so the results are the same on every run.

use super::kernel_io::{contiguous, ll, ContiguousView};
use super::storage::float_suffix;
use super::{kernel_args, launch_1d, CudaStorage, LaunchConfig};
use crate::backend::norm::{NormBackend, NormDims, Param};
use crate::backend::BackendStorage;
use crate::tensor::merge_dims;
use crate::tensor::{DType, Layout};
use crate::{Error, Result};
use std::sync::Arc;

const FILE: &str = "norm.cu";

/// A `[C]` parameter as kernel arguments: address, element stride, presence flag.
struct ParamArg {
    ptr: u64,
    stride: i64,
    has: i64,
    _copy: Option<ContiguousView>,
}

fn param_arg(op: &'static str, p: Param<CudaStorage>, c: usize) -> Result<ParamArg> {
    let Some((s, l)) = p else {
        return Ok(ParamArg {
            ptr: 0,
            stride: 0,
            has: 0,
            _copy: None,
        });
    };
    if l.elem_count() != c {
        return Err(Error::shape(
            op,
            format!("expected {c} per-channel values"),
            &[l.shape()],
        ));
    }
    s.check_view(op, l)?;
    let (_, strides) = merge_dims(l.dims(), l.strides());
    if strides.len() <= 1 {
        return Ok(ParamArg {
            ptr: s.ptr_at(l.offset()),
            stride: strides.first().map_or(1, |&st| st as i64),
            has: 1,
            _copy: None,
        });
    }
    let v = contiguous(op, s, l)?;
    Ok(ParamArg {
        ptr: v.ptr,
        stride: 1,
        has: 1,
        _copy: Some(v),
    })
}

fn check_args(op: &'static str, x: &Layout, d: NormDims, groups: usize) -> Result<()> {
    if groups == 0 || !d.c.is_multiple_of(groups) || x.elem_count() != d.n * d.c * d.s {
        return Err(Error::shape(
            op,
            format!("inconsistent arguments: {d:?}, {groups} groups"),
            &[x.shape()],
        ));
    }
    Ok(())
}

/// Threads for a block that strides over `m` elements: a multiple of 32, at most 256.
fn block_threads(m: usize) -> u32 {
    (m.div_ceil(32) * 32).clamp(32, 256) as u32
}

fn blocks(grid: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid: (grid as u32, 1, 1),
        block: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Per-channel `(dw, db)` (dtype of x) and the f64 sums `[Σdy, Σdy·xhat]` per channel, from
/// contiguous x and dy `[N, C, S]` and statistics per (n, group) or (`per_channel`) per channel.
#[allow(clippy::too_many_arguments)]
fn channel_sums(
    dev: &Arc<super::CudaDevice>,
    sfx: &str,
    dtype: DType,
    x: u64,
    dy: u64,
    mean: u64,
    rstd: u64,
    d: NormDims,
    groups: usize,
    per_channel: bool,
) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
    let dw = CudaStorage::zeros(d.c, dtype, dev.ordinal())?;
    let db = CudaStorage::zeros(d.c, dtype, dev.ordinal())?;
    let sums = CudaStorage::zeros(2 * d.c, DType::F64, dev.ordinal())?;
    let cs = d.c * d.s;
    if cs == 0 || d.n == 0 {
        return Ok((dw, db, sums));
    }
    let col_blocks = cs.div_ceil(32);
    let want = (2 * dev.sm_count()?).div_ceil(col_blocks);
    let splits = want.clamp(1, d.n.min(64));
    let part_w = CudaStorage::alloc(dev, splits * cs, DType::F64)?;
    let part_b = CudaStorage::alloc(dev, splits * cs, DType::F64)?;
    let cfg = LaunchConfig {
        grid: (col_blocks as u32, splits as u32, 1),
        block: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let args = kernel_args![
        x,
        dy,
        mean,
        rstd,
        part_w.ptr(),
        part_b.ptr(),
        ll(d.n),
        ll(d.c),
        ll(d.s),
        ll(groups),
        per_channel as i64
    ];
    dev.launch(FILE, &format!("norm_param_cols_{sfx}"), cfg, args)?;
    let args = kernel_args![
        part_w.ptr(),
        part_b.ptr(),
        dw.ptr(),
        db.ptr(),
        sums.ptr(),
        ll(d.c),
        ll(d.s),
        ll(splits)
    ];
    let cfg = blocks(d.c, block_threads(splits * d.s));
    dev.launch(FILE, &format!("norm_param_reduce_{sfx}"), cfg, args)?;
    Ok((dw, db, sums))
}

fn check_saved(op: &'static str, mean: &CudaStorage, rstd: &CudaStorage, len: usize) -> Result<()> {
    if mean.len != len || rstd.len != len {
        return Err(Error::msg(format!("{op}: saved statistics do not match")));
    }
    Ok(())
}

impl NormBackend for CudaStorage {
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
        check_args(OP, x_layout, dims, groups)?;
        let sfx = float_suffix(OP, self.dtype())?;
        let (w, b) = (param_arg(OP, weight, dims.c)?, param_arg(OP, bias, dims.c)?);
        let dev = self.dev();
        let (cg, rows) = (dims.c / groups, dims.n * groups);
        let m = cg * dims.s;
        let y = CudaStorage::alloc(dev, x_layout.elem_count(), self.dtype())?;
        if m == 0 {
            let zeros = || CudaStorage::zeros(rows, self.dtype(), dev.ordinal());
            return Ok((y, zeros()?, zeros()?));
        }
        let mean = CudaStorage::alloc(dev, rows, self.dtype())?;
        let rstd = CudaStorage::alloc(dev, rows, self.dtype())?;
        let x = contiguous(OP, self, x_layout)?;
        let args = kernel_args![
            x.ptr,
            w.ptr,
            b.ptr,
            y.ptr(),
            mean.ptr(),
            rstd.ptr(),
            ll(groups),
            ll(cg),
            ll(dims.s),
            w.stride,
            b.stride,
            w.has,
            b.has,
            eps
        ];
        dev.launch(
            FILE,
            &format!("group_norm_fwd_{sfx}"),
            blocks(rows, block_threads(m)),
            args,
        )?;
        Ok((y, mean, rstd))
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
        check_args(OP, x_layout, dims, groups)?;
        check_args(OP, dy_layout, dims, groups)?;
        crate::backend::same_dtype(OP, self.dtype(), dy.dtype())?;
        let sfx = float_suffix(OP, self.dtype())?;
        check_saved(OP, mean, rstd, dims.n * groups)?;
        let w = param_arg(OP, weight, dims.c)?;
        let dev = self.dev();
        let (cg, rows) = (dims.c / groups, dims.n * groups);
        let m = cg * dims.s;
        let dx = CudaStorage::alloc(dev, x_layout.elem_count(), self.dtype())?;
        let x = contiguous(OP, self, x_layout)?;
        let g = contiguous(OP, dy, dy_layout)?;
        if m > 0 {
            let args = kernel_args![
                x.ptr,
                g.ptr,
                mean.ptr(),
                rstd.ptr(),
                w.ptr,
                dx.ptr(),
                ll(groups),
                ll(cg),
                ll(dims.s),
                w.stride,
                w.has
            ];
            let cfg = blocks(rows, block_threads(m));
            dev.launch(FILE, &format!("group_norm_bwd_dx_{sfx}"), cfg, args)?;
        }
        let (dw, db, _) = channel_sums(
            dev,
            sfx,
            self.dtype(),
            x.ptr,
            g.ptr,
            mean.ptr(),
            rstd.ptr(),
            dims,
            groups,
            false,
        )?;
        Ok((dx, dw, db))
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
        check_args(OP, x_layout, dims, 1)?;
        let sfx = float_suffix(OP, self.dtype())?;
        let (w, b) = (param_arg(OP, weight, dims.c)?, param_arg(OP, bias, dims.c)?);
        let (rm, rv) = match running {
            Some((Some(m), Some(v))) => (
                param_arg(OP, Some(m), dims.c)?,
                param_arg(OP, Some(v), dims.c)?,
            ),
            Some(_) => {
                return Err(Error::msg(
                    "batch_norm: eval mode needs both running_mean and running_var",
                ))
            }
            None => (param_arg(OP, None, dims.c)?, param_arg(OP, None, dims.c)?),
        };
        let dev = self.dev();
        let total = x_layout.elem_count();
        let y = CudaStorage::alloc(dev, total, self.dtype())?;
        let mean = CudaStorage::alloc(dev, dims.c, self.dtype())?;
        let rstd = CudaStorage::alloc(dev, dims.c, self.dtype())?;
        let x = contiguous(OP, self, x_layout)?;
        let args = kernel_args![
            x.ptr,
            rm.ptr,
            rv.ptr,
            mean.ptr(),
            rstd.ptr(),
            ll(dims.n),
            ll(dims.c),
            ll(dims.s),
            rm.stride,
            rv.stride,
            running.is_some() as i64,
            eps
        ];
        let cfg = blocks(dims.c, block_threads(dims.n * dims.s));
        dev.launch(FILE, &format!("batch_norm_stats_{sfx}"), cfg, args)?;
        let args = kernel_args![
            x.ptr,
            mean.ptr(),
            rstd.ptr(),
            w.ptr,
            b.ptr,
            y.ptr(),
            ll(total),
            ll(dims.c),
            ll(dims.s),
            w.stride,
            b.stride,
            w.has,
            b.has
        ];
        dev.launch(
            FILE,
            &format!("batch_norm_apply_{sfx}"),
            launch_1d(total, 256),
            args,
        )?;
        Ok((y, mean, rstd))
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
        check_args(OP, x_layout, dims, 1)?;
        check_args(OP, dy_layout, dims, 1)?;
        crate::backend::same_dtype(OP, self.dtype(), dy.dtype())?;
        let sfx = float_suffix(OP, self.dtype())?;
        check_saved(OP, mean, rstd, dims.c)?;
        let w = param_arg(OP, weight, dims.c)?;
        let dev = self.dev();
        let total = x_layout.elem_count();
        let x = contiguous(OP, self, x_layout)?;
        let g = contiguous(OP, dy, dy_layout)?;
        let (dw, db, sums) = channel_sums(
            dev,
            sfx,
            self.dtype(),
            x.ptr,
            g.ptr,
            mean.ptr(),
            rstd.ptr(),
            dims,
            1,
            true,
        )?;
        let dx = CudaStorage::alloc(dev, total, self.dtype())?;
        let args = kernel_args![
            x.ptr,
            g.ptr,
            mean.ptr(),
            rstd.ptr(),
            w.ptr,
            sums.ptr(),
            dx.ptr(),
            ll(total),
            ll(dims.c),
            ll(dims.s),
            ll(dims.n * dims.s),
            w.stride,
            w.has,
            batch_stats as i64
        ];
        dev.launch(
            FILE,
            &format!("batch_norm_bwd_dx_{sfx}"),
            launch_1d(total, 256),
            args,
        )?;
        Ok((dx, dw, db))
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
        crate::backend::same_dtype(OP, self.dtype(), stat.dtype())?;
        let sfx = float_suffix(OP, self.dtype())?;
        let c = layout.elem_count();
        if stat.len != c {
            return Err(Error::msg(format!(
                "{OP}: {} statistics for a running buffer of {c} elements",
                stat.len
            )));
        }
        self.check_view(OP, layout)?;
        let (_, strides) = merge_dims(layout.dims(), layout.strides());
        if strides.len() > 1 {
            return Err(Error::shape(
                OP,
                "the running buffer must be a rank-1 view on the GPU",
                &[layout.shape()],
            ));
        }
        let stride = strides.first().map_or(1, |&s| s as i64);
        let args = kernel_args![
            self.ptr_at(layout.offset()),
            stat.ptr(),
            ll(c),
            stride,
            momentum,
            unbiased_var_from_rstd as i64,
            eps,
            ll(count)
        ];
        let cfg = blocks(c.div_ceil(256), 256);
        self.dev()
            .launch(FILE, &format!("batch_norm_update_running_{sfx}"), cfg, args)
    }
}
