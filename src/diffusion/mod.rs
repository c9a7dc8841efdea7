//! Denoising diffusion: noise schedules and prediction targets (`schedule.rs`), the DDPM
//! ancestral sampler (`ddpm.rs`), DDIM (`ddim.rs`), PNDM's pseudo linear multistep sampler
//! (`pndm.rs`), classifier-free guidance (`guidance.rs`),
//! text conditioners (`conditioning.rs`) and the text-to-image model that ties the U-Net
//! (`models::unet`) to them (`text_to_image.rs`); the unCLIP conditioner, CLIP image
//! embeddings as the condition (`unclip.rs`); prompt adherence and a Frechet distance on a
//! classifier's features: the shapes' (`adherence.rs`, `frechet.rs`) and the class-captioned
//! datasets', Fashion-MNIST (`class_adherence.rs`).
//!
//! The EMA of the weights used for sampling is [`crate::optim::Ema`].
//!
//! Samplers take the network as a closure `(x_t, t) -> output` and draw their noise from a
//! [`StepNoise`]: the noise of timestep `t` depends only on (seed, t), so two samplers that
//! visit the same timestep with the same seed add the same noise (the DDPM = DDIM(eta = 1)
//! check relies on it), and a run is reproducible.

pub mod adherence;
pub mod class_adherence;
pub mod conditioning;
pub mod ddim;
pub mod ddpm;
pub mod frechet;
pub mod guidance;
pub mod pndm;
pub mod schedule;
pub mod text_to_image;
pub mod unclip;

pub use conditioning::{Conditioner, PromptConditioner, TextStates};
pub use ddim::{ddim_sample, ddim_step, ddim_timesteps};
pub use ddpm::{ddpm_sample, ddpm_step};
pub use guidance::{guided, CFG_DROPOUT, NULL_PROMPT};
pub use pndm::{pndm_network_calls, pndm_sample, pndm_timesteps};
pub use schedule::{BetaSchedule, NoiseSchedule, Prediction};
pub use text_to_image::{DiffusionConfig, SampleOpts, Sampler, TextToImage};

use crate::{DType, Device, Result, Shape, Tensor};

/// Seeded Gaussian noise for sampling: `x_T` and the noise added at each timestep.
#[derive(Clone, Copy, Debug)]
pub struct StepNoise {
    pub seed: u64,
}

impl StepNoise {
    pub fn new(seed: u64) -> Self {
        StepNoise { seed }
    }
    /// The starting point `x_T ~ N(0, I)`.
    pub fn initial(&self, shape: impl Into<Shape>, dtype: DType, device: Device) -> Result<Tensor> {
        Tensor::randn_with_seed(shape, dtype, device, self.seed, 0)
    }
    /// The noise added when stepping down from timestep `t` (the same for every sampler).
    pub fn at(&self, t: usize, like: &Tensor) -> Result<Tensor> {
        Tensor::randn_with_seed(
            like.shape().clone(),
            like.dtype(),
            like.device(),
            self.seed,
            t as u64 + 1,
        )
    }
}
