#include "qwen_activation.h"
#include "qwen_cpu.h"
#include <math.h>
#include "simd_exp.h"

/// From index i on, one value at a time (the portable path, and the vector loops' tails). Gates
/// below −88.7 (and NaN) give 0, as silu does in the limit: e^−g would overflow there, and under
/// -ffast-math g / (1 + inf) is not kept from becoming a NaN.
static void silu_mul_scalar(float *gate, const float *up, long i, long n) {
    for (; i < n; i++) {
        const float g = gate[i];
        gate[i] = g >= -88.7f ? g / (1 + qwen_expf_clamped(-g)) * up[i] : 0.0f;
    }
}

/// Exponentiate in place from index i on: z[i] becomes exp(z[i] − m); returns Σ of those.
static double exp_shifted_scalar(float *z, long i, long n, float m) {
    double sum = 0;
    for (; i < n; i++) { z[i] = qwen_expf_clamped(z[i] - m); sum += z[i]; }
    return sum;
}

static float max_scalar(const float *z, long i, long n, float m) {
    for (; i < n; i++) if (z[i] > m) m = z[i];
    return m;
}

#if defined(__x86_64__)
#define AVX512 __attribute__((target("avx512f")))
#define AVX2 __attribute__((target("avx2,fma")))

AVX512 static void silu_mul_avx512(float *gate, const float *up, long n) {
    long i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 g = _mm512_loadu_ps(gate + i);
        const __m512 e = qwen_exp512(_mm512_sub_ps(_mm512_setzero_ps(), g));
        __m512 s = _mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
        // Below -88.7, e^-g overflows in f32 and silu(g) = g / inf = 0 (this does it without inf).
        s = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(g, _mm512_set1_ps(-88.7f), _CMP_GE_OQ), s);
        _mm512_storeu_ps(gate + i, _mm512_mul_ps(s, _mm512_loadu_ps(up + i)));
    }
    silu_mul_scalar(gate, up, i, n);
}

AVX2 static void silu_mul_avx2(float *gate, const float *up, long n) {
    long i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 g = _mm256_loadu_ps(gate + i);
        const __m256 e = qwen_exp256(_mm256_sub_ps(_mm256_setzero_ps(), g));
        __m256 s = _mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
        s = _mm256_and_ps(s, _mm256_cmp_ps(g, _mm256_set1_ps(-88.7f), _CMP_GE_OQ));  // as above
        _mm256_storeu_ps(gate + i, _mm256_mul_ps(s, _mm256_loadu_ps(up + i)));
    }
    silu_mul_scalar(gate, up, i, n);
}

/// Both exponentiate a whole row in place (z[i] becomes exp(z[i] − m)), return Σ of those (in
/// double, so 150k-wide rows lose nothing to summation order) and set *max to m.
AVX512 static double exp_shifted_avx512(float *z, long n, float *max) {
    __m512 mv = _mm512_set1_ps(-INFINITY);
    long i = 0;
    for (; i + 16 <= n; i += 16) mv = _mm512_max_ps(mv, _mm512_loadu_ps(z + i));
    const float m = max_scalar(z, i, n, _mm512_reduce_max_ps(mv));
    const __m512 mm = _mm512_set1_ps(m);
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    for (i = 0; i + 16 <= n; i += 16) {
        const __m512 e = qwen_exp512(_mm512_sub_ps(_mm512_loadu_ps(z + i), mm));
        _mm512_storeu_ps(z + i, e);
        s0 = _mm512_add_pd(s0, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        s1 = _mm512_add_pd(s1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1))));
    }
    *max = m;
    return _mm512_reduce_add_pd(_mm512_add_pd(s0, s1)) + exp_shifted_scalar(z, i, n, m);
}

AVX2 static double exp_shifted_avx2(float *z, long n, float *max) {
    __m256 mv = _mm256_set1_ps(-INFINITY);
    long i = 0;
    for (; i + 8 <= n; i += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(z + i));
    float lanes[8];
    _mm256_storeu_ps(lanes, mv);
    const float m = max_scalar(z, i, n, max_scalar(lanes, 0, 8, -INFINITY));
    const __m256 mm = _mm256_set1_ps(m);
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    for (i = 0; i + 8 <= n; i += 8) {
        const __m256 e = qwen_exp256(_mm256_sub_ps(_mm256_loadu_ps(z + i), mm));
        _mm256_storeu_ps(z + i, e);
        s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
        s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
    }
    double d[4];
    _mm256_storeu_pd(d, _mm256_add_pd(s0, s1));
    *max = m;
    return (d[0] + d[1]) + (d[2] + d[3]) + exp_shifted_scalar(z, i, n, m);
}
#endif

void qwen_silu_mul(float *gate, const float *up, long n) {
#if defined(__x86_64__)
    if (qwen_cpu_has_avx512()) return silu_mul_avx512(gate, up, n);
    if (qwen_cpu_has_avx2()) return silu_mul_avx2(gate, up, n);
#endif
    silu_mul_scalar(gate, up, 0, n);
}

static double exp_shifted(float *z, long n, float *max) {
#if defined(__x86_64__)
    if (qwen_cpu_has_avx512()) return exp_shifted_avx512(z, n, max);
    if (qwen_cpu_has_avx2()) return exp_shifted_avx2(z, n, max);
#endif
    *max = max_scalar(z, 0, n, -INFINITY);
    return exp_shifted_scalar(z, 0, n, *max);
}

float qwen_cross_entropy_row(float *z, long n, long target, float scale, int *target_is_top) {
    const float zt = z[target];
    if (target_is_top) {
        int top = 1;  // the target is the (first) largest logit
        for (long i = 0; i < n && top; i++) if (z[i] > zt || (z[i] == zt && i < target)) top = 0;
        *target_is_top = top;
    }
    float m;
    const double sum = exp_shifted(z, n, &m);
    const float k = (float)(scale / sum);
    for (long i = 0; i < n; i++) z[i] *= k;
    z[target] -= scale;
    return (float)((double)m + log(sum) - (double)zt);
}
