// conv.cu: 2-D convolution (cross-correlation) forward, input gradient and weight gradient as
// implicit GEMMs on tile.cuh's SIMT tile main loop: the operand loaders compute each element's
// input/filter position on the fly, so no im2col buffer is ever materialised.
//
//   out[n, co, oy, ox] = Σ_{ci < C_in/G, ky, kx} w[co, ci, ky, kx] ·
//                        x[n, g·C_in/G + ci, oy·sh + ky·dh - ph, ox·sw + kx·dw - pw]
// with g = co / (C_out/G) and positions outside the image reading 0. Per group g:
//   forward:         out_g[co, (n,p)]      = Σ_{(ci,ky,kx)} W_g[co, (ci,ky,kx)] · col[(ci,ky,kx), (n,p)]
//                    M = C_out/G, N = batch·OH·OW, K = C_in/G·KH·KW
//   input gradient:  dx_g[ci, (n,iy,ix)]   = Σ_{(co,ky,kx)} W_g[co, ci, ky, kx] · dy[n, co, oy, ox]
//                    where oy = (iy + ph - ky·dh)/sh must be a whole number in [0, OH) (else 0);
//                    M = C_in/G, N = batch·H·W, K = C_out/G·KH·KW. A gather, so no atomics.
//   weight gradient: dw_g[co, (ci,ky,kx)]  = Σ_{(n,p)} dy[n, co, p] · col[(ci,ky,kx), (n,p)]
//                    M = C_out/G, N = C_in/G·KH·KW, K = batch·OH·OW (long: split-K, grid.y
//                    splits write partials to ws[split], `conv_splitk_reduce_*` sums them in
//                    order).
// Inputs are read through their 4-D strides; outputs are contiguous.
// Launch: 256 threads; grid.x = ceil(M/64)·ceil(N/64) tiles, grid.y = splits (1 except for
// the weight gradient), grid.z = min(groups, 65535) (the kernel strides over more groups).
// Tiles: f32 64x64, BK 16, 4x4 per thread; f64 64x64, BK 8, 4x4 per thread.
// Cost: each pass 2·batch·C_out·OH·OW·C_in/G·KH·KW FLOPs (the input gradient also spends
// loads and FLOPs on the taps skipped by the stride: (sh·sw - 1)/(sh·sw) of its K is zeros).
// Input elements are re-read from L2 about KH·KW/(sh·sw) times per output-channel tile.
#include "tile.cuh"

struct ConvGeom {
  int n, c_in, h, w, c_out, kh, kw, sh, sw, ph, pw, dh, dw, groups, oh, ow;
  __device__ __forceinline__ int cin_g() const { return c_in / groups; }
  __device__ __forceinline__ int cout_g() const { return c_out / groups; }
};

// Filter W viewed per group as A[co, (ci, ky, kx)] (forward, weight-gradient output layout).
template <typename T> struct FilterRows {
  const T* w;
  long long s0, s1, s2, s3;
  int rows, cols, khw, kw;  // rows = C_out/G, cols = C_in/G·KH·KW
  __device__ __forceinline__ bool m_fastest() const { return s0 < s3; }
  __device__ __forceinline__ T operator()(long long m, long long k) const {
    if (m >= rows || k >= cols) return T(0);
    const int kk = (int)k, ci = kk / khw, r = kk - ci * khw, ky = r / kw, kx = r - ky * kw;
    return w[m * s0 + ci * s1 + ky * s2 + kx * s3];
  }
};

// Filter W viewed per group as A[ci, (co, ky, kx)] (input gradient).
template <typename T> struct FilterCols {
  const T* w;
  long long s0, s1, s2, s3;
  int rows, cols, khw, kw;  // rows = C_in/G, cols = C_out/G·KH·KW
  __device__ __forceinline__ bool m_fastest() const { return s1 < s3; }
  __device__ __forceinline__ T operator()(long long m, long long k) const {
    if (m >= rows || k >= cols) return T(0);
    const int kk = (int)k, co = kk / khw, r = kk - co * khw, ky = r / kw, kx = r - ky * kw;
    return w[co * s0 + m * s1 + ky * s2 + kx * s3];
  }
};

// The column matrix col[(ci, ky, kx), (n, oy, ox)] of a group's input, computed on the fly.
// As the forward's B (k = tap, n = pixel) or, transposed, the weight gradient's B
// (k = pixel, n = tap): `TRANSPOSED` swaps the two indices.
template <typename T, bool TRANSPOSED> struct ImageColumns {
  const T* x;  // already offset to the group's first channel
  long long s0, s1, s2, s3;
  ConvGeom g;
  __device__ __forceinline__ bool n_fastest() const { return !TRANSPOSED; }
  __device__ __forceinline__ T operator()(long long a, long long b) const {
    const long long tap = TRANSPOSED ? b : a, pix = TRANSPOSED ? a : b;
    const int khw = g.kh * g.kw, p = g.oh * g.ow;
    if (tap >= (long long)g.cin_g() * khw || pix >= (long long)g.n * p) return T(0);
    const int t = (int)tap, ci = t / khw, r = t - ci * khw, ky = r / g.kw, kx = r - ky * g.kw;
    const long long ni = pix / p;
    const int pp = (int)(pix - ni * p), oy = pp / g.ow, ox = pp - oy * g.ow;
    const int iy = oy * g.sh + ky * g.dh - g.ph, ix = ox * g.sw + kx * g.dw - g.pw;
    if (iy < 0 || iy >= g.h || ix < 0 || ix >= g.w) return T(0);
    return x[ni * s0 + ci * s1 + iy * s2 + ix * s3];
  }
};

// dy viewed per group as B[(co, ky, kx), (n, iy, ix)] for the input gradient: the output
// position that tap (ky, kx) of input pixel (iy, ix) came from, or 0.
template <typename T> struct GradTaps {
  const T* dy;  // already offset to the group's first output channel
  long long s0, s1, s2, s3;
  ConvGeom g;
  __device__ __forceinline__ bool n_fastest() const { return true; }
  __device__ __forceinline__ T operator()(long long k, long long pix) const {
    const int khw = g.kh * g.kw, hw = g.h * g.w;
    if (k >= (long long)g.cout_g() * khw || pix >= (long long)g.n * hw) return T(0);
    const int kk = (int)k, co = kk / khw, r = kk - co * khw, ky = r / g.kw, kx = r - ky * g.kw;
    const long long ni = pix / hw;
    const int q = (int)(pix - ni * hw), iy = q / g.w, ix = q - iy * g.w;
    const int ty = iy + g.ph - ky * g.dh, tx = ix + g.pw - kx * g.dw;
    if (ty < 0 || tx < 0 || ty % g.sh != 0 || tx % g.sw != 0) return T(0);
    const int oy = ty / g.sh, ox = tx / g.sw;
    if (oy >= g.oh || ox >= g.ow) return T(0);
    return dy[ni * s0 + co * s1 + oy * s2 + ox * s3];
  }
};

// dy viewed per group as A[co, (n, oy, ox)] for the weight gradient.
template <typename T> struct GradRows {
  const T* dy;  // already offset to the group's first output channel
  long long s0, s1, s2, s3;
  int rows, n, oh, ow;
  __device__ __forceinline__ bool m_fastest() const { return s1 < s3; }
  __device__ __forceinline__ T operator()(long long m, long long k) const {
    const int p = oh * ow;
    if (m >= rows || k >= (long long)n * p) return T(0);
    const long long ni = k / p;
    const int pp = (int)(k - ni * p), oy = pp / ow, ox = pp - oy * ow;
    return dy[ni * s0 + m * s1 + oy * s2 + ox * s3];
  }
};

// Output [batch, C, P] (P pixels per channel) seen per group as C_g[c, (n, p)].
template <typename T> struct ChannelPixelStore {
  T* out;  // already offset to the group's first channel
  long long channels, pixels;  // all channels of the tensor; pixels per channel
  __device__ __forceinline__ void operator()(long long c, long long col, T v) const {
    const long long ni = col / pixels, p = col - ni * pixels;
    out[(ni * channels + c) * pixels + p] = v;
  }
};

template <typename T> struct RowStore {
  T* out;
  long long ld;
  __device__ __forceinline__ void operator()(long long i, long long j, T v) const {
    out[i * ld + j] = v;
  }
};

#define CONV_GEOM_PARAMS                                                                    \
  long long n, long long c_in, long long in_h, long long in_w, long long c_out, long long kh, \
      long long kw, long long stride_h, long long stride_w, long long pad_h, long long pad_w, \
      long long dil_h, long long dil_w, long long groups, long long oh, long long ow
#define CONV_GEOM_ARGS                                                                    \
  n, c_in, in_h, in_w, c_out, kh, kw, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups, \
      oh, ow

__device__ __forceinline__ ConvGeom make_geom(CONV_GEOM_PARAMS) {
  return ConvGeom{(int)n,        (int)c_in,     (int)in_h,  (int)in_w,  (int)c_out, (int)kh,
                  (int)kw,       (int)stride_h, (int)stride_w, (int)pad_h, (int)pad_w, (int)dil_h,
                  (int)dil_w,    (int)groups,   (int)oh,    (int)ow};
}

template <typename T, int BM, int BN, int BK, int TM, int TN>
__device__ __forceinline__ void conv2d_fwd_body(const T* __restrict__ x, const T* __restrict__ wt,
                                                T* __restrict__ out, ConvGeom g, long long x0,
                                                long long x1, long long x2, long long x3,
                                                long long w0, long long w1, long long w2,
                                                long long w3) {
  __shared__ TileSmem<T, BM, BN, BK> sm;
  const long long M = g.cout_g(), N = (long long)g.n * g.oh * g.ow;
  const long long K = (long long)g.cin_g() * g.kh * g.kw;
  const long long tiles_n = (N + BN - 1) / BN;
  const long long m0 = (long long)(blockIdx.x / tiles_n) * BM;
  const long long n0 = (long long)(blockIdx.x % tiles_n) * BN;
  for (long long gi = blockIdx.z; gi < g.groups; gi += gridDim.z) {
    const FilterRows<T> la{wt + gi * M * w0, w0, w1, w2, w3, (int)M, (int)K, g.kh * g.kw, g.kw};
    const ImageColumns<T, false> lb{x + gi * g.cin_g() * x1, x0, x1, x2, x3, g};
    T acc[TM][TN];
    tile_gemm_mainloop<T, BM, BN, BK, TM, TN>(la, lb, m0, n0, 0, K, sm, acc);
    const ChannelPixelStore<T> st{out + gi * M * g.oh * g.ow, g.c_out, (long long)g.oh * g.ow};
    tile_gemm_store<T, BM, BN, TM, TN>(st, m0, n0, M, N, acc);
  }
}

template <typename T, int BM, int BN, int BK, int TM, int TN>
__device__ __forceinline__ void conv2d_bwd_input_body(const T* __restrict__ dy,
                                                      const T* __restrict__ wt,
                                                      T* __restrict__ dx, ConvGeom g,
                                                      long long d0, long long d1, long long d2,
                                                      long long d3, long long w0, long long w1,
                                                      long long w2, long long w3) {
  __shared__ TileSmem<T, BM, BN, BK> sm;
  const long long M = g.cin_g(), N = (long long)g.n * g.h * g.w;
  const long long K = (long long)g.cout_g() * g.kh * g.kw;
  const long long tiles_n = (N + BN - 1) / BN;
  const long long m0 = (long long)(blockIdx.x / tiles_n) * BM;
  const long long n0 = (long long)(blockIdx.x % tiles_n) * BN;
  for (long long gi = blockIdx.z; gi < g.groups; gi += gridDim.z) {
    const FilterCols<T> la{wt + gi * g.cout_g() * w0, w0, w1, w2, w3, (int)M, (int)K,
                           g.kh * g.kw, g.kw};
    const GradTaps<T> lb{dy + gi * g.cout_g() * d1, d0, d1, d2, d3, g};
    T acc[TM][TN];
    tile_gemm_mainloop<T, BM, BN, BK, TM, TN>(la, lb, m0, n0, 0, K, sm, acc);
    const ChannelPixelStore<T> st{dx + gi * M * g.h * g.w, g.c_in, (long long)g.h * g.w};
    tile_gemm_store<T, BM, BN, TM, TN>(st, m0, n0, M, N, acc);
  }
}

// With split-K (gridDim.y > 1) `dw` is a workspace [splits, C_out, C_in/G·KH·KW].
template <typename T, int BM, int BN, int BK, int TM, int TN>
__device__ __forceinline__ void conv2d_bwd_weight_body(const T* __restrict__ x,
                                                       const T* __restrict__ dy,
                                                       T* __restrict__ dw, ConvGeom g,
                                                       long long x0, long long x1, long long x2,
                                                       long long x3, long long d0, long long d1,
                                                       long long d2, long long d3) {
  __shared__ TileSmem<T, BM, BN, BK> sm;
  const long long M = g.cout_g(), N = (long long)g.cin_g() * g.kh * g.kw;
  const long long K = (long long)g.n * g.oh * g.ow;
  const long long tiles_n = (N + BN - 1) / BN;
  const long long m0 = (long long)(blockIdx.x / tiles_n) * BM;
  const long long n0 = (long long)(blockIdx.x % tiles_n) * BN;
  const long long splits = gridDim.y;
  const long long steps = (K + BK - 1) / BK;
  const long long steps_per_split = (steps + splits - 1) / splits;
  const long long k_begin = blockIdx.y * steps_per_split * BK;
  const long long k_end = min(K, k_begin + steps_per_split * BK);
  T* out = dw + (long long)blockIdx.y * g.c_out * N;
  for (long long gi = blockIdx.z; gi < g.groups; gi += gridDim.z) {
    const GradRows<T> la{dy + gi * M * d1, d0, d1, d2, d3, (int)M, g.n, g.oh, g.ow};
    const ImageColumns<T, true> lb{x + gi * g.cin_g() * x1, x0, x1, x2, x3, g};
    T acc[TM][TN];
    tile_gemm_mainloop<T, BM, BN, BK, TM, TN>(la, lb, m0, n0, k_begin, k_end, sm, acc);
    tile_gemm_store<T, BM, BN, TM, TN>(RowStore<T>{out + gi * M * N, N}, m0, n0, M, N, acc);
  }
}

#define CONV_ENTRY(TNAME, T, BK, BOUNDS)                                                          \
  extern "C" __global__ void BOUNDS conv2d_fwd_##TNAME(                                         \
      const T* x, const T* wt, T* out, CONV_GEOM_PARAMS, long long x0, long long x1,            \
      long long x2, long long x3, long long w0, long long w1, long long w2, long long w3) {     \
    conv2d_fwd_body<T, 64, 64, BK, 4, 4>(x, wt, out, make_geom(CONV_GEOM_ARGS), x0, x1, x2, x3, \
                                         w0, w1, w2, w3);                                        \
  }                                                                                              \
  extern "C" __global__ void BOUNDS conv2d_bwd_input_##TNAME(                                   \
      const T* dy, const T* wt, T* dx, CONV_GEOM_PARAMS, long long d0, long long d1,            \
      long long d2, long long d3, long long w0, long long w1, long long w2, long long w3) {     \
    conv2d_bwd_input_body<T, 64, 64, BK, 4, 4>(dy, wt, dx, make_geom(CONV_GEOM_ARGS), d0, d1,   \
                                               d2, d3, w0, w1, w2, w3);                          \
  }                                                                                              \
  extern "C" __global__ void BOUNDS conv2d_bwd_weight_##TNAME(                                  \
      const T* x, const T* dy, T* dw, CONV_GEOM_PARAMS, long long x0, long long x1,             \
      long long x2, long long x3, long long d0, long long d1, long long d2, long long d3) {     \
    conv2d_bwd_weight_body<T, 64, 64, BK, 4, 4>(x, dy, dw, make_geom(CONV_GEOM_ARGS), x0, x1,   \
                                                x2, x3, d0, d1, d2, d3);                         \
  }                                                                                              \
  extern "C" __global__ void __launch_bounds__(256)                                             \
      conv_splitk_reduce_##TNAME(const T* ws, T* c, long long total, long long splits) {        \
    splitk_reduce<T>(ws, c, total, splits);                                                      \
  }

CONV_ENTRY(f32, float, 16, __launch_bounds__(256, 2))
CONV_ENTRY(f64, double, 8, __launch_bounds__(256, 2))
