//! Training loops, progress display and run reports.

pub mod char_lm;
pub mod clip;
pub mod progress;
