//! Outputs larger than the last-level cache are written with streaming stores, line by line
//! or through a scratch row (`backend::cpu::stream`). That must change the stores only, never
//! a value: every op that can stream is run with streaming off and again with it forced on for
//! every size, on random inputs whose rows are not a whole number of cache lines (so outputs
//! and rows start and end inside lines), and the results are compared bit for bit. (Its own
//! test binary: the threshold is process-wide.)

use tessera::backend::cpu::stream::force_threshold;
use tessera::{DType, Device, Result, Tensor};

fn run_all(dtype: DType) -> Result<Vec<(String, Vec<f64>)>> {
    let dev = Device::Cpu;
    // 37 x 1031: rows of 4124 bytes in f32 (not whole lines), 38147 elements in all (a
    // partial last Rayon chunk and a partial last line).
    let x = Tensor::randn_with_seed((37, 1031), dtype, dev, 1, 0)?.mul_scalar(2.0)?;
    let y = Tensor::randn_with_seed((37, 1031), dtype, dev, 2, 0)?;
    let mut out = Vec::new();
    let mut push = |name: &str, t: &Tensor| -> Result<()> {
        out.push((name.to_string(), t.to_vec_f64()?));
        Ok(())
    };
    push("add", &x.add(&y)?)?;
    push("mul", &x.mul(&y)?)?;
    // A view that starts one row in: the input is read from an offset.
    push(
        "sub of views",
        &x.narrow(0, 1, 36)?.sub(&y.narrow(0, 0, 36)?)?,
    )?;
    push("affine", &x.affine(0.5, -1.0)?)?;
    push("abs", &x.abs()?)?;
    push("contiguous copy", &x.contiguous_copy()?)?;
    push("lt mask", &x.lt_t(&y)?)?;
    push("where", &x.lt_t(&y)?.where_cond(&x, &y)?)?;
    // The element functions with a transcendental in them.
    push("exp", &x.exp()?)?;
    push("log", &x.abs()?.add_scalar(0.5)?.log()?)?;
    push("powf", &x.abs()?.powf(1.7)?)?;
    push("tanh", &x.tanh()?)?;
    push("sigmoid", &x.sigmoid()?)?;
    push("gelu tanh", &x.gelu_tanh()?)?;
    // Forward and backward (each backward is a map over (x, dy)).
    for (name, f) in [
        ("relu", Tensor::relu as fn(&Tensor) -> Result<Tensor>),
        ("gelu", Tensor::gelu),
        ("silu", Tensor::silu),
    ] {
        let xg = x.detach();
        xg.set_requires_grad(true)?;
        let z = f(&xg)?;
        z.backward_with(&y)?;
        push(name, &z)?;
        push(&format!("{name} grad"), &xg.grad().expect("grad"))?;
    }
    // Layer norm over rows of 1031, group norm with rows of 4 x 1031 / 2 groups.
    for (name, shape, channels) in [
        ("layer_norm", vec![37usize, 1031], 1031usize),
        ("group_norm", vec![37, 4, 1031], 4),
    ] {
        let xs = Tensor::randn_with_seed(shape.clone(), dtype, dev, 3, 0)?;
        let dy = Tensor::randn_with_seed(shape, dtype, dev, 4, 0)?;
        let w = Tensor::randn_with_seed(channels, dtype, dev, 5, 0)?;
        let b = Tensor::randn_with_seed(channels, dtype, dev, 6, 0)?;
        for t in [&xs, &w, &b] {
            t.set_requires_grad(true)?;
        }
        let z = if name == "layer_norm" {
            xs.layer_norm(Some(&w), Some(&b), 1e-5)?
        } else {
            xs.group_norm(2, Some(&w), Some(&b), 1e-5)?
        };
        z.backward_with(&dy)?;
        push(name, &z)?;
        push(&format!("{name} dx"), &xs.grad().expect("grad"))?;
        push(&format!("{name} dweight"), &w.grad().expect("grad"))?;
        push(&format!("{name} dbias"), &b.grad().expect("grad"))?;
    }
    Ok(out)
}

#[test]
fn streamed_outputs_are_the_same_bits() {
    for dtype in [DType::F32, DType::F64] {
        force_threshold(Some(usize::MAX));
        let direct = run_all(dtype).unwrap();
        force_threshold(Some(1));
        let streamed = run_all(dtype).unwrap();
        force_threshold(None);
        for ((name, a), (_, b)) in direct.iter().zip(&streamed) {
            assert_eq!(a.len(), b.len(), "{name}");
            for (i, (p, q)) in a.iter().zip(b).enumerate() {
                assert!(
                    p.to_bits() == q.to_bits() || (p.is_nan() && q.is_nan()),
                    "{dtype:?} {name}[{i}]: direct {p} vs streamed {q}"
                );
            }
        }
    }
}
