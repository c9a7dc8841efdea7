//! The backend boundary. A tensor's data is a [`Storage`]: one enum arm per device (`Cpu`,
//! `Cuda`), so no op's user API depends on where data lives. What a backend must provide is
//! split into small traits, one per op family, each in its own file here:
//!
//! | trait | file | primitives |
//! |---|---|---|
//! | [`BackendStorage`] | `mod.rs` | dtype, strided copy, copy into a view, casts, host transfer |
//! | [`elementwise::ElementwiseBackend`] | `elementwise.rs` | unary (+ its derivative), binary, compare, where |
//! | [`reduce::ReduceBackend`] | `reduce.rs` | sum / max / min / argmax / argmin over dims |
//! | [`matmul::MatmulBackend`] | `matmul.rs` | batched GEMM on strided operands |
//! | [`softmax::SoftmaxBackend`] | `softmax.rs` | softmax / log_softmax and their backward |
//! | [`norm::NormBackend`] | `norm.rs` | group norm (LayerNorm is one group), batch norm, running-stat update |
//! | [`attention::AttentionBackend`] | `attention.rs` | fused attention forward (saves logsumexp) and backward |
//! | [`loss::LossBackend`] | `loss.rs` | fused cross-entropy and its gradient |
//! | [`conv::ConvBackend`] | `conv.rs` | conv2d forward, input and weight gradients |
//! | [`pool::PoolBackend`] | `pool.rs` | window average (avg / adaptive / nearest upsampling), max pool |
//! | [`index::IndexBackend`] | `index.rs` | index_select, index_add, gather, scatter_add |
//! | [`optim::OptimBackend`] | `optim.rs` | fused in-place Adam(W) and SGD steps |
//!
//! Each family is a trait, the `Storage` dispatch beside it, and the routines in
//! `cpu/<family>.rs` and `cuda/<family>.rs` (NVRTC kernels from `kernels/<family>.cu`).
//! Operands on different devices are an [`Error::DeviceMismatch`]; an op the GPU does not
//! have yet is an [`Error::UnsupportedDevice`], never a silent trip through the host.
//! Each primitive receives storages plus their [`Layout`]s (so strided and broadcast views are
//! read without copies) and returns a fresh contiguous storage.

pub mod attention;
pub mod conv;
pub mod cpu;
pub mod cuda;
pub mod elementwise;
pub mod index;
pub mod loss;
pub mod matmul;
pub mod norm;
pub mod optim;
pub mod pool;
pub mod reduce;
pub mod softmax;

pub use cpu::CpuStorage;
pub use cuda::CudaStorage;

use crate::tensor::{DType, Device, Layout};
use crate::{Error, Result};

/// The primitives every backend's storage provides, whatever the op family.
pub trait BackendStorage: Sized {
    fn dtype(&self) -> DType;
    fn device(&self) -> Device;
    /// Number of elements held.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// A contiguous copy of the view `layout`, same dtype.
    fn copy_strided(&self, layout: &Layout) -> Result<Self>;
    /// Writes `src` viewed through `src_layout` into `self` at the view `dst_layout` (same shape).
    fn copy_into(&mut self, dst_layout: &Layout, src: &Self, src_layout: &Layout) -> Result<()>;
    /// A contiguous copy of the view converted to `dtype`.
    fn to_dtype(&self, layout: &Layout, dtype: DType) -> Result<Self>;
    /// A contiguous host copy of the view.
    fn to_cpu(&self, layout: &Layout) -> Result<CpuStorage>;
}

/// A tensor's data on its device.
#[derive(Debug)]
pub enum Storage {
    Cpu(CpuStorage),
    Cuda(CudaStorage),
}

/// Applies `$body` to whichever backend storage `$s` holds, rewrapping nothing: for methods
/// every backend has with the same signature.
macro_rules! on_backend {
    ($s:expr, |$b:ident| $body:expr) => {
        match $s {
            Storage::Cpu($b) => $body,
            Storage::Cuda($b) => $body,
        }
    };
}
pub(crate) use on_backend;

impl Storage {
    pub fn device(&self) -> Device {
        on_backend!(self, |s| s.device())
    }
    pub fn dtype(&self) -> DType {
        on_backend!(self, |s| s.dtype())
    }
    pub fn len(&self) -> usize {
        on_backend!(self, |s| s.len())
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Moves host data to `device` (one host-to-device copy for a GPU).
    pub fn from_cpu(cpu: CpuStorage, device: Device) -> Result<Storage> {
        match device {
            Device::Cpu => Ok(Storage::Cpu(cpu)),
            Device::Cuda(i) => Ok(Storage::Cuda(CudaStorage::from_cpu(&cpu, i)?)),
        }
    }
    pub fn zeros(len: usize, dtype: DType, device: Device) -> Result<Storage> {
        match device {
            Device::Cpu => Ok(Storage::Cpu(CpuStorage::zeros(len, dtype))),
            Device::Cuda(i) => Ok(Storage::Cuda(CudaStorage::zeros(len, dtype, i)?)),
        }
    }
    pub fn as_cpu(&self) -> Option<&CpuStorage> {
        match self {
            Storage::Cpu(s) => Some(s),
            Storage::Cuda(_) => None,
        }
    }
    pub fn as_cpu_mut(&mut self) -> Option<&mut CpuStorage> {
        match self {
            Storage::Cpu(s) => Some(s),
            Storage::Cuda(_) => None,
        }
    }
    pub fn as_cuda(&self) -> Option<&CudaStorage> {
        match self {
            Storage::Cuda(s) => Some(s),
            Storage::Cpu(_) => None,
        }
    }
    pub fn copy_strided(&self, layout: &Layout) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(s.copy_strided(layout)?)),
            Storage::Cuda(s) => Ok(Storage::Cuda(s.copy_strided(layout)?)),
        }
    }
    pub fn copy_into(
        &mut self,
        dst_layout: &Layout,
        src: &Storage,
        src_layout: &Layout,
    ) -> Result<()> {
        let device = self.device();
        match self {
            Storage::Cpu(d) => {
                d.copy_into(dst_layout, operand("copy_into", device, src)?, src_layout)
            }
            Storage::Cuda(d) => {
                d.copy_into(dst_layout, operand("copy_into", device, src)?, src_layout)
            }
        }
    }
    pub fn to_dtype(&self, layout: &Layout, dtype: DType) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(s.to_dtype(layout, dtype)?)),
            Storage::Cuda(s) => Ok(Storage::Cuda(s.to_dtype(layout, dtype)?)),
        }
    }
    pub fn to_cpu(&self, layout: &Layout) -> Result<CpuStorage> {
        on_backend!(self, |s| s.to_cpu(layout))
    }
}

/// One backend's storage type as the operand of a family primitive. The dispatchers in the
/// family files match on the first operand's arm and fetch every other operand with
/// [`operand`], so a storage on another device is an [`Error::DeviceMismatch`] naming the op.
pub(crate) trait Operand: BackendStorage {
    fn from_storage(s: &Storage) -> Option<&Self>;
    fn from_storage_mut(s: &mut Storage) -> Option<&mut Self>;
    fn into_storage(self) -> Storage;
}

impl Operand for CpuStorage {
    fn from_storage(s: &Storage) -> Option<&Self> {
        s.as_cpu()
    }
    fn from_storage_mut(s: &mut Storage) -> Option<&mut Self> {
        s.as_cpu_mut()
    }
    fn into_storage(self) -> Storage {
        Storage::Cpu(self)
    }
}

impl Operand for CudaStorage {
    fn from_storage(s: &Storage) -> Option<&Self> {
        s.as_cuda()
    }
    fn from_storage_mut(s: &mut Storage) -> Option<&mut Self> {
        match s {
            Storage::Cuda(c) => Some(c),
            Storage::Cpu(_) => None,
        }
    }
    fn into_storage(self) -> Storage {
        Storage::Cuda(self)
    }
}

/// `s` as backend storage `S` when it lives on `device` (the first operand's), else a
/// device-mismatch error naming `op` and both devices (GPU ordinals included).
pub(crate) fn operand<'a, S: Operand>(
    op: &'static str,
    device: Device,
    s: &'a Storage,
) -> Result<&'a S> {
    let found = s.device();
    match S::from_storage(s) {
        Some(x) if found == device => Ok(x),
        _ => Err(Error::DeviceMismatch {
            op,
            lhs: device,
            rhs: found,
        }),
    }
}

/// Mutable form of [`operand`].
pub(crate) fn operand_mut<'a, S: Operand>(
    op: &'static str,
    device: Device,
    s: &'a mut Storage,
) -> Result<&'a mut S> {
    let found = s.device();
    match S::from_storage_mut(s) {
        Some(x) if found == device => Ok(x),
        _ => Err(Error::DeviceMismatch {
            op,
            lhs: device,
            rhs: found,
        }),
    }
}

/// Checks that two storages live on one device before a primitive combines them.
pub(crate) fn same_device(op: &'static str, a: &Storage, b: &Storage) -> Result<()> {
    if a.device() == b.device() {
        Ok(())
    } else {
        Err(Error::DeviceMismatch {
            op,
            lhs: a.device(),
            rhs: b.device(),
        })
    }
}

/// Checks that two storages share a dtype before a binary primitive runs.
pub(crate) fn same_dtype(op: &'static str, a: DType, b: DType) -> Result<()> {
    if a == b {
        Ok(())
    } else {
        Err(Error::DTypeMismatch { op, lhs: a, rhs: b })
    }
}
