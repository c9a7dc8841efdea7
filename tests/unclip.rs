//! The unCLIP path and the Fashion-MNIST data of text-to-image diffusion: the prior's
//! gradients against finite differences in f64 and its learning, the clip-image
//! conditioner's shapes and null condition, a checkpoint that carries CLIP and the prior and
//! samples the same pictures after loading, the CLI's argument errors, and Fashion-MNIST
//! batches (skipped, with a printed line, when the data is absent).

mod common;

use std::path::PathBuf;
use tessera::autograd::gradcheck::{check_gradients, GradCheck};
use tessera::data::mnist::Split;
use tessera::data::shapes::caption_lines;
use tessera::data::PromptTokenizer;
use tessera::diffusion::unclip::{fit_clip_caption, ClipImageConditioner, ClipInput, CLIP_TOKENS};
use tessera::diffusion::{Conditioner, DiffusionConfig, SampleOpts, TextToImage};
use tessera::models::char_transformer::Positional;
use tessera::models::clip::{Clip, ClipConfig};
use tessera::models::prior::{Prior, PriorConfig};
use tessera::models::vit::VitConfig;
use tessera::nn::Module;
use tessera::optim::{assign, AdamW, AdamWConfig, Optimizer};
use tessera::random::manual_seed;
use tessera::train::diffusion::{
    load_diffusion, load_diffusion_with_dataset, train_diffusion_on, DiffusionTrainConfig,
    TimestepSampling,
};
use tessera::train::diffusion_data::DiffusionData;
use tessera::train::prior::{train_prior, PriorTrainConfig};
use tessera::{DType, Device, Tensor};

const CPU: Device = Device::Cpu;

/// A CLIP small enough for tests: 6x6 pictures (so 8x8 decoder pictures are resized), 8-wide
/// embeddings.
fn tiny_clip(seed: u64) -> Clip {
    manual_seed(seed);
    Clip::new(
        ClipConfig {
            embed_dim: 8,
            vit: VitConfig {
                image_size: 6,
                patch_size: 3,
                channels: 3,
                width: 8,
                num_layers: 1,
                num_heads: 2,
                embed_dim: 8,
                positional: Positional::Learned,
            },
            vocab_size: 256,
            text_width: 8,
            text_len: 32,
            text_heads: 2,
            text_layers: 1,
        },
        CPU,
    )
    .unwrap()
}

fn word_tokens() -> PromptTokenizer {
    PromptTokenizer::new("word", &caption_lines()).unwrap()
}

fn tiny_unclip(seed: u64) -> TextToImage {
    let cond =
        ClipImageConditioner::new(tiny_clip(seed), word_tokens(), 16, ClipInput::Resize, CPU)
            .unwrap();
    TextToImage::with_conditioner(
        common::tiny_diffusion_config(),
        Conditioner::ClipImage(Box::new(cond)),
        CPU,
    )
    .unwrap()
}

fn unclip_part(m: &TextToImage) -> &ClipImageConditioner {
    match &m.text {
        Conditioner::ClipImage(c) => c,
        _ => panic!("not a clip-image model"),
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tessera_unclip_{name}_{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn prior_gradients_match_finite_differences_in_f64() {
    manual_seed(4);
    let tokens = word_tokens();
    let prior = Prior::new(
        PriorConfig {
            embed_dim: 6,
            vocab_size: tokens.vocab_size(),
            max_len: 8,
            dim: 8,
            num_heads: 2,
            num_layers: 1,
        },
        CPU,
    )
    .unwrap()
    .into_dtype(DType::F64)
    .unwrap();
    // Two prompts of different lengths: the padding of the shorter one is masked.
    let ids = prior
        .encode_ids(&tokens, &["a red circle", "the square is blue"], CPU)
        .unwrap();
    let text = Tensor::randn_with_seed((2, 6), DType::F64, CPU, 9, 0).unwrap();
    let opts = GradCheck {
        eps: 1e-5,
        atol: 1e-7,
        rtol: 1e-5,
        seed: 3,
    };
    check_gradients(
        |xs| prior.forward(&xs[0], &ids),
        std::slice::from_ref(&text),
        opts,
    )
    .unwrap();
    // And with respect to a parameter deep inside (the CLIP token's projection), by hand.
    let target = Tensor::randn_with_seed((2, 6), DType::F64, CPU, 10, 0).unwrap();
    // The check above left gradients on the parameters.
    prior
        .named_parameters()
        .iter()
        .for_each(|(_, p)| p.zero_grad());
    let loss = prior.loss(&text, &ids, &target).unwrap();
    loss.backward().unwrap();
    let w = &prior.clip_in.weight;
    let analytic = w.grad().unwrap().to_vec_f64().unwrap();
    let base = w.to_vec_f64().unwrap();
    for i in [0, 7, 20] {
        let at = |d: f64| {
            let mut v = base.clone();
            v[i] += d;
            tessera::no_grad(|| {
                assign(w, &Tensor::from_vec(v, w.shape().clone(), CPU)?)?;
                prior.loss(&text, &ids, &target)?.item()
            })
            .unwrap()
        };
        let numeric = (at(1e-5) - at(-1e-5)) / 2e-5;
        at(0.0);
        assert!(
            (numeric - analytic[i]).abs() < 1e-7 + 1e-5 * numeric.abs(),
            "clip_in.weight[{i}]: numeric {numeric} vs analytic {}",
            analytic[i]
        );
    }
    // Wrong shapes are errors naming the model.
    let bad = prior.forward(&Tensor::zeros((2, 5), DType::F64, CPU).unwrap(), &ids);
    assert!(bad.unwrap_err().to_string().contains("Prior"));
}

#[test]
fn prior_fits_a_fixed_batch() {
    manual_seed(5);
    let tokens = word_tokens();
    let prior = Prior::new(PriorConfig::small(8, tokens.vocab_size()), CPU).unwrap();
    let prompts = [
        "a red circle",
        "a blue square",
        "green cross",
        "the yellow one",
    ];
    let ids = prior.encode_ids(&tokens, &prompts, CPU).unwrap();
    let text = Tensor::randn_with_seed((4, 8), DType::F32, CPU, 1, 0).unwrap();
    let target = Tensor::randn_with_seed((4, 8), DType::F32, CPU, 2, 0)
        .unwrap()
        .l2_normalize(1, 1e-12)
        .unwrap();
    let mut opt = AdamW::new(
        prior.named_parameters(),
        AdamWConfig {
            lr: 3e-3,
            ..Default::default()
        },
    )
    .unwrap();
    let mut losses = Vec::new();
    for _ in 0..60 {
        let loss = prior.loss(&text, &ids, &target).unwrap();
        losses.push(loss.item().unwrap());
        opt.zero_grad();
        loss.backward().unwrap();
        opt.step().unwrap();
    }
    let (first, last) = (losses[0], *losses.last().unwrap());
    assert!(last < 0.1 * first, "mse {first} -> {last}");
}

#[test]
fn clip_image_conditioning_shapes_null_rows_and_gradients() {
    let model = tiny_unclip(6);
    let cond = unclip_part(&model);
    // The frozen parts are buffers, the projection and U-Net the parameters.
    let params: Vec<String> = model.named_parameters().into_iter().map(|p| p.0).collect();
    assert!(params.iter().any(|n| n == "text.clip_image.proj.weight"));
    assert!(params
        .iter()
        .all(|n| !n.contains(".clip.") && !n.contains(".prior.")));
    let buffers: Vec<String> = model.named_buffers().into_iter().map(|p| p.0).collect();
    assert!(buffers
        .iter()
        .any(|n| n.starts_with("text.clip_image.clip.image_encoder.")));
    assert!(buffers
        .iter()
        .any(|n| n.starts_with("text.clip_image.prior.head.")));

    let x0 = Tensor::rand_with_seed((3, 3, 8, 8), DType::F32, CPU, 1, 0)
        .unwrap()
        .affine(2.0, -1.0)
        .unwrap();
    let e = cond.image_embedding(&x0).unwrap();
    assert_eq!(e.dims(), &[3, 8]);
    let norms: Vec<f64> = e.sqr().unwrap().sum(1).unwrap().to_vec_f64().unwrap();
    assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-4), "{norms:?}");
    // Training states: K tokens of width D, no padding; the dropped caption's row is the
    // projection of the zero embedding (its bias) and equals the null prompt's at sampling.
    let s = cond
        .training_states(&x0, &["a red circle", "", "a blue square"])
        .unwrap();
    assert_eq!(s.states.dims(), &[3, CLIP_TOKENS, 16]);
    assert_eq!(s.padding.dims(), &[3, CLIP_TOKENS]);
    assert!(s.padding.to_vec_f64().unwrap().iter().all(|&v| v == 0.0));
    let bias = cond.proj.bias.as_ref().unwrap().to_vec_f64().unwrap();
    let null_row = s.states.narrow(0, 1, 1).unwrap().to_vec_f64().unwrap();
    assert_eq!(null_row, bias);
    let sampled = cond.encode(&["", "show me the red circle"], CPU).unwrap();
    assert_eq!(sampled.states.dims(), &[2, CLIP_TOKENS, 16]);
    assert_eq!(
        sampled
            .states
            .narrow(0, 0, 1)
            .unwrap()
            .to_vec_f64()
            .unwrap(),
        bias
    );
    // Pictures CLIP cannot read are errors naming the conditioner.
    let gray = Tensor::zeros((1, 1, 8, 8), DType::F32, CPU).unwrap();
    assert!(cond
        .image_embedding(&gray)
        .unwrap_err()
        .to_string()
        .contains("clip-image"));
    // The training loss reaches the projection and the U-Net, never CLIP or the prior.
    let noise = Tensor::randn_with_seed((3, 3, 8, 8), DType::F32, CPU, 2, 0).unwrap();
    let loss = model
        .training_loss(
            &x0,
            &["a red circle", "", "a blue square"],
            &[3, 20, 40],
            &noise,
        )
        .unwrap();
    loss.backward().unwrap();
    assert!(cond.proj.weight.grad().is_some());
    assert!(model.unet.conv_in.weight.grad().is_some());
    for (name, b) in model.named_buffers() {
        assert!(b.grad().is_none(), "{name} got a gradient");
    }
    // CLIP's byte tower takes 30 bytes: longer prompts are cut at a character boundary.
    assert_eq!(fit_clip_caption("a red circle", 32), "a red circle");
    let long = "show a medium square, coloured purple, bottom";
    assert_eq!(fit_clip_caption(long, 32).len(), 30);
}

#[test]
fn unclip_checkpoint_carries_clip_and_prior_and_samples_the_same() {
    let dir = temp_dir("ckpt");
    let model = tiny_unclip(7);
    let data = DiffusionData::Shapes;
    // A few prior steps, so its weights are not the fresh ones a rebuild starts from.
    let r = train_prior(
        unclip_part(&model),
        &data,
        8,
        &PriorTrainConfig {
            steps: 5,
            batch_size: 8,
            train_pictures: 32,
            eval_pictures: 16,
            progress: false,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(r.held_out.cosine.is_finite() && (0.0..=1.0).contains(&r.held_out.retrieval));
    let path = dir.join("unclip.safetensors");
    let cfg = DiffusionTrainConfig {
        steps: 3,
        batch_size: 4,
        lr: 2e-3,
        seed: 1,
        checkpoint: Some(path.clone()),
        checkpoint_every: 0,
        progress: false,
        ..Default::default()
    };
    train_diffusion_on(&model, &data, &cfg).unwrap();
    model.eval();
    let (loaded, step, dataset) = load_diffusion_with_dataset(&path, CPU, false).unwrap();
    assert_eq!((step, dataset.as_str()), (3, "shapes"));
    assert_eq!(loaded.text.kind(), "clip-image");
    let state = |m: &TextToImage| -> Vec<(String, Vec<f64>)> {
        m.state_dict()
            .into_iter()
            .map(|(n, t)| (n, t.to_vec_f64().unwrap()))
            .collect()
    };
    assert_eq!(state(&model), state(&loaded));
    let opts = SampleOpts {
        steps: 4,
        guidance: 2.0,
        seed: 11,
        ..Default::default()
    };
    let prompts = ["a red circle", "show me the blue square"];
    let a = model.sample(&prompts, 2, &opts, || {}).unwrap();
    let b = loaded.sample(&prompts, 2, &opts, || {}).unwrap();
    assert_eq!(a.dims(), &[4, 3, 8, 8]);
    assert_eq!(a.to_vec_f64().unwrap(), b.to_vec_f64().unwrap());
    // The EMA load works too and still has CLIP and the prior.
    let (ema, _) = load_diffusion(&path, CPU, true).unwrap();
    assert_eq!(state(&ema).len(), state(&model).len());
    std::fs::remove_dir_all(&dir).ok();
}

fn run_cli(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn cli_argument_errors_say_what_is_wrong() {
    let dir = temp_dir("cli");
    let out = dir.join("run");
    let out = out.to_str().unwrap();
    // clip-image without a CLIP checkpoint.
    let (ok, err) = run_cli(&[
        "train",
        "diffusion",
        "--conditioning",
        "clip-image",
        "--steps",
        "1",
        "--out",
        out,
    ]);
    assert!(!ok && err.contains("--clip FILE"), "{err}");
    // A CLIP checkpoint that does not exist: the path is named.
    let missing = dir.join("no_clip.safetensors");
    let (ok, err) = run_cli(&[
        "train",
        "diffusion",
        "--conditioning",
        "clip-image",
        "--clip",
        missing.to_str().unwrap(),
        "--steps",
        "1",
        "--out",
        out,
    ]);
    assert!(!ok && err.contains("no_clip.safetensors"), "{err}");
    // --clip with text conditioning, an unknown dataset or conditioning.
    let (ok, err) = run_cli(&[
        "train",
        "diffusion",
        "--clip",
        "x.safetensors",
        "--steps",
        "1",
        "--out",
        out,
    ]);
    assert!(!ok && err.contains("--conditioning clip-image"), "{err}");
    let (ok, err) = run_cli(&["train", "diffusion", "--dataset", "cifar", "--out", out]);
    assert!(!ok && err.contains("shapes or fashion-mnist"), "{err}");
    let (ok, err) = run_cli(&["train", "diffusion", "--conditioning", "clip", "--out", out]);
    assert!(!ok && err.contains("clip-image"), "{err}");
    // A clip-image checkpoint asked for as text; a checkpoint of another dataset in eval.
    let model = tiny_unclip(8);
    let ckpt = dir.join("m.safetensors");
    let opt = AdamW::new(model.named_parameters(), AdamWConfig::default()).unwrap();
    let ema = tessera::optim::Ema::new(&model.named_parameters(), 0.9).unwrap();
    tessera::train::diffusion::save_diffusion_on(&model, "fashion-mnist", &opt, &ema, 1, &ckpt)
        .unwrap();
    let ckpt = ckpt.to_str().unwrap();
    let png = dir.join("g.png");
    let (ok, err) = run_cli(&[
        "sample",
        "diffusion",
        "--ckpt",
        ckpt,
        "--prompt",
        "a red circle",
        "--conditioning",
        "text",
        "--out",
        png.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(
        !ok && err.contains("conditioned on clip-image, not text"),
        "{err}"
    );
    let (ok, err) = run_cli(&[
        "eval",
        "diffusion",
        "--ckpt",
        ckpt,
        "--classifier",
        "none.safetensors",
        "--device",
        "cpu",
    ]);
    // Fashion-MNIST is judged too now: by a classifier of its own, which must exist.
    assert!(!ok && err.contains("none.safetensors"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn fashion_mnist_batches_are_padded_gray_and_reproducible() {
    let Some(dir) = common::fashion_mnist_dir() else {
        println!("skipped: no Fashion-MNIST under ../shared/data (set TESSERA_DATA)");
        return;
    };
    let data = DiffusionData::named("fashion-mnist", &dir).unwrap();
    assert_eq!((data.name(), data.channels()), ("fashion-mnist", 1));
    let cfg = DiffusionTrainConfig {
        seed: 3,
        batch_size: 8,
        timesteps: TimestepSampling::Uniform,
        ..Default::default()
    };
    let a = data.batch(&cfg, 7, 32, 1000, CPU).unwrap();
    let b = data.batch(&cfg, 7, 32, 1000, CPU).unwrap();
    assert_eq!(a.x0.dims(), &[8, 1, 32, 32]);
    assert_eq!(a.noise.dims(), &[8, 1, 32, 32]);
    assert_eq!(a.x0.to_vec_f64().unwrap(), b.x0.to_vec_f64().unwrap());
    assert_eq!((a.captions.clone(), a.t.clone()), (b.captions, b.t));
    // The 2-pixel border is the background (-1); the pictures are not all background.
    let v = a.x0.to_vec_f64().unwrap();
    for img in v.chunks(32 * 32) {
        for y in 0..32 {
            for x in 0..32 {
                if !(2..30).contains(&y) || !(2..30).contains(&x) {
                    assert_eq!(img[y * 32 + x], -1.0);
                }
            }
        }
        assert!(img.iter().any(|&p| p > 0.0));
    }
    assert!(a
        .captions
        .iter()
        .all(|c| c.is_empty() || c.starts_with("An image of")));
    // The prior's pool, and a U-Net of 3 channels is refused on these pictures.
    let pool = data.prior_pool(Split::Test, 20, 32, CPU).unwrap();
    assert_eq!(pool.images.dims(), &[20, 1, 32, 32]);
    let model = TextToImage::new(
        DiffusionConfig {
            image_size: 32,
            ..common::tiny_diffusion_config()
        },
        PromptTokenizer::new("word", &data.caption_text()).unwrap(),
        CPU,
    )
    .unwrap();
    let err = train_diffusion_on(&model, &data, &DiffusionTrainConfig::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("channel"), "{err}");
}
