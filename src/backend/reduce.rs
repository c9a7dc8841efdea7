//! Reductions over a set of dimensions. The output has the input's rank with the reduced
//! dims set to 1 (keepdim); the op layer squeezes them when asked.

use super::{on_backend, Operand, Storage};
use crate::tensor::Layout;
use crate::Result;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Max,
    Min,
    /// Index of the first maximum, as i64 (over exactly one dim).
    ArgMax,
    /// Index of the first minimum, as i64 (over exactly one dim).
    ArgMin,
}

impl ReduceOp {
    pub fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Max => "max",
            ReduceOp::Min => "min",
            ReduceOp::ArgMax => "argmax",
            ReduceOp::ArgMin => "argmin",
        }
    }
}

pub trait ReduceBackend: Sized {
    /// `dims` sorted, unique, each < rank.
    fn reduce(&self, op: ReduceOp, layout: &Layout, dims: &[usize]) -> Result<Self>;
}

impl Storage {
    pub fn reduce(&self, op: ReduceOp, layout: &Layout, dims: &[usize]) -> Result<Storage> {
        on_backend!(self, |s| Ok(s.reduce(op, layout, dims)?.into_storage()))
    }
}
