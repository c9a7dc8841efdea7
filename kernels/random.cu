// random.cu: device-side fills from the counter-based generator of src/random.rs
// (Philox4x32-10 in common.cuh), so the same (seed, offset) gives the same numbers as the CPU:
// identical bits for uniform draws (24-bit values, exact in f32 and f64), normal draws within
// an ulp of the CPU's (Box-Muller in f64 on both; the device's log/sin/cos may differ from
// glibc's in the last bit).
//
// uniform_T(T* out, u64 n, u64 seed, u64 offset, double lo, double hi)
//     out[i] = (T)(lo + (hi - lo) * uniform_at(seed, offset, i))
// normal_T(T* out, u64 n, u64 seed, u64 offset, double mean, double std)
//     out[i] = (T)(mean + std * normal_at(seed, offset, i))
// fill_T(T* out, u64 n, double value)            out[i] = (T)value
// dropout_mask_T(T* out, u64 n, u64 seed, u64 offset, double p, double kept)
//     out[i] = uniform_at(seed, offset, i) >= p ? (T)kept : 0   (src/ops/dropout.rs)
//
// Launch: 1-D, 256 threads, grid-stride. One write of sizeof(T) per element and ~10 rounds of
// 32-bit multiplies (uniform) or a log, a sqrt and a sin/cos in f64 (normal): the f64 math
// makes normal fills compute-bound on GPUs with slow f64.
#include "common.cuh"

#define DEFINE_RANDOM(N, T)                                                                                  \
    extern "C" __global__ void uniform_##N(T* __restrict__ out, u64 n, u64 seed, u64 offset, double lo,      \
                                           double hi) {                                                      \
        GRID_STRIDE_LOOP(i, n) { out[i] = from_f64<T>(lo + (hi - lo) * uniform_at(seed, offset, i)); }      \
    }                                                                                                        \
    extern "C" __global__ void normal_##N(T* __restrict__ out, u64 n, u64 seed, u64 offset, double mean,     \
                                          double std) {                                                      \
        GRID_STRIDE_LOOP(i, n) { out[i] = from_f64<T>(mean + std * normal_at(seed, offset, i)); }            \
    }                                                                                                        \
    extern "C" __global__ void fill_##N(T* __restrict__ out, u64 n, double value) {                          \
        const T v = from_f64<T>(value);                                                                      \
        GRID_STRIDE_LOOP(i, n) { out[i] = v; }                                                               \
    }

DEFINE_RANDOM(f32, float)
DEFINE_RANDOM(f64, double)
DEFINE_RANDOM(f16, f16)
DEFINE_RANDOM(bf16, bf16)
DEFINE_RANDOM(i64, i64)
DEFINE_RANDOM(u32, u32)
DEFINE_RANDOM(u8, u8)

#define DEFINE_DROPOUT(N, T)                                                                                 \
    extern "C" __global__ void dropout_mask_##N(T* __restrict__ out, u64 n, u64 seed, u64 offset, double p,  \
                                                double kept) {                                               \
        const T k = (T)kept;                                                                                 \
        GRID_STRIDE_LOOP(i, n) { out[i] = uniform_at(seed, offset, i) >= p ? k : (T)0; }                     \
    }

DEFINE_DROPOUT(f32, float)
DEFINE_DROPOUT(f64, double)
