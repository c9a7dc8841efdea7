// attention.cu: fused scaled dot-product attention, flash-style (the Tq x Tk score and
// probability matrices are never stored), forward and backward.
//
// Per (batch b, head h) and query row i, over the keys j allowed by the masks:
//   s_ij = scale·q_i·k_j,  lse_i = log Σ_j exp(s_ij),  o_i = Σ_j exp(s_ij - lse_i)·v_j
// computed with an online softmax (running max m and sum l; the partial output is rescaled
// by exp(m_old - m_new) whenever m grows). A row with no allowed key gets o = 0, lse = -inf.
// Key j is hidden from query i when `causal` and j > i, and by each given u8 mask (broadcast
// [B, H, Tq, Tk] strides; mode 1: allowed when the byte is nonzero, SDPA's boolean
// attn_mask; mode 2: allowed when zero, a key-padding mask; mode 0: no mask).
// Backward recomputes p_ij = exp(s_ij - lse_i) from the saved lse, tile by tile:
//   D_i = dO_i·O_i,  dP_ij = dO_i·v_j,  dS_ij = p_ij (dP_ij - D_i),
//   dQ_i = scale Σ_j dS_ij k_j,  dK_j = scale Σ_i dS_ij q_i,  dV_j = Σ_i p_ij dO_i
// in FlashAttention-2's split: one kernel per query tile accumulates dQ, one per key tile
// accumulates dK and dV, so no atomics and a fixed summation order.
//
// q, k, v and dO are read through their 4-D strides (a permuted [B, T, H, D] projection needs
// no copy); o, lse, dq, dk, dv are contiguous. Head dims: lanes own output columns
// d = lane + 32·c, c < CH, so each kernel is instantiated for CH = 1, 2, 4, 8
// (max(D, Dv) <= 32, 64, 128, 256): names end in `_c{CH}_{f32,f64}`.
//
// Launch shapes (128 threads = 4 warps; dynamic shared memory, bytes given per kernel with
// E = sizeof(T); above 48 KiB the launcher raises the kernel's limit):
// * attention_fwd:      grid B·H·ceil(Tq/16); warp w owns query rows 4w..4w+3 of the tile;
//                       key tiles of 32, lane = key for scores, lane = column for o.
//                       smem (16·D + 32·(D+1) + 32·Dv)·E.
// * attention_bwd_delta: grid ceil(B·H·Tq/4), one warp per row: D_i.
// * attention_bwd_dq:   grid B·H·ceil(Tq/16), like the forward.
//                       smem (16·D + 16·Dv + 32·(D+1) + 32·(Dv+1))·E.
// * attention_bwd_dkdv: grid B·H·ceil(Tk/16); warp w owns keys 4w..4w+3 of the tile; query
//                       tiles of 32, lane = query for scores, lane = column for dk, dv.
//                       smem (16·D + 16·Dv + 32·(D+1) + 32·(Dv+1))·E.
// Cost: forward 2·B·H·Tq·Tk·(D + Dv) FLOPs (half that under a causal mask), reads q, o once
// and k, v once per 16-row query tile (from L2); backward about 2.5x the forward's FLOPs
// (scores recomputed twice), k, v re-read per query tile and q, dO per key tile.
#include "tile.cuh"

#define ATTN_WARPS 4
#define ATTN_ROWS 4                         // query rows (forward, dq) or keys (dkdv) per warp
#define ATTN_TILE (ATTN_WARPS * ATTN_ROWS)  // 16 rows or keys per block
#define ATTN_KT 32                          // keys (forward, dq) or queries (dkdv) per step

extern __shared__ __align__(16) unsigned char attn_smem[];

// Strides of one [B, H, T, D] operand.
struct Strides4 {
  long long b, h, t, d;
};

struct AttnMaskArg {
  const unsigned char* p;
  Strides4 s;
  long long mode;  // 0 none, 1 allowed when set, 2 allowed when clear
};

struct AttnShape {
  long long heads, tq, tk, d, dv;
  long long causal;
};

__device__ __forceinline__ bool mask_allows(const AttnMaskArg& m, long long b, long long h,
                                            long long i, long long j) {
  if (m.mode == 0) return true;
  const bool set = m.p[b * m.s.b + h * m.s.h + i * m.s.t + j * m.s.d] != 0;
  return set == (m.mode == 1);
}

__device__ __forceinline__ bool attn_allowed(const AttnShape& a, const AttnMaskArg& m0,
                                             const AttnMaskArg& m1, long long b, long long h,
                                             long long i, long long j) {
  if (a.causal && j > i) return false;
  return mask_allows(m0, b, h, i, j) && mask_allows(m1, b, h, i, j);
}

// rows x cols of a strided [B, H, T, D] operand (rows from t0, zero past t_len) into shared
// memory with row pitch `pitch`, all threads of the block cooperating.
template <typename T>
__device__ __forceinline__ void attn_load_tile(T* dst, long long pitch, const T* src,
                                               const Strides4& s, long long b, long long h,
                                               long long t0, long long t_len, long long rows,
                                               long long cols) {
  const T* base = src + b * s.b + h * s.h;
  for (long long e = threadIdx.x; e < rows * cols; e += blockDim.x) {
    const long long r = e / cols, c = e - r * cols;
    const long long t = t0 + r;
    dst[r * pitch + c] = t < t_len ? base[t * s.t + c * s.d] : T(0);
  }
}

// ----- forward -----------------------------------------------------------------------------

template <typename T, int CH>
__device__ __forceinline__ void attention_fwd_body(const T* __restrict__ q, const T* __restrict__ k,
                                                   const T* __restrict__ v, T* __restrict__ o,
                                                   T* __restrict__ lse, AttnShape a, Strides4 qs,
                                                   Strides4 ks, Strides4 vs, AttnMaskArg m0,
                                                   AttnMaskArg m1, double scale_d) {
  const long long D = a.d, DV = a.dv;
  T* Qs = reinterpret_cast<T*>(attn_smem);  // [16][D]
  T* Ks = Qs + ATTN_TILE * D;               // [32][D + 1]
  T* Vs = Ks + ATTN_KT * (D + 1);           // [32][Dv]
  const T scale = (T)scale_d;
  const long long q_tiles = (a.tq + ATTN_TILE - 1) / ATTN_TILE;
  const long long bh = blockIdx.x / q_tiles;
  const long long i0 = (blockIdx.x % q_tiles) * ATTN_TILE;
  const long long b = bh / a.heads, h = bh % a.heads;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;

  attn_load_tile(Qs, D, q, qs, b, h, i0, a.tq, ATTN_TILE, D);

  T m[ATTN_ROWS], l[ATTN_ROWS], acc[ATTN_ROWS][CH];
#pragma unroll
  for (int rr = 0; rr < ATTN_ROWS; ++rr) {
    m[rr] = Num<T>::neg_inf();
    l[rr] = T(0);
#pragma unroll
    for (int c = 0; c < CH; ++c) acc[rr][c] = T(0);
  }
  // Under a causal mask no key past the tile's last row is visible.
  const long long k_end = a.causal ? min(a.tk, i0 + ATTN_TILE) : a.tk;
  for (long long j0 = 0; j0 < k_end; j0 += ATTN_KT) {
    __syncthreads();  // the previous K/V tile (and, first time, nothing) is consumed
    attn_load_tile(Ks, D + 1, k, ks, b, h, j0, a.tk, ATTN_KT, D);
    attn_load_tile(Vs, DV, v, vs, b, h, j0, a.tk, ATTN_KT, DV);
    __syncthreads();
    const long long j = j0 + lane;
#pragma unroll
    for (int rr = 0; rr < ATTN_ROWS; ++rr) {
      const int r = warp * ATTN_ROWS + rr;
      const long long i = i0 + r;
      if (i >= a.tq) continue;  // warp-uniform
      T s = Num<T>::neg_inf();
      if (j < a.tk && attn_allowed(a, m0, m1, b, h, i, j)) {
        T dot = T(0);
        for (long long d = 0; d < D; ++d) dot = fma(Qs[r * D + d], Ks[lane * (D + 1) + d], dot);
        s = scale * dot;
      }
      const T m_tile = warp_max(s);
      if (m_tile == Num<T>::neg_inf()) continue;  // warp-uniform: no allowed key here
      const T m_new = m[rr] > m_tile ? m[rr] : m_tile;
      const T corr = Num<T>::exp(m[rr] - m_new);
      const T p = Num<T>::exp(s - m_new);  // 0 for masked keys
      l[rr] = l[rr] * corr + warp_sum(p);
#pragma unroll
      for (int c = 0; c < CH; ++c) acc[rr][c] *= corr;
#pragma unroll 2
      for (int jj = 0; jj < ATTN_KT; ++jj) {
        const T pj = __shfl_sync(TILE_FULL_MASK, p, jj);
#pragma unroll
        for (int c = 0; c < CH; ++c) {
          const long long d = lane + 32 * c;
          if (d < DV) acc[rr][c] = fma(pj, Vs[jj * DV + d], acc[rr][c]);
        }
      }
      m[rr] = m_new;
    }
  }
#pragma unroll
  for (int rr = 0; rr < ATTN_ROWS; ++rr) {
    const long long i = i0 + warp * ATTN_ROWS + rr;
    if (i >= a.tq) continue;
    const long long row = bh * a.tq + i;
    const bool any = l[rr] > T(0);
    const T inv = any ? Num<T>::rcp(l[rr]) : T(0);
#pragma unroll
    for (int c = 0; c < CH; ++c) {
      const long long d = lane + 32 * c;
      if (d < DV) o[row * DV + d] = any ? acc[rr][c] * inv : T(0);
    }
    if (lane == 0) lse[row] = any ? m[rr] + Num<T>::log(l[rr]) : Num<T>::neg_inf();
  }
}

// ----- backward ----------------------------------------------------------------------------

// delta[row] = Σ_d dO[row, d]·O[row, d]; one warp per (b, h, i) row.
template <typename T>
__device__ __forceinline__ void attention_bwd_delta_body(const T* __restrict__ o,
                                                         const T* __restrict__ dout,
                                                         T* __restrict__ delta, AttnShape a,
                                                         long long rows, Strides4 gs) {
  const long long row = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;
  const long long bh = row / a.tq, i = row % a.tq;
  const long long b = bh / a.heads, h = bh % a.heads;
  const T* g = dout + b * gs.b + h * gs.h + i * gs.t;
  T s = T(0);
  for (long long d = lane; d < a.dv; d += 32) s = fma(g[d * gs.d], o[row * a.dv + d], s);
  s = warp_sum(s);
  if (lane == 0) delta[row] = s;
}

template <typename T, int CH>
__device__ __forceinline__ void attention_bwd_dq_body(
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
    const T* __restrict__ dout, const T* __restrict__ lse, const T* __restrict__ delta,
    T* __restrict__ dq, AttnShape a, Strides4 qs, Strides4 ks, Strides4 vs, Strides4 gs,
    AttnMaskArg m0, AttnMaskArg m1, double scale_d) {
  const long long D = a.d, DV = a.dv;
  T* Qs = reinterpret_cast<T*>(attn_smem);  // [16][D]
  T* Gs = Qs + ATTN_TILE * D;               // [16][Dv]  dO rows
  T* Ks = Gs + ATTN_TILE * DV;              // [32][D + 1]
  T* Vs = Ks + ATTN_KT * (D + 1);           // [32][Dv + 1]
  const T scale = (T)scale_d;
  const long long q_tiles = (a.tq + ATTN_TILE - 1) / ATTN_TILE;
  const long long bh = blockIdx.x / q_tiles;
  const long long i0 = (blockIdx.x % q_tiles) * ATTN_TILE;
  const long long b = bh / a.heads, h = bh % a.heads;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;

  attn_load_tile(Qs, D, q, qs, b, h, i0, a.tq, ATTN_TILE, D);
  attn_load_tile(Gs, DV, dout, gs, b, h, i0, a.tq, ATTN_TILE, DV);

  T acc[ATTN_ROWS][CH];
#pragma unroll
  for (int rr = 0; rr < ATTN_ROWS; ++rr)
#pragma unroll
    for (int c = 0; c < CH; ++c) acc[rr][c] = T(0);

  const long long k_end = a.causal ? min(a.tk, i0 + ATTN_TILE) : a.tk;
  for (long long j0 = 0; j0 < k_end; j0 += ATTN_KT) {
    __syncthreads();
    attn_load_tile(Ks, D + 1, k, ks, b, h, j0, a.tk, ATTN_KT, D);
    attn_load_tile(Vs, DV + 1, v, vs, b, h, j0, a.tk, ATTN_KT, DV);
    __syncthreads();
    const long long j = j0 + lane;
#pragma unroll
    for (int rr = 0; rr < ATTN_ROWS; ++rr) {
      const int r = warp * ATTN_ROWS + rr;
      const long long i = i0 + r;
      if (i >= a.tq) continue;  // warp-uniform
      const T l_i = lse[bh * a.tq + i];
      if (l_i == Num<T>::neg_inf()) continue;  // warp-uniform: the row saw no key
      T ds = T(0);
      if (j < a.tk && attn_allowed(a, m0, m1, b, h, i, j)) {
        T s = T(0), dp = T(0);
        for (long long d = 0; d < D; ++d) s = fma(Qs[r * D + d], Ks[lane * (D + 1) + d], s);
        for (long long d = 0; d < DV; ++d)
          dp = fma(Gs[r * DV + d], Vs[lane * (DV + 1) + d], dp);
        const T p = Num<T>::exp(scale * s - l_i);
        ds = p * (dp - delta[bh * a.tq + i]);
      }
#pragma unroll 2
      for (int jj = 0; jj < ATTN_KT; ++jj) {
        const T dsj = __shfl_sync(TILE_FULL_MASK, ds, jj) * scale;
#pragma unroll
        for (int c = 0; c < CH; ++c) {
          const long long d = lane + 32 * c;
          if (d < D) acc[rr][c] = fma(dsj, Ks[jj * (D + 1) + d], acc[rr][c]);
        }
      }
    }
  }
#pragma unroll
  for (int rr = 0; rr < ATTN_ROWS; ++rr) {
    const long long i = i0 + warp * ATTN_ROWS + rr;
    if (i >= a.tq) continue;
#pragma unroll
    for (int c = 0; c < CH; ++c) {
      const long long d = lane + 32 * c;
      if (d < D) dq[(bh * a.tq + i) * D + d] = acc[rr][c];
    }
  }
}

template <typename T, int CH>
__device__ __forceinline__ void attention_bwd_dkdv_body(
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
    const T* __restrict__ dout, const T* __restrict__ lse, const T* __restrict__ delta,
    T* __restrict__ dk, T* __restrict__ dv, AttnShape a, Strides4 qs, Strides4 ks, Strides4 vs,
    Strides4 gs, AttnMaskArg m0, AttnMaskArg m1, double scale_d) {
  const long long D = a.d, DV = a.dv;
  T* Kown = reinterpret_cast<T*>(attn_smem);  // [16][D]   this block's keys
  T* Vown = Kown + ATTN_TILE * D;             // [16][Dv]
  T* Qs = Vown + ATTN_TILE * DV;              // [32][D + 1]
  T* Gs = Qs + ATTN_KT * (D + 1);             // [32][Dv + 1]  dO rows
  const T scale = (T)scale_d;
  const long long k_tiles = (a.tk + ATTN_TILE - 1) / ATTN_TILE;
  const long long bh = blockIdx.x / k_tiles;
  const long long j0 = (blockIdx.x % k_tiles) * ATTN_TILE;
  const long long b = bh / a.heads, h = bh % a.heads;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;

  attn_load_tile(Kown, D, k, ks, b, h, j0, a.tk, ATTN_TILE, D);
  attn_load_tile(Vown, DV, v, vs, b, h, j0, a.tk, ATTN_TILE, DV);

  T acc_k[ATTN_ROWS][CH], acc_v[ATTN_ROWS][CH];
#pragma unroll
  for (int kk = 0; kk < ATTN_ROWS; ++kk)
#pragma unroll
    for (int c = 0; c < CH; ++c) {
      acc_k[kk][c] = T(0);
      acc_v[kk][c] = T(0);
    }

  // Under a causal mask query rows before the first key see none of this block's keys.
  const long long i_begin = a.causal ? (j0 / ATTN_KT) * ATTN_KT : 0;
  for (long long i0 = i_begin; i0 < a.tq; i0 += ATTN_KT) {
    __syncthreads();
    attn_load_tile(Qs, D + 1, q, qs, b, h, i0, a.tq, ATTN_KT, D);
    attn_load_tile(Gs, DV + 1, dout, gs, b, h, i0, a.tq, ATTN_KT, DV);
    __syncthreads();
    const long long i = i0 + lane;
    const T l_i = i < a.tq ? lse[bh * a.tq + i] : Num<T>::neg_inf();
    const T delta_i = i < a.tq ? delta[bh * a.tq + i] : T(0);
#pragma unroll
    for (int kk = 0; kk < ATTN_ROWS; ++kk) {
      const int jl = warp * ATTN_ROWS + kk;
      const long long j = j0 + jl;
      if (j >= a.tk) continue;  // warp-uniform
      T p = T(0), ds = T(0);
      const bool ok = i < a.tq && l_i != Num<T>::neg_inf() && attn_allowed(a, m0, m1, b, h, i, j);
      if (ok) {
        T s = T(0), dp = T(0);
        for (long long d = 0; d < D; ++d) s = fma(Qs[lane * (D + 1) + d], Kown[jl * D + d], s);
        for (long long d = 0; d < DV; ++d)
          dp = fma(Gs[lane * (DV + 1) + d], Vown[jl * DV + d], dp);
        p = Num<T>::exp(scale * s - l_i);
        ds = p * (dp - delta_i);
      }
      if (__ballot_sync(TILE_FULL_MASK, ok) == 0) continue;  // warp-uniform
#pragma unroll 2
      for (int ii = 0; ii < ATTN_KT; ++ii) {
        const T pi = __shfl_sync(TILE_FULL_MASK, p, ii);
        const T dsi = __shfl_sync(TILE_FULL_MASK, ds, ii) * scale;
#pragma unroll
        for (int c = 0; c < CH; ++c) {
          const long long d = lane + 32 * c;
          if (d < DV) acc_v[kk][c] = fma(pi, Gs[ii * (DV + 1) + d], acc_v[kk][c]);
          if (d < D) acc_k[kk][c] = fma(dsi, Qs[ii * (D + 1) + d], acc_k[kk][c]);
        }
      }
    }
  }
#pragma unroll
  for (int kk = 0; kk < ATTN_ROWS; ++kk) {
    const long long j = j0 + warp * ATTN_ROWS + kk;
    if (j >= a.tk) continue;
#pragma unroll
    for (int c = 0; c < CH; ++c) {
      const long long d = lane + 32 * c;
      if (d < D) dk[(bh * a.tk + j) * D + d] = acc_k[kk][c];
      if (d < DV) dv[(bh * a.tk + j) * DV + d] = acc_v[kk][c];
    }
  }
}

// ----- entry points ----------------------------------------------------------------------
// Scalar parameters, in order: heads, tq, tk, d, dv, causal; then the strides (b, h, t, d) of
// each strided operand; then per mask (pointer, 4 strides, mode); then scale.

#define ATTN_SHAPE_PARAMS \
  long long heads, long long tq, long long tk, long long d, long long dv, long long causal
#define ATTN_SHAPE AttnShape{heads, tq, tk, d, dv, causal}
#define ATTN_STRIDE_PARAMS(X) long long X##_sb, long long X##_sh, long long X##_st, long long X##_sd
#define ATTN_STRIDES(X) Strides4{X##_sb, X##_sh, X##_st, X##_sd}
#define ATTN_MASK_PARAMS(X) \
  const unsigned char *X, ATTN_STRIDE_PARAMS(X), long long X##_mode
#define ATTN_MASK(X) AttnMaskArg{X, ATTN_STRIDES(X), X##_mode}

#define ATTN_ENTRY(CH, TNAME, T)                                                                \
  extern "C" __global__ void __launch_bounds__(128) attention_fwd_c##CH##_##TNAME(             \
      const T* q, const T* k, const T* v, T* o, T* lse, ATTN_SHAPE_PARAMS,                     \
      ATTN_STRIDE_PARAMS(q), ATTN_STRIDE_PARAMS(k), ATTN_STRIDE_PARAMS(v),                     \
      ATTN_MASK_PARAMS(m0), ATTN_MASK_PARAMS(m1), double scale) {                               \
    attention_fwd_body<T, CH>(q, k, v, o, lse, ATTN_SHAPE, ATTN_STRIDES(q), ATTN_STRIDES(k),    \
                              ATTN_STRIDES(v), ATTN_MASK(m0), ATTN_MASK(m1), scale);           \
  }                                                                                             \
  extern "C" __global__ void __launch_bounds__(128) attention_bwd_dq_c##CH##_##TNAME(          \
      const T* q, const T* k, const T* v, const T* dout, const T* lse, const T* delta, T* dq,  \
      ATTN_SHAPE_PARAMS, ATTN_STRIDE_PARAMS(q), ATTN_STRIDE_PARAMS(k), ATTN_STRIDE_PARAMS(v),  \
      ATTN_STRIDE_PARAMS(g), ATTN_MASK_PARAMS(m0), ATTN_MASK_PARAMS(m1), double scale) {       \
    attention_bwd_dq_body<T, CH>(q, k, v, dout, lse, delta, dq, ATTN_SHAPE, ATTN_STRIDES(q),    \
                                 ATTN_STRIDES(k), ATTN_STRIDES(v), ATTN_STRIDES(g),            \
                                 ATTN_MASK(m0), ATTN_MASK(m1), scale);                         \
  }                                                                                             \
  extern "C" __global__ void __launch_bounds__(128) attention_bwd_dkdv_c##CH##_##TNAME(        \
      const T* q, const T* k, const T* v, const T* dout, const T* lse, const T* delta, T* dk,  \
      T* dv_out, ATTN_SHAPE_PARAMS, ATTN_STRIDE_PARAMS(q), ATTN_STRIDE_PARAMS(k),              \
      ATTN_STRIDE_PARAMS(v), ATTN_STRIDE_PARAMS(g), ATTN_MASK_PARAMS(m0),                      \
      ATTN_MASK_PARAMS(m1), double scale) {                                                     \
    attention_bwd_dkdv_body<T, CH>(q, k, v, dout, lse, delta, dk, dv_out, ATTN_SHAPE,           \
                                   ATTN_STRIDES(q), ATTN_STRIDES(k), ATTN_STRIDES(v),          \
                                   ATTN_STRIDES(g), ATTN_MASK(m0), ATTN_MASK(m1), scale);      \
  }

#define ATTN_DELTA_ENTRY(TNAME, T)                                                              \
  extern "C" __global__ void __launch_bounds__(128) attention_bwd_delta_##TNAME(               \
      const T* o, const T* dout, T* delta, ATTN_SHAPE_PARAMS, long long rows,                  \
      ATTN_STRIDE_PARAMS(g)) {                                                                  \
    attention_bwd_delta_body<T>(o, dout, delta, ATTN_SHAPE, rows, ATTN_STRIDES(g));             \
  }

ATTN_DELTA_ENTRY(f32, float)
ATTN_DELTA_ENTRY(f64, double)
ATTN_ENTRY(1, f32, float)
ATTN_ENTRY(2, f32, float)
ATTN_ENTRY(4, f32, float)
ATTN_ENTRY(8, f32, float)
ATTN_ENTRY(1, f64, double)
ATTN_ENTRY(2, f64, double)
ATTN_ENTRY(4, f64, double)
ATTN_ENTRY(8, f64, double)
