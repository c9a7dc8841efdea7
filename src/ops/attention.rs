//! Fused scaled dot-product attention with an analytic backward that never stores the
//! `Tq x Tk` probability matrix.
//!
//! Forward: `out = softmax(q k^T · scale + mask) v`, computed flash-style by the backend
//! (online softmax over key blocks); saved for backward are q, k, v, the output and the
//! per-row logsumexp `lse` (`B·H·Tq` values), so memory is linear in the sequence length.
//! Backward (recomputing `P = exp(S - lse)` block by block):
//! `D_i = Σ_d dO_id O_id`, `dS = P ∘ (dO V^T - D)`, `dQ = dS K · scale`,
//! `dK = dS^T Q · scale`, `dV = P^T dO`.
//!
//! Masks combine (a key is attended only if every mask allows it). A query row whose keys are
//! all masked outputs zeros and gets zero gradient (never NaN). q, k, v may be strided views
//! (e.g. a `permute` of a `[B, T, H, D]` projection): the CPU backend gathers such views into
//! contiguous copies once per call; masks are read in place through broadcast strides.

use crate::backend::attention::{AttnMask, AttnParams};
use crate::tensor::{DType, Layout, Shape, Tensor};
use crate::{Error, Result};

/// Masks and options. Semantics follow PyTorch: `attn_mask` is a u8 mask broadcastable to
/// `[B, H, Tq, Tk]` with 1 = may attend (SDPA's boolean mask); `key_padding_mask` is a u8
/// `[B, Tk]` with 1 = padding, ignored (MultiheadAttention's convention); `causal` hides keys
/// after the query position (aligned to the top-left, as SDPA's `is_causal`).
#[derive(Clone, Debug, Default)]
pub struct AttentionOpts {
    pub causal: bool,
    pub attn_mask: Option<Tensor>,
    pub key_padding_mask: Option<Tensor>,
    /// Defaults to `1/sqrt(head_dim)`.
    pub scale: Option<f64>,
}

const OP: &str = "scaled_dot_product_attention";

/// The masks' layouts broadcast to `[B, H, Tq, Tk]`, with their semantics.
fn mask_layouts(opts: &AttentionOpts, full: &Shape) -> Result<Vec<(Tensor, Layout, bool)>> {
    let mut out = Vec::new();
    if let Some(m) = &opts.attn_mask {
        if m.dtype() != DType::U8 {
            return Err(Error::UnsupportedDType {
                op: OP,
                dtype: m.dtype(),
                expected: "a u8 attn_mask (1 = may attend)",
            });
        }
        let l = m.layout().broadcast_as(full).map_err(|_| {
            Error::shape(
                OP,
                "attn_mask must broadcast to [B, H, Tq, Tk]",
                &[m.shape(), full],
            )
        })?;
        out.push((m.detach(), l, true));
    }
    if let Some(m) = &opts.key_padding_mask {
        let (b, tk) = (full.dims()[0], full.dims()[3]);
        if m.dtype() != DType::U8 {
            return Err(Error::UnsupportedDType {
                op: OP,
                dtype: m.dtype(),
                expected: "a u8 key_padding_mask (1 = padding)",
            });
        }
        if m.dims() != [b, tk] {
            return Err(Error::shape(
                OP,
                "key_padding_mask must have shape [B, Tk]",
                &[m.shape(), full],
            ));
        }
        let s = m.layout().strides();
        let l = Layout::new(full.clone(), vec![s[0], 0, 0, s[1]], m.layout().offset());
        out.push((m.detach(), l, false));
    }
    Ok(out)
}

/// `softmax(q k^T * scale + mask) v` with q `[B, H, Tq, D]`, k `[B, H, Tk, D]`, v `[B, H, Tk, Dv]`.
pub fn scaled_dot_product_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opts: &AttentionOpts,
) -> Result<Tensor> {
    let fwd = Forward::run(q, k, v, opts)?;
    if !crate::autograd::is_recording(&[q, k, v]) {
        return Ok(fwd.out);
    }
    let out = fwd.out.clone();
    let saved = fwd.saved(q, k, v);
    Ok(Tensor::record(out, OP, &[q, k, v], move |g| {
        let (dq, dk, dv) = saved.backward(g)?;
        Ok(vec![Some(dq), Some(dk), Some(dv)])
    }))
}

/// [`scaled_dot_product_attention`] of a packed `qkv` `[3, B, H, T, D]` (q, k and v its three
/// slices along dim 0; any strides, typically a permuted view of a `[B, T, 3, H, D]` Linear
/// output), as FlashAttention's `qkvpacked` entry point. The output is the same; the
/// gradient is one `[3, B, H, T, D]` tensor, built by stacking dq, dk and dv in one pass.
/// Taking the three slices with `narrow` instead gives each slice's backward a zero-filled
/// full-size gradient, which the graph then adds up: a self-attention layer of the char
/// transformer moved ~150 MB for that where this moves ~25 MB.
pub fn scaled_dot_product_attention_packed(qkv: &Tensor, opts: &AttentionOpts) -> Result<Tensor> {
    if qkv.rank() != 5 || qkv.dims()[0] != 3 {
        return Err(Error::shape(
            OP,
            "expected a packed qkv [3, B, H, T, D]",
            &[qkv.shape()],
        ));
    }
    let base = qkv.detach();
    let part = |i: usize| base.narrow(0, i, 1)?.squeeze(0);
    let (q, k, v) = (part(0)?, part(1)?, part(2)?);
    let fwd = Forward::run(&q, &k, &v, opts)?;
    if !crate::autograd::is_recording(&[qkv]) {
        return Ok(fwd.out);
    }
    let out = fwd.out.clone();
    let saved = fwd.saved(&q, &k, &v);
    Ok(Tensor::record(out, OP, &[qkv], move |g| {
        let (dq, dk, dv) = saved.backward(g)?;
        // Stacked along the layout the input most likely has ([B, T, 3, H, D] in memory),
        // then viewed as [3, B, H, T, D]: the permute and reshape back to the Linear's
        // output are then free.
        let lead = |t: Tensor| t.permute(&[0, 2, 1, 3]);
        let packed = Tensor::stack(&[lead(dq)?, lead(dk)?, lead(dv)?], 2)?;
        Ok(vec![Some(packed.permute(&[2, 0, 3, 1, 4])?)])
    }))
}

/// A forward pass: the output, and what its backward needs.
struct Forward {
    out: Tensor,
    lse: crate::backend::Storage,
    masks: Vec<(Tensor, Layout, bool)>,
    p: AttnParams,
}

/// What the backward keeps: detached inputs and output, the row logsumexp, the masks.
struct Saved {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: crate::backend::Storage,
    masks: Vec<(Tensor, Layout, bool)>,
    p: AttnParams,
}

/// The masks as the backend reads them (borrowing the guards' storages).
fn mask_views<'a, S>(
    masks: &'a [(Tensor, Layout, bool)],
    guards: &'a [S],
) -> Vec<AttnMask<'a, crate::backend::Storage>>
where
    S: std::ops::Deref<Target = crate::backend::Storage>,
{
    masks
        .iter()
        .zip(guards)
        .map(|((_, l, a), g)| AttnMask {
            storage: &**g,
            layout: l.clone(),
            attend_if_set: *a,
        })
        .collect()
}

impl Forward {
    fn run(q: &Tensor, k: &Tensor, v: &Tensor, opts: &AttentionOpts) -> Result<Forward> {
        q.check_float(OP)?;
        q.check_same(k, OP)?;
        q.check_same(v, OP)?;
        let bad = || {
            Error::shape(
                OP,
                "expected q [B, H, Tq, D], k [B, H, Tk, D], v [B, H, Tk, Dv]",
                &[q.shape(), k.shape(), v.shape()],
            )
        };
        if q.rank() != 4 || k.rank() != 4 || v.rank() != 4 {
            return Err(bad());
        }
        let (qd, kd, vd) = (q.dims(), k.dims(), v.dims());
        if qd[0] != kd[0] || qd[0] != vd[0] || qd[1] != kd[1] || qd[1] != vd[1] {
            return Err(bad());
        }
        if qd[3] != kd[3] || kd[2] != vd[2] {
            return Err(bad());
        }
        for m in [&opts.attn_mask, &opts.key_padding_mask]
            .into_iter()
            .flatten()
        {
            if m.device() != q.device() {
                return Err(Error::DeviceMismatch {
                    op: OP,
                    lhs: q.device(),
                    rhs: m.device(),
                });
            }
        }
        let scale = opts.scale.unwrap_or(1.0 / (qd[3].max(1) as f64).sqrt());
        let p = AttnParams {
            scale,
            causal: opts.causal,
        };
        let full = Shape::new(vec![qd[0], qd[1], qd[2], kd[2]]);
        let masks = mask_layouts(opts, &full)?;
        let (o, lse) = {
            let guards: Vec<_> = masks.iter().map(|(t, _, _)| t.storage()).collect();
            q.storage().attention_fwd(
                q.layout(),
                &k.storage(),
                k.layout(),
                &v.storage(),
                v.layout(),
                &mask_views(&masks, &guards),
                p,
            )?
        };
        let out = Tensor::from_storage(o, vec![qd[0], qd[1], qd[2], vd[3]]);
        Ok(Forward { out, lse, masks, p })
    }

    fn saved(self, q: &Tensor, k: &Tensor, v: &Tensor) -> Saved {
        Saved {
            q: q.detach(),
            k: k.detach(),
            v: v.detach(),
            out: self.out.detach(),
            lse: self.lse,
            masks: self.masks,
            p: self.p,
        }
    }
}

impl Saved {
    /// dq, dk, dv (contiguous, the inputs' shapes) from the output gradient `g`.
    fn backward(&self, g: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let guards: Vec<_> = self.masks.iter().map(|(t, _, _)| t.storage()).collect();
        let (dq, dk, dv) = self.q.storage().attention_bwd(
            self.q.layout(),
            &self.k.storage(),
            self.k.layout(),
            &self.v.storage(),
            self.v.layout(),
            &self.out.storage(),
            &self.lse,
            &g.storage(),
            g.layout(),
            &mask_views(&self.masks, &guards),
            self.p,
        )?;
        Ok((
            Tensor::from_storage(dq, self.q.shape().clone()),
            Tensor::from_storage(dk, self.k.shape().clone()),
            Tensor::from_storage(dv, self.v.shape().clone()),
        ))
    }
}
