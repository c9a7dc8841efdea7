//! A view onto storage: shape, strides (in elements) and a start offset. Every view op
//! (reshape of contiguous data, permute, transpose, narrow, broadcast, squeeze, unsqueeze)
//! makes a new `Layout` over the same storage; nothing is copied.

use super::shape::Shape;
use crate::{Error, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    shape: Shape,
    strides: Vec<usize>,
    offset: usize,
}

impl Layout {
    pub fn contiguous(shape: impl Into<Shape>) -> Self {
        Self::contiguous_with_offset(shape, 0)
    }
    pub fn contiguous_with_offset(shape: impl Into<Shape>, offset: usize) -> Self {
        let shape = shape.into();
        let strides = shape.contiguous_strides();
        Layout {
            shape,
            strides,
            offset,
        }
    }
    pub fn new(shape: Shape, strides: Vec<usize>, offset: usize) -> Self {
        debug_assert_eq!(shape.rank(), strides.len());
        Layout {
            shape,
            strides,
            offset,
        }
    }
    pub fn shape(&self) -> &Shape {
        &self.shape
    }
    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }
    pub fn offset(&self) -> usize {
        self.offset
    }
    pub fn elem_count(&self) -> usize {
        self.shape.elem_count()
    }

    /// Row-major contiguous (size-1 dimensions may have any stride).
    pub fn is_contiguous(&self) -> bool {
        let mut acc = 1;
        for (&d, &s) in self.dims().iter().zip(&self.strides).rev() {
            if d != 1 && s != acc {
                return false;
            }
            acc *= d;
        }
        true
    }
    /// `Some(start..end)` in the storage when the view is contiguous.
    pub fn contiguous_range(&self) -> Option<(usize, usize)> {
        self.is_contiguous()
            .then(|| (self.offset, self.offset + self.elem_count()))
    }
    /// The largest storage index this view touches plus one (0 when empty).
    pub fn required_len(&self) -> usize {
        if self.elem_count() == 0 {
            return 0;
        }
        self.offset
            + self
                .dims()
                .iter()
                .zip(&self.strides)
                .map(|(&d, &s)| (d - 1) * s)
                .sum::<usize>()
            + 1
    }

    /// A view of this layout broadcast to `shape` (stride 0 along new and size-1 dims).
    pub fn broadcast_as(&self, shape: &Shape) -> Result<Layout> {
        let (src, dst) = (self.dims(), shape.dims());
        if dst.len() < src.len() {
            return Err(Error::ShapeMismatch {
                op: "broadcast_as",
                lhs: self.shape.clone(),
                rhs: shape.clone(),
            });
        }
        let lead = dst.len() - src.len();
        let mut strides = vec![0; dst.len()];
        for i in 0..src.len() {
            if src[i] == dst[lead + i] {
                strides[lead + i] = self.strides[i];
            } else if src[i] == 1 {
                strides[lead + i] = 0;
            } else {
                return Err(Error::ShapeMismatch {
                    op: "broadcast_as",
                    lhs: self.shape.clone(),
                    rhs: shape.clone(),
                });
            }
        }
        Ok(Layout {
            shape: shape.clone(),
            strides,
            offset: self.offset,
        })
    }

    pub fn permute(&self, perm: &[usize]) -> Result<Layout> {
        let rank = self.shape.rank();
        let mut seen = vec![false; rank];
        if perm.len() != rank
            || perm
                .iter()
                .any(|&p| p >= rank || std::mem::replace(&mut seen[p], true))
        {
            return Err(Error::shape(
                "permute",
                format!("{perm:?} is not a permutation of 0..{rank}"),
                &[&self.shape],
            ));
        }
        let dims = perm.iter().map(|&p| self.dims()[p]).collect::<Vec<_>>();
        let strides = perm.iter().map(|&p| self.strides[p]).collect();
        Ok(Layout {
            shape: Shape::new(dims),
            strides,
            offset: self.offset,
        })
    }

    pub fn transpose(&self, d0: usize, d1: usize) -> Layout {
        let mut dims = self.dims().to_vec();
        let mut strides = self.strides.clone();
        dims.swap(d0, d1);
        strides.swap(d0, d1);
        Layout {
            shape: Shape::new(dims),
            strides,
            offset: self.offset,
        }
    }

    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Layout> {
        let size = self.dims()[dim];
        if start + len > size {
            return Err(Error::shape(
                "narrow",
                format!(
                    "range {start}..{} is out of bounds for dim {dim} of size {size}",
                    start + len
                ),
                &[&self.shape],
            ));
        }
        let mut dims = self.dims().to_vec();
        dims[dim] = len;
        Ok(Layout {
            shape: Shape::new(dims),
            strides: self.strides.clone(),
            offset: self.offset + start * self.strides[dim],
        })
    }

    pub fn unsqueeze(&self, dim: usize) -> Layout {
        let mut dims = self.dims().to_vec();
        let mut strides = self.strides.clone();
        let stride = if dim < dims.len() {
            dims[dim] * strides[dim]
        } else {
            1
        };
        dims.insert(dim, 1);
        strides.insert(dim, stride);
        Layout {
            shape: Shape::new(dims),
            strides,
            offset: self.offset,
        }
    }

    pub fn squeeze(&self, dim: usize) -> Layout {
        let mut dims = self.dims().to_vec();
        let mut strides = self.strides.clone();
        dims.remove(dim);
        strides.remove(dim);
        Layout {
            shape: Shape::new(dims),
            strides,
            offset: self.offset,
        }
    }

    /// A view with a new shape of the same element count, when the strides allow it without a
    /// copy (always for contiguous data); `None` means a copy is needed.
    pub fn reshape(&self, shape: &Shape) -> Option<Layout> {
        if shape.elem_count() != self.elem_count() {
            return None;
        }
        if self.is_contiguous() {
            return Some(Layout::contiguous_with_offset(shape.clone(), self.offset));
        }
        // Merge runs of dims that are contiguous with each other, then split them again.
        let mut new_strides = vec![0; shape.rank()];
        let (old_d, old_s) = (self.dims(), &self.strides);
        let new_d = shape.dims();
        let (mut oi, mut ni) = (0, 0);
        while oi < old_d.len() || ni < new_d.len() {
            // Skip size-1 dims.
            if ni < new_d.len() && new_d[ni] == 1 {
                new_strides[ni] = 1;
                ni += 1;
                continue;
            }
            if oi < old_d.len() && old_d[oi] == 1 {
                oi += 1;
                continue;
            }
            if oi >= old_d.len() || ni >= new_d.len() {
                return None;
            }
            let (o_start, n_start) = (oi, ni);
            let (mut o_prod, mut n_prod) = (old_d[oi], new_d[ni]);
            oi += 1;
            ni += 1;
            while o_prod != n_prod {
                if o_prod < n_prod {
                    if oi >= old_d.len() {
                        return None;
                    }
                    o_prod *= old_d[oi];
                    oi += 1;
                } else {
                    if ni >= new_d.len() {
                        return None;
                    }
                    n_prod *= new_d[ni];
                    ni += 1;
                }
            }
            // The old group must be contiguous within itself.
            let group: Vec<usize> = (o_start..oi).filter(|&i| old_d[i] != 1).collect();
            for w in group.windows(2) {
                if old_s[w[0]] != old_s[w[1]] * old_d[w[1]] {
                    return None;
                }
            }
            let mut stride = old_s[*group.last().unwrap_or(&o_start)];
            for j in (n_start..ni).rev() {
                new_strides[j] = stride;
                stride *= new_d[j];
            }
        }
        Some(Layout {
            shape: shape.clone(),
            strides: new_strides,
            offset: self.offset,
        })
    }

    /// Calls `f(storage_offset, len, stride)` for each run of the view in row-major order:
    /// the inner loop of every strided CPU kernel. Runs follow the merged dims (see
    /// [`merge_dims`]), so they are as long as memory allows; contiguous views give one run.
    pub fn for_each_run(&self, f: impl FnMut(usize, usize, usize)) {
        let runs = Runs::new(self);
        runs.for_each(0, runs.count(), f);
    }

    /// The storage offset of every element in row-major order (for kernels that need random access).
    pub fn offsets(&self) -> Vec<usize> {
        let mut v = Vec::with_capacity(self.elem_count());
        self.for_each_run(|o, len, s| v.extend((0..len).map(|i| o + i * s)));
        v
    }
}

/// Drops size-1 dims and merges each pair of neighbours where the outer one steps exactly
/// over the inner one (`stride[i] == dims[i+1] * stride[i+1]`). The element order (row-major
/// over the view) is unchanged. Broadcast dims (stride 0) merge only with each other. An
/// empty view becomes `[0]`; a one-element view rank 0.
pub(crate) fn merge_dims(dims: &[usize], strides: &[usize]) -> (Vec<usize>, Vec<usize>) {
    if dims.contains(&0) {
        return (vec![0], vec![1]);
    }
    let mut out_d: Vec<usize> = Vec::with_capacity(dims.len());
    let mut out_s: Vec<usize> = Vec::with_capacity(dims.len());
    for (&d, &s) in dims.iter().zip(strides) {
        if d == 1 {
            continue;
        }
        if let (Some(ld), Some(ls)) = (out_d.last_mut(), out_s.last_mut()) {
            if *ls == d * s {
                *ld *= d;
                *ls = s;
                continue;
            }
        }
        out_d.push(d);
        out_s.push(s);
    }
    (out_d, out_s)
}

/// A view cut into runs: `count()` runs of `len` elements `stride` apart, run `r` starting
/// at the storage offset its index has over the outer (merged) dims. Any range of runs can
/// be walked on its own, which is how strided copies split over threads.
pub(crate) struct Runs {
    outer_dims: Vec<usize>,
    outer_strides: Vec<usize>,
    offset: usize,
    /// Elements per run (0 for an empty view).
    pub len: usize,
    /// Storage step between a run's elements.
    pub stride: usize,
}

impl Runs {
    pub fn new(layout: &Layout) -> Self {
        let (mut dims, mut strides) = merge_dims(layout.dims(), layout.strides());
        let (len, stride) = match (dims.pop(), strides.pop()) {
            (Some(d), Some(s)) => (d, s),
            _ => (1, 1), // one element
        };
        Runs {
            outer_dims: dims,
            outer_strides: strides,
            offset: layout.offset(),
            len,
            stride,
        }
    }

    /// Runs in all.
    pub fn count(&self) -> usize {
        if self.len == 0 {
            0
        } else {
            self.outer_dims.iter().product()
        }
    }

    /// Calls `f(storage_offset, len, stride)` for runs `first..first + n`, in order.
    pub fn for_each(&self, first: usize, n: usize, mut f: impl FnMut(usize, usize, usize)) {
        if n == 0 {
            return;
        }
        let rank = self.outer_dims.len();
        // The odometer's start: `first` unravelled over the outer dims.
        let mut idx = vec![0usize; rank];
        let (mut rest, mut off) = (first, self.offset);
        for d in (0..rank).rev() {
            idx[d] = rest % self.outer_dims[d];
            rest /= self.outer_dims[d];
            off += idx[d] * self.outer_strides[d];
        }
        for _ in 0..n {
            f(off, self.len, self.stride);
            for d in (0..rank).rev() {
                idx[d] += 1;
                off += self.outer_strides[d];
                if idx[d] < self.outer_dims[d] {
                    break;
                }
                off -= self.outer_strides[d] * self.outer_dims[d];
                idx[d] = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn merging_keeps_row_major_order() {
        assert_eq!(merge_dims(&[2, 3, 4], &[12, 4, 1]), (vec![24], vec![1]));
        // A transposed view stays 2-D.
        assert_eq!(merge_dims(&[4, 3], &[1, 4]), (vec![4, 3], vec![1, 4]));
        // Broadcast dims merge with each other, not with real ones.
        assert_eq!(merge_dims(&[2, 3, 5], &[0, 0, 1]), (vec![6, 5], vec![0, 1]));
        // Size-1 dims vanish; a scalar has rank 0.
        assert_eq!(merge_dims(&[1, 5, 1], &[9, 1, 7]), (vec![5], vec![1]));
        assert_eq!(merge_dims(&[], &[]), (vec![], vec![]));
        assert_eq!(merge_dims(&[3, 0], &[1, 1]), (vec![0], vec![1]));
    }
    #[test]
    fn runs_from_any_start_match_the_whole_walk() {
        // [2, 3, 4, 5] permuted: dims that merge and dims that do not, plus an offset.
        let base = Layout::contiguous_with_offset([2, 3, 4, 5], 7);
        for perm in [
            [0, 1, 2, 3],
            [0, 2, 1, 3],
            [3, 1, 0, 2],
            [1, 0, 3, 2],
            [0, 1, 3, 2],
        ] {
            let l = base.permute(&perm).unwrap().narrow(1, 1, 1).unwrap();
            let all = l.offsets();
            // Reference: every element's offset from its multi-index.
            let mut expect = Vec::new();
            let (d, s) = (l.dims().to_vec(), l.strides().to_vec());
            for i in 0..l.elem_count() {
                let (mut rest, mut off) = (i, l.offset());
                for k in (0..d.len()).rev() {
                    off += (rest % d[k]) * s[k];
                    rest /= d[k];
                }
                expect.push(off);
            }
            assert_eq!(all, expect, "perm {perm:?}");
            let runs = Runs::new(&l);
            if perm == [0, 1, 2, 3] {
                // [2, 1, 4, 5] narrowed from [2, 3, 4, 5]: the last two dims merge into one run.
                assert_eq!((runs.len, runs.stride, runs.count()), (20, 1, 2));
            }
            for first in 0..runs.count() {
                let mut got = Vec::new();
                runs.for_each(first, runs.count() - first, |o, len, st| {
                    got.extend((0..len).map(|j| o + j * st))
                });
                assert_eq!(
                    got,
                    expect[first * runs.len..],
                    "perm {perm:?} from run {first}"
                );
            }
        }
    }
    #[test]
    fn reshape_views() {
        let l = Layout::contiguous([2, 3, 4]);
        let t = l.transpose(0, 1); // [3,2,4] strides [4,12,1]
        assert!(t.reshape(&Shape::from([3, 8])).is_none());
        assert_eq!(
            t.reshape(&Shape::from([3, 2, 2, 2])).unwrap().strides(),
            &[4, 12, 2, 1]
        );
        let n = l.narrow(2, 1, 2).unwrap();
        assert_eq!(n.offsets(), vec![1, 2, 5, 6, 9, 10, 13, 14, 17, 18, 21, 22]);
    }
}
