"""Derives the coefficients of `erf_f32` (src/backend/cpu/float.rs) and checks them.

Usage: python3 benches/reference/erf_coefficients.py [--split 0.921875] [--small 5] [--large 6] [--exp2 5]
(float.rs uses `--large 5`.)
Needs numpy only (the reference erf is Python's `math.erf` / `math.erfc`, double precision).

The f32 erf has two branch-free pieces; both are evaluated and one is selected:
  |x| <  SPLIT:  erf(x) = x + x * (P(x^2) - 1)         P of degree `--small` in x^2
  |x| >= SPLIT:  erf(x) = sign(x) (1 - 2^U(t)),  t = |x| clamped to [SPLIT, 4],
                 U of degree `--large` in t, U(t) ~ log2(erfc(t)). erfc(4) = 1.5e-8 is below
                 half an ulp of 1, so the clamp gives exactly +-1 beyond 4.
  2^u:           n = round(u), f = u - n (exact), 2^f = E(f) of degree `--exp2` on
                 [-1/2, 1/2], times 2^n written into the exponent field.
P is fitted for relative error; U for the absolute error of erfc = 2^U (the result 1 - erfc
is rounded to f32 near 1, so only the absolute error of erfc shows), E for relative error.
Each is a near-minimax fit: least squares on a dense grid, reweighted by the error (Lawson's
algorithm), in double precision; the coefficients are then rounded to f32.

The script then replays the Rust evaluation in numpy float32 arithmetic, operation by
operation: plain products and sums round to f32 as numpy's do, and each Horner step (and the
small branch's `x * p + x`) is a fused multiply-add in Rust (`f32::mul_add`), replayed as
`a * b + c` in float64 (the product of two f32 is exact there) rounded once to f32 (a double
rounding that can differ from a true FMA only in the last bit of rare ties), and reports the worst relative error against math.erf with the
metric of the Rust tests (denominator max(|erf|, 1e-3)) over a dense grid of [0, 4] and every
f32 near the split. Paste the printed constants into float.rs.
"""
import argparse
import math

import numpy as np

p = argparse.ArgumentParser()
p.add_argument("--split", type=float, default=0.921875)
p.add_argument("--small", type=int, default=5, help="degree of P in x^2")
p.add_argument("--large", type=int, default=6, help="degree of U in t")
p.add_argument("--exp2", type=int, default=5, help="degree of E in f")
p.add_argument("--top", type=float, default=4.0, help="the clamp of t (erfc(4) < 2^-25)")
a = p.parse_args()

erf = np.vectorize(math.erf)
erfc = np.vectorize(math.erfc)


def lawson(basis, target, weight, iters=60):
    """Near-minimax coefficients c minimising max |weight * (basis @ c - target)|."""
    w_l = np.ones(len(target)) / len(target)
    for _ in range(iters):
        sw = np.sqrt(w_l) * weight
        c, *_ = np.linalg.lstsq(basis * sw[:, None], target * sw, rcond=None)
        err = np.abs(weight * (basis @ c - target))
        w_l = w_l * err
        w_l /= w_l.sum()
    return c, np.max(np.abs(weight * (basis @ c - target)))


def grid(lo, hi, n=6000):
    """Chebyshev-distributed points (dense near the ends, where minimax errors peak)."""
    k = np.arange(n)
    return lo + (hi - lo) * 0.5 * (1 - np.cos(np.pi * (k + 0.5) / n))


def powers(v, degree, step=1):
    return np.stack([v ** (step * i) for i in range(degree + 1)], axis=1)


# small |x|: erf(x) / x = P(x^2), relative error.
xs = grid(1e-4, a.split)
ys = erf(xs) / xs
cs, es = lawson(powers(xs, a.small, 2), ys, 1.0 / ys)
# Evaluated as x + x * (P(x^2) - 1): the last addition then rounds once, to the result, and
# the constant term is kept as 1 + (c0 - 1), more precisely than as one f32.
cs[0] -= 1.0

# large |x|: log2(erfc(t)) = U(t), weighted by erfc(t) ln 2 (absolute error of erfc).
ts = grid(a.split, a.top)
cl, el = lawson(powers(ts, a.large), np.log2(erfc(ts)), erfc(ts) * math.log(2))

# 2^f on [-1/2, 1/2], relative error.
fs = grid(-0.5, 0.5)
ce, ee = lawson(powers(fs, a.exp2), 2.0**fs, 2.0**-fs)

print(
    f"split {a.split}: fit errors P {es:.2e} (relative), U {el:.2e} (absolute, of erfc), "
    f"E {ee:.2e} (relative)"
)
cs32, cl32, ce32 = (c.astype(np.float32) for c in (cs, cl, ce))

# --- replay of the f32 evaluation -------------------------------------------------------------
f32 = np.float32


def fma(a, b, c):
    """`a.mul_add(b, c)` for f32 arrays: exact product and sum in float64, one rounding."""
    return (a.astype(np.float64) * b.astype(np.float64) + np.float64(c) if np.isscalar(c)
            else a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)).astype(f32)


def horner(c, v):
    acc = np.full_like(v, c[-1])
    for k in c[-2::-1]:
        acc = fma(acc, v, k)
    return acc


def exp2_f32(u):
    """`float.rs::exp2_of_negative`, step by step in float32 (u in [-126, 0])."""
    rnd = f32(12582912.0)  # 1.5 * 2^23
    t = (u + rnd).astype(f32)
    nf = (t - rnd).astype(f32)
    n = t.view(np.int32) - np.array([rnd], dtype=f32).view(np.int32)[0]
    scale = ((n + 127).astype(np.uint32) << 23).view(f32)
    return (horner(ce32, (u - nf).astype(f32)) * scale).astype(f32)


@np.errstate(invalid="ignore", over="ignore")  # the unselected branch may see inf - inf
def erf_f32(x):
    x = x.astype(f32)
    ax = np.abs(x)
    small = fma(x, horner(cs32, (x * x).astype(f32)), x)
    t = np.clip(ax, f32(a.split), f32(a.top))
    large = np.copysign((f32(1.0) - exp2_f32(horner(cl32, t))).astype(f32), x)
    return np.where(ax < f32(a.split), small, large)


def worst(xv):
    xv = xv.astype(f32)
    got = erf_f32(xv).astype(np.float64)
    want = erf(xv.astype(np.float64))
    rel = np.abs(got - want) / np.maximum(np.abs(want), 1e-3)
    i = np.argmax(rel)
    return rel[i], float(xv[i])


dense = np.linspace(0, 4, 2_000_001)
split_bits = np.array([a.split], dtype=f32).view(np.int32)[0]
near = (split_bits + np.arange(-20000, 20000, dtype=np.int32)).view(f32)
for name, pts in [("dense [0, 4]", dense), ("every f32 near the split", near)]:
    r, at = worst(pts)
    print(f"f32 replay, {name}: worst relative error {r:.3e} at x = {at}")
edges = erf_f32(np.array([0.0, 4.0, 10.0, np.inf, -np.inf, np.nan], dtype=f32))
print("erf_f32 at 0, 4, 10, inf, -inf, nan:", edges)


def rust(name, c):
    body = ", ".join(str(np.float32(v)) for v in c)  # shortest f32 decimals
    print(f"const {name}: [f32; {len(c)}] = [{body}];")


rust("SMALL_MINUS_X", cs32)
rust("LOG2_ERFC", cl32)
rust("EXP2", ce32)
