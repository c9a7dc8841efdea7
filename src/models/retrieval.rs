//! Nearest-neighbour retrieval in feature space: the answer to a prompt is the known picture
//! whose feature vector is closest to the one the text-to-feature model predicted.
//!
//! Euclidean distance by default (the model is trained with MSE, i.e. to be close in that
//! metric); cosine similarity as an option (ignores the vector's length).

use crate::{Error, Result, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    Euclidean,
    Cosine,
}

impl std::str::FromStr for Metric {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "euclidean" | "l2" => Ok(Metric::Euclidean),
            "cosine" => Ok(Metric::Cosine),
            other => Err(Error::msg(format!(
                "unknown metric {other:?} (expected euclidean or cosine)"
            ))),
        }
    }
}

/// Scores `[Q, N]` where larger is nearer: `-|q - g|^2` or `cos(q, g)`.
pub fn scores(queries: &Tensor, gallery: &Tensor, metric: Metric) -> Result<Tensor> {
    if queries.rank() != 2 || gallery.rank() != 2 || queries.dims()[1] != gallery.dims()[1] {
        return Err(Error::shape(
            "retrieval",
            "expected queries [Q, F] and gallery [N, F]",
            &[queries.shape(), gallery.shape()],
        ));
    }
    crate::no_grad(|| match metric {
        Metric::Euclidean => {
            // -|q|^2 + 2 q.g - |g|^2, one GEMM instead of Q*N difference vectors.
            let qq = queries.sqr()?.sum_keepdim(1)?; // [Q, 1]
            let gg = gallery.sqr()?.sum_keepdim(1)?.t()?; // [1, N]
            queries
                .matmul(&gallery.t()?)?
                .mul_scalar(2.0)?
                .sub(&qq)?
                .sub(&gg)
        }
        Metric::Cosine => {
            let q = queries.l2_normalize(1, 1e-12)?;
            let g = gallery.l2_normalize(1, 1e-12)?;
            q.matmul(&g.t()?)
        }
    })
}

/// Index of the nearest gallery row for each query, and its score.
pub fn nearest(queries: &Tensor, gallery: &Tensor, metric: Metric) -> Result<Vec<(usize, f64)>> {
    if gallery.dims().first() == Some(&0) {
        return Err(Error::msg("retrieval: the gallery is empty"));
    }
    let s = scores(queries, gallery, metric)?;
    let n = s.dims()[1];
    let v = s.to_vec_f64()?;
    Ok(v.chunks(n)
        .map(|row| {
            row.iter().enumerate().fold(
                (0, f64::NEG_INFINITY),
                |b, (i, &x)| if x > b.1 { (i, x) } else { b },
            )
        })
        .collect())
}
