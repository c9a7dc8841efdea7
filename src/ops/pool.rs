//! Pooling and nearest upsampling over `[N, C, H, W]`.

use crate::tensor::Tensor;
use crate::Result;

impl Tensor {
    pub fn max_pool2d(
        &self,
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
    ) -> Result<Tensor> {
        let _ = (kernel, stride, padding);
        todo!("max_pool2d")
    }
    /// Average pooling; padded positions count in the divisor (PyTorch's `count_include_pad=True`).
    pub fn avg_pool2d(
        &self,
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
    ) -> Result<Tensor> {
        let _ = (kernel, stride, padding);
        todo!("avg_pool2d")
    }
    pub fn adaptive_avg_pool2d(&self, out: (usize, usize)) -> Result<Tensor> {
        let _ = out;
        todo!("adaptive_avg_pool2d")
    }
    /// Nearest-neighbour resize to `out = (H_out, W_out)` (PyTorch's `mode="nearest"`).
    pub fn upsample_nearest2d(&self, out: (usize, usize)) -> Result<Tensor> {
        let _ = out;
        todo!("upsample_nearest2d")
    }
}
