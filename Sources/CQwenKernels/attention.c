#include "ggml_blocks.h"
#include "qwen_attention.h"
#include "qwen_cpu.h"
#include "simd_exp.h"
#include <immintrin.h>
#include <math.h>
#include <string.h>

// Built for AVX-512, AVX2 and plain x86-64; the loader picks the one this CPU runs.
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))

/// Element i of a cache stored as `kind`: QWEN_KV_F32, QWEN_KV_F16 (IEEE half floats) or
/// QWEN_KV_Q8_0 (blocks of 32 values, each 34 bytes: an f16 scale and 32 int8, so element i of
/// kv_row's numbering is in block i/32).
static inline float ld(const void *base, size_t i, int kind) {
    if (kind == QWEN_KV_Q8_0) {
        const uint8_t *b = (const uint8_t *)base + i / 32 * 34;
        uint16_t d;
        memcpy(&d, b, 2);
        return qwen_f16_table[d] * (float)(int8_t)b[2 + i % 32];
    }
    return kind == QWEN_KV_F16 ? qwen_f16_table[((const uint16_t *)base)[i]] : ((const float *)base)[i];
}

static inline float dot(const float *a, const void *base, size_t off, int n, int kind) {
    float s = 0;
    for (int i = 0; i < n; i++) s += a[i] * ld(base, off + (size_t)i, kind);
    return s;
}

/// The first element of position t of a sequence (key or value of kv head g) in a paged layer cache.
/// A Q8_0 cache gives each head whole blocks (its width rounded up to 32; the padding is never
/// read), so a head starts a block whatever its width.
static inline size_t kv_row(const int32_t *blocks, int block_size, int t, int kv_heads, int g, int hd, int kind) {
    const size_t stride = kind == QWEN_KV_Q8_0 ? (size_t)(hd + 31) / 32 * 32 : (size_t)hd;
    return (((size_t)blocks[t / block_size] * block_size + t % block_size) * kv_heads + g) * stride;
}

/// scratch[h * ctx + t] = q_h · k_t × scale for positions t0..<ctx, one key row at a time
/// (each key read once for the group's query heads).
static inline void scores_from(int t0, const float *qg, int group, int hd, const void *kbase, const int32_t *blocks,
                               int block_size, int ctx, int kv_heads, int g, float scale, float *scratch, int kind) {
    for (int t = t0; t < ctx; t++) {
        const size_t k = kv_row(blocks, block_size, t, kv_heads, g, hd, kind);
        for (int h = 0; h < group; h++) scratch[(size_t)h * ctx + t] = dot(qg + (size_t)h * hd, kbase, k, hd, kind) * scale;
    }
}

static inline float max_of(const float *s, int n) {
    float m = -INFINITY;
    for (int i = 0; i < n; i++) m = s[i] > m ? s[i] : m;
    return m;
}

CLONES
static void attend_generic(const float *q, int heads, int kv_heads, int hd, const void *kbase, const void *vbase,
                       const int32_t *blocks, int block_size, int ctx, float scale, float *out, float *scratch, int g0, int g1,
                       int kind) {
    const int group = heads / kv_heads;
    for (int g = g0; g < g1; g++) {
        const float *qg = q + (size_t)g * group * hd;
        scores_from(0, qg, group, hd, kbase, blocks, block_size, ctx, kv_heads, g, scale, scratch, kind);
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
            const size_t v = kv_row(blocks, block_size, t, kv_heads, g, hd, kind);
            for (int h = 0; h < group; h++) {
                const float p = scratch[(size_t)h * ctx + t];
                float *o = og + (size_t)h * hd;
                for (int i = 0; i < hd; i++) o[i] += p * ld(vbase, v + (size_t)i, kind);
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

/// 16 cache elements from element i on (i a multiple of 16), as floats.
AVX512 static inline __m512 load16(const void *base, size_t i, int kind) {
    if (kind == QWEN_KV_Q8_0) {
        const uint8_t *b = (const uint8_t *)base + i / 32 * 34;
        uint16_t d;
        memcpy(&d, b, 2);
        const __m512 x = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b + 2 + i % 32))));
        return _mm512_mul_ps(_mm512_set1_ps(qwen_f16_table[d]), x);
    }
    return kind == QWEN_KV_F16 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)base + i)))
                               : _mm512_loadu_ps((const float *)base + i);
}

/// Heads whose outputs are accumulated together over the values: n × nv accumulators in registers.
static inline int values_heads(int nv, int left) {
    const int fit = nv == 4 ? 6 : nv == 8 ? 3 : 1;
    return left < fit ? left : fit;
}

/// out[k] = Σ_i p[k·ctx + i] · v_i for heads k < N, each value row read once for all N
/// (inlined with constant NV and N, so the accumulators stay in registers).
AVX512 static inline __attribute__((always_inline)) void values_block(const float *p, int ctx, const void *vbase, const int32_t *blocks,
                                                                      int block_size, int kv_heads, int g, int hd, float *out,
                                                                      const int NV, const int N, const int kind) {
    __m512 acc[24];
    for (int k = 0; k < N * NV; k++) acc[k] = _mm512_setzero_ps();
    for (int i = 0; i < ctx; i++) {
        const size_t v = kv_row(blocks, block_size, i, kv_heads, g, hd, kind);
        for (int c = 0; c < NV; c++) {
            const __m512 vc = load16(vbase, v + 16 * (size_t)c, kind);
            for (int k = 0; k < N; k++) acc[k * NV + c] = _mm512_fmadd_ps(_mm512_set1_ps(p[(size_t)k * ctx + i]), vc, acc[k * NV + c]);
        }
    }
    for (int k = 0; k < N; k++)
        for (int c = 0; c < NV; c++) _mm512_storeu_ps(out + (size_t)k * hd + 16 * c, acc[k * NV + c]);
}

// Inlined into one copy per storage type (kind is a constant in each caller).
AVX512 static inline __attribute__((always_inline)) void attend_avx512_body(
    const float *q, int heads, int kv_heads, int hd, const void *kbase, const void *vbase, const int32_t *blocks, int block_size,
    int ctx, float scale, float *out, float *scratch, int g0, int g1, const int kind) {
    const int group = heads / kv_heads, nv = hd / 16;
    for (int g = g0; g < g1; g++) {
        const float *qg = q + (size_t)g * group * hd;
        int t = 0;
        for (; t + 16 <= ctx; t += 16) {
            size_t k[16];
            for (int j = 0; j < 16; j++) k[j] = kv_row(blocks, block_size, t + j, kv_heads, g, hd, kind);
            for (int h = 0; h < group; h++) {
                const float *qh = qg + (size_t)h * hd;
                __m512 part[16];
                for (int j = 0; j < 16; j++) {
                    __m512 a = _mm512_mul_ps(_mm512_loadu_ps(qh), load16(kbase, k[j], kind));
                    for (int c = 1; c < nv; c++) a = _mm512_fmadd_ps(_mm512_loadu_ps(qh + 16 * c), load16(kbase, k[j] + 16 * (size_t)c, kind), a);
                    part[j] = a;
                }
                _mm512_storeu_ps(scratch + (size_t)h * ctx + t, _mm512_mul_ps(sums16(part), _mm512_set1_ps(scale)));
            }
        }
        scores_from(t, qg, group, hd, kbase, blocks, block_size, ctx, kv_heads, g, scale, scratch, kind);
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
        // The values, read once for as many of the group's heads as fit in registers
        // (hd 64: six heads, hd 128: three), instead of once per head.
        for (int h = 0; h < group;) {
            const int n = values_heads(nv, group - h);
            float *o = out + (size_t)(g * group + h) * hd;
            const float *p = scratch + (size_t)h * ctx;
            switch (nv * 8 + n) {
#define VALUES_CASE(NV, N) case NV * 8 + N: values_block(p, ctx, vbase, blocks, block_size, kv_heads, g, hd, o, NV, N, kind); break;
                VALUES_CASE(4, 1) VALUES_CASE(4, 2) VALUES_CASE(4, 3) VALUES_CASE(4, 4) VALUES_CASE(4, 5) VALUES_CASE(4, 6)
                VALUES_CASE(8, 1) VALUES_CASE(8, 2) VALUES_CASE(8, 3)
#undef VALUES_CASE
            default:
                for (int k = 0; k < n; k++) values_block(p + (size_t)k * ctx, ctx, vbase, blocks, block_size, kv_heads, g, hd, o + (size_t)k * hd, nv, 1, kind);
            }
            h += n;
        }
    }
}

AVX512 static void attend_avx512_f32(const float *q, int heads, int kv_heads, int hd, const void *kbase, const void *vbase,
                                     const int32_t *blocks, int block_size, int ctx, float scale, float *out, float *scratch, int g0, int g1) {
    attend_avx512_body(q, heads, kv_heads, hd, kbase, vbase, blocks, block_size, ctx, scale, out, scratch, g0, g1, 0);
}

AVX512 static void attend_avx512_f16(const float *q, int heads, int kv_heads, int hd, const void *kbase, const void *vbase,
                                     const int32_t *blocks, int block_size, int ctx, float scale, float *out, float *scratch, int g0, int g1) {
    attend_avx512_body(q, heads, kv_heads, hd, kbase, vbase, blocks, block_size, ctx, scale, out, scratch, g0, g1, QWEN_KV_F16);
}

AVX512 static void attend_avx512_q8(const float *q, int heads, int kv_heads, int hd, const void *kbase, const void *vbase,
                                    const int32_t *blocks, int block_size, int ctx, float scale, float *out, float *scratch, int g0, int g1) {
    attend_avx512_body(q, heads, kv_heads, hd, kbase, vbase, blocks, block_size, ctx, scale, out, scratch, g0, g1, QWEN_KV_Q8_0);
}

void qwen_attend_paged_kv(const float *q, int heads, int kv_heads, int hd, const void *kbase, const void *vbase,
                          const int32_t *blocks, int block_size, int ctx, float scale, float *out, float *scratch,
                          int g_begin, int g_end, int kv_type) {
    if (qwen_cpu_has_avx512() && hd % 16 == 0 && hd <= 256) {
        (kv_type == QWEN_KV_Q8_0 ? attend_avx512_q8 : kv_type == QWEN_KV_F16 ? attend_avx512_f16 : attend_avx512_f32)(
            q, heads, kv_heads, hd, kbase, vbase, blocks, block_size, ctx, scale, out, scratch, g_begin, g_end);
    } else {
        attend_generic(q, heads, kv_heads, hd, kbase, vbase, blocks, block_size, ctx, scale, out, scratch, g_begin, g_end, kv_type);
    }
}

void qwen_attend_paged_groups(const float *q, int heads, int kv_heads, int hd, const float *kbase, const float *vbase,
                              const int32_t *blocks, int block_size, int ctx, float scale, float *out, float *scratch,
                              int g_begin, int g_end) {
    qwen_attend_paged_kv(q, heads, kv_heads, hd, kbase, vbase, blocks, block_size, ctx, scale, out, scratch, g_begin, g_end, QWEN_KV_F32);
}

AVX512 static void to_f16_avx512(const float *src, uint16_t *dst, int n) {
    int i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(dst + i), _mm512_cvtps_ph(_mm512_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    for (; i < n; i++) dst[i] = qwen_f16_from_f32(src[i]);
}

void qwen_f32_to_f16(const float *src, uint16_t *dst, int n) {
    if (qwen_cpu_has_avx512()) {
        to_f16_avx512(src, dst, n);
    } else {
        for (int i = 0; i < n; i++) dst[i] = qwen_f16_from_f32(src[i]);
    }
}

void qwen_attend_paged(const float *q, int heads, int kv_heads, int hd, const float *kbase, const float *vbase,
                       const int32_t *blocks, int block_size, int ctx, float scale, float *out, float *scratch) {
    qwen_attend_paged_groups(q, heads, kv_heads, hd, kbase, vbase, blocks, block_size, ctx, scale, out, scratch, 0, kv_heads);
}
