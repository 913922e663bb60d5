// A memory-read probe for the benchmarks: how fast this machine streams bytes from RAM, the
// ceiling single-stream generation (which reads every weight once per token) can approach.
#include "qwen_cpu.h"
#if defined(__x86_64__)
#include <immintrin.h>

__attribute__((target("avx2")))
static float sum_avx2(const float *p, long n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    long i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_add_ps(a0, _mm256_loadu_ps(p + i));
        a1 = _mm256_add_ps(a1, _mm256_loadu_ps(p + i + 8));
        a2 = _mm256_add_ps(a2, _mm256_loadu_ps(p + i + 16));
        a3 = _mm256_add_ps(a3, _mm256_loadu_ps(p + i + 24));
    }
    float out[8];
    _mm256_storeu_ps(out, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    float s = 0;
    for (int k = 0; k < 8; k++) s += out[k];
    for (; i < n; i++) s += p[i];
    return s;
}

#endif

float qwen_read_sum(const float *p, long n) {
#if defined(__x86_64__)
    // What the machine reads, whatever QWEN_CPU_LEVEL caps the kernels to: the hardware decides.
    if (qwen_cpu_hardware_level() >= QWEN_LEVEL_AVX2) return sum_avx2(p, n);
#endif
    float s = 0;
    for (long i = 0; i < n; i++) s += p[i];
    return s;
}
