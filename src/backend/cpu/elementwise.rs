//! CPU elementwise kernels. Contiguous operands take a flat, Rayon-parallel loop the compiler
//! vectorizes; strided or broadcast operands are walked row by row (last dimension innermost).
//! Unary ops are dispatched once per call (`with_unary_fn!`), not per element, so each op's
//! loop is its own monomorphized, vectorizable function; f32 `exp` and `erf` (`float.rs`) are
//! branch-free so GELU, SiLU, sigmoid and exp vectorize too. One read and one write per element
//! (two reads for the backward); outputs are written into uninitialised memory
//! ([`written_vec`]), never zeroed first.

use super::simd::vectorized;
use super::stream::{self, write_chunked};
use super::{contiguous_cow, CpuData, CpuStorage, Float, PAR_CHUNK};
use crate::backend::elementwise::{BinaryOp, CmpOp, ElementwiseBackend, UnaryOp};
use crate::tensor::{Layout, WithDType};
use crate::{cpu_map_float, Error, Result};
use rayon::prelude::*;
use std::mem::MaybeUninit;

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const GELU_C: f64 = 0.044715;

/// `1 / (1 + e^-x)`, with [`Float::exp_fused`]: 0 from `x = -88.38` on (where e^-x overflows
/// to +inf; the exact value is under 4e-39, a subnormal), 1 from `x = 87` on.
#[inline(always)]
fn sigmoid<T: Float>(x: T) -> T {
    T::ONE / (T::ONE + (-x).exp_fused())
}

#[inline(always)]
pub(crate) fn unary_fwd<T: Float>(op: UnaryOp, x: T) -> T {
    match op {
        UnaryOp::Neg => -x,
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Rsqrt => T::ONE / x.sqrt(),
        UnaryOp::Abs => x.abs(),
        UnaryOp::Relu => x.max(T::ZERO),
        UnaryOp::GeluErf => {
            T::from_f64(0.5)
                * x
                * (T::ONE + (x * T::from_f64(std::f64::consts::FRAC_1_SQRT_2)).erf())
        }
        UnaryOp::GeluTanh => {
            let u = T::from_f64(SQRT_2_OVER_PI) * (x + T::from_f64(GELU_C) * x * x * x);
            T::from_f64(0.5) * x * (T::ONE + u.tanh())
        }
        UnaryOp::Silu => x * sigmoid(x),
        UnaryOp::Sigmoid => sigmoid(x),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Sqr => x * x,
        UnaryOp::Recip => T::ONE / x,
        UnaryOp::Powf(e) => x.powf(T::from_f64(e)),
        UnaryOp::Clamp { min, max } => x.max(T::from_f64(min)).min(T::from_f64(max)),
        UnaryOp::Affine { mul, add } => x * T::from_f64(mul) + T::from_f64(add),
    }
}

/// f'(x)
#[inline(always)]
pub(crate) fn unary_deriv<T: Float>(op: UnaryOp, x: T) -> T {
    match op {
        UnaryOp::Neg => -T::ONE,
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => T::ONE / x,
        UnaryOp::Sqrt => T::from_f64(0.5) / x.sqrt(),
        UnaryOp::Rsqrt => T::from_f64(-0.5) / (x * x.sqrt()),
        UnaryOp::Abs => {
            if x > T::ZERO {
                T::ONE
            } else if x < T::ZERO {
                -T::ONE
            } else {
                T::ZERO
            }
        }
        UnaryOp::Relu => {
            if x > T::ZERO {
                T::ONE
            } else {
                T::ZERO
            }
        }
        UnaryOp::GeluErf => {
            let cdf = T::from_f64(0.5)
                * (T::ONE + (x * T::from_f64(std::f64::consts::FRAC_1_SQRT_2)).erf());
            // `exp_fused` gives 0 for |x| > 13.2 (the argument below -87), where the pdf is
            // under 1e-38.
            let pdf =
                (T::from_f64(-0.5) * x * x).exp_fused() * T::from_f64(0.398_942_280_401_432_7);
            cdf + x * pdf
        }
        UnaryOp::GeluTanh => {
            let x2 = x * x;
            let u = T::from_f64(SQRT_2_OVER_PI) * (x + T::from_f64(GELU_C) * x2 * x);
            let t = u.tanh();
            let du = T::from_f64(SQRT_2_OVER_PI) * (T::ONE + T::from_f64(3.0 * GELU_C) * x2);
            T::from_f64(0.5) * (T::ONE + t) + T::from_f64(0.5) * x * (T::ONE - t * t) * du
        }
        UnaryOp::Silu => {
            let s = sigmoid(x);
            s * (T::ONE + x * (T::ONE - s))
        }
        UnaryOp::Sigmoid => {
            let s = sigmoid(x);
            s * (T::ONE - s)
        }
        UnaryOp::Tanh => {
            let t = x.tanh();
            T::ONE - t * t
        }
        UnaryOp::Sqr => T::from_f64(2.0) * x,
        UnaryOp::Recip => -T::ONE / (x * x),
        UnaryOp::Powf(e) => T::from_f64(e) * x.powf(T::from_f64(e - 1.0)),
        UnaryOp::Clamp { min, max } => {
            if x >= T::from_f64(min) && x <= T::from_f64(max) {
                T::ONE
            } else {
                T::ZERO
            }
        }
        UnaryOp::Affine { mul, .. } => T::from_f64(mul),
    }
}

/// Binds `$f` to `op`'s per-element function and evaluates `$body` once per variant, so every
/// op gets its own monomorphized loop the compiler can vectorize, instead of one loop that
/// dispatches on `op` for each element. `fwd` binds `f(x) = op(x)`, `bwd` binds
/// `f(x, g) = g * op'(x)`. Payload-free variants use an `#[inline(always)]` fn item (a
/// closure with a large body such as GELU's erf may be left out of line, which keeps the
/// loop scalar); the cheap payload variants use closures capturing the payload. Call sites
/// pass `#[inline(always)] |x| f(x)` rather than `f` itself: a fn item handed to a generic
/// `F: Fn` is called through its `Fn::call` shim, which LLVM may keep out of line (it did for
/// GELU), while a direct call of the fn item inside an always-inlined closure is inlined.
macro_rules! with_unary_fn {
    ($op:expr, $mode:ident, |$f:ident| $body:expr) => {
        match $op {
            UnaryOp::Neg => with_unary_fn!(@unit UnaryOp::Neg, $mode, $f, $body),
            UnaryOp::Exp => with_unary_fn!(@unit UnaryOp::Exp, $mode, $f, $body),
            UnaryOp::Log => with_unary_fn!(@unit UnaryOp::Log, $mode, $f, $body),
            UnaryOp::Sqrt => with_unary_fn!(@unit UnaryOp::Sqrt, $mode, $f, $body),
            UnaryOp::Rsqrt => with_unary_fn!(@unit UnaryOp::Rsqrt, $mode, $f, $body),
            UnaryOp::Abs => with_unary_fn!(@unit UnaryOp::Abs, $mode, $f, $body),
            UnaryOp::Relu => with_unary_fn!(@unit UnaryOp::Relu, $mode, $f, $body),
            UnaryOp::GeluErf => with_unary_fn!(@unit UnaryOp::GeluErf, $mode, $f, $body),
            UnaryOp::GeluTanh => with_unary_fn!(@unit UnaryOp::GeluTanh, $mode, $f, $body),
            UnaryOp::Silu => with_unary_fn!(@unit UnaryOp::Silu, $mode, $f, $body),
            UnaryOp::Sigmoid => with_unary_fn!(@unit UnaryOp::Sigmoid, $mode, $f, $body),
            UnaryOp::Tanh => with_unary_fn!(@unit UnaryOp::Tanh, $mode, $f, $body),
            UnaryOp::Sqr => with_unary_fn!(@unit UnaryOp::Sqr, $mode, $f, $body),
            UnaryOp::Recip => with_unary_fn!(@unit UnaryOp::Recip, $mode, $f, $body),
            UnaryOp::Powf(e) => with_unary_fn!(@data UnaryOp::Powf(e), $mode, $f, $body),
            UnaryOp::Clamp { min, max } => {
                with_unary_fn!(@data UnaryOp::Clamp { min, max }, $mode, $f, $body)
            }
            UnaryOp::Affine { mul, add } => {
                with_unary_fn!(@data UnaryOp::Affine { mul, add }, $mode, $f, $body)
            }
        }
    };
    (@unit $variant:expr, fwd, $f:ident, $body:expr) => {{
        #[inline(always)]
        fn elem<T: Float>(x: T) -> T {
            unary_fwd($variant, x)
        }
        let $f = elem;
        $body
    }};
    (@unit $variant:expr, bwd, $f:ident, $body:expr) => {{
        #[inline(always)]
        fn elem<T: Float>(x: T, g: T) -> T {
            g * unary_deriv($variant, x)
        }
        let $f = elem;
        $body
    }};
    (@data $variant:expr, fwd, $f:ident, $body:expr) => {{
        let $f = move |x| unary_fwd($variant, x);
        $body
    }};
    (@data $variant:expr, bwd, $f:ident, $body:expr) => {{
        let $f = move |x, g| g * unary_deriv($variant, x);
        $body
    }};
}

/// `out = a op b` over two views of one shape, with the match on `op` outside the loop: each
/// op gets its own monomorphized loop the compiler vectorizes. (One closure that matched on
/// `op` per element compiled to a scalar loop with a jump table in it: an f32 add ran at ~1 ns
/// per element on one core, 20x a vector add on data in L2.)
fn binary_map<T: Float>(op: BinaryOp, a: &[T], la: &Layout, b: &[T], lb: &Layout) -> Vec<T> {
    macro_rules! each {
        (|$x:ident, $y:ident| $e:expr) => {
            map2(
                a,
                la,
                b,
                lb,
                #[inline(always)]
                |$x: T, $y: T| $e,
            )
        };
    }
    match op {
        BinaryOp::Add => each!(|x, y| x + y),
        BinaryOp::Sub => each!(|x, y| x - y),
        BinaryOp::Mul => each!(|x, y| x * y),
        BinaryOp::Div => each!(|x, y| x / y),
        BinaryOp::Maximum => each!(|x, y| maximum(x, y)),
        BinaryOp::Minimum => each!(|x, y| minimum(x, y)),
    }
}

/// `max(a, b)`, NaN if either is (PyTorch's `maximum`).
#[inline(always)]
fn maximum<T: Float>(a: T, b: T) -> T {
    if a >= b || b.is_nan() {
        a
    } else {
        b
    }
}

/// `min(a, b)`, NaN if either is (PyTorch's `minimum`).
#[inline(always)]
fn minimum<T: Float>(a: T, b: T) -> T {
    if a <= b || b.is_nan() {
        a
    } else {
        b
    }
}

/// The dims of an elementwise loop over `N` views of one shape, with the dims of size 1
/// dropped and adjacent dims merged wherever every view steps through them as one: a
/// `[B, C, H, W] + [B, C, 1, 1]` broadcast runs as `[B·C, H·W]` rows with the second view's
/// inner stride 0, instead of `B·C·H` rows of `W`.
pub(crate) struct Coalesced<const N: usize> {
    dims: Vec<usize>,
    strides: [Vec<usize>; N],
}

impl<const N: usize> Coalesced<N> {
    pub(crate) fn new(dims: &[usize], strides: [&[usize]; N]) -> Self {
        let mut out = Coalesced {
            dims: Vec::with_capacity(dims.len()),
            strides: std::array::from_fn(|_| Vec::with_capacity(dims.len())),
        };
        for (i, &d) in dims.iter().enumerate() {
            if d == 1 {
                continue;
            }
            let merge = !out.dims.is_empty()
                && (0..N).all(|v| *out.strides[v].last().unwrap() == strides[v][i] * d);
            if merge {
                *out.dims.last_mut().unwrap() *= d;
                for (o, st) in out.strides.iter_mut().zip(&strides) {
                    *o.last_mut().unwrap() = st[i];
                }
            } else {
                out.dims.push(d);
                for (o, st) in out.strides.iter_mut().zip(&strides) {
                    o.push(st[i]);
                }
            }
        }
        if out.dims.is_empty() {
            out.dims.push(1);
            out.strides.iter_mut().for_each(|o| o.push(1));
        }
        out
    }
    /// Length of the innermost (merged) dim.
    pub(crate) fn inner(&self) -> usize {
        *self.dims.last().unwrap()
    }
    /// Stride of view `v` along the innermost dim.
    pub(crate) fn inner_stride(&self, v: usize) -> usize {
        *self.strides[v].last().unwrap()
    }
    /// Offset of row `row` (rows run along the innermost dim) in view `v`, from its start.
    #[inline]
    pub(crate) fn row_offset(&self, v: usize, mut row: usize) -> usize {
        let mut off = 0;
        for d in (0..self.dims.len() - 1).rev() {
            off += (row % self.dims[d]) * self.strides[v][d];
            row /= self.dims[d];
        }
        off
    }
}

/// A `Vec` of `n` elements written by `fill` into the vector's uninitialised capacity, with no
/// zeroing first: `vec![0.0; n]` on a block the caching allocator reuses is a single-threaded
/// `memset`, one more pass over a 128 MiB output than the kernel itself makes.
///
/// # Safety
/// `fill` must write every element of the slice it is given.
pub(crate) unsafe fn written_vec<O>(n: usize, fill: impl FnOnce(&mut [MaybeUninit<O>])) -> Vec<O> {
    let mut out = Vec::with_capacity(n);
    fill(&mut out.spare_capacity_mut()[..n]);
    // SAFETY: the caller's `fill` initialised all `n` elements.
    unsafe { out.set_len(n) };
    out
}

/// `s` as initialised values (the slices [`written_vec`] hands out, once filled).
///
/// # Safety
/// Every element of `s` must have been written, or be written before anything reads it (the
/// `T`s here are plain numbers: no drop glue, every bit pattern valid).
#[inline(always)]
pub(crate) unsafe fn assume_init<T>(s: &mut [MaybeUninit<T>]) -> &mut [T] {
    // SAFETY: `MaybeUninit<T>` has `T`'s layout; initialisation is the caller's promise.
    unsafe { &mut *(s as *mut [MaybeUninit<T>] as *mut [T]) }
}

/// `o[i] = f(a[i])`: a plain indexed loop, always inlined, so that inside [`vectorized`] it is
/// compiled for the wide instruction set (an iterator chain's `fold` may stay out of line).
/// Writes every element of `o` (`a` is at least as long).
#[inline(always)]
fn apply1<A: Copy, O>(o: &mut [MaybeUninit<O>], a: &[A], f: &impl Fn(A) -> O) {
    let n = o.len();
    let a = &a[..n];
    for i in 0..n {
        o[i] = MaybeUninit::new(f(a[i]));
    }
}

/// `out[i] = f(a[i])` over one strided view. A contiguous output larger than the last-level
/// cache is written with streaming stores, one line at a time (`stream::write_chunked`), each
/// line first prefetching the input [`stream::prefetch_ahead`] of it: whatever `f` costs,
/// from a copy to GELU's 39 vector operations per 16 values, that beat regular stores on
/// 128 MiB (docs/PERF.md, session 23).
pub(crate) fn map1<A: Copy + Send + Sync, O: Copy + Send + Sync>(
    a: &[A],
    la: &Layout,
    f: impl Fn(A) -> O + Sync + Send,
) -> Vec<O> {
    let n = la.elem_count();
    if n == 0 {
        return Vec::new();
    }
    if let Some((s, e)) = la.contiguous_range() {
        let stream = stream::streams(n * size_of::<O>());
        // SAFETY: the chunks cover the output and `apply1` writes each of them whole.
        return unsafe {
            written_vec(n, |out| {
                out.par_chunks_mut(PAR_CHUNK)
                    .zip(a[s..e].par_chunks(PAR_CHUNK))
                    .for_each(|(o, a)| {
                        vectorized(
                            #[inline(always)]
                            || {
                                write_chunked(
                                    o,
                                    stream,
                                    #[inline(always)]
                                    |off, o| {
                                        stream::prefetch_ahead(a, off);
                                        apply1(o, &a[off..], &f)
                                    },
                                )
                            },
                        )
                    })
            })
        };
    }
    let rows = Coalesced::new(la.dims(), [la.strides()]);
    let (inner, sa, a0) = (rows.inner(), rows.inner_stride(0), la.offset());
    let rows_per_task = (PAR_CHUNK / inner).max(1);
    // SAFETY: the tasks' chunks cover the output, split into whole rows, each written whole.
    unsafe {
        written_vec(n, |out| {
            out.par_chunks_mut(inner * rows_per_task)
                .enumerate()
                .for_each(|(t, chunk)| {
                    vectorized(
                        #[inline(always)]
                        || {
                            for (r, o) in chunk.chunks_mut(inner).enumerate() {
                                let oa = a0 + rows.row_offset(0, t * rows_per_task + r);
                                if sa == 1 {
                                    apply1(o, &a[oa..oa + inner], &f);
                                } else {
                                    for (i, o) in o.iter_mut().enumerate() {
                                        *o = MaybeUninit::new(f(a[oa + i * sa]));
                                    }
                                }
                            }
                        },
                    )
                })
        })
    }
}

/// `out[i] = f(a[i], b[i])` over two strided views of one shape (streamed as in [`map1`]).
pub(crate) fn map2<A: Copy + Send + Sync, B: Copy + Send + Sync, O: Copy + Send + Sync>(
    a: &[A],
    la: &Layout,
    b: &[B],
    lb: &Layout,
    f: impl Fn(A, B) -> O + Sync + Send,
) -> Vec<O> {
    let n = la.elem_count();
    if n == 0 {
        return Vec::new();
    }
    if let (Some((sa, ea)), Some((sb, eb))) = (la.contiguous_range(), lb.contiguous_range()) {
        let stream = stream::streams(n * size_of::<O>());
        // SAFETY: the chunks cover the output and each is written whole (`a` and `b` have the
        // output's length, so their chunks are as long as the output's).
        return unsafe {
            written_vec(n, |out| {
                out.par_chunks_mut(PAR_CHUNK)
                    .zip(
                        a[sa..ea]
                            .par_chunks(PAR_CHUNK)
                            .zip(b[sb..eb].par_chunks(PAR_CHUNK)),
                    )
                    .for_each(|(o, (a, b))| {
                        vectorized(
                            #[inline(always)]
                            || {
                                write_chunked(
                                    o,
                                    stream,
                                    #[inline(always)]
                                    |off, o| {
                                        stream::prefetch_ahead(a, off);
                                        stream::prefetch_ahead(b, off);
                                        let end = off + o.len();
                                        let (a, b) = (&a[off..end], &b[off..end]);
                                        for i in 0..o.len() {
                                            o[i] = MaybeUninit::new(f(a[i], b[i]));
                                        }
                                    },
                                )
                            },
                        )
                    })
            })
        };
    }
    let rows = Coalesced::new(la.dims(), [la.strides(), lb.strides()]);
    let inner = rows.inner();
    let (sa, sb) = (rows.inner_stride(0), rows.inner_stride(1));
    let (a0, b0) = (la.offset(), lb.offset());
    let rows_per_task = (PAR_CHUNK / inner).max(1);
    // SAFETY: the tasks' chunks cover the output, split into whole rows, each written whole.
    unsafe {
        written_vec(n, |out| {
            out.par_chunks_mut(inner * rows_per_task)
                .enumerate()
                .for_each(|(t, chunk)| {
                    vectorized(
                        #[inline(always)]
                        || {
                            for (r, o) in chunk.chunks_mut(inner).enumerate() {
                                let row = t * rows_per_task + r;
                                let oa = a0 + rows.row_offset(0, row);
                                let ob = b0 + rows.row_offset(1, row);
                                let o = &mut o[..inner];
                                match (sa, sb) {
                                    (1, 1) => {
                                        let (a, b) = (&a[oa..oa + inner], &b[ob..ob + inner]);
                                        for i in 0..inner {
                                            o[i] = MaybeUninit::new(f(a[i], b[i]));
                                        }
                                    }
                                    (1, 0) => {
                                        let (a, b) = (&a[oa..oa + inner], b[ob]);
                                        for i in 0..inner {
                                            o[i] = MaybeUninit::new(f(a[i], b));
                                        }
                                    }
                                    (0, 1) => {
                                        let (a, b) = (a[oa], &b[ob..ob + inner]);
                                        for i in 0..inner {
                                            o[i] = MaybeUninit::new(f(a, b[i]));
                                        }
                                    }
                                    _ => {
                                        for (i, o) in o.iter_mut().enumerate() {
                                            *o =
                                                MaybeUninit::new(f(a[oa + i * sa], b[ob + i * sb]));
                                        }
                                    }
                                }
                            }
                        },
                    )
                })
        })
    }
}

/// The `0/1` mask `a op b`, the match on `op` outside the loop (as in [`binary_map`]).
fn cmp_map<T: PartialOrd + Copy + Send + Sync>(
    op: CmpOp,
    a: &[T],
    la: &Layout,
    b: &[T],
    lb: &Layout,
) -> Vec<u8> {
    macro_rules! each {
        (|$x:ident, $y:ident| $e:expr) => {
            map2(
                a,
                la,
                b,
                lb,
                #[inline(always)]
                |$x: T, $y: T| u8::from($e),
            )
        };
    }
    match op {
        CmpOp::Eq => each!(|x, y| x == y),
        CmpOp::Ne => each!(|x, y| x != y),
        CmpOp::Lt => each!(|x, y| x < y),
        CmpOp::Le => each!(|x, y| x <= y),
        CmpOp::Gt => each!(|x, y| x > y),
        CmpOp::Ge => each!(|x, y| x >= y),
    }
}

fn where_typed<T: WithDType + Default>(
    c: &[u8],
    lc: &Layout,
    t: &[T],
    lt: &Layout,
    f: &[T],
    lf: &Layout,
) -> Vec<T> {
    let (t, f) = (contiguous_cow(t, lt), contiguous_cow(f, lf));
    map1(c, lc, |x| x)
        .into_iter()
        .zip(t.iter().zip(f.iter()))
        .map(|(c, (&t, &f))| if c != 0 { t } else { f })
        .collect()
}

// `#[inline(always)] |x| f(x)` is deliberate (see `with_unary_fn!`), not a redundant closure.
#[allow(clippy::redundant_closure)]
impl ElementwiseBackend for CpuStorage {
    fn unary(&self, op: UnaryOp, layout: &Layout) -> Result<Self> {
        Ok(CpuStorage::new(cpu_map_float!(
            op.name(),
            self.data(),
            |v| with_unary_fn!(op, fwd, |f| map1(
                v,
                layout,
                #[inline(always)]
                |x| f(x)
            ))
        )))
    }

    fn unary_backward(
        &self,
        op: UnaryOp,
        x_layout: &Layout,
        dy: &Self,
        dy_layout: &Layout,
    ) -> Result<Self> {
        let data = match (self.data(), dy.data()) {
            (CpuData::F32(x), CpuData::F32(g)) => CpuData::F32(with_unary_fn!(op, bwd, |f| map2(
                x,
                x_layout,
                g,
                dy_layout,
                #[inline(always)]
                |x, g| f(x, g)
            ))),
            (CpuData::F64(x), CpuData::F64(g)) => CpuData::F64(with_unary_fn!(op, bwd, |f| map2(
                x,
                x_layout,
                g,
                dy_layout,
                #[inline(always)]
                |x, g| f(x, g)
            ))),
            (d, _) => {
                return Err(Error::UnsupportedDType {
                    op: op.name(),
                    dtype: d.dtype_of(),
                    expected: "f32 or f64",
                })
            }
        };
        Ok(CpuStorage::new(data))
    }

    fn binary(
        &self,
        op: BinaryOp,
        lhs_layout: &Layout,
        rhs: &Self,
        rhs_layout: &Layout,
    ) -> Result<Self> {
        let data = match (self.data(), rhs.data()) {
            (CpuData::F32(a), CpuData::F32(b)) => {
                CpuData::F32(binary_map(op, a, lhs_layout, b, rhs_layout))
            }
            (CpuData::F64(a), CpuData::F64(b)) => {
                CpuData::F64(binary_map(op, a, lhs_layout, b, rhs_layout))
            }
            (d, _) => {
                return Err(Error::UnsupportedDType {
                    op: op.name(),
                    dtype: d.dtype_of(),
                    expected: "f32 or f64",
                })
            }
        };
        Ok(CpuStorage::new(data))
    }

    fn cmp(&self, op: CmpOp, lhs_layout: &Layout, rhs: &Self, rhs_layout: &Layout) -> Result<Self> {
        let out = match (self.data(), rhs.data()) {
            (CpuData::F32(a), CpuData::F32(b)) => cmp_map(op, a, lhs_layout, b, rhs_layout),
            (CpuData::F64(a), CpuData::F64(b)) => cmp_map(op, a, lhs_layout, b, rhs_layout),
            (CpuData::I64(a), CpuData::I64(b)) => cmp_map(op, a, lhs_layout, b, rhs_layout),
            (CpuData::U32(a), CpuData::U32(b)) => cmp_map(op, a, lhs_layout, b, rhs_layout),
            (CpuData::U8(a), CpuData::U8(b)) => cmp_map(op, a, lhs_layout, b, rhs_layout),
            (d, _) => {
                return Err(Error::UnsupportedDType {
                    op: "cmp",
                    dtype: d.dtype_of(),
                    expected: "f32, f64, i64, u32 or u8",
                })
            }
        };
        Ok(CpuStorage::new(CpuData::U8(out)))
    }

    fn where_cond(
        &self,
        layout: &Layout,
        on_true: &Self,
        t_layout: &Layout,
        on_false: &Self,
        f_layout: &Layout,
    ) -> Result<Self> {
        let c = self.as_slice::<u8>("where_cond (condition must be u8)")?;
        let data = match (on_true.data(), on_false.data()) {
            (CpuData::F32(t), CpuData::F32(f)) => {
                CpuData::F32(where_typed(c, layout, t, t_layout, f, f_layout))
            }
            (CpuData::F64(t), CpuData::F64(f)) => {
                CpuData::F64(where_typed(c, layout, t, t_layout, f, f_layout))
            }
            (CpuData::I64(t), CpuData::I64(f)) => {
                CpuData::I64(where_typed(c, layout, t, t_layout, f, f_layout))
            }
            (CpuData::U32(t), CpuData::U32(f)) => {
                CpuData::U32(where_typed(c, layout, t, t_layout, f, f_layout))
            }
            (CpuData::U8(t), CpuData::U8(f)) => {
                CpuData::U8(where_typed(c, layout, t, t_layout, f, f_layout))
            }
            (d, _) => {
                return Err(Error::UnsupportedDType {
                    op: "where_cond",
                    dtype: d.dtype_of(),
                    expected: "f32, f64, i64, u32 or u8",
                })
            }
        };
        Ok(CpuStorage::new(data))
    }
}
