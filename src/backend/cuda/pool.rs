//! Pooling and nearest upsampling on the GPU (`kernels/pool.cu`). Inputs are read through
//! their 4-D strides. The separable windows of a [`Windows2d`] go to the device as one small
//! i64 buffer (rows and columns as `(start, end, div)` triples); for the average backward the
//! host also inverts them (for each input row/column, the output rows/columns whose window
//! covers it, as CSR lists) so the kernel gathers instead of scattering with atomics.

use super::kernel_io::ll;
use super::storage::float_suffix;
use super::{kernel_args, launch_1d, CudaStorage};
use crate::backend::pool::{PoolBackend, Window, Windows2d};
use crate::backend::{BackendStorage, CpuStorage};
use crate::tensor::{DType, Layout, Shape};
use crate::{Error, Result};

const FILE: &str = "pool.cu";

/// `N·C` after checking `layout` is `[N, C, h, w]`.
fn planes(op: &'static str, layout: &Layout, hw: (usize, usize)) -> Result<usize> {
    let d = layout.dims();
    if d.len() != 4 || (d[2], d[3]) != hw {
        return Err(Error::shape(
            op,
            format!("expected [N, C, {}, {}]", hw.0, hw.1),
            &[layout.shape(), &Shape::new(vec![hw.0, hw.1])],
        ));
    }
    Ok(d[0] * d[1])
}

fn push_windows(meta: &mut Vec<i64>, ws: &[Window]) {
    for w in ws {
        meta.extend([w.start as i64, w.end as i64, w.div as i64]);
    }
}

/// For each of `n` input positions, the windows covering it, as CSR: returns where the offsets
/// (`n + 1` of them) and the lists start in `meta`.
fn push_inverse(meta: &mut Vec<i64>, ws: &[Window], n: usize) -> (usize, usize) {
    let mut covering: Vec<Vec<i64>> = vec![Vec::new(); n];
    for (i, w) in ws.iter().enumerate() {
        for c in &mut covering[w.start..w.end] {
            c.push(i as i64);
        }
    }
    let ptr_at = meta.len();
    let mut acc = 0i64;
    meta.push(0);
    for c in &covering {
        acc += c.len() as i64;
        meta.push(acc);
    }
    let idx_at = meta.len();
    for c in covering {
        meta.extend(c);
    }
    (ptr_at, idx_at)
}

fn upload(like: &CudaStorage, meta: Vec<i64>) -> Result<CudaStorage> {
    CudaStorage::from_cpu(&CpuStorage::from_vec(meta), like.ordinal)
}

fn strides4(l: &Layout) -> [i64; 4] {
    let s = l.strides();
    [s[0] as i64, s[1] as i64, s[2] as i64, s[3] as i64]
}

impl PoolBackend for CudaStorage {
    fn window_avg2d(&self, layout: &Layout, win: &Windows2d) -> Result<Self> {
        const OP: &str = "avg_pool2d";
        win.validate(OP)?;
        let sfx = float_suffix(OP, self.dtype())?;
        let np = planes(OP, layout, (win.in_h, win.in_w))?;
        self.check_view(OP, layout)?;
        let (oh, ow) = (win.out_h(), win.out_w());
        let out = CudaStorage::alloc(self.dev(), np * oh * ow, self.dtype())?;
        if out.len == 0 {
            return Ok(out);
        }
        let mut meta = Vec::new();
        push_windows(&mut meta, &win.rows);
        push_windows(&mut meta, &win.cols);
        let meta = upload(self, meta)?;
        let [s0, s1, s2, s3] = strides4(layout);
        let args = kernel_args![
            self.ptr_at(layout.offset()),
            meta.ptr(),
            out.ptr(),
            ll(np),
            ll(layout.dims()[1]),
            ll(win.in_h),
            ll(win.in_w),
            ll(oh),
            ll(ow),
            s0,
            s1,
            s2,
            s3
        ];
        let name = format!("window_avg2d_fwd_{sfx}");
        self.dev()
            .launch(FILE, &name, launch_1d(out.len, 256), args)?;
        Ok(out)
    }

    fn window_avg2d_backward(&self, dy_layout: &Layout, win: &Windows2d) -> Result<Self> {
        const OP: &str = "avg_pool2d_backward";
        win.validate(OP)?;
        let sfx = float_suffix(OP, self.dtype())?;
        let (oh, ow) = (win.out_h(), win.out_w());
        let np = planes(OP, dy_layout, (oh, ow))?;
        self.check_view(OP, dy_layout)?;
        let dx = CudaStorage::alloc(self.dev(), np * win.in_h * win.in_w, self.dtype())?;
        if dx.len == 0 {
            return Ok(dx);
        }
        let mut meta = Vec::new();
        push_windows(&mut meta, &win.rows);
        push_windows(&mut meta, &win.cols);
        let (row_ptr, row_idx) = push_inverse(&mut meta, &win.rows, win.in_h);
        let (col_ptr, col_idx) = push_inverse(&mut meta, &win.cols, win.in_w);
        let meta = upload(self, meta)?;
        let [s0, s1, s2, s3] = strides4(dy_layout);
        let args = kernel_args![
            self.ptr_at(dy_layout.offset()),
            meta.ptr(),
            dx.ptr(),
            ll(np),
            ll(dy_layout.dims()[1]),
            ll(win.in_h),
            ll(win.in_w),
            ll(oh),
            ll(ow),
            ll(row_ptr),
            ll(row_idx),
            ll(col_ptr),
            ll(col_idx),
            s0,
            s1,
            s2,
            s3
        ];
        let name = format!("window_avg2d_bwd_{sfx}");
        self.dev()
            .launch(FILE, &name, launch_1d(dx.len, 256), args)?;
        Ok(dx)
    }

    fn max_pool2d(&self, layout: &Layout, win: &Windows2d) -> Result<(Self, Self)> {
        const OP: &str = "max_pool2d";
        win.validate(OP)?;
        let sfx = float_suffix(OP, self.dtype())?;
        let np = planes(OP, layout, (win.in_h, win.in_w))?;
        self.check_view(OP, layout)?;
        let (oh, ow) = (win.out_h(), win.out_w());
        let dev = self.dev();
        let out = CudaStorage::alloc(dev, np * oh * ow, self.dtype())?;
        let idx = CudaStorage::alloc(dev, np * oh * ow, DType::I64)?;
        if out.len == 0 {
            return Ok((out, idx));
        }
        let mut meta = Vec::new();
        push_windows(&mut meta, &win.rows);
        push_windows(&mut meta, &win.cols);
        let meta = upload(self, meta)?;
        let [s0, s1, s2, s3] = strides4(layout);
        let args = kernel_args![
            self.ptr_at(layout.offset()),
            meta.ptr(),
            out.ptr(),
            idx.ptr(),
            ll(np),
            ll(layout.dims()[1]),
            ll(win.in_h),
            ll(win.in_w),
            ll(oh),
            ll(ow),
            s0,
            s1,
            s2,
            s3
        ];
        dev.launch(
            FILE,
            &format!("max_pool2d_fwd_{sfx}"),
            launch_1d(out.len, 256),
            args,
        )?;
        Ok((out, idx))
    }

    fn max_pool2d_backward(
        &self,
        dy_layout: &Layout,
        indices: &Self,
        idx_layout: &Layout,
        in_hw: (usize, usize),
    ) -> Result<Self> {
        const OP: &str = "max_pool2d_backward";
        if dy_layout.shape() != idx_layout.shape() || dy_layout.dims().len() != 4 {
            return Err(Error::ShapeMismatch {
                op: OP,
                lhs: dy_layout.shape().clone(),
                rhs: idx_layout.shape().clone(),
            });
        }
        crate::backend::same_dtype(OP, indices.dtype(), DType::I64)?;
        let sfx = float_suffix(OP, self.dtype())?;
        self.check_view(OP, dy_layout)?;
        indices.check_view(OP, idx_layout)?;
        let d = dy_layout.dims();
        let (np, ihw) = (d[0] * d[1], in_hw.0 * in_hw.1);
        let dx = CudaStorage::zeros(np * ihw, self.dtype(), self.ordinal)?;
        let [g0, g1, g2, g3] = strides4(dy_layout);
        let [i0, i1, i2, i3] = strides4(idx_layout);
        let args = kernel_args![
            self.ptr_at(dy_layout.offset()),
            indices.ptr_at(idx_layout.offset()),
            dx.ptr(),
            ll(np),
            ll(d[1]),
            ll(d[2]),
            ll(d[3]),
            ll(ihw),
            g0,
            g1,
            g2,
            g3,
            i0,
            i1,
            i2,
            i3
        ];
        let n = dy_layout.elem_count();
        self.dev().launch(
            FILE,
            &format!("max_pool2d_bwd_{sfx}"),
            launch_1d(n, 256),
            args,
        )?;
        Ok(dx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(start: usize, end: usize) -> Window {
        Window { start, end, div: 1 }
    }

    #[test]
    fn inverse_windows_list_every_covering_window() {
        // Overlapping windows, an empty one, and an input position no window covers.
        let ws = [w(0, 3), w(2, 5), w(4, 4), w(4, 6)];
        let mut meta = vec![7, 7];
        let (ptr_at, idx_at) = push_inverse(&mut meta, &ws, 7);
        assert_eq!((ptr_at, idx_at), (2, 10));
        let ptr = &meta[ptr_at..idx_at];
        let list = |p: usize| &meta[idx_at + ptr[p] as usize..idx_at + ptr[p + 1] as usize];
        let want: [&[i64]; 7] = [&[0], &[0], &[0, 1], &[1], &[1, 3], &[3], &[]];
        for (p, want) in want.iter().enumerate() {
            assert_eq!(list(p), *want, "position {p}");
        }
    }
}
