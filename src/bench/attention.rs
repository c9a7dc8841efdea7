//! Fused scaled-dot-product attention, q, k, v: [B, H, T, D]. FLOPs of the forward: two
//! T x T x D products, 4 B H T^2 D (half when causal); forward + backward counts the backward
//! as 2.5 forwards (five products instead of two), 3.5x in all, as FlashAttention reports.

use super::{ceiling, measure, randn, sizes, BenchOptions, Case, Measurement, Unit};
use crate::ops::{scaled_dot_product_attention, AttentionOpts};
use crate::Result;
use serde_json::json;

/// (batch, heads, t, d, causal)
fn cases() -> Vec<(usize, usize, usize, usize, bool)> {
    vec![
        (4, 4, 128, 64, false),
        (2, 4, 512, 64, false),
        (1, 4, 1024, 64, false),
        (1, 2, 2048, 64, false),
        (2, 4, 512, 32, false),
        (2, 4, 512, 128, false),
        (1, 4, 1024, 64, true),
        (1, 2, 2048, 128, true),
    ]
}

pub fn run(opts: &BenchOptions, report: &mut dyn FnMut(&Measurement)) -> Result<()> {
    // The CPU ceiling; GPU ceilings come with the GPU-speed work (no ceiling reported there).
    let peak = opts.device.is_cpu().then(ceiling::fma_peak_gflops);
    for (i, &(b, h, t, d, causal)) in cases().iter().enumerate() {
        let mut fwd_flops = 4.0 * (b * h * t * t * d) as f64;
        if causal {
            fwd_flops /= 2.0;
        }
        let mask = if causal { "causal" } else { "full" };
        for pass in ["forward", "forward_backward"] {
            let name = format!("sdpa_b{b}h{h}_t{t}_d{d}_{mask}_{pass}");
            if !opts.wants(&name) {
                continue;
            }
            let seed = 500 + 4 * i as u64;
            let q = randn(&[b, h, t, d], seed, opts.device)?;
            let k = randn(&[b, h, t, d], seed + 1, opts.device)?;
            let v = randn(&[b, h, t, d], seed + 2, opts.device)?;
            let grad_out = randn(&[b, h, t, d], seed + 3, opts.device)?;
            let backward = pass == "forward_backward";
            if backward {
                for x in [&q, &k, &v] {
                    x.set_requires_grad(true)?;
                }
            }
            let attn = AttentionOpts {
                causal,
                ..Default::default()
            };
            let case = Case {
                name,
                sizes: sizes(&[
                    ("pass", json!(pass)),
                    ("batch", json!(b)),
                    ("heads", json!(h)),
                    ("t", json!(t)),
                    ("d", json!(d)),
                    ("causal", json!(causal)),
                ]),
                unit: Unit::GflopPerS,
                work: if backward { 3.5 * fwd_flops } else { fwd_flops },
                run: Box::new(move || {
                    let y = scaled_dot_product_attention(&q, &k, &v, &attn)?;
                    if backward {
                        y.backward_with(&grad_out)?;
                        for x in [&q, &k, &v] {
                            x.zero_grad();
                        }
                    }
                    Ok(())
                }),
            };
            if let Some(r) = measure("attention", opts, peak, case)? {
                report(&r);
            }
        }
    }
    Ok(())
}
