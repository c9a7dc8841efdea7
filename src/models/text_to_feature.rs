//! The text-to-feature transformer: reads a prompt such as "a blue square shape" and predicts
//! the ResNet-18 feature vector of the picture it describes; the nearest known picture in
//! feature space is the answer (see [`crate::models::retrieval`]).
//!
//! ```text
//! ids [B, T] = <SOS> c1 .. c_{T-1} (right-padded) --tok_emb--> [B, T, C] + pos_emb[1..T+1]
//!   --> blocks (pre-LN, causal) --> ln_f                                        [B, T, C]
//!   --> hidden state of each row's last non-padding token                      [B, C]
//!   --> feature_head (Linear C -> 512)                                          [B, 512]
//! ```
//! `tok_emb`, `pos_emb`, `blocks` and `ln_f` start from a trained captioner's checkpoint
//! (same names and shapes; text sits at positions 1.. as it does after the captioner's image
//! prefix), so the model begins knowing the caption language; `feature_head` is new. Causal
//! attention means padding after a row's last token cannot change that token's state.
//! Trained with the MSE to the frozen ResNet features of the described pictures, AdamW.

use crate::data::tokenizer::{self, CharTokenizer};
use crate::models::captioner::{init_gpt2, text_blocks, Captioner};
use crate::models::text_encoder::prompt_ids;
use crate::nn::{
    children_parameters, list_parameters, Embedding, LayerNorm, LearnedPositionalEmbedding, Linear,
    Module, TransformerBlock,
};
use crate::ops::AttentionOpts;
use crate::{Device, Error, Result, Tensor};

#[derive(Clone, Debug, PartialEq)]
pub struct TextToFeatureConfig {
    pub vocab_size: usize,
    /// Longest prompt in tokens (`<SOS>` included).
    pub max_len: usize,
    pub dim: usize,
    pub num_heads: usize,
    pub num_layers: usize,
    /// Width of the predicted feature (512 for ResNet-18).
    pub feature_dim: usize,
}

impl TextToFeatureConfig {
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "vocab_size": self.vocab_size, "max_len": self.max_len, "dim": self.dim,
            "num_heads": self.num_heads, "num_layers": self.num_layers,
            "feature_dim": self.feature_dim,
        })
        .to_string()
    }
    pub fn from_json(s: &str) -> Result<Self> {
        let c = crate::models::captioner::CaptionerConfig::from_json(s)?;
        Ok(TextToFeatureConfig {
            vocab_size: c.vocab_size,
            max_len: c.max_len,
            dim: c.dim,
            num_heads: c.num_heads,
            num_layers: c.num_layers,
            feature_dim: c.feature_dim,
        })
    }
}

pub struct TextToFeature {
    pub config: TextToFeatureConfig,
    pub tok_emb: Embedding,
    /// `max_len + 1` rows, as the captioner's (row 0 is the captioner's image slot, unused).
    pub pos_emb: LearnedPositionalEmbedding,
    pub blocks: Vec<TransformerBlock>,
    pub ln_f: LayerNorm,
    pub feature_head: Linear,
}

impl TextToFeature {
    /// A freshly initialized model (GPT-2 init).
    pub fn new(config: TextToFeatureConfig, device: Device) -> Result<Self> {
        let c = &config;
        let model = TextToFeature {
            tok_emb: Embedding::with_std(c.vocab_size, c.dim, 0.02, device)?,
            pos_emb: LearnedPositionalEmbedding::new(c.max_len + 1, c.dim, device)?,
            blocks: text_blocks(c.dim, c.num_heads, c.num_layers, device)?,
            ln_f: LayerNorm::new(c.dim, 1e-5, device)?,
            feature_head: Linear::new(c.dim, c.feature_dim, true, device)?,
            config,
        };
        init_gpt2(&model.named_parameters(), device)?;
        Ok(model)
    }

    /// The text stack copied from `captioner` (fresh tensors: training this model leaves the
    /// captioner unchanged) and a new `feature_head`.
    pub fn from_captioner(captioner: &Captioner, device: Device) -> Result<Self> {
        let c = &captioner.config;
        let model = TextToFeature::new(
            TextToFeatureConfig {
                vocab_size: c.vocab_size,
                max_len: c.max_len,
                dim: c.dim,
                num_heads: c.num_heads,
                num_layers: c.num_layers,
                feature_dim: c.feature_dim,
            },
            device,
        )?;
        let shared: Vec<(String, Tensor)> = model
            .named_parameters()
            .into_iter()
            .filter(|(n, _)| !n.starts_with("feature_head."))
            .collect();
        let report = crate::io::load_named(&shared, &captioner.named_parameters(), false)?;
        if !report.missing.is_empty() {
            return Err(Error::msg(format!(
                "TextToFeature::from_captioner: the captioner lacks {}",
                report.missing.join(", ")
            )));
        }
        Ok(model)
    }

    /// `ids` `[B, T]` (right-padded with `<PAD>`, each row starting with `<SOS>`) -> `[B, F]`.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        if ids.rank() != 2 || ids.dims()[1] > c.max_len || ids.dims()[1] == 0 {
            return Err(Error::shape(
                "TextToFeature",
                format!("expected ids [B, T] with 0 < T <= {}", c.max_len),
                &[ids.shape()],
            ));
        }
        let (b, t) = (ids.dims()[0], ids.dims()[1]);
        let rows = ids.to_vec::<i64>()?;
        // Flat index of each row's last non-padding token in [B*T].
        let last: Vec<i64> = (0..b)
            .map(|r| {
                let len = rows[r * t..(r + 1) * t]
                    .iter()
                    .rposition(|&id| id != tokenizer::PAD as i64)
                    .unwrap_or(0);
                (r * t + len) as i64
            })
            .collect();
        let pos = self.pos_emb.weight.narrow(0, 1, t)?;
        let mut x = self.tok_emb.forward(ids)?.add(&pos)?;
        let causal = AttentionOpts {
            causal: true,
            ..Default::default()
        };
        for block in &self.blocks {
            x = block.forward(&x, &causal, None)?;
        }
        let h = self.ln_f.forward(&x)?.reshape((b * t, c.dim))?;
        let h_last = h.index_select(&Tensor::from_vec(last, b, ids.device())?, 0)?;
        self.feature_head.forward(&h_last)
    }

    /// Token ids for prompts: `<SOS>` then the characters (unknown ones as `<UNK>`), cut at
    /// `max_len`, right-padded.
    pub fn encode(
        &self,
        tokenizer: &CharTokenizer,
        prompts: &[&str],
        device: Device,
    ) -> Result<Tensor> {
        prompt_ids(
            |p| tokenizer.encode(p),
            prompts,
            self.config.max_len,
            device,
        )
    }

    /// Predicted features of `prompts`, `[B, F]`, without a graph.
    pub fn predict(&self, tokenizer: &CharTokenizer, prompts: &[&str]) -> Result<Tensor> {
        let device = self.tok_emb.weight.device();
        crate::no_grad(|| self.forward(&self.encode(tokenizer, prompts, device)?))
    }
}

impl Module for TextToFeature {
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v = children_parameters(&[("tok_emb", &self.tok_emb), ("pos_emb", &self.pos_emb)]);
        v.extend(list_parameters("blocks", &self.blocks));
        v.extend(children_parameters(&[
            ("ln_f", &self.ln_f),
            ("feature_head", &self.feature_head),
        ]));
        v
    }
}
