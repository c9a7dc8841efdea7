// index.cu: index_select, index_add, gather, scatter_add (and with them embedding lookups,
// which are index_select along dim 0), over strided views; indices are i64 or u32.
//
// check_ids_I(i64* out, const I* ids, Strided il, u64 n, u64 size, u64* bad)
//     out[m] = ids[il(m)] as i64; any id outside [0, size) records min(m) in *bad (atomicMin),
//     so the host reports the first bad index as the CPU does. Every other kernel reads only
//     checked ids (the launcher stops on a bad one), so no kernel indexes out of bounds.
// index_select_T(T* out, const T* x, Strided xl, const i64* ids, u64 outer, u64 n, u64 size, u64 inner)
//     out[o, k, i] = x[o, ids[k], i]                  (x seen as [outer, size, inner])
// index_add_T(T* out, const i64* ids, const T* src, Strided sl, u64 outer, u64 n, u64 size, u64 inner)
//     out[o, ids[k], i] += src[o, k, i]               (out: a contiguous copy of x; atomicAdd)
// gather_T(T* out, const T* x, Strided base, u64 dim_stride, const i64* ids, u64 n)
//     out[m] = x[base(m) + ids[m] * dim_stride]       (base: ids' shape, x's strides with 0 at dim)
// scatter_add_T(T* out, Strided dst, u64 dim_stride, const i64* ids, const T* src, Strided sl, u64 n)
//     out[dst(m) + ids[m] * dim_stride] += src[sl(m)] (atomicAdd: colliding ids accumulate)
//
// Launch: 1-D, 256 threads, grid-stride over output (select, gather) or source (add, scatter)
// elements. Bytes: one read of x/src per element plus 8 bytes of id; atomics on collisions.
// The atomic adds make the order of colliding contributions (hence the last bits of a float
// sum) unspecified; the CPU adds them in index order.
#include "common.cuh"

#define DEFINE_CHECK_IDS(N, I)                                                                               \
    extern "C" __global__ void check_ids_##N(i64* __restrict__ out, const I* __restrict__ ids, Strided il,   \
                                             u64 n, u64 size, u64* bad) {                                    \
        GRID_STRIDE_LOOP(m, n) {                                                                             \
            const i64 id = (i64)ids[strided_offset(il, m)];                                                  \
            out[m] = id;                                                                                     \
            if (id < 0 || (u64)id >= size) atomicMin(bad, m);                                                \
        }                                                                                                    \
    }
DEFINE_CHECK_IDS(i64, i64)
DEFINE_CHECK_IDS(u32, u32)

#define DEFINE_SELECT_GATHER(N, T)                                                                           \
    extern "C" __global__ void index_select_##N(T* __restrict__ out, const T* __restrict__ x, Strided xl,    \
                                                const i64* __restrict__ ids, u64 outer, u64 n, u64 size,     \
                                                u64 inner) {                                                 \
        const u64 total = outer * n * inner;                                                                 \
        GRID_STRIDE_LOOP(e, total) {                                                                         \
            const u64 i = e % inner, t = e / inner, k = t % n, o = t / n;                                    \
            out[e] = x[strided_offset(xl, (o * size + (u64)ids[k]) * inner + i)];                            \
        }                                                                                                    \
    }                                                                                                        \
    extern "C" __global__ void gather_##N(T* __restrict__ out, const T* __restrict__ x, Strided base,        \
                                          u64 dim_stride, const i64* __restrict__ ids, u64 n) {              \
        GRID_STRIDE_LOOP(m, n) { out[m] = x[strided_offset(base, m) + (u64)ids[m] * dim_stride]; }          \
    }
DEFINE_SELECT_GATHER(f32, float)
DEFINE_SELECT_GATHER(f64, double)
DEFINE_SELECT_GATHER(f16, f16)
DEFINE_SELECT_GATHER(bf16, bf16)
DEFINE_SELECT_GATHER(i64, i64)
DEFINE_SELECT_GATHER(u32, u32)
DEFINE_SELECT_GATHER(u8, u8)

#define DEFINE_ADD(N, T)                                                                                     \
    extern "C" __global__ void index_add_##N(T* __restrict__ out, const i64* __restrict__ ids,               \
                                             const T* __restrict__ src, Strided sl, u64 outer, u64 n,        \
                                             u64 size, u64 inner) {                                          \
        const u64 total = outer * n * inner;                                                                 \
        GRID_STRIDE_LOOP(e, total) {                                                                         \
            const u64 i = e % inner, t = e / inner, k = t % n, o = t / n;                                    \
            atomicAdd(&out[(o * size + (u64)ids[k]) * inner + i], src[strided_offset(sl, e)]);              \
        }                                                                                                    \
    }                                                                                                        \
    extern "C" __global__ void scatter_add_##N(T* __restrict__ out, Strided dst, u64 dim_stride,             \
                                               const i64* __restrict__ ids, const T* __restrict__ src,       \
                                               Strided sl, u64 n) {                                          \
        GRID_STRIDE_LOOP(m, n) {                                                                             \
            atomicAdd(&out[strided_offset(dst, m) + (u64)ids[m] * dim_stride], src[strided_offset(sl, m)]); \
        }                                                                                                    \
    }
DEFINE_ADD(f32, float)
DEFINE_ADD(f64, double)
