// reduce.cu: sum / max / min / argmax / argmin over any set of dims of a strided view.
//
// The Rust side permutes the view so kept dims come first: element (k, r) of the [K, R]
// problem lives at x[off_kept(k) + off_red(r)] (`kept` carries the view's offset, `red` has
// offset 0), and out[k] (contiguous, keepdim order) is
//     sum:  Σ_r x(k, r)          max/min: NaN if any element is NaN, else the max/min
//     argmax/argmin: the smallest r holding the max/min (i64); NaN elements never win, except
//     that a NaN at r = 0 gives 0 (exactly the CPU backend's sequential rule). Empty R: 0,
//     -inf, +inf, index 0.
//
// Two launch shapes, both grid-stride over k:
//   *_warp:  one warp per output (block 256 = 8 outputs), lanes stride over r, then a shuffle
//            tree; for short reductions (R <= 4096, many outputs).
//   *_block: one block (256 threads) per output, then shuffles + shared memory; for long ones.
// Bytes moved: K*R*sizeof(T) read (+ K outputs); one compare/add per element: memory-bound.
// Summation order differs from the CPU's sequential sum (a tree), so sums agree to rounding.
#include "common.cuh"

enum ReduceCode { R_SUM = 0, R_MAX = 1, R_MIN = 2 };

template <typename T> __device__ __forceinline__ T reduce_identity(int op);
template <> __device__ __forceinline__ float reduce_identity<float>(int op) {
    return op == R_SUM ? 0.0f : (op == R_MAX ? neg_inf_f32() : pos_inf_f32());
}
template <> __device__ __forceinline__ double reduce_identity<double>(int op) {
    return op == R_SUM ? 0.0 : (op == R_MAX ? neg_inf_f64() : pos_inf_f64());
}

// acc (+) v, with max/min propagating NaN as the CPU does.
template <typename T> __device__ __forceinline__ T reduce_combine(int op, T acc, T v) {
    if (op == R_SUM) return acc + v;
    if (op == R_MAX) return (v > acc || v != v) ? v : acc;
    return (v < acc || v != v) ? v : acc;
}

template <typename T> __device__ __forceinline__ T warp_reduce(int op, T v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = reduce_combine(op, v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// (value, index) candidates; index == NO_INDEX means "none yet".
#define NO_INDEX 0xffffffffffffffffULL

template <typename T> __device__ __forceinline__ void arg_combine(bool is_max, T& v, u64& i, T v2, u64 i2) {
    if (i2 == NO_INDEX) return;
    if (i == NO_INDEX || (is_max ? v2 > v : v2 < v) || (v2 == v && i2 < i)) { v = v2; i = i2; }
}

template <typename T> __device__ __forceinline__ void warp_arg(bool is_max, T& v, u64& i) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const T v2 = __shfl_xor_sync(0xffffffffu, v, o);
        const u64 i2 = __shfl_xor_sync(0xffffffffu, i, o);
        arg_combine(is_max, v, i, v2, i2);
    }
}

template <typename T> __device__ __forceinline__ i64 arg_result(const T* x, u64 base, const Strided& red, u64 R, u64 best) {
    if (R == 0 || best == NO_INDEX) return 0;
    const T first = x[base + strided_offset(red, 0)];
    return first != first ? 0 : (i64)best;
}

#define DEFINE_REDUCE(N, T)                                                                                  \
    extern "C" __global__ void reduce_warp_##N(T* __restrict__ out, const T* __restrict__ x, Strided kept,   \
                                               Strided red, u64 K, u64 R, int op) {                          \
        const u64 warps = blockDim.x >> 5;                                                                   \
        const int lane = threadIdx.x & 31;                                                                   \
        for (u64 k = (u64)blockIdx.x * warps + (threadIdx.x >> 5); k < K; k += (u64)gridDim.x * warps) {     \
            const u64 base = strided_offset(kept, k);                                                        \
            T acc = reduce_identity<T>(op);                                                                  \
            for (u64 r = lane; r < R; r += 32) acc = reduce_combine(op, acc, x[base + strided_offset(red, r)]); \
            acc = warp_reduce(op, acc);                                                                      \
            if (lane == 0) out[k] = acc;                                                                     \
        }                                                                                                    \
    }                                                                                                        \
    extern "C" __global__ void reduce_block_##N(T* __restrict__ out, const T* __restrict__ x, Strided kept,  \
                                                Strided red, u64 K, u64 R, int op) {                         \
        __shared__ T scratch[32];                                                                            \
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;                 \
        for (u64 k = blockIdx.x; k < K; k += gridDim.x) {                                                    \
            const u64 base = strided_offset(kept, k);                                                        \
            T acc = reduce_identity<T>(op);                                                                  \
            for (u64 r = threadIdx.x; r < R; r += blockDim.x)                                                \
                acc = reduce_combine(op, acc, x[base + strided_offset(red, r)]);                             \
            acc = warp_reduce(op, acc);                                                                      \
            __syncthreads();                                                                                 \
            if (lane == 0) scratch[warp] = acc;                                                              \
            __syncthreads();                                                                                 \
            if (warp == 0) {                                                                                 \
                acc = lane < warps ? scratch[lane] : reduce_identity<T>(op);                                 \
                acc = warp_reduce(op, acc);                                                                  \
                if (lane == 0) out[k] = acc;                                                                 \
            }                                                                                                \
        }                                                                                                    \
    }                                                                                                        \
    extern "C" __global__ void argreduce_warp_##N(i64* __restrict__ out, const T* __restrict__ x,            \
                                                  Strided kept, Strided red, u64 K, u64 R, int is_max) {     \
        const u64 warps = blockDim.x >> 5;                                                                   \
        const int lane = threadIdx.x & 31;                                                                   \
        for (u64 k = (u64)blockIdx.x * warps + (threadIdx.x >> 5); k < K; k += (u64)gridDim.x * warps) {     \
            const u64 base = strided_offset(kept, k);                                                        \
            T v = (T)0;                                                                                      \
            u64 i = NO_INDEX;                                                                                \
            for (u64 r = lane; r < R; r += 32) {                                                             \
                const T e = x[base + strided_offset(red, r)];                                                \
                if (e == e) arg_combine(is_max != 0, v, i, e, r);                                            \
            }                                                                                                \
            warp_arg(is_max != 0, v, i);                                                                     \
            if (lane == 0) out[k] = arg_result(x, base, red, R, i);                                          \
        }                                                                                                    \
    }                                                                                                        \
    extern "C" __global__ void argreduce_block_##N(i64* __restrict__ out, const T* __restrict__ x,           \
                                                   Strided kept, Strided red, u64 K, u64 R, int is_max) {    \
        __shared__ T sv[32];                                                                                 \
        __shared__ u64 si[32];                                                                               \
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;                 \
        for (u64 k = blockIdx.x; k < K; k += gridDim.x) {                                                    \
            const u64 base = strided_offset(kept, k);                                                        \
            T v = (T)0;                                                                                      \
            u64 i = NO_INDEX;                                                                                \
            for (u64 r = threadIdx.x; r < R; r += blockDim.x) {                                              \
                const T e = x[base + strided_offset(red, r)];                                                \
                if (e == e) arg_combine(is_max != 0, v, i, e, r);                                            \
            }                                                                                                \
            warp_arg(is_max != 0, v, i);                                                                     \
            __syncthreads();                                                                                 \
            if (lane == 0) { sv[warp] = v; si[warp] = i; }                                                   \
            __syncthreads();                                                                                 \
            if (warp == 0) {                                                                                 \
                v = lane < warps ? sv[lane] : (T)0;                                                          \
                i = lane < warps ? si[lane] : NO_INDEX;                                                      \
                warp_arg(is_max != 0, v, i);                                                                 \
                if (lane == 0) out[k] = arg_result(x, base, red, R, i);                                      \
            }                                                                                                \
        }                                                                                                    \
    }

DEFINE_REDUCE(f32, float)
DEFINE_REDUCE(f64, double)
