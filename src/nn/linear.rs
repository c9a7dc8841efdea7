//! `y = x W^T + b`, PyTorch's `nn.Linear`: weight `[out, in]`, bias `[out]`, both initialized
//! U(-1/sqrt(in), 1/sqrt(in)). `x` may have any number of leading dims.

use super::{init, param, Module};
use crate::{DType, Device, Result, Tensor};

pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn new(
        in_features: usize,
        out_features: usize,
        bias: bool,
        device: Device,
    ) -> Result<Self> {
        let weight = param(init::kaiming_uniform(
            (out_features, in_features),
            5f64.sqrt(),
            device,
        )?)?;
        let b = 1.0 / (in_features.max(1) as f64).sqrt();
        let bias = if bias {
            Some(param(init::uniform(-b, b, out_features, device)?)?)
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }
    pub fn from_tensors(weight: Tensor, bias: Option<Tensor>) -> Self {
        Linear { weight, bias }
    }
    /// The same layer with its parameters converted to `dtype` (fresh leaves).
    pub fn into_dtype(self, dtype: DType) -> Result<Self> {
        Ok(Linear {
            weight: super::cast_param(&self.weight, dtype)?,
            bias: super::cast_opt(&self.bias, dtype)?,
        })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // The transposed weight is a strided view read by the GEMM directly, and the bias is
        // added by the GEMM as it stores each output tile.
        x.linear(&self.weight, self.bias.as_ref())
    }
}

impl Module for Linear {
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v = vec![("weight".to_string(), self.weight.clone())];
        if let Some(b) = &self.bias {
            v.push(("bias".to_string(), b.clone()));
        }
        v
    }
}
