//! The denoising U-Net of text-to-image diffusion (Ho et al. 2020's U-Net with the
//! cross-attention of Rombach et al. 2022, "High-Resolution Image Synthesis with Latent
//! Diffusion Models"), sized by [`UNetConfig`].
//!
//! ```text
//! t [B] --sinusoidal(C0)--> time_mlp (Linear C0->E, SiLU, Linear E->E)           temb [B, E]
//! context [B, S, D] + cond_type_emb[type]   (AR-LDM's type embedding: which conditioning)
//! temb += text_pool_proj(mean of the context over its real tokens)   (GLIDE: a global path
//!         for what the whole picture shares, e.g. its colour, beside the cross-attention)
//! x [B, 3, H, W] --patchify (p x p pixels -> channels, when patch_size p > 1)-->
//!   [B, 3p^2, H/p, W/p] --conv_in--> [B, C0, H/p, W/p]                            skip
//! down.l (l = 0..L):  res.i (ResBlock, + attn.i where level l has attention)      skip each
//!                     downsample (3x3 conv, stride 2) unless last level           skip
//! mid:   res1, attn, res2                                         [B, C_{L-1}, H/2^(L-1), ..]
//! up.l (l = L-1..0):  res.i on cat(h, skip.pop()) (+ attn.i), i = 0..=res_blocks
//!                     upsample (nearest x2, 3x3 conv) unless l = 0
//! norm_out (GroupNorm), SiLU, conv_out --> [B, 3p^2, H/p, W/p] --unpatchify--> [B, 3, H, W]
//!                                                                 (epsilon or v prediction)
//! ```
//! ResBlock: `GN, SiLU, conv3x3, + time_proj(SiLU(temb)) per channel, GN, SiLU, conv3x3`,
//! plus the input (through a 1x1 `skip` conv when the width changes).
//! Attention block ([`SpatialTransformer`]): `GN, proj_in`, then over the `H*W` spatial tokens a
//! pre-LN transformer block (self-attention, cross-attention whose keys and values come from
//! the text states, MLP), `proj_out`, plus the input.

use crate::nn::transformer::TransformerBlockConfig;
use crate::nn::{
    children_parameters, prefixed, Conv2d, Embedding, GroupNorm, Linear, Module, TransformerBlock,
};
use crate::ops::{AttentionOpts, Conv2dParams};
use crate::{DType, Device, Error, Result, Tensor};

/// The conditioning type of the current caption (AR-LDM also has previous captions / images).
pub const CURRENT_CAPTION: usize = 0;

#[derive(Clone, Debug, PartialEq)]
pub struct UNetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    /// Side of the pixel patches folded into channels before the first conv (and unfolded
    /// after the last): 1 = none; 2 runs the whole network at half the image side with
    /// `4 * in_channels` inputs, a quarter of the compute (U-ViT's and DiT's patchify).
    pub patch_size: usize,
    /// Width of level 0; level `l` has `base_channels * channel_mult[l]`.
    pub base_channels: usize,
    pub channel_mult: Vec<usize>,
    pub res_blocks_per_level: usize,
    /// Levels (0 = full resolution, `l` = downsampled by 2^l) that get attention blocks; the
    /// middle always has one.
    pub attention_levels: Vec<usize>,
    /// GroupNorm groups (must divide every width).
    pub groups: usize,
    pub num_heads: usize,
    /// Width of the conditioning tokens.
    pub context_dim: usize,
    /// Distinct conditioning types for the type embedding (1: the current caption only).
    pub num_condition_types: usize,
}

impl UNetConfig {
    /// A small U-Net for 32x32 shapes on a CPU: widths 16, 32, 32 at 32, 16 and 8 px,
    /// attention at 8 px and in the middle (0.35M parameters with a 64-wide context; about 70
    /// images/s in training on two cores).
    pub fn small(context_dim: usize) -> Self {
        UNetConfig {
            in_channels: 3,
            out_channels: 3,
            patch_size: 1,
            base_channels: 16,
            channel_mult: vec![1, 2, 2],
            res_blocks_per_level: 1,
            attention_levels: vec![2],
            groups: 8,
            num_heads: 4,
            context_dim,
            num_condition_types: 1,
        }
    }
    pub fn time_embed_dim(&self) -> usize {
        4 * self.base_channels
    }
    fn width(&self, level: usize) -> usize {
        self.base_channels * self.channel_mult[level]
    }
    /// The factor by which the image side must be divisible.
    pub fn size_multiple(&self) -> usize {
        self.patch_size << (self.channel_mult.len().saturating_sub(1))
    }
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "in_channels": self.in_channels, "out_channels": self.out_channels,
            "patch_size": self.patch_size,
            "base_channels": self.base_channels, "channel_mult": self.channel_mult,
            "res_blocks_per_level": self.res_blocks_per_level,
            "attention_levels": self.attention_levels, "groups": self.groups,
            "num_heads": self.num_heads, "context_dim": self.context_dim,
            "num_condition_types": self.num_condition_types,
        })
    }
    pub fn from_json(v: &serde_json::Value) -> Result<Self> {
        let n = |k: &str| json_usize(v, "unet", k);
        let list = |k: &str| -> Result<Vec<usize>> {
            v.get(k)
                .and_then(|x| x.as_array())
                .ok_or_else(|| Error::msg(format!("unet config JSON: missing list {k}")))?
                .iter()
                .map(|x| {
                    x.as_u64().map(|x| x as usize).ok_or_else(|| {
                        Error::msg(format!("unet config JSON: {k} holds a non-integer"))
                    })
                })
                .collect()
        };
        Ok(UNetConfig {
            in_channels: n("in_channels")?,
            out_channels: n("out_channels")?,
            // Checkpoints from before patching existed have no patch_size: 1.
            patch_size: if v.get("patch_size").is_some() {
                n("patch_size")?
            } else {
                1
            },
            base_channels: n("base_channels")?,
            channel_mult: list("channel_mult")?,
            res_blocks_per_level: n("res_blocks_per_level")?,
            attention_levels: list("attention_levels")?,
            groups: n("groups")?,
            num_heads: n("num_heads")?,
            context_dim: n("context_dim")?,
            num_condition_types: n("num_condition_types")?,
        })
    }
    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::msg(format!("UNetConfig: {m}")));
        if self.patch_size == 0 {
            return bad("patch_size must be at least 1".into());
        }
        if self.channel_mult.is_empty() || self.base_channels == 0 {
            return bad("needs at least one level and a positive base width".into());
        }
        for l in 0..self.channel_mult.len() {
            let w = self.width(l);
            if w == 0 || self.groups == 0 || !w.is_multiple_of(self.groups) {
                return bad(format!(
                    "width {w} of level {l} does not split into {} groups",
                    self.groups
                ));
            }
            if self.num_heads == 0 || !w.is_multiple_of(self.num_heads) {
                return bad(format!(
                    "width {w} of level {l} does not split into {} heads",
                    self.num_heads
                ));
            }
        }
        if let Some(l) = self
            .attention_levels
            .iter()
            .find(|&&l| l >= self.channel_mult.len())
        {
            return bad(format!(
                "attention level {l} does not exist ({} levels)",
                self.channel_mult.len()
            ));
        }
        if self.num_condition_types == 0 {
            return bad("num_condition_types must be at least 1".into());
        }
        Ok(())
    }
}

/// Reads a non-negative integer field of a config object.
pub(crate) fn json_usize(v: &serde_json::Value, what: &str, key: &str) -> Result<usize> {
    v.get(key)
        .and_then(|x| x.as_u64())
        .map(|x| x as usize)
        .ok_or_else(|| Error::msg(format!("{what} config JSON: missing integer {key}")))
}

fn conv3x3(c_in: usize, c_out: usize, stride: usize, device: Device) -> Result<Conv2d> {
    let params = Conv2dParams {
        stride: (stride, stride),
        padding: (1, 1),
        ..Default::default()
    };
    Conv2d::new(c_in, c_out, 3, params, true, device)
}

/// The `[B, dim]` sinusoidal embedding of the timesteps (the transformer's position code with
/// `t` as the position): `sin(t f_i)` in the first half, `cos(t f_i)` in the second,
/// `f_i = 10000^(-i / (dim/2))`.
pub fn timestep_embedding(t: &[usize], dim: usize, dtype: DType, device: Device) -> Result<Tensor> {
    let half = dim / 2;
    let mut v = vec![0f64; t.len() * dim];
    for (b, &step) in t.iter().enumerate() {
        for i in 0..half {
            let freq = (-(10000f64.ln()) * i as f64 / half as f64).exp();
            let a = step as f64 * freq;
            v[b * dim + i] = a.sin();
            v[b * dim + half + i] = a.cos();
        }
    }
    let e = Tensor::from_vec(v, (t.len(), dim), device)?;
    if dtype == DType::F64 {
        Ok(e)
    } else {
        e.to_dtype(dtype)
    }
}

pub struct ResBlock {
    pub norm1: GroupNorm,
    pub conv1: Conv2d,
    pub time_proj: Linear,
    pub norm2: GroupNorm,
    pub conv2: Conv2d,
    pub skip: Option<Conv2d>,
}

impl ResBlock {
    fn new(c_in: usize, c_out: usize, temb: usize, groups: usize, device: Device) -> Result<Self> {
        let skip = if c_in != c_out {
            Some(Conv2d::new(
                c_in,
                c_out,
                1,
                Conv2dParams::default(),
                true,
                device,
            )?)
        } else {
            None
        };
        Ok(ResBlock {
            norm1: GroupNorm::new(groups, c_in, 1e-5, device)?,
            conv1: conv3x3(c_in, c_out, 1, device)?,
            time_proj: Linear::new(temb, c_out, true, device)?,
            norm2: GroupNorm::new(groups, c_out, 1e-5, device)?,
            conv2: conv3x3(c_out, c_out, 1, device)?,
            skip,
        })
    }
    fn into_dtype(self, dtype: DType) -> Result<Self> {
        Ok(ResBlock {
            norm1: self.norm1.into_dtype(dtype)?,
            conv1: self.conv1.into_dtype(dtype)?,
            time_proj: self.time_proj.into_dtype(dtype)?,
            norm2: self.norm2.into_dtype(dtype)?,
            conv2: self.conv2.into_dtype(dtype)?,
            skip: self.skip.map(|s| s.into_dtype(dtype)).transpose()?,
        })
    }
    /// `x` `[B, C_in, H, W]`, `temb` `[B, E]` already through SiLU -> `[B, C_out, H, W]`.
    pub fn forward(&self, x: &Tensor, temb: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward(x)?.silu()?)?;
        let (b, c) = (h.dims()[0], h.dims()[1]);
        let h = h.add(&self.time_proj.forward(temb)?.reshape((b, c, 1, 1))?)?;
        let h = self.conv2.forward(&self.norm2.forward(&h)?.silu()?)?;
        match &self.skip {
            Some(s) => s.forward(x)?.add(&h),
            None => x.add(&h),
        }
    }
}

impl Module for ResBlock {
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v = children_parameters(&[
            ("norm1", &self.norm1),
            ("conv1", &self.conv1),
            ("time_proj", &self.time_proj),
            ("norm2", &self.norm2),
            ("conv2", &self.conv2),
        ]);
        if let Some(s) = &self.skip {
            v.extend(prefixed("skip", s.named_parameters()));
        }
        v
    }
}

/// Self- and cross-attention over the spatial positions of a feature map.
pub struct SpatialTransformer {
    pub norm: GroupNorm,
    pub proj_in: Linear,
    pub block: TransformerBlock,
    pub proj_out: Linear,
}

impl SpatialTransformer {
    fn new(c: usize, cfg: &UNetConfig, device: Device) -> Result<Self> {
        let mut bc = TransformerBlockConfig::new(c, cfg.num_heads);
        bc.cross_attention_dim = Some(cfg.context_dim);
        Ok(SpatialTransformer {
            norm: GroupNorm::new(cfg.groups, c, 1e-5, device)?,
            proj_in: Linear::new(c, c, true, device)?,
            block: TransformerBlock::new(&bc, device)?,
            proj_out: Linear::new(c, c, true, device)?,
        })
    }
    fn into_dtype(self, dtype: DType) -> Result<Self> {
        Ok(SpatialTransformer {
            norm: self.norm.into_dtype(dtype)?,
            proj_in: self.proj_in.into_dtype(dtype)?,
            block: self.block.into_dtype(dtype)?,
            proj_out: self.proj_out.into_dtype(dtype)?,
        })
    }
    /// `x` `[B, C, H, W]`; `context` `[B, S, D]` with its key padding mask `[B, S]` (u8, 1 = pad).
    pub fn forward(&self, x: &Tensor, context: &Tensor, padding: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = (x.dims()[0], x.dims()[1], x.dims()[2], x.dims()[3]);
        let tokens = self
            .norm
            .forward(x)?
            .permute(&[0, 2, 3, 1])?
            .reshape((b, h * w, c))?; // [B, HW, C]
        let tokens = self.proj_in.forward(&tokens)?;
        let cross = AttentionOpts {
            key_padding_mask: Some(padding.clone()),
            ..Default::default()
        };
        let tokens =
            self.block
                .forward(&tokens, &AttentionOpts::default(), Some((context, &cross)))?;
        let out = self
            .proj_out
            .forward(&tokens)?
            .reshape((b, h, w, c))?
            .permute(&[0, 3, 1, 2])?; // [B, C, H, W]
        x.add(&out)
    }
}

impl Module for SpatialTransformer {
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        children_parameters(&[
            ("norm", &self.norm),
            ("proj_in", &self.proj_in),
            ("block", &self.block),
            ("proj_out", &self.proj_out),
        ])
    }
}

/// One resolution of the encoder or decoder path.
pub struct Level {
    pub res: Vec<ResBlock>,
    /// One per res block at levels with attention, else empty.
    pub attn: Vec<SpatialTransformer>,
    /// `downsample` on the way down, `upsample` on the way up (None at the ends).
    pub resample: Option<Conv2d>,
}

impl Level {
    fn into_dtype(self, dtype: DType) -> Result<Self> {
        Ok(Level {
            res: self
                .res
                .into_iter()
                .map(|r| r.into_dtype(dtype))
                .collect::<Result<_>>()?,
            attn: self
                .attn
                .into_iter()
                .map(|a| a.into_dtype(dtype))
                .collect::<Result<_>>()?,
            resample: self.resample.map(|c| c.into_dtype(dtype)).transpose()?,
        })
    }
    fn named_parameters(&self, resample: &str) -> Vec<(String, Tensor)> {
        let mut v = crate::nn::list_parameters("res", &self.res);
        v.extend(crate::nn::list_parameters("attn", &self.attn));
        if let Some(c) = &self.resample {
            v.extend(prefixed(resample, c.named_parameters()));
        }
        v
    }
}

pub struct UNet {
    pub config: UNetConfig,
    pub time_fc1: Linear,
    pub time_fc2: Linear,
    pub text_pool_proj: Linear,
    pub cond_type_emb: Embedding,
    pub conv_in: Conv2d,
    pub down: Vec<Level>,
    pub mid_res1: ResBlock,
    pub mid_attn: SpatialTransformer,
    pub mid_res2: ResBlock,
    /// Indexed by level, like `down` (run from the last to the first).
    pub up: Vec<Level>,
    pub norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

impl UNet {
    pub fn new(config: UNetConfig, device: Device) -> Result<Self> {
        config.validate()?;
        let c = &config;
        let (c0, temb, levels) = (c.base_channels, c.time_embed_dim(), c.channel_mult.len());
        let has_attn = |l: usize| c.attention_levels.contains(&l);
        // Encoder; remember the width of every skip connection.
        let mut skips = vec![c0];
        let mut down = Vec::new();
        let mut ch = c0;
        for l in 0..levels {
            let w = c.width(l);
            let mut level = Level {
                res: vec![],
                attn: vec![],
                resample: None,
            };
            for _ in 0..c.res_blocks_per_level {
                level
                    .res
                    .push(ResBlock::new(ch, w, temb, c.groups, device)?);
                if has_attn(l) {
                    level.attn.push(SpatialTransformer::new(w, c, device)?);
                }
                ch = w;
                skips.push(ch);
            }
            if l + 1 < levels {
                level.resample = Some(conv3x3(ch, ch, 2, device)?);
                skips.push(ch);
            }
            down.push(level);
        }
        let mid_res1 = ResBlock::new(ch, ch, temb, c.groups, device)?;
        let mid_attn = SpatialTransformer::new(ch, c, device)?;
        let mid_res2 = ResBlock::new(ch, ch, temb, c.groups, device)?;
        // Decoder, built from the last level up, stored by level index.
        let mut up: Vec<Option<Level>> = (0..levels).map(|_| None).collect();
        for l in (0..levels).rev() {
            let w = c.width(l);
            let mut level = Level {
                res: vec![],
                attn: vec![],
                resample: None,
            };
            for _ in 0..=c.res_blocks_per_level {
                let skip = skips
                    .pop()
                    .ok_or_else(|| Error::msg("UNet: skip widths ran out"))?;
                level
                    .res
                    .push(ResBlock::new(ch + skip, w, temb, c.groups, device)?);
                if has_attn(l) {
                    level.attn.push(SpatialTransformer::new(w, c, device)?);
                }
                ch = w;
            }
            if l > 0 {
                level.resample = Some(conv3x3(ch, ch, 1, device)?);
            }
            up[l] = Some(level);
        }
        Ok(UNet {
            time_fc1: Linear::new(c0, temb, true, device)?,
            time_fc2: Linear::new(temb, temb, true, device)?,
            text_pool_proj: Linear::new(c.context_dim, temb, true, device)?,
            cond_type_emb: Embedding::with_std(c.num_condition_types, c.context_dim, 0.02, device)?,
            conv_in: conv3x3(c.in_channels * c.patch_size * c.patch_size, c0, 1, device)?,
            down,
            mid_res1,
            mid_attn,
            mid_res2,
            up: up.into_iter().flatten().collect(),
            norm_out: GroupNorm::new(c.groups, c0, 1e-5, device)?,
            conv_out: conv3x3(c0, c.out_channels * c.patch_size * c.patch_size, 1, device)?,
            config,
        })
    }

    /// The same network with every parameter converted to `dtype` (fresh leaves; gradient
    /// checks run in f64).
    pub fn into_dtype(self, dtype: DType) -> Result<Self> {
        let levels = |v: Vec<Level>| -> Result<Vec<Level>> {
            v.into_iter().map(|l| l.into_dtype(dtype)).collect()
        };
        Ok(UNet {
            time_fc1: self.time_fc1.into_dtype(dtype)?,
            time_fc2: self.time_fc2.into_dtype(dtype)?,
            text_pool_proj: self.text_pool_proj.into_dtype(dtype)?,
            cond_type_emb: self.cond_type_emb.into_dtype(dtype)?,
            conv_in: self.conv_in.into_dtype(dtype)?,
            down: levels(self.down)?,
            mid_res1: self.mid_res1.into_dtype(dtype)?,
            mid_attn: self.mid_attn.into_dtype(dtype)?,
            mid_res2: self.mid_res2.into_dtype(dtype)?,
            up: levels(self.up)?,
            norm_out: self.norm_out.into_dtype(dtype)?,
            conv_out: self.conv_out.into_dtype(dtype)?,
            config: self.config,
        })
    }

    /// `x` `[B, C_in, H, W]` at timesteps `t` (one per sample), conditioned on `context`
    /// `[B, S, D]` (key padding mask `[B, S]`, u8, 1 = pad) of conditioning type `cond_type`
    /// -> `[B, C_out, H, W]`.
    pub fn forward(
        &self,
        x: &Tensor,
        t: &[usize],
        context: &Tensor,
        padding: &Tensor,
        cond_type: usize,
    ) -> Result<Tensor> {
        let c = &self.config;
        let m = c.size_multiple();
        if x.rank() != 4
            || x.dims()[1] != c.in_channels
            || !x.dims()[2].is_multiple_of(m)
            || !x.dims()[3].is_multiple_of(m)
        {
            return Err(Error::shape(
                "UNet",
                format!(
                    "expected x [B, {}, H, W] with H and W multiples of {m}",
                    c.in_channels
                ),
                &[x.shape()],
            ));
        }
        let b = x.dims()[0];
        if t.len() != b
            || context.rank() != 3
            || context.dims()[0] != b
            || context.dims()[2] != c.context_dim
        {
            return Err(Error::shape(
                "UNet",
                format!(
                    "{} timesteps; expected context [B, S, {}] with B = {b}",
                    t.len(),
                    c.context_dim
                ),
                &[x.shape(), context.shape()],
            ));
        }
        if cond_type >= c.num_condition_types {
            return Err(Error::msg(format!(
                "UNet: conditioning type {cond_type} (the model has {})",
                c.num_condition_types
            )));
        }
        let dtype = self.conv_in.weight.dtype();
        let temb = timestep_embedding(t, c.base_channels, dtype, x.device())?;
        let temb = self
            .time_fc2
            .forward(&self.time_fc1.forward(&temb)?.silu()?)?;
        let context = context.add(&self.cond_type_emb.weight.narrow(0, cond_type, 1)?)?;
        // Mean of the context over its real (non-padding) tokens, [B, D].
        let keep = padding.to_dtype(dtype)?.affine(-1.0, 1.0)?.unsqueeze(2)?; // [B, S, 1]
        let pooled = context
            .mul(&keep)?
            .sum(1)?
            .div(&keep.sum(1)?.clamp(1.0, f64::INFINITY)?)?;
        let temb = temb.add(&self.text_pool_proj.forward(&pooled)?)?;
        let temb = temb.silu()?; // every ResBlock projects SiLU(temb)

        let p = c.patch_size;
        let mut h = if p > 1 {
            self.conv_in.forward(&x.pixel_unshuffle(p)?)?
        } else {
            self.conv_in.forward(x)?
        };
        let mut skips = vec![h.clone()];
        for level in &self.down {
            for (i, res) in level.res.iter().enumerate() {
                h = res.forward(&h, &temb)?;
                if let Some(attn) = level.attn.get(i) {
                    h = attn.forward(&h, &context, padding)?;
                }
                skips.push(h.clone());
            }
            if let Some(down) = &level.resample {
                h = down.forward(&h)?;
                skips.push(h.clone());
            }
        }
        h = self.mid_res1.forward(&h, &temb)?;
        h = self.mid_attn.forward(&h, &context, padding)?;
        h = self.mid_res2.forward(&h, &temb)?;
        for level in self.up.iter().rev() {
            for (i, res) in level.res.iter().enumerate() {
                let skip = skips
                    .pop()
                    .ok_or_else(|| Error::msg("UNet: skips ran out"))?;
                h = res.forward(&Tensor::cat(&[h, skip], 1)?, &temb)?;
                if let Some(attn) = level.attn.get(i) {
                    h = attn.forward(&h, &context, padding)?;
                }
            }
            if let Some(up) = &level.resample {
                let (hh, ww) = (h.dims()[2], h.dims()[3]);
                h = up.forward(&h.upsample_nearest2d((2 * hh, 2 * ww))?)?;
            }
        }
        let out = self.conv_out.forward(&self.norm_out.forward(&h)?.silu()?)?;
        if p > 1 {
            out.pixel_shuffle(p)
        } else {
            Ok(out)
        }
    }
}

impl Module for UNet {
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v = children_parameters(&[
            ("time_mlp.fc1", &self.time_fc1),
            ("time_mlp.fc2", &self.time_fc2),
            ("text_pool_proj", &self.text_pool_proj),
            ("cond_type_emb", &self.cond_type_emb),
            ("conv_in", &self.conv_in),
        ]);
        for (l, level) in self.down.iter().enumerate() {
            v.extend(prefixed(
                &format!("down.{l}"),
                level.named_parameters("downsample"),
            ));
        }
        v.extend(children_parameters(&[
            ("mid.res1", &self.mid_res1),
            ("mid.attn", &self.mid_attn),
            ("mid.res2", &self.mid_res2),
        ]));
        for (l, level) in self.up.iter().enumerate() {
            v.extend(prefixed(
                &format!("up.{l}"),
                level.named_parameters("upsample"),
            ));
        }
        v.extend(children_parameters(&[
            ("norm_out", &self.norm_out),
            ("conv_out", &self.conv_out),
        ]));
        v
    }
}
