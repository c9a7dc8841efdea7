//! Creating tensors: constants, ranges, host data, and seeded random draws.

use super::{DType, Device, Shape, Tensor, WithDType};
use crate::backend::cuda::{self, CudaStorage};
use crate::backend::{CpuStorage, Storage};
use crate::random;
use crate::{Error, Result};
use half::{bf16, f16};
use rayon::prelude::*;

/// Fills a host buffer of `dtype` from f64 values produced by `f(i)` (in parallel).
fn host_from_fn(n: usize, dtype: DType, f: impl Fn(usize) -> f64 + Sync + Send) -> CpuStorage {
    macro_rules! gen {
        ($t:ty) => {
            CpuStorage::from_vec::<$t>(
                (0..n)
                    .into_par_iter()
                    .map(|i| <$t as WithDType>::from_f64(f(i)))
                    .collect(),
            )
        };
    }
    match dtype {
        DType::F32 => gen!(f32),
        DType::F64 => gen!(f64),
        DType::F16 => gen!(f16),
        DType::BF16 => gen!(bf16),
        DType::I64 => gen!(i64),
        DType::U32 => gen!(u32),
        DType::U8 => gen!(u8),
    }
}

/// A tensor whose element `i` is `f(i)`: computed on the host for the CPU, and by `on_gpu(len,
/// ordinal)` directly in GPU memory (a kernel of the same formula, no upload) for a GPU.
fn generated(
    shape: Shape,
    dtype: DType,
    device: Device,
    f: impl Fn(usize) -> f64 + Sync + Send,
    on_gpu: impl FnOnce(usize, usize) -> Result<CudaStorage>,
) -> Result<Tensor> {
    let n = shape.elem_count();
    let storage = match device {
        Device::Cpu => Storage::Cpu(host_from_fn(n, dtype, f)),
        Device::Cuda(ordinal) => Storage::Cuda(on_gpu(n, ordinal)?),
    };
    Ok(Tensor::from_storage(storage, shape))
}

impl Tensor {
    fn from_host(cpu: CpuStorage, shape: Shape, device: Device) -> Result<Tensor> {
        Ok(Tensor::from_storage(Storage::from_cpu(cpu, device)?, shape))
    }

    pub fn zeros(shape: impl Into<Shape>, dtype: DType, device: Device) -> Result<Tensor> {
        let shape = shape.into();
        Ok(Tensor::from_storage(
            Storage::zeros(shape.elem_count(), dtype, device)?,
            shape,
        ))
    }
    pub fn ones(shape: impl Into<Shape>, dtype: DType, device: Device) -> Result<Tensor> {
        Self::full(1.0, shape, dtype, device)
    }
    pub fn full(
        value: f64,
        shape: impl Into<Shape>,
        dtype: DType,
        device: Device,
    ) -> Result<Tensor> {
        generated(
            shape.into(),
            dtype,
            device,
            |_| value,
            |n, i| cuda::random::full(n, dtype, value, i),
        )
    }
    pub fn zeros_like(&self) -> Result<Tensor> {
        Self::zeros(self.shape().clone(), self.dtype(), self.device())
    }
    pub fn ones_like(&self) -> Result<Tensor> {
        Self::ones(self.shape().clone(), self.dtype(), self.device())
    }
    pub fn full_like(&self, value: f64) -> Result<Tensor> {
        Self::full(value, self.shape().clone(), self.dtype(), self.device())
    }
    /// A one-element, rank-0 tensor.
    pub fn scalar<T: WithDType>(v: T, device: Device) -> Result<Tensor> {
        Self::from_vec(vec![v], (), device)
    }
    /// `0, 1, ..., end-1`.
    pub fn arange(end: usize, dtype: DType, device: Device) -> Result<Tensor> {
        Self::from_host(
            host_from_fn(end, dtype, |i| i as f64),
            Shape::from(end),
            device,
        )
    }
    /// `start, start+step, ...` up to but excluding `end`.
    pub fn arange_step(
        start: f64,
        end: f64,
        step: f64,
        dtype: DType,
        device: Device,
    ) -> Result<Tensor> {
        if step == 0.0 || !step.is_finite() || (end - start) / step < 0.0 {
            return Err(Error::msg(format!(
                "arange_step: cannot go from {start} to {end} by {step}"
            )));
        }
        let n = ((end - start) / step).ceil() as usize;
        Self::from_host(
            host_from_fn(n, dtype, |i| start + i as f64 * step),
            Shape::from(n),
            device,
        )
    }
    /// Takes ownership of host data; the element count must match the shape.
    pub fn from_vec<T: WithDType>(
        data: Vec<T>,
        shape: impl Into<Shape>,
        device: Device,
    ) -> Result<Tensor> {
        let shape = shape.into();
        if data.len() != shape.elem_count() {
            return Err(Error::shape(
                "from_vec",
                format!("{} elements given", data.len()),
                &[&shape],
            ));
        }
        Self::from_host(CpuStorage::from_vec(data), shape, device)
    }
    pub fn from_slice<T: WithDType>(
        data: &[T],
        shape: impl Into<Shape>,
        device: Device,
    ) -> Result<Tensor> {
        Self::from_vec(data.to_vec(), shape, device)
    }

    /// Uniform [0, 1) from the global generator (see [`random::manual_seed`]).
    pub fn rand(shape: impl Into<Shape>, dtype: DType, device: Device) -> Result<Tensor> {
        let (seed, offset) = random::next_draw();
        Self::rand_with_seed(shape, dtype, device, seed, offset)
    }
    /// Uniform [lo, hi) from the global generator.
    pub fn rand_uniform(
        lo: f64,
        hi: f64,
        shape: impl Into<Shape>,
        dtype: DType,
        device: Device,
    ) -> Result<Tensor> {
        let (seed, offset) = random::next_draw();
        generated(
            shape.into(),
            dtype,
            device,
            |i| lo + (hi - lo) * random::uniform_at(seed, offset, i as u64),
            |n, i| cuda::random::uniform(n, dtype, (seed, offset), (lo, hi), i),
        )
    }
    /// Standard normal from the global generator.
    pub fn randn(shape: impl Into<Shape>, dtype: DType, device: Device) -> Result<Tensor> {
        let (seed, offset) = random::next_draw();
        Self::randn_with_seed(shape, dtype, device, seed, offset)
    }
    /// Normal with the given mean and standard deviation from the global generator.
    pub fn randn_scaled(
        mean: f64,
        std: f64,
        shape: impl Into<Shape>,
        dtype: DType,
        device: Device,
    ) -> Result<Tensor> {
        let (seed, offset) = random::next_draw();
        generated(
            shape.into(),
            dtype,
            device,
            |i| mean + std * random::normal_at(seed, offset, i as u64),
            |n, i| cuda::random::normal(n, dtype, (seed, offset), (mean, std), i),
        )
    }
    /// Uniform [0, 1) at an explicit (seed, offset): the same numbers on every backend.
    pub fn rand_with_seed(
        shape: impl Into<Shape>,
        dtype: DType,
        device: Device,
        seed: u64,
        offset: u64,
    ) -> Result<Tensor> {
        generated(
            shape.into(),
            dtype,
            device,
            |i| random::uniform_at(seed, offset, i as u64),
            |n, i| cuda::random::uniform(n, dtype, (seed, offset), (0.0, 1.0), i),
        )
    }
    /// Standard normal at an explicit (seed, offset).
    pub fn randn_with_seed(
        shape: impl Into<Shape>,
        dtype: DType,
        device: Device,
        seed: u64,
        offset: u64,
    ) -> Result<Tensor> {
        generated(
            shape.into(),
            dtype,
            device,
            |i| random::normal_at(seed, offset, i as u64),
            |n, i| cuda::random::normal(n, dtype, (seed, offset), (0.0, 1.0), i),
        )
    }
}
