//! CPU kernels for the fused optimizer updates and the weight EMA (see `backend/optim.rs`
//! for the math).
//! Each update is one Rayon-parallel pass over the parameter, its gradient and its state;
//! the scalar factors (bias corrections, decay) are computed once in f64 and cast to `T`.
//! A non-contiguous parameter view is gathered, updated and scattered back.
//! The loops zip their slices (no index bounds checks) and run under [`vectorized`] with the
//! scalar factors moved in by value (borrowed, they would be reloaded every element, since
//! they might alias the outputs, and the loop would stay scalar), so they compile to the
//! widest SIMD this CPU has; they use only IEEE add, multiply, divide and
//! square root (no fused multiply-add), so every instruction set gives the same bits.

use super::simd::vectorized;
use super::{contiguous_cow, gather_strided, scatter_strided, CpuData, CpuStorage, Float};
use crate::backend::optim::{AdamStep, OptimBackend, SgdStep};
use crate::backend::BackendStorage;
use crate::tensor::Layout;
use crate::{Error, Result};
use rayon::prelude::*;

/// Elements per Rayon task: enough work to amortise scheduling, small enough to spread.
const CHUNK: usize = 1 << 14;

fn adam_kernel<T: Float>(p: &mut [T], g: &[T], m: &mut [T], v: &mut [T], h: &AdamStep) {
    let t = h.step as f64;
    let bc1 = 1.0 - h.beta1.powf(t);
    let bc2_sqrt = (1.0 - h.beta2.powf(t)).sqrt();
    let step_size = T::from_f64(h.lr / bc1);
    let inv_bc2_sqrt = T::from_f64(1.0 / bc2_sqrt);
    let (b1, b2) = (T::from_f64(h.beta1), T::from_f64(h.beta2));
    let (ob1, ob2) = (T::from_f64(1.0 - h.beta1), T::from_f64(1.0 - h.beta2));
    let eps = T::from_f64(h.eps);
    let wd = h.weight_decay != 0.0;
    let l2 = T::from_f64(h.weight_decay);
    let shrink = T::from_f64(1.0 - h.lr * h.weight_decay);
    let decoupled = h.decoupled;
    p.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .for_each(|(((p, g), m), v)| {
            vectorized(move || {
                let state = m.iter_mut().zip(v.iter_mut());
                for ((pi, &gi), (mi, vi)) in p.iter_mut().zip(g).zip(state) {
                    let (mut gi, mut p0) = (gi, *pi);
                    if wd {
                        if decoupled {
                            p0 *= shrink;
                        } else {
                            gi += l2 * p0;
                        }
                    }
                    *mi = b1 * *mi + ob1 * gi;
                    *vi = b2 * *vi + ob2 * gi * gi;
                    *pi = p0 - step_size * *mi / (vi.sqrt() * inv_bc2_sqrt + eps);
                }
            })
        });
}

fn ema_kernel<T: Float>(s: &mut [T], p: &[T], decay: f64) {
    let (d, od) = (T::from_f64(decay), T::from_f64(1.0 - decay));
    s.par_chunks_mut(CHUNK)
        .zip(p.par_chunks(CHUNK))
        .for_each(|(s, p)| {
            vectorized(move || {
                for (si, &pi) in s.iter_mut().zip(p) {
                    *si = d * *si + od * pi;
                }
            })
        });
}

fn sgd_kernel<T: Float>(p: &mut [T], g: &[T], buf: Option<&mut [T]>, h: &SgdStep) {
    let lr = T::from_f64(h.lr);
    let wd = T::from_f64(h.weight_decay);
    let has_wd = h.weight_decay != 0.0;
    let mu = T::from_f64(h.momentum);
    let damp = T::from_f64(1.0 - h.dampening);
    let (nesterov, first) = (h.nesterov, h.first_step);
    match buf {
        None => p
            .par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .for_each(|(p, g)| {
                vectorized(move || {
                    for (pi, &gi) in p.iter_mut().zip(g) {
                        let d = if has_wd { gi + wd * *pi } else { gi };
                        *pi -= lr * d;
                    }
                })
            }),
        Some(buf) => p
            .par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(buf.par_chunks_mut(CHUNK))
            .for_each(|((p, g), b)| {
                vectorized(move || {
                    for ((pi, &gi), bi) in p.iter_mut().zip(g).zip(b.iter_mut()) {
                        let d = if has_wd { gi + wd * *pi } else { gi };
                        *bi = if first { d } else { mu * *bi + damp * d };
                        let step = if nesterov { d + mu * *bi } else { *bi };
                        *pi -= lr * step;
                    }
                })
            }),
    }
}

/// Runs `kernel` on the parameter view `layout` of `p` (gathering/scattering when strided).
fn on_view<T: Copy + Send + Sync>(p: &mut [T], layout: &Layout, kernel: impl FnOnce(&mut [T])) {
    match layout.contiguous_range() {
        Some((a, b)) => kernel(&mut p[a..b]),
        None => {
            let mut tmp = gather_strided(p, layout);
            kernel(&mut tmp);
            scatter_strided(p, layout, &tmp, &Layout::contiguous(layout.shape().clone()));
        }
    }
}

fn check_len(op: &'static str, what: &str, len: usize, n: usize) -> Result<()> {
    if len != n {
        return Err(Error::msg(format!(
            "{op}: {what} holds {len} elements, the parameter {n}"
        )));
    }
    Ok(())
}

fn check_view(op: &'static str, layout: &Layout, len: usize) -> Result<()> {
    if layout.required_len() > len {
        return Err(Error::msg(format!(
            "{op}: the view {:?} reaches past the end of a buffer of {len} elements",
            layout.shape()
        )));
    }
    Ok(())
}

fn dtype_error(op: &'static str, p: &CpuStorage, other: &CpuStorage) -> Error {
    if p.dtype().is_compute_float() {
        Error::DTypeMismatch {
            op,
            lhs: p.dtype(),
            rhs: other.dtype(),
        }
    } else {
        Error::UnsupportedDType {
            op,
            dtype: p.dtype(),
            expected: "f32 or f64",
        }
    }
}

impl OptimBackend for CpuStorage {
    fn adam_step(
        &mut self,
        layout: &Layout,
        grad: &Self,
        grad_layout: &Layout,
        m: &mut Self,
        v: &mut Self,
        hyper: &AdamStep,
    ) -> Result<()> {
        const OP: &str = "adam_step";
        let n = layout.elem_count();
        check_view(OP, layout, self.len())?;
        check_view(OP, grad_layout, grad.len())?;
        check_len(OP, "exp_avg", m.len(), n)?;
        check_len(OP, "exp_avg_sq", v.len(), n)?;
        for other in [grad, &*m, &*v] {
            if other.dtype() != self.dtype() {
                return Err(dtype_error(OP, self, other));
            }
        }
        match (&mut self.data, &grad.data, &mut m.data, &mut v.data) {
            (CpuData::F32(p), CpuData::F32(g), CpuData::F32(m), CpuData::F32(v)) => {
                let g = contiguous_cow(g, grad_layout);
                on_view(p, layout, |p| adam_kernel(p, &g, m, v, hyper));
            }
            (CpuData::F64(p), CpuData::F64(g), CpuData::F64(m), CpuData::F64(v)) => {
                let g = contiguous_cow(g, grad_layout);
                on_view(p, layout, |p| adam_kernel(p, &g, m, v, hyper));
            }
            _ => {
                return Err(Error::UnsupportedDType {
                    op: OP,
                    dtype: self.dtype(),
                    expected: "f32 or f64",
                })
            }
        }
        Ok(())
    }

    fn ema_step(
        &mut self,
        layout: &Layout,
        param: &Self,
        param_layout: &Layout,
        decay: f64,
    ) -> Result<()> {
        const OP: &str = "ema_step";
        check_view(OP, layout, self.len())?;
        check_view(OP, param_layout, param.len())?;
        if param.dtype() != self.dtype() {
            return Err(dtype_error(OP, self, param));
        }
        match (&mut self.data, &param.data) {
            (CpuData::F32(s), CpuData::F32(p)) => {
                let p = contiguous_cow(p, param_layout);
                on_view(s, layout, |s| ema_kernel(s, &p, decay));
            }
            (CpuData::F64(s), CpuData::F64(p)) => {
                let p = contiguous_cow(p, param_layout);
                on_view(s, layout, |s| ema_kernel(s, &p, decay));
            }
            _ => {
                return Err(Error::UnsupportedDType {
                    op: OP,
                    dtype: self.dtype(),
                    expected: "f32 or f64",
                })
            }
        }
        Ok(())
    }

    fn sgd_step(
        &mut self,
        layout: &Layout,
        grad: &Self,
        grad_layout: &Layout,
        momentum_buf: Option<&mut Self>,
        hyper: &SgdStep,
    ) -> Result<()> {
        const OP: &str = "sgd_step";
        let n = layout.elem_count();
        check_view(OP, layout, self.len())?;
        check_view(OP, grad_layout, grad.len())?;
        if grad.dtype() != self.dtype() {
            return Err(dtype_error(OP, self, grad));
        }
        if let Some(b) = &momentum_buf {
            check_len(OP, "momentum_buffer", b.len(), n)?;
            if b.dtype() != self.dtype() {
                return Err(dtype_error(OP, self, b));
            }
        }
        match (&mut self.data, &grad.data) {
            (CpuData::F32(p), CpuData::F32(g)) => {
                let g = contiguous_cow(g, grad_layout);
                let buf = match momentum_buf {
                    Some(b) => Some(b.as_mut_slice::<f32>(OP)?),
                    None => None,
                };
                on_view(p, layout, |p| sgd_kernel(p, &g, buf, hyper));
            }
            (CpuData::F64(p), CpuData::F64(g)) => {
                let g = contiguous_cow(g, grad_layout);
                let buf = match momentum_buf {
                    Some(b) => Some(b.as_mut_slice::<f64>(OP)?),
                    None => None,
                };
                on_view(p, layout, |p| sgd_kernel(p, &g, buf, hyper));
            }
            _ => {
                return Err(Error::UnsupportedDType {
                    op: OP,
                    dtype: self.dtype(),
                    expected: "f32 or f64",
                })
            }
        }
        Ok(())
    }
}
