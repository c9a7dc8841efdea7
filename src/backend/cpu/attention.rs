//! CPU flash-style attention (math in `backend/attention.rs`).
//!
//! Approach: q, k, v (and dO) are gathered once into contiguous `[B·H, T, D]` buffers when
//! they are strided views (e.g. a `permute` of a `[B, T, H, D]` projection); masks are read in
//! place through their broadcast strides. The forward runs one Rayon task per
//! (batch·head, block of `BQ` queries); each task walks the keys in blocks of `BK`, scoring
//! the block for every query row of its block and folding it into that row's online softmax,
//! so the only scratch is `BK` scores and the `BQ x Dv` accumulator. The backward runs two
//! race-free passes that each recompute `p = exp(s - lse)`: one task per (batch·head, query
//! block) accumulates dQ, one per (batch·head, key block) accumulates dK and dV
//! (FlashAttention-2's split, trading one extra recomputation of the scores for no atomics).
//! Per-task results are concatenated in a fixed order: deterministic for any thread count.
//! The q·k and dO·v dot products use eight partial sums (`lanes::dot`) and p·v is an axpy over the
//! contiguous value row, so both inner loops vectorize; f32 `exp` is the branch-free one of
//! `float.rs`.

use super::lanes::{dot, sum};
use super::simd::vectorized;
use super::{contiguous_cow, CpuStorage, Float};
use crate::backend::attention::{AttentionBackend, AttnMask, AttnParams, AttnShape};
use crate::backend::BackendStorage;
use crate::tensor::{DType, Layout, WithDType};
use crate::{Error, Result};
use rayon::prelude::*;

const BQ: usize = 16;
const BK: usize = 64;
/// Score matrices up to this size take the single-pass backward (`bwd_small`).
const SMALL_SCORES: usize = 64 * 64;

#[derive(Clone, Copy)]
struct Dims {
    h: usize,
    tq: usize,
    tk: usize,
    d: usize,
    dv: usize,
    bh: usize,
}

impl Dims {
    /// The sizes, after checking the layouts fit together ([`AttnShape::of`]).
    fn of(ql: &Layout, vl: &Layout, kl: &Layout, masks: &[AttnMask<CpuStorage>]) -> Result<Dims> {
        let s = AttnShape::of(OP, ql, kl, vl, masks)?;
        Ok(Dims {
            h: s.h,
            tq: s.tq,
            tk: s.tk,
            d: s.d,
            dv: s.dv,
            bh: s.b * s.h,
        })
    }
}

/// Masks resolved to byte slices and strides, plus the causal flag.
struct Masks<'a> {
    list: Vec<(&'a [u8], [usize; 4], usize, bool)>,
    causal: bool,
    h: usize,
}

impl Masks<'_> {
    #[inline]
    fn allowed(&self, bhi: usize, i: usize, j: usize) -> bool {
        if self.causal && j > i {
            return false;
        }
        let (b, h) = (bhi / self.h, bhi % self.h);
        self.list.iter().all(|&(data, s, off, attend_if_set)| {
            (data[off + b * s[0] + h * s[1] + i * s[2] + j * s[3]] != 0) == attend_if_set
        })
    }
}

fn masks_of<'a>(m: &'a [AttnMask<CpuStorage>], causal: bool, h: usize) -> Result<Masks<'a>> {
    let list = m
        .iter()
        .map(|m| {
            let s = m.layout.strides();
            Ok((
                m.storage
                    .as_slice::<u8>("scaled_dot_product_attention mask")?,
                [s[0], s[1], s[2], s[3]],
                m.layout.offset(),
                m.attend_if_set,
            ))
        })
        .collect::<Result<_>>()?;
    Ok(Masks { list, causal, h })
}

/// `y += a * x`
#[inline(always)]
fn axpy<T: Float>(y: &mut [T], a: T, x: &[T]) {
    for (yv, &xv) in y.iter_mut().zip(x) {
        *yv = a.mul_add(xv, *yv);
    }
}

fn fwd<T: Float>(
    q: &[T],
    k: &[T],
    v: &[T],
    dm: Dims,
    mk: &Masks,
    p: AttnParams,
) -> (Vec<T>, Vec<T>) {
    let (tq, tk, d, dv) = (dm.tq, dm.tk, dm.d, dm.dv);
    let scale = T::from_f64(p.scale);
    let nqb = tq.div_ceil(BQ);
    let blocks: Vec<(Vec<T>, Vec<T>)> = (0..dm.bh * nqb)
        .into_par_iter()
        .map(|task| {
            vectorized(
                #[inline(always)]
                || {
                    let (bhi, qb) = (task / nqb, task % nqb);
                    let (i0, i1) = (qb * BQ, (qb * BQ + BQ).min(tq));
                    let nr = i1 - i0;
                    let (qo, ko, vo) = (bhi * tq * d, bhi * tk * d, bhi * tk * dv);
                    let mut m = vec![T::NEG_INFINITY; nr];
                    let mut l = vec![T::ZERO; nr];
                    let mut acc = vec![T::ZERO; nr * dv];
                    let mut s = [T::ZERO; BK];
                    let mut pb = [T::ZERO; BK];
                    for kb in (0..tk).step_by(BK) {
                        if p.causal && kb >= i1 {
                            break;
                        }
                        let j1 = (kb + BK).min(tk);
                        for r in 0..nr {
                            let i = i0 + r;
                            let qi = &q[qo + i * d..qo + (i + 1) * d];
                            let mut mloc = T::NEG_INFINITY;
                            for j in kb..j1 {
                                let sj = if mk.allowed(bhi, i, j) {
                                    scale * dot(qi, &k[ko + j * d..ko + (j + 1) * d])
                                } else {
                                    T::NEG_INFINITY
                                };
                                s[j - kb] = sj;
                                mloc = mloc.max(sj);
                            }
                            if mloc == T::NEG_INFINITY {
                                continue;
                            }
                            let mnew = m[r].max(mloc);
                            let corr = (m[r] - mnew).exp();
                            l[r] *= corr;
                            let acc_r = &mut acc[r * dv..(r + 1) * dv];
                            acc_r.iter_mut().for_each(|a| *a *= corr);
                            // p = exp(s - m) for the whole block in one flat (vectorized) loop; masked
                            // scores are -inf, so their p is exactly 0, and they are skipped below.
                            let nb = j1 - kb;
                            for (pj, &sj) in pb[..nb].iter_mut().zip(&s[..nb]) {
                                *pj = (sj - mnew).exp();
                            }
                            l[r] += sum(&pb[..nb]);
                            for j in kb..j1 {
                                if s[j - kb] == T::NEG_INFINITY {
                                    continue;
                                }
                                axpy(acc_r, pb[j - kb], &v[vo + j * dv..vo + (j + 1) * dv]);
                            }
                            m[r] = mnew;
                        }
                    }
                    let mut lse = vec![T::NEG_INFINITY; nr];
                    for r in 0..nr {
                        if l[r] > T::ZERO {
                            let inv = T::ONE / l[r];
                            acc[r * dv..(r + 1) * dv].iter_mut().for_each(|a| *a *= inv);
                            lse[r] = m[r] + l[r].ln();
                        } else {
                            acc[r * dv..(r + 1) * dv]
                                .iter_mut()
                                .for_each(|a| *a = T::ZERO);
                        }
                    }
                    (acc, lse)
                },
            )
        })
        .collect();
    let mut o = Vec::with_capacity(dm.bh * tq * dv);
    let mut lse = Vec::with_capacity(dm.bh * tq);
    for (a, l) in blocks {
        o.extend(a);
        lse.extend(l);
    }
    (o, lse)
}

#[allow(clippy::too_many_arguments)]
fn bwd<T: Float>(
    q: &[T],
    k: &[T],
    v: &[T],
    o: &[T],
    lse: &[T],
    dout: &[T],
    dm: Dims,
    mk: &Masks,
    p: AttnParams,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    if dm.tq * dm.tk <= SMALL_SCORES {
        bwd_small(q, k, v, o, lse, dout, dm, mk, p)
    } else {
        bwd_blocked(q, k, v, o, lse, dout, dm, mk, p)
    }
}

#[allow(clippy::too_many_arguments)]
fn bwd_blocked<T: Float>(
    q: &[T],
    k: &[T],
    v: &[T],
    o: &[T],
    lse: &[T],
    dout: &[T],
    dm: Dims,
    mk: &Masks,
    p: AttnParams,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let (tq, tk, d, dv) = (dm.tq, dm.tk, dm.d, dm.dv);
    let scale = T::from_f64(p.scale);
    // D_i = dO_i . O_i
    let big_d: Vec<T> = (0..dm.bh * tq)
        .into_par_iter()
        .map(|r| dot(&dout[r * dv..(r + 1) * dv], &o[r * dv..(r + 1) * dv]))
        .collect();
    // p_ij and dS_ij for one (row, key) pair, or None when masked.
    let p_ds = |bhi: usize, i: usize, j: usize| -> Option<(T, T)> {
        let row = bhi * tq + i;
        let l = lse[row];
        if l == T::NEG_INFINITY || !mk.allowed(bhi, i, j) {
            return None;
        }
        let (qo, ko, vo) = (bhi * tq * d, bhi * tk * d, bhi * tk * dv);
        let s = scale
            * dot(
                &q[qo + i * d..qo + (i + 1) * d],
                &k[ko + j * d..ko + (j + 1) * d],
            );
        let pij = (s - l).exp();
        let dp = dot(
            &dout[row * dv..(row + 1) * dv],
            &v[vo + j * dv..vo + (j + 1) * dv],
        );
        Some((pij, pij * (dp - big_d[row])))
    };

    let nqb = tq.div_ceil(BQ);
    let dq_blocks: Vec<Vec<T>> = (0..dm.bh * nqb)
        .into_par_iter()
        .map(|task| {
            vectorized(
                #[inline(always)]
                || {
                    let (bhi, qb) = (task / nqb, task % nqb);
                    let (i0, i1) = (qb * BQ, (qb * BQ + BQ).min(tq));
                    let ko = bhi * tk * d;
                    let mut dq = vec![T::ZERO; (i1 - i0) * d];
                    for i in i0..i1 {
                        let jmax = if p.causal { (i + 1).min(tk) } else { tk };
                        let dq_r = &mut dq[(i - i0) * d..(i - i0 + 1) * d];
                        for j in 0..jmax {
                            if let Some((_, ds)) = p_ds(bhi, i, j) {
                                axpy(dq_r, ds * scale, &k[ko + j * d..ko + (j + 1) * d]);
                            }
                        }
                    }
                    dq
                },
            )
        })
        .collect();

    let nkb = tk.div_ceil(BK);
    let dkv_blocks: Vec<(Vec<T>, Vec<T>)> = (0..dm.bh * nkb)
        .into_par_iter()
        .map(|task| {
            vectorized(
                #[inline(always)]
                || {
                    let (bhi, kb) = (task / nkb, task % nkb);
                    let (j0, j1) = (kb * BK, (kb * BK + BK).min(tk));
                    let qo = bhi * tq * d;
                    let mut dk = vec![T::ZERO; (j1 - j0) * d];
                    let mut dvb = vec![T::ZERO; (j1 - j0) * dv];
                    for j in j0..j1 {
                        let imin = if p.causal { j } else { 0 };
                        for i in imin..tq {
                            if let Some((pij, ds)) = p_ds(bhi, i, j) {
                                let row = bhi * tq + i;
                                axpy(
                                    &mut dvb[(j - j0) * dv..(j - j0 + 1) * dv],
                                    pij,
                                    &dout[row * dv..(row + 1) * dv],
                                );
                                axpy(
                                    &mut dk[(j - j0) * d..(j - j0 + 1) * d],
                                    ds * scale,
                                    &q[qo + i * d..qo + (i + 1) * d],
                                );
                            }
                        }
                    }
                    (dk, dvb)
                },
            )
        })
        .collect();

    let dq = dq_blocks.concat();
    let mut dk = Vec::with_capacity(dm.bh * tk * d);
    let mut dvv = Vec::with_capacity(dm.bh * tk * dv);
    for (a, b) in dkv_blocks {
        dk.extend(a);
        dvv.extend(b);
    }
    (dq, dk, dvv)
}

/// The backward of short sequences (`Tq * Tk <= SMALL_SCORES`, e.g. a ViT's 5 tokens or a
/// caption's 32 bytes): one task per batch·head computes each `p_ij` and `dS_ij` once into a
/// `Tq x Tk` scratch and takes dQ, dK and dV from it, instead of recomputing both in the
/// dQ pass and again in the dK/dV pass. Same formulas and the same fixed summation order for
/// any thread count (i ascending for dK/dV, j ascending for dQ).
#[allow(clippy::too_many_arguments)]
fn bwd_small<T: Float>(
    q: &[T],
    k: &[T],
    v: &[T],
    o: &[T],
    lse: &[T],
    dout: &[T],
    dm: Dims,
    mk: &Masks,
    p: AttnParams,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let (tq, tk, d, dv) = (dm.tq, dm.tk, dm.d, dm.dv);
    let scale = T::from_f64(p.scale);
    // D_i = dO_i . O_i
    let big_d: Vec<T> = (0..dm.bh * tq)
        .map(|r| dot(&dout[r * dv..(r + 1) * dv], &o[r * dv..(r + 1) * dv]))
        .collect();
    let mut dq = vec![T::ZERO; dm.bh * tq * d];
    let mut dk = vec![T::ZERO; dm.bh * tk * d];
    let mut dvv = vec![T::ZERO; dm.bh * tk * dv];
    dq.par_chunks_mut(tq * d)
        .zip(dk.par_chunks_mut(tk * d))
        .zip(dvv.par_chunks_mut(tk * dv))
        .enumerate()
        .for_each(|(bhi, ((dq, dk), dvb))| {
            vectorized(
                #[inline(always)]
                || {
                    let (qs, ks) = (&q[bhi * tq * d..], &k[bhi * tk * d..]);
                    let vs = &v[bhi * tk * dv..];
                    let mut pm = vec![T::ZERO; tq * tk];
                    let mut ds = vec![T::ZERO; tq * tk];
                    for i in 0..tq {
                        let row = bhi * tq + i;
                        let l = lse[row];
                        if l == T::NEG_INFINITY {
                            continue;
                        }
                        let jmax = if p.causal { (i + 1).min(tk) } else { tk };
                        let (qi, doi) = (&qs[i * d..(i + 1) * d], &dout[row * dv..(row + 1) * dv]);
                        for j in 0..jmax {
                            if !mk.allowed(bhi, i, j) {
                                continue;
                            }
                            let s = scale * dot(qi, &ks[j * d..(j + 1) * d]);
                            let pij = (s - l).exp();
                            let dp = dot(doi, &vs[j * dv..(j + 1) * dv]);
                            pm[i * tk + j] = pij;
                            ds[i * tk + j] = pij * (dp - big_d[row]) * scale;
                        }
                    }
                    for i in 0..tq {
                        let dq_r = &mut dq[i * d..(i + 1) * d];
                        for j in 0..tk {
                            let g = ds[i * tk + j];
                            if g != T::ZERO {
                                axpy(dq_r, g, &ks[j * d..(j + 1) * d]);
                            }
                        }
                    }
                    for i in 0..tq {
                        let row = bhi * tq + i;
                        let (qi, doi) = (&qs[i * d..(i + 1) * d], &dout[row * dv..(row + 1) * dv]);
                        for j in 0..tk {
                            let (pij, g) = (pm[i * tk + j], ds[i * tk + j]);
                            if pij != T::ZERO {
                                axpy(&mut dvb[j * dv..(j + 1) * dv], pij, doi);
                            }
                            if g != T::ZERO {
                                axpy(&mut dk[j * d..(j + 1) * d], g, qi);
                            }
                        }
                    }
                },
            )
        });
    (dq, dk, dvv)
}

const OP: &str = "scaled_dot_product_attention";

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

fn view<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<std::borrow::Cow<'a, [T]>> {
    Ok(contiguous_cow(s.as_slice::<T>(OP)?, l))
}

impl AttentionBackend for CpuStorage {
    fn attention_fwd(
        &self,
        q_layout: &Layout,
        k: &Self,
        k_layout: &Layout,
        v: &Self,
        v_layout: &Layout,
        masks: &[AttnMask<Self>],
        p: AttnParams,
    ) -> Result<(Self, Self)> {
        let dm = Dims::of(q_layout, v_layout, k_layout, masks)?;
        let mk = masks_of(masks, p.causal, dm.h)?;
        macro_rules! run {
            ($t:ty) => {{
                let (q, k, v) = (
                    view::<$t>(self, q_layout)?,
                    view::<$t>(k, k_layout)?,
                    view::<$t>(v, v_layout)?,
                );
                let (o, lse) = fwd(&q, &k, &v, dm, &mk, p);
                (CpuStorage::from_vec(o), CpuStorage::from_vec(lse))
            }};
        }
        Ok(dispatch!(self.dtype(), run))
    }

    fn attention_bwd(
        &self,
        q_layout: &Layout,
        k: &Self,
        k_layout: &Layout,
        v: &Self,
        v_layout: &Layout,
        out: &Self,
        lse: &Self,
        d_out: &Self,
        d_out_layout: &Layout,
        masks: &[AttnMask<Self>],
        p: AttnParams,
    ) -> Result<(Self, Self, Self)> {
        let dm = Dims::of(q_layout, v_layout, k_layout, masks)?;
        let mk = masks_of(masks, p.causal, dm.h)?;
        macro_rules! run {
            ($t:ty) => {{
                let (q, k, v) = (
                    view::<$t>(self, q_layout)?,
                    view::<$t>(k, k_layout)?,
                    view::<$t>(v, v_layout)?,
                );
                let g = view::<$t>(d_out, d_out_layout)?;
                let (o, lse) = (out.as_slice::<$t>(OP)?, lse.as_slice::<$t>(OP)?);
                if o.len() != dm.bh * dm.tq * dm.dv || lse.len() != dm.bh * dm.tq {
                    return Err(Error::msg(format!(
                        "{OP}: saved output/lse do not match q and v"
                    )));
                }
                let (dq, dk, dv) = bwd(&q, &k, &v, o, lse, &g, dm, &mk, p);
                (
                    CpuStorage::from_vec(dq),
                    CpuStorage::from_vec(dk),
                    CpuStorage::from_vec(dv),
                )
            }};
        }
        Ok(dispatch!(self.dtype(), run))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The single-pass backward of short sequences equals the two-pass blocked one, with a
    /// key padding mask, a causal mask and a fully masked row.
    #[test]
    fn small_backward_matches_blocked() {
        let (b, h, tq, tk, d) = (2, 3, 7, 9, 4);
        let dm = Dims {
            h,
            tq,
            tk,
            d,
            dv: d,
            bh: b * h,
        };
        let val = |i: usize, f: f64| (i as f64 * f).sin() * 0.8;
        let q: Vec<f64> = (0..b * h * tq * d).map(|i| val(i, 0.37)).collect();
        let k: Vec<f64> = (0..b * h * tk * d).map(|i| val(i, 0.91)).collect();
        let v: Vec<f64> = (0..b * h * tk * d).map(|i| val(i, 0.53)).collect();
        let g: Vec<f64> = (0..b * h * tq * d).map(|i| val(i, 0.29)).collect();
        // Batch 0 pads its last 3 keys; batch 1 pads every key (all rows fully masked).
        let pad: Vec<u8> = (0..b * tk).map(|i| u8::from(i >= tk - 3)).collect();
        for causal in [false, true] {
            let mk = Masks {
                list: vec![(&pad[..], [tk, 0, 0, 1], 0, false)],
                causal,
                h,
            };
            let p = AttnParams { scale: 0.5, causal };
            let (o, lse) = fwd(&q, &k, &v, dm, &mk, p);
            let small = bwd_small(&q, &k, &v, &o, &lse, &g, dm, &mk, p);
            let blocked = bwd_blocked(&q, &k, &v, &o, &lse, &g, dm, &mk, p);
            for (x, y) in [
                (&small.0, &blocked.0),
                (&small.1, &blocked.1),
                (&small.2, &blocked.2),
            ] {
                for (a, c) in x.iter().zip(y.iter()) {
                    assert!((a - c).abs() < 1e-12, "causal {causal}: {a} vs {c}");
                }
            }
        }
    }
}
