//! Fused scaled dot-product attention with an analytic backward that never stores the
//! `Tq x Tk` probability matrix.

use crate::tensor::Tensor;
use crate::Result;

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

/// `softmax(q k^T * scale + mask) v` with q `[B, H, Tq, D]`, k `[B, H, Tk, D]`, v `[B, H, Tk, Dv]`.
pub fn scaled_dot_product_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opts: &AttentionOpts,
) -> Result<Tensor> {
    let _ = (q, k, v, opts);
    todo!("scaled_dot_product_attention")
}
