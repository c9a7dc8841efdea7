//! Training checkpoints: everything needed to resume a run exactly, in ONE safetensors file.
//!
//! Tensors are stored under prefixes: `model.<param>` (the weights), `optim.<entry>` (the
//! optimizer state, see [`Optimizer::state`]) and `ema.<entry>` (an EMA of the weights, if
//! any). The string metadata holds `tessera.format` (= `checkpoint-v1`), `tessera.step`,
//! `tessera.rng_seed` and `tessera.rng_offset` (the global Philox generator, so random draws
//! after a resume equal those of an uninterrupted run) and `extra.<key>` for free-form
//! strings (model config, tokenizer JSON, ...). Saving is atomic (see `io`): a crash while
//! writing leaves the previous checkpoint at `path` intact.

use super::safetensors::{
    apply_named, check_named, load_safetensors, save_safetensors, LoadReport,
};
use crate::optim::{Ema, Optimizer};
use crate::random::{rng_state, set_rng_state, RngState};
use crate::tensor::{Device, Tensor};
use crate::{Error, Result};
use std::collections::HashMap;
use std::path::Path;

const FORMAT: &str = "checkpoint-v1";
const KEY_FORMAT: &str = "tessera.format";
const KEY_STEP: &str = "tessera.step";
const KEY_SEED: &str = "tessera.rng_seed";
const KEY_OFFSET: &str = "tessera.rng_offset";
const EXTRA: &str = "extra.";
const PREFIXES: [&str; 3] = ["model.", "optim.", "ema."];

/// A snapshot of a training run.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Named model parameters (and buffers).
    pub model: Vec<(String, Tensor)>,
    /// The optimizer's named state.
    pub optimizer: Vec<(String, Tensor)>,
    /// The EMA weights' state (empty when the run keeps no EMA).
    pub ema: Vec<(String, Tensor)>,
    /// Number of optimizer updates done.
    pub step: u64,
    /// The global random generator.
    pub rng: RngState,
    /// Free-form strings: model config, tokenizer JSON, ...
    pub extra: HashMap<String, String>,
}

impl Checkpoint {
    /// The metadata string `key` of a checkpoint read from `path`, or an error naming the file
    /// and saying it is not a `kind` checkpoint (the loaders' common first check).
    pub fn meta(&self, path: &std::path::Path, kind: &str, key: &str) -> Result<&str> {
        self.extra.get(key).map(String::as_str).ok_or_else(|| {
            crate::Error::file(
                path,
                format!("not a {kind} checkpoint: no \"{key}\" in its metadata"),
            )
        })
    }

    /// Captures the current run: the parameters' and optimizer's tensors (live handles, so
    /// save before the next update), `step`, and the global generator's state.
    pub fn capture(
        model: &[(String, Tensor)],
        optimizer: &dyn Optimizer,
        step: u64,
        extra: HashMap<String, String>,
    ) -> Checkpoint {
        Checkpoint {
            model: model.to_vec(),
            optimizer: optimizer.state(),
            ema: Vec::new(),
            step,
            rng: rng_state(),
            extra,
        }
    }

    /// Adds an EMA's state.
    pub fn with_ema(mut self, ema: &Ema) -> Checkpoint {
        self.ema = ema.state();
        self
    }

    /// Writes the checkpoint to `path` atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let mut tensors =
            Vec::with_capacity(self.model.len() + self.optimizer.len() + self.ema.len());
        for (prefix, list) in PREFIXES
            .iter()
            .zip([&self.model, &self.optimizer, &self.ema])
        {
            tensors.extend(
                list.iter()
                    .map(|(n, t)| (format!("{prefix}{n}"), t.clone())),
            );
        }
        let mut meta: HashMap<String, String> = self
            .extra
            .iter()
            .map(|(k, v)| (format!("{EXTRA}{k}"), v.clone()))
            .collect();
        meta.insert(KEY_FORMAT.into(), FORMAT.into());
        meta.insert(KEY_STEP.into(), self.step.to_string());
        meta.insert(KEY_SEED.into(), self.rng.seed.to_string());
        meta.insert(KEY_OFFSET.into(), self.rng.offset.to_string());
        save_safetensors(path, &tensors, Some(meta))
    }

    /// Reads a checkpoint written by [`save`](Self::save), with tensors on the CPU.
    pub fn load(path: impl AsRef<Path>) -> Result<Checkpoint> {
        Self::load_to(path, Device::Cpu)
    }

    /// Reads a checkpoint with its tensors on `device`.
    pub fn load_to(path: impl AsRef<Path>, device: Device) -> Result<Checkpoint> {
        let path = path.as_ref();
        let file = load_safetensors(path, device)?;
        let meta = &file.metadata;
        let get = |key: &str| -> Result<u64> {
            let v = meta.get(key).ok_or_else(|| {
                Error::file(
                    path,
                    format!("not a tessera checkpoint: metadata `{key}` is missing"),
                )
            })?;
            v.parse().map_err(|_| {
                Error::file(
                    path,
                    format!("metadata `{key}` = {v:?} is not an unsigned integer"),
                )
            })
        };
        match meta.get(KEY_FORMAT) {
            Some(f) if f == FORMAT => {}
            Some(f) => {
                return Err(Error::file(
                    path,
                    format!("unknown checkpoint format {f:?} (expected {FORMAT:?})"),
                ))
            }
            None => {
                return Err(Error::file(
                    path,
                    format!("not a tessera checkpoint: metadata `{KEY_FORMAT}` is missing"),
                ))
            }
        }
        let step = get(KEY_STEP)?;
        let rng = RngState {
            seed: get(KEY_SEED)?,
            offset: get(KEY_OFFSET)?,
        };
        let extra = meta
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(EXTRA).map(|k| (k.to_string(), v.clone())))
            .collect();
        let mut parts: [Vec<(String, Tensor)>; 3] = Default::default();
        for (name, t) in file.tensors {
            let found = PREFIXES
                .iter()
                .enumerate()
                .find_map(|(i, p)| name.strip_prefix(p).map(|rest| (i, rest.to_string())));
            match found {
                Some((i, rest)) => parts[i].push((rest, t)),
                None => {
                    return Err(Error::file(
                        path,
                        format!("tensor `{name}` has none of the prefixes model., optim., ema."),
                    ))
                }
            }
        }
        let [model, optimizer, ema] = parts;
        Ok(Checkpoint {
            model,
            optimizer,
            ema,
            step,
            rng,
            extra,
        })
    }

    /// Resumes from this checkpoint: copies the weights into `params` in place (strict or
    /// not, as [`load_into`](super::load_into)), restores the optimizer's state and the global
    /// random generator. The weights are checked and the optimizer state loaded (itself
    /// all-or-nothing) before any weight changes.
    pub fn restore(
        &self,
        params: &[(String, Tensor)],
        optimizer: &mut dyn Optimizer,
        strict: bool,
    ) -> Result<LoadReport> {
        let report = check_named(params, &self.model, strict)?;
        optimizer.load_state(&self.optimizer)?;
        apply_named(params, &self.model)?;
        set_rng_state(self.rng);
        Ok(report)
    }

    /// Restores an EMA saved with [`with_ema`](Self::with_ema).
    pub fn restore_ema(&self, ema: &mut Ema) -> Result<()> {
        ema.load_state(&self.ema)
    }
}

/// Loads the checkpoint at `path` and restores it into `params`, `optimizer` and the random
/// generator (see [`Checkpoint::restore`]); returns it for its step and extra strings.
pub fn resume(
    path: impl AsRef<Path>,
    params: &[(String, Tensor)],
    optimizer: &mut dyn Optimizer,
    strict: bool,
) -> Result<Checkpoint> {
    let path = path.as_ref();
    let device = params.first().map_or(Device::Cpu, |(_, p)| p.device());
    let ck = Checkpoint::load_to(path, device)?;
    ck.restore(params, optimizer, strict).map_err(|e| match e {
        Error::Msg(m) => Error::file(path, m),
        other => other,
    })?;
    Ok(ck)
}
