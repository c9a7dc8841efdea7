//! Command-line interface, one file per subcommand. Every command that measures something
//! accepts `--json` and then prints one final JSON line with its figures.

mod bench;
mod caption;
mod check_kernels;
mod clip;
mod data;
mod demo;
mod diffusion;
mod info;
mod query;
mod sample;
mod t2f_train;
mod train;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "tessera",
    version,
    about = "A deep-learning engine written from scratch, and the text-to-image models built on it"
)]
pub struct Cli {
    /// Worker threads for CPU kernels (default: RAYON_NUM_THREADS, else all cores).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Runs the largest pipeline that exists on built-in data (no download).
    Demo(demo::DemoArgs),
    /// Trains a model.
    #[command(subcommand)]
    Train(train::TrainCommand),
    /// Generates from a trained model.
    #[command(subcommand)]
    Sample(sample::SampleCommand),
    /// Times the kernels and training steps beside the hardware ceilings (`--json`: a line per case).
    Bench(bench::BenchArgs),
    /// Prints the build, devices and CPU features found.
    Info(info::InfoArgs),
    /// Evaluates a trained model.
    #[command(subcommand)]
    Eval(clip::EvalCommand),
    /// Compiles every CUDA kernel for sm_90 with NVRTC (no GPU needed) and reports registers and spills.
    CheckKernels(check_kernels::CheckKernelsArgs),
    /// Writes built-in data to disk (PNG pictures with captions).
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Queries a trained model: text to image features (t2f) or text-to-image retrieval (clip).
    #[command(subcommand)]
    Query(query::QueryCommand),
    /// Captions a picture with the trained captioner.
    Caption(caption::CaptionArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    Cpu,
    Cuda,
    /// The GPU when one is usable, else the CPU (saying why).
    Auto,
}

/// Resolves `--device`: `cuda` is GPU 0 and an error (saying why) when no CUDA driver or GPU
/// is usable; `auto` takes the GPU when one is usable, else the CPU with one line saying why.
pub fn resolve_device(arg: DeviceArg, quiet: bool) -> tessera::Result<tessera::Device> {
    match arg {
        DeviceArg::Cpu => Ok(tessera::Device::Cpu),
        DeviceArg::Cuda => tessera::Device::cuda(0),
        DeviceArg::Auto => match tessera::Device::cuda(0) {
            Ok(d) => Ok(d),
            Err(e) => {
                if !quiet {
                    eprintln!("device: cpu ({e})");
                }
                Ok(tessera::Device::Cpu)
            }
        },
    }
}

/// Stack of the pool's threads, which run the commands themselves (see [`run`]): the main
/// thread's usual size, not a worker's 2 MiB.
const WORKER_STACK: usize = 8 << 20;

/// Runs a command on a thread of the global Rayon pool (`--threads`, else
/// `RAYON_NUM_THREADS`, else every core). From there each op's parallel loop starts in the
/// pool directly; from the main thread every op would be handed to the pool and waited for
/// on a lock, a futex round trip per op, which cost 5-8% of the small U-Net's training step
/// (docs/PERF.md, session 6).
pub fn run(cli: Cli) -> anyhow::Result<()> {
    crate::alloc::keep_freed_memory();
    rayon::ThreadPoolBuilder::new()
        .num_threads(cli.threads.unwrap_or(0))
        .stack_size(WORKER_STACK)
        .build_global()?;
    let command = cli.command;
    rayon::scope(move |_| dispatch(command))
}

fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Demo(a) => demo::run(a),
        Command::Train(c) => train::run(c),
        Command::Sample(c) => sample::run(c),
        Command::Info(a) => info::run(a),
        Command::Eval(c) => clip::run_eval(c),
        Command::Bench(a) => bench::run(a),
        Command::CheckKernels(a) => check_kernels::run(a),
        Command::Data(c) => data::run(c),
        Command::Query(c) => query::run(c),
        Command::Caption(a) => caption::run(a),
    }
}
