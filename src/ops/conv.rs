//! 2-D convolution (stride, padding, dilation, groups), forward and both backwards.

use crate::tensor::Tensor;
use crate::Result;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dParams {
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
    pub groups: usize,
}

impl Default for Conv2dParams {
    fn default() -> Self {
        Conv2dParams {
            stride: (1, 1),
            padding: (0, 0),
            dilation: (1, 1),
            groups: 1,
        }
    }
}

impl Tensor {
    /// Input `[N, C_in, H, W]`, weight `[C_out, C_in/groups, KH, KW]`, bias `[C_out]`.
    pub fn conv2d(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        params: Conv2dParams,
    ) -> Result<Tensor> {
        let _ = (weight, bias, params);
        todo!("conv2d")
    }
}
