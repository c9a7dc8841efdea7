//! Adam (Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015) and AdamW
//! (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019), exactly as
//! `torch.optim.Adam` and `torch.optim.AdamW` (amsgrad off). With `t` the parameter's own
//! update count:
//! ```text
//! Adam:  g = grad + wd * p                 AdamW: g = grad; p = p * (1 - lr * wd)
//! m = beta1 * m + (1 - beta1) * g
//! v = beta2 * v + (1 - beta2) * g^2
//! p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
//! ```
//! The whole update is one fused pass per parameter (`backend::optim`).
//! State per parameter: `<param>.exp_avg`, `<param>.exp_avg_sq`, `<param>.step`; plus `step`
//! (number of `step()` calls) and `lr`.

use super::{
    check_range, check_state_shape, collect_params, count_tensor, fresh_copy, grad_for, read_count,
    read_lr, Optimizer, Param,
};
use crate::backend::optim::AdamStep;
use crate::tensor::Tensor;
use crate::{Error, Result};
use std::collections::HashMap;

/// `torch.optim.Adam`'s defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 0.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// L2 penalty, added to the gradient.
    pub weight_decay: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// `torch.optim.AdamW`'s defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 1e-2.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay: `p *= 1 - lr * weight_decay` each step.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-2,
        }
    }
}

/// The per-parameter state.
#[derive(Clone)]
struct Moments {
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: u64,
}

/// The shared implementation of Adam and AdamW.
struct AdamCore {
    op: &'static str,
    params: Vec<Param>,
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    decoupled: bool,
    /// Per parameter: whether weight decay applies (see `without_weight_decay`).
    decays: Vec<bool>,
    state: Vec<Option<Moments>>,
    steps: u64,
}

const SUFFIXES: [&str; 3] = [".exp_avg_sq", ".exp_avg", ".step"];

impl AdamCore {
    #[allow(clippy::too_many_arguments)]
    fn new(
        op: &'static str,
        params: Vec<(String, Tensor)>,
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
        decoupled: bool,
    ) -> Result<AdamCore> {
        check_range(op, "lr", lr, 0.0, f64::INFINITY, false)?;
        check_range(op, "beta1", beta1, 0.0, 1.0, false)?;
        check_range(op, "beta2", beta2, 0.0, 1.0, false)?;
        check_range(op, "eps", eps, 0.0, f64::INFINITY, false)?;
        check_range(op, "weight_decay", weight_decay, 0.0, f64::INFINITY, false)?;
        let params = collect_params(op, params)?;
        let state = vec![None; params.len()];
        let decays = vec![true; params.len()];
        Ok(AdamCore {
            op,
            params,
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            decoupled,
            decays,
            state,
            steps: 0,
        })
    }

    fn step(&mut self) -> Result<()> {
        for ((p, st), &decays) in self
            .params
            .iter()
            .zip(self.state.iter_mut())
            .zip(&self.decays)
        {
            let Some(g) = grad_for(self.op, p)? else {
                continue;
            };
            if st.is_none() {
                *st = Some(Moments {
                    exp_avg: p.tensor.zeros_like()?,
                    exp_avg_sq: p.tensor.zeros_like()?,
                    step: 0,
                });
            }
            let Some(st) = st.as_mut() else { continue };
            let hyper = AdamStep {
                lr: self.lr,
                beta1: self.beta1,
                beta2: self.beta2,
                eps: self.eps,
                weight_decay: if decays { self.weight_decay } else { 0.0 },
                decoupled: self.decoupled,
                step: st.step + 1,
            };
            {
                let gs = g.storage();
                let mut ms = st.exp_avg.storage_mut();
                let mut vs = st.exp_avg_sq.storage_mut();
                p.tensor.storage_mut().adam_step(
                    p.tensor.layout(),
                    &gs,
                    g.layout(),
                    &mut ms,
                    &mut vs,
                    &hyper,
                )?;
            }
            st.step += 1;
        }
        self.steps += 1;
        Ok(())
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (p, st) in self.params.iter().zip(&self.state) {
            if let Some(st) = st {
                out.push((format!("{}.exp_avg", p.name), st.exp_avg.clone()));
                out.push((format!("{}.exp_avg_sq", p.name), st.exp_avg_sq.clone()));
                if let Ok(t) = count_tensor(st.step) {
                    out.push((format!("{}.step", p.name), t));
                }
            }
        }
        if let Ok(t) = count_tensor(self.steps) {
            out.push(("step".into(), t));
        }
        if let Ok(t) = Tensor::scalar(self.lr, crate::Device::Cpu) {
            out.push(("lr".into(), t));
        }
        out
    }

    fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        let op = self.op;
        let index: HashMap<&str, usize> = self
            .params
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.as_str(), i))
            .collect();
        // (exp_avg, exp_avg_sq, step) per parameter, each optional until checked below.
        type Parts = (Option<Tensor>, Option<Tensor>, Option<u64>);
        let mut parts: Vec<Parts> = vec![(None, None, None); self.params.len()];
        let (mut steps, mut lr) = (None, None);
        for (key, t) in state {
            match key.as_str() {
                "step" => steps = Some(read_count(key, t)?),
                "lr" => lr = Some(read_lr(t)?),
                _ => {
                    let found = SUFFIXES.iter().find_map(|s| {
                        let name = key.strip_suffix(s)?;
                        index.get(name).map(|&i| (i, *s))
                    });
                    let Some((i, suffix)) = found else {
                        return Err(Error::msg(format!(
                            "{op} load_state: unexpected entry `{key}` (no such parameter or buffer)"
                        )));
                    };
                    let p = &self.params[i];
                    match suffix {
                        ".step" => parts[i].2 = Some(read_count(key, t)?),
                        _ => {
                            check_state_shape(key, p, t)?;
                            let copy = fresh_copy(t, p.tensor.dtype())?;
                            if suffix == ".exp_avg" {
                                parts[i].0 = Some(copy);
                            } else {
                                parts[i].1 = Some(copy);
                            }
                        }
                    }
                }
            }
        }
        let mut new_state = Vec::with_capacity(parts.len());
        for (p, part) in self.params.iter().zip(parts) {
            new_state.push(match part {
                (Some(exp_avg), Some(exp_avg_sq), Some(step)) => Some(Moments {
                    exp_avg,
                    exp_avg_sq,
                    step,
                }),
                (None, None, None) => None,
                _ => {
                    return Err(Error::msg(format!(
                        "{op} load_state: the state of `{}` is incomplete (needs .exp_avg, .exp_avg_sq and .step)",
                        p.name
                    )))
                }
            });
        }
        self.state = new_state;
        self.steps = steps.unwrap_or(0);
        if let Some(lr) = lr {
            self.lr = lr;
        }
        Ok(())
    }
}

macro_rules! adam_optimizer {
    ($name:ident, $config:ident, $op:expr, $decoupled:expr) => {
        impl $name {
            pub fn new(params: Vec<(String, Tensor)>, c: $config) -> Result<$name> {
                Ok($name(AdamCore::new(
                    $op,
                    params,
                    c.lr,
                    c.beta1,
                    c.beta2,
                    c.eps,
                    c.weight_decay,
                    $decoupled,
                )?))
            }
            /// Number of `step()` calls so far.
            pub fn steps(&self) -> u64 {
                self.0.steps
            }
            /// Exempts the parameters whose name satisfies `skip` from weight decay (the usual
            /// choice: biases and normalisation weights), like a PyTorch parameter group with
            /// `weight_decay=0`.
            pub fn without_weight_decay(mut self, skip: impl Fn(&str) -> bool) -> Self {
                for (p, d) in self.0.params.iter().zip(self.0.decays.iter_mut()) {
                    *d = !skip(&p.name);
                }
                self
            }
        }
        impl Optimizer for $name {
            fn step(&mut self) -> Result<()> {
                self.0.step()
            }
            fn zero_grad(&self) {
                self.0.params.iter().for_each(|p| p.tensor.zero_grad());
            }
            fn lr(&self) -> f64 {
                self.0.lr
            }
            fn set_lr(&mut self, lr: f64) {
                self.0.lr = lr;
            }
            fn state(&self) -> Vec<(String, Tensor)> {
                self.0.state()
            }
            fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
                self.0.load_state(state)
            }
        }
    };
}

/// Adam with L2 weight decay folded into the gradient (`torch.optim.Adam`).
pub struct Adam(AdamCore);
/// Adam with decoupled weight decay (`torch.optim.AdamW`).
pub struct AdamW(AdamCore);

adam_optimizer!(Adam, AdamConfig, "Adam", false);
adam_optimizer!(AdamW, AdamWConfig, "AdamW", true);
