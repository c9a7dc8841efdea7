//! Indexing and joining: cat, stack, index_select, gather, scatter_add, embedding.

use crate::tensor::{Dim, Tensor};
use crate::Result;

impl Tensor {
    /// Concatenates along `dim`; all other dims must match.
    pub fn cat<D: Dim>(tensors: &[Tensor], dim: D) -> Result<Tensor> {
        let _ = (tensors, dim);
        todo!("cat")
    }
    /// Stacks along a new dim `dim`; all shapes must match.
    pub fn stack<D: Dim>(tensors: &[Tensor], dim: D) -> Result<Tensor> {
        let _ = (tensors, dim);
        todo!("stack")
    }
    /// Picks entries `indices` (rank-1, i64 or u32) along `dim`.
    pub fn index_select<D: Dim>(&self, indices: &Tensor, dim: D) -> Result<Tensor> {
        let _ = (indices, dim);
        todo!("index_select")
    }
    /// `torch.gather`: `out[i][j] = self[i][indices[i][j]]` along `dim` (indices i64, same rank).
    pub fn gather<D: Dim>(&self, dim: D, indices: &Tensor) -> Result<Tensor> {
        let _ = (indices, dim);
        todo!("gather")
    }
    /// `torch.scatter_add` (out of place): adds `src` into a copy of `self` at `indices` along `dim`.
    pub fn scatter_add<D: Dim>(&self, dim: D, indices: &Tensor, src: &Tensor) -> Result<Tensor> {
        let _ = (indices, dim, src);
        todo!("scatter_add")
    }
    /// Rows of this `[vocab, dim]` table at `ids` (any shape, i64 or u32): output `ids.shape + [dim]`.
    /// Backward is a scatter-add into the table's gradient.
    pub fn embedding(&self, ids: &Tensor) -> Result<Tensor> {
        let _ = ids;
        todo!("embedding")
    }
}
