//! What a kernel launch is made of: its configuration, its argument list, and the strided
//! layout struct kernels read views through. See the module doc of `cuda/mod.rs` for a full
//! example.

use crate::tensor::{merge_dims, Layout};
use crate::{Error, Result};
use cudarc::driver::DeviceRepr;
use std::any::Any;
use std::ffi::c_void;

/// Grid and block dimensions and dynamic shared memory of one launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchConfig {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub shared_mem_bytes: u32,
}

impl LaunchConfig {
    /// Nothing to run (a zero grid dimension).
    pub fn is_empty(&self) -> bool {
        self.grid.0 == 0 || self.grid.1 == 0 || self.grid.2 == 0
    }
    /// The hardware limits every CUDA GPU since sm_30 shares (a block of at most 1024 threads,
    /// grid y/z at most 65535, 48 KiB of shared memory without opting in).
    pub fn validate(&self, file: &str, name: &str) -> Result<()> {
        let (bx, by, bz) = self.block;
        let threads = bx as u64 * by as u64 * bz as u64;
        let ok = (1..=1024).contains(&threads)
            && bz <= 64
            && self.grid.0 < (1u32 << 31)
            && self.grid.1 <= 65535
            && self.grid.2 <= 65535
            && self.shared_mem_bytes <= 48 * 1024;
        if ok {
            Ok(())
        } else {
            Err(Error::Cuda(format!(
                "{file}:{name}: launch configuration {self:?} exceeds the CUDA limits"
            )))
        }
    }
}

/// Grid blocks for a grid-stride loop: enough for one thread per element, capped so huge
/// tensors loop inside the kernel instead of launching millions of blocks.
pub const MAX_GRID_1D: usize = 1 << 16;

/// A 1-D launch over `n` elements with `block` threads per block (kernels must loop
/// grid-stride: `for (i = blockIdx.x*blockDim.x + threadIdx.x; i < n; i += gridDim.x*blockDim.x)`).
pub fn launch_1d(n: usize, block: u32) -> LaunchConfig {
    let blocks = n.div_ceil(block as usize).min(MAX_GRID_1D) as u32;
    LaunchConfig {
        grid: (blocks, 1, 1),
        block: (block, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A kernel's argument list. Each value is boxed so its address stays put until the launch
/// has read it; pass each argument with the exact Rust type of the kernel's C parameter.
#[derive(Default)]
pub struct KernelArgs {
    values: Vec<Box<dyn Any>>,
    pointers: Vec<*mut c_void>,
}

impl KernelArgs {
    pub fn new() -> Self {
        Self::default()
    }
    /// Appends one argument by value.
    pub fn arg<T: DeviceRepr + 'static>(mut self, value: T) -> Self {
        let boxed = Box::new(value);
        self.pointers.push(&*boxed as *const T as *mut c_void);
        self.values.push(boxed);
        self
    }
    pub fn len(&self) -> usize {
        self.values.len()
    }
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
    pub(crate) fn pointers(&mut self) -> &mut [*mut c_void] {
        &mut self.pointers
    }
}

/// `kernel_args![a, b, c]` is `KernelArgs::new().arg(a).arg(b).arg(c)`.
#[macro_export]
#[doc(hidden)]
macro_rules! __cuda_kernel_args {
    ($($x:expr),* $(,)?) => {
        $crate::backend::cuda::KernelArgs::new()$(.arg($x))*
    };
}
pub use crate::__cuda_kernel_args as kernel_args;

/// The most dimensions a strided view passed to a kernel may have after merging (kernels
/// keep the per-dimension arrays in registers; every op in tessera stays within 6).
pub const MAX_RANK: usize = 8;

/// The `Strided` struct of `kernels/common.cuh`, passed by value: a view's dims and strides
/// (in elements, innermost last) and its offset. Dimensions that are contiguous with each
/// other are merged first, so most views reach the kernel with rank 1 or 2.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StridedArg {
    pub dims: [u64; MAX_RANK],
    pub strides: [u64; MAX_RANK],
    pub offset: u64,
    pub rank: u32,
    /// 1 when the view is one contiguous run starting at `offset` (kernels take a flat path).
    pub contiguous: u32,
}

// SAFETY: plain-old-data with the same C layout as `Strided` in common.cuh.
unsafe impl DeviceRepr for StridedArg {}

impl StridedArg {
    /// The view `layout` for a kernel, or an error when it has more than [`MAX_RANK`]
    /// dimensions even after merging.
    pub fn new(layout: &Layout) -> Result<StridedArg> {
        Self::from_parts(layout.dims(), layout.strides(), layout.offset())
    }

    /// `dims`/`strides` given directly (e.g. a layout broadcast or reshaped by the caller).
    pub fn from_parts(dims: &[usize], strides: &[usize], offset: usize) -> Result<StridedArg> {
        let (dims, strides) = merge_dims(dims, strides);
        if dims.len() > MAX_RANK {
            return Err(Error::Cuda(format!(
                "a view of rank {} (dims {dims:?}, strides {strides:?}) is more than the \
                 {MAX_RANK} dimensions the CUDA kernels take",
                dims.len()
            )));
        }
        let mut arg = StridedArg {
            dims: [1; MAX_RANK],
            strides: [0; MAX_RANK],
            offset: offset as u64,
            rank: dims.len() as u32,
            contiguous: 0,
        };
        for (i, (&d, &s)) in dims.iter().zip(&strides).enumerate() {
            arg.dims[i] = d as u64;
            arg.strides[i] = s as u64;
        }
        arg.contiguous = (dims.len() <= 1 && strides.first().is_none_or(|&s| s == 1)) as u32;
        Ok(arg)
    }

    pub fn elem_count(&self) -> usize {
        self.dims[..self.rank as usize].iter().product::<u64>() as usize
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::tensor::Shape;

    /// `strided_offset` of common.cuh, line for line.
    pub(crate) fn strided_offset(s: &StridedArg, mut i: u64) -> u64 {
        if s.contiguous == 1 {
            return s.offset + i;
        }
        let mut off = s.offset;
        for d in (0..MAX_RANK).rev() {
            if d < s.rank as usize {
                let n = s.dims[d];
                let q = i / n;
                off += (i - q * n) * s.strides[d];
                i = q;
            }
        }
        off
    }

    #[test]
    fn kernel_offsets_match_the_layout_for_every_kind_of_view() {
        let base = Layout::contiguous(Shape::new(vec![4, 5, 6]));
        let views = [
            base.clone(),
            base.narrow(2, 1, 4).unwrap(),
            base.transpose(0, 2),
            base.permute(&[1, 2, 0]).unwrap().narrow(0, 2, 3).unwrap(),
            base.narrow(1, 4, 1).unwrap().squeeze(1),
            base.unsqueeze(1).narrow(2, 1, 3).unwrap(),
            Layout::contiguous(Shape::new(vec![5, 1]))
                .broadcast_as(&Shape::new(vec![3, 5, 7]))
                .unwrap(),
            Layout::contiguous_with_offset(Shape::new(vec![7]), 3)
                .broadcast_as(&Shape::new(vec![2, 3, 7]))
                .unwrap(),
        ];
        for l in &views {
            let arg = StridedArg::new(l).unwrap();
            let want = l.offsets();
            let got: Vec<usize> = (0..l.elem_count() as u64)
                .map(|i| strided_offset(&arg, i) as usize)
                .collect();
            assert_eq!(got, want, "{l:?} -> {arg:?}");
        }
    }

    #[test]
    fn strided_arg_matches_layout() {
        let l = Layout::contiguous(Shape::new(vec![2, 3, 4]))
            .narrow(2, 1, 2)
            .unwrap();
        let a = StridedArg::new(&l).unwrap();
        assert_eq!((a.rank, a.contiguous, a.offset), (2, 0, 1));
        assert_eq!(&a.dims[..2], &[6, 2]);
        assert_eq!(&a.strides[..2], &[4, 1]);
        assert_eq!(a.elem_count(), 12);
        let c = StridedArg::new(&Layout::contiguous(Shape::new(vec![5, 7]))).unwrap();
        assert_eq!(c.contiguous, 1);
        assert_eq!(std::mem::size_of::<StridedArg>(), 8 * 8 * 2 + 8 + 8);
    }

    #[test]
    fn launch_config_limits() {
        assert!(launch_1d(0, 256).is_empty());
        assert_eq!(launch_1d(1000, 256).grid.0, 4);
        assert_eq!(launch_1d(usize::MAX / 2, 256).grid.0 as usize, MAX_GRID_1D);
        let bad = LaunchConfig {
            grid: (1, 1, 1),
            block: (2048, 1, 1),
            shared_mem_bytes: 0,
        };
        assert!(bad.validate("f.cu", "k").is_err());
        assert_eq!(kernel_args![1u64, 2.0f32, 3i32].len(), 3);
    }
}
