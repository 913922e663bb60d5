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
