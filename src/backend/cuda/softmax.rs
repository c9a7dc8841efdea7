//! Softmax and log_softmax on the GPU (kernels in `kernels/softmax.cu`). Not written yet: every primitive returns
//! [`Error::UnsupportedDevice`], so a model that needs it on the GPU fails clearly instead of
//! silently running on the host.

use super::CudaStorage;
use crate::backend::softmax::{SoftmaxBackend, SoftmaxKind};
use crate::backend::BackendStorage;
use crate::tensor::Layout;
use crate::{Error, Result};

fn unsupported<T>(op: &'static str, s: &CudaStorage) -> Result<T> {
    Err(Error::UnsupportedDevice {
        op,
        device: s.device(),
    })
}

impl SoftmaxBackend for CudaStorage {
    fn softmax(&self, kind: SoftmaxKind, _layout: &Layout, _dim: usize) -> Result<Self> {
        unsupported(kind.name(), self)
    }
    fn softmax_backward(
        &self,
        kind: SoftmaxKind,
        _y_layout: &Layout,
        _dy: &Self,
        _dy_layout: &Layout,
        _dim: usize,
    ) -> Result<Self> {
        unsupported(kind.name(), self)
    }
}
