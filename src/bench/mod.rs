//! `tessera bench`: timed cases per suite, each reported beside its hardware ceiling measured
//! in the same run, as text or one JSON line per case.
//!
//! | suite | file | cases | rate | ceiling |
//! |---|---|---|---|---|
//! | `gemm` | `gemm.rs` | square n = 256..2048, transformer MLP shapes, tall-skinny, batched small, transposed | GFLOP/s | FMA peak ([`ceiling::fma_peak_gflops`]) |
//! | `conv` | `conv.rs` | ResNet-18 layers (64 and 224 px), diffusion U-Net layers (32 and 64 px), forward and forward+backward | GFLOP/s | FMA peak |
//! | `attention` | `attention.rs` | SDPA forward and forward+backward, T = 128..2048, head dim 32..128, causal or not | GFLOP/s | FMA peak |
//! | `norm` | `norm.rs` | copy, add, softmax, LayerNorm (forward, backward), GELU, tanh, AdamW step on tensors larger than the L3 cache | GB/s | copy bandwidth ([`ceiling::copy_bandwidth_gbps`]) |
//! | `train` | `train.rs` | one training step (forward, backward, AdamW) of whole models | steps/s | none |
//!
//! Method: inputs are random (never zeros) and created before timing; each case runs once
//! to warm up, then repeatedly until its time budget is spent (at least `min_reps` times),
//! waiting for the device after each run, and the median (and the fastest run) is reported.
//! `peak_bytes` is the largest memory held by tensors on the device while the case ran,
//! inputs included (the CPU backend and the CUDA allocator count every allocation). Ceilings
//! are measured on the CPU only so far; on a GPU none is reported until the GPU-speed work
//! adds its own (device copy bandwidth, tensor-core peak). The same cases
//! are run by `benches/reference/compare.py` in numpy (OpenBLAS) and PyTorch, which prints
//! both side by side with the ratio.

pub mod attention;
pub mod ceiling;
pub mod conv;
pub mod gemm;
pub mod norm;
pub mod train;

use crate::backend::cpu;
use crate::tensor::{DType, Device, Tensor};
use crate::Result;
use serde_json::{json, Map, Value};
use std::time::{Duration, Instant};

/// How long to measure each case.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub device: Device,
    /// Time spent repeating one case after its warm-up.
    pub budget: Duration,
    pub min_reps: usize,
    /// Only cases whose name contains this string (see [`BenchOptions::wants`]).
    pub filter: Option<String>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            device: Device::Cpu,
            budget: Duration::from_millis(1000),
            min_reps: 5,
            filter: None,
        }
    }
}

/// What a case's rate is counted in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    GflopPerS,
    GbPerS,
    StepsPerS,
}

impl Unit {
    pub fn json_key(self) -> &'static str {
        match self {
            Unit::GflopPerS => "gflops",
            Unit::GbPerS => "gbps",
            Unit::StepsPerS => "steps_per_s",
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Unit::GflopPerS => "GFLOP/s",
            Unit::GbPerS => "GB/s",
            Unit::StepsPerS => "steps/s",
        }
    }
}

/// One measured case.
#[derive(Clone, Debug)]
pub struct Measurement {
    pub suite: &'static str,
    pub case: String,
    /// The sizes that define the case (`m`, `n`, `k` for GEMM, ...), as the reference reads them.
    pub sizes: Map<String, Value>,
    pub ms: f64,
    /// The fastest repetition (less sensitive than the median to a busy machine).
    pub min_ms: f64,
    pub reps: usize,
    pub unit: Unit,
    /// Work per run: FLOPs, bytes, or 1 step.
    pub work: f64,
    /// The ceiling of this unit measured in the same run, if the suite has one.
    pub ceiling: Option<f64>,
    pub peak_bytes: usize,
}

impl Measurement {
    pub fn rate(&self) -> f64 {
        match self.unit {
            Unit::StepsPerS => 1e3 / self.ms,
            _ => self.work / (self.ms * 1e-3) / 1e9,
        }
    }
    pub fn fraction(&self) -> Option<f64> {
        self.ceiling.map(|c| self.rate() / c)
    }
    pub fn to_json(&self, device: Device) -> Value {
        let mut o = Map::new();
        o.insert("suite".into(), json!(self.suite));
        o.insert("case".into(), json!(self.case));
        o.insert("device".into(), json!(device.to_string()));
        o.insert("threads".into(), json!(rayon::current_num_threads()));
        for (k, v) in &self.sizes {
            o.insert(k.clone(), v.clone());
        }
        o.insert("ms".into(), json!(round(self.ms, 4)));
        o.insert("min_ms".into(), json!(round(self.min_ms, 4)));
        o.insert("reps".into(), json!(self.reps));
        o.insert(self.unit.json_key().into(), json!(round(self.rate(), 3)));
        if let Some(c) = self.ceiling {
            o.insert("ceiling".into(), json!(round(c, 2)));
            o.insert("fraction".into(), json!(round(self.rate() / c, 4)));
        }
        o.insert("peak_bytes".into(), json!(self.peak_bytes));
        Value::Object(o)
    }
    pub fn to_line(&self) -> String {
        let frac = self
            .fraction()
            .map(|f| format!("{:5.1}% of ceiling", 100.0 * f))
            .unwrap_or_default();
        format!(
            "{:<10} {:<44} {:>10.3} ms {:>9.1} {:<8} {:<18} peak {:>8.1} MiB",
            self.suite,
            self.case,
            self.ms,
            self.rate(),
            self.unit.label(),
            frac,
            self.peak_bytes as f64 / (1 << 20) as f64
        )
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

/// Runs `f` once to warm up, then until `opts.budget` is spent (at least `opts.min_reps`
/// times); returns the median time in ms, the repetitions, and the peak bytes held meanwhile.
pub fn time_case(
    opts: &BenchOptions,
    mut f: impl FnMut() -> Result<()>,
) -> Result<(f64, f64, usize, usize)> {
    f()?;
    cpu::reset_peak_bytes();
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < opts.min_reps || (start.elapsed() < opts.budget && times.len() < 1000) {
        let t0 = Instant::now();
        f()?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok((
        times[times.len() / 2],
        times[0],
        times.len(),
        cpu::peak_bytes(),
    ))
}

/// A case before it is measured: its name, sizes, unit and work, and the closure to time.
pub struct Case<'a> {
    pub name: String,
    pub sizes: Map<String, Value>,
    pub unit: Unit,
    pub work: f64,
    pub run: Box<dyn FnMut() -> Result<()> + 'a>,
}

impl BenchOptions {
    /// Whether the filter keeps the case `name` (check before building its inputs): the names
    /// that contain it, or with a trailing `$`, the names that end with the rest.
    pub fn wants(&self, name: &str) -> bool {
        self.filter
            .as_deref()
            .is_none_or(|f| match f.strip_suffix('$') {
                Some(end) => name.ends_with(end),
                None => name.contains(f),
            })
    }
}

/// Measures `case` unless the filter excludes it.
pub fn measure(
    suite: &'static str,
    opts: &BenchOptions,
    ceiling: Option<f64>,
    mut case: Case<'_>,
) -> Result<Option<Measurement>> {
    if !opts.wants(&case.name) {
        return Ok(None);
    }
    let (ms, min_ms, reps, peak_bytes) = time_case(opts, &mut case.run)?;
    Ok(Some(Measurement {
        suite,
        case: case.name,
        sizes: case.sizes,
        ms,
        min_ms,
        reps,
        unit: case.unit,
        work: case.work,
        ceiling,
        peak_bytes,
    }))
}

/// A random normal f32 tensor on `device` (seeded, so runs compare like with like).
pub fn randn(dims: &[usize], seed: u64, device: Device) -> Result<Tensor> {
    Tensor::randn_with_seed(dims.to_vec(), DType::F32, device, seed, 0)
}

/// `{"a": 1, ...}` from pairs, for case sizes.
pub fn sizes(pairs: &[(&str, Value)]) -> Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// The suites, in the order `--suite all` runs them.
pub const SUITES: &[&str] = &["gemm", "conv", "attention", "norm", "train"];

/// Runs one suite, handing each measurement to `report` as soon as it is taken.
pub fn run_suite(
    suite: &str,
    opts: &BenchOptions,
    report: &mut dyn FnMut(&Measurement),
) -> Result<()> {
    match suite {
        "gemm" => gemm::run(opts, report),
        "conv" => conv::run(opts, report),
        "attention" => attention::run(opts, report),
        "norm" => norm::run(opts, report),
        "train" => train::run(opts, report),
        other => Err(crate::Error::msg(format!(
            "bench: unknown suite `{other}` (expected one of {})",
            SUITES.join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trailing_dollar_keeps_only_the_names_that_end_with_the_filter() {
        let with = |f: &str| BenchOptions {
            filter: Some(f.into()),
            ..BenchOptions::default()
        };
        let (fwd, both) = ("sdpa_t128_forward", "sdpa_t128_forward_backward");
        assert!(with("t128_forward").wants(fwd) && with("t128_forward").wants(both));
        assert!(with("t128_forward$").wants(fwd) && !with("t128_forward$").wants(both));
        assert!(with("backward$").wants(both) && !with("t128$").wants(fwd));
        assert!(BenchOptions::default().wants(fwd));
    }
}
