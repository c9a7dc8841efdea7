//! Models, one file each, readable top to bottom: config, layers, forward, sampling.

pub mod char_transformer;
pub mod resnet;
