#include "qwen_activation.h"
#include "qwen_cpu.h"
#include "simd_exp.h"
#include <immintrin.h>
#include <math.h>

#define AVX512 __attribute__((target("avx512f")))

/// From index i on, one value at a time (the fallback, and the AVX-512 loop's tail).
static void silu_mul_scalar(float *gate, const float *up, long i, long n) {
    for (; i < n; i++) gate[i] = gate[i] / (1 + expf(-gate[i])) * up[i];
}

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

void qwen_silu_mul(float *gate, const float *up, long n) {
    if (qwen_cpu_has_avx512()) {
        silu_mul_avx512(gate, up, n);
    } else {
        silu_mul_scalar(gate, up, 0, n);
    }
}

/// Both exponentiate in place: z[i] becomes exp(z[i] − m); they return Σ of those (in double,
/// so 150k-wide rows lose nothing to summation order) and set *max to m.
static double exp_shifted_scalar(float *z, long n, float *max) {
    float m = -INFINITY;
    for (long i = 0; i < n; i++) if (z[i] > m) m = z[i];
    double sum = 0;
    for (long i = 0; i < n; i++) { z[i] = expf(z[i] - m); sum += z[i]; }
    *max = m;
    return sum;
}

AVX512 static double exp_shifted_avx512(float *z, long n, float *max) {
    __m512 mv = _mm512_set1_ps(-INFINITY);
    long i = 0;
    for (; i + 16 <= n; i += 16) mv = _mm512_max_ps(mv, _mm512_loadu_ps(z + i));
    float m = _mm512_reduce_max_ps(mv);
    for (long j = i; j < n; j++) if (z[j] > m) m = z[j];
    const __m512 mm = _mm512_set1_ps(m);
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    for (i = 0; i + 16 <= n; i += 16) {
        const __m512 e = qwen_exp512(_mm512_sub_ps(_mm512_loadu_ps(z + i), mm));
        _mm512_storeu_ps(z + i, e);
        s0 = _mm512_add_pd(s0, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        s1 = _mm512_add_pd(s1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1))));
    }
    double sum = _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
    for (; i < n; i++) { z[i] = expf(z[i] - m); sum += z[i]; }
    *max = m;
    return sum;
}

float qwen_cross_entropy_row(float *z, long n, long target, float scale, int *target_is_top) {
    const float zt = z[target];
    if (target_is_top) {
        int top = 1;  // the target is the (first) largest logit
        for (long i = 0; i < n && top; i++) if (z[i] > zt || (z[i] == zt && i < target)) top = 0;
        *target_is_top = top;
    }
    float m;
    const double sum = qwen_cpu_has_avx512() ? exp_shifted_avx512(z, n, &m) : exp_shifted_scalar(z, n, &m);
    const float k = (float)(scale / sum);
    for (long i = 0; i < n; i++) z[i] *= k;
    z[target] -= scale;
    return (float)((double)m + log(sum) - (double)zt);
}
