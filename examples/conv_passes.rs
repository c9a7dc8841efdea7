//! Times each pass of the CPU convolution alone: the forward (`conv2d`), the input gradient
//! (`conv2d_backward_input`) and the weight gradient (`conv2d_backward_weight`), at the layer
//! shapes of `tessera bench --suite conv` (ResNet-18 at 32, 64 and 224 px, the diffusion U-Net
//! at 32 and 64 px) and of the small U-Net the demo trains (16-64 channels, batch 16). Prints
//! the minimum and median of repeated calls and GFLOP/s from the minimum; FLOPs are counted
//! over the full kernel, as the bench does. The machine is shared, so compare two builds back
//! to back and read the minimum.
//!
//! `RAYON_NUM_THREADS=2 cargo run --release --example conv_passes [-- REPS [FILTER [PASS]]]`
//! - FILTER: a part of the case names, or a whole name followed by `$`;
//! - PASS: `forward`, `input` or `weight` (default: all three; naming one makes a profile of
//!   it alone).
use std::time::Instant;
use tessera::backend::conv::{Conv2dGeom, ConvBackend};
use tessera::backend::cpu::{CpuData, CpuStorage};
use tessera::Layout;

/// The engine's caching host allocator, as in the `tessera` binary (see `tessera::alloc`).
#[global_allocator]
static ALLOC: tessera::alloc::CachingAllocator = tessera::alloc::CachingAllocator::new();

/// A convolution layer: batch, channels in and out, square input side, kernel side, stride,
/// padding.
struct Case {
    name: &'static str,
    n: usize,
    c_in: usize,
    c_out: usize,
    size: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
}

#[allow(clippy::too_many_arguments)]
const fn case(
    name: &'static str,
    n: usize,
    c_in: usize,
    c_out: usize,
    size: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
) -> Case {
    Case {
        name,
        n,
        c_in,
        c_out,
        size,
        kernel,
        stride,
        pad,
    }
}

const CASES: &[Case] = &[
    // `tessera bench --suite conv` (src/bench/conv.rs), same names.
    case("resnet64_conv1", 16, 3, 64, 64, 7, 2, 3),
    case("resnet64_layer1", 16, 64, 64, 16, 3, 1, 1),
    case("resnet64_layer2_down", 16, 64, 128, 16, 3, 2, 1),
    case("resnet64_layer2", 16, 128, 128, 8, 3, 1, 1),
    case("resnet64_layer3", 16, 256, 256, 4, 3, 1, 1),
    case("resnet64_layer4", 16, 512, 512, 2, 3, 1, 1),
    case("resnet64_shortcut_1x1", 16, 64, 128, 16, 1, 2, 0),
    case("resnet32_conv1", 16, 3, 64, 32, 7, 2, 3),
    case("resnet32_layer1", 16, 64, 64, 8, 3, 1, 1),
    case("resnet32_layer2_down", 16, 64, 128, 8, 3, 2, 1),
    case("resnet32_layer2", 16, 128, 128, 4, 3, 1, 1),
    case("resnet32_layer3_down", 16, 128, 256, 4, 3, 2, 1),
    case("resnet32_layer3", 16, 256, 256, 2, 3, 1, 1),
    case("resnet32_layer4_down", 16, 256, 512, 2, 3, 2, 1),
    case("resnet32_layer4", 16, 512, 512, 1, 3, 1, 1),
    case("resnet32_shortcut4_1x1", 16, 256, 512, 2, 1, 2, 0),
    case("resnet224_conv1", 2, 3, 64, 224, 7, 2, 3),
    case("resnet224_layer1", 2, 64, 64, 56, 3, 1, 1),
    case("resnet224_layer2_down", 2, 64, 128, 56, 3, 2, 1),
    case("resnet224_layer2", 2, 128, 128, 28, 3, 1, 1),
    case("resnet224_layer3", 2, 256, 256, 14, 3, 1, 1),
    case("resnet224_layer4", 2, 512, 512, 7, 3, 1, 1),
    case("resnet224_shortcut_1x1", 2, 64, 128, 56, 1, 2, 0),
    case("unet32_c64", 8, 64, 64, 32, 3, 1, 1),
    case("unet32_c128", 8, 128, 128, 16, 3, 1, 1),
    case("unet32_c256", 8, 256, 256, 8, 3, 1, 1),
    case("unet64_c64", 8, 64, 64, 64, 3, 1, 1),
    case("unet64_c128", 8, 128, 128, 32, 3, 1, 1),
    case("unet64_c256", 8, 256, 256, 16, 3, 1, 1),
    // The small U-Net of `tessera train diffusion` (batch 16).
    case("small_unet_in_3to16_32px", 16, 3, 16, 32, 3, 1, 1),
    case("small_unet_16to16_32px", 16, 16, 16, 32, 3, 1, 1),
    case("small_unet_up_48to16_32px", 16, 48, 16, 32, 3, 1, 1),
    case("small_unet_out_16to3_32px", 16, 16, 3, 32, 3, 1, 1),
    case("small_unet_down_16_32px_s2", 16, 16, 16, 32, 3, 2, 1),
    case("small_unet_16to32_16px", 16, 16, 32, 16, 3, 1, 1),
    case("small_unet_32to32_16px", 16, 32, 32, 16, 3, 1, 1),
    case("small_unet_skip1x1_48to32_16px", 16, 48, 32, 16, 1, 1, 0),
    case("small_unet_32to32_8px", 16, 32, 32, 8, 3, 1, 1),
    case("small_unet_up_64to32_8px", 16, 64, 32, 8, 3, 1, 1),
    // The demo's U-Net (`DiffusionDemoConfig`: 2x2 patches, so 16, 8 and 4 px; 16, 32, 32
    // channels; batch 8): every distinct convolution of one training step.
    case("demo_in_12to16_16px", 8, 12, 16, 16, 3, 1, 1),
    case("demo_16to16_16px", 8, 16, 16, 16, 3, 1, 1),
    case("demo_down_16_16px_s2", 8, 16, 16, 16, 3, 2, 1),
    case("demo_16to32_8px", 8, 16, 32, 8, 3, 1, 1),
    case("demo_skip1x1_16to32_8px", 8, 16, 32, 8, 1, 1, 0),
    case("demo_32to32_8px", 8, 32, 32, 8, 3, 1, 1),
    case("demo_down_32_8px_s2", 8, 32, 32, 8, 3, 2, 1),
    case("demo_32to32_4px", 8, 32, 32, 4, 3, 1, 1),
    case("demo_64to32_4px", 8, 64, 32, 4, 3, 1, 1),
    case("demo_skip1x1_64to32_4px", 8, 64, 32, 4, 1, 1, 0),
    case("demo_64to32_8px", 8, 64, 32, 8, 3, 1, 1),
    case("demo_skip1x1_64to32_8px", 8, 64, 32, 8, 1, 1, 0),
    case("demo_48to32_8px", 8, 48, 32, 8, 3, 1, 1),
    case("demo_skip1x1_48to32_8px", 8, 48, 32, 8, 1, 1, 0),
    case("demo_32to32_16px", 8, 32, 32, 16, 3, 1, 1),
    case("demo_48to16_16px", 8, 48, 16, 16, 3, 1, 1),
    case("demo_skip1x1_48to16_16px", 8, 48, 16, 16, 1, 1, 0),
    case("demo_32to16_16px", 8, 32, 16, 16, 3, 1, 1),
    case("demo_skip1x1_32to16_16px", 8, 32, 16, 16, 1, 1, 0),
    case("demo_out_16to12_16px", 8, 16, 12, 16, 3, 1, 1),
];

/// Uniform in [-0.5, 0.5) from a xorshift stream: fresh, non-zero inputs per case.
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
    tessera::alloc::keep_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    let reps: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(30);
    let filter = args.get(2).cloned().unwrap_or_default();
    let only = args.get(3).cloned();
    let passes = ["forward", "input", "weight"];
    if let Some(p) = &only {
        if !passes.contains(&p.as_str()) {
            eprintln!("unknown pass {p:?}: expected one of {passes:?}");
            std::process::exit(2);
        }
    }
    for (i, c) in CASES.iter().enumerate() {
        let wanted = match filter.strip_suffix('$') {
            Some(exact) => c.name == exact,
            None => c.name.contains(&filter),
        };
        if !wanted {
            continue;
        }
        let (n, k) = (c.n, c.kernel);
        let o = (c.size + 2 * c.pad - k) / c.stride + 1;
        let g = Conv2dGeom {
            n,
            c_in: c.c_in,
            h: c.size,
            w: c.size,
            c_out: c.c_out,
            kh: k,
            kw: k,
            stride: (c.stride, c.stride),
            padding: (c.pad, c.pad),
            dilation: (1, 1),
            groups: 1,
            oh: o,
            ow: o,
        };
        let seed = 3 * i as u64;
        let x = CpuStorage::new(CpuData::F32(random(n * c.c_in * c.size * c.size, seed)));
        let w = CpuStorage::new(CpuData::F32(random(c.c_out * c.c_in * k * k, seed + 1)));
        let dy = CpuStorage::new(CpuData::F32(random(n * c.c_out * o * o, seed + 2)));
        let (lx, lw, ldy) = (
            Layout::contiguous([n, c.c_in, c.size, c.size]),
            Layout::contiguous([c.c_out, c.c_in, k, k]),
            Layout::contiguous([n, c.c_out, o, o]),
        );
        let flops = 2.0 * (n * c.c_out * o * o * c.c_in * k * k) as f64;
        let mut line = format!("{:31}", c.name);
        for pass in passes {
            if only.as_deref().is_some_and(|p| p != pass) {
                continue;
            }
            let (min, med) = match pass {
                "forward" => time(reps, || x.conv2d(&lx, &w, &lw, &g))?,
                "input" => time(reps, || dy.conv2d_backward_input(&ldy, &w, &lw, &g))?,
                _ => time(reps, || x.conv2d_backward_weight(&lx, &dy, &ldy, &g))?,
            };
            line += &format!(
                "  {pass} {min:7.3} / {med:7.3} ms ({:5.1} GFLOP/s)",
                flops / min * 1e-6
            );
        }
        println!("{line}");
    }
    Ok(())
}
