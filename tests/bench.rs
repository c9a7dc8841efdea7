//! `tessera bench` plumbing: cases run, and each JSON line carries the fields the reference
//! runner (benches/reference/compare.py) joins on. No timing is asserted.

use std::time::Duration;
use tessera::bench::{run_suite, BenchOptions, Measurement};

fn collect(suite: &str, filter: &str) -> Vec<Measurement> {
    let opts = BenchOptions {
        budget: Duration::ZERO,
        min_reps: 1,
        filter: Some(filter.into()),
        ..Default::default()
    };
    let mut out = Vec::new();
    run_suite(suite, &opts, &mut |m| out.push(m.clone())).unwrap();
    out
}

#[test]
fn gemm_case_reports_sizes_rate_ceiling_and_memory() {
    let ms = collect("gemm", "square_256");
    assert_eq!(ms.len(), 1);
    let j = ms[0].to_json(tessera::Device::Cpu);
    for key in [
        "suite",
        "case",
        "m",
        "n",
        "k",
        "ms",
        "gflops",
        "ceiling",
        "fraction",
        "peak_bytes",
    ] {
        assert!(j.get(key).is_some(), "missing {key} in {j}");
    }
    assert_eq!(j["m"], 256);
    assert!(j["gflops"].as_f64().unwrap() > 0.0);
    // Inputs (2 x 256 KiB) and the output are live while the case runs.
    assert!(
        j["peak_bytes"].as_u64().unwrap() >= 3 * 256 * 256 * 4,
        "{j}"
    );
}

#[test]
fn unknown_suite_is_an_error_naming_the_choices() {
    let e = run_suite("nope", &BenchOptions::default(), &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("gemm"), "{e}");
}
