// norm.cu: fused LayerNorm / GroupNorm and BatchNorm, forward and backward, on contiguous
// [N, C, S] data (S = product of the trailing dims; LayerNorm is [rows, C, 1] with one group).
//
// Forward, per statistic set (a group row of M = (C/G)·S elements, or a channel of N·S):
//   mu = mean(x), var = mean((x - mu)^2) (biased, two passes), rstd = 1/sqrt(var + eps),
//   y = (x - mu)·(rstd·w[c]) + b[c]                           (mu and rstd saved, dtype T)
// Backward, with dxhat = dy·w[c] and means over the statistic set:
//   dx = rstd·(dxhat - mean(dxhat) - xhat·mean(dxhat·xhat)),  dw[c] = Σ dy·xhat,  db[c] = Σ dy
// (for constant statistics, batch_norm in eval mode, the two mean terms are dropped).
// Statistics and gradient sums accumulate in f64 for both dtypes (as the CPU backend does);
// the element-wise passes run in T. Absent weight/bias are flags (the pointer is then unused).
// Parameters are [C] vectors read with a stride (any rank-1 view).
//
// Kernels and launch shapes (block sizes are multiples of 32, at most 1024):
// * group_norm_fwd_*     one block per statistic row (grid N·G): mean, rstd and y.
// * group_norm_bwd_dx_*  one block per statistic row: dx.
// * norm_param_cols_*    per column j of the [N, C·S] view, partial Σ dy·xhat and Σ dy over a
//                        slice of the rows: blockDim 256 = 32 columns x 8 row lanes,
//                        grid (ceil(C·S/32), splits); partials [splits, C·S] (f64).
// * norm_param_reduce_*  one block per channel: sums its splits x S partials in a fixed order
//                        -> dw[c], db[c] (T) and sums[2c] = Σ dy, sums[2c+1] = Σ dy·xhat (f64).
// * batch_norm_stats_*   one block per channel: batch (two-pass) or running statistics.
// * batch_norm_apply_*   grid-stride element-wise y.
// * batch_norm_bwd_dx_*  grid-stride element-wise dx from the channel sums.
// * batch_norm_update_running_*  one thread per channel, in place.
// All sums are in a fixed order, so results do not vary between runs.
// Cost: forward reads x twice (statistics; the second pass from L2 for rows that fit) and once
// more for y, writes y once; backward reads x and dy twice (dx pass, parameter pass) and writes
// dx once. FLOPs are a handful per element: these kernels are memory-bound.
#include "tile.cuh"

// `w[c]` or 1 (weight) / 0 (bias) when absent.
template <typename T>
__device__ __forceinline__ T param_or(const T* p, long long has, long long c, long long stride,
                                      T fallback) {
  return has ? p[c * stride] : fallback;
}

// ----- group statistics (layer_norm, group_norm) -----------------------------------------

template <typename T>
__device__ __forceinline__ void group_norm_fwd_body(
    const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b, T* __restrict__ y,
    T* __restrict__ mean, T* __restrict__ rstd, long long groups, long long cg, long long s,
    long long w_stride, long long b_stride, long long has_w, long long has_b, double eps) {
  __shared__ double scratch[32];
  const long long r = blockIdx.x;
  const long long m = cg * s;
  const T* xr = x + r * m;
  T* yr = y + r * m;
  double sum = 0.0;
  for (long long e = threadIdx.x; e < m; e += blockDim.x) sum += (double)xr[e];
  const double mu = block_sum(sum, scratch) / (double)m;
  double sq = 0.0;
  for (long long e = threadIdx.x; e < m; e += blockDim.x) {
    const double d = (double)xr[e] - mu;
    sq += d * d;
  }
  const double var = block_sum(sq, scratch) / (double)m;
  const T mu_t = (T)mu, rs_t = (T)(1.0 / Num<double>::sqrt(var + eps));
  if (threadIdx.x == 0) {
    mean[r] = mu_t;
    rstd[r] = rs_t;
  }
  const long long c0 = (r % groups) * cg;
  for (long long e = threadIdx.x; e < m; e += blockDim.x) {
    const long long c = c0 + e / s;
    const T wc = param_or(w, has_w, c, w_stride, T(1));
    const T bc = param_or(b, has_b, c, b_stride, T(0));
    yr[e] = (xr[e] - mu_t) * (rs_t * wc) + bc;
  }
}

template <typename T>
__device__ __forceinline__ void group_norm_bwd_dx_body(
    const T* __restrict__ x, const T* __restrict__ dy, const T* __restrict__ mean,
    const T* __restrict__ rstd, const T* __restrict__ w, T* __restrict__ dx, long long groups,
    long long cg, long long s, long long w_stride, long long has_w) {
  __shared__ double scratch[32];
  const long long r = blockIdx.x;
  const long long m = cg * s;
  const T* xr = x + r * m;
  const T* gr = dy + r * m;
  T* dr = dx + r * m;
  const T mu = mean[r], rs = rstd[r];
  const long long c0 = (r % groups) * cg;
  double sa = 0.0, sb = 0.0;
  for (long long e = threadIdx.x; e < m; e += blockDim.x) {
    const T gw = gr[e] * param_or(w, has_w, c0 + e / s, w_stride, T(1));
    sa += (double)gw;
    sb += (double)gw * (double)((xr[e] - mu) * rs);
  }
  const T a = (T)(block_sum(sa, scratch) / (double)m);
  const T bb = (T)(block_sum(sb, scratch) / (double)m);
  for (long long e = threadIdx.x; e < m; e += blockDim.x) {
    const T gw = gr[e] * param_or(w, has_w, c0 + e / s, w_stride, T(1));
    dr[e] = rs * (gw - a - (xr[e] - mu) * rs * bb);
  }
}

// ----- per-channel gradient sums (weight/bias gradients; batch_norm's dx terms) ----------

// Column j of the [N, C·S] view belongs to channel j / S; its statistic is mean[n·G + c/cg]
// (group statistics) or mean[c] (channel statistics, `per_channel`).
template <typename T>
__device__ __forceinline__ void norm_param_cols_body(
    const T* __restrict__ x, const T* __restrict__ dy, const T* __restrict__ mean,
    const T* __restrict__ rstd, double* __restrict__ part_w, double* __restrict__ part_b,
    long long n, long long c, long long s, long long groups, long long per_channel) {
  __shared__ double sw[8][32];
  __shared__ double sb[8][32];
  const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5;  // blockDim.x == 256
  const long long cs = c * s;
  const long long j = (long long)blockIdx.x * 32 + tx;
  const long long rows_per_split = (n + gridDim.y - 1) / gridDim.y;
  const long long r0 = blockIdx.y * rows_per_split;
  const long long r1 = min(n, r0 + rows_per_split);
  double pw = 0.0, pb = 0.0;
  if (j < cs) {
    const long long ch = j / s;
    for (long long r = r0 + ty; r < r1; r += 8) {
      const long long st = per_channel ? ch : r * groups + ch / (c / groups);
      const T g = dy[r * cs + j];
      const T xhat = (x[r * cs + j] - mean[st]) * rstd[st];
      pw += (double)g * (double)xhat;
      pb += (double)g;
    }
  }
  sw[ty][tx] = pw;
  sb[ty][tx] = pb;
  __syncthreads();
  if (ty == 0 && j < cs) {
    double tw = 0.0, tb = 0.0;
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      tw += sw[k][tx];
      tb += sb[k][tx];
    }
    part_w[(long long)blockIdx.y * cs + j] = tw;
    part_b[(long long)blockIdx.y * cs + j] = tb;
  }
}

template <typename T>
__device__ __forceinline__ void norm_param_reduce_body(const double* __restrict__ part_w,
                                                       const double* __restrict__ part_b,
                                                       T* __restrict__ dw, T* __restrict__ db,
                                                       double* __restrict__ sums, long long c,
                                                       long long s, long long splits) {
  __shared__ double scratch[32];
  const long long ch = blockIdx.x;
  const long long cs = c * s;
  double tw = 0.0, tb = 0.0;
  for (long long e = threadIdx.x; e < splits * s; e += blockDim.x) {
    const long long k = e / s, si = e - k * s;
    tw += part_w[k * cs + ch * s + si];
    tb += part_b[k * cs + ch * s + si];
  }
  tw = block_sum(tw, scratch);
  tb = block_sum(tb, scratch);
  if (threadIdx.x == 0) {
    dw[ch] = (T)tw;
    db[ch] = (T)tb;
    sums[2 * ch] = tb;
    sums[2 * ch + 1] = tw;
  }
}

// ----- channel statistics (batch_norm) ---------------------------------------------------

template <typename T>
__device__ __forceinline__ void batch_norm_stats_body(
    const T* __restrict__ x, const T* __restrict__ run_mean, const T* __restrict__ run_var,
    T* __restrict__ mean, T* __restrict__ rstd, long long n, long long c, long long s,
    long long rm_stride, long long rv_stride, long long use_running, double eps) {
  __shared__ double scratch[32];
  const long long ch = blockIdx.x;
  if (use_running) {
    if (threadIdx.x == 0) {
      mean[ch] = run_mean[ch * rm_stride];
      rstd[ch] = (T)(1.0 / Num<double>::sqrt((double)run_var[ch * rv_stride] + eps));
    }
    return;
  }
  const long long m = n * s;
  double sum = 0.0;
  for (long long e = threadIdx.x; e < m; e += blockDim.x) {
    const long long ni = e / s, si = e - ni * s;
    sum += (double)x[(ni * c + ch) * s + si];
  }
  const double mu = block_sum(sum, scratch) / (double)m;
  double sq = 0.0;
  for (long long e = threadIdx.x; e < m; e += blockDim.x) {
    const long long ni = e / s, si = e - ni * s;
    const double d = (double)x[(ni * c + ch) * s + si] - mu;
    sq += d * d;
  }
  const double var = block_sum(sq, scratch) / (double)m;
  if (threadIdx.x == 0) {
    mean[ch] = (T)mu;
    rstd[ch] = (T)(1.0 / Num<double>::sqrt(var + eps));
  }
}

template <typename T>
__device__ __forceinline__ void batch_norm_apply_body(
    const T* __restrict__ x, const T* __restrict__ mean, const T* __restrict__ rstd,
    const T* __restrict__ w, const T* __restrict__ b, T* __restrict__ y, long long total,
    long long c, long long s, long long w_stride, long long b_stride, long long has_w,
    long long has_b) {
  for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
       e += (long long)gridDim.x * blockDim.x) {
    const long long ch = (e / s) % c;
    const T scale = rstd[ch] * param_or(w, has_w, ch, w_stride, T(1));
    y[e] = (x[e] - mean[ch]) * scale + param_or(b, has_b, ch, b_stride, T(0));
  }
}

// dx = w·rstd·(dy - a - (x - mu)·rstd·bb), a = Σdy/M and bb = Σdy·xhat/M when the statistics
// came from the batch, else 0.
template <typename T>
__device__ __forceinline__ void batch_norm_bwd_dx_body(
    const T* __restrict__ x, const T* __restrict__ dy, const T* __restrict__ mean,
    const T* __restrict__ rstd, const T* __restrict__ w, const double* __restrict__ sums,
    T* __restrict__ dx, long long total, long long c, long long s, long long count,
    long long w_stride, long long has_w, long long batch_stats) {
  for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
       e += (long long)gridDim.x * blockDim.x) {
    const long long ch = (e / s) % c;
    const T rs = rstd[ch];
    const T k = param_or(w, has_w, ch, w_stride, T(1)) * rs;
    const T a = batch_stats ? (T)(sums[2 * ch] / (double)count) : T(0);
    const T bb = batch_stats ? (T)(sums[2 * ch + 1] / (double)count) : T(0);
    dx[e] = k * (dy[e] - a - (x[e] - mean[ch]) * (rs * bb));
  }
}

// run = (1 - momentum)·run + momentum·stat, where stat is the batch mean, or
// (unbiased_var_from_rstd) the unbiased variance (1/rstd^2 - eps)·count/(count - 1).
template <typename T>
__device__ __forceinline__ void batch_norm_update_running_body(
    T* __restrict__ run, const T* __restrict__ stat, long long c, long long run_stride,
    double momentum, long long unbiased_var_from_rstd, double eps, long long count) {
  const long long ch = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (ch >= c) return;
  const double bessel = (double)count / (double)((count < 2 ? 2 : count) - 1);
  const double v = (double)stat[ch];
  const double st = unbiased_var_from_rstd ? (1.0 / (v * v) - eps) * bessel : v;
  T* p = run + ch * run_stride;
  *p = (T)((1.0 - momentum) * (double)*p + momentum * st);
}

// ----- entry points ----------------------------------------------------------------------

#define NORM_ENTRY(TNAME, T)                                                                    \
  extern "C" __global__ void __launch_bounds__(1024) group_norm_fwd_##TNAME(                   \
      const T* x, const T* w, const T* b, T* y, T* mean, T* rstd, long long groups,             \
      long long cg, long long s, long long w_stride, long long b_stride, long long has_w,      \
      long long has_b, double eps) {                                                            \
    group_norm_fwd_body<T>(x, w, b, y, mean, rstd, groups, cg, s, w_stride, b_stride, has_w,   \
                           has_b, eps);                                                         \
  }                                                                                             \
  extern "C" __global__ void __launch_bounds__(1024) group_norm_bwd_dx_##TNAME(                \
      const T* x, const T* dy, const T* mean, const T* rstd, const T* w, T* dx,                \
      long long groups, long long cg, long long s, long long w_stride, long long has_w) {      \
    group_norm_bwd_dx_body<T>(x, dy, mean, rstd, w, dx, groups, cg, s, w_stride, has_w);       \
  }                                                                                             \
  extern "C" __global__ void __launch_bounds__(256) norm_param_cols_##TNAME(                   \
      const T* x, const T* dy, const T* mean, const T* rstd, double* part_w, double* part_b,   \
      long long n, long long c, long long s, long long groups, long long per_channel) {        \
    norm_param_cols_body<T>(x, dy, mean, rstd, part_w, part_b, n, c, s, groups, per_channel);  \
  }                                                                                             \
  extern "C" __global__ void __launch_bounds__(1024) norm_param_reduce_##TNAME(                \
      const double* part_w, const double* part_b, T* dw, T* db, double* sums, long long c,     \
      long long s, long long splits) {                                                          \
    norm_param_reduce_body<T>(part_w, part_b, dw, db, sums, c, s, splits);                     \
  }                                                                                             \
  extern "C" __global__ void __launch_bounds__(1024) batch_norm_stats_##TNAME(                 \
      const T* x, const T* run_mean, const T* run_var, T* mean, T* rstd, long long n,          \
      long long c, long long s, long long rm_stride, long long rv_stride,                      \
      long long use_running, double eps) {                                                      \
    batch_norm_stats_body<T>(x, run_mean, run_var, mean, rstd, n, c, s, rm_stride, rv_stride,  \
                             use_running, eps);                                                 \
  }                                                                                             \
  extern "C" __global__ void __launch_bounds__(256) batch_norm_apply_##TNAME(                  \
      const T* x, const T* mean, const T* rstd, const T* w, const T* b, T* y, long long total, \
      long long c, long long s, long long w_stride, long long b_stride, long long has_w,       \
      long long has_b) {                                                                        \
    batch_norm_apply_body<T>(x, mean, rstd, w, b, y, total, c, s, w_stride, b_stride, has_w,   \
                             has_b);                                                            \
  }                                                                                             \
  extern "C" __global__ void __launch_bounds__(256) batch_norm_bwd_dx_##TNAME(                 \
      const T* x, const T* dy, const T* mean, const T* rstd, const T* w, const double* sums,   \
      T* dx, long long total, long long c, long long s, long long count, long long w_stride,   \
      long long has_w, long long batch_stats) {                                                 \
    batch_norm_bwd_dx_body<T>(x, dy, mean, rstd, w, sums, dx, total, c, s, count, w_stride,    \
                              has_w, batch_stats);                                              \
  }                                                                                             \
  extern "C" __global__ void __launch_bounds__(256) batch_norm_update_running_##TNAME(         \
      T* run, const T* stat, long long c, long long run_stride, double momentum,               \
      long long unbiased_var_from_rstd, double eps, long long count) {                          \
    batch_norm_update_running_body<T>(run, stat, c, run_stride, momentum,                      \
                                      unbiased_var_from_rstd, eps, count);                      \
  }

NORM_ENTRY(f32, float)
NORM_ENTRY(f64, double)
