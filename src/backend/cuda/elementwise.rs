//! Elementwise ops on the GPU (`kernels/elementwise.cu`): unary maps and their derivatives,
//! binary ops on broadcast views, comparisons and `where`, with the CPU backend's formulas and
//! NaN rules. Contiguous, 16-byte-aligned operands take the vectorized kernels.

use super::storage::{dtype_suffix, float_suffix};
use super::{kernel_args, launch_1d, CudaStorage, StridedArg};
use crate::backend::elementwise::{BinaryOp, CmpOp, ElementwiseBackend, UnaryOp};
use crate::tensor::{DType, Layout};
use crate::{Error, Result};

const FILE: &str = "elementwise.cu";
const BLOCK: u32 = 256;

/// The `op` code of elementwise.cu (`UnaryCode`) and the op's two scalar parameters.
fn unary_code(op: UnaryOp) -> (i32, f64, f64) {
    match op {
        UnaryOp::Neg => (0, 0.0, 0.0),
        UnaryOp::Exp => (1, 0.0, 0.0),
        UnaryOp::Log => (2, 0.0, 0.0),
        UnaryOp::Sqrt => (3, 0.0, 0.0),
        UnaryOp::Rsqrt => (4, 0.0, 0.0),
        UnaryOp::Abs => (5, 0.0, 0.0),
        UnaryOp::Relu => (6, 0.0, 0.0),
        UnaryOp::GeluErf => (7, 0.0, 0.0),
        UnaryOp::GeluTanh => (8, 0.0, 0.0),
        UnaryOp::Silu => (9, 0.0, 0.0),
        UnaryOp::Sigmoid => (10, 0.0, 0.0),
        UnaryOp::Tanh => (11, 0.0, 0.0),
        UnaryOp::Sqr => (12, 0.0, 0.0),
        UnaryOp::Recip => (13, 0.0, 0.0),
        UnaryOp::Powf(e) => (14, e, 0.0),
        UnaryOp::Clamp { min, max } => (15, min, max),
        UnaryOp::Affine { mul, add } => (16, mul, add),
    }
}

fn binary_code(op: BinaryOp) -> i32 {
    match op {
        BinaryOp::Add => 0,
        BinaryOp::Sub => 1,
        BinaryOp::Mul => 2,
        BinaryOp::Div => 3,
        BinaryOp::Maximum => 4,
        BinaryOp::Minimum => 5,
    }
}

fn cmp_code(op: CmpOp) -> i32 {
    match op {
        CmpOp::Eq => 0,
        CmpOp::Ne => 1,
        CmpOp::Lt => 2,
        CmpOp::Le => 3,
        CmpOp::Gt => 4,
        CmpOp::Ge => 5,
    }
}

/// The device address of a contiguous view's first element when it is 16-byte aligned.
fn aligned_start(s: &CudaStorage, layout: &Layout) -> Option<u64> {
    let (start, _) = layout.contiguous_range()?;
    let p = s.ptr_at(start);
    p.is_multiple_of(16).then_some(p)
}

fn check_same_shape(op: &'static str, a: &Layout, b: &Layout) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(Error::ShapeMismatch {
            op,
            lhs: a.shape().clone(),
            rhs: b.shape().clone(),
        });
    }
    Ok(())
}

/// Dtypes `cmp` and `where` take (as on the CPU).
fn cmp_suffix(op: &'static str, d: DType) -> Result<&'static str> {
    match d {
        DType::F32 | DType::F64 | DType::I64 | DType::U32 | DType::U8 => Ok(dtype_suffix(d)),
        _ => Err(Error::UnsupportedDType {
            op,
            dtype: d,
            expected: "f32, f64, i64, u32 or u8",
        }),
    }
}

impl ElementwiseBackend for CudaStorage {
    fn unary(&self, op: UnaryOp, layout: &Layout) -> Result<Self> {
        let sfx = float_suffix(op.name(), self.dtype)?;
        self.check_view(op.name(), layout)?;
        let (code, a, b) = unary_code(op);
        let n = layout.elem_count();
        let out = CudaStorage::alloc(self.dev(), n, self.dtype)?;
        let cfg = launch_1d(n, BLOCK);
        match aligned_start(self, layout) {
            Some(x) => self.dev().launch(
                FILE,
                &format!("unary_vec_{sfx}"),
                cfg,
                kernel_args![out.ptr(), x, n as u64, code, a, b],
            )?,
            None => self.dev().launch(
                FILE,
                &format!("unary_{sfx}"),
                cfg,
                kernel_args![
                    out.ptr(),
                    self.ptr(),
                    StridedArg::new(layout)?,
                    n as u64,
                    code,
                    a,
                    b
                ],
            )?,
        }
        Ok(out)
    }

    fn unary_backward(
        &self,
        op: UnaryOp,
        x_layout: &Layout,
        dy: &Self,
        dy_layout: &Layout,
    ) -> Result<Self> {
        let sfx = float_suffix(op.name(), self.dtype)?;
        check_same_shape(op.name(), x_layout, dy_layout)?;
        self.check_view(op.name(), x_layout)?;
        dy.check_view(op.name(), dy_layout)?;
        let (code, a, b) = unary_code(op);
        let n = x_layout.elem_count();
        let out = CudaStorage::alloc(self.dev(), n, self.dtype)?;
        self.dev().launch(
            FILE,
            &format!("unary_bwd_{sfx}"),
            launch_1d(n, BLOCK),
            kernel_args![
                out.ptr(),
                self.ptr(),
                StridedArg::new(x_layout)?,
                dy.ptr(),
                StridedArg::new(dy_layout)?,
                n as u64,
                code,
                a,
                b
            ],
        )?;
        Ok(out)
    }

    fn binary(
        &self,
        op: BinaryOp,
        lhs_layout: &Layout,
        rhs: &Self,
        rhs_layout: &Layout,
    ) -> Result<Self> {
        let sfx = float_suffix(op.name(), self.dtype)?;
        check_same_shape(op.name(), lhs_layout, rhs_layout)?;
        self.check_view(op.name(), lhs_layout)?;
        rhs.check_view(op.name(), rhs_layout)?;
        let n = lhs_layout.elem_count();
        let out = CudaStorage::alloc(self.dev(), n, self.dtype)?;
        let cfg = launch_1d(n, BLOCK);
        let code = binary_code(op);
        match (
            aligned_start(self, lhs_layout),
            aligned_start(rhs, rhs_layout),
        ) {
            (Some(l), Some(r)) => self.dev().launch(
                FILE,
                &format!("binary_vec_{sfx}"),
                cfg,
                kernel_args![out.ptr(), l, r, n as u64, code],
            )?,
            _ => self.dev().launch(
                FILE,
                &format!("binary_{sfx}"),
                cfg,
                kernel_args![
                    out.ptr(),
                    self.ptr(),
                    StridedArg::new(lhs_layout)?,
                    rhs.ptr(),
                    StridedArg::new(rhs_layout)?,
                    n as u64,
                    code
                ],
            )?,
        }
        Ok(out)
    }

    fn cmp(&self, op: CmpOp, lhs_layout: &Layout, rhs: &Self, rhs_layout: &Layout) -> Result<Self> {
        let sfx = cmp_suffix("cmp", self.dtype)?;
        check_same_shape("cmp", lhs_layout, rhs_layout)?;
        self.check_view("cmp", lhs_layout)?;
        rhs.check_view("cmp", rhs_layout)?;
        let n = lhs_layout.elem_count();
        let out = CudaStorage::alloc(self.dev(), n, DType::U8)?;
        self.dev().launch(
            FILE,
            &format!("cmp_{sfx}"),
            launch_1d(n, BLOCK),
            kernel_args![
                out.ptr(),
                self.ptr(),
                StridedArg::new(lhs_layout)?,
                rhs.ptr(),
                StridedArg::new(rhs_layout)?,
                n as u64,
                cmp_code(op)
            ],
        )?;
        Ok(out)
    }

    fn where_cond(
        &self,
        layout: &Layout,
        on_true: &Self,
        t_layout: &Layout,
        on_false: &Self,
        f_layout: &Layout,
    ) -> Result<Self> {
        if self.dtype != DType::U8 {
            return Err(Error::DTypeMismatch {
                op: "where_cond (condition must be u8)",
                lhs: self.dtype,
                rhs: DType::U8,
            });
        }
        let sfx = cmp_suffix("where_cond", on_true.dtype)?;
        check_same_shape("where_cond", layout, t_layout)?;
        check_same_shape("where_cond", layout, f_layout)?;
        self.check_view("where_cond", layout)?;
        on_true.check_view("where_cond", t_layout)?;
        on_false.check_view("where_cond", f_layout)?;
        let n = layout.elem_count();
        let out = CudaStorage::alloc(self.dev(), n, on_true.dtype)?;
        self.dev().launch(
            FILE,
            &format!("where_{sfx}"),
            launch_1d(n, BLOCK),
            kernel_args![
                out.ptr(),
                self.ptr(),
                StridedArg::new(layout)?,
                on_true.ptr(),
                StridedArg::new(t_layout)?,
                on_false.ptr(),
                StridedArg::new(f_layout)?,
                n as u64
            ],
        )?;
        Ok(out)
    }
}
