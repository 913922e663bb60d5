// A vectorised exp for the AVX-512 kernels (libm's expf is scalar). Internal to CQwenKernels.
#ifndef QWEN_SIMD_EXP_H
#define QWEN_SIMD_EXP_H
#include <immintrin.h>

// exp(x) = 2^k · e^r with k = round(x / ln 2) and r = x − k·ln 2 (ln 2 in two parts, so r is
// exact to f32), e^r from its degree-6 Taylor polynomial (|r| ≤ ln2/2: truncation < 2e-8
// relative), 2^k applied with scalef. Inputs are clamped to [-87, 88.7], where e^x is finite
// (below, e^x vanishes next to 1 in 1 + e^x).
__attribute__((target("avx512f"))) static inline __m512 qwen_exp512(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.7f));
    const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(k, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, k);
}

#endif
