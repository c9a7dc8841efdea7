//! Training loops, progress display and run reports.

pub mod captioner;
pub mod char_lm;
pub mod classifier;
pub mod clip;
pub mod data_parallel;
pub mod diffusion;
pub mod diffusion_data;
pub mod diffusion_demo;
pub mod loss_trace;
pub mod prior;
pub mod progress;
pub mod shapes_resnet;
pub mod t2f_pipeline;
pub mod text_to_feature;
