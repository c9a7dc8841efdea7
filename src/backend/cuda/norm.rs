//! Group, layer and batch normalization on the GPU (kernels in `kernels/norm.cu`). Not written yet: every primitive returns
//! [`Error::UnsupportedDevice`], so a model that needs it on the GPU fails clearly instead of
//! silently running on the host.

use super::CudaStorage;
use crate::backend::norm::{NormBackend, NormDims, Param};
use crate::backend::BackendStorage;
use crate::tensor::Layout;
use crate::{Error, Result};

fn unsupported<T>(op: &'static str, s: &CudaStorage) -> Result<T> {
    Err(Error::UnsupportedDevice {
        op,
        device: s.device(),
    })
}

impl NormBackend for CudaStorage {
    fn group_norm_fwd(
        &self,
        _x_layout: &Layout,
        _dims: NormDims,
        _groups: usize,
        _weight: Param<Self>,
        _bias: Param<Self>,
        _eps: f64,
    ) -> Result<(Self, Self, Self)> {
        unsupported("group_norm", self)
    }
    fn group_norm_bwd(
        &self,
        _x_layout: &Layout,
        _dy: &Self,
        _dy_layout: &Layout,
        _mean: &Self,
        _rstd: &Self,
        _dims: NormDims,
        _groups: usize,
        _weight: Param<Self>,
    ) -> Result<(Self, Self, Self)> {
        unsupported("group_norm_backward", self)
    }
    fn batch_norm_fwd(
        &self,
        _x_layout: &Layout,
        _dims: NormDims,
        _running: Option<(Param<Self>, Param<Self>)>,
        _weight: Param<Self>,
        _bias: Param<Self>,
        _eps: f64,
    ) -> Result<(Self, Self, Self)> {
        unsupported("batch_norm", self)
    }
    fn batch_norm_bwd(
        &self,
        _x_layout: &Layout,
        _dy: &Self,
        _dy_layout: &Layout,
        _mean: &Self,
        _rstd: &Self,
        _dims: NormDims,
        _weight: Param<Self>,
        _batch_stats: bool,
    ) -> Result<(Self, Self, Self)> {
        unsupported("batch_norm_backward", self)
    }
    fn batch_norm_update_running(
        &mut self,
        _layout: &Layout,
        _stat: &Self,
        _momentum: f64,
        _unbiased_var_from_rstd: bool,
        _eps: f64,
        _count: usize,
    ) -> Result<()> {
        unsupported("batch_norm_update_running", self)
    }
}
