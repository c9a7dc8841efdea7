//! Dropout as a layer: active in training mode, the identity in eval mode.

use super::Module;
use crate::{Result, Tensor};
use std::sync::atomic::{AtomicBool, Ordering};

pub struct Dropout {
    pub p: f64,
    training: AtomicBool,
}

impl Dropout {
    pub fn new(p: f64) -> Self {
        Dropout {
            p,
            training: AtomicBool::new(true),
        }
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.dropout(self.p, self.training.load(Ordering::Relaxed))
    }
}

impl Module for Dropout {
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }
    fn set_training(&self, training: bool) {
        self.training.store(training, Ordering::Relaxed)
    }
}
