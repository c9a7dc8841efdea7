// loss.cu: fused cross-entropy over logits [N, C] (contiguous) and i64 class targets [N].
//
// Forward, per row i that is not ignored (t_i != ignore_index):
//   lse_i = m_i + log sum_c exp(x_ic - m_i)        (m_i the row max)
//   nll_i = lse_i - x_i,t_i,   smooth_i = lse_i - mean_c x_ic
//   loss  = sum_i [(1-eps) nll_i + eps smooth_i] / count   (count = non-ignored rows; 0/0 = NaN)
// Backward: dx_ic = g/count (exp(x_ic - lse_i) - (1-eps)[c = t_i] - eps/C) for kept rows, else 0.
// Row statistics and the per-row loss are accumulated in f64 for both dtypes (as the CPU
// backend does), so f32 logits lose nothing to the long sums of large vocabularies.
//
// Kernels and launch shapes:
// * `cross_entropy_rows_{warp,block}_*`: per row lse (saved, dtype T) and the row's loss term
//   (f64 scratch). warp: one warp per row, blockDim 128, grid ceil(N/4) (C <= 1024);
//   block: one block of 256 threads per row, grid N.
// * `cross_entropy_reduce_*`: one block of 1024 threads. Sums the row terms in a fixed order
//   (deterministic), counts kept rows, finds the first out-of-range target; writes
//   loss[0] = total/count and stats = [count, bad targets, value of the first bad target]
//   (i64), which the host reads back: the primitive must return `count`, and a bad target is
//   a user error.
// * `cross_entropy_bwd_*`: grid-stride elementwise over N·C, blockDim 256.
// Cost: forward reads the logits twice (max, then sum exp; the second from L2 for rows that fit)
// and writes N values; backward reads the logits once and writes dx once (8 bytes/element in
// f32), one exp per element each way.
#include "tile.cuh"

__device__ __forceinline__ bool ce_ignored(long long t, long long has_ignore,
                                           long long ignore_index) {
  return has_ignore && t == ignore_index;
}

template <typename T, bool PER_WARP>
__device__ __forceinline__ void cross_entropy_rows(const T* __restrict__ x,
                                                   const long long* __restrict__ targets,
                                                   T* __restrict__ lse, double* __restrict__ row_loss,
                                                   long long rows, long long c,
                                                   long long ignore_index, long long has_ignore,
                                                   double eps) {
  typedef RowGroup<PER_WARP> G;
  __shared__ double scratch[32];
  const long long r = G::row();
  if (r >= rows) return;  // the whole group leaves together
  const T* xr = x + r * c;
  double m = Num<double>::neg_inf();
  for (long long j = G::rank(); j < c; j += G::size()) m = nan_max(m, (double)xr[j]);
  m = G::max(m, scratch);
  double s = 0.0, sx = 0.0;
  for (long long j = G::rank(); j < c; j += G::size()) {
    const double v = (double)xr[j];
    s += Num<double>::exp(v - m);
    sx += v;
  }
  s = G::sum(s, scratch);
  if (eps != 0.0) sx = G::sum(sx, scratch);
  if (G::rank() != 0) return;
  // A row of -inf logits has lse -inf (exp(-inf - -inf) would be NaN).
  const double l = (m == Num<double>::neg_inf()) ? m : m + Num<double>::log(s);
  lse[r] = (T)l;
  const long long t = targets[r];
  double loss = 0.0;
  if (!ce_ignored(t, has_ignore, ignore_index) && t >= 0 && t < c) {
    const double nll = l - (double)xr[t];
    loss = eps == 0.0 ? nll : (1.0 - eps) * nll + eps * (l - sx / (double)c);
  }
  row_loss[r] = loss;
}

template <typename T>
__device__ __forceinline__ void cross_entropy_reduce_body(const long long* __restrict__ targets,
                                                          const double* __restrict__ row_loss,
                                                          T* __restrict__ loss,
                                                          long long* __restrict__ stats,
                                                          long long rows, long long c,
                                                          long long ignore_index,
                                                          long long has_ignore) {
  __shared__ double dscratch[32];
  __shared__ long long iscratch[32];
  double total = 0.0;
  long long count = 0, bad = 0, first_bad = rows;  // `rows` = none
  for (long long r = threadIdx.x; r < rows; r += blockDim.x) {
    const long long t = targets[r];
    if (ce_ignored(t, has_ignore, ignore_index)) continue;
    if (t < 0 || t >= c) {
      ++bad;
      if (r < first_bad) first_bad = r;
      continue;
    }
    ++count;
    total += row_loss[r];
  }
  total = block_sum(total, dscratch);
  count = block_sum(count, iscratch);
  bad = block_sum(bad, iscratch);
  first_bad = block_reduce(first_bad, iscratch, MinOp(), rows);
  if (threadIdx.x == 0) {
    loss[0] = (T)(total / (double)count);
    stats[0] = count;
    stats[1] = bad;
    stats[2] = first_bad < rows ? targets[first_bad] : 0;
  }
}

template <typename T>
__device__ __forceinline__ void cross_entropy_bwd_body(
    const T* __restrict__ x, const long long* __restrict__ targets, const T* __restrict__ lse,
    const T* __restrict__ grad, T* __restrict__ dx, long long rows, long long c,
    long long ignore_index, long long has_ignore, double eps, long long count) {
  const double scale = count > 0 ? (double)grad[0] / (double)count : 0.0;
  const double uniform = eps / (double)c;
  const long long total = rows * c;
  for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
       e += (long long)gridDim.x * blockDim.x) {
    const long long r = e / c, j = e - r * c;
    const long long t = targets[r];
    double d = 0.0;
    if (count > 0 && !ce_ignored(t, has_ignore, ignore_index) && t >= 0 && t < c) {
      const double onehot = j == t ? 1.0 - eps : 0.0;
      d = scale * (Num<double>::exp((double)x[e] - (double)lse[r]) - onehot - uniform);
    }
    dx[e] = (T)d;
  }
}

#define LOSS_ENTRY(TNAME, T)                                                                   \
  extern "C" __global__ void __launch_bounds__(128) cross_entropy_rows_warp_##TNAME(          \
      const T* x, const long long* targets, T* lse, double* row_loss, long long rows,          \
      long long c, long long ignore_index, long long has_ignore, double eps) {                 \
    cross_entropy_rows<T, true>(x, targets, lse, row_loss, rows, c, ignore_index, has_ignore,  \
                                eps);                                                          \
  }                                                                                            \
  extern "C" __global__ void __launch_bounds__(1024) cross_entropy_rows_block_##TNAME(        \
      const T* x, const long long* targets, T* lse, double* row_loss, long long rows,          \
      long long c, long long ignore_index, long long has_ignore, double eps) {                 \
    cross_entropy_rows<T, false>(x, targets, lse, row_loss, rows, c, ignore_index, has_ignore, \
                                 eps);                                                         \
  }                                                                                            \
  extern "C" __global__ void __launch_bounds__(1024) cross_entropy_reduce_##TNAME(            \
      const long long* targets, const double* row_loss, T* loss, long long* stats,             \
      long long rows, long long c, long long ignore_index, long long has_ignore) {             \
    cross_entropy_reduce_body<T>(targets, row_loss, loss, stats, rows, c, ignore_index,        \
                                 has_ignore);                                                  \
  }                                                                                            \
  extern "C" __global__ void __launch_bounds__(256) cross_entropy_bwd_##TNAME(                \
      const T* x, const long long* targets, const T* lse, const T* grad, T* dx, long long rows, \
      long long c, long long ignore_index, long long has_ignore, double eps, long long count) { \
    cross_entropy_bwd_body<T>(x, targets, lse, grad, dx, rows, c, ignore_index, has_ignore,    \
                              eps, count);                                                     \
  }

LOSS_ENTRY(f32, float)
LOSS_ENTRY(f64, double)
