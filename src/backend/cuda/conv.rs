//! 2-D convolution on the GPU (kernels in `kernels/conv.cu`). Not written yet: every primitive returns
//! [`Error::UnsupportedDevice`], so a model that needs it on the GPU fails clearly instead of
//! silently running on the host.

use super::CudaStorage;
use crate::backend::conv::{Conv2dGeom, ConvBackend};
use crate::backend::BackendStorage;
use crate::tensor::Layout;
use crate::{Error, Result};

fn unsupported<T>(op: &'static str, s: &CudaStorage) -> Result<T> {
    Err(Error::UnsupportedDevice {
        op,
        device: s.device(),
    })
}

impl ConvBackend for CudaStorage {
    fn conv2d(
        &self,
        _x_layout: &Layout,
        _w: &Self,
        _w_layout: &Layout,
        _g: &Conv2dGeom,
    ) -> Result<Self> {
        unsupported("conv2d", self)
    }
    fn conv2d_backward_input(
        &self,
        _dy_layout: &Layout,
        _w: &Self,
        _w_layout: &Layout,
        _g: &Conv2dGeom,
    ) -> Result<Self> {
        unsupported("conv2d_backward_input", self)
    }
    fn conv2d_backward_weight(
        &self,
        _x_layout: &Layout,
        _dy: &Self,
        _dy_layout: &Layout,
        _g: &Conv2dGeom,
    ) -> Result<Self> {
        unsupported("conv2d_backward_weight", self)
    }
}
