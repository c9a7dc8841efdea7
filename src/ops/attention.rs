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
        let views: Vec<AttnMask<_>> = masks
            .iter()
            .zip(&guards)
            .map(|((_, l, a), g)| AttnMask {
                storage: &**g,
                layout: l.clone(),
                attend_if_set: *a,
            })
            .collect();
        q.storage().attention_fwd(
            q.layout(),
            &k.storage(),
            k.layout(),
            &v.storage(),
            v.layout(),
            &views,
            p,
        )?
    };
    let out = Tensor::from_storage(o, vec![qd[0], qd[1], qd[2], vd[3]]);
    if !crate::autograd::is_recording(&[q, k, v]) {
        return Ok(out);
    }
    let lse = Tensor::from_storage(lse, vec![qd[0], qd[1], qd[2]]);
    let (qs, ks, vs, os) = (q.detach(), k.detach(), v.detach(), out.detach());
    Ok(Tensor::record(out, OP, &[q, k, v], move |g| {
        let guards: Vec<_> = masks.iter().map(|(t, _, _)| t.storage()).collect();
        let views: Vec<AttnMask<_>> = masks
            .iter()
            .zip(&guards)
            .map(|((_, l, a), g)| AttnMask {
                storage: &**g,
                layout: l.clone(),
                attend_if_set: *a,
            })
            .collect();
        let (dq, dk, dv) = qs.storage().attention_bwd(
            qs.layout(),
            &ks.storage(),
            ks.layout(),
            &vs.storage(),
            vs.layout(),
            &os.storage(),
            &lse.storage(),
            &g.storage(),
            g.layout(),
            &views,
            p,
        )?;
        Ok(vec![
            Some(Tensor::from_storage(dq, qs.shape().clone())),
            Some(Tensor::from_storage(dk, ks.shape().clone())),
            Some(Tensor::from_storage(dv, vs.shape().clone())),
        ])
    }))
}
