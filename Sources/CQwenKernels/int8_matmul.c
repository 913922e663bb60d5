#include "qwen_int8.h"
#include "qwen_cpu.h"
#include "qwen_quant.h"
#include "ggml_blocks.h"
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include "levels.h"
#include "simd_exp.h"

// A weight is scale·(u − offset) + min, with u the unsigned integer stored in the panels, scale
// per group of 16 or 32 values and min (types that have one) per 32. An input value is d·q.
// A group's product is then scale·d·(Σ u·q − offset·Σ q) (+ min·d·Σ q), the bracket exact in int32.

int qwen_i8_supported(int type) {
    switch (type) {
    case QWEN_Q4_0: case QWEN_Q4_1: case QWEN_Q5_0: case QWEN_Q5_1: case QWEN_Q8_0:
    case QWEN_Q4_K: case QWEN_Q5_K: case QWEN_Q6_K: return 1;
    default: return 0;
    }
}

int qwen_i8_group(int type) { return type == QWEN_Q6_K ? 16 : 32; }

/// Bits each weight keeps in the panels: 4-bit types as nibbles, 5-bit types as nibbles plus a
/// plane of high bits, the rest as bytes. Decoding is memory-bound, so fewer bytes is faster.
static int bits_of(int type) {
    switch (type) {
    case QWEN_Q4_0: case QWEN_Q4_1: case QWEN_Q4_K: return 4;
    case QWEN_Q5_0: case QWEN_Q5_1: case QWEN_Q5_K: return 5;
    default: return 8;
    }
}

long qwen_i8_group_bytes(int type) {
    const int g = qwen_i8_group(type);
    switch (bits_of(type)) {
    case 4: return g * 16 / 2;
    case 5: return g * 16 / 2 + g * 16 / 8;
    default: return g * 16;
    }
}

/// Where value k (< g) of lane `lane` goes in a group's bytes: 8-bit panels hold [g/4][16][4]
/// bytes; 4- and 5-bit panels hold that order's even 64-byte vectors in the low nibbles and the
/// odd ones in the high nibbles, and 5-bit panels then one bit per value, 64 per vector.
static void put_value(uint8_t *group, int bits, int g, int k, int lane, uint8_t u) {
    const int vec = k / 4, byte = lane * 4 + k % 4;
    if (bits == 8) {
        group[vec * 64 + byte] = u;
        return;
    }
    uint8_t *nib = group + (vec / 2) * 64 + byte;
    *nib = (uint8_t)(vec % 2 ? (*nib & 0x0F) | ((u & 0x0F) << 4) : (*nib & 0xF0) | (u & 0x0F));
    if (bits == 5) {
        uint8_t *hb = group + g * 16 / 2 + vec * 8 + byte / 8;
        *hb = (uint8_t)((*hb & ~(1 << (byte % 8))) | (((u >> 4) & 1) << (byte % 8)));
    }
}

static int get_value(const uint8_t *group, int bits, int g, int k, int lane) {
    const int vec = k / 4, byte = lane * 4 + k % 4;
    if (bits == 8) return group[vec * 64 + byte];
    const uint8_t nib = group[(vec / 2) * 64 + byte];
    int u = vec % 2 ? nib >> 4 : nib & 0x0F;
    if (bits == 5) u |= ((group[g * 16 / 2 + vec * 8 + byte / 8] >> (byte % 8)) & 1) << 4;
    return u;
}

int qwen_i8_has_min(int type) {
    return type == QWEN_Q4_1 || type == QWEN_Q5_1 || type == QWEN_Q4_K || type == QWEN_Q5_K;
}

static int offset_of(int type) {
    switch (type) {
    case QWEN_Q4_0: return 8;
    case QWEN_Q5_0: return 16;
    case QWEN_Q8_0: return 128;
    case QWEN_Q6_K: return 32;
    default: return 0;
    }
}

static int values_per_block(int type) { return type == QWEN_Q4_K || type == QWEN_Q5_K || type == QWEN_Q6_K ? 256 : 32; }

/// One block as unsigned integers u, scales per group and mins per 32, with the same float
/// operations as the reference dequantization (weight = scale·(u − offset) + min).
static void int_block(int t, const uint8_t *b, uint8_t *u, float *sc, float *mn) {
    switch (t) {
    case QWEN_Q4_0:
    case QWEN_Q4_1: {
        const uint8_t *q = b + (t == QWEN_Q4_0 ? 2 : 4);
        for (int j = 0; j < 16; j++) { u[j] = q[j] & 0x0F; u[j + 16] = q[j] >> 4; }
        sc[0] = f16(b);
        if (t == QWEN_Q4_1) mn[0] = f16(b + 2);
        break;
    }
    case QWEN_Q5_0:
    case QWEN_Q5_1: {
        const int o = t == QWEN_Q5_0 ? 2 : 4;
        uint32_t qh;
        memcpy(&qh, b + o, 4);
        for (int j = 0; j < 16; j++) {
            u[j] = (uint8_t)((b[o + 4 + j] & 0x0F) | (((qh >> j) << 4) & 0x10));
            u[j + 16] = (uint8_t)((b[o + 4 + j] >> 4) | ((qh >> (j + 12)) & 0x10));
        }
        sc[0] = f16(b);
        if (t == QWEN_Q5_1) mn[0] = f16(b + 2);
        break;
    }
    case QWEN_Q8_0:
        for (int j = 0; j < 32; j++) u[j] = (uint8_t)((int8_t)b[2 + j] + 128);
        sc[0] = f16(b);
        break;
    case QWEN_Q4_K:
    case QWEN_Q5_K: {
        const float d = f16(b), dmin = f16(b + 2);
        const uint8_t *scales = b + 4, *qh = b + 16, *q = t == QWEN_Q4_K ? b + 16 : b + 48;
        for (int p = 0; p < 4; p++) {
            float s1, m1, s2, m2;
            scale_min_k4(2 * p, scales, &s1, &m1);
            scale_min_k4(2 * p + 1, scales, &s2, &m2);
            sc[2 * p] = d * s1; mn[2 * p] = -(dmin * m1);
            sc[2 * p + 1] = d * s2; mn[2 * p + 1] = -(dmin * m2);
            for (int l = 0; l < 32; l++) {
                int lo = q[l] & 0xF, hi = q[l] >> 4;
                if (t == QWEN_Q5_K) {
                    lo += (qh[l] >> (2 * p)) & 1 ? 16 : 0;
                    hi += (qh[l] >> (2 * p + 1)) & 1 ? 16 : 0;
                }
                u[64 * p + l] = (uint8_t)lo;
                u[64 * p + 32 + l] = (uint8_t)hi;
            }
            q += 32;
        }
        break;
    }
    case QWEN_Q6_K: {
        const float d = f16(b + 208);
        const uint8_t *ql = b, *qh = b + 128;
        const int8_t *s = (const int8_t *)(b + 192);
        for (int g = 0; g < 16; g++) sc[g] = d * s[g];
        for (int half = 0; half < 2; half++) {
            for (int l = 0; l < 32; l++) {
                u[128 * half + l] = (uint8_t)((ql[l] & 0xF) | ((qh[l] & 3) << 4));
                u[128 * half + l + 32] = (uint8_t)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4));
                u[128 * half + l + 64] = (uint8_t)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4));
                u[128 * half + l + 96] = (uint8_t)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4));
            }
            ql += 64;
            qh += 32;
        }
        break;
    }
    }
}

void qwen_i8_pack(int type, const void *w, int rows, int cols, int panel0, int panel1,
                  uint8_t *q, float *scale, float *min) {
    const int g = qwen_i8_group(type), ng = cols / g, n32 = cols / 32, bs = values_per_block(type);
    const int has_min = qwen_i8_has_min(type), bits = bits_of(type);
    const long row_bytes = qwen_quant_row_bytes(type, cols), block_bytes = row_bytes / (cols / bs), gb = qwen_i8_group_bytes(type);
    uint8_t u[256];
    float sc[16], mn[8];
    for (int p = panel0; p < panel1; p++) {
        for (int lane = 0; lane < 16; lane++) {
            const int r = 16 * p + lane;
            for (int b = 0; b < cols / bs; b++) {
                if (r < rows) {
                    int_block(type, (const uint8_t *)w + r * row_bytes + b * block_bytes, u, sc, mn);
                } else {
                    memset(u, 0, sizeof u);
                    memset(sc, 0, sizeof sc);
                    memset(mn, 0, sizeof mn);
                }
                for (int j = 0; j < bs; j++) {
                    const int c = b * bs + j, gi = c / g;
                    put_value(q + ((long)p * ng + gi) * gb, bits, g, c % g, lane, u[j]);
                }
                for (int j = 0; j < bs / g; j++) scale[((long)p * ng + b * bs / g + j) * 16 + lane] = sc[j];
                if (has_min) {
                    for (int j = 0; j < bs / 32; j++) min[((long)p * n32 + b * bs / 32 + j) * 16 + lane] = mn[j];
                }
            }
        }
    }
}

static void quantize_generic(const float *x, int n, int cols, int ldx, int8_t *q, float *d, int32_t *sums16) {
    for (int i = 0; i < n; i++) {
        const float *xr = x + (long)i * ldx;
        for (int b = 0; b < cols / 32; b++) {
            float amax = 0;
            for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(xr[32 * b + j]));
            const float db = amax / 127.0f, id = db != 0 ? 1.0f / db : 0.0f;
            d[(long)i * (cols / 32) + b] = db;
            int8_t *qb = q + (long)i * cols + 32 * b;
            for (int j = 0; j < 32; j++) qb[j] = (int8_t)nearbyintf(xr[32 * b + j] * id);
            for (int h = 0; h < 2; h++) {
                int32_t s = 0;
                for (int j = 0; j < 16; j++) s += qb[16 * h + j];
                sums16[(long)i * (cols / 16) + 2 * b + h] = s;
            }
        }
    }
}

#if QWEN_X86
/// The same arithmetic 16 values at a time (conversion rounds to nearest even, as nearbyintf).
__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl")))
static void quantize_avx512(const float *x, int n, int cols, int ldx, int8_t *q, float *d, int32_t *sums16) {
    for (int i = 0; i < n; i++) {
        const float *xr = x + (long)i * ldx;
        for (int b = 0; b < cols / 32; b++) {
            const __m512 lo = _mm512_loadu_ps(xr + 32 * b), hi = _mm512_loadu_ps(xr + 32 * b + 16);
            const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
            const float db = amax / 127.0f, id = db != 0 ? 1.0f / db : 0.0f;
            d[(long)i * (cols / 32) + b] = db;
            const __m512i qlo = _mm512_cvtps_epi32(_mm512_mul_ps(lo, _mm512_set1_ps(id)));
            const __m512i qhi = _mm512_cvtps_epi32(_mm512_mul_ps(hi, _mm512_set1_ps(id)));
            int8_t *qb = q + (long)i * cols + 32 * b;
            _mm_storeu_si128((__m128i *)qb, _mm512_cvtsepi32_epi8(qlo));
            _mm_storeu_si128((__m128i *)(qb + 16), _mm512_cvtsepi32_epi8(qhi));
            sums16[(long)i * (cols / 16) + 2 * b] = _mm512_reduce_add_epi32(qlo);
            sums16[(long)i * (cols / 16) + 2 * b + 1] = _mm512_reduce_add_epi32(qhi);
        }
    }
}

/// The same 8 values at a time.
__attribute__((target("avx2,fma")))
static void quantize_avx2(const float *x, int n, int cols, int ldx, int8_t *q, float *d, int32_t *sums16) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int i = 0; i < n; i++) {
        const float *xr = x + (long)i * ldx;
        for (int b = 0; b < cols / 32; b++) {
            __m256 v[4];
            for (int k = 0; k < 4; k++) v[k] = _mm256_loadu_ps(xr + 32 * b + 8 * k);
            const __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
                                           _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])));
            __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
            h = _mm_max_ps(h, _mm_movehl_ps(h, h));
            const float amax = _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
            const float db = amax / 127.0f, id = db != 0 ? 1.0f / db : 0.0f;
            d[(long)i * (cols / 32) + b] = db;
            __m256i qi[4];
            for (int k = 0; k < 4; k++) qi[k] = _mm256_cvtps_epi32(_mm256_mul_ps(v[k], _mm256_set1_ps(id)));
            // packs works within 128-bit lanes: the permute puts the 4-byte groups back in order.
            const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(qi[0], qi[1]), _mm256_packs_epi32(qi[2], qi[3]));
            _mm256_storeu_si256((__m256i *)(q + (long)i * cols + 32 * b), _mm256_permutevar8x32_epi32(bytes, order));
            for (int hh = 0; hh < 2; hh++) {
                const __m256i s = _mm256_add_epi32(qi[2 * hh], qi[2 * hh + 1]);
                __m128i t = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
                t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4E));
                t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xB1));
                sums16[(long)i * (cols / 16) + 2 * b + hh] = _mm_cvtsi128_si32(t);
            }
        }
    }
}
#endif

void qwen_q8_quantize(const float *x, int n, int cols, int ldx, int8_t *q, float *d, int32_t *sums16) {
#if QWEN_X86
    if (qwen_cpu_has_avx512()) return quantize_avx512(x, n, cols, ldx, q, d, sums16);
    if (qwen_cpu_has_avx2()) return quantize_avx2(x, n, cols, ldx, q, d, sums16);
#endif
    quantize_generic(x, n, cols, ldx, q, d, sums16);
}

void qwen_q8_dequantize(const int8_t *q, const float *d, int n, int cols, float *x) {
    for (long i = 0; i < (long)n * cols; i++) x[i] = d[i / 32] * (float)q[i];
}

void qwen_i8_terms(int type, const float *xd, const int32_t *xs16, int n, int cols, int32_t *corr, float *dx, float *dmin) {
    const int g = qwen_i8_group(type), ng = cols / g, n32 = cols / 32, off = offset_of(type);
    for (int i = 0; i < n; i++) {
        for (int gi = 0; gi < ng; gi++) {
            const int32_t *s = xs16 + (long)i * (cols / 16) + gi * g / 16;
            corr[i * ng + gi] = -off * (g == 32 ? s[0] + s[1] : s[0]);
            dx[i * ng + gi] = xd[(long)i * n32 + gi * g / 32];
        }
        for (int b = 0; b < n32; b++) {
            const int32_t *s = xs16 + (long)i * (cols / 16) + 2 * b;
            dmin[i * n32 + b] = xd[(long)i * n32 + b] * (float)(s[0] + s[1]);
        }
    }
}

static void store(float *out, int ldo, int i, int row0, int rows, const float *acc, int accumulate) {
    for (int lane = 0; lane < 16 && row0 + lane < rows; lane++) {
        float *o = out + (long)i * ldo + row0 + lane;
        *o = accumulate ? *o + acc[lane] : acc[lane];
    }
}

static void matmul_generic(int type, const uint8_t *q, const float *scale, const float *min, int rows, int cols,
                           int panel0, int panel1, const int8_t *xq, const int32_t *corr, const float *dx,
                           const float *dmin, int n, float *out, int ldo, int accumulate) {
    // Exactly the SIMD kernels' steps (no reassociation under -ffast-math), so every kernel set agrees bit for bit.
#pragma float_control(precise, on)
    const int g = qwen_i8_group(type), ng = cols / g, n32 = cols / 32, has_min = qwen_i8_has_min(type), bits = bits_of(type);
    const long gb = qwen_i8_group_bytes(type);
    for (int p = panel0; p < panel1; p++) {
        for (int i = 0; i < n; i++) {
            float acc[16] = {0};
            for (int gi = 0; gi < ng; gi++) {
                const uint8_t *wq = q + ((long)p * ng + gi) * gb;
                const int8_t *xg = xq + (long)i * cols + gi * g;
                for (int lane = 0; lane < 16; lane++) {
                    int32_t s = corr[i * ng + gi];
                    for (int k = 0; k < g; k++) s += get_value(wq, bits, g, k, lane) * xg[k];
                    acc[lane] = fmaf((float)s, scale[((long)p * ng + gi) * 16 + lane] * dx[i * ng + gi], acc[lane]);
                }
                if (has_min) {  // groups are 32 wide for the types with a min
                    for (int lane = 0; lane < 16; lane++) {
                        acc[lane] = fmaf(min[((long)p * n32 + gi) * 16 + lane], dmin[i * n32 + gi], acc[lane]);
                    }
                }
            }
            store(out, ldo, i, 16 * p, rows, acc, accumulate);
        }
    }
}

// Software prefetch of the panels ahead: with several input rows the loads fall behind the
// multiply-adds (lm head at 10 rows from memory: 159 → 230 GFLOP/s a core); with one or two
// the hardware prefetcher keeps up and the extra instructions only cost (49 vs 41 at 1 row).
#ifndef PREFETCH
#define PREFETCH 2048
#endif
#ifndef PREFETCH_ROWS
#define PREFETCH_ROWS 3
#endif

#if QWEN_X86
#define VNNI __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")))

/// R input rows × one panel of 16 weight rows; G (values per scale), BITS (4, 5 or 8 per value),
/// R and HAS_MIN are constants in each instance. The group stride is qwen_i8_group_bytes, spelled
/// out so that it folds.
VNNI static inline __attribute__((always_inline)) void panel_vnni(const int G, const int BITS, const int R, const int HAS_MIN, const uint8_t *q,
                                                                  const float *scale, const float *min, int cols,
                                                                  const int8_t *xq, const int32_t *corr, const float *dx,
                                                                  const float *dmin, float *out, int ldo, int row0, int rows,
                                                                  int accumulate) {
    const int ng = cols / G, n32 = cols / 32;
    __m512 acc[R];
    for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
    for (int gi = 0; gi < ng; gi++) {
        const uint8_t *wq = q + (long)gi * (BITS == 8 ? G * 16 : BITS == 4 ? G * 8 : G * 10);
        __m512i s[R];
        for (int r = 0; r < R; r++) s[r] = _mm512_set1_epi32(corr[r * ng + gi]);
        for (int k4 = 0; k4 < G / 4; k4++) {
            __m512i w;
            if (BITS == 8) {
                if (R >= PREFETCH_ROWS) _mm_prefetch((const char *)(wq + k4 * 64 + PREFETCH), _MM_HINT_T0);
                w = _mm512_load_si512((const void *)(wq + k4 * 64));
            } else {
                if (R >= PREFETCH_ROWS && k4 % 2 == 0) _mm_prefetch((const char *)(wq + k4 * 32 + PREFETCH), _MM_HINT_T0);
                const __m512i v = _mm512_load_si512((const void *)(wq + (k4 / 2) * 64));
                w = _mm512_and_si512(k4 % 2 ? _mm512_srli_epi16(v, 4) : v, _mm512_set1_epi8(0x0F));
                if (BITS == 5) {
                    __mmask64 high;
                    memcpy(&high, wq + G * 8 + k4 * 8, 8);
                    w = _mm512_mask_add_epi8(w, high, w, _mm512_set1_epi8(16));
                }
            }
            for (int r = 0; r < R; r++) {
                int32_t xv;
                memcpy(&xv, xq + (long)r * cols + gi * G + 4 * k4, 4);
                s[r] = _mm512_dpbusd_epi32(s[r], w, _mm512_set1_epi32(xv));
            }
        }
        const __m512 sc = _mm512_load_ps(scale + gi * 16);
        for (int r = 0; r < R; r++) {
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[r]), _mm512_mul_ps(sc, _mm512_set1_ps(dx[r * ng + gi])), acc[r]);
        }
        if (HAS_MIN) {
            const __m512 mn = _mm512_load_ps(min + gi * 16);
            for (int r = 0; r < R; r++) acc[r] = _mm512_fmadd_ps(mn, _mm512_set1_ps(dmin[r * n32 + gi]), acc[r]);
        }
    }
    const __mmask16 valid = rows - row0 >= 16 ? 0xFFFF : (__mmask16)((1u << (rows - row0)) - 1);
    for (int r = 0; r < R; r++) {
        float *o = out + (long)r * ldo + row0;
        const __m512 v = accumulate ? _mm512_add_ps(_mm512_maskz_loadu_ps(valid, o), acc[r]) : acc[r];
        _mm512_mask_storeu_ps(o, valid, v);
    }
}

#define MAXR 12

/// The panel instances every kernel set compiles, by ggml type: CASES(group, bits, min term,
/// recentred 8-bit weights), with Q8_RECENTRED for Q8_0's last argument.
#define PANEL_TYPES(CASES, Q8_RECENTRED)                                                                           \
    switch (type) {                                                                                                \
    case QWEN_Q6_K: CASES(16, 8, 0, 0) break;                                                                      \
    case QWEN_Q8_0: CASES(32, 8, 0, Q8_RECENTRED) break;                                                           \
    case QWEN_Q4_0: CASES(32, 4, 0, 0) break;                                                                      \
    case QWEN_Q4_1: case QWEN_Q4_K: CASES(32, 4, 1, 0) break;                                                      \
    case QWEN_Q5_0: CASES(32, 5, 0, 0) break;                                                                      \
    case QWEN_Q5_1: case QWEN_Q5_K: CASES(32, 5, 1, 0) break;                                                      \
    }

/// A panel function's arguments for input rows [i0, i0 + R) and panel p (inside the matmul loops).
#define PANEL_ARGS pq, ps, pm, cols, xq + (long)i0 * cols, corr + i0 * ng, dx + i0 * ng, dmin + i0 * n32, out + (long)i0 * ldo, \
                   ldo, 16 * p, rows, accumulate

#define PANEL_CASES(G, B, M, S_UNUSED)                                                                             \
    switch (R) {                                                                                                   \
    case 1: panel_vnni(G, B, 1, M, PANEL_ARGS); break;  case 2: panel_vnni(G, B, 2, M, PANEL_ARGS); break;        \
    case 3: panel_vnni(G, B, 3, M, PANEL_ARGS); break;  case 4: panel_vnni(G, B, 4, M, PANEL_ARGS); break;        \
    case 5: panel_vnni(G, B, 5, M, PANEL_ARGS); break;  case 6: panel_vnni(G, B, 6, M, PANEL_ARGS); break;        \
    case 7: panel_vnni(G, B, 7, M, PANEL_ARGS); break;  case 8: panel_vnni(G, B, 8, M, PANEL_ARGS); break;        \
    case 9: panel_vnni(G, B, 9, M, PANEL_ARGS); break;  case 10: panel_vnni(G, B, 10, M, PANEL_ARGS); break;      \
    case 11: panel_vnni(G, B, 11, M, PANEL_ARGS); break; default: panel_vnni(G, B, 12, M, PANEL_ARGS); break;     \
    }

VNNI static void matmul_vnni(int type, const uint8_t *q, const float *scale, const float *min, int rows, int cols,
                             int panel0, int panel1, const int8_t *xq, const int32_t *corr, const float *dx,
                             const float *dmin, int n, float *out, int ldo, int accumulate) {
    const int g = qwen_i8_group(type), ng = cols / g, n32 = cols / 32, has_min = qwen_i8_has_min(type);
    const long gb = qwen_i8_group_bytes(type);
    // Input rows in balanced groups of at most MAXR (16 = 8 + 8), each group over all panels.
    const int groups = (n + MAXR - 1) / MAXR;
    for (int k = 0, i0 = 0; k < groups; k++) {
        const int R = (n - i0) / (groups - k);
        for (int p = panel0; p < panel1; p++) {
            const uint8_t *pq = q + (long)p * ng * gb;
            const float *ps = scale + (long)p * ng * 16, *pm = has_min ? min + (long)p * n32 * 16 : 0;
            PANEL_TYPES(PANEL_CASES, 0)
        }
        i0 += R;
    }
}

// AVX2 (with FMA): the same products for CPUs without AVX-512 VNNI (many AMD and older Intel
// servers). A panel's 16 rows are two 256-bit halves; vpmaddubsw multiplies the unsigned weights
// with the signed inputs into pairwise 16-bit sums and vpmaddwd adds those into the 32-bit
// lanes vpdpbusd would hold. The pairwise sums fit 16 bits when u ≤ 63 (Q4/Q5/Q6_K panels);
// Q8_0's u reaches 255, so there the weight is recentred (w = u − 128, the offset the correction
// term removes) and multiplied as |w| · sign(w)·x (|w| ≤ 128 unsigned, |x| ≤ 127), which fits. Every integer sum is exact and
// the f32 steps are the plain C version's, so the results are bit-identical to it. The kernel
// itself is int8_ymm.h, shared with the AVX-VNNI sets below.
#define AVX2 __attribute__((target("avx2,fma")))

/// The 32 bytes of a 5-bit vector's high bits for bytes [32·h, 32·h + 32), as 16 where set.
AVX2 static inline __attribute__((always_inline)) __m256i high_bits_avx2(const uint8_t *hb, int h) {
    uint32_t m;
    memcpy(&m, hb + 4 * h, 4);
    const __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32((int)m),
                                              _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                                               2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit), _mm256_set1_epi8(16));
}

#define YMM_NAME(f) f##_avx2
#define YMM_TARGET AVX2
#include "int8_ymm.h"

// AVX-VNNI (Alder Lake and later Intel cores, AMD Zen 5): the same 256-bit code with vpdpbusd in
// place of the two-instruction pair (exact for every u, so Q8_0 needs no recentring). Intel's
// VEX encoding needs AVX-VNNI; the EVEX encoding of the same instruction runs on AVX-512 VNNI
// CPUs, so the "vnni256" instance compiles this code for those and lets a machine without
// AVX-VNNI test it bit-exact — the two instances differ in the instruction's encoding only.
#define YMM_NAME(f) f##_avxvnni
#define YMM_TARGET __attribute__((target("avx2,fma,avxvnni")))
#define YMM_DPBUSD(s, w, x) _mm256_dpbusd_avx_epi32(s, w, x)
#include "int8_ymm.h"

#define YMM_NAME(f) f##_vnni256
#define YMM_TARGET __attribute__((target("avx2,fma,avx512f,avx512vl,avx512vnni")))
#define YMM_DPBUSD(s, w, x) _mm256_dpbusd_epi32(s, w, x)
#include "int8_ymm.h"
#endif

/// The kernel set in use: QWEN_INT8_KERNEL=portable|avx2|vnni|avxvnni|vnni256 forces one (tests and benchmarks;
/// a set the CPU lacks falls back to the best it has), otherwise the best the CPU has.
static int chosen_kernel;
static pthread_once_t kernel_once = PTHREAD_ONCE_INIT;

static void choose_kernel(void) {
    const int best = qwen_cpu_has_avx512vnni() ? QWEN_I8_VNNI : qwen_cpu_has_avxvnni() ? QWEN_I8_AVXVNNI
                   : qwen_cpu_has_avx2() ? QWEN_I8_AVX2 : QWEN_I8_PORTABLE;
    int k = best;
    const char *e = getenv("QWEN_INT8_KERNEL");
    if (e) {
        for (int set = QWEN_I8_PORTABLE; set <= QWEN_I8_VNNI256; set++) {
            if (!strcmp(e, qwen_i8_kernel_name(set)) && qwen_i8_kernel_runs(set)) k = set;
        }
    }
    chosen_kernel = k;
}

const char *qwen_i8_kernel_name(int set) {
    switch (set) {
    case QWEN_I8_AVX2: return "avx2";
    case QWEN_I8_VNNI: return "vnni";
    case QWEN_I8_AVXVNNI: return "avxvnni";
    case QWEN_I8_VNNI256: return "vnni256";
    default: return "portable";
    }
}

int qwen_i8_kernel_runs(int set) {
    switch (set) {
    case QWEN_I8_PORTABLE: return 1;
    case QWEN_I8_AVX2: return qwen_cpu_has_avx2();
    case QWEN_I8_VNNI: case QWEN_I8_VNNI256: return qwen_cpu_has_avx512vnni();
    case QWEN_I8_AVXVNNI: return qwen_cpu_has_avxvnni();
    default: return 0;
    }
}

int qwen_i8_kernel(void) {
    pthread_once(&kernel_once, choose_kernel);
    return chosen_kernel;
}

void qwen_i8_matmul(int type, const uint8_t *q, const float *scale, const float *min, int rows, int cols,
                    int panel0, int panel1, const int8_t *xq, const int32_t *corr, const float *dx, const float *dmin, int n,
                    float *out, int ldo, int accumulate, int kernel) {
    if (kernel < 0) kernel = qwen_i8_kernel();
    if (!qwen_i8_kernel_runs(kernel)) kernel = QWEN_I8_PORTABLE;
    switch (kernel) {
#if QWEN_X86
    case QWEN_I8_VNNI: matmul_vnni(type, q, scale, min, rows, cols, panel0, panel1, xq, corr, dx, dmin, n, out, ldo, accumulate); break;
    case QWEN_I8_AVX2: matmul_avx2(type, q, scale, min, rows, cols, panel0, panel1, xq, corr, dx, dmin, n, out, ldo, accumulate); break;
    case QWEN_I8_AVXVNNI: matmul_avxvnni(type, q, scale, min, rows, cols, panel0, panel1, xq, corr, dx, dmin, n, out, ldo, accumulate); break;
    case QWEN_I8_VNNI256: matmul_vnni256(type, q, scale, min, rows, cols, panel0, panel1, xq, corr, dx, dmin, n, out, ldo, accumulate); break;
#endif
    default: matmul_generic(type, q, scale, min, rows, cols, panel0, panel1, xq, corr, dx, dmin, n, out, ldo, accumulate); break;
    }
}
