//! Training the text-to-feature model (MSE to frozen ResNet features, AdamW) and measuring
//! retrieval: for prompts written with the *held-out* templates, is the nearest gallery
//! picture to the predicted feature one of the right shape and colour?

use super::captioner::{run_steps, step_rng, SeqTrainConfig, SeqTrainReport};
use crate::data::shapes::{
    fill, train_caption, ShapeLabel, COLOURS, HELD_OUT_TEMPLATES, PLACES, SHAPES, SIZES,
};
use crate::data::CharTokenizer;
use crate::io::Checkpoint;
use crate::models::retrieval::{nearest, Metric};
use crate::models::text_to_feature::{TextToFeature, TextToFeatureConfig};
use crate::nn::Module;
use crate::ops::mse_loss;
use crate::random::Rng;
use crate::{Device, Error, Result, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// Trains `model` so that a training caption of picture `i` maps to `features[i]`.
pub fn train_text_to_feature(
    model: &TextToFeature,
    tokenizer: &CharTokenizer,
    features: &Tensor,
    labels: &[ShapeLabel],
    cfg: &SeqTrainConfig,
) -> Result<SeqTrainReport> {
    if features.dims()[0] != labels.len() || labels.is_empty() {
        return Err(Error::msg(format!(
            "train_text_to_feature: {} feature rows for {} labels",
            features.dims()[0],
            labels.len()
        )));
    }
    let device = features.device();
    let (opt, report) = run_steps("text-to-feature", model.named_parameters(), cfg, |step| {
        let mut rng = step_rng(cfg.seed ^ 0x7F, step);
        let idx: Vec<i64> = (0..cfg.batch_size)
            .map(|_| rng.below(labels.len()) as i64)
            .collect();
        let prompts: Vec<String> = idx
            .iter()
            .map(|&i| drop_a_filler_word(&train_caption(&labels[i as usize], &mut rng), &mut rng))
            .collect();
        let refs: Vec<&str> = prompts.iter().map(|s| s.as_str()).collect();
        let target = features.index_select(&Tensor::from_vec(idx, cfg.batch_size, device)?, 0)?;
        let pred = model.forward(&model.encode(tokenizer, &refs, device)?)?;
        mse_loss(&pred, &target)
    })?;
    if let Some(path) = &cfg.checkpoint {
        let mut extra = HashMap::new();
        extra.insert("model".to_string(), "text_to_feature".to_string());
        extra.insert("config".to_string(), model.config.to_json());
        extra.insert("tokenizer".to_string(), tokenizer.to_json());
        Checkpoint::capture(&model.state_dict(), &opt, cfg.steps, extra).save(path)?;
    }
    Ok(report)
}

/// Word dropout: half the time, removes one word that names neither a shape nor a colour.
/// The prediction must then come from the shape and colour words wherever they sit, not from
/// the exact sentence around them, which is what an unseen phrasing changes.
pub fn drop_a_filler_word(caption: &str, rng: &mut Rng) -> String {
    let words: Vec<&str> = caption.split(' ').collect();
    let is_filler = |w: &&str| {
        let bare = w.trim_matches(|c: char| !c.is_alphanumeric());
        !SHAPES.contains(&bare) && !COLOURS.contains(&bare)
    };
    let fillers: Vec<usize> = (0..words.len()).filter(|&i| is_filler(&words[i])).collect();
    if fillers.is_empty() || rng.uniform() < 0.5 {
        return caption.to_string();
    }
    let drop = fillers[rng.below(fillers.len())];
    let kept: Vec<&str> = (0..words.len())
        .filter(|&i| i != drop)
        .map(|i| words[i])
        .collect();
    kept.join(" ")
}

/// One evaluation prompt per (gallery class, held-out template), with a random size and
/// place for the templates that mention them.
pub fn held_out_prompts(classes: &[ShapeLabel], seed: u64) -> Vec<(String, ShapeLabel)> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    for class in classes {
        for t in HELD_OUT_TEMPLATES {
            let label = ShapeLabel {
                size: rng.below(SIZES.len()),
                place: rng.below(PLACES.len()),
                ..*class
            };
            out.push((fill(t, &label), label));
        }
    }
    out
}

#[derive(Clone, Debug)]
pub struct RetrievalResult {
    pub prompt: String,
    pub wanted: ShapeLabel,
    /// Index of the nearest gallery picture.
    pub matched: usize,
    pub correct: bool,
}

/// Top-1 retrieval accuracy of `prompts` against the gallery (`features` `[N, F]` with
/// `labels`): right when the nearest picture has the prompt's shape and colour.
pub fn retrieval_accuracy(
    model: &TextToFeature,
    tokenizer: &CharTokenizer,
    prompts: &[(String, ShapeLabel)],
    gallery_features: &Tensor,
    gallery_labels: &[ShapeLabel],
    metric: Metric,
) -> Result<(f64, Vec<RetrievalResult>)> {
    let mut results = Vec::with_capacity(prompts.len());
    for chunk in prompts.chunks(64) {
        let refs: Vec<&str> = chunk.iter().map(|(p, _)| p.as_str()).collect();
        let pred = model.predict(tokenizer, &refs)?;
        for ((prompt, wanted), (matched, _)) in
            chunk.iter().zip(nearest(&pred, gallery_features, metric)?)
        {
            let got = &gallery_labels[matched];
            results.push(RetrievalResult {
                prompt: prompt.clone(),
                wanted: *wanted,
                matched,
                correct: got.shape == wanted.shape && got.colour == wanted.colour,
            });
        }
    }
    let right = results.iter().filter(|r| r.correct).count();
    Ok((right as f64 / results.len().max(1) as f64, results))
}

/// Loads a text-to-feature checkpoint: the model and its tokenizer.
pub fn load_text_to_feature(path: &Path, device: Device) -> Result<(TextToFeature, CharTokenizer)> {
    let ck = Checkpoint::load_to(path, device)?;
    let get = |k: &str| ck.meta(path, "text_to_feature", k);
    let config = TextToFeatureConfig::from_json(get("config")?)?;
    let tokenizer = CharTokenizer::from_json(get("tokenizer")?)?;
    let model = TextToFeature::new(config, device)?;
    crate::io::load_named(&model.state_dict(), &ck.model, true)?;
    Ok((model, tokenizer))
}
