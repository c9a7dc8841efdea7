// elementwise.cu: pointwise maps over strided (and broadcast) views, f32 and f64.
//
// unary_T(T* out, const T* x, Strided xl, u64 n, int op, double a, double b)
//     out[i] = f_op(x[xl(i)])                         (a, b: Powf exponent, Clamp min/max, Affine mul/add)
// unary_bwd_T(T* out, const T* x, Strided xl, const T* dy, Strided dl, u64 n, int op, double a, double b)
//     out[i] = dy[dl(i)] * f_op'(x[xl(i)])
// binary_T(T* out, const T* l, Strided ll, const T* r, Strided rl, u64 n, int op)
//     out[i] = l[ll(i)] (+ - * / max min) r[rl(i)]   (broadcast dims have stride 0)
// cmp_T(u8* out, const T* l, Strided ll, const T* r, Strided rl, u64 n, int op)   T also i64, u32, u8
// where_T(T* out, const u8* c, Strided cl, const T* t, Strided tl, const T* f, Strided fl, u64 n)
// unary_vec_T / binary_vec_T: the same on contiguous operands whose addresses are 16-byte
//     aligned, with 16-byte loads and stores (float4 / double2), the tail done by scalar code.
//
// `op` codes are the order of `UnaryOp`/`BinaryOp`/`CmpOp` in src/backend/elementwise.rs
// (kept in one place: src/backend/cuda/elementwise.rs `unary_code`). The formulas follow
// src/backend/cpu/elementwise.rs exactly (same NaN rules for max/min/relu/clamp).
//
// Launch: 1-D, 256 threads, grid-stride. Bytes moved per element: unary 2*sizeof(T), backward
// and binary 3*sizeof(T) (broadcast operands are read from cache), where 3*sizeof(T)+1.
// A handful of FLOPs per element (GELU/erf tens): memory-bound everywhere on an H100.
#include "common.cuh"

__device__ __forceinline__ float t_exp(float x) { return expf(x); }
__device__ __forceinline__ double t_exp(double x) { return exp(x); }
__device__ __forceinline__ float t_log(float x) { return logf(x); }
__device__ __forceinline__ double t_log(double x) { return log(x); }
__device__ __forceinline__ float t_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double t_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float t_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double t_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float t_erf(float x) { return erff(x); }
__device__ __forceinline__ double t_erf(double x) { return erf(x); }
__device__ __forceinline__ float t_pow(float x, float e) { return powf(x, e); }
__device__ __forceinline__ double t_pow(double x, double e) { return pow(x, e); }
__device__ __forceinline__ float t_abs(float x) { return fabsf(x); }
__device__ __forceinline__ double t_abs(double x) { return fabs(x); }
__device__ __forceinline__ bool t_isnan(float x) { return x != x; }
__device__ __forceinline__ bool t_isnan(double x) { return x != x; }
// Rust's f32::max / f64::max: NaN loses to a number.
template <typename T> __device__ __forceinline__ T rust_max(T x, T y) { return t_isnan(x) ? y : (t_isnan(y) ? x : (x > y ? x : y)); }
template <typename T> __device__ __forceinline__ T rust_min(T x, T y) { return t_isnan(x) ? y : (t_isnan(y) ? x : (x < y ? x : y)); }

enum UnaryCode {
    U_NEG = 0, U_EXP, U_LOG, U_SQRT, U_RSQRT, U_ABS, U_RELU, U_GELU_ERF, U_GELU_TANH, U_SILU,
    U_SIGMOID, U_TANH, U_SQR, U_RECIP, U_POWF, U_CLAMP, U_AFFINE
};
enum BinaryCode { B_ADD = 0, B_SUB, B_MUL, B_DIV, B_MAXIMUM, B_MINIMUM };
enum CmpCode { C_EQ = 0, C_NE, C_LT, C_LE, C_GT, C_GE };

#define SQRT_2_OVER_PI 0.7978845608028654
#define GELU_C 0.044715
#define FRAC_1_SQRT_2 0.7071067811865476
#define INV_SQRT_2PI 0.3989422804014327

template <typename T> __device__ __forceinline__ T sigmoid(T x) { return (T)1 / ((T)1 + t_exp(-x)); }

template <typename T> __device__ __forceinline__ T unary_fwd(int op, T x, double a, double b) {
    switch (op) {
    case U_NEG: return -x;
    case U_EXP: return t_exp(x);
    case U_LOG: return t_log(x);
    case U_SQRT: return t_sqrt(x);
    case U_RSQRT: return (T)1 / t_sqrt(x);
    case U_ABS: return t_abs(x);
    case U_RELU: return rust_max(x, (T)0);
    case U_GELU_ERF: return (T)0.5 * x * ((T)1 + t_erf(x * (T)FRAC_1_SQRT_2));
    case U_GELU_TANH: {
        const T u = (T)SQRT_2_OVER_PI * (x + (T)GELU_C * x * x * x);
        return (T)0.5 * x * ((T)1 + t_tanh(u));
    }
    case U_SILU: return x * sigmoid(x);
    case U_SIGMOID: return sigmoid(x);
    case U_TANH: return t_tanh(x);
    case U_SQR: return x * x;
    case U_RECIP: return (T)1 / x;
    case U_POWF: return t_pow(x, (T)a);
    case U_CLAMP: return rust_min(rust_max(x, (T)a), (T)b);
    case U_AFFINE: return x * (T)a + (T)b;
    default: return x;
    }
}

template <typename T> __device__ __forceinline__ T unary_deriv(int op, T x, double a, double b) {
    switch (op) {
    case U_NEG: return (T)-1;
    case U_EXP: return t_exp(x);
    case U_LOG: return (T)1 / x;
    case U_SQRT: return (T)0.5 / t_sqrt(x);
    case U_RSQRT: return (T)-0.5 / (x * t_sqrt(x));
    case U_ABS: return x > (T)0 ? (T)1 : (x < (T)0 ? (T)-1 : (T)0);
    case U_RELU: return x > (T)0 ? (T)1 : (T)0;
    case U_GELU_ERF: {
        const T cdf = (T)0.5 * ((T)1 + t_erf(x * (T)FRAC_1_SQRT_2));
        const T pdf = t_exp((T)-0.5 * x * x) * (T)INV_SQRT_2PI;
        return cdf + x * pdf;
    }
    case U_GELU_TANH: {
        const T x2 = x * x;
        const T u = (T)SQRT_2_OVER_PI * (x + (T)GELU_C * x2 * x);
        const T t = t_tanh(u);
        const T du = (T)SQRT_2_OVER_PI * ((T)1 + (T)(3.0 * GELU_C) * x2);
        return (T)0.5 * ((T)1 + t) + (T)0.5 * x * ((T)1 - t * t) * du;
    }
    case U_SILU: {
        const T s = sigmoid(x);
        return s * ((T)1 + x * ((T)1 - s));
    }
    case U_SIGMOID: {
        const T s = sigmoid(x);
        return s * ((T)1 - s);
    }
    case U_TANH: {
        const T t = t_tanh(x);
        return (T)1 - t * t;
    }
    case U_SQR: return (T)2 * x;
    case U_RECIP: return (T)-1 / (x * x);
    case U_POWF: return (T)a * t_pow(x, (T)(a - 1.0));
    case U_CLAMP: return (x >= (T)a && x <= (T)b) ? (T)1 : (T)0;
    case U_AFFINE: return (T)a;
    default: return (T)0;
    }
}

template <typename T> __device__ __forceinline__ T binary_op(int op, T x, T y) {
    switch (op) {
    case B_ADD: return x + y;
    case B_SUB: return x - y;
    case B_MUL: return x * y;
    case B_DIV: return x / y;
    // The CPU's rule: keep x when x >= y or y is NaN (so a NaN in x propagates, one in y not).
    case B_MAXIMUM: return (x >= y || t_isnan(y)) ? x : y;
    case B_MINIMUM: return (x <= y || t_isnan(y)) ? x : y;
    default: return x;
    }
}

template <typename T> __device__ __forceinline__ u8 cmp_op(int op, T x, T y) {
    switch (op) {
    case C_EQ: return x == y;
    case C_NE: return x != y;
    case C_LT: return x < y;
    case C_LE: return x <= y;
    case C_GT: return x > y;
    case C_GE: return x >= y;
    default: return 0;
    }
}

// 16-byte vector types: 4 floats or 2 doubles.
template <typename T> struct Vec16;
template <> struct Vec16<float> { typedef float4 type; static const int WIDTH = 4; };
template <> struct Vec16<double> { typedef double2 type; static const int WIDTH = 2; };

template <typename T> __device__ __forceinline__ T& lane(typename Vec16<T>::type& v, int k);
template <> __device__ __forceinline__ float& lane<float>(float4& v, int k) { return k == 0 ? v.x : k == 1 ? v.y : k == 2 ? v.z : v.w; }
template <> __device__ __forceinline__ double& lane<double>(double2& v, int k) { return k == 0 ? v.x : v.y; }

#define DEFINE_FLOAT_KERNELS(NAME, T)                                                                          \
    extern "C" __global__ void unary_##NAME(T* __restrict__ out, const T* __restrict__ x, Strided xl, u64 n,    \
                                         int op, double a, double b) {                                       \
        GRID_STRIDE_LOOP(i, n) { out[i] = unary_fwd<T>(op, x[strided_offset(xl, i)], a, b); }              \
    }                                                                                                        \
    extern "C" __global__ void unary_bwd_##NAME(T* __restrict__ out, const T* __restrict__ x, Strided xl,       \
                                             const T* __restrict__ dy, Strided dl, u64 n, int op, double a,  \
                                             double b) {                                                     \
        GRID_STRIDE_LOOP(i, n) {                                                                             \
            out[i] = dy[strided_offset(dl, i)] * unary_deriv<T>(op, x[strided_offset(xl, i)], a, b);        \
        }                                                                                                    \
    }                                                                                                        \
    extern "C" __global__ void binary_##NAME(T* __restrict__ out, const T* __restrict__ l, Strided ll,          \
                                          const T* __restrict__ r, Strided rl, u64 n, int op) {              \
        GRID_STRIDE_LOOP(i, n) { out[i] = binary_op<T>(op, l[strided_offset(ll, i)], r[strided_offset(rl, i)]); } \
    }                                                                                                        \
    /* x, out: contiguous, 16-byte aligned; n elements. */                                                   \
    extern "C" __global__ void unary_vec_##NAME(T* __restrict__ out, const T* __restrict__ x, u64 n, int op,    \
                                             double a, double b) {                                           \
        typedef typename Vec16<T>::type V;                                                                   \
        const int W = Vec16<T>::WIDTH;                                                                           \
        const u64 nv = n / W;                                                                                \
        GRID_STRIDE_LOOP(j, nv) {                                                                            \
            V v = reinterpret_cast<const V*>(x)[j];                                                          \
            _Pragma("unroll") for (int k = 0; k < W; ++k) lane<T>(v, k) = unary_fwd<T>(op, lane<T>(v, k), a, b); \
            reinterpret_cast<V*>(out)[j] = v;                                                                \
        }                                                                                                    \
        GRID_STRIDE_LOOP(t, n - nv * W) { out[nv * W + t] = unary_fwd<T>(op, x[nv * W + t], a, b); }        \
    }                                                                                                        \
    /* l, r, out: contiguous, 16-byte aligned; n elements. */                                                \
    extern "C" __global__ void binary_vec_##NAME(T* __restrict__ out, const T* __restrict__ l,                  \
                                              const T* __restrict__ r, u64 n, int op) {                      \
        typedef typename Vec16<T>::type V;                                                                   \
        const int W = Vec16<T>::WIDTH;                                                                           \
        const u64 nv = n / W;                                                                                \
        GRID_STRIDE_LOOP(j, nv) {                                                                            \
            V u = reinterpret_cast<const V*>(l)[j];                                                          \
            const V w = reinterpret_cast<const V*>(r)[j];                                                    \
            _Pragma("unroll") for (int k = 0; k < W; ++k) {                                                 \
                V wc = w;                                                                                    \
                lane<T>(u, k) = binary_op<T>(op, lane<T>(u, k), lane<T>(wc, k));                            \
            }                                                                                                \
            reinterpret_cast<V*>(out)[j] = u;                                                                \
        }                                                                                                    \
        GRID_STRIDE_LOOP(t, n - nv * W) { out[nv * W + t] = binary_op<T>(op, l[nv * W + t], r[nv * W + t]); } \
    }

DEFINE_FLOAT_KERNELS(f32, float)
DEFINE_FLOAT_KERNELS(f64, double)

#define DEFINE_CMP_WHERE(N, T)                                                                               \
    extern "C" __global__ void cmp_##N(u8* __restrict__ out, const T* __restrict__ l, Strided ll,            \
                                       const T* __restrict__ r, Strided rl, u64 n, int op) {                 \
        GRID_STRIDE_LOOP(i, n) { out[i] = cmp_op<T>(op, l[strided_offset(ll, i)], r[strided_offset(rl, i)]); } \
    }                                                                                                        \
    extern "C" __global__ void where_##N(T* __restrict__ out, const u8* __restrict__ c, Strided cl,          \
                                         const T* __restrict__ t, Strided tl, const T* __restrict__ f,       \
                                         Strided fl, u64 n) {                                                \
        GRID_STRIDE_LOOP(i, n) {                                                                             \
            out[i] = c[strided_offset(cl, i)] ? t[strided_offset(tl, i)] : f[strided_offset(fl, i)];        \
        }                                                                                                    \
    }

DEFINE_CMP_WHERE(f32, float)
DEFINE_CMP_WHERE(f64, double)
DEFINE_CMP_WHERE(i64, i64)
DEFINE_CMP_WHERE(u32, u32)
DEFINE_CMP_WHERE(u8, u8)
