//! CPU pooling and nearest upsampling over `[N, C, H, W]`, one Rayon task per `(n, c)`
//! plane (each task owns its output plane, so results are deterministic).
//!
//! Forward: every output reads its window once, `O(N*C*OH*OW*|window|)` reads, one write per
//! output. Backward: each task scatter-adds its plane's `dy` into its own `dx` plane, so no two
//! tasks touch the same memory. Non-contiguous inputs are gathered contiguously first.

use super::{contiguous_cow, CpuData, CpuStorage, Float};
use crate::backend::pool::{PoolBackend, Windows2d};
use crate::tensor::{Layout, Shape};
use crate::{Error, Result};
use rayon::prelude::*;

fn planes(op: &'static str, layout: &Layout, hw: (usize, usize)) -> Result<usize> {
    let d = layout.dims();
    if d.len() != 4 || (d[2], d[3]) != hw {
        return Err(Error::shape(
            op,
            format!("expected [N, C, {}, {}]", hw.0, hw.1),
            &[layout.shape(), &Shape::new(vec![hw.0, hw.1])],
        ));
    }
    Ok(d[0] * d[1])
}

fn avg_fwd<T: Float>(x: &[T], np: usize, win: &Windows2d) -> Vec<T> {
    let (ih, iw, oh, ow) = (win.in_h, win.in_w, win.out_h(), win.out_w());
    let mut out = vec![T::ZERO; np * oh * ow];
    if out.is_empty() {
        return out;
    }
    out.par_chunks_mut(oh * ow)
        .zip(x.par_chunks((ih * iw).max(1)))
        .for_each(|(o, xp)| {
            for (i, r) in win.rows.iter().enumerate() {
                for (j, c) in win.cols.iter().enumerate() {
                    let mut s = T::ZERO;
                    for y in r.start..r.end {
                        for &v in &xp[y * iw + c.start..y * iw + c.end] {
                            s += v;
                        }
                    }
                    o[i * ow + j] = s / T::from_f64((r.div * c.div).max(1) as f64);
                }
            }
        });
    out
}

fn avg_bwd<T: Float>(dy: &[T], np: usize, win: &Windows2d) -> Vec<T> {
    let (ih, iw, oh, ow) = (win.in_h, win.in_w, win.out_h(), win.out_w());
    let mut dx = vec![T::ZERO; np * ih * iw];
    if dx.is_empty() || oh * ow == 0 {
        return dx;
    }
    dx.par_chunks_mut(ih * iw)
        .zip(dy.par_chunks(oh * ow))
        .for_each(|(d, g)| {
            for (i, r) in win.rows.iter().enumerate() {
                for (j, c) in win.cols.iter().enumerate() {
                    let v = g[i * ow + j] / T::from_f64((r.div * c.div).max(1) as f64);
                    for y in r.start..r.end {
                        for e in &mut d[y * iw + c.start..y * iw + c.end] {
                            *e += v;
                        }
                    }
                }
            }
        });
    dx
}

fn max_fwd<T: Float>(x: &[T], np: usize, win: &Windows2d) -> (Vec<T>, Vec<i64>) {
    let (ih, iw, oh, ow) = (win.in_h, win.in_w, win.out_h(), win.out_w());
    let mut out = vec![T::NEG_INFINITY; np * oh * ow];
    let mut idx = vec![0i64; np * oh * ow];
    if out.is_empty() {
        return (out, idx);
    }
    out.par_chunks_mut(oh * ow)
        .zip(idx.par_chunks_mut(oh * ow))
        .zip(x.par_chunks((ih * iw).max(1)))
        .for_each(|((o, ix), xp)| {
            for (i, r) in win.rows.iter().enumerate() {
                for (j, c) in win.cols.iter().enumerate() {
                    let (mut best, mut at) = (T::NEG_INFINITY, None);
                    for y in r.start..r.end {
                        for xx in c.start..c.end {
                            let v = xp[y * iw + xx];
                            // NaN propagates (as in PyTorch): it wins and stays.
                            if at.is_none() || v > best || v.is_nan() && !best.is_nan() {
                                best = v;
                                at = Some(y * iw + xx);
                            }
                        }
                    }
                    o[i * ow + j] = best;
                    ix[i * ow + j] = at.unwrap_or(0) as i64;
                }
            }
        });
    (out, idx)
}

fn max_bwd<T: Float>(dy: &[T], idx: &[i64], np: usize, ohw: usize, ihw: usize) -> Vec<T> {
    let mut dx = vec![T::ZERO; np * ihw];
    if dx.is_empty() || ohw == 0 {
        return dx;
    }
    dx.par_chunks_mut(ihw)
        .zip(dy.par_chunks(ohw).zip(idx.par_chunks(ohw)))
        .for_each(|(d, (g, ix))| {
            for (&v, &k) in g.iter().zip(ix) {
                // Indices come from the forward; out-of-range ones are ignored, never a panic.
                if let Some(e) = usize::try_from(k).ok().and_then(|k| d.get_mut(k)) {
                    *e += v;
                }
            }
        });
    dx
}

impl PoolBackend for CpuStorage {
    fn window_avg2d(&self, layout: &Layout, win: &Windows2d) -> Result<Self> {
        let op = "avg_pool2d";
        win.validate(op)?;
        let np = planes(op, layout, (win.in_h, win.in_w))?;
        let data = crate::cpu_map_float!(op, self.data(), |v| {
            avg_fwd(&contiguous_cow(v, layout), np, win)
        });
        Ok(CpuStorage::new(data))
    }
    fn window_avg2d_backward(&self, dy_layout: &Layout, win: &Windows2d) -> Result<Self> {
        let op = "avg_pool2d_backward";
        win.validate(op)?;
        let np = planes(op, dy_layout, (win.out_h(), win.out_w()))?;
        let data = crate::cpu_map_float!(op, self.data(), |v| {
            avg_bwd(&contiguous_cow(v, dy_layout), np, win)
        });
        Ok(CpuStorage::new(data))
    }
    fn max_pool2d(&self, layout: &Layout, win: &Windows2d) -> Result<(Self, Self)> {
        let op = "max_pool2d";
        win.validate(op)?;
        let np = planes(op, layout, (win.in_h, win.in_w))?;
        let (vals, idx) = match self.data() {
            CpuData::F32(v) => {
                let (o, i) = max_fwd(&contiguous_cow(v, layout), np, win);
                (CpuData::F32(o), i)
            }
            CpuData::F64(v) => {
                let (o, i) = max_fwd(&contiguous_cow(v, layout), np, win);
                (CpuData::F64(o), i)
            }
            d => {
                return Err(Error::UnsupportedDType {
                    op,
                    dtype: d.dtype_of(),
                    expected: "f32 or f64",
                })
            }
        };
        Ok((CpuStorage::new(vals), CpuStorage::new(CpuData::I64(idx))))
    }
    fn max_pool2d_backward(
        &self,
        dy_layout: &Layout,
        indices: &Self,
        idx_layout: &Layout,
        in_hw: (usize, usize),
    ) -> Result<Self> {
        let op = "max_pool2d_backward";
        if dy_layout.shape() != idx_layout.shape() || dy_layout.dims().len() != 4 {
            return Err(Error::ShapeMismatch {
                op,
                lhs: dy_layout.shape().clone(),
                rhs: idx_layout.shape().clone(),
            });
        }
        let d = dy_layout.dims();
        let (np, ohw) = (d[0] * d[1], d[2] * d[3]);
        let idx = contiguous_cow(indices.as_slice::<i64>(op)?, idx_layout);
        let data = crate::cpu_map_float!(op, self.data(), |v| {
            max_bwd(
                &contiguous_cow(v, dy_layout),
                &idx,
                np,
                ohw,
                in_hw.0 * in_hw.1,
            )
        });
        Ok(CpuStorage::new(data))
    }
}
