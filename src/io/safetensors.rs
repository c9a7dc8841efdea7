//! safetensors I/O (format: <https://github.com/huggingface/safetensors>).
//!
//! * [`save_safetensors`] writes named tensors of any dtype (F32, F64, F16, BF16, I64, U32,
//!   U8) plus string metadata, atomically (`<path>.tmp`, fsync, rename, fsync of the folder).
//!   Each tensor is copied to the host once, before the file is written.
//! * [`load_safetensors`] memory-maps the file, lets the `safetensors` crate validate the
//!   header (JSON, dtypes, offsets that tile the data exactly, shapes that match byte counts)
//!   and copies each tensor out. Any defect is an [`Error::File`] naming the path.
//! * [`load_into`] copies loaded tensors into existing parameters by name, in place.
//!
//! Data are little-endian on disk; tessera's host buffers are too (x86-64, AArch64).

use super::atomic::{commit_tmp, tmp_path};
use crate::backend::{CpuStorage, Storage};
use crate::optim::assign;
use crate::tensor::{DType, Device, Tensor};
use crate::{Error, Result};
use ::safetensors::tensor::{Dtype as StDtype, SafeTensorError, SafeTensors, View};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};

fn to_st_dtype(d: DType) -> StDtype {
    match d {
        DType::F32 => StDtype::F32,
        DType::F64 => StDtype::F64,
        DType::F16 => StDtype::F16,
        DType::BF16 => StDtype::BF16,
        DType::I64 => StDtype::I64,
        DType::U32 => StDtype::U32,
        DType::U8 => StDtype::U8,
    }
}

/// tessera's dtype for a safetensors dtype (BOOL is read as U8, its byte layout).
fn from_st_dtype(d: StDtype) -> Option<DType> {
    Some(match d {
        StDtype::F32 => DType::F32,
        StDtype::F64 => DType::F64,
        StDtype::F16 => DType::F16,
        StDtype::BF16 => DType::BF16,
        StDtype::I64 => DType::I64,
        StDtype::U32 => DType::U32,
        StDtype::U8 | StDtype::BOOL => DType::U8,
        _ => return None,
    })
}

/// A host copy of one tensor, in the form the `safetensors` writer takes.
struct HostView {
    dtype: StDtype,
    shape: Vec<usize>,
    data: CpuStorage,
}

impl View for &HostView {
    fn dtype(&self) -> StDtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.data.as_bytes())
    }
    fn data_len(&self) -> usize {
        self.data.as_bytes().len()
    }
}

/// Explains a `safetensors` error in words.
fn describe(e: &SafeTensorError) -> String {
    use SafeTensorError as E;
    match e {
        E::HeaderTooSmall => "too short to be a safetensors file (less than the 8-byte header length)".into(),
        E::HeaderTooLarge => "not a safetensors file: the header length is implausibly large".into(),
        E::InvalidHeaderLength => "truncated or not a safetensors file: the header runs past the end of the file".into(),
        E::InvalidHeader => "not a safetensors file: the header is not UTF-8".into(),
        E::InvalidHeaderStart => "not a safetensors file: the header does not start with `{`".into(),
        E::InvalidHeaderDeserialization => "corrupt header: not valid safetensors JSON (bad syntax, unknown dtype or missing field)".into(),
        E::InvalidOffset(name) => format!("corrupt header: the data offsets of tensor `{name}` are invalid"),
        E::TensorInvalidInfo => "corrupt header: a tensor's byte range does not match its shape and dtype".into(),
        E::MetadataIncompleteBuffer => "truncated or corrupt: the tensors' byte ranges do not end at the end of the file".into(),
        E::ValidationOverflow => "corrupt header: a tensor's shape overflows".into(),
        other => format!("invalid safetensors file: {other}"),
    }
}

/// The temporary path an atomic write goes through: `<path>.tmp` in the same folder.
/// Writes named tensors and optional string metadata to `path`, atomically.
pub fn save_safetensors(
    path: impl AsRef<Path>,
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let path = path.as_ref();
    if path.file_name().is_none() {
        return Err(Error::file(path, "not a file path"));
    }
    let mut seen = HashSet::new();
    let mut views = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        if !seen.insert(name.as_str()) {
            return Err(Error::file(
                path,
                format!("tensor name `{name}` appears more than once"),
            ));
        }
        if name == "__metadata__" {
            return Err(Error::file(
                path,
                "`__metadata__` is reserved and cannot name a tensor",
            ));
        }
        let view = HostView {
            dtype: to_st_dtype(t.dtype()),
            shape: t.dims().to_vec(),
            data: t.to_cpu_storage()?,
        };
        views.push((name.as_str(), view));
    }
    let tmp = tmp_path(path);
    let written = write_and_sync(&tmp, views.iter().map(|(n, v)| (*n, v)), &metadata);
    commit_tmp(&tmp, path, written)
}

fn write_and_sync<'a>(
    tmp: &Path,
    views: impl Iterator<Item = (&'a str, &'a HostView)>,
    metadata: &Option<HashMap<String, String>>,
) -> Result<()> {
    ::safetensors::serialize_to_file(views, metadata, tmp).map_err(|e| match e {
        SafeTensorError::IoError(io) => Error::io(tmp, io),
        other => Error::file(tmp, format!("cannot serialize: {other}")),
    })?;
    File::open(tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(tmp, e))
}

/// The contents of a safetensors file: tensors in file order, and the string metadata.
#[derive(Debug)]
pub struct SafeTensorsFile {
    pub path: PathBuf,
    pub tensors: Vec<(String, Tensor)>,
    pub metadata: HashMap<String, String>,
}

impl SafeTensorsFile {
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.iter().map(|(n, _)| n.as_str())
    }
    pub fn len(&self) -> usize {
        self.tensors.len()
    }
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
}

/// Reads a safetensors file into tensors on `device`.
pub fn load_safetensors(path: impl AsRef<Path>, device: Device) -> Result<SafeTensorsFile> {
    let path = path.as_ref();
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if len < 8 {
        return Err(Error::file(
            path,
            format!("{len} bytes is too short to be a safetensors file (truncated or empty)"),
        ));
    }
    // SAFETY: the map is only read, and only while this function runs. As with every mmap,
    // another process truncating the file meanwhile would fault; we copy everything out at
    // once to keep that window short.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let st = SafeTensors::deserialize(&mmap).map_err(|e| Error::file(path, describe(&e)))?;
    let (_, header) =
        SafeTensors::read_metadata(&mmap).map_err(|e| Error::file(path, describe(&e)))?;
    let metadata = header.metadata().clone().unwrap_or_default();

    let mut entries: Vec<(String, ::safetensors::tensor::TensorView<'_>)> = st.tensors();
    // File order (by data offset) is deterministic; the crate's map order is not.
    entries.sort_by(|(a, x), (b, y)| {
        (x.data().as_ptr() as usize, a).cmp(&(y.data().as_ptr() as usize, b))
    });
    let mut tensors = Vec::with_capacity(entries.len());
    for (name, view) in entries {
        let dtype = from_st_dtype(view.dtype()).ok_or_else(|| {
            Error::file(
                path,
                format!(
                    "tensor `{name}` has dtype {:?}, which tessera does not support",
                    view.dtype()
                ),
            )
        })?;
        let cpu = CpuStorage::from_bytes(view.data(), dtype)
            .map_err(|e| Error::file(path, format!("tensor `{name}`: {e}")))?;
        let storage = Storage::from_cpu(cpu, device)?;
        tensors.push((name, Tensor::from_storage(storage, view.shape().to_vec())));
    }
    Ok(SafeTensorsFile {
        path: path.to_path_buf(),
        tensors,
        metadata,
    })
}

/// What [`load_into`] found: parameters with no tensor in the source, and source tensors that
/// match no parameter (both empty after a strict load).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoadReport {
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
}

/// Copies `file`'s tensors into the parameters of the same names, in place (converting the
/// dtype when it differs). Shapes are all checked before any parameter changes. With `strict`,
/// a parameter missing from the file or a tensor in the file that names no parameter is an
/// error; without, they are listed in the report.
pub fn load_into(
    params: &[(String, Tensor)],
    file: &SafeTensorsFile,
    strict: bool,
) -> Result<LoadReport> {
    load_named(params, &file.tensors, strict).map_err(|e| match e {
        Error::Msg(msg) => Error::file(&file.path, msg),
        other => other,
    })
}

/// [`load_into`] from any list of named tensors.
pub fn load_named(
    params: &[(String, Tensor)],
    source: &[(String, Tensor)],
    strict: bool,
) -> Result<LoadReport> {
    let report = check_named(params, source, strict)?;
    apply_named(params, source)?;
    Ok(report)
}

/// The checks of [`load_named`], changing nothing.
pub(crate) fn check_named(
    params: &[(String, Tensor)],
    source: &[(String, Tensor)],
    strict: bool,
) -> Result<LoadReport> {
    let src: HashMap<&str, &Tensor> = source.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let wanted: HashSet<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
    let mut report = LoadReport {
        missing: params
            .iter()
            .filter(|(n, _)| !src.contains_key(n.as_str()))
            .map(|(n, _)| n.clone())
            .collect(),
        unexpected: source
            .iter()
            .filter(|(n, _)| !wanted.contains(n.as_str()))
            .map(|(n, _)| n.clone())
            .collect(),
    };
    report.missing.sort();
    report.unexpected.sort();
    let mut problems = Vec::new();
    if strict && !report.missing.is_empty() {
        problems.push(format!("missing tensors: {}", report.missing.join(", ")));
    }
    if strict && !report.unexpected.is_empty() {
        problems.push(format!(
            "unexpected tensors: {}",
            report.unexpected.join(", ")
        ));
    }
    for (name, p) in params {
        if let Some(t) = src.get(name.as_str()) {
            if t.shape() != p.shape() {
                problems.push(format!(
                    "tensor `{name}` has shape {} in the source but {} in the model",
                    t.shape(),
                    p.shape()
                ));
            } else if t.dtype() != p.dtype() && !(t.dtype().is_float() && p.dtype().is_float()) {
                problems.push(format!(
                    "tensor `{name}` has dtype {:?} in the source but {:?} in the model",
                    t.dtype(),
                    p.dtype()
                ));
            }
        }
    }
    if !problems.is_empty() {
        return Err(Error::msg(format!("load: {}", problems.join("; "))));
    }
    Ok(report)
}

/// The copies of [`load_named`], once checked.
pub(crate) fn apply_named(params: &[(String, Tensor)], source: &[(String, Tensor)]) -> Result<()> {
    let src: HashMap<&str, &Tensor> = source.iter().map(|(n, t)| (n.as_str(), t)).collect();
    for (name, p) in params {
        if let Some(t) = src.get(name.as_str()) {
            assign(p, t)?;
        }
    }
    Ok(())
}
