//! Dropout with a seeded counter-based mask.

use crate::tensor::Tensor;
use crate::Result;

impl Tensor {
    /// Zeroes each element with probability `p` and scales the rest by `1/(1-p)` when `train`;
    /// the identity otherwise. The mask comes from the global Philox generator.
    pub fn dropout(&self, p: f64, train: bool) -> Result<Tensor> {
        let _ = (p, train);
        todo!("dropout")
    }
}
