//! L2 normalization and cosine similarity.

use crate::tensor::{Dim, Tensor};
use crate::Result;

impl Tensor {
    /// `x / max(||x||_2, eps)` along `dim` (as `torch.nn.functional.normalize`).
    pub fn l2_normalize<D: Dim>(&self, dim: D, eps: f64) -> Result<Tensor> {
        let _ = (dim, eps);
        todo!("l2_normalize")
    }
    /// Cosine similarity along `dim` (broadcasting), as `torch.nn.functional.cosine_similarity`.
    pub fn cosine_similarity<D: Dim>(&self, other: &Tensor, dim: D, eps: f64) -> Result<Tensor> {
        let _ = (other, dim, eps);
        todo!("cosine_similarity")
    }
}
