//! Index ops on the GPU (`kernels/index.cu`). Indices are first copied to a contiguous i64
//! buffer by a kernel that also finds the first out-of-range one; that costs one 8-byte read
//! back (a synchronization) per op, and buys the CPU backend's error (op, index, size) instead
//! of an out-of-bounds access on the device. Embedding lookups are `index_select` on dim 0.

use super::storage::{dtype_suffix, float_suffix};
use super::{kernel_args, launch_1d, CudaStorage, StridedArg};
use crate::backend::cpu::index::{check_dim, check_index_fits, split_at_dim};
use crate::backend::index::IndexBackend;
use crate::backend::BackendStorage;
use crate::tensor::{DType, Layout};
use crate::{Error, Result};

const FILE: &str = "index.cu";
const BLOCK: u32 = 256;

/// The indices of the view `layout` as a contiguous i64 device buffer, each checked to be in
/// `0..size`; the first bad one (row-major) is an [`Error::IndexOutOfRange`].
fn checked_ids(
    op: &'static str,
    ids: &CudaStorage,
    layout: &Layout,
    size: usize,
) -> Result<CudaStorage> {
    let sfx = match ids.dtype {
        DType::I64 | DType::U32 => dtype_suffix(ids.dtype),
        d => {
            return Err(Error::UnsupportedDType {
                op,
                dtype: d,
                expected: "i64 or u32 indices",
            })
        }
    };
    ids.check_view(op, layout)?;
    let dev = ids.dev();
    let n = layout.elem_count();
    let out = CudaStorage::alloc(dev, n, DType::I64)?;
    if n == 0 {
        return Ok(out);
    }
    let bad = CudaStorage::alloc(dev, 1, DType::I64)?;
    dev.copy_to_device(bad.ptr(), &u64::MAX.to_le_bytes())?;
    dev.launch(
        FILE,
        &format!("check_ids_{sfx}"),
        launch_1d(n, BLOCK),
        kernel_args![
            out.ptr(),
            ids.ptr(),
            StridedArg::new(layout)?,
            n as u64,
            size as u64,
            bad.ptr()
        ],
    )?;
    let mut word = [0u8; 8];
    dev.copy_to_host(&mut word, bad.ptr())?;
    let first_bad = u64::from_le_bytes(word);
    if first_bad != u64::MAX {
        dev.copy_to_host(&mut word, out.ptr_at(first_bad as usize))?;
        return Err(Error::IndexOutOfRange {
            op,
            index: i64::from_le_bytes(word),
            size,
        });
    }
    Ok(out)
}

/// Strides of a contiguous tensor of `dims`.
fn contiguous_strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1; dims.len()];
    for d in (0..dims.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * dims[d + 1];
    }
    s
}

impl IndexBackend for CudaStorage {
    fn index_select(
        &self,
        layout: &Layout,
        ids: &Self,
        ids_layout: &Layout,
        dim: usize,
    ) -> Result<Self> {
        const OP: &str = "index_select";
        check_dim(OP, layout, dim)?;
        self.check_view(OP, layout)?;
        let (outer, size, inner) = split_at_dim(layout.dims(), dim);
        let ids = checked_ids(OP, ids, ids_layout, size)?;
        let n = ids.len;
        let total = outer * n * inner;
        let out = CudaStorage::alloc(self.dev(), total, self.dtype)?;
        self.dev().launch(
            FILE,
            &format!("index_select_{}", dtype_suffix(self.dtype)),
            launch_1d(total, BLOCK),
            kernel_args![
                out.ptr(),
                self.ptr(),
                StridedArg::new(layout)?,
                ids.ptr(),
                outer as u64,
                n as u64,
                size as u64,
                inner as u64
            ],
        )?;
        Ok(out)
    }

    fn index_add(
        &self,
        layout: &Layout,
        ids: &Self,
        ids_layout: &Layout,
        src: &Self,
        src_layout: &Layout,
        dim: usize,
    ) -> Result<Self> {
        const OP: &str = "index_add";
        let sfx = float_suffix(OP, self.dtype)?;
        crate::backend::same_dtype(OP, self.dtype, src.dtype)?;
        check_dim(OP, layout, dim)?;
        self.check_view(OP, layout)?;
        src.check_view(OP, src_layout)?;
        let (outer, size, inner) = split_at_dim(layout.dims(), dim);
        let ids = checked_ids(OP, ids, ids_layout, size)?;
        let n = ids.len;
        let mut expected = layout.dims().to_vec();
        expected[dim] = n;
        if src_layout.dims() != expected {
            return Err(Error::shape(
                OP,
                format!("source must have shape {expected:?}"),
                &[layout.shape(), src_layout.shape()],
            ));
        }
        let out = self.copy_strided(layout)?;
        let total = outer * n * inner;
        self.dev().launch(
            FILE,
            &format!("index_add_{sfx}"),
            launch_1d(total, BLOCK),
            kernel_args![
                out.ptr(),
                ids.ptr(),
                src.ptr(),
                StridedArg::new(src_layout)?,
                outer as u64,
                n as u64,
                size as u64,
                inner as u64
            ],
        )?;
        Ok(out)
    }

    fn gather(&self, layout: &Layout, ids: &Self, ids_layout: &Layout, dim: usize) -> Result<Self> {
        const OP: &str = "gather";
        check_index_fits(OP, layout, ids_layout, None, dim)?;
        self.check_view(OP, layout)?;
        let ids_c = checked_ids(OP, ids, ids_layout, layout.dims()[dim])?;
        let n = ids_c.len;
        let mut strides = layout.strides().to_vec();
        let dim_stride = strides[dim];
        strides[dim] = 0;
        let base = StridedArg::from_parts(ids_layout.dims(), &strides, layout.offset())?;
        let out = CudaStorage::alloc(self.dev(), n, self.dtype)?;
        self.dev().launch(
            FILE,
            &format!("gather_{}", dtype_suffix(self.dtype)),
            launch_1d(n, BLOCK),
            kernel_args![
                out.ptr(),
                self.ptr(),
                base,
                dim_stride as u64,
                ids_c.ptr(),
                n as u64
            ],
        )?;
        Ok(out)
    }

    fn scatter_add(
        &self,
        layout: &Layout,
        ids: &Self,
        ids_layout: &Layout,
        src: &Self,
        src_layout: &Layout,
        dim: usize,
    ) -> Result<Self> {
        const OP: &str = "scatter_add";
        let sfx = float_suffix(OP, self.dtype)?;
        crate::backend::same_dtype(OP, self.dtype, src.dtype)?;
        check_index_fits(OP, layout, ids_layout, Some(src_layout.shape()), dim)?;
        self.check_view(OP, layout)?;
        src.check_view(OP, src_layout)?;
        let ids_c = checked_ids(OP, ids, ids_layout, layout.dims()[dim])?;
        let n = ids_c.len;
        let out = self.copy_strided(layout)?;
        let mut out_strides = contiguous_strides(layout.dims());
        let dim_stride = out_strides[dim];
        out_strides[dim] = 0;
        let dst = StridedArg::from_parts(ids_layout.dims(), &out_strides, 0)?;
        // src is read at the positions of ids (it may be larger than ids along any dim).
        let src_at =
            StridedArg::from_parts(ids_layout.dims(), src_layout.strides(), src_layout.offset())?;
        self.dev().launch(
            FILE,
            &format!("scatter_add_{sfx}"),
            launch_1d(n, BLOCK),
            kernel_args![
                out.ptr(),
                dst,
                dim_stride as u64,
                ids_c.ptr(),
                src.ptr(),
                src_at,
                n as u64
            ],
        )?;
        Ok(out)
    }
}
