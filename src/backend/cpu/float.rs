//! The scalar math the generic CPU kernels need, for f32 and f64 (f64 serves gradient checks).

use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

pub trait Float:
    Copy
    + Send
    + Sync
    + 'static
    + PartialOrd
    + std::fmt::Debug
    + Default
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + std::iter::Sum
{
    const ZERO: Self;
    const ONE: Self;
    const NEG_INFINITY: Self;
    const INFINITY: Self;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    fn tanh(self) -> Self;
    fn abs(self) -> Self;
    fn powf(self, e: Self) -> Self;
    fn erf(self) -> Self;
    fn max(self, o: Self) -> Self;
    fn min(self, o: Self) -> Self;
    /// `self * a + b`. Deliberately *not* `f32::mul_add`: without FMA enabled at compile time
    /// (the portable x86-64 baseline) that is a call into software libm, ~20x slower. Fused
    /// multiply-adds come from the runtime-dispatched SIMD kernels instead.
    fn mul_add(self, a: Self, b: Self) -> Self;
    fn is_nan(self) -> bool;
}

macro_rules! impl_float {
    ($t:ty, $erf:path) => {
        impl Float for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const NEG_INFINITY: Self = <$t>::NEG_INFINITY;
            const INFINITY: Self = <$t>::INFINITY;
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline(always)]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            #[inline(always)]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            #[inline(always)]
            fn powf(self, e: Self) -> Self {
                <$t>::powf(self, e)
            }
            #[inline(always)]
            fn erf(self) -> Self {
                $erf(self)
            }
            #[inline(always)]
            fn max(self, o: Self) -> Self {
                <$t>::max(self, o)
            }
            #[inline(always)]
            fn min(self, o: Self) -> Self {
                <$t>::min(self, o)
            }
            #[inline(always)]
            fn mul_add(self, a: Self, b: Self) -> Self {
                self * a + b
            }
            #[inline(always)]
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
        }
    };
}
impl_float!(f32, erf_f32);
impl_float!(f64, erf_f64);

/// erf(x) for f32 at a fixed cost, evaluated in f64 and rounded: the Taylor series to degree
/// 25 for |x| < 1 (truncation < 1e-9), Abramowitz & Stegun 7.1.26 beyond (absolute error
/// < 1.5e-7 where |erf| > 0.84, so relative error < 2e-7).
pub fn erf_f32(x: f32) -> f32 {
    let xd = x as f64;
    let ax = xd.abs();
    if ax < 1.0 {
        // sum_n (-1)^n x^(2n+1) / (n! (2n+1)), n = 0..12, by Horner in x^2.
        const C: [f64; 13] = {
            let mut c = [0.0; 13];
            let (mut fact, mut n) = (1.0, 0);
            while n < 13 {
                if n > 0 {
                    fact *= n as f64;
                }
                let sign = if n % 2 == 0 { 1.0 } else { -1.0 };
                c[n] = sign / (fact * (2 * n + 1) as f64);
                n += 1;
            }
            c
        };
        let x2 = xd * xd;
        let p = C.iter().rev().fold(0.0, |acc, &c| acc * x2 + c);
        return (std::f64::consts::FRAC_2_SQRT_PI * xd * p) as f32;
    }
    let t = 1.0 / (1.0 + 0.327_591_1 * ax);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let y = 1.0 - poly * (-ax * ax).exp();
    y.copysign(xd) as f32
}

/// erf(x) to ~1e-15 relative accuracy: a Taylor series near zero and a continued fraction
/// for erfc in the tails (W. J. Cody's split points).
pub fn erf_f64(x: f64) -> f64 {
    let ax = x.abs();
    if ax < 2.5 {
        // erf(x) = 2/sqrt(pi) * sum_n (-1)^n x^(2n+1) / (n! (2n+1))
        let x2 = x * x;
        let mut term = x;
        let mut sum = x;
        let mut n = 0.0;
        loop {
            n += 1.0;
            term *= -x2 / n;
            let add = term / (2.0 * n + 1.0);
            sum += add;
            if add.abs() <= 1e-17 * sum.abs() || n > 60.0 {
                break;
            }
        }
        sum * std::f64::consts::FRAC_2_SQRT_PI
    } else {
        // erfc(x) = exp(-x^2)/sqrt(pi) * 1/(x + 1/2/(x + 1/(x + 3/2/(x + ...)))) (Lentz)
        let tiny = 1e-300;
        let mut f = ax;
        let mut c = ax;
        let mut d = 0.0;
        for k in 1..200 {
            let a = k as f64 * 0.5;
            d = ax + a * d;
            if d.abs() < tiny {
                d = tiny;
            }
            d = 1.0 / d;
            c = ax + a / c;
            if c.abs() < tiny {
                c = tiny;
            }
            let delta = c * d;
            f *= delta;
            if (delta - 1.0).abs() < 1e-16 {
                break;
            }
        }
        let erfc = (-ax * ax).exp() / (f * std::f64::consts::PI.sqrt());
        (1.0 - erfc).copysign(x)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn erf_f32_is_close_to_the_precise_erf() {
        let mut worst = 0f64;
        for i in -4000..=4000 {
            let x = i as f64 * 1e-3;
            let (a, b) = (super::erf_f32(x as f32) as f64, super::erf_f64(x));
            worst = worst.max((a - b).abs() / b.abs().max(1e-3));
        }
        assert!(worst < 2.5e-7, "worst relative error {worst}");
    }
    #[test]
    fn erf_matches_known_values() {
        // Values from Abramowitz & Stegun table 7.1 and mpmath.
        for (x, e) in [
            (0.0, 0.0),
            (0.5, 0.5204998778130465),
            (1.0, 0.8427007929497149),
            (2.0, 0.9953222650189527),
            (3.0, 0.9999779095030014),
            (-1.5, -0.9661051464753108),
        ] {
            assert!(
                (super::erf_f64(x) - e).abs() < 1e-14,
                "erf({x}) = {} vs {e}",
                super::erf_f64(x)
            );
        }
    }
}
