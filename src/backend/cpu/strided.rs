//! Strided copies: gathering a view into a contiguous vector (`copy_strided`, `contiguous()`,
//! every kernel that wants its input dense) and scattering a dense vector into a view
//! (`copy_into`: the backward of `narrow`, `cat`, index writes).
//!
//! Both walk the view as runs (`Layout::for_each_run` over merged dims, so a permuted
//! `[B, H, T, D]` view of a `[B, T, 3, H, D]` buffer copies runs of D elements), and split
//! the runs over the Rayon pool once the copy is large: a copy is one read and one write per
//! element, so a single thread leaves half the machine's bandwidth (and, in a training step,
//! the other core) idle. Which thread copies which run changes nothing in the result.

use super::stream;
use crate::tensor::{Layout, Runs};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Copies of at least this many elements are split over the pool (below it, waking the
/// pool costs about as much as the copy: 512 KiB of f32 take ~25 us on one thread).
const PARALLEL_ELEMS: usize = 1 << 17;

/// Calls `f(first_run, runs, chunk)` over consecutive ranges of `runs` and the matching
/// slices of `items` (`per_run` items per run): on this thread when the view is small, else
/// a few ranges per pool thread.
fn split_runs<U: Send>(
    runs: &Runs,
    items: &mut [U],
    per_run: usize,
    f: impl Fn(usize, usize, &mut [U]) + Sync,
) {
    let total = runs.count();
    let threads = rayon::current_num_threads();
    if total * runs.len < PARALLEL_ELEMS || threads == 1 || total < 2 {
        return f(0, total, items);
    }
    let per = total.div_ceil((4 * threads).min(total));
    items
        .par_chunks_mut(per * per_run)
        .enumerate()
        .for_each(|(t, chunk)| f(t * per, chunk.len() / per_run, chunk));
}

/// Gathers a strided view into a new contiguous vector.
pub(crate) fn gather_strided<T: Copy + Send + Sync>(src: &[T], layout: &Layout) -> Vec<T> {
    if let Some((a, b)) = layout.contiguous_range() {
        return copy_dense(&src[a..b]);
    }
    let n = layout.elem_count();
    assert!(
        layout.required_len() <= src.len(),
        "gather_strided: the view reaches past its storage"
    );
    let runs = Runs::new(layout);
    let mut out: Vec<T> = Vec::with_capacity(n);
    split_runs(
        &runs,
        &mut out.spare_capacity_mut()[..n],
        runs.len,
        |first, count, chunk| {
            let mut runs_out = chunk.chunks_exact_mut(runs.len.max(1));
            runs.for_each(first, count, |o, len, s| {
                let run = runs_out.next().expect("one output run per input run");
                write_run(run, src, o, len, s);
            });
        },
    );
    // SAFETY: the runs cover all `n` elements of the view, and each wrote its slice of `out`.
    unsafe { out.set_len(n) };
    out
}

/// A copy of a dense slice, split over the pool once it is large (`to_vec` is one `memcpy`
/// on one thread: a 128 MiB `contiguous()` copy ran at half the machine's copy bandwidth),
/// with streaming stores once it is larger than the last-level cache (`stream`).
fn copy_dense<T: Copy + Send + Sync>(src: &[T]) -> Vec<T> {
    let n = src.len();
    let stream = stream::streams(std::mem::size_of_val(src));
    if !stream && (n < PARALLEL_ELEMS || rayon::current_num_threads() == 1) {
        return src.to_vec();
    }
    let per = n.div_ceil(4 * rayon::current_num_threads());
    let mut out: Vec<T> = Vec::with_capacity(n);
    out.spare_capacity_mut()[..n]
        .par_chunks_mut(per)
        .zip(src.par_chunks(per))
        .for_each(|(d, s)| {
            if stream {
                // SAFETY: `d` and `s` are distinct buffers of `d.len()` elements.
                unsafe {
                    let bytes = std::mem::size_of_val(s);
                    stream::copy_streaming(s.as_ptr().cast(), d.as_mut_ptr().cast(), bytes);
                }
                return;
            }
            for (d, &x) in d.iter_mut().zip(s) {
                d.write(x);
            }
        });
    // SAFETY: the chunks cover all `n` elements, each written whole.
    unsafe { out.set_len(n) };
    out
}

/// `dst[j] = src[o + j*s]` for `j < len` (`dst` is `len` long).
#[inline]
fn write_run<T: Copy>(dst: &mut [MaybeUninit<T>], src: &[T], o: usize, len: usize, s: usize) {
    if s == 1 {
        for (d, &x) in dst.iter_mut().zip(&src[o..o + len]) {
            d.write(x);
        }
    } else {
        for (j, d) in dst.iter_mut().enumerate() {
            d.write(src[o + j * s]);
        }
    }
}

/// A contiguous slice when the view is contiguous, else a gathered copy.
pub(crate) fn contiguous_cow<'a, T: Copy + Send + Sync>(
    src: &'a [T],
    layout: &Layout,
) -> std::borrow::Cow<'a, [T]> {
    match layout.contiguous_range() {
        Some((a, b)) => std::borrow::Cow::Borrowed(&src[a..b]),
        None => std::borrow::Cow::Owned(gather_strided(src, layout)),
    }
}

/// Writes `src` (viewed through `src_layout`) into the elements of `dst` that `dst_layout`
/// addresses, in row-major order. In parallel only when no two elements of the destination
/// view share storage (otherwise the last write in row-major order wins, as before).
pub(crate) fn scatter_strided<T: Copy + Send + Sync>(
    dst: &mut [T],
    dst_layout: &Layout,
    src: &[T],
    src_layout: &Layout,
) {
    let src = contiguous_cow(src, src_layout);
    assert!(
        dst_layout.required_len() <= dst.len() && src.len() == dst_layout.elem_count(),
        "scatter_strided: the view reaches past its storage"
    );
    let runs = Runs::new(dst_layout);
    if is_one_to_one(dst_layout) {
        let out = SharedOut(dst.as_mut_ptr());
        // The source is contiguous: run r reads src[r*len..(r+1)*len]. (The unit slice only
        // carries the split; a Vec of zero-sized items allocates nothing.)
        split_runs(&runs, &mut vec![(); runs.count()], 1, |first, count, _| {
            let mut r = first;
            runs.for_each(first, count, |o, len, s| {
                // SAFETY: `o + (len-1)*s < dst.len()` (checked above for the whole view), and
                // the view is one-to-one, so no other range of runs writes these elements.
                unsafe { read_run(out.ptr(), &src[r * len..(r + 1) * len], o, s) };
                r += 1;
            });
        });
        return;
    }
    let mut i = 0;
    runs.for_each(0, runs.count(), |o, len, s| {
        if s == 1 {
            dst[o..o + len].copy_from_slice(&src[i..i + len]);
        } else {
            for j in 0..len {
                dst[o + j * s] = src[i + j];
            }
        }
        i += len;
    });
}

/// The destination of a parallel scatter (tasks write disjoint elements).
#[derive(Clone, Copy)]
struct SharedOut<T>(*mut T);
// SAFETY: only used by `scatter_strided` on one-to-one views, whose tasks write disjoint
// elements; `T: Send` values cross threads.
unsafe impl<T: Send> Send for SharedOut<T> {}
unsafe impl<T: Send> Sync for SharedOut<T> {}

impl<T> SharedOut<T> {
    /// The pointer (a method, so that closures capture the `Sync` wrapper, not the field).
    fn ptr(self) -> *mut T {
        self.0
    }
}

/// `dst[o + j*s] = run[j]` for every `j`.
///
/// # Safety
/// `dst` must be valid for writes at those offsets, and no other thread may touch them.
#[inline]
unsafe fn read_run<T: Copy>(dst: *mut T, run: &[T], o: usize, s: usize) {
    for (j, &x) in run.iter().enumerate() {
        // SAFETY: forwarded contract.
        unsafe { *dst.add(o + j * s) = x };
    }
}

/// Whether every element of the view has its own storage element: sorted by stride, each
/// dim steps past everything the smaller-stride dims span (the views `permute`, `narrow`,
/// `transpose` and `reshape` make of a dense buffer all pass; broadcast views do not).
fn is_one_to_one(layout: &Layout) -> bool {
    let mut dims: Vec<(usize, usize)> = layout
        .dims()
        .iter()
        .zip(layout.strides())
        .filter(|(&d, _)| d > 1)
        .map(|(&d, &s)| (s, d))
        .collect();
    dims.sort_unstable();
    let mut span = 0; // largest offset reached by the dims so far
    for (s, d) in dims {
        if s <= span {
            return false;
        }
        span += (d - 1) * s;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Layout;

    /// Each element's storage offset, from its multi-index (the definition of a view).
    fn offsets(l: &Layout) -> Vec<usize> {
        let (d, s) = (l.dims(), l.strides());
        (0..l.elem_count())
            .map(|i| {
                let (mut rest, mut off) = (i, l.offset());
                for k in (0..d.len()).rev() {
                    off += (rest % d[k]) * s[k];
                    rest /= d[k];
                }
                off
            })
            .collect()
    }

    /// Views large enough to take the parallel path, and small ones that stay serial.
    fn views() -> Vec<Layout> {
        let mut v = Vec::new();
        for (dims, perm) in [
            (vec![8, 128, 3, 8, 32], vec![2, 0, 3, 1, 4]), // the q/k/v split of attention
            (vec![512, 600], vec![1, 0]),                  // a transpose: runs of one element
            (vec![3, 5, 7], vec![2, 0, 1]),                // small: serial
            (vec![4, 64, 1, 513], vec![0, 3, 2, 1]),
        ] {
            let l = Layout::contiguous_with_offset(dims.clone(), 3)
                .permute(&perm)
                .unwrap();
            v.push(l.clone());
            v.push(l.narrow(1, 1, l.dims()[1] - 2).unwrap());
        }
        // Dense views (one contiguous range, copied whole): large, from an offset, and small.
        v.push(Layout::contiguous_with_offset(vec![3, 200_001], 7));
        v.push(Layout::contiguous_with_offset(vec![5, 7], 2));
        v
    }

    #[test]
    fn gather_matches_the_view_in_parallel_and_serially() {
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for l in views() {
                let src: Vec<u32> = (0..l.required_len() as u32 + 5).collect();
                let want: Vec<u32> = offsets(&l).iter().map(|&o| src[o]).collect();
                let got = pool.install(|| gather_strided(&src, &l));
                assert_eq!(got, want, "dims {:?} strides {:?}", l.dims(), l.strides());
            }
        }
    }

    #[test]
    fn scatter_writes_exactly_the_view_in_parallel_and_serially() {
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for l in views() {
                assert!(is_one_to_one(&l));
                let n = l.required_len() + 5;
                let src: Vec<u32> = (0..l.elem_count() as u32).map(|x| x + 1_000_000).collect();
                let mut want: Vec<u32> = (0..n as u32).collect();
                for (i, o) in offsets(&l).into_iter().enumerate() {
                    want[o] = src[i];
                }
                let mut dst: Vec<u32> = (0..n as u32).collect();
                let contiguous = Layout::contiguous(l.dims().to_vec());
                pool.install(|| scatter_strided(&mut dst, &l, &src, &contiguous));
                assert_eq!(dst, want, "dims {:?} strides {:?}", l.dims(), l.strides());
            }
        }
    }

    #[test]
    fn overlapping_views_are_not_one_to_one() {
        let base = Layout::contiguous([4, 6]);
        assert!(is_one_to_one(&base));
        assert!(is_one_to_one(&base.transpose(0, 1)));
        assert!(!is_one_to_one(
            &base
                .narrow(0, 0, 1)
                .unwrap()
                .broadcast_as(&[5, 1, 6].into())
                .unwrap()
        ));
        // Rows of 6 starting every 2 elements: a sliding window.
        assert!(!is_one_to_one(&Layout::new([4, 6].into(), vec![2, 1], 0)));
        assert!(is_one_to_one(&Layout::new([4, 2].into(), vec![3, 1], 0)));
    }
}
