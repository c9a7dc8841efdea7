//! CPU normalization kernels (math in `backend/norm.rs`).
//!
//! Approach: strided inputs are gathered once into contiguous `[N, C, S]` buffers
//! (`contiguous_cow`, free for contiguous views). Group statistics are computed one statistic
//! set per Rayon task, over a contiguous run of `(C/G)·S` elements; channel statistics one
//! channel per task, walking its `N` runs of `S` elements. Statistics are accumulated in f64
//! with a two-pass (mean, then centred squares) variance, so f32 inputs lose nothing to
//! cancellation. The weight/bias partial sums of the group backward are produced per task and
//! summed in a fixed order afterwards, so results do not depend on the thread count.

use super::{contiguous_cow, CpuStorage, Float};
use crate::backend::norm::{NormBackend, NormDims, Param};
use crate::backend::BackendStorage;
use crate::tensor::{DType, Layout, WithDType};
use crate::{Error, Result};
use rayon::prelude::*;
use std::borrow::Cow;

fn view<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout, op: &'static str) -> Result<Cow<'a, [T]>> {
    Ok(contiguous_cow(s.as_slice::<T>(op)?, l))
}
fn param<'a, T: WithDType>(
    p: Param<'a, CpuStorage>,
    op: &'static str,
) -> Result<Option<Cow<'a, [T]>>> {
    p.map(|(s, l)| view::<T>(s, l, op)).transpose()
}
fn contiguous<'a, T: WithDType>(s: &'a CpuStorage, op: &'static str) -> Result<&'a [T]> {
    s.as_slice::<T>(op)
}

/// Runs `$body` with `T` bound to f32 or f64 according to `$dtype`.
macro_rules! dispatch {
    ($op:expr, $dtype:expr, $body:ident) => {
        match $dtype {
            DType::F32 => $body!(f32),
            DType::F64 => $body!(f64),
            d => {
                return Err(Error::UnsupportedDType {
                    op: $op,
                    dtype: d,
                    expected: "f32 or f64",
                })
            }
        }
    };
}

/// Mean and biased variance of `n` values given by `at(i)`, two-pass in f64.
fn mean_var(n: usize, at: impl Fn(usize) -> f64) -> (f64, f64) {
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mean = (0..n).map(&at).sum::<f64>() / n as f64;
    let var = (0..n).map(|i| (at(i) - mean).powi(2)).sum::<f64>() / n as f64;
    (mean, var)
}

type Three<T> = (Vec<T>, Vec<T>, Vec<T>);

/// Guards the primitive against inconsistent arguments (the op layer validates user input;
/// this keeps a direct caller of the primitive from panicking on an index).
fn check_args(
    op: &'static str,
    x: &Layout,
    d: NormDims,
    groups: usize,
    params: &[Param<CpuStorage>],
) -> Result<()> {
    let bad_groups = groups == 0 || !d.c.is_multiple_of(groups);
    let bad_x = x.elem_count() != d.n * d.c * d.s;
    let bad_p = params.iter().flatten().any(|(_, l)| l.elem_count() != d.c);
    if bad_groups || bad_x || bad_p {
        return Err(Error::shape(
            op,
            format!("inconsistent arguments: {d:?}, {groups} groups"),
            &[x.shape()],
        ));
    }
    Ok(())
}

fn group_fwd<T: Float>(
    x: &[T],
    d: NormDims,
    groups: usize,
    w: Option<&[T]>,
    b: Option<&[T]>,
    eps: f64,
) -> Three<T> {
    let cg = d.c / groups;
    let m = cg * d.s;
    let rows = d.n * groups;
    let mut y = vec![T::ZERO; x.len()];
    let mut mean = vec![T::ZERO; rows];
    let mut rstd = vec![T::ZERO; rows];
    if m == 0 {
        return (y, mean, rstd);
    }
    y.par_chunks_mut(m)
        .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
        .enumerate()
        .for_each(|(r, (yr, (mu, rs)))| {
            let xr = &x[r * m..(r + 1) * m];
            let (mf, var) = mean_var(m, |i| xr[i].to_f64());
            let rf = 1.0 / (var + eps).sqrt();
            let c0 = (r % groups) * cg;
            for ci in 0..cg {
                let c = c0 + ci;
                let wc = w.map_or(1.0, |w| w[c].to_f64());
                let bc = b.map_or(0.0, |b| b[c].to_f64());
                for si in 0..d.s {
                    let i = ci * d.s + si;
                    yr[i] = T::from_f64((xr[i].to_f64() - mf) * rf * wc + bc);
                }
            }
            *mu = T::from_f64(mf);
            *rs = T::from_f64(rf);
        });
    (y, mean, rstd)
}

#[allow(clippy::too_many_arguments)]
fn group_bwd<T: Float>(
    x: &[T],
    dy: &[T],
    mean: &[T],
    rstd: &[T],
    d: NormDims,
    groups: usize,
    w: Option<&[T]>,
) -> Three<T> {
    let cg = d.c / groups;
    let m = cg * d.s;
    let mut dx = vec![T::ZERO; x.len()];
    let mut dw = vec![0.0f64; d.c];
    let mut db = vec![0.0f64; d.c];
    if m > 0 {
        // Per statistic set: dx, and this set's partial sums for dw and db (cg channels each).
        let partials: Vec<(Vec<f64>, Vec<f64>)> = dx
            .par_chunks_mut(m)
            .enumerate()
            .map(|(r, dxr)| {
                let (xr, dyr) = (&x[r * m..(r + 1) * m], &dy[r * m..(r + 1) * m]);
                let (mu, rs) = (mean[r].to_f64(), rstd[r].to_f64());
                let c0 = (r % groups) * cg;
                let wc = |ci: usize| w.map_or(1.0, |w| w[c0 + ci].to_f64());
                let (mut sum_g, mut sum_gx) = (0.0, 0.0);
                let (mut pw, mut pb) = (vec![0.0; cg], vec![0.0; cg]);
                for ci in 0..cg {
                    let wv = wc(ci);
                    for si in 0..d.s {
                        let i = ci * d.s + si;
                        let xhat = (xr[i].to_f64() - mu) * rs;
                        let g = dyr[i].to_f64();
                        pw[ci] += g * xhat;
                        pb[ci] += g;
                        sum_g += g * wv;
                        sum_gx += g * wv * xhat;
                    }
                }
                let (a, bb) = (sum_g / m as f64, sum_gx / m as f64);
                for ci in 0..cg {
                    let wv = wc(ci);
                    for si in 0..d.s {
                        let i = ci * d.s + si;
                        let xhat = (xr[i].to_f64() - mu) * rs;
                        dxr[i] = T::from_f64(rs * (dyr[i].to_f64() * wv - a - xhat * bb));
                    }
                }
                (pw, pb)
            })
            .collect();
        for (r, (pw, pb)) in partials.iter().enumerate() {
            let c0 = (r % groups) * cg;
            for ci in 0..cg {
                dw[c0 + ci] += pw[ci];
                db[c0 + ci] += pb[ci];
            }
        }
    }
    let cast = |v: Vec<f64>| v.into_iter().map(T::from_f64).collect();
    (dx, cast(dw), cast(db))
}

fn batch_fwd<T: Float>(
    x: &[T],
    d: NormDims,
    running: Option<(&[T], &[T])>,
    w: Option<&[T]>,
    b: Option<&[T]>,
    eps: f64,
) -> Three<T> {
    let (n, c, s) = (d.n, d.c, d.s);
    let stats: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ch| match running {
            Some((rm, rv)) => (rm[ch].to_f64(), 1.0 / (rv[ch].to_f64() + eps).sqrt()),
            None => {
                let (mu, var) = mean_var(n * s, |i| x[((i / s) * c + ch) * s + i % s].to_f64());
                (mu, 1.0 / (var + eps).sqrt())
            }
        })
        .collect();
    let mut y = vec![T::ZERO; x.len()];
    if s > 0 {
        y.par_chunks_mut(s).enumerate().for_each(|(k, yr)| {
            let ch = k % c;
            let (mu, rs) = stats[ch];
            let wc = w.map_or(1.0, |w| w[ch].to_f64());
            let bc = b.map_or(0.0, |b| b[ch].to_f64());
            for (si, yv) in yr.iter_mut().enumerate() {
                *yv = T::from_f64((x[k * s + si].to_f64() - mu) * rs * wc + bc);
            }
        });
    }
    let mean = stats.iter().map(|p| T::from_f64(p.0)).collect();
    let rstd = stats.iter().map(|p| T::from_f64(p.1)).collect();
    (y, mean, rstd)
}

#[allow(clippy::too_many_arguments)]
fn batch_bwd<T: Float>(
    x: &[T],
    dy: &[T],
    mean: &[T],
    rstd: &[T],
    d: NormDims,
    w: Option<&[T]>,
    batch_stats: bool,
) -> Three<T> {
    let (n, c, s) = (d.n, d.c, d.s);
    let m = n * s;
    // Per channel: (sum dy, sum dy * xhat).
    let sums: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let (mu, rs) = (mean[ch].to_f64(), rstd[ch].to_f64());
            let (mut sg, mut sgx) = (0.0, 0.0);
            for ni in 0..n {
                let base = (ni * c + ch) * s;
                for i in base..base + s {
                    let g = dy[i].to_f64();
                    sg += g;
                    sgx += g * (x[i].to_f64() - mu) * rs;
                }
            }
            (sg, sgx)
        })
        .collect();
    let mut dx = vec![T::ZERO; x.len()];
    if s > 0 {
        dx.par_chunks_mut(s).enumerate().for_each(|(k, dxr)| {
            let ch = k % c;
            let (mu, rs) = (mean[ch].to_f64(), rstd[ch].to_f64());
            let wc = w.map_or(1.0, |w| w[ch].to_f64());
            let (a, bb) = if batch_stats {
                (sums[ch].0 / m as f64, sums[ch].1 / m as f64)
            } else {
                (0.0, 0.0)
            };
            for (si, dv) in dxr.iter_mut().enumerate() {
                let i = k * s + si;
                let xhat = (x[i].to_f64() - mu) * rs;
                *dv = T::from_f64(wc * rs * (dy[i].to_f64() - a - xhat * bb));
            }
        });
    }
    let dw = sums.iter().map(|p| T::from_f64(p.1)).collect();
    let db = sums.iter().map(|p| T::from_f64(p.0)).collect();
    (dx, dw, db)
}

fn store<T: WithDType>(t: (Vec<T>, Vec<T>, Vec<T>)) -> (CpuStorage, CpuStorage, CpuStorage) {
    (
        CpuStorage::from_vec(t.0),
        CpuStorage::from_vec(t.1),
        CpuStorage::from_vec(t.2),
    )
}

impl NormBackend for CpuStorage {
    fn group_norm_fwd(
        &self,
        x_layout: &Layout,
        dims: NormDims,
        groups: usize,
        weight: Param<Self>,
        bias: Param<Self>,
        eps: f64,
    ) -> Result<(Self, Self, Self)> {
        const OP: &str = "group_norm";
        check_args(OP, x_layout, dims, groups, &[weight, bias])?;
        macro_rules! run {
            ($t:ty) => {{
                let x = view::<$t>(self, x_layout, OP)?;
                let (w, b) = (param::<$t>(weight, OP)?, param::<$t>(bias, OP)?);
                store(group_fwd(&x, dims, groups, w.as_deref(), b.as_deref(), eps))
            }};
        }
        Ok(dispatch!(OP, self.dtype(), run))
    }

    fn group_norm_bwd(
        &self,
        x_layout: &Layout,
        dy: &Self,
        dy_layout: &Layout,
        mean: &Self,
        rstd: &Self,
        dims: NormDims,
        groups: usize,
        weight: Param<Self>,
    ) -> Result<(Self, Self, Self)> {
        const OP: &str = "group_norm_backward";
        check_args(OP, x_layout, dims, groups, &[weight])?;
        check_args(OP, dy_layout, dims, groups, &[])?;
        macro_rules! run {
            ($t:ty) => {{
                let x = view::<$t>(self, x_layout, OP)?;
                let g = view::<$t>(dy, dy_layout, OP)?;
                let (mu, rs) = (contiguous::<$t>(mean, OP)?, contiguous::<$t>(rstd, OP)?);
                let w = param::<$t>(weight, OP)?;
                if mu.len() != dims.n * groups || rs.len() != mu.len() {
                    return Err(Error::msg(format!("{OP}: saved statistics do not match")));
                }
                store(group_bwd(&x, &g, mu, rs, dims, groups, w.as_deref()))
            }};
        }
        Ok(dispatch!(OP, self.dtype(), run))
    }

    fn batch_norm_fwd(
        &self,
        x_layout: &Layout,
        dims: NormDims,
        running: Option<(Param<Self>, Param<Self>)>,
        weight: Param<Self>,
        bias: Param<Self>,
        eps: f64,
    ) -> Result<(Self, Self, Self)> {
        const OP: &str = "batch_norm";
        let (rm, rv) = running.unwrap_or((None, None));
        check_args(OP, x_layout, dims, 1, &[weight, bias, rm, rv])?;
        macro_rules! run {
            ($t:ty) => {{
                let x = view::<$t>(self, x_layout, OP)?;
                let (w, b) = (param::<$t>(weight, OP)?, param::<$t>(bias, OP)?);
                let run =
                    match running {
                        Some((m, v)) => {
                            let (m, v) = (param::<$t>(m, OP)?, param::<$t>(v, OP)?);
                            match (m, v) {
                                (Some(m), Some(v)) => Some((m, v)),
                                _ => return Err(Error::msg(
                                    "batch_norm: eval mode needs both running_mean and running_var",
                                )),
                            }
                        }
                        None => None,
                    };
                let run_ref = run.as_ref().map(|(m, v)| (&m[..], &v[..]));
                store(batch_fwd(
                    &x,
                    dims,
                    run_ref,
                    w.as_deref(),
                    b.as_deref(),
                    eps,
                ))
            }};
        }
        Ok(dispatch!(OP, self.dtype(), run))
    }

    fn batch_norm_bwd(
        &self,
        x_layout: &Layout,
        dy: &Self,
        dy_layout: &Layout,
        mean: &Self,
        rstd: &Self,
        dims: NormDims,
        weight: Param<Self>,
        batch_stats: bool,
    ) -> Result<(Self, Self, Self)> {
        const OP: &str = "batch_norm_backward";
        check_args(OP, x_layout, dims, 1, &[weight])?;
        check_args(OP, dy_layout, dims, 1, &[])?;
        macro_rules! run {
            ($t:ty) => {{
                let x = view::<$t>(self, x_layout, OP)?;
                let g = view::<$t>(dy, dy_layout, OP)?;
                let (mu, rs) = (contiguous::<$t>(mean, OP)?, contiguous::<$t>(rstd, OP)?);
                let w = param::<$t>(weight, OP)?;
                if mu.len() != dims.c || rs.len() != dims.c {
                    return Err(Error::msg(format!("{OP}: saved statistics do not match")));
                }
                store(batch_bwd(&x, &g, mu, rs, dims, w.as_deref(), batch_stats))
            }};
        }
        Ok(dispatch!(OP, self.dtype(), run))
    }

    fn batch_norm_update_running(
        &mut self,
        layout: &Layout,
        stat: &Self,
        momentum: f64,
        unbiased_var_from_rstd: bool,
        eps: f64,
        count: usize,
    ) -> Result<()> {
        const OP: &str = "batch_norm running stats";
        let offsets = layout.offsets();
        macro_rules! run {
            ($t:ty) => {{
                let src = contiguous::<$t>(stat, OP)?;
                if src.len() != offsets.len() {
                    return Err(Error::msg(format!(
                        "{OP}: {} statistics for a running buffer of {} elements",
                        src.len(),
                        offsets.len()
                    )));
                }
                let dst = self.as_mut_slice::<$t>(OP)?;
                let bessel = count as f64 / (count.max(2) - 1) as f64;
                for (&o, &v) in offsets.iter().zip(src) {
                    let v = WithDType::to_f64(v);
                    let stat = if unbiased_var_from_rstd {
                        (1.0 / (v * v) - eps) * bessel
                    } else {
                        v
                    };
                    let old = WithDType::to_f64(dst[o]);
                    dst[o] = <$t as WithDType>::from_f64((1.0 - momentum) * old + momentum * stat);
                }
            }};
        }
        dispatch!(OP, self.dtype(), run);
        Ok(())
    }
}
