//! Models, one file each, readable top to bottom: config, layers, forward, sampling.

pub mod captioner;
pub mod char_transformer;
pub mod clip;
pub mod prior;
pub mod resnet;
pub mod retrieval;
pub mod text_encoder;
pub mod text_to_feature;
pub mod unet;
pub mod vit;
