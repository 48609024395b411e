#include "ckernels.h"
#include <stdint.h>
#include <string.h>

#if !defined(__x86_64__)
#define DRL_NO_DISPATCH 1
#endif

/* fastExp of FastMath.swift, operation for operation. */
static inline __attribute__((always_inline)) float fexp(float v) {
    float x0 = v < -87.3f ? -87.3f : (v > 88.3f ? 88.3f : v);
    float n = (x0 * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float x = x0 - n * 0.693359375f + n * 2.12194440e-4f;
    float z = x * x;
    float y = 1.9875691500e-4f;
    y = y * x + 1.3981999507e-3f;
    y = y * x + 8.3334519073e-3f;
    y = y * x + 4.1665795894e-2f;
    y = y * x + 1.6666665459e-1f;
    y = y * x + 5.0000001201e-1f;
    y = y * z + x + 1.0f;
    uint32_t bits = ((uint32_t)((int32_t)n + 127)) << 23;
    float s;
    memcpy(&s, &bits, 4);
    return y * s;
}

static inline __attribute__((always_inline)) float ftanh(float u) { return 1.0f - 2.0f / (1.0f + fexp(2.0f * u)); }

#define BODIES(SUFFIX, ATTR)                                                                      \
    ATTR static void gelu_f_##SUFFIX(const float *restrict x, float *restrict y, size_t n, float k) { \
        for (size_t i = 0; i < n; i++) {                                                           \
            float v = x[i];                                                                        \
            y[i] = 0.5f * v * (1.0f + ftanh(k * (v + 0.044715f * v * v * v)));                    \
        }                                                                                          \
    }                                                                                              \
    ATTR static void gelu_b_##SUFFIX(const float *restrict x, const float *restrict dy, float *restrict dx, \
                                     size_t n, float k) {                                          \
        const float c3 = 3.0f * 0.044715f;                                                         \
        for (size_t i = 0; i < n; i++) {                                                           \
            float v = x[i];                                                                        \
            float th = ftanh(k * (v + 0.044715f * v * v * v));                                     \
            float du = k * (1.0f + c3 * v * v);                                                    \
            dx[i] = dy[i] * (0.5f * (1.0f + th) + 0.5f * v * (1.0f - th * th) * du);               \
        }                                                                                          \
    }                                                                                              \
    ATTR static void silu_f_##SUFFIX(const float *restrict x, float *restrict y, size_t n) {       \
        for (size_t i = 0; i < n; i++) { float v = x[i]; y[i] = v / (1.0f + fexp(-v)); }           \
    }                                                                                              \
    ATTR static void silu_b_##SUFFIX(const float *restrict x, const float *restrict dy, float *restrict dx, size_t n) { \
        for (size_t i = 0; i < n; i++) {                                                           \
            float v = x[i];                                                                        \
            float s = 1.0f / (1.0f + fexp(-v));                                                    \
            dx[i] = dy[i] * s * (1.0f + v * (1.0f - s));                                           \
        }                                                                                          \
    }                                                                                              \
    /* the maximum is exact in any order, so lanes change no bits */                               \
    ATTR static float max_##SUFFIX(const float *restrict p, size_t n) {                            \
        float acc[16];                                                                             \
        for (int l = 0; l < 16; l++) acc[l] = -__builtin_inff();                                   \
        size_t i = 0;                                                                              \
        for (; i + 16 <= n; i += 16)                                                               \
            for (int l = 0; l < 16; l++) acc[l] = p[i + l] > acc[l] ? p[i + l] : acc[l];           \
        float m = acc[0];                                                                          \
        for (int l = 1; l < 16; l++) m = acc[l] > m ? acc[l] : m;                                  \
        for (; i < n; i++) m = p[i] > m ? p[i] : m;                                                \
        return m;                                                                                  \
    }

BODIES(base, )
#ifndef DRL_NO_DISPATCH
BODIES(avx2, __attribute__((target("avx2,fma"))))
BODIES(avx512, __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma"))))
#endif

static int level = -1;

int drl_kernel_level(void) {
    if (level < 0) {
#ifndef DRL_NO_DISPATCH
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
            level = 2;
        else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
            level = 1;
        else
#endif
            level = 0;
    }
    return level;
}

int drl_limit_kernel_level(int max_level) {
    level = -1;
    int best = drl_kernel_level();
    level = max_level < best ? (max_level < 0 ? 0 : max_level) : best;
    return level;
}

#ifndef DRL_NO_DISPATCH
#define DISPATCH(CALL_BASE, CALL_AVX2, CALL_AVX512)                                                \
    switch (level < 0 ? drl_kernel_level() : level) {                                              \
    case 2: CALL_AVX512; break;                                                                    \
    case 1: CALL_AVX2; break;                                                                      \
    default: CALL_BASE; break;                                                                     \
    }
#else
#define DISPATCH(CALL_BASE, CALL_AVX2, CALL_AVX512) CALL_BASE;
#endif

void drl_gelu_forward(const float *x, float *y, size_t n, float k) {
    DISPATCH(gelu_f_base(x, y, n, k), gelu_f_avx2(x, y, n, k), gelu_f_avx512(x, y, n, k))
}
void drl_gelu_backward(const float *x, const float *dy, float *dx, size_t n, float k) {
    DISPATCH(gelu_b_base(x, dy, dx, n, k), gelu_b_avx2(x, dy, dx, n, k), gelu_b_avx512(x, dy, dx, n, k))
}
void drl_silu_forward(const float *x, float *y, size_t n) {
    DISPATCH(silu_f_base(x, y, n), silu_f_avx2(x, y, n), silu_f_avx512(x, y, n))
}
void drl_silu_backward(const float *x, const float *dy, float *dx, size_t n) {
    DISPATCH(silu_b_base(x, dy, dx, n), silu_b_avx2(x, dy, dx, n), silu_b_avx512(x, dy, dx, n))
}
float drl_max(const float *p, size_t n) {
    float m = 0;
    DISPATCH(m = max_base(p, n), m = max_avx2(p, n), m = max_avx512(p, n))
    return m;
}
