// common.cuh: what every kernel file shares.
//
// - `Strided`: a view (dims, strides in elements, offset) passed to kernels by value; the
//   exact C layout of `StridedArg` in src/backend/cuda/launch.rs (144 bytes).
// - Index helpers: flat row-major index -> storage offset through a `Strided` view, with a
//   fully unrolled loop over TESSERA_MAX_RANK so the struct stays in the parameter bank
//   (no local-memory copy, no stack frame).
// - Conversions through double with Rust's `as` semantics (saturating, NaN -> 0) for integer
//   targets, so casts match the CPU backend bit for bit.
// - Warp reductions (shuffles) and a block reduction.
// - Philox4x32-10, identical to src/random.rs: `uniform_at` / `normal_at(seed, offset, i)`.
//
// Every kernel loops grid-stride over its elements, so any grid size is correct and the
// Rust side may cap the grid (launch_1d).
#pragma once

#include <cuda_fp16.h>
#include <cuda_bf16.h>

#define TESSERA_MAX_RANK 8

typedef unsigned long long u64;
typedef long long i64;
typedef unsigned int u32;
typedef unsigned char u8;
typedef __half f16;
typedef __nv_bfloat16 bf16;

struct Strided {
    u64 dims[TESSERA_MAX_RANK];
    u64 strides[TESSERA_MAX_RANK];
    u64 offset;
    u32 rank;
    u32 contiguous;
};

// Storage offset of flat (row-major) element `i` of view `s`.
__device__ __forceinline__ u64 strided_offset(const Strided& s, u64 i) {
    if (s.contiguous) return s.offset + i;
    u64 off = s.offset;
#pragma unroll
    for (int d = TESSERA_MAX_RANK - 1; d >= 0; --d) {
        if (d < (int)s.rank) {
            const u64 n = s.dims[d];
            const u64 q = i / n;
            off += (i - q * n) * s.strides[d];
            i = q;
        }
    }
    return off;
}

#define GRID_STRIDE_LOOP(i, n) \
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (u64)gridDim.x * blockDim.x)

// ---- conversions (through double, as the CPU backend's `U::from_f64(x.to_f64())`) -----------

__device__ __forceinline__ double to_f64(float x) { return (double)x; }
__device__ __forceinline__ double to_f64(double x) { return x; }
__device__ __forceinline__ double to_f64(f16 x) { return (double)__half2float(x); }
__device__ __forceinline__ double to_f64(bf16 x) { return (double)__bfloat162float(x); }
__device__ __forceinline__ double to_f64(i64 x) { return (double)x; }
__device__ __forceinline__ double to_f64(u32 x) { return (double)x; }
__device__ __forceinline__ double to_f64(u8 x) { return (double)x; }

template <typename T> __device__ __forceinline__ T from_f64(double x);
template <> __device__ __forceinline__ float from_f64<float>(double x) { return (float)x; }
template <> __device__ __forceinline__ double from_f64<double>(double x) { return x; }
// The `half` crate's conversions, bit for bit (not the correctly rounded __double2half):
// f64 -> f16 rounds to f32 first (its x86 F16C path), f64 -> bf16 drops the low 32 bits of the
// f64 and then rounds to nearest even.
template <> __device__ __forceinline__ f16 from_f64<f16>(double x) { return __float2half_rn((float)x); }
template <> __device__ __forceinline__ bf16 from_f64<bf16>(double x) {
    const double t = __longlong_as_double(__double_as_longlong(x) & (long long)0xFFFFFFFF00000000ULL);
    return __float2bfloat16_rn((float)t);
}
// Rust's float-to-int `as`: truncate toward zero, saturate at the type's range, NaN -> 0.
template <> __device__ __forceinline__ i64 from_f64<i64>(double x) {
    if (x != x) return 0;
    if (x >= 9223372036854775807.0) return 9223372036854775807LL;
    if (x <= -9223372036854775808.0) return (i64)(-9223372036854775807LL - 1);
    return (i64)x;
}
template <> __device__ __forceinline__ u32 from_f64<u32>(double x) {
    if (!(x > 0.0)) return 0;
    if (x >= 4294967295.0) return 4294967295u;
    return (u32)x;
}
template <> __device__ __forceinline__ u8 from_f64<u8>(double x) {
    if (!(x > 0.0)) return 0;
    if (x >= 255.0) return 255;
    return (u8)x;
}

// ---- reductions --------------------------------------------------------------------------

template <typename T> __device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
template <typename T> __device__ __forceinline__ T warp_max(T v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
template <typename T> __device__ __forceinline__ T warp_min(T v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmin(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `scratch` holds 32 values in shared memory. Contains __syncthreads(): call from all threads.
template <typename T> __device__ __forceinline__ T block_sum(T v, T* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    const int warps = (blockDim.x + 31) >> 5;
    v = (threadIdx.x < warps) ? scratch[threadIdx.x] : (T)0;
    if (warp == 0) v = warp_sum(v);
    if (threadIdx.x == 0) scratch[0] = v;
    __syncthreads();
    return scratch[0];
}

__device__ __forceinline__ float neg_inf_f32() { return __int_as_float(0xff800000); }
__device__ __forceinline__ double neg_inf_f64() { return __longlong_as_double(0xfff0000000000000ULL); }
__device__ __forceinline__ float pos_inf_f32() { return __int_as_float(0x7f800000); }
__device__ __forceinline__ double pos_inf_f64() { return __longlong_as_double(0x7ff0000000000000ULL); }

// ---- Philox4x32-10 (Salmon et al., SC'11), bit-identical to src/random.rs ------------------

struct Philox4 { u32 x, y, z, w; };

__device__ __forceinline__ Philox4 philox4x32_10(Philox4 c, u32 k0, u32 k1) {
#pragma unroll
    for (int r = 0; r < 10; ++r) {
        const u32 hi0 = __umulhi(0xD2511F53u, c.x), lo0 = 0xD2511F53u * c.x;
        const u32 hi1 = __umulhi(0xCD9E8D57u, c.z), lo1 = 0xCD9E8D57u * c.z;
        c = Philox4{hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0};
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    return c;
}

// Block `block` of subsequence `offset` under `seed` (src/random.rs `philox_block`).
__device__ __forceinline__ Philox4 philox_block(u64 seed, u64 offset, u64 block) {
    Philox4 c{(u32)block, (u32)(block >> 32), (u32)offset, (u32)(offset >> 32)};
    return philox4x32_10(c, (u32)seed, (u32)(seed >> 32));
}

__device__ __forceinline__ u32 philox_word(const Philox4& w, int k) {
    return k == 0 ? w.x : k == 1 ? w.y : k == 2 ? w.z : w.w;
}

// Uniform [0, 1) from the top 24 bits (exact in f32 and f64).
__device__ __forceinline__ double u32_to_unit(u32 x) { return (double)(x >> 8) * (1.0 / 16777216.0); }

__device__ __forceinline__ double uniform_at(u64 seed, u64 offset, u64 i) {
    return u32_to_unit(philox_word(philox_block(seed, offset, i >> 2), (int)(i & 3)));
}

// Standard normal, Box-Muller on words 0 and 1 of block i/2 (cos for even i, sin for odd),
// computed in double like the CPU so f64 draws agree to the last bit or within an ulp.
__device__ __forceinline__ double normal_at(u64 seed, u64 offset, u64 i) {
    const Philox4 w = philox_block(seed, offset, i >> 1);
    const double u1 = ((double)(w.x >> 8) + 1.0) * (1.0 / 16777216.0);
    const double u2 = u32_to_unit(w.y);
    const double r = sqrt(-2.0 * log(u1));
    const double theta = 6.283185307179586 * u2;
    return (i & 1) ? r * sin(theta) : r * cos(theta);
}
