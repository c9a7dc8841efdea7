//! Reductions on the GPU (`kernels/reduce.cu`). The view is split into kept dims (one output
//! each, in row-major order, i.e. keepdim layout) and reduced dims; short reductions take one
//! warp per output, long ones one block per output.

use super::storage::float_suffix;
use super::{kernel_args, CudaStorage, LaunchConfig, StridedArg};
use crate::backend::reduce::{ReduceBackend, ReduceOp};
use crate::tensor::{DType, Layout};
use crate::{Error, Result};

const FILE: &str = "reduce.cu";
const BLOCK: u32 = 256;
/// Reductions longer than this get a whole block per output.
const WARP_MAX_LEN: usize = 4096;
const MAX_GRID: usize = 1 << 16;

impl ReduceBackend for CudaStorage {
    fn reduce(&self, op: ReduceOp, layout: &Layout, dims: &[usize]) -> Result<Self> {
        let sfx = float_suffix(op.name(), self.dtype)?;
        self.check_view(op.name(), layout)?;
        let rank = layout.dims().len();
        if dims.windows(2).any(|w| w[0] >= w[1]) || dims.iter().any(|&d| d >= rank) {
            return Err(Error::shape(
                op.name(),
                format!("reduced dims {dims:?} must be sorted, unique and below the rank"),
                &[layout.shape()],
            ));
        }
        let (mut kd, mut ks, mut rd, mut rs) = (vec![], vec![], vec![], vec![]);
        for (d, (&size, &stride)) in layout.dims().iter().zip(layout.strides()).enumerate() {
            if dims.contains(&d) {
                rd.push(size);
                rs.push(stride);
            } else {
                kd.push(size);
                ks.push(stride);
            }
        }
        let k_count: usize = kd.iter().product();
        let r_count: usize = rd.iter().product();
        let kept = StridedArg::from_parts(&kd, &ks, layout.offset())?;
        let red = StridedArg::from_parts(&rd, &rs, 0)?;
        let arg = matches!(op, ReduceOp::ArgMax | ReduceOp::ArgMin);
        let out_dtype = if arg { DType::I64 } else { self.dtype };
        let out = CudaStorage::alloc(self.dev(), k_count, out_dtype)?;
        let per_block = r_count > WARP_MAX_LEN;
        let blocks = if per_block {
            k_count
        } else {
            k_count.div_ceil((BLOCK / 32) as usize)
        };
        let cfg = LaunchConfig {
            grid: (blocks.min(MAX_GRID) as u32, 1, 1),
            block: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let shape = if per_block { "block" } else { "warp" };
        let (name, code) = match op {
            ReduceOp::Sum => (format!("reduce_{shape}_{sfx}"), 0i32),
            ReduceOp::Max => (format!("reduce_{shape}_{sfx}"), 1),
            ReduceOp::Min => (format!("reduce_{shape}_{sfx}"), 2),
            ReduceOp::ArgMax => (format!("argreduce_{shape}_{sfx}"), 1),
            ReduceOp::ArgMin => (format!("argreduce_{shape}_{sfx}"), 0),
        };
        self.dev().launch(
            FILE,
            &name,
            cfg,
            kernel_args![
                out.ptr(),
                self.ptr(),
                kept,
                red,
                k_count as u64,
                r_count as u64,
                code
            ],
        )?;
        Ok(out)
    }
}
