#ifndef DRL_CKERNELS_H
#define DRL_CKERNELS_H
#include <stddef.h>

/* Element-wise layer loops (GELU tanh, SiLU) and a row maximum, compiled three times (AVX-512,
   AVX2, baseline x86-64) and picked at run time by the CPU's features. The operations and their
   order are exactly those of the Swift loops they replace (Sources/NN/Layers/Basic.swift and
   FastMath.swift) and the file is compiled without FMA contraction, so every version gives the
   bits the Swift code gave. */

void drl_gelu_forward(const float *x, float *y, size_t n, float k);
void drl_gelu_backward(const float *x, const float *dy, float *dx, size_t n, float k);
void drl_silu_forward(const float *x, float *y, size_t n);
void drl_silu_backward(const float *x, const float *dy, float *dx, size_t n);
float drl_max(const float *p, size_t n);
/* 2: AVX-512, 1: AVX2+FMA, 0: baseline. */
int drl_kernel_level(void);
/* Tests: use at most this level (clamped to what the CPU supports); returns the level in use. */
int drl_limit_kernel_level(int max_level);

#endif
