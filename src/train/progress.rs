//! Progress bars for long work: position, rate and ETA, plus a live message (loss, items/s).
//! Hidden when not attached to a terminal or when `--json` asks for machine-readable output.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub fn bar(len: u64, what: &str, visible: bool) -> ProgressBar {
    let pb = ProgressBar::new(len);
    if !visible {
        pb.set_draw_target(ProgressDrawTarget::hidden());
        return pb;
    }
    pb.set_draw_target(ProgressDrawTarget::stderr_with_hz(8));
    let style = ProgressStyle::with_template(&format!(
        "{what} [{{bar:30}}] {{pos}}/{{len}} {{per_sec}} eta {{eta}} {{msg}}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    pb.set_style(style);
    pb
}
