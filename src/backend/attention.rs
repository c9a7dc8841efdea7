//! Fused scaled dot-product attention primitives (flash-style: the `Tq x Tk` score and
//! probability matrices are never stored).
//!
//! Forward, per (batch, head) and query row i, over the allowed keys j:
//! `s_ij = scale·q_i·k_j`, `lse_i = log Σ_j exp(s_ij)`, `o_i = Σ_j exp(s_ij - lse_i)·v_j`,
//! computed with an online softmax (running max `m` and sum `l`, rescaling the partial output
//! whenever `m` grows). A row with no allowed key outputs zeros and `lse = -inf`.
//! Saved for backward: the output `o` and `lse` (one value per query row).
//!
//! Backward recomputes `p_ij = exp(s_ij - lse_i)` block by block:
//! `D_i = Σ_d dO_id·O_id`, `dP_ij = dO_i·v_j`, `dS_ij = p_ij·(dP_ij - D_i)`,
//! `dQ_i = scale·Σ_j dS_ij k_j`, `dK_j = scale·Σ_i dS_ij q_i`, `dV_j = Σ_i p_ij dO_i`.
//!
//! Memory: O(B·H·(Tq·(D+Dv) + Tk·(D+Dv))) in and out, plus O(block²) scratch per task;
//! nothing quadratic in the sequence length.

use super::{on_backend, operand, Operand, Storage};
use crate::tensor::{Device, Layout};
use crate::Result;

/// A u8 mask viewed (broadcast) as `[B, H, Tq, Tk]`. A key is allowed by this mask when its
/// byte is nonzero (`attend_if_set`, SDPA's boolean `attn_mask`) or zero (`!attend_if_set`,
/// a key-padding mask with 1 = padding).
pub struct AttnMask<'a, S> {
    pub storage: &'a S,
    pub layout: Layout,
    pub attend_if_set: bool,
}

/// The sizes of one attention call, `q: [B, H, Tq, D]`, `k: [B, H, Tk, D]`, `v: [B, H, Tk, Dv]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    pub b: usize,
    pub h: usize,
    pub tq: usize,
    pub tk: usize,
    pub d: usize,
    pub dv: usize,
}

impl AttnShape {
    /// Checks that the layouts of q, k, v and every mask fit together, for any backend (the op
    /// layer validates user input; this keeps a direct caller of a primitive from reading out
    /// of bounds).
    pub fn of<S>(
        op: &'static str,
        ql: &Layout,
        kl: &Layout,
        vl: &Layout,
        masks: &[AttnMask<S>],
    ) -> Result<AttnShape> {
        let (q, k, v) = (ql.dims(), kl.dims(), vl.dims());
        let ok = q.len() == 4
            && k.len() == 4
            && v.len() == 4
            && q[..2] == k[..2]
            && q[..2] == v[..2]
            && q[3] == k[3]
            && k[2] == v[2]
            && masks
                .iter()
                .all(|m| m.layout.dims() == [q[0], q[1], q[2], k[2]]);
        if !ok {
            return Err(crate::Error::shape(
                op,
                "inconsistent q, k, v or mask layouts",
                &[ql.shape(), kl.shape(), vl.shape()],
            ));
        }
        Ok(AttnShape {
            b: q[0],
            h: q[1],
            tq: q[2],
            tk: k[2],
            d: q[3],
            dv: v[3],
        })
    }
}

#[derive(Clone, Copy, Debug)]
pub struct AttnParams {
    pub scale: f64,
    /// Key j is hidden from query i when `j > i`.
    pub causal: bool,
}

pub trait AttentionBackend: Sized {
    /// q `[B,H,Tq,D]`, k `[B,H,Tk,D]`, v `[B,H,Tk,Dv]` (any strides). Returns
    /// `(out [B,H,Tq,Dv], lse [B,H,Tq])`, contiguous.
    #[allow(clippy::too_many_arguments)]
    fn attention_fwd(
        &self,
        q_layout: &Layout,
        k: &Self,
        k_layout: &Layout,
        v: &Self,
        v_layout: &Layout,
        masks: &[AttnMask<Self>],
        p: AttnParams,
    ) -> Result<(Self, Self)>;

    /// Returns `(dq, dk, dv)`, contiguous, shaped as q, k, v. `out`/`lse` are the forward's.
    #[allow(clippy::too_many_arguments)]
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
    ) -> Result<(Self, Self, Self)>;
}

/// The masks as storages of the first operand's backend, or a device mismatch.
fn masks_on<'a, S: Operand>(
    op: &'static str,
    d: Device,
    m: &[AttnMask<'a, Storage>],
) -> Result<Vec<AttnMask<'a, S>>> {
    m.iter()
        .map(|m| {
            Ok(AttnMask {
                storage: operand(op, d, m.storage)?,
                layout: m.layout.clone(),
                attend_if_set: m.attend_if_set,
            })
        })
        .collect()
}

impl Storage {
    #[allow(clippy::too_many_arguments)]
    pub fn attention_fwd(
        &self,
        q_layout: &Layout,
        k: &Storage,
        k_layout: &Layout,
        v: &Storage,
        v_layout: &Layout,
        masks: &[AttnMask<Storage>],
        p: AttnParams,
    ) -> Result<(Storage, Storage)> {
        const OP: &str = "attention";
        let d = self.device();
        on_backend!(self, |q| {
            let (o, lse) = q.attention_fwd(
                q_layout,
                operand(OP, d, k)?,
                k_layout,
                operand(OP, d, v)?,
                v_layout,
                &masks_on(OP, d, masks)?,
                p,
            )?;
            Ok((o.into_storage(), lse.into_storage()))
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub fn attention_bwd(
        &self,
        q_layout: &Layout,
        k: &Storage,
        k_layout: &Layout,
        v: &Storage,
        v_layout: &Layout,
        out: &Storage,
        lse: &Storage,
        d_out: &Storage,
        d_out_layout: &Layout,
        masks: &[AttnMask<Storage>],
        p: AttnParams,
    ) -> Result<(Storage, Storage, Storage)> {
        const OP: &str = "attention_backward";
        let d = self.device();
        on_backend!(self, |q| {
            let (dq, dk, dv) = q.attention_bwd(
                q_layout,
                operand(OP, d, k)?,
                k_layout,
                operand(OP, d, v)?,
                v_layout,
                operand(OP, d, out)?,
                operand(OP, d, lse)?,
                operand(OP, d, d_out)?,
                d_out_layout,
                &masks_on(OP, d, masks)?,
                p,
            )?;
            Ok((dq.into_storage(), dk.into_storage(), dv.into_storage()))
        })
    }
}
