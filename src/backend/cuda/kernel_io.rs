//! Small helpers the fused-op launchers (`matmul`, `softmax`, `norm`, `loss`, `attention`,
//! `conv`, `pool`) share: integer kernel arguments, contiguous operands, and launches that need
//! more than 48 KiB of dynamic shared memory.
//!
//! Kernel conventions these launchers rely on (see `kernels/tile.cuh`): every integer
//! parameter is `long long` (pass [`i64`]), every floating-point scalar `double` (pass `f64`),
//! data pointers point at the view's first element (`ptr_at(layout.offset())`).

use super::{CudaDevice, CudaStorage, KernelArgs, LaunchConfig};
use crate::tensor::Layout;
use crate::{Error, Result};
use cudarc::driver::{result as drv, sys as drv_sys};
use std::sync::Arc;

/// A usize as a `long long` kernel argument.
pub fn ll(v: usize) -> i64 {
    v as i64
}

/// Appends a view's strides (in elements, outermost first) as `long long` arguments.
pub fn push_strides(mut args: KernelArgs, layout: &Layout) -> KernelArgs {
    for &s in layout.strides() {
        args = args.arg(ll(s));
    }
    args
}

/// A view as one contiguous run of elements: the device address of its first element, and
/// the copy that holds it when the view was strided (kept alive until after the launch; the
/// allocator's stream-ordered reuse makes dropping it right after enqueueing safe).
pub struct ContiguousView {
    pub ptr: u64,
    _copy: Option<CudaStorage>,
}

/// `layout` of `s` as a contiguous run, copying (one `copy.cu` kernel) only when it is not.
pub fn contiguous(op: &'static str, s: &CudaStorage, layout: &Layout) -> Result<ContiguousView> {
    s.check_view(op, layout)?;
    if let Some((start, _)) = layout.contiguous_range() {
        return Ok(ContiguousView {
            ptr: s.ptr_at(start),
            _copy: None,
        });
    }
    let copy = crate::backend::BackendStorage::copy_strided(s, layout)?;
    Ok(ContiguousView {
        ptr: copy.ptr(),
        _copy: Some(copy),
    })
}

/// Launches with `cfg.shared_mem_bytes` of dynamic shared memory above the default 48 KiB:
/// raises the kernel's limit first (Hopper allows up to 227 KiB per block), and says how much
/// the device allows when that is not enough.
pub fn launch_large_smem(
    dev: &Arc<CudaDevice>,
    file: &'static str,
    name: &str,
    cfg: LaunchConfig,
    mut args: KernelArgs,
) -> Result<()> {
    const DEFAULT_LIMIT: u32 = 48 * 1024;
    if cfg.shared_mem_bytes <= DEFAULT_LIMIT {
        return dev.launch(file, name, cfg, args);
    }
    if cfg.is_empty() {
        return Ok(());
    }
    let small = LaunchConfig {
        shared_mem_bytes: 0,
        ..cfg
    };
    small.validate(file, name)?;
    let optin = dev
        .context()
        .attribute(
            drv_sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
        )
        .map_err(|e| Error::Cuda(format!("reading the shared-memory limit: {e:?}")))?;
    if cfg.shared_mem_bytes as i64 > optin as i64 {
        return Err(Error::Cuda(format!(
            "{file}:{name} needs {} bytes of shared memory per block; this GPU allows {optin}",
            cfg.shared_mem_bytes
        )));
    }
    let f = dev.function(file, name)?;
    dev.bind()?;
    f.set_attribute(
        drv_sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        cfg.shared_mem_bytes as i32,
    )
    .map_err(|e| {
        Error::Cuda(format!(
            "raising {file}:{name}'s shared-memory limit: {e:?}"
        ))
    })?;
    unsafe {
        drv::launch_kernel(
            f.cu_function(),
            cfg.grid,
            cfg.block,
            cfg.shared_mem_bytes,
            dev.stream().cu_stream(),
            args.pointers(),
        )
    }
    .map_err(|e| Error::Cuda(format!("launching {file}:{name} with {cfg:?}: {e:?}")))
}
