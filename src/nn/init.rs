//! Weight initializers (PyTorch's `torch.nn.init` formulas), drawing from the global Philox
//! generator so `random::manual_seed` makes model construction reproducible.
//!
//! fan_in = shape[1] * receptive field, fan_out = shape[0] * receptive field, where the
//! receptive field is the product of dims 2.. (1 for a Linear weight).

use crate::{DType, Device, Error, Result, Shape, Tensor};

/// (fan_in, fan_out) of a weight of this shape.
pub fn fans(shape: &Shape) -> Result<(usize, usize)> {
    let d = shape.dims();
    if d.len() < 2 {
        return Err(Error::shape(
            "init::fans",
            "fan in/out need a weight of rank >= 2",
            &[shape],
        ));
    }
    let receptive: usize = d[2..].iter().product();
    Ok((d[1] * receptive, d[0] * receptive))
}

pub fn uniform(lo: f64, hi: f64, shape: impl Into<Shape>, device: Device) -> Result<Tensor> {
    Tensor::rand_uniform(lo, hi, shape, DType::F32, device)
}
pub fn normal(mean: f64, std: f64, shape: impl Into<Shape>, device: Device) -> Result<Tensor> {
    Tensor::randn_scaled(mean, std, shape, DType::F32, device)
}
/// U(-b, b) with b = gain * sqrt(6 / (fan_in + fan_out)).
pub fn xavier_uniform(shape: impl Into<Shape>, gain: f64, device: Device) -> Result<Tensor> {
    let shape = shape.into();
    let (fi, fo) = fans(&shape)?;
    let b = gain * (6.0 / (fi + fo) as f64).sqrt();
    uniform(-b, b, shape, device)
}
/// N(0, std^2) with std = gain * sqrt(2 / (fan_in + fan_out)).
pub fn xavier_normal(shape: impl Into<Shape>, gain: f64, device: Device) -> Result<Tensor> {
    let shape = shape.into();
    let (fi, fo) = fans(&shape)?;
    normal(0.0, gain * (2.0 / (fi + fo) as f64).sqrt(), shape, device)
}
/// He init for ReLU nets, fan-in mode: N(0, 2 / fan_in).
pub fn kaiming_normal(shape: impl Into<Shape>, device: Device) -> Result<Tensor> {
    let shape = shape.into();
    let (fi, _) = fans(&shape)?;
    normal(0.0, (2.0 / fi as f64).sqrt(), shape, device)
}
/// He uniform, fan-in mode, with leaky-ReLU slope `a`: U(-b, b), b = sqrt(6 / ((1 + a^2) fan_in)).
/// With `a = sqrt(5)` this is PyTorch's default for Linear and Conv2d weights: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
pub fn kaiming_uniform(shape: impl Into<Shape>, a: f64, device: Device) -> Result<Tensor> {
    let shape = shape.into();
    let (fi, _) = fans(&shape)?;
    let b = (6.0 / ((1.0 + a * a) * fi as f64)).sqrt();
    uniform(-b, b, shape, device)
}
