//! Fused attention on the GPU (`kernels/attention.cu`; the math is in `backend/attention.rs`):
//! flash-style forward (online softmax over key tiles in shared memory, saves lse) and a
//! backward that recomputes the probabilities from lse in two passes (dq per query tile, dk and
//! dv per key tile: no atomics). q, k, v, dO and the masks are read through their 4-D strides.
//! Head dims up to 256 (kernels instantiated for max(D, Dv) <= 32, 64, 128, 256); tiles of
//! 16 rows x 32 keys; more than 48 KiB of shared memory (large head dims, f64) is requested
//! from the driver explicitly.

use super::kernel_io::{launch_large_smem, ll, push_strides};
use super::storage::float_suffix;
use super::{kernel_args, CudaStorage, KernelArgs, LaunchConfig};
use crate::backend::attention::{AttentionBackend, AttnMask, AttnParams, AttnShape};
use crate::backend::BackendStorage;
use crate::tensor::{DType, Layout};
use crate::{Error, Result};

const FILE: &str = "attention.cu";
const OP: &str = "scaled_dot_product_attention";
/// Query rows (forward, dq) or keys (dk/dv) per block; keys or queries per shared-memory step.
const TILE: usize = 16;
const STEP: usize = 32;
const MAX_HEAD_DIM: usize = 256;

#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    h: usize,
    tq: usize,
    tk: usize,
    d: usize,
    dv: usize,
}

impl Dims {
    fn of(ql: &Layout, kl: &Layout, vl: &Layout, masks: &[AttnMask<CudaStorage>]) -> Result<Dims> {
        let s = AttnShape::of(OP, ql, kl, vl, masks)?;
        let dims = Dims {
            b: s.b,
            h: s.h,
            tq: s.tq,
            tk: s.tk,
            d: s.d,
            dv: s.dv,
        };
        if dims.d.max(dims.dv) > MAX_HEAD_DIM {
            return Err(Error::msg(format!(
                "{OP}: head dims {} (q, k) and {} (v) exceed the {MAX_HEAD_DIM} the GPU kernels take",
                dims.d, dims.dv
            )));
        }
        Ok(dims)
    }
    /// The `_c{CH}` instantiation: lanes own CH columns each.
    fn chunks(&self) -> usize {
        match self.d.max(self.dv) {
            0..=32 => 1,
            33..=64 => 2,
            65..=128 => 4,
            _ => 8,
        }
    }
    fn shape_args(&self, a: KernelArgs, causal: bool) -> KernelArgs {
        a.arg(ll(self.h))
            .arg(ll(self.tq))
            .arg(ll(self.tk))
            .arg(ll(self.d))
            .arg(ll(self.dv))
            .arg(causal as i64)
    }
}

/// Two mask slots (pointer, 4 strides, mode: 0 none, 1 allowed when set, 2 allowed when clear).
fn mask_args(mut a: KernelArgs, masks: &[AttnMask<CudaStorage>]) -> Result<KernelArgs> {
    if masks.len() > 2 {
        return Err(Error::msg(format!(
            "{OP}: at most two masks on the GPU, got {}",
            masks.len()
        )));
    }
    for slot in 0..2 {
        match masks.get(slot) {
            Some(m) => {
                crate::backend::same_dtype(OP, m.storage.dtype(), DType::U8)?;
                m.storage.check_view(OP, &m.layout)?;
                a = a.arg(m.storage.ptr_at(m.layout.offset()));
                a = push_strides(a, &m.layout);
                a = a.arg(if m.attend_if_set { 1i64 } else { 2i64 });
            }
            None => {
                a = a.arg(0u64);
                for _ in 0..5 {
                    a = a.arg(0i64);
                }
            }
        }
    }
    Ok(a)
}

fn config(blocks: usize, smem_elems: usize, elem_bytes: usize) -> LaunchConfig {
    LaunchConfig {
        grid: (blocks as u32, 1, 1),
        block: (128, 1, 1),
        shared_mem_bytes: (smem_elems * elem_bytes) as u32,
    }
}

impl AttentionBackend for CudaStorage {
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
        let dm = Dims::of(q_layout, k_layout, v_layout, masks)?;
        let sfx = float_suffix(OP, self.dtype())?;
        for (s, l) in [(self, q_layout), (k, k_layout), (v, v_layout)] {
            crate::backend::same_dtype(OP, self.dtype(), s.dtype())?;
            s.check_view(OP, l)?;
        }
        let dev = self.dev();
        let rows = dm.b * dm.h * dm.tq;
        let o = CudaStorage::alloc(dev, rows * dm.dv, self.dtype())?;
        let lse = CudaStorage::alloc(dev, rows, self.dtype())?;
        if rows == 0 {
            return Ok((o, lse));
        }
        let args = kernel_args![
            self.ptr_at(q_layout.offset()),
            k.ptr_at(k_layout.offset()),
            v.ptr_at(v_layout.offset()),
            o.ptr(),
            lse.ptr()
        ];
        let args = dm.shape_args(args, p.causal);
        let args = push_strides(
            push_strides(push_strides(args, q_layout), k_layout),
            v_layout,
        );
        let args = mask_args(args, masks)?.arg(p.scale);
        let smem = TILE * dm.d + STEP * (dm.d + 1) + STEP * dm.dv;
        let cfg = config(
            dm.b * dm.h * dm.tq.div_ceil(TILE),
            smem,
            self.dtype().size_in_bytes(),
        );
        let name = format!("attention_fwd_c{}_{sfx}", dm.chunks());
        launch_large_smem(dev, FILE, &name, cfg, args)?;
        Ok((o, lse))
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
        let dm = Dims::of(q_layout, k_layout, v_layout, masks)?;
        let sfx = float_suffix(OP, self.dtype())?;
        for (s, l) in [
            (self, q_layout),
            (k, k_layout),
            (v, v_layout),
            (d_out, d_out_layout),
        ] {
            crate::backend::same_dtype(OP, self.dtype(), s.dtype())?;
            s.check_view(OP, l)?;
        }
        if d_out_layout.dims() != [dm.b, dm.h, dm.tq, dm.dv] {
            return Err(Error::shape(
                OP,
                "the output gradient does not match q and v",
                &[d_out_layout.shape()],
            ));
        }
        let rows = dm.b * dm.h * dm.tq;
        if out.len != rows * dm.dv || lse.len != rows {
            return Err(Error::msg(format!(
                "{OP}: saved output/lse do not match q and v"
            )));
        }
        let dev = self.dev();
        let dq = CudaStorage::alloc(dev, rows * dm.d, self.dtype())?;
        let dk = CudaStorage::alloc(dev, dm.b * dm.h * dm.tk * dm.d, self.dtype())?;
        let dv = CudaStorage::alloc(dev, dm.b * dm.h * dm.tk * dm.dv, self.dtype())?;
        let delta = CudaStorage::alloc(dev, rows, self.dtype())?;
        let e = self.dtype().size_in_bytes();
        let (qp, kp, vp) = (
            self.ptr_at(q_layout.offset()),
            k.ptr_at(k_layout.offset()),
            v.ptr_at(v_layout.offset()),
        );
        let gp = d_out.ptr_at(d_out_layout.offset());

        // D_i = dO_i . O_i, one warp per row.
        let args = dm
            .shape_args(kernel_args![out.ptr(), gp, delta.ptr()], p.causal)
            .arg(ll(rows));
        let args = push_strides(args, d_out_layout);
        dev.launch(
            FILE,
            &format!("attention_bwd_delta_{sfx}"),
            config(rows.div_ceil(4), 0, e),
            args,
        )?;

        let smem = TILE * dm.d + TILE * dm.dv + STEP * (dm.d + 1) + STEP * (dm.dv + 1);
        let operand_args = |a: KernelArgs| -> Result<KernelArgs> {
            let a = dm.shape_args(a, p.causal);
            let a = push_strides(push_strides(a, q_layout), k_layout);
            let a = push_strides(push_strides(a, v_layout), d_out_layout);
            Ok(mask_args(a, masks)?.arg(p.scale))
        };
        let inputs = || kernel_args![qp, kp, vp, gp, lse.ptr(), delta.ptr()];
        let args = operand_args(inputs().arg(dq.ptr()))?;
        let cfg = config(dm.b * dm.h * dm.tq.div_ceil(TILE), smem, e);
        launch_large_smem(
            dev,
            FILE,
            &format!("attention_bwd_dq_c{}_{sfx}", dm.chunks()),
            cfg,
            args,
        )?;
        let args = operand_args(inputs().arg(dk.ptr()).arg(dv.ptr()))?;
        let cfg = config(dm.b * dm.h * dm.tk.div_ceil(TILE), smem, e);
        launch_large_smem(
            dev,
            FILE,
            &format!("attention_bwd_dkdv_c{}_{sfx}", dm.chunks()),
            cfg,
            args,
        )?;
        Ok((dq, dk, dv))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_dims_pick_the_smallest_instantiation_that_fits() {
        let dims = |d, dv| Dims {
            b: 1,
            h: 1,
            tq: 1,
            tk: 1,
            d,
            dv,
        };
        let cases = [
            (1, 1, 1),
            (32, 8, 1),
            (33, 8, 2),
            (16, 64, 2),
            (65, 3, 4),
            (128, 128, 4),
        ];
        for (d, dv, ch) in cases {
            assert_eq!(dims(d, dv).chunks(), ch, "D {d}, Dv {dv}");
        }
        assert_eq!(dims(129, 256).chunks(), 8);
    }
}
