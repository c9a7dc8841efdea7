// copy.cu: strided copies and dtype casts (the BackendStorage primitives of CudaStorage).
//
// cast_S_D(D* out, const S* in, Strided src, u64 n):
//     out[i] = (D)(double) in[offset_src(i)]  for i < n, out contiguous; all 49 pairs, S == D
//     being a plain strided gather (copy_strided of a non-contiguous view).
// copy_strided_T(T* dst, Strided dl, const T* src, Strided sl, u64 n):
//     dst[offset_dst(i)] = src[offset_src(i)]  (copy_into a strided destination).
//
// Launch: 1-D, 256 threads, grid-stride (launch_1d). Bytes moved: n * (sizeof S + sizeof D);
// no FLOPs, so the ceiling is memory bandwidth (the index math is integer division per dim,
// which only matters for views that stay high-rank after merging).
// A contiguous same-dtype copy never reaches these kernels: the driver's memcpy does it.
#include "common.cuh"

#define CAST(SN, ST, DN, DT) \
    extern "C" __global__ void cast_##SN##_##DN(DT* __restrict__ out, const ST* __restrict__ in, Strided src, u64 n) { \
        GRID_STRIDE_LOOP(i, n) { out[i] = from_f64<DT>(to_f64(in[strided_offset(src, i)])); } \
    }

#define SAME(N, T) \
    extern "C" __global__ void cast_##N##_##N(T* __restrict__ out, const T* __restrict__ in, Strided src, u64 n) { \
        GRID_STRIDE_LOOP(i, n) { out[i] = in[strided_offset(src, i)]; } \
    } \
    extern "C" __global__ void copy_strided_##N(T* __restrict__ dst, Strided dl, const T* __restrict__ src, Strided sl, u64 n) { \
        GRID_STRIDE_LOOP(i, n) { dst[strided_offset(dl, i)] = src[strided_offset(sl, i)]; } \
    }

SAME(f32, float)
SAME(f64, double)
SAME(f16, f16)
SAME(bf16, bf16)
SAME(i64, i64)
SAME(u32, u32)
SAME(u8, u8)

CAST(f32, float, f64, double)
CAST(f32, float, f16, f16)
CAST(f32, float, bf16, bf16)
CAST(f32, float, i64, i64)
CAST(f32, float, u32, u32)
CAST(f32, float, u8, u8)
CAST(f64, double, f32, float)
CAST(f64, double, f16, f16)
CAST(f64, double, bf16, bf16)
CAST(f64, double, i64, i64)
CAST(f64, double, u32, u32)
CAST(f64, double, u8, u8)
CAST(f16, f16, f32, float)
CAST(f16, f16, f64, double)
CAST(f16, f16, bf16, bf16)
CAST(f16, f16, i64, i64)
CAST(f16, f16, u32, u32)
CAST(f16, f16, u8, u8)
CAST(bf16, bf16, f32, float)
CAST(bf16, bf16, f64, double)
CAST(bf16, bf16, f16, f16)
CAST(bf16, bf16, i64, i64)
CAST(bf16, bf16, u32, u32)
CAST(bf16, bf16, u8, u8)
CAST(i64, i64, f32, float)
CAST(i64, i64, f64, double)
CAST(i64, i64, f16, f16)
CAST(i64, i64, bf16, bf16)
CAST(i64, i64, u32, u32)
CAST(i64, i64, u8, u8)
CAST(u32, u32, f32, float)
CAST(u32, u32, f64, double)
CAST(u32, u32, f16, f16)
CAST(u32, u32, bf16, bf16)
CAST(u32, u32, i64, i64)
CAST(u32, u32, u8, u8)
CAST(u8, u8, f32, float)
CAST(u8, u8, f64, double)
CAST(u8, u8, f16, f16)
CAST(u8, u8, bf16, bf16)
CAST(u8, u8, i64, i64)
CAST(u8, u8, u32, u32)
