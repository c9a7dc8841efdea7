//! The data-parallel training step (`train::data_parallel::step`): a batch cut into parts,
//! each part's forward and backward on its own pool thread, gradients added in part order.
//! Checked on the real use, the text-to-image model's loss, against one backward over the
//! whole batch; plus `Tensor::gradients`, which the parts back-propagate with.

mod common;

use tessera::data::shapes::caption_alphabet;
use tessera::data::{CharTokenizer, PromptTokenizer};
use tessera::diffusion::TextToImage;
use tessera::nn::Module;
use tessera::random::manual_seed;
use tessera::train::data_parallel::step;
use tessera::{DType, Device, Tensor};

const CPU: Device = Device::Cpu;
const CAPTIONS: [&str; 5] = [
    "a red circle",
    "a small blue square on the left",
    "the triangle is green",
    "a large purple diamond",
    "an orange cross at the top",
];

struct Batch {
    x0: Tensor,
    noise: Tensor,
    t: Vec<usize>,
}

/// The tiny model and a batch of 5 (so 2 parts are 3 + 2 and 3 parts 2 + 2 + 1) on fresh
/// random inputs.
fn model_and_batch(seed: u64) -> (TextToImage, Batch) {
    manual_seed(seed);
    let cfg = common::tiny_diffusion_config();
    let tokens = PromptTokenizer::Char(CharTokenizer::from_text(&caption_alphabet()));
    let model = TextToImage::new(cfg.clone(), tokens, CPU).unwrap();
    let s = cfg.image_size;
    let x0 = Tensor::rand((5, 3, s, s), DType::F32, CPU)
        .unwrap()
        .mul_scalar(2.0)
        .unwrap()
        .add_scalar(-1.0)
        .unwrap();
    let noise = Tensor::randn((5, 3, s, s), DType::F32, CPU).unwrap();
    let t = vec![3, 47, 20, 0, 31];
    (model, Batch { x0, noise, t })
}

fn loss_of(model: &TextToImage, b: &Batch, r: std::ops::Range<usize>) -> tessera::Result<Tensor> {
    let len = r.len();
    model.training_loss(
        &b.x0.narrow(0, r.start, len)?,
        &CAPTIONS[r.clone()],
        &b.t[r.clone()],
        &b.noise.narrow(0, r.start, len)?,
    )
}

fn grads(model: &TextToImage) -> Vec<(String, Vec<f32>)> {
    model
        .named_parameters()
        .into_iter()
        .map(|(n, p)| {
            let g = p.grad().unwrap_or_else(|| panic!("{n} has no gradient"));
            (n, g.to_vec::<f32>().unwrap())
        })
        .collect()
}

fn zero_grads(model: &TextToImage) {
    for (_, p) in model.named_parameters() {
        p.zero_grad();
    }
}

/// The whole batch's loss and gradients, by one `backward`.
fn whole_batch(model: &TextToImage, b: &Batch) -> (f64, Vec<(String, Vec<f32>)>) {
    zero_grads(model);
    let loss = loss_of(model, b, 0..5).unwrap();
    let value = loss.item().unwrap();
    loss.backward().unwrap();
    let g = grads(model);
    zero_grads(model);
    (value, g)
}

#[test]
fn parts_give_the_whole_batch_loss_and_gradients() {
    let (model, b) = model_and_batch(11);
    let params = model.named_parameters();
    let (loss, reference) = whole_batch(&model, &b);
    for parts in [2, 3, 5] {
        zero_grads(&model);
        let got = step(&params, 5, parts, |r| loss_of(&model, &b, r)).unwrap();
        assert!(
            (got - loss).abs() <= 1e-6 * loss.abs(),
            "{parts} parts: loss {got} against {loss}"
        );
        for ((name, want), (_, have)) in reference.iter().zip(grads(&model)) {
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let worst = want
                .iter()
                .zip(&have)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                worst <= 2e-5 * scale + 1e-7,
                "{parts} parts: {name} differs by {worst} (largest gradient {scale})"
            );
        }
    }
}

#[test]
fn one_part_is_backward_bit_for_bit_and_parts_accumulate_onto_grad() {
    let (model, b) = model_and_batch(12);
    let params = model.named_parameters();
    let (loss, reference) = whole_batch(&model, &b);
    let got = step(&params, 5, 1, |r| loss_of(&model, &b, r)).unwrap();
    assert_eq!(got, loss);
    assert_eq!(grads(&model), reference);
    // A second step adds onto the gradients already there, as backward does.
    step(&params, 5, 2, |r| loss_of(&model, &b, r)).unwrap();
    for ((name, once), (_, twice)) in reference.iter().zip(grads(&model)) {
        for (a, b) in once.iter().zip(&twice) {
            assert!(
                (2.0 * a - b).abs() <= 1e-4 * a.abs().max(1e-3),
                "{name}: {b} after two steps, {a} after one"
            );
        }
    }
}

#[test]
fn results_depend_on_the_parts_not_on_thread_timing() {
    let (model, b) = model_and_batch(13);
    let params = model.named_parameters();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    let run = || {
        zero_grads(&model);
        let loss = pool.install(|| step(&params, 5, 3, |r| loss_of(&model, &b, r)).unwrap());
        (loss, grads(&model))
    };
    let first = run();
    for _ in 0..3 {
        assert!(run() == first, "a rerun on 3 threads changed the bits");
    }
}

#[test]
fn a_loss_that_draws_random_numbers_is_refused() {
    let x = Tensor::randn((4, 6), DType::F32, CPU)
        .unwrap()
        .requires_grad_()
        .unwrap();
    let params = vec![("x".to_string(), x.clone())];
    let err = step(&params, 4, 2, |r| {
        x.narrow(0, r.start, r.len())?
            .dropout(0.5, true)?
            .sqr()?
            .mean_all()
    })
    .unwrap_err();
    assert!(err.to_string().contains("dropout"), "{err}");
    // Without dropout the same loss runs, and x's gradient is d mean(x^2) = 2x / n.
    x.zero_grad();
    step(&params, 4, 2, |r| {
        x.narrow(0, r.start, r.len())?.sqr()?.mean_all()
    })
    .unwrap();
    let (g, v) = (
        x.grad().unwrap().to_vec::<f32>().unwrap(),
        x.to_vec::<f32>().unwrap(),
    );
    for (g, v) in g.iter().zip(&v) {
        assert!((g - v / 12.0).abs() <= 1e-6, "{g} against {}", v / 12.0);
    }
}

#[test]
fn gradients_returns_without_touching_grad() {
    let x = Tensor::randn((3, 4), DType::F64, CPU)
        .unwrap()
        .requires_grad_()
        .unwrap();
    let loss = x.sqr().unwrap().sum_all().unwrap();
    let g = loss.gradients().unwrap();
    assert!(x.grad().is_none(), "gradients() wrote .grad()");
    let (g, v) = (
        g.get(&x).unwrap().to_vec_f64().unwrap(),
        x.to_vec_f64().unwrap(),
    );
    assert!(g.iter().zip(&v).all(|(g, v)| (g - 2.0 * v).abs() < 1e-12));
    // Only for a one-element output, like backward().
    let err = x.sqr().unwrap().gradients().unwrap_err();
    assert!(err.to_string().contains("[3, 4]"), "{err}");
}

#[test]
fn parts_run_with_the_callers_grad_mode_whatever_the_workers_was() {
    let (model, b) = model_and_batch(14);
    let params = model.named_parameters();
    let (loss, reference) = whole_batch(&model, &b);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    // Leave both workers in no_grad, as a worker is while a job it runs waits inside one.
    pool.broadcast(|_| std::mem::forget(tessera::autograd::no_grad_guard()));
    zero_grads(&model);
    let got = pool.install(|| {
        let _mode = tessera::autograd::grad_mode_guard(true);
        step(&params, 5, 2, |r| loss_of(&model, &b, r))
    });
    assert!((got.unwrap() - loss).abs() <= 1e-6 * loss.abs());
    assert_eq!(grads(&model).len(), reference.len());
}
