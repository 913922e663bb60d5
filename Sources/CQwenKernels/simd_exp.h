// Vectorised exp for the AVX-512 and AVX2 kernels (libm's expf is scalar). Internal to CQwenKernels.
#ifndef QWEN_SIMD_EXP_H
#define QWEN_SIMD_EXP_H
#include <math.h>
#if defined(__x86_64__)
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

// The same steps in 8 lanes. AVX2 has no scalef: 2^k (k in [-126, 128]) is applied as two exact
// power-of-two factors 2^⌊k/2⌋ · 2^(k−⌊k/2⌋), each a normal float, so the product is rounded once,
// as scalef rounds it: both give the same bits for the same x.
__attribute__((target("avx2,fma"))) static inline __m256 qwen_exp256(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.7f));
    const __m256 k = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.0f / 720);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    const __m256i ki = _mm256_cvtps_epi32(k);
    const __m256i k1 = _mm256_srai_epi32(ki, 1), k2 = _mm256_sub_epi32(ki, k1);
    const __m256 f1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k1, _mm256_set1_epi32(127)), 23));
    const __m256 f2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k2, _mm256_set1_epi32(127)), 23));
    return _mm256_mul_ps(_mm256_mul_ps(p, f1), f2);
}

/// The sum of a vector's 8 lanes.
__attribute__((target("avx2"))) static inline float qwen_hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

/// exp for the scalar paths: libm's expf with the vector versions' clamp, so that under
/// -ffast-math no path meets an infinity (e^x for x below −87 is taken as e^−87, which
/// vanishes next to 1 and, in a shifted softmax, next to the row's largest term).
static inline float qwen_expf_clamped(float x) {
    return expf(x < -87.0f ? -87.0f : x > 88.7f ? 88.7f : x);
}

#endif
