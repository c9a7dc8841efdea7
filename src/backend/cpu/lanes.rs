//! Reductions that vectorize. A single floating-point running fold is a serial dependency the
//! compiler may not reorder, so it stays scalar. Here the slice is folded into [`LANES`]
//! independent accumulators, combined pairwise in a fixed order at the end: LLVM keeps them
//! in SIMD registers, and because the order is fixed the result depends only on the data,
//! never on the thread count.

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
    debug_assert_eq!(a.len(), b.len());
    if a.len() < LANES {
        // Rows shorter than the lanes (attention heads of 3 or 4 values): the lane
        // accumulators would stay at `init` and the result is the plain fold of the remainder
        // from `init`, so fold directly, without combining LANES idle accumulators.
        return a
            .iter()
            .zip(b)
            .fold(init, |s, (&x, &y)| combine(s, map(x, y)));
    }
    let mut acc = [init; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
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

/// `sum_i f(a[i], b[i])` accumulated in f64 (statistics of f32 data).
#[inline(always)]
pub(crate) fn sum_by<A: Copy, B: Copy>(a: &[A], b: &[B], f: impl Fn(A, B) -> f64) -> f64 {
    map_reduce2(a, b, 0.0, f, |s, v| s + v)
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
}
