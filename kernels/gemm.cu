// gemm.cu: batched, strided GEMM  C[b] = A[b] · B[b],  A[b]: [M, K], B[b]: [K, N], C contiguous
// [batch, M, N]. Element (i, j) of A[b] is at a[b·a_sb + i·a_sm + j·a_sk] (B likewise), so
// transposed operands (swapped strides) and batch-broadcast operands (a_sb = 0) are read in
// place, never copied.
//
// Live version: SIMT tiles in shared memory with 2-D register blocking (tile.cuh's
// `tile_gemm_mainloop`), single-buffered. Tensor-core (WMMA / wgmma) versions are a later issue.
//   gemm_128x128_f32: BM = BN = 128, BK = 8,  8 x 8 accumulators per thread, 256 threads
//   gemm_64x64_f32:   BM = BN = 64,  BK = 16, 4 x 4 per thread, 256 threads (small outputs)
//   gemm_64x64_f64:   BM = BN = 64,  BK = 8,  4 x 4 per thread, 256 threads
// Launch: grid.x = ceil(M/BM)·ceil(N/BN) output tiles, grid.y = `splits` (split-K: each split
// reduces one contiguous range of K and writes its partial product to
// c + split·batch·M·N; `gemm_splitk_reduce_*` then sums the splits in order, so the result is
// deterministic), grid.z = min(batch, 65535) (the kernel strides over larger batches).
// With splits = 1, c is the output itself.
// Cost: 2·batch·M·N·K FLOPs. Each A element is read ceil(N/BN) times and each B element
// ceil(M/BM) times from global memory (L2 absorbs most of it); C is written once (splits
// times plus one read each with split-K).
#include "tile.cuh"

// One strided operand. `Rows` x `Cols` with element (i, j) at p[i·s0 + j·s1].
template <typename T> struct StridedMatrix {
  const T* p;
  long long rows, cols, s0, s1;
  // For A the rows are m and the columns k; for B the rows are k and the columns n.
  __device__ __forceinline__ bool m_fastest() const { return s0 < s1; }
  __device__ __forceinline__ bool n_fastest() const { return s1 < s0; }
  __device__ __forceinline__ T operator()(long long i, long long j) const {
    return (i < rows && j < cols) ? p[i * s0 + j * s1] : T(0);
  }
};

// Row-major output [M, N] starting at `p`.
template <typename T> struct RowMajorStore {
  T* p;
  long long n;
  __device__ __forceinline__ void operator()(long long i, long long j, T v) const {
    p[i * n + j] = v;
  }
};

template <typename T, int BM, int BN, int BK, int TM, int TN>
__device__ __forceinline__ void gemm_body(const T* __restrict__ a, const T* __restrict__ b,
                                          T* __restrict__ c, long long batch, long long M,
                                          long long N, long long K, long long a_sb,
                                          long long a_sm, long long a_sk, long long b_sb,
                                          long long b_sk, long long b_sn) {
  __shared__ TileSmem<T, BM, BN, BK> sm;
  const long long tiles_n = (N + BN - 1) / BN;
  const long long m0 = (long long)(blockIdx.x / tiles_n) * BM;
  const long long n0 = (long long)(blockIdx.x % tiles_n) * BN;
  // Split-K: this block reduces [k_begin, k_end), a whole number of BK steps.
  const long long splits = gridDim.y;
  const long long steps = (K + BK - 1) / BK;
  const long long steps_per_split = (steps + splits - 1) / splits;
  const long long k_begin = blockIdx.y * steps_per_split * BK;
  const long long k_end = min(K, k_begin + steps_per_split * BK);
  T* out = c + (long long)blockIdx.y * batch * M * N;
  for (long long bi = blockIdx.z; bi < batch; bi += gridDim.z) {
    const StridedMatrix<T> la{a + bi * a_sb, M, K, a_sm, a_sk};
    const StridedMatrix<T> lb{b + bi * b_sb, K, N, b_sk, b_sn};
    T acc[TM][TN];
    tile_gemm_mainloop<T, BM, BN, BK, TM, TN>(la, lb, m0, n0, k_begin, k_end, sm, acc);
    tile_gemm_store<T, BM, BN, TM, TN>(RowMajorStore<T>{out + bi * M * N, N}, m0, n0, M, N,
                                       acc);
  }
}

#define GEMM_PARAMS(T)                                                                      \
  const T *a, const T *b, T *c, long long batch, long long M, long long N, long long K,      \
      long long a_sb, long long a_sm, long long a_sk, long long b_sb, long long b_sk,       \
      long long b_sn
#define GEMM_ARGS a, b, c, batch, M, N, K, a_sb, a_sm, a_sk, b_sb, b_sk, b_sn

extern "C" __global__ void __launch_bounds__(256, 2) gemm_128x128_f32(GEMM_PARAMS(float)) {
  gemm_body<float, 128, 128, 8, 8, 8>(GEMM_ARGS);
}
extern "C" __global__ void __launch_bounds__(256, 3) gemm_64x64_f32(GEMM_PARAMS(float)) {
  gemm_body<float, 64, 64, 16, 4, 4>(GEMM_ARGS);
}
extern "C" __global__ void __launch_bounds__(256, 3) gemm_64x64_f64(GEMM_PARAMS(double)) {
  gemm_body<double, 64, 64, 8, 4, 4>(GEMM_ARGS);
}
extern "C" __global__ void __launch_bounds__(256)
    gemm_splitk_reduce_f32(const float* ws, float* c, long long total, long long splits) {
  splitk_reduce<float>(ws, c, total, splits);
}
extern "C" __global__ void __launch_bounds__(256)
    gemm_splitk_reduce_f64(const double* ws, double* c, long long total, long long splits) {
  splitk_reduce<double>(ws, c, total, splits);
}
