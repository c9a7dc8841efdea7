//! Reductions over chosen dims, with or without keepdim: sum, mean, max, min, argmax, argmin,
//! var; and `sum_to_shape`, the reduction that undoes broadcasting in backward rules.

use crate::backend::elementwise::CmpOp;
use crate::backend::reduce::ReduceOp;
use crate::tensor::{Dim, Shape, Tensor};
use crate::{Error, Result};

impl Tensor {
    fn resolve_dims<D: Dim>(&self, dims: &[D], op: &'static str) -> Result<Vec<usize>> {
        let mut ds = dims
            .iter()
            .map(|d| d.to_index(self.shape(), op))
            .collect::<Result<Vec<_>>>()?;
        ds.sort_unstable();
        ds.dedup();
        Ok(ds)
    }

    fn keepdim_shape(&self, dims: &[usize]) -> Shape {
        Shape::new(
            self.dims()
                .iter()
                .enumerate()
                .map(|(i, &d)| if dims.contains(&i) { 1 } else { d })
                .collect(),
        )
    }

    fn squeeze_dims(t: Tensor, dims: &[usize]) -> Result<Tensor> {
        let shape: Vec<usize> = t
            .dims()
            .iter()
            .enumerate()
            .filter(|(i, _)| !dims.contains(i))
            .map(|(_, &d)| d)
            .collect();
        t.reshape(shape)
    }

    /// The raw primitive, keepdim shape, no graph.
    fn reduce_raw(&self, op: ReduceOp, dims: &[usize]) -> Result<Tensor> {
        self.check_float(op.name())?;
        let storage = self.storage().reduce(op, self.layout(), dims)?;
        Ok(Tensor::from_storage(storage, self.keepdim_shape(dims)))
    }

    /// Sum over `dims`; reduced dims are kept with size 1 when `keepdim`.
    pub fn sum_dims<D: Dim>(&self, dims: &[D], keepdim: bool) -> Result<Tensor> {
        let dims = self.resolve_dims(dims, "sum")?;
        let out = self.reduce_raw(ReduceOp::Sum, &dims)?;
        let in_shape = self.shape().clone();
        let out = Tensor::record(out, "sum", &[self], move |g| {
            Ok(vec![Some(g.broadcast_as(in_shape)?.contiguous()?)])
        });
        if keepdim {
            Ok(out)
        } else {
            Self::squeeze_dims(out, &dims)
        }
    }
    pub fn sum<D: Dim>(&self, dim: D) -> Result<Tensor> {
        self.sum_dims(&[dim], false)
    }
    pub fn sum_keepdim<D: Dim>(&self, dim: D) -> Result<Tensor> {
        self.sum_dims(&[dim], true)
    }
    /// Sum of all elements, as a rank-0 tensor.
    pub fn sum_all(&self) -> Result<Tensor> {
        let dims: Vec<usize> = (0..self.rank()).collect();
        if dims.is_empty() {
            return Ok(self.clone());
        }
        self.sum_dims(&dims, false)
    }

    pub fn mean_dims<D: Dim>(&self, dims: &[D], keepdim: bool) -> Result<Tensor> {
        let ds = self.resolve_dims(dims, "mean")?;
        let n: usize = ds.iter().map(|&d| self.dims()[d]).product();
        self.sum_dims(&ds, keepdim)?.affine(1.0 / n as f64, 0.0)
    }
    pub fn mean<D: Dim>(&self, dim: D) -> Result<Tensor> {
        self.mean_dims(&[dim], false)
    }
    pub fn mean_keepdim<D: Dim>(&self, dim: D) -> Result<Tensor> {
        self.mean_dims(&[dim], true)
    }
    pub fn mean_all(&self) -> Result<Tensor> {
        self.sum_all()?
            .affine(1.0 / self.elem_count().max(1) as f64, 0.0)
    }

    /// Variance over `dims` with `correction` subtracted from the count (1 = unbiased, PyTorch's default).
    pub fn var_dims<D: Dim>(&self, dims: &[D], correction: usize, keepdim: bool) -> Result<Tensor> {
        let ds = self.resolve_dims(dims, "var")?;
        let n: usize = ds.iter().map(|&d| self.dims()[d]).product();
        if n <= correction {
            return Err(Error::shape(
                "var",
                format!("{n} elements with correction {correction}"),
                &[self.shape()],
            ));
        }
        let centered = self.sub(&self.mean_dims(&ds, true)?)?;
        centered
            .sqr()?
            .sum_dims(&ds, keepdim)?
            .affine(1.0 / (n - correction) as f64, 0.0)
    }
    /// Unbiased variance over one dim.
    pub fn var<D: Dim>(&self, dim: D) -> Result<Tensor> {
        self.var_dims(&[dim], 1, false)
    }
    pub fn var_keepdim<D: Dim>(&self, dim: D) -> Result<Tensor> {
        self.var_dims(&[dim], 1, true)
    }

    /// Max or min; the gradient is shared evenly among tied extremes (like `torch.amax`).
    fn extreme<D: Dim>(&self, dims: &[D], keepdim: bool, op: ReduceOp) -> Result<Tensor> {
        let ds = self.resolve_dims(dims, op.name())?;
        let out = self.reduce_raw(op, &ds)?;
        let out = if crate::autograd::is_recording(&[self]) {
            let (x, m) = (self.detach(), out.detach());
            let dsc = ds.clone();
            Tensor::record(out, op.name(), &[self], move |g| {
                let hit = x.cmp(&m, CmpOp::Eq)?.to_dtype(x.dtype())?;
                let count = hit.sum_dims(&dsc, true)?;
                Ok(vec![Some(hit.mul(&g.div(&count)?)?)])
            })
        } else {
            out
        };
        if keepdim {
            Ok(out)
        } else {
            Self::squeeze_dims(out, &ds)
        }
    }
    pub fn max_dims<D: Dim>(&self, dims: &[D], keepdim: bool) -> Result<Tensor> {
        self.extreme(dims, keepdim, ReduceOp::Max)
    }
    pub fn max<D: Dim>(&self, dim: D) -> Result<Tensor> {
        self.extreme(&[dim], false, ReduceOp::Max)
    }
    pub fn max_keepdim<D: Dim>(&self, dim: D) -> Result<Tensor> {
        self.extreme(&[dim], true, ReduceOp::Max)
    }
    pub fn min_dims<D: Dim>(&self, dims: &[D], keepdim: bool) -> Result<Tensor> {
        self.extreme(dims, keepdim, ReduceOp::Min)
    }
    pub fn min<D: Dim>(&self, dim: D) -> Result<Tensor> {
        self.extreme(&[dim], false, ReduceOp::Min)
    }
    pub fn min_keepdim<D: Dim>(&self, dim: D) -> Result<Tensor> {
        self.extreme(&[dim], true, ReduceOp::Min)
    }
    pub fn max_all(&self) -> Result<Tensor> {
        self.flatten_all()?.max(0)
    }
    pub fn min_all(&self) -> Result<Tensor> {
        self.flatten_all()?.min(0)
    }

    /// Index (i64) of the first maximum along `dim`.
    pub fn argmax<D: Dim>(&self, dim: D) -> Result<Tensor> {
        let d = dim.to_index(self.shape(), "argmax")?;
        Self::squeeze_dims(self.reduce_raw(ReduceOp::ArgMax, &[d])?, &[d])
    }
    pub fn argmax_keepdim<D: Dim>(&self, dim: D) -> Result<Tensor> {
        let d = dim.to_index(self.shape(), "argmax")?;
        self.reduce_raw(ReduceOp::ArgMax, &[d])
    }
    /// Index (i64) of the first minimum along `dim`.
    pub fn argmin<D: Dim>(&self, dim: D) -> Result<Tensor> {
        let d = dim.to_index(self.shape(), "argmin")?;
        Self::squeeze_dims(self.reduce_raw(ReduceOp::ArgMin, &[d])?, &[d])
    }

    /// Sums a broadcast gradient back to `shape` (the inverse of broadcasting to this tensor's shape).
    pub fn sum_to_shape(&self, shape: &Shape) -> Result<Tensor> {
        if self.shape() == shape {
            return Ok(self.clone());
        }
        let (r, tr) = (self.rank(), shape.rank());
        if tr > r {
            return Err(Error::ShapeMismatch {
                op: "sum_to_shape",
                lhs: self.shape().clone(),
                rhs: shape.clone(),
            });
        }
        let lead = r - tr;
        let mut dims: Vec<usize> = (0..lead).collect();
        for i in 0..tr {
            let (s, t) = (self.dims()[lead + i], shape.dims()[i]);
            if t == 1 && s != 1 {
                dims.push(lead + i);
            } else if t != s {
                return Err(Error::ShapeMismatch {
                    op: "sum_to_shape",
                    lhs: self.shape().clone(),
                    rhs: shape.clone(),
                });
            }
        }
        self.sum_dims(&dims, true)?.reshape(shape.clone())
    }
}
