//! Positional encodings: the fixed sinusoidal table of "Attention Is All You Need" and a
//! learned table.
//!
//! `pe[pos, 2i] = sin(pos / 10000^(2i/D))`, `pe[pos, 2i+1] = cos(pos / 10000^(2i/D))`.

use super::{init, param, Module};
use crate::{DType, Device, Error, Result, Tensor};

/// The `[len, dim]` sinusoidal table (not a parameter).
pub fn sinusoidal_positions(len: usize, dim: usize, device: Device) -> Result<Tensor> {
    let mut pe = vec![0f32; len * dim];
    for pos in 0..len {
        for i in 0..dim {
            let freq = 1.0 / 10000f64.powf((2 * (i / 2)) as f64 / dim as f64);
            let a = pos as f64 * freq;
            pe[pos * dim + i] = if i % 2 == 0 { a.sin() } else { a.cos() } as f32;
        }
    }
    Tensor::from_vec(pe, (len, dim), device)
}

/// A learned `[max_len, dim]` table, initialized N(0, 0.02^2).
pub struct LearnedPositionalEmbedding {
    pub weight: Tensor,
}

impl LearnedPositionalEmbedding {
    pub fn new(max_len: usize, dim: usize, device: Device) -> Result<Self> {
        Ok(LearnedPositionalEmbedding {
            weight: param(init::normal(0.0, 0.02, (max_len, dim), device)?)?,
        })
    }
    /// The first `len` rows, `[len, dim]`.
    pub fn forward(&self, len: usize) -> Result<Tensor> {
        let max = self.weight.dims()[0];
        if len > max {
            return Err(Error::msg(format!("LearnedPositionalEmbedding: sequence length {len} exceeds the table's {max} positions")));
        }
        self.weight.narrow(0, 0, len)
    }
    /// The same table converted to `dtype` (a fresh leaf).
    pub fn into_dtype(self, dtype: DType) -> Result<Self> {
        Ok(LearnedPositionalEmbedding {
            weight: super::cast_param(&self.weight, dtype)?,
        })
    }
}

impl Module for LearnedPositionalEmbedding {
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        vec![("weight".to_string(), self.weight.clone())]
    }
}
