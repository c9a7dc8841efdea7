//! `tessera bench`: the benchmark suites of `tessera::bench`, each case beside the hardware
//! ceiling measured in the same run. `--json` prints one JSON line per case (and nothing
//! else on stdout), which `benches/reference/compare.py` joins with numpy / PyTorch runs.

use super::{resolve_device, DeviceArg};
use clap::{Args, ValueEnum};
use std::io::Write;
use std::time::Duration;
use tessera::bench::{run_suite, BenchOptions, SUITES};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Suite {
    Gemm,
    Conv,
    Attention,
    Norm,
    Train,
    All,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    pub device: DeviceArg,
    #[arg(long, value_enum, default_value_t = Suite::All)]
    pub suite: Suite,
    /// Only the cases whose name contains this text (ending it with `$` keeps only the names
    /// that end with the rest: `--filter 't1024_d64_full_forward$'` leaves out the backward).
    #[arg(long)]
    pub filter: Option<String>,
    /// Seconds spent repeating each case after its warm-up (the median is reported).
    #[arg(long, default_value_t = 1.0)]
    pub seconds: f64,
    /// Fewest timed repetitions per case.
    #[arg(long, default_value_t = 5)]
    pub min_reps: usize,
    /// One JSON line per case.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    let device = resolve_device(a.device, a.json)?;
    let opts = BenchOptions {
        device,
        budget: Duration::from_secs_f64(a.seconds.max(0.0)),
        min_reps: a.min_reps.max(1),
        filter: a.filter,
    };
    let suites: Vec<&str> = match a.suite {
        Suite::All => SUITES.to_vec(),
        s => vec![s
            .to_possible_value()
            .map(|v| v.get_name().to_string())
            .and_then(|n| SUITES.iter().copied().find(|x| *x == n))
            .expect("every Suite value names a suite")],
    };
    if !a.json {
        println!(
            "device {device}, {} threads; median of repeated runs after one warm-up",
            rayon::current_num_threads()
        );
    }
    for suite in suites {
        run_suite(suite, &opts, &mut |m| {
            let line = if a.json {
                m.to_json(device).to_string()
            } else {
                m.to_line()
            };
            // A closed pipe (`tessera bench | head`) ends the run quietly instead of panicking.
            if writeln!(std::io::stdout().lock(), "{line}").is_err() {
                std::process::exit(0);
            }
        })?;
    }
    Ok(())
}
