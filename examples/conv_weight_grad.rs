//! Times the CPU convolution weight gradient alone (`conv2d_backward_weight`) at the layer
//! shapes of the small diffusion U-Net (batch 16) and a few ResNet-18 ones: the minimum and
//! median of repeated calls, and GFLOP/s from the minimum. The machine is shared, so compare
//! two builds back to back and read the minimum.
//!
//! `RAYON_NUM_THREADS=2 cargo run --release --example conv_weight_grad [-- REPS [FILTER]]`
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
    ("unet_in_3to16_32px", 16, 3, 16, 32, 3, 1, 1),
    ("unet_16to16_32px", 16, 16, 16, 32, 3, 1, 1),
    ("unet_up_48to16_32px", 16, 48, 16, 32, 3, 1, 1),
    ("unet_out_16to3_32px", 16, 16, 3, 32, 3, 1, 1),
    ("unet_down_16_32px_s2", 16, 16, 16, 32, 3, 2, 1),
    ("unet_16to32_16px", 16, 16, 32, 16, 3, 1, 1),
    ("unet_32to32_16px", 16, 32, 32, 16, 3, 1, 1),
    ("unet_skip1x1_48to32_16px", 16, 48, 32, 16, 1, 1, 0),
    ("unet_32to32_8px", 16, 32, 32, 8, 3, 1, 1),
    ("unet_up_64to32_8px", 16, 64, 32, 8, 3, 1, 1),
    ("resnet64_layer1", 16, 64, 64, 16, 3, 1, 1),
    ("resnet64_layer2", 16, 128, 128, 8, 3, 1, 1),
    ("resnet224_layer1", 2, 64, 64, 56, 3, 1, 1),
    ("resnet224_layer2", 2, 128, 128, 28, 3, 1, 1),
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

fn main() -> tessera::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let reps: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(30);
    let filter = args.get(2).cloned().unwrap_or_default();
    for (i, &(name, n, c_in, c_out, size, k, stride, pad)) in CASES.iter().enumerate() {
        if !name.contains(&filter) {
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
        let x = CpuStorage::new(CpuData::F32(random(n * c_in * size * size, 2 * i as u64)));
        let dy = CpuStorage::new(CpuData::F32(random(n * c_out * o * o, 2 * i as u64 + 1)));
        let (lx, ldy) = (
            Layout::contiguous([n, c_in, size, size]),
            Layout::contiguous([n, c_out, o, o]),
        );
        let mut times = Vec::with_capacity(reps);
        for _ in 0..reps + 2 {
            let t0 = Instant::now();
            let dw = x.conv2d_backward_weight(&lx, &dy, &ldy, &g)?;
            times.push(t0.elapsed().as_secs_f64() * 1e3);
            std::hint::black_box(dw);
        }
        let mut times = times.split_off(2);
        times.sort_by(f64::total_cmp);
        let (min, med) = (times[0], times[times.len() / 2]);
        let flops = 2.0 * (n * c_out * o * o * c_in * k * k) as f64;
        println!(
            "{name:28} min {min:8.3} ms  median {med:8.3} ms  {:7.1} GFLOP/s",
            flops / min * 1e-6
        );
    }
    Ok(())
}
