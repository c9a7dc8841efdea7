//! Indexing and joining: cat, stack, index_select, index_add, gather, scatter_add, embedding.
//!
//! Forward and backward pair up as adjoints:
//!
//! * `cat` copies each input into its window of a zero-initialized output (one strided copy per
//!   input); its backward narrows the output gradient back into one window per input.
//! * `stack` is `cat` of the inputs unsqueezed at the new dim, so autograd comes for free.
//! * `index_select` (`y[.., k, ..] = x[.., ids[k], ..]`) has backward `index_add` of the
//!   gradient into zeros: rows picked twice receive both gradients.
//! * `gather` (`y[m] = x[m | dim <- ids[m]]`) has backward `scatter_add` into zeros.
//! * `scatter_add(x, ids, src)` passes the gradient straight to `x`, and `g.gather(ids)` to `src`.
//! * `embedding(table, ids)` is `index_select` of the flattened ids along dim 0, reshaped, so its
//!   backward is a scatter-add of rows into the table's gradient.
//!
//! Indices are i64 or u32 tensors; an index outside `0..size` is an
//! [`Error::IndexOutOfRange`] naming the op, the index and the size.

use crate::tensor::{dim_for_insert, DType, Dim, Layout, Shape, Tensor};
use crate::{Error, Result};

impl Tensor {
    /// Checks `indices` is an integer index tensor on this tensor's device.
    fn check_indices(&self, indices: &Tensor, op: &'static str) -> Result<()> {
        if !matches!(indices.dtype(), DType::I64 | DType::U32) {
            return Err(Error::UnsupportedDType {
                op,
                dtype: indices.dtype(),
                expected: "i64 or u32 indices",
            });
        }
        if indices.device() != self.device() {
            return Err(Error::DeviceMismatch {
                op,
                lhs: self.device(),
                rhs: indices.device(),
            });
        }
        Ok(())
    }

    /// Checks `indices` is rank-1, as `index_select` and `index_add` need.
    fn check_index_vector(&self, indices: &Tensor, op: &'static str) -> Result<()> {
        self.check_indices(indices, op)?;
        if indices.rank() != 1 {
            return Err(Error::shape(
                op,
                "indices must be rank-1",
                &[self.shape(), indices.shape()],
            ));
        }
        Ok(())
    }

    /// Concatenates along `dim`; all other dims must match.
    pub fn cat<D: Dim>(tensors: &[Tensor], dim: D) -> Result<Tensor> {
        let Some(first) = tensors.first() else {
            return Err(Error::shape("cat", "needs at least one tensor", &[]));
        };
        let d = dim.to_index(first.shape(), "cat")?;
        for t in &tensors[1..] {
            first.check_same(t, "cat")?;
            let fits = t.rank() == first.rank()
                && (0..first.rank()).all(|i| i == d || t.dims()[i] == first.dims()[i]);
            if !fits {
                let shapes: Vec<&Shape> = tensors.iter().map(|t| t.shape()).collect();
                return Err(Error::shape(
                    "cat",
                    format!("all dims but {d} must match"),
                    &shapes,
                ));
            }
        }
        let mut dims = first.dims().to_vec();
        dims[d] = tensors.iter().map(|t| t.dims()[d]).sum();
        let out_layout = Layout::contiguous(dims.clone());
        let out = Tensor::zeros(dims, first.dtype(), first.device())?;
        let mut windows = Vec::with_capacity(tensors.len());
        {
            let mut dst = out.storage_mut();
            let mut start = 0;
            for t in tensors {
                let len = t.dims()[d];
                dst.copy_into(&out_layout.narrow(d, start, len)?, &t.storage(), t.layout())?;
                windows.push((start, len, t.requires_grad()));
                start += len;
            }
        }
        let inputs: Vec<&Tensor> = tensors.iter().collect();
        Ok(Tensor::record(out, "cat", &inputs, move |g| {
            windows
                .iter()
                .map(|&(start, len, needed)| needed.then(|| g.narrow(d, start, len)).transpose())
                .collect()
        }))
    }

    /// Stacks along a new dim `dim`; all shapes must match.
    pub fn stack<D: Dim>(tensors: &[Tensor], dim: D) -> Result<Tensor> {
        let Some(first) = tensors.first() else {
            return Err(Error::shape("stack", "needs at least one tensor", &[]));
        };
        if tensors.iter().any(|t| t.shape() != first.shape()) {
            let shapes: Vec<&Shape> = tensors.iter().map(|t| t.shape()).collect();
            return Err(Error::shape("stack", "all shapes must match", &shapes));
        }
        let d = dim_for_insert(dim, first.shape(), "stack")?;
        let unsqueezed = tensors
            .iter()
            .map(|t| t.unsqueeze(d))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&unsqueezed, d)
    }

    /// Picks entries `indices` (rank-1, i64 or u32) along `dim`.
    pub fn index_select<D: Dim>(&self, indices: &Tensor, dim: D) -> Result<Tensor> {
        let d = dim.to_index(self.shape(), "index_select")?;
        self.check_index_vector(indices, "index_select")?;
        let storage =
            self.storage()
                .index_select(self.layout(), &indices.storage(), indices.layout(), d)?;
        let mut dims = self.dims().to_vec();
        dims[d] = indices.elem_count();
        let out = Tensor::from_storage(storage, dims);
        if !crate::autograd::is_recording(&[self]) {
            return Ok(out);
        }
        let (ids, in_shape) = (indices.detach(), self.shape().clone());
        Ok(Tensor::record(
            out,
            "index_select",
            &[self, indices],
            move |g| {
                let zeros = Tensor::zeros(in_shape, g.dtype(), g.device())?;
                Ok(vec![Some(zeros.index_add(d, &ids, g)?), None])
            },
        ))
    }

    /// Out of place `index_add`: a copy of this tensor with slice `k` of `src` along `dim` added
    /// at entry `indices[k]` (repeated indices accumulate). `src` has this shape except along
    /// `dim`, where its size is the number of indices.
    pub fn index_add<D: Dim>(&self, dim: D, indices: &Tensor, src: &Tensor) -> Result<Tensor> {
        let d = dim.to_index(self.shape(), "index_add")?;
        self.check_same(src, "index_add")?;
        self.check_float("index_add")?;
        self.check_index_vector(indices, "index_add")?;
        let mut expected = self.dims().to_vec();
        expected[d] = indices.elem_count();
        if src.dims() != expected {
            return Err(Error::shape(
                "index_add",
                format!("source must have shape {expected:?}"),
                &[self.shape(), indices.shape(), src.shape()],
            ));
        }
        let storage = self.storage().index_add(
            self.layout(),
            &indices.storage(),
            indices.layout(),
            &src.storage(),
            src.layout(),
            d,
        )?;
        let out = Tensor::from_storage(storage, self.shape().clone());
        if !crate::autograd::is_recording(&[self, src]) {
            return Ok(out);
        }
        let ids = indices.detach();
        let need_src = src.requires_grad();
        Ok(Tensor::record(
            out,
            "index_add",
            &[self, indices, src],
            move |g| {
                let g_src = need_src.then(|| g.index_select(&ids, d)).transpose()?;
                Ok(vec![Some(g.clone()), None, g_src])
            },
        ))
    }

    /// `torch.gather`: `out[i][j] = self[i][indices[i][j]]` along `dim` (indices i64, same rank).
    pub fn gather<D: Dim>(&self, dim: D, indices: &Tensor) -> Result<Tensor> {
        let d = dim.to_index(self.shape(), "gather")?;
        self.check_indices(indices, "gather")?;
        let storage =
            self.storage()
                .gather(self.layout(), &indices.storage(), indices.layout(), d)?;
        let out = Tensor::from_storage(storage, indices.shape().clone());
        if !crate::autograd::is_recording(&[self]) {
            return Ok(out);
        }
        let (ids, in_shape) = (indices.detach(), self.shape().clone());
        Ok(Tensor::record(out, "gather", &[self, indices], move |g| {
            let zeros = Tensor::zeros(in_shape, g.dtype(), g.device())?;
            Ok(vec![Some(zeros.scatter_add(d, &ids, g)?), None])
        }))
    }

    /// `torch.scatter_add` (out of place): adds `src` into a copy of `self` at `indices` along `dim`.
    pub fn scatter_add<D: Dim>(&self, dim: D, indices: &Tensor, src: &Tensor) -> Result<Tensor> {
        let d = dim.to_index(self.shape(), "scatter_add")?;
        self.check_same(src, "scatter_add")?;
        self.check_float("scatter_add")?;
        self.check_indices(indices, "scatter_add")?;
        let storage = self.storage().scatter_add(
            self.layout(),
            &indices.storage(),
            indices.layout(),
            &src.storage(),
            src.layout(),
            d,
        )?;
        let out = Tensor::from_storage(storage, self.shape().clone());
        if !crate::autograd::is_recording(&[self, src]) {
            return Ok(out);
        }
        let ids = indices.detach();
        let (need_src, src_shape) = (src.requires_grad(), src.shape().clone());
        Ok(Tensor::record(
            out,
            "scatter_add",
            &[self, indices, src],
            move |g| {
                let g_src = if need_src {
                    // Only the positions of `ids` were read from `src`; a larger `src` gets
                    // zero gradient elsewhere.
                    let picked = g.gather(d, &ids)?;
                    if picked.shape() == &src_shape {
                        Some(picked)
                    } else {
                        let full = Tensor::zeros(src_shape, g.dtype(), g.device())?;
                        let window = Layout::new(
                            picked.shape().clone(),
                            full.shape().contiguous_strides(),
                            0,
                        );
                        full.storage_mut().copy_into(
                            &window,
                            &picked.storage(),
                            picked.layout(),
                        )?;
                        Some(full)
                    }
                } else {
                    None
                };
                Ok(vec![Some(g.clone()), None, g_src])
            },
        ))
    }

    /// Rows of this `[vocab, dim]` table at `ids` (any shape, i64 or u32): output `ids.shape + [dim]`.
    /// Backward is a scatter-add into the table's gradient.
    pub fn embedding(&self, ids: &Tensor) -> Result<Tensor> {
        if self.rank() != 2 {
            return Err(Error::shape(
                "embedding",
                "the table must be [vocab, dim]",
                &[self.shape(), ids.shape()],
            ));
        }
        self.check_indices(ids, "embedding")?;
        let rows = self
            .index_select(&ids.flatten_all()?, 0)
            .map_err(|e| match e {
                Error::IndexOutOfRange { index, size, .. } => Error::IndexOutOfRange {
                    op: "embedding",
                    index,
                    size,
                },
                other => other,
            })?;
        let mut dims = ids.dims().to_vec();
        dims.push(self.dims()[1]);
        rows.reshape(dims)
    }
}
