//! DDPM ancestral sampling (Ho et al. 2020, Algorithm 2), through the posterior
//! `q(x_{t-1} | x_t, x0)`:
//! ```text
//! mean = beta_t sqrt(ab_{t-1}) / (1 - ab_t) * x0 + (1 - ab_{t-1}) sqrt(alpha_t) / (1 - ab_t) * x_t
//! var  = (1 - ab_{t-1}) / (1 - ab_t) * beta_t          (beta-tilde; 0 at t = 0)
//! x_{t-1} = mean + sqrt(var) z
//! ```
//! with `x0` the model's prediction (clamped to [-1, 1] when asked), `ab_{-1} = 1`.

use super::schedule::{NoiseSchedule, Prediction};
use super::StepNoise;
use crate::{Result, Tensor};

/// One step from timestep `t` to `t - 1` given the predicted `x0` and the noise `z`.
pub fn ddpm_step(
    schedule: &NoiseSchedule,
    t: usize,
    x_t: &Tensor,
    x0: &Tensor,
    z: &Tensor,
) -> Result<Tensor> {
    let ab = schedule.alpha_bar(Some(t));
    let ab_prev = schedule.alpha_bar(t.checked_sub(1));
    let beta = schedule.betas[t];
    let c_x0 = beta * ab_prev.sqrt() / (1.0 - ab);
    let c_xt = (1.0 - ab_prev) * schedule.alphas[t].sqrt() / (1.0 - ab);
    let var = (1.0 - ab_prev) / (1.0 - ab) * beta;
    let mean = x0.affine(c_x0, 0.0)?.add(&x_t.affine(c_xt, 0.0)?)?;
    if t == 0 {
        Ok(mean)
    } else {
        mean.add(&z.affine(var.sqrt(), 0.0)?)
    }
}

/// Runs all `T` steps from `x_T`. `model(x_t, t)` returns the network's output for the whole
/// batch at timestep `t`; `on_step` is called after each step (progress bars).
pub fn ddpm_sample(
    schedule: &NoiseSchedule,
    prediction: Prediction,
    x_start: &Tensor,
    noise: &StepNoise,
    clip_x0: bool,
    mut model: impl FnMut(&Tensor, usize) -> Result<Tensor>,
    mut on_step: impl FnMut(),
) -> Result<Tensor> {
    let b = x_start.dims().first().copied().unwrap_or(0);
    let mut x = x_start.clone();
    for t in (0..schedule.num_steps()).rev() {
        let ts = vec![t; b];
        let out = model(&x, t)?;
        let (x0, _) = schedule.split_prediction(prediction, &x, &out, &ts, clip_x0)?;
        x = ddpm_step(schedule, t, &x, &x0, &noise.at(t, &x)?)?;
        on_step();
    }
    Ok(x)
}
