//! 2-D convolution on the GPU (`kernels/conv.cu`): forward, input gradient and weight gradient
//! as implicit GEMMs (operands indexed on the fly from the geometry, never an im2col buffer),
//! every operand read through its 4-D strides. The weight gradient reduces over all
//! `N·OH·OW` output pixels while its output is small, so when its tiles cannot fill the GPU
//! it splits that reduction over grid.y into a workspace summed afterwards in a fixed order.

use super::kernel_io::{ll, push_strides};
use super::storage::float_suffix;
use super::{kernel_args, launch_1d, CudaStorage, KernelArgs, LaunchConfig};
use crate::backend::conv::{Conv2dGeom, ConvBackend};
use crate::backend::BackendStorage;
use crate::tensor::Layout;
use crate::{Error, Result};

const FILE: &str = "conv.cu";
/// Output tile of every conv kernel (64 x 64, 256 threads).
const TILE: usize = 64;
const MAX_SPLITS: usize = 32;
const MIN_K_PER_SPLIT: usize = 512;

/// The geometry is consistent ([`Conv2dGeom::check`]), and small enough for the kernels' 32-bit index arithmetic.
fn check_geom(op: &'static str, g: &Conv2dGeom) -> Result<()> {
    g.check(op)?;
    let fits = |v: usize| v <= i32::MAX as usize;
    let small = [
        g.n,
        g.c_in,
        g.c_out,
        g.h * g.w,
        g.p(),
        g.k(),
        g.cout_g() * g.kh * g.kw,
    ]
    .into_iter()
    .all(fits)
        && fits(g.h + 2 * g.padding.0 + g.dilation.0 * g.kh)
        && fits(g.w + 2 * g.padding.1 + g.dilation.1 * g.kw);
    if !small {
        return Err(Error::msg(format!(
            "{op}: geometry {g:?} is too large for the GPU kernels' 32-bit indices"
        )));
    }
    Ok(())
}

/// The geometry as the kernels' 16 `long long` parameters (CONV_GEOM_PARAMS).
fn geom_args(mut a: KernelArgs, g: &Conv2dGeom) -> KernelArgs {
    for v in [
        g.n,
        g.c_in,
        g.h,
        g.w,
        g.c_out,
        g.kh,
        g.kw,
        g.stride.0,
        g.stride.1,
        g.padding.0,
        g.padding.1,
        g.dilation.0,
        g.dilation.1,
        g.groups,
        g.oh,
        g.ow,
    ] {
        a = a.arg(ll(v));
    }
    a
}

/// One block per 64 x 64 output tile of an `m x n` GEMM per group.
fn tile_grid(m: usize, n: usize, splits: usize, groups: usize) -> LaunchConfig {
    LaunchConfig {
        grid: (
            (m.div_ceil(TILE) * n.div_ceil(TILE)) as u32,
            splits as u32,
            groups.min(65535) as u32,
        ),
        block: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn check_pair(
    op: &'static str,
    a: &CudaStorage,
    al: &Layout,
    b: &CudaStorage,
    bl: &Layout,
) -> Result<()> {
    crate::backend::same_dtype(op, a.dtype(), b.dtype())?;
    a.check_view(op, al)?;
    b.check_view(op, bl)
}

impl ConvBackend for CudaStorage {
    fn conv2d(
        &self,
        x_layout: &Layout,
        w: &Self,
        w_layout: &Layout,
        g: &Conv2dGeom,
    ) -> Result<Self> {
        const OP: &str = "conv2d";
        check_geom(OP, g)?;
        Conv2dGeom::expect_dims(OP, "input", x_layout, [g.n, g.c_in, g.h, g.w])?;
        Conv2dGeom::expect_dims(OP, "weight", w_layout, [g.c_out, g.cin_g(), g.kh, g.kw])?;
        check_pair(OP, self, x_layout, w, w_layout)?;
        let sfx = float_suffix(OP, self.dtype())?;
        let dev = self.dev();
        let out = CudaStorage::alloc(dev, g.n * g.c_out * g.p(), self.dtype())?;
        if out.len == 0 {
            return Ok(out);
        }
        let args = kernel_args![
            self.ptr_at(x_layout.offset()),
            w.ptr_at(w_layout.offset()),
            out.ptr()
        ];
        let args = push_strides(push_strides(geom_args(args, g), x_layout), w_layout);
        let cfg = tile_grid(g.cout_g(), g.n * g.p(), 1, g.groups);
        dev.launch(FILE, &format!("conv2d_fwd_{sfx}"), cfg, args)?;
        Ok(out)
    }

    fn conv2d_backward_input(
        &self,
        dy_layout: &Layout,
        w: &Self,
        w_layout: &Layout,
        g: &Conv2dGeom,
    ) -> Result<Self> {
        const OP: &str = "conv2d_backward_input";
        check_geom(OP, g)?;
        Conv2dGeom::expect_dims(OP, "output gradient", dy_layout, [g.n, g.c_out, g.oh, g.ow])?;
        Conv2dGeom::expect_dims(OP, "weight", w_layout, [g.c_out, g.cin_g(), g.kh, g.kw])?;
        check_pair(OP, self, dy_layout, w, w_layout)?;
        let sfx = float_suffix(OP, self.dtype())?;
        let dev = self.dev();
        let dx = CudaStorage::alloc(dev, g.n * g.c_in * g.h * g.w, self.dtype())?;
        if dx.len == 0 {
            return Ok(dx);
        }
        let args = kernel_args![
            self.ptr_at(dy_layout.offset()),
            w.ptr_at(w_layout.offset()),
            dx.ptr()
        ];
        let args = push_strides(push_strides(geom_args(args, g), dy_layout), w_layout);
        let cfg = tile_grid(g.cin_g(), g.n * g.h * g.w, 1, g.groups);
        dev.launch(FILE, &format!("conv2d_bwd_input_{sfx}"), cfg, args)?;
        Ok(dx)
    }

    fn conv2d_backward_weight(
        &self,
        x_layout: &Layout,
        dy: &Self,
        dy_layout: &Layout,
        g: &Conv2dGeom,
    ) -> Result<Self> {
        const OP: &str = "conv2d_backward_weight";
        check_geom(OP, g)?;
        Conv2dGeom::expect_dims(OP, "input", x_layout, [g.n, g.c_in, g.h, g.w])?;
        Conv2dGeom::expect_dims(OP, "output gradient", dy_layout, [g.n, g.c_out, g.oh, g.ow])?;
        check_pair(OP, self, x_layout, dy, dy_layout)?;
        let sfx = float_suffix(OP, self.dtype())?;
        let dev = self.dev();
        let dw = CudaStorage::alloc(dev, g.c_out * g.k(), self.dtype())?;
        if dw.len == 0 {
            return Ok(dw);
        }
        let reduction = g.n * g.p();
        let blocks = g.cout_g().div_ceil(TILE) * g.k().div_ceil(TILE) * g.groups.min(65535);
        let sms = dev.sm_count()?.max(1);
        let splits = if blocks * 2 <= sms {
            (sms / blocks)
                .min(reduction / MIN_K_PER_SPLIT)
                .clamp(1, MAX_SPLITS)
        } else {
            1
        };
        let workspace = if splits > 1 {
            Some(CudaStorage::alloc(dev, splits * dw.len, self.dtype())?)
        } else {
            None
        };
        let dst = workspace.as_ref().map_or(dw.ptr(), |w| w.ptr());
        let args = kernel_args![
            self.ptr_at(x_layout.offset()),
            dy.ptr_at(dy_layout.offset()),
            dst
        ];
        let args = push_strides(push_strides(geom_args(args, g), x_layout), dy_layout);
        let cfg = tile_grid(g.cout_g(), g.k(), splits, g.groups);
        dev.launch(FILE, &format!("conv2d_bwd_weight_{sfx}"), cfg, args)?;
        if let Some(ws) = &workspace {
            let args = kernel_args![ws.ptr(), dw.ptr(), ll(dw.len), ll(splits)];
            dev.launch(
                FILE,
                &format!("conv_splitk_reduce_{sfx}"),
                launch_1d(dw.len, 256),
                args,
            )?;
        }
        Ok(dw)
    }
}
