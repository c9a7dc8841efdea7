//! Reading and writing tensors: safetensors files (the Hugging Face format: an 8-byte header
//! length, a JSON header naming each tensor's dtype, shape and byte range, then the raw
//! little-endian data) and training checkpoints built on them.
//!
//! Every write is atomic: the file is written next to its destination as `<name>.tmp`,
//! flushed to disk (fsync), then renamed over the destination, so a crash mid-write leaves
//! the previous file intact. Every read error names the file and what is wrong with it.

pub mod checkpoint;
pub mod safetensors;

pub use self::checkpoint::{resume, Checkpoint};
pub use self::safetensors::{
    load_into, load_named, load_safetensors, save_safetensors, LoadReport, SafeTensorsFile,
};
