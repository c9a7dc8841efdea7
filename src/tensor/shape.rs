//! Run-time shapes and dimension arguments (`usize`, or negative `i32`/`isize` counted from the end).

use crate::{Error, Result};

#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(Vec<usize>);

impl Shape {
    pub fn new(dims: Vec<usize>) -> Self {
        Shape(dims)
    }
    pub fn scalar() -> Self {
        Shape(vec![])
    }
    pub fn dims(&self) -> &[usize] {
        &self.0
    }
    pub fn rank(&self) -> usize {
        self.0.len()
    }
    pub fn elem_count(&self) -> usize {
        self.0.iter().product()
    }
    /// Row-major strides of a contiguous tensor of this shape.
    pub fn contiguous_strides(&self) -> Vec<usize> {
        let mut strides = vec![0; self.0.len()];
        let mut acc = 1;
        for i in (0..self.0.len()).rev() {
            strides[i] = acc;
            acc *= self.0[i];
        }
        strides
    }
    /// The shape two operands broadcast to, NumPy rules; the error names both shapes.
    pub fn broadcast_with(&self, rhs: &Shape, op: &'static str) -> Result<Shape> {
        let (l, r) = (self.dims(), rhs.dims());
        let rank = l.len().max(r.len());
        let mut out = vec![0; rank];
        for i in 0..rank {
            let a = if i < rank - l.len() {
                1
            } else {
                l[i - (rank - l.len())]
            };
            let b = if i < rank - r.len() {
                1
            } else {
                r[i - (rank - r.len())]
            };
            out[i] = if a == b || b == 1 {
                a
            } else if a == 1 {
                b
            } else {
                return Err(Error::ShapeMismatch {
                    op,
                    lhs: self.clone(),
                    rhs: rhs.clone(),
                });
            };
        }
        Ok(Shape(out))
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}
impl std::fmt::Debug for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}
impl From<Vec<usize>> for Shape {
    fn from(v: Vec<usize>) -> Self {
        Shape(v)
    }
}
impl From<&[usize]> for Shape {
    fn from(v: &[usize]) -> Self {
        Shape(v.to_vec())
    }
}
impl<const N: usize> From<[usize; N]> for Shape {
    fn from(v: [usize; N]) -> Self {
        Shape(v.to_vec())
    }
}
impl From<&Shape> for Shape {
    fn from(s: &Shape) -> Self {
        s.clone()
    }
}
impl From<()> for Shape {
    fn from(_: ()) -> Self {
        Shape(vec![])
    }
}
impl From<usize> for Shape {
    fn from(d: usize) -> Self {
        Shape(vec![d])
    }
}
impl From<(usize, usize)> for Shape {
    fn from(d: (usize, usize)) -> Self {
        Shape(vec![d.0, d.1])
    }
}
impl From<(usize, usize, usize)> for Shape {
    fn from(d: (usize, usize, usize)) -> Self {
        Shape(vec![d.0, d.1, d.2])
    }
}
impl From<(usize, usize, usize, usize)> for Shape {
    fn from(d: (usize, usize, usize, usize)) -> Self {
        Shape(vec![d.0, d.1, d.2, d.3])
    }
}

/// A dimension argument: `usize` counts from the front, a negative `i32`/`isize` from the back
/// (`-1` is the last dimension), as in PyTorch.
pub trait Dim: Copy {
    fn to_index(self, shape: &Shape, op: &'static str) -> Result<usize>;
}

impl Dim for usize {
    fn to_index(self, shape: &Shape, op: &'static str) -> Result<usize> {
        if self < shape.rank() {
            Ok(self)
        } else {
            Err(Error::DimOutOfRange {
                op,
                dim: self as isize,
                shape: shape.clone(),
            })
        }
    }
}
impl Dim for isize {
    fn to_index(self, shape: &Shape, op: &'static str) -> Result<usize> {
        let r = shape.rank() as isize;
        let d = if self < 0 { self + r } else { self };
        if d >= 0 && d < r {
            Ok(d as usize)
        } else {
            Err(Error::DimOutOfRange {
                op,
                dim: self,
                shape: shape.clone(),
            })
        }
    }
}
impl Dim for i32 {
    fn to_index(self, shape: &Shape, op: &'static str) -> Result<usize> {
        (self as isize).to_index(shape, op)
    }
}

/// A dimension for ops that add one (`unsqueeze`, `stack`): may equal the rank.
pub(crate) fn dim_for_insert<D: Dim>(d: D, shape: &Shape, op: &'static str) -> Result<usize> {
    let mut dims = shape.dims().to_vec();
    dims.push(1);
    d.to_index(&Shape::new(dims), op)
}
