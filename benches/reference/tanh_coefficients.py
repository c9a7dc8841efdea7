"""Derives the coefficients of `tanh_f32` (src/backend/cpu/float.rs) and checks them.

Usage: python3 benches/reference/tanh_coefficients.py [--split 0.625] [--degree 5]
Needs numpy only (the reference tanh is numpy's float64 tanh).

The f32 tanh has two branch-free pieces; both are evaluated and one is selected:
  |x| <  SPLIT:  tanh(x) = x + x^3 P(x^2)               P of degree `--degree` - 1 in x^2
  |x| >= SPLIT:  tanh(x) = sign(x) (1 - 2 / (e^(2a) + 1)),  a = |x| clamped to 10
                 (tanh rounds to 1 in f32 from 9.01 up, so the clamp gives exactly +-1 beyond).
P is fitted for the relative error of tanh by weighted least squares on Chebyshev nodes of
[0, SPLIT] in double precision, then rounded to f32. The script replays the Rust evaluation
in float32 (plain products and sums, as Rust computes them: no fused multiply-adds) and
prints the worst error in ulp on each piece (the large piece with numpy's float32 exp, which
is within an ulp; `exp_f32` is within 2, which the Rust test covers). Paste the printed
constants into float.rs.
"""
import argparse

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--split", type=float, default=0.625)
    ap.add_argument("--degree", type=int, default=5)
    args = ap.parse_args()
    split, deg = args.split, args.degree

    x = (np.cos(np.linspace(0, np.pi, 8000)) * 0.5 + 0.5) * split
    x = x[x > 1e-4]
    z = x * x
    target = (np.tanh(x) - x) / x**3
    weight = x**3 / np.tanh(x)
    a = np.stack([z**k for k in range(deg)], 1)
    c, *_ = np.linalg.lstsq(a * weight[:, None], target * weight, rcond=None)
    c32 = [np.float32(v) for v in c]

    def ulps(got, x64):
        ref = np.tanh(x64)
        return np.abs(got.astype(np.float64) - ref) / np.spacing(ref.astype(np.float32))

    xs = np.linspace(1e-6, split, 400001).astype(np.float32)
    zz = xs * xs
    p = c32[-1]
    for k in range(deg - 2, -1, -1):
        p = p * zz + c32[k]
    small = xs + xs * zz * p
    print(f"small piece [0, {split}): worst {ulps(small, xs.astype(np.float64)).max():.2f} ulp")

    xl = np.linspace(split, 12.0, 400001).astype(np.float32)
    al = np.minimum(xl, np.float32(10.0))
    e = np.exp(np.float32(2.0) * al)
    large = np.float32(1.0) - np.float32(2.0) / (e + np.float32(1.0))
    print(f"large piece [{split}, 12]: worst {ulps(large, xl.astype(np.float64)).max():.2f} ulp")
    for k, v in enumerate(c32):
        print(f"    const C{2 * k + 3}: f32 = {float(v)!r};")


if __name__ == "__main__":
    main()
