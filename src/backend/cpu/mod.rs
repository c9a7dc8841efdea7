//! The CPU backend: host vectors, one arm per dtype, with every byte counted so benchmarks
//! and tests can report current and peak memory. Kernels live in one file per op family and
//! are generic over [`Float`] (f32 and f64); large loops run on Rayon.

mod aligned;
pub mod attention;
#[cfg(target_arch = "x86_64")]
mod attention_tile;
pub mod conv;
pub mod elementwise;
pub mod float;
pub mod index;
pub(crate) mod lanes;
pub mod loss;
pub mod matmul;
pub mod norm;
pub mod optim;
pub mod pool;
pub mod reduce;
pub mod simd;
pub mod softmax;
pub mod stream;
mod strided;

pub use float::Float;
use strided::scatter_strided;
pub(crate) use strided::{contiguous_cow, gather_strided};

use super::BackendStorage;
use crate::tensor::{DType, Device, Layout, WithDType};
use crate::{Error, Result};
use half::{bf16, f16};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Elements per Rayon task for cheap elementwise loops.
pub(crate) const PAR_CHUNK: usize = 1 << 15;

static CURRENT_BYTES: AtomicUsize = AtomicUsize::new(0);
static PEAK_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Bytes held by live CPU tensors right now.
pub fn current_bytes() -> usize {
    CURRENT_BYTES.load(Ordering::Relaxed)
}
/// The most bytes held at once since start-up or the last [`reset_peak_bytes`].
pub fn peak_bytes() -> usize {
    PEAK_BYTES.load(Ordering::Relaxed)
}
pub fn reset_peak_bytes() {
    PEAK_BYTES.store(current_bytes(), Ordering::Relaxed);
}

/// Host data, one arm per dtype.
#[derive(Debug, Clone)]
pub enum CpuData {
    F32(Vec<f32>),
    F64(Vec<f64>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    I64(Vec<i64>),
    U32(Vec<u32>),
    U8(Vec<u8>),
}

impl CpuData {
    fn len(&self) -> usize {
        match self {
            CpuData::F32(v) => v.len(),
            CpuData::F64(v) => v.len(),
            CpuData::F16(v) => v.len(),
            CpuData::BF16(v) => v.len(),
            CpuData::I64(v) => v.len(),
            CpuData::U32(v) => v.len(),
            CpuData::U8(v) => v.len(),
        }
    }
    fn dtype(&self) -> DType {
        match self {
            CpuData::F32(_) => DType::F32,
            CpuData::F64(_) => DType::F64,
            CpuData::F16(_) => DType::F16,
            CpuData::BF16(_) => DType::BF16,
            CpuData::I64(_) => DType::I64,
            CpuData::U32(_) => DType::U32,
            CpuData::U8(_) => DType::U8,
        }
    }
}

/// Applies `$body` to the vector of any dtype, rebuilding the same arm from its result.
#[macro_export]
#[doc(hidden)]
macro_rules! cpu_map_any {
    ($data:expr, |$v:ident| $body:expr) => {{
        use $crate::backend::cpu::CpuData as D;
        match $data {
            D::F32($v) => D::F32($body),
            D::F64($v) => D::F64($body),
            D::F16($v) => D::F16($body),
            D::BF16($v) => D::BF16($body),
            D::I64($v) => D::I64($body),
            D::U32($v) => D::U32($body),
            D::U8($v) => D::U8($body),
        }
    }};
}

/// Applies a generic float kernel to f32 or f64 data; other dtypes are an error naming `$op`.
#[macro_export]
#[doc(hidden)]
macro_rules! cpu_map_float {
    ($op:expr, $data:expr, |$v:ident| $body:expr) => {{
        use $crate::backend::cpu::CpuData as D;
        match $data {
            D::F32($v) => D::F32($body),
            D::F64($v) => D::F64($body),
            other => {
                return Err($crate::Error::UnsupportedDType {
                    op: $op,
                    dtype: other.dtype_of(),
                    expected: "f32 or f64",
                })
            }
        }
    }};
}

impl CpuData {
    #[doc(hidden)]
    pub fn dtype_of(&self) -> DType {
        self.dtype()
    }
}

/// A CPU tensor's buffer. Creation and drop update the global byte counters.
#[derive(Debug)]
pub struct CpuStorage {
    data: CpuData,
}

impl CpuStorage {
    pub fn new(data: CpuData) -> Self {
        let bytes = data.len() * data.dtype().size_in_bytes();
        let now = CURRENT_BYTES.fetch_add(bytes, Ordering::Relaxed) + bytes;
        PEAK_BYTES.fetch_max(now, Ordering::Relaxed);
        CpuStorage { data }
    }
    pub fn from_vec<T: WithDType>(v: Vec<T>) -> Self {
        // Safe re-tagging: `T::DTYPE` says which arm `Vec<T>` belongs to.
        let data = match T::DTYPE {
            DType::F32 => CpuData::F32(cast_vec(v)),
            DType::F64 => CpuData::F64(cast_vec(v)),
            DType::F16 => CpuData::F16(cast_vec(v)),
            DType::BF16 => CpuData::BF16(cast_vec(v)),
            DType::I64 => CpuData::I64(cast_vec(v)),
            DType::U32 => CpuData::U32(cast_vec(v)),
            DType::U8 => CpuData::U8(cast_vec(v)),
        };
        CpuStorage::new(data)
    }
    pub fn zeros(len: usize, dtype: DType) -> Self {
        let data = match dtype {
            DType::F32 => CpuData::F32(vec![0.0; len]),
            DType::F64 => CpuData::F64(vec![0.0; len]),
            DType::F16 => CpuData::F16(vec![f16::ZERO; len]),
            DType::BF16 => CpuData::BF16(vec![bf16::ZERO; len]),
            DType::I64 => CpuData::I64(vec![0; len]),
            DType::U32 => CpuData::U32(vec![0; len]),
            DType::U8 => CpuData::U8(vec![0; len]),
        };
        CpuStorage::new(data)
    }
    pub fn data(&self) -> &CpuData {
        &self.data
    }
    /// Mutable access for in-place kernels (optimizer steps, scatter-add). The length must not change.
    pub fn data_mut(&mut self) -> &mut CpuData {
        &mut self.data
    }
    /// The buffer as a slice of `T`, or a dtype error naming `op`.
    pub fn as_slice<T: WithDType>(&self, op: &'static str) -> Result<&[T]> {
        let d = self.data.dtype();
        if d != T::DTYPE {
            return Err(Error::DTypeMismatch {
                op,
                lhs: d,
                rhs: T::DTYPE,
            });
        }
        Ok(match &self.data {
            CpuData::F32(v) => bytemuck::cast_slice(v),
            CpuData::F64(v) => bytemuck::cast_slice(v),
            CpuData::F16(v) => bytemuck::cast_slice(v),
            CpuData::BF16(v) => bytemuck::cast_slice(v),
            CpuData::I64(v) => bytemuck::cast_slice(v),
            CpuData::U32(v) => bytemuck::cast_slice(v),
            CpuData::U8(v) => bytemuck::cast_slice(v),
        })
    }
    pub fn as_mut_slice<T: WithDType>(&mut self, op: &'static str) -> Result<&mut [T]> {
        let d = self.data.dtype();
        if d != T::DTYPE {
            return Err(Error::DTypeMismatch {
                op,
                lhs: d,
                rhs: T::DTYPE,
            });
        }
        Ok(match &mut self.data {
            CpuData::F32(v) => bytemuck::cast_slice_mut(v),
            CpuData::F64(v) => bytemuck::cast_slice_mut(v),
            CpuData::F16(v) => bytemuck::cast_slice_mut(v),
            CpuData::BF16(v) => bytemuck::cast_slice_mut(v),
            CpuData::I64(v) => bytemuck::cast_slice_mut(v),
            CpuData::U32(v) => bytemuck::cast_slice_mut(v),
            CpuData::U8(v) => bytemuck::cast_slice_mut(v),
        })
    }
    /// The raw little-endian bytes (for safetensors).
    pub fn as_bytes(&self) -> &[u8] {
        match &self.data {
            CpuData::F32(v) => bytemuck::cast_slice(v),
            CpuData::F64(v) => bytemuck::cast_slice(v),
            CpuData::F16(v) => bytemuck::cast_slice(v),
            CpuData::BF16(v) => bytemuck::cast_slice(v),
            CpuData::I64(v) => bytemuck::cast_slice(v),
            CpuData::U32(v) => bytemuck::cast_slice(v),
            CpuData::U8(v) => bytemuck::cast_slice(v),
        }
    }
    /// Builds a buffer from little-endian bytes; the length must be a multiple of the element size.
    pub fn from_bytes(bytes: &[u8], dtype: DType) -> Result<Self> {
        let es = dtype.size_in_bytes();
        if !bytes.len().is_multiple_of(es) {
            return Err(Error::msg(format!(
                "{} bytes is not a whole number of {dtype:?} elements",
                bytes.len()
            )));
        }
        // pod_collect_to_vec copies and handles any alignment of the source.
        let data = match dtype {
            DType::F32 => CpuData::F32(bytemuck::pod_collect_to_vec(bytes)),
            DType::F64 => CpuData::F64(bytemuck::pod_collect_to_vec(bytes)),
            DType::F16 => CpuData::F16(bytemuck::pod_collect_to_vec(bytes)),
            DType::BF16 => CpuData::BF16(bytemuck::pod_collect_to_vec(bytes)),
            DType::I64 => CpuData::I64(bytemuck::pod_collect_to_vec(bytes)),
            DType::U32 => CpuData::U32(bytemuck::pod_collect_to_vec(bytes)),
            DType::U8 => CpuData::U8(bytes.to_vec()),
        };
        Ok(CpuStorage::new(data))
    }
}

impl Clone for CpuStorage {
    fn clone(&self) -> Self {
        CpuStorage::new(self.data.clone())
    }
}

impl Drop for CpuStorage {
    fn drop(&mut self) {
        let bytes = self.data.len() * self.data.dtype().size_in_bytes();
        CURRENT_BYTES.fetch_sub(bytes, Ordering::Relaxed);
    }
}

fn cast_vec<T: WithDType, U: WithDType>(v: Vec<T>) -> Vec<U> {
    debug_assert_eq!(T::DTYPE, U::DTYPE);
    bytemuck::allocation::try_cast_vec(v)
        .unwrap_or_else(|(_, v)| bytemuck::allocation::pod_collect_to_vec(&v))
}

fn convert<T: WithDType, U: WithDType>(src: &[T], layout: &Layout) -> Vec<U> {
    let v = contiguous_cow(src, layout);
    v.iter().map(|&x| U::from_f64(x.to_f64())).collect()
}

impl BackendStorage for CpuStorage {
    fn dtype(&self) -> DType {
        self.data.dtype()
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn len(&self) -> usize {
        self.data.len()
    }
    fn copy_strided(&self, layout: &Layout) -> Result<Self> {
        Ok(CpuStorage::new(cpu_map_any!(&self.data, |v| {
            gather_strided(v, layout)
        })))
    }
    fn copy_into(&mut self, dst_layout: &Layout, src: &Self, src_layout: &Layout) -> Result<()> {
        if dst_layout.shape() != src_layout.shape() {
            return Err(Error::ShapeMismatch {
                op: "copy_into",
                lhs: dst_layout.shape().clone(),
                rhs: src_layout.shape().clone(),
            });
        }
        super::same_dtype("copy_into", self.dtype(), src.dtype())?;
        match (&mut self.data, &src.data) {
            (CpuData::F32(d), CpuData::F32(s)) => scatter_strided(d, dst_layout, s, src_layout),
            (CpuData::F64(d), CpuData::F64(s)) => scatter_strided(d, dst_layout, s, src_layout),
            (CpuData::F16(d), CpuData::F16(s)) => scatter_strided(d, dst_layout, s, src_layout),
            (CpuData::BF16(d), CpuData::BF16(s)) => scatter_strided(d, dst_layout, s, src_layout),
            (CpuData::I64(d), CpuData::I64(s)) => scatter_strided(d, dst_layout, s, src_layout),
            (CpuData::U32(d), CpuData::U32(s)) => scatter_strided(d, dst_layout, s, src_layout),
            (CpuData::U8(d), CpuData::U8(s)) => scatter_strided(d, dst_layout, s, src_layout),
            _ => unreachable!("dtypes checked above"),
        }
        Ok(())
    }
    fn to_dtype(&self, layout: &Layout, dtype: DType) -> Result<Self> {
        if dtype == self.dtype() {
            return self.copy_strided(layout);
        }
        macro_rules! to {
            ($v:expr) => {
                match dtype {
                    DType::F32 => CpuData::F32(convert($v, layout)),
                    DType::F64 => CpuData::F64(convert($v, layout)),
                    DType::F16 => CpuData::F16(convert($v, layout)),
                    DType::BF16 => CpuData::BF16(convert($v, layout)),
                    DType::I64 => CpuData::I64(convert($v, layout)),
                    DType::U32 => CpuData::U32(convert($v, layout)),
                    DType::U8 => CpuData::U8(convert($v, layout)),
                }
            };
        }
        let data = match &self.data {
            CpuData::F32(v) => to!(v),
            CpuData::F64(v) => to!(v),
            CpuData::F16(v) => to!(v),
            CpuData::BF16(v) => to!(v),
            CpuData::I64(v) => to!(v),
            CpuData::U32(v) => to!(v),
            CpuData::U8(v) => to!(v),
        };
        Ok(CpuStorage::new(data))
    }
    fn to_cpu(&self, layout: &Layout) -> Result<CpuStorage> {
        self.copy_strided(layout)
    }
}
