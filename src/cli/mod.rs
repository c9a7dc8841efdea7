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
    keep_freed_memory();
    rayon::ThreadPoolBuilder::new()
        .num_threads(cli.threads.unwrap_or(0))
        .stack_size(WORKER_STACK)
        .build_global()?;
    let command = cli.command;
    rayon::scope(move |_| dispatch(command))
}

/// glibc's malloc serves big blocks with fresh `mmap`s and unmaps them (or trims the heap)
/// on free, so every training step faults its activations' pages in again and the kernel
/// zeroes them: 134k page faults in 80 steps of the demo's U-Net, 8% of its CPU time
/// (docs/PERF.md, session 6). Serving blocks up to 32 MiB (glibc's largest mmap threshold)
/// from the heap and never trimming it below 1 GiB keeps freed blocks for reuse. Peak
/// memory is what the process held at its peak either way.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_MMAP_THRESHOLD: i32 = -3;
    // SAFETY: mallopt only sets allocator parameters; it is called before any other thread
    // exists, and a refused value (return 0) leaves glibc's default in place.
    unsafe {
        mallopt(M_MMAP_THRESHOLD, 32 << 20);
        mallopt(M_TRIM_THRESHOLD, 1 << 30);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

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
