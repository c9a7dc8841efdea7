//! Training loops, progress display and run reports.

pub mod char_lm;
pub mod progress;
pub mod shapes_resnet;
