// AVX2 (+FMA, F16C) kernels for the compact f32 products, included by quant_matmul.c (after its
// AVX-512 kernels, whose PREFETCH distance it shares). Blocks are expanded exactly as the
// reference dequantization expands them (the same float operations per value), 8 lanes at a
// time; products differ from the other levels only in the order of summation.
//
// A 32-value block becomes four 8-float vectors w[0..3] (values 0–7, 8–15, 16–23, 24–31); a
// K-quant super-block is multiplied in as it is expanded, 16 values at a time. Each input row keeps
// ACCS accumulators; NI (1…6 rows per pass over the weights) is a constant in each instance.

#define AVX2 __attribute__((target("avx2,fma,f16c")))
#define MAXROWS2 6

/// An f16 scale by the conversion instruction (the same value as the table, without its 256 KB in cache):
/// for the K-quants' two scales per 256 values. The 32-value blocks read the table: on Zen 3 the
/// conversion's latency, once per 32 values, bounded the one-row Q5_0 product (5.0 against 7.1 G/s).
AVX2 static inline float f16x(const uint8_t *p) { return _cvtsh_ss((unsigned short)(p[0] | (p[1] << 8))); }

/// 16 bytes, the same in both lanes of `q`, as two 8-float vectors q·d (+ m when AFFINE: bytes
/// below 128 then; signed bytes otherwise). Each value is moved to the top byte of its 32-bit lane
/// (one in-lane shuffle; AVX2's lane-crossing widening costs more), so the conversion gives q·2^24,
/// and d·2^-24 scales it back: the same single rounding of d·q as the reference (both factors exact).
AVX2 static inline __attribute__((always_inline)) void x16_top(__m256i q, float d, __m256 m, const int AFFINE, __m256 *w) {
    const __m256 d24 = _mm256_set1_ps(d * 0x1p-24f);
    const __m256i lo = _mm256_setr_epi8(-1, -1, -1, 0, -1, -1, -1, 1, -1, -1, -1, 2, -1, -1, -1, 3,
                                        -1, -1, -1, 4, -1, -1, -1, 5, -1, -1, -1, 6, -1, -1, -1, 7);
    const __m256i hi = _mm256_setr_epi8(-1, -1, -1, 8, -1, -1, -1, 9, -1, -1, -1, 10, -1, -1, -1, 11,
                                        -1, -1, -1, 12, -1, -1, -1, 13, -1, -1, -1, 14, -1, -1, -1, 15);
    w[0] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_shuffle_epi8(q, lo)), d24);
    w[1] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_shuffle_epi8(q, hi)), d24);
    if (AFFINE) {
        w[0] = _mm256_add_ps(w[0], m);
        w[1] = _mm256_add_ps(w[1], m);
    }
}

/// 32 signed bytes, values 0–15 in both lanes of `a` and 16–31 in both lanes of `b`, as four
/// 8-float vectors times d.
AVX2 static inline void i8x32_top_times(__m256i a, __m256i b, float d, __m256 *w) {
    x16_top(a, d, _mm256_setzero_ps(), 0, w);
    x16_top(b, d, _mm256_setzero_ps(), 0, w + 2);
}

AVX2 static inline void block2_q4_0(const uint8_t *b, __m256 *w) {
    const __m256i qs = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(b + 2))), m4 = _mm256_set1_epi8(0x0F), c8 = _mm256_set1_epi8(8);
    i8x32_top_times(_mm256_sub_epi8(_mm256_and_si256(qs, m4), c8), _mm256_sub_epi8(_mm256_and_si256(_mm256_srli_epi16(qs, 4), m4), c8), f16(b), w);
}

AVX2 static inline void block2_q4_1(const uint8_t *b, __m256 *w) {
    const float d = f16(b);
    const __m256 m = _mm256_set1_ps(f16(b + 2));
    const __m256i qs = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(b + 4))), m4 = _mm256_set1_epi8(0x0F);
    x16_top(_mm256_and_si256(qs, m4), d, m, 1, w);
    x16_top(_mm256_and_si256(_mm256_srli_epi16(qs, 4), m4), d, m, 1, w + 2);
}

/// Q5's 32 fifth bits as bytes (0xFF where a bit is set), in the lanes' order of x16_top: values
/// 0–15 in both lanes of *a, 16–31 in both lanes of *b.
AVX2 static inline void q5_bits(uint32_t qh, __m256i *a, __m256i *b) {
    const __m256i v = _mm256_set1_epi32((int)qh), magic = _mm256_set1_epi64x((long long)0x7FBFDFEFF7FBFDFEULL), ones = _mm256_set1_epi8(-1);
    const __m256i sa = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    *a = _mm256_cmpeq_epi8(_mm256_or_si256(_mm256_shuffle_epi8(v, sa), magic), ones);
    *b = _mm256_cmpeq_epi8(_mm256_or_si256(_mm256_shuffle_epi8(v, _mm256_add_epi8(sa, _mm256_set1_epi8(2))), magic), ones);
}

AVX2 static inline void block2_q5_0(const uint8_t *b, __m256 *w) {
    uint32_t qh;
    memcpy(&qh, b + 2, 4);
    const __m256i qs = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(b + 6))), m4 = _mm256_set1_epi8(0x0F);
    const __m256i f0 = _mm256_set1_epi8((char)0xF0);
    __m256i ha, hb;
    q5_bits(qh, &ha, &hb);
    // nibble | 0xF0 where the fifth bit is clear: the signed byte nibble + 16·bit − 16.
    i8x32_top_times(_mm256_or_si256(_mm256_and_si256(qs, m4), _mm256_andnot_si256(ha, f0)),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(qs, 4), m4), _mm256_andnot_si256(hb, f0)), f16(b), w);
}

AVX2 static inline void block2_q5_1(const uint8_t *b, __m256 *w) {
    const float d = f16(b);
    const __m256 m = _mm256_set1_ps(f16(b + 2));
    uint32_t qh;
    memcpy(&qh, b + 4, 4);
    const __m256i qs = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(b + 8))), m4 = _mm256_set1_epi8(0x0F);
    const __m256i c16 = _mm256_set1_epi8(16);
    __m256i ha, hb;
    q5_bits(qh, &ha, &hb);
    x16_top(_mm256_or_si256(_mm256_and_si256(qs, m4), _mm256_and_si256(ha, c16)), d, m, 1, w);
    x16_top(_mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(qs, 4), m4), _mm256_and_si256(hb, c16)), d, m, 1, w + 2);
}

/// Q8_0's bytes are in memory as they are: widened straight from it, 8 at a time, which measured
/// faster than the shuffle at every row count (1 row 1.06×, 6 rows 1.22×).
AVX2 static inline void block2_q8_0(const uint8_t *b, __m256 *w) {
    const __m256 d = _mm256_set1_ps(f16(b));
    for (int k = 0; k < 4; k++)
        w[k] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b + 2 + 8 * k)))), d);
}

AVX2 static inline void block2_bf16(const uint8_t *b, __m256 *w) {
    // bf16 is the top half of an f32: widen and shift, exactly.
    for (int k = 0; k < 4; k++)
        w[k] = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(b + 16 * k))), 16));
}

AVX2 static inline void block2_f16(const uint8_t *b, __m256 *w) {
    for (int k = 0; k < 4; k++) w[k] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(b + 16 * k)));
}

/// Accumulators per input row: two, whatever the number of rows, so that a row's sum is taken in
/// the same order alone and in a batch (a sequence's results must not depend on its batch), while
/// a single decoding row still keeps two FMA chains in flight. 6 rows × 2 + 4 weight vectors fill
/// the 16 registers.
#define ACCS 2

/// acc[i] += 16 weights (w[0], w[1]) times row i's values at xb + i·ldx + at, for the NI rows;
/// k picks the accumulators (k and k + 1).
AVX2 static inline __attribute__((always_inline)) void fma16(const __m256 *w, const float *xb, int ldx, int at, const int NI, const int k,
                                                             __m256 acc[][4]) {
    const int A = ACCS;
    for (int i = 0; i < NI; i++) {
        acc[i][k % A] = _mm256_fmadd_ps(w[0], _mm256_loadu_ps(xb + (long)i * ldx + at), acc[i][k % A]);
        acc[i][(k + 1) % A] = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(xb + (long)i * ldx + at + 8), acc[i][(k + 1) % A]);
    }
}

/// A Q4_K / Q5_K super-block's 256 weights — (d·scale)·q − d_min·m per value, as the reference —
/// multiplied into the NI rows' accumulators as they are expanded (no staging buffer).
AVX2 static inline __attribute__((always_inline)) void dot2_q45_k(const uint8_t *b, const float *xb, int ldx, const int NI,
                                                                   __m256 acc[][4], const int five) {
    const float d = f16x(b), dmin = f16x(b + 2);
    const uint8_t *sc = b + 4, *qh = b + 16, *q = b + (five ? 48 : 16);
    const __m256i m4 = _mm256_set1_epi8(0x0F), c16 = _mm256_set1_epi8(16);
    for (int p = 0; p < 4; p++) {
        float s1, m1, s2, m2;
        scale_min_k4(2 * p, sc, &s1, &m1);
        scale_min_k4(2 * p + 1, sc, &s2, &m2);
        const float d1 = d * s1, d2 = d * s2;
        const __m256 mm1 = _mm256_set1_ps(-(dmin * m1)), mm2 = _mm256_set1_ps(-(dmin * m2));
        const __m256i u1 = _mm256_set1_epi8((char)(1 << (2 * p))), u2 = _mm256_set1_epi8((char)(2 << (2 * p)));
        for (int h = 0; h < 2; h++) {
            const __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(q + 16 * h)));
            __m256i l = _mm256_and_si256(v, m4), u = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
            if (five) {
                const __m256i hb = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(qh + 16 * h)));
                l = _mm256_or_si256(l, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hb, u1), u1), c16));
                u = _mm256_or_si256(u, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hb, u2), u2), c16));
            }
            __m256 w[2];
            x16_top(l, d1, mm1, 1, w);
            fma16(w, xb, ldx, 64 * p + 16 * h, NI, 2 * h, acc);
            x16_top(u, d2, mm2, 1, w);
            fma16(w, xb, ldx, 64 * p + 32 + 16 * h, NI, 2 * h, acc);
        }
        q += 32;
    }
}
AVX2 static inline __attribute__((always_inline)) void dot2_q4_k(const uint8_t *b, const float *xb, int ldx, const int NI, __m256 acc[][4]) {
    dot2_q45_k(b, xb, ldx, NI, acc, 0);
}
AVX2 static inline __attribute__((always_inline)) void dot2_q5_k(const uint8_t *b, const float *xb, int ldx, const int NI, __m256 acc[][4]) {
    dot2_q45_k(b, xb, ldx, NI, acc, 1);
}

/// The same for a Q6_K super-block: d·scale·q per value, as the reference.
AVX2 static inline __attribute__((always_inline)) void dot2_q6_k(const uint8_t *b, const float *xb, int ldx, const int NI, __m256 acc[][4]) {
    const float d = f16x(b + 208);
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    const __m256i m4 = _mm256_set1_epi8(0x0F), m3 = _mm256_set1_epi8(3), c32 = _mm256_set1_epi8(32);
    for (int half = 0; half < 2; half++) {
        for (int c = 0; c < 2; c++) {  // positions 16c..16c+15 of each quarter; scale index c
            const __m256i a = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(ql + 16 * c)));
            const __m256i e = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(ql + 32 + 16 * c)));
            const __m256i h = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(qh + 16 * c)));
            const __m256i q[4] = {
                _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(a, m4), _mm256_slli_epi16(_mm256_and_si256(h, m3), 4)), c32),
                _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(e, m4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 2), m3), 4)), c32),
                _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(a, 4), m4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 4), m3), 4)), c32),
                _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(e, 4), m4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 6), m3), 4)), c32),
            };
            for (int k = 0; k < 4; k++) {
                __m256 w[2];
                x16_top(q[k], d * sc[c + 2 * k], _mm256_setzero_ps(), 0, w);
                fma16(w, xb, ldx, 128 * half + 16 * c + 32 * k, NI, 2 * (k % 2), acc);
            }
        }
        ql += 64;
        qh += 32;
        sc += 8;
    }
}

/// out[i · ldo] (+)= the sum of row i's accumulators, for each of the NI input rows.
AVX2 static inline __attribute__((always_inline)) void store_sums2(__m256 acc[][4], const int NI, float *out, int ldo, int accumulate) {
    for (int i = 0; i < NI; i++) {
        __m256 a = acc[i][0];
        for (int k = 1; k < ACCS; k++) a = _mm256_add_ps(a, acc[i][k]);
        const float s = qwen_hsum256(a);
        float *o = out + (long)i * ldo;
        *o = accumulate ? *o + s : s;
    }
}

/// One weight row at a time against NI input rows: DOT multiplies a block of VALUES weights
/// (BYTES stored) into the accumulators. The K-quants' larger blocks ask for the bytes ahead.
#define AVX2_KERNEL(NAME, DOT, VALUES, BYTES, PREFETCHES)                                                      \
    AVX2 static inline __attribute__((always_inline)) void NAME##_rows(                                        \
        const void *w, int cols, int row0, int row1, const float *x, int ldx, float *out, int ldo,             \
        int accumulate, const int NI) {                                                                        \
        const int nb = cols / VALUES, A = ACCS;                                                            \
        const long rb = (long)nb * BYTES;                                                                      \
        for (int r = row0; r < row1; r++) {                                                                    \
            const uint8_t *row = (const uint8_t *)w + (long)r * rb;                                            \
            __m256 acc[NI][4];                                                                                 \
            for (int i = 0; i < NI; i++)                                                                       \
                for (int k = 0; k < A; k++) acc[i][k] = _mm256_setzero_ps();                                   \
            for (int b = 0; b < nb; b++) {                                                                     \
                if (PREFETCHES)                                                                                \
                    for (int o = 0; o < BYTES; o += 64) _mm_prefetch((const char *)(row + (long)b * BYTES + PREFETCH + o), _MM_HINT_T0); \
                DOT(row + (long)b * BYTES, x + (long)b * VALUES, ldx, NI, acc);                                \
            }                                                                                                  \
            store_sums2(acc, NI, out + r, ldo, accumulate);                                                    \
        }                                                                                                      \
    }

#define ROWS2_CASE(NAME, K) case K: NAME##_rows(w, cols, row0, row1, xi, ldx, oi, ldo, accumulate, K); break;
#define AVX2_DISPATCH(NAME)                                                                                    \
    AVX2 static void NAME(const void *w, int cols, int row0, int row1, const float *x, int n, int ldx,         \
                          float *out, int ldo, int accumulate) {                                                \
        const int groups = (n + MAXROWS2 - 1) / MAXROWS2;                                                      \
        for (int g = 0, i0 = 0; g < groups; g++) {                                                             \
            const int ni = (n - i0) / (groups - g);                                                            \
            const float *xi = x + (long)i0 * ldx;                                                              \
            float *oi = out + (long)i0 * ldo;                                                                  \
            switch (ni) {                                                                                      \
                ROWS2_CASE(NAME, 1) ROWS2_CASE(NAME, 2) ROWS2_CASE(NAME, 3) ROWS2_CASE(NAME, 4)                \
                ROWS2_CASE(NAME, 5) ROWS2_CASE(NAME, 6)                                                        \
            }                                                                                                  \
            i0 += ni;                                                                                          \
        }                                                                                                      \
    }
/// A 32-value block format: its four vectors into the accumulators.
#define AVX2_32(NAME, BLOCK, BYTES)                                                                            \
    AVX2 static inline __attribute__((always_inline)) void NAME##_dot(const uint8_t *b, const float *xb, int ldx, const int NI, \
                                                                      __m256 acc[][4]) {                       \
        __m256 w[4];                                                                                           \
        BLOCK(b, w);                                                                                           \
        fma16(w, xb, ldx, 0, NI, 0, acc);                                                                      \
        fma16(w + 2, xb, ldx, 16, NI, 2, acc);                                                                 \
    }                                                                                                          \
    AVX2_KERNEL(NAME, NAME##_dot, 32, BYTES, 0) AVX2_DISPATCH(NAME)
#define AVX2_256(NAME, DOT, BYTES) AVX2_KERNEL(NAME, DOT, 256, BYTES, 1) AVX2_DISPATCH(NAME)

AVX2_32(mm_f16_avx2, block2_f16, 64)
AVX2_32(mm_bf16_avx2, block2_bf16, 64)
AVX2_32(mm_q4_0_avx2, block2_q4_0, 18)
AVX2_32(mm_q4_1_avx2, block2_q4_1, 20)
AVX2_32(mm_q5_0_avx2, block2_q5_0, 22)
AVX2_32(mm_q5_1_avx2, block2_q5_1, 24)
AVX2_32(mm_q8_0_avx2, block2_q8_0, 34)
AVX2_256(mm_q4_k_avx2, dot2_q4_k, 144)
AVX2_256(mm_q5_k_avx2, dot2_q5_k, 176)
AVX2_256(mm_q6_k_avx2, dot2_q6_k, 210)

/// Runs the AVX2 kernel of `type`; returns 0 for a type without one (f32).
static int quant_matmul_avx2(int type, const void *w, int cols, int row0, int row1, const float *x, int n, int ldx, float *out,
                             int ldo, int accumulate) {
    switch (type) {
    case QWEN_F16: mm_f16_avx2(w, cols, row0, row1, x, n, ldx, out, ldo, accumulate); return 1;
    case QWEN_BF16: mm_bf16_avx2(w, cols, row0, row1, x, n, ldx, out, ldo, accumulate); return 1;
    case QWEN_Q4_0: mm_q4_0_avx2(w, cols, row0, row1, x, n, ldx, out, ldo, accumulate); return 1;
    case QWEN_Q4_1: mm_q4_1_avx2(w, cols, row0, row1, x, n, ldx, out, ldo, accumulate); return 1;
    case QWEN_Q5_0: mm_q5_0_avx2(w, cols, row0, row1, x, n, ldx, out, ldo, accumulate); return 1;
    case QWEN_Q5_1: mm_q5_1_avx2(w, cols, row0, row1, x, n, ldx, out, ldo, accumulate); return 1;
    case QWEN_Q8_0: mm_q8_0_avx2(w, cols, row0, row1, x, n, ldx, out, ldo, accumulate); return 1;
    case QWEN_Q4_K: mm_q4_k_avx2(w, cols, row0, row1, x, n, ldx, out, ldo, accumulate); return 1;
    case QWEN_Q5_K: mm_q5_k_avx2(w, cols, row0, row1, x, n, ldx, out, ldo, accumulate); return 1;
    case QWEN_Q6_K: mm_q6_k_avx2(w, cols, row0, row1, x, n, ldx, out, ldo, accumulate); return 1;
    default: return 0;
    }
}
