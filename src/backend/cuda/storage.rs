//! `CudaStorage`: a tensor's buffer in GPU memory, and the [`BackendStorage`] primitives on
//! it (strided copies and casts run as kernels from `kernels/copy.cu`; host transfers are one
//! driver copy each).

use super::{device, kernel_args, launch_1d, CudaDevice, StridedArg};
use crate::backend::{BackendStorage, CpuStorage};
use crate::tensor::{DType, Device, Layout};
use crate::{Error, Result};
use std::sync::Arc;

/// A block of device memory from the caching allocator, returned to it on drop.
pub struct CudaBuffer {
    ptr: u64,
    class_bytes: usize,
    dev: Arc<CudaDevice>,
}

impl CudaBuffer {
    /// `bytes` of uninitialized memory on `dev`.
    pub fn alloc(dev: &Arc<CudaDevice>, bytes: usize) -> Result<CudaBuffer> {
        let (ptr, class_bytes) = dev.alloc_raw(bytes)?;
        Ok(CudaBuffer {
            ptr,
            class_bytes,
            dev: dev.clone(),
        })
    }
    pub fn ptr(&self) -> u64 {
        self.ptr
    }
}

impl Drop for CudaBuffer {
    fn drop(&mut self) {
        self.dev.free_raw(self.ptr, self.class_bytes);
    }
}

/// A tensor's data on a GPU: `len` elements of `dtype`, contiguous in `buffer`.
pub struct CudaStorage {
    pub buffer: CudaBuffer,
    pub len: usize,
    pub dtype: DType,
    pub ordinal: usize,
}

impl std::fmt::Debug for CudaStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CudaStorage(cuda:{}, {:?} x {})",
            self.ordinal, self.dtype, self.len
        )
    }
}

/// The `copy.cu` kernel-name suffix of a dtype.
pub fn dtype_suffix(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::F64 => "f64",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        DType::I64 => "i64",
        DType::U32 => "u32",
        DType::U8 => "u8",
    }
}

/// The kernel suffix of a compute dtype (f32, f64); other dtypes are an error naming `op`,
/// as on the CPU backend.
pub fn float_suffix(op: &'static str, d: DType) -> Result<&'static str> {
    match d {
        DType::F32 | DType::F64 => Ok(dtype_suffix(d)),
        _ => Err(Error::UnsupportedDType {
            op,
            dtype: d,
            expected: "f32 or f64",
        }),
    }
}

impl CudaStorage {
    /// `len` uninitialized elements of `dtype` on `dev` (every kernel writing a fresh output
    /// starts here).
    pub fn alloc(dev: &Arc<CudaDevice>, len: usize, dtype: DType) -> Result<CudaStorage> {
        let bytes = len.checked_mul(dtype.size_in_bytes()).ok_or_else(|| {
            Error::Cuda(format!(
                "{len} elements of {dtype:?} overflow the address space"
            ))
        })?;
        Ok(CudaStorage {
            buffer: CudaBuffer::alloc(dev, bytes)?,
            len,
            dtype,
            ordinal: dev.ordinal(),
        })
    }
    pub fn zeros(len: usize, dtype: DType, ordinal: usize) -> Result<CudaStorage> {
        let dev = device(ordinal)?;
        let s = Self::alloc(&dev, len, dtype)?;
        dev.memset_zero(s.ptr(), len * dtype.size_in_bytes())?;
        Ok(s)
    }
    /// One host-to-device copy of `cpu`.
    pub fn from_cpu(cpu: &CpuStorage, ordinal: usize) -> Result<CudaStorage> {
        let dev = device(ordinal)?;
        let s = Self::alloc(&dev, cpu.len(), cpu.dtype())?;
        dev.copy_to_device(s.ptr(), cpu.as_bytes())?;
        Ok(s)
    }
    /// The device this buffer lives on.
    pub fn dev(&self) -> &Arc<CudaDevice> {
        &self.buffer.dev
    }
    /// Device address of element 0.
    pub fn ptr(&self) -> u64 {
        self.buffer.ptr
    }
    /// Device address of element `elem` (for a view's offset).
    pub fn ptr_at(&self, elem: usize) -> u64 {
        self.buffer.ptr + (elem * self.dtype.size_in_bytes()) as u64
    }
    /// Checks a view stays inside this buffer before a kernel reads through it.
    pub fn check_view(&self, op: &'static str, layout: &Layout) -> Result<()> {
        if layout.required_len() > self.len {
            return Err(Error::shape(
                op,
                format!(
                    "view (strides {:?}, offset {}) reaches element {} of a buffer of {}",
                    layout.strides(),
                    layout.offset(),
                    layout.required_len(),
                    self.len
                ),
                &[layout.shape()],
            ));
        }
        Ok(())
    }
    /// A contiguous copy of the view converted to `dtype` (the same dtype is a plain copy):
    /// one `copy.cu` kernel, or a device-to-device memcpy when the view is contiguous.
    fn convert(&self, layout: &Layout, dtype: DType) -> Result<CudaStorage> {
        self.check_view("copy", layout)?;
        let dev = self.dev();
        let n = layout.elem_count();
        let out = Self::alloc(dev, n, dtype)?;
        if dtype == self.dtype {
            if let Some((start, _)) = layout.contiguous_range() {
                dev.copy_device_to_device(
                    out.ptr(),
                    self.ptr_at(start),
                    n * dtype.size_in_bytes(),
                )?;
                return Ok(out);
            }
        }
        let src = StridedArg::new(layout)?;
        let name = format!("cast_{}_{}", dtype_suffix(self.dtype), dtype_suffix(dtype));
        dev.launch(
            "copy.cu",
            &name,
            launch_1d(n, 256),
            kernel_args![out.ptr(), self.ptr(), src, n as u64],
        )?;
        Ok(out)
    }
}

impl BackendStorage for CudaStorage {
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn device(&self) -> Device {
        Device::Cuda(self.ordinal)
    }
    fn len(&self) -> usize {
        self.len
    }
    fn copy_strided(&self, layout: &Layout) -> Result<Self> {
        self.convert(layout, self.dtype)
    }
    fn copy_into(&mut self, dst_layout: &Layout, src: &Self, src_layout: &Layout) -> Result<()> {
        if dst_layout.shape() != src_layout.shape() {
            return Err(Error::ShapeMismatch {
                op: "copy_into",
                lhs: dst_layout.shape().clone(),
                rhs: src_layout.shape().clone(),
            });
        }
        crate::backend::same_dtype("copy_into", self.dtype, src.dtype)?;
        if self.ordinal != src.ordinal {
            return Err(Error::DeviceMismatch {
                op: "copy_into",
                lhs: self.device(),
                rhs: src.device(),
            });
        }
        self.check_view("copy_into", dst_layout)?;
        src.check_view("copy_into", src_layout)?;
        let n = dst_layout.elem_count();
        let dev = self.dev().clone();
        if let (Some((d, _)), Some((s, _))) =
            (dst_layout.contiguous_range(), src_layout.contiguous_range())
        {
            return dev.copy_device_to_device(
                self.ptr_at(d),
                src.ptr_at(s),
                n * self.dtype.size_in_bytes(),
            );
        }
        // Merging must not change the element order of either view, so both are merged
        // against each other's dims only through their own strides: each side gets its own
        // StridedArg and the kernel walks both by the flat row-major index.
        let dst = StridedArg::new(dst_layout)?;
        let srca = StridedArg::new(src_layout)?;
        let name = format!("copy_strided_{}", dtype_suffix(self.dtype));
        dev.launch(
            "copy.cu",
            &name,
            launch_1d(n, 256),
            kernel_args![self.ptr(), dst, src.ptr(), srca, n as u64],
        )
    }
    fn to_dtype(&self, layout: &Layout, dtype: DType) -> Result<Self> {
        self.convert(layout, dtype)
    }
    fn to_cpu(&self, layout: &Layout) -> Result<CpuStorage> {
        self.check_view("to_cpu", layout)?;
        let contiguous;
        let (src, start) = match layout.contiguous_range() {
            Some((start, _)) => (self, start),
            None => {
                contiguous = self.copy_strided(layout)?;
                (&contiguous, 0)
            }
        };
        let n = layout.elem_count();
        let mut host = CpuStorage::zeros(n, self.dtype);
        let bytes = bytemuck_bytes_mut(&mut host);
        src.dev().copy_to_host(bytes, src.ptr_at(start))?;
        Ok(host)
    }
}

/// The host buffer's bytes, to copy device data into.
fn bytemuck_bytes_mut(s: &mut CpuStorage) -> &mut [u8] {
    use crate::backend::cpu::CpuData;
    match s.data_mut() {
        CpuData::F32(v) => bytemuck::cast_slice_mut(v),
        CpuData::F64(v) => bytemuck::cast_slice_mut(v),
        CpuData::F16(v) => bytemuck::cast_slice_mut(v),
        CpuData::BF16(v) => bytemuck::cast_slice_mut(v),
        CpuData::I64(v) => bytemuck::cast_slice_mut(v),
        CpuData::U32(v) => bytemuck::cast_slice_mut(v),
        CpuData::U8(v) => bytemuck::cast_slice_mut(v),
    }
}
