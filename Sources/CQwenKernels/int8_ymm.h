// The 256-bit int8 panel kernels, included by int8_matmul.c (after PANEL_TYPES and PANEL_ARGS)
// once per kernel set with
//   YMM_NAME(f)          the set's name for f (panel_avx2, matmul_avx2, …),
//   YMM_TARGET           the functions' target attribute,
//   YMM_DPBUSD(s, w, x)  (optional) an instruction adding the four u8·s8 products of each 32-bit
//                        lane to s; without it, vpmaddubsw + vpmaddwd (see int8_matmul.c).
// A panel's 16 rows are two 256-bit halves; at most 4 input rows at a time (16 registers),
// every group of rows of a panel before the next panel.
// Every integer sum is exact and the f32 steps are the plain C version's, so the results are
// bit-identical to it. The macros are undefined at the end, ready for the next set.

#ifdef YMM_DPBUSD
#define YMM_EXACT_U8 1
#else
#define YMM_EXACT_U8 0
#endif

// A step's 32 weight bytes of each half of a panel (k4: which four columns of the group), as
// unsigned bytes (or signed for a recentred Q8_0 panel).
YMM_TARGET static inline __attribute__((always_inline)) void YMM_NAME(weights)(const int G, const int BITS, const int SIGNED,
                                                                             const uint8_t *wq, int k4, __m256i w[2]) {
    for (int h = 0; h < 2; h++) {
        if (BITS == 8) {
            w[h] = _mm256_loadu_si256((const __m256i *)(wq + k4 * 64 + 32 * h));
            if (SIGNED) w[h] = _mm256_xor_si256(w[h], _mm256_set1_epi8((char)0x80));
        } else {
            const __m256i v = _mm256_loadu_si256((const __m256i *)(wq + (k4 / 2) * 64 + 32 * h));
            w[h] = _mm256_and_si256(k4 % 2 ? _mm256_srli_epi16(v, 4) : v, _mm256_set1_epi8(0x0F));
            if (BITS == 5) w[h] = _mm256_add_epi8(w[h], high_bits_avx2(wq + G * 8 + k4 * 8, h));
        }
    }
}

YMM_TARGET static inline __attribute__((always_inline)) void YMM_NAME(panel)(
    const int G, const int BITS, const int VBITS, const int R, const int HAS_MIN, const int SIGNED, const uint8_t *q, const float *scale,
    const float *min, int cols, const int8_t *xq, const int32_t *corr, const float *dx, const float *dmin, float *out,
    int ldo, int row0, int rows, int accumulate) {
    const int ng = cols / G, n32 = cols / 32;
    const __m256i ones = _mm256_set1_epi16(1);
    (void)ones;
    __m256 acc[R][2];
    for (int r = 0; r < R; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    for (int gi = 0; gi < ng; gi++) {
        const uint8_t *wq = q + (long)gi * (BITS == 8 ? G * 16 : BITS == 4 ? G * 8 : G * 10);
        __m256i s[R][2];
        for (int r = 0; r < R; r++) s[r][0] = s[r][1] = _mm256_set1_epi32(SIGNED ? 0 : corr[r * ng + gi]);
#ifdef YMM_DPBUSD
        for (int k4 = 0; k4 < G / 4; k4++) {
            __m256i w[2];
            YMM_NAME(weights)(G, BITS, SIGNED, wq, k4, w);
            for (int r = 0; r < R; r++) {
                int32_t xv;
                memcpy(&xv, xq + (long)r * cols + gi * G + 4 * k4, 4);
                const __m256i x = _mm256_set1_epi32(xv);
                for (int h = 0; h < 2; h++) s[r][h] = YMM_DPBUSD(s[r][h], w[h], x);
            }
        }
#else
        // vpmaddubsw's pairwise 16-bit sums are added in 16 bits for as many steps as cannot
        // overflow (|x| ≤ 128: 8 steps of 4-bit weights, 4 of 5-bit, 2 of Q6_K's 6-bit), then
        // widened by one vpmaddwd instead of one per step: fewer multiplier instructions, the
        // bound of this kernel with several input rows (one thread, 12 rows: Q4_K 1.28×, Q5_0
        // 1.17×, Q6_K 1.10× faster). Sums stay exact. A single 5-bit row keeps one vpmaddwd a
        // step (measured 1.14× slower otherwise; its unpacking, not the multiplier, bounds it).
        const int CHUNK = SIGNED || (R == 1 && BITS == 5) ? 1 : VBITS == 4 ? 8 : VBITS == 5 ? 4 : VBITS == 6 ? 2 : 1;
        if (CHUNK == 1) {
            for (int k4 = 0; k4 < G / 4; k4++) {
                __m256i w[2];
                YMM_NAME(weights)(G, BITS, SIGNED, wq, k4, w);
                for (int r = 0; r < R; r++) {
                    int32_t xv;
                    memcpy(&xv, xq + (long)r * cols + gi * G + 4 * k4, 4);
                    const __m256i x = _mm256_set1_epi32(xv);
                    for (int h = 0; h < 2; h++) {
                        const __m256i p16 = SIGNED ? _mm256_maddubs_epi16(_mm256_abs_epi8(w[h]), _mm256_sign_epi8(x, w[h]))
                                                   : _mm256_maddubs_epi16(w[h], x);
                        s[r][h] = _mm256_add_epi32(s[r][h], _mm256_madd_epi16(p16, ones));
                    }
                }
            }
        } else {
            for (int c0 = 0; c0 < G / 4; c0 += CHUNK) {
                __m256i t[R][2];
                for (int k4 = c0; k4 < c0 + CHUNK; k4++) {
                    __m256i w[2];
                    YMM_NAME(weights)(G, BITS, SIGNED, wq, k4, w);
                    for (int r = 0; r < R; r++) {
                        int32_t xv;
                        memcpy(&xv, xq + (long)r * cols + gi * G + 4 * k4, 4);
                        const __m256i p16 = _mm256_maddubs_epi16(w[0], _mm256_set1_epi32(xv));
                        const __m256i p16b = _mm256_maddubs_epi16(w[1], _mm256_set1_epi32(xv));
                        t[r][0] = k4 == c0 ? p16 : _mm256_add_epi16(t[r][0], p16);
                        t[r][1] = k4 == c0 ? p16b : _mm256_add_epi16(t[r][1], p16b);
                    }
                }
                for (int r = 0; r < R; r++)
                    for (int h = 0; h < 2; h++) s[r][h] = _mm256_add_epi32(s[r][h], _mm256_madd_epi16(t[r][h], ones));
            }
        }
#endif
        for (int h = 0; h < 2; h++) {
            const __m256 sc = _mm256_loadu_ps(scale + gi * 16 + 8 * h);
            for (int r = 0; r < R; r++) {
                acc[r][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[r][h]), _mm256_mul_ps(sc, _mm256_set1_ps(dx[r * ng + gi])), acc[r][h]);
            }
            if (HAS_MIN) {
                const __m256 mn = _mm256_loadu_ps(min + gi * 16 + 8 * h);
                for (int r = 0; r < R; r++) acc[r][h] = _mm256_fmadd_ps(mn, _mm256_set1_ps(dmin[r * n32 + gi]), acc[r][h]);
            }
        }
    }
    for (int r = 0; r < R; r++) {
        float a[16];
        _mm256_storeu_ps(a, acc[r][0]);
        _mm256_storeu_ps(a + 8, acc[r][1]);
        store(out, ldo, r, row0, rows, a, accumulate);
    }
}

// VBITS: how many bits a weight's value takes (Q6_K's are 6 bits stored in bytes).
#define YMM_VBITS(G, B) ((B) == 8 ? ((G) == 16 ? 6 : 8) : (B))
#define YMM_CASES(G, B, M, S)                                                                                      \
    switch (R) {                                                                                                   \
    case 1: YMM_NAME(panel)(G, B, YMM_VBITS(G, B), 1, M, S, PANEL_ARGS); break;                                     \
    case 2: YMM_NAME(panel)(G, B, YMM_VBITS(G, B), 2, M, S, PANEL_ARGS); break;                                     \
    case 3: YMM_NAME(panel)(G, B, YMM_VBITS(G, B), 3, M, S, PANEL_ARGS); break;                                     \
    default: YMM_NAME(panel)(G, B, YMM_VBITS(G, B), 4, M, S, PANEL_ARGS); break;                                    \
    }

#ifndef YMM_DPBUSD
// Many input rows: a panel of 5-bit weights is unpacked once into bytes (the 8-bit layout, in
// `wide`), and every group of rows reads those instead of unpacking it again: there the
// unpacking costs about as much as the multiplies (Q5_0, one thread: 1.2–1.3× faster from 9
// rows on). 4-bit panels unpack in two instructions, and reading twice the bytes cost more.
#define YMM_WIDE_ROWS 9
#define YMM_WIDE_CASES(G, B, M, S)                                                                                 \
    if ((B) == 5) {                                                                                                \
        if (k == 0) YMM_NAME(unpack5)(pq, ng, wide);                                                               \
        {                                                                                                          \
            const uint8_t *pq = wide;                                                                              \
            switch (R) {                                                                                           \
            case 1: YMM_NAME(panel)(G, 8, B, 1, M, S, PANEL_ARGS); break;                                          \
            case 2: YMM_NAME(panel)(G, 8, B, 2, M, S, PANEL_ARGS); break;                                          \
            case 3: YMM_NAME(panel)(G, 8, B, 3, M, S, PANEL_ARGS); break;                                          \
            default: YMM_NAME(panel)(G, 8, B, 4, M, S, PANEL_ARGS); break;                                         \
            }                                                                                                      \
        }                                                                                                          \
    } else {                                                                                                       \
        YMM_CASES(G, B, M, S)                                                                                      \
    }

/// A panel's packed 5-bit groups (32 values a group) as bytes, laid out as 8-bit panels are.
YMM_TARGET static void YMM_NAME(unpack5)(const uint8_t *pq, int ng, uint8_t *wide) {
    for (int gi = 0; gi < ng; gi++) {
        for (int k4 = 0; k4 < 8; k4++) {
            __m256i w[2];
            YMM_NAME(weights)(32, 5, 0, pq + gi * 320, k4, w);
            _mm256_storeu_si256((__m256i *)(wide + (long)gi * 512 + k4 * 64), w[0]);
            _mm256_storeu_si256((__m256i *)(wide + (long)gi * 512 + k4 * 64 + 32), w[1]);
        }
    }
}

/// This thread's buffer for an unpacked panel (kept: the same few sizes come back every step);
/// null when there is no memory for it (the packed panels are read then).
static uint8_t *YMM_NAME(wide_buffer)(size_t bytes) {
    static _Thread_local uint8_t *buffer;
    static _Thread_local size_t capacity;
    if (bytes > capacity) {
        uint8_t *grown = realloc(buffer, bytes);
        if (!grown) return 0;
        buffer = grown;
        capacity = bytes;
    }
    return buffer;
}
#endif

YMM_TARGET static void YMM_NAME(matmul)(int type, const uint8_t *q, const float *scale, const float *min, int rows, int cols,
                                        int panel0, int panel1, const int8_t *xq, const int32_t *corr, const float *dx,
                                        const float *dmin, int n, float *out, int ldo, int accumulate) {
    const int g = qwen_i8_group(type), ng = cols / g, n32 = cols / 32, has_min = qwen_i8_has_min(type);
    const long gb = qwen_i8_group_bytes(type);
    // Each panel (16 weight rows, a few KiB) once for all input rows, its bytes still in L1
    // for every group of rows after the first.
    const int groups = (n + 3) / 4;
#ifndef YMM_DPBUSD
    // Its own loop: a test inside the one below cost single-row products 8%.
    const int five = type == QWEN_Q5_0 || type == QWEN_Q5_1 || type == QWEN_Q5_K;
    uint8_t *wide = n >= YMM_WIDE_ROWS && five ? YMM_NAME(wide_buffer)((size_t)cols * 16) : 0;
    if (wide) {
        for (int p = panel0; p < panel1; p++) {
            const uint8_t *pq = q + (long)p * ng * gb;
            const float *ps = scale + (long)p * ng * 16, *pm = has_min ? min + (long)p * n32 * 16 : 0;
            for (int k = 0, i0 = 0; k < groups; k++) {
                const int R = (n - i0) / (groups - k);
                PANEL_TYPES(YMM_WIDE_CASES, 1)
                i0 += R;
            }
        }
        return;
    }
#endif
    for (int p = panel0; p < panel1; p++) {
        const uint8_t *pq = q + (long)p * ng * gb;
        const float *ps = scale + (long)p * ng * 16, *pm = has_min ? min + (long)p * n32 * 16 : 0;
        for (int k = 0, i0 = 0; k < groups; k++) {
            const int R = (n - i0) / (groups - k);
            PANEL_TYPES(YMM_CASES, !YMM_EXACT_U8)  // Q8_0 recentred unless vpdpbusd takes its u as is
            i0 += R;
        }
    }
}

#undef YMM_CASES
#undef YMM_VBITS
#ifdef YMM_WIDE_CASES
#undef YMM_WIDE_CASES
#undef YMM_WIDE_ROWS
#endif
#undef YMM_EXACT_U8
#undef YMM_NAME
#undef YMM_TARGET
#ifdef YMM_DPBUSD
#undef YMM_DPBUSD
#endif
