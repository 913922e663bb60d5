// AVX2 (+FMA, F16C) blocked attention, included by attention.c after its AVX-512 kernel: the
// same algorithm in 8 lanes. n query rows of one sequence at consecutive positions; each 16-key
// tile and each tile of VALUE_TILE value rows is read (and, for f16/Q8_0, converted) once for all
// of them, and every row's arithmetic is exactly what it gets alone, so a row's result does not
// depend on the rows it is computed with. Head widths that are multiples of 8 up to 256.
//
// With 16 vector registers (AVX-512 has 32), a key's 16 scores are taken as two halves of 8, and
// the values are accumulated in column chunks of CW vectors for N (row, head) pairs at a time
// (N·CW ≤ 12 accumulators). Every output element still sums its value rows in order, so the
// chunking changes no bit.

#define AVX2A __attribute__((target("avx2,fma,f16c")))

/// The 8 horizontal sums of v[0..7], in order: lane p = sum of v[p].
AVX2A static inline __m256 sums8(const __m256 *v) {
    const __m256 t0 = _mm256_hadd_ps(v[0], v[1]), t1 = _mm256_hadd_ps(v[2], v[3]);
    const __m256 t2 = _mm256_hadd_ps(v[4], v[5]), t3 = _mm256_hadd_ps(v[6], v[7]);
    const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

/// 8 cache elements from element i on (i a multiple of 8), as floats (the values ld gives).
AVX2A static inline __m256 load8(const void *base, size_t i, int kind) {
    if (kind == QWEN_KV_Q8_0) {
        const uint8_t *b = (const uint8_t *)base + i / 32 * 34;
        uint16_t d;
        memcpy(&d, b, 2);
        const __m256 x = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b + 2 + i % 32))));
        __m256 v = _mm256_mul_ps(_mm256_set1_ps(qwen_f16_table[d]), x);
        __asm__("" : "+x"(v));  // as in ld
        return v;
    }
    return kind == QWEN_KV_F16 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)base + i)))
                               : _mm256_loadu_ps((const float *)base + i);
}

/// Vectors per column chunk of the values, and (row, head) pairs per pass that fit beside them.
static inline int values_chunk2(int nv) { return nv % 4 == 0 ? 4 : nv % 2 == 0 ? 2 : 1; }
static inline int values_heads2(int nv, int left) {
    const int fit = values_chunk2(nv) == 4 ? 3 : 4;
    return left < fit ? left : fit;
}

/// out[k] (+)= Σ_{i0 ≤ i < i1} p[k·stride + i] · v_i for pairs k < N, as values_block does, with
/// the hd/8 vectors of each output taken CW at a time.
AVX2A static inline __attribute__((always_inline)) void values_block2(const float *p, int stride, int i0, int i1, const void *vbase,
                                                                      const int32_t *blocks, int block_size, int kv_heads, int g, int hd,
                                                                      float *const *out, int first, const float *vtile, const int TILED,
                                                                      const int CW, const int N, const int kind) {
    const int nv = hd / 8;
    for (int c0 = 0; c0 < nv; c0 += CW) {
        __m256 acc[12];
        for (int k = 0; k < N; k++)
            for (int c = 0; c < CW; c++) acc[k * CW + c] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(out[k] + 8 * (c0 + c));
        for (int i = i0; i < i1; i++) {
            const size_t v = TILED ? (size_t)(i - i0) * hd : kv_row(blocks, block_size, i, kv_heads, g, hd, kind);
            for (int c = 0; c < CW; c++) {
                const __m256 vc = TILED ? _mm256_loadu_ps(vtile + v + 8 * (c0 + c)) : load8(vbase, v + 8 * (size_t)(c0 + c), kind);
                for (int k = 0; k < N; k++)
                    acc[k * CW + c] = _mm256_fmadd_ps(_mm256_set1_ps(p[(size_t)k * stride + i]), vc, acc[k * CW + c]);
            }
        }
        for (int k = 0; k < N; k++)
            for (int c = 0; c < CW; c++) _mm256_storeu_ps(out[k] + 8 * (c0 + c), acc[k * CW + c]);
    }
}

/// The scores of the rows that see all of keys t..<t + 16 (at k[j] in kbase) against them.
AVX2A static inline __attribute__((always_inline)) void tile_scores2(const float *q, int ld, int n, int ctx0, int group, int hd, int nv,
                                                                     int g, int t, const size_t *k, const void *kbase, float scale,
                                                                     float *scratch, int cmax, const int kind) {
    for (int i = 0; i < n; i++) {
        if (t + 16 > ctx0 + i) continue;
        const float *qg = q + (size_t)i * ld + (size_t)g * group * hd;
        for (int h = 0; h < group; h++) {
            const float *qh = qg + (size_t)h * hd;
            for (int half = 0; half < 2; half++) {
                __m256 part[8];
                for (int j = 0; j < 8; j++) {
                    const size_t kj = k[8 * half + j];
                    __m256 a = _mm256_mul_ps(_mm256_loadu_ps(qh), load8(kbase, kj, kind));
                    for (int c = 1; c < nv; c++) a = _mm256_fmadd_ps(_mm256_loadu_ps(qh + 8 * c), load8(kbase, kj + 8 * (size_t)c, kind), a);
                    part[j] = a;
                }
                _mm256_storeu_ps(scratch + (size_t)(i * group + h) * cmax + t + 8 * half, _mm256_mul_ps(sums8(part), _mm256_set1_ps(scale)));
            }
        }
    }
}

AVX2A static inline __attribute__((always_inline)) void attend_avx2_body(
    const float *q, int ld, int n, int ctx0, int heads, int kv_heads, int hd, const void *kbase, const void *vbase,
    const int32_t *blocks, int block_size, float scale, float *out, float *scratch, int g0, int g1, const int kind) {
    const int group = heads / kv_heads, nv = hd / 8, cmax = ctx0 + n - 1, pairs = n * group;
    const int convert = kind != QWEN_KV_F32 && n > 1;
    float *ktile = scratch + (size_t)pairs * cmax, *vtile = ktile + 16 * (size_t)hd;
    for (int g = g0; g < g1; g++) {
        for (int t = 0; t + 16 <= cmax; t += 16) {
            size_t k[16];
            for (int j = 0; j < 16; j++) k[j] = kv_row(blocks, block_size, t + j, kv_heads, g, hd, kind);
            if (convert) {
                for (int j = 0; j < 16; j++) {
                    for (int c = 0; c < nv; c++) _mm256_storeu_ps(ktile + (size_t)j * hd + 8 * c, load8(kbase, k[j] + 8 * (size_t)c, kind));
                    k[j] = (size_t)j * hd;
                }
                tile_scores2(q, ld, n, ctx0, group, hd, nv, g, t, k, ktile, scale, scratch, cmax, QWEN_KV_F32);
            } else {
                tile_scores2(q, ld, n, ctx0, group, hd, nv, g, t, k, kbase, scale, scratch, cmax, kind);
            }
        }
        for (int i = 0; i < n; i++) {
            const int ctx = ctx0 + i;
            scores_from(ctx / 16 * 16, q + (size_t)i * ld + (size_t)g * group * hd, group, hd, kbase, blocks, block_size, ctx, kv_heads, g,
                        scale, scratch + (size_t)i * group * cmax, cmax, kind);
            for (int h = 0; h < group; h++) {
                float *s = scratch + (size_t)(i * group + h) * cmax;
                const float m = max_of(s, ctx);
                __m256 sum = _mm256_setzero_ps();
                int x = 0;
                for (; x + 8 <= ctx; x += 8) {
                    const __m256 e = qwen_exp256(_mm256_sub_ps(_mm256_loadu_ps(s + x), _mm256_set1_ps(m)));
                    _mm256_storeu_ps(s + x, e);
                    sum = _mm256_add_ps(sum, e);
                }
                float total = qwen_hsum256(sum);
                for (; x < ctx; x++) {
                    s[x] = expf(s[x] - m);
                    total += s[x];
                }
                const __m256 inv = _mm256_set1_ps(1.0f / total);
                for (x = 0; x + 8 <= ctx; x += 8) _mm256_storeu_ps(s + x, _mm256_mul_ps(_mm256_loadu_ps(s + x), inv));
                for (; x < ctx; x++) s[x] *= 1.0f / total;
                for (; x < cmax; x++) s[x] = 0;  // past this row's keys: adds nothing to its sums
            }
        }
        const int tile = n == 1 ? cmax : VALUE_TILE, cw = values_chunk2(nv);
        for (int i0 = 0; i0 < cmax; i0 += tile) {
            if (convert) {
                const int rows = i0 + tile < cmax ? tile : cmax - i0;
                for (int i = 0; i < rows; i++) {
                    const size_t v = kv_row(blocks, block_size, i0 + i, kv_heads, g, hd, kind);
                    for (int c = 0; c < nv; c++) _mm256_storeu_ps(vtile + (size_t)i * hd + 8 * c, load8(vbase, v + 8 * (size_t)c, kind));
                }
            }
            for (int pr = 0; pr < pairs;) {
                const int m = values_heads2(nv, pairs - pr);
                const int lim = ctx0 + (pr + m - 1) / group;
                const int i1 = i0 + tile < lim ? i0 + tile : lim;
                if (i0 < i1) {
                    float *o[4];
                    for (int k = 0; k < m; k++) {
                        const int pair = pr + k;
                        o[k] = out + (size_t)(pair / group) * ld + (size_t)(g * group + pair % group) * hd;
                    }
                    const float *p = scratch + (size_t)pr * cmax;
#define VALUES2_CASE(CW, N, T)                                                                                                   \
    case CW * 8 + N: values_block2(p, cmax, i0, i1, vbase, blocks, block_size, kv_heads, g, hd, o, i0 == 0, vtile, T, CW, N, kind); break;
#define VALUES2_CASES(T)                                                                                                         \
    switch (cw * 8 + m) {                                                                                                        \
        VALUES2_CASE(4, 1, T) VALUES2_CASE(4, 2, T) VALUES2_CASE(4, 3, T)                                                        \
        VALUES2_CASE(2, 1, T) VALUES2_CASE(2, 2, T) VALUES2_CASE(2, 3, T) VALUES2_CASE(2, 4, T)                                  \
        VALUES2_CASE(1, 1, T) VALUES2_CASE(1, 2, T) VALUES2_CASE(1, 3, T) VALUES2_CASE(1, 4, T)                                  \
    }
                    if (convert) {
                        VALUES2_CASES(1)
                    } else {
                        VALUES2_CASES(0)
                    }
#undef VALUES2_CASE
#undef VALUES2_CASES
                }
                pr += m;
            }
        }
    }
}

AVX2A static void attend_avx2_f32(ROWS_ARGS) {
    if (n == 1) attend_avx2_body(ONE_ROW, QWEN_KV_F32); else attend_avx2_body(ROWS_PASS, QWEN_KV_F32);
}
AVX2A static void attend_avx2_f16(ROWS_ARGS) {
    if (n == 1) attend_avx2_body(ONE_ROW, QWEN_KV_F16); else attend_avx2_body(ROWS_PASS, QWEN_KV_F16);
}
AVX2A static void attend_avx2_q8(ROWS_ARGS) {
    if (n == 1) attend_avx2_body(ONE_ROW, QWEN_KV_Q8_0); else attend_avx2_body(ROWS_PASS, QWEN_KV_Q8_0);
}
