//! Helpers shared by the integration tests (a test file that needs them says `mod common;`).
//! Each test file is its own crate and uses only some of them.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Mutex;
use tessera::diffusion::{BetaSchedule, DiffusionConfig, Prediction};
use tessera::models::unet::UNetConfig;

/// The smallest text-to-image model the tests train and sample in seconds: 8x8 pictures,
/// `T = 50` on the cosine schedule, v-prediction, a two-level U-Net 8 channels wide with
/// attention at 4 px, 16-wide text states.
pub fn tiny_diffusion_config() -> DiffusionConfig {
    DiffusionConfig {
        image_size: 8,
        train_steps: 50,
        schedule: BetaSchedule::cosine(),
        prediction: Prediction::V,
        unet: UNetConfig {
            in_channels: 3,
            out_channels: 3,
            patch_size: 1,
            base_channels: 8,
            channel_mult: vec![1, 2],
            res_blocks_per_level: 1,
            attention_levels: vec![1],
            groups: 4,
            num_heads: 2,
            context_dim: 16,
            num_condition_types: 1,
        },
        text_max_len: 48,
        text_dim: 16,
        text_heads: 2,
        text_layers: 1,
    }
}

/// The data folder holding `fashion-mnist/` (`TESSERA_DATA`, else `../shared/data`), if it is
/// there; tests that need the real files skip without it.
pub fn fashion_mnist_dir() -> Option<PathBuf> {
    let d = std::env::var_os("TESSERA_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    d.join("fashion-mnist").is_dir().then_some(d)
}

/// Runs `f` (which builds a model from the global generator) right after `manual_seed(seed)`,
/// with no other caller of `seeded` in this test binary drawing in between: the tests of a
/// binary run in parallel and share the generator, and a draw of another test between the
/// seed and the model's initialisation gave a test another model now and then.
pub fn seeded<R>(seed: u64, f: impl FnOnce() -> R) -> R {
    static LOCK: Mutex<()> = Mutex::new(());
    let _only_us = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    tessera::random::manual_seed(seed);
    f()
}
