//! Times the norm suite's row ops alone on `ROWS x 1024` f32 (default 32768 rows, 128 MiB, as
//! `tessera bench --suite norm`): copy, LayerNorm forward, LayerNorm forward+backward, softmax,
//! GELU. With few rows (e.g. 128 at one thread) the rows stay in L2, which shows the
//! arithmetic's rate apart from memory. Prints the minimum and median of repeated calls and
//! GB/s from the minimum (bytes as the bench counts them).
//!
//! `RAYON_NUM_THREADS=2 cargo run --release --example norm_passes [-- REPS [ROWS [FILTER]]]`
use std::time::Instant;
use tessera::{DType, Device, Result, Tensor};

/// The engine's caching host allocator, as in the `tessera` binary (see `tessera::alloc`).
#[global_allocator]
static ALLOC: tessera::alloc::CachingAllocator = tessera::alloc::CachingAllocator::new();

const COLS: usize = 1024;

fn main() -> Result<()> {
    tessera::alloc::keep_freed_memory();
    // On a worker thread of the pool, as the `tessera` binary runs its commands: the ops'
    // parallel loops then start without waking a thread for the caller.
    rayon::scope(|_| run())
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let reps: usize = args.get(1).map_or(50, |s| s.parse().expect("REPS"));
    let rows: usize = args.get(2).map_or(32768, |s| s.parse().expect("ROWS"));
    let filter = args.get(3).cloned().unwrap_or_default();
    let randn = |seed| Tensor::randn_with_seed(vec![rows, COLS], DType::F32, Device::Cpu, seed, 0);
    let x = randn(900)?;
    let dy = randn(901)?;
    let g = Tensor::randn_with_seed(vec![COLS], DType::F32, Device::Cpu, 902, 0)?;
    let b = Tensor::randn_with_seed(vec![COLS], DType::F32, Device::Cpu, 903, 0)?;
    let xg = x.detach();
    xg.set_requires_grad(true)?;
    type Op<'a> = Box<dyn Fn() -> Result<()> + 'a>;
    let cases: Vec<(&str, f64, Op)> = vec![
        ("copy", 8.0, Box::new(|| x.contiguous_copy().map(drop))),
        (
            "layer_norm_forward",
            8.0,
            Box::new(|| x.layer_norm(Some(&g), Some(&b), 1e-5).map(drop)),
        ),
        (
            "layer_norm_forward_backward",
            20.0,
            Box::new(|| {
                xg.layer_norm(Some(&g), Some(&b), 1e-5)?
                    .backward_with(&dy)?;
                xg.zero_grad();
                Ok(())
            }),
        ),
        ("softmax", 8.0, Box::new(|| x.softmax(-1).map(drop))),
        ("gelu", 8.0, Box::new(|| x.gelu().map(drop))),
    ];
    for (name, bytes_per_elem, op) in cases {
        if !name.contains(filter.as_str()) {
            continue;
        }
        op()?;
        let mut times = Vec::with_capacity(reps);
        for _ in 0..reps {
            let t0 = Instant::now();
            op()?;
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        let (min, median) = (times[0], times[reps / 2]);
        let gbps = bytes_per_elem * (rows * COLS) as f64 / (min * 1e-3) / 1e9;
        println!("{name:<30} min {min:8.4} ms  median {median:8.4} ms  {gbps:6.1} GB/s");
    }
    Ok(())
}
