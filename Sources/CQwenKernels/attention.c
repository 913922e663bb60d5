#include "qwen_attention.h"
#include "qwen_cpu.h"
#include "simd_exp.h"
#include <immintrin.h>
#include <math.h>
#include <string.h>

// Built for AVX-512, AVX2 and plain x86-64; the loader picks the one this CPU runs.
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))

static inline float dot(const float *a, const float *b, int n) {
    float s = 0;
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/// The row of position t of a sequence (key or value of kv head g) in a paged layer cache.
static inline const float *kv_row(const float *base, const int32_t *blocks, int block_size, int t, int kvw, int g, int hd) {
    return base + ((size_t)blocks[t / block_size] * block_size + t % block_size) * kvw + (size_t)g * hd;
}

/// scratch[h * ctx + t] = q_h · k_t × scale for positions t0..<ctx, one key row at a time
/// (each key read once for the group's query heads).
static inline void scores_from(int t0, const float *qg, int group, int hd, const float *kbase, const int32_t *blocks,
                               int block_size, int ctx, int kvw, int g, float scale, float *scratch) {
    for (int t = t0; t < ctx; t++) {
        const float *k = kv_row(kbase, blocks, block_size, t, kvw, g, hd);
        for (int h = 0; h < group; h++) scratch[(size_t)h * ctx + t] = dot(qg + (size_t)h * hd, k, hd) * scale;
    }
}

static inline float max_of(const float *s, int n) {
    float m = -INFINITY;
    for (int i = 0; i < n; i++) m = s[i] > m ? s[i] : m;
    return m;
}

CLONES
static void attend_generic(const float *q, int heads, int kv_heads, int hd, const float *kbase, const float *vbase,
                       const int32_t *blocks, int block_size, int ctx, float scale, float *out, float *scratch, int g0, int g1) {
    const int group = heads / kv_heads;
    const int kvw = kv_heads * hd;
    for (int g = g0; g < g1; g++) {
        const float *qg = q + (size_t)g * group * hd;
        scores_from(0, qg, group, hd, kbase, blocks, block_size, ctx, kvw, g, scale, scratch);
        for (int h = 0; h < group; h++) {
            float *s = scratch + (size_t)h * ctx;
            const float m = max_of(s, ctx);
            float sum = 0;
            for (int t = 0; t < ctx; t++) {
                s[t] = expf(s[t] - m);
                sum += s[t];
            }
            float inv = 1.0f / sum;
            for (int t = 0; t < ctx; t++) s[t] *= inv;
        }
        float *og = out + (size_t)g * group * hd;
        memset(og, 0, sizeof(float) * (size_t)group * hd);
        for (int t = 0; t < ctx; t++) {
            const float *v = kv_row(vbase, blocks, block_size, t, kvw, g, hd);
            for (int h = 0; h < group; h++) {
                const float p = scratch[(size_t)h * ctx + t];
                float *o = og + (size_t)h * hd;
                for (int i = 0; i < hd; i++) o[i] += p * v[i];
            }
        }
    }
}

// AVX-512: the scores of 16 keys at a time (per key and head a vector of partial products,
// then one transpose-and-add tree turns 16 such vectors into 16 sums), the softmax with a
// vectorised exp, and each head's output kept in registers over the values. Head widths
// that are multiples of 16 up to 256.
#define AVX512 __attribute__((target("avx512f,avx512dq")))

/// The 16 horizontal sums of v[0..15], in order: lane p = sum of v[p]. v is overwritten.
AVX512 static inline __m512 sums16(__m512 *v) {
    // Inputs go in transposed 4×4 order so the tree's output comes out in order.
    __m512 t[16];
    for (int k = 0; k < 16; k++) t[4 * (k % 4) + k / 4] = v[k];
    __m512 w[8], x[4];
    for (int j = 0; j < 8; j++)
        w[j] = _mm512_add_ps(_mm512_shuffle_f32x4(t[2 * j], t[2 * j + 1], 0x44), _mm512_shuffle_f32x4(t[2 * j], t[2 * j + 1], 0xEE));
    for (int j = 0; j < 4; j++)
        x[j] = _mm512_add_ps(_mm512_shuffle_f32x4(w[2 * j], w[2 * j + 1], 0x88), _mm512_shuffle_f32x4(w[2 * j], w[2 * j + 1], 0xDD));
    const __m512 y0 = _mm512_add_ps(_mm512_unpacklo_ps(x[0], x[1]), _mm512_unpackhi_ps(x[0], x[1]));
    const __m512 y1 = _mm512_add_ps(_mm512_unpacklo_ps(x[2], x[3]), _mm512_unpackhi_ps(x[2], x[3]));
    return _mm512_add_ps(_mm512_shuffle_ps(y0, y1, 0x44), _mm512_shuffle_ps(y0, y1, 0xEE));
}

AVX512 static void attend_avx512(const float *q, int heads, int kv_heads, int hd, const float *kbase, const float *vbase,
                                 const int32_t *blocks, int block_size, int ctx, float scale, float *out, float *scratch, int g0, int g1) {
    const int group = heads / kv_heads, kvw = kv_heads * hd, nv = hd / 16;
    for (int g = g0; g < g1; g++) {
        const float *qg = q + (size_t)g * group * hd;
        int t = 0;
        for (; t + 16 <= ctx; t += 16) {
            const float *k[16];
            for (int j = 0; j < 16; j++) k[j] = kv_row(kbase, blocks, block_size, t + j, kvw, g, hd);
            for (int h = 0; h < group; h++) {
                const float *qh = qg + (size_t)h * hd;
                __m512 part[16];
                for (int j = 0; j < 16; j++) {
                    __m512 a = _mm512_mul_ps(_mm512_loadu_ps(qh), _mm512_loadu_ps(k[j]));
                    for (int c = 1; c < nv; c++) a = _mm512_fmadd_ps(_mm512_loadu_ps(qh + 16 * c), _mm512_loadu_ps(k[j] + 16 * c), a);
                    part[j] = a;
                }
                _mm512_storeu_ps(scratch + (size_t)h * ctx + t, _mm512_mul_ps(sums16(part), _mm512_set1_ps(scale)));
            }
        }
        scores_from(t, qg, group, hd, kbase, blocks, block_size, ctx, kvw, g, scale, scratch);
        for (int h = 0; h < group; h++) {
            float *s = scratch + (size_t)h * ctx;
            const float m = max_of(s, ctx);
            __m512 sum = _mm512_setzero_ps();
            int i = 0;
            for (; i + 16 <= ctx; i += 16) {
                const __m512 e = qwen_exp512(_mm512_sub_ps(_mm512_loadu_ps(s + i), _mm512_set1_ps(m)));
                _mm512_storeu_ps(s + i, e);
                sum = _mm512_add_ps(sum, e);
            }
            float total = _mm512_reduce_add_ps(sum);
            for (; i < ctx; i++) {
                s[i] = expf(s[i] - m);
                total += s[i];
            }
            const __m512 inv = _mm512_set1_ps(1.0f / total);
            for (i = 0; i + 16 <= ctx; i += 16) _mm512_storeu_ps(s + i, _mm512_mul_ps(_mm512_loadu_ps(s + i), inv));
            for (; i < ctx; i++) s[i] *= 1.0f / total;
        }
        for (int h = 0; h < group; h++) {
            const float *p = scratch + (size_t)h * ctx;
            __m512 acc[16];
            for (int c = 0; c < nv; c++) acc[c] = _mm512_setzero_ps();
            for (int i = 0; i < ctx; i++) {
                const float *v = kv_row(vbase, blocks, block_size, i, kvw, g, hd);
                const __m512 pi = _mm512_set1_ps(p[i]);
                for (int c = 0; c < nv; c++) acc[c] = _mm512_fmadd_ps(pi, _mm512_loadu_ps(v + 16 * c), acc[c]);
            }
            float *o = out + (size_t)(g * group + h) * hd;
            for (int c = 0; c < nv; c++) _mm512_storeu_ps(o + 16 * c, acc[c]);
        }
    }
}

void qwen_attend_paged_groups(const float *q, int heads, int kv_heads, int hd, const float *kbase, const float *vbase,
                              const int32_t *blocks, int block_size, int ctx, float scale, float *out, float *scratch,
                              int g_begin, int g_end) {
    if (qwen_cpu_has_avx512() && hd % 16 == 0 && hd <= 256)
        attend_avx512(q, heads, kv_heads, hd, kbase, vbase, blocks, block_size, ctx, scale, out, scratch, g_begin, g_end);
    else
        attend_generic(q, heads, kv_heads, hd, kbase, vbase, blocks, block_size, ctx, scale, out, scratch, g_begin, g_end);
}

void qwen_attend_paged(const float *q, int heads, int kv_heads, int hd, const float *kbase, const float *vbase,
                       const int32_t *blocks, int block_size, int ctx, float scale, float *out, float *scratch) {
    qwen_attend_paged_groups(q, heads, kv_heads, hd, kbase, vbase, blocks, block_size, ctx, scale, out, scratch, 0, kv_heads);
}
