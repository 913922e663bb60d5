#include "qwen_lora.h"
#include "levels.h"
#include "simd_exp.h"

// Plain loops (the portable level): the dot products and the row updates vectorise (the target
// is built with -ffast-math, so the dot's sum may be reordered).
static void lora_rows_generic(const float *x, int n, int in_dim, const float *a, int rank, const float *bt, int out_dim,
                                         float scale, float *out, float *tmp) {
    for (int i = 0; i < n; i++) {
        const float *xi = x + (long)i * in_dim;
        for (int j = 0; j < rank; j++) {
            const float *aj = a + (long)j * in_dim;
            float s = 0;
            for (int k = 0; k < in_dim; k++) s += xi[k] * aj[k];
            tmp[j] = s * scale;
        }
        float *oi = out + (long)i * out_dim;
        for (int j = 0; j < rank; j++) {
            const float t = tmp[j], *bj = bt + (long)j * out_dim;
            for (int o = 0; o < out_dim; o++) oi[o] += t * bj[o];
        }
    }
}

#if QWEN_X86
#define AVX512 __attribute__((target("avx512f")))
#define AVX2 __attribute__((target("avx2,fma")))
#define RB 8  // ranks per register block

static inline __mmask16 tail(int left) { return left >= 16 ? 0xFFFF : (__mmask16)((1u << left) - 1); }

/// The same update with the loops turned so that each output vector is loaded and stored
/// once per 8 ranks and each Bᵀ vector serves every row (the plain loops store every output
/// row once per rank).
AVX512 static void lora_rows_avx512(const float *x, int n, int in_dim, const float *a, int rank, const float *bt, int out_dim,
                                    float scale, float *out, float *tmp) {
    // tmp[i·rank + j] = scale · x_i · a_j, 8 ranks at a time over one pass of x_i.
    for (int i = 0; i < n; i++) {
        const float *xi = x + (long)i * in_dim;
        for (int j0 = 0; j0 < rank; j0 += RB) {
            const int jn = rank - j0 < RB ? rank - j0 : RB;
            __m512 acc[RB];
            for (int jj = 0; jj < RB; jj++) acc[jj] = _mm512_setzero_ps();
            for (int k = 0; k < in_dim; k += 16) {
                const __mmask16 m = tail(in_dim - k);
                const __m512 xv = _mm512_maskz_loadu_ps(m, xi + k);
                for (int jj = 0; jj < jn; jj++) {
                    acc[jj] = _mm512_fmadd_ps(xv, _mm512_maskz_loadu_ps(m, a + (long)(j0 + jj) * in_dim + k), acc[jj]);
                }
            }
            for (int jj = 0; jj < jn; jj++) tmp[i * rank + j0 + jj] = scale * _mm512_reduce_add_ps(acc[jj]);
        }
    }
    // out_i += Σ_j tmp[i·rank + j] · bt_j, 16 outputs × 8 ranks of Bᵀ in registers at a time.
    for (int o = 0; o < out_dim; o += 16) {
        const __mmask16 m = tail(out_dim - o);
        for (int j0 = 0; j0 < rank; j0 += RB) {
            const int jn = rank - j0 < RB ? rank - j0 : RB;
            __m512 b[RB];
            for (int jj = 0; jj < jn; jj++) b[jj] = _mm512_maskz_loadu_ps(m, bt + (long)(j0 + jj) * out_dim + o);
            for (int i = 0; i < n; i++) {
                float *oi = out + (long)i * out_dim + o;
                __m512 s = _mm512_maskz_loadu_ps(m, oi);
                for (int jj = 0; jj < jn; jj++) s = _mm512_fmadd_ps(_mm512_set1_ps(tmp[i * rank + j0 + jj]), b[jj], s);
                _mm512_mask_storeu_ps(oi, m, s);
            }
        }
    }
}

/// Lanes below `left` set (of 8), for masked loads and stores.
AVX2 static inline __m256i tail8(int left) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(left < 8 ? left : 8), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/// The AVX-512 kernel's loop order in 8 lanes (masked loads for the tails).
AVX2 static void lora_rows_avx2(const float *x, int n, int in_dim, const float *a, int rank, const float *bt, int out_dim,
                                float scale, float *out, float *tmp) {
    for (int i = 0; i < n; i++) {
        const float *xi = x + (long)i * in_dim;
        for (int j0 = 0; j0 < rank; j0 += RB) {
            const int jn = rank - j0 < RB ? rank - j0 : RB;
            __m256 acc[RB];
            for (int jj = 0; jj < RB; jj++) acc[jj] = _mm256_setzero_ps();
            for (int k = 0; k < in_dim; k += 8) {
                const __m256i m = tail8(in_dim - k);
                const __m256 xv = _mm256_maskload_ps(xi + k, m);
                for (int jj = 0; jj < jn; jj++)
                    acc[jj] = _mm256_fmadd_ps(xv, _mm256_maskload_ps(a + (long)(j0 + jj) * in_dim + k, m), acc[jj]);
            }
            for (int jj = 0; jj < jn; jj++) tmp[i * rank + j0 + jj] = scale * qwen_hsum256(acc[jj]);
        }
    }
    for (int o = 0; o < out_dim; o += 8) {
        const __m256i m = tail8(out_dim - o);
        for (int j0 = 0; j0 < rank; j0 += RB) {
            const int jn = rank - j0 < RB ? rank - j0 : RB;
            __m256 b[RB];
            for (int jj = 0; jj < jn; jj++) b[jj] = _mm256_maskload_ps(bt + (long)(j0 + jj) * out_dim + o, m);
            for (int i = 0; i < n; i++) {
                float *oi = out + (long)i * out_dim + o;
                __m256 s = _mm256_maskload_ps(oi, m);
                for (int jj = 0; jj < jn; jj++) s = _mm256_fmadd_ps(_mm256_set1_ps(tmp[i * rank + j0 + jj]), b[jj], s);
                _mm256_maskstore_ps(oi, m, s);
            }
        }
    }
}
#endif

void qwen_lora_rows(const float *x, int n, int in_dim, const float *a, int rank, const float *bt, int out_dim, float scale,
                    float *out, float *tmp) {
#if QWEN_X86
    if (qwen_cpu_has_avx512()) return lora_rows_avx512(x, n, in_dim, a, rank, bt, out_dim, scale, out, tmp);
    if (qwen_cpu_has_avx2()) return lora_rows_avx2(x, n, in_dim, a, rank, bt, out_dim, scale, out, tmp);
#endif
    lora_rows_generic(x, n, in_dim, a, rank, bt, out_dim, scale, out, tmp);
}
