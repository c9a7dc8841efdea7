// tile.cuh: device helpers shared by the heavy kernels (gemm, conv, softmax, norm, loss,
// attention, pool): per-type math wrappers, NaN-propagating max, warp and block reductions,
// and the SIMT tile-GEMM main loop that both the plain GEMM and the implicit-GEMM
// convolutions run on.
//
// Conventions of every kernel that includes this file:
// * integer kernel parameters are `long long` (Rust i64), floating-point scalars are `double`
//   (Rust f64) whatever the tensor dtype; data pointers already point at the view's first
//   element (the launch code adds the layout offset);
// * each kernel body is a template over the element type `T`, instantiated as
//   `extern "C" __global__` entry points named `<kernel>_f32` and `<kernel>_f64`;
// * NVRTC has no <math.h>: -inf comes from its bit pattern.
#pragma once

#define TILE_FULL_MASK 0xffffffffu

template <typename T> struct Num;

template <> struct Num<float> {
  static __device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }
  static __device__ __forceinline__ float exp(float x) { return expf(x); }
  static __device__ __forceinline__ float log(float x) { return logf(x); }
  static __device__ __forceinline__ float sqrt(float x) { return sqrtf(x); }
  // 1/x correctly rounded, without the IEEE-divide slow-path call (which costs stack).
  static __device__ __forceinline__ float rcp(float x) { return __frcp_rn(x); }
};

template <> struct Num<double> {
  static __device__ __forceinline__ double neg_inf() {
    return __longlong_as_double(0xfff0000000000000ULL);
  }
  static __device__ __forceinline__ double exp(double x) { return ::exp(x); }
  static __device__ __forceinline__ double log(double x) { return ::log(x); }
  static __device__ __forceinline__ double sqrt(double x) { return ::sqrt(x); }
  static __device__ __forceinline__ double rcp(double x) { return __drcp_rn(x); }
};

// The larger of m and v, a NaN winning (the CPU backend's rule: a NaN makes its row NaN).
template <typename T> __device__ __forceinline__ T nan_max(T m, T v) {
  return (v > m || v != v) ? v : m;
}

struct SumOp {
  template <typename T> __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};
struct MaxOp {
  template <typename T> __device__ __forceinline__ T operator()(T a, T b) const {
    return nan_max(a, b);
  }
};
struct MinOp {
  template <typename T> __device__ __forceinline__ T operator()(T a, T b) const {
    return b < a ? b : a;
  }
};

// `op` over the 32 lanes of a warp (all lanes active), returned to every lane.
template <typename T, class Op> __device__ __forceinline__ T warp_reduce(T v, Op op) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(TILE_FULL_MASK, v, o));
  return v;
}

// `op` over the whole block (blockDim.x a multiple of 32, at most 1024), returned to every
// thread; `identity` fills the unused warp slots. `scratch` holds 32 values in shared memory;
// the leading barrier lets a caller reuse it right after a previous reduction. Every thread
// of the block must call it.
template <typename T, class Op>
__device__ __forceinline__ T block_reduce(T v, T* scratch, Op op, T identity) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warps = (blockDim.x + 31) >> 5;
  v = warp_reduce(v, op);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < warps ? scratch[lane] : identity;
    v = warp_reduce(v, op);
    if (lane == 0) scratch[0] = v;
  }
  __syncthreads();
  return scratch[0];
}

template <typename T> __device__ __forceinline__ T warp_sum(T v) { return warp_reduce(v, SumOp()); }
template <typename T> __device__ __forceinline__ T warp_max(T v) { return warp_reduce(v, MaxOp()); }
template <typename T> __device__ __forceinline__ T block_sum(T v, T* scratch) {
  return block_reduce(v, scratch, SumOp(), T(0));
}
template <typename T> __device__ __forceinline__ T block_max(T v, T* scratch) {
  return block_reduce(v, scratch, MaxOp(), Num<T>::neg_inf());
}

// A group of threads that owns one row: a warp (short rows) or the whole block (long rows).
// `PER_WARP` picks at compile time; the row index, the thread's rank in the group, the group
// size and the reductions follow.
template <bool PER_WARP> struct RowGroup {
  static __device__ __forceinline__ long long row() {
    return PER_WARP ? (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5)
                    : (long long)blockIdx.x;
  }
  static __device__ __forceinline__ int rank() { return PER_WARP ? (threadIdx.x & 31) : threadIdx.x; }
  static __device__ __forceinline__ int size() { return PER_WARP ? 32 : blockDim.x; }
  template <typename T> static __device__ __forceinline__ T sum(T v, T* scratch) {
    return PER_WARP ? warp_sum(v) : block_sum(v, scratch);
  }
  template <typename T> static __device__ __forceinline__ T max(T v, T* scratch) {
    return PER_WARP ? warp_max(v) : block_max(v, scratch);
  }
};

// ---------------------------------------------------------------------------------------
// SIMT tile GEMM main loop.
//
// One block computes a BM x BN tile of C = A·B over the reduction range [k_begin, k_end):
// per step of BK it stages A[m0.., k..] (as As[k][m]) and B[k.., n0..] (as Bs[k][n]) in shared
// memory, then each of the (BM/TM)·(BN/TN) threads adds a TM x TN register block. Thread
// (ty, tx) owns rows ty + i·(BM/TM) and columns tx + j·(BN/TN): strided (not contiguous)
// ownership makes a warp's shared-memory reads broadcasts (A) or 32 distinct consecutive
// words (B), so they are free of bank conflicts, and the final stores coalesced.
//
// Operands are functors `T operator()(long long m_or_k, long long k_or_n) const` that return 0
// outside the matrix (so partial tiles need no special case) and say, through
// `m_fastest()`/`n_fastest()`, which index to give consecutive threads when loading so the
// global reads coalesce (the unit-stride dimension).
// ---------------------------------------------------------------------------------------

// Shared-memory row padding (elements): keeps the transposing stores of a k-fastest load free
// of 4-way+ bank conflicts and the rows 16-byte aligned.
#define TILE_SMEM_PAD 4

template <typename T, int BM, int BN, int BK> struct TileSmem {
  T a[BK][BM + TILE_SMEM_PAD];
  T b[BK][BN + TILE_SMEM_PAD];
};

template <typename T, int BM, int BN, int BK, int TM, int TN, class LoadA, class LoadB>
__device__ __forceinline__ void tile_gemm_mainloop(const LoadA& la, const LoadB& lb, long long m0,
                                                   long long n0, long long k_begin,
                                                   long long k_end, TileSmem<T, BM, BN, BK>& sm,
                                                   T (&acc)[TM][TN]) {
  constexpr int WX = BN / TN;  // threads along n
  constexpr int WY = BM / TM;  // threads along m
  constexpr int THREADS = WX * WY;
  static_assert((BM * BK) % THREADS == 0, "A tile must split evenly over the threads");
  static_assert((BK * BN) % THREADS == 0, "B tile must split evenly over the threads");
  const int tid = threadIdx.x;
  const int tx = tid % WX, ty = tid / WX;
  static_assert(THREADS % BM == 0 && THREADS % BN == 0 && THREADS % BK == 0,
                "load coordinates must step evenly");
  // Each thread loads the tile elements (i0 + r·di, k0 + r·dk), r = 0, 1, ...: along the
  // operand's unit-stride dimension neighbouring threads take neighbouring elements.
  const bool a_m_fast = la.m_fastest();
  const int a_i0 = a_m_fast ? tid % BM : tid / BK, a_k0 = a_m_fast ? tid / BM : tid % BK;
  const int a_di = a_m_fast ? 0 : THREADS / BK, a_dk = a_m_fast ? THREADS / BM : 0;
  const bool b_n_fast = lb.n_fastest();
  const int b_j0 = b_n_fast ? tid % BN : tid / BK, b_k0 = b_n_fast ? tid / BN : tid % BK;
  const int b_dj = b_n_fast ? 0 : THREADS / BK, b_dk = b_n_fast ? THREADS / BN : 0;
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = T(0);

  for (long long k0 = k_begin; k0 < k_end; k0 += BK) {
#pragma unroll
    for (int r = 0; r < (BM * BK) / THREADS; ++r) {
      const int m = a_i0 + r * a_di, k = a_k0 + r * a_dk;
      sm.a[k][m] = (k0 + k < k_end) ? la(m0 + m, k0 + k) : T(0);
    }
#pragma unroll
    for (int r = 0; r < (BK * BN) / THREADS; ++r) {
      const int n = b_j0 + r * b_dj, k = b_k0 + r * b_dk;
      sm.b[k][n] = (k0 + k < k_end) ? lb(k0 + k, n0 + n) : T(0);
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < BK; ++k) {
      T a[TM], b[TN];
#pragma unroll
      for (int i = 0; i < TM; ++i) a[i] = sm.a[k][ty + i * WY];
#pragma unroll
      for (int j = 0; j < TN; ++j) b[j] = sm.b[k][tx + j * WX];
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = fma(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
}

// Hands each accumulator with its global (m, n) to `store(m, n, value)` when inside M x N.
template <typename T, int BM, int BN, int TM, int TN, class Store>
__device__ __forceinline__ void tile_gemm_store(const Store& store, long long m0, long long n0,
                                                long long M, long long N, const T (&acc)[TM][TN]) {
  constexpr int WX = BN / TN;
  constexpr int WY = BM / TM;
  const int tx = threadIdx.x % WX, ty = threadIdx.x / WX;
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const long long m = m0 + ty + i * WY;
    if (m >= M) continue;
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const long long n = n0 + tx + j * WX;
      if (n < N) store(m, n, acc[i][j]);
    }
  }
}

// Split-K epilogue: c[e] = sum over s < splits of ws[s·total + e], in order of s (so the
// result does not depend on scheduling). Grid-stride over `total`.
template <typename T>
__device__ __forceinline__ void splitk_reduce(const T* __restrict__ ws, T* __restrict__ c,
                                              long long total, long long splits) {
  for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
       e += (long long)gridDim.x * blockDim.x) {
    T s = T(0);
    for (long long k = 0; k < splits; ++k) s += ws[k * total + e];
    c[e] = s;
  }
}
