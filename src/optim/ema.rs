//! Exponential moving average of weights (Polyak & Juditsky, 1992; as used for sampling in
//! diffusion models): a shadow copy of every parameter, updated after each optimizer step as
//! ```text
//! shadow = decay * shadow + (1 - decay) * param
//! ```
//! With [`Ema::with_warmup`] the decay of update `n` (counting from 0) is
//! `min(decay, (1 + n) / (10 + n))`, as TensorFlow's `ExponentialMovingAverage` does with
//! `num_updates`: a short run is not dominated by its first, untrained weights (with a plain
//! 0.995, weights from 500 steps back still hold 8% of the average).
//! For sampling, [`Ema::copy_to`] writes the averages into the model's parameters, or
//! [`Ema::swap`] exchanges them (swap again to get the trained weights back).
//! State (for checkpoints): one tensor per parameter under its own name, plus `num_updates`.

use crate::optim::{assign, count_tensor, fresh_copy, read_count};
use crate::tensor::Tensor;
use crate::{Error, Result};
use std::collections::HashMap;

pub struct Ema {
    decay: f64,
    warmup: bool,
    /// Shadow weights, private copies in each parameter's dtype.
    shadow: Vec<(String, Tensor)>,
    index: HashMap<String, usize>,
    num_updates: u64,
}

impl Ema {
    /// Starts the average at the parameters' current values. `decay` in [0, 1].
    pub fn new(params: &[(String, Tensor)], decay: f64) -> Result<Ema> {
        if !(0.0..=1.0).contains(&decay) {
            return Err(Error::msg(format!(
                "Ema: decay must be in [0, 1], got {decay}"
            )));
        }
        let mut shadow = Vec::with_capacity(params.len());
        let mut index = HashMap::new();
        for (name, p) in params {
            if !p.dtype().is_compute_float() {
                return Err(Error::UnsupportedDType {
                    op: "Ema",
                    dtype: p.dtype(),
                    expected: "f32 or f64 parameters",
                });
            }
            if index.insert(name.clone(), shadow.len()).is_some() {
                return Err(Error::msg(format!(
                    "Ema: parameter name `{name}` appears more than once"
                )));
            }
            shadow.push((name.clone(), fresh_copy(p, p.dtype())?));
        }
        Ok(Ema {
            decay,
            warmup: false,
            shadow,
            index,
            num_updates: 0,
        })
    }

    /// Ramps the decay up as `min(decay, (1 + n) / (10 + n))` over the first updates.
    pub fn with_warmup(mut self) -> Self {
        self.warmup = true;
        self
    }
    /// The decay set at construction (the ceiling when warming up).
    pub fn decay(&self) -> f64 {
        self.decay
    }
    /// The decay the next [`update`](Self::update) applies.
    pub fn current_decay(&self) -> f64 {
        if self.warmup {
            let n = self.num_updates as f64;
            self.decay.min((1.0 + n) / (10.0 + n))
        } else {
            self.decay
        }
    }
    pub fn num_updates(&self) -> u64 {
        self.num_updates
    }
    /// The averaged weights, by name.
    pub fn shadow(&self) -> &[(String, Tensor)] {
        &self.shadow
    }
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.index.get(name).map(|&i| &self.shadow[i].1)
    }

    /// Matches `params` to the shadow weights by name; every parameter must be tracked.
    fn pairs<'a>(
        &'a self,
        params: &'a [(String, Tensor)],
    ) -> Result<Vec<(&'a Tensor, &'a Tensor)>> {
        params
            .iter()
            .map(|(name, p)| {
                let s = self
                    .get(name)
                    .ok_or_else(|| Error::msg(format!("Ema: parameter `{name}` is not tracked")))?;
                if s.shape() != p.shape() {
                    return Err(Error::shape(
                        "Ema",
                        format!("parameter `{name}` changed shape"),
                        &[s.shape(), p.shape()],
                    ));
                }
                Ok((s, p))
            })
            .collect()
    }

    /// `shadow = decay * shadow + (1 - decay) * param` for every parameter in `params`.
    pub fn update(&mut self, params: &[(String, Tensor)]) -> Result<()> {
        let d = self.current_decay();
        crate::no_grad(|| -> Result<()> {
            for (s, p) in self.pairs(params)? {
                let p = if p.dtype() == s.dtype() && !p.same_storage(s) {
                    p.detach()
                } else {
                    // Another dtype, or (never in practice) the average's own storage.
                    fresh_copy(p, s.dtype())?
                };
                // One fused pass in place (`backend/optim.rs`): s = d s + (1 - d) p.
                let pv = p.storage();
                s.storage_mut().ema_step(s.layout(), &pv, p.layout(), d)?;
            }
            Ok(())
        })?;
        self.num_updates += 1;
        Ok(())
    }

    /// Writes the averaged weights into `params` in place.
    pub fn copy_to(&self, params: &[(String, Tensor)]) -> Result<()> {
        for (s, p) in self.pairs(params)? {
            assign(p, s)?;
        }
        Ok(())
    }

    /// Exchanges the averaged weights and the values of `params` (call again to undo).
    pub fn swap(&mut self, params: &[(String, Tensor)]) -> Result<()> {
        for (s, p) in self.pairs(params)? {
            let tmp = fresh_copy(p, p.dtype())?;
            assign(p, s)?;
            assign(s, &tmp)?;
        }
        Ok(())
    }

    /// The shadow weights under their names, plus `num_updates` (an i64 scalar).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = self.shadow.clone();
        if let Ok(t) = count_tensor(self.num_updates) {
            out.push(("num_updates".into(), t));
        }
        out
    }

    /// Restores what [`state`](Self::state) returned; every tracked name must be present.
    pub fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        let mut new: Vec<Option<Tensor>> = vec![None; self.shadow.len()];
        let mut num_updates = 0;
        for (key, t) in state {
            if key == "num_updates" {
                num_updates = read_count(key, t)?;
                continue;
            }
            let &i = self
                .index
                .get(key)
                .ok_or_else(|| Error::msg(format!("Ema load_state: unexpected entry `{key}`")))?;
            let cur = &self.shadow[i].1;
            if cur.shape() != t.shape() {
                return Err(Error::shape(
                    "Ema load_state",
                    format!("`{key}` has the wrong shape"),
                    &[t.shape(), cur.shape()],
                ));
            }
            new[i] = Some(fresh_copy(t, cur.dtype())?);
        }
        let mut shadow = Vec::with_capacity(new.len());
        for ((name, _), t) in self.shadow.iter().zip(new) {
            let t = t.ok_or_else(|| Error::msg(format!("Ema load_state: `{name}` is missing")))?;
            shadow.push((name.clone(), t));
        }
        self.shadow = shadow;
        self.num_updates = num_updates;
        Ok(())
    }
}
