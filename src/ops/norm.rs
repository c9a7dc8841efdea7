//! Fused normalizations with analytic backward: layer_norm, group_norm, batch_norm.

use crate::tensor::Tensor;
use crate::Result;

impl Tensor {
    /// Normalizes over the last dim; `weight`/`bias` have shape `[C]` (C = last dim).
    pub fn layer_norm(
        &self,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f64,
    ) -> Result<Tensor> {
        let _ = (weight, bias, eps);
        todo!("layer_norm")
    }
    /// Input `[N, C, *]`, statistics per (sample, group); `weight`/`bias` shape `[C]`.
    pub fn group_norm(
        &self,
        num_groups: usize,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f64,
    ) -> Result<Tensor> {
        let _ = (num_groups, weight, bias, eps);
        todo!("group_norm")
    }
    /// Input `[N, C, *]`. In training, normalizes with batch statistics and updates the running
    /// statistics in place (`running = (1-momentum) running + momentum batch`, unbiased var);
    /// in eval, uses the running statistics.
    #[allow(clippy::too_many_arguments)]
    pub fn batch_norm(
        &self,
        running_mean: Option<&Tensor>,
        running_var: Option<&Tensor>,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        training: bool,
        momentum: f64,
        eps: f64,
    ) -> Result<Tensor> {
        let _ = (
            running_mean,
            running_var,
            weight,
            bias,
            training,
            momentum,
            eps,
        );
        todo!("batch_norm")
    }
}
