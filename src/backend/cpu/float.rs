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
    /// `e^x` from fused multiply-adds, for the softmaxes (the attention's and the softmax op's,
    /// where `x = s - max <= 0`): about half the vector operations of [`Float::exp`]. Meant for
    /// code compiled with FMA; elsewhere its multiply-adds are libm calls (slower, same bits).
    /// See [`exp_fused_f32`].
    fn exp_fused(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    /// f32: [`tanh_f32`] (branch-free, so loops vectorize); f64: libm's.
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
    /// `self * a + b` with one rounding (a hardware FMA). Meant for code compiled with the
    /// `fma` target feature (the runtime-dispatched kernels): elsewhere it is a libm call
    /// (the attention's portable loops on the baseline instruction set take that cost to
    /// keep the same bits as the AVX-512 tile).
    fn fused_mul_add(self, a: Self, b: Self) -> Self;
    fn is_nan(self) -> bool;
}

macro_rules! impl_float {
    ($t:ty, $exp:path, $exp_fused:path, $erf:path, $tanh:path) => {
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
                $exp(self)
            }
            #[inline(always)]
            fn exp_fused(self) -> Self {
                $exp_fused(self)
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
                $tanh(self)
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
            fn fused_mul_add(self, a: Self, b: Self) -> Self {
                <$t>::mul_add(self, a, b)
            }
            #[inline(always)]
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
        }
    };
}
impl_float!(f32, exp_f32, exp_fused_f32, erf_f32, tanh_f32);
impl_float!(f64, f64::exp, f64::exp, erf_f64, f64::tanh);

/// e^x for f32 as branch-free arithmetic, so loops calling it auto-vectorize (libm `expf` is
/// an opaque call per element). Within 2 ulp of the correctly rounded result on [-87.3, 88.7].
///
/// Cody-Waite range reduction: `n = round(x / ln 2)`, `r = x - n ln2_hi - n ln2_lo`, so
/// `|r| <= ln2 / 2` and `e^x = 2^n e^r`. `e^r` is the degree-7 Taylor polynomial (truncation
/// < 2e-9 relative on that interval, below f32 rounding), by Horner. `2^n` is built by writing
/// `n + 127` into the exponent field; it is applied as two factors `2^(n/2)`-ish halves
/// (`n1 = n >> 1`, `n2 = n - n1`) so both stay normal over the whole clamped range.
/// Overflow and underflow come from clamping `x` to `[-104, 89]` (giving +inf and 0 through
/// the scaling); NaN propagates through the arithmetic; -inf clamps to -104 and gives 0.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n * LN2_HI is exact for |n| < 2^9 (LN2_HI has 9 trailing zero bits).
    const LN2_HI: f32 = 355.0 / 512.0; // 0.693359375
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer (|v| < 2^22).
    const ROUND: f32 = 12_582_912.0;
    // `clamp` keeps a NaN (compares are false), which then propagates through the arithmetic.
    let xc = x.clamp(-104.0, 89.0);
    let t = xc * LOG2_E + ROUND;
    let nf = t - ROUND;
    // n itself sits in the low mantissa bits of `t` (an integer op, unlike a saturating cast).
    let n = t.to_bits() as i32 - ROUND.to_bits() as i32;
    let r = (xc - nf * LN2_HI) - nf * LN2_LO;
    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    let n1 = n >> 1;
    let n2 = n - n1;
    let s1 = f32::from_bits(((n1 + 127) as u32) << 23);
    let s2 = f32::from_bits(((n2 + 127) as u32) << 23);
    p * s1 * s2
}

/// e^x for f32 from fused multiply-adds, branch-free: the softmaxes' `exp(s - max)`.
/// Within 2 ulp of the correctly rounded result on [-87, 88]; 0 below -87 (where e^x is under
/// 1.7e-38: beside the row maximum's p = 1 it is nothing); +inf from 88.38 up (where `n` would
/// be 128, a little short of f32's overflow at 88.72); a NaN stays NaN.
///
/// The same reduction as [`exp_f32`], `e^x = 2^n e^r`, `n = round(x / ln 2)`, but each step
/// one rounding: `x log2 e + 1.5 * 2^23` is one FMA (n sits in its low mantissa bits), `r` is
/// two (`x - n ln2_hi - n ln2_lo`), the degree-7 polynomial seven (Horner), and `2^n` is one
/// factor, its exponent field written directly (`n + 127` is in 1..=255 on the clamped range).
/// With AVX-512 that is 17 vector operations per 16 values against [`exp_f32`]'s 36 (its
/// multiply-adds are two roundings each, so two instructions, twice the latency).
#[inline(always)]
pub fn exp_fused_f32(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 355.0 / 512.0;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0;
    // `c < x` false for a NaN `x`, which is kept (x86's `min` with the constant first).
    let xc = if 88.75 < x { 88.75 } else { x };
    let t = xc.mul_add(LOG2_E, ROUND);
    let nf = t - ROUND;
    let r = (-nf).mul_add(LN2_HI, xc);
    let r = (-nf).mul_add(LN2_LO, r);
    // Typed: with an untyped literal, `p.mul_add` resolved to `Float::mul_add` (a product and
    // a sum, two roundings, 7 more vector operations) instead of f32's fused one.
    let mut p: f32 = 1.0 / 5040.0;
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = p.mul_add(r, c);
    }
    // (n mod 2^9) << 23 is the low bits of t shifted (1.5 * 2^23 has none there), and adding
    // 127 << 23 wraps it to (n + 127) << 23 for negative n as well.
    let scale = f32::from_bits((t.to_bits() << 23).wrapping_add(127 << 23));
    if xc < -87.0 {
        0.0
    } else {
        p * scale
    }
}

/// tanh for f32 as branch-free arithmetic, so loops calling it vectorize (libm `tanhf` is an
/// opaque call per element: 10 ns per element, 25x GELU, on the Ice Lake VM). Within 3 ulp
/// of the correctly rounded result.
///
/// Two pieces, both evaluated, one selected per element:
/// - `|x| < 0.625`: `x + x^3 P(x^2)`, P of degree 4 fitted for relative error
///   (`benches/reference/tanh_coefficients.py`, which replays this evaluation in float32:
///   0.89 ulp at worst);
/// - otherwise `sign(x) (1 - 2 / (e^(2a) + 1))` with `a = |x|` clamped to 10 (tanh rounds to
///   1 from 9.01 up) and [`exp_fused_f32`] (1.5 ulp with a correctly rounded exp, 3 with
///   `exp_fused_f32`'s 2; its 17 vector operations per 16 values against [`exp_f32`]'s 36 made
///   the 128 MiB tanh 1.35x faster, docs/PERF.md, session 21).
///
/// Plain products and sums outside the exp, whose multiply-adds are fused (one rounding on
/// every instruction set), so every instruction set computes the same bits. NaN propagates
/// (the clamp keeps it); +-inf give +-1; -0 gives -0.
#[inline(always)]
pub fn tanh_f32(x: f32) -> f32 {
    const SPLIT: f32 = 0.625;
    const C3: f32 = -0.333_332_87;
    const C5: f32 = 0.133_315_13;
    const C7: f32 = -0.053_744_648;
    const C9: f32 = 0.020_653_095;
    const C11: f32 = -0.005_718_927;
    let z = x * x;
    let p = C11;
    let p = p * z + C9;
    let p = p * z + C7;
    let p = p * z + C5;
    let p = p * z + C3;
    let small = x + x * z * p;
    let a = x.abs();
    // `10 < a` is false for a NaN, which is kept.
    let a = if 10.0 < a { 10.0 } else { a };
    let large = 1.0 - 2.0 / (exp_fused_f32(2.0 * a) + 1.0);
    // Both pieces have x's sign; `copysign` also turns `small`'s +0 at x = -0 into -0.
    let r = if a < SPLIT { small } else { large };
    r.copysign(x)
}

/// erf(x) for f32, branch-free f32 arithmetic (no f64, no divide) so that loops over it
/// vectorize: both pieces below are computed and one is selected. About 35 vector operations
/// per 16 values with AVX-512.
///
/// - `|x| < 0.921875`: `erf(x) = x + x (P(x^2) - 1)`, P of degree 5 in `x^2` (near-minimax,
///   relative error 1.6e-8). Written as a correction added to `x` so that the last addition
///   rounds once, to the result.
/// - beyond: `erf(x) = sign(x) (1 - 2^U(t))` with `t = |x|` clamped to `[0.921875, 4]`, U of
///   degree 5 approximating `log2 erfc(t)` (absolute error of `erfc = 2^U` 2.3e-8), and
///   [`exp2_normal`] for the power. `erfc(4) = 1.5e-8` is below half an ulp of 1, so the
///   clamp gives exactly +-1 beyond 4.
///
/// Coefficients from `benches/reference/erf_coefficients.py --large 5`, which also replays
/// this evaluation in float32 and finds a worst relative error of 1.2e-7 (about 2 ulp) on
/// [-4, 4]. Each Horner step (and `x p + x`) is one fused multiply-add (`f32::mul_add`: a
/// hardware FMA inside `simd::vectorized` on AVX2 and AVX-512, libm's `fmaf` on the baseline,
/// one rounding either way), so the result is bit-identical whatever instruction set runs the
/// loop. Fused steps halve the operations and the dependent chain of the polynomials: GELU
/// over [32768, 1024] on one core 40.3 -> 19.5 ms (docs/PERF.md, session 13), where the
/// unfused version was compute-bound at half the copy bandwidth. NaN propagates (the clamp
/// keeps it, and so does the arithmetic).
#[inline(always)]
pub fn erf_f32(x: f32) -> f32 {
    const SPLIT: f32 = 0.921875;
    const SMALL_MINUS_X: [f32; 6] = [
        0.12837915,
        -0.37612495,
        0.112818174,
        -0.026766645,
        0.004993213,
        -0.0005990992,
    ];
    const LOG2_ERFC: [f32; 6] = [
        -0.0029354314,
        -1.6152868,
        -0.9399642,
        -0.13068081,
        0.02222385,
        -0.0017731659,
    ];
    let ax = x.abs();
    let small = x.mul_add(horner_fused(&SMALL_MINUS_X, x * x), x);
    let t = ax.clamp(SPLIT, 4.0);
    let large = (1.0 - exp2_normal(horner_fused(&LOG2_ERFC, t))).copysign(x);
    if ax < SPLIT {
        small
    } else {
        large
    }
}

/// 2^u for u in [-126, 127], where the result is a normal f32 (NaN propagates): `n = round(u)`,
/// `f = u - n` (exact, in [-1/2, 1/2]), `2^f` by a degree-5 near-minimax polynomial (relative
/// error 7.5e-8, from `benches/reference/erf_coefficients.py`) times `2^n` written into the
/// exponent field. Cheaper than [`exp_f32`] (no ln 2 reduction, no clamp, one scale factor)
/// for callers whose argument is in range by construction.
#[inline(always)]
fn exp2_normal(u: f32) -> f32 {
    const EXP2: [f32; 6] = [
        1.0000001,
        0.69314694,
        0.2402212,
        0.055507135,
        0.009675541,
        0.0013276467,
    ];
    // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer (|u| < 2^22).
    const ROUND: f32 = 12_582_912.0;
    let t = u + ROUND;
    let nf = t - ROUND;
    let n = t.to_bits() as i32 - ROUND.to_bits() as i32;
    horner_fused(&EXP2, u - nf) * f32::from_bits(((n + 127) as u32) << 23)
}

/// `c[0] + c[1] v + c[2] v^2 + ...` by Horner's rule, one fused multiply-add per step.
#[inline(always)]
fn horner_fused<const N: usize>(c: &[f32; N], v: f32) -> f32 {
    let mut acc = c[N - 1];
    for k in (0..N - 1).rev() {
        acc = acc.mul_add(v, c[k]);
    }
    acc
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
    /// Distance in units in the last place between two finite f32 (or subnormals).
    fn ulps(a: f32, b: f32) -> u32 {
        let key = |v: f32| {
            let i = v.to_bits() as i32;
            if i < 0 {
                i32::MIN - i
            } else {
                i
            }
        };
        key(a).abs_diff(key(b))
    }

    /// The largest distance in ulp of `exp(x)` from the correctly rounded e^x, and where: over a
    /// sweep of [-87, 88] (2^22 points), every f32 from `below` steps under each edge to 4000
    /// steps past it, and the `extra` points.
    fn worst_exp_ulps(
        exp: impl Fn(f32) -> f32,
        edges: &[(f32, usize)],
        extra: &[f32],
    ) -> (u32, f32) {
        let mut worst = (0, 0f32);
        let mut check = |x: f32| {
            let d = ulps(exp(x), (x as f64).exp() as f32);
            if d > worst.0 {
                worst = (d, x);
            }
        };
        let n = 1 << 22;
        for i in 0..=n {
            check(-87.0 + 175.0 * (i as f32 / n as f32));
        }
        for &(edge, below) in edges {
            let mut v = edge;
            for _ in 0..below {
                v = v.next_down();
            }
            for _ in 0..4000 {
                check(v);
                v = v.next_up();
            }
        }
        extra.iter().for_each(|&x| check(x));
        worst
    }

    #[test]
    fn exp_f32_is_within_2_ulp_of_the_correctly_rounded_exp() {
        // Every f32 near its underflow and overflow edges and zero, and a few points.
        let edges = [(-87.33655f32, 2000), (0.0, 2000), (88.72283, 2000)];
        let extra = [
            1e-30f32, -1e-30, 1e-7, -1e-7, 0.5, -0.5, 1.0, -1.0, 10.0, -10.0,
        ];
        let worst = worst_exp_ulps(super::exp_f32, &edges, &extra);
        assert!(worst.0 <= 2, "{} ulp at x = {}", worst.0, worst.1);
    }

    #[test]
    fn exp_fused_f32_is_within_2_ulp_of_the_correctly_rounded_exp() {
        // Every f32 around -87 (from above, where it returns 0 below), zero and 88.
        let edges = [(-87.0f32, 0), (0.0, 2000), (88.0, 2000)];
        let worst = worst_exp_ulps(super::exp_fused_f32, &edges, &[]);
        assert!(worst.0 <= 2, "{} ulp at x = {}", worst.0, worst.1);
    }

    #[test]
    fn exp_fused_f32_special_values() {
        use super::exp_fused_f32 as e;
        assert_eq!(e(0.0), 1.0);
        assert_eq!(e(-0.0), 1.0);
        for x in [88.4f32, 88.75, 89.0, 1000.0, f32::MAX, f32::INFINITY] {
            assert_eq!(e(x), f32::INFINITY, "{x}");
        }
        // Below -87 exactly 0: a masked score (-inf) must give p = 0.
        for x in [-87.01f32, -100.0, -1000.0, -f32::MAX, f32::NEG_INFINITY] {
            assert_eq!(e(x), 0.0, "{x}");
        }
        assert!(e(f32::NAN).is_nan());
        assert!(e(-f32::NAN).is_nan());
    }

    #[test]
    fn exp_f32_special_values() {
        use super::exp_f32;
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp_f32(89.0), f32::INFINITY);
        assert_eq!(exp_f32(1000.0), f32::INFINITY);
        assert_eq!(exp_f32(f32::MAX), f32::INFINITY);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-1000.0), 0.0);
        assert_eq!(exp_f32(-f32::MAX), 0.0);
        assert!(exp_f32(f32::NAN).is_nan());
        // Subnormal results stay close to the true value.
        for x in [-88.0f32, -95.0, -100.0, -103.0] {
            let (got, want) = (exp_f32(x) as f64, (x as f64).exp());
            assert!(
                (got - want).abs() <= 2.0 * f32::from_bits(1) as f64,
                "{x}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn tanh_f32_is_within_3_ulp_of_the_correctly_rounded_tanh() {
        let mut worst = (0u32, 0f32);
        let mut check = |x: f32| {
            let d = ulps(super::tanh_f32(x), (x as f64).tanh() as f32);
            if d > worst.0 {
                worst = (d, x);
            }
        };
        // A sweep of [-10, 10], every f32 around the split and zero, tiny values.
        let n = 1 << 21;
        for i in 0..=n {
            check(-10.0 + 20.0 * (i as f32 / n as f32));
        }
        for edge in [0.625f32, -0.625, 0.0, 9.01, 10.0] {
            let mut v = edge;
            for _ in 0..2000 {
                v = v.next_down();
            }
            for _ in 0..4000 {
                check(v);
                v = v.next_up();
            }
        }
        [1e-30f32, -1e-30, 1e-7, 3.0, 20.0, -20.0]
            .iter()
            .for_each(|&x| check(x));
        assert!(worst.0 <= 3, "{} ulp at x = {}", worst.0, worst.1);
    }

    #[test]
    fn tanh_f32_special_values() {
        use super::tanh_f32 as t;
        assert_eq!(t(0.0).to_bits(), 0.0f32.to_bits());
        assert_eq!(t(-0.0).to_bits(), (-0.0f32).to_bits());
        assert_eq!(t(f32::INFINITY), 1.0);
        assert_eq!(t(f32::NEG_INFINITY), -1.0);
        assert_eq!(t(50.0), 1.0);
        assert!(t(f32::NAN).is_nan());
    }

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
    /// Denser than the test above: 2^22 points over [-10, 10] (tails included) and every f32
    /// within 20000 ulp of the two seams (the branch split at 0.921875 and the clamp at 4), of
    /// zero, and of 1e-30, held to the accuracy the coefficient script reports (1.3e-7 worst)
    /// with a margin; erf must also be exactly odd.
    #[test]
    fn erf_f32_dense_sweep_and_seams() {
        use super::{erf_f32, erf_f64};
        let mut worst = (0f64, 0f32);
        let mut check = |x: f32| {
            let (got, want) = (erf_f32(x) as f64, erf_f64(x as f64));
            let rel = (got - want).abs() / want.abs().max(1e-3);
            if rel > worst.0 {
                worst = (rel, x);
            }
            assert_eq!(erf_f32(-x).to_bits(), (-erf_f32(x)).to_bits(), "odd at {x}");
        };
        let n = 1 << 22;
        for i in 0..=n {
            check(-10.0 + 20.0 * (i as f32 / n as f32));
        }
        for seam in [0.921875f32, 4.0, 1e-30] {
            let mut v = f32::from_bits(seam.to_bits() - 20_000);
            for _ in 0..40_000 {
                check(v);
                v = f32::from_bits(v.to_bits() + 1);
            }
        }
        for i in 0..20_000u32 {
            check(f32::from_bits(i)); // zero and the smallest subnormals
        }
        assert!(
            worst.0 < 2e-7,
            "worst relative error {} at {}",
            worst.0,
            worst.1
        );
    }
    #[test]
    fn exp2_normal_is_within_3_ulp_over_its_range() {
        let mut worst = (0, 0f32);
        let n = 1 << 20;
        for i in 0..=n {
            let u = -126.0 + 253.0 * (i as f32 / n as f32);
            let (got, want) = (super::exp2_normal(u), (u as f64).exp2() as f32);
            let d = ulps(got, want);
            if d > worst.0 {
                worst = (d, u);
            }
        }
        assert!(worst.0 <= 3, "{} ulp at u = {}", worst.0, worst.1);
        assert!(super::exp2_normal(f32::NAN).is_nan());
    }
    #[test]
    fn erf_f32_edges() {
        use super::erf_f32;
        assert_eq!(erf_f32(0.0), 0.0);
        assert_eq!(erf_f32(10.0), 1.0);
        assert_eq!(erf_f32(-10.0), -1.0);
        assert_eq!(erf_f32(f32::INFINITY), 1.0);
        assert_eq!(erf_f32(f32::NEG_INFINITY), -1.0);
        assert!(erf_f32(f32::NAN).is_nan());
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
