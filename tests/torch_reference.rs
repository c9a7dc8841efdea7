//! tessera's fused ops against PyTorch: `tests/fixtures/torch_reference.json` holds inputs,
//! outputs and input gradients computed by PyTorch in f64 (written by
//! `tests/fixtures/make_fixtures.py`). Everything here runs in f64 too; outputs and gradients
//! must agree to 1e-9 relative (+1e-9 absolute): the two implementations differ only in
//! summation order.

use serde_json::Value;
use tessera::ops::{cross_entropy, scaled_dot_product_attention, AttentionOpts, CrossEntropyOpts};
use tessera::{DType, Device, Tensor};

const TOL: f64 = 1e-9;

fn cases() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/torch_reference.json"
    );
    let text = std::fs::read_to_string(path).expect("fixture file (run make_fixtures.py)");
    let v: Value = serde_json::from_str(&text).expect("valid JSON");
    v["cases"].clone()
}
fn shape(v: &Value) -> Vec<usize> {
    v["shape"]
        .as_array()
        .expect("shape")
        .iter()
        .map(|d| d.as_u64().expect("dim") as usize)
        .collect()
}
fn f64s(case: &Value, name: &str) -> Tensor {
    let v = &case[name];
    let data: Vec<f64> = v["data"]
        .as_array()
        .unwrap_or_else(|| panic!("missing tensor {name}"))
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect();
    Tensor::from_vec(data, shape(v), Device::Cpu).unwrap()
}
fn i64s(case: &Value, name: &str) -> Tensor {
    let v = &case[name];
    let data: Vec<i64> = v["data"]
        .as_array()
        .unwrap_or_else(|| panic!("missing tensor {name}"))
        .iter()
        .map(|x| x.as_i64().expect("integer"))
        .collect();
    Tensor::from_vec(data, shape(v), Device::Cpu).unwrap()
}
fn u8s(case: &Value, name: &str) -> Tensor {
    let t = i64s(case, name);
    let data = t
        .to_vec::<i64>()
        .unwrap()
        .iter()
        .map(|&x| x as u8)
        .collect::<Vec<_>>();
    Tensor::from_vec(data, t.shape().clone(), Device::Cpu).unwrap()
}
fn param(case: &Value, name: &str) -> f64 {
    case["params"][name].as_f64().expect("param")
}
fn leaf(case: &Value, name: &str) -> Tensor {
    f64s(case, name).requires_grad_().unwrap()
}
fn assert_close(got: &Tensor, case: &Value, name: &str) {
    let want = f64s(case, name);
    assert_eq!(got.dims(), want.dims(), "{name}: shape");
    let (g, w) = (got.to_vec_f64().unwrap(), want.to_vec_f64().unwrap());
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        assert!(
            (a - b).abs() <= TOL * (1.0 + b.abs()),
            "{name}[{i}]: tessera {a} vs torch {b}"
        );
    }
}
fn grad(t: &Tensor) -> Tensor {
    t.grad().expect("gradient")
}

#[test]
fn layer_norm_matches_torch() {
    let c = &cases()["layer_norm"];
    let (x, w, b) = (leaf(c, "x"), leaf(c, "w"), leaf(c, "b"));
    let y = x.layer_norm(Some(&w), Some(&b), param(c, "eps")).unwrap();
    assert_close(&y, c, "y");
    y.backward_with(&f64s(c, "gy")).unwrap();
    assert_close(&grad(&x), c, "dx");
    assert_close(&grad(&w), c, "dw");
    assert_close(&grad(&b), c, "db");
}

#[test]
fn group_norm_matches_torch() {
    let c = &cases()["group_norm"];
    let (x, w, b) = (leaf(c, "x"), leaf(c, "w"), leaf(c, "b"));
    let groups = param(c, "groups") as usize;
    let y = x
        .group_norm(groups, Some(&w), Some(&b), param(c, "eps"))
        .unwrap();
    assert_close(&y, c, "y");
    y.backward_with(&f64s(c, "gy")).unwrap();
    assert_close(&grad(&x), c, "dx");
    assert_close(&grad(&w), c, "dw");
    assert_close(&grad(&b), c, "db");
}

#[test]
fn batch_norm_matches_torch() {
    let c = &cases()["batch_norm"];
    let (eps, momentum) = (param(c, "eps"), param(c, "momentum"));
    let (x, w, b) = (leaf(c, "x"), leaf(c, "w"), leaf(c, "b"));
    let (rm, rv) = (f64s(c, "running_mean_in"), f64s(c, "running_var_in"));
    let y = x
        .batch_norm(
            Some(&rm),
            Some(&rv),
            Some(&w),
            Some(&b),
            true,
            momentum,
            eps,
        )
        .unwrap();
    assert_close(&y, c, "y");
    assert_close(&rm, c, "running_mean_out");
    assert_close(&rv, c, "running_var_out");
    y.backward_with(&f64s(c, "gy")).unwrap();
    assert_close(&grad(&x), c, "dx");
    assert_close(&grad(&w), c, "dw");
    assert_close(&grad(&b), c, "db");

    for t in [&x, &w, &b] {
        t.zero_grad();
    }
    let ye = x
        .batch_norm(
            Some(&rm),
            Some(&rv),
            Some(&w),
            Some(&b),
            false,
            momentum,
            eps,
        )
        .unwrap();
    assert_close(&ye, c, "y_eval");
    ye.backward_with(&f64s(c, "gy_eval")).unwrap();
    assert_close(&grad(&x), c, "dx_eval");
    assert_close(&grad(&w), c, "dw_eval");
    assert_close(&grad(&b), c, "db_eval");
}

fn attention_case(name: &str) {
    let c = &cases()[name];
    let (q, k, v) = (leaf(c, "q"), leaf(c, "k"), leaf(c, "v"));
    let opts = AttentionOpts {
        causal: c["params"]["causal"].as_bool().expect("causal"),
        key_padding_mask: Some(u8s(c, "key_padding_mask")),
        ..Default::default()
    };
    let o = scaled_dot_product_attention(&q, &k, &v, &opts).unwrap();
    assert_close(&o, c, "o");
    o.backward_with(&f64s(c, "gy")).unwrap();
    assert_close(&grad(&q), c, "dq");
    assert_close(&grad(&k), c, "dk");
    assert_close(&grad(&v), c, "dv");
}

#[test]
fn attention_causal_with_padding_matches_torch() {
    attention_case("attention_causal_padding");
}

#[test]
fn cross_attention_with_padding_matches_torch() {
    attention_case("attention_cross_padding");
}

#[test]
fn cross_entropy_matches_torch() {
    let c = &cases()["cross_entropy"];
    let logits = leaf(c, "logits");
    let opts = CrossEntropyOpts {
        ignore_index: c["params"]["ignore_index"].as_i64(),
        label_smoothing: param(c, "label_smoothing"),
    };
    let loss = cross_entropy(&logits, &i64s(c, "targets"), opts).unwrap();
    assert_close(&loss, c, "loss");
    loss.backward().unwrap();
    assert_close(&grad(&logits), c, "dlogits");
    // The same computation in f32 agrees to f32 precision.
    let l32 = cross_entropy(
        &f64s(c, "logits").to_dtype(DType::F32).unwrap(),
        &i64s(c, "targets"),
        opts,
    )
    .unwrap();
    let want = f64s(c, "loss").item().unwrap();
    assert!((l32.item().unwrap() - want).abs() < 1e-5 * (1.0 + want.abs()));
}
