//! Pooling and nearest upsampling on the GPU (kernels in `kernels/pool.cu`). Not written yet: every primitive returns
//! [`Error::UnsupportedDevice`], so a model that needs it on the GPU fails clearly instead of
//! silently running on the host.

use super::CudaStorage;
use crate::backend::pool::{PoolBackend, Windows2d};
use crate::backend::BackendStorage;
use crate::tensor::Layout;
use crate::{Error, Result};

fn unsupported<T>(op: &'static str, s: &CudaStorage) -> Result<T> {
    Err(Error::UnsupportedDevice {
        op,
        device: s.device(),
    })
}

impl PoolBackend for CudaStorage {
    fn window_avg2d(&self, _layout: &Layout, _win: &Windows2d) -> Result<Self> {
        unsupported("window_avg2d", self)
    }
    fn window_avg2d_backward(&self, _dy_layout: &Layout, _win: &Windows2d) -> Result<Self> {
        unsupported("window_avg2d_backward", self)
    }
    fn max_pool2d(&self, _layout: &Layout, _win: &Windows2d) -> Result<(Self, Self)> {
        unsupported("max_pool2d", self)
    }
    fn max_pool2d_backward(
        &self,
        _dy_layout: &Layout,
        _indices: &Self,
        _idx_layout: &Layout,
        _in_hw: (usize, usize),
    ) -> Result<Self> {
        unsupported("max_pool2d_backward", self)
    }
}
