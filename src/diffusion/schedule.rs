//! Noise schedules of the diffusion forward process (Ho et al. 2020, "Denoising Diffusion
//! Probabilistic Models"; Nichol & Dhariwal 2021, "Improved DDPM" for the cosine schedule).
//!
//! With `T` steps indexed `t = 0..T` (step `t` here is step `t + 1` of the papers):
//! ```text
//! alpha_t     = 1 - beta_t
//! alpha_bar_t = prod_{s <= t} alpha_s
//! q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)
//! x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps               (q_sample)
//! v_t = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0               (v-prediction)
//! ```
//! The model predicts either `eps` or `v` ([`Prediction`]); samplers convert any prediction to
//! the pair (`x0`, `eps`) with [`NoiseSchedule::split_prediction`], so they never need to know
//! which target was trained. Coefficients are kept in f64 and become `[B, 1, 1, 1]` tensors
//! (one value per sample, broadcast over the image) in the images' dtype.

use crate::{DType, Error, Result, Tensor};

/// How the betas are laid out over the `T` steps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BetaSchedule {
    /// Ho et al.: betas evenly spaced from `start` to `end` (1e-4 to 0.02 for T = 1000).
    Linear { start: f64, end: f64 },
    /// Latent diffusion's: square roots evenly spaced, then squared (0.00085 to 0.012).
    ScaledLinear { start: f64, end: f64 },
    /// Nichol & Dhariwal: `alpha_bar(t) = f(t) / f(0)`, `f(t) = cos^2(((t/T + s) / (1 + s)) pi/2)`,
    /// betas clipped at 0.999 so the last step stays finite. `s = 0.008`.
    Cosine { s: f64 },
}

impl BetaSchedule {
    pub fn linear() -> Self {
        BetaSchedule::Linear {
            start: 1e-4,
            end: 0.02,
        }
    }
    pub fn scaled_linear() -> Self {
        BetaSchedule::ScaledLinear {
            start: 0.00085,
            end: 0.012,
        }
    }
    pub fn cosine() -> Self {
        BetaSchedule::Cosine { s: 0.008 }
    }
    /// `linear`, `scaled-linear` or `cosine` (the defaults above).
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "linear" => Ok(Self::linear()),
            "scaled-linear" => Ok(Self::scaled_linear()),
            "cosine" => Ok(Self::cosine()),
            other => Err(Error::msg(format!(
                "unknown beta schedule {other:?} (expected linear, scaled-linear or cosine)"
            ))),
        }
    }
    pub fn name(&self) -> &'static str {
        match self {
            BetaSchedule::Linear { .. } => "linear",
            BetaSchedule::ScaledLinear { .. } => "scaled-linear",
            BetaSchedule::Cosine { .. } => "cosine",
        }
    }

    /// The `T` betas.
    pub fn betas(&self, steps: usize) -> Vec<f64> {
        let lerp = |a: f64, b: f64, i: usize| {
            if steps == 1 {
                a
            } else {
                a + (b - a) * i as f64 / (steps - 1) as f64
            }
        };
        match *self {
            BetaSchedule::Linear { start, end } => {
                (0..steps).map(|i| lerp(start, end, i)).collect()
            }
            BetaSchedule::ScaledLinear { start, end } => (0..steps)
                .map(|i| lerp(start.sqrt(), end.sqrt(), i).powi(2))
                .collect(),
            BetaSchedule::Cosine { s } => (0..steps)
                .map(|i| {
                    let a = cosine_alpha_bar(i as f64 / steps as f64, s);
                    let b = cosine_alpha_bar((i + 1) as f64 / steps as f64, s);
                    (1.0 - b / a).min(0.999)
                })
                .collect(),
        }
    }
}

/// `f(u) / f(0)` of the cosine schedule at `u = t / T` in [0, 1].
pub fn cosine_alpha_bar(u: f64, s: f64) -> f64 {
    let f = |u: f64| {
        ((u + s) / (1.0 + s) * std::f64::consts::FRAC_PI_2)
            .cos()
            .powi(2)
    };
    f(u) / f(0.0)
}

/// What the network outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prediction {
    /// The noise that was added (Ho et al.).
    Epsilon,
    /// `v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0` (Salimans & Ho 2022).
    V,
}

impl Prediction {
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "epsilon" | "eps" => Ok(Prediction::Epsilon),
            "v" => Ok(Prediction::V),
            other => Err(Error::msg(format!(
                "unknown prediction target {other:?} (expected epsilon or v)"
            ))),
        }
    }
    pub fn name(&self) -> &'static str {
        match self {
            Prediction::Epsilon => "epsilon",
            Prediction::V => "v",
        }
    }
}

/// The betas and their running products, for `T` steps.
#[derive(Clone, Debug)]
pub struct NoiseSchedule {
    pub kind: BetaSchedule,
    pub betas: Vec<f64>,
    pub alphas: Vec<f64>,
    pub alphas_cumprod: Vec<f64>,
}

impl NoiseSchedule {
    pub fn new(kind: BetaSchedule, steps: usize) -> Result<Self> {
        if steps == 0 {
            return Err(Error::msg("NoiseSchedule: needs at least one step"));
        }
        let betas = kind.betas(steps);
        if let Some((i, b)) = betas
            .iter()
            .enumerate()
            .find(|(_, b)| !(**b > 0.0 && **b < 1.0))
        {
            return Err(Error::msg(format!(
                "NoiseSchedule: beta[{i}] = {b} is outside (0, 1) ({kind:?})"
            )));
        }
        let alphas: Vec<f64> = betas.iter().map(|b| 1.0 - b).collect();
        let alphas_cumprod = alphas
            .iter()
            .scan(1.0, |acc, a| {
                *acc *= a;
                Some(*acc)
            })
            .collect();
        Ok(NoiseSchedule {
            kind,
            betas,
            alphas,
            alphas_cumprod,
        })
    }

    /// `T`.
    pub fn num_steps(&self) -> usize {
        self.betas.len()
    }

    /// `alpha_bar` at `t`, with `alpha_bar(-1) = 1` (no noise) for `t = None`.
    pub fn alpha_bar(&self, t: Option<usize>) -> f64 {
        t.map_or(1.0, |t| self.alphas_cumprod[t])
    }

    fn check_steps(&self, op: &str, x: &Tensor, t: &[usize]) -> Result<()> {
        if x.rank() == 0 || x.dims()[0] != t.len() {
            return Err(Error::shape(
                "diffusion",
                format!("{op}: {} timesteps for a batch of shape", t.len()),
                &[x.shape()],
            ));
        }
        if let Some(bad) = t.iter().find(|&&t| t >= self.num_steps()) {
            return Err(Error::msg(format!(
                "{op}: timestep {bad} is outside 0..{}",
                self.num_steps()
            )));
        }
        Ok(())
    }

    /// `f(alpha_bar_t)` per sample as `[B, 1, ..]` in `like`'s dtype and device.
    fn coef(&self, like: &Tensor, t: &[usize], f: impl Fn(f64) -> f64) -> Result<Tensor> {
        per_sample(
            &t.iter()
                .map(|&t| f(self.alphas_cumprod[t]))
                .collect::<Vec<_>>(),
            like,
        )
    }

    /// `x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps`, sample `i` at step `t[i]`.
    pub fn q_sample(&self, x0: &Tensor, noise: &Tensor, t: &[usize]) -> Result<Tensor> {
        self.check_steps("q_sample", x0, t)?;
        let a = self.coef(x0, t, f64::sqrt)?;
        let s = self.coef(x0, t, |ab| (1.0 - ab).sqrt())?;
        x0.mul(&a)?.add(&noise.mul(&s)?)
    }

    /// The training target for `prediction`: `eps`, or `v` from `x0` and `eps`.
    pub fn target(
        &self,
        prediction: Prediction,
        x0: &Tensor,
        noise: &Tensor,
        t: &[usize],
    ) -> Result<Tensor> {
        match prediction {
            Prediction::Epsilon => Ok(noise.clone()),
            Prediction::V => self.v_from_x0_eps(x0, noise, t),
        }
    }

    /// `v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0`.
    pub fn v_from_x0_eps(&self, x0: &Tensor, eps: &Tensor, t: &[usize]) -> Result<Tensor> {
        self.check_steps("v_from_x0_eps", x0, t)?;
        let a = self.coef(x0, t, f64::sqrt)?;
        let s = self.coef(x0, t, |ab| (1.0 - ab).sqrt())?;
        eps.mul(&a)?.sub(&x0.mul(&s)?)
    }

    /// `x0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar)`.
    pub fn x0_from_eps(&self, x_t: &Tensor, eps: &Tensor, t: &[usize]) -> Result<Tensor> {
        self.check_steps("x0_from_eps", x_t, t)?;
        let inv_a = self.coef(x_t, t, |ab| 1.0 / ab.sqrt())?;
        let s_over_a = self.coef(x_t, t, |ab| ((1.0 - ab) / ab).sqrt())?;
        x_t.mul(&inv_a)?.sub(&eps.mul(&s_over_a)?)
    }

    /// `eps = (x_t - sqrt(alpha_bar) x0) / sqrt(1 - alpha_bar)`.
    pub fn eps_from_x0(&self, x_t: &Tensor, x0: &Tensor, t: &[usize]) -> Result<Tensor> {
        self.check_steps("eps_from_x0", x_t, t)?;
        let inv_s = self.coef(x_t, t, |ab| 1.0 / (1.0 - ab).sqrt())?;
        let a_over_s = self.coef(x_t, t, |ab| (ab / (1.0 - ab)).sqrt())?;
        x_t.mul(&inv_s)?.sub(&x0.mul(&a_over_s)?)
    }

    /// From `v` and `x_t`: `x0 = sqrt(ab) x_t - sqrt(1 - ab) v`, `eps = sqrt(1 - ab) x_t + sqrt(ab) v`.
    pub fn x0_eps_from_v(&self, x_t: &Tensor, v: &Tensor, t: &[usize]) -> Result<(Tensor, Tensor)> {
        self.check_steps("x0_eps_from_v", x_t, t)?;
        let a = self.coef(x_t, t, f64::sqrt)?;
        let s = self.coef(x_t, t, |ab| (1.0 - ab).sqrt())?;
        let x0 = x_t.mul(&a)?.sub(&v.mul(&s)?)?;
        let eps = x_t.mul(&s)?.add(&v.mul(&a)?)?;
        Ok((x0, eps))
    }

    /// The network's output read as (`x0`, `eps`). With `clip_x0`, `x0` is clamped to
    /// [-1, 1] (the data range) and `eps` recomputed from it, as the reference samplers do.
    pub fn split_prediction(
        &self,
        prediction: Prediction,
        x_t: &Tensor,
        output: &Tensor,
        t: &[usize],
        clip_x0: bool,
    ) -> Result<(Tensor, Tensor)> {
        let (x0, eps) = match prediction {
            Prediction::Epsilon => (self.x0_from_eps(x_t, output, t)?, output.clone()),
            Prediction::V => self.x0_eps_from_v(x_t, output, t)?,
        };
        if clip_x0 {
            let x0 = x0.clamp(-1.0, 1.0)?;
            let eps = self.eps_from_x0(x_t, &x0, t)?;
            Ok((x0, eps))
        } else {
            Ok((x0, eps))
        }
    }
}

/// One value per sample, `[B, 1, .., 1]` with `like`'s rank, dtype and device.
pub fn per_sample(values: &[f64], like: &Tensor) -> Result<Tensor> {
    let mut dims = vec![1; like.rank().max(1)];
    dims[0] = values.len();
    let t = Tensor::from_vec(values.to_vec(), dims, like.device())?;
    if like.dtype() == DType::F64 {
        Ok(t)
    } else {
        t.to_dtype(like.dtype())
    }
}
