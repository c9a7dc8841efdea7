//! Normalization layers over the fused ops: LayerNorm (last dim), GroupNorm and BatchNorm2d
//! (`[N, C, H, W]`). Affine weights start at 1 and biases at 0, as in PyTorch.

use super::{param, Module};
use crate::{DType, Device, Result, Tensor};
use std::sync::atomic::{AtomicBool, Ordering};

pub struct LayerNorm {
    pub weight: Option<Tensor>,
    pub bias: Option<Tensor>,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(dim: usize, eps: f64, device: Device) -> Result<Self> {
        Ok(LayerNorm {
            weight: Some(param(Tensor::ones(dim, DType::F32, device)?)?),
            bias: Some(param(Tensor::zeros(dim, DType::F32, device)?)?),
            eps,
        })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.layer_norm(self.weight.as_ref(), self.bias.as_ref(), self.eps)
    }
    /// The same layer with its affine parameters converted to `dtype` (fresh leaves).
    pub fn into_dtype(self, dtype: DType) -> Result<Self> {
        Ok(LayerNorm {
            weight: super::cast_opt(&self.weight, dtype)?,
            bias: super::cast_opt(&self.bias, dtype)?,
            eps: self.eps,
        })
    }
}

fn affine_params(weight: &Option<Tensor>, bias: &Option<Tensor>) -> Vec<(String, Tensor)> {
    let mut v = Vec::new();
    if let Some(w) = weight {
        v.push(("weight".to_string(), w.clone()));
    }
    if let Some(b) = bias {
        v.push(("bias".to_string(), b.clone()));
    }
    v
}

impl Module for LayerNorm {
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        affine_params(&self.weight, &self.bias)
    }
}

pub struct GroupNorm {
    pub num_groups: usize,
    pub weight: Option<Tensor>,
    pub bias: Option<Tensor>,
    pub eps: f64,
}

impl GroupNorm {
    pub fn new(num_groups: usize, channels: usize, eps: f64, device: Device) -> Result<Self> {
        if num_groups == 0 || !channels.is_multiple_of(num_groups) {
            return Err(crate::Error::msg(format!(
                "GroupNorm: {channels} channels do not split into {num_groups} groups"
            )));
        }
        Ok(GroupNorm {
            num_groups,
            weight: Some(param(Tensor::ones(channels, DType::F32, device)?)?),
            bias: Some(param(Tensor::zeros(channels, DType::F32, device)?)?),
            eps,
        })
    }
    /// The same layer with its affine parameters converted to `dtype` (fresh leaves).
    pub fn into_dtype(self, dtype: DType) -> Result<Self> {
        Ok(GroupNorm {
            num_groups: self.num_groups,
            weight: super::cast_opt(&self.weight, dtype)?,
            bias: super::cast_opt(&self.bias, dtype)?,
            eps: self.eps,
        })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.group_norm(
            self.num_groups,
            self.weight.as_ref(),
            self.bias.as_ref(),
            self.eps,
        )
    }
}

impl Module for GroupNorm {
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        affine_params(&self.weight, &self.bias)
    }
}

/// Batch norm with running statistics (torchvision's names: `weight`, `bias`, `running_mean`,
/// `running_var`, `num_batches_tracked`).
pub struct BatchNorm2d {
    pub weight: Tensor,
    pub bias: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub num_batches_tracked: Tensor,
    pub momentum: f64,
    pub eps: f64,
    training: AtomicBool,
}

impl BatchNorm2d {
    pub fn new(channels: usize, device: Device) -> Result<Self> {
        Ok(BatchNorm2d {
            weight: param(Tensor::ones(channels, DType::F32, device)?)?,
            bias: param(Tensor::zeros(channels, DType::F32, device)?)?,
            running_mean: Tensor::zeros(channels, DType::F32, device)?,
            running_var: Tensor::ones(channels, DType::F32, device)?,
            num_batches_tracked: Tensor::zeros((), DType::I64, device)?,
            momentum: 0.1,
            eps: 1e-5,
            training: AtomicBool::new(true),
        })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let training = self.training.load(Ordering::Relaxed);
        if training {
            let n = self.num_batches_tracked.item()? as i64 + 1;
            let t = Tensor::scalar(n, self.num_batches_tracked.device())?;
            self.num_batches_tracked.copy_from(&t)?;
        }
        x.batch_norm(
            Some(&self.running_mean),
            Some(&self.running_var),
            Some(&self.weight),
            Some(&self.bias),
            training,
            self.momentum,
            self.eps,
        )
    }
}

impl Module for BatchNorm2d {
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        vec![
            ("weight".to_string(), self.weight.clone()),
            ("bias".to_string(), self.bias.clone()),
        ]
    }
    fn named_buffers(&self) -> Vec<(String, Tensor)> {
        vec![
            ("running_mean".to_string(), self.running_mean.clone()),
            ("running_var".to_string(), self.running_var.clone()),
            (
                "num_batches_tracked".to_string(),
                self.num_batches_tracked.clone(),
            ),
        ]
    }
    fn set_training(&self, training: bool) {
        self.training.store(training, Ordering::Relaxed)
    }
}
