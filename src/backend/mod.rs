//! The backend boundary. A tensor's data is a [`Storage`]: one enum arm per device (only the
//! CPU today; `Cuda` joins later without touching any op's user API). What a backend must
//! provide is split into small traits, one per op family, each in its own file here:
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
//! Each family is a trait, the `Storage` dispatch beside it, and the CPU routine in
//! `cpu/<family>.rs`; a CUDA backend implements the same traits with NVRTC kernels.
//! Each primitive receives storages plus their [`Layout`]s (so strided and broadcast views are
//! read without copies) and returns a fresh contiguous storage.

pub mod attention;
pub mod conv;
pub mod cpu;
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
}

impl Storage {
    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
        }
    }
    pub fn dtype(&self) -> DType {
        match self {
            Storage::Cpu(s) => s.dtype(),
        }
    }
    pub fn len(&self) -> usize {
        match self {
            Storage::Cpu(s) => s.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Moves host data to `device`.
    pub fn from_cpu(cpu: CpuStorage, device: Device) -> Result<Storage> {
        match device {
            Device::Cpu => Ok(Storage::Cpu(cpu)),
        }
    }
    pub fn zeros(len: usize, dtype: DType, device: Device) -> Result<Storage> {
        Storage::from_cpu(CpuStorage::zeros(len, dtype), device)
    }
    pub fn as_cpu(&self) -> Option<&CpuStorage> {
        match self {
            Storage::Cpu(s) => Some(s),
        }
    }
    pub fn as_cpu_mut(&mut self) -> Option<&mut CpuStorage> {
        match self {
            Storage::Cpu(s) => Some(s),
        }
    }
    pub fn copy_strided(&self, layout: &Layout) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(s.copy_strided(layout)?)),
        }
    }
    pub fn copy_into(
        &mut self,
        dst_layout: &Layout,
        src: &Storage,
        src_layout: &Layout,
    ) -> Result<()> {
        let (ld, rd) = (self.device(), src.device());
        match (self, src) {
            (Storage::Cpu(d), Storage::Cpu(s)) => d.copy_into(dst_layout, s, src_layout),
            #[allow(unreachable_patterns)]
            _ => Err(Error::DeviceMismatch {
                op: "copy_into",
                lhs: ld,
                rhs: rd,
            }),
        }
    }
    pub fn to_dtype(&self, layout: &Layout, dtype: DType) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(s.to_dtype(layout, dtype)?)),
        }
    }
    pub fn to_cpu(&self, layout: &Layout) -> Result<CpuStorage> {
        match self {
            Storage::Cpu(s) => s.to_cpu(layout),
        }
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
