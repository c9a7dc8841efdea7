//! Reading and writing tensors and images: safetensors files (the Hugging Face format: an 8-byte header
//! length, a JSON header naming each tensor's dtype, shape and byte range, then the raw
//! little-endian data), training checkpoints built on them, and 8-bit PNG images (`png.rs`).
//!
//! Every write is atomic: the file is written next to its destination as `<name>.tmp`,
//! flushed to disk (fsync), then renamed over the destination, so a crash mid-write leaves
//! the previous file intact. Every read error names the file and what is wrong with it.

pub mod atomic;
pub mod checkpoint;
pub mod font;
pub mod png;
pub mod safetensors;

pub use self::atomic::{write_atomically, write_bytes_atomically};
pub use self::checkpoint::{resume, Checkpoint};
pub use self::png::{grid, Image};
pub use self::safetensors::{
    load_into, load_named, load_safetensors, save_safetensors, LoadReport, SafeTensorsFile,
};
