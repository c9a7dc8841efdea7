//! The register tile both weight-gradient paths run: `R x J` dot products along the pixels,
//! `L` lanes at a time, each lane summed separately (the lanes are added up once, by the
//! caller, at the end).
//!
//! With AVX-512 or AVX2 it is written with intrinsics, the accumulators an array of vector
//! registers: written with arrays of `[T; L]`, LLVM kept them in memory whenever a closure
//! touched them (a store of every accumulator at every step, and the tile ran at a third of
//! the speed). The portable tile is plain Rust.

use crate::backend::cpu::matmul::Isa;
use crate::backend::cpu::Float;

/// A float type with register tiles for each instruction set.
pub(super) trait DotTile: Float {
    /// Lanes per accumulator under `isa` (a divisor of 16).
    fn lanes(isa: Isa) -> usize;

    /// `c[(r*ldc + j)*L + l] += sum_i a[r][i*L + l] * b[j][i*L + l]` over `i < n / L`
    /// (`L = lanes(isa)`, `n` a multiple of it) for `r < R`, `j < J`: the `R*J` sums in
    /// registers, added to `c` once. The rows may start anywhere (unaligned loads); with
    /// AVX-512 or AVX2 the products are fused multiply-adds.
    fn dot_tile<const R: usize, const J: usize>(
        isa: Isa,
        a: [&[Self]; R],
        b: [&[Self]; J],
        n: usize,
        c: &mut [Self],
        ldc: usize,
    );
}

/// Panics unless every row holds `n` elements and `c` the `R x J` tile of `lanes`-wide sums:
/// the intrinsic tiles read and write through raw pointers within these bounds.
#[inline(always)]
fn check_tile<T, const R: usize, const J: usize>(
    a: &[&[T]; R],
    b: &[&[T]; J],
    n: usize,
    c: &[T],
    ldc: usize,
    lanes: usize,
) {
    assert!(n.is_multiple_of(lanes) && J <= ldc);
    assert!(a.iter().chain(b).all(|row| row.len() >= n));
    assert!(c.len() >= ((R - 1) * ldc + J) * lanes);
}

/// The portable tile: `L`-lane arrays, multiply then add.
#[inline(always)]
fn dot_tile_portable<T: Float, const R: usize, const J: usize, const L: usize>(
    a: [&[T]; R],
    b: [&[T]; J],
    n: usize,
    c: &mut [T],
    ldc: usize,
) {
    check_tile(&a, &b, n, c, ldc, L);
    let mut acc = [[[T::ZERO; L]; J]; R];
    for i in (0..n).step_by(L) {
        for r in 0..R {
            for j in 0..J {
                for l in 0..L {
                    acc[r][j][l] = a[r][i + l].mul_add(b[j][i + l], acc[r][j][l]);
                }
            }
        }
    }
    for r in 0..R {
        for j in 0..J {
            let sum = &mut c[(r * ldc + j) * L..][..L];
            for l in 0..L {
                sum[l] += acc[r][j][l];
            }
        }
    }
}

/// An intrinsic tile: `$name::<R, J>(a, b, n, c, ldc)` for one vector type.
macro_rules! simd_tile {
    ($name:ident, $t:ty, $feature:literal, $lanes:literal, $zero:ident, $load:ident, $fma:ident, $add:ident, $store:ident) => {
        /// # Safety
        /// The CPU has the target features; the bounds hold (`check_tile`, checked here).
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feature)]
        #[inline]
        unsafe fn $name<const R: usize, const J: usize>(
            a: [&[$t]; R],
            b: [&[$t]; J],
            n: usize,
            c: &mut [$t],
            ldc: usize,
        ) {
            use std::arch::x86_64::*;
            check_tile(&a, &b, n, c, ldc, $lanes);
            let mut acc = [[$zero(); J]; R];
            let mut i = 0;
            while i < n {
                // SAFETY (all loads and stores): in bounds by `check_tile`.
                let bv: [_; J] = std::array::from_fn(|j| unsafe { $load(b[j].as_ptr().add(i)) });
                for r in 0..R {
                    let av = unsafe { $load(a[r].as_ptr().add(i)) };
                    for j in 0..J {
                        acc[r][j] = $fma(av, bv[j], acc[r][j]);
                    }
                }
                i += $lanes;
            }
            for r in 0..R {
                for j in 0..J {
                    let p = c[(r * ldc + j) * $lanes..].as_mut_ptr();
                    unsafe { $store(p, $add($load(p), acc[r][j])) };
                }
            }
        }
    };
}

simd_tile!(
    tile_avx512_f32,
    f32,
    "avx512f",
    16,
    _mm512_setzero_ps,
    _mm512_loadu_ps,
    _mm512_fmadd_ps,
    _mm512_add_ps,
    _mm512_storeu_ps
);
simd_tile!(
    tile_avx512_f64,
    f64,
    "avx512f",
    8,
    _mm512_setzero_pd,
    _mm512_loadu_pd,
    _mm512_fmadd_pd,
    _mm512_add_pd,
    _mm512_storeu_pd
);
simd_tile!(
    tile_avx2_f32,
    f32,
    "avx2,fma",
    8,
    _mm256_setzero_ps,
    _mm256_loadu_ps,
    _mm256_fmadd_ps,
    _mm256_add_ps,
    _mm256_storeu_ps
);
simd_tile!(
    tile_avx2_f64,
    f64,
    "avx2,fma",
    4,
    _mm256_setzero_pd,
    _mm256_loadu_pd,
    _mm256_fmadd_pd,
    _mm256_add_pd,
    _mm256_storeu_pd
);

macro_rules! impl_dot_tile {
    ($t:ty, $avx512:ident, $avx512_lanes:literal, $avx2:ident, $avx2_lanes:literal) => {
        impl DotTile for $t {
            fn lanes(isa: Isa) -> usize {
                match isa {
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx512 => $avx512_lanes,
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx2 => $avx2_lanes,
                    _ => 4,
                }
            }

            #[inline(always)]
            fn dot_tile<const R: usize, const J: usize>(
                isa: Isa,
                a: [&[Self]; R],
                b: [&[Self]; J],
                n: usize,
                c: &mut [Self],
                ldc: usize,
            ) {
                match isa {
                    // SAFETY: `isa` comes from `detect_isa`, so the CPU has these features.
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx512 => unsafe { $avx512::<R, J>(a, b, n, c, ldc) },
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx2 => unsafe { $avx2::<R, J>(a, b, n, c, ldc) },
                    _ => dot_tile_portable::<Self, R, J, 4>(a, b, n, c, ldc),
                }
            }
        }
    };
}

impl_dot_tile!(f32, tile_avx512_f32, 16, tile_avx2_f32, 8);
impl_dot_tile!(f64, tile_avx512_f64, 8, tile_avx2_f64, 4);
