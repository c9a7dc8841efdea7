//! Fused optimizer steps on the GPU (`kernels/optim.cu`): one kernel per parameter updates
//! it and its state in place, with the CPU backend's formulas (the scalar factors computed
//! once in f64 and cast to the parameter's dtype, as there).

use super::storage::float_suffix;
use super::{kernel_args, launch_1d, CudaStorage, KernelArgs, StridedArg};
use crate::backend::optim::{AdamStep, OptimBackend, SgdStep};
use crate::tensor::{DType, Layout};
use crate::{Error, Result};

const FILE: &str = "optim.cu";
const BLOCK: u32 = 256;

fn check_len(op: &'static str, what: &str, len: usize, n: usize) -> Result<()> {
    if len != n {
        return Err(Error::msg(format!(
            "{op}: {what} holds {len} elements, the parameter {n}"
        )));
    }
    Ok(())
}

fn check_dtype(op: &'static str, p: DType, other: DType) -> Result<()> {
    if p != other {
        return Err(Error::DTypeMismatch {
            op,
            lhs: p,
            rhs: other,
        });
    }
    Ok(())
}

/// An in-place update through a view that repeats an element (a broadcast, stride 0) would
/// race on the device; the optimizers never build one, so it is refused.
fn check_writable(op: &'static str, layout: &Layout) -> Result<()> {
    if layout
        .dims()
        .iter()
        .zip(layout.strides())
        .any(|(&d, &s)| d > 1 && s == 0)
    {
        return Err(Error::shape(
            op,
            "cannot update a broadcast view in place",
            &[layout.shape()],
        ));
    }
    Ok(())
}

/// Appends `v` as the parameter's dtype (the kernel's `T`).
fn push_t(args: KernelArgs, dtype: DType, v: f64) -> KernelArgs {
    if dtype == DType::F32 {
        args.arg(v as f32)
    } else {
        args.arg(v)
    }
}

impl OptimBackend for CudaStorage {
    fn adam_step(
        &mut self,
        layout: &Layout,
        grad: &Self,
        grad_layout: &Layout,
        m: &mut Self,
        v: &mut Self,
        h: &AdamStep,
    ) -> Result<()> {
        const OP: &str = "adam_step";
        let sfx = float_suffix(OP, self.dtype)?;
        let n = layout.elem_count();
        self.check_view(OP, layout)?;
        grad.check_view(OP, grad_layout)?;
        check_writable(OP, layout)?;
        check_len(OP, "exp_avg", m.len, n)?;
        check_len(OP, "exp_avg_sq", v.len, n)?;
        for d in [grad.dtype, m.dtype, v.dtype] {
            check_dtype(OP, self.dtype, d)?;
        }
        let t = h.step as f64;
        let bc1 = 1.0 - h.beta1.powf(t);
        let bc2_sqrt = (1.0 - h.beta2.powf(t)).sqrt();
        let decay_mode: i32 = match (h.weight_decay != 0.0, h.decoupled) {
            (false, _) => 0,
            (true, true) => 1,
            (true, false) => 2,
        };
        let mut args = kernel_args![
            self.ptr(),
            StridedArg::new(layout)?,
            grad.ptr(),
            StridedArg::new(grad_layout)?,
            m.ptr(),
            v.ptr(),
            n as u64
        ];
        for s in [
            h.lr / bc1,
            1.0 / bc2_sqrt,
            h.beta1,
            h.beta2,
            1.0 - h.beta1,
            1.0 - h.beta2,
            h.eps,
            h.weight_decay,
            1.0 - h.lr * h.weight_decay,
        ] {
            args = push_t(args, self.dtype, s);
        }
        let args = args.arg(decay_mode);
        self.dev()
            .launch(FILE, &format!("adam_{sfx}"), launch_1d(n, BLOCK), args)
    }

    fn ema_step(
        &mut self,
        layout: &Layout,
        param: &Self,
        param_layout: &Layout,
        decay: f64,
    ) -> Result<()> {
        const OP: &str = "ema_step";
        let sfx = float_suffix(OP, self.dtype)?;
        let n = layout.elem_count();
        self.check_view(OP, layout)?;
        param.check_view(OP, param_layout)?;
        check_writable(OP, layout)?;
        check_dtype(OP, self.dtype, param.dtype)?;
        let mut args = kernel_args![
            self.ptr(),
            StridedArg::new(layout)?,
            param.ptr(),
            StridedArg::new(param_layout)?,
            n as u64
        ];
        for s in [decay, 1.0 - decay] {
            args = push_t(args, self.dtype, s);
        }
        self.dev()
            .launch(FILE, &format!("ema_{sfx}"), launch_1d(n, BLOCK), args)
    }

    fn sgd_step(
        &mut self,
        layout: &Layout,
        grad: &Self,
        grad_layout: &Layout,
        momentum_buf: Option<&mut Self>,
        h: &SgdStep,
    ) -> Result<()> {
        const OP: &str = "sgd_step";
        let sfx = float_suffix(OP, self.dtype)?;
        let n = layout.elem_count();
        self.check_view(OP, layout)?;
        grad.check_view(OP, grad_layout)?;
        check_writable(OP, layout)?;
        check_dtype(OP, self.dtype, grad.dtype)?;
        let buf_ptr = match &momentum_buf {
            Some(b) => {
                check_len(OP, "momentum_buffer", b.len, n)?;
                check_dtype(OP, self.dtype, b.dtype)?;
                b.ptr()
            }
            None => 0,
        };
        let mut args = kernel_args![
            self.ptr(),
            StridedArg::new(layout)?,
            grad.ptr(),
            StridedArg::new(grad_layout)?,
            buf_ptr,
            n as u64
        ];
        for s in [h.lr, h.weight_decay, h.momentum, 1.0 - h.dampening] {
            args = push_t(args, self.dtype, s);
        }
        let args = args
            .arg((h.weight_decay != 0.0) as i32)
            .arg(momentum_buf.is_some() as i32)
            .arg(h.first_step as i32)
            .arg(h.nesterov as i32);
        self.dev()
            .launch(FILE, &format!("sgd_{sfx}"), launch_1d(n, BLOCK), args)
    }
}
