//! Reductions that vectorize. A single floating-point running fold is a serial dependency the
//! compiler may not reorder, so it stays scalar. Here the slice is folded into [`LANES`]
//! independent accumulators (or, for long rows, first into [`WIDE_LANES`] of them), combined
//! pairwise in a fixed order at the end: LLVM keeps them in SIMD registers, and because the
//! order is fixed the result depends only on the data and its length, never on the thread
//! count or the instruction set.

use super::Float;

/// Independent accumulators: two AVX2 registers of f32, or one AVX-512 register.
pub(crate) const LANES: usize = 8;

/// `combine` over `map(a[i], b[i])`, starting from `init` in every lane.
#[inline(always)]
pub(crate) fn map_reduce2<A: Copy, B: Copy, R: Copy>(
    a: &[A],
    b: &[B],
    init: R,
    map: impl Fn(A, B) -> R,
    combine: impl Fn(R, R) -> R,
) -> R {
    fold_lanes::<LANES, A, B, R>(a, b, init, map, combine)
}

/// Accumulators of [`max_reduce`] and the `_wide` sums: four AVX-512 registers of f32.
pub(crate) const WIDE_LANES: usize = 64;

/// The maximum of `a` by `combine` (a max in any of its NaN conventions), over
/// [`WIDE_LANES`] accumulators (a max gives the same value in any order, up to the sign of a
/// zero maximum, which no caller's `x - max` can tell apart): eight lanes over a 1024-wide
/// softmax row were a chain of 128 dependent vector maxes, waiting on latency; 64 cut it to 16.
#[inline(always)]
pub(crate) fn max_reduce<T: Copy>(a: &[T], init: T, combine: impl Fn(T, T) -> T) -> T {
    fold_lanes::<WIDE_LANES, T, T, T>(a, a, init, |x, _| x, combine)
}

/// `combine` over `map(a[i], b[i])` in lanes, in a fixed order that depends only on the
/// length: while at least `N` elements remain, lane `j < N` folds elements `j, j + N, ...`;
/// those lanes are combined pairwise down to [`LANES`], which then fold the rest in chunks of
/// `LANES` the same way; those are combined pairwise down to one, and the last `< LANES`
/// elements are folded in order. With `N == LANES` (or a slice shorter than `N`) this is the
/// plain eight-lane fold. (`N` a power of two, at least `LANES`.)
#[inline(always)]
fn fold_lanes<const N: usize, A: Copy, B: Copy, R: Copy>(
    a: &[A],
    b: &[B],
    init: R,
    map: impl Fn(A, B) -> R,
    combine: impl Fn(R, R) -> R,
) -> R {
    debug_assert_eq!(a.len(), b.len());
    debug_assert!(N.is_power_of_two() && N >= LANES);
    if a.len() < LANES {
        // Rows shorter than the lanes (attention heads of 3 or 4 values): the lane
        // accumulators would stay at `init` and the result is the plain fold of the remainder
        // from `init`, so fold directly, without combining idle accumulators.
        return a
            .iter()
            .zip(b)
            .fold(init, |s, (&x, &y)| combine(s, map(x, y)));
    }
    let mut acc = [init; LANES];
    let mut done = 0;
    if N > LANES && a.len() >= N {
        done = a.len() / N * N;
        // An index loop, not `chunks_exact(..).zip(..)`: over zipped chunks LLVM kept these
        // wide accumulators on the stack (a store and reload per add), not in registers.
        let mut wide = [init; N];
        for c in 0..done / N {
            let k = c * N;
            let (x, y) = (&a[k..k + N], &b[k..k + N]);
            for j in 0..N {
                wide[j] = combine(wide[j], map(x[j], y[j]));
            }
        }
        let mut w = N;
        while w > LANES {
            w /= 2;
            for j in 0..w {
                wide[j] = combine(wide[j], wide[j + w]);
            }
        }
        acc.copy_from_slice(&wide[..LANES]);
    }
    let (ca, cb) = (a[done..].chunks_exact(LANES), b[done..].chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for j in 0..LANES {
            acc[j] = combine(acc[j], map(x[j], y[j]));
        }
    }
    let mut w = LANES;
    while w > 1 {
        w /= 2;
        for j in 0..w {
            acc[j] = combine(acc[j], acc[j + w]);
        }
    }
    ra.iter()
        .zip(rb)
        .fold(acc[0], |s, (&x, &y)| combine(s, map(x, y)))
}

/// [`map_reduce2`] over [`WIDE_LANES`] accumulators while the slice is long enough: for the
/// long rows of softmax and the norms, where eight lanes were a chain of dependent vector
/// adds (128 of them over a 1024-wide row) waiting on latency. The sum's bits differ from
/// the eight-lane fold only for slices of at least `WIDE_LANES` elements.
#[inline(always)]
pub(crate) fn map_reduce2_wide<A: Copy, B: Copy, R: Copy>(
    a: &[A],
    b: &[B],
    init: R,
    map: impl Fn(A, B) -> R,
    combine: impl Fn(R, R) -> R,
) -> R {
    fold_lanes::<WIDE_LANES, A, B, R>(a, b, init, map, combine)
}

/// `sum_i x[i]` over [`WIDE_LANES`] accumulators (see [`map_reduce2_wide`]).
#[inline(always)]
pub(crate) fn sum_wide<T: Float>(x: &[T]) -> T {
    map_reduce2_wide(x, x, T::ZERO, |v, _| v, |s, v| s + v)
}

/// `sum_i f(a[i], b[i])` in f64 over [`WIDE_LANES`] accumulators (see [`map_reduce2_wide`]).
#[inline(always)]
pub(crate) fn sum_by_wide<A: Copy, B: Copy>(a: &[A], b: &[B], f: impl Fn(A, B) -> f64) -> f64 {
    map_reduce2_wide(a, b, 0.0, f, |s, v| s + v)
}

/// `combine` over `map(a[i])`.
#[inline(always)]
pub(crate) fn map_reduce<A: Copy, R: Copy>(
    a: &[A],
    init: R,
    map: impl Fn(A) -> R,
    combine: impl Fn(R, R) -> R,
) -> R {
    map_reduce2(a, a, init, |x, _| map(x), combine)
}

/// `sum_i a[i] * b[i]`
#[inline(always)]
pub(crate) fn dot<T: Float>(a: &[T], b: &[T]) -> T {
    map_reduce2(a, b, T::ZERO, |x, y| x * y, |s, v| s + v)
}

/// `sum_i x[i]`
#[inline(always)]
pub(crate) fn sum<T: Float>(x: &[T]) -> T {
    map_reduce(x, T::ZERO, |v| v, |s, v| s + v)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn lane_reductions_match_plain_folds() {
        for n in [0usize, 1, 7, 8, 9, 63, 64, 100] {
            let a: Vec<f64> = (0..n).map(|i| (i as f64 * 0.37).sin()).collect();
            let b: Vec<f64> = (0..n).map(|i| (i as f64 * 0.11).cos()).collect();
            let plain_dot: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - plain_dot).abs() < 1e-12, "dot n={n}");
            assert!((sum(&a) - a.iter().sum::<f64>()).abs() < 1e-12, "sum n={n}");
            let max = map_reduce(&a, f64::NEG_INFINITY, |v| v, f64::max);
            assert_eq!(
                max,
                a.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
                "max n={n}"
            );
        }
    }

    #[test]
    fn wide_sums_keep_the_eight_lane_bits_below_wide_lanes_and_stay_close_above() {
        for n in [
            0usize, 1, 7, 8, 9, 63, 64, 65, 71, 127, 128, 200, 1024, 1031,
        ] {
            let a: Vec<f32> = (0..n)
                .map(|i| (i as f32 * 0.37).sin() * 1e3 + 0.5)
                .collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let exact: f64 = a.iter().map(|&v| v as f64).sum();
            let wide = sum_wide(&a);
            let narrow = map_reduce(&a, 0.0f32, |v| v, |s, v| s + v);
            if n < WIDE_LANES {
                assert_eq!(wide.to_bits(), narrow.to_bits(), "n={n}");
            }
            let tol = 1e-6 * a.iter().map(|v| v.abs() as f64).sum::<f64>().max(1.0);
            assert!(
                (wide as f64 - exact).abs() <= tol,
                "n={n}: {wide} vs {exact}"
            );
            let exact_dot: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
            let wide_dot = sum_by_wide(&a, &b, |x, y| x as f64 * y as f64);
            assert!((wide_dot - exact_dot).abs() <= 1e-9 * tol, "n={n}");
        }
    }

    #[test]
    fn the_wide_max_is_the_plain_max() {
        let gt = |m: f32, v: f32| if v > m { v } else { m };
        let nan_wins = |m: f32, v: f32| if v > m || v.is_nan() { v } else { m };
        for n in [0usize, 1, 63, 64, 65, 127, 200, 1024, 1031] {
            for at in [0, n / 3, n.saturating_sub(1)] {
                // The maximum at `at`, in a whole chunk of lanes or in the remainder.
                let mut a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.71).sin()).collect();
                if n > 0 {
                    a[at] = 3.0;
                }
                let plain = a.iter().cloned().fold(f32::NEG_INFINITY, gt);
                assert_eq!(
                    max_reduce(&a, f32::NEG_INFINITY, gt),
                    plain,
                    "n={n} at={at}"
                );
                if n > 0 {
                    a[at] = f32::NAN;
                    assert!(
                        max_reduce(&a, f32::NEG_INFINITY, nan_wins).is_nan(),
                        "n={n}"
                    );
                    assert_eq!(
                        max_reduce(&a, f32::NEG_INFINITY, gt),
                        a.iter().cloned().fold(f32::NEG_INFINITY, gt),
                        "NaN skipped, n={n} at={at}"
                    );
                }
            }
        }
    }
}
