//! Training loops, progress display and run reports.

pub mod progress;
