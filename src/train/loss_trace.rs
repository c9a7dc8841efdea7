//! The loss figures a training loop reports: the first recorded loss and an exponential
//! moving average (weight 0.1 on the newest) of all of them, and an error as soon as a loss is
//! not finite, naming the model and the step, instead of training on NaNs.

use crate::{Error, Result};

pub struct LossTrace {
    what: String,
    first: f64,
    smoothed: f64,
}

impl LossTrace {
    /// `what` names the model in the divergence error ("diffusion", "prior", ...).
    pub fn new(what: impl Into<String>) -> Self {
        LossTrace {
            what: what.into(),
            first: f64::NAN,
            smoothed: f64::NAN,
        }
    }

    /// Records the loss of `step`: an error if it is NaN or infinite.
    pub fn record(&mut self, step: u64, loss: f64) -> Result<()> {
        if !loss.is_finite() {
            return Err(Error::msg(format!(
                "{} training diverged at step {step}: loss {loss}",
                self.what
            )));
        }
        if self.first.is_nan() {
            self.first = loss;
        }
        self.smoothed = if self.smoothed.is_nan() {
            loss
        } else {
            0.9 * self.smoothed + 0.1 * loss
        };
        Ok(())
    }

    /// The first recorded loss (NaN before any).
    pub fn first(&self) -> f64 {
        self.first
    }

    /// The moving average (NaN before any loss).
    pub fn smoothed(&self) -> f64 {
        self.smoothed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_first_loss_smooths_the_rest_and_refuses_nan() {
        let mut t = LossTrace::new("toy");
        assert!(t.first().is_nan() && t.smoothed().is_nan());
        t.record(0, 2.0).unwrap();
        t.record(1, 1.0).unwrap();
        assert_eq!(t.first(), 2.0);
        assert!((t.smoothed() - 1.9).abs() < 1e-12);
        let err = t.record(7, f64::NAN).unwrap_err().to_string();
        assert!(err.contains("toy training diverged at step 7"), "{err}");
        assert!(t.record(8, f64::INFINITY).is_err());
    }
}
