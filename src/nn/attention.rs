//! Multi-head attention, self or cross, over the fused `scaled_dot_product_attention`.
//!
//! Shapes: `x` `[B, T, C]` -> q, k, v `[B, H, T, D]` with `D = C / H` (views made by
//! reshape + permute, no copy) -> fused attention -> `[B, T, C]` -> output projection.
//! Self-attention projects q, k and v with one `qkv` Linear `[3C, C]`; cross-attention
//! projects queries with `q` `[C, C]` and the context with `kv` `[2C, C_ctx]` (timm/nanoGPT
//! naming: `attn.qkv.weight`, `attn.proj.weight`).

use super::{children_parameters, Linear, Module};
use crate::ops::{
    scaled_dot_product_attention, scaled_dot_product_attention_packed, AttentionOpts,
};
use crate::{DType, Device, Error, Result, Tensor};

enum Projections {
    SelfAttention { qkv: Linear },
    Cross { q: Linear, kv: Linear },
}

pub struct MultiHeadAttention {
    pub num_heads: usize,
    pub dim: usize,
    proj_in: Projections,
    pub proj: Linear,
}

impl MultiHeadAttention {
    pub fn new_self(dim: usize, num_heads: usize, bias: bool, device: Device) -> Result<Self> {
        check_heads(dim, num_heads)?;
        Ok(MultiHeadAttention {
            num_heads,
            dim,
            proj_in: Projections::SelfAttention {
                qkv: Linear::new(dim, 3 * dim, bias, device)?,
            },
            proj: Linear::new(dim, dim, bias, device)?,
        })
    }
    /// Queries from `x` (width `dim`), keys and values from a context of width `context_dim`.
    pub fn new_cross(
        dim: usize,
        context_dim: usize,
        num_heads: usize,
        bias: bool,
        device: Device,
    ) -> Result<Self> {
        check_heads(dim, num_heads)?;
        Ok(MultiHeadAttention {
            num_heads,
            dim,
            proj_in: Projections::Cross {
                q: Linear::new(dim, dim, bias, device)?,
                kv: Linear::new(context_dim, 2 * dim, bias, device)?,
            },
            proj: Linear::new(dim, dim, bias, device)?,
        })
    }

    /// The same layer with its parameters converted to `dtype` (fresh leaves).
    pub fn into_dtype(self, dtype: DType) -> Result<Self> {
        let proj_in = match self.proj_in {
            Projections::SelfAttention { qkv } => Projections::SelfAttention {
                qkv: qkv.into_dtype(dtype)?,
            },
            Projections::Cross { q, kv } => Projections::Cross {
                q: q.into_dtype(dtype)?,
                kv: kv.into_dtype(dtype)?,
            },
        };
        Ok(MultiHeadAttention {
            num_heads: self.num_heads,
            dim: self.dim,
            proj_in,
            proj: self.proj.into_dtype(dtype)?,
        })
    }

    /// `[B, T, n*C]` -> `[n, B, H, T, D]` (a strided view).
    fn heads(&self, x: &Tensor, n: usize) -> Result<Tensor> {
        let (b, t) = (x.dims()[0], x.dims()[1]);
        let h = self.num_heads;
        x.reshape(vec![b, t, n, h, self.dim / h])?
            .permute(&[2, 0, 3, 1, 4])
    }

    /// `[B, T, n*C]` -> n tensors `[B, H, T, D]` (strided views).
    fn split_heads(&self, x: &Tensor, n: usize) -> Result<Vec<Tensor>> {
        let x = self.heads(x, n)?;
        (0..n).map(|i| x.narrow(0, i, 1)?.squeeze(0)).collect()
    }

    /// `x` `[B, T, C]`; `context` `[B, S, C_ctx]` for cross-attention (ignored by self-attention).
    pub fn forward(
        &self,
        x: &Tensor,
        context: Option<&Tensor>,
        opts: &AttentionOpts,
    ) -> Result<Tensor> {
        if x.rank() != 3 || x.dims()[2] != self.dim {
            return Err(Error::shape(
                "MultiHeadAttention",
                format!("expected [B, T, {}]", self.dim),
                &[x.shape()],
            ));
        }
        let out = match &self.proj_in {
            // q, k and v packed in one view, so that their gradients come back as one tensor.
            Projections::SelfAttention { qkv } => {
                scaled_dot_product_attention_packed(&self.heads(&qkv.forward(x)?, 3)?, opts)?
            }
            Projections::Cross { q, kv } => {
                let ctx = context.ok_or_else(|| {
                    Error::msg("MultiHeadAttention: cross-attention needs a context")
                })?;
                let q = self.split_heads(&q.forward(x)?, 1)?.remove(0);
                let [k, v] = two(self.split_heads(&kv.forward(ctx)?, 2)?)?;
                scaled_dot_product_attention(&q, &k, &v, opts)?
            }
        }; // [B, H, T, D]
        let (b, t) = (x.dims()[0], x.dims()[1]);
        let out = out.permute(&[0, 2, 1, 3])?.reshape(vec![b, t, self.dim])?;
        self.proj.forward(&out)
    }
}

fn two(parts: Vec<Tensor>) -> Result<[Tensor; 2]> {
    parts.try_into().map_err(|p: Vec<Tensor>| {
        Error::msg(format!(
            "MultiHeadAttention: expected 2 projections, got {}",
            p.len()
        ))
    })
}

fn check_heads(dim: usize, heads: usize) -> Result<()> {
    if heads == 0 || !dim.is_multiple_of(heads) {
        return Err(Error::msg(format!(
            "MultiHeadAttention: width {dim} does not split into {heads} heads"
        )));
    }
    Ok(())
}

impl Module for MultiHeadAttention {
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        match &self.proj_in {
            Projections::SelfAttention { qkv } => {
                children_parameters(&[("qkv", qkv), ("proj", &self.proj)])
            }
            Projections::Cross { q, kv } => {
                children_parameters(&[("q", q), ("kv", kv), ("proj", &self.proj)])
            }
        }
    }
}
