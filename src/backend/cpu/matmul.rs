//! CPU matmul. The live version is the straightforward one: per batch, the right operand is
//! made contiguous `[K, N]`, and each output row is accumulated as `sum_k a[i,k] * b[k,:]`
//! (a row-times-panel loop the compiler vectorizes), rows in parallel. Correct for any
//! strides; the packed, cache-blocked SIMD GEMM replaces it (CPU-speed issue).

use super::{gather_strided, CpuData, CpuStorage, Float};
use crate::backend::matmul::MatmulBackend;
use crate::tensor::{Layout, Shape};
use crate::{Error, Result};
use rayon::prelude::*;

fn matmul_typed<T: Float>(a: &[T], la: &Layout, b: &[T], lb: &Layout) -> Vec<T> {
    let (bsz, m, k) = (la.dims()[0], la.dims()[1], la.dims()[2]);
    let n = lb.dims()[2];
    let (sab, sam, sak) = (la.strides()[0], la.strides()[1], la.strides()[2]);
    let mut out = vec![T::ZERO; bsz * m * n];
    if n == 0 || m == 0 {
        return out;
    }
    for (bi, out_b) in out.chunks_mut(m * n).enumerate() {
        let lb_b = Layout::new(
            Shape::new(vec![k, n]),
            lb.strides()[1..].to_vec(),
            lb.offset() + bi * lb.strides()[0],
        );
        let bpanel = gather_strided(b, &lb_b);
        let a_off = la.offset() + bi * sab;
        out_b.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
            let ar = a_off + i * sam;
            for kk in 0..k {
                let av = a[ar + kk * sak];
                let br = &bpanel[kk * n..(kk + 1) * n];
                for (o, &bv) in row.iter_mut().zip(br) {
                    *o = av.mul_add(bv, *o);
                }
            }
        });
    }
    out
}

impl MatmulBackend for CpuStorage {
    fn matmul(&self, lhs_layout: &Layout, rhs: &Self, rhs_layout: &Layout) -> Result<Self> {
        let data = match (self.data(), rhs.data()) {
            (CpuData::F32(a), CpuData::F32(b)) => {
                CpuData::F32(matmul_typed(a, lhs_layout, b, rhs_layout))
            }
            (CpuData::F64(a), CpuData::F64(b)) => {
                CpuData::F64(matmul_typed(a, lhs_layout, b, rhs_layout))
            }
            (d, _) => {
                return Err(Error::UnsupportedDType {
                    op: "matmul",
                    dtype: d.dtype_of(),
                    expected: "f32 or f64",
                })
            }
        };
        Ok(CpuStorage::new(data))
    }
}
