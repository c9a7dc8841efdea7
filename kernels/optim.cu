// optim.cu: fused, in-place optimizer updates (src/backend/optim.rs has the math), one pass
// per parameter: read p, g, state; write p and state. Same formulas and operation order as
// src/backend/cpu/optim.rs, with the scalar factors computed once in f64 on the host and
// passed in T.
//
// adam_T(T* p, Strided pl, const T* g, Strided gl, T* m, T* v, u64 n, T step_size,
//        T inv_bc2_sqrt, T b1, T b2, T ob1, T ob2, T eps, T l2, T shrink, int decay_mode)
//     decay_mode 0: none, 1: AdamW (p *= shrink), 2: Adam (g += l2 * p)
//     m = b1 m + ob1 g;  v = b2 v + ob2 g²;  p -= step_size * m / (sqrt(v) * inv_bc2_sqrt + eps)
// sgd_T(T* p, Strided pl, const T* g, Strided gl, T* buf, u64 n, T lr, T wd, T mu, T damp,
//       int has_wd, int has_buf, int first, int nesterov)
//     d = g (+ wd p);  buf = first ? d : mu buf + damp d;  p -= lr * (nesterov ? d + mu buf : buf)
//     (has_buf 0: plain SGD, p -= lr d; `buf` may then be null)
// ema_T(T* s, Strided sl, const T* p, Strided pl, u64 n, T d, T od)
//     s = d s + od p   (the weight EMA; od = 1 - d computed on the host)
//
// p may be any non-overlapping strided view, g any view of the same shape; m, v, buf are
// contiguous. Launch: 1-D, 256 threads, grid-stride. Bytes per element: Adam 4 reads + 3
// writes of sizeof(T) (28 B in f32), SGD with momentum 3 reads + 2 writes, EMA 2 reads + 1
// write. Memory-bound.
#include "common.cuh"

__device__ __forceinline__ float t_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double t_sqrt(double x) { return sqrt(x); }

#define DEFINE_OPTIM(N, T)                                                                                   \
    extern "C" __global__ void adam_##N(T* __restrict__ p, Strided pl, const T* __restrict__ g, Strided gl,  \
                                        T* __restrict__ m, T* __restrict__ v, u64 n, T step_size,            \
                                        T inv_bc2_sqrt, T b1, T b2, T ob1, T ob2, T eps, T l2, T shrink,     \
                                        int decay_mode) {                                                    \
        GRID_STRIDE_LOOP(i, n) {                                                                             \
            const u64 po = strided_offset(pl, i);                                                            \
            T gi = g[strided_offset(gl, i)];                                                                 \
            T pi = p[po];                                                                                    \
            if (decay_mode == 1) pi *= shrink;                                                               \
            else if (decay_mode == 2) gi += l2 * pi;                                                         \
            const T mi = b1 * m[i] + ob1 * gi;                                                               \
            const T vi = b2 * v[i] + ob2 * gi * gi;                                                          \
            m[i] = mi;                                                                                       \
            v[i] = vi;                                                                                       \
            p[po] = pi - step_size * mi / (t_sqrt(vi) * inv_bc2_sqrt + eps);                                 \
        }                                                                                                    \
    }                                                                                                        \
    extern "C" __global__ void ema_##N(T* __restrict__ s, Strided sl, const T* __restrict__ p, Strided pl,  \
                                       u64 n, T d, T od) {                                                   \
        GRID_STRIDE_LOOP(i, n) {                                                                             \
            const u64 so = strided_offset(sl, i);                                                            \
            s[so] = d * s[so] + od * p[strided_offset(pl, i)];                                               \
        }                                                                                                    \
    }                                                                                                        \
    extern "C" __global__ void sgd_##N(T* __restrict__ p, Strided pl, const T* __restrict__ g, Strided gl,   \
                                       T* __restrict__ buf, u64 n, T lr, T wd, T mu, T damp, int has_wd,     \
                                       int has_buf, int first, int nesterov) {                               \
        GRID_STRIDE_LOOP(i, n) {                                                                             \
            const u64 po = strided_offset(pl, i);                                                            \
            const T pi = p[po];                                                                              \
            const T gi = g[strided_offset(gl, i)];                                                           \
            const T d = has_wd ? gi + wd * pi : gi;                                                          \
            if (!has_buf) {                                                                                  \
                p[po] = pi - lr * d;                                                                         \
            } else {                                                                                         \
                const T bi = first ? d : mu * buf[i] + damp * d;                                             \
                buf[i] = bi;                                                                                 \
                const T step = nesterov ? d + mu * bi : bi;                                                  \
                p[po] = pi - lr * step;                                                                      \
            }                                                                                                \
        }                                                                                                    \
    }

DEFINE_OPTIM(f32, float)
DEFINE_OPTIM(f64, double)
