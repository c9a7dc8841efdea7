//! `nn.Conv2d`: weight `[C_out, C_in/groups, KH, KW]`, bias `[C_out]`, both initialized
//! U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as in PyTorch.

use super::{init, param, Module};
use crate::ops::Conv2dParams;
use crate::{Device, Error, Result, Tensor};

pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub params: Conv2dParams,
}

impl Conv2d {
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        params: Conv2dParams,
        bias: bool,
        device: Device,
    ) -> Result<Self> {
        if params.groups == 0
            || !in_channels.is_multiple_of(params.groups)
            || !out_channels.is_multiple_of(params.groups)
        {
            return Err(Error::msg(format!("Conv2d: {in_channels} in / {out_channels} out channels do not split into {} groups", params.groups)));
        }
        let shape = (out_channels, in_channels / params.groups, kernel, kernel);
        let weight = param(init::kaiming_uniform(shape, 5f64.sqrt(), device)?)?;
        let fan_in = (in_channels / params.groups) * kernel * kernel;
        let b = 1.0 / (fan_in as f64).sqrt();
        let bias = if bias {
            Some(param(init::uniform(-b, b, out_channels, device)?)?)
        } else {
            None
        };
        Ok(Conv2d {
            weight,
            bias,
            params,
        })
    }
    /// The same layer with its parameters converted to `dtype` (fresh leaves).
    pub fn into_dtype(self, dtype: crate::DType) -> Result<Self> {
        Ok(Conv2d {
            weight: super::cast_param(&self.weight, dtype)?,
            bias: super::cast_opt(&self.bias, dtype)?,
            params: self.params,
        })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.conv2d(&self.weight, self.bias.as_ref(), self.params)
    }
}

impl Module for Conv2d {
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v = vec![("weight".to_string(), self.weight.clone())];
        if let Some(b) = &self.bias {
            v.push(("bias".to_string(), b.clone()));
        }
        v
    }
}
