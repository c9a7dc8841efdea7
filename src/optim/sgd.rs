//! Stochastic gradient descent with momentum, dampening, weight decay and Nesterov momentum,
//! exactly as `torch.optim.SGD` (Sutskever et al., 2013, for the momentum form):
//! ```text
//! d = grad + wd * p
//! buf = d (first step), else buf = momentum * buf + (1 - dampening) * d
//! d = d + momentum * buf (nesterov), else d = buf
//! p = p - lr * d
//! ```
//! State: `<param>.momentum_buffer` per parameter (when momentum is non-zero), `step`, `lr`.

use super::{
    check_range, check_state_shape, collect_params, count_tensor, fresh_copy, grad_for, read_count,
    read_lr, Optimizer, Param,
};
use crate::backend::optim::SgdStep;
use crate::tensor::Tensor;
use crate::{Error, Result};
use std::collections::HashMap;

/// `torch.optim.SGD`'s arguments and defaults (PyTorch requires `lr`; 1e-3 here).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    pub lr: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig {
            lr: 1e-3,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        }
    }
}

impl SgdConfig {
    fn validate(&self) -> Result<()> {
        check_range("SGD", "lr", self.lr, 0.0, f64::INFINITY, false)?;
        check_range("SGD", "momentum", self.momentum, 0.0, f64::INFINITY, false)?;
        check_range("SGD", "dampening", self.dampening, 0.0, 1.0, true)?;
        check_range(
            "SGD",
            "weight_decay",
            self.weight_decay,
            0.0,
            f64::INFINITY,
            false,
        )?;
        if self.nesterov && (self.momentum <= 0.0 || self.dampening != 0.0) {
            return Err(Error::msg(
                "SGD: nesterov momentum requires momentum > 0 and dampening = 0",
            ));
        }
        Ok(())
    }
}

const BUF: &str = ".momentum_buffer";

pub struct Sgd {
    params: Vec<Param>,
    config: SgdConfig,
    /// Momentum buffer of parameter `i`, created on its first update.
    buffers: Vec<Option<Tensor>>,
    /// Per parameter: whether weight decay applies (see `without_weight_decay`).
    decays: Vec<bool>,
    steps: u64,
}

impl Sgd {
    pub fn new(params: Vec<(String, Tensor)>, config: SgdConfig) -> Result<Sgd> {
        config.validate()?;
        let params = collect_params("SGD", params)?;
        let buffers = vec![None; params.len()];
        let decays = vec![true; params.len()];
        Ok(Sgd {
            params,
            config,
            buffers,
            decays,
            steps: 0,
        })
    }
    pub fn config(&self) -> &SgdConfig {
        &self.config
    }
    /// Exempts the parameters whose name satisfies `skip` from weight decay (biases, norms).
    pub fn without_weight_decay(mut self, skip: impl Fn(&str) -> bool) -> Self {
        for (p, d) in self.params.iter().zip(self.decays.iter_mut()) {
            *d = !skip(&p.name);
        }
        self
    }
    /// Number of `step()` calls so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }
}

impl Optimizer for Sgd {
    fn step(&mut self) -> Result<()> {
        let c = self.config;
        for ((p, buf), &decays) in self
            .params
            .iter()
            .zip(self.buffers.iter_mut())
            .zip(&self.decays)
        {
            let Some(g) = grad_for("SGD", p)? else {
                continue;
            };
            let first_step = buf.is_none();
            if c.momentum != 0.0 && buf.is_none() {
                *buf = Some(p.tensor.zeros_like()?);
            }
            let hyper = SgdStep {
                lr: c.lr,
                momentum: c.momentum,
                dampening: c.dampening,
                weight_decay: if decays { c.weight_decay } else { 0.0 },
                nesterov: c.nesterov,
                first_step,
            };
            let gs = g.storage();
            let mut bs = buf
                .as_ref()
                .filter(|_| c.momentum != 0.0)
                .map(|b| b.storage_mut());
            p.tensor.storage_mut().sgd_step(
                p.tensor.layout(),
                &gs,
                g.layout(),
                bs.as_deref_mut(),
                &hyper,
            )?;
        }
        self.steps += 1;
        Ok(())
    }

    fn zero_grad(&self) {
        self.params.iter().for_each(|p| p.tensor.zero_grad());
    }
    fn lr(&self) -> f64 {
        self.config.lr
    }
    fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = self
            .params
            .iter()
            .zip(&self.buffers)
            .filter_map(|(p, b)| b.as_ref().map(|b| (format!("{}{BUF}", p.name), b.clone())))
            .collect();
        if let Ok(t) = count_tensor(self.steps) {
            out.push(("step".into(), t));
        }
        if let Ok(t) = Tensor::scalar(self.config.lr, crate::Device::Cpu) {
            out.push(("lr".into(), t));
        }
        out
    }

    fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        let index: HashMap<&str, usize> = self
            .params
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.as_str(), i))
            .collect();
        let mut buffers = vec![None; self.params.len()];
        let (mut steps, mut lr) = (None, None);
        for (key, t) in state {
            match key.as_str() {
                "step" => steps = Some(read_count(key, t)?),
                "lr" => lr = Some(read_lr(t)?),
                _ => {
                    let i = key
                        .strip_suffix(BUF)
                        .and_then(|n| index.get(n))
                        .ok_or_else(|| {
                            Error::msg(format!(
                                "SGD load_state: unexpected entry `{key}` (no such parameter or buffer)"
                            ))
                        })?;
                    let p = &self.params[*i];
                    check_state_shape(key, p, t)?;
                    buffers[*i] = Some(fresh_copy(t, p.tensor.dtype())?);
                }
            }
        }
        self.buffers = buffers;
        self.steps = steps.unwrap_or(0);
        if let Some(lr) = lr {
            self.config.lr = lr;
        }
        Ok(())
    }
}
