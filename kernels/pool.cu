// pool.cu: window average (avg_pool2d, adaptive_avg_pool2d, nearest upsampling) and max pool
// over [N, C, H, W], forward and backward.
//
// Output pixel (i, j) reads the input rectangle rows[i] x cols[j] (half-open, already clipped
// to the plane by the host):
//   window_avg2d:  out = Σ_window x / (div_r[i]·div_c[j])        (divisor at least 1)
//   max_pool2d:    out = max_window x, idx = iy·W + ix of the first maximum (a NaN wins and
//                  stays; an empty window gives -inf and index 0)
//   window_avg2d backward (a gather, no atomics): dx[y, x] = Σ_{i ∋ y} Σ_{j ∋ x}
//                  dy[i, j] / (div_r[i]·div_c[j]), over the output rows whose window holds
//                  input row y (a CSR list built by the host), likewise for columns.
//   max_pool2d backward: dx[plane, idx] += dy (atomicAdd on a zeroed dx: overlapping windows
//                  can share a maximum; the backward gets no windows to gather with).
// Window metadata is one i64 buffer `meta`: rows as (start, end, div) triples at 0, cols at
// 3·OH, and for the average backward the CSR offsets/lists at the given offsets.
// Inputs are read through their 4-D strides (s0..s3 for N, C, H, W); outputs are contiguous.
// Launch: one thread per output element (per input element for the average backward),
// grid-stride, blockDim 256.
// Cost: each output reads its window once (k_h·k_w reads), each output written once; the
// average backward reads the windows' dy values once per covered input pixel.
#include "tile.cuh"

struct PoolGeom {
  long long c, ih, iw, oh, ow;
};

template <typename T>
__device__ __forceinline__ void window_avg2d_fwd_body(const T* __restrict__ x,
                                                      const long long* __restrict__ meta,
                                                      T* __restrict__ out, long long planes,
                                                      PoolGeom g, long long s0, long long s1,
                                                      long long s2, long long s3) {
  const long long* rows = meta;
  const long long* cols = meta + 3 * g.oh;
  const long long total = planes * g.oh * g.ow;
  for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
       e += (long long)gridDim.x * blockDim.x) {
    const long long plane = e / (g.oh * g.ow), ij = e - plane * g.oh * g.ow;
    const long long i = ij / g.ow, j = ij - i * g.ow;
    const T* xp = x + (plane / g.c) * s0 + (plane % g.c) * s1;
    T s = T(0);
    for (long long y = rows[3 * i]; y < rows[3 * i + 1]; ++y)
      for (long long xx = cols[3 * j]; xx < cols[3 * j + 1]; ++xx) s += xp[y * s2 + xx * s3];
    long long div = rows[3 * i + 2] * cols[3 * j + 2];
    out[e] = s / (T)(div < 1 ? 1 : div);
  }
}

template <typename T>
__device__ __forceinline__ void window_avg2d_bwd_body(
    const T* __restrict__ dy, const long long* __restrict__ meta, T* __restrict__ dx,
    long long planes, PoolGeom g, long long row_ptr_at, long long row_idx_at,
    long long col_ptr_at, long long col_idx_at, long long s0, long long s1, long long s2,
    long long s3) {
  const long long* rows = meta;
  const long long* cols = meta + 3 * g.oh;
  const long long *row_ptr = meta + row_ptr_at, *row_idx = meta + row_idx_at;
  const long long *col_ptr = meta + col_ptr_at, *col_idx = meta + col_idx_at;
  const long long total = planes * g.ih * g.iw;
  for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
       e += (long long)gridDim.x * blockDim.x) {
    const long long plane = e / (g.ih * g.iw), yx = e - plane * g.ih * g.iw;
    const long long y = yx / g.iw, xx = yx - y * g.iw;
    const T* gp = dy + (plane / g.c) * s0 + (plane % g.c) * s1;
    T s = T(0);
    for (long long a = row_ptr[y]; a < row_ptr[y + 1]; ++a) {
      const long long i = row_idx[a];
      for (long long bq = col_ptr[xx]; bq < col_ptr[xx + 1]; ++bq) {
        const long long j = col_idx[bq];
        const long long div = rows[3 * i + 2] * cols[3 * j + 2];
        s += gp[i * s2 + j * s3] * (T(1) / (T)(div < 1 ? 1 : div));
      }
    }
    dx[e] = s;
  }
}

template <typename T>
__device__ __forceinline__ void max_pool2d_fwd_body(const T* __restrict__ x,
                                                    const long long* __restrict__ meta,
                                                    T* __restrict__ out,
                                                    long long* __restrict__ idx,
                                                    long long planes, PoolGeom g, long long s0,
                                                    long long s1, long long s2, long long s3) {
  const long long* rows = meta;
  const long long* cols = meta + 3 * g.oh;
  const long long total = planes * g.oh * g.ow;
  for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
       e += (long long)gridDim.x * blockDim.x) {
    const long long plane = e / (g.oh * g.ow), ij = e - plane * g.oh * g.ow;
    const long long i = ij / g.ow, j = ij - i * g.ow;
    const T* xp = x + (plane / g.c) * s0 + (plane % g.c) * s1;
    T best = Num<T>::neg_inf();
    long long at = -1;
    for (long long y = rows[3 * i]; y < rows[3 * i + 1]; ++y)
      for (long long xx = cols[3 * j]; xx < cols[3 * j + 1]; ++xx) {
        const T v = xp[y * s2 + xx * s3];
        if (at < 0 || v > best || (v != v && best == best)) {
          best = v;
          at = y * g.iw + xx;
        }
      }
    out[e] = best;
    idx[e] = at < 0 ? 0 : at;
  }
}

// dx must be zeroed by the caller.
template <typename T>
__device__ __forceinline__ void max_pool2d_bwd_body(const T* __restrict__ dy,
                                                    const long long* __restrict__ idx,
                                                    T* __restrict__ dx, long long planes,
                                                    long long c, long long oh, long long ow,
                                                    long long ihw, long long g0, long long g1,
                                                    long long g2, long long g3, long long i0,
                                                    long long i1, long long i2, long long i3) {
  const long long total = planes * oh * ow;
  for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
       e += (long long)gridDim.x * blockDim.x) {
    const long long plane = e / (oh * ow), ij = e - plane * oh * ow;
    const long long i = ij / ow, j = ij - i * ow;
    const long long n = plane / c, ch = plane % c;
    const long long k = idx[n * i0 + ch * i1 + i * i2 + j * i3];
    // Indices come from the forward; out-of-range ones are ignored (as on the CPU).
    if (k >= 0 && k < ihw) atomicAdd(dx + plane * ihw + k, dy[n * g0 + ch * g1 + i * g2 + j * g3]);
  }
}

#define POOL_ENTRY(TNAME, T)                                                                     \
  extern "C" __global__ void __launch_bounds__(256) window_avg2d_fwd_##TNAME(                   \
      const T* x, const long long* meta, T* out, long long planes, long long c, long long ih,   \
      long long iw, long long oh, long long ow, long long s0, long long s1, long long s2,       \
      long long s3) {                                                                            \
    window_avg2d_fwd_body<T>(x, meta, out, planes, PoolGeom{c, ih, iw, oh, ow}, s0, s1, s2, s3); \
  }                                                                                              \
  extern "C" __global__ void __launch_bounds__(256) window_avg2d_bwd_##TNAME(                   \
      const T* dy, const long long* meta, T* dx, long long planes, long long c, long long ih,   \
      long long iw, long long oh, long long ow, long long row_ptr_at, long long row_idx_at,     \
      long long col_ptr_at, long long col_idx_at, long long s0, long long s1, long long s2,     \
      long long s3) {                                                                            \
    window_avg2d_bwd_body<T>(dy, meta, dx, planes, PoolGeom{c, ih, iw, oh, ow}, row_ptr_at,     \
                             row_idx_at, col_ptr_at, col_idx_at, s0, s1, s2, s3);               \
  }                                                                                              \
  extern "C" __global__ void __launch_bounds__(256) max_pool2d_fwd_##TNAME(                     \
      const T* x, const long long* meta, T* out, long long* idx, long long planes, long long c, \
      long long ih, long long iw, long long oh, long long ow, long long s0, long long s1,       \
      long long s2, long long s3) {                                                              \
    max_pool2d_fwd_body<T>(x, meta, out, idx, planes, PoolGeom{c, ih, iw, oh, ow}, s0, s1, s2,  \
                           s3);                                                                  \
  }                                                                                              \
  extern "C" __global__ void __launch_bounds__(256) max_pool2d_bwd_##TNAME(                     \
      const T* dy, const long long* idx, T* dx, long long planes, long long c, long long oh,    \
      long long ow, long long ihw, long long g0, long long g1, long long g2, long long g3,      \
      long long i0, long long i1, long long i2, long long i3) {                                 \
    max_pool2d_bwd_body<T>(dy, idx, dx, planes, c, oh, ow, ihw, g0, g1, g2, g3, i0, i1, i2,     \
                           i3);                                                                  \
  }

POOL_ENTRY(f32, float)
POOL_ENTRY(f64, double)
