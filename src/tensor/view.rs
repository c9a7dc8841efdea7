//! View ops: a new layout over the same storage, no copy (reshape copies only when the
//! strides cannot express the new shape, as `torch.reshape` does). Each records its backward.

use super::{dim_for_insert, DType, Dim, Layout, Shape, Tensor};
use crate::backend::Storage;
use crate::{Error, Result};

impl Tensor {
    /// A view with a new shape of the same element count; copies only if the strides require it.
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if shape.elem_count() != self.elem_count() {
            return Err(Error::ShapeMismatch {
                op: "reshape",
                lhs: self.shape().clone(),
                rhs: shape,
            });
        }
        if &shape == self.shape() {
            return Ok(self.clone());
        }
        let out = match self.layout().reshape(&shape) {
            Some(l) => self.with_layout(l),
            None => self
                .contiguous()?
                .detach()
                .with_layout(Layout::contiguous(shape.clone())),
        };
        let in_shape = self.shape().clone();
        Ok(Tensor::record(out, "reshape", &[self], move |g| {
            Ok(vec![Some(g.reshape(in_shape)?)])
        }))
    }

    /// Merges dims `start..=end` into one.
    pub fn flatten<D1: Dim, D2: Dim>(&self, start: D1, end: D2) -> Result<Tensor> {
        if self.rank() == 0 {
            return self.reshape(1);
        }
        let (s, e) = (
            start.to_index(self.shape(), "flatten")?,
            end.to_index(self.shape(), "flatten")?,
        );
        if s > e {
            return Err(Error::shape(
                "flatten",
                format!("start dim {s} is after end dim {e}"),
                &[self.shape()],
            ));
        }
        let d = self.dims();
        let mut dims = d[..s].to_vec();
        dims.push(d[s..=e].iter().product());
        dims.extend_from_slice(&d[e + 1..]);
        self.reshape(dims)
    }
    pub fn flatten_all(&self) -> Result<Tensor> {
        self.reshape(self.elem_count())
    }

    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        let out = self.with_layout(self.layout().permute(perm)?);
        let mut inv = vec![0; perm.len()];
        for (i, &p) in perm.iter().enumerate() {
            inv[p] = i;
        }
        Ok(Tensor::record(out, "permute", &[self], move |g| {
            Ok(vec![Some(g.permute(&inv)?)])
        }))
    }

    pub fn transpose<D1: Dim, D2: Dim>(&self, d0: D1, d1: D2) -> Result<Tensor> {
        let (a, b) = (
            d0.to_index(self.shape(), "transpose")?,
            d1.to_index(self.shape(), "transpose")?,
        );
        if a == b {
            return Ok(self.clone());
        }
        let out = self.with_layout(self.layout().transpose(a, b));
        Ok(Tensor::record(out, "transpose", &[self], move |g| {
            Ok(vec![Some(g.transpose(a, b)?)])
        }))
    }

    /// Swaps the last two dims (a matrix transpose, batched).
    pub fn t(&self) -> Result<Tensor> {
        if self.rank() < 2 {
            return Err(Error::shape("t", "needs at least 2 dims", &[self.shape()]));
        }
        self.transpose(-2, -1)
    }

    /// `len` entries of dim `dim` starting at `start` (a view).
    pub fn narrow<D: Dim>(&self, dim: D, start: usize, len: usize) -> Result<Tensor> {
        let d = dim.to_index(self.shape(), "narrow")?;
        let out = self.with_layout(self.layout().narrow(d, start, len)?);
        let in_shape = self.shape().clone();
        Ok(Tensor::record(out, "narrow", &[self], move |g| {
            // A window over the whole dim (a split into one part, say) is the identity.
            if len == in_shape.dims()[d] {
                return Ok(vec![Some(g.clone())]);
            }
            // The gradient is zero outside the window: write g into a zero tensor's window.
            let full = Tensor::zeros(in_shape.clone(), g.dtype(), g.device())?;
            let window = Layout::contiguous(in_shape).narrow(d, start, len)?;
            full.storage_mut()
                .copy_into(&window, &g.storage(), g.layout())?;
            Ok(vec![Some(full)])
        }))
    }

    /// Python-style slice `start..end` of one dim.
    pub fn slice<D: Dim>(&self, dim: D, start: usize, end: usize) -> Result<Tensor> {
        if end < start {
            return Err(Error::shape(
                "slice",
                format!("end {end} is before start {start}"),
                &[self.shape()],
            ));
        }
        self.narrow(dim, start, end - start)
    }

    /// Splits `dim` into pieces of `size` (the last may be smaller), as views.
    pub fn split<D: Dim>(&self, size: usize, dim: D) -> Result<Vec<Tensor>> {
        let d = dim.to_index(self.shape(), "split")?;
        if size == 0 {
            return Err(Error::shape(
                "split",
                "split size must be positive",
                &[self.shape()],
            ));
        }
        let n = self.dims()[d];
        (0..n)
            .step_by(size)
            .map(|s| self.narrow(d, s, size.min(n - s)))
            .collect()
    }

    /// Splits `dim` into `chunks` nearly equal views (as `torch.chunk`).
    pub fn chunk<D: Dim>(&self, chunks: usize, dim: D) -> Result<Vec<Tensor>> {
        let d = dim.to_index(self.shape(), "chunk")?;
        if chunks == 0 {
            return Err(Error::shape(
                "chunk",
                "number of chunks must be positive",
                &[self.shape()],
            ));
        }
        let n = self.dims()[d];
        self.split(n.div_ceil(chunks).max(1), d)
    }

    /// Broadcasts to `shape` (NumPy rules) as a view with zero strides.
    pub fn broadcast_as(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if &shape == self.shape() {
            return Ok(self.clone());
        }
        let out = self.with_layout(self.layout().broadcast_as(&shape)?);
        let in_shape = self.shape().clone();
        Ok(Tensor::record(out, "broadcast_as", &[self], move |g| {
            Ok(vec![Some(g.sum_to_shape(&in_shape)?)])
        }))
    }
    /// Alias of [`broadcast_as`](Self::broadcast_as), PyTorch's name.
    pub fn expand(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        self.broadcast_as(shape)
    }

    /// Inserts a size-1 dim at `dim` (which may equal the rank).
    pub fn unsqueeze<D: Dim>(&self, dim: D) -> Result<Tensor> {
        let d = dim_for_insert(dim, self.shape(), "unsqueeze")?;
        let out = self.with_layout(self.layout().unsqueeze(d));
        Ok(Tensor::record(out, "unsqueeze", &[self], move |g| {
            Ok(vec![Some(g.squeeze(d)?)])
        }))
    }

    /// Removes dim `dim`, which must have size 1.
    pub fn squeeze<D: Dim>(&self, dim: D) -> Result<Tensor> {
        let d = dim.to_index(self.shape(), "squeeze")?;
        if self.dims()[d] != 1 {
            return Err(Error::shape(
                "squeeze",
                format!("dim {d} has size {}, not 1", self.dims()[d]),
                &[self.shape()],
            ));
        }
        let out = self.with_layout(self.layout().squeeze(d));
        Ok(Tensor::record(out, "squeeze", &[self], move |g| {
            Ok(vec![Some(g.unsqueeze(d)?)])
        }))
    }

    /// This tensor if already contiguous, else a contiguous copy (recorded).
    pub fn contiguous(&self) -> Result<Tensor> {
        if self.is_contiguous()
            && self.layout().offset() == 0
            && self.storage().len() == self.elem_count()
        {
            return Ok(self.clone());
        }
        self.contiguous_copy()
    }

    /// Always a fresh contiguous copy (recorded; the gradient passes straight through).
    pub fn contiguous_copy(&self) -> Result<Tensor> {
        let storage: Storage = self.storage().copy_strided(self.layout())?;
        let out = Tensor::from_storage(storage, self.shape().clone());
        Ok(Tensor::record(out, "contiguous", &[self], move |g| {
            Ok(vec![Some(g.clone())])
        }))
    }

    /// Converts the element type (a copy). Gradients flow back through float-to-float casts.
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        let storage = self.storage().to_dtype(self.layout(), dtype)?;
        let out = Tensor::from_storage(storage, self.shape().clone());
        let src = self.dtype();
        if !dtype.is_float() {
            // A cast to an integer type is not differentiable: the result is cut from the graph.
            return Ok(out);
        }
        Ok(Tensor::record(out, "to_dtype", &[self], move |g| {
            Ok(vec![Some(g.to_dtype(src)?)])
        }))
    }
}
