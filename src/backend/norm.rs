//! Fused normalization primitives. Every input is seen as `[N, C, S]` (S = the product of the
//! trailing dims; layer norm is `[rows, C, 1]` with one group), and two statistic layouts cover
//! the three user ops:
//!
//! * **group statistics** (layer_norm, group_norm): per sample `n` and group `g` of `C/G`
//!   channels, over its `M = (C/G)·S` elements;
//! * **channel statistics** (batch_norm): per channel `c`, over its `M = N·S` elements.
//!
//! Forward, per statistic set: `mu = mean(x)`, `var = mean((x - mu)^2)` (biased),
//! `rstd = 1/sqrt(var + eps)`, `xhat = (x - mu)·rstd`, `y = xhat·w[c] + b[c]`. The primitive
//! returns `y` plus `mu` and `rstd` (saved for backward).
//!
//! Backward, with `dxhat = dy·w[c]` and means over the statistic set:
//! `dx = rstd·(dxhat - mean(dxhat) - xhat·mean(dxhat·xhat))`, `dw[c] = Σ dy·xhat`,
//! `db[c] = Σ dy` (sums over every element of channel c). When the statistics are constants
//! (batch_norm in eval mode) the two mean terms vanish: `dx = rstd·dxhat`.
//!
//! Memory traffic: forward reads x twice (statistics, then normalize) and writes y once;
//! backward reads x and dy twice and writes dx once. Saved state is two values per statistic set.

use super::{on_backend, operand, Operand, Storage};
use crate::tensor::{Device, Layout};
use crate::Result;

/// An optional per-channel parameter (weight or bias): a `[C]` storage and its layout.
pub type Param<'a, S> = Option<(&'a S, &'a Layout)>;

/// The input seen as `[N, C, S]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NormDims {
    pub n: usize,
    pub c: usize,
    pub s: usize,
}

pub trait NormBackend: Sized {
    /// Group statistics. Returns `(y [N,C,S], mean [N·G], rstd [N·G])`.
    #[allow(clippy::too_many_arguments)]
    fn group_norm_fwd(
        &self,
        x_layout: &Layout,
        dims: NormDims,
        groups: usize,
        weight: Param<Self>,
        bias: Param<Self>,
        eps: f64,
    ) -> Result<(Self, Self, Self)>;

    /// Returns `(dx [N,C,S], dweight [C], dbias [C])`.
    #[allow(clippy::too_many_arguments)]
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
    ) -> Result<(Self, Self, Self)>;

    /// Channel statistics: from the batch when `running` is `None`, else the given
    /// `(running_mean, running_var)` (eval). Returns `(y, mean [C], rstd [C])`.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_fwd(
        &self,
        x_layout: &Layout,
        dims: NormDims,
        running: Option<(Param<Self>, Param<Self>)>,
        weight: Param<Self>,
        bias: Param<Self>,
        eps: f64,
    ) -> Result<(Self, Self, Self)>;

    /// Returns `(dx, dweight [C], dbias [C])`; `batch_stats` says whether mean/rstd depend on x.
    #[allow(clippy::too_many_arguments)]
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
    ) -> Result<(Self, Self, Self)>;

    /// In place: `self = (1-momentum)·self + momentum·stat` over the view `layout`, where
    /// `stat` is the batch mean, or (`unbiased_var_from_rstd`) the unbiased batch variance
    /// `(1/rstd² - eps)·count/(count-1)` recovered from the saved rstd.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_update_running(
        &mut self,
        layout: &Layout,
        stat: &Self,
        momentum: f64,
        unbiased_var_from_rstd: bool,
        eps: f64,
        count: usize,
    ) -> Result<()>;
}

/// A parameter of the first operand's backend, or a device mismatch naming `op`.
fn param<'a, S: Operand>(
    op: &'static str,
    d: Device,
    p: Param<'a, Storage>,
) -> Result<Param<'a, S>> {
    p.map(|(s, l)| Ok((operand(op, d, s)?, l))).transpose()
}
fn wrap3<S: Operand>(t: (S, S, S)) -> (Storage, Storage, Storage) {
    (t.0.into_storage(), t.1.into_storage(), t.2.into_storage())
}

impl Storage {
    pub fn group_norm_fwd(
        &self,
        x_layout: &Layout,
        dims: NormDims,
        groups: usize,
        weight: Param<Storage>,
        bias: Param<Storage>,
        eps: f64,
    ) -> Result<(Storage, Storage, Storage)> {
        const OP: &str = "group_norm";
        let d = self.device();
        on_backend!(self, |x| Ok(wrap3(x.group_norm_fwd(
            x_layout,
            dims,
            groups,
            param(OP, d, weight)?,
            param(OP, d, bias)?,
            eps,
        )?)))
    }

    #[allow(clippy::too_many_arguments)]
    pub fn group_norm_bwd(
        &self,
        x_layout: &Layout,
        dy: &Storage,
        dy_layout: &Layout,
        mean: &Storage,
        rstd: &Storage,
        dims: NormDims,
        groups: usize,
        weight: Param<Storage>,
    ) -> Result<(Storage, Storage, Storage)> {
        const OP: &str = "group_norm_backward";
        let d = self.device();
        on_backend!(self, |x| Ok(wrap3(x.group_norm_bwd(
            x_layout,
            operand(OP, d, dy)?,
            dy_layout,
            operand(OP, d, mean)?,
            operand(OP, d, rstd)?,
            dims,
            groups,
            param(OP, d, weight)?,
        )?)))
    }

    pub fn batch_norm_fwd(
        &self,
        x_layout: &Layout,
        dims: NormDims,
        running: Option<(Param<Storage>, Param<Storage>)>,
        weight: Param<Storage>,
        bias: Param<Storage>,
        eps: f64,
    ) -> Result<(Storage, Storage, Storage)> {
        const OP: &str = "batch_norm";
        let d = self.device();
        on_backend!(self, |x| {
            let running = match running {
                Some((m, v)) => Some((param(OP, d, m)?, param(OP, d, v)?)),
                None => None,
            };
            Ok(wrap3(x.batch_norm_fwd(
                x_layout,
                dims,
                running,
                param(OP, d, weight)?,
                param(OP, d, bias)?,
                eps,
            )?))
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub fn batch_norm_bwd(
        &self,
        x_layout: &Layout,
        dy: &Storage,
        dy_layout: &Layout,
        mean: &Storage,
        rstd: &Storage,
        dims: NormDims,
        weight: Param<Storage>,
        batch_stats: bool,
    ) -> Result<(Storage, Storage, Storage)> {
        const OP: &str = "batch_norm_backward";
        let d = self.device();
        on_backend!(self, |x| Ok(wrap3(x.batch_norm_bwd(
            x_layout,
            operand(OP, d, dy)?,
            dy_layout,
            operand(OP, d, mean)?,
            operand(OP, d, rstd)?,
            dims,
            param(OP, d, weight)?,
            batch_stats,
        )?)))
    }

    pub fn batch_norm_update_running(
        &mut self,
        layout: &Layout,
        stat: &Storage,
        momentum: f64,
        unbiased_var_from_rstd: bool,
        eps: f64,
        count: usize,
    ) -> Result<()> {
        let d = self.device();
        on_backend!(self, |s| s.batch_norm_update_running(
            layout,
            operand("batch_norm_update_running", d, stat)?,
            momentum,
            unbiased_var_from_rstd,
            eps,
            count,
        ))
    }
}
