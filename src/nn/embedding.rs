//! A lookup table `[num_embeddings, dim]` (PyTorch's `nn.Embedding`, initialized N(0, 1)).
//! Ids of any shape give `ids.shape + [dim]`; the backward scatter-adds into the table.

use super::{init, param, Module};
use crate::{DType, Device, Result, Tensor};

pub struct Embedding {
    pub weight: Tensor,
}

impl Embedding {
    pub fn new(num_embeddings: usize, dim: usize, device: Device) -> Result<Self> {
        Ok(Embedding {
            weight: param(init::normal(0.0, 1.0, (num_embeddings, dim), device)?)?,
        })
    }
    /// As `new` with N(0, std^2) weights (GPT-style 0.02).
    pub fn with_std(num_embeddings: usize, dim: usize, std: f64, device: Device) -> Result<Self> {
        Ok(Embedding {
            weight: param(init::normal(0.0, std, (num_embeddings, dim), device)?)?,
        })
    }
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        self.weight.embedding(ids)
    }
    /// The same table converted to `dtype` (a fresh leaf).
    pub fn into_dtype(self, dtype: DType) -> Result<Self> {
        Ok(Embedding {
            weight: super::cast_param(&self.weight, dtype)?,
        })
    }
}

impl Module for Embedding {
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        vec![("weight".to_string(), self.weight.clone())]
    }
}
