//! Fused attention on the GPU (kernels in `kernels/attention.cu`). Not written yet: every primitive returns
//! [`Error::UnsupportedDevice`], so a model that needs it on the GPU fails clearly instead of
//! silently running on the host.

use super::CudaStorage;
use crate::backend::attention::{AttentionBackend, AttnMask, AttnParams};
use crate::backend::BackendStorage;
use crate::tensor::Layout;
use crate::{Error, Result};

fn unsupported<T>(op: &'static str, s: &CudaStorage) -> Result<T> {
    Err(Error::UnsupportedDevice {
        op,
        device: s.device(),
    })
}

impl AttentionBackend for CudaStorage {
    fn attention_fwd(
        &self,
        _q_layout: &Layout,
        _k: &Self,
        _k_layout: &Layout,
        _v: &Self,
        _v_layout: &Layout,
        _masks: &[AttnMask<Self>],
        _p: AttnParams,
    ) -> Result<(Self, Self)> {
        unsupported("attention", self)
    }
    fn attention_bwd(
        &self,
        _q_layout: &Layout,
        _k: &Self,
        _k_layout: &Layout,
        _v: &Self,
        _v_layout: &Layout,
        _out: &Self,
        _lse: &Self,
        _d_out: &Self,
        _d_out_layout: &Layout,
        _masks: &[AttnMask<Self>],
        _p: AttnParams,
    ) -> Result<(Self, Self, Self)> {
        unsupported("attention_backward", self)
    }
}
