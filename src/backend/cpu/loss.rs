//! CPU cross-entropy kernels (math in `backend/loss.rs`). Rows run in parallel on Rayon; each
//! row's log-sum-exp is computed in f64 as `max + ln Σ exp(x - max)`, so large logits never
//! overflow. Strided logits are gathered once into a contiguous `[N, C]` buffer.

use super::{contiguous_cow, CpuStorage, Float};
use crate::backend::loss::{CrossEntropyParams, LossBackend};
use crate::backend::BackendStorage;
use crate::tensor::{DType, Layout, WithDType};
use crate::{Error, Result};
use rayon::prelude::*;

const OP: &str = "cross_entropy";

/// Validated targets: `None` for an ignored row, else the class.
fn targets_of(t: &CpuStorage, l: &Layout, p: CrossEntropyParams) -> Result<Vec<Option<usize>>> {
    if l.elem_count() != p.n {
        return Err(Error::shape(
            OP,
            format!("expected {} targets", p.n),
            &[l.shape()],
        ));
    }
    let t = contiguous_cow(t.as_slice::<i64>(OP)?, l);
    t.iter()
        .map(|&ti| {
            if Some(ti) == p.ignore_index {
                Ok(None)
            } else if ti < 0 || ti as usize >= p.c {
                Err(Error::IndexOutOfRange {
                    op: OP,
                    index: ti,
                    size: p.c,
                })
            } else {
                Ok(Some(ti as usize))
            }
        })
        .collect()
}

fn lse_row<T: Float>(row: &[T]) -> f64 {
    let m = row
        .iter()
        .fold(f64::NEG_INFINITY, |m, &v| m.max(v.to_f64()));
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + row
        .iter()
        .map(|&v| (v.to_f64() - m).exp())
        .sum::<f64>()
        .ln()
}

fn fwd<T: Float>(x: &[T], t: &[Option<usize>], p: CrossEntropyParams) -> (T, Vec<T>, usize) {
    let c = p.c;
    let eps = p.label_smoothing;
    let per_row: Vec<(f64, f64)> = (0..p.n)
        .into_par_iter()
        .map(|i| {
            let row = &x[i * c..(i + 1) * c];
            let lse = lse_row(row);
            let loss = match t[i] {
                None => 0.0,
                Some(ti) => {
                    let nll = lse - row[ti].to_f64();
                    if eps == 0.0 {
                        nll
                    } else {
                        let mean = row.iter().map(|v| v.to_f64()).sum::<f64>() / c as f64;
                        (1.0 - eps) * nll + eps * (lse - mean)
                    }
                }
            };
            (lse, loss)
        })
        .collect();
    let count = t.iter().filter(|t| t.is_some()).count();
    let total: f64 = per_row.iter().map(|r| r.1).sum();
    let lse = per_row.iter().map(|r| T::from_f64(r.0)).collect();
    (T::from_f64(total / count as f64), lse, count)
}

fn bwd<T: Float>(
    x: &[T],
    t: &[Option<usize>],
    lse: &[T],
    g: f64,
    count: usize,
    p: CrossEntropyParams,
) -> Vec<T> {
    let c = p.c;
    let eps = p.label_smoothing;
    let mut dx = vec![T::ZERO; x.len()];
    if count == 0 || c == 0 {
        return dx;
    }
    let scale = g / count as f64;
    dx.par_chunks_mut(c).enumerate().for_each(|(i, dr)| {
        let Some(ti) = t[i] else { return };
        let l = lse[i].to_f64();
        for (j, d) in dr.iter_mut().enumerate() {
            let onehot = if j == ti { 1.0 - eps } else { 0.0 };
            *d = T::from_f64(scale * ((x[i * c + j].to_f64() - l).exp() - onehot - eps / c as f64));
        }
    });
    dx
}

fn check_logits(l: &Layout, p: CrossEntropyParams) -> Result<()> {
    if l.elem_count() != p.n * p.c {
        return Err(Error::shape(
            OP,
            format!("expected [{}, {}] logits", p.n, p.c),
            &[l.shape()],
        ));
    }
    Ok(())
}

macro_rules! dispatch {
    ($dtype:expr, $body:ident) => {
        match $dtype {
            DType::F32 => $body!(f32),
            DType::F64 => $body!(f64),
            d => {
                return Err(Error::UnsupportedDType {
                    op: OP,
                    dtype: d,
                    expected: "f32 or f64",
                })
            }
        }
    };
}

impl LossBackend for CpuStorage {
    fn cross_entropy_fwd(
        &self,
        logits_layout: &Layout,
        targets: &Self,
        targets_layout: &Layout,
        p: CrossEntropyParams,
    ) -> Result<(Self, Self, usize)> {
        check_logits(logits_layout, p)?;
        let t = targets_of(targets, targets_layout, p)?;
        macro_rules! run {
            ($t:ty) => {{
                let x = contiguous_cow(self.as_slice::<$t>(OP)?, logits_layout);
                let (loss, lse, count) = fwd(&x, &t, p);
                (
                    CpuStorage::from_vec(vec![loss]),
                    CpuStorage::from_vec(lse),
                    count,
                )
            }};
        }
        Ok(dispatch!(self.dtype(), run))
    }

    fn cross_entropy_bwd(
        &self,
        logits_layout: &Layout,
        targets: &Self,
        targets_layout: &Layout,
        lse: &Self,
        grad: &Self,
        grad_layout: &Layout,
        count: usize,
        p: CrossEntropyParams,
    ) -> Result<Self> {
        check_logits(logits_layout, p)?;
        let t = targets_of(targets, targets_layout, p)?;
        macro_rules! run {
            ($t:ty) => {{
                let x = contiguous_cow(self.as_slice::<$t>(OP)?, logits_layout);
                let g = contiguous_cow(grad.as_slice::<$t>(OP)?, grad_layout);
                let g = g.first().map_or(0.0, |&v| WithDType::to_f64(v));
                let lse = lse.as_slice::<$t>(OP)?;
                if lse.len() != p.n {
                    return Err(Error::msg(format!(
                        "{OP}: {} saved lse values for {} rows",
                        lse.len(),
                        p.n
                    )));
                }
                CpuStorage::from_vec(bwd(&x, &t, lse, g, count, p))
            }};
        }
        Ok(dispatch!(self.dtype(), run))
    }
}
