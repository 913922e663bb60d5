#include "qwen_quant.h"
#include "levels.h"
#include "ggml_blocks.h"
#include <stdint.h>
#include <string.h>

static inline __attribute__((always_inline)) int block_size(int t) {
    switch (t) {
    case QWEN_Q4_K: case QWEN_Q5_K: case QWEN_Q6_K: return 256;
    case QWEN_Q4_0: case QWEN_Q4_1: case QWEN_Q5_0: case QWEN_Q5_1: case QWEN_Q8_0: return 32;
    default: return 32;  // f32/f16/bf16 are processed 32 at a time
    }
}

static inline __attribute__((always_inline)) int block_bytes(int t) {
    switch (t) {
    case QWEN_F32: return 128;
    case QWEN_F16: case QWEN_BF16: return 64;
    case QWEN_Q4_0: return 18;
    case QWEN_Q4_1: return 20;
    case QWEN_Q5_0: return 22;
    case QWEN_Q5_1: return 24;
    case QWEN_Q8_0: return 34;
    case QWEN_Q4_K: return 144;
    case QWEN_Q5_K: return 176;
    case QWEN_Q6_K: return 210;
    default: return 0;
    }
}

long qwen_quant_row_bytes(int type, int cols) { return (long)cols / block_size(type) * block_bytes(type); }

/// Expands one block into y (block_size(t) floats), with the reference's float operations.
static inline __attribute__((always_inline)) void expand(int t, const uint8_t *b, float *y) {
    switch (t) {
    case QWEN_F32: memcpy(y, b, 128); break;
    case QWEN_BF16:
        for (int j = 0; j < 32; j++) {
            uint32_t bits = (uint32_t)(b[2 * j] | (b[2 * j + 1] << 8)) << 16;
            memcpy(&y[j], &bits, 4);
        }
        break;
    case QWEN_F16: for (int j = 0; j < 32; j++) y[j] = f16(b + 2 * j); break;
    case QWEN_Q4_0: {
        const float d = f16(b);
        for (int j = 0; j < 16; j++) {
            y[j] = (float)((b[2 + j] & 0x0F) - 8) * d;
            y[j + 16] = (float)((b[2 + j] >> 4) - 8) * d;
        }
        break;
    }
    case QWEN_Q4_1: {
        const float d = f16(b), m = f16(b + 2);
        for (int j = 0; j < 16; j++) {
            y[j] = (float)(b[4 + j] & 0x0F) * d + m;
            y[j + 16] = (float)(b[4 + j] >> 4) * d + m;
        }
        break;
    }
    case QWEN_Q5_0: {
        const float d = f16(b);
        uint32_t qh;
        memcpy(&qh, b + 2, 4);
        for (int j = 0; j < 16; j++) {
            const int h0 = ((qh >> j) << 4) & 0x10, h1 = (qh >> (j + 12)) & 0x10;
            y[j] = (float)(((b[6 + j] & 0x0F) | h0) - 16) * d;
            y[j + 16] = (float)(((b[6 + j] >> 4) | h1) - 16) * d;
        }
        break;
    }
    case QWEN_Q5_1: {
        const float d = f16(b), m = f16(b + 2);
        uint32_t qh;
        memcpy(&qh, b + 4, 4);
        for (int j = 0; j < 16; j++) {
            const int h0 = ((qh >> j) << 4) & 0x10, h1 = (qh >> (j + 12)) & 0x10;
            y[j] = (float)((b[8 + j] & 0x0F) | h0) * d + m;
            y[j + 16] = (float)((b[8 + j] >> 4) | h1) * d + m;
        }
        break;
    }
    case QWEN_Q8_0: {
        const float d = f16(b);
        for (int j = 0; j < 32; j++) y[j] = (float)(int8_t)b[2 + j] * d;
        break;
    }
    case QWEN_Q4_K: {
        const float d = f16(b), dmin = f16(b + 2);
        const uint8_t *sc = b + 4, *q = b + 16;
        for (int p = 0; p < 4; p++) {
            float s1, m1, s2, m2;
            scale_min_k4(2 * p, sc, &s1, &m1);
            scale_min_k4(2 * p + 1, sc, &s2, &m2);
            const float d1 = d * s1, mm1 = dmin * m1, d2 = d * s2, mm2 = dmin * m2;
            for (int l = 0; l < 32; l++) y[64 * p + l] = d1 * (float)(q[l] & 0xF) - mm1;
            for (int l = 0; l < 32; l++) y[64 * p + 32 + l] = d2 * (float)(q[l] >> 4) - mm2;
            q += 32;
        }
        break;
    }
    case QWEN_Q5_K: {
        const float d = f16(b), dmin = f16(b + 2);
        const uint8_t *sc = b + 4, *qh = b + 16, *ql = b + 48;
        uint8_t u1 = 1, u2 = 2;
        for (int p = 0; p < 4; p++) {
            float s1, m1, s2, m2;
            scale_min_k4(2 * p, sc, &s1, &m1);
            scale_min_k4(2 * p + 1, sc, &s2, &m2);
            const float d1 = d * s1, mm1 = dmin * m1, d2 = d * s2, mm2 = dmin * m2;
            for (int l = 0; l < 32; l++) y[64 * p + l] = d1 * (float)((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - mm1;
            for (int l = 0; l < 32; l++) y[64 * p + 32 + l] = d2 * (float)((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - mm2;
            ql += 32;
            u1 <<= 2;
            u2 <<= 2;
        }
        break;
    }
    case QWEN_Q6_K: {
        const float d = f16(b + 208);
        const uint8_t *ql = b, *qh = b + 128;
        const int8_t *sc = (const int8_t *)(b + 192);
        for (int half = 0; half < 2; half++) {
            for (int l = 0; l < 32; l++) {
                const int is = l / 16;
                const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[128 * half + l] = d * sc[is + 0] * q1;
                y[128 * half + l + 32] = d * sc[is + 2] * q2;
                y[128 * half + l + 64] = d * sc[is + 4] * q3;
                y[128 * half + l + 96] = d * sc[is + 6] * q4;
            }
            ql += 64;
            qh += 32;
            sc += 8;
        }
        break;
    }
    }
}

/// One row expanded, `type` a constant in each instance so the block expansion inlines and
/// vectorises (training expands every weight twice per step through this).
static inline __attribute__((always_inline)) void dequant_typed(const int type, const void *row, int cols, float *out) {
    const int bs = block_size(type), bb = block_bytes(type);
    for (int b = 0; b < cols / bs; b++) expand(type, (const uint8_t *)row + (long)b * bb, out + (long)b * bs);
}

static ALWAYS_INLINE void dequant_row_body(int type, const void *row, int cols, float *out) {
    switch (type) {
    case QWEN_F32: memcpy(out, row, (size_t)cols * 4); break;
    case QWEN_F16: dequant_typed(QWEN_F16, row, cols, out); break;
    case QWEN_BF16: dequant_typed(QWEN_BF16, row, cols, out); break;
    case QWEN_Q4_0: dequant_typed(QWEN_Q4_0, row, cols, out); break;
    case QWEN_Q4_1: dequant_typed(QWEN_Q4_1, row, cols, out); break;
    case QWEN_Q5_0: dequant_typed(QWEN_Q5_0, row, cols, out); break;
    case QWEN_Q5_1: dequant_typed(QWEN_Q5_1, row, cols, out); break;
    case QWEN_Q8_0: dequant_typed(QWEN_Q8_0, row, cols, out); break;
    case QWEN_Q4_K: dequant_typed(QWEN_Q4_K, row, cols, out); break;
    case QWEN_Q5_K: dequant_typed(QWEN_Q5_K, row, cols, out); break;
    case QWEN_Q6_K: dequant_typed(QWEN_Q6_K, row, cols, out); break;
    default: dequant_typed(type, row, cols, out); break;
    }
}
QWEN_PER_LEVEL(dequant_row, dequant_row_body, (int type, const void *row, int cols, float *out), (type, row, cols, out))

void qwen_dequant_row(int type, const void *row, int cols, float *out) { dequant_row(type, row, cols, out); }

#define MAXN 8

/// The product for one storage type; `type` is a constant in each instance below, so the
/// block expansion inlines and vectorises.
static inline __attribute__((always_inline)) void matmul_typed(const int type, const void *w, int cols, int row0, int row1,
                                                               const float *x, int n, int ldx, float *out, int ldo, int accumulate) {
    const int bs = block_size(type), bb = block_bytes(type);
    const int nb = cols / bs;
    const long rb = (long)nb * bb;
    float y[256] __attribute__((aligned(64)));
    for (int i0 = 0; i0 < n; i0 += MAXN) {
        const int ni = n - i0 < MAXN ? n - i0 : MAXN;
        for (int r = row0; r < row1; r++) {
            const uint8_t *row = (const uint8_t *)w + (long)r * rb;
            float acc[MAXN][16] __attribute__((aligned(64)));
            memset(acc, 0, sizeof(acc[0]) * (size_t)ni);
            for (int b = 0; b < nb; b++) {
                expand(type, row + (long)b * bb, y);
                for (int i = 0; i < ni; i++) {
                    const float *xi = x + (long)(i0 + i) * ldx + (long)b * bs;
                    for (int j = 0; j < bs; j += 16)
                        for (int l = 0; l < 16; l++) acc[i][l] += y[j + l] * xi[j + l];
                }
            }
            for (int i = 0; i < ni; i++) {
                float s = 0;
                for (int l = 0; l < 16; l++) s += acc[i][l];
                float *o = out + (long)(i0 + i) * ldo + r;
                *o = accumulate ? *o + s : s;
            }
        }
    }
}

// One instance per type and level (levels.h): the portable kernels, and those of every type
// without a hand-written kernel at the level in use.
#define MM_PARAMS (const void *w, int cols, int row0, int row1, const float *x, int n, int ldx, float *out, int ldo, int accumulate)
#define MM_ARGS (w, cols, row0, row1, x, n, ldx, out, ldo, accumulate)
#define TYPED(NAME, TYPE)                                                                                     \
    static ALWAYS_INLINE void NAME##_body MM_PARAMS { matmul_typed(TYPE, w, cols, row0, row1, x, n, ldx, out, ldo, accumulate); } \
    QWEN_PER_LEVEL(NAME, NAME##_body, MM_PARAMS, MM_ARGS)
TYPED(mm_f32, QWEN_F32)
TYPED(mm_f16, QWEN_F16)
TYPED(mm_bf16, QWEN_BF16)
TYPED(mm_q4_0, QWEN_Q4_0)
TYPED(mm_q4_1, QWEN_Q4_1)
TYPED(mm_q5_0, QWEN_Q5_0)
TYPED(mm_q5_1, QWEN_Q5_1)
TYPED(mm_q8_0, QWEN_Q8_0)
TYPED(mm_q4_k, QWEN_Q4_K)
TYPED(mm_q5_k, QWEN_Q5_K)
TYPED(mm_q6_k, QWEN_Q6_K)

#if QWEN_X86
#include <immintrin.h>
// Hand-vectorised AVX-512 kernels for the two block formats the default model decodes with.
// Each block becomes two 16-float vectors exactly as the reference expands it (q * d), then
// one fused multiply-add per input row and half-block.
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))

AVX512 static inline void block_q5_0(const uint8_t *b, __m512 *lo, __m512 *hi) {
    const __m512 d = _mm512_set1_ps(f16(b));
    uint32_t qh;
    memcpy(&qh, b + 2, 4);
    const __m128i qs = _mm_loadu_si128((const __m128i *)(b + 6));
    const __m128i m4 = _mm_set1_epi8(0x0F), h = _mm_set1_epi8(0x10), c16 = _mm_set1_epi8(16);
    __m128i l = _mm_and_si128(qs, m4), u = _mm_and_si128(_mm_srli_epi16(qs, 4), m4);
    l = _mm_sub_epi8(_mm_or_si128(l, _mm_maskz_mov_epi8((__mmask16)(qh & 0xFFFF), h)), c16);
    u = _mm_sub_epi8(_mm_or_si128(u, _mm_maskz_mov_epi8((__mmask16)(qh >> 16), h)), c16);
    *lo = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(l)), d);
    *hi = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(u)), d);
}

AVX512 static inline void block_q8_0(const uint8_t *b, __m512 *lo, __m512 *hi) {
    const __m512 d = _mm512_set1_ps(f16(b));
    *lo = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b + 2)))), d);
    *hi = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b + 18)))), d);
}

AVX512 static inline void block_bf16(const uint8_t *b, __m512 *lo, __m512 *hi) {
    // bf16 is the top half of an f32: widen and shift, exactly.
    const __m512i a = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)b)), 16);
    const __m512i c = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(b + 32))), 16);
    *lo = _mm512_castsi512_ps(a);
    *hi = _mm512_castsi512_ps(c);
}

// The K-quants (256-value super-blocks; Q4_K and Q6_K are the default model's ffn_down) expand
// into an L1 buffer, 16 floats at a time, with the reference's operations ((d·scale)·q − d_min·m).
// Q4_K and Q5_K share their layout, but for Q5_K's 32 bytes of fifth bits before the quants.
AVX512 static inline __attribute__((always_inline)) void expand_q45_k(const uint8_t *b, float *y, const int five) {
    const float d = f16(b), dmin = f16(b + 2);
    const uint8_t *sc = b + 4, *qh = b + 16, *q = b + (five ? 48 : 16);
    const __m128i m4 = _mm_set1_epi8(0x0F), c16 = _mm_set1_epi8(16);
    for (int p = 0; p < 4; p++) {
        float s1, m1, s2, m2;
        scale_min_k4(2 * p, sc, &s1, &m1);
        scale_min_k4(2 * p + 1, sc, &s2, &m2);
        const __m512 d1 = _mm512_set1_ps(d * s1), mm1 = _mm512_set1_ps(dmin * m1);
        const __m512 d2 = _mm512_set1_ps(d * s2), mm2 = _mm512_set1_ps(dmin * m2);
        const __m128i u1 = _mm_set1_epi8((char)(1 << (2 * p))), u2 = _mm_set1_epi8((char)(2 << (2 * p)));
        for (int h = 0; h < 2; h++) {
            const __m128i v = _mm_loadu_si128((const __m128i *)(q + 16 * h));
            __m128i l = _mm_and_si128(v, m4), u = _mm_and_si128(_mm_srli_epi16(v, 4), m4);
            if (five) {
                const __m128i hb = _mm_loadu_si128((const __m128i *)(qh + 16 * h));
                l = _mm_or_si128(l, _mm_maskz_mov_epi8(_mm_test_epi8_mask(hb, u1), c16));
                u = _mm_or_si128(u, _mm_maskz_mov_epi8(_mm_test_epi8_mask(hb, u2), c16));
            }
            _mm512_store_ps(y + 64 * p + 16 * h, _mm512_sub_ps(_mm512_mul_ps(d1, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(l))), mm1));
            _mm512_store_ps(y + 64 * p + 32 + 16 * h, _mm512_sub_ps(_mm512_mul_ps(d2, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(u))), mm2));
        }
        q += 32;
    }
}
AVX512 static inline __attribute__((always_inline)) void expand_q4_k(const uint8_t *b, float *y) { expand_q45_k(b, y, 0); }
AVX512 static inline __attribute__((always_inline)) void expand_q5_k(const uint8_t *b, float *y) { expand_q45_k(b, y, 1); }

AVX512 static inline __attribute__((always_inline)) void expand_q6_k(const uint8_t *b, float *y) {
    const float d = f16(b + 208);
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    const __m128i m4 = _mm_set1_epi8(0x0F), m3 = _mm_set1_epi8(3), c32 = _mm_set1_epi8(32);
    for (int half = 0; half < 2; half++) {
        for (int c = 0; c < 2; c++) {  // positions 16c..16c+15 of each quarter; scale index c
            const __m128i a = _mm_loadu_si128((const __m128i *)(ql + 16 * c));
            const __m128i e = _mm_loadu_si128((const __m128i *)(ql + 32 + 16 * c));
            const __m128i h = _mm_loadu_si128((const __m128i *)(qh + 16 * c));
            // The high bits of each byte of h, moved to bits 4-5 (shifts stay inside each byte after the masks).
            const __m128i h0 = _mm_slli_epi16(_mm_and_si128(h, m3), 4);
            const __m128i h1 = _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(h, 2), m3), 4);
            const __m128i h2 = _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(h, 4), m3), 4);
            const __m128i h3 = _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(h, 6), m3), 4);
            const __m128i q1 = _mm_sub_epi8(_mm_or_si128(_mm_and_si128(a, m4), h0), c32);
            const __m128i q2 = _mm_sub_epi8(_mm_or_si128(_mm_and_si128(e, m4), h1), c32);
            const __m128i q3 = _mm_sub_epi8(_mm_or_si128(_mm_and_si128(_mm_srli_epi16(a, 4), m4), h2), c32);
            const __m128i q4 = _mm_sub_epi8(_mm_or_si128(_mm_and_si128(_mm_srli_epi16(e, 4), m4), h3), c32);
            float *o = y + 128 * half + 16 * c;
            _mm512_store_ps(o, _mm512_mul_ps(_mm512_set1_ps(d * sc[c + 0]), _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q1))));
            _mm512_store_ps(o + 32, _mm512_mul_ps(_mm512_set1_ps(d * sc[c + 2]), _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q2))));
            _mm512_store_ps(o + 64, _mm512_mul_ps(_mm512_set1_ps(d * sc[c + 4]), _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q3))));
            _mm512_store_ps(o + 96, _mm512_mul_ps(_mm512_set1_ps(d * sc[c + 6]), _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q4))));
        }
        ql += 64;
        qh += 32;
        sc += 8;
    }
}

// The kernels keep one accumulator register per input row and weight row; NI (1…12) is a
// constant in each instance, so the accumulators stay in registers and one pass over the
// weights serves up to 12 input rows. Wider inputs are split into balanced groups (16 rows
// run as 8 + 8, each with two weight rows per pass, rather than 12 + 4).
#define MAXROWS 12
// How far ahead of the block being expanded the K-quant kernels ask for weight bytes: with
// many input rows a row's blocks are consumed slowly and the hardware prefetcher falls behind.
// (A prefetch never faults, so asking past the matrix's last row is harmless.)
#define PREFETCH 1024

AVX512 static inline __attribute__((always_inline)) void prefetch_block(const uint8_t *p, const int bytes) {
    for (int o = 0; o < bytes; o += 64) _mm_prefetch((const char *)(p + o), _MM_HINT_T0);
}

/// out[i * ldo] (+)= the sum of acc[i]'s lanes, for each of the NI input rows.
AVX512 static inline __attribute__((always_inline)) void store_sums(const __m512 *acc, const int NI, float *out, int ldo,
                                                                    int accumulate) {
    for (int i = 0; i < NI; i++) {
        const float s = _mm512_reduce_add_ps(acc[i]);
        float *o = out + (long)i * ldo;
        *o = accumulate ? *o + s : s;
    }
}

#define AVX512_KERNEL32(NAME, BLOCK, BYTES)                                                                    \
    AVX512 static inline __attribute__((always_inline)) void NAME##_rows(                                      \
        const void *w, int cols, int row0, int row1, const float *x, int ldx, float *out, int ldo,             \
        int accumulate, const int NI) {                                                                        \
        const int nb = cols / 32;                                                                              \
        const long rb = (long)nb * BYTES;                                                                      \
        int r = row0;                                                                                          \
        /* Two weight rows at a time from 9 input rows (each x load feeds two FMAs); with fewer, one */        \
        if (NI >= 9) { /* row at a time measured faster (1.6x at 2-4 rows, even at 8). */                      \
            for (; r + 1 < row1; r += 2) {                                                                     \
                const uint8_t *ra = (const uint8_t *)w + (long)r * rb, *rc = ra + rb;                          \
                __m512 acc[NI], acd[NI];                                                                       \
                for (int i = 0; i < NI; i++) acc[i] = acd[i] = _mm512_setzero_ps();                            \
                for (int b = 0; b < nb; b++) {                                                                 \
                    __m512 lo, hi, lo2, hi2;                                                                   \
                    BLOCK(ra + (long)b * BYTES, &lo, &hi);                                                     \
                    BLOCK(rc + (long)b * BYTES, &lo2, &hi2);                                                   \
                    const float *xb = x + (long)b * 32;                                                        \
                    for (int i = 0; i < NI; i++) {                                                             \
                        const __m512 x0 = _mm512_loadu_ps(xb + (long)i * ldx);                                 \
                        const __m512 x1 = _mm512_loadu_ps(xb + (long)i * ldx + 16);                            \
                        acc[i] = _mm512_fmadd_ps(hi, x1, _mm512_fmadd_ps(lo, x0, acc[i]));                     \
                        acd[i] = _mm512_fmadd_ps(hi2, x1, _mm512_fmadd_ps(lo2, x0, acd[i]));                   \
                    }                                                                                          \
                }                                                                                              \
                store_sums(acc, NI, out + r, ldo, accumulate);                                                 \
                store_sums(acd, NI, out + r + 1, ldo, accumulate);                                             \
            }                                                                                                  \
        }                                                                                                      \
        for (; r < row1; r++) {                                                                                \
            const uint8_t *row = (const uint8_t *)w + (long)r * rb;                                            \
            __m512 acc[NI];                                                                                    \
            for (int i = 0; i < NI; i++) acc[i] = _mm512_setzero_ps();                                         \
            for (int b = 0; b < nb; b++) {                                                                     \
                __m512 lo, hi;                                                                                 \
                BLOCK(row + (long)b * BYTES, &lo, &hi);                                                        \
                const float *xb = x + (long)b * 32;                                                            \
                for (int i = 0; i < NI; i++) {                                                                 \
                    acc[i] = _mm512_fmadd_ps(lo, _mm512_loadu_ps(xb + (long)i * ldx), acc[i]);                 \
                    acc[i] = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xb + (long)i * ldx + 16), acc[i]);            \
                }                                                                                              \
            }                                                                                                  \
            store_sums(acc, NI, out + r, ldo, accumulate);                                                     \
        }                                                                                                      \
    }

#define AVX512_KERNEL256(NAME, EXPAND, BYTES)                                                                  \
    AVX512 static inline __attribute__((always_inline)) void NAME##_rows(                                      \
        const void *w, int cols, int row0, int row1, const float *x, int ldx, float *out, int ldo,             \
        int accumulate, const int NI) {                                                                        \
        const int nb = cols / 256;                                                                             \
        const long rb = (long)nb * BYTES;                                                                      \
        float y[256] __attribute__((aligned(64))), y2[256] __attribute__((aligned(64)));                       \
        int r = row0;                                                                                          \
        for (; NI >= 6 && r + 1 < row1; r += 2) {                                                              \
            const uint8_t *ra = (const uint8_t *)w + (long)r * rb, *rc = ra + rb;                              \
            __m512 acc[NI], acd[NI];                                                                           \
            for (int i = 0; i < NI; i++) acc[i] = acd[i] = _mm512_setzero_ps();                                \
            for (int b = 0; b < nb; b++) {                                                                     \
                prefetch_block(ra + (long)b * BYTES + PREFETCH, BYTES);                                        \
                prefetch_block(rc + (long)b * BYTES + PREFETCH, BYTES);                                        \
                EXPAND(ra + (long)b * BYTES, y);                                                               \
                EXPAND(rc + (long)b * BYTES, y2);                                                              \
                const float *xb = x + (long)b * 256;                                                           \
                for (int v = 0; v < 16; v++) {                                                                 \
                    const __m512 wv = _mm512_load_ps(y + 16 * v), wv2 = _mm512_load_ps(y2 + 16 * v);          \
                    for (int i = 0; i < NI; i++) {                                                             \
                        const __m512 xv = _mm512_loadu_ps(xb + (long)i * ldx + 16 * v);                        \
                        acc[i] = _mm512_fmadd_ps(wv, xv, acc[i]);                                              \
                        acd[i] = _mm512_fmadd_ps(wv2, xv, acd[i]);                                             \
                    }                                                                                          \
                }                                                                                              \
            }                                                                                                  \
            store_sums(acc, NI, out + r, ldo, accumulate);                                                     \
            store_sums(acd, NI, out + r + 1, ldo, accumulate);                                                 \
        }                                                                                                      \
        for (; r < row1; r++) {                                                                                \
            const uint8_t *row = (const uint8_t *)w + (long)r * rb;                                            \
            __m512 acc[NI];                                                                                    \
            for (int i = 0; i < NI; i++) acc[i] = _mm512_setzero_ps();                                         \
            for (int b = 0; b < nb; b++) {                                                                     \
                prefetch_block(row + (long)b * BYTES + PREFETCH, BYTES);                                       \
                EXPAND(row + (long)b * BYTES, y);                                                              \
                const float *xb = x + (long)b * 256;                                                           \
                for (int v = 0; v < 16; v++) {                                                                 \
                    const __m512 wv = _mm512_load_ps(y + 16 * v);                                              \
                    for (int i = 0; i < NI; i++)                                                               \
                        acc[i] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(xb + (long)i * ldx + 16 * v), acc[i]);    \
                }                                                                                              \
            }                                                                                                  \
            store_sums(acc, NI, out + r, ldo, accumulate);                                                     \
        }                                                                                                      \
    }

#define ROWS_CASE(NAME, K) case K: NAME##_rows(w, cols, row0, row1, xi, ldx, oi, ldo, accumulate, K); break;
#define AVX512_DISPATCH(NAME)                                                                                  \
    AVX512 static void NAME(const void *w, int cols, int row0, int row1, const float *x, int n, int ldx,       \
                            float *out, int ldo, int accumulate) {                                              \
        const int groups = (n + MAXROWS - 1) / MAXROWS;                                                        \
        for (int g = 0, i0 = 0; g < groups; g++) {                                                             \
            const int ni = (n - i0) / (groups - g);                                                            \
            const float *xi = x + (long)i0 * ldx;                                                              \
            float *oi = out + (long)i0 * ldo;                                                                  \
            switch (ni) {                                                                                      \
                ROWS_CASE(NAME, 1) ROWS_CASE(NAME, 2) ROWS_CASE(NAME, 3) ROWS_CASE(NAME, 4)                    \
                ROWS_CASE(NAME, 5) ROWS_CASE(NAME, 6) ROWS_CASE(NAME, 7) ROWS_CASE(NAME, 8)                    \
                ROWS_CASE(NAME, 9) ROWS_CASE(NAME, 10) ROWS_CASE(NAME, 11) ROWS_CASE(NAME, 12)                 \
            }                                                                                                  \
            i0 += ni;                                                                                          \
        }                                                                                                      \
    }

AVX512_KERNEL32(mm_q5_0_avx512, block_q5_0, 22)
AVX512_KERNEL32(mm_q8_0_avx512, block_q8_0, 34)
AVX512_KERNEL32(mm_bf16_avx512, block_bf16, 64)
AVX512_KERNEL256(mm_q4_k_avx512, expand_q4_k, 144)
AVX512_KERNEL256(mm_q5_k_avx512, expand_q5_k, 176)
AVX512_KERNEL256(mm_q6_k_avx512, expand_q6_k, 210)
AVX512_DISPATCH(mm_q5_0_avx512)
AVX512_DISPATCH(mm_q8_0_avx512)
AVX512_DISPATCH(mm_bf16_avx512)
AVX512_DISPATCH(mm_q4_k_avx512)
AVX512_DISPATCH(mm_q5_k_avx512)
AVX512_DISPATCH(mm_q6_k_avx512)

#include "simd_exp.h"
#include "quant_matmul_avx2.h"
#endif

void qwen_quant_matmul(int type, const void *w, int cols, int row0, int row1, const float *x, int n, int ldx,
                       float *out, int ldo, int accumulate) {
#if QWEN_X86
    if (qwen_cpu_has_avx512()) {
        switch (type) {
        case QWEN_Q5_0: mm_q5_0_avx512(w, cols, row0, row1, x, n, ldx, out, ldo, accumulate); return;
        case QWEN_Q8_0: mm_q8_0_avx512(w, cols, row0, row1, x, n, ldx, out, ldo, accumulate); return;
        case QWEN_BF16: mm_bf16_avx512(w, cols, row0, row1, x, n, ldx, out, ldo, accumulate); return;
        case QWEN_Q4_K: mm_q4_k_avx512(w, cols, row0, row1, x, n, ldx, out, ldo, accumulate); return;
        case QWEN_Q5_K: mm_q5_k_avx512(w, cols, row0, row1, x, n, ldx, out, ldo, accumulate); return;
        case QWEN_Q6_K: mm_q6_k_avx512(w, cols, row0, row1, x, n, ldx, out, ldo, accumulate); return;
        }
    } else if (qwen_cpu_has_avx2() && quant_matmul_avx2(type, w, cols, row0, row1, x, n, ldx, out, ldo, accumulate)) {
        return;
    }
#endif
    switch (type) {
    case QWEN_F32: mm_f32(w, cols, row0, row1, x, n, ldx, out, ldo, accumulate); break;
    case QWEN_F16: mm_f16(w, cols, row0, row1, x, n, ldx, out, ldo, accumulate); break;
    case QWEN_BF16: mm_bf16(w, cols, row0, row1, x, n, ldx, out, ldo, accumulate); break;
    case QWEN_Q4_0: mm_q4_0(w, cols, row0, row1, x, n, ldx, out, ldo, accumulate); break;
    case QWEN_Q4_1: mm_q4_1(w, cols, row0, row1, x, n, ldx, out, ldo, accumulate); break;
    case QWEN_Q5_0: mm_q5_0(w, cols, row0, row1, x, n, ldx, out, ldo, accumulate); break;
    case QWEN_Q5_1: mm_q5_1(w, cols, row0, row1, x, n, ldx, out, ldo, accumulate); break;
    case QWEN_Q8_0: mm_q8_0(w, cols, row0, row1, x, n, ldx, out, ldo, accumulate); break;
    case QWEN_Q4_K: mm_q4_k(w, cols, row0, row1, x, n, ldx, out, ldo, accumulate); break;
    case QWEN_Q5_K: mm_q5_k(w, cols, row0, row1, x, n, ldx, out, ldo, accumulate); break;
    case QWEN_Q6_K: mm_q6_k(w, cols, row0, row1, x, n, ldx, out, ldo, accumulate); break;
    }
}
