//! Memory-bound cases on tensors four times the L3 cache (rows x cols f32 = 128 MiB), judged
//! against the copy bandwidth measured in the same run. Bytes are the minimum each op must
//! move (each input read once, each output written once):
//!
//! | case | bytes per element |
//! |---|---|
//! | copy | 8 (read, write) |
//! | add (residual) | 12 |
//! | softmax, GELU, tanh, LayerNorm forward | 8 |
//! | LayerNorm backward (x, dy in; dx out; dgamma, dbeta are per column) | 12 |
//! | AdamW step (p, g, m, v in; p, m, v out) | 28 |

use super::{ceiling, measure, randn, sizes, BenchOptions, Case, Measurement, Unit};
use crate::optim::{AdamW, AdamWConfig, Optimizer};
use crate::{Result, Tensor};
use serde_json::json;

const ROWS: usize = 32768;
const COLS: usize = 1024;

pub fn run(opts: &BenchOptions, report: &mut dyn FnMut(&Measurement)) -> Result<()> {
    let bandwidth = opts
        .device
        .is_cpu()
        .then(|| ceiling::copy_bandwidth_gbps(256));
    let dev = opts.device;
    let elems = (ROWS * COLS) as f64;
    let x = randn(&[ROWS, COLS], 900, dev)?;
    let y = randn(&[ROWS, COLS], 901, dev)?;
    let gamma = randn(&[COLS], 902, dev)?;
    let beta = randn(&[COLS], 903, dev)?;
    let size = |op: &str| {
        sizes(&[
            ("op", json!(op)),
            ("rows", json!(ROWS)),
            ("cols", json!(COLS)),
        ])
    };
    // An op that reads x and writes one output of its size: 8 bytes per element.
    let read_write = |op: &str, f: fn(&Tensor) -> Result<Tensor>| {
        let x = x.clone();
        Case {
            name: format!("{op}_{ROWS}x{COLS}"),
            sizes: size(op),
            unit: Unit::GbPerS,
            work: 8.0 * elems,
            run: Box::new(move || f(&x).map(drop)),
        }
    };
    let mut cases: Vec<Case> = Vec::new();
    cases.push(read_write("copy", Tensor::contiguous_copy));
    {
        let (x, y) = (x.clone(), y.clone());
        cases.push(Case {
            name: format!("add_{ROWS}x{COLS}"),
            sizes: size("add"),
            unit: Unit::GbPerS,
            work: 12.0 * elems,
            run: Box::new(move || x.add(&y).map(drop)),
        });
    }
    cases.push(read_write("softmax", |x| x.softmax(-1)));
    cases.push(read_write("gelu", Tensor::gelu));
    cases.push(read_write("tanh", Tensor::tanh));
    {
        let (x, g, b) = (x.clone(), gamma.clone(), beta.clone());
        cases.push(Case {
            name: format!("layer_norm_{ROWS}x{COLS}_forward"),
            sizes: size("layer_norm_forward"),
            unit: Unit::GbPerS,
            work: 8.0 * elems,
            run: Box::new(move || x.layer_norm(Some(&g), Some(&b), 1e-5).map(drop)),
        });
    }
    {
        // The backward alone: the forward runs outside the timed region for each repetition
        // would need a fresh graph, so time forward + backward and subtract nothing; the bytes
        // counted are the backward's plus the forward's (8 + 12 per element).
        let xg = x.detach();
        xg.set_requires_grad(true)?;
        let (g, b, dy) = (gamma.clone(), beta.clone(), y.clone());
        cases.push(Case {
            name: format!("layer_norm_{ROWS}x{COLS}_forward_backward"),
            sizes: size("layer_norm_forward_backward"),
            unit: Unit::GbPerS,
            work: 20.0 * elems,
            run: Box::new(move || {
                xg.layer_norm(Some(&g), Some(&b), 1e-5)?
                    .backward_with(&dy)?;
                xg.zero_grad();
                Ok(())
            }),
        });
    }
    {
        let p = randn(&[ROWS * COLS / 2], 904, dev)?;
        p.set_requires_grad(true)?;
        let g = randn(&[ROWS * COLS / 2], 905, dev)?;
        p.set_grad(Some(g));
        let mut opt = AdamW::new(vec![("p".into(), p)], AdamWConfig::default())?;
        cases.push(Case {
            name: format!("adamw_{}_params", ROWS * COLS / 2),
            sizes: sizes(&[("op", json!("adamw")), ("params", json!(ROWS * COLS / 2))]),
            unit: Unit::GbPerS,
            work: 28.0 * elems / 2.0,
            run: Box::new(move || opt.step()),
        });
    }
    for case in cases {
        if let Some(r) = measure("norm", opts, bandwidth, case)? {
            report(&r);
        }
    }
    Ok(())
}
