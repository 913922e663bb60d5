#include "ggml_blocks.h"
#include "qwen_attention.h"
#include "levels.h"
#include "simd_exp.h"
#include <math.h>
#include <string.h>

/// Element i of a cache stored as `kind`: QWEN_KV_F32, QWEN_KV_F16 (IEEE half floats) or
/// QWEN_KV_Q8_0 (blocks of 32 values, each 34 bytes: an f16 scale and 32 int8, so element i of
/// kv_row's numbering is in block i/32).
static inline float ld(const void *base, size_t i, int kind) {
    if (kind == QWEN_KV_Q8_0) {
        const uint8_t *b = (const uint8_t *)base + i / 32 * 34;
        uint16_t d;
        memcpy(&d, b, 2);
        float v = qwen_f16_table[d] * (float)(int8_t)b[2 + i % 32];
        // d·q stays one rounded product, never reassociated into its consumer under
        // -ffast-math, so every path that reads a value gets the same bits.
#if QWEN_X86
        __asm__("" : "+x"(v));
#else
        __asm__("" : "+w"(v));
#endif
        return v;
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

/// scratch[h * stride + t] = q_h · k_t × scale for positions t0..<ctx, one key row at a time
/// (each key read once for the group's query heads).
static inline void scores_from(int t0, const float *qg, int group, int hd, const void *kbase, const int32_t *blocks,
                               int block_size, int ctx, int kv_heads, int g, float scale, float *scratch, int stride, int kind) {
    for (int t = t0; t < ctx; t++) {
        const size_t k = kv_row(blocks, block_size, t, kv_heads, g, hd, kind);
        for (int h = 0; h < group; h++) scratch[(size_t)h * stride + t] = dot(qg + (size_t)h * hd, kbase, k, hd, kind) * scale;
    }
}

static inline float max_of(const float *s, int n) {
    float m = -INFINITY;
    for (int i = 0; i < n; i++) m = s[i] > m ? s[i] : m;
    return m;
}

// One query row, plain loops; instanced per level (levels.h) for head widths the vector
// kernels do not take.
static ALWAYS_INLINE void attend_generic_body(const float *q, int heads, int kv_heads, int hd, const void *kbase, const void *vbase,
                                              const int32_t *blocks, int block_size, int ctx, float scale, float *out, float *scratch,
                                              int g0, int g1, int kind) {
    const int group = heads / kv_heads;
    for (int g = g0; g < g1; g++) {
        const float *qg = q + (size_t)g * group * hd;
        scores_from(0, qg, group, hd, kbase, blocks, block_size, ctx, kv_heads, g, scale, scratch, ctx, kind);
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

#define GENERIC_PARAMS (const float *q, int heads, int kv_heads, int hd, const void *kbase, const void *vbase, const int32_t *blocks, \
                        int block_size, int ctx, float scale, float *out, float *scratch, int g0, int g1, int kind)
#define GENERIC_ARGS (q, heads, kv_heads, hd, kbase, vbase, blocks, block_size, ctx, scale, out, scratch, g0, g1, kind)
QWEN_PER_LEVEL(attend_generic, attend_generic_body, GENERIC_PARAMS, GENERIC_ARGS)

#if QWEN_X86
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
        __m512 v = _mm512_mul_ps(_mm512_set1_ps(qwen_f16_table[d]), x);
        __asm__("" : "+v"(v));  // as in ld
        return v;
    }
    return kind == QWEN_KV_F16 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)base + i)))
                               : _mm512_loadu_ps((const float *)base + i);
}

/// Heads whose outputs are accumulated together over the values: n × nv accumulators in registers.
static inline int values_heads(int nv, int left) {
    const int fit = nv == 4 ? 6 : nv == 8 ? 3 : 1;
    return left < fit ? left : fit;
}

/// out[k] (+)= Σ_{i0 ≤ i < i1} p[k·stride + i] · v_i for pairs k < N (a row and head each), each
/// value row read once for all N (inlined with constant NV and N, so the accumulators stay in
/// registers); `first` starts from zero, otherwise from out. The sum runs in i order whatever
/// i0 and i1, so splitting the range changes no bit.
/// With TILED, value row i is at vtile + (i − i0)·hd in f32 instead (a tile converted once).
AVX512 static inline __attribute__((always_inline)) void values_block(const float *p, int stride, int i0, int i1, const void *vbase,
                                                                      const int32_t *blocks, int block_size, int kv_heads, int g, int hd,
                                                                      float *const *out, int first, const float *vtile, const int TILED,
                                                                      const int NV, const int N, const int kind) {
    __m512 acc[24];
    for (int k = 0; k < N; k++)
        for (int c = 0; c < NV; c++) acc[k * NV + c] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(out[k] + 16 * c);
    for (int i = i0; i < i1; i++) {
        const size_t v = TILED ? (size_t)(i - i0) * hd : kv_row(blocks, block_size, i, kv_heads, g, hd, kind);
        for (int c = 0; c < NV; c++) {
            const __m512 vc = TILED ? _mm512_loadu_ps(vtile + v + 16 * c) : load16(vbase, v + 16 * (size_t)c, kind);
            for (int k = 0; k < N; k++) acc[k * NV + c] = _mm512_fmadd_ps(_mm512_set1_ps(p[(size_t)k * stride + i]), vc, acc[k * NV + c]);
        }
    }
    for (int k = 0; k < N; k++)
        for (int c = 0; c < NV; c++) _mm512_storeu_ps(out[k] + 16 * c, acc[k * NV + c]);
}

/// The scores of the rows that see all of keys t..<t + 16 (at k[j] in kbase) against them.
AVX512 static inline __attribute__((always_inline)) void tile_scores(const float *q, int ld, int n, int ctx0, int group, int hd, int nv,
                                                                     int g, int t, const size_t *k, const void *kbase, float scale,
                                                                     float *scratch, int cmax, const int kind) {
    for (int i = 0; i < n; i++) {
        if (t + 16 > ctx0 + i) continue;
        const float *qg = q + (size_t)i * ld + (size_t)g * group * hd;
        for (int h = 0; h < group; h++) {
            const float *qh = qg + (size_t)h * hd;
            __m512 part[16];
            for (int j = 0; j < 16; j++) {
                __m512 a = _mm512_mul_ps(_mm512_loadu_ps(qh), load16(kbase, k[j], kind));
                for (int c = 1; c < nv; c++) a = _mm512_fmadd_ps(_mm512_loadu_ps(qh + 16 * c), load16(kbase, k[j] + 16 * (size_t)c, kind), a);
                part[j] = a;
            }
            _mm512_storeu_ps(scratch + (size_t)(i * group + h) * cmax + t, _mm512_mul_ps(sums16(part), _mm512_set1_ps(scale)));
        }
    }
}

/// Value rows per pass when several query rows share the values: a tile that stays in L1
/// while every (row, head) pair of the block takes it.
#define VALUE_TILE 64

// n query rows of one sequence at consecutive positions (row i sees ctx0 + i keys), q and out
// rows `ld` floats apart. Each key tile and value tile is read from the cache once for all the
// rows (instead of once per row, which made a long prompt's attention quadratic in cache
// traffic); every row's arithmetic is exactly what it gets alone (n = 1), so a row's result
// does not depend on the rows it is computed with. scratch: n · group · (ctx0 + n − 1) floats,
// and (16 + VALUE_TILE) · hd more.
// Inlined into one copy per storage type (kind is a constant in each caller).
AVX512 static inline __attribute__((always_inline)) void attend_avx512_body(
    const float *q, int ld, int n, int ctx0, int heads, int kv_heads, int hd, const void *kbase, const void *vbase,
    const int32_t *blocks, int block_size, float scale, float *out, float *scratch, int g0, int g1, const int kind) {
    const int group = heads / kv_heads, nv = hd / 16, cmax = ctx0 + n - 1, pairs = n * group;
    // Several rows share each tile: a cache that is not f32 is converted once per tile, into
    // scratch past the scores.
    const int convert = kind != QWEN_KV_F32 && n > 1;
    float *ktile = scratch + (size_t)pairs * cmax, *vtile = ktile + 16 * (size_t)hd;
    for (int g = g0; g < g1; g++) {
        // Scores: pair (i, h) at scratch[(i·group + h)·cmax + t]; a row takes the 16-key tiles
        // it sees whole, then its tail one key at a time, as alone.
        for (int t = 0; t + 16 <= cmax; t += 16) {
            size_t k[16];
            for (int j = 0; j < 16; j++) k[j] = kv_row(blocks, block_size, t + j, kv_heads, g, hd, kind);
            if (convert) {
                // Half-float or Q8_0 keys converted once for all the rows (the same values load16 gives).
                for (int j = 0; j < 16; j++) {
                    for (int c = 0; c < nv; c++) _mm512_storeu_ps(ktile + (size_t)j * hd + 16 * c, load16(kbase, k[j] + 16 * (size_t)c, kind));
                    k[j] = (size_t)j * hd;
                }
                tile_scores(q, ld, n, ctx0, group, hd, nv, g, t, k, ktile, scale, scratch, cmax, QWEN_KV_F32);
            } else {
                tile_scores(q, ld, n, ctx0, group, hd, nv, g, t, k, kbase, scale, scratch, cmax, kind);
            }
        }
        for (int i = 0; i < n; i++) {
            const int ctx = ctx0 + i;
            scores_from(ctx / 16 * 16, q + (size_t)i * ld + (size_t)g * group * hd, group, hd, kbase, blocks, block_size, ctx, kv_heads, g,
                        scale, scratch + (size_t)i * group * cmax, cmax, kind);
            for (int h = 0; h < group; h++) {
                float *s = scratch + (size_t)(i * group + h) * cmax;
                const float m = max_of(s, ctx);
                __m512 sum = _mm512_setzero_ps();
                int x = 0;
                for (; x + 16 <= ctx; x += 16) {
                    const __m512 e = qwen_exp512(_mm512_sub_ps(_mm512_loadu_ps(s + x), _mm512_set1_ps(m)));
                    _mm512_storeu_ps(s + x, e);
                    sum = _mm512_add_ps(sum, e);
                }
                float total = _mm512_reduce_add_ps(sum);
                for (; x < ctx; x++) {
                    s[x] = expf(s[x] - m);
                    total += s[x];
                }
                const __m512 inv = _mm512_set1_ps(1.0f / total);
                for (x = 0; x + 16 <= ctx; x += 16) _mm512_storeu_ps(s + x, _mm512_mul_ps(_mm512_loadu_ps(s + x), inv));
                for (; x < ctx; x++) s[x] *= 1.0f / total;
                for (; x < cmax; x++) s[x] = 0;  // past this row's keys: adds nothing to its sums
            }
        }
        // The values, each row read once for as many pairs as fit in registers (hd 64: six,
        // hd 128: three); with several rows, a tile of VALUE_TILE rows serves every pair.
        const int tile = n == 1 ? cmax : VALUE_TILE;
        for (int i0 = 0; i0 < cmax; i0 += tile) {
            if (convert) {
                const int rows = i0 + tile < cmax ? tile : cmax - i0;
                for (int i = 0; i < rows; i++) {
                    const size_t v = kv_row(blocks, block_size, i0 + i, kv_heads, g, hd, kind);
                    for (int c = 0; c < nv; c++) _mm512_storeu_ps(vtile + (size_t)i * hd + 16 * c, load16(vbase, v + 16 * (size_t)c, kind));
                }
            }
            for (int pr = 0; pr < pairs;) {
                const int m = values_heads(nv, pairs - pr);
                const int lim = ctx0 + (pr + m - 1) / group;  // the keys the group's last row sees
                const int i1 = i0 + tile < lim ? i0 + tile : lim;
                if (i0 < i1) {
                    float *o[6];
                    for (int k = 0; k < m; k++) {
                        const int pair = pr + k;
                        o[k] = out + (size_t)(pair / group) * ld + (size_t)(g * group + pair % group) * hd;
                    }
                    const float *p = scratch + (size_t)pr * cmax;
#define VALUES_CASES(T)                                                                                                          \
    switch (nv * 8 + m) {                                                                                                        \
        VALUES_CASE(4, 1, T) VALUES_CASE(4, 2, T) VALUES_CASE(4, 3, T) VALUES_CASE(4, 4, T) VALUES_CASE(4, 5, T)                 \
        VALUES_CASE(4, 6, T) VALUES_CASE(8, 1, T) VALUES_CASE(8, 2, T) VALUES_CASE(8, 3, T)                                     \
    default: values_block(p, cmax, i0, i1, vbase, blocks, block_size, kv_heads, g, hd, o, i0 == 0, vtile, T, nv, 1, kind);       \
    }
#define VALUES_CASE(NV, N, T)                                                                                                    \
    case NV * 8 + N: values_block(p, cmax, i0, i1, vbase, blocks, block_size, kv_heads, g, hd, o, i0 == 0, vtile, T, NV, N, kind); break;
                    if (convert) {
                        VALUES_CASES(1)
                    } else {
                        VALUES_CASES(0)
                    }
#undef VALUES_CASE
#undef VALUES_CASES
                }
                pr += m;
            }
        }
    }
}

#define ROWS_ARGS const float *q, int ld, int n, int ctx0, int heads, int kv_heads, int hd, const void *kbase, const void *vbase, \
                  const int32_t *blocks, int block_size, float scale, float *out, float *scratch, int g0, int g1
#define ROWS_PASS q, ld, n, ctx0, heads, kv_heads, hd, kbase, vbase, blocks, block_size, scale, out, scratch, g0, g1
#define ONE_ROW q, ld, 1, ctx0, heads, kv_heads, hd, kbase, vbase, blocks, block_size, scale, out, scratch, g0, g1
// A copy for one row (decoding), where n is a constant the loops fold away.
AVX512 static void attend_avx512_f32(ROWS_ARGS) {
    if (n == 1) attend_avx512_body(ONE_ROW, QWEN_KV_F32); else attend_avx512_body(ROWS_PASS, QWEN_KV_F32);
}
AVX512 static void attend_avx512_f16(ROWS_ARGS) {
    if (n == 1) attend_avx512_body(ONE_ROW, QWEN_KV_F16); else attend_avx512_body(ROWS_PASS, QWEN_KV_F16);
}
AVX512 static void attend_avx512_q8(ROWS_ARGS) {
    if (n == 1) attend_avx512_body(ONE_ROW, QWEN_KV_Q8_0); else attend_avx512_body(ROWS_PASS, QWEN_KV_Q8_0);
}

#include "attention_avx2.h"
#endif

void qwen_attend_paged_rows(const float *q, int ld, int n, int ctx0, int heads, int kv_heads, int hd, const void *kbase,
                            const void *vbase, const int32_t *blocks, int block_size, float scale, float *out, float *scratch,
                            int g_begin, int g_end, int kv_type) {
#if QWEN_X86
    if (qwen_cpu_has_avx512() && hd % 16 == 0 && hd <= 256) {
        (kv_type == QWEN_KV_Q8_0 ? attend_avx512_q8 : kv_type == QWEN_KV_F16 ? attend_avx512_f16 : attend_avx512_f32)(
            q, ld, n, ctx0, heads, kv_heads, hd, kbase, vbase, blocks, block_size, scale, out, scratch, g_begin, g_end);
    } else if (qwen_cpu_has_avx2() && hd % 8 == 0 && hd <= 256) {
        (kv_type == QWEN_KV_Q8_0 ? attend_avx2_q8 : kv_type == QWEN_KV_F16 ? attend_avx2_f16 : attend_avx2_f32)(
            q, ld, n, ctx0, heads, kv_heads, hd, kbase, vbase, blocks, block_size, scale, out, scratch, g_begin, g_end);
    } else
#endif
    {
        for (int i = 0; i < n; i++)
            attend_generic(q + (size_t)i * ld, heads, kv_heads, hd, kbase, vbase, blocks, block_size, ctx0 + i, scale, out + (size_t)i * ld,
                           scratch, g_begin, g_end, kv_type);
    }
}

void qwen_attend_paged_kv(const float *q, int heads, int kv_heads, int hd, const void *kbase, const void *vbase,
                          const int32_t *blocks, int block_size, int ctx, float scale, float *out, float *scratch,
                          int g_begin, int g_end, int kv_type) {
    qwen_attend_paged_rows(q, heads * hd, 1, ctx, heads, kv_heads, hd, kbase, vbase, blocks, block_size, scale, out, scratch,
                           g_begin, g_end, kv_type);
}

void qwen_attend_paged_groups(const float *q, int heads, int kv_heads, int hd, const float *kbase, const float *vbase,
                              const int32_t *blocks, int block_size, int ctx, float scale, float *out, float *scratch,
                              int g_begin, int g_end) {
    qwen_attend_paged_kv(q, heads, kv_heads, hd, kbase, vbase, blocks, block_size, ctx, scale, out, scratch, g_begin, g_end, QWEN_KV_F32);
}

#if QWEN_X86
AVX512 static void to_f16_avx512(const float *src, uint16_t *dst, int n) {
    int i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(dst + i), _mm512_cvtps_ph(_mm512_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    for (; i < n; i++) dst[i] = qwen_f16_from_f32(src[i]);
}

__attribute__((target("avx2,f16c"))) static void to_f16_f16c(const float *src, uint16_t *dst, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    for (; i < n; i++) dst[i] = qwen_f16_from_f32(src[i]);
}
#endif

// The conversion instructions round to nearest even, as qwen_f16_from_f32 does: every level
// writes the same bits.
void qwen_f32_to_f16(const float *src, uint16_t *dst, int n) {
#if QWEN_X86
    if (qwen_cpu_has_avx512()) return to_f16_avx512(src, dst, n);
    if (qwen_cpu_has_avx2()) return to_f16_f16c(src, dst, n);
#endif
    for (int i = 0; i < n; i++) dst[i] = qwen_f16_from_f32(src[i]);
}

void qwen_attend_paged(const float *q, int heads, int kv_heads, int hd, const float *kbase, const float *vbase,
                       const int32_t *blocks, int block_size, int ctx, float scale, float *out, float *scratch) {
    qwen_attend_paged_groups(q, heads, kv_heads, hd, kbase, vbase, blocks, block_size, ctx, scale, out, scratch, 0, kv_heads);
}
