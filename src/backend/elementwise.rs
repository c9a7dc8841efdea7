//! Elementwise primitives: unary maps (with their derivative, fused into one pass for the
//! backward), binary ops on operands already broadcast to one shape, comparisons (to u8 masks)
//! and `where`.

use super::{on_backend, operand, same_device, same_dtype, Operand, Storage};
use crate::tensor::Layout;
use crate::Result;

/// A pointwise map `y = f(x)`; the backward primitive computes `dx = dy * f'(x)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Sqrt,
    Rsqrt,
    Abs,
    Relu,
    /// 0.5 x (1 + erf(x / sqrt 2))
    GeluErf,
    /// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    GeluTanh,
    Silu,
    Sigmoid,
    Tanh,
    Sqr,
    Recip,
    Powf(f64),
    /// Gradient 1 on the closed interval [min, max], 0 outside (PyTorch's convention).
    Clamp {
        min: f64,
        max: f64,
    },
    /// mul * x + add
    Affine {
        mul: f64,
        add: f64,
    },
}

impl UnaryOp {
    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Rsqrt => "rsqrt",
            UnaryOp::Abs => "abs",
            UnaryOp::Relu => "relu",
            UnaryOp::GeluErf => "gelu",
            UnaryOp::GeluTanh => "gelu_tanh",
            UnaryOp::Silu => "silu",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Sqr => "sqr",
            UnaryOp::Recip => "recip",
            UnaryOp::Powf(_) => "powf",
            UnaryOp::Clamp { .. } => "clamp",
            UnaryOp::Affine { .. } => "affine",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Maximum,
    Minimum,
}

impl BinaryOp {
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Maximum => "maximum",
            BinaryOp::Minimum => "minimum",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

pub trait ElementwiseBackend: Sized {
    fn unary(&self, op: UnaryOp, layout: &Layout) -> Result<Self>;
    /// `dy * f'(x)`, with `x` and `dy` of the same shape.
    fn unary_backward(
        &self,
        op: UnaryOp,
        x_layout: &Layout,
        dy: &Self,
        dy_layout: &Layout,
    ) -> Result<Self>;
    /// Both layouts already broadcast to the output shape.
    fn binary(
        &self,
        op: BinaryOp,
        lhs_layout: &Layout,
        rhs: &Self,
        rhs_layout: &Layout,
    ) -> Result<Self>;
    /// A u8 mask (1 where the comparison holds); layouts already broadcast.
    fn cmp(&self, op: CmpOp, lhs_layout: &Layout, rhs: &Self, rhs_layout: &Layout) -> Result<Self>;
    /// `self` is a u8 mask; picks `on_true` where nonzero. All layouts already broadcast.
    fn where_cond(
        &self,
        layout: &Layout,
        on_true: &Self,
        t_layout: &Layout,
        on_false: &Self,
        f_layout: &Layout,
    ) -> Result<Self>;
}

impl Storage {
    pub fn unary(&self, op: UnaryOp, layout: &Layout) -> Result<Storage> {
        on_backend!(self, |x| Ok(x.unary(op, layout)?.into_storage()))
    }
    pub fn unary_backward(
        &self,
        op: UnaryOp,
        x_layout: &Layout,
        dy: &Storage,
        dy_layout: &Layout,
    ) -> Result<Storage> {
        same_device(op.name(), self, dy)?;
        same_dtype(op.name(), self.dtype(), dy.dtype())?;
        let d = self.device();
        on_backend!(self, |x| Ok(x
            .unary_backward(op, x_layout, operand(op.name(), d, dy)?, dy_layout)?
            .into_storage()))
    }
    pub fn binary(
        &self,
        op: BinaryOp,
        lhs_layout: &Layout,
        rhs: &Storage,
        rhs_layout: &Layout,
    ) -> Result<Storage> {
        same_device(op.name(), self, rhs)?;
        same_dtype(op.name(), self.dtype(), rhs.dtype())?;
        let d = self.device();
        on_backend!(self, |a| Ok(a
            .binary(op, lhs_layout, operand(op.name(), d, rhs)?, rhs_layout)?
            .into_storage()))
    }
    pub fn cmp(
        &self,
        op: CmpOp,
        lhs_layout: &Layout,
        rhs: &Storage,
        rhs_layout: &Layout,
    ) -> Result<Storage> {
        same_device("cmp", self, rhs)?;
        same_dtype("cmp", self.dtype(), rhs.dtype())?;
        let d = self.device();
        on_backend!(self, |a| Ok(a
            .cmp(op, lhs_layout, operand("cmp", d, rhs)?, rhs_layout)?
            .into_storage()))
    }
    pub fn where_cond(
        &self,
        layout: &Layout,
        on_true: &Storage,
        t_layout: &Layout,
        on_false: &Storage,
        f_layout: &Layout,
    ) -> Result<Storage> {
        same_device("where_cond", self, on_true)?;
        same_device("where_cond", on_true, on_false)?;
        same_dtype("where_cond", on_true.dtype(), on_false.dtype())?;
        let d = self.device();
        on_backend!(self, |c| Ok(c
            .where_cond(
                layout,
                operand("where_cond", d, on_true)?,
                t_layout,
                operand("where_cond", d, on_false)?,
                f_layout,
            )?
            .into_storage()))
    }
}
