//! The Frechet distance between two Gaussians fitted to feature sets (Heusel et al. 2017's
//! FID, here on the shapes classifier's features rather than Inception's):
//! ```text
//! d^2 = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^{1/2} S2 S1^{1/2})^{1/2})
//! ```
//! Computed on the host in f64. Matrix square roots of the symmetric PSD matrices come from a
//! cyclic Jacobi eigendecomposition (eigenvalues below 0 from rounding are clipped to 0).
//!
//! With fewer pictures than feature dimensions (150 pictures of 512 features in the demo) the
//! trace term comes from the pictures instead: with `A`, `B` the centred feature rows,
//! `S1 = A^T A / (n1 - 1)` and `S2 = B^T B / (n2 - 1)`, the eigenvalues of
//! `S1^{1/2} S2 S1^{1/2}` are those of `S1 S2`, whose non-zero ones are those of
//! `C C^T / ((n1 - 1)(n2 - 1))` with `C = A B^T` (`XY` and `YX` share their non-zero
//! eigenvalues). So `tr (S1^{1/2} S2 S1^{1/2})^{1/2} = sum_i sqrt(eig_i(C C^T)) /
//! sqrt((n1 - 1)(n2 - 1))`: one `n1 x n1` eigendecomposition instead of two `d x d` ones (0.3 s
//! instead of 40 s for the demo's 150 x 512).

use crate::{Error, Result};

/// Mean `[D]` and covariance `[D x D]` (divided by `n - 1`) of `n` rows of width `d`.
pub fn mean_and_covariance(rows: &[f64], n: usize, d: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let (centred_rows, mean) = centred(rows, n, d)?;
    let mut cov = vec![0.0; d * d];
    for r in centred_rows.chunks(d) {
        for i in 0..d {
            for j in i..d {
                cov[i * d + j] += r[i] * r[j];
            }
        }
    }
    for i in 0..d {
        for j in i..d {
            let v = cov[i * d + j] / (n - 1) as f64;
            cov[i * d + j] = v;
            cov[j * d + i] = v;
        }
    }
    Ok((mean, cov))
}

/// Eigenvalues and eigenvectors (columns of the returned `d x d` matrix) of a symmetric matrix.
pub fn symmetric_eigen(a: &[f64], d: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = a.to_vec();
    let mut v = vec![0.0; d * d];
    for i in 0..d {
        v[i * d + i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..d)
            .flat_map(|i| (0..d).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * d + j] * a[i * d + j])
            .sum();
        let scale: f64 = (0..d).map(|i| a[i * d + i] * a[i * d + i]).sum::<f64>() + off;
        if off <= 1e-24 * scale.max(1e-300) {
            break;
        }
        for p in 0..d {
            for q in p + 1..d {
                let apq = a[p * d + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * d + q] - a[p * d + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..d {
                    let (akp, akq) = (a[k * d + p], a[k * d + q]);
                    a[k * d + p] = c * akp - s * akq;
                    a[k * d + q] = s * akp + c * akq;
                }
                for k in 0..d {
                    let (apk, aqk) = (a[p * d + k], a[q * d + k]);
                    a[p * d + k] = c * apk - s * aqk;
                    a[q * d + k] = s * apk + c * aqk;
                }
                for k in 0..d {
                    let (vkp, vkq) = (v[k * d + p], v[k * d + q]);
                    v[k * d + p] = c * vkp - s * vkq;
                    v[k * d + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..d).map(|i| a[i * d + i]).collect(), v)
}

/// The PSD square root `V diag(sqrt(max(l, 0))) V^T` of a symmetric matrix.
pub fn sqrtm_psd(a: &[f64], d: usize) -> Vec<f64> {
    let (l, v) = symmetric_eigen(a, d);
    let s: Vec<f64> = l.iter().map(|x| x.max(0.0).sqrt()).collect();
    let mut out = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..d {
            out[i * d + j] = (0..d).map(|k| v[i * d + k] * s[k] * v[j * d + k]).sum();
        }
    }
    out
}

fn matmul(a: &[f64], b: &[f64], d: usize) -> Vec<f64> {
    let mut out = vec![0.0; d * d];
    for i in 0..d {
        for k in 0..d {
            let aik = a[i * d + k];
            for j in 0..d {
                out[i * d + j] += aik * b[k * d + j];
            }
        }
    }
    out
}

/// The Frechet distance (squared, as FID reports it) between Gaussians fitted to two sets of
/// `d`-wide feature rows: from the pictures' Gram matrix when there are fewer pictures than
/// features, else from the covariances.
pub fn frechet_distance(a: &[f64], n_a: usize, b: &[f64], n_b: usize, d: usize) -> Result<f64> {
    if n_a.min(n_b) < d {
        frechet_distance_by_samples(a, n_a, b, n_b, d)
    } else {
        frechet_distance_by_covariance(a, n_a, b, n_b, d)
    }
}

/// The rows minus their mean, and the mean (an error for fewer than 2 rows of `d`).
fn centred(rows: &[f64], n: usize, d: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    if n < 2 || rows.len() != n * d {
        return Err(Error::msg(format!(
            "frechet: need at least 2 rows of {d} values, got {} values for {n} rows",
            rows.len()
        )));
    }
    let mut mean = vec![0.0; d];
    for r in rows.chunks(d) {
        for (m, v) in mean.iter_mut().zip(r) {
            *m += v / n as f64;
        }
    }
    let c = rows
        .chunks(d)
        .flat_map(|r| r.iter().zip(&mean).map(|(v, m)| v - m))
        .collect();
    Ok((c, mean))
}

/// [`frechet_distance`] through the `n_a x n_a` matrix `C C^T`, `C = A B^T` (module docs).
pub fn frechet_distance_by_samples(
    a: &[f64],
    n_a: usize,
    b: &[f64],
    n_b: usize,
    d: usize,
) -> Result<f64> {
    // The distance is symmetric: take the smaller set as `a` (the Gram matrix's side).
    if n_b < n_a {
        return frechet_distance_by_samples(b, n_b, a, n_a, d);
    }
    let (ca, m1) = centred(a, n_a, d)?;
    let (cb, m2) = centred(b, n_b, d)?;
    let dot = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(p, q)| p * q).sum::<f64>();
    // C = A B^T, n_a x n_b.
    let c: Vec<f64> = ca
        .chunks(d)
        .flat_map(|ra| cb.chunks(d).map(move |rb| dot(ra, rb)))
        .collect();
    // G = C C^T, n_a x n_a, symmetric PSD.
    let mut g = vec![0.0; n_a * n_a];
    for i in 0..n_a {
        for j in i..n_a {
            let v = dot(&c[i * n_b..(i + 1) * n_b], &c[j * n_b..(j + 1) * n_b]);
            g[i * n_a + j] = v;
            g[j * n_a + i] = v;
        }
    }
    let (eig, _) = symmetric_eigen(&g, n_a);
    let scale = (((n_a - 1) * (n_b - 1)) as f64).sqrt();
    let cross: f64 = eig.iter().map(|l| l.max(0.0).sqrt()).sum::<f64>() / scale;
    let tr1 = dot(&ca, &ca) / (n_a - 1) as f64;
    let tr2 = dot(&cb, &cb) / (n_b - 1) as f64;
    let mean_term: f64 = m1.iter().zip(&m2).map(|(x, y)| (x - y) * (x - y)).sum();
    Ok((mean_term + tr1 + tr2 - 2.0 * cross).max(0.0))
}

/// [`frechet_distance`] through the `d x d` covariances and their square roots.
pub fn frechet_distance_by_covariance(
    a: &[f64],
    n_a: usize,
    b: &[f64],
    n_b: usize,
    d: usize,
) -> Result<f64> {
    let (m1, s1) = mean_and_covariance(a, n_a, d)?;
    let (m2, s2) = mean_and_covariance(b, n_b, d)?;
    let r1 = sqrtm_psd(&s1, d);
    let mid = matmul(&matmul(&r1, &s2, d), &r1, d);
    // Symmetrize against rounding before the second square root.
    let mid: Vec<f64> = (0..d * d)
        .map(|k| 0.5 * (mid[k] + mid[(k % d) * d + k / d]))
        .collect();
    let cross = sqrtm_psd(&mid, d);
    let mean_term: f64 = m1.iter().zip(&m2).map(|(x, y)| (x - y) * (x - y)).sum();
    let trace: f64 = (0..d)
        .map(|i| s1[i * d + i] + s2[i * d + i] - 2.0 * cross[i * d + i])
        .sum();
    Ok((mean_term + trace).max(0.0))
}
