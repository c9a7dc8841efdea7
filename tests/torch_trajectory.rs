//! An llm.c-style reference-trajectory test (after `test_gpt2.cu`): the char-level transformer
//! must reproduce a PyTorch re-implementation of itself over a short training run, in f64.
//!
//! `tests/fixtures/make_char_transformer_reference.py` writes the initial weights
//! (`char_transformer_init.safetensors`, named as `CharTransformer::named_parameters()`) and
//! the reference (`char_transformer_reference.json`): the step-0 logits, the loss and the
//! gradient norm before clipping of six `AdamW` + `clip_grad_norm_` steps on one fixed batch,
//! per-parameter gradient norms at step 0, and the parameters after the last step. The same
//! file holds softmax / log_softmax cases for the fused softmax test below.
//!
//! Tolerances (f64; the two sides differ only in summation order): logits 1e-10 absolute,
//! loss and gradient norm 1e-9 relative, final parameters 1e-8 absolute. The largest final
//! difference is expected in the key bias (`attn.qkv.bias[C..2C]`): softmax ignores a constant
//! added to every key's score, so that gradient is zero up to rounding (~1e-17), and Adam
//! turns rounding noise g into updates of about lr * g / eps ~ 1e-11, which differ between
//! implementations; every other parameter agrees to ~1e-15.

use serde_json::Value;
use tessera::io::{load_into, load_safetensors};
use tessera::models::char_transformer::{CharTransformer, CharTransformerConfig};
use tessera::nn::Module;
use tessera::optim::{clip_grad_norm, AdamW, AdamWConfig, Optimizer};
use tessera::{DType, Device, Tensor};

const LOGITS_TOL: f64 = 1e-10;
const LOSS_REL_TOL: f64 = 1e-9;
const NORM_REL_TOL: f64 = 1e-9;
const PARAM_TOL: f64 = 1e-8;
const SOFTMAX_TOL: f64 = 1e-12;

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}
fn reference() -> Value {
    let path = fixture("char_transformer_reference.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e} (run make_char_transformer_reference.py)"));
    serde_json::from_str(&text).expect("valid JSON")
}
fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("a list of numbers")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}
fn i64s(v: &Value) -> Vec<i64> {
    v.as_array()
        .expect("a list of integers")
        .iter()
        .map(|x| x.as_i64().expect("integer"))
        .collect()
}
fn usize_of(v: &Value, key: &str) -> usize {
    v[key].as_u64().unwrap_or_else(|| panic!("missing {key}")) as usize
}
/// Largest |a - b| and its index.
fn max_abs_diff(got: &[f64], want: &[f64]) -> (f64, usize) {
    assert_eq!(got.len(), want.len(), "length");
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .enumerate()
        .fold(
            (0.0, 0),
            |(m, mi), (i, d)| {
                if d > m || d.is_nan() {
                    (d, i)
                } else {
                    (m, mi)
                }
            },
        )
}
fn rel_diff(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(f64::MIN_POSITIVE)
}

/// The model of the fixture's config in f64, with the fixture's initial weights.
fn reference_model(r: &Value) -> CharTransformer {
    let config = CharTransformerConfig::from_json(&r["config"].to_string()).expect("config");
    let model = CharTransformer::new_with_dtype(config, DType::F64, Device::Cpu).expect("model");
    let init = load_safetensors(fixture("char_transformer_init.safetensors"), Device::Cpu)
        .expect("init weights");
    for (name, t) in &init.tensors {
        assert_eq!(t.dtype(), DType::F64, "{name} is stored in f64");
    }
    // Strict: the fixture names exactly tessera's parameters, with the same shapes.
    load_into(&model.named_parameters(), &init, true).expect("load init weights");
    for (name, p) in model.named_parameters() {
        assert_eq!(p.dtype(), DType::F64, "{name} is f64");
        assert!(p.requires_grad(), "{name} requires grad");
    }
    model
}

#[test]
fn new_with_dtype_builds_f64_parameters_and_keeps_new_f32() {
    let config = CharTransformerConfig::from_json(&reference()["config"].to_string()).unwrap();
    let f32_model = CharTransformer::new(config.clone(), Device::Cpu).unwrap();
    let f64_model = CharTransformer::new_with_dtype(config, DType::F64, Device::Cpu).unwrap();
    let (a, b) = (f32_model.named_parameters(), f64_model.named_parameters());
    assert_eq!(a.len(), b.len());
    for ((na, pa), (nb, pb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert_eq!(pa.dtype(), DType::F32, "{na}");
        assert_eq!(pb.dtype(), DType::F64, "{nb}");
        assert_eq!(pa.dims(), pb.dims(), "{na}");
        assert!(pb.requires_grad() && pb.is_leaf(), "{nb}");
    }
    // The fixed sinusoidal table is converted too: a forward pass runs wholly in f64.
    let mut sin_config = f64_model.config.clone();
    sin_config.positional = tessera::models::char_transformer::Positional::Sinusoidal;
    let sin_model = CharTransformer::new_with_dtype(sin_config, DType::F64, Device::Cpu).unwrap();
    let ids = Tensor::from_vec(vec![1i64, 2, 3, 4], (1, 4), Device::Cpu).unwrap();
    assert_eq!(sin_model.forward(&ids).unwrap().dtype(), DType::F64);
}

#[test]
fn char_transformer_trajectory_matches_torch() {
    let r = reference();
    let model = reference_model(&r);
    let (b, t) = (usize_of(&r, "batch"), usize_of(&r, "seq"));
    let steps = usize_of(&r, "steps");
    let ids = Tensor::from_vec(i64s(&r["ids"]), (b, t), Device::Cpu).unwrap();
    let targets = Tensor::from_vec(i64s(&r["targets"]), (b, t), Device::Cpu).unwrap();
    let o = &r["optimizer"];
    let of = |k: &str| o[k].as_f64().unwrap_or_else(|| panic!("optimizer.{k}"));
    let params = model.named_parameters();
    let mut opt = AdamW::new(
        params.clone(),
        AdamWConfig {
            lr: of("lr"),
            beta1: of("beta1"),
            beta2: of("beta2"),
            eps: of("eps"),
            weight_decay: of("weight_decay"),
        },
    )
    .unwrap();
    model.train();

    let want_losses = f64s(&r["losses"]);
    let want_norms = f64s(&r["grad_norms"]);
    let (mut logits_diff, mut loss_rel, mut norm_rel, mut grad0_rel) =
        (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    let mut report = Vec::new();
    for step in 0..steps {
        opt.zero_grad();
        let logits = model.forward(&ids).unwrap();
        assert_eq!(logits.dtype(), DType::F64);
        if step == 0 {
            let (d, i) = max_abs_diff(&logits.to_vec_f64().unwrap(), &f64s(&r["logits0"]));
            logits_diff = d;
            report.push(format!("step-0 logits: max abs diff {d:.3e} (at {i})"));
        }
        let loss = model.loss(&ids, &targets).unwrap();
        let l = loss.item().unwrap();
        loss.backward().unwrap();
        if step == 0 {
            for (name, p) in &params {
                let g = p.grad().expect("every parameter gets a gradient");
                let n = g
                    .to_vec_f64()
                    .unwrap()
                    .iter()
                    .map(|x| x * x)
                    .sum::<f64>()
                    .sqrt();
                let want = r["grad_norms0"][name.as_str()].as_f64().expect(name);
                let d = rel_diff(n, want);
                if d > grad0_rel {
                    report.push(format!(
                        "step-0 |grad {name}|: {n} vs torch {want} (rel {d:.3e})"
                    ));
                }
                grad0_rel = grad0_rel.max(d);
            }
        }
        let norm = clip_grad_norm(&params, of("max_norm")).unwrap();
        opt.step().unwrap();
        let (dl, dn) = (
            rel_diff(l, want_losses[step]),
            rel_diff(norm, want_norms[step]),
        );
        report.push(format!(
            "step {step}: loss {l} vs torch {} (rel {dl:.3e}); grad norm {norm} vs torch {} (rel {dn:.3e})",
            want_losses[step], want_norms[step]
        ));
        loss_rel = loss_rel.max(dl);
        norm_rel = norm_rel.max(dn);
    }

    // Final parameters: full values for a few, sum and L2 norm for all.
    let (mut param_diff, mut stats_diff) = (0.0f64, 0.0f64);
    let by_name = |n: &str| {
        params
            .iter()
            .find(|(m, _)| m == n)
            .map(|(_, p)| p.to_vec_f64().unwrap())
            .unwrap_or_else(|| panic!("no parameter {n}"))
    };
    for (name, want) in r["final_params"].as_object().expect("final_params") {
        let (d, i) = max_abs_diff(&by_name(name), &f64s(want));
        report.push(format!("final {name}: max abs diff {d:.3e} (at {i})"));
        param_diff = param_diff.max(d);
    }
    for (name, want) in r["final_stats"].as_object().expect("final_stats") {
        let v = by_name(name);
        let sum: f64 = v.iter().sum();
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let d = (sum - want["sum"].as_f64().unwrap())
            .abs()
            .max((norm - want["norm"].as_f64().unwrap()).abs());
        stats_diff = stats_diff.max(d);
    }
    report.push(format!(
        "final parameters, all {}: max abs diff of sum / L2 norm {stats_diff:.3e}",
        params.len()
    ));
    let summary = format!(
        "max diffs: logits {logits_diff:.3e} (tol {LOGITS_TOL:e}), loss rel {loss_rel:.3e} \
         (tol {LOSS_REL_TOL:e}), grad norm rel {norm_rel:.3e} (tol {NORM_REL_TOL:e}), \
         step-0 per-parameter grad norm rel {grad0_rel:.3e}, final params {param_diff:.3e} \
         (tol {PARAM_TOL:e}), final sums/norms {stats_diff:.3e}\n{}",
        report.join("\n")
    );
    eprintln!("{summary}");
    assert!(logits_diff <= LOGITS_TOL, "logits differ: {summary}");
    assert!(loss_rel <= LOSS_REL_TOL, "losses differ: {summary}");
    assert!(
        grad0_rel <= NORM_REL_TOL,
        "step-0 gradients differ: {summary}"
    );
    assert!(norm_rel <= NORM_REL_TOL, "gradient norms differ: {summary}");
    assert!(
        param_diff <= PARAM_TOL,
        "final parameters differ: {summary}"
    );
    assert!(
        stats_diff <= PARAM_TOL,
        "final parameter sums/norms differ: {summary}"
    );
}

#[test]
fn softmax_and_log_softmax_match_torch() {
    let r = reference();
    let s = &r["softmax"];
    let shape: Vec<usize> = i64s(&s["shape"]).iter().map(|&d| d as usize).collect();
    let gy = Tensor::from_vec(f64s(&s["gy"]), shape.clone(), Device::Cpu).unwrap();
    let mut report = Vec::new();
    let mut worst = 0.0f64;
    let cases = s["cases"].as_object().expect("cases");
    assert_eq!(cases.len(), 4);
    for (name, c) in cases {
        let x = Tensor::from_vec(f64s(&s["x"]), shape.clone(), Device::Cpu)
            .unwrap()
            .requires_grad_()
            .unwrap();
        let dim = usize_of(c, "dim");
        let y = match c["kind"].as_str() {
            Some("softmax") => x.softmax(dim).unwrap(),
            Some("log_softmax") => x.log_softmax(dim).unwrap(),
            other => panic!("unknown kind {other:?}"),
        };
        y.backward_with(&gy).unwrap();
        let dx = x.grad().expect("input gradient");
        let (dy, iy) = max_abs_diff(&y.to_vec_f64().unwrap(), &f64s(&c["y"]));
        let (dd, id) = max_abs_diff(&dx.to_vec_f64().unwrap(), &f64s(&c["dx"]));
        report.push(format!(
            "{name}: y max abs diff {dy:.3e} (at {iy}), dx {dd:.3e} (at {id})"
        ));
        worst = worst.max(dy).max(dd);
    }
    let summary = report.join("\n");
    eprintln!("{summary}");
    assert!(
        worst <= SOFTMAX_TOL,
        "softmax / log_softmax differ from torch beyond {SOFTMAX_TOL:e}:\n{summary}"
    );
}
