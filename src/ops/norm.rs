//! Fused normalizations with analytic backward: layer_norm, group_norm, batch_norm.
//!
//! Each op is one forward primitive (statistics + normalize + affine in one pass over the
//! statistic set, returning the per-set `mean` and `rstd`) and one backward primitive
//! returning `dx`, `dweight`, `dbias` together. Math, per statistic set of `M` elements:
//!
//! * forward: `xhat = (x - mean)·rstd`, `rstd = 1/sqrt(var_biased + eps)`, `y = xhat·w + b`;
//! * backward: `dx = rstd·(dxhat - mean(dxhat) - xhat·mean(dxhat·xhat))` with `dxhat = dy·w`,
//!   `dw = Σ dy·xhat`, `db = Σ dy` (summed over everything but the channel).
//!
//! The statistic sets: layer_norm, each row over the last dim; group_norm, each (sample, group)
//! of `[N, C, *]`; batch_norm, each channel over (N, *). In batch_norm's eval mode the running
//! statistics are constants, so `dx = rstd·w·dy`. The running-statistic update of training
//! mode (`running = (1-momentum)·running + momentum·batch`, unbiased variance, as PyTorch)
//! writes into the given tensors' storage in place and is not part of the graph.
//!
//! Memory: saved for backward are the (detached) input, weight, and two values per statistic
//! set; no normalized copy of the input is kept.

use crate::backend::norm::NormDims;
use crate::backend::Storage;
use crate::tensor::{Layout, Tensor};
use crate::{Error, Result};
use std::sync::RwLockReadGuard;

/// Checks an optional per-channel parameter is `[c]` with the input's dtype and device.
fn check_param(x: &Tensor, p: Option<&Tensor>, c: usize, op: &'static str) -> Result<()> {
    if let Some(p) = p {
        x.check_same(p, op)?;
        if p.dims() != [c] {
            return Err(Error::shape(
                op,
                format!("weight and bias must have shape [{c}]"),
                &[x.shape(), p.shape()],
            ));
        }
    }
    Ok(())
}

/// Read guards on an optional parameter, kept alive while the primitive runs.
struct ParamGuard<'a>(Option<(RwLockReadGuard<'a, Storage>, &'a Layout)>);
impl<'a> ParamGuard<'a> {
    fn new(p: Option<&'a Tensor>) -> Self {
        ParamGuard(p.map(|t| (t.storage(), t.layout())))
    }
    fn get(&self) -> Option<(&Storage, &Layout)> {
        self.0.as_ref().map(|(s, l)| (&**s, *l))
    }
}

fn input_list<'a>(x: &'a Tensor, w: Option<&'a Tensor>, b: Option<&'a Tensor>) -> Vec<&'a Tensor> {
    let mut v = vec![x];
    v.extend(w);
    v.extend(b);
    v
}

/// The gradient list in the order of [`input_list`].
fn grad_list(
    dx: Storage,
    dw: Storage,
    db: Storage,
    x: &Tensor,
    w: &Option<Tensor>,
    b_shape: &Option<crate::Shape>,
) -> Vec<Option<Tensor>> {
    let mut v = vec![Some(Tensor::from_storage(dx, x.shape().clone()))];
    if let Some(w) = w {
        v.push(Some(Tensor::from_storage(dw, w.shape().clone())));
    }
    if let Some(bs) = b_shape {
        v.push(Some(Tensor::from_storage(db, bs.clone())));
    }
    v
}

/// `(N, C, S)` of a `[N, C, *]` input.
fn ncs(x: &Tensor, op: &'static str) -> Result<NormDims> {
    if x.rank() < 2 {
        return Err(Error::shape(
            op,
            "expected an input of shape [N, C, *]",
            &[x.shape()],
        ));
    }
    let d = x.dims();
    Ok(NormDims {
        n: d[0],
        c: d[1],
        s: d[2..].iter().product(),
    })
}

impl Tensor {
    /// Normalizes over the last dim; `weight`/`bias` have shape `[C]` (C = last dim).
    pub fn layer_norm(
        &self,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f64,
    ) -> Result<Tensor> {
        const OP: &str = "layer_norm";
        self.check_float(OP)?;
        if self.rank() == 0 {
            return Err(Error::shape(OP, "needs at least one dim", &[self.shape()]));
        }
        let c = self.dims()[self.rank() - 1];
        check_param(self, weight, c, OP)?;
        check_param(self, bias, c, OP)?;
        let n = self.dims()[..self.rank() - 1].iter().product();
        self.group_stat_norm(OP, NormDims { n, c, s: 1 }, 1, weight, bias, eps)
    }

    /// Input `[N, C, *]`, statistics per (sample, group); `weight`/`bias` shape `[C]`.
    pub fn group_norm(
        &self,
        num_groups: usize,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f64,
    ) -> Result<Tensor> {
        const OP: &str = "group_norm";
        self.check_float(OP)?;
        let dims = ncs(self, OP)?;
        if num_groups == 0 || dims.c % num_groups != 0 {
            return Err(Error::shape(
                OP,
                format!(
                    "{} channels cannot be split into {num_groups} groups",
                    dims.c
                ),
                &[self.shape()],
            ));
        }
        check_param(self, weight, dims.c, OP)?;
        check_param(self, bias, dims.c, OP)?;
        self.group_stat_norm(OP, dims, num_groups, weight, bias, eps)
    }

    /// Shared by layer_norm (`[rows, C, 1]`, one group) and group_norm.
    fn group_stat_norm(
        &self,
        op: &'static str,
        dims: NormDims,
        groups: usize,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f64,
    ) -> Result<Tensor> {
        let (y, mean, rstd) = {
            let (wg, bg) = (ParamGuard::new(weight), ParamGuard::new(bias));
            self.storage()
                .group_norm_fwd(self.layout(), dims, groups, wg.get(), bg.get(), eps)?
        };
        let out = Tensor::from_storage(y, self.shape().clone());
        let inputs = input_list(self, weight, bias);
        if !crate::autograd::is_recording(&inputs) {
            return Ok(out);
        }
        let rows = dims.n * groups;
        let (mean, rstd) = (
            Tensor::from_storage(mean, rows),
            Tensor::from_storage(rstd, rows),
        );
        let x = self.detach();
        let w = weight.map(|w| w.detach());
        let b_shape = bias.map(|b| b.shape().clone());
        Ok(Tensor::record(out, op, &inputs, move |g| {
            let (dx, dw, db) = {
                let wg = ParamGuard::new(w.as_ref());
                x.storage().group_norm_bwd(
                    x.layout(),
                    &g.storage(),
                    g.layout(),
                    &mean.storage(),
                    &rstd.storage(),
                    dims,
                    groups,
                    wg.get(),
                )?
            };
            Ok(grad_list(dx, dw, db, &x, &w, &b_shape))
        }))
    }

    /// Input `[N, C, *]`. In training, normalizes with batch statistics and updates the running
    /// statistics in place (`running = (1-momentum) running + momentum batch`, unbiased var);
    /// in eval, uses the running statistics.
    #[allow(clippy::too_many_arguments)]
    pub fn batch_norm(
        &self,
        running_mean: Option<&Tensor>,
        running_var: Option<&Tensor>,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        training: bool,
        momentum: f64,
        eps: f64,
    ) -> Result<Tensor> {
        const OP: &str = "batch_norm";
        self.check_float(OP)?;
        let dims = ncs(self, OP)?;
        for p in [running_mean, running_var, weight, bias] {
            check_param(self, p, dims.c, OP)?;
        }
        let count = dims.n * dims.s;
        if training && count <= 1 {
            return Err(Error::shape(
                OP,
                format!("training needs more than 1 value per channel, got {count}"),
                &[self.shape()],
            ));
        }
        if running_mean.is_some() != running_var.is_some() {
            return Err(Error::msg(
                "batch_norm: give both running_mean and running_var, or neither",
            ));
        }
        if !training && running_mean.is_none() {
            return Err(Error::msg(
                "batch_norm: eval mode (training = false) needs running_mean and running_var",
            ));
        }
        let (y, mean, rstd) = {
            let (wg, bg) = (ParamGuard::new(weight), ParamGuard::new(bias));
            let (rmg, rvg) = (ParamGuard::new(running_mean), ParamGuard::new(running_var));
            let running = (!training).then(|| (rmg.get(), rvg.get()));
            self.storage()
                .batch_norm_fwd(self.layout(), dims, running, wg.get(), bg.get(), eps)?
        };
        // The running-statistic update: an in-place write outside the graph (all read guards
        // above are released, so a running buffer may even share storage with an input).
        if training {
            if let (Some(rm), Some(rv)) = (running_mean, running_var) {
                rm.storage_mut().batch_norm_update_running(
                    rm.layout(),
                    &mean,
                    momentum,
                    false,
                    eps,
                    count,
                )?;
                rv.storage_mut().batch_norm_update_running(
                    rv.layout(),
                    &rstd,
                    momentum,
                    true,
                    eps,
                    count,
                )?;
            }
        }
        let out = Tensor::from_storage(y, self.shape().clone());
        let inputs = input_list(self, weight, bias);
        if !crate::autograd::is_recording(&inputs) {
            return Ok(out);
        }
        let (mean, rstd) = (
            Tensor::from_storage(mean, dims.c),
            Tensor::from_storage(rstd, dims.c),
        );
        let x = self.detach();
        let w = weight.map(|w| w.detach());
        let b_shape = bias.map(|b| b.shape().clone());
        Ok(Tensor::record(out, OP, &inputs, move |g| {
            let (dx, dw, db) = {
                let wg = ParamGuard::new(w.as_ref());
                x.storage().batch_norm_bwd(
                    x.layout(),
                    &g.storage(),
                    g.layout(),
                    &mean.storage(),
                    &rstd.storage(),
                    dims,
                    wg.get(),
                    training,
                )?
            };
            Ok(grad_list(dx, dw, db, &x, &w, &b_shape))
        }))
    }
}
