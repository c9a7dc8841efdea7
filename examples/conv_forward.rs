//! Times the CPU convolution forward (`conv2d`) and input gradient (`conv2d_backward_input`)
//! alone at the layer shapes of `tessera bench --suite conv` (ResNet-18 at 32, 64 and 224 px,
//! the small diffusion U-Net): the minimum and median of repeated calls, and GFLOP/s from the
//! minimum. The machine is shared, so compare two builds back to back and read the minimum.
//!
//! `RAYON_NUM_THREADS=1 cargo run --release --example conv_forward [-- REPS [FILTER [forward|input]]]`
//! (FILTER: a part of the case names, or a whole name followed by `$`)
//! (both passes unless one is named; naming one makes a profile of it alone).
use std::time::Instant;
use tessera::backend::conv::{Conv2dGeom, ConvBackend};
use tessera::backend::cpu::{CpuData, CpuStorage};
use tessera::Layout;

/// The engine's caching host allocator, as in the `tessera` binary (see `tessera::alloc`).
#[global_allocator]
static ALLOC: tessera::alloc::CachingAllocator = tessera::alloc::CachingAllocator::new();

/// (name, n, c_in, c_out, size, kernel, stride, padding)
type Case = (
    &'static str,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
);

const CASES: [Case; 17] = [
    ("resnet32_layer1", 16, 64, 64, 8, 3, 1, 1),
    ("resnet32_layer2_down", 16, 64, 128, 8, 3, 2, 1),
    ("resnet32_layer2", 16, 128, 128, 4, 3, 1, 1),
    ("resnet32_layer3_down", 16, 128, 256, 4, 3, 2, 1),
    ("resnet32_layer3", 16, 256, 256, 2, 3, 1, 1),
    ("resnet32_layer4_down", 16, 256, 512, 2, 3, 2, 1),
    ("resnet64_layer1", 16, 64, 64, 16, 3, 1, 1),
    ("resnet64_layer2", 16, 128, 128, 8, 3, 1, 1),
    ("resnet64_layer3", 16, 256, 256, 4, 3, 1, 1),
    ("resnet64_layer4", 16, 512, 512, 2, 3, 1, 1),
    ("resnet224_layer1", 2, 64, 64, 56, 3, 1, 1),
    ("resnet224_layer2", 2, 128, 128, 28, 3, 1, 1),
    ("resnet224_layer3", 2, 256, 256, 14, 3, 1, 1),
    ("resnet224_layer4", 2, 512, 512, 7, 3, 1, 1),
    ("unet32_c64", 8, 64, 64, 32, 3, 1, 1),
    ("unet32_c128", 8, 128, 128, 16, 3, 1, 1),
    ("unet32_c256", 8, 256, 256, 8, 3, 1, 1),
];

fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// Minimum and median of `reps` timed calls (after 2 warm-up calls), in ms.
fn time(
    reps: usize,
    mut f: impl FnMut() -> tessera::Result<CpuStorage>,
) -> tessera::Result<(f64, f64)> {
    let mut times = Vec::with_capacity(reps + 2);
    for _ in 0..reps + 2 {
        let t0 = Instant::now();
        std::hint::black_box(f()?);
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let mut times = times.split_off(2);
    times.sort_by(f64::total_cmp);
    Ok((times[0], times[times.len() / 2]))
}

fn main() -> tessera::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let reps: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(30);
    let filter = args.get(2).cloned().unwrap_or_default();
    let pass = args.get(3).cloned().unwrap_or_default();
    for (i, &(name, n, c_in, c_out, size, k, stride, pad)) in CASES.iter().enumerate() {
        let wanted = match filter.strip_suffix('$') {
            Some(exact) => name == exact,
            None => name.contains(&filter),
        };
        if !wanted {
            continue;
        }
        let o = (size + 2 * pad - k) / stride + 1;
        let g = Conv2dGeom {
            n,
            c_in,
            h: size,
            w: size,
            c_out,
            kh: k,
            kw: k,
            stride: (stride, stride),
            padding: (pad, pad),
            dilation: (1, 1),
            groups: 1,
            oh: o,
            ow: o,
        };
        let x = CpuStorage::new(CpuData::F32(random(n * c_in * size * size, 3 * i as u64)));
        let w = CpuStorage::new(CpuData::F32(random(c_out * c_in * k * k, 3 * i as u64 + 1)));
        let dy = CpuStorage::new(CpuData::F32(random(n * c_out * o * o, 3 * i as u64 + 2)));
        let (lx, lw, ldy) = (
            Layout::contiguous([n, c_in, size, size]),
            Layout::contiguous([c_out, c_in, k, k]),
            Layout::contiguous([n, c_out, o, o]),
        );
        let flops = 2.0 * (n * c_out * o * o * c_in * k * k) as f64;
        let (fmin, fmed) = match pass.as_str() {
            "input" => (f64::NAN, f64::NAN),
            _ => time(reps, || x.conv2d(&lx, &w, &lw, &g))?,
        };
        let (bmin, bmed) = match pass.as_str() {
            "forward" => (f64::NAN, f64::NAN),
            _ => time(reps, || dy.conv2d_backward_input(&ldy, &w, &lw, &g))?,
        };
        println!(
            "{name:22} forward min {fmin:7.3} ms med {fmed:7.3} ({:5.1} GFLOP/s)  \
             input grad min {bmin:7.3} ms med {bmed:7.3} ({:5.1} GFLOP/s)",
            flops / fmin * 1e-6,
            flops / bmin * 1e-6
        );
    }
    Ok(())
}
