//! Index primitives: picking and scattering slices along one dimension by integer indices.
//!
//! With `dim` splitting a shape into `[outer, size, inner]`:
//!
//! * `index_select`: `out[o, k, i] = x[o, ids[k], i]` (ids rank-1).
//! * `index_add`:    `out = x; out[o, ids[k], i] += src[o, k, i]` (repeated ids accumulate).
//! * `gather`:       `out[m] = x[m with m[dim] replaced by ids[m]]` (ids any shape of `x`'s rank).
//! * `scatter_add`:  `out = x; out[m with m[dim] replaced by ids[m]] += src[m]`.
//!
//! `index_add` is the backward of `index_select` and `scatter_add` the backward of `gather`.
//! Indices are i64 or u32 storages; every primitive checks each index against the size of
//! `dim` and returns [`Error::IndexOutOfRange`](crate::Error::IndexOutOfRange) naming the op,
//! the index and the size. Outputs are fresh contiguous storages.

use super::{on_backend, operand, same_device, same_dtype, Operand, Storage};
use crate::tensor::Layout;
use crate::Result;

pub trait IndexBackend: Sized {
    /// Entries `ids` (a rank-1 view) of dim `dim`; output shape is the input's with
    /// `dims[dim] = ids.len()`.
    fn index_select(
        &self,
        layout: &Layout,
        ids: &Self,
        ids_layout: &Layout,
        dim: usize,
    ) -> Result<Self>;
    /// A copy of `self` with slice `k` of `src` along `dim` added at entry `ids[k]`.
    /// `src` has `self`'s shape except `dims[dim] = ids.len()`.
    fn index_add(
        &self,
        layout: &Layout,
        ids: &Self,
        ids_layout: &Layout,
        src: &Self,
        src_layout: &Layout,
        dim: usize,
    ) -> Result<Self>;
    /// `torch.gather`: the output has the shape of `ids`, which has `self`'s rank and is no
    /// larger than `self` in every dim but `dim`.
    fn gather(&self, layout: &Layout, ids: &Self, ids_layout: &Layout, dim: usize) -> Result<Self>;
    /// `torch.scatter_add` out of place: a copy of `self` with `src[m]` added at `ids[m]` along
    /// `dim`, for every position `m` of `ids` (`src` is read at the same positions).
    fn scatter_add(
        &self,
        layout: &Layout,
        ids: &Self,
        ids_layout: &Layout,
        src: &Self,
        src_layout: &Layout,
        dim: usize,
    ) -> Result<Self>;
}

impl Storage {
    pub fn index_select(
        &self,
        layout: &Layout,
        ids: &Storage,
        ids_layout: &Layout,
        dim: usize,
    ) -> Result<Storage> {
        same_device("index_select", self, ids)?;
        let d = self.device();
        on_backend!(self, |x| Ok(x
            .index_select(layout, operand("index_select", d, ids)?, ids_layout, dim)?
            .into_storage()))
    }

    pub fn index_add(
        &self,
        layout: &Layout,
        ids: &Storage,
        ids_layout: &Layout,
        src: &Storage,
        src_layout: &Layout,
        dim: usize,
    ) -> Result<Storage> {
        same_device("index_add", self, ids)?;
        same_device("index_add", self, src)?;
        same_dtype("index_add", self.dtype(), src.dtype())?;
        let d = self.device();
        on_backend!(self, |x| Ok(x
            .index_add(
                layout,
                operand("index_add", d, ids)?,
                ids_layout,
                operand("index_add", d, src)?,
                src_layout,
                dim,
            )?
            .into_storage()))
    }

    pub fn gather(
        &self,
        layout: &Layout,
        ids: &Storage,
        ids_layout: &Layout,
        dim: usize,
    ) -> Result<Storage> {
        same_device("gather", self, ids)?;
        let d = self.device();
        on_backend!(self, |x| Ok(x
            .gather(layout, operand("gather", d, ids)?, ids_layout, dim)?
            .into_storage()))
    }

    pub fn scatter_add(
        &self,
        layout: &Layout,
        ids: &Storage,
        ids_layout: &Layout,
        src: &Storage,
        src_layout: &Layout,
        dim: usize,
    ) -> Result<Storage> {
        same_device("scatter_add", self, ids)?;
        same_device("scatter_add", self, src)?;
        same_dtype("scatter_add", self.dtype(), src.dtype())?;
        let d = self.device();
        on_backend!(self, |x| Ok(x
            .scatter_add(
                layout,
                operand("scatter_add", d, ids)?,
                ids_layout,
                operand("scatter_add", d, src)?,
                src_layout,
                dim,
            )?
            .into_storage()))
    }
}
