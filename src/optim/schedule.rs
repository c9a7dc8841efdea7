//! Learning-rate schedules: a function from the step index (0-based: the index of the update
//! about to be taken) to a learning rate. Apply one before each update with
//! `opt.set_lr(schedule.lr_at(step))`.
//!
//! [`WarmupCosine`]: linear warm-up to the peak, then half a cosine down to a floor
//! (Loshchilov & Hutter, "SGDR", ICLR 2017, without restarts; Goyal et al. 2017 for warm-up):
//! ```text
//! step <  warmup:          lr = peak * (step + 1) / warmup
//! warmup <= step < total:  lr = min + (peak - min) * (1 + cos(pi * (step - warmup) / (total - warmup))) / 2
//! step >= total:           lr = min
//! ```
//! So the last warm-up step (`warmup - 1`) and the first decay step (`warmup`) both use the
//! peak, the midpoint of the decay is `(peak + min) / 2`, and `total` onwards is `min`.

use crate::optim::Optimizer;
use crate::{Error, Result};

pub trait LrSchedule {
    /// The learning rate for the update with 0-based index `step`.
    fn lr_at(&self, step: u64) -> f64;
    /// Sets the optimizer's learning rate for update `step`; returns it.
    fn apply(&self, opt: &mut dyn Optimizer, step: u64) -> f64 {
        let lr = self.lr_at(step);
        opt.set_lr(lr);
        lr
    }
}

/// The same learning rate at every step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConstantLr(pub f64);

impl LrSchedule for ConstantLr {
    fn lr_at(&self, _step: u64) -> f64 {
        self.0
    }
}

/// Linear warm-up over `warmup_steps`, then cosine decay to `min_lr` at `total_steps`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WarmupCosine {
    pub peak_lr: f64,
    pub min_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
}

impl WarmupCosine {
    pub fn new(peak_lr: f64, min_lr: f64, warmup_steps: u64, total_steps: u64) -> Result<Self> {
        if !(peak_lr.is_finite() && min_lr.is_finite() && 0.0 <= min_lr && min_lr <= peak_lr) {
            return Err(Error::msg(format!(
                "WarmupCosine: need 0 <= min_lr <= peak_lr, got min_lr {min_lr}, peak_lr {peak_lr}"
            )));
        }
        if warmup_steps > total_steps {
            return Err(Error::msg(format!(
                "WarmupCosine: warmup_steps {warmup_steps} exceeds total_steps {total_steps}"
            )));
        }
        Ok(WarmupCosine {
            peak_lr,
            min_lr,
            warmup_steps,
            total_steps,
        })
    }
}

impl LrSchedule for WarmupCosine {
    fn lr_at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.peak_lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        if step >= self.total_steps {
            return self.min_lr;
        }
        let progress =
            (step - self.warmup_steps) as f64 / (self.total_steps - self.warmup_steps) as f64;
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        self.min_lr + (self.peak_lr - self.min_lr) * cosine
    }
}
