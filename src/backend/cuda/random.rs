//! Device-side fills (`kernels/random.cu`): constants, uniform and normal draws from the
//! counter-based generator of `src/random.rs` (so a seed gives the same numbers as on the
//! CPU), and dropout masks. Creating a random tensor on the GPU uploads nothing.

use super::storage::{dtype_suffix, float_suffix};
use super::{device, kernel_args, launch_1d, CudaStorage};
use crate::tensor::DType;
use crate::Result;

const FILE: &str = "random.cu";
const BLOCK: u32 = 256;

/// `len` elements of `dtype`, all `value` (cast as `T::from_f64` does on the CPU).
pub fn full(len: usize, dtype: DType, value: f64, ordinal: usize) -> Result<CudaStorage> {
    let dev = device(ordinal)?;
    let out = CudaStorage::alloc(&dev, len, dtype)?;
    dev.launch(
        FILE,
        &format!("fill_{}", dtype_suffix(dtype)),
        launch_1d(len, BLOCK),
        kernel_args![out.ptr(), len as u64, value],
    )?;
    Ok(out)
}

/// `lo + (hi - lo) * uniform_at(seed, offset, i)` for `i < len`.
pub fn uniform(
    len: usize,
    dtype: DType,
    (seed, offset): (u64, u64),
    (lo, hi): (f64, f64),
    ordinal: usize,
) -> Result<CudaStorage> {
    let dev = device(ordinal)?;
    let out = CudaStorage::alloc(&dev, len, dtype)?;
    dev.launch(
        FILE,
        &format!("uniform_{}", dtype_suffix(dtype)),
        launch_1d(len, BLOCK),
        kernel_args![out.ptr(), len as u64, seed, offset, lo, hi],
    )?;
    Ok(out)
}

/// `mean + std * normal_at(seed, offset, i)` for `i < len`.
pub fn normal(
    len: usize,
    dtype: DType,
    (seed, offset): (u64, u64),
    (mean, std): (f64, f64),
    ordinal: usize,
) -> Result<CudaStorage> {
    let dev = device(ordinal)?;
    let out = CudaStorage::alloc(&dev, len, dtype)?;
    dev.launch(
        FILE,
        &format!("normal_{}", dtype_suffix(dtype)),
        launch_1d(len, BLOCK),
        kernel_args![out.ptr(), len as u64, seed, offset, mean, std],
    )?;
    Ok(out)
}

/// The dropout mask of `src/ops/dropout.rs`: `1/(1-p)` where `uniform_at(seed, offset, i) >= p`,
/// else 0 (f32 or f64).
pub fn dropout_mask(
    len: usize,
    dtype: DType,
    p: f64,
    (seed, offset): (u64, u64),
    ordinal: usize,
) -> Result<CudaStorage> {
    let sfx = float_suffix("dropout", dtype)?;
    let dev = device(ordinal)?;
    let out = CudaStorage::alloc(&dev, len, dtype)?;
    dev.launch(
        FILE,
        &format!("dropout_mask_{sfx}"),
        launch_1d(len, BLOCK),
        kernel_args![out.ptr(), len as u64, seed, offset, p, 1.0 / (1.0 - p)],
    )?;
    Ok(out)
}
