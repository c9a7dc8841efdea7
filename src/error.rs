//! The one error type of tessera. Every fallible call a user can get wrong returns
//! `Result<T>`; shape errors name the op and every shape involved.

use crate::tensor::{DType, Device, Shape};
use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(thiserror::Error, Debug)]
pub enum Error {
    /// Two operands whose shapes do not fit together.
    #[error("{op}: shape mismatch between {lhs} and {rhs}")]
    ShapeMismatch {
        op: &'static str,
        lhs: Shape,
        rhs: Shape,
    },

    /// A shape problem that involves one tensor or more than two; `shapes` lists them all.
    #[error("{op}: {msg} (shapes: {})", fmt_shapes(.shapes))]
    Shape {
        op: &'static str,
        msg: String,
        shapes: Vec<Shape>,
    },

    #[error("{op}: dimension {dim} is out of range for a tensor of shape {shape}")]
    DimOutOfRange {
        op: &'static str,
        dim: isize,
        shape: Shape,
    },

    #[error("{op}: index {index} is out of range for size {size}")]
    IndexOutOfRange {
        op: &'static str,
        index: i64,
        size: usize,
    },

    #[error("{op}: dtype mismatch, {lhs:?} vs {rhs:?}")]
    DTypeMismatch {
        op: &'static str,
        lhs: DType,
        rhs: DType,
    },

    #[error("{op}: dtype {dtype:?} is not supported (expected {expected})")]
    UnsupportedDType {
        op: &'static str,
        dtype: DType,
        expected: &'static str,
    },

    #[error("{op}: tensors are on different devices, {lhs:?} vs {rhs:?}")]
    DeviceMismatch {
        op: &'static str,
        lhs: Device,
        rhs: Device,
    },

    #[error("{op}: not available on device {device:?}")]
    UnsupportedDevice { op: &'static str, device: Device },

    /// An op was recorded in a graph but has no backward rule.
    #[error(
        "backward: op `{op}` has no backward rule, so its inputs would silently get no gradient"
    )]
    NoBackward { op: &'static str },

    #[error("backward: {0}")]
    Autograd(String),

    /// A file that could not be read or written, or whose content is wrong.
    #[error("{}: {msg}", path.display())]
    File { path: PathBuf, msg: String },

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cuda: {0}")]
    Cuda(String),

    #[error("{0}")]
    Msg(String),
}

fn fmt_shapes(shapes: &[Shape]) -> String {
    shapes
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl Error {
    pub fn msg(m: impl Into<String>) -> Self {
        Error::Msg(m.into())
    }
    pub fn shape(op: &'static str, msg: impl Into<String>, shapes: &[&Shape]) -> Self {
        Error::Shape {
            op,
            msg: msg.into(),
            shapes: shapes.iter().map(|s| (*s).clone()).collect(),
        }
    }
    pub fn file(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::File {
            path: path.into(),
            msg: msg.into(),
        }
    }
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// `bail!("...")` returns an `Error::Msg` from the current function.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => { return Err($crate::Error::Msg(format!($($arg)*))) };
}
