// softmax.cu: softmax and log_softmax along one dimension, forward and backward.
//
// The input (made contiguous by the launch code) is seen as [outer, n, inner] with n the
// softmax dimension. With m = max_j x_j subtracted first so exp never overflows:
//   softmax:     y_j = exp(x_j - m) / sum_k exp(x_k - m)
//   log_softmax: y_j = x_j - m - log(sum_k exp(x_k - m))
// Backward from the saved output y and the output gradient dy:
//   softmax:     dx_j = y_j (dy_j - sum_k dy_k y_k)
//   log_softmax: dx_j = dy_j - exp(y_j) sum_k dy_k
// A NaN anywhere in a row makes that row NaN (as on the CPU).
//
// Launch shapes (`log` = 0 for softmax, 1 for log_softmax):
// * inner == 1, n <= 1024: `softmax_fwd_warp_*` / `softmax_bwd_warp_*`, one warp per row,
//   blockDim 128 (4 rows per block), grid ceil(rows / 4);
// * inner == 1, n > 1024:  `softmax_fwd_block_*` / `softmax_bwd_block_*`, one block of 256 (or
//   any multiple of 32 up to 1024) threads per row, grid = rows;
// * inner > 1: `softmax_fwd_cols_*` / `softmax_bwd_cols_*`, one thread per (outer, inner)
//   column walking its n elements `inner` apart (neighbouring threads read neighbouring
//   addresses), blockDim 256, grid ceil(outer·inner / 256).
// Cost: forward reads x three times (max, sum, write; the second and third from L1/L2 for
// rows that fit) and writes y once: 8 bytes/element of DRAM traffic in f32 and ~5 FLOPs plus
// one exp per element. Backward reads y and dy twice and writes dx once.
#include "tile.cuh"

// ----- rows (inner == 1): one row per group (warp or block) ------------------------------

template <typename T, bool PER_WARP>
__device__ __forceinline__ void softmax_fwd_row(const T* __restrict__ x, T* __restrict__ y,
                                                long long rows, long long n, long long log) {
  typedef RowGroup<PER_WARP> G;
  __shared__ T scratch[32];
  const long long r = G::row();
  // A whole warp (or block) leaves together, so the reductions below never wait on a thread
  // that has returned.
  if (r >= rows) return;
  const T* xr = x + r * n;
  T* yr = y + r * n;
  T m = Num<T>::neg_inf();
  for (long long j = G::rank(); j < n; j += G::size()) m = nan_max(m, xr[j]);
  m = G::max(m, scratch);
  T s = T(0);
  for (long long j = G::rank(); j < n; j += G::size()) s += Num<T>::exp(xr[j] - m);
  s = G::sum(s, scratch);
  if (log) {
    const T norm = m + Num<T>::log(s);
    for (long long j = G::rank(); j < n; j += G::size()) yr[j] = xr[j] - norm;
  } else {
    const T inv = T(1) / s;
    for (long long j = G::rank(); j < n; j += G::size()) yr[j] = Num<T>::exp(xr[j] - m) * inv;
  }
}

template <typename T, bool PER_WARP>
__device__ __forceinline__ void softmax_bwd_row(const T* __restrict__ y, const T* __restrict__ dy,
                                                T* __restrict__ dx, long long rows, long long n,
                                                long long log) {
  typedef RowGroup<PER_WARP> G;
  __shared__ T scratch[32];
  const long long r = G::row();
  if (r >= rows) return;
  const T* yr = y + r * n;
  const T* gr = dy + r * n;
  T* dr = dx + r * n;
  T s = T(0);
  for (long long j = G::rank(); j < n; j += G::size()) s += log ? gr[j] : gr[j] * yr[j];
  s = G::sum(s, scratch);
  for (long long j = G::rank(); j < n; j += G::size())
    dr[j] = log ? gr[j] - Num<T>::exp(yr[j]) * s : yr[j] * (gr[j] - s);
}

// ----- columns (inner > 1): one thread per (outer, inner) column --------------------------

template <typename T>
__device__ __forceinline__ void softmax_fwd_cols_body(const T* __restrict__ x, T* __restrict__ y,
                                                      long long outer, long long n,
                                                      long long inner, long long log) {
  const long long col = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (col >= outer * inner) return;
  const long long base = (col / inner) * n * inner + col % inner;
  const T* xc = x + base;
  T* yc = y + base;
  T m = Num<T>::neg_inf();
  for (long long j = 0; j < n; ++j) m = nan_max(m, xc[j * inner]);
  T s = T(0);
  for (long long j = 0; j < n; ++j) s += Num<T>::exp(xc[j * inner] - m);
  if (log) {
    const T norm = m + Num<T>::log(s);
    for (long long j = 0; j < n; ++j) yc[j * inner] = xc[j * inner] - norm;
  } else {
    const T inv = T(1) / s;
    for (long long j = 0; j < n; ++j) yc[j * inner] = Num<T>::exp(xc[j * inner] - m) * inv;
  }
}

template <typename T>
__device__ __forceinline__ void softmax_bwd_cols_body(const T* __restrict__ y,
                                                      const T* __restrict__ dy,
                                                      T* __restrict__ dx, long long outer,
                                                      long long n, long long inner,
                                                      long long log) {
  const long long col = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (col >= outer * inner) return;
  const long long base = (col / inner) * n * inner + col % inner;
  T s = T(0);
  for (long long j = 0; j < n; ++j) {
    const long long e = base + j * inner;
    s += log ? dy[e] : dy[e] * y[e];
  }
  for (long long j = 0; j < n; ++j) {
    const long long e = base + j * inner;
    dx[e] = log ? dy[e] - Num<T>::exp(y[e]) * s : y[e] * (dy[e] - s);
  }
}

// ----- entry points ----------------------------------------------------------------------

#define SOFTMAX_ENTRY(TNAME, T)                                                                  \
  extern "C" __global__ void __launch_bounds__(128)                                             \
      softmax_fwd_warp_##TNAME(const T* x, T* y, long long rows, long long n, long long log) {  \
    softmax_fwd_row<T, true>(x, y, rows, n, log);                                               \
  }                                                                                              \
  extern "C" __global__ void __launch_bounds__(1024)                                            \
      softmax_fwd_block_##TNAME(const T* x, T* y, long long rows, long long n, long long log) { \
    softmax_fwd_row<T, false>(x, y, rows, n, log);                                              \
  }                                                                                              \
  extern "C" __global__ void __launch_bounds__(128)                                             \
      softmax_bwd_warp_##TNAME(const T* y, const T* dy, T* dx, long long rows, long long n,     \
                               long long log) {                                                 \
    softmax_bwd_row<T, true>(y, dy, dx, rows, n, log);                                          \
  }                                                                                              \
  extern "C" __global__ void __launch_bounds__(1024)                                            \
      softmax_bwd_block_##TNAME(const T* y, const T* dy, T* dx, long long rows, long long n,    \
                                long long log) {                                                \
    softmax_bwd_row<T, false>(y, dy, dx, rows, n, log);                                         \
  }                                                                                              \
  extern "C" __global__ void __launch_bounds__(256)                                             \
      softmax_fwd_cols_##TNAME(const T* x, T* y, long long outer, long long n, long long inner, \
                               long long log) {                                                 \
    softmax_fwd_cols_body<T>(x, y, outer, n, inner, log);                                       \
  }                                                                                              \
  extern "C" __global__ void __launch_bounds__(256)                                             \
      softmax_bwd_cols_##TNAME(const T* y, const T* dy, T* dx, long long outer, long long n,    \
                               long long inner, long long log) {                                \
    softmax_bwd_cols_body<T>(y, dy, dx, outer, n, inner, log);                                  \
  }

SOFTMAX_ENTRY(f32, float)
SOFTMAX_ENTRY(f64, double)
