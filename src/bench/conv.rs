//! conv2d cases at the layer shapes of ResNet-18 (64 and 224 px inputs) and of a small
//! diffusion U-Net (32 and 64 px, 64-256 channels); each timed forward alone and forward +
//! backward (input and weight gradients). FLOPs: forward 2 N Co Ho Wo (Ci/groups) Kh Kw,
//! forward + backward 3x that.

use super::{ceiling, measure, randn, sizes, BenchOptions, Case, Measurement, Unit};
use crate::ops::Conv2dParams;
use crate::Result;
use serde_json::json;

/// (name, n, ci, co, h, w, kernel, stride, padding)
type ConvCase = (
    &'static str,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
);

fn cases() -> Vec<ConvCase> {
    vec![
        // ResNet-18 on 64x64 images, batch 16.
        ("resnet64_conv1", 16, 3, 64, 64, 64, 7, 2, 3),
        ("resnet64_layer1", 16, 64, 64, 16, 16, 3, 1, 1),
        ("resnet64_layer2_down", 16, 64, 128, 16, 16, 3, 2, 1),
        ("resnet64_layer2", 16, 128, 128, 8, 8, 3, 1, 1),
        ("resnet64_layer3", 16, 256, 256, 4, 4, 3, 1, 1),
        ("resnet64_layer4", 16, 512, 512, 2, 2, 3, 1, 1),
        ("resnet64_shortcut_1x1", 16, 64, 128, 16, 16, 1, 2, 0),
        // The demo's judge: ResNet-18 on 32x32 pictures (maps 8, 4, 2, 1 after the stem).
        ("resnet32_conv1", 16, 3, 64, 32, 32, 7, 2, 3),
        ("resnet32_layer1", 16, 64, 64, 8, 8, 3, 1, 1),
        ("resnet32_layer2_down", 16, 64, 128, 8, 8, 3, 2, 1),
        ("resnet32_layer2", 16, 128, 128, 4, 4, 3, 1, 1),
        ("resnet32_layer3_down", 16, 128, 256, 4, 4, 3, 2, 1),
        ("resnet32_layer3", 16, 256, 256, 2, 2, 3, 1, 1),
        ("resnet32_layer4_down", 16, 256, 512, 2, 2, 3, 2, 1),
        ("resnet32_layer4", 16, 512, 512, 1, 1, 3, 1, 1),
        ("resnet32_shortcut4_1x1", 16, 256, 512, 2, 2, 1, 2, 0),
        // ResNet-18 on 224x224 images, batch 2.
        ("resnet224_conv1", 2, 3, 64, 224, 224, 7, 2, 3),
        ("resnet224_layer1", 2, 64, 64, 56, 56, 3, 1, 1),
        ("resnet224_layer2_down", 2, 64, 128, 56, 56, 3, 2, 1),
        ("resnet224_layer2", 2, 128, 128, 28, 28, 3, 1, 1),
        ("resnet224_layer3", 2, 256, 256, 14, 14, 3, 1, 1),
        ("resnet224_layer4", 2, 512, 512, 7, 7, 3, 1, 1),
        ("resnet224_shortcut_1x1", 2, 64, 128, 56, 56, 1, 2, 0),
        // Diffusion U-Net, batch 8.
        ("unet32_c64", 8, 64, 64, 32, 32, 3, 1, 1),
        ("unet32_c128", 8, 128, 128, 16, 16, 3, 1, 1),
        ("unet32_c256", 8, 256, 256, 8, 8, 3, 1, 1),
        ("unet64_c64", 8, 64, 64, 64, 64, 3, 1, 1),
        ("unet64_c128", 8, 128, 128, 32, 32, 3, 1, 1),
        ("unet64_c256", 8, 256, 256, 16, 16, 3, 1, 1),
    ]
}

pub fn run(opts: &BenchOptions, report: &mut dyn FnMut(&Measurement)) -> Result<()> {
    // The CPU ceiling; GPU ceilings come with the GPU-speed work (no ceiling reported there).
    let peak = opts.device.is_cpu().then(ceiling::fma_peak_gflops);
    for (i, &(name, n, ci, co, h, w, kk, stride, pad)) in cases().iter().enumerate() {
        let params = Conv2dParams {
            stride: (stride, stride),
            padding: (pad, pad),
            ..Default::default()
        };
        let (ho, wo) = (
            (h + 2 * pad - kk) / stride + 1,
            (w + 2 * pad - kk) / stride + 1,
        );
        let fwd_flops = 2.0 * (n * co * ho * wo * ci * kk * kk) as f64;
        for pass in ["forward", "forward_backward"] {
            if !opts.wants(&format!("{name}_{pass}")) {
                continue;
            }
            let seed = 300 + 4 * i as u64;
            let x = randn(&[n, ci, h, w], seed, opts.device)?;
            let wt = randn(&[co, ci, kk, kk], seed + 1, opts.device)?.affine(0.05, 0.0)?;
            let backward = pass == "forward_backward";
            if backward {
                x.set_requires_grad(true)?;
                wt.set_requires_grad(true)?;
            }
            let grad_out = randn(&[n, co, ho, wo], seed + 2, opts.device)?;
            let case = Case {
                name: format!("{name}_{pass}"),
                sizes: sizes(&[
                    ("pass", json!(pass)),
                    ("n", json!(n)),
                    ("ci", json!(ci)),
                    ("co", json!(co)),
                    ("h", json!(h)),
                    ("w", json!(w)),
                    ("kernel", json!(kk)),
                    ("stride", json!(stride)),
                    ("padding", json!(pad)),
                ]),
                unit: Unit::GflopPerS,
                work: if backward { 3.0 * fwd_flops } else { fwd_flops },
                run: Box::new(move || {
                    let y = x.conv2d(&wt, None, params)?;
                    if backward {
                        y.backward_with(&grad_out)?;
                        x.zero_grad();
                        wt.zero_grad();
                    }
                    Ok(())
                }),
            };
            if let Some(r) = measure("conv", opts, peak, case)? {
                report(&r);
            }
        }
    }
    Ok(())
}
