//! Batched strided GEMM on the GPU (`kernels/gemm.cu`): `out[b] = lhs[b] @ rhs[b]` read
//! straight through both layouts' strides (transposed and batch-broadcast operands need no
//! copy). Picks the 128x128 f32 tile when it still fills the GPU, else the 64x64 one; when the
//! output has too few tiles to occupy the SMs and K is long, splits K over grid.y into a
//! workspace that a second kernel sums in a fixed order (deterministic).

use super::kernel_io::ll;
use super::storage::float_suffix;
use super::{kernel_args, CudaStorage, LaunchConfig};
use crate::backend::elementwise::{BinaryOp, ElementwiseBackend};
use crate::backend::matmul::MatmulBackend;
use crate::backend::BackendStorage;
use crate::tensor::Layout;
use crate::{Error, Result};

const FILE: &str = "gemm.cu";
const OP: &str = "matmul";

/// Most K splits, and the least reduction length each split keeps.
const MAX_SPLITS: usize = 16;
const MIN_K_PER_SPLIT: usize = 256;

impl MatmulBackend for CudaStorage {
    fn matmul(
        &self,
        lhs_layout: &Layout,
        rhs: &Self,
        rhs_layout: &Layout,
        bias: Option<(&Self, &Layout)>,
    ) -> Result<Self> {
        let out = self.gemm(lhs_layout, rhs, rhs_layout)?;
        let Some((b, bl)) = bias else {
            return Ok(out);
        };
        // The bias as a second kernel: the elementwise add over `[B, M, N]` with the bias
        // broadcast along rows (an epilogue in the GEMM is issue 5's work).
        let (l, r) = (lhs_layout.dims(), rhs_layout.dims());
        let shape = crate::tensor::Shape::new(vec![l[0], l[1], r[2]]);
        out.binary(
            BinaryOp::Add,
            &Layout::contiguous(shape.clone()),
            b,
            &bl.broadcast_as(&shape)?,
        )
    }
}

impl CudaStorage {
    /// `out[b] = lhs[b] @ rhs[b]`.
    fn gemm(&self, lhs_layout: &Layout, rhs: &Self, rhs_layout: &Layout) -> Result<Self> {
        crate::backend::same_dtype(OP, self.dtype(), rhs.dtype())?;
        let (l, r) = (lhs_layout.dims(), rhs_layout.dims());
        if l.len() != 3 || r.len() != 3 || l[0] != r[0] || l[2] != r[1] {
            return Err(Error::ShapeMismatch {
                op: OP,
                lhs: lhs_layout.shape().clone(),
                rhs: rhs_layout.shape().clone(),
            });
        }
        self.check_view(OP, lhs_layout)?;
        rhs.check_view(OP, rhs_layout)?;
        let sfx = float_suffix(OP, self.dtype())?;
        let (batch, m, k, n) = (l[0], l[1], l[2], r[2]);
        let dev = self.dev();
        let out = CudaStorage::alloc(dev, batch * m * n, self.dtype())?;
        if out.len == 0 {
            return Ok(out);
        }
        let sms = dev.sm_count()?.max(1);
        let tiles = |t: usize| m.div_ceil(t) * n.div_ceil(t);
        let big = sfx == "f32" && tiles(128) * batch >= sms;
        let (name, tile) = match (sfx, big) {
            ("f32", true) => ("gemm_128x128_f32", 128),
            ("f32", false) => ("gemm_64x64_f32", 64),
            _ => ("gemm_64x64_f64", 64),
        };
        let blocks = tiles(tile) * batch;
        let splits = if blocks * 2 <= sms {
            (sms / blocks).min(k / MIN_K_PER_SPLIT).clamp(1, MAX_SPLITS)
        } else {
            1
        };
        let (ls, rs) = (lhs_layout.strides(), rhs_layout.strides());
        let workspace = if splits > 1 {
            Some(CudaStorage::alloc(dev, splits * out.len, self.dtype())?)
        } else {
            None
        };
        let dst = workspace.as_ref().map_or(out.ptr(), |w| w.ptr());
        let cfg = LaunchConfig {
            grid: (tiles(tile) as u32, splits as u32, batch.min(65535) as u32),
            block: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let args = kernel_args![
            self.ptr_at(lhs_layout.offset()),
            rhs.ptr_at(rhs_layout.offset()),
            dst,
            ll(batch),
            ll(m),
            ll(n),
            ll(k),
            ll(ls[0]),
            ll(ls[1]),
            ll(ls[2]),
            ll(rs[0]),
            ll(rs[1]),
            ll(rs[2])
        ];
        dev.launch(FILE, name, cfg, args)?;
        if let Some(ws) = &workspace {
            let reduce = format!("gemm_splitk_reduce_{sfx}");
            let args = kernel_args![ws.ptr(), out.ptr(), ll(out.len), ll(splits)];
            dev.launch(FILE, &reduce, super::launch_1d(out.len, 256), args)?;
        }
        Ok(out)
    }
}
